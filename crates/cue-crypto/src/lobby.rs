//! Lobby messages: what joining devices and members say in a workspace's lobby room.
//!
//! The lobby is a second relay room per workspace, keyed by the constant
//! [`LobbySecret`](crate::LobbySecret). Its messages travel in ordinary envelopes of type
//! [`MessageType::Lobby`](crate::MessageType::Lobby), sealed under the lobby's payload
//! key and signed by their sender. That key is known to every invite holder and to
//! removed devices, so nothing here relies on it for secrecy: workspace secrets travel
//! only sealed to one device ([`seal_secret`]), join requests carry a proof of one invite,
//! and rotation records carry their own signatures.
//!
//! Encoding: a version byte ([`LOBBY_VERSION`]), then the message in postcard. Every
//! length is bounded on decode: names by [`validate_device_name`], at most
//! [`MAX_LOBBY_RECORDS`] records of at most [`MAX_ROTATION_LEN`] bytes each, reasons of at
//! most [`MAX_REASON_LEN`] bytes, sealed secrets of exactly [`SEALED_SECRET_LEN`] bytes.

use std::fmt;

use cue_proto::RoomId;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::admission::{DeviceNameError, validate_device_name};
use crate::invite::InviteId;
use crate::keys::{DeviceId, DeviceKey, WorkspaceSecret};
use crate::rotation::MAX_ROTATION_LEN;
use crate::sealed::{SEALED_OVERHEAD, SealedError, open_sealed, seal_to};

/// Version byte of the lobby message encoding.
pub const LOBBY_VERSION: u8 = 1;
/// Most rotation records one [`LobbyMessage::Records`] carries.
pub const MAX_LOBBY_RECORDS: usize = 256;
/// Longest refusal reason, in bytes.
pub const MAX_REASON_LEN: usize = 512;
/// The length of a sealed workspace secret: the box overhead and 32 bytes.
pub const SEALED_SECRET_LEN: usize = SEALED_OVERHEAD + 32;
/// Domain tag of a sealed secret's associated data.
const SECRET_AAD_DOMAIN: &[u8] = b"cue/v1/lobby-secret\0";

/// Why a lobby message was refused. Every variant means "drop and count".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LobbyError {
    /// No bytes at all.
    #[error("empty lobby message")]
    Empty,
    /// A version this build does not read.
    #[error("lobby message version {0} is not supported: upgrade cue")]
    UnsupportedVersion(u8),
    /// Not a lobby message of this version (unknown kind, cut short, trailing bytes, too
    /// many records, a record too long).
    #[error("malformed lobby message: {0}")]
    Malformed(String),
    /// A join request's name breaks the rules.
    #[error(transparent)]
    BadName(#[from] DeviceNameError),
    /// A refusal reason over [`MAX_REASON_LEN`] bytes.
    #[error("lobby refusal reason of {0} bytes exceeds {MAX_REASON_LEN}")]
    ReasonTooLong(usize),
    /// A sealed secret of another length than [`SEALED_SECRET_LEN`].
    #[error("sealed secret of {0} bytes; {SEALED_SECRET_LEN} expected")]
    BadSealedLength(usize),
}

/// One message in a workspace's lobby. The envelope's authenticated sender is the
/// speaker: a join request's sender is the joining device.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LobbyMessage {
    /// A device asks to join with an invite: the invite's id, the name it asks for, and
    /// [`InviteSecret::proof`](crate::InviteSecret::proof) over (lobby room, sender, name).
    JoinRequest {
        /// Which invite.
        invite: InviteId,
        /// The name asked for (validated).
        name: String,
        /// The proof of holding the invite.
        proof: [u8; 32],
    },
    /// The workspace secret of `generation`, sealed to the envelope's recipient with
    /// [`seal_secret`]; open it with [`open_secret`].
    Secret {
        /// The generation of the secret.
        generation: u32,
        /// The hash of that generation's winning rotation record; zeros for generation 0.
        winner: [u8; 32],
        /// The sealed secret, [`SEALED_SECRET_LEN`] bytes.
        sealed: Vec<u8>,
    },
    /// A join request refused, with the reason in words for the user.
    Refused {
        /// Which invite.
        invite: InviteId,
        /// Why, for the user (at most [`MAX_REASON_LEN`] bytes).
        reason: String,
    },
    /// Which generation the sender is at, so that a device left behind asks for its
    /// secret and the records.
    Hello {
        /// The sender's generation.
        generation: u32,
        /// Its winning record's hash; zeros for generation 0.
        winner: [u8; 32],
    },
    /// Encoded [`RotationRecord`](crate::RotationRecord)s, at most [`MAX_LOBBY_RECORDS`]
    /// (decode and verify each).
    Records {
        /// The encoded records.
        #[serde(deserialize_with = "bounded_records")]
        records: Vec<Vec<u8>>,
    },
    /// The answer to a join request: the secret of `generation` sealed to the joining
    /// device as in [`LobbyMessage::Secret`], with a proof made with the invite's secret
    /// over the sealed box ([`seal_admission`]), so that the joining device knows the
    /// answer comes from the invite's maker and not from whoever else is in the lobby.
    Admitted {
        /// Which invite.
        invite: InviteId,
        /// The generation of the secret.
        generation: u32,
        /// The hash of that generation's winning rotation record; zeros for generation 0.
        winner: [u8; 32],
        /// The sealed secret, [`SEALED_SECRET_LEN`] bytes.
        sealed: Vec<u8>,
        /// [`InviteSecret::proof`](crate::InviteSecret::proof) over the box.
        proof: [u8; 32],
    },
}

