//! Invites as objects: made, listed, revoked, and checked when a device asks to join.
//!
//! A token no longer carries the workspace secret (docs/security.md, "Invites"): it
//! carries an invite secret, and the device that made the invite keeps it here, in its
//! store, with its expiry, how many devices it may admit, who it admitted and whether it
//! was revoked. Only that device admits with it, so the count of uses is exact; `join`
//! waits for it to be online. An invite made before the secret was last rotated admits
//! nobody.

use serde::{Deserialize, Serialize};

use cue_crypto::{DeviceId, InviteId, InviteSecret, RoomId};

use crate::store::{Store, StoreError};

/// Where the invites live in the store's meta table.
const NS: &str = "invites";
/// An invite lasts this long unless `--expires` says otherwise.
pub const DEFAULT_EXPIRY_MS: i64 = 7 * 24 * 3600 * 1000;

/// One invite this device made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// The invite secret (hex): the token is made from it again for nobody, but the
    /// proof a joining device sends is checked with it.
    secret: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// How many devices it may admit (`None`: any number until it expires).
    pub max_uses: Option<u32>,
    /// The devices it admitted (hex ids) and when.
    pub used_by: Vec<(String, i64)>,
    pub revoked: bool,
    /// The secret generation it was made in: a rotation voids it.
    pub generation: u32,
}

/// An invite as `cue sync invite --list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteInfo {
    pub id: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub max_uses: Option<u32>,
    pub uses: u32,
    /// `active`, `expired`, `used up`, `revoked`, or `void (the secret was rotated)`.
    pub state: String,
}

impl InviteRecord {
    fn secret(&self) -> Option<InviteSecret> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(&self.secret, &mut b).ok()?;
        Some(InviteSecret::from_bytes(b))
    }

    /// Why it admits nobody now, if it does not.
    fn closed(&self, now_ms: i64, generation: u32) -> Option<String> {
        if self.revoked {
            Some("the invite was revoked".into())
        } else if self.generation != generation {
            Some(
                "the invite was made before the workspace secret was rotated, which voids it"
                    .into(),
            )
        } else if now_ms >= self.expires_ms {
            Some(format!(
                "the invite expired at {}",
                crate::control::rfc3339(self.expires_ms)
            ))
        } else if self
            .max_uses
            .is_some_and(|m| self.used_by.len() as u64 >= u64::from(m))
        {
            Some("the invite has been used up (it admitted as many devices as it may)".into())
        } else {
            None
        }
    }

    fn info(&self, id: &str, now_ms: i64, generation: u32) -> InviteInfo {
        let state = match self.closed(now_ms, generation) {
            None => "active".to_string(),
            Some(_) if self.revoked => "revoked".into(),
            Some(_) if self.generation != generation => "void (the secret was rotated)".into(),
            Some(_) if now_ms >= self.expires_ms => "expired".into(),
            Some(_) => "used up".into(),
        };
        InviteInfo {
            id: id.to_string(),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            max_uses: self.max_uses,
            uses: self.used_by.len() as u32,
            state,
        }
    }
}

/// Why an invite cannot be made, listed or revoked.
#[derive(Debug, thiserror::Error)]
pub enum InviteStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("no invite of this device starts with {0:?} (see `cue sync invite --list`)")]
    Unknown(String),
    #[error("{0:?} names {1} invites: give more of its id")]
    Ambiguous(String, usize),
}

/// Makes a new invite; returns its secret (for the token) and its id.
pub fn create(
    store: &mut Store,
    now_ms: i64,
    expires_ms: i64,
    max_uses: Option<u32>,
    generation: u32,
) -> Result<(InviteSecret, InviteId), InviteStoreError> {
    let secret = InviteSecret::generate().map_err(|e| InviteStoreError::Random(e.to_string()))?;
    let id = secret.id();
    let record = InviteRecord {
        secret: hex::encode(secret.as_bytes()),
        created_ms: now_ms,
        expires_ms,
        max_uses,
        used_by: Vec::new(),
        revoked: false,
        generation,
    };
    put(store, &id.to_string(), &record)?;
    Ok((secret, id))
}

/// Every invite this device made, oldest first.
pub fn list(
    store: &Store,
    now_ms: i64,
    generation: u32,
) -> Result<Vec<InviteInfo>, InviteStoreError> {
    let mut out: Vec<InviteInfo> = all(store)?
        .iter()
        .map(|(id, r)| r.info(id, now_ms, generation))
        .collect();
    out.sort_by_key(|i| i.created_ms);
    Ok(out)
}

/// Revokes the invite whose id starts with `prefix`; returns its full id.
pub fn revoke(store: &mut Store, prefix: &str) -> Result<String, InviteStoreError> {
    let prefix = prefix.trim().to_ascii_lowercase();
    let matches: Vec<(String, InviteRecord)> = all(store)?
        .into_iter()
        .filter(|(id, _)| !prefix.is_empty() && id.starts_with(&prefix))
        .collect();
    match matches.len() {
        0 => Err(InviteStoreError::Unknown(prefix)),
        1 => {
            let (id, mut record) = matches.into_iter().next().expect("one");
            record.revoked = true;
            put(store, &id, &record)?;
            Ok(id)
        }
        n => Err(InviteStoreError::Ambiguous(prefix, n)),
    }
}

