//! The workspace secret's generations: who is removed, which secret is current
//! (docs/security.md, "Removing a device and rotating the secret").
//!
//! A rotation is a record signed by the member who made it: its generation, the hash of
//! the record it follows (`parent`; zero for generation 1), when, and the devices it
//! removes. Records live in the synced index (the `members` map, under `rotation:HASH`
//! keys, since a new top-level map would change the index's genesis change), so every
//! device that syncs learns them; the lobby hands them to a device that was away. The
//! engine does not see secrets: it decides which record each generation follows, and the
//! driver, which compares [`Engine::generation`] with the secret it holds after each
//! call (after sending what the call produced, so that a record reaches the old room
//! before the driver leaves it), fetches or hands out the matching secret.
//!
//! The chain: generation 0 is the secret made at `init`. The valid records form a tree:
//! each names its parent (the record of the generation before), and counts only if its
//! author is a member not removed by the records before it on its branch, and is not
//! voided by a removal that stands for good (a removed device's records off the branch
//! of its removal by a device senior to it: `seniority.rs`). The longest branch wins,
//! and among branches as long the one whose last record has the lowest hash: two
//! members rotating at once converge on one record without talking, and a record that
//! arrives late (from a device that was away) never takes the workspace back to an
//! older generation, unless a removal for good voids the branch it was on
//! ([`Engine::passed_over`]). The winning branch's removals count; the author of a
//! record off it that removed someone rotates again once it holds the winning secret
//! (see [`Engine::removals_to_redo`]), unless the winning branch removed that author.
//! Records, admitted-by entries and the entry naming the maker are never taken out of
//! the index (`Engine::standing_records`).
//!
//! Who admitted whom: the admitting device writes `admitted:DEVICE` = `BY:TIME_MS`; an
//! entry counts only when written by the device it names as the admitter.

use std::sync::Arc;

use super::*;

/// How a rotation record's key in the `members` map starts; the record's hash follows.
const ROTATION_PREFIX: &str = "rotation:";

/// The most devices one rotation record removes (docs/protocol.md §2.8): more to redo
/// go in the next record.
pub const MAX_REMOVED: usize = 1024;
/// How an admitted-by entry's key starts; the admitted device's id follows.
pub(super) const ADMITTED_PREFIX: &str = "admitted:";

/// What the driver's check makes of an encoded rotation record (the daemon verifies the
/// signature with cue-crypto): `None` when it is not a valid record.
pub type RotationCheck = Arc<dyn Fn(&[u8]) -> Option<RotationMeta> + Send + Sync>;

/// A valid rotation record, as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationMeta {
    pub generation: u32,
    pub parent: [u8; 32],
    pub rotated_by: DeviceId,
    pub at_ms: i64,
    pub removed: Vec<DeviceId>,
    /// The record's hash: the tie-break between concurrent records, and the next
    /// generation's parent.
    pub hash: [u8; 32],
}

#[derive(Clone)]
pub(super) struct RotCheck(RotationCheck);

impl std::fmt::Debug for RotCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RotationCheck")
    }
}

/// The secret generation in use: its number and its record's hash (zero for 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation {
    pub number: u32,
    pub winner: [u8; 32],
}

/// Who removed a device, and when (the record's time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    pub by: DeviceId,
    pub at_ms: i64,
    pub generation: u32,
}

/// One device of the workspace, as `cue sync devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub device: DeviceId,
    pub name: String,
    /// When it was admitted, and by whom (unknown for the device that made the workspace
    /// and for devices admitted before this was recorded).
    pub joined_ms: Option<i64>,
    pub admitted_by: Option<DeviceId>,
    pub last_seen_ms: Option<i64>,
    pub online: bool,
    pub removed: Option<Removal>,
    pub this_device: bool,
}

