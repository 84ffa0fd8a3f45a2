//! Who came into the workspace first, and the removals that stand for good
//! (docs/security.md, "A removed device's own branch of rotations").
//!
//! A removed device keeps its key, so it can sign records of its own dated before its
//! removal (removing its remover) and make that branch the longest; nothing in a record
//! tells one made before the removal from one made after it. So a removal by a device
//! *senior* to the one it removes stands for good ([`Engine::oust`]): every record of the
//! removed device that is not behind that removal (one of its ancestors) is void, and so
//! is every record built on one, and the device is removed wherever that record stands
//! (on the winning branch or not: off it, a device that stays removes it again on the
//! branch, `refresh_chain`). Of two devices removing each other at once, the senior's
//! removal stands. A junior's removal of a senior is an ordinary one: it holds on the
//! branch that wins, as every removal did before. No daemon signs a removal once it is
//! removed, so an honest device accepts its removal by a junior; a stolen key could
//! still undo it (docs/security.md, "What is left").
//!
//! Seniority ([`Engine::seniority`]):
//! - the device that made the workspace comes first. `init` names it: the workspace id
//!   is a hash of its device id and a salt (cue-crypto `MakerProof`), which it writes
//!   under [`MAKER_KEY`] in the member list; no other device can write a value there
//!   that hashes to the workspace id (the driver's [`MakerCheck`]), and the entry, once
//!   written, stands (`standing_records`);
//! - every other device comes after the device that admitted it, at the time that
//!   device's admitted-by entry says (`admitted:DEVICE = BY:TIME_MS`, counted only when
//!   written by BY); of several entries the earliest counts (so a member can put a
//!   device it vouches for just after itself, never before); at one time, the device
//!   fewer admissions away from the first comes first, then the lower device id;
//! - devices no admission reaches come last, by device id;
//! - in a workspace made before the maker was named, every device without an
//!   admitted-by entry comes first (a member can write an entry about one of them and
//!   so put it after itself: docs/security.md, "What is left").

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::rotation::ADMITTED_PREFIX;
use super::*;

/// The member-list key of the entry naming the device that made the workspace: its
/// proof, in hex (docs/protocol.md).
pub const MAKER_KEY: &str = "maker";

/// The driver's check of a value under [`MAKER_KEY`] (hex-decoded): the device it proves
/// made the workspace, or `None` (the daemon checks cue-crypto's `MakerProof` against the
/// workspace id).
pub type MakerCheck = Arc<dyn Fn(&[u8]) -> Option<DeviceId> + Send + Sync>;

#[derive(Clone)]
pub(super) struct MakerFn(MakerCheck);

impl std::fmt::Debug for MakerFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakerCheck")
    }
}

/// A device's place in the order of seniority: the time it came in (by its admitter's
/// word), then how many admissions away from the first device. Lower is senior.
pub(super) type Rank = (i64, u32);

/// The rank of a device no admission reaches.
const UNREACHED: Rank = (i64::MAX, u32::MAX);

/// Rotation records as `refresh_chain` holds them: sorted by generation, then hash.
pub(super) type Records = [(RotationMeta, Vec<u8>)];

/// The removals that stand for good: each device with the record that removed it, and
/// the records they void.
#[derive(Debug, Default)]
pub(super) struct Ousted {
    pub(super) by: BTreeMap<DeviceId, [u8; 32]>,
    pub(super) voided: BTreeSet<[u8; 32]>,
    /// Removals made by a device removed for good, in its records that removal voids,
    /// of devices junior to it: each device, the voided record, and the device that
    /// removed the author for good. They still count (a removal made while its author
    /// was removed elsewhere is not undone by it: the device it removed may be a
    /// stolen one), and the author's remover makes them again.
    pub(super) kept: Vec<(DeviceId, [u8; 32], DeviceId)>,
}

impl Engine {
    /// Sets how the entry naming the workspace's maker is checked. `own` is this
    /// device's proof when it made the workspace: written into the member list unless
    /// the entry already names it (at every start: the entry is written once, then
    /// stands).
    pub fn set_maker_check(&mut self, check: MakerCheck, own: Option<&[u8]>) {
        let mine = own.filter(|proof| check(proof) == Some(self.device));
        self.maker_check = Some(MakerFn(check));
        if let Some(proof) = mine
            && self.maker() != Some(self.device)
        {
            let _ = self
                .index
                .put_raw("members", MAKER_KEY, &hex::encode(proof));
            self.commit_index();
        }
        self.refresh_members();
    }

