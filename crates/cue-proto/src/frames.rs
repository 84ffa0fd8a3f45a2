//! The frames, one enum per direction.
//!
//! postcard is not self-describing: a field's meaning is its position and a variant's is
//! its index. So variants are only ever added at the end of an enum, fields are never
//! skipped or reordered, and anything else is a new [`crate::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

use crate::PeerId;

/// What a peer sends to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// The relay's shared secret, sent only after [`RelayFrame::AuthRequired`].
    Auth {
        /// The token configured on the relay (compared in constant time).
        token: String,
    },
    /// The answer to [`RelayFrame::Challenge`]: an ed25519 signature by the room key over
    /// [`crate::join_proof_message`].
    Proof {
        /// The 64-byte signature.
        #[serde(with = "fixed_bytes")]
        signature: [u8; 64],
    },
    /// A message for every other peer in the room.
    Broadcast {
        /// The sender's own id for this message, echoed in a [`RelayFrame::Refused`] so it
        /// can be sent again.
        id: u64,
        /// Opaque to the relay (an encrypted envelope).
        #[serde(with = "byte_vec")]
        payload: Vec<u8>,
    },
    /// A message for one peer of the room.
    Direct {
        /// The sender's own id for this message, as in `Broadcast`.
        id: u64,
        /// The recipient, as named by the relay.
        to: PeerId,
        /// Opaque to the relay (an encrypted envelope).
        #[serde(with = "byte_vec")]
        payload: Vec<u8>,
    },
}

/// What the relay sends to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayFrame {
    /// The relay demands [`ClientFrame::Auth`] before it sends its challenge.
    AuthRequired,
    /// Prove possession of the room key by signing this nonce (fresh and random per
    /// connection).
    Challenge {
        /// The nonce to sign.
        #[serde(with = "fixed_bytes")]
        nonce: [u8; 32],
    },
    /// The peer is admitted to the room.
    Welcome {
        /// This connection's id in the room.
        you: PeerId,
        /// The peers already in the room.
        peers: Vec<PeerId>,
        /// The limits this relay enforces; a client keeps below them.
        limits: Limits,
    },
    /// A peer entered the room.
    PeerJoined(PeerId),
    /// A peer left the room (closed, timed out or was dropped).
    PeerLeft(PeerId),
    /// A message from another peer of the room.
    Message {
        /// The sender.
        from: PeerId,
        /// Sent to this peer alone (`Direct`) rather than broadcast.
        direct: bool,
        /// Exactly the bytes the sender sent.
        #[serde(with = "byte_vec")]
        payload: Vec<u8>,
    },
    /// A frame was refused. Nothing was forwarded; the relay does not queue refused
    /// messages.
    Refused {
        /// The refused message's id (`None` when the refused frame had none, e.g. a bad
        /// proof, or could not be decoded).
        id: Option<u64>,
        /// Which rule refused it.
        reason: RefuseReason,
        /// The limit that was hit, in the unit of the reason (see [`RefuseReason`]); 0 when
        /// the reason has no number.
        limit: u64,
        /// When a retry can succeed, in milliseconds from now, for rate refusals; 0 when
        /// waiting does not help (too large, unknown peer) or no estimate applies.
        retry_after_ms: u64,
    },
}

/// Why the relay refused a frame or a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The room already holds `limit` peers.
    RoomFull,
    /// The peer sent more than `limit` messages a second (beyond its burst).
    RateLimited,
    /// The payload is larger than `limit` bytes.
    TooLarge,
    /// The join proof did not verify against the room id.
    BadProof,
    /// The relay needs an auth token and none, or a wrong one, was given.
    AuthRequired,
    /// The peer sent more than `limit` payload bytes a second.
    ByteRateLimited,
    /// The room delivered more than `limit` payload bytes a second (a broadcast counts
    /// once per recipient, since fan-out is what costs the relay).
    RoomByteRateLimited,
    /// A direct message named a peer that is not in the room.
    UnknownPeer,
    /// The frame could not be decoded.
    Malformed,
    /// The frame is valid but not allowed now (e.g. a broadcast before admission).
    UnexpectedFrame,
}

impl RefuseReason {
    /// Every reason, in wire order (for metrics that list all of them).
    pub const ALL: [RefuseReason; 10] = [
        RefuseReason::RoomFull,
        RefuseReason::RateLimited,
        RefuseReason::TooLarge,
        RefuseReason::BadProof,
        RefuseReason::AuthRequired,
        RefuseReason::ByteRateLimited,
        RefuseReason::RoomByteRateLimited,
        RefuseReason::UnknownPeer,
        RefuseReason::Malformed,
        RefuseReason::UnexpectedFrame,
    ];

    /// A stable snake_case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::RoomFull => "room_full",
            RefuseReason::RateLimited => "rate_limited",
            RefuseReason::TooLarge => "too_large",
            RefuseReason::BadProof => "bad_proof",
            RefuseReason::AuthRequired => "auth_required",
            RefuseReason::ByteRateLimited => "byte_rate_limited",
            RefuseReason::RoomByteRateLimited => "room_byte_rate_limited",
            RefuseReason::UnknownPeer => "unknown_peer",
            RefuseReason::Malformed => "malformed",
            RefuseReason::UnexpectedFrame => "unexpected_frame",
        }
    }

    /// Whether the same frame may succeed if sent again later (a rate refusal), as
    /// opposed to never (too large, unknown peer).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            RefuseReason::RateLimited
                | RefuseReason::ByteRateLimited
                | RefuseReason::RoomByteRateLimited
        )
    }
}

