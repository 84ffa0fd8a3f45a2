//! Conflicts: clashing paths, field conflicts and the conflict copies that keep the
//! losing side.

use super::*;
use crate::frontmatter;
use crate::paths::{MAX_COMPONENT_BYTES, MAX_PATH_BYTES};

/// The longest extension (with its dot) a conflict copy keeps after its suffix.
const MAX_EXTENSION_BYTES: usize = 32;

/// The conflict copy's name: `<stem>.conflict-<device>-<6 hex>.<ext>` (docs/reference.md §2.6), with a
/// counter when that name is taken.
pub fn conflict_copy_name(
    path: &str,
    device_name: &str,
    device: &DeviceId,
    taken: &dyn Fn(&str) -> bool,
) -> String {
    let (dir, file) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    // What follows the last dot is kept whole as the extension only when it is short
    // like one: a long one (`2024.<200 bytes>`) would leave no room for the suffix,
    // and the copy's name would be one no device can write.
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 && file.len() - i <= MAX_EXTENSION_BYTES => (&file[..i], &file[i..]),
        _ => (file, ""),
    };
    let mut n = 1;
    loop {
        let counter = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let suffix = format!(".conflict-{device_name}-{}{counter}{ext}", device.short());
        // The name must fit a filesystem's 255 bytes, and the path its 4096: the stem is
        // cut (at a character boundary), never the suffix that says what the copy is,
        // nor the extension.
        let room = MAX_COMPONENT_BYTES
            .min(MAX_PATH_BYTES.saturating_sub(dir.len()))
            .saturating_sub(suffix.len());
        let candidate = format!("{dir}{}{suffix}", cut_at_char(stem, room));
        if !taken(&candidate) {
            return candidate;
        }
        n += 1;
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn cut_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What a frontmatter conflict says, the same in status, the activity log and
/// `cue sync resolve`: `title: kept "Done" (desk); set aside "Todo" (laptop)`. `kept`
/// and each of `set_aside` are a value as shown to people and its device's name.
fn frontmatter_conflict_detail(
    key: &str,
    kept: (&str, &str),
    set_aside: &[(String, String)],
) -> String {
    let aside: Vec<String> = set_aside
        .iter()
        .map(|(value, device)| format!("\"{value}\" ({device})"))
        .collect();
    format!(
        "{key}: kept \"{}\" ({}); set aside {}",
        kept.0,
        kept.1,
        aside.join(", ")
    )
}

impl Engine {
    /// After a remote change to a file: record what the merge chose between.
    pub(super) fn record_field_conflicts(&mut self, file: FileId, store: &mut dyn DocStore) {
        let conflicts = self
            .with_doc(file, store, |d| Ok(d.conflicts()))
            .unwrap_or_default();
        if conflicts.is_empty() {
            return;
        }
        // Without a path (its index entry has not arrived yet) there is nothing to name
        // a copy after; the check runs again when the document next changes.
        let Some(path) = self.index.path_of(&file) else {
            return;
        };
        let members = self.members_view.clone();
        let mut changed = false;
        for c in conflicts {
            match c {
                FieldConflict::Frontmatter {
                    key,
                    winner,
                    losers,
                } => {
                    changed |=
                        self.frontmatter_conflict(file, &path, &key, &winner, &losers, &members);
                }
                FieldConflict::Binary { losers } => {
                    for (op, bytes) in losers {
                        changed |= self.binary_conflict(file, &path, &op, &bytes, &members, store);
                    }
                }
            }
        }
        if changed {
            self.commit_index();
        }
    }

    /// Records which of concurrent values a frontmatter key kept and which it set
    /// aside, naming each value's device; whether the conflict was new.
    fn frontmatter_conflict(
        &mut self,
        file: FileId,
        path: &str,
        key: &str,
        winner: &(String, String),
        losers: &[(String, String)],
        members: &BTreeMap<DeviceId, String>,
    ) -> bool {
        let mut ids: Vec<&str> = losers.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort();
        let digest = blake3::hash(format!("{file}\u{1f}{key}\u{1f}{}", ids.join(",")).as_bytes());
        let id = format!("fm-{}", hex::encode(&digest.as_bytes()[..12]));
        if self.index.has_conflict(&id) {
            return false;
        }
        let name_of = |op: &str| {
            device_of_op(op, members)
                .and_then(|d| members.get(&d).cloned())
                .unwrap_or_else(|| "unknown device".into())
        };
        let (winner_op, winner_block) = winner;
        let detail = frontmatter_conflict_detail(
            key,
            (
                &frontmatter::display_value(winner_block),
                &name_of(winner_op),
            ),
            &losers
                .iter()
                .map(|(op, block)| (frontmatter::display_value(block), name_of(op)))
                .collect::<Vec<_>>(),
        );
        let device = losers
            .first()
            .map(|(op, _)| name_of(op))
            .unwrap_or_default();
        let rec = ConflictRecord {
            kind: ConflictKind::Frontmatter,
            file,
            path: path.to_string(),
            copy: None,
            detail,
            time_ms: self.now_ms,
            resolved: false,
        };
        self.record_conflict(&id, &rec, &device, rec.detail.clone());
        true
    }

    /// Keeps the losing value of concurrent binary writes as a conflict copy; whether a
    /// copy was made.
    fn binary_conflict(
        &mut self,
        file: FileId,
        path: &str,
        op: &str,
        bytes: &[u8],
        members: &BTreeMap<DeviceId, String>,
        store: &mut dyn DocStore,
    ) -> bool {
        let copy_id = FileId::derive("cue conflict copy", &[&file.0, op.as_bytes()]);
        let id = format!("binary-{copy_id}");
        if self.index.path_of(&copy_id).is_some()
            || self.files.contains(&copy_id)
            || self.index.has_conflict(&id)
        {
            // Already made, here or by a peer whose copy reached us; or made once and
            // deleted since, its deletion purged (the record stays): a device joining
            // later, checking the document, made it again.
            return false;
        }
        let origin = device_of_op(op, members).unwrap_or(self.device);
        let origin_name = members
            .get(&origin)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let taken: BTreeSet<String> = self.live_view(store).values().cloned().collect();
        let copy = conflict_copy_name(path, &origin_name, &origin, &|c| taken.contains(c));
        // Every peer that finds this conflict makes the same first change (same actor,
        // time and content), so the copies are one document.
        let mut actor = b"cue-copy".to_vec();
        actor.extend_from_slice(&copy_id.0);
        let mut doc = FileDoc::new(ActorId::from(actor));
        if doc.write("", bytes, 0).is_err() {
            return false;
        }
        let Ok(mut doc) = FileDoc::load(&doc.save(), self.actor.clone()) else {
            return false;
        };
        let saved = doc.save();
        doc.mark_unsaved();
        let t = self.touch();
        self.cache.insert(copy_id, (doc, t));
        self.files.insert(copy_id, FileMeta::default());
        self.refresh_meta(copy_id, store);
        self.broadcast(Item::Whole {
            doc: DocId::File(copy_id),
            bytes: saved,
        });
        let _ = self.index.set_path(&copy_id, &copy);
        let _ = self.index.set_origin(&copy_id, &origin);
        let rec = ConflictRecord {
            kind: ConflictKind::Binary,
            file,
            path: path.to_string(),
            copy: Some((copy_id, copy.clone())),
            detail: format!("written at the same time on {origin_name}"),
            time_ms: self.now_ms,
            resolved: false,
        };
        self.record_conflict(&id, &rec, &origin_name, format!("kept as {copy}"));
        true
    }

    /// Put a conflict into the synced index (the caller commits) and the activity log.
    pub(super) fn record_conflict(
        &mut self,
        id: &str,
        rec: &ConflictRecord,
        device: &str,
        detail: String,
    ) {
        let _ = self.index.put_conflict(id, rec);
        self.activity(
            ActivityKind::Conflict,
            Some(rec.path.clone()),
            device,
            Some(detail),
        );
    }

    pub(super) fn open_conflicts(&mut self, store: &mut dyn DocStore) -> Vec<ConflictInfo> {
        let live = self.live_view(store);
        let mut out = Vec::new();
        for (id, rec) in self.index.conflicts() {
            if rec.resolved {
                continue;
            }
            // A conflict copy's conflict clears when the copy is deleted or renamed.
            if let Some((copy, copy_path)) = &rec.copy
                && live.get(copy) != Some(copy_path)
            {
                continue;
            }
            out.push(ConflictInfo {
                id,
                kind: rec.kind,
                path: rec.path.clone(),
                copy: rec.copy.map(|(_, p)| p),
                detail: rec.detail,
                time_ms: rec.time_ms,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_copy_name_fits_255_bytes_whatever_the_original() {
        let device = DeviceId([7; 32]);
        for stem_len in [1, 100, 233, 240, 250, 251] {
            // Multi-byte characters, so a cut in the middle of one would be invalid.
            let stem: String = "é".repeat(stem_len / 2) + &"a".repeat(stem_len % 2);
            let path = format!("notes/{stem}.md");
            let taken = |c: &str| c.ends_with("-abc.md");
            let name = conflict_copy_name(&path, "laptop", &device, &taken);
            let file = name.rsplit('/').next().unwrap();
            assert!(file.len() <= 255, "{} bytes: {file}", file.len());
            assert!(file.ends_with(".md"), "{file}");
            assert!(file.contains(".conflict-laptop-"), "{file}");
            assert!(crate::paths::valid_path(&name).is_ok(), "{name}");
            // A second copy gets a counter and still fits.
            let first = name.clone();
            let second = conflict_copy_name(&path, "laptop", &device, &|c| c == first);
            assert_ne!(second, first);
            assert!(second.rsplit('/').next().unwrap().len() <= 255);
        }
        // A path near the 4096 bytes of a whole path: the copy's fits too.
        let deep = format!(
            "{}/{}.md",
            vec!["d".repeat(200); 20].join("/"),
            "n".repeat(60)
        );
        assert!(crate::paths::valid_path(&deep).is_ok());
        let name = conflict_copy_name(&deep, "laptop", &device, &|_| false);
        assert!(
            crate::paths::valid_path(&name).is_ok(),
            "{} bytes",
            name.len()
        );
        // What follows the last dot is no extension when it is long: kept in the stem,
        // cut like it.
        for tail in [40, 200, 233, 250] {
            let path = format!("notes/2024.{}", "日".repeat(tail / 3));
            let name =
                conflict_copy_name(&path, "a-long-device-name-of-32-chars-x", &device, &|_| {
                    false
                });
            assert!(crate::paths::valid_path(&name).is_ok(), "{name}");
            assert!(name.contains(".conflict-a-long-device-name"), "{name}");
        }
    }
}
