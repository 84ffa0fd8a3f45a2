//! The proof naming the device that made a workspace: who comes first in the order of
//! seniority that settles removals (docs/security.md, "A removed device's own branch of
//! rotations").
//!
//! At `init` the workspace id is made from the maker's device id and a random salt:
//! `SHA-256(MAKER_DOMAIN | device id | salt)`, its first 16 bytes. The maker writes
//! `device id | salt` into the synced member list, and every member checks it against
//! the workspace id it holds (from the invite it joined with). Any member can write a
//! value there, but naming another device would take a salt whose hash with that
//! device's id is the workspace id: a second preimage of 128 bits.
//!
//! Encoding: device id (32) | salt (16). Workspaces made before this have random ids,
//! which no proof matches: they have no maker.

use sha2::{Digest, Sha256};

use crate::keys::{DeviceId, RandomnessError, WorkspaceId, os_random};

/// Domain tag of the workspace id's hash.
pub const MAKER_DOMAIN: &[u8] = b"cue/v1/workspace-maker\0";
/// Length of an encoded proof.
pub const MAKER_PROOF_LEN: usize = 32 + 16;

/// The device that made a workspace, and the salt its workspace id was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MakerProof {
    /// The device that made the workspace.
    pub device: DeviceId,
    /// Random bytes: two workspaces made by one device get different ids.
    pub salt: [u8; 16],
}

impl MakerProof {
    /// A new proof for a workspace `device` makes now.
    pub fn generate(device: DeviceId) -> Result<Self, RandomnessError> {
        let mut salt = [0u8; 16];
        os_random(&mut salt)?;
        Ok(Self { device, salt })
    }

    /// The workspace id this proof makes.
    pub fn workspace_id(&self) -> WorkspaceId {
        let mut h = Sha256::new();
        h.update(MAKER_DOMAIN);
        h.update(self.device.0);
        h.update(self.salt);
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        WorkspaceId(id)
    }

    /// The wire form, as kept in the member list.
    pub fn encode(&self) -> [u8; MAKER_PROOF_LEN] {
        let mut out = [0u8; MAKER_PROOF_LEN];
        out[..32].copy_from_slice(&self.device.0);
        out[32..].copy_from_slice(&self.salt);
        out
    }

    /// Parses the wire form (any 48 bytes are a proof; [`MakerProof::names_maker_of`]
    /// says whether it proves anything).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; MAKER_PROOF_LEN] = bytes.try_into().ok()?;
        let (device, salt) = bytes.split_at(32);
        Some(Self {
            device: DeviceId(device.try_into().ok()?),
            salt: salt.try_into().ok()?,
        })
    }

    /// The device `bytes` prove made `workspace`, if they do.
    pub fn names_maker_of(bytes: &[u8], workspace: WorkspaceId) -> Option<DeviceId> {
        let proof = Self::decode(bytes)?;
        (proof.workspace_id() == workspace).then_some(proof.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceKey;

    #[test]
    fn a_proof_names_its_maker_and_no_other_device() {
        let maker = DeviceKey::from_bytes(&[1; 32]).device_id();
        let other = DeviceKey::from_bytes(&[2; 32]).device_id();
        let proof = MakerProof::generate(maker).unwrap();
        let ws = proof.workspace_id();
        let bytes = proof.encode();
        assert_eq!(MakerProof::decode(&bytes), Some(proof));
        assert_eq!(MakerProof::names_maker_of(&bytes, ws), Some(maker));
        // Another device with the same salt, or the same device for another workspace.
        let forged = MakerProof {
            device: other,
            salt: proof.salt,
        };
        assert_eq!(MakerProof::names_maker_of(&forged.encode(), ws), None);
        let again = MakerProof::generate(maker).unwrap();
        assert_ne!(
            again.workspace_id(),
            ws,
            "a second workspace gets its own id"
        );
        assert_eq!(MakerProof::names_maker_of(&again.encode(), ws), None);
        // Every bit matters; lengths other than 48 are no proof.
        for i in 0..MAKER_PROOF_LEN {
            let mut b = bytes;
            b[i] ^= 1;
            assert_eq!(MakerProof::names_maker_of(&b, ws), None, "byte {i}");
        }
        assert_eq!(MakerProof::names_maker_of(&bytes[..47], ws), None);
        assert_eq!(
            MakerProof::names_maker_of(&[bytes.as_slice(), &[0]].concat(), ws),
            None
        );
    }
}