    /// The device that made the workspace, when an entry in the member list proves it.
    pub(super) fn maker(&self) -> Option<DeviceId> {
        let check = &self.maker_check.as_ref()?.0;
        self.index
            .raw_values("members")
            .get(MAKER_KEY)?
            .iter()
            .filter_map(|(v, _)| check(&hex::decode(v).ok()?))
            .min()
    }

    /// Whether a value under [`MAKER_KEY`] proves who made the workspace (a standing
    /// entry: `standing_records`).
    pub(super) fn proves_maker(&self, value: &str) -> bool {
        self.maker_check
            .as_ref()
            .is_some_and(|c| hex::decode(value).is_ok_and(|b| (c.0)(&b).is_some()))
    }

    /// Each device's rank (see the module docs); a device missing from the map comes
    /// after every device in it.
    pub(super) fn seniority(&self) -> BTreeMap<DeviceId, Rank> {
        let maker = self.maker();
        // Admitter → (admitted, when), from every value of every admitted-by entry
        // written by the admitter it names (a member can put another value beside one).
        let mut admitted_by: BTreeMap<DeviceId, Vec<(DeviceId, i64)>> = BTreeMap::new();
        let mut admitted = BTreeSet::new();
        for (device, by, at) in self.admitted_entries() {
            if Some(device) != maker && by != device {
                admitted_by.entry(by).or_default().push((device, at));
                admitted.insert(device);
            }
        }
        // (From the index alone: every device holding it ranks alike.)
        let roots: BTreeSet<DeviceId> = match maker {
            Some(m) => BTreeSet::from([m]),
            None => (self.index.member_values().into_keys())
                .chain(admitted_by.keys().copied())
                .filter(|d| !admitted.contains(d))
                .collect(),
        };
        // Lowest rank first: a device's rank is above its admitter's, so each is final
        // when it leaves the queue.
        let mut rank = BTreeMap::new();
        let mut queue: BinaryHeap<Reverse<(Rank, DeviceId)>> = roots
            .into_iter()
            .map(|d| Reverse(((i64::MIN, 0), d)))
            .collect();
        while let Some(Reverse((r, d))) = queue.pop() {
            if rank.contains_key(&d) {
                continue;
            }
            rank.insert(d, r);
            for (x, at) in admitted_by.get(&d).into_iter().flatten() {
                if !rank.contains_key(x) {
                    queue.push(Reverse(((r.0.max(*at), r.1.saturating_add(1)), *x)));
                }
            }
        }
        rank
    }

    /// The removals that stand for good (see the module docs), taken author by author,
    /// the senior first, each from the author's records still placed once the removals
    /// of its seniors voided what they void.
    pub(super) fn oust(&self, records: &Records, rank: &BTreeMap<DeviceId, Rank>) -> Ousted {
        let key = |d: &DeviceId| (rank.get(d).copied().unwrap_or(UNREACHED), *d);
        // Only members (and authors of records) are removed for good: a record's other
        // removals (up to 1,024 ids of any kind) cost nothing here. Authors that remove
        // none of them are skipped.
        let authored: BTreeSet<DeviceId> = records.iter().map(|(m, _)| m.rotated_by).collect();
        // (From the index alone, as the ranks: every device holding it removes alike.)
        let listed = self.index_devices();
        let known = |d: &DeviceId| authored.contains(d) || listed.contains(d);
        let mut authors: Vec<DeviceId> = records
            .iter()
            .filter(|(m, _)| m.removed.iter().any(known))
            .map(|(m, _)| m.rotated_by)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        authors.sort_by_key(key);
        // Each author's records, looked up once: a hostile member can sign many records
        // of up to 1,024 removals each, and this runs at every index change.
        let mut by_author: BTreeMap<DeviceId, Vec<[u8; 32]>> = BTreeMap::new();
        for (m, _) in records {
            by_author.entry(m.rotated_by).or_default().push(m.hash);
        }
        let mut out = Ousted::default();
        let mut placed = self.place(records, &out.voided);
        for author in authors {
            let mut grew = false;
            for (m, _) in records
                .iter()
                .filter(|(m, _)| m.rotated_by == author && placed.contains_key(&m.hash))
            {
                let mut behind: Option<BTreeSet<[u8; 32]>> = None;
                for d in &m.removed {
                    if !known(d) || out.by.contains_key(d) || key(d) <= key(&author) {
                        continue;
                    }
                    out.by.insert(*d, m.hash);
                    grew = true;
                    let Some(theirs) = by_author.get(d) else {
                        continue;
                    };
                    let behind = behind.get_or_insert_with(|| ancestors(records, &placed, m.hash));
                    out.voided
                        .extend(theirs.iter().filter(|h| !behind.contains(*h)).copied());
                }
            }
            if grew {
                placed = self.place(records, &out.voided);
            }
        }
        let author_of: BTreeMap<[u8; 32], DeviceId> = records
            .iter()
            .map(|(m, _)| (m.hash, m.rotated_by))
            .collect();
        for (m, _) in records.iter().filter(|(m, _)| out.voided.contains(&m.hash)) {
            let Some(remover) = out.by.get(&m.rotated_by).and_then(|h| author_of.get(h)) else {
                continue;
            };
            for d in &m.removed {
                if known(d) && !out.by.contains_key(d) && key(d) > key(&m.rotated_by) {
                    out.kept.push((*d, m.hash, *remover));
                }
            }
        }
        out
    }
}

