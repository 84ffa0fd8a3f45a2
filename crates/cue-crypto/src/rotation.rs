//! Rotation records: the signed announcement that the workspace secret moved to a new
//! generation, and which devices were removed with it.
//!
//! Generation 0 is the secret made at `init`; each rotation makes a fresh random secret,
//! generation n+1, handed to each remaining device sealed to its key (see
//! [`crate::LobbyMessage::Secret`]). The record itself holds no secret: it is kept in the
//! synced index so that every device learns who rotated, when, and who was removed.
//!
//! Two devices may rotate concurrently to the same generation; the record with the
//! smaller [`RotationRecord::hash`] wins, and the next rotation names the winner as its
//! `parent`, so the generations form one chain.
//!
//! Encoding (version 1, integers big-endian, one encoding per record):
//!
//! ```text
//! version (1) | workspace id (16) | generation (u32, 4) | parent (32) | rotated_by (32)
//! | at_ms (i64, 8) | removed count (u16, 2) | removed ids (32 each, sorted, distinct)
//! | signature (64)
//! ```
//!
//! The signature is by `rotated_by`'s device key (checked with `verify_strict`) over
//! [`ROTATION_DOMAIN`] followed by every byte before the signature.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::keys::{DeviceId, DeviceKey, WorkspaceId};

/// Version byte of the rotation record encoding.
pub const ROTATION_VERSION: u8 = 1;
/// Domain tag of the rotation signature (distinct from envelopes' and admissions').
pub const ROTATION_DOMAIN: &[u8] = b"cue/v1/rotation\0";
/// Most devices one record removes; bounds what a decoder allocates.
pub const MAX_REMOVED: usize = 1024;
const UNSIGNED_FIXED: usize = 1 + 16 + 4 + 32 + 32 + 8 + 2;
const SIG_LEN: usize = 64;
/// Shortest encoded record (no device removed).
pub const MIN_ROTATION_LEN: usize = UNSIGNED_FIXED + SIG_LEN;
/// Longest encoded record ([`MAX_REMOVED`] devices removed).
pub const MAX_ROTATION_LEN: usize = MIN_ROTATION_LEN + MAX_REMOVED * 32;

/// Why a rotation record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// Shorter than its fields say.
    #[error("rotation record truncated ({len} bytes)")]
    Truncated {
        /// The length received.
        len: usize,
    },
    /// Bytes after the signature.
    #[error("rotation record has {0} trailing bytes")]
    TrailingBytes(usize),
    /// A version this build does not read.
    #[error("rotation record version {0} is not supported: upgrade cue")]
    UnsupportedVersion(u8),
    /// Generation 0 is the secret made at `init`; no record announces it.
    #[error("rotation record for generation 0 (which no rotation makes)")]
    GenerationZero,
    /// More removed devices than [`MAX_REMOVED`].
    #[error("rotation record removes {0} devices; at most {MAX_REMOVED} are allowed")]
    TooManyRemoved(usize),
    /// The removed list is not sorted or holds a device twice.
    #[error("rotation record's removed devices are not sorted and distinct")]
    UnsortedRemoved,
    /// The signature does not verify for `rotated_by`.
    #[error("rotation record signature does not verify")]
    BadSignature,
}

/// The signed announcement of generation `generation` of a workspace's secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RotationRecord {
    /// The workspace (its id never changes across generations).
    pub workspace: WorkspaceId,
    /// The generation this record starts, at least 1.
    pub generation: u32,
    /// The hash of the winning record of the previous generation; zeros when the
    /// previous generation is 0.
    pub parent: [u8; 32],
    /// The device that rotated and signed.
    pub rotated_by: DeviceId,
    /// When, in milliseconds since the Unix epoch, by the rotator's clock (informative).
    pub at_ms: i64,
    /// The devices removed by this rotation, sorted and distinct: they do not get the new
    /// secret.
    pub removed: Vec<DeviceId>,
    /// `rotated_by`'s signature over [`ROTATION_DOMAIN`] and every field above.
    pub signature: [u8; 64],
}

impl fmt::Debug for RotationRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotationRecord")
            .field("workspace", &self.workspace)
            .field("generation", &self.generation)
            .field("parent", &hex::encode(&self.parent[..4]))
            .field("rotated_by", &self.rotated_by)
            .field("at_ms", &self.at_ms)
            .field("removed", &self.removed)
            .finish_non_exhaustive()
    }
}

impl RotationRecord {
    /// A record of `generation` signed by `rotator`. `removed` is sorted and deduplicated
    /// here. A record for generation 0 or removing more than [`MAX_REMOVED`] devices is
    /// made but never verifies nor decodes: callers check those bounds first.
    pub fn create(
        workspace: WorkspaceId,
        generation: u32,
        parent: [u8; 32],
        rotator: &DeviceKey,
        at_ms: i64,
        removed: &[DeviceId],
    ) -> Self {
        let mut removed = removed.to_vec();
        removed.sort_unstable();
        removed.dedup();
        let mut record = Self {
            workspace,
            generation,
            parent,
            rotated_by: rotator.device_id(),
            at_ms,
            removed,
            signature: [0; 64],
        };
        let mut message = ROTATION_DOMAIN.to_vec();
        record.encode_unsigned(&mut message);
        record.signature = rotator.sign(&message);
        record
    }

