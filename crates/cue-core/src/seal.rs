//! Seals: a device's signature on its latest changes to a document, so that changes can
//! travel through other members (a pull's answer carries every member's changes) and
//! still be known for their author's.
//!
//! A device's change depends, through its dependencies, on everything the device held
//! when it made it, its own earlier changes included; change hashes cover their
//! dependencies, so a signature on a device's latest changes (its *frontier*: its own
//! changes that none of its own later ones depend on; usually one) vouches for every
//! earlier change of that device. The seals of a device and document that no later one
//! covers are kept (usually one, the latest) and travel with the document's changes. A
//! change under a sealing actor that no seal of its device reaches is not its author's,
//! and is refused (docs/security.md, "Forged authorship").
//!
//! Actors made before seals existed (20 bytes: no era byte) are taken as they were: their
//! devices can no longer write under them, so a forgery under one cannot block anyone's
//! next change, only name the wrong author.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ActorId, Change, ChangeHash};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

/// The byte after the epoch in an actor made since seals exist (see [`crate::actor_for`];
/// an edit of an older version is made under that actor with a counter after it).
pub const SEALING_ERA: u8 = 1;

const DOMAIN: &[u8] = b"cue/v1/seal\0";

/// How many seals an item may carry: one per device that ever edited the document; more
/// is refused with the item.
pub const MAX_SEALS: usize = 256;
/// How many changes one seal may name. A device's frontier is one change but for edits
/// of older versions made since its last plain edit.
pub const MAX_SEALED_HEADS: usize = 64;
/// How many seals of one device wait for their changes in a document, at most.
pub const MAX_WAITING_SEALS: usize = 8;
/// How many seals of one device a document keeps, at most (one for each branch of its
/// history that no later seal covers: see [`keep`]).
pub const MAX_KEPT_SEALS: usize = 8;

/// This device's signing key, for sealing its own changes.
#[derive(Clone)]
pub struct SealKey(SigningKey);

impl SealKey {
    /// The key from its 32-byte seed (the device key's).
    pub fn from_seed(seed: &[u8; 32]) -> SealKey {
        SealKey(SigningKey::from_bytes(seed))
    }

    /// The device this key is: its public key.
    pub fn device(&self) -> DeviceId {
        DeviceId(self.0.verifying_key().to_bytes())
    }

    /// Seals `heads`, this device's frontier in a document, as its `counter`th seal of
    /// `epoch`.
    pub fn seal(&self, epoch: u32, counter: u64, heads: Vec<[u8; 32]>) -> Seal {
        let device = self.device();
        let sig = self
            .0
            .sign(&signed_bytes(&device, epoch, counter, &heads))
            .to_bytes();
        let (a, b) = sig.split_at(32);
        Seal {
            device,
            epoch,
            counter,
            heads,
            sig: [
                a.try_into().unwrap_or([0; 32]),
                b.try_into().unwrap_or([0; 32]),
            ],
        }
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({}, <secret redacted>)", self.device())
    }
}

/// "These are my latest changes to the document", signed by `device` as its `counter`th
/// seal of its run `epoch` (the order in which its seals were made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub device: DeviceId,
    pub epoch: u32,
    pub counter: u64,
    pub heads: Vec<[u8; 32]>,
    /// The ed25519 signature, in two halves (serde has no 64-byte arrays).
    pub sig: [[u8; 32]; 2],
}

fn signed_bytes(device: &DeviceId, epoch: u32, counter: u64, heads: &[[u8; 32]]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 32 + 4 + 8 + 4 + 32 * heads.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&device.0);
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(&counter.to_be_bytes());
    m.extend_from_slice(&(heads.len() as u32).to_be_bytes());
    for h in heads {
        m.extend_from_slice(h);
    }
    m
}

