//! The workspace secret, the keys derived from it, and each device's identity key.
//!
//! One 32-byte secret (shared by invite) is the root of everything a workspace holds in
//! common. HKDF-SHA256 turns it into independent keys under distinct labels, so learning
//! one derived value (the room id is public to the relay, the workspace id is shown to
//! users) reveals nothing about the others.

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use cue_proto::RoomId;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// HKDF salt: fixes the derivation to this protocol so the same secret used elsewhere
/// (it never should be) would still give unrelated keys.
const HKDF_SALT: &[u8] = b"cue workspace secret v1";
const LABEL_PAYLOAD: &[u8] = b"cue/v1/payload-key";
const LABEL_ROOM: &[u8] = b"cue/v1/room-signing-key";
const LABEL_WORKSPACE_ID: &[u8] = b"cue/v1/workspace-id";

/// The OS random source failed; nothing secret can be made without it.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomnessError(String);

/// Fills `buf` from the operating system's randomness (never a userspace PRNG: nonces
/// and keys must not repeat across process restarts or forks).
pub(crate) fn os_random(buf: &mut [u8]) -> Result<(), RandomnessError> {
    getrandom::fill(buf).map_err(|e| RandomnessError(e.to_string()))
}

/// The 32-byte root secret of a workspace. Whoever holds it is a member-to-be: it is what
/// an invite carries. Zeroized on drop; `Debug` prints nothing of it.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct WorkspaceSecret([u8; 32]);

impl WorkspaceSecret {
    /// A fresh secret from the OS's randomness.
    pub fn generate() -> Result<Self, RandomnessError> {
        let mut bytes = [0u8; 32];
        os_random(&mut bytes)?;
        let secret = Self(bytes);
        bytes.zeroize();
        Ok(secret)
    }

    /// Rebuilds a secret from its stored bytes (the daemon keeps them in a 0600 file).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes, for storing. Keep the borrow short and never log it.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for WorkspaceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkspaceSecret(<redacted>)")
    }
}

/// A short, stable, public name of a workspace: 16 bytes derived from the secret, shown
/// as 32 lowercase hex digits. Shown to users and carried in invites as a check; it is
/// *not* the room id, so the relay cannot link what users see to the room it serves.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkspaceId(pub [u8; 16]);

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkspaceId({self})")
    }
}

/// A string that is not a hex id of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} lowercase or uppercase hex digits")]
pub struct ParseIdError {
    expected: usize,
}

pub(crate) fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], ParseIdError> {
    let err = ParseIdError { expected: N * 2 };
    if s.len() != N * 2 {
        return Err(err);
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| err)?;
    Ok(out)
}

impl FromStr for WorkspaceId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s).map(Self)
    }
}

/// Everything a member derives from the workspace secret. Zeroized on drop.
#[derive(Clone)]
pub struct WorkspaceKeys {
    payload_key: Zeroizing<[u8; 32]>,
    room_key: SigningKey,
    room_id: RoomId,
    workspace_id: WorkspaceId,
}

impl WorkspaceKeys {
    /// Derives the payload key, the room signing key and the workspace id, each under its
    /// own HKDF label.
    pub fn derive(secret: &WorkspaceSecret) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), secret.as_bytes());
        let mut payload_key = Zeroizing::new([0u8; 32]);
        let mut room_seed = Zeroizing::new([0u8; 32]);
        let mut workspace_id = [0u8; 16];
        // `expand` fails only when asked for more than 255 hash lengths; 32 and 16 bytes
        // are far below, so these cannot fail and a failure would be a bug in hkdf.
        for (label, out) in [
            (LABEL_PAYLOAD, payload_key.as_mut_slice()),
            (LABEL_ROOM, room_seed.as_mut_slice()),
            (LABEL_WORKSPACE_ID, workspace_id.as_mut_slice()),
        ] {
            hk.expand(label, out)
                .expect("HKDF-SHA256 expands up to 8160 bytes");
        }
        let room_key = SigningKey::from_bytes(&room_seed);
        let room_id = RoomId(room_key.verifying_key().to_bytes());
        Self {
            payload_key,
            room_key,
            room_id,
            workspace_id: WorkspaceId(workspace_id),
        }
    }

    /// The room id: the public half of the room key. The relay sees it; it reveals
    /// nothing about the secret.
    pub fn room_id(&self) -> RoomId {
        self.room_id
    }

    /// The workspace id shown to users (`status --json`'s `workspace_id`).
    pub fn workspace_id(&self) -> WorkspaceId {
        self.workspace_id
    }

    /// Answers the relay's join challenge: a signature by the room key over
    /// [`cue_proto::join_proof_message`], which the relay checks against the room id.
    pub fn sign_join(&self, nonce: &[u8; 32]) -> [u8; 64] {
        let message = cue_proto::join_proof_message(&self.room_id, nonce);
        self.room_key.sign(message.as_ref()).to_bytes()
    }

    /// A cipher instance for the payload key. Built per use (it is a key copy, cheap),
    /// and it zeroizes its copy on drop.
    pub(crate) fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.payload_key).into())
    }
}

