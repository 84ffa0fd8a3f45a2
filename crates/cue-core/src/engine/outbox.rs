//! The tick and the outbox: timers, activity, and the effects of one call in their
//! fixed order.

use super::*;

impl Engine {
    /// Deleted files whose tombstone this peer has seen for longer than `tombstone_ms`
    /// by its own clock. Tombstones seen for the first time are noted now; those no
    /// longer in the index are forgotten.
    fn expired_tombstones(&mut self) -> Vec<FileId> {
        let now = self.now_ms;
        let tombstones = self.index.tombstones();
        let purged = &mut self.tail7.purged;
        let kept_for = PURGED_KEPT_TOMBSTONE_TIMES * self.config.tombstone_ms;
        let before = purged.len();
        // (Kept while the tombstone is there: a device holding it for ever, as its guard
        // does, would otherwise have it purged and put back at every tick.)
        purged.retain(|f, (_, at)| tombstones.contains_key(f) || now - *at <= kept_for);
        let mut changed = purged.len() != before;
        let seen = &mut self.tail3.tombs_seen;
        let before = seen.len();
        seen.retain(|f, _| tombstones.contains_key(f));
        changed |= seen.len() != before;
        for f in tombstones.keys() {
            if !seen.contains_key(f) {
                // (One purged here and put back since: held since it was first.)
                seen.insert(*f, purged.get(f).map_or(now, |(first, _)| *first));
                changed = true;
            }
        }
        if changed {
            self.state_dirty = true;
        }
        // A held deletion is never forgotten: the user has not decided yet. One purged
        // here and put back by a device that held it for less is that device's to purge
        // (`purges_before_their_time`), for four `tombstone_days` after the purge here.
        let held = &self.tail3.held;
        seen.iter()
            .filter(|(f, t)| {
                now - **t > self.config.tombstone_ms
                    && !held.contains(*f)
                    && purged.get(*f).is_none_or(|(_, at)| now - at > kept_for)
            })
            .map(|(f, _)| *f)
            .collect()
    }

    pub(super) fn tick(&mut self, store: &mut dyn DocStore) {
        let now = self.now_ms;
        if self.connected && now - self.last_hello_ms >= self.config.anti_entropy_ms {
            self.hello(None, false);
        }
        // A catch-up whose answer waits for its sender's budget (`pace.rs`) has not
        // timed out: what it brings is still its answer.
        if let Some(p) = &self.pull
            && now - p.started_ms > self.config.pull_timeout_ms
            && !self.pacer.has_waiting(&p.peer)
        {
            self.pull = None;
        }
        self.answer_deferred_pulls(store);
        self.release_waiting(store);
        self.maybe_pull(store);
        let expired = self.expired_tombstones();
        let mut purged = false;
        for f in expired {
            if self.is_live(f, store) {
                continue;
            }
            if let Some(seen) = self.tail3.tombs_seen.get(&f) {
                self.tail7.purged.insert(f, (*seen, self.now_ms));
                self.state_dirty = true;
            }
            let _ = self.index.purge(&f);
            // (Its overlap notices go with it: they can never show again.)
            self.forget_file(f);
            purged = true;
        }
        if purged {
            self.commit_index();
        }
        self.retry_unwritable();
        self.sweep_unnamed();
        // A clock set back must not put the checks off by as much.
        self.last_adopt_ms = self.last_adopt_ms.min(now);
        self.checks_owed_since_ms = self.checks_owed_since_ms.min(now);
        if self.checks_due() {
            self.verify_adopted(VERIFY_PER_TICK * self.threads, store);
        }
        if self.tail.unverified.is_empty() {
            self.checks_owed_since_ms = now;
        }
        self.compact_some(COMPACT_PER_TICK, store);
    }

    pub(super) fn activity(
        &mut self,
        kind: ActivityKind,
        path: Option<String>,
        device: &str,
        detail: Option<String>,
    ) {
        self.out_activity.push(Effect::Activity(Activity {
            time_ms: self.now_ms,
            kind,
            path,
            device: device.to_string(),
            detail,
        }));
    }

    /// Settle what this call changed and turn it into effects, in order.
    pub(super) fn finish(&mut self, store: &mut dyn DocStore) -> Vec<Effect> {
        if !self.damaged_docs.is_empty() {
            self.take_in_damaged_docs();
        }
        self.drop_unnamed();
        self.reconcile(store);
        // A reconcile can settle clashes, which changes the index again.
        if self.index_changed {
            self.reconcile(store);
        }
        // Kept for the writes of this call only.
        self.rendered.clear();
        self.effects()
    }

