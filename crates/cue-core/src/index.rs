//! The index document: which files exist, where, who deleted what, who is a member, and
//! which conflicts are open. One per workspace, always in memory (it is small: a few
//! dozen bytes a file).
//!
//! Every map holds plain scalars, never nested objects: two peers that derive the same
//! fact (a conflict copy's name, a conflict record) write equal values, which automerge
//! merges into one value instead of two competing objects.
//!
//! | map         | key       | value                                             |
//! |-------------|-----------|---------------------------------------------------|
//! | `path`      | file id   | the file's path                                   |
//! | `origin`    | file id   | the device that created it                        |
//! | `tomb`      | file id   | `<time ms>;<heads>`: deleted at, seeing these heads |
//! | `members`   | device id | the device's name                                 |
//! | `conflicts` | conflict id | an encoded [`ConflictRecord`]                   |

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, PatchAction, Prop, ROOT, ReadDoc,
    ScalarValue, Value,
};

use crate::doc::DocError;
use crate::ids::{DeviceId, FileId};

const MAPS: [&str; 5] = ["path", "origin", "tomb", "members", "conflicts"];

/// Keys of the `origin` map that say a file is too large on a device.
const LARGE_PREFIX: &str = "large:";

#[derive(Debug)]
pub struct IndexDoc {
    doc: AutoCommit,
    /// Heads at the last save: `AutoCommit::load` does not set its own save cursor, so
    /// its `save_incremental` after a load would repeat the whole document.
    saved: Vec<ChangeHash>,
    /// The "path" map read out, built on first use and kept up to date by `set_path` and
    /// `purge`; anything else that can change the map (`automerge()`, through which
    /// remote changes arrive) drops it. Reading 10,000 entries out of automerge for
    /// every imported file made an import quadratic.
    paths: std::cell::RefCell<Option<PathCache>>,
    /// How many times `paths` was built (tests: reads must not make it build again).
    #[cfg(test)]
    builds: std::cell::Cell<u32>,
}

/// What a peer's changes touched in the index ([`IndexDoc::apply_keeping_paths`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IndexDelta {
    /// The maps (of the module docs' table) with a key set or deleted.
    pub maps: BTreeSet<&'static str>,
    /// The files whose `path` entry was set or deleted.
    pub paths: BTreeSet<FileId>,
    /// The files whose `tomb` entry was set or deleted.
    pub tombs: BTreeSet<FileId>,
}

#[derive(Debug, Default)]
struct PathCache {
    of: BTreeMap<FileId, String>,
    at: BTreeMap<String, BTreeSet<FileId>>,
    /// The files by `name_key` of their path, made when first asked for (rarely: a
    /// key for each path costs more than the rest of the cache).
    keyed: Option<BTreeMap<String, BTreeSet<FileId>>>,
}

impl PathCache {
    fn set(&mut self, file: FileId, path: &str) {
        self.remove(&file);
        self.of.insert(file, path.to_string());
        self.at.entry(path.to_string()).or_default().insert(file);
    }

    fn remove(&mut self, file: &FileId) {
        self.keyed = None;
        if let Some(old) = self.of.remove(file)
            && let Some(files) = self.at.get_mut(&old)
        {
            files.remove(file);
            if files.is_empty() {
                self.at.remove(&old);
            }
        }
    }
}

/// A deletion: when, and which version of the file the deleter saw. An edit the deleter did
/// not see keeps the file alive (docs/reference.md §3.1: a delete concurrent with an edit
/// keeps the edit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub time_ms: i64,
    pub heads: Vec<ChangeHash>,
}

impl Tombstone {
    /// A file dropped as one with another that holds its bytes (the clash rule's
    /// tombstone, of time 0), not deleted by anyone: its content lives on in that file.
    pub fn dropped_as_one(&self) -> bool {
        self.time_ms == 0
    }

