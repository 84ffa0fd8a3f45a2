//! Overlapping edits: paragraphs of a file's body that concurrent edits from two devices
//! both changed. The merge keeps both (by character), so nothing is lost, but the result
//! interleaves two rewrites and a person should read it: the activity log and status say
//! so, naming both devices.
//!
//! Found where a merge joins concurrent versions: changes from a peer applied to a
//! document that had changes the sender lacked (`apply.rs`), and a local save made on an
//! older version merged with remote changes that arrived meanwhile (`local.rs`). A
//! fast-forward costs a comparison of heads and nothing more.
//!
//! A notice is this device's own (kept in the engine's state, not the synced index): each
//! device finds the overlap itself when it merges, and each user clears it after reading
//! the file here, with `cue sync resolve PATH`. A later edit does not clear it: editors
//! save on their own, often before anyone has read the paragraph.

use super::*;
use crate::doc::Overlaps;

/// Notices kept at most; beyond it the oldest go. Each is a path's paragraph a person
/// has not looked at yet: more than this is no longer a list anyone reads, and the state
/// is rewritten whole at every change.
pub(super) const MAX_OVERLAP_NOTICES: usize = 256;

/// Paragraphs listed for one file at one merge; beyond it one activity entry counts the
/// rest. A merge of two whole-file rewrites (each side reformatted the file) would
/// otherwise log every paragraph, and the first ones already say to read the file.
const MAX_PARAGRAPHS_PER_MERGE: usize = 16;

/// One paragraph both sides of a merge changed, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct OverlapNotice {
    pub(super) file: FileId,
    /// The paragraph's first line in the merged file, from 1 (at the time of the merge).
    pub(super) line: u32,
    /// That line, cut short.
    pub(super) excerpt: String,
    /// The names of the devices whose concurrent edits were merged, sorted.
    pub(super) devices: Vec<String>,
    pub(super) time_ms: i64,
}

/// Added after [`LaterCounters2`], stored after it in the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StateTail4 {
    pub(super) overlaps: Vec<OverlapNotice>,
}

/// An overlapping edit as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlapInfo {
    /// Where the file is now (the notice follows renames).
    pub path: String,
    pub line: u32,
    pub excerpt: String,
    pub devices: Vec<String>,
    pub time_ms: i64,
}

/// What an overlap notice says, the same in the activity log and `cue sync resolve`:
/// `line 3 ("We meet on Tuesday."): edited at the same time on desk and laptop`.
pub fn overlap_detail(line: u32, excerpt: &str, devices: &[String]) -> String {
    format!(
        "line {line} (\"{excerpt}\"): edited at the same time on {}",
        names(devices)
    )
}

/// `desk and laptop`, `a, b and c`.
fn names(devices: &[String]) -> String {
    match devices {
        [] => "two devices".to_string(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

impl Engine {
    /// Records what [`FileDoc::overlaps`] found in `file`, named after the members whose
    /// actors made each side's changes. Side `b` is the one merged in (a peer's changes,
    /// or those that arrived while a save was on its way): the activity entry is about
    /// its author. Nothing when the two sides are one device's (a program writing to a
    /// file cue had just replaced here).
    pub(super) fn note_overlaps(&mut self, file: FileId, found: Overlaps) {
        let by = self.other_author(&found.actors_b);
        let members = &self.members_view;
        let devices_of = |actors: &BTreeSet<ActorId>| -> BTreeSet<DeviceId> {
            actors
                .iter()
                .filter_map(|a| members.keys().find(|d| made_by(d, a)).copied())
                .collect()
        };
        let (a, b) = (devices_of(&found.actors_a), devices_of(&found.actors_b));
        let all: BTreeSet<DeviceId> = a.union(&b).copied().collect();
        if a.is_empty() || b.is_empty() || all.len() < 2 {
            return;
        }
        let mut devices: Vec<String> = all.iter().filter_map(|d| members.get(d).cloned()).collect();
        devices.sort();
        devices.dedup();
        let Some(path) = self.index.path_of(&file) else {
            return;
        };
        let mut paragraphs = found.paragraphs;
        let unlisted = paragraphs.len().saturating_sub(MAX_PARAGRAPHS_PER_MERGE);
        paragraphs.truncate(MAX_PARAGRAPHS_PER_MERGE);
        for p in paragraphs {
            let notices = &mut self.tail4.overlaps;
            // A paragraph found again at the same line, between the same devices (two
            // people still typing in it), is one notice, the latest, logged once.
            let open = notices
                .iter()
                .position(|n| n.file == file && n.line == p.line);
            let again = open.is_some_and(|i| notices[i].devices == devices);
            if let Some(i) = open {
                notices.remove(i);
            }
            if !again {
                let detail = overlap_detail(p.line, &p.excerpt, &devices);
                self.activity(ActivityKind::Overlap, Some(path.clone()), &by, Some(detail));
            }
            self.tail4.overlaps.push(OverlapNotice {
                file,
                line: p.line,
                excerpt: p.excerpt,
                devices: devices.clone(),
                time_ms: self.now_ms,
            });
        }
        if unlisted > 0 {
            // Both sides rewrote the whole file (a reformatting on each): the first
            // paragraphs say where to look; the rest is said in one entry.
            let detail = format!(
                "{unlisted} more paragraphs further down were edited at the same time on {}",
                names(&devices)
            );
            self.activity(ActivityKind::Overlap, Some(path), &by, Some(detail));
        }
        let excess = self
            .tail4
            .overlaps
            .len()
            .saturating_sub(MAX_OVERLAP_NOTICES);
        self.tail4.overlaps.drain(..excess);
        self.state_dirty = true;
    }

    /// The name of a member other than this device among `actors`' devices (this
    /// device's own name when there is none).
    pub(super) fn other_author(&self, actors: &BTreeSet<ActorId>) -> String {
        self.members_view
            .iter()
            .find(|(d, _)| **d != self.device && actors.iter().any(|a| made_by(d, a)))
            .map_or_else(|| self.name.clone(), |(_, name)| name.clone())
    }

    /// The notices of files that are live, at their paths now, oldest first.
    pub(super) fn open_overlaps(&mut self, store: &mut dyn DocStore) -> Vec<OverlapInfo> {
        if self.tail4.overlaps.is_empty() {
            return Vec::new();
        }
        let live = self.live_view(store);
        self.tail4
            .overlaps
            .iter()
            .filter_map(|n| {
                Some(OverlapInfo {
                    path: live.get(&n.file)?.clone(),
                    line: n.line,
                    excerpt: n.excerpt.clone(),
                    devices: n.devices.clone(),
                    time_ms: n.time_ms,
                })
            })
            .collect()
    }

    /// Clears the notices of the file at `path` (`cue sync resolve`); how many.
    pub(super) fn clear_overlaps(&mut self, path: &str, store: &mut dyn DocStore) -> usize {
        if self.tail4.overlaps.is_empty() {
            return 0;
        }
        let live = self.live_view(store);
        let before = self.tail4.overlaps.len();
        self.tail4
            .overlaps
            .retain(|n| live.get(&n.file).map(String::as_str) != Some(path));
        let cleared = before - self.tail4.overlaps.len();
        if cleared > 0 {
            self.state_dirty = true;
        }
        cleared
    }
}