impl Seal {
    /// Whether the signature is the device's (and the seal of a size it may have).
    pub fn verify(&self) -> bool {
        if self.heads.is_empty() || self.heads.len() > MAX_SEALED_HEADS {
            return false;
        }
        let Ok(key) = VerifyingKey::from_bytes(&self.device.0) else {
            return false;
        };
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&self.sig[0]);
        sig[32..].copy_from_slice(&self.sig[1]);
        key.verify(
            &signed_bytes(&self.device, self.epoch, self.counter, &self.heads),
            &Signature::from_bytes(&sig),
        )
        .is_ok()
    }

    /// Whether this seal was made after `other`, a seal of the same device.
    pub fn later_than(&self, other: &Seal) -> bool {
        (self.epoch, self.counter) > (other.epoch, other.counter)
    }

    fn prefix(&self) -> [u8; 16] {
        self.device.0[..16].try_into().unwrap_or([0; 16])
    }
}

/// The device prefix and epoch of a sealing actor (see [`crate::actor_for`]); `None` for
/// any other actor (one made before seals, or a fixed one every peer shares).
pub fn sealing_actor(actor: &ActorId) -> Option<([u8; 16], u32)> {
    let b = actor.to_bytes();
    if b.len() < 21 || b[20] != SEALING_ERA {
        return None;
    }
    let device: [u8; 16] = b[..16].try_into().ok()?;
    let epoch = u32::from_be_bytes(b[16..20].try_into().ok()?);
    Some((device, epoch))
}

/// Whose seal a change under `actor` needs: the device prefix of a sealing actor, or of
/// any actor no version of cue writes; `None` for the actors taken without one: those of
/// versions before seals (20 bytes, or 24 for an edit of an older version: a 4-byte
/// counter after them) and the fixed ones every peer shares (`cue-index-genesis`, `cue-copy…`).
pub fn needs_seal(actor: &ActorId) -> Option<[u8; 16]> {
    let b = actor.to_bytes();
    // The fixed actors first: a conflict copy's ends in 16 bytes of its file id, which
    // may put the era byte where a sealing actor has it.
    if b == b"cue-index-genesis" || b.starts_with(b"cue-copy") {
        return None;
    }
    if let Some((device, _)) = sealing_actor(actor) {
        return Some(device);
    }
    let before_seals = b.len() == 20 || (b.len() == 24 && b[20] != SEALING_ERA);
    if before_seals {
        return None;
    }
    let mut device = [0u8; 16];
    let n = b.len().min(16);
    device[..n].copy_from_slice(&b[..n]);
    Some(device)
}

/// The changes of `changes` (by index) that are under a sealing actor and that no seal of
/// their device reaches through the dependencies among `changes`: not their author's.
/// `seals` must have been verified. A sealed change that is not among `changes` reaches
/// none of them (what is held already was checked when it came).
pub fn unsealed(changes: &[Change], seals: &[Seal]) -> BTreeSet<usize> {
    let nodes: Vec<Node<'_>> = changes
        .iter()
        .map(|c| Node {
            hash: c.hash(),
            actor: c.actor_id(),
            deps: c.deps(),
        })
        .collect();
    unsealed_nodes(&nodes, seals)
}

/// A change as [`unsealed_nodes`] needs it: its hash, actor and dependencies (what
/// automerge's change metadata has, without building the change).
#[derive(Debug)]
pub struct Node<'a> {
    pub hash: ChangeHash,
    pub actor: &'a ActorId,
    pub deps: &'a [ChangeHash],
}

/// [`unsealed`] over changes' metadata.
pub fn unsealed_nodes(changes: &[Node<'_>], seals: &[Seal]) -> BTreeSet<usize> {
    let at: BTreeMap<ChangeHash, usize> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.hash, i))
        .collect();
    // One walk a device, from all its seals' changes at once: each change is visited at
    // most once a device, however many seals name it.
    let mut starts: BTreeMap<[u8; 16], Vec<usize>> = BTreeMap::new();
    for seal in seals {
        starts.entry(seal.prefix()).or_default().extend(
            seal.heads
                .iter()
                .filter_map(|h| at.get(&ChangeHash(*h)).copied()),
        );
    }
    let mut reached: BTreeSet<(usize, [u8; 16])> = BTreeSet::new();
    for (device, mut todo) in starts {
        while let Some(i) = todo.pop() {
            if !reached.insert((i, device)) {
                continue;
            }
            todo.extend(changes[i].deps.iter().filter_map(|d| at.get(d).copied()));
        }
    }
    changes
        .iter()
        .enumerate()
        .filter(|(i, c)| match needs_seal(c.actor) {
            Some(device) => !reached.contains(&(*i, device)),
            None => false,
        })
        .map(|(i, _)| i)
        .collect()
}