    fn encode(&self) -> String {
        let heads: Vec<String> = self.heads.iter().map(|h| h.to_string()).collect();
        format!("{};{}", self.time_ms, heads.join(","))
    }

    fn decode(s: &str) -> Option<Tombstone> {
        let (t, h) = s.split_once(';')?;
        let heads = if h.is_empty() {
            Vec::new()
        } else {
            h.split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?
        };
        Some(Tombstone {
            time_ms: t.parse().ok()?,
            heads,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConflictKind {
    Frontmatter,
    Create,
    Binary,
}

impl ConflictKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConflictKind::Frontmatter => "frontmatter",
            ConflictKind::Create => "create",
            ConflictKind::Binary => "binary",
        }
    }

    fn parse(s: &str) -> Option<ConflictKind> {
        Some(match s {
            "frontmatter" => ConflictKind::Frontmatter,
            "create" => ConflictKind::Create,
            "binary" => ConflictKind::Binary,
            _ => return None,
        })
    }
}

/// A conflict as recorded in the synced index, so every peer lists the same ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictRecord {
    pub kind: ConflictKind,
    /// The file the conflict is about.
    pub file: FileId,
    /// Its path when the conflict was found.
    pub path: String,
    /// For `create` and `binary`: the conflict copy holding the losing version.
    pub copy: Option<(FileId, String)>,
    /// For `frontmatter`: the key and the value that lost.
    pub detail: String,
    pub time_ms: i64,
    /// `resolve` marks a conflict seen; the record stays so that a peer that finds the
    /// same conflict later does not raise it again.
    pub resolved: bool,
}

const SEP: char = '\u{1f}';

impl ConflictRecord {
    fn encode(&self) -> String {
        let (copy_id, copy_path) = match &self.copy {
            Some((id, p)) => (id.to_string(), p.clone()),
            None => (String::new(), String::new()),
        };
        [
            self.kind.as_str().to_string(),
            self.file.to_string(),
            self.path.clone(),
            copy_id,
            copy_path,
            self.detail.clone(),
            self.time_ms.to_string(),
            (self.resolved as u8).to_string(),
        ]
        .join(&SEP.to_string())
    }

    fn decode(s: &str) -> Option<ConflictRecord> {
        let f: Vec<&str> = s.split(SEP).collect();
        if f.len() != 8 {
            return None;
        }
        let copy = if f[3].is_empty() {
            None
        } else {
            Some((FileId::from_hex(f[3])?, f[4].to_string()))
        };
        Some(ConflictRecord {
            kind: ConflictKind::parse(f[0])?,
            file: FileId::from_hex(f[1])?,
            path: f[2].to_string(),
            copy,
            detail: f[5].to_string(),
            time_ms: f[6].parse().ok()?,
            resolved: f[7] == "1",
        })
    }
}

fn str_of(v: &Value<'_>) -> Option<String> {
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        Value::Object(_) => None,
    }
}

impl IndexDoc {
    /// A new, empty index. Its first change creates the top-level maps with a fixed actor
    /// and time, so that every device's first change is the *same* change (same hash):
    /// two devices that create their index independently still agree on the map objects.
    pub fn new(actor: ActorId) -> IndexDoc {
        let mut doc = AutoCommit::new().with_actor(ActorId::from(&b"cue-index-genesis"[..]));
        for m in MAPS {
            // Cannot fail on a fresh document.
            let _ = doc.put_object(ROOT, m, ObjType::Map);
        }
        doc.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
        IndexDoc {
            doc: doc.with_actor(actor),
            saved: Vec::new(),
            paths: Default::default(),
            #[cfg(test)]
            builds: Default::default(),
        }
    }

