//! The crash-safe store: `.cuedeck/store.sqlite3`, SQLite through rusqlite.
//!
//! It holds opaque bytes and knows nothing of automerge: per document a snapshot plus the
//! incremental chunks appended since (compaction replaces both in one transaction), a
//! namespaced key/value table for engine state blobs and per-file metadata, the
//! per-stream sequence-number reservations of the protocol, and the activity log.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a commit is on disk (the WAL
//! fsynced) before it returns. NORMAL would be faster but can lose the last commits on
//! power loss, and what the daemon commits is mostly what must not be lost: a local edit
//! already taken from a file the user may delete next, a sequence-number reservation that
//! must never be reused, an acknowledged remote change. A kill -9 loses nothing committed
//! in either mode; FULL adds power loss. Batches of effects go through
//! [`Store::transaction`] and commit (and fsync) once; only a batch that holds none of
//! that (a peer's confirmation, the replay guard alone) uses
//! [`Store::transaction_not_synced`], whose commit reaches the disk with the next one.
//!
//! Deleted rows leave free pages; the database uses `auto_vacuum=INCREMENTAL`, and
//! [`Store::reclaim_space`] gives them back to the filesystem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// The store's file name inside `.cuedeck/`.
pub const STORE_FILE: &str = "store.sqlite3";

/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// The page size of a new store (an existing one keeps its own). A note of 4 KB is a
/// document of about 1.6 KB, which 4 KiB pages hold badly; every table and index takes at
/// least one page, so larger pages cost small workspaces. 8 KiB is the best of the sizes
/// measured by importing workspaces (docs/benchmarks.md, "The store at half the raw
/// bytes").
const PAGE_SIZE: i64 = 8192;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path:?}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the store was written by a newer cue (schema {found}, this cue knows {SCHEMA_VERSION}); upgrade cue"
    )]
    SchemaTooNew { found: i64 },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{what} {value} does not fit the store's 63-bit integers")]
    OutOfRange { what: &'static str, value: u64 },
    #[error("unknown activity kind {0:?} in the store")]
    UnknownActivityKind(String),
}

/// Marks how far a [`Loaded`] document reaches in its appended chunks, so that
/// [`Store::compact`] removes only the chunks its snapshot covers, never one appended
/// after the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ChunkMark(i64);

/// A document as stored: its snapshot (if any) and the chunks appended since, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub snapshot: Option<Vec<u8>>,
    pub chunks: Vec<Vec<u8>>,
    /// Pass to [`Store::compact`] with a snapshot built from this load.
    pub through: ChunkMark,
}

/// The kinds of activity-log entries: the engine's own, stored by name.
pub use cue_core::ActivityKind;

/// One activity-log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRecord {
    /// Milliseconds since the Unix epoch (UTC).
    pub time_ms: i64,
    pub kind: ActivityKind,
    pub path: Option<String>,
    /// The device's name.
    pub device: String,
    pub detail: Option<String>,
}

/// An activity-log entry with its position in the log (increasing; use it to follow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityEntry {
    pub id: i64,
    pub record: ActivityRecord,
}

/// The store: one SQLite connection. Not shared between threads; the daemon gives it to
/// one task (or a blocking thread) that applies batches of effects.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// In WAL mode: a later commit's flush then covers an earlier one not flushed.
    wal: bool,
}

