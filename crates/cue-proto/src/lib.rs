//! Relay frames and ids: everything the relay parses, and nothing it could use to read a
//! workspace.
//!
//! A peer and the relay exchange one [`ClientFrame`] or [`RelayFrame`] per WebSocket binary
//! message, encoded by [`encode`] as a version byte followed by postcard. The two
//! directions are separate types, so a frame sent the wrong way does not compile. Joining a
//! room is a signed challenge ([`join_proof_message`], [`verify_join_proof`]): the room id
//! is the ed25519 public key of the room key, so the relay can check that a peer holds the
//! room key without learning anything else about the workspace.
//!
//! This crate is pure: no IO, no clock, no randomness. The relay (`cue-relay`) depends on
//! it and on nothing that can open an envelope; the daemon's relay client uses it too.
//! `docs/protocol.md` §1 is the wire specification.

mod codec;
mod frames;
mod ids;
mod join;

pub use codec::{
    DecodeError, FRAME_OVERHEAD, Frame, MAX_HANDSHAKE_FRAME_BYTES, PROTOCOL_VERSION, decode,
    decode_limited, encode,
};
pub use frames::{ClientFrame, Limits, RefuseReason, RelayFrame};
pub use ids::{PeerId, ROOM_PATH_PREFIX, RoomId, RoomIdError};
pub use join::{JOIN_DOMAIN, join_proof_message, sign_join_proof, verify_join_proof};