    pub fn load(bytes: &[u8], actor: ActorId) -> Result<IndexDoc, DocError> {
        let decode = |b: &[u8]| crate::doc::load_automerge(b).map_err(DocError::Decode);
        let mut doc = decode(bytes)?;
        // automerge 0.12 applies the changes stored after a snapshot by splicing them into
        // its columns, and a splice can leave a column's whole capacity behind: a 10,000-
        // file index loaded from a snapshot and a few dozen increments held 77 MB. Loaded
        // again from its own `save()`, its columns are laid out once.
        let whole = doc.save();
        if whole.len() != bytes.len() {
            doc = decode(&whole)?;
        }
        let saved = doc.get_heads();
        let idx = IndexDoc {
            doc: doc.with_actor(actor),
            saved,
            paths: Default::default(),
            #[cfg(test)]
            builds: Default::default(),
        };
        for m in MAPS {
            if idx.map(m).is_none() {
                return Err(DocError::Shape("index lacks a map"));
            }
        }
        Ok(idx)
    }

    /// The document, for what may change its entries (applying a peer's changes): the
    /// path cache is dropped, and built again when next asked.
    pub fn automerge(&mut self) -> &mut AutoCommit {
        *self.paths.get_mut() = None;
        &mut self.doc
    }

    /// The document, for applying a peer's changes (`apply`): the path cache, when there
    /// is one, is kept and brought up to date with the paths the changes set or removed
    /// (automerge's patches of what was applied name them; each is read again), rather
    /// than dropped and built again from every path on the next read, which was a fifth
    /// of a receiver's time per message at 10,000 files (docs/benchmarks.md, "Session
    /// 13"). Anything the patches do not explain (the `path` map itself replaced)
    /// drops it.
    ///
    /// Also returns what the changes touched ([`IndexDelta`]), when the patches explain
    /// it (`None` without a path cache, or when they do not).
    pub fn apply_keeping_paths<T>(
        &mut self,
        apply: impl FnOnce(&mut AutoCommit) -> T,
    ) -> (T, Option<IndexDelta>) {
        if self.paths.get_mut().is_none() || self.doc.get_heads().is_empty() {
            return (apply(self.automerge()), None);
        }
        // Records what is applied from here on (automerge's diff index).
        self.doc.update_diff_cursor();
        let before = self.doc.diff_cursor();
        let out = apply(&mut self.doc);
        let after = self.doc.get_heads();
        let patches = self.doc.diff(&before, &after);
        self.doc.reset_diff_cursor();
        let maps: BTreeMap<ObjId, &'static str> = MAPS
            .iter()
            .filter_map(|name| Some((self.map(name)?, *name)))
            .collect();
        let mut delta = IndexDelta::default();
        let mut keys: BTreeSet<String> = BTreeSet::new();
        // Every map holds scalars only (module docs): a patch is a key of one of them
        // set or deleted, or it is not understood.
        let mut understood = maps.len() == MAPS.len();
        for patch in patches {
            let key = match patch.action {
                PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => key,
                PatchAction::Conflict {
                    prop: Prop::Map(key),
                } => key,
                _ => {
                    understood = false;
                    continue;
                }
            };
            match maps.get(&patch.obj) {
                Some(&"path") => {
                    keys.insert(key);
                }
                Some(&"tomb") => {
                    delta.maps.insert("tomb");
                    delta.tombs.extend(FileId::from_hex(&key));
                }
                Some(name) => {
                    delta.maps.insert(name);
                }
                // A top-level map replaced, or something inside a value that should be a
                // scalar (only a hostile or broken peer does that).
                None => understood = false,
            }
        }
        if !understood {
            *self.paths.get_mut() = None;
            return (out, None);
        }
        let now: Vec<(String, Option<String>)> = keys
            .into_iter()
            .map(|k| {
                let v = self.get("path", &k);
                (k, v)
            })
            .collect();
        if !now.is_empty() {
            delta.maps.insert("path");
        }
        if let Some(cache) = self.paths.get_mut() {
            for (key, path) in now {
                let Some(file) = FileId::from_hex(&key) else {
                    continue;
                };
                delta.paths.insert(file);
                match path {
                    Some(p) => cache.set(file, &p),
                    None => cache.remove(&file),
                }
            }
        }
        (out, Some(delta))
    }