/// A device's request to join.
#[derive(Debug)]
pub struct Ask<'a> {
    pub invite: &'a InviteId,
    pub device: &'a DeviceId,
    pub name: &'a str,
    pub proof: &'a [u8; 32],
}

/// A device asks to join: `Ok(None)` when the invite is not one of ours (another member
/// answers it), `Ok(Some(Ok(secret)))` when it admits the device (the use is recorded;
/// the invite's secret proves the answer), `Ok(Some(Err(reason)))` when it refuses.
pub fn admit(
    store: &mut Store,
    lobby_room: &RoomId,
    ask: &Ask<'_>,
    now_ms: i64,
    generation: u32,
) -> Result<Option<Result<InviteSecret, String>>, InviteStoreError> {
    let Ask {
        invite,
        device,
        name,
        proof,
    } = *ask;
    let id = invite.to_string();
    let Some(mut record) = get(store, &id)? else {
        return Ok(None);
    };
    let Some(secret) = record.secret() else {
        return Ok(Some(Err(
            "the invite is damaged on the admitting device".into()
        )));
    };
    if !secret.verify_proof(lobby_room, device, name, proof) {
        // Not a holder of the token: say nothing it could use.
        return Ok(Some(Err("the invite proof does not match".into())));
    }
    let hex_id = hex::encode(device.0);
    if record.used_by.iter().any(|(d, _)| *d == hex_id) {
        // The same device asking again (our answer was lost): admitted already.
        return Ok(Some(Ok(secret)));
    }
    if let Some(reason) = record.closed(now_ms, generation) {
        return Ok(Some(Err(reason)));
    }
    record.used_by.push((hex_id, now_ms));
    put(store, &id, &record)?;
    Ok(Some(Ok(secret)))
}

fn all(store: &Store) -> Result<Vec<(String, InviteRecord)>, StoreError> {
    Ok(store
        .list_meta(NS)?
        .into_iter()
        .filter_map(|(k, v)| Some((k, serde_json::from_slice(&v).ok()?)))
        .collect())
}

fn get(store: &Store, id: &str) -> Result<Option<InviteRecord>, StoreError> {
    Ok(store
        .get_meta(NS, id)?
        .and_then(|v| serde_json::from_slice(&v).ok()))
}

fn put(store: &mut Store, id: &str, record: &InviteRecord) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    store.put_meta(NS, id, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cue_crypto::DeviceKey;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("store");
        (dir, store)
    }

    fn asking<'a>(invite: &'a InviteId, device: &'a DeviceId, proof: &'a [u8; 32]) -> Ask<'a> {
        Ask {
            invite,
            device,
            name: "x",
            proof,
        }
    }

    #[test]
    fn an_invite_admits_until_used_up_expired_revoked_or_voided() {
        let (_d, mut s) = store();
        let room = RoomId([5; 32]);
        let (secret, id) = create(&mut s, 1_000, 10_000, Some(1), 0).expect("create");
        let dev = |i: u8| DeviceKey::from_bytes(&[i; 32]).device_id();
        let ask = |s: &mut Store, d: &DeviceId, now: i64, generation: u32| {
            let proof = secret.proof(&room, d, "x");
            admit(s, &room, &asking(&id, d, &proof), now, generation).expect("admit")
        };
        assert!(matches!(ask(&mut s, &dev(1), 2_000, 0), Some(Ok(_))));
        // The same device again: still admitted; another: used up.
        assert!(matches!(ask(&mut s, &dev(1), 2_100, 0), Some(Ok(_))));
        let refused = ask(&mut s, &dev(2), 2_200, 0).expect("ours").unwrap_err();
        assert!(refused.contains("used up"), "{refused}");

        let (secret2, id2) = create(&mut s, 1_000, 10_000, None, 0).expect("create");
        let ask2 = |s: &mut Store, d: &DeviceId, now: i64, generation: u32| {
            let proof = secret2.proof(&room, d, "x");
            admit(s, &room, &asking(&id2, d, &proof), now, generation).expect("admit")
        };
        assert!(
            ask2(&mut s, &dev(3), 10_000, 0)
                .unwrap()
                .unwrap_err()
                .contains("expired")
        );
        assert!(
            ask2(&mut s, &dev(3), 5_000, 1)
                .unwrap()
                .unwrap_err()
                .contains("rotated")
        );
        // A wrong proof, or someone else's invite.
        let bad = admit(&mut s, &room, &asking(&id2, &dev(4), &[0; 32]), 5_000, 0).expect("admit");
        assert!(bad.unwrap().is_err());
        let other = InviteSecret::from_bytes([8; 32]).id();
        assert!(
            admit(&mut s, &room, &asking(&other, &dev(4), &[0; 32]), 5_000, 0)
                .expect("admit")
                .is_none()
        );
        revoke(&mut s, &id2.to_string()[..6]).expect("revoke");
        assert!(
            ask2(&mut s, &dev(5), 5_000, 0)
                .unwrap()
                .unwrap_err()
                .contains("revoked")
        );

        let listed = list(&s, 5_000, 0).expect("list");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed.iter().filter(|i| i.state == "used up").count(), 1);
        assert_eq!(listed.iter().filter(|i| i.state == "revoked").count(), 1);
        assert!(matches!(
            revoke(&mut s, "zz"),
            Err(InviteStoreError::Unknown(_))
        ));
    }
}