impl fmt::Debug for LobbyMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LobbyMessage::JoinRequest { invite, name, .. } => f
                .debug_struct("JoinRequest")
                .field("invite", invite)
                .field("name", name)
                .finish_non_exhaustive(),
            LobbyMessage::Secret {
                generation,
                winner,
                sealed,
            } => f
                .debug_struct("Secret")
                .field("generation", generation)
                .field("winner", &hex::encode(&winner[..4]))
                .field("sealed_len", &sealed.len())
                .finish(),
            LobbyMessage::Refused { invite, reason } => f
                .debug_struct("Refused")
                .field("invite", invite)
                .field("reason", reason)
                .finish(),
            LobbyMessage::Hello { generation, winner } => f
                .debug_struct("Hello")
                .field("generation", generation)
                .field("winner", &hex::encode(&winner[..4]))
                .finish(),
            LobbyMessage::Records { records } => f
                .debug_struct("Records")
                .field("count", &records.len())
                .finish(),
            LobbyMessage::Admitted {
                invite, generation, ..
            } => f
                .debug_struct("Admitted")
                .field("invite", invite)
                .field("generation", generation)
                .finish_non_exhaustive(),
        }
    }
}

/// Deserialises at most [`MAX_LOBBY_RECORDS`] records of at most [`MAX_ROTATION_LEN`]
/// bytes, failing as soon as either bound is passed: a message of many tiny records
/// must not make the decoder allocate far more than the message's size.
fn bounded_records<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    struct Records;
    impl<'de> Visitor<'de> for Records {
        type Value = Vec<Vec<u8>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "at most {MAX_LOBBY_RECORDS} records of at most {MAX_ROTATION_LEN} bytes"
            )
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            use serde::de::Error;
            let hint = seq.size_hint().unwrap_or(0);
            if hint > MAX_LOBBY_RECORDS {
                return Err(A::Error::invalid_length(hint, &self));
            }
            let mut out = Vec::with_capacity(hint);
            while let Some(record) = seq.next_element::<Vec<u8>>()? {
                if out.len() == MAX_LOBBY_RECORDS || record.len() > MAX_ROTATION_LEN {
                    return Err(A::Error::invalid_length(out.len() + 1, &self));
                }
                out.push(record);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Records)
}

impl LobbyMessage {
    /// The wire form: the plaintext of a [`MessageType::Lobby`](crate::MessageType::Lobby)
    /// envelope.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising these types into a Vec cannot fail (no maps, no unsized sequences);
        // a failure would be a bug in postcard.
        postcard::to_extend(self, vec![LOBBY_VERSION])
            .expect("postcard serialises a LobbyMessage into a Vec")
    }

    /// Parses the wire form and checks every bound. Sealed secrets, proofs and records
    /// are not checked here: that needs keys ([`open_secret`],
    /// [`InviteSecret::verify_proof`](crate::InviteSecret::verify_proof),
    /// [`RotationRecord::verify`](crate::RotationRecord::verify)).
    pub fn decode(bytes: &[u8]) -> Result<LobbyMessage, LobbyError> {
        let (&version, rest) = bytes.split_first().ok_or(LobbyError::Empty)?;
        if version != LOBBY_VERSION {
            return Err(LobbyError::UnsupportedVersion(version));
        }
        let (message, trailing) = postcard::take_from_bytes::<LobbyMessage>(rest)
            .map_err(|e| LobbyError::Malformed(e.to_string()))?;
        if !trailing.is_empty() {
            return Err(LobbyError::Malformed(format!(
                "{} trailing bytes",
                trailing.len()
            )));
        }
        match &message {
            LobbyMessage::JoinRequest { name, .. } => validate_device_name(name)?,
            LobbyMessage::Secret { sealed, .. } | LobbyMessage::Admitted { sealed, .. }
                if sealed.len() != SEALED_SECRET_LEN =>
            {
                return Err(LobbyError::BadSealedLength(sealed.len()));
            }
            LobbyMessage::Refused { reason, .. } if reason.len() > MAX_REASON_LEN => {
                return Err(LobbyError::ReasonTooLong(reason.len()));
            }
            _ => {}
        }
        Ok(message)
    }
}