/// What the records in the index amount to (recomputed when the index changes).
#[derive(Debug, Clone, Default)]
pub(super) struct Chain {
    pub(super) current: Generation,
    /// The winning record of each generation from 1, with its bytes.
    pub(super) winners: Vec<(RotationMeta, Vec<u8>)>,
    pub(super) removed: BTreeMap<DeviceId, Removal>,
    /// Devices removed only by a record that lost to a concurrent one, with the author.
    pub(super) unfinished: BTreeMap<DeviceId, DeviceId>,
    /// Devices removed for good by a senior (`seniority.rs`): their records off the
    /// branch of that removal count nowhere.
    pub(super) ousted: BTreeSet<DeviceId>,
    /// The hashes of every record that chains back to generation 0 (voided or not, on
    /// the chain or not): what [`Engine::passed_over`] knows of.
    pub(super) known: BTreeSet<[u8; 32]>,
}

impl Engine {
    /// Sets how rotation records are checked. Without a check no record counts.
    pub fn set_rotation_check(&mut self, check: RotationCheck) {
        self.rotation_check = Some(RotCheck(check));
        self.rotation_verdicts.clear();
        self.refresh_members();
    }

    /// The secret generation in use.
    pub fn generation(&self) -> Generation {
        self.chain.current
    }

    /// The winning records of every generation from `after + 1` on, encoded: what a
    /// device at generation `after` needs to catch up (or to learn it was removed).
    pub fn records_after(&self, after: u32) -> Vec<Vec<u8>> {
        self.chain
            .winners
            .iter()
            .filter(|(m, _)| m.generation > after)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// The hash of generation `n`'s winning record (zero for generation 0).
    fn winner_at(&self, n: u32) -> Option<[u8; 32]> {
        if n == 0 {
            return Some([0; 32]);
        }
        self.chain
            .winners
            .iter()
            .find(|(m, _)| m.generation == n)
            .map(|(m, _)| m.hash)
    }

    /// Every valid record the index holds (winners and losers), encoded: what a device
    /// at the same generation with another winner needs to converge.
    pub fn all_records(&self) -> Vec<Vec<u8>> {
        self.rotation_entries()
            .into_iter()
            .filter(|(_, b)| self.judge_record(b).is_some())
            .map(|(_, b)| b)
            .collect()
    }

    /// The devices removed from the workspace.
    pub fn removed(&self) -> &BTreeMap<DeviceId, Removal> {
        &self.chain.removed
    }

    /// Whether this device was removed.
    pub fn removed_here(&self) -> Option<Removal> {
        self.chain.removed.get(&self.device).copied()
    }

    /// Devices that a record of ours removed but that lost to a concurrent rotation: this
    /// device must rotate again, removing them, once it holds the current secret (at
    /// most [`MAX_REMOVED`] at a time, as a record holds).
    pub fn removals_to_redo(&self) -> Vec<DeviceId> {
        self.chain
            .unfinished
            .iter()
            .filter(|(_, author)| **author == self.device)
            .map(|(d, _)| *d)
            .take(MAX_REMOVED)
            .collect()
    }

    /// Rotation records (made here, or received through the lobby) go into the index;
    /// invalid ones are counted in `bad_rotations` and dropped.
    pub(super) fn take_rotations(&mut self, records: Vec<Vec<u8>>) {
        let known: BTreeSet<Vec<u8>> = self
            .rotation_entries()
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        let mut added = false;
        for bytes in records {
            let Some(meta) = self.judge_record(&bytes) else {
                self.state.counters.bad_rotations += 1;
                self.state_dirty = true;
                continue;
            };
            let key = format!("{ROTATION_PREFIX}{}", hex::encode(meta.hash));
            if known.contains(&bytes) {
                continue;
            }
            if self
                .index
                .put_raw("members", &key, &hex::encode(&bytes))
                .is_ok()
            {
                added = true;
            }
        }
        if added {
            self.commit_index();
            self.refresh_members();
        }
    }

    /// Takes `device` for a member although the index does not say so yet: the device
    /// that admitted this one (it handed us the secret in answer to our invite). A
    /// device admitted just before a rotation has synced no member list yet, and must
    /// still be able to check the rotation's record and take the secret from its author.
    pub fn trust(&mut self, device: DeviceId) {
        if self.introducers.insert(device) {
            self.refresh_members();
        }
    }

    /// Whether `device` is, was, or is about to be a member as far as this device knows
    /// (a member, an author of the chain, admitted by a member, or our introducer), and
    /// is not removed: who may be handed the secret, and whose sealed secret we take.
    pub fn knows_member(&self, device: &DeviceId) -> bool {
        !self.chain.removed.contains_key(device)
            && (self.was_member(device) || self.admitted().contains_key(device))
    }

    /// Whether seals of `device` count (`peers.rs`, `open_seals`): a device that is,
    /// was or is about to be a member as far as this device knows. Removed members
    /// included: their changes from before stay in the documents, and a newcomer must
    /// be able to tell them theirs.
    pub(super) fn may_seal(&self, device: &DeviceId) -> bool {
        *device == self.device || self.was_member(device) || self.admitted().contains_key(device)
    }

    /// Records that this device admitted `device` now.
    pub(super) fn record_admitted(&mut self, device: DeviceId) {
        // Never in the place of an entry already there: a change that takes a standing
        // entry away is refused by every peer (`standing_records`).
        if self.admitted().contains_key(&device) {
            return;
        }
        let key = format!("{ADMITTED_PREFIX}{device}");
        let value = format!("{}:{}", self.device, self.now_ms);
        if self.index.put_raw("members", &key, &value).is_ok() {
            self.commit_index();
        }
    }

    /// The devices of the workspace: members, and removed devices with what is known.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        let admitted = self.ranking_admissions();
        let mut names = self.state.members.clone();
        names.extend(self.members_view.clone());
        for d in self.chain.removed.keys() {
            names.entry(*d).or_insert_with(|| d.short());
        }
        names
            .into_iter()
            .map(|(device, name)| {
                let live = self.peers.get(&device);
                let (joined_ms, admitted_by) = match admitted.get(&device) {
                    Some((by, at)) => (Some(*at), Some(*by)),
                    None => (None, None),
                };
                DeviceInfo {
                    device,
                    name,
                    joined_ms,
                    admitted_by,
                    last_seen_ms: if device == self.device {
                        Some(self.now_ms)
                    } else {
                        self.state.peers.get(&device).and_then(|p| p.last_sync_ms)
                    },
                    online: device == self.device || live.is_some_and(|p| p.online),
                    removed: self.chain.removed.get(&device).copied(),
                    this_device: device == self.device,
                }
            })
            .collect()
    }