    /// Turn what this call changed into effects, without reconciling the disk.
    /// The index's changes since it was last stored, or all of it every `compact_after`.
    fn persist_index(&mut self) -> Effect {
        self.index_dirty = false;
        if let Some((seal, unnamed)) = own_seal(
            &self.key,
            self.epoch,
            &mut self.seal_counter,
            self.index.automerge_unchanged(),
            &self.tail5.index_seals,
        ) {
            crate::seal::keep_own(&mut self.tail5.index_seals, seal, &unnamed);
            self.state_dirty = true;
        }
        self.index_increments += 1;
        let snapshot = self.index_increments >= self.config.compact_after;
        let bytes = if snapshot {
            self.index_increments = 0;
            self.index.save()
        } else {
            self.index.save_incremental()
        };
        Effect::Persist(Persist::Doc {
            doc: DocId::Index,
            bytes,
            snapshot,
            meta: Vec::new(),
        })
    }

    /// A changed file's document (an increment, or whole) and its record.
    fn persist_file(&mut self, f: FileId) -> Option<Effect> {
        let compact_after = self.config.compact_after;
        let cached = self.cache.contains_key(&f);
        let mut meta = self.files.get_mut(&f)?;
        // A document never stored before is stored whole: `save()` of a new 4 KB file
        // costs 0.1 ms where its first increment costs 3 ms, and a stored `save()` can be
        // sent to a new peer without loading it.
        let never_saved = self.cache.get(&f).is_some_and(|(d, _)| d.never_saved());
        let snapshot = meta.increments + 1 >= compact_after || never_saved;
        if let Some((doc, _)) = self.cache.get_mut(&f)
            && let Some((seal, unnamed)) = own_seal(
                &self.key,
                self.epoch,
                &mut self.seal_counter,
                doc.automerge(),
                &meta.seals,
            )
        {
            crate::seal::keep_own(&mut meta.seals, seal, &unnamed);
        }
        let bytes = match self.cache.get_mut(&f) {
            Some((doc, _)) if snapshot => doc.save(),
            Some((doc, _)) => doc.save_incremental(),
            None => Vec::new(),
        };
        // Only stored increments count towards compaction (an adopted document that is
        // not loaded stores none: it is whole as received).
        if snapshot && cached {
            meta.increments = 0;
        } else if !bytes.is_empty() {
            meta.increments += 1;
        }
        Some(Effect::Persist(Persist::Doc {
            doc: DocId::File(f),
            bytes,
            snapshot: snapshot && cached,
            meta: encode_meta(&meta),
        }))
    }

    /// `item`, our change just made to `doc`, with our seal as of now (stored as our
    /// latest): each live item carries a seal that reaches its own change, though more
    /// of our changes to the document may follow in later items of the same call.
    pub(super) fn sealed_now(&mut self, doc: DocId, item: Item) -> Item {
        let me = self.device;
        let own = match doc {
            DocId::Index => {
                let kept = &mut self.tail5.index_seals;
                if let Some((seal, unnamed)) = own_seal(
                    &self.key,
                    self.epoch,
                    &mut self.seal_counter,
                    self.index.automerge_unchanged(),
                    kept,
                ) {
                    crate::seal::keep_own(kept, seal, &unnamed);
                    self.state_dirty = true;
                }
                latest_own(kept, me)
            }
            DocId::File(f) => {
                let Some((d, _)) = self.cache.get_mut(&f) else {
                    return item;
                };
                let mut meta = self.files.get_or_default(f);
                if let Some((seal, unnamed)) = own_seal(
                    &self.key,
                    self.epoch,
                    &mut self.seal_counter,
                    d.automerge(),
                    &meta.seals,
                ) {
                    crate::seal::keep_own(&mut meta.seals, seal, &unnamed);
                }
                latest_own(&meta.seals, me)
            }
        };
        match (own, wire::Sealable::from_item(item)) {
            (Some(seal), Ok(item)) => Item::Sealed {
                seals: vec![seal],
                item,
            },
            (_, Ok(item)) => item.into_item(),
            (_, Err(item)) => item,
        }
    }

    /// The seals we keep for `doc` (see `crate::seal`).
    pub(super) fn seals_of(&self, doc: DocId) -> Vec<Seal> {
        match doc {
            DocId::Index => self.tail5.index_seals.clone(),
            DocId::File(f) => self
                .files
                .get(&f)
                .map(|m| m.seals.clone())
                .unwrap_or_default(),
        }
    }