impl fmt::Debug for WorkspaceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkspaceKeys")
            .field("room_id", &self.room_id)
            .field("workspace_id", &self.workspace_id)
            .finish_non_exhaustive()
    }
}

/// One device's identity: an ed25519 signing key. It signs every envelope the device
/// sends and its admission. Zeroized on drop; `Debug` shows only the public id.
#[derive(Clone)]
pub struct DeviceKey(SigningKey);

impl DeviceKey {
    /// A fresh device key from the OS's randomness.
    pub fn generate() -> Result<Self, RandomnessError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        os_random(seed.as_mut_slice())?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// Rebuilds a device key from its stored 32-byte seed.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for storing in a 0600 file. Zeroized when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// This device's public id.
    pub fn device_id(&self) -> DeviceId {
        DeviceId(self.0.verifying_key().to_bytes())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The device key's X25519 secret: the ed25519 secret scalar's bytes (the first half
    /// of SHA-512 of the seed), which the X25519 multiplication clamps exactly as ed25519
    /// does. See [`crate::seal_to`].
    pub(crate) fn x25519_scalar(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_scalar_bytes())
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey({}, <secret redacted>)", self.device_id())
    }
}

/// A device's public id: its ed25519 public key. Displays as 64 lowercase hex digits;
/// serialises as that string in human-readable formats (JSON, TOML) and as 32 raw bytes
/// in binary ones (postcard).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub [u8; 32]);

impl DeviceId {
    /// The first 6 hex digits, as used in conflict-copy names.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..3])
    }

    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies `signature` over `message` by this device with `verify_strict`, which
    /// also refuses small-order keys and non-canonical signatures, so a signature cannot
    /// be malleated into a second valid one.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.short())
    }
}

impl FromStr for DeviceId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s).map(Self)
    }
}

/// Serde for a fixed-size id newtype: its `Display`/`FromStr` text in human-readable
/// formats, its raw bytes in binary ones.
macro_rules! hex_or_bytes_serde {
    ($ty:ident, $n:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(self)
                } else {
                    serde::Serialize::serialize(&self.0, serializer)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(
                        deserializer,
                    )?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; $n] as serde::Deserialize>::deserialize(deserializer).map($ty)
                }
            }
        }
    };
}

pub(crate) use hex_or_bytes_serde;

hex_or_bytes_serde!(DeviceId, 32);
hex_or_bytes_serde!(WorkspaceId, 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_stable_and_labels_are_independent() {
        let secret = WorkspaceSecret::from_bytes([7; 32]);
        let a = WorkspaceKeys::derive(&secret);
        let b = WorkspaceKeys::derive(&secret);
        assert_eq!(a.room_id(), b.room_id());
        assert_eq!(a.workspace_id(), b.workspace_id());
        assert_eq!(*a.payload_key, *b.payload_key);
        // No derived value equals another one's prefix.
        assert_ne!(&a.payload_key[..16], &a.workspace_id().0[..]);
        assert_ne!(&a.room_id().0[..], &a.payload_key[..]);
        let other = WorkspaceKeys::derive(&WorkspaceSecret::from_bytes([8; 32]));
        assert_ne!(a.room_id(), other.room_id());
        assert_eq!(a.workspace_id().to_string().len(), 32);
    }

    #[test]
    fn join_proof_verifies_against_room_id() {
        let keys = WorkspaceKeys::derive(&WorkspaceSecret::generate().unwrap());
        let nonce = [3u8; 32];
        let sig = keys.sign_join(&nonce);
        let vk = VerifyingKey::from_bytes(&keys.room_id().0).unwrap();
        let msg = cue_proto::join_proof_message(&keys.room_id(), &nonce);
        vk.verify_strict(msg.as_ref(), &ed25519_dalek::Signature::from_bytes(&sig))
            .unwrap();
    }

    #[test]
    fn ids_print_and_parse() {
        let key = DeviceKey::from_bytes(&[1; 32]);
        let id = key.device_id();
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, s.to_lowercase());
        assert_eq!(id.short(), s[..6]);
        assert_eq!(s.parse::<DeviceId>().unwrap(), id);
        assert!("abc".parse::<DeviceId>().is_err());
        assert!("zz".repeat(32).parse::<DeviceId>().is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<DeviceId>(&json).unwrap(), id);
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(postcard::from_bytes::<DeviceId>(&bytes).unwrap(), id);
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let secret = WorkspaceSecret::from_bytes([0xAB; 32]);
        let dbg = format!("{secret:?}");
        assert!(!dbg.contains("ab") && !dbg.contains("171"), "{dbg}");
        let keys = WorkspaceKeys::derive(&secret);
        let dbg = format!("{keys:?}");
        assert!(!dbg.contains(&hex::encode(*keys.payload_key)), "{dbg}");
        let device = DeviceKey::from_bytes(&[0xCD; 32]);
        let dbg = format!("{device:?}");
        assert!(!dbg.contains("cdcd") && !dbg.contains("205"), "{dbg}");
    }

    #[test]
    fn device_key_round_trips() {
        let key = DeviceKey::generate().unwrap();
        let again = DeviceKey::from_bytes(&key.to_bytes());
        assert_eq!(key.device_id(), again.device_id());
    }
}
