//! Invite tokens: one line a user pastes to join a workspace, and the two secrets it
//! carries.
//!
//! An invite no longer carries the workspace secret (which changes at every rotation and
//! must not outlive a removed device's access). It carries:
//! - the **lobby secret**, constant for the workspace, whose derived keys
//!   ([`LobbySecret::keys`]) open a second relay room, the lobby, where joining devices
//!   and members talk ([`crate::LobbyMessage`]);
//! - an **invite secret**, one per invite, with which the joining device proves, in its
//!   [`crate::LobbyMessage::JoinRequest`], that it holds this very invite
//!   ([`InviteSecret::proof`]); the device that made the invite checks the proof, the
//!   expiry and its own records of uses and revocations, then answers with the current
//!   workspace secret sealed to the joiner's device key.
//!
//! `cueinv1` + bech32m data: `version (2) | workspace id (16) | lobby secret (32) |
//! invite secret (32) | expires_at (Unix seconds, u64 big-endian, 8) | relay URL (the
//! rest, UTF-8)`. Bech32m keeps the token to one case-insensitive word that survives
//! chat clients and can be read aloud, and its checksum catches typos.
//!
//! BIP-173 limits bech32 strings to 90 characters because the checksum *guarantees*
//! detecting up to 4 errors only that far; our tokens are 165 to 975 characters. The
//! same BCH code is defined up to 1023 characters (the `bech32` crate's `Bech32m` enforces
//! exactly that length, and BOLT-11 invoices use it the same way): there it still detects
//! any single error and misses a random corruption with probability about 1 in 10^9.
//! Two further checks cover the long tail: the expiry must not be 0 and the URL must
//! parse; a corruption that slips through all three makes a join request the inviting
//! device refuses (its proof does not verify), never a wrong workspace. A single
//! mistyped character is located and reported by position.
//!
//! Version 1 tokens carried the workspace secret itself; they are refused with
//! [`InviteError::Outdated`].

use std::fmt;
use std::str::FromStr;

use bech32::primitives::decode::{CharError, CheckedHrpstring, CheckedHrpstringError};
use bech32::{Bech32m, Hrp};
use cue_proto::RoomId;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::keys::{
    ParseIdError, RandomnessError, WorkspaceId, WorkspaceKeys, WorkspaceSecret, hex_or_bytes_serde,
    os_random, parse_hex,
};

/// The token format this build writes.
pub const INVITE_VERSION: u8 = 2;
/// The token format that carried the workspace secret; refused as outdated.
const INVITE_VERSION_1: u8 = 1;
/// Every token starts with this.
pub const INVITE_PREFIX: &str = "cueinv1";
/// Domain tag of [`InviteSecret::proof`].
pub const INVITE_PROOF_DOMAIN: &[u8] = b"cue/v2/invite-proof\0";
const HRP: Hrp = Hrp::parse_unchecked("cueinv");
const FIXED_PAYLOAD: usize = 1 + 16 + 32 + 32 + 8;
/// Longest relay URL an invite carries; keeps tokens under the checksum's 1023 characters
/// (542 bytes would be the most that fits; the margin is for a future field).
pub const MAX_RELAY_URL_LEN: usize = 512;
const SHORTEST_URL: &str = "ws://a";
const CHECKSUM_CHARS: usize = 6;
const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// HKDF labels of the values derived from the lobby and invite secrets. Distinct from
/// the workspace secret's own labels, so no derived value doubles as another.
const LOBBY_LEGACY_INFO: &[u8] = b"cue lobby v1";
const INVITE_SALT: &[u8] = b"cue invite secret v2";
const LABEL_INVITE_ID: &[u8] = b"cue/v2/invite-id";
const LABEL_PROOF_KEY: &[u8] = b"cue/v2/invite-proof-key";

/// The length of the token for a payload of `payload_len` bytes.
const fn token_len_for(payload_len: usize) -> usize {
    INVITE_PREFIX.len() + (payload_len * 8).div_ceil(5) + CHECKSUM_CHARS
}

/// Shorter than any valid token: the end was cut off.
const MIN_TOKEN_LEN: usize = token_len_for(FIXED_PAYLOAD + SHORTEST_URL.len());
const MAX_TOKEN_LEN: usize = token_len_for(FIXED_PAYLOAD + MAX_RELAY_URL_LEN);