/// Puts into `kept` each seal of `new` (verified) whose changes `held` says are all in
/// the document and that no kept seal of its device `covers` (`covers(a, b)`: every
/// change `b` names is one of `a`'s or in their history); kept seals the new one covers
/// go. Returns whether `kept` changed, and the seals of `new` whose changes are not all
/// there yet (they wait for them).
///
/// A device's seals usually form a line, each covering the one before, and one is kept.
/// A device whose history forked keeps one for each branch until it seals both: a store
/// put back from a backup makes changes that do not depend on those of the runs it
/// missed, and a seal on the new ones alone, though made later, does not vouch for the
/// others (were it to take the place of theirs, nobody could pass them on as the
/// device's). At most [`MAX_KEPT_SEALS`] a device, the latest.
pub fn keep(
    kept: &mut Vec<Seal>,
    new: &[Seal],
    mut held: impl FnMut(&[u8; 32]) -> bool,
    mut covers: impl FnMut(&Seal, &Seal) -> bool,
) -> (bool, Vec<Seal>) {
    let mut changed = false;
    let mut waiting: Vec<Seal> = Vec::new();
    for seal in new {
        // (A seal made after a kept one is not covered by it but for a rank bumped
        // past a forgotten run's: then it is kept beside it, no worse.)
        let covered = kept.iter().any(|k| {
            k.device == seal.device && (k == seal || (!seal.later_than(k) && covers(k, seal)))
        });
        if covered {
            continue;
        }
        if !seal.heads.iter().all(&mut held) {
            // Every such seal waits, not only the device's latest: an earlier one may be
            // all that reaches changes automerge set aside, which are applied when their
            // dependencies come, before (or without) the later one's changes.
            if !waiting.contains(seal) {
                waiting.push(seal.clone());
            }
            continue;
        }
        kept.retain(|k| k.device != seal.device || !covers(seal, k));
        kept.push(seal.clone());
        let mut own: Vec<&Seal> = kept.iter().filter(|k| k.device == seal.device).collect();
        if own.len() > MAX_KEPT_SEALS {
            own.sort_by_key(|k| (k.epoch, k.counter));
            let oldest = own[0].clone();
            kept.retain(|k| *k != oldest);
        }
        changed = true;
    }
    if changed {
        kept.sort_by_key(|s| (s.device, s.epoch, s.counter));
    }
    // At most `MAX_WAITING_SEALS` a device (a member can seal changes it never sends):
    // its earliest, which name what is applied first, and its latest, which names all.
    waiting.sort_by_key(|w| (w.device, w.epoch, w.counter));
    let mut capped: Vec<Seal> = Vec::with_capacity(waiting.len());
    for w in waiting {
        let run = capped
            .iter()
            .rev()
            .take_while(|c| c.device == w.device)
            .count();
        if run == MAX_WAITING_SEALS {
            // Over the bound: the latest takes the place of the one before it.
            capped.pop();
        }
        capped.push(w);
    }
    (changed, capped)
}

/// Whether `a` covers `b` in the document `am` (see [`keep`]): every change `b` names is
/// held, and is one of `a`'s or in their history.
pub fn covers_in(am: &mut automerge::AutoCommit, a: &Seal, b: &Seal) -> bool {
    let mut rest = Vec::new();
    for h in b.heads.iter().filter(|h| !a.heads.contains(h)) {
        let Some((actor, seq)) = am
            .get_change_meta_by_hash(&ChangeHash(*h))
            .map(|m| (m.actor.into_owned(), m.seq))
        else {
            return false;
        };
        // automerge holds an actor's changes in order, each in the history of the
        // next: a later change of the same actor among `a`'s reaches it (the usual
        // case, cheap; the walk below reads every change of the document).
        let later_of_actor = a.heads.iter().any(|l| {
            am.get_change_meta_by_hash(&ChangeHash(*l))
                .is_some_and(|m| *m.actor == actor && m.seq >= seq)
        });
        if !later_of_actor {
            rest.push(*h);
        }
    }
    if rest.is_empty() {
        return true;
    }
    let heads: Vec<ChangeHash> = a.heads.iter().map(|h| ChangeHash(*h)).collect();
    if heads
        .iter()
        .any(|h| am.get_change_meta_by_hash(h).is_none())
    {
        return false;
    }
    let after: BTreeSet<[u8; 32]> = am
        .get_changes_meta(&heads)
        .iter()
        .map(|m| m.hash.0)
        .collect();
    rest.iter().all(|h| !after.contains(h))
}

