//! Sealed and signed envelopes: the only payload peers exchange through the relay.
//!
//! Wire layout of version 1 (all integers big-endian):
//!
//! ```text
//! offset  size  field
//!      0     1  version (1)
//!      1     1  message type (1 engine, 2 admission, 3 lobby)
//!      2    32  room id
//!     34    32  sender device id (ed25519 public key)
//!     66    32  stream: all zero = broadcast, else the recipient's device id
//!     98     8  sequence number, per (sender, stream)
//!    106    24  nonce (OS randomness)
//!    130     P  XChaCha20-Poly1305 ciphertext of the padded plaintext, then its 16-byte tag
//!  end-64   64  ed25519 signature over SIGNATURE_DOMAIN || bytes 0 .. end-64
//! ```
//!
//! Bytes 0..106 are the AEAD's associated data, so the ciphertext is bound to version,
//! type, room, sender, stream and sequence number even before the signature is checked.
//! The padded plaintext is a 4-byte true length, the plaintext, then zeros up to a size
//! bucket (see [`bucket_len`]), so the relay learns a size class, not a size.

use std::fmt;

use chacha20poly1305::{AeadInOut, XNonce};
use cue_proto::RoomId;
use serde::{Deserialize, Serialize};

use crate::admission::Admission;
use crate::keys::{DeviceId, DeviceKey, RandomnessError, WorkspaceKeys, os_random};
use crate::replay::{Gap, ReplayGuard};

/// The envelope format this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;
/// Prefix of every signed message, so an envelope signature can never be replayed as a
/// signature of anything else the device key signs (admissions have their own tag).
pub const SIGNATURE_DOMAIN: &[u8] = b"cue/v1/envelope\0";

const AAD_LEN: usize = 1 + 1 + 32 + 32 + 32 + 8;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const SIG_LEN: usize = 64;
const HEADER_LEN: usize = AAD_LEN + NONCE_LEN;
const LEN_PREFIX: usize = 4;

/// Bytes an envelope adds around its padded plaintext: header, nonce, tag, signature.
pub const ENVELOPE_OVERHEAD: usize = HEADER_LEN + TAG_LEN + SIG_LEN;
/// Smallest padding bucket: every envelope carries at least this many plaintext bytes.
pub const MIN_BUCKET: usize = 256;
/// Below this size buckets are powers of two; above it, multiples of it.
pub const BUCKET_STEP: usize = 64 * 1024;
/// Largest plaintext [`Sealer::seal`] accepts and [`open`] looks at. Relay messages are
/// limited far below (1 MiB by default); this bound only caps what a decoder will
/// allocate. Use [`max_plaintext_for`] with the relay's announced limit to split messages.
pub const MAX_PLAINTEXT_LEN: usize = 16 * 1024 * 1024;
const MAX_PADDED_LEN: usize = MAX_PLAINTEXT_LEN + LEN_PREFIX;
/// Largest envelope accepted by [`open`].
pub const MAX_ENVELOPE_LEN: usize = MAX_PADDED_LEN + ENVELOPE_OVERHEAD;
/// Size of the smallest possible envelope.
pub const MIN_ENVELOPE_LEN: usize = MIN_BUCKET + LEN_PREFIX + ENVELOPE_OVERHEAD;

/// What an envelope carries, as the engine sees it. Unknown values are rejected, so new
/// types need a new version or a peer that knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum MessageType {
    /// A message of the sync engine (summaries, changes, documents).
    Engine = 1,
    /// A joining device's [`Admission`]; accepted from a non-member.
    Admission = 2,
    /// A [`crate::LobbyMessage`], in a workspace's lobby room; accepted from a
    /// non-member (a joining device asks in with one). The lobby's key is held by every
    /// invite holder and by removed devices, so the receiver judges each lobby message
    /// by its sender ([`Opened::sender`]) and content, never by its having opened.
    Lobby = 3,
}

impl TryFrom<u8> for MessageType {
    type Error = OpenError;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(Self::Engine),
            2 => Ok(Self::Admission),
            3 => Ok(Self::Lobby),
            other => Err(OpenError::UnknownMessageType(other)),
        }
    }
}

/// Which sequence-number stream an envelope belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stream {
    /// To every peer in the room.
    Broadcast,
    /// To one device.
    Direct(DeviceId),
}

impl Stream {
    fn to_wire(self) -> [u8; 32] {
        match self {
            Stream::Broadcast => [0; 32],
            Stream::Direct(id) => id.0,
        }
    }

