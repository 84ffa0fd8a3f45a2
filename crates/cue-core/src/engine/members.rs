//! The member list: who the engine takes for a member. The index's `members` map is a
//! synced document any member can write, so an entry is taken only when
//!
//! - its value is an admission (docs/protocol.md §2.6) that the driver's check
//!   ([`Engine::set_admission_check`]) finds valid for that device: the device itself
//!   signed that name for this workspace; or
//! - it was written by the device itself (the op's actor is one of the device's): how
//!   every engine registers itself at its first start, and how entries written before
//!   admissions were kept stay readable.
//!
//! An entry a member wrote for another device (a stranger added, a member renamed) is
//! neither, and is ignored and counted in `bad_members`. A device once taken stays a
//! member here (the set is persisted): deleting its entry removes no one.

use std::sync::Arc;

use super::*;

/// How a member-list value holding an admission starts; the admission follows in hex.
pub const ADMISSION_PREFIX: &str = "admission:";

/// The driver's check of an admission kept in the member list: the name it admits
/// `device` under in this workspace, or `None` when it is not a valid admission of that
/// device (the daemon verifies the signature with cue-crypto).
pub type AdmissionCheck = Arc<dyn Fn(&DeviceId, &[u8]) -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub(super) struct Check(AdmissionCheck);

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdmissionCheck")
    }
}

/// The name in an encoded admission (docs/protocol.md §2.6: version, device id, name
/// length, name, signature), unchecked.
fn admission_name(device: &DeviceId, bytes: &[u8]) -> Option<String> {
    let (&version, rest) = bytes.split_first()?;
    // Version 2 (signed for the lobby room): an older one is written again at the
    // device's next start, since members no longer take it.
    if version != 2 || rest.len() < 33 || rest[..32] != device.0 {
        return None;
    }
    let n = usize::from(rest[32]);
    let name = rest.get(33..33 + n)?;
    if rest.len() != 33 + n + 64 {
        return None;
    }
    String::from_utf8(name.to_vec()).ok()
}

impl Engine {
    /// Sets how admissions kept in the member list are checked. Without a check (the
    /// simulation), an admission counts only when its device wrote it itself.
    pub fn set_admission_check(&mut self, check: AdmissionCheck) {
        self.admission_check = Some(Check(check));
        self.member_verdicts.clear();
        self.judge_stored_members();
    }

    /// [`Engine::refresh_members`] over entries judged before (stored, at a start; or
    /// again under a new check): those refused were counted when they came. Counted
    /// again, `bad_members` grew at every start of an honest device (its admissions,
    /// judged before the daemon set the check, taken for forged).
    pub(super) fn judge_stored_members(&mut self) {
        let counted = self.state.counters.bad_members;
        self.refresh_members();
        self.state.counters.bad_members = counted;
    }

    /// A device proved it holds the invite: its entry, with its admission if there is
    /// one, goes into the member list.
    pub(super) fn admit(&mut self, device: DeviceId, name: String, admission: Vec<u8>) {
        if self.chain.removed.contains_key(&device) {
            // Removed from the workspace: its admission admits it no more.
            return;
        }
        let value = if admission.is_empty() {
            name.clone()
        } else {
            format!("{ADMISSION_PREFIX}{}", hex::encode(&admission))
        };
        let known = self.members_view.contains_key(&device);
        let current = self
            .index
            .member_values()
            .remove(&device)
            .unwrap_or_default();
        if current.len() != 1 || current[0].0 != value {
            let _ = self.index.set_member(&device, &value);
            self.commit_index();
        }
        self.refresh_members();
        if !known && self.members_view.contains_key(&device) {
            self.activity(
                ActivityKind::PeerJoined,
                None,
                &name,
                Some("admitted to the workspace".into()),
            );
        }
    }

    /// Whether our own entry already names us as we are (written by us, or our
    /// admission under our name).
    pub(super) fn own_entry_current(&self) -> bool {
        let values = self
            .index
            .member_values()
            .remove(&self.device)
            .unwrap_or_default();
        values.last().is_some_and(|(v, actor)| {
            made_by(&self.device, actor)
                && (*v == self.name
                    || v.strip_prefix(ADMISSION_PREFIX)
                        .and_then(|h| hex::decode(h).ok())
                        .and_then(|b| admission_name(&self.device, &b))
                        .as_deref()
                        == Some(self.name.as_str()))
        })
    }

    /// Recomputes who is a member from the index (see the module docs).
    pub(super) fn refresh_members(&mut self) {
        let mut view = self.state.members.clone();
        for (device, values) in self.index.member_values() {
            let mut taken = None;
            // `get_all` lists the values in op order: the last taken one wins.
            for (value, actor) in values {
                let key = (device, value, actor.to_bytes().to_vec());
                let verdict = match self.member_verdicts.get(&key) {
                    Some(v) => v.clone(),
                    None => {
                        let v = self.judge(&device, &key.1, &actor);
                        if v.is_none() {
                            self.state.counters.bad_members += 1;
                            self.state_dirty = true;
                        }
                        self.member_verdicts.insert(key, v.clone());
                        v
                    }
                };
                if verdict.is_some() {
                    taken = verdict;
                }
            }
            if let Some(name) = taken {
                view.insert(device, name);
            }
        }
        view.insert(self.device, self.name.clone());
        if view != self.state.members {
            self.state.members = view.clone();
            self.state_dirty = true;
        }
        self.members_view = view;
        // Removed devices stay in the persisted list (their names) but are members no
        // more; the chain needs the members first (a record's author must be one).
        self.refresh_chain();
        let me = self.device;
        self.members_view
            .retain(|d, _| *d == me || !self.chain.removed.contains_key(d));
    }

    /// The name a member-list value written by `writer` admits `device` under, if it is
    /// taken (see the module docs).
    fn judge(&self, device: &DeviceId, value: &str, writer: &ActorId) -> Option<String> {
        let by_itself = made_by(device, writer);
        match value.strip_prefix(ADMISSION_PREFIX) {
            Some(h) => {
                let bytes = hex::decode(h).ok()?;
                match &self.admission_check {
                    Some(check) => (check.0)(device, &bytes),
                    None if by_itself => admission_name(device, &bytes),
                    None => None,
                }
            }
            None => by_itself.then(|| value.to_string()),
        }
    }
}