/// What is wrong with a token, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// Nothing was given.
    #[error("the invite token is empty")]
    Empty,
    /// Not a cue invite at all.
    #[error("this is not a cue invite: it should start with \"{INVITE_PREFIX}\"")]
    WrongPrefix,
    /// A character that bech32 never uses (1, b, i, o, punctuation, spaces...).
    #[error(
        "the invite token has {found:?} at character {position}, which never occurs in a token: it was mistyped"
    )]
    BadCharacter {
        /// The offending character.
        found: char,
        /// Its 1-based position in the token.
        position: usize,
    },
    /// Upper and lower case mixed.
    #[error("the invite token mixes upper and lower case: copy it unchanged")]
    MixedCase,
    /// Too short to be a token: the end is missing.
    #[error(
        "the invite token is cut short ({len} characters, a token has at least {MIN_TOKEN_LEN}): copy the whole line"
    )]
    Truncated {
        /// Characters received.
        len: usize,
    },
    /// Longer than the checksum covers.
    #[error("the invite token is too long ({len} characters): it is not one token")]
    TooLong {
        /// Characters received.
        len: usize,
    },
    /// The checksum does not match.
    #[error("{}", checksum_message(*.likely_position))]
    BadChecksum {
        /// 1-based position of the character that is most likely wrong, when exactly
        /// one character differs from a valid token.
        likely_position: Option<usize>,
    },
    /// A version 1 token, which carried the workspace secret itself.
    #[error(
        "this invite was made by an older cue and can no longer be used: ask for a new one (`cue sync invite`)"
    )]
    Outdated,
    /// A token from a newer (or unknown) version of cue.
    #[error(
        "this invite is format version {0}; this cue reads version {INVITE_VERSION}: upgrade cue"
    )]
    UnsupportedVersion(u8),
    /// The checksum passed but the content is inconsistent.
    #[error("the invite token is corrupted: ask for a new one (`cue sync invite`)")]
    Corrupted,
    /// An invite without an expiry time (0), which [`Invite::new`] refuses.
    #[error("an invite needs an expiry time; 0 is not one")]
    NoExpiry,
    /// The relay URL is unusable.
    #[error(transparent)]
    BadUrl(#[from] RelayUrlError),
}

fn checksum_message(position: Option<usize>) -> String {
    match position {
        Some(p) => {
            format!("the invite token's checksum does not match: character {p} looks mistyped")
        }
        None => "the invite token's checksum does not match: it was mistyped or cut short; \
                 copy the whole line again"
            .to_owned(),
    }
}

/// What is wrong with a relay URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayUrlError {
    /// Not `ws://` or `wss://`.
    #[error("the relay URL must start with ws:// or wss://")]
    Scheme,
    /// No host after the scheme.
    #[error("the relay URL has no host")]
    NoHost,
    /// Spaces, control or non-ASCII characters.
    #[error("the relay URL contains a space, control or non-ASCII character")]
    BadCharacter,
    /// Over [`MAX_RELAY_URL_LEN`] bytes.
    #[error("the relay URL is longer than {MAX_RELAY_URL_LEN} bytes")]
    TooLong,
}

/// Checks that `url` is a plausible relay URL: `ws://` or `wss://`, a host, printable
/// ASCII only (internationalised hosts in punycode), at most [`MAX_RELAY_URL_LEN`] bytes.
/// The WebSocket client does the full parse when it connects.
pub fn validate_relay_url(url: &str) -> Result<(), RelayUrlError> {
    if url.len() > MAX_RELAY_URL_LEN {
        return Err(RelayUrlError::TooLong);
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RelayUrlError::BadCharacter);
    }
    let rest = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or(RelayUrlError::Scheme)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    if host.is_empty() || host == "[]" {
        return Err(RelayUrlError::NoHost);
    }
    Ok(())
}

/// `generate` (from the OS's randomness), `from_bytes` and `as_bytes` for a 32-byte
/// secret newtype.
macro_rules! random_secret {
    ($t:ident) => {
        impl $t {
            /// A fresh secret from the OS's randomness.
            pub fn generate() -> Result<Self, RandomnessError> {
                let mut bytes = Zeroizing::new([0u8; 32]);
                os_random(bytes.as_mut_slice())?;
                Ok(Self(*bytes))
            }

            /// Rebuilds the secret from its stored bytes.
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes, for storing. Keep the borrow short and never log it.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }
    };
}