    /// Admitted-by entries written by the admitter they name (whether a device has
    /// one; which one ranks it: `ranking_admissions`).
    fn admitted(&self) -> BTreeMap<DeviceId, (DeviceId, i64)> {
        // (The last value of each entry.)
        self.admitted_entries()
            .into_iter()
            .map(|(device, by, at)| (device, (by, at)))
            .collect()
    }

    /// The index's rotation records and admitted-by entries, as (key, value): they only
    /// ever grow. A change that takes one away (a member deleting the record that
    /// removed it, or another's admitted-by entry) is refused whole,
    /// as one that takes a map away is (`apply_to_index`). Only entries that count are
    /// kept standing: a record that passes the check, an entry by the admitter it names.
    pub(super) fn standing_records(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (key, values) in self.index.raw_values("members") {
            for (value, actor) in values {
                let counts = if let Some(hash) = key.strip_prefix(ROTATION_PREFIX) {
                    // Under its own key only: a record a member put under another's key
                    // is not standing, and the other's own record may take its place.
                    hex::decode(&value).is_ok_and(|b| {
                        self.judge_record(&b)
                            .is_some_and(|m| hex::encode(m.hash) == hash)
                    })
                } else if key.starts_with(ADMITTED_PREFIX) {
                    super::seniority::parse_admitted(&value)
                        .is_some_and(|(by, _)| made_by(&by, &actor))
                } else if key == MAKER_KEY {
                    self.proves_maker(&value)
                } else {
                    false
                };
                if counts {
                    out.insert((key.clone(), value));
                }
            }
        }
        out
    }