    /// A document's changes go with its seals (the latest of each device that changed
    /// it, ours included), so that whoever they reach through can be told they are their
    /// authors' (`crate::seal`).
    fn with_seals(&self, item: Item) -> Item {
        let item = match wire::Sealable::from_item(item) {
            Ok(sealable) => sealable,
            Err(other) => return other,
        };
        let seals = self.seals_of(item.doc());
        if seals.is_empty() {
            return item.into_item();
        }
        Item::Sealed { seals, item }
    }

    pub(super) fn effects(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        // 1. Persistence.
        if self.index_dirty {
            effects.push(self.persist_index());
        }
        for f in std::mem::take(&mut self.dirty) {
            if let Some(received) = self.adopted.remove(&f) {
                // Stored as it came; anything changed since follows as an increment.
                effects.push(Effect::Persist(Persist::Doc {
                    doc: DocId::File(f),
                    bytes: received,
                    snapshot: true,
                    meta: Vec::new(),
                }));
            }
            effects.extend(self.persist_file(f));
        }
        // Deletions queued by tombstone expiry sit at the front of out_files.
        let (persist, files): (Vec<Effect>, Vec<Effect>) = std::mem::take(&mut self.out_files)
            .into_iter()
            .partition(|e| matches!(e, Effect::Persist(_)));
        effects.extend(persist);
        if self.state_dirty {
            effects.push(Effect::Persist(Persist::State {
                bytes: encode_state(&StateParts {
                    state: &self.state,
                    tail: &self.tail,
                    tail2: &self.tail2,
                    tail3: &self.tail3,
                    tail4: &self.tail4,
                    tail5: &self.tail5,
                    tail6: &self.tail6,
                    tail7: &self.tail7,
                }),
            }));
            self.state_dirty = false;
        }
        // 2. Files.
        effects.extend(files);
        // 3. Messages.
        let max = self.config.max_message_bytes;
        for (to, items) in std::mem::take(&mut self.out_items) {
            if to.is_none() && !self.connected {
                // Nobody to tell; the next catch-up carries these changes.
                continue;
            }
            let items = items.into_iter().map(|i| self.with_seals(i)).collect();
            for bytes in wire::pack(items, max, &mut self.next_chunk_id) {
                effects.push(Effect::Send { to, bytes });
            }
        }
        // 4. Activity.
        effects.append(&mut self.out_activity);
        self.evict();
        effects
    }
}

/// Our latest seal among `kept`: the one that reaches the change just made (an earlier
/// one of ours may be kept beside it, for changes it had no room to name).
fn latest_own(kept: &[Seal], me: DeviceId) -> Option<Seal> {
    kept.iter()
        .filter(|s| s.device == me)
        .max_by_key(|s| (s.epoch, s.counter))
        .cloned()
}