    /// The document, for what leaves its entries as they are (saving it, reading its
    /// changes or heads, sealing them): the path cache stays. Sealing the index after
    /// every new file through [`IndexDoc::automerge`] had the cache of every path built
    /// again for each: a third of a burst's time at 3,000 files (docs/benchmarks.md,
    /// "Session 11").
    pub fn automerge_unchanged(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    pub fn change_by_hash(&mut self, hash: &ChangeHash) -> Option<automerge::Change> {
        crate::doc::change_by_hash(&mut self.doc, hash)
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.saved = self.doc.get_heads();
        self.doc.save()
    }

    /// The changes since the last save (or load), to append to the stored form.
    pub fn save_incremental(&mut self) -> Vec<u8> {
        let bytes = self.doc.save_after(&self.saved);
        self.saved = self.doc.get_heads();
        bytes
    }

    /// The index's maps as automerge objects. Every device's index starts from one
    /// genesis change (`new`), so these are the same objects everywhere, for good: a
    /// change that replaces or removes one is no change cue makes ([`crate::engine`]
    /// refuses it whole).
    pub fn maps(&self) -> [Option<ObjId>; MAPS.len()] {
        MAPS.map(|m| self.map(m))
    }

    fn map(&self, name: &str) -> Option<ObjId> {
        match self.doc.get(ROOT, name).ok()?? {
            (Value::Object(ObjType::Map), id) => Some(id),
            _ => None,
        }
    }

    fn entries(&self, name: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(m) = self.map(name) {
            for item in self.doc.map_range(&m, ..) {
                if let Some(v) = str_of(&item.value.into()) {
                    out.insert(item.key.to_string(), v);
                }
            }
        }
        out
    }

    fn get(&self, name: &str, key: &str) -> Option<String> {
        let m = self.map(name)?;
        let (v, _) = self.doc.get(&m, key).ok()??;
        str_of(&v)
    }

    fn put(&mut self, name: &str, key: &str, value: &str) -> Result<(), DocError> {
        if self.get(name, key).as_deref() == Some(value)
            && self
                .map(name)
                .and_then(|m| self.doc.get_all(&m, key).ok())
                .is_some_and(|all| all.len() == 1)
        {
            return Ok(());
        }
        let m = self.map(name).ok_or(DocError::Shape("index lacks a map"))?;
        self.doc.put(&m, key, value)?;
        Ok(())
    }

    fn delete(&mut self, name: &str, key: &str) -> Result<(), DocError> {
        let m = self.map(name).ok_or(DocError::Shape("index lacks a map"))?;
        if self.doc.get(&m, key)?.is_some() {
            self.doc.delete(&m, key)?;
        }
        Ok(())
    }

    pub fn commit(&mut self, time_s: i64) -> Option<Change> {
        let opts = automerge::transaction::CommitOptions::default().with_time(time_s);
        self.doc.commit_with(opts)?;
        self.doc.get_last_local_change()
    }

    /// Every file the index knows, with its path (deleted ones included).
    pub fn paths(&self) -> BTreeMap<FileId, String> {
        self.with_paths(|c| c.of.clone())
    }

    /// Whether the index has an entry for `file`, live or deleted.
    pub fn knows(&self, file: &FileId) -> bool {
        self.with_paths(|c| c.of.contains_key(file))
    }

    /// The files the index puts at a path whose `name_key` is `key` (deleted ones
    /// included): the files that clash with one at such a path.
    pub fn files_with_key(&self, key: &str) -> Vec<FileId> {
        self.with_paths(|_| ());
        let mut cache = self.paths.borrow_mut();
        let Some(cache) = cache.as_mut() else {
            return Vec::new();
        };
        let keyed = cache.keyed.get_or_insert_with(|| {
            let mut keyed: BTreeMap<String, BTreeSet<FileId>> = BTreeMap::new();
            for (f, p) in &cache.of {
                keyed
                    .entry(crate::paths::name_key(p))
                    .or_default()
                    .insert(*f);
            }
            keyed
        });
        keyed
            .get(key)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The files the index puts at `path` (deleted ones included).
    pub fn files_at(&self, path: &str) -> Vec<FileId> {
        self.with_paths(|c| {
            c.at.get(path)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default()
        })
    }

    fn with_paths<T>(&self, f: impl FnOnce(&PathCache) -> T) -> T {
        let mut cache = self.paths.borrow_mut();
        let cache = cache.get_or_insert_with(|| {
            #[cfg(test)]
            self.builds.set(self.builds.get() + 1);
            let mut c = PathCache::default();
            for (k, v) in self.entries("path") {
                if let Some(file) = FileId::from_hex(&k) {
                    c.set(file, &v);
                }
            }
            c
        });
        f(cache)
    }

    /// Edits made since the last commit.
    pub fn pending_ops(&self) -> usize {
        self.doc.pending_ops()
    }

    pub fn path_of(&self, file: &FileId) -> Option<String> {
        self.get("path", &file.to_string())
    }

    pub fn set_path(&mut self, file: &FileId, path: &str) -> Result<(), DocError> {
        let put = self.put("path", &file.to_string(), path);
        match (&put, self.paths.get_mut()) {
            (Ok(()), Some(cache)) => cache.set(*file, path),
            (Err(_), cache) => *cache = None,
            (Ok(()), None) => {}
        }
        put
    }

    pub fn origin(&self, file: &FileId) -> Option<DeviceId> {
        DeviceId::from_hex(&self.get("origin", &file.to_string())?)
    }

    pub fn set_origin(&mut self, file: &FileId, device: &DeviceId) -> Result<(), DocError> {
        self.put("origin", &file.to_string(), &device.to_string())
    }

    pub fn tombstone(&self, file: &FileId) -> Option<Tombstone> {
        Tombstone::decode(&self.get("tomb", &file.to_string())?)
    }

    pub fn tombstones(&self) -> BTreeMap<FileId, Tombstone> {
        self.entries("tomb")
            .into_iter()
            .filter_map(|(k, v)| Some((FileId::from_hex(&k)?, Tombstone::decode(&v)?)))
            .collect()
    }

    /// The tombstone `file` had just before one of the changes applied since `since`
    /// (the last of them, looking at the latest 256): what a purge among them took
    /// away. `None` when none of them was made over one.
    pub fn tombstone_before_changes_since(
        &mut self,
        file: &FileId,
        since: &[ChangeHash],
    ) -> Option<Tombstone> {
        let changes = self.doc.get_changes(since);
        let deps: Vec<Vec<ChangeHash>> = changes
            .iter()
            .rev()
            .take(256)
            .map(|c| c.deps().to_vec())
            .collect();
        deps.iter().find_map(|deps| self.tombstone_at(file, deps))
    }

    /// `file`'s tombstone in the index as it was at `heads`.
    pub fn tombstone_at(&self, file: &FileId, heads: &[ChangeHash]) -> Option<Tombstone> {
        Tombstone::decode(&self.entry_at("tomb", file, heads)?)
    }

    /// `file`'s path in the index as it was at `heads`.
    pub fn path_at(&self, file: &FileId, heads: &[ChangeHash]) -> Option<String> {
        self.entry_at("path", file, heads)
    }

    /// `file`'s origin (the device that made it) as it was at `heads`.
    pub fn origin_at(&self, file: &FileId, heads: &[ChangeHash]) -> Option<DeviceId> {
        DeviceId::from_hex(&self.entry_at("origin", file, heads)?)
    }

    /// The files with a tombstone in the index as it was at `heads`.
    pub fn tombstoned_at(&self, heads: &[ChangeHash]) -> BTreeSet<FileId> {
        let Ok(Some((Value::Object(ObjType::Map), tombs))) = self.doc.get_at(ROOT, "tomb", heads)
        else {
            return BTreeSet::new();
        };
        self.doc
            .keys_at(&tombs, heads)
            .filter_map(|k| FileId::from_hex(&k))
            .collect()
    }

    /// `file`'s entry in the map `map` as it was at `heads`.
    fn entry_at(&self, map: &str, file: &FileId, heads: &[ChangeHash]) -> Option<String> {
        let (Value::Object(ObjType::Map), entries) = self.doc.get_at(ROOT, map, heads).ok()??
        else {
            return None;
        };
        let (v, _) = self.doc.get_at(&entries, file.to_string(), heads).ok()??;
        str_of(&v)
    }

    pub fn set_tombstone(&mut self, file: &FileId, tomb: &Tombstone) -> Result<(), DocError> {
        self.put("tomb", &file.to_string(), &tomb.encode())
    }

    pub fn clear_tombstone(&mut self, file: &FileId) -> Result<(), DocError> {
        self.delete("tomb", &file.to_string())
    }

    /// Forget a file entirely (its tombstone expired).
    pub fn purge(&mut self, file: &FileId) -> Result<(), DocError> {
        let key = file.to_string();
        *self.paths.get_mut() = None;
        for m in ["path", "origin", "tomb"] {
            self.delete(m, &key)?;
        }
        Ok(())
    }

    /// The files some device holds too large to sync, with its size there. (Kept in the
    /// `origin` map under `large:FILE:DEVICE` keys: a new top-level map would change the
    /// index's genesis change, which every device must share.)
    pub fn too_large(&self) -> Vec<(FileId, DeviceId, u64)> {
        self.entries("origin")
            .into_iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(LARGE_PREFIX)?;
                let (file, device) = rest.split_once(':')?;
                Some((
                    FileId::from_hex(file)?,
                    DeviceId::from_hex(device)?,
                    v.parse().ok()?,
                ))
            })
            .collect()
    }