    /// The rotation records in the index, each under its key (`rotation:HASH`). Every
    /// value of a key is read: a member can put another value beside a record (automerge
    /// keeps both), and the record must not depend on which one automerge lists first.
    /// A value that is not the record its key names is left for the check to count.
    fn rotation_entries(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (k, vals) in self.index.raw_values("members") {
            if !k.starts_with(ROTATION_PREFIX) {
                continue;
            }
            for (v, _) in vals {
                if let Ok(bytes) = hex::decode(v)
                    && !out.iter().any(|(_, b)| *b == bytes)
                {
                    out.push((k.clone(), bytes));
                }
            }
        }
        out
    }

    fn judge_record(&self, bytes: &[u8]) -> Option<RotationMeta> {
        let check = self.rotation_check.as_ref()?;
        if let Some(v) = self.rotation_verdicts.get(bytes) {
            return v.clone();
        }
        (check.0)(bytes).filter(|m| m.generation >= 1)
    }

    /// Recomputes the chain from the records in the index (see the module docs); the
    /// member view then leaves the removed devices out.
    pub(super) fn refresh_chain(&mut self) {
        let mut records: Vec<(RotationMeta, Vec<u8>)> = Vec::new();
        for (_, bytes) in self.rotation_entries() {
            let verdict = match self.rotation_verdicts.get(&bytes) {
                Some(v) => v.clone(),
                None => {
                    let v = self.judge_record(&bytes);
                    if v.is_none() && self.rotation_check.is_some() {
                        self.state.counters.bad_rotations += 1;
                        self.state_dirty = true;
                    }
                    self.rotation_verdicts.insert(bytes.clone(), v.clone());
                    v
                }
            };
            if let Some(meta) = verdict {
                records.push((meta, bytes));
            }
        }
        records.sort_by_key(|(m, _)| (m.generation, m.hash));
        let rank = self.seniority();
        let ousted = self.oust(&records, &rank);
        let free = self.place(&records, &BTreeSet::new());
        let mut chain = self.chain_of(&records, &self.place(&records, &ousted.voided));
        let on_path: BTreeSet<[u8; 32]> = chain.winners.iter().map(|(m, _)| m.hash).collect();
        // A removal for good counts wherever its record stands: off the winning branch
        // (a concurrent record won, or one removing its author) the device is removed
        // all the same. (Its records being void, a device left a member would never
        // rotate again; and a removal for good that stopped counting when its author was
        // removed let the device it removed back in.)
        let on_branch: BTreeSet<DeviceId> = chain.removed.keys().copied().collect();
        let by_hash: BTreeMap<[u8; 32], &RotationMeta> =
            records.iter().map(|(m, _)| (m.hash, m)).collect();
        let removal = |m: &RotationMeta| Removal {
            by: m.rotated_by,
            at_ms: m.at_ms,
            generation: m.generation,
        };
        let mut off_branch: Vec<(DeviceId, DeviceId)> = Vec::new();
        for (d, h) in &ousted.by {
            if let Some(m) = by_hash.get(h) {
                chain.removed.entry(*d).or_insert(removal(m));
                off_branch.push((*d, m.rotated_by));
            }
        }
        for (d, h, remover) in &ousted.kept {
            if let Some(m) = by_hash.get(h)
                && !chain.removed.contains_key(d)
            {
                chain.removed.insert(*d, removal(m));
                off_branch.push((*d, *remover));
            }
        }
        // So do the removals of records off the winning branch whose author stays (a
        // record that lost to a concurrent one, or one built on a record a removal for
        // good voided, which had taken effect): removed at once, not handed the next
        // secret, and removed again on the branch.
        for (m, _) in records
            .iter()
            .filter(|(m, _)| free.contains_key(&m.hash) && !on_path.contains(&m.hash))
        {
            if chain.removed.contains_key(&m.rotated_by) {
                continue;
            }
            for d in &m.removed {
                if !chain.removed.contains_key(d) {
                    chain.removed.insert(*d, removal(m));
                    off_branch.push((*d, m.rotated_by));
                }
            }
        }
        // Who removes them again: their remover if it stays, or else the author of the
        // current generation, or else the most senior member that stays.
        let tip_author = chain.winners.last().map(|(m, _)| m.rotated_by);
        let mut seniors: Vec<DeviceId> = self.members_view.keys().copied().collect();
        seniors.sort_by_key(|d| (rank.get(d).copied().unwrap_or((i64::MAX, u32::MAX)), *d));
        for (d, remover) in off_branch {
            // (Not a device that never was a member: the member list's keys are
            // anyone's to write, and a rotation removing it would protect nothing.)
            if on_branch.contains(&d) || !self.was_member(&d) {
                continue;
            }
            if let Some(by) = std::iter::once(remover)
                .chain(tip_author)
                .chain(seniors.iter().copied())
                .find(|a| !chain.removed.contains_key(a) && *a != d)
            {
                chain.unfinished.entry(d).or_insert(by);
            }
        }
        chain.ousted = ousted.by.into_keys().collect();
        // Only records that chain back to generation 0: a device holding a generation
        // whose record waits for its parent is not passed over.
        chain.known = free.into_keys().collect();
        self.chain = chain;
    }