    /// The length of [`RotationRecord::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        MIN_ROTATION_LEN + self.removed.len() * 32
    }

    fn encode_unsigned(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(ROTATION_VERSION);
        out.extend_from_slice(&self.workspace.0);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.parent);
        out.extend_from_slice(&self.rotated_by.0);
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        // Saturates rather than wraps: a list this long fails `verify` and `decode`
        // (TooManyRemoved) instead of silently encoding a different count.
        let count = u16::try_from(self.removed.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for id in &self.removed {
            out.extend_from_slice(&id.0);
        }
    }

    /// The wire form, as stored in the index and sent in [`crate::LobbyMessage::Records`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_unsigned(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses the wire form, checking structure (version, generation, bounds, order),
    /// not the signature: call [`RotationRecord::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, RotationError> {
        let len = bytes.len();
        let truncated = RotationError::Truncated { len };
        let (&version, rest) = bytes.split_first().ok_or(truncated.clone())?;
        if version != ROTATION_VERSION {
            return Err(RotationError::UnsupportedVersion(version));
        }
        let (workspace, rest) = rest.split_first_chunk::<16>().ok_or(truncated.clone())?;
        let (generation, rest) = rest.split_first_chunk::<4>().ok_or(truncated.clone())?;
        let (parent, rest) = rest.split_first_chunk::<32>().ok_or(truncated.clone())?;
        let (rotated_by, rest) = rest.split_first_chunk::<32>().ok_or(truncated.clone())?;
        let (at_ms, rest) = rest.split_first_chunk::<8>().ok_or(truncated.clone())?;
        let (count, rest) = rest.split_first_chunk::<2>().ok_or(truncated.clone())?;
        let generation = u32::from_be_bytes(*generation);
        if generation == 0 {
            return Err(RotationError::GenerationZero);
        }
        let count = usize::from(u16::from_be_bytes(*count));
        if count > MAX_REMOVED {
            return Err(RotationError::TooManyRemoved(count));
        }
        let ids_len = count * 32;
        if rest.len() < ids_len + SIG_LEN {
            return Err(truncated);
        }
        let (ids, rest) = rest.split_at(ids_len);
        let (signature, rest) = rest.split_first_chunk::<64>().ok_or(truncated)?;
        if !rest.is_empty() {
            return Err(RotationError::TrailingBytes(rest.len()));
        }
        let removed: Vec<DeviceId> = ids
            .chunks_exact(32)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                DeviceId(id)
            })
            .collect();
        if !strictly_sorted(&removed) {
            return Err(RotationError::UnsortedRemoved);
        }
        Ok(Self {
            workspace: WorkspaceId(*workspace),
            generation,
            parent: *parent,
            rotated_by: DeviceId(*rotated_by),
            at_ms: i64::from_be_bytes(*at_ms),
            removed,
            signature: *signature,
        })
    }

    /// Checks the bounds a decoded record has (generation, removed list) and the
    /// signature by `rotated_by` (`verify_strict`) over the domain tag and every field.
    pub fn verify(&self) -> Result<(), RotationError> {
        if self.generation == 0 {
            return Err(RotationError::GenerationZero);
        }
        if self.removed.len() > MAX_REMOVED {
            return Err(RotationError::TooManyRemoved(self.removed.len()));
        }
        if !strictly_sorted(&self.removed) {
            return Err(RotationError::UnsortedRemoved);
        }
        let mut message = ROTATION_DOMAIN.to_vec();
        self.encode_unsigned(&mut message);
        if self.rotated_by.verify(&message, &self.signature) {
            Ok(())
        } else {
            Err(RotationError::BadSignature)
        }
    }

    /// SHA-256 of [`RotationRecord::encode`]: the tie-break between concurrent records of
    /// one generation (the smaller wins) and the `parent` of the next generation's.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