impl Engine {
    /// The devices the index names: member-list entries, and the devices of admitted-by
    /// entries and their admitters.
    fn index_devices(&self) -> BTreeSet<DeviceId> {
        let mut out: BTreeSet<DeviceId> = self.index.member_values().into_keys().collect();
        for (device, by, _) in self.admitted_entries() {
            out.extend([device, by]);
        }
        out
    }

    /// For each device but the maker, the admitted-by value that places it in the
    /// order of seniority (the admitter and time `cue sync devices` shows): of several
    /// (a member can write its own beside the admitter's), the one giving the senior
    /// place, as [`Engine::seniority`] takes it, then the lower admitter id; not the
    /// last one written, which any member could make its word.
    pub(super) fn ranking_admissions(&self) -> BTreeMap<DeviceId, (DeviceId, i64)> {
        let maker = self.maker();
        let rank = self.seniority();
        let mut best: BTreeMap<DeviceId, (Rank, DeviceId, i64)> = BTreeMap::new();
        for (device, by, at) in self.admitted_entries() {
            if Some(device) == maker || by == device {
                continue;
            }
            let r = rank.get(&by).copied().unwrap_or(UNREACHED);
            let place = (r.0.max(at), r.1.saturating_add(1));
            let here = (place, by, at);
            if best.get(&device).is_none_or(|b| here < *b) {
                best.insert(device, here);
            }
        }
        best.into_iter()
            .map(|(device, (_, by, at))| (device, (by, at)))
            .collect()
    }

    /// Every value of every admitted-by entry written by the admitter it names, as
    /// (admitted, admitter, when), in the index's order.
    pub(super) fn admitted_entries(&self) -> Vec<(DeviceId, DeviceId, i64)> {
        let mut out = Vec::new();
        for (key, values) in self.index.raw_values("members") {
            let Some(device) = key
                .strip_prefix(ADMITTED_PREFIX)
                .and_then(DeviceId::from_hex)
            else {
                continue;
            };
            for (value, actor) in values {
                if let Some((by, at)) = parse_admitted(&value)
                    && made_by(&by, &actor)
                {
                    out.push((device, by, at));
                }
            }
        }
        out
    }
}

/// An admitted-by entry's value, `BY:TIME_MS`.
pub(super) fn parse_admitted(value: &str) -> Option<(DeviceId, i64)> {
    let (by, at) = value.split_once(':')?;
    Some((DeviceId::from_hex(by)?, at.parse().ok()?))
}

/// The records before `hash` on its branch (placed ones: each parent placed).
pub(super) fn ancestors(
    records: &Records,
    placed: &BTreeMap<[u8; 32], (usize, BTreeSet<DeviceId>)>,
    hash: [u8; 32],
) -> BTreeSet<[u8; 32]> {
    let mut out = BTreeSet::new();
    let mut at = placed.get(&hash).map(|(i, _)| &records[*i].0);
    while let Some(m) = at {
        if m.generation <= 1 {
            break;
        }
        out.insert(m.parent);
        at = placed.get(&m.parent).map(|(i, _)| &records[*i].0);
    }
    out
}
