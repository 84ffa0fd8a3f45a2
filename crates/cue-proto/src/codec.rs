//! One WebSocket binary message = one frame = [`PROTOCOL_VERSION`] + postcard.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frames::len;
use crate::{ClientFrame, RelayFrame};

/// The first byte of every frame. A new version is a new number here, never a silent
/// change of meaning: a relay or peer refuses versions it does not know.
pub const PROTOCOL_VERSION: u8 = 1;

/// The most bytes a `Broadcast`, `Direct` or `Message` frame adds to its payload (version,
/// variant, message id, peer id, length prefix, with room to spare). A relay accepts
/// WebSocket messages of `max_message_bytes + FRAME_OVERHEAD`.
pub const FRAME_OVERHEAD: usize = 32;

/// The largest frame a peer may send before it is admitted (`Auth` or `Proof`). Auth
/// tokens therefore stay under about 500 bytes.
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 512;

/// Why bytes are not a frame. Bad input from the network is a value, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message was empty: not even a version byte.
    #[error("empty frame")]
    Empty,
    /// The version byte is not one this build speaks.
    #[error("unsupported frame version {found} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version byte received.
        found: u8,
    },
    /// The frame is longer than the receiver allows; it was not parsed.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLong {
        /// Length of the frame.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The body is not a valid frame of the expected direction.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// A valid frame was followed by extra bytes.
    #[error("{count} unexpected bytes after the frame")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::ClientFrame {}
    impl Sealed for crate::RelayFrame {}
}

/// A frame of either direction: what [`encode`] and [`decode`] work on.
pub trait Frame: sealed::Sealed + Serialize + DeserializeOwned {
    /// The exact length of [`encode`]'s output, computed without encoding.
    fn encoded_len(&self) -> usize;

    /// Encodes this frame (version byte + postcard).
    fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a frame with no length limit beyond the input's own.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes)
    }
}

impl Frame for ClientFrame {
    fn encoded_len(&self) -> usize {
        1 + len::client(self)
    }
}

impl Frame for RelayFrame {
    fn encoded_len(&self) -> usize {
        1 + len::relay(self)
    }
}

/// Encodes `frame` as one WebSocket binary message.
pub fn encode<F: Frame>(frame: &F) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.encoded_len());
    out.push(PROTOCOL_VERSION);
    // Our frames hold only integers, fixed arrays, strings, byte strings and sequences of
    // known length, which postcard serialises into a Vec without any failure path.
    postcard::to_extend(frame, out).expect("postcard cannot fail to encode a frame into a Vec")
}

/// Decodes one frame; the whole input must be the frame.
///
/// Every length inside is checked against the input before anything is allocated for it,
/// so a hostile length prefix costs nothing. Use [`decode_limited`] to refuse long frames
/// before parsing at all.
pub fn decode<F: Frame>(bytes: &[u8]) -> Result<F, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let (frame, rest) = postcard::take_from_bytes::<F>(body)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    Ok(frame)
}

/// Decodes one frame if it is at most `max_len` bytes long, and refuses it unparsed
/// otherwise.
pub fn decode_limited<F: Frame>(bytes: &[u8], max_len: usize) -> Result<F, DecodeError> {
    if bytes.len() > max_len {
        return Err(DecodeError::TooLong {
            len: bytes.len(),
            max: max_len,
        });
    }
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, PeerId, RefuseReason};

    #[test]
    fn known_encodings_are_stable() {
        // Pin a few byte-exact encodings: a change here is a wire break and needs a new
        // PROTOCOL_VERSION.
        assert_eq!(
            encode(&ClientFrame::Broadcast {
                id: 300,
                payload: vec![9, 8]
            }),
            vec![1, 2, 0xac, 0x02, 2, 9, 8]
        );
        assert_eq!(encode(&RelayFrame::AuthRequired), vec![1, 0]);
        assert_eq!(encode(&RelayFrame::PeerLeft(PeerId(1))), vec![1, 4, 1]);
        assert_eq!(
            encode(&RelayFrame::Refused {
                id: None,
                reason: RefuseReason::RoomFull,
                limit: 50,
                retry_after_ms: 0
            }),
            vec![1, 6, 0, 0, 50, 0]
        );
        let welcome = encode(&RelayFrame::Welcome {
            you: PeerId(2),
            peers: vec![PeerId(3)],
            limits: Limits::default(),
        });
        assert_eq!(&welcome[..5], &[1, 2, 2, 1, 3]);
    }

    #[test]
    fn rejects_bad_envelopes_of_a_frame() {
        assert_eq!(decode::<ClientFrame>(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode::<ClientFrame>(&[2, 0]),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        );
        assert_eq!(
            decode::<RelayFrame>(&[1, 0, 0]),
            Err(DecodeError::TrailingBytes { count: 1 })
        );
        assert!(matches!(
            decode::<ClientFrame>(&[1, 99]),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode_limited::<ClientFrame>(&[1; 100], 99),
            Err(DecodeError::TooLong { len: 100, max: 99 })
        );
    }

    #[test]
    fn a_huge_length_prefix_allocates_nothing_and_fails() {
        // Broadcast { id: 0, payload: <claims 2^62 bytes> } with three bytes behind it.
        let mut bytes = vec![1, 2, 0];
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
        bytes.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            decode::<ClientFrame>(&bytes),
            Err(DecodeError::Malformed(_))
        ));
        // Welcome claiming 2^32 peers.
        let bytes = [1, 2, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 1];
        assert!(matches!(
            decode::<RelayFrame>(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn overhead_covers_the_largest_headers() {
        let payload = vec![0u8; 1 << 20];
        let direct = ClientFrame::Direct {
            id: u64::MAX,
            to: PeerId(u64::MAX),
            payload: payload.clone(),
        };
        assert!(direct.encoded_len() - payload.len() <= FRAME_OVERHEAD);
        let message = RelayFrame::Message {
            from: PeerId(u64::MAX),
            direct: true,
            payload: payload.clone(),
        };
        assert!(message.encoded_len() - payload.len() <= FRAME_OVERHEAD);
        let auth = ClientFrame::Auth {
            token: "t".repeat(400),
        };
        assert!(auth.encoded_len() <= MAX_HANDSHAKE_FRAME_BYTES);
    }
}