    /// Every record that chains back to generation 0, each through a parent of the
    /// generation before, its author a member not removed by the records before it,
    /// leaving out `voided`: the tips of a tree of branches, each record by hash with its
    /// place in `records` and the devices removed on its branch up to it.
    pub(super) fn place(
        &self,
        records: &super::seniority::Records,
        voided: &BTreeSet<[u8; 32]>,
    ) -> BTreeMap<[u8; 32], (usize, BTreeSet<DeviceId>)> {
        // In generation order, a parent is placed first.
        let mut placed: BTreeMap<[u8; 32], (usize, BTreeSet<DeviceId>)> = BTreeMap::new();
        for (i, (m, _)) in records.iter().enumerate() {
            if voided.contains(&m.hash) {
                continue;
            }
            let removed_before = if m.generation == 1 && m.parent == [0; 32] {
                BTreeSet::new()
            } else {
                match placed.get(&m.parent) {
                    Some((p, removed)) if records[*p].0.generation + 1 == m.generation => {
                        removed.clone()
                    }
                    _ => continue,
                }
            };
            if !self.was_member(&m.rotated_by) || removed_before.contains(&m.rotated_by) {
                continue;
            }
            let mut removed = removed_before;
            removed.extend(m.removed.iter().copied());
            placed.insert(m.hash, (i, removed));
        }
        placed
    }

    /// The winning branch of `placed`: the longest, the lowest hash among equals (a
    /// record that arrives late never takes the workspace back to an older generation,
    /// unless a removal for good voids the branch it was on).
    fn chain_of(
        &self,
        records: &super::seniority::Records,
        placed: &BTreeMap<[u8; 32], (usize, BTreeSet<DeviceId>)>,
    ) -> Chain {
        let tip = placed
            .values()
            .map(|(i, _)| &records[*i].0)
            .max_by(|a, b| a.generation.cmp(&b.generation).then(b.hash.cmp(&a.hash)));
        let mut path: Vec<usize> = Vec::new();
        let mut at = tip.map(|m| m.hash);
        while let Some(h) = at {
            let Some((i, _)) = placed.get(&h) else { break };
            path.push(*i);
            let parent = records[*i].0.parent;
            at = (parent != [0; 32] || records[*i].0.generation > 1).then_some(parent);
        }
        path.reverse();
        let mut chain = Chain::default();
        for i in path {
            let (winner, bytes) = &records[i];
            for d in &winner.removed {
                chain.removed.entry(*d).or_insert(Removal {
                    by: winner.rotated_by,
                    at_ms: winner.at_ms,
                    generation: winner.generation,
                });
            }
            chain.current = Generation {
                number: winner.generation,
                winner: winner.hash,
            };
            chain.winners.push((winner.clone(), bytes.clone()));
        }
        chain
    }

