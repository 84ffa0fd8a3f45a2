//! What the engine reports: status, the live files, and what it believes is on disk.

use super::*;

impl Engine {
    /// The synced files this device's ignore rules exclude, as last told
    /// ([`Input::Ignored`]).
    pub fn ignored_paths(&self) -> &BTreeSet<String> {
        &self.state.ignored
    }

    pub fn status(&mut self, store: &mut dyn DocStore) -> Status {
        let live = self.live_view(store);
        let members = self.members_view.clone();
        let ours = self.digest();
        let peers = members
            .iter()
            .filter(|(d, _)| **d != self.device)
            .map(|(d, name)| PeerInfo {
                device: *d,
                name: name.clone(),
                online: self.peers.get(d).is_some_and(|p| p.online),
                last_sync_ms: self.state.peers.get(d).and_then(|p| p.last_sync_ms),
                in_sync: self
                    .peers
                    .get(d)
                    .is_some_and(|p| p.online && p.digest == Some(ours)),
            })
            .collect();
        let catch_up = self.pull.as_ref().map(|p| {
            let tombs = self.index.tombstones();
            let total = self
                .index
                .paths()
                .into_keys()
                .filter(|f| live.contains_key(f) || !tombs.contains_key(f))
                .count();
            CatchUp {
                peer: p.peer,
                full: p.full,
                files_held: live.len(),
                files_total: total.max(live.len()),
            }
        });
        Status {
            files: live.len(),
            pending_changes: self.tail2.index_pending.count as usize
                + self.files.records().map(|m| m.pending.len()).sum::<usize>(),
            conflicts: self.open_conflicts(store),
            overlaps: self.open_overlaps(store),
            unwritable: self.unwritable_files(),
            deletions_paused: self.tail3.held_reason.as_ref().map(|(reason, since)| {
                DeletionsPaused {
                    count: self.tail3.held.len(),
                    reason: reason.clone(),
                    since_ms: *since,
                }
            }),
            skipped: self
                .state
                .skipped
                .iter()
                .map(|(p, s)| (p.clone(), *s))
                .collect(),
            too_large_elsewhere: self.too_large_elsewhere(store),
            unsyncable: self
                .unsyncable
                .iter()
                .map(|(p, r)| (p.clone(), r.clone()))
                .collect(),
            peers,
            last_full_resync_ms: self.state.last_full_resync_ms,
            connected: self.connected,
            syncing: self.pull.is_some(),
            catch_up,
            unverified: self.tail.unverified.len(),
            ignored: self.state.ignored.len(),
            refused: self.state.counters.clone(),
            modes_kept: !self.config.modes_unkept,
        }
    }

    /// The paths of all live files with their content hash (what the disk should hold).
    pub fn live_files(&mut self, store: &mut dyn DocStore) -> BTreeMap<String, ContentHash> {
        let live = self.live_view(store);
        live.iter()
            .map(|(f, p)| (*f, p.clone()))
            .filter_map(|(f, p)| Some((p, self.files.get(&f)?.doc_hash?)))
            .collect()
    }

    /// Documents adopted with their sender's content and not yet checked against it.
    pub fn unverified(&self) -> usize {
        self.tail.unverified.len()
    }

    /// Whether adopted documents wait for their check and the next tick would check some
    /// (see `CHECK_AFTER_QUIET_MS`): the host then ticks again as soon as nothing else
    /// waits.
    pub fn checks_due(&self) -> bool {
        !self.tail.unverified.is_empty()
            && (self.now_ms - self.last_adopt_ms >= super::CHECK_AFTER_QUIET_MS
                || self.now_ms - self.checks_owed_since_ms >= super::CHECK_PUT_OFF_AT_MOST_MS)
    }

    /// Whether ticks have work to do soon: adopted documents to check, documents to
    /// compact, a pull under way, or an online peer whose workspace differs from ours.
    /// When there is none, ticks only send the periodic hello and expire tombstones
    /// (seconds and days apart), so the host may tick rarely: an idle daemon should
    /// cost next to nothing.
    pub fn wants_frequent_ticks(&mut self) -> bool {
        if !self.tail.unverified.is_empty()
            || self.pull.is_some()
            || !self.deferred_pulls.is_empty()
            || !self.answering.is_empty()
        {
            return true;
        }
        if self.connected {
            let mine = self.digest();
            if self
                .peers
                .values()
                .any(|p| p.online && p.digest.is_some_and(|d| d != mine))
            {
                return true;
            }
        }
        self.index_increments > 0 || self.files.records().any(|m| m.increments > 0)
    }

