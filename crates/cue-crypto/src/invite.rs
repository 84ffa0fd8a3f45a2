//! Invite tokens: one line a user pastes to join a workspace.
//!
//! `cueinv1` + bech32m data: `version (1) | workspace id (16) | workspace secret (32) |
//! relay URL (the rest, UTF-8)`. Bech32m keeps the token to one case-insensitive word
//! that survives chat clients and can be read aloud, and its checksum catches typos.
//!
//! BIP-173 limits bech32 strings to 90 characters because the checksum *guarantees*
//! detecting up to 4 errors only that far; our tokens are 101 to 911 characters. The
//! same BCH code is defined up to 1023 characters (the `bech32` crate's `Bech32m` enforces
//! exactly that length, and BOLT-11 invoices use it the same way): there it still detects
//! any single error and misses a random corruption with probability about 1 in 10^9.
//! Two further checks cover the long tail: the workspace id inside must match the one
//! derived from the secret inside (a corrupted secret is caught with certainty up to
//! 2^-128), and the URL must parse. A single mistyped character is located and reported
//! by position.

use std::fmt;

use bech32::primitives::decode::{CharError, CheckedHrpstring, CheckedHrpstringError};
use bech32::{Bech32m, Hrp};
use zeroize::Zeroizing;

use crate::keys::{WorkspaceId, WorkspaceKeys, WorkspaceSecret};

/// The token format this build writes.
pub const INVITE_VERSION: u8 = 1;
/// Every token starts with this.
pub const INVITE_PREFIX: &str = "cueinv1";
const HRP: Hrp = Hrp::parse_unchecked("cueinv");
const FIXED_PAYLOAD: usize = 1 + 16 + 32;
/// Longest relay URL an invite carries; keeps tokens under the checksum's 1023 characters.
pub const MAX_RELAY_URL_LEN: usize = 512;
const SHORTEST_URL: &str = "ws://a";
const CHECKSUM_CHARS: usize = 6;
const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// The length of the token for a payload of `payload_len` bytes.
const fn token_len_for(payload_len: usize) -> usize {
    INVITE_PREFIX.len() + (payload_len * 8).div_ceil(5) + CHECKSUM_CHARS
}

/// Shorter than any valid token: the end was cut off.
const MIN_TOKEN_LEN: usize = token_len_for(FIXED_PAYLOAD + SHORTEST_URL.len());

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
    /// A token from a newer (or unknown) version of cue.
    #[error(
        "this invite is format version {0}; this cue reads version {INVITE_VERSION}: upgrade cue"
    )]
    UnsupportedVersion(u8),
    /// The checksum passed but the content is inconsistent.
    #[error("the invite token is corrupted (its workspace id does not match its secret)")]
    Corrupted,
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

/// Everything needed to join a workspace: its secret and where its relay is.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    secret: WorkspaceSecret,
    relay_url: String,
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite")
            .field("workspace_id", &self.workspace_id())
            .field("relay_url", &self.relay_url)
            .finish_non_exhaustive()
    }
}

impl Invite {
    /// An invite to the workspace of `secret` through the relay at `relay_url`.
    pub fn new(secret: WorkspaceSecret, relay_url: &str) -> Result<Self, InviteError> {
        validate_relay_url(relay_url)?;
        Ok(Self {
            secret,
            relay_url: relay_url.to_owned(),
        })
    }

    /// The workspace secret.
    pub fn secret(&self) -> &WorkspaceSecret {
        &self.secret
    }

    /// The relay URL.
    pub fn relay_url(&self) -> &str {
        &self.relay_url
    }

    /// The workspace id, derived from the secret.
    pub fn workspace_id(&self) -> WorkspaceId {
        WorkspaceKeys::derive(&self.secret).workspace_id()
    }

    /// The exact length of [`Invite::to_token`]'s output.
    pub fn token_len(&self) -> usize {
        token_len_for(FIXED_PAYLOAD + self.relay_url.len())
    }

    /// The one-line token. It holds the secret: show it only to the user who asked.
    pub fn to_token(&self) -> Zeroizing<String> {
        let mut payload = Zeroizing::new(Vec::with_capacity(FIXED_PAYLOAD + self.relay_url.len()));
        payload.push(INVITE_VERSION);
        payload.extend_from_slice(&self.workspace_id().0);
        payload.extend_from_slice(self.secret.as_bytes());
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
            return Err(InviteError::Truncated { len });
        }
        if len > token_len_for(FIXED_PAYLOAD + MAX_RELAY_URL_LEN) {
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
        if version != INVITE_VERSION {
            return Err(InviteError::UnsupportedVersion(version));
        }
        let (id, rest) = rest
            .split_first_chunk::<16>()
            .ok_or(InviteError::Corrupted)?;
        let (secret, url) = rest
            .split_first_chunk::<32>()
            .ok_or(InviteError::Corrupted)?;
        let secret = WorkspaceSecret::from_bytes(*secret);
        if WorkspaceKeys::derive(&secret).workspace_id().0 != *id {
            return Err(InviteError::Corrupted);
        }
        let url = std::str::from_utf8(url).map_err(|_| RelayUrlError::BadCharacter)?;
        Self::new(secret, url)
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

    fn invite(url: &str) -> Invite {
        Invite::new(WorkspaceSecret::from_bytes([42; 32]), url).unwrap()
    }

    #[test]
    fn round_trip_and_length() {
        let inv = invite("wss://relay.example.com/v1");
        let token = inv.to_token();
        assert!(token.starts_with("cueinv1"));
        assert_eq!(token.len(), inv.token_len());
        let back = Invite::parse(&token).unwrap();
        assert_eq!(back, inv);
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
        assert_eq!(Invite::parse(&token).unwrap(), inv);
        assert_eq!(MIN_TOKEN_LEN, invite("ws://a").token_len());
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
    fn version_url_and_consistency_are_checked() {
        let secret = WorkspaceSecret::from_bytes([5; 32]);
        let id = WorkspaceKeys::derive(&secret).workspace_id();
        let encode = |payload: &[u8]| bech32::encode_lower::<Bech32m>(HRP, payload).unwrap();
        let mut payload = vec![2];
        payload.extend_from_slice(&id.0);
        payload.extend_from_slice(secret.as_bytes());
        payload.extend_from_slice(b"ws://relay");
        assert_eq!(
            Invite::parse(&encode(&payload)),
            Err(InviteError::UnsupportedVersion(2))
        );
        payload[0] = 1;
        assert!(Invite::parse(&encode(&payload)).is_ok());
        payload[1] ^= 1;
        assert_eq!(
            Invite::parse(&encode(&payload)),
            Err(InviteError::Corrupted)
        );
        payload[1] ^= 1;
        let n = payload.len();
        payload[n - 10..n - 5].copy_from_slice(b"http:");
        assert_eq!(
            Invite::parse(&encode(&payload)),
            Err(InviteError::BadUrl(RelayUrlError::Scheme))
        );
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
    fn debug_hides_the_secret() {
        let inv = invite("ws://x");
        let dbg = format!("{inv:?}");
        assert!(!dbg.contains("2a2a2a") && !dbg.contains("42, 42"), "{dbg}");
    }
}