/// The limits a relay enforces, announced in [`RelayFrame::Welcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest payload of one `Broadcast` or `Direct`, in bytes (the frame may add
    /// [`crate::FRAME_OVERHEAD`]).
    pub max_message_bytes: u64,
    /// Sustained messages a second a peer may send.
    pub messages_per_second: u64,
    /// Messages a peer may send at once above the sustained rate.
    pub burst: u64,
    /// Sustained payload bytes a second a peer may send.
    pub bytes_per_second: u64,
    /// Sustained payload bytes a second a room may deliver (each recipient counts).
    pub room_bytes_per_second: u64,
    /// Most peers a room admits.
    pub max_peers_per_room: u64,
}

impl Default for Limits {
    /// The relay's defaults (docs/reference.md §4.3).
    fn default() -> Self {
        Limits {
            max_message_bytes: 1024 * 1024,
            messages_per_second: 100,
            burst: 100,
            bytes_per_second: 16 * 1024 * 1024,
            room_bytes_per_second: 64 * 1024 * 1024,
            max_peers_per_room: 50,
        }
    }
}

/// Encoded lengths, computed from postcard's rules rather than by encoding, so a sender
/// can size its payloads; the property tests hold these equal to the real encoding.
pub(crate) mod len {
    use super::*;

    /// postcard's unsigned LEB128 varint: 7 bits a byte.
    pub(crate) fn varint(value: u64) -> usize {
        let bits = 64 - (value | 1).leading_zeros() as usize;
        bits.div_ceil(7)
    }

    fn bytes(payload: &[u8]) -> usize {
        varint(payload.len() as u64) + payload.len()
    }

    pub(crate) fn client(frame: &ClientFrame) -> usize {
        match frame {
            ClientFrame::Auth { token } => varint(0) + bytes(token.as_bytes()),
            ClientFrame::Proof { .. } => varint(1) + 64,
            ClientFrame::Broadcast { id, payload } => varint(2) + varint(*id) + bytes(payload),
            ClientFrame::Direct { id, to, payload } => {
                varint(3) + varint(*id) + varint(to.0) + bytes(payload)
            }
        }
    }

    pub(crate) fn relay(frame: &RelayFrame) -> usize {
        match frame {
            RelayFrame::AuthRequired => varint(0),
            RelayFrame::Challenge { .. } => varint(1) + 32,
            RelayFrame::Welcome { you, peers, limits } => {
                varint(2)
                    + varint(you.0)
                    + varint(peers.len() as u64)
                    + peers.iter().map(|peer| varint(peer.0)).sum::<usize>()
                    + [
                        limits.max_message_bytes,
                        limits.messages_per_second,
                        limits.burst,
                        limits.bytes_per_second,
                        limits.room_bytes_per_second,
                        limits.max_peers_per_room,
                    ]
                    .into_iter()
                    .map(varint)
                    .sum::<usize>()
            }
            RelayFrame::PeerJoined(peer) => varint(3) + varint(peer.0),
            RelayFrame::PeerLeft(peer) => varint(4) + varint(peer.0),
            RelayFrame::Message { from, payload, .. } => {
                varint(5) + varint(from.0) + 1 + bytes(payload)
            }
            RelayFrame::Refused {
                id,
                reason,
                limit,
                retry_after_ms,
            } => {
                varint(6)
                    + 1
                    + id.map_or(0, varint)
                    + varint(*reason as u64)
                    + varint(*limit)
                    + varint(*retry_after_ms)
            }
        }
    }
}

/// A fixed-size byte array as exactly N raw bytes (serde has no impl for `[u8; 64]`).
mod fixed_bytes {
    use std::fmt;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(N)?;
        for byte in bytes {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        struct ArrayVisitor<const N: usize>;

        impl<'de, const N: usize> Visitor<'de> for ArrayVisitor<N> {
            type Value = [u8; N];

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{N} bytes")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
                let mut bytes = [0u8; N];
                for (index, byte) in bytes.iter_mut().enumerate() {
                    *byte = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(index, &self))?;
                }
                Ok(bytes)
            }
        }

        deserializer.deserialize_tuple(N, ArrayVisitor::<N>)
    }
}

/// A payload as one length-prefixed block of bytes, so decoding is a bounds check and one
/// copy instead of a visitor call per byte. The wire form is the same as a `Vec<u8>`.
mod byte_vec {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        struct BytesVisitor;

        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
                Ok(bytes.to_vec())
            }

            fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(bytes)
            }

            // Self-describing formats may hand bytes over as a sequence; postcard never
            // does, but accept it rather than fail for a format we do not use.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(byte) = seq.next_element()? {
                    bytes.push(byte);
                }
                Ok(bytes)
            }
        }

        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}