/// The constant secret of a workspace's lobby: the relay room where joining devices ask
/// in and where members hand out rotated secrets. Its keys are [`WorkspaceKeys`] derived
/// from it as if it were a workspace secret. It never changes (every invite ever made
/// carries it, and removed devices know it), so the lobby carries nothing that is not
/// sealed to one device or signed. Zeroized on drop; `Debug` prints nothing of it.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct LobbySecret([u8; 32]);

random_secret!(LobbySecret);

impl LobbySecret {
    /// The lobby's room key, room id and payload key.
    pub fn keys(&self) -> WorkspaceKeys {
        WorkspaceKeys::derive(&WorkspaceSecret::from_bytes(self.0))
    }

    /// The lobby secret of a workspace made before lobbies existed: derived from its
    /// first (generation 0) secret, which every member of such a workspace holds, so all
    /// of them agree on it without a message. HKDF-SHA256 under its own label, so it
    /// reveals nothing of that secret.
    pub fn derive_legacy(first: &WorkspaceSecret) -> LobbySecret {
        let hk = Hkdf::<Sha256>::new(None, first.as_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes are far below HKDF's limit of 255 hash lengths.
        hk.expand(LOBBY_LEGACY_INFO, out.as_mut_slice())
            .expect("HKDF-SHA256 expands up to 8160 bytes");
        Self(*out)
    }
}

impl fmt::Debug for LobbySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LobbySecret(<redacted>)")
    }
}

/// The secret of one invite: the joining device proves it holds it with
/// [`InviteSecret::proof`], and the inviting device finds its records of the invite by
/// [`InviteSecret::id`]. Zeroized on drop; `Debug` prints only the id.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct InviteSecret([u8; 32]);

random_secret!(InviteSecret);

impl InviteSecret {
    fn expand<const N: usize>(&self, label: &[u8]) -> Zeroizing<[u8; N]> {
        let hk = Hkdf::<Sha256>::new(Some(INVITE_SALT), &self.0);
        let mut out = Zeroizing::new([0u8; N]);
        // At most 32 bytes, far below HKDF's limit of 255 hash lengths.
        hk.expand(label, out.as_mut_slice())
            .expect("HKDF-SHA256 expands up to 8160 bytes");
        out
    }

    /// The invite's public id: 16 bytes derived under their own label, so it names the
    /// invite in join requests, refusals and `cue sync invites` without revealing the
    /// secret.
    pub fn id(&self) -> InviteId {
        InviteId(*self.expand::<16>(LABEL_INVITE_ID))
    }

    fn mac(&self, lobby_room: &RoomId, device: &crate::DeviceId, name: &str) -> Hmac<Sha256> {
        let key = self.expand::<32>(LABEL_PROOF_KEY);
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_slice())
            .expect("HMAC accepts any key length");
        mac.update(INVITE_PROOF_DOMAIN);
        mac.update(&lobby_room.0);
        mac.update(&device.0);
        // The length keeps (name, anything after it) unambiguous.
        mac.update(&(name.len() as u64).to_be_bytes());
        mac.update(name.as_bytes());
        mac
    }

    /// The proof that `device`, asking under `name` in the lobby `lobby_room`, holds this
    /// invite: HMAC-SHA256 under a key derived from the secret, over
    /// [`INVITE_PROOF_DOMAIN`], the room, the device and the name with its length. Bound
    /// to all three, so a proof seen in the lobby cannot be replayed by another device or
    /// under another name.
    pub fn proof(&self, lobby_room: &RoomId, device: &crate::DeviceId, name: &str) -> [u8; 32] {
        self.mac(lobby_room, device, name)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a proof in constant time.
    pub fn verify_proof(
        &self,
        lobby_room: &RoomId,
        device: &crate::DeviceId,
        name: &str,
        proof: &[u8; 32],
    ) -> bool {
        self.mac(lobby_room, device, name)
            .verify_slice(proof)
            .is_ok()
    }
}

impl fmt::Debug for InviteSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InviteSecret({}, <secret redacted>)", self.id().short())
    }
}

/// The public id of an invite ([`InviteSecret::id`]). Displays as 32 lowercase hex
/// digits; serialises as that string in human-readable formats and as 16 raw bytes in
/// binary ones.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InviteId(pub [u8; 16]);

impl InviteId {
    /// The first 8 hex digits, for lists and messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for InviteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for InviteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InviteId({})", self.short())
    }
}

impl FromStr for InviteId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s).map(Self)
    }
}

hex_or_bytes_serde!(InviteId, 16);