    pub(super) fn at_rest(&self) -> bool {
        self.now_ms - self.last_input_ms >= COMPACT_AT_REST_AFTER_MS
    }

    /// The hash of what the engine believes is on disk at `path` (`None`: nothing it
    /// knows of). Every write the driver carries out updates it, so a watcher event whose
    /// file hashes to this is the driver's own write coming back.
    pub fn on_disk(&self, path: &str) -> Option<ContentHash> {
        self.files.on_disk(path)
    }

    /// Whether a file the driver read, hashed as `read`, is what the engine believes is
    /// there (`believed`, from [`on_disk`](Self::on_disk), [`disk`](Self::disk) or a
    /// write's expectation). Equal hashes, or on a folder that does not keep modes
    /// ([`Config::modes_unkept`], where the driver reads every file as not executable)
    /// the same bytes with either bit.
    pub fn same_on_disk(&self, believed: ContentHash, read: ContentHash) -> bool {
        believed == read || (self.config.modes_unkept && crate::ids::same_bytes(believed, read))
    }

    /// Whether the folder keeps Unix modes ([`Config::modes_unkept`]).
    pub fn modes_kept(&self) -> bool {
        !self.config.modes_unkept
    }

    /// Everything the engine believes is on disk, path → hash, in path order: the
    /// start-up scan compares the folder with it.
    pub fn disk(&self) -> impl Iterator<Item = (&str, ContentHash)> {
        self.files.disk()
    }

    /// What the folder takes `path` for: the path itself, or its [`name_key`] when the
    /// folder ignores case ([`Config::case_insensitive`]). Two paths with one disk key are
    /// one file here.
    pub fn disk_key<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        files::key(self.config.case_insensitive, path)
    }

    /// The paths believed on disk that are `path` or below it (a folder's files).
    pub fn on_disk_under(&self, path: &str) -> Vec<String> {
        self.files.under(path)
    }

    /// The files listed as too large to sync here that are `path` or below it.
    pub fn skipped_under(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}/");
        self.state
            .skipped
            .keys()
            .filter(|p| *p == path || p.starts_with(&prefix) || path == ".")
            .cloned()
            .collect()
    }

    /// The files listed as not syncable ([`Input::Unsyncable`]) at or below `path`.
    pub fn unsyncable_under(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}/");
        self.unsyncable
            .keys()
            .filter(|p| *p == path || p.starts_with(&prefix) || path == ".")
            .cloned()
            .collect()
    }

    /// The materialised bytes of the live file at `path` (tests, the demo).
    pub fn read(&mut self, path: &str, store: &mut dyn DocStore) -> Option<Vec<u8>> {
        self.read_file(path, store).map(|(bytes, _)| bytes)
    }

    /// The materialised bytes of the live file at `path`, and whether it is executable:
    /// what a write of it puts on disk.
    pub fn read_file(&mut self, path: &str, store: &mut dyn DocStore) -> Option<(Vec<u8>, bool)> {
        let live = self.live_view(store);
        let f = live.iter().find(|(_, p)| *p == path).map(|(f, _)| *f)?;
        self.with_doc(f, store, |d| Ok((d.materialize()?, d.exec())))
            .ok()
    }

    /// What the engine believes is on disk at `path`, from its document at the version
    /// written or seen there (the document may be ahead: a peer's change not yet
    /// written), when that renders to the bytes believed there.
    pub fn disk_content(
        &mut self,
        path: &str,
        store: &mut dyn DocStore,
    ) -> Option<(Vec<u8>, bool)> {
        let f = self.files.at(path)?;
        let (believed, heads) = self
            .files
            .get(&f)
            .and_then(|m| Some((m.disk.as_ref()?.1, m.disk_heads.clone())))?;
        if heads.is_empty() {
            return None;
        }
        let read = self
            .with_doc(f, store, |d| d.file_at(&super::from_heads(&heads)))
            .ok()?;
        self.same_on_disk(believed, crate::ids::file_hash(&read.0, read.1))
            .then_some(read)
    }

    /// Live files another device holds too large to sync.
    fn too_large_elsewhere(&mut self, store: &mut dyn DocStore) -> Vec<(String, String, u64)> {
        let entries = self.index.too_large();
        if entries.is_empty() {
            return Vec::new();
        }
        let live = self.live_view(store);
        let members = self.members_view.clone();
        entries
            .into_iter()
            .filter(|(_, d, _)| *d != self.device)
            .filter_map(|(f, d, size)| {
                let path = live.get(&f)?.clone();
                let name = members.get(&d).cloned().unwrap_or_else(|| d.to_string());
                Some((path, name, size))
            })
            .collect()
    }
}