/// The associated data of a sealed secret: the lobby room, the recipient, the generation
/// and its winning record, so a box cannot be replayed to another device, into another
/// workspace's lobby, or as another generation's secret.
fn secret_aad(
    lobby_room: &RoomId,
    recipient: &DeviceId,
    generation: u32,
    winner: &[u8; 32],
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SECRET_AAD_DOMAIN.len() + 32 + 32 + 4 + 32);
    aad.extend_from_slice(SECRET_AAD_DOMAIN);
    aad.extend_from_slice(&lobby_room.0);
    aad.extend_from_slice(&recipient.0);
    aad.extend_from_slice(&generation.to_be_bytes());
    aad.extend_from_slice(winner);
    aad
}

/// `secret` sealed to `recipient`, bound to the lobby, the recipient and the generation.
fn seal_box(
    recipient: &DeviceId,
    lobby_room: &RoomId,
    generation: u32,
    winner: &[u8; 32],
    secret: &WorkspaceSecret,
) -> Result<Vec<u8>, SealedError> {
    let aad = secret_aad(lobby_room, recipient, generation, winner);
    seal_to(recipient, secret.as_bytes(), &aad)
}

/// The [`LobbyMessage::Secret`] handing `secret`, the workspace secret of `generation`
/// (whose winning record hashes to `winner`, zeros for generation 0), to `recipient`.
/// Send it as a direct envelope to that device.
pub fn seal_secret(
    recipient: &DeviceId,
    lobby_room: &RoomId,
    generation: u32,
    winner: [u8; 32],
    secret: &WorkspaceSecret,
) -> Result<LobbyMessage, SealedError> {
    let sealed = seal_box(recipient, lobby_room, generation, &winner, secret)?;
    Ok(LobbyMessage::Secret {
        generation,
        winner,
        sealed,
    })
}

/// Opens the fields of a [`LobbyMessage::Secret`] received by `device` in the lobby
/// `lobby_room`. Fails with [`SealedError::Decrypt`] if the box was sealed to another
/// device, for another generation or winner, altered, or does not hold 32 bytes.
pub fn open_secret(
    device: &DeviceKey,
    lobby_room: &RoomId,
    generation: u32,
    winner: &[u8; 32],
    sealed: &[u8],
) -> Result<WorkspaceSecret, SealedError> {
    let aad = secret_aad(lobby_room, &device.device_id(), generation, winner);
    let plaintext = open_sealed(device, sealed, &aad)?;
    let bytes: [u8; 32] = plaintext
        .as_slice()
        .try_into()
        .map_err(|_| SealedError::Decrypt)?;
    Ok(WorkspaceSecret::from_bytes(bytes))
}

/// What an admission's proof covers besides the lobby room and the recipient: the
/// generation, its winner and the sealed box.
fn admission_statement(generation: u32, winner: &[u8; 32], sealed: &[u8]) -> String {
    use sha2::Digest;
    format!(
        "admitted {generation} {} {}",
        hex::encode(winner),
        hex::encode(sha2::Sha256::digest(sealed))
    )
}

/// The [`LobbyMessage::Admitted`] answering `recipient`'s join request with `invite`:
/// the secret of `generation` sealed to it, and the invite's proof over the box.
pub fn seal_admission(
    invite: &crate::InviteSecret,
    recipient: &DeviceId,
    lobby_room: &RoomId,
    generation: u32,
    winner: [u8; 32],
    secret: &WorkspaceSecret,
) -> Result<LobbyMessage, SealedError> {
    let sealed = seal_box(recipient, lobby_room, generation, &winner, secret)?;
    let proof = invite.proof(
        lobby_room,
        recipient,
        &admission_statement(generation, &winner, &sealed),
    );
    Ok(LobbyMessage::Admitted {
        invite: invite.id(),
        generation,
        winner,
        sealed,
        proof,
    })
}