    fn from_wire(bytes: [u8; 32]) -> Self {
        // The all-zero key is a small-order point, never a device's key (`verify_strict`
        // refuses it), so it is free to mean "broadcast".
        if bytes == [0; 32] {
            Stream::Broadcast
        } else {
            Stream::Direct(DeviceId(bytes))
        }
    }
}

/// Why an envelope was rejected. Every variant means "drop and count"; none is a reason
/// to stop processing other messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than the smallest valid envelope.
    #[error("envelope of {len} bytes is shorter than the minimum of {MIN_ENVELOPE_LEN}")]
    Truncated {
        /// The length received.
        len: usize,
    },
    /// Longer than [`MAX_ENVELOPE_LEN`]; not looked at further.
    #[error("envelope of {len} bytes exceeds the limit of {MAX_ENVELOPE_LEN}")]
    TooLarge {
        /// The length received.
        len: usize,
    },
    /// A structural fault the checks before decryption or after it found.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// A version byte this build does not speak.
    #[error("envelope version {0} is not supported (this build speaks {ENVELOPE_VERSION})")]
    UnsupportedVersion(u8),
    /// A message type byte this build does not know.
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),
    /// The signature does not verify (`verify_strict`) against the sender's key.
    #[error("bad signature")]
    BadSignature,
    /// Signed for another room.
    #[error("envelope belongs to another room")]
    WrongRoom,
    /// A direct message addressed to another device.
    #[error("direct message addressed to another device")]
    NotForMe,
    /// The sender is neither a member nor carrying a valid admission of itself.
    #[error("sender {0} is not a member of the workspace")]
    NotMember(DeviceId),
    /// The AEAD tag does not verify: wrong payload key or tampered ciphertext.
    #[error("decryption failed")]
    DecryptFailed,
    /// Already seen, or older than the replay window can tell.
    #[error("replayed or too old: sequence {seq} from {sender} on {stream:?}")]
    Replayed {
        /// Sender of the replayed envelope.
        sender: DeviceId,
        /// Its stream.
        stream: Stream,
        /// Its sequence number.
        seq: u64,
    },
}

impl OpenError {
    /// A stable short name for counters and logs (`status`, metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            OpenError::Truncated { .. } => "truncated",
            OpenError::TooLarge { .. } => "too_large",
            OpenError::Malformed(_) => "malformed",
            OpenError::UnsupportedVersion(_) => "unsupported_version",
            OpenError::UnknownMessageType(_) => "unknown_type",
            OpenError::BadSignature => "bad_signature",
            OpenError::WrongRoom => "wrong_room",
            OpenError::NotForMe => "not_for_me",
            OpenError::NotMember(_) => "not_member",
            OpenError::DecryptFailed => "decrypt_failed",
            OpenError::Replayed { .. } => "replayed",
        }
    }
}

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The plaintext exceeds [`MAX_PLAINTEXT_LEN`]; split it.
    #[error("plaintext of {len} bytes exceeds the envelope limit of {MAX_PLAINTEXT_LEN}")]
    TooLarge {
        /// The plaintext length.
        len: usize,
    },
    /// A direct message to the all-zero id, which on the wire means "broadcast".
    #[error("a direct message needs a recipient device id; all zeros means broadcast")]
    InvalidRecipient,
    /// No nonce could be drawn.
    #[error(transparent)]
    Randomness(#[from] RandomnessError),
    /// The AEAD refused the input (only possible beyond its length limits, far above
    /// ours; kept as an error rather than a panic).
    #[error("encryption failed")]
    Encrypt,
}

/// The bucket a plaintext of `plaintext_len` bytes is padded to: at least 256 B, then the
/// next power of two up to 64 KiB, then the next multiple of 64 KiB. Powers of two hide
/// the size of small messages (most engine messages are a few hundred bytes) at most 2x
/// cost; 64 KiB steps keep the waste of large transfers (whole documents, file chunks)
/// under 64 KiB each. A message that fills a bucket exactly (as split chunks do) wastes
/// nothing.
pub fn bucket_len(plaintext_len: usize) -> usize {
    if plaintext_len <= MIN_BUCKET {
        MIN_BUCKET
    } else if plaintext_len <= BUCKET_STEP {
        plaintext_len.next_power_of_two()
    } else {
        plaintext_len
            .div_ceil(BUCKET_STEP)
            .saturating_mul(BUCKET_STEP)
    }
}

/// The padded plaintext's length: the 4-byte true length plus the bucket.
pub fn padded_len(plaintext_len: usize) -> usize {
    bucket_len(plaintext_len).saturating_add(LEN_PREFIX)
}