    /// Whether `g` is a generation the chain passed over: its record is known and is
    /// not the winner of its generation (it lost to a concurrent one, or a removal for
    /// good voided it). A device holding its secret moves to the current one, even an
    /// older one (`Membership::follow`).
    pub fn passed_over(&self, g: Generation) -> bool {
        g.number > 0
            && self.chain.known.contains(&g.winner)
            && self.winner_at(g.number) != Some(g.winner)
    }

    /// Whether rotation records handed over in the lobby by `device` are taken: from a
    /// device that is or was a member, unless removed for good. (Records are checked
    /// whoever brings them; a member that an own branch of a removed device removes must
    /// still be heard by a device that met that branch first.)
    pub fn takes_records_from(&self, device: &DeviceId) -> bool {
        !self.chain.ousted.contains(device)
            && (self.was_member(device) || self.admitted().contains_key(device))
    }

    /// Whether `device` is or was taken for a member (a record's author must be).
    pub(super) fn was_member(&self, device: &DeviceId) -> bool {
        self.state.members.contains_key(device)
            || self.members_view.contains_key(device)
            || self.introducers.contains(device)
    }
}

/// What to answer a device's lobby hello (docs/security.md): the daemon and the
/// simulation both follow this, the daemon sealing the secret it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LobbyAnswer {
    /// Nothing: it is where we are, ahead of us, or not a member.
    Nothing,
    /// Rotation records only: it was removed (it learns so), or it is at our generation
    /// with another record (a concurrent rotation: it needs ours to converge).
    Records(Vec<Vec<u8>>),
    /// The records it lacks and the secret we hold, sealed to it: a member that was
    /// away during a rotation, or that did not have the secret yet.
    RecordsAndSecret(Vec<Vec<u8>>),
}

impl Engine {
    /// What to answer `from`'s hello saying it holds the secret of `theirs`, given that
    /// we hold the secret of `held`.
    pub fn answer_hello(
        &self,
        held: Generation,
        from: DeviceId,
        theirs: Generation,
    ) -> LobbyAnswer {
        if from == self.device || theirs == held {
            return LobbyAnswer::Nothing;
        }
        // Behind on our chain: the records after its generation. Off our chain (it holds
        // a record that lost at that generation): all of them, so that it finds where
        // the chains part.
        let on_our_chain = self.winner_at(theirs.number) == Some(theirs.winner);
        if self.chain.removed.contains_key(&from) {
            // (A removed device that rotated at once with its removal holds a record of
            // our generation that lost: without the winner it never learns.)
            return LobbyAnswer::Records(if on_our_chain {
                self.records_after(theirs.number.min(held.number))
            } else {
                self.all_records()
            });
        }
        if !self.knows_member(&from) {
            return LobbyAnswer::Nothing;
        }
        // At our generation with another record (a concurrent rotation): all our
        // records, so that it converges; behind: the records it lacks.
        let records = if on_our_chain && theirs.number < held.number && !self.passed_over(held) {
            self.records_after(theirs.number)
        } else {
            self.all_records()
        };
        // On a generation we passed over (a branch that lost, or that a removal for good
        // voided): ours, even if its number is higher.
        if held == self.chain.current && (theirs.number <= held.number || self.passed_over(theirs))
        {
            return LobbyAnswer::RecordsAndSecret(records);
        }
        // We hold a generation passed over (a branch a removal for good voided, which we
        // had followed): our records, so that a member that never saw that branch
        // learns it was passed over, and hands us the current secret.
        if theirs.number == held.number || self.passed_over(held) {
            return LobbyAnswer::Records(records);
        }
        LobbyAnswer::Nothing
    }
}