fn strictly_sorted(ids: &[DeviceId]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(removed: &[DeviceId]) -> RotationRecord {
        RotationRecord::create(
            WorkspaceId([5; 16]),
            3,
            [6; 32],
            &DeviceKey::from_bytes(&[1; 32]),
            1_700_000_000_000,
            removed,
        )
    }

    fn ids(seeds: &[u8]) -> Vec<DeviceId> {
        seeds
            .iter()
            .map(|&s| DeviceKey::from_bytes(&[s; 32]).device_id())
            .collect()
    }

    #[test]
    fn round_trip_sorted_and_hashed() {
        let removed = ids(&[9, 8, 7, 9]);
        let r = record(&removed);
        assert_eq!(r.removed.len(), 3);
        assert!(strictly_sorted(&r.removed));
        r.verify().unwrap();
        let bytes = r.encode();
        assert_eq!(bytes[0], ROTATION_VERSION);
        assert_eq!(bytes.len(), r.encoded_len());
        let back = RotationRecord::decode(&bytes).unwrap();
        assert_eq!(back, r);
        back.verify().unwrap();
        assert_eq!(back.hash(), r.hash());
        assert_ne!(record(&[]).hash(), r.hash());
        let empty = record(&[]);
        assert_eq!(empty.encode().len(), MIN_ROTATION_LEN);
        assert_eq!(RotationRecord::decode(&empty.encode()).unwrap(), empty);
        // Debug shows no signature bytes.
        assert!(!format!("{r:?}").contains(&hex::encode(&r.signature[..4])));
    }

    #[test]
    fn tampering_any_field_breaks_the_signature() {
        let r = record(&ids(&[9, 8]));
        let mut changes: Vec<RotationRecord> = Vec::new();
        let mut t = r.clone();
        t.workspace.0[0] ^= 1;
        changes.push(t);
        let mut t = r.clone();
        t.generation += 1;
        changes.push(t);
        let mut t = r.clone();
        t.parent[31] ^= 1;
        changes.push(t);
        let mut t = r.clone();
        t.rotated_by = DeviceKey::from_bytes(&[2; 32]).device_id();
        changes.push(t);
        let mut t = r.clone();
        t.at_ms += 1;
        changes.push(t);
        let mut t = r.clone();
        t.removed.pop();
        changes.push(t);
        let mut t = r.clone();
        t.removed = ids(&[9, 8, 7]);
        t.removed.sort();
        changes.push(t);
        let mut t = r.clone();
        t.signature[0] ^= 1;
        changes.push(t);
        for t in changes {
            assert_eq!(t.verify(), Err(RotationError::BadSignature), "{t:?}");
        }
        // Every byte of the encoding matters.
        let bytes = r.encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let ok = RotationRecord::decode(&b).is_ok_and(|d| d.verify().is_ok());
            assert!(!ok, "byte {i}");
        }
    }

    #[test]
    fn structural_errors_are_typed() {
        let r = record(&ids(&[9, 8]));
        let bytes = r.encode();
        for n in 0..bytes.len() {
            assert_eq!(
                RotationRecord::decode(&bytes[..n]),
                Err(RotationError::Truncated { len: n }),
                "{n}"
            );
        }
        let mut long = bytes.clone();
        long.extend_from_slice(&[0; 3]);
        assert_eq!(
            RotationRecord::decode(&long),
            Err(RotationError::TrailingBytes(3))
        );
        let mut v = bytes.clone();
        v[0] = 2;
        assert_eq!(
            RotationRecord::decode(&v),
            Err(RotationError::UnsupportedVersion(2))
        );
        let mut zero = bytes.clone();
        zero[17..21].copy_from_slice(&[0; 4]);
        assert_eq!(
            RotationRecord::decode(&zero),
            Err(RotationError::GenerationZero)
        );
        let count_at = UNSIGNED_FIXED - 2;
        let mut many = bytes.clone();
        many[count_at..count_at + 2].copy_from_slice(&1025u16.to_be_bytes());
        assert_eq!(
            RotationRecord::decode(&many),
            Err(RotationError::TooManyRemoved(1025))
        );
        // The two ids swapped: same set, second encoding, refused.
        let mut swapped = bytes.clone();
        let a = UNSIGNED_FIXED;
        let (first, second) = swapped[a..a + 64].split_at_mut(32);
        first.swap_with_slice(second);
        assert_eq!(
            RotationRecord::decode(&swapped),
            Err(RotationError::UnsortedRemoved)
        );
        let mut dup = bytes.clone();
        dup.copy_within(a..a + 32, a + 32);
        assert_eq!(
            RotationRecord::decode(&dup),
            Err(RotationError::UnsortedRemoved)
        );
        let mut gen0 = r.clone();
        gen0.generation = 0;
        assert_eq!(gen0.verify(), Err(RotationError::GenerationZero));
        // The largest record decodes.
        let max: Vec<DeviceId> = (0..MAX_REMOVED as u32)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&i.to_be_bytes());
                DeviceId(b)
            })
            .collect();
        let big = record(&max);
        assert_eq!(big.encode().len(), MAX_ROTATION_LEN);
        assert_eq!(RotationRecord::decode(&big.encode()).unwrap(), big);
        big.verify().unwrap();
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = RotationRecord::decode(&bytes);
        }

        #[test]
        fn decode_of_a_mutated_record_never_panics(
            i in 0usize..MIN_ROTATION_LEN + 64,
            x in 1u8..,
            cut in 0usize..MIN_ROTATION_LEN + 64,
        ) {
            let mut bytes = record(&ids(&[9, 8])).encode();
            bytes[i] ^= x;
            bytes.truncate(cut);
            if let Ok(r) = RotationRecord::decode(&bytes) {
                prop_assert!(r.verify().is_err());
            }
        }
    }
}