fn is_bucket(bucket: usize) -> bool {
    (MIN_BUCKET..=BUCKET_STEP).contains(&bucket) && bucket.is_power_of_two()
        || bucket > BUCKET_STEP && bucket.is_multiple_of(BUCKET_STEP) && bucket <= MAX_PLAINTEXT_LEN
}

/// The exact length of the envelope that sealing `plaintext_len` bytes produces.
pub fn sealed_len(plaintext_len: usize) -> usize {
    padded_len(plaintext_len) + ENVELOPE_OVERHEAD
}

/// The largest plaintext whose envelope fits in `envelope_limit` bytes (e.g. the relay's
/// announced message limit less its frame overhead), or `None` if not even an empty one
/// fits. The daemon splits larger messages by this.
pub fn max_plaintext_for(envelope_limit: usize) -> Option<usize> {
    let limit = envelope_limit
        .checked_sub(ENVELOPE_OVERHEAD + LEN_PREFIX)?
        .min(MAX_PLAINTEXT_LEN);
    if limit < MIN_BUCKET {
        return None;
    }
    Some(if limit >= 2 * BUCKET_STEP {
        limit / BUCKET_STEP * BUCKET_STEP
    } else if limit >= BUCKET_STEP {
        BUCKET_STEP
    } else {
        // Largest power of two not above the limit.
        1usize << (usize::BITS - 1 - limit.leading_zeros())
    })
}

/// Seals envelopes as one device of one workspace.
#[derive(Debug, Clone, Copy)]
pub struct Sealer<'a> {
    /// The workspace's derived keys.
    pub keys: &'a WorkspaceKeys,
    /// The sending device's identity key.
    pub device: &'a DeviceKey,
}

impl<'a> Sealer<'a> {
    /// A sealer for `device` in the workspace of `keys`.
    pub fn new(keys: &'a WorkspaceKeys, device: &'a DeviceKey) -> Self {
        Self { keys, device }
    }

    /// Encrypts, pads and signs `plaintext` with a fresh random nonce. `seq` must come
    /// from a [`crate::SeqAllocator`] of this (device, stream): receivers drop a reused one.
    pub fn seal(
        &self,
        ty: MessageType,
        stream: Stream,
        seq: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        os_random(&mut nonce)?;
        self.seal_with_nonce(ty, stream, seq, nonce, plaintext)
    }

    /// [`Sealer::seal`] with a caller-chosen nonce, for deterministic tests and vectors.
    /// A nonce must never repeat under one workspace key: outside tests use `seal`.
    pub fn seal_with_nonce(
        &self,
        ty: MessageType,
        stream: Stream,
        seq: u64,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if stream == Stream::Direct(DeviceId([0; 32])) {
            return Err(SealError::InvalidRecipient);
        }
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(SealError::TooLarge {
                len: plaintext.len(),
            });
        }
        let padded = padded_len(plaintext.len());
        let true_len = u32::try_from(plaintext.len()).map_err(|_| SealError::TooLarge {
            len: plaintext.len(),
        })?;

        // The signature covers the domain tag and the envelope, so build both in one
        // buffer, encrypt in place and sign it; removing the 16-byte domain tag afterwards is
        // one memmove, cheaper than assembling a second buffer to sign.
        let dom = SIGNATURE_DOMAIN.len();
        let mut buf = Vec::with_capacity(dom + padded + ENVELOPE_OVERHEAD);
        buf.extend_from_slice(SIGNATURE_DOMAIN);
        buf.push(ENVELOPE_VERSION);
        buf.push(ty as u8);
        buf.extend_from_slice(&self.keys.room_id().0);
        buf.extend_from_slice(&self.device.device_id().0);
        buf.extend_from_slice(&stream.to_wire());
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(&true_len.to_be_bytes());
        buf.extend_from_slice(plaintext);
        buf.resize(dom + HEADER_LEN + padded, 0);

        let (head, body) = buf.split_at_mut(dom + HEADER_LEN);
        let aad = &head[dom..dom + AAD_LEN];
        let tag = self
            .keys
            .cipher()
            .encrypt_inout_detached(&XNonce::from(nonce), aad, body.into())
            .map_err(|_| SealError::Encrypt)?;
        buf.extend_from_slice(tag.as_slice());
        let signature = self.device.sign(&buf);
        buf.extend_from_slice(&signature);
        // Drop the domain tag: it is signed, never sent.
        buf.drain(..dom);
        Ok(buf)
    }
}

/// The cleartext header of an envelope, readable without any key. Nothing in it is
/// authenticated until [`open`] has checked the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// The message type.
    pub ty: MessageType,
    /// The room it claims to belong to.
    pub room: RoomId,
    /// The device it claims to come from.
    pub sender: DeviceId,
    /// Broadcast or direct.
    pub stream: Stream,
    /// The sender's sequence number on that stream.
    pub seq: u64,
}