/// Opens a [`LobbyMessage::Admitted`] received by `device`, which asked with `invite`:
/// the proof must be the invite's over this box (else [`SealedError::Decrypt`]: it is
/// not from the invite's maker), then the box opens as [`open_secret`]'s does.
pub fn open_admission(
    device: &DeviceKey,
    invite: &crate::InviteSecret,
    lobby_room: &RoomId,
    generation: u32,
    winner: &[u8; 32],
    sealed: &[u8],
    proof: &[u8; 32],
) -> Result<WorkspaceSecret, SealedError> {
    let statement = admission_statement(generation, winner, sealed);
    if !invite.verify_proof(lobby_room, &device.device_id(), &statement, proof) {
        return Err(SealedError::Decrypt);
    }
    open_secret(device, lobby_room, generation, winner, sealed)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::invite::{InviteSecret, LobbySecret};
    use crate::keys::WorkspaceId;
    use crate::rotation::RotationRecord;

    fn room() -> RoomId {
        LobbySecret::from_bytes([1; 32]).keys().room_id()
    }

    fn samples() -> Vec<LobbyMessage> {
        let joiner = DeviceKey::from_bytes(&[2; 32]);
        let invite = InviteSecret::from_bytes([3; 32]);
        let record = RotationRecord::create(
            WorkspaceId([4; 16]),
            1,
            [0; 32],
            &DeviceKey::from_bytes(&[5; 32]),
            1,
            &[joiner.device_id()],
        );
        vec![
            LobbyMessage::JoinRequest {
                invite: invite.id(),
                name: "laptop".into(),
                proof: invite.proof(&room(), &joiner.device_id(), "laptop"),
            },
            seal_secret(
                &joiner.device_id(),
                &room(),
                2,
                [6; 32],
                &WorkspaceSecret::from_bytes([7; 32]),
            )
            .unwrap(),
            LobbyMessage::Refused {
                invite: invite.id(),
                reason: "this invite has expired: ask for a new one".into(),
            },
            LobbyMessage::Hello {
                generation: 0,
                winner: [0; 32],
            },
            LobbyMessage::Records {
                records: vec![record.encode(), record.encode()],
            },
            LobbyMessage::Records { records: vec![] },
        ]
    }

    #[test]
    fn round_trips() {
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(bytes[0], LOBBY_VERSION);
            assert_eq!(LobbyMessage::decode(&bytes).unwrap(), m, "{m:?}");
            for n in 0..bytes.len() {
                assert!(
                    LobbyMessage::decode(&bytes[..n]).is_err(),
                    "{m:?} cut at {n}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert!(matches!(
                LobbyMessage::decode(&long),
                Err(LobbyError::Malformed(_))
            ));
            let mut v = bytes.clone();
            v[0] = 2;
            assert_eq!(
                LobbyMessage::decode(&v),
                Err(LobbyError::UnsupportedVersion(2))
            );
        }
        assert_eq!(LobbyMessage::decode(&[]), Err(LobbyError::Empty));
        assert!(matches!(
            LobbyMessage::decode(&[LOBBY_VERSION, 9]),
            Err(LobbyError::Malformed(_))
        ));
    }

    #[test]
    fn bounds() {
        let id = InviteSecret::from_bytes([3; 32]).id();
        let bad_name = LobbyMessage::JoinRequest {
            invite: id,
            name: "my laptop".into(),
            proof: [0; 32],
        };
        assert_eq!(
            LobbyMessage::decode(&bad_name.encode()),
            Err(LobbyError::BadName(DeviceNameError::BadCharacter(' ')))
        );
        let long_name = LobbyMessage::JoinRequest {
            invite: id,
            name: "a".repeat(65),
            proof: [0; 32],
        };
        assert!(matches!(
            LobbyMessage::decode(&long_name.encode()),
            Err(LobbyError::BadName(DeviceNameError::TooLong(65)))
        ));
        let reason = |n| LobbyMessage::Refused {
            invite: id,
            reason: "x".repeat(n),
        };
        assert!(LobbyMessage::decode(&reason(MAX_REASON_LEN).encode()).is_ok());
        assert_eq!(
            LobbyMessage::decode(&reason(MAX_REASON_LEN + 1).encode()),
            Err(LobbyError::ReasonTooLong(MAX_REASON_LEN + 1))
        );
        let sealed = LobbyMessage::Secret {
            generation: 1,
            winner: [0; 32],
            sealed: vec![0; SEALED_SECRET_LEN + 1],
        };
        assert_eq!(
            LobbyMessage::decode(&sealed.encode()),
            Err(LobbyError::BadSealedLength(SEALED_SECRET_LEN + 1))
        );
        let records = |count, len| LobbyMessage::Records {
            records: vec![vec![1u8; len]; count],
        };
        let max = records(MAX_LOBBY_RECORDS, 10);
        assert_eq!(LobbyMessage::decode(&max.encode()).unwrap(), max);
        assert!(matches!(
            LobbyMessage::decode(&records(MAX_LOBBY_RECORDS + 1, 0).encode()),
            Err(LobbyError::Malformed(_))
        ));
        assert!(LobbyMessage::decode(&records(1, MAX_ROTATION_LEN).encode()).is_ok());
        assert!(matches!(
            LobbyMessage::decode(&records(1, MAX_ROTATION_LEN + 1).encode()),
            Err(LobbyError::Malformed(_))
        ));
        // A count prefix claiming millions of records is refused before any allocation.
        let mut huge = vec![LOBBY_VERSION, 4];
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(
            LobbyMessage::decode(&huge),
            Err(LobbyError::Malformed(_))
        ));
    }

    #[test]
    fn sealed_secrets_are_bound_to_their_context() {
        let alice = DeviceKey::from_bytes(&[2; 32]);
        let bob = DeviceKey::from_bytes(&[8; 32]);
        let secret = WorkspaceSecret::from_bytes([7; 32]);
        let msg = seal_secret(&alice.device_id(), &room(), 2, [6; 32], &secret).unwrap();
        let LobbyMessage::Secret {
            generation,
            winner,
            sealed,
        } = LobbyMessage::decode(&msg.encode()).unwrap()
        else {
            panic!("not a secret: {msg:?}");
        };
        assert_eq!(sealed.len(), SEALED_SECRET_LEN);
        let opened = open_secret(&alice, &room(), generation, &winner, &sealed).unwrap();
        assert_eq!(opened, secret);
        let other_room = LobbySecret::from_bytes([9; 32]).keys().room_id();
        for result in [
            open_secret(&bob, &room(), 2, &winner, &sealed),
            open_secret(&alice, &other_room, 2, &winner, &sealed),
            open_secret(&alice, &room(), 3, &winner, &sealed),
            open_secret(&alice, &room(), 2, &[0; 32], &sealed),
        ] {
            assert_eq!(result, Err(SealedError::Decrypt));
        }
        assert!(!format!("{msg:?}").contains("0707"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = LobbyMessage::decode(&bytes);
        }

        #[test]
        fn decode_of_mutated_messages_never_panics(
            which in 0usize..6,
            i in any::<prop::sample::Index>(),
            x in 1u8..,
        ) {
            let mut bytes = samples()[which].encode();
            let at = i.index(bytes.len());
            bytes[at] ^= x;
            if let Ok(m) = LobbyMessage::decode(&bytes) {
                // Whatever decodes re-encodes to a message that decodes the same.
                prop_assert_eq!(LobbyMessage::decode(&m.encode()), Ok(m));
            }
        }
    }

    /// Only the invite's maker can make an answer the joining device takes: a box sealed
    /// by anyone else (a former member in the lobby) has no valid proof.
    #[test]
    fn an_admission_is_taken_only_with_the_invites_proof() {
        let joiner = DeviceKey::from_bytes(&[3; 32]);
        let room = RoomId([4; 32]);
        let invite = crate::InviteSecret::from_bytes([5; 32]);
        let secret = WorkspaceSecret::from_bytes([6; 32]);
        let msg =
            seal_admission(&invite, &joiner.device_id(), &room, 2, [7; 32], &secret).expect("seal");
        let back = LobbyMessage::decode(&msg.encode()).expect("decode");
        let LobbyMessage::Admitted {
            generation,
            winner,
            sealed,
            proof,
            ..
        } = back
        else {
            panic!("not an admission");
        };
        let opened = open_admission(
            &joiner, &invite, &room, generation, &winner, &sealed, &proof,
        )
        .expect("open");
        assert_eq!(opened.as_bytes(), secret.as_bytes());
        // Someone without the invite secret: a box of its own, any proof.
        let other = crate::InviteSecret::from_bytes([9; 32]);
        let forged =
            seal_admission(&other, &joiner.device_id(), &room, 2, [7; 32], &secret).expect("seal");
        let LobbyMessage::Admitted { sealed, proof, .. } = forged else {
            panic!("not an admission");
        };
        assert!(open_admission(&joiner, &invite, &room, 2, &[7; 32], &sealed, &proof).is_err());
        assert!(open_admission(&joiner, &invite, &room, 3, &[7; 32], &sealed, &proof).is_err());
    }
}
