//! Room and peer identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The path under which the relay serves rooms: a room lives at `/v1/rooms/{room id hex}`.
/// The id is in the path, not in a frame, so a stock load balancer can hash it and keep a
/// room on one relay instance.
pub const ROOM_PATH_PREFIX: &str = "/v1/rooms/";

/// A room: the ed25519 public key of the room key that the workspace secret derives.
///
/// Knowing a room id is not enough to join: the relay asks for a signature by the
/// matching private key (see [`crate::verify_join_proof`]). Its text form is 64 lowercase
/// hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub [u8; 32]);

/// Why a room id's text form was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomIdError {
    /// The text does not have exactly 64 characters.
    #[error("a room id is 64 hex digits, this one has {0} characters")]
    Length(usize),
    /// A character is not a hex digit.
    #[error("a room id is 64 hex digits, found {found:?} at position {position}")]
    NotHex {
        /// Byte position of the offending character.
        position: usize,
        /// The character found there.
        found: char,
    },
}

impl RoomId {
    /// Parses the 64-hex-digit text form (either case is accepted; [`fmt::Display`] writes
    /// lowercase).
    pub fn from_hex(text: &str) -> Result<Self, RoomIdError> {
        let raw = text.as_bytes();
        if raw.len() != 64 {
            return Err(RoomIdError::Length(text.chars().count()));
        }
        let nibble = |position: usize| -> Result<u8, RoomIdError> {
            let byte = raw[position];
            match byte {
                b'0'..=b'9' => Ok(byte - b'0'),
                b'a'..=b'f' => Ok(byte - b'a' + 10),
                b'A'..=b'F' => Ok(byte - b'A' + 10),
                _ => Err(RoomIdError::NotHex {
                    position,
                    // The length check counted bytes, so a multi-byte character can sit
                    // here; report it whole rather than as a broken byte.
                    found: text[position..].chars().next().unwrap_or('\u{fffd}'),
                }),
            }
        };
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = (nibble(2 * index)? << 4) | nibble(2 * index + 1)?;
        }
        Ok(RoomId(bytes))
    }

    /// The WebSocket path of this room on a relay: `/v1/rooms/{hex}`.
    pub fn path(&self) -> String {
        format!("{ROOM_PATH_PREFIX}{self}")
    }

    /// Parses a request path of the form `/v1/rooms/{hex}` (no query, no trailing slash).
    pub fn from_path(path: &str) -> Option<Result<Self, RoomIdError>> {
        path.strip_prefix(ROOM_PATH_PREFIX).map(RoomId::from_hex)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({self})")
    }
}

impl FromStr for RoomId {
    type Err = RoomIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RoomId::from_hex(text)
    }
}

/// A peer in a room, as the relay names it: assigned by the relay per connection, never
/// derived from a device key, so the relay never learns which device is which. A peer that
/// reconnects gets a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_id_hex_round_trip() {
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = (index as u8).wrapping_mul(37);
        }
        let room = RoomId(bytes);
        let text = room.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(RoomId::from_hex(&text), Ok(room));
        assert_eq!(RoomId::from_hex(&text.to_uppercase()), Ok(room));
        assert_eq!(text.parse::<RoomId>(), Ok(room));
        assert_eq!(RoomId::from_path(&room.path()), Some(Ok(room)));
    }

    #[test]
    fn room_id_rejects_bad_text() {
        assert_eq!(RoomId::from_hex(""), Err(RoomIdError::Length(0)));
        assert_eq!(
            RoomId::from_hex(&"a".repeat(63)),
            Err(RoomIdError::Length(63))
        );
        let mut text = "0".repeat(64);
        text.replace_range(10..11, "g");
        assert_eq!(
            RoomId::from_hex(&text),
            Err(RoomIdError::NotHex {
                position: 10,
                found: 'g'
            })
        );
        // 62 ASCII digits and one two-byte character: 64 bytes, not hex, no panic.
        let text = format!("{}é", "0".repeat(62));
        assert!(matches!(
            RoomId::from_hex(&text),
            Err(RoomIdError::NotHex {
                position: 62,
                found: 'é'
            })
        ));
        assert_eq!(RoomId::from_path("/v1/other/00"), None);
    }
}