impl EnvelopeHeader {
    /// The cheap structural checks, done before any cryptography: length bounds, version,
    /// message type, and a ciphertext length that is one of the padding buckets.
    pub fn parse(bytes: &[u8]) -> Result<Self, OpenError> {
        let len = bytes.len();
        if len > MAX_ENVELOPE_LEN {
            return Err(OpenError::TooLarge { len });
        }
        // The version is looked at first so a newer peer's short message is reported as
        // a version mismatch rather than as truncation.
        match bytes.first() {
            None => return Err(OpenError::Truncated { len }),
            Some(&ENVELOPE_VERSION) => {}
            Some(&v) => return Err(OpenError::UnsupportedVersion(v)),
        }
        if len < MIN_ENVELOPE_LEN {
            return Err(OpenError::Truncated { len });
        }
        if !is_bucket(len - ENVELOPE_OVERHEAD - LEN_PREFIX) {
            return Err(OpenError::Malformed(
                "ciphertext length is not a padding bucket",
            ));
        }
        let ty = MessageType::try_from(bytes[1])?;
        Ok(Self {
            ty,
            room: RoomId(array32(&bytes[2..34])),
            sender: DeviceId(array32(&bytes[34..66])),
            stream: Stream::from_wire(array32(&bytes[66..98])),
            seq: u64::from_be_bytes(array8(&bytes[98..106])),
        })
    }
}

fn array32(s: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(s);
    a
}

fn array8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}

/// An envelope that passed every check: authentic, for this room and device, from a
/// member (or a valid admission), decrypted and unpadded.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The authenticated sender.
    pub sender: DeviceId,
    /// Broadcast or direct (to this device).
    pub stream: Stream,
    /// The sender's sequence number on that stream.
    pub seq: u64,
    /// The message type.
    pub ty: MessageType,
    /// The plaintext, padding removed.
    pub plaintext: Vec<u8>,
    /// Set by [`open`] when this message skipped ahead in a broadcast stream while both
    /// sides were connected: messages may have been withheld. The message itself is good.
    pub gap: Option<Gap>,
}

impl fmt::Debug for Opened {
    // Plaintext is user content: never dump it into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("sender", &self.sender)
            .field("stream", &self.stream)
            .field("seq", &self.seq)
            .field("ty", &self.ty)
            .field("plaintext_len", &self.plaintext.len())
            .field("gap", &self.gap)
            .finish()
    }
}

/// Opens an envelope addressed to `me` and records it in `guard`, which rejects replays
/// and reports gaps. `is_member` answers from the synced member list. Checks, cheapest
/// first: structure, signature (`verify_strict`), room and recipient, membership (a
/// non-member may send only [`MessageType::Admission`] and [`MessageType::Lobby`]), AEAD,
/// padding, admission, replay.
///
/// An admission is checked to be well-formed and the sender's own; its inner signature
/// is bound to the lobby room, which `keys` does not know: check it with
/// [`Admission::verify`] before recording it. The guard is updated only for a message that passed
/// everything, so forgeries cannot poison it.
pub fn open(
    keys: &WorkspaceKeys,
    me: &DeviceId,
    guard: &mut ReplayGuard,
    bytes: &[u8],
    is_member: impl Fn(&DeviceId) -> bool,
) -> Result<Opened, OpenError> {
    let mut opened = open_without_replay_check(keys, me, bytes, is_member)?;
    opened.gap = guard.accept(opened.sender, opened.stream, opened.seq)?;
    Ok(opened)
}