/// Everything needed to ask to join a workspace: which workspace, its lobby, this
/// invite's secret, until when it is valid, and where the relay is.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    workspace: WorkspaceId,
    lobby: LobbySecret,
    secret: InviteSecret,
    expires_at: u64,
    relay_url: String,
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite")
            .field("workspace_id", &self.workspace)
            .field("invite_id", &self.secret.id())
            .field("expires_at", &self.expires_at)
            .field("relay_url", &self.relay_url)
            .finish_non_exhaustive()
    }
}

impl Invite {
    /// An invite to `workspace`, whose lobby is `lobby`, proven by `secret`, valid until
    /// `expires_at` (Unix seconds, not 0), through the relay at `relay_url`.
    pub fn new(
        workspace: WorkspaceId,
        lobby: LobbySecret,
        secret: InviteSecret,
        expires_at: u64,
        relay_url: &str,
    ) -> Result<Self, InviteError> {
        if expires_at == 0 {
            return Err(InviteError::NoExpiry);
        }
        validate_relay_url(relay_url)?;
        Ok(Self {
            workspace,
            lobby,
            secret,
            expires_at,
            relay_url: relay_url.to_owned(),
        })
    }

    /// The workspace id, as the inviting device gave it (shown to the user before
    /// joining; checked against the secret once it arrives).
    pub fn workspace_id(&self) -> WorkspaceId {
        self.workspace
    }

    /// The workspace's lobby secret.
    pub fn lobby(&self) -> &LobbySecret {
        &self.lobby
    }

    /// This invite's secret.
    pub fn secret(&self) -> &InviteSecret {
        &self.secret
    }

    /// Until when the invite is valid, in Unix seconds. The inviting device enforces it;
    /// the joining one can use it to fail early.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Whether the invite has expired at `now` (Unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    /// The relay URL.
    pub fn relay_url(&self) -> &str {
        &self.relay_url
    }

    /// The exact length of [`Invite::to_token`]'s output.
    pub fn token_len(&self) -> usize {
        token_len_for(FIXED_PAYLOAD + self.relay_url.len())
    }

    /// The one-line token. It holds secrets: show it only to the user who asked.
    pub fn to_token(&self) -> Zeroizing<String> {
        let mut payload = Zeroizing::new(Vec::with_capacity(FIXED_PAYLOAD + self.relay_url.len()));
        payload.push(INVITE_VERSION);
        payload.extend_from_slice(&self.workspace.0);
        payload.extend_from_slice(self.lobby.as_bytes());
        payload.extend_from_slice(self.secret.as_bytes());
        payload.extend_from_slice(&self.expires_at.to_be_bytes());
        payload.extend_from_slice(self.relay_url.as_bytes());
        let mut out = Zeroizing::new(String::with_capacity(self.token_len()));
        // Writing into a String fails only when the code length (1023) is exceeded, which
        // the URL limit rules out; the test `longest_url_fits` pins that.
        if let Err(e) = bech32::encode_lower_to_fmt::<Bech32m, String>(&mut out, HRP, &payload) {
            unreachable!("invite payload exceeds the bech32m code length: {e}");
        }
        out
    }

