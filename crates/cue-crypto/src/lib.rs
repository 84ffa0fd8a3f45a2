//! Keys, invites and sealed envelopes for cue: everything secret, and everything the
//! relay must never be able to read or forge. Pure: no IO, no clock; randomness comes
//! only from the OS (keys, nonces), with deterministic entry points for tests.
//!
//! How the daemon uses it:
//! - `cue sync init`: [`WorkspaceSecret::generate`] (generation 0),
//!   [`LobbySecret::generate`] and [`DeviceKey::generate`], stored in 0600 files, and a
//!   [`MakerProof`] whose hash is the workspace id (it names the maker to every member);
//!   [`WorkspaceKeys::derive`] on every start, for the workspace secret of the current
//!   generation and for the lobby ([`LobbySecret::keys`]). A workspace made before lobbies
//!   existed uses [`LobbySecret::derive_legacy`] of its first secret.
//! - `cue sync invite`: an [`InviteSecret`] per invite, remembered by its [`InviteId`]
//!   with its expiry and uses; [`Invite::to_token`]. The token carries the lobby secret and
//!   the invite secret, never the workspace secret.
//! - `cue sync join`: [`Invite::parse`]; in the lobby room, a [`LobbyMessage::JoinRequest`]
//!   with [`InviteSecret::proof`]. The inviting device checks it
//!   ([`InviteSecret::verify_proof`], expiry, uses, revocation) and answers with
//!   [`seal_secret`] (or [`LobbyMessage::Refused`]); the joiner [`open_secret`]s it and
//!   records its [`Admission`], bound to the lobby room id.
//! - Removing a device: a new [`WorkspaceSecret`], a signed [`RotationRecord`] (kept in the
//!   synced index, also sent as [`LobbyMessage::Records`]), and the new secret sealed to
//!   each remaining device ([`seal_secret`], built on [`seal_to`]). Concurrent rotations
//!   are ordered by [`RotationRecord::hash`]. [`LobbyMessage::Hello`] tells which
//!   generation a device is at.
//! - Joining the relay: the room id is [`WorkspaceKeys::room_id`]; the challenge is
//!   answered with [`WorkspaceKeys::sign_join`].
//! - Sending: a [`SeqAllocator`] per stream (persist its mark when told), then
//!   [`Sealer::seal`].
//! - Receiving: [`open`] with the member list and a persisted [`ReplayGuard`]; every
//!   [`OpenError`] means "drop and count". A [`Gap`] in [`Opened::gap`] means the relay may
//!   have withheld broadcasts; call [`ReplayGuard::on_disconnect`] and
//!   [`ReplayGuard::on_peer_left`] so that gaps across a disconnection stay quiet.
//!
//! The wire formats are specified in `docs/protocol.md` (section 2) and the threat model
//! in `docs/security.md`.

mod admission;
mod envelope;
mod invite;
mod keys;
mod lobby;
mod maker;
mod replay;
mod rotation;
mod sealed;

pub use admission::{
    ADMISSION_DOMAIN, ADMISSION_VERSION, Admission, AdmissionError, DeviceNameError,
    MAX_DEVICE_NAME_LEN, validate_device_name,
};
pub use cue_proto::RoomId;
pub use envelope::{
    BUCKET_STEP, ENVELOPE_OVERHEAD, ENVELOPE_VERSION, EnvelopeHeader, MAX_ENVELOPE_LEN,
    MAX_PLAINTEXT_LEN, MIN_BUCKET, MIN_ENVELOPE_LEN, MessageType, OpenError, Opened,
    SIGNATURE_DOMAIN, SealError, Sealer, Stream, bucket_len, max_plaintext_for, open,
    open_without_replay_check, padded_len, sealed_len,
};
pub use invite::{
    INVITE_PREFIX, INVITE_PROOF_DOMAIN, INVITE_VERSION, Invite, InviteError, InviteId,
    InviteSecret, LobbySecret, MAX_RELAY_URL_LEN, RelayUrlError, validate_relay_url,
};
pub use keys::{
    DeviceId, DeviceKey, ParseIdError, RandomnessError, WorkspaceId, WorkspaceKeys, WorkspaceSecret,
};
pub use lobby::{
    LOBBY_VERSION, LobbyError, LobbyMessage, MAX_LOBBY_RECORDS, MAX_REASON_LEN, SEALED_SECRET_LEN,
    open_admission, open_secret, seal_admission, seal_secret,
};
pub use maker::{MAKER_DOMAIN, MAKER_PROOF_LEN, MakerProof};
pub use replay::{DEFAULT_SEQ_BLOCK, Gap, REPLAY_WINDOW, ReplayGuard, SeqAllocator, SeqNext};
pub use rotation::{
    MAX_REMOVED, MAX_ROTATION_LEN, MIN_ROTATION_LEN, ROTATION_DOMAIN, ROTATION_VERSION,
    RotationError, RotationRecord,
};
pub use sealed::{SEALED_OVERHEAD, SealedError, open_sealed, seal_to, seal_to_with};