/// Puts `own`, this device's new seal, into `kept` in the place of every earlier seal of
/// the device: it names the device's frontier, so covers them all (see `own_seal` in the
/// engine's outbox), but for the changes it had no room to name (`unnamed`), whose seals
/// stay.
pub fn keep_own(kept: &mut Vec<Seal>, own: Seal, unnamed: &[[u8; 32]]) {
    kept.retain(|k| k.device != own.device || k.heads.iter().any(|h| unnamed.contains(h)));
    kept.push(own);
    kept.sort_by_key(|s| (s.device, s.epoch, s.counter));
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

    fn key(n: u8) -> SealKey {
        SealKey::from_seed(&[n; 32])
    }

    fn actor(k: &SealKey, epoch: u32) -> ActorId {
        crate::actor_for(&k.device(), epoch)
    }

    fn edit(doc: &mut AutoCommit, v: &str) -> Change {
        doc.put(ROOT, "k", v).unwrap();
        doc.commit();
        doc.get_last_local_change().unwrap()
    }

    #[test]
    fn a_seal_verifies_for_its_device_only() {
        let s = key(1).seal(3, 4, vec![[9; 32]]);
        assert!(s.verify());
        let mut other = s.clone();
        other.device = key(2).device();
        assert!(!other.verify());
        let mut moved = s.clone();
        moved.heads = vec![[8; 32]];
        assert!(!moved.verify());
        assert!(!key(1).seal(3, 4, Vec::new()).verify());
    }

    /// A seal on a device's latest change reaches its earlier ones through the other
    /// members' changes between them; a change forged under its actor is reached by none.
    #[test]
    fn the_latest_seal_vouches_for_the_devices_earlier_changes_only() {
        let (a, b) = (key(1), key(2));
        let mut da = AutoCommit::new().with_actor(actor(&a, 1));
        let a1 = edit(&mut da, "a1");
        let mut db = da.fork().with_actor(actor(&b, 1));
        let b1 = edit(&mut db, "b1");
        da.merge(&mut db).unwrap();
        let a2 = edit(&mut da, "a2");
        // A member forges a's next change, and seals it with its own key.
        let mut forger = da.fork().with_actor(actor(&a, 1));
        let forged = edit(&mut forger, "forged");
        let all = vec![a1.clone(), b1.clone(), a2.clone(), forged.clone()];
        let seals = vec![
            a.seal(1, 2, vec![a2.hash().0]),
            b.seal(1, 1, vec![b1.hash().0]),
            b.seal(1, 2, vec![forged.hash().0]),
        ];
        assert_eq!(unsealed(&all, &seals), BTreeSet::from([3]));
        // Without b's seal, b's change is not b's.
        assert_eq!(unsealed(&all, &seals[..1]), BTreeSet::from([1, 3]));
    }

    /// An edit of an older version (under the actor with a counter after it) is
    /// concurrent with the device's latest change: a seal naming both reaches both.
    #[test]
    fn a_seal_of_two_concurrent_changes_reaches_both() {
        let a = key(1);
        let mut d = AutoCommit::new().with_actor(actor(&a, 1));
        let a1 = edit(&mut d, "a1");
        let a2 = edit(&mut d, "a2");
        let mut fork_actor = actor(&a, 1).to_bytes().to_vec();
        fork_actor.extend_from_slice(&1u64.to_be_bytes());
        let mut fork = d
            .fork_at(&[a1.hash()])
            .unwrap()
            .with_actor(ActorId::from(fork_actor));
        let f = edit(&mut fork, "f");
        let all = vec![a1.clone(), a2.clone(), f.clone()];
        assert_eq!(
            unsealed(&all, &[a.seal(1, 2, vec![a2.hash().0])]),
            BTreeSet::from([2])
        );
        let both = a.seal(1, 3, vec![a2.hash().0, f.hash().0]);
        assert!(unsealed(&all, &[both]).is_empty());
    }

    #[test]
    fn only_the_actors_of_earlier_versions_and_the_fixed_ones_go_without_a_seal() {
        let a = key(1).device();
        let mut legacy = a.0[..16].to_vec();
        legacy.extend(7u32.to_be_bytes());
        let mut legacy_fork = legacy.clone();
        legacy_fork.extend(3u32.to_be_bytes());
        for free in [
            legacy.clone(),
            legacy_fork,
            b"cue-index-genesis".to_vec(),
            b"cue-copy0123456789abcdef".to_vec(),
        ] {
            assert_eq!(needs_seal(&ActorId::from(free.clone())), None, "{free:?}");
        }
        let mut other_era = legacy.clone();
        other_era.push(0);
        let prefix: [u8; 16] = a.0[..16].try_into().unwrap();
        for bound in [
            crate::actor_for(&a, 7).to_bytes().to_vec(),
            other_era,
            a.0[..16].to_vec(),
        ] {
            assert_eq!(
                needs_seal(&ActorId::from(bound.clone())),
                Some(prefix),
                "{bound:?}"
            );
        }
    }

    #[test]
    fn changes_under_older_actors_need_no_seal() {
        let mut d = AutoCommit::new().with_actor(ActorId::from(&[5u8; 20][..]));
        let c = edit(&mut d, "x");
        assert!(unsealed(&[c], &[]).is_empty());
    }

    /// A history in a line: change `[n; 32]` has every `[m; 32]` with m < n in its
    /// history.
    fn in_a_line(a: &Seal, b: &Seal) -> bool {
        let top = a.heads.iter().max();
        b.heads.iter().all(|h| top.is_some_and(|t| h <= t))
    }

    /// A later seal whose changes have not come does not push out an earlier waiting
    /// one: the earlier one's changes may be applied first (automerge set them aside
    /// for a dependency), and it is then the only seal that reaches them.
    #[test]
    fn an_earlier_waiting_seal_still_waits_beside_a_later_one() {
        let a = key(1);
        let mut kept = vec![a.seal(1, 1, vec![[1; 32]])];
        let (c2, c3) = (a.seal(1, 2, vec![[2; 32]]), a.seal(1, 3, vec![[3; 32]]));
        let (_, waiting) = keep(&mut kept, &[c2.clone(), c3.clone()], |_| false, in_a_line);
        assert_eq!(waiting, vec![c2.clone(), c3.clone()]);
        // [2] is applied, [3] is not: the earlier waiting seal is kept, the later waits.
        let (changed, waiting) = keep(&mut kept, &waiting, |h| *h == [2; 32], in_a_line);
        assert!(changed);
        assert_eq!(kept, vec![c2]);
        assert_eq!(waiting, vec![c3]);
        // Bounded a device: the earliest and the latest wait.
        let many: Vec<Seal> = (2..40).map(|n| a.seal(1, n, vec![[n as u8; 32]])).collect();
        let (_, waiting) = keep(&mut vec![], &many, |_| false, in_a_line);
        assert_eq!(waiting.len(), MAX_WAITING_SEALS);
        assert_eq!(waiting[0].counter, 2);
        assert_eq!(waiting[MAX_WAITING_SEALS - 1].counter, 39);
    }

    #[test]
    fn a_seal_covered_by_one_kept_is_not_kept_and_a_later_one_waits() {
        let a = key(1);
        let mut kept = vec![a.seal(1, 2, vec![[2; 32]])];
        assert_eq!(
            keep(
                &mut kept,
                &[a.seal(1, 1, vec![[1; 32]])],
                |_| true,
                in_a_line
            ),
            (false, vec![])
        );
        let later = a.seal(2, 1, vec![[3; 32]]);
        assert_eq!(
            keep(
                &mut kept,
                std::slice::from_ref(&later),
                |_| false,
                in_a_line
            ),
            (false, vec![later.clone()])
        );
        assert_eq!(
            keep(&mut kept, &[later], |_| true, in_a_line),
            (true, vec![])
        );
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].heads, vec![[3; 32]]);
    }

    /// A device whose history forked (its store put back from a backup): its new seal,
    /// though later, does not reach the changes of the runs the backup missed, and the
    /// seal that does is kept beside it, until one covers both. (Kept for its rank alone,
    /// the new seal took the other's place, and nobody could pass on those changes.)
    #[test]
    fn a_later_seal_that_does_not_reach_an_earlier_ones_changes_keeps_both() {
        let a = key(1);
        let missed = a.seal(9, 3, vec![[5; 32]]);
        let restored = a.seal(10, 1, vec![[6; 32]]);
        let branches = |x: &Seal, y: &Seal| y.heads.iter().all(|h| x.heads.contains(h));
        let mut kept = vec![missed.clone()];
        assert!(
            keep(
                &mut kept,
                std::slice::from_ref(&restored),
                |_| true,
                branches
            )
            .0
        );
        assert_eq!(kept, vec![missed.clone(), restored.clone()]);
        // Handed back again: already kept.
        assert!(!keep(&mut kept, std::slice::from_ref(&missed), |_| true, branches).0);
        let both = a.seal(10, 2, vec![[5; 32], [6; 32]]);
        assert!(keep(&mut kept, std::slice::from_ref(&both), |_| true, branches).0);
        assert_eq!(kept, vec![both]);
        // Bounded a device: the latest are kept.
        let mut kept = Vec::new();
        let forks: Vec<Seal> = (0..20).map(|n| a.seal(1, n, vec![[n as u8; 32]])).collect();
        keep(&mut kept, &forks, |_| true, branches);
        assert_eq!(kept.len(), MAX_KEPT_SEALS);
        assert_eq!(kept[0].counter, 20 - MAX_KEPT_SEALS as u64);
    }

    /// Our new seal takes the place of our earlier ones, but for one naming a change the
    /// new one had no room to name: that one still vouches for it.
    #[test]
    fn our_new_seal_keeps_beside_it_the_seal_of_what_it_could_not_name() {
        let a = key(1);
        let b = key(2);
        let (old, other) = (
            a.seal(1, 1, vec![[1; 32]]),
            a.seal(1, 2, vec![[2; 32], [3; 32]]),
        );
        let theirs = b.seal(1, 1, vec![[9; 32]]);
        let mut kept = vec![old.clone(), other.clone(), theirs.clone()];
        let new = a.seal(2, 1, vec![[3; 32], [4; 32]]);
        let sorted = |mut v: Vec<Seal>| {
            v.sort_by_key(|s| (s.device, s.epoch, s.counter));
            v
        };
        keep_own(&mut kept, new.clone(), &[[2; 32]]);
        assert_eq!(kept, sorted(vec![other, new.clone(), theirs.clone()]));
        keep_own(&mut kept, new.clone(), &[]);
        assert_eq!(kept, sorted(vec![new, theirs]));
    }

    /// With automerge: a seal on a later change of the same actor, or on a change of
    /// another run that depends on it, covers it; a seal on a concurrent change does not.
    #[test]
    fn a_seal_covers_what_its_changes_depend_on() {
        let a = key(1);
        let mut doc = AutoCommit::new().with_actor(actor(&a, 1));
        let one = edit(&mut doc, "1").hash();
        let two = edit(&mut doc, "2").hash();
        let mut fork = doc.fork_at(&[one]).unwrap().with_actor(actor(&a, 3));
        let other = edit(&mut fork, "x").hash();
        doc.set_actor(actor(&a, 2));
        let three = edit(&mut doc, "3").hash();
        doc.merge(&mut fork).unwrap();
        let s = |h: ChangeHash| a.seal(1, 1, vec![h.0]);
        assert!(covers_in(&mut doc, &s(two), &s(one)));
        assert!(covers_in(&mut doc, &s(three), &s(one)));
        assert!(covers_in(&mut doc, &s(three), &s(two)));
        assert!(!covers_in(&mut doc, &s(one), &s(two)));
        assert!(!covers_in(&mut doc, &s(three), &s(other)));
        assert!(!covers_in(&mut doc, &s(other), &s(two)));
        assert!(covers_in(&mut doc, &s(other), &s(one)));
        // A change the document does not hold is covered by nothing.
        assert!(!covers_in(&mut doc, &s(three), &s(ChangeHash([7; 32]))));
    }
}