    /// Parses a token, ignoring surrounding whitespace. Every error says what is wrong.
    pub fn parse(token: &str) -> Result<Self, InviteError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(InviteError::Empty);
        }
        let prefix_ok = token
            .get(..INVITE_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(INVITE_PREFIX));
        if !prefix_ok {
            return Err(InviteError::WrongPrefix);
        }
        let data = &token[INVITE_PREFIX.len()..];
        for (i, c) in data.chars().enumerate() {
            if !(c.is_ascii() && CHARSET.contains(&(c.to_ascii_lowercase() as u8))) {
                return Err(InviteError::BadCharacter {
                    found: c,
                    position: INVITE_PREFIX.len() + i + 1,
                });
            }
        }
        let has_upper = token.bytes().any(|b| b.is_ascii_uppercase());
        let has_lower = token.bytes().any(|b| b.is_ascii_lowercase());
        if has_upper && has_lower {
            return Err(InviteError::MixedCase);
        }
        let len = token.len();
        if len < MIN_TOKEN_LEN {
            // Version 1 tokens were shorter: say it is outdated rather than cut short.
            let outdated = CheckedHrpstring::new::<Bech32m>(token)
                .is_ok_and(|c| c.byte_iter().next() == Some(INVITE_VERSION_1));
            return Err(if outdated {
                InviteError::Outdated
            } else {
                InviteError::Truncated { len }
            });
        }
        if len > MAX_TOKEN_LEN {
            return Err(InviteError::TooLong { len });
        }
        let checked =
            CheckedHrpstring::new::<Bech32m>(token).map_err(|e| checksum_error(&e, token))?;
        let payload: Zeroizing<Vec<u8>> = Zeroizing::new(checked.byte_iter().collect());
        Self::from_payload(&payload)
    }

    fn from_payload(payload: &[u8]) -> Result<Self, InviteError> {
        let (&version, rest) = payload
            .split_first()
            .ok_or(InviteError::Truncated { len: 0 })?;
        if version == INVITE_VERSION_1 {
            return Err(InviteError::Outdated);
        }
        if version != INVITE_VERSION {
            return Err(InviteError::UnsupportedVersion(version));
        }
        let (workspace, rest) = rest
            .split_first_chunk::<16>()
            .ok_or(InviteError::Corrupted)?;
        let (lobby, rest) = rest
            .split_first_chunk::<32>()
            .ok_or(InviteError::Corrupted)?;
        let (secret, rest) = rest
            .split_first_chunk::<32>()
            .ok_or(InviteError::Corrupted)?;
        let (expires_at, url) = rest
            .split_first_chunk::<8>()
            .ok_or(InviteError::Corrupted)?;
        let expires_at = u64::from_be_bytes(*expires_at);
        if expires_at == 0 {
            return Err(InviteError::Corrupted);
        }
        let url = std::str::from_utf8(url).map_err(|_| RelayUrlError::BadCharacter)?;
        Self::new(
            WorkspaceId(*workspace),
            LobbySecret::from_bytes(*lobby),
            InviteSecret::from_bytes(*secret),
            expires_at,
            url,
        )
    }
}

fn checksum_error(e: &CheckedHrpstringError, token: &str) -> InviteError {
    let len = token.len();
    use bech32::primitives::decode::{ChecksumError, UncheckedHrpstringError};
    match e {
        CheckedHrpstringError::Parse(UncheckedHrpstringError::Char(CharError::MixedCase)) => {
            InviteError::MixedCase
        }
        CheckedHrpstringError::Checksum(ChecksumError::CodeLength(_)) => {
            InviteError::TooLong { len }
        }
        CheckedHrpstringError::Checksum(ChecksumError::InvalidResidue(_)) => {
            InviteError::BadChecksum {
                likely_position: single_error_position(token),
            }
        }
        // Everything else was ruled out by the checks before (prefix, characters,
        // length); report it as the checksum failing rather than guess.
        _ => InviteError::BadChecksum {
            likely_position: None,
        },
    }
}