impl Store {
    /// Opens (creating if needed) the store at `path`, usually `.cuedeck/store.sqlite3`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // Both must precede the first table of a new file; no-ops on an existing one.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(open_err)?;
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "the store could not switch to WAL mode");
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
            wal: mode.eq_ignore_ascii_case("wal"),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found: version });
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS docs (
                doc TEXT PRIMARY KEY NOT NULL,
                snapshot BLOB
            );
            -- AUTOINCREMENT: ids are never reused, so a ChunkMark stays meaningful.
            CREATE TABLE IF NOT EXISTS doc_chunks (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                doc TEXT NOT NULL REFERENCES docs(doc) ON DELETE CASCADE,
                bytes BLOB NOT NULL
            );
            CREATE INDEX IF NOT EXISTS doc_chunks_by_doc ON doc_chunks(doc, id);
            -- WITHOUT ROWID: the key is stored once, not in the table and again in its
            -- index (stores made before keep a rowid table; both behave the same).
            CREATE TABLE IF NOT EXISTS meta (
                ns TEXT NOT NULL,
                key TEXT NOT NULL,
                value BLOB NOT NULL,
                PRIMARY KEY (ns, key)
            ) WITHOUT ROWID;
            -- WITHOUT ROWID too: one b-tree instead of a table and its key's index.
            CREATE TABLE IF NOT EXISTS seq_reservations (
                stream TEXT PRIMARY KEY NOT NULL,
                upto INTEGER NOT NULL
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS activity (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                time_ms INTEGER NOT NULL,
                kind TEXT NOT NULL,
                path TEXT,
                device TEXT NOT NULL,
                detail TEXT
            );
            -- No index on time: ids follow time, and a scan of the log for
            -- `--since` is cheap next to what an index costs on every save (a third
            -- of the log's size). Stores made before keep theirs.",
        )?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` in one write transaction: everything it does commits together (one fsync)
    /// or, if it returns an error, not at all.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&StoreTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&StoreTx { conn: &tx })?;
        tx.commit()?;
        Ok(value)
    }

    /// [`Store::transaction`], committed without waiting for the disk: the commit is in
    /// the WAL (the kernel's cache) when this returns, so it survives the daemon's crash,
    /// and reaches the disk with the next commit that waits (an fsync of the WAL covers
    /// every frame before it) or SQLite's next checkpoint. A power cut before then loses
    /// it, so it is for what may be lost: what the engine learned from a message and will
    /// learn again (see `carry::Host::commit`).
    pub fn transaction_not_synced<T>(
        &mut self,
        f: impl FnOnce(&StoreTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if !self.wal {
            // Without a WAL, a later commit's flush would not cover this one.
            return self.transaction(f);
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.transaction(f)));
        // Back to FULL whatever happened (a panic included: the daemon goes on after one):
        // every other commit must wait for the disk, and a connection that would not must
        // not be used again.
        let restored = self.conn.pragma_update(None, "synchronous", "FULL");
        let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        restored?;
        result
    }

    /// Runs `f` in a read transaction: a consistent view across several reads.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&StoreTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let value = f(&StoreTx { conn: &tx })?;
        drop(tx); // read-only: rolling back is the same as committing
        Ok(value)
    }

    pub fn put_snapshot(&mut self, doc: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.transaction(|tx| tx.put_snapshot(doc, bytes))
    }

    pub fn append_changes(&mut self, doc: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.transaction(|tx| tx.append_changes(doc, bytes))
    }

    pub fn load(&self, doc: &str) -> Result<Option<Loaded>, StoreError> {
        self.read(|tx| tx.load(doc))
    }

    pub fn compact(
        &mut self,
        doc: &str,
        snapshot: &[u8],
        through: ChunkMark,
    ) -> Result<(), StoreError> {
        self.transaction(|tx| tx.compact(doc, snapshot, through))
    }

    pub fn delete_doc(&mut self, doc: &str) -> Result<bool, StoreError> {
        self.transaction(|tx| tx.delete_doc(doc))
    }

    pub fn list_docs(&self) -> Result<Vec<String>, StoreError> {
        self.read(|tx| tx.list_docs())
    }

    pub fn chunk_count(&self, doc: &str) -> Result<u64, StoreError> {
        self.read(|tx| tx.chunk_count(doc))
    }

    pub fn put_meta(&mut self, ns: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.transaction(|tx| tx.put_meta(ns, key, value))
    }

    pub fn get_meta(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|tx| tx.get_meta(ns, key))
    }

    pub fn delete_meta(&mut self, ns: &str, key: &str) -> Result<bool, StoreError> {
        self.transaction(|tx| tx.delete_meta(ns, key))
    }

    pub fn list_meta(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|tx| tx.list_meta(ns))
    }

    pub fn reserve_seq(&mut self, stream: &str, upto: u64) -> Result<u64, StoreError> {
        self.transaction(|tx| tx.reserve_seq(stream, upto))
    }

    pub fn seq_reservation(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        self.read(|tx| tx.seq_reservation(stream))
    }

    pub fn append_activity(&mut self, record: &ActivityRecord) -> Result<i64, StoreError> {
        self.transaction(|tx| tx.append_activity(record))
    }

    pub fn activity_since(
        &self,
        time_ms: i64,
        limit: usize,
    ) -> Result<Vec<ActivityEntry>, StoreError> {
        self.read(|tx| tx.activity_since(time_ms, limit))
    }

    pub fn activity_after(&self, id: i64, limit: usize) -> Result<Vec<ActivityEntry>, StoreError> {
        self.read(|tx| tx.activity_after(id, limit))
    }

    pub fn prune_activity_before(&mut self, time_ms: i64) -> Result<u64, StoreError> {
        self.transaction(|tx| tx.prune_activity_before(time_ms))
    }

    /// See [`Tx::summarise_activity_before`].
    pub fn summarise_activity_before(
        &mut self,
        time_ms: i64,
        window_ms: i64,
    ) -> Result<u64, StoreError> {
        self.transaction(|tx| tx.summarise_activity_before(time_ms, window_ms))
    }

    /// Gives free pages back to the filesystem and truncates the WAL: run it after
    /// compactions, when idle.
    pub fn reclaim_space(&mut self) -> Result<(), StoreError> {
        // Stepped to the end: `execute_batch` steps a statement once, and each step of
        // this pragma frees one page.
        let mut stmt = self.conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        drop(rows);
        drop(stmt);
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// The operations of the store inside one transaction (see [`Store::transaction`] and
/// [`Store::read`]); each `Store` method of the same name is this in a transaction of its
/// own.
#[derive(Debug)]
pub struct StoreTx<'a> {
    conn: &'a Connection,
}

impl StoreTx<'_> {
    fn ensure_doc(&self, doc: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO docs (doc, snapshot) VALUES (?1, NULL)")?
            .execute(params![doc])?;
        Ok(())
    }

    /// Sets a document's snapshot, leaving its appended chunks alone.
    pub fn put_snapshot(&self, doc: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO docs (doc, snapshot) VALUES (?1, ?2)
                 ON CONFLICT(doc) DO UPDATE SET snapshot = excluded.snapshot",
            )?
            .execute(params![doc, bytes])?;
        Ok(())
    }

    /// Appends an incremental chunk (e.g. `save_incremental` bytes) to a document.
    pub fn append_changes(&self, doc: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.ensure_doc(doc)?;
        self.conn
            .prepare_cached("INSERT INTO doc_chunks (doc, bytes) VALUES (?1, ?2)")?
            .execute(params![doc, bytes])?;
        Ok(())
    }

    /// A document's snapshot and chunks; `None` when the store has no such document.
    pub fn load(&self, doc: &str) -> Result<Option<Loaded>, StoreError> {
        let snapshot: Option<Option<Vec<u8>>> = self
            .conn
            .prepare_cached("SELECT snapshot FROM docs WHERE doc = ?1")?
            .query_row(params![doc], |row| row.get(0))
            .optional()?;
        let Some(snapshot) = snapshot else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, bytes FROM doc_chunks WHERE doc = ?1 ORDER BY id")?;
        let mut rows = stmt.query(params![doc])?;
        let mut chunks = Vec::new();
        let mut through = ChunkMark::default();
        while let Some(row) = rows.next()? {
            through = ChunkMark(row.get(0)?);
            chunks.push(row.get(1)?);
        }
        Ok(Some(Loaded {
            snapshot,
            chunks,
            through,
        }))
    }

    /// Replaces a document's snapshot and drops the chunks up to `through` (which the new
    /// snapshot includes); chunks appended after that load stay.
    pub fn compact(
        &self,
        doc: &str,
        snapshot: &[u8],
        through: ChunkMark,
    ) -> Result<(), StoreError> {
        self.put_snapshot(doc, snapshot)?;
        self.conn
            .prepare_cached("DELETE FROM doc_chunks WHERE doc = ?1 AND id <= ?2")?
            .execute(params![doc, through.0])?;
        Ok(())
    }

    /// Removes a document and its chunks; `false` when there was none.
    pub fn delete_doc(&self, doc: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("DELETE FROM doc_chunks WHERE doc = ?1")?
            .execute(params![doc])?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM docs WHERE doc = ?1")?
            .execute(params![doc])?;
        Ok(n > 0)
    }

    /// Every document id, sorted.
    pub fn list_docs(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT doc FROM docs ORDER BY doc")?;
        let docs = stmt
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(docs)
    }

    /// How many chunks a document has accumulated since its last compaction.
    pub fn chunk_count(&self, doc: &str) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM doc_chunks WHERE doc = ?1")?
            .query_row(params![doc], |row| row.get(0))?;
        Ok(n.max(0) as u64)
    }

    pub fn put_meta(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (ns, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(ns, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![ns, key, value])?;
        Ok(())
    }

    pub fn get_meta(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE ns = ?1 AND key = ?2")?
            .query_row(params![ns, key], |row| row.get(0))
            .optional()?)
    }

    pub fn delete_meta(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM meta WHERE ns = ?1 AND key = ?2")?
            .execute(params![ns, key])?;
        Ok(n > 0)
    }

    /// Every key of a namespace with its value, sorted by key.
    pub fn list_meta(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM meta WHERE ns = ?1 ORDER BY key")?;
        let rows = stmt
            .query_map(params![ns], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Records that sequence numbers of `stream` up to `upto` may be in use; never moves
    /// backwards. Returns the reservation now stored. Durable when the transaction commits
    /// (for [`Store::reserve_seq`]: before it returns).
    pub fn reserve_seq(&self, stream: &str, upto: u64) -> Result<u64, StoreError> {
        let upto_i = i64::try_from(upto).map_err(|_| StoreError::OutOfRange {
            what: "sequence number",
            value: upto,
        })?;
        let stored: i64 = self
            .conn
            .prepare_cached(
                "INSERT INTO seq_reservations (stream, upto) VALUES (?1, ?2)
                 ON CONFLICT(stream) DO UPDATE SET upto = MAX(upto, excluded.upto)
                 RETURNING upto",
            )?
            .query_row(params![stream, upto_i], |row| row.get(0))?;
        Ok(stored.max(0) as u64)
    }

    /// The stored reservation of `stream`, if any.
    pub fn seq_reservation(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = self
            .conn
            .prepare_cached("SELECT upto FROM seq_reservations WHERE stream = ?1")?
            .query_row(params![stream], |row| row.get(0))
            .optional()?;
        Ok(v.map(|v| v.max(0) as u64))
    }

    /// Appends to the activity log; returns the entry's id.
    pub fn append_activity(&self, r: &ActivityRecord) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO activity (time_ms, kind, path, device, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                r.time_ms,
                r.kind.as_str(),
                r.path,
                r.device,
                r.detail
            ])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Up to `limit` entries at or after `time_ms`, oldest first.
    pub fn activity_since(
        &self,
        time_ms: i64,
        limit: usize,
    ) -> Result<Vec<ActivityEntry>, StoreError> {
        self.activity_query(
            "SELECT id, time_ms, kind, path, device, detail FROM activity
             WHERE time_ms >= ?1 ORDER BY time_ms, id LIMIT ?2",
            time_ms,
            limit,
        )
    }

    /// Up to `limit` entries appended after entry `id`, oldest first (to follow the log).
    pub fn activity_after(&self, id: i64, limit: usize) -> Result<Vec<ActivityEntry>, StoreError> {
        self.activity_query(
            "SELECT id, time_ms, kind, path, device, detail FROM activity
             WHERE id > ?1 ORDER BY id LIMIT ?2",
            id,
            limit,
        )
    }

    fn activity_query(
        &self,
        sql: &str,
        from: i64,
        limit: usize,
    ) -> Result<Vec<ActivityEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params![from, limit])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let kind: String = row.get(2)?;
            out.push(ActivityEntry {
                id: row.get(0)?,
                record: ActivityRecord {
                    time_ms: row.get(1)?,
                    kind: ActivityKind::parse(&kind)
                        .ok_or(StoreError::UnknownActivityKind(kind))?,
                    path: row.get(3)?,
                    device: row.get(4)?,
                    detail: row.get(5)?,
                },
            });
        }
        Ok(out)
    }

    /// Summarises the saves of the log older than `time_ms`: each run of `local_change`
    /// or `remote_change` entries of one file by one device, each within `window_ms` of
    /// the one before, becomes its last entry, whose detail says how many there were and
    /// when the first was (`12 changes, the first at 2026-12-03T10:02:11Z`). A file saved
    /// a hundred times in an afternoon keeps one entry for it, not a hundred. Entries
    /// with a detail of their own are left as they are. Returns how many were removed.
    pub fn summarise_activity_before(
        &self,
        time_ms: i64,
        window_ms: i64,
    ) -> Result<u64, StoreError> {
        type Row = (i64, i64, String, String, String);
        let rows: Vec<Row> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, time_ms, kind, path, device FROM activity
                 WHERE time_ms < ?1 AND detail IS NULL AND path IS NOT NULL
                   AND kind IN ('local_change', 'remote_change')
                 ORDER BY kind, path, device, time_ms, id",
            )?;
            let mut rows = stmt.query(params![time_ms])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?));
            }
            out
        };
        let mut removed = 0u64;
        let mut run: Vec<&Row> = Vec::new();
        let mut flush = |run: &mut Vec<&Row>| -> Result<(), StoreError> {
            if let (Some(first), Some(last)) = (run.first(), run.last())
                && run.len() > 1
            {
                let detail = format!(
                    "{} changes, the first at {}",
                    run.len(),
                    crate::control::rfc3339(first.1)
                );
                self.conn
                    .prepare_cached("UPDATE activity SET detail = ?1 WHERE id = ?2")?
                    .execute(params![detail, last.0])?;
                let mut delete = self
                    .conn
                    .prepare_cached("DELETE FROM activity WHERE id = ?1")?;
                for r in &run[..run.len() - 1] {
                    removed += delete.execute(params![r.0])? as u64;
                }
            }
            run.clear();
            Ok(())
        };
        for row in &rows {
            let continues = run.last().is_some_and(|prev| {
                (&prev.2, &prev.3, &prev.4) == (&row.2, &row.3, &row.4)
                    && row.1 - prev.1 <= window_ms
            });
            if !continues {
                flush(&mut run)?;
            }
            run.push(row);
        }
        flush(&mut run)?;
        Ok(removed)
    }

    /// Drops activity entries older than `time_ms`; returns how many.
    pub fn prune_activity_before(&self, time_ms: i64) -> Result<u64, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM activity WHERE time_ms < ?1")?
            .execute(params![time_ms])?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    #[test]
    fn a_new_store_has_8_kib_pages_and_an_older_one_keeps_its_own_layout() {
        let (dir, store) = open_temp();
        let page = |c: &Connection| -> i64 {
            c.pragma_query_value(None, "page_size", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(page(&store.conn), PAGE_SIZE);
        drop(store);
        // A store made with other pages and the first schema (rowid meta table, activity
        // index) opens, works and keeps its layout.
        let old = dir.path().join("old.sqlite3");
        {
            let c = Connection::open(&old).unwrap();
            c.pragma_update(None, "page_size", 4096).unwrap();
            c.execute_batch(
                "CREATE TABLE meta (ns TEXT NOT NULL, key TEXT NOT NULL,
                     value BLOB NOT NULL, PRIMARY KEY (ns, key));
                 CREATE TABLE activity (id INTEGER PRIMARY KEY AUTOINCREMENT,
                     time_ms INTEGER NOT NULL, kind TEXT NOT NULL, path TEXT,
                     device TEXT NOT NULL, detail TEXT);
                 CREATE INDEX activity_by_time ON activity(time_ms, id);",
            )
            .unwrap();
        }
        let mut s = Store::open(&old).unwrap();
        assert_eq!(page(&s.conn), 4096);
        s.put_meta("ns", "k", b"v").unwrap();
        assert_eq!(s.get_meta("ns", "k").unwrap().as_deref(), Some(&b"v"[..]));
        s.append_activity(&record(5, ActivityKind::LocalChange, Some("x.md")))
            .unwrap();
        assert_eq!(s.activity_since(0, 10).unwrap().len(), 1);
    }

    fn open_temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        (dir, store)
    }

    fn record(time_ms: i64, kind: ActivityKind, path: Option<&str>) -> ActivityRecord {
        ActivityRecord {
            time_ms,
            kind,
            path: path.map(str::to_owned),
            device: "laptop".into(),
            detail: None,
        }
    }

    #[test]
    fn documents_snapshot_chunks_and_compaction() {
        let (_d, mut s) = open_temp();
        assert!(s.load("a").unwrap().is_none());
        s.append_changes("a", b"c1").unwrap();
        s.append_changes("a", b"c2").unwrap();
        let loaded = s.load("a").unwrap().unwrap();
        assert_eq!(loaded.snapshot, None);
        assert_eq!(loaded.chunks, [b"c1".to_vec(), b"c2".to_vec()]);

        // A chunk appended after the load survives the compaction built from that load.
        s.append_changes("a", b"c3").unwrap();
        s.compact("a", b"snap(c1,c2)", loaded.through).unwrap();
        let after = s.load("a").unwrap().unwrap();
        assert_eq!(after.snapshot.as_deref(), Some(&b"snap(c1,c2)"[..]));
        assert_eq!(after.chunks, [b"c3".to_vec()]);
        assert_eq!(s.chunk_count("a").unwrap(), 1);

        s.put_snapshot("b", b"sb").unwrap();
        assert_eq!(s.list_docs().unwrap(), ["a", "b"]);
        assert!(s.delete_doc("a").unwrap());
        assert!(!s.delete_doc("a").unwrap());
        assert_eq!(s.list_docs().unwrap(), ["b"]);
        assert!(s.load("a").unwrap().is_none());
        s.reclaim_space().unwrap();
    }

    #[test]
    fn reclaiming_space_leaves_no_free_page() {
        let (dir, mut s) = open_temp();
        for i in 0..40 {
            s.put_snapshot(&format!("d{i}"), &vec![i as u8; 8000])
                .unwrap();
        }
        for i in 0..40 {
            s.delete_doc(&format!("d{i}")).unwrap();
        }
        let pages = |s: &Store, what: &str| -> i64 {
            s.conn.pragma_query_value(None, what, |r| r.get(0)).unwrap()
        };
        assert!(pages(&s, "freelist_count") > 5);
        s.reclaim_space().unwrap();
        assert_eq!(pages(&s, "freelist_count"), 0);
        let file = std::fs::metadata(dir.path().join(STORE_FILE))
            .unwrap()
            .len();
        assert!(file <= 16 * PAGE_SIZE as u64, "{file} bytes left");
        let wal = dir.path().join(format!("{STORE_FILE}-wal"));
        assert_eq!(std::fs::metadata(wal).map_or(0, |m| m.len()), 0);
    }

    #[test]
    fn meta_namespaces() {
        let (_d, mut s) = open_temp();
        s.put_meta("files", "b.md", b"2").unwrap();
        s.put_meta("files", "a.md", b"1").unwrap();
        s.put_meta("engine", "state", b"blob").unwrap();
        s.put_meta("files", "a.md", b"1bis").unwrap();
        assert_eq!(s.get_meta("files", "a.md").unwrap().unwrap(), b"1bis");
        assert_eq!(s.get_meta("files", "zz").unwrap(), None);
        let files = s.list_meta("files").unwrap();
        assert_eq!(
            files,
            [
                ("a.md".to_owned(), b"1bis".to_vec()),
                ("b.md".to_owned(), b"2".to_vec())
            ]
        );
        assert!(s.delete_meta("files", "a.md").unwrap());
        assert_eq!(s.list_meta("files").unwrap().len(), 1);
        assert_eq!(s.list_meta("engine").unwrap().len(), 1);
    }

    #[test]
    fn seq_reservations_never_go_back() {
        let (d, mut s) = open_temp();
        assert_eq!(s.seq_reservation("peer").unwrap(), None);
        assert_eq!(s.reserve_seq("peer", 100).unwrap(), 100);
        assert_eq!(s.reserve_seq("peer", 50).unwrap(), 100);
        assert_eq!(s.reserve_seq("peer", 200).unwrap(), 200);
        assert!(matches!(
            s.reserve_seq("peer", u64::MAX),
            Err(StoreError::OutOfRange { .. })
        ));
        drop(s);
        let s = Store::open(&d.path().join(STORE_FILE)).unwrap();
        assert_eq!(s.seq_reservation("peer").unwrap(), Some(200));
    }

    #[test]
    fn activity_log_in_order() {
        let (_d, mut s) = open_temp();
        for (i, kind) in ActivityKind::ALL.into_iter().enumerate() {
            assert_eq!(ActivityKind::parse(kind.as_str()), Some(kind));
            s.append_activity(&record(1000 + i as i64, kind, Some("x.md")))
                .unwrap();
        }
        let all = s.activity_since(0, 100).unwrap();
        assert_eq!(all.len(), 11);
        assert_eq!(all[0].record.kind, ActivityKind::LocalChange);
        assert_eq!(all[9].record.kind.as_str(), "error");
        assert_eq!(all[10].record.kind.as_str(), "overlap");
        let recent = s.activity_since(1005, 2).unwrap();
        assert_eq!(
            recent.iter().map(|e| e.record.time_ms).collect::<Vec<_>>(),
            [1005, 1006]
        );
        let after = s.activity_after(all[7].id, 100).unwrap();
        assert_eq!(after.len(), 3);
        assert_eq!(s.prune_activity_before(1003).unwrap(), 3);
        assert_eq!(s.activity_since(0, 100).unwrap().len(), 8);
    }

    /// A file saved a hundred times a minute apart two days ago keeps one entry saying
    /// so; a pause of more than the window starts another; other files, other devices,
    /// entries with details and recent entries stay as they are.
    #[test]
    fn old_saves_are_summarised_one_entry_a_run() {
        let (_d, mut s) = open_temp();
        let day = 86_400_000;
        let t0 = 10 * day;
        for i in 0..100 {
            s.append_activity(&record(
                t0 + i * 60_000,
                ActivityKind::LocalChange,
                Some("a.md"),
            ))
            .unwrap();
        }
        // Three hours later, two more saves: another run.
        for i in 0..2 {
            s.append_activity(&record(
                t0 + 3 * 3_600_000 + i * 60_000,
                ActivityKind::LocalChange,
                Some("a.md"),
            ))
            .unwrap();
        }
        let mut other_device = record(t0 + 60_000, ActivityKind::LocalChange, Some("a.md"));
        other_device.device = "desk".into();
        s.append_activity(&other_device).unwrap();
        s.append_activity(&record(t0, ActivityKind::RemoteChange, Some("b.md")))
            .unwrap();
        let mut with_detail = record(t0 + 120_000, ActivityKind::LocalChange, Some("a.md"));
        with_detail.detail = Some("kept".into());
        s.append_activity(&with_detail).unwrap();
        s.append_activity(&record(t0, ActivityKind::Delete, Some("c.md")))
            .unwrap();
        // Today's saves stay one by one.
        for i in 0..3 {
            s.append_activity(&record(
                t0 + 2 * day + i,
                ActivityKind::LocalChange,
                Some("a.md"),
            ))
            .unwrap();
        }
        let before = s.activity_since(0, 1000).unwrap().len();
        assert_eq!(before, 109);
        let removed = s.summarise_activity_before(t0 + day, 3_600_000).unwrap();
        assert_eq!(removed, 99 + 1);
        let all = s.activity_since(0, 1000).unwrap();
        assert_eq!(all.len(), 9);
        let a_laptop: Vec<_> = all
            .iter()
            .filter(|e| {
                e.record.path.as_deref() == Some("a.md")
                    && e.record.device == "laptop"
                    && e.record.time_ms < t0 + day
            })
            .map(|e| (e.record.time_ms, e.record.detail.clone()))
            .collect();
        assert_eq!(
            a_laptop,
            vec![
                (t0 + 120_000, Some("kept".into())),
                (
                    t0 + 99 * 60_000,
                    Some(format!(
                        "100 changes, the first at {}",
                        crate::control::rfc3339(t0)
                    ))
                ),
                (
                    t0 + 3 * 3_600_000 + 60_000,
                    Some(format!(
                        "2 changes, the first at {}",
                        crate::control::rfc3339(t0 + 3 * 3_600_000)
                    ))
                ),
            ]
        );
        // Run again: nothing more to do.
        assert_eq!(s.summarise_activity_before(t0 + day, 3_600_000).unwrap(), 0);
    }

    #[test]
    fn failed_transaction_leaves_nothing() {
        let (_d, mut s) = open_temp();
        let result: Result<(), StoreError> = s.transaction(|tx| {
            tx.append_changes("doc", b"c")?;
            tx.put_meta("ns", "k", b"v")?;
            Err(StoreError::UnknownActivityKind("boom".into()))
        });
        assert!(result.is_err());
        assert!(s.load("doc").unwrap().is_none());
        assert!(s.get_meta("ns", "k").unwrap().is_none());
        s.transaction(|tx| {
            tx.append_changes("doc", b"c")?;
            tx.put_meta("ns", "k", b"v")?;
            tx.append_activity(&record(1, ActivityKind::LocalChange, Some("doc")))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(s.load("doc").unwrap().unwrap().chunks.len(), 1);
        assert_eq!(s.activity_since(0, 10).unwrap().len(), 1);
    }

    const CRASH_CHILD_ENV: &str = "CUE_STORE_CRASH_CHILD";

    /// Not a test on its own: the body of the child process of
    /// `kill_9_loses_no_committed_append`. It returns at once unless that test started it.
    #[test]
    fn crash_child() {
        let Some(path) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let mut store = Store::open(Path::new(&path)).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0u64.. {
            store
                .transaction(|tx| {
                    tx.append_changes("doc", format!("change {i}").as_bytes())?;
                    tx.put_meta("state", "last", &i.to_le_bytes())?;
                    tx.append_activity(&record(i as i64, ActivityKind::LocalChange, None))?;
                    Ok(())
                })
                .unwrap();
            // Printed only after the commit returned: every number printed is committed.
            writeln!(out, "committed {i}").unwrap();
            out.flush().unwrap();
        }
    }

    #[test]
    fn kill_9_loses_no_committed_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "store::tests::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last_seen = None;
        while last_seen.is_none_or(|n| n < 150) {
            assert!(
                Instant::now() < deadline,
                "the child committed too little in time"
            );
            let Some(line) = lines.next() else {
                panic!("the child exited early: {:?}", child.wait());
            };
            if let Some(n) = line.unwrap().strip_prefix("committed ") {
                last_seen = Some(n.parse::<u64>().unwrap());
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-loop
        child.wait().unwrap();
        let last_seen = last_seen.unwrap();

        let store = Store::open(&path).unwrap();
        let loaded = store.load("doc").unwrap().unwrap();
        assert!(
            loaded.chunks.len() as u64 > last_seen,
            "a committed append was lost"
        );
        for (i, chunk) in loaded.chunks.iter().enumerate() {
            assert_eq!(
                chunk,
                format!("change {i}").as_bytes(),
                "no gap, no torn append"
            );
        }
        // The three rows of each transaction landed together.
        let n = loaded.chunks.len() as u64;
        let last = store.get_meta("state", "last").unwrap().unwrap();
        assert_eq!(u64::from_le_bytes(last.try_into().unwrap()), n - 1);
        assert_eq!(store.activity_since(0, usize::MAX).unwrap().len() as u64, n);
    }
}