/// Every check of [`open`] except the replay guard: for tests, tools, and re-reading
/// envelopes already accepted once. A receiver of live traffic must use [`open`].
pub fn open_without_replay_check(
    keys: &WorkspaceKeys,
    me: &DeviceId,
    bytes: &[u8],
    is_member: impl Fn(&DeviceId) -> bool,
) -> Result<Opened, OpenError> {
    let header = EnvelopeHeader::parse(bytes)?;
    let (signed, signature) = bytes.split_at(bytes.len() - SIG_LEN);
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + signed.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(signed);
    if !header.sender.verify(&message, &array64(signature)) {
        return Err(OpenError::BadSignature);
    }
    drop(message);

    if header.room != keys.room_id() {
        return Err(OpenError::WrongRoom);
    }
    if let Stream::Direct(to) = header.stream
        && to != *me
    {
        return Err(OpenError::NotForMe);
    }
    let member = is_member(&header.sender);
    if !member && !matches!(header.ty, MessageType::Admission | MessageType::Lobby) {
        return Err(OpenError::NotMember(header.sender));
    }

    let (aad, rest) = signed.split_at(AAD_LEN);
    let (nonce, rest) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(OpenError::Truncated { len: bytes.len() })?;
    let (ciphertext, tag) = rest
        .split_last_chunk::<TAG_LEN>()
        .ok_or(OpenError::Truncated { len: bytes.len() })?;
    let mut padded = ciphertext.to_vec();
    keys.cipher()
        .decrypt_inout_detached(
            &XNonce::from(*nonce),
            aad,
            padded.as_mut_slice().into(),
            tag.into(),
        )
        .map_err(|_| OpenError::DecryptFailed)?;
    let plaintext = unpad(padded)?;

    if header.ty == MessageType::Admission {
        // An admission must be the sender's own, or a member could enrol a stranger and a
        // stranger could replay someone else's admission as its own. Its signature is
        // bound to the lobby room, unknown here: the caller verifies it.
        let valid = Admission::decode(&plaintext)
            .ok()
            .filter(|a| a.device == header.sender);
        if valid.is_none() {
            return Err(if member {
                OpenError::Malformed("admission is invalid or not the sender's own")
            } else {
                OpenError::NotMember(header.sender)
            });
        }
    }

    Ok(Opened {
        sender: header.sender,
        stream: header.stream,
        seq: header.seq,
        ty: header.ty,
        plaintext,
        gap: None,
    })
}

fn array64(s: &[u8]) -> [u8; 64] {
    let mut a = [0u8; 64];
    a.copy_from_slice(s);
    a
}

fn unpad(mut padded: Vec<u8>) -> Result<Vec<u8>, OpenError> {
    let (len_bytes, rest) =
        padded
            .split_first_chunk::<LEN_PREFIX>()
            .ok_or(OpenError::Malformed(
                "padded plaintext shorter than its length",
            ))?;
    let len = u32::from_be_bytes(*len_bytes) as usize;
    if len > rest.len() {
        return Err(OpenError::Malformed(
            "plaintext length exceeds the padding bucket",
        ));
    }
    // Padding beyond the length must be zero and must not fit a smaller bucket: one
    // plaintext has exactly one encoding, so nothing about it is malleable even by a
    // member holding the payload key.
    if rest[len..].iter().any(|&b| b != 0) || padded_len(len) != padded.len() {
        return Err(OpenError::Malformed("non-canonical padding"));
    }
    padded.truncate(LEN_PREFIX + len);
    padded.drain(..LEN_PREFIX);
    Ok(padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(padded_len(0), 260);
        assert_eq!(padded_len(256), 260);
        assert_eq!(padded_len(257), 516);
        assert_eq!(padded_len(300), 516);
        assert_eq!(padded_len(65536), 65540);
        assert_eq!(padded_len(65537), 131076);
        assert_eq!(bucket_len(65536 * 2 + 1), 65536 * 3);
        for n in [
            0,
            1,
            256,
            257,
            1000,
            65536,
            65537,
            200_000,
            MAX_PLAINTEXT_LEN,
        ] {
            assert!(is_bucket(bucket_len(n)), "{n}");
        }
        assert!(!is_bucket(255));
        assert!(!is_bucket(768));
        assert!(!is_bucket(MAX_PLAINTEXT_LEN + BUCKET_STEP));
    }

    #[test]
    fn max_plaintext_fits_the_limit() {
        for limit in [
            0,
            100,
            465,
            466,
            1000,
            65_746,
            1 << 20,
            3_000_000,
            usize::MAX,
        ] {
            match max_plaintext_for(limit) {
                None => assert!(limit < MIN_ENVELOPE_LEN),
                Some(n) => {
                    assert!(sealed_len(n) <= limit, "{limit}");
                    if n < MAX_PLAINTEXT_LEN {
                        assert!(sealed_len(n + 1) > limit, "{limit}");
                    }
                }
            }
        }
    }

    #[test]
    fn unpad_rejects_non_canonical() {
        let mut p = vec![0u8; 516];
        p[3] = 10; // 10 bytes in the 512 bucket: should have been 256
        assert!(unpad(p).is_err());
        let mut p = vec![0u8; 260];
        p[3] = 1;
        p[100] = 1; // non-zero padding
        assert!(unpad(p).is_err());
        let mut p = vec![0u8; 260];
        p[2] = 1;
        p[3] = 1; // length 257 > 256
        assert!(unpad(p).is_err());
        let mut p = vec![0u8; 260];
        p[3] = 2;
        p[4] = 9;
        p[5] = 8;
        assert_eq!(unpad(p).unwrap(), vec![9, 8]);
    }
}