/// When exactly one character is wrong, the BCH code can say which one.
///
/// The `bech32` crate has an error corrector, but its iterator panics on some inputs
/// ("error guaranteed to lie in base field", found by our fuzz test with the token in
/// `tests::corrector_regression`), so the search is done here. The checksum is linear
/// over GF(2): changing the character at position `p` by XOR `e` changes the final
/// residue by `L_p(e)`, where `L_p` shifts `e` through the symbols after `p`. A token
/// with one wrong character has `residue ^ target == L_p(e)` for exactly one (p, e),
/// since the code's distance is at least 4 up to 1023 characters.
fn single_error_position(token: &str) -> Option<usize> {
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    const BECH32M_TARGET: u32 = 0x2bc830a3;
    fn step(chk: u32, value: u32) -> u32 {
        let top = chk >> 25;
        let mut chk = (chk & 0x01ff_ffff) << 5 ^ value;
        for (i, g) in GEN.iter().enumerate() {
            if top >> i & 1 == 1 {
                chk ^= g;
            }
        }
        chk
    }
    let lower = token.to_ascii_lowercase();
    let (hrp, data) = lower.split_once('1')?;
    let values: Vec<u32> = data
        .bytes()
        .map(|c| CHARSET.iter().position(|&x| x == c).map(|v| v as u32))
        .collect::<Option<_>>()?;
    let mut chk = 1;
    for c in hrp.bytes() {
        chk = step(chk, u32::from(c >> 5));
    }
    chk = step(chk, 0);
    for c in hrp.bytes() {
        chk = step(chk, u32::from(c & 31));
    }
    for &v in &values {
        chk = step(chk, v);
    }
    let syndrome = chk ^ BECH32M_TARGET;
    if syndrome == 0 {
        return None;
    }
    // Walk from the last character back, keeping the images of the 5 bit positions.
    let mut basis = [1u32, 2, 4, 8, 16];
    let mut found = None;
    for i in (0..values.len()).rev() {
        for e in 1u32..32 {
            let image = (0..5)
                .filter(|j| e >> j & 1 == 1)
                .fold(0, |acc, j| acc ^ basis[j]);
            if image == syndrome {
                if found.is_some() {
                    return None;
                }
                found = Some(INVITE_PREFIX.len() + i + 1);
            }
        }
        for b in &mut basis {
            *b = step(*b, 0);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceKey;

    const EXPIRES: u64 = 1_800_000_000;

    fn invite(url: &str) -> Invite {
        Invite::new(
            WorkspaceId([7; 16]),
            LobbySecret::from_bytes([42; 32]),
            InviteSecret::from_bytes([43; 32]),
            EXPIRES,
            url,
        )
        .unwrap()
    }

    fn encode(payload: &[u8]) -> String {
        bech32::encode_lower::<Bech32m>(HRP, payload).unwrap()
    }

    #[test]
    fn round_trip_and_length() {
        let inv = invite("wss://relay.example.com/v1");
        let token = inv.to_token();
        assert!(token.starts_with("cueinv1"));
        assert_eq!(token.len(), inv.token_len());
        let back = Invite::parse(&token).unwrap();
        assert_eq!(back, inv);
        assert_eq!(back.workspace_id(), WorkspaceId([7; 16]));
        assert_eq!(back.lobby().as_bytes(), &[42; 32]);
        assert_eq!(back.secret().as_bytes(), &[43; 32]);
        assert_eq!(back.expires_at(), EXPIRES);
        assert_eq!(back.relay_url(), "wss://relay.example.com/v1");
        assert!(!back.is_expired(EXPIRES - 1));
        assert!(back.is_expired(EXPIRES));
        assert_eq!(
            Invite::parse(&token.to_uppercase()).unwrap(),
            inv,
            "all upper case is fine"
        );
        assert_eq!(Invite::parse(&format!("  {}\n", *token)).unwrap(), inv);
    }

    #[test]
    fn longest_url_fits() {
        let url = format!("ws://{}", "a".repeat(MAX_RELAY_URL_LEN - 5));
        let inv = invite(&url);
        let token = inv.to_token();
        assert!(token.len() <= 1023, "{}", token.len());
        assert_eq!(token.len(), MAX_TOKEN_LEN);
        assert_eq!(Invite::parse(&token).unwrap(), inv);
        assert_eq!(MIN_TOKEN_LEN, invite("ws://a").token_len());
        // The numbers the module documentation gives.
        assert_eq!((MIN_TOKEN_LEN, MAX_TOKEN_LEN), (165, 975));
        assert!(token_len_for(FIXED_PAYLOAD + 542) <= 1023);
        assert!(token_len_for(FIXED_PAYLOAD + 543) > 1023);
    }

    #[test]
    fn errors_name_the_problem() {
        let token = invite("ws://127.0.0.1:8080").to_token();
        assert_eq!(Invite::parse(""), Err(InviteError::Empty));
        assert_eq!(
            Invite::parse(&token.replace("cueinv1", "cuenv1x")),
            Err(InviteError::WrongPrefix)
        );
        assert_eq!(Invite::parse("hello"), Err(InviteError::WrongPrefix));
        // A character outside the alphabet, located.
        let mut bad = token.to_string();
        bad.replace_range(20..21, "b");
        assert_eq!(
            Invite::parse(&bad),
            Err(InviteError::BadCharacter {
                found: 'b',
                position: 21
            })
        );
        // A substituted valid character: the checksum catches it and locates it.
        let mut typo = token.to_string();
        let c = typo.as_bytes()[30];
        let other = if c == b'q' { "p" } else { "q" };
        typo.replace_range(30..31, other);
        assert_eq!(
            Invite::parse(&typo),
            Err(InviteError::BadChecksum {
                likely_position: Some(31)
            })
        );
        // Cut short: below the minimum is truncation; a little shorter fails the checksum.
        assert!(matches!(
            Invite::parse(&token[..60]),
            Err(InviteError::Truncated { len: 60 })
        ));
        assert!(matches!(
            Invite::parse(&token[..token.len() - 3]),
            Err(InviteError::BadChecksum { .. })
        ));
        let mut mixed = token.to_string();
        mixed.replace_range(10..11, &mixed[10..11].to_uppercase());
        assert_eq!(Invite::parse(&mixed), Err(InviteError::MixedCase));
        let long = format!("{}{}", *token, "q".repeat(1000));
        assert!(matches!(
            Invite::parse(&long),
            Err(InviteError::TooLong { .. })
        ));
    }

    #[test]
    fn corrector_regression() {
        // Made bech32 0.12's own corrector panic; ours must just answer.
        let token = "cueinv1q88uwen8lgqnf5cvat8rtspzmnpccu8f3959hvekznwptxhx892fq0wgsnhwden5te0wfjkccte9ejhsctdwpkx2tnrdakj77q3rntvu";
        assert!(matches!(
            Invite::parse(token),
            Err(InviteError::Truncated { .. } | InviteError::BadChecksum { .. })
        ));
        // The same shape at the length of a version 2 token.
        let long = format!("{token}{}", "q".repeat(MIN_TOKEN_LEN - token.len()));
        assert!(matches!(
            Invite::parse(&long),
            Err(InviteError::BadChecksum { .. })
        ));
    }

    #[test]
    fn every_single_typo_is_located() {
        let token = invite("wss://relay.example.com:8443/cue").to_token();
        for i in INVITE_PREFIX.len()..token.len() {
            for &c in CHARSET {
                if c == token.as_bytes()[i] {
                    continue;
                }
                let mut typo = token.as_bytes().to_vec();
                typo[i] = c;
                let typo = String::from_utf8(typo).unwrap();
                assert_eq!(
                    Invite::parse(&typo),
                    Err(InviteError::BadChecksum {
                        likely_position: Some(i + 1)
                    }),
                    "{i} {}",
                    c as char
                );
            }
        }
    }

    #[test]
    fn version_expiry_and_url_are_checked() {
        let mut payload = vec![3];
        payload.extend_from_slice(&[7; 16]);
        payload.extend_from_slice(&[42; 32]);
        payload.extend_from_slice(&[43; 32]);
        payload.extend_from_slice(&EXPIRES.to_be_bytes());
        payload.extend_from_slice(b"ws://relay");
        assert_eq!(
            Invite::parse(&encode(&payload)),
            Err(InviteError::UnsupportedVersion(3))
        );
        payload[0] = 2;
        assert_eq!(
            Invite::parse(&encode(&payload)).unwrap(),
            invite("ws://relay")
        );
        let expiry_at = 1 + 16 + 32 + 32;
        let mut no_expiry = payload.clone();
        no_expiry[expiry_at..expiry_at + 8].copy_from_slice(&[0; 8]);
        assert_eq!(
            Invite::parse(&encode(&no_expiry)),
            Err(InviteError::Corrupted)
        );
        let n = payload.len();
        let mut http = payload.clone();
        http[n - 10..n - 5].copy_from_slice(b"http:");
        assert_eq!(
            Invite::parse(&encode(&http)),
            Err(InviteError::BadUrl(RelayUrlError::Scheme))
        );
        let mut not_utf8 = payload.clone();
        not_utf8[n - 1] = 0xff;
        assert_eq!(
            Invite::parse(&encode(&not_utf8)),
            Err(InviteError::BadUrl(RelayUrlError::BadCharacter))
        );
        // A version 2 payload with no room for its fixed fields, padded to a plausible
        // token length by a long "URL" would be needed to pass the length check: a short
        // one is reported as cut short.
        assert!(matches!(
            Invite::parse(&encode(&payload[..40])),
            Err(InviteError::Truncated { .. })
        ));
        assert_eq!(
            Invite::new(
                WorkspaceId([7; 16]),
                LobbySecret::from_bytes([1; 32]),
                InviteSecret::from_bytes([2; 32]),
                0,
                "ws://x"
            ),
            Err(InviteError::NoExpiry)
        );
    }

    #[test]
    fn version_1_tokens_are_outdated() {
        // version 1 | workspace id | workspace secret | URL, short and long.
        for url in [
            "ws://a",
            "wss://relay.example.com:8443/a/rather/long/path/for/v1",
        ] {
            let mut payload = vec![1];
            payload.extend_from_slice(&[7; 16]);
            payload.extend_from_slice(&[42; 32]);
            payload.extend_from_slice(url.as_bytes());
            let err = Invite::parse(&encode(&payload)).unwrap_err();
            assert_eq!(err, InviteError::Outdated, "{url}");
            assert_eq!(
                err.to_string(),
                "this invite was made by an older cue and can no longer be used: ask for a \
                 new one (`cue sync invite`)"
            );
        }
        let mut long = vec![1];
        long.extend_from_slice(&[7; 200]);
        assert_eq!(Invite::parse(&encode(&long)), Err(InviteError::Outdated));
    }

    #[test]
    fn relay_urls() {
        for ok in [
            "ws://127.0.0.1:8080",
            "wss://relay.example.com",
            "wss://relay.example.com:443/path?x=1",
            "ws://[::1]:8080",
            "ws://user@host",
        ] {
            assert_eq!(validate_relay_url(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_relay_url("http://x"), Err(RelayUrlError::Scheme));
        assert_eq!(validate_relay_url("ws://"), Err(RelayUrlError::NoHost));
        assert_eq!(validate_relay_url("ws://:80"), Err(RelayUrlError::NoHost));
        assert_eq!(validate_relay_url("ws://[]:80"), Err(RelayUrlError::NoHost));
        assert_eq!(
            validate_relay_url("ws://a b"),
            Err(RelayUrlError::BadCharacter)
        );
        assert_eq!(
            validate_relay_url("ws://é"),
            Err(RelayUrlError::BadCharacter)
        );
    }

    #[test]
    fn debug_hides_the_secrets() {
        let inv = invite("ws://x");
        for dbg in [
            format!("{inv:?}"),
            format!("{:?}", inv.lobby()),
            format!("{:?}", inv.secret()),
        ] {
            assert!(
                !dbg.contains("2a2a2a")
                    && !dbg.contains("42, 42")
                    && !dbg.contains("2b2b2b")
                    && !dbg.contains("43, 43"),
                "{dbg}"
            );
        }
    }

    #[test]
    fn lobby_secrets() {
        let first = WorkspaceSecret::from_bytes([9; 32]);
        let legacy = LobbySecret::derive_legacy(&first);
        assert_eq!(legacy, LobbySecret::derive_legacy(&first));
        assert_ne!(legacy.as_bytes(), first.as_bytes());
        assert_ne!(
            legacy,
            LobbySecret::derive_legacy(&WorkspaceSecret::from_bytes([8; 32]))
        );
        // The lobby is another room than the workspace's.
        assert_ne!(
            legacy.keys().room_id(),
            WorkspaceKeys::derive(&first).room_id()
        );
        assert_eq!(legacy.keys().room_id(), legacy.clone().keys().room_id());
        assert_ne!(
            LobbySecret::generate().unwrap(),
            LobbySecret::generate().unwrap()
        );
    }

    #[test]
    fn invite_ids_and_proofs() {
        let secret = InviteSecret::from_bytes([1; 32]);
        let other = InviteSecret::from_bytes([2; 32]);
        let id = secret.id();
        assert_eq!(id, secret.id());
        assert_ne!(id, other.id());
        assert_ne!(&id.0[..], &secret.as_bytes()[..16]);
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(id.short(), text[..8]);
        assert_eq!(text.parse::<InviteId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<InviteId>().unwrap(), id);
        assert!("abcd".parse::<InviteId>().is_err());
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        assert_eq!(postcard::to_allocvec(&id).unwrap().len(), 16);
        assert!(format!("{secret:?}").contains(&id.short()));

        let room = LobbySecret::from_bytes([3; 32]).keys().room_id();
        let other_room = LobbySecret::from_bytes([4; 32]).keys().room_id();
        let dev = DeviceKey::from_bytes(&[5; 32]).device_id();
        let other_dev = DeviceKey::from_bytes(&[6; 32]).device_id();
        let proof = secret.proof(&room, &dev, "laptop");
        assert!(secret.verify_proof(&room, &dev, "laptop", &proof));
        assert!(!other.verify_proof(&room, &dev, "laptop", &proof));
        assert!(!secret.verify_proof(&other_room, &dev, "laptop", &proof));
        assert!(!secret.verify_proof(&room, &other_dev, "laptop", &proof));
        assert!(!secret.verify_proof(&room, &dev, "laptop2", &proof));
        let mut altered = proof;
        altered[31] ^= 1;
        assert!(!secret.verify_proof(&room, &dev, "laptop", &altered));
        assert_ne!(secret.proof(&room, &dev, ""), proof);
    }
}