    /// `device` holds `file` at `size` bytes, too large to sync (`None`: no longer).
    pub fn set_too_large(
        &mut self,
        file: &FileId,
        device: &DeviceId,
        size: Option<u64>,
    ) -> Result<(), DocError> {
        let key = format!("{LARGE_PREFIX}{file}:{device}");
        match size {
            Some(size) => self.put("origin", &key, &size.to_string()),
            None => self.delete("origin", &key),
        }
    }

    pub fn members(&self) -> BTreeMap<DeviceId, String> {
        self.entries("members")
            .into_iter()
            .filter_map(|(k, v)| Some((DeviceId::from_hex(&k)?, v)))
            .collect()
    }

    pub fn set_member(&mut self, device: &DeviceId, name: &str) -> Result<(), DocError> {
        self.put("members", &device.to_string(), name)
    }

    /// Every value of every member-list entry (concurrent writes keep several), with the
    /// actor that wrote it: what the engine checks before it takes anyone for a member.
    pub fn member_values(&self) -> BTreeMap<DeviceId, Vec<(String, ActorId)>> {
        self.raw_values("members")
            .into_iter()
            .filter_map(|(k, v)| Some((DeviceId::from_hex(&k)?, v)))
            .collect()
    }

    /// Every value under every key of map `name` (concurrent writes keep several), with
    /// the actor that wrote each.
    pub(crate) fn raw_values(&self, name: &str) -> BTreeMap<String, Vec<(String, ActorId)>> {
        let mut out = BTreeMap::new();
        let Some(m) = self.map(name) else {
            return out;
        };
        for item in self.doc.map_range(&m, ..) {
            let Ok(all) = self.doc.get_all(&m, item.key.as_ref()) else {
                continue;
            };
            let values: Vec<(String, ActorId)> = all
                .into_iter()
                .filter_map(|(v, id)| match id {
                    ObjId::Id(_, actor, _) => Some((str_of(&v)?, actor)),
                    ObjId::Root => None,
                })
                .collect();
            out.insert(item.key.to_string(), values);
        }
        out
    }