/// A seal on our frontier in a document (`am`; see `crate::seal`), when we changed it
/// since our last seal `kept` holds: our own changes none of our later ones depend on.
/// Our new changes are heads when this runs (right after they are made, or when the
/// document is stored in the call that made them). A change of ours named before stays
/// named unless one of our new changes depends on it: an edit of an older version (a
/// fork) is concurrent with our latest, and both are named then; so are the changes of
/// runs a store put back from a backup missed, which peers hand back.
fn own_seal(
    key: &SealKey,
    epoch: u32,
    counter: &mut u64,
    am: &mut automerge::AutoCommit,
    kept: &[Seal],
) -> Option<(Seal, Vec<[u8; 32]>)> {
    let device = key.device();
    let prefix: [u8; 16] = device.0[..16].try_into().ok()?;
    // Our seals kept (more than one while our history is forked: see `seal::keep`),
    // the latest of them, and every change they name.
    let mut own: Vec<&Seal> = kept.iter().filter(|s| s.device == device).collect();
    own.sort_by_key(|s| (s.epoch, s.counter));
    let kept_own = own.last().copied();
    // Oldest first (what goes unnamed past the bound, below).
    let mut before: Vec<[u8; 32]> = Vec::new();
    for h in own.iter().flat_map(|s| s.heads.iter()) {
        if !before.contains(h) {
            before.push(*h);
        }
    }
    let mut new = Vec::new();
    for h in am.get_heads() {
        let Some(meta) = am.get_change_meta_by_hash(&h) else {
            continue;
        };
        // This run's changes only: those of our earlier runs keep the seals those runs
        // made. (A store put back from a backup gets its forgotten runs' changes back
        // from peers; sealed again here, under a seal that outranks theirs but names
        // only what had arrived, the rest was refused everywhere as forged.)
        if crate::seal::sealing_actor(&meta.actor) == Some((prefix, epoch))
            && !before.contains(&h.0)
        {
            new.push(h);
        }
    }
    if new.is_empty() {
        return None;
    }
    // What is not in the history of our new changes (usually nothing of ours).
    let after: std::collections::BTreeSet<[u8; 32]> =
        am.get_changes_meta(&new).iter().map(|m| m.hash.0).collect();
    let mut heads: Vec<[u8; 32]> = before
        .iter()
        .copied()
        .filter(|h| after.contains(h))
        .collect();
    heads.extend(new.iter().map(|h| h.0));
    // More concurrent edits of older versions than a seal names: the oldest go unnamed
    // (see docs/security.md, "What is left").
    let excess = heads.len().saturating_sub(crate::seal::MAX_SEALED_HEADS);
    let unnamed: Vec<[u8; 32]> = heads.drain(..excess).collect();
    *counter += 1;
    // Later than any seal of ours held here: one from a run this device no longer
    // remembers (its store put back from a backup; peers hand it back) may rank above
    // this run's, and a new seal ranked below it would be dropped for it, leaving the
    // new changes unsealed: refused by every peer as forged. (A seal's epoch only ranks
    // it; the actor's is the run's.)
    let (epoch, count) = match kept_own {
        Some(k) if (k.epoch, k.counter) >= (epoch, *counter) => {
            (k.epoch, k.counter.saturating_add(1))
        }
        _ => (epoch, *counter),
    };
    Some((key.seal(epoch, count, heads), unnamed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;

    /// A seal of this device from a run its store no longer remembers (put back from a
    /// backup; a peer handed the seal back) may rank above this run's: the next seal
    /// made here must still rank above it, or it is dropped for it and the new change
    /// goes out under a seal that does not reach it.
    #[test]
    fn a_new_seal_outranks_one_of_ours_from_a_run_we_forgot() {
        let key = SealKey::from_seed(&[7; 32]);
        let device = key.device();
        let mut am = automerge::AutoCommit::new();
        let forgotten = crate::actor_for(&device, 9);
        am.set_actor(forgotten);
        am.put(automerge::ROOT, "a", 1).unwrap();
        am.commit();
        let mut counter = 40;
        let old = own_seal(&key, 9, &mut counter, &mut am, &[]).unwrap().0;
        // This run: an earlier epoch, its counter starting again.
        am.set_actor(crate::actor_for(&device, 3));
        am.put(automerge::ROOT, "a", 2).unwrap();
        am.commit();
        let mut counter = 0;
        let new = own_seal(&key, 3, &mut counter, &mut am, std::slice::from_ref(&old))
            .unwrap()
            .0;
        let mut kept = vec![old];
        crate::seal::keep(
            &mut kept,
            std::slice::from_ref(&new),
            |_| true,
            |a, b| crate::seal::covers_in(&mut am, a, b),
        );
        assert_eq!(kept, [new]);
    }

    /// A live item of ours goes with our latest seal (the one naming the change just
    /// made), not an earlier one kept beside it for changes the latest had no room for.
    #[test]
    fn a_live_item_goes_with_our_latest_seal() {
        let key = SealKey::from_seed(&[7; 32]);
        let other = SealKey::from_seed(&[8; 32]);
        let old = key.seal(3, 9, vec![[1; 32]]);
        let new = key.seal(4, 1, vec![[2; 32]]);
        let theirs = other.seal(9, 9, vec![[3; 32]]);
        let mut kept = vec![old, theirs];
        crate::seal::keep_own(&mut kept, new.clone(), &[[1; 32]]);
        assert_eq!(kept.len(), 3);
        assert_eq!(latest_own(&kept, key.device()), Some(new));
    }

    /// Changes of ours from an earlier run, handed back by a peer, keep that run's seal:
    /// sealed again here they would be named by a seal that outranks it, which reaches
    /// only those that had arrived, and the rest would be refused everywhere as forged.
    #[test]
    fn changes_of_an_earlier_run_are_not_sealed_again() {
        let key = SealKey::from_seed(&[7; 32]);
        let mut am = automerge::AutoCommit::new();
        am.set_actor(crate::actor_for(&key.device(), 5));
        am.put(automerge::ROOT, "a", 1).unwrap();
        am.commit();
        assert_eq!(own_seal(&key, 6, &mut 0, &mut am, &[]), None);
        assert!(own_seal(&key, 5, &mut 0, &mut am, &[]).is_some());
    }
}