    /// Sets `key` of map `name` (records kept beside the member list: rotations, who
    /// admitted whom).
    pub(crate) fn put_raw(&mut self, name: &str, key: &str, value: &str) -> Result<(), DocError> {
        self.put(name, key, value)
    }

    pub fn conflicts(&self) -> BTreeMap<String, ConflictRecord> {
        self.entries("conflicts")
            .into_iter()
            .filter_map(|(k, v)| Some((k, ConflictRecord::decode(&v)?)))
            .collect()
    }

    pub fn has_conflict(&self, id: &str) -> bool {
        self.get("conflicts", id).is_some()
    }

    pub fn put_conflict(&mut self, id: &str, rec: &ConflictRecord) -> Result<(), DocError> {
        self.put("conflicts", id, &rec.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn independent_indexes_share_their_genesis() {
        let mut a = IndexDoc::new(ActorId::from(&[1u8; 4][..]));
        let mut b = IndexDoc::new(ActorId::from(&[2u8; 4][..]));
        assert_eq!(a.heads(), b.heads());
        let f = FileId([7; 16]);
        a.set_path(&f, "a.md").unwrap();
        a.commit(0);
        b.set_member(&DeviceId([9; 32]), "bee").unwrap();
        b.commit(0);
        a.automerge().merge(b.automerge()).unwrap();
        assert_eq!(a.path_of(&f).as_deref(), Some("a.md"));
        assert_eq!(a.members().len(), 1);
    }

    /// The path cache is built once for reads of the document (saving, sealing, its
    /// changes), and again only after a peer's changes may have moved paths; what it
    /// says is then what they say. Sealing through `automerge()` after every new file
    /// built it once per file: a third of a 3,000-file burst.
    #[test]
    fn reading_the_index_keeps_its_path_cache_and_a_peers_changes_refresh_it() {
        let mut a = IndexDoc::new(ActorId::from(&[1u8; 4][..]));
        for i in 0..100u8 {
            a.set_path(&FileId([i; 16]), &format!("n{i}.md")).unwrap();
            a.commit(0);
            assert_eq!(a.files_at(&format!("n{i}.md")), vec![FileId([i; 16])]);
            let _ = a.automerge_unchanged().save();
            let _ = a.automerge_unchanged().get_heads();
        }
        assert_eq!(a.builds.get(), 1);
        let mut b = IndexDoc::load(
            &a.automerge_unchanged().save(),
            ActorId::from(&[2u8; 4][..]),
        )
        .unwrap();
        b.set_path(&FileId([3; 16]), "moved.md").unwrap();
        b.commit(0);
        a.automerge().merge(b.automerge()).unwrap();
        assert_eq!(a.files_at("moved.md"), vec![FileId([3; 16])]);
        assert!(a.files_at("n3.md").is_empty());
        assert_eq!(a.builds.get(), 2);
    }

    /// A peer's changes applied through `apply_keeping_paths` leave the path cache
    /// saying what a cache built afresh says: paths set, moved, purged, set at once on
    /// both sides (automerge's winner), without building it again.
    #[test]
    fn a_peers_changes_update_the_path_cache_without_building_it_again() {
        let mut a = IndexDoc::new(ActorId::from(&[1u8; 4][..]));
        for i in 0..50u8 {
            a.set_path(&FileId([i; 16]), &format!("n{i}.md")).unwrap();
        }
        a.commit(0);
        let mut b = IndexDoc::load(
            &a.automerge_unchanged().save(),
            ActorId::from(&[2u8; 4][..]),
        )
        .unwrap();
        assert_eq!(a.files_at("n1.md"), vec![FileId([1; 16])]);
        let builds = a.builds.get();
        for round in 0..5u8 {
            // The peer: new files, moves, a purge; and at the same time here a move of
            // a file the peer moves too.
            for i in 0..10u8 {
                let f = FileId([100 + round * 10 + i; 16]);
                b.set_path(&f, &format!("r{round}/new{i}.md")).unwrap();
            }
            b.set_path(&FileId([round; 16]), &format!("moved-by-b-{round}.md"))
                .unwrap();
            b.purge(&FileId([20 + round; 16])).unwrap();
            let dead = FileId([30 + round; 16]);
            b.set_tombstone(
                &dead,
                &Tombstone {
                    time_ms: 1,
                    heads: vec![ChangeHash([round; 32])],
                },
            )
            .unwrap();
            b.commit(0);
            a.set_path(&FileId([round; 16]), &format!("moved-by-a-{round}.md"))
                .unwrap();
            a.commit(0);
            let changes: Vec<Change> = b.automerge_unchanged().get_changes(&[]);
            let (applied, delta) = a.apply_keeping_paths(|am| am.apply_changes(changes));
            applied.unwrap();
            // What moved: the peer's new files, its move and its purge (and the file
            // both moved, whichever wins), nothing else.
            let delta = delta.expect("explained by the patches");
            let mut moved: BTreeSet<FileId> = (0..10u8)
                .map(|i| FileId([100 + round * 10 + i; 16]))
                .collect();
            moved.extend([FileId([round; 16]), FileId([20 + round; 16])]);
            assert_eq!(delta.paths, moved, "round {round}");
            assert_eq!(delta.tombs, BTreeSet::from([dead]), "round {round}");
            assert!(delta.maps.contains("path") && delta.maps.contains("tomb"));
            assert!(!delta.maps.contains("members"));
            let fresh = IndexDoc::load(
                &a.automerge_unchanged().save(),
                ActorId::from(&[3u8; 4][..]),
            )
            .unwrap();
            assert_eq!(a.paths(), fresh.paths(), "round {round}");
            for p in fresh.paths().values() {
                assert_eq!(a.files_at(p), fresh.files_at(p), "{p}");
            }
            assert!(a.files_at(&format!("n{}.md", 20 + round)).is_empty());
            // And the peer gets ours, for the next round.
            let ours: Vec<Change> = a.automerge_unchanged().get_changes(&[]);
            b.automerge().apply_changes(ours).unwrap();
        }
        assert_eq!(a.builds.get(), builds, "the cache was built again");

        // A peer that replaces the whole `path` map (only a broken or hostile one would)
        // leaves a cache that says what the new map says.
        let m = b
            .automerge()
            .put_object(ROOT, "path", ObjType::Map)
            .unwrap();
        b.automerge()
            .put(&m, FileId([9; 16]).to_string(), "only.md")
            .unwrap();
        b.commit(0);
        let changes = b.automerge_unchanged().get_changes(&[]);
        let (applied, delta) = a.apply_keeping_paths(|am| am.apply_changes(changes));
        applied.unwrap();
        assert_eq!(delta, None, "a replaced map is not explained");
        let fresh = IndexDoc {
            doc: a.automerge_unchanged().clone(),
            saved: Vec::new(),
            paths: Default::default(),
            builds: Default::default(),
        };
        assert_eq!(a.paths(), fresh.paths());
    }

    #[test]
    fn records_roundtrip() {
        let rec = ConflictRecord {
            kind: ConflictKind::Create,
            file: FileId([1; 16]),
            path: "notes/a.md".into(),
            copy: Some((FileId([2; 16]), "notes/a.conflict-bee-0a0b0c.md".into())),
            detail: String::new(),
            time_ms: 42,
            resolved: false,
        };
        assert_eq!(ConflictRecord::decode(&rec.encode()), Some(rec));
        let t = Tombstone {
            time_ms: 5,
            heads: vec![ChangeHash([3; 32])],
        };
        assert_eq!(Tombstone::decode(&t.encode()), Some(t));
    }
}
