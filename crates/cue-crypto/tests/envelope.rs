//! Envelopes end to end: every rejection path of `open`, and property round trips of
//! every decoder (envelope, invite, admission): encode then decode gives the input back,
//! and the encoded length is the one predicted.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::Fixture;
use cue_crypto::{
    Admission, AdmissionError, DeviceId, DeviceKey, EnvelopeHeader, Invite, InviteSecret,
    LobbyMessage, LobbySecret, MAX_ENVELOPE_LEN, MAX_PLAINTEXT_LEN, MessageType, OpenError,
    ReplayGuard, SIGNATURE_DOMAIN, SealError, Sealer, Stream, WorkspaceId, WorkspaceKeys,
    WorkspaceSecret, open, open_without_replay_check, sealed_len,
};
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;

/// Re-signs a (tampered) envelope with a device seed, as a malicious member could.
fn resign(bytes: &mut [u8], seed: &[u8; 32]) {
    let n = bytes.len() - 64;
    let mut message = SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(&bytes[..n]);
    let sig = SigningKey::from_bytes(seed).sign(&message).to_bytes();
    bytes[n..].copy_from_slice(&sig);
}

fn seal(f: &Fixture, from: &DeviceKey, stream: Stream, seq: u64, text: &[u8]) -> Vec<u8> {
    Sealer::new(&f.keys, from)
        .seal(MessageType::Engine, stream, seq, text)
        .unwrap()
}

fn open_as(f: &Fixture, me: &DeviceKey, bytes: &[u8]) -> Result<cue_crypto::Opened, OpenError> {
    open_without_replay_check(&f.keys, &me.device_id(), bytes, f.is_member())
}

#[test]
fn a_sealed_message_opens_for_its_recipients() {
    let f = Fixture::new();
    let bytes = seal(&f, &f.alice, Stream::Broadcast, 7, b"hello");
    assert_eq!(bytes.len(), sealed_len(5));
    let mut guard = ReplayGuard::new();
    let opened = open(
        &f.keys,
        &f.bob.device_id(),
        &mut guard,
        &bytes,
        f.is_member(),
    )
    .unwrap();
    assert_eq!(opened.plaintext, b"hello");
    assert_eq!(opened.sender, f.alice.device_id());
    assert_eq!(opened.stream, Stream::Broadcast);
    assert_eq!(opened.seq, 7);
    assert_eq!(opened.ty, MessageType::Engine);
    assert_eq!(opened.gap, None);

    let direct = seal(&f, &f.alice, Stream::Direct(f.bob.device_id()), 0, b"psst");
    assert_eq!(open_as(&f, &f.bob, &direct).unwrap().plaintext, b"psst");
}

#[test]
fn sealing_refuses_what_cannot_be_sent() {
    let f = Fixture::new();
    let sealer = Sealer::new(&f.keys, &f.alice);
    assert!(matches!(
        sealer.seal(
            MessageType::Engine,
            Stream::Direct(DeviceId([0; 32])),
            0,
            b"x"
        ),
        Err(SealError::InvalidRecipient)
    ));
    let too_big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
    assert!(matches!(
        sealer.seal(MessageType::Engine, Stream::Broadcast, 0, &too_big),
        Err(SealError::TooLarge { .. })
    ));
    // The largest plaintext still seals, and opens.
    let max = vec![7u8; MAX_PLAINTEXT_LEN];
    let bytes = sealer
        .seal(MessageType::Engine, Stream::Broadcast, 0, &max)
        .unwrap();
    assert_eq!(bytes.len(), MAX_ENVELOPE_LEN);
    assert_eq!(
        open_as(&f, &f.bob, &bytes).unwrap().plaintext.len(),
        MAX_PLAINTEXT_LEN
    );
}

#[test]
fn random_nonces_differ() {
    let f = Fixture::new();
    let a = seal(&f, &f.alice, Stream::Broadcast, 1, b"same");
    let b = seal(&f, &f.alice, Stream::Broadcast, 1, b"same");
    assert_ne!(
        a[106..130],
        b[106..130],
        "nonces must come from the OS, fresh each time"
    );
}

#[test]
fn rejects_tampered_ciphertext() {
    let f = Fixture::new();
    let mut bytes = seal(&f, &f.alice, Stream::Broadcast, 1, b"content");
    bytes[140] ^= 0x20;
    assert_eq!(open_as(&f, &f.bob, &bytes), Err(OpenError::BadSignature));
}

#[test]
fn rejects_tampered_ciphertext_even_when_re_signed() {
    // A member (holding the payload key) can sign anything; the AEAD still refuses a
    // ciphertext that was not produced under this header.
    let f = Fixture::new();
    let mut bytes = seal(&f, &f.alice, Stream::Broadcast, 1, b"content");
    bytes[140] ^= 0x20;
    resign(&mut bytes, &[1; 32]);
    assert_eq!(open_as(&f, &f.bob, &bytes), Err(OpenError::DecryptFailed));

    // Moving an envelope to another sequence number also breaks the AEAD binding.
    let mut bytes = seal(&f, &f.alice, Stream::Broadcast, 1, b"content");
    bytes[105] = 2;
    resign(&mut bytes, &[1; 32]);
    assert_eq!(open_as(&f, &f.bob, &bytes), Err(OpenError::DecryptFailed));
}

#[test]
fn rejects_unsigned_and_forged() {
    let f = Fixture::new();
    let mut bytes = seal(&f, &f.alice, Stream::Broadcast, 1, b"x");
    let n = bytes.len();
    bytes[n - 64..].fill(0);
    assert_eq!(open_as(&f, &f.bob, &bytes), Err(OpenError::BadSignature));

    // Signed by Carol but claiming to be Alice.
    let mut bytes = seal(&f, &f.alice, Stream::Broadcast, 1, b"x");
    resign(&mut bytes, &[3; 32]);
    assert_eq!(open_as(&f, &f.bob, &bytes), Err(OpenError::BadSignature));

    // A sender field that is not a curve point, or a small-order one.
    let mut bytes = seal(&f, &f.alice, Stream::Broadcast, 1, b"x");
    bytes[34..66].fill(0);
    assert_eq!(open_as(&f, &f.bob, &bytes), Err(OpenError::BadSignature));
}

#[test]
fn rejects_wrong_room() {
    let f = Fixture::new();
    let other = WorkspaceKeys::derive(&WorkspaceSecret::from_bytes([99; 32]));
    let bytes = Sealer::new(&other, &f.alice)
        .seal(MessageType::Engine, Stream::Broadcast, 1, b"x")
        .unwrap();
    assert_eq!(open_as(&f, &f.bob, &bytes), Err(OpenError::WrongRoom));
}

#[test]
fn rejects_direct_messages_for_someone_else() {
    let f = Fixture::new();
    let bytes = seal(&f, &f.alice, Stream::Direct(f.bob.device_id()), 1, b"x");
    assert_eq!(open_as(&f, &f.carol, &bytes), Err(OpenError::NotForMe));
    assert_eq!(open_as(&f, &f.alice, &bytes), Err(OpenError::NotForMe));
}

#[test]
fn rejects_non_members() {
    let f = Fixture::new();
    let bytes = seal(&f, &f.carol, Stream::Broadcast, 1, b"let me in");
    assert_eq!(
        open_as(&f, &f.bob, &bytes),
        Err(OpenError::NotMember(f.carol.device_id()))
    );
}

#[test]
fn admissions_may_come_from_non_members() {
    let f = Fixture::new();
    let carol = Sealer::new(&f.keys, &f.carol);
    let own = Admission::create(&f.lobby, &f.carol, "carol-laptop").unwrap();
    let bytes = carol
        .seal(MessageType::Admission, Stream::Broadcast, 0, &own.encode())
        .unwrap();
    let opened = open_as(&f, &f.bob, &bytes).unwrap();
    assert_eq!(opened.ty, MessageType::Admission);
    assert_eq!(Admission::decode(&opened.plaintext).unwrap(), own);

    // Someone else's admission, replayed by Carol as her own: refused.
    let dave = DeviceKey::from_bytes(&[4; 32]);
    let dave_admission = Admission::create(&f.lobby, &dave, "dave").unwrap();
    let bytes = carol
        .seal(
            MessageType::Admission,
            Stream::Broadcast,
            1,
            &dave_admission.encode(),
        )
        .unwrap();
    assert_eq!(
        open_as(&f, &f.bob, &bytes),
        Err(OpenError::NotMember(f.carol.device_id()))
    );

    // An admission bound to another lobby room opens (the envelope cannot tell which
    // room it is for), but does not verify for this workspace's lobby.
    let other = WorkspaceKeys::derive(&WorkspaceSecret::from_bytes([99; 32]));
    let foreign = Admission::create(&other.room_id(), &f.carol, "carol").unwrap();
    let bytes = carol
        .seal(
            MessageType::Admission,
            Stream::Broadcast,
            2,
            &foreign.encode(),
        )
        .unwrap();
    let opened = open_as(&f, &f.bob, &bytes).unwrap();
    assert_eq!(
        Admission::decode(&opened.plaintext)
            .unwrap()
            .verify(&f.lobby),
        Err(AdmissionError::BadSignature)
    );

    // Garbage typed as an admission.
    let bytes = carol
        .seal(MessageType::Admission, Stream::Broadcast, 3, b"garbage")
        .unwrap();
    assert_eq!(
        open_as(&f, &f.bob, &bytes),
        Err(OpenError::NotMember(f.carol.device_id()))
    );

    // A member cannot enrol somebody else either.
    let bytes = Sealer::new(&f.keys, &f.alice)
        .seal(
            MessageType::Admission,
            Stream::Broadcast,
            4,
            &dave_admission.encode(),
        )
        .unwrap();
    assert!(matches!(
        open_as(&f, &f.bob, &bytes),
        Err(OpenError::Malformed(_))
    ));

    // Without the payload key (no invite) a stranger cannot even produce one: an
    // admission sealed under another workspace's key fails the room check first and
    // the AEAD after.
    let bytes = Sealer::new(&other, &f.carol)
        .seal(MessageType::Admission, Stream::Broadcast, 5, &own.encode())
        .unwrap();
    assert_eq!(open_as(&f, &f.bob, &bytes), Err(OpenError::WrongRoom));
}

#[test]
fn lobby_messages_come_from_non_members_too() {
    let f = Fixture::new();
    let lobby = LobbySecret::from_bytes([12; 32]).keys();
    let invite = InviteSecret::from_bytes([5; 32]);
    let request = LobbyMessage::JoinRequest {
        invite: invite.id(),
        name: "carol".into(),
        proof: invite.proof(&lobby.room_id(), &f.carol.device_id(), "carol"),
    };
    let carol = Sealer::new(&lobby, &f.carol);
    let bytes = carol
        .seal(MessageType::Lobby, Stream::Broadcast, 0, &request.encode())
        .unwrap();
    let opened =
        open_without_replay_check(&lobby, &f.bob.device_id(), &bytes, f.is_member()).unwrap();
    assert_eq!(opened.ty, MessageType::Lobby);
    assert_eq!(opened.sender, f.carol.device_id());
    let Ok(LobbyMessage::JoinRequest {
        invite: id,
        name,
        proof,
    }) = LobbyMessage::decode(&opened.plaintext)
    else {
        panic!("not a join request");
    };
    assert_eq!(id, invite.id());
    assert!(invite.verify_proof(&lobby.room_id(), &opened.sender, &name, &proof));
    // Engine messages in the lobby still need a member.
    let bytes = carol
        .seal(MessageType::Engine, Stream::Broadcast, 1, b"sync me")
        .unwrap();
    assert_eq!(
        open_without_replay_check(&lobby, &f.bob.device_id(), &bytes, f.is_member()),
        Err(OpenError::NotMember(f.carol.device_id()))
    );
}

#[test]
fn rejects_replays_and_reports_gaps() {
    let f = Fixture::new();
    let bob = f.bob.device_id();
    let mut guard = ReplayGuard::new();
    let first = seal(&f, &f.alice, Stream::Broadcast, 1, b"a");
    open(&f.keys, &bob, &mut guard, &first, f.is_member()).unwrap();
    assert_eq!(
        open(&f.keys, &bob, &mut guard, &first, f.is_member()),
        Err(OpenError::Replayed {
            sender: f.alice.device_id(),
            stream: Stream::Broadcast,
            seq: 1
        })
    );
    // A fresh encryption of the same sequence number is still a replay.
    let again = seal(&f, &f.alice, Stream::Broadcast, 1, b"a");
    assert!(matches!(
        open(&f.keys, &bob, &mut guard, &again, f.is_member()),
        Err(OpenError::Replayed { .. })
    ));
    // A jump while connected is reported with the message.
    let later = seal(&f, &f.alice, Stream::Broadcast, 5, b"e");
    let opened = open(&f.keys, &bob, &mut guard, &later, f.is_member()).unwrap();
    let gap = opened.gap.unwrap();
    assert_eq!(
        (gap.sender, gap.expected, gap.got),
        (f.alice.device_id(), 2, 5)
    );
    // Rejected messages do not touch the guard.
    let mut forged = seal(&f, &f.alice, Stream::Broadcast, 6, b"f");
    let n = forged.len();
    forged[n - 1] ^= 1;
    assert!(open(&f.keys, &bob, &mut guard, &forged, f.is_member()).is_err());
    assert_eq!(
        guard.highest(&f.alice.device_id(), &Stream::Broadcast),
        Some(5)
    );
}

#[test]
fn rejects_truncated_oversized_and_malformed() {
    let f = Fixture::new();
    let bytes = seal(&f, &f.alice, Stream::Broadcast, 1, b"x");
    assert_eq!(
        open_as(&f, &f.bob, &[]),
        Err(OpenError::Truncated { len: 0 })
    );
    assert_eq!(
        open_as(&f, &f.bob, &bytes[..100]),
        Err(OpenError::Truncated { len: 100 })
    );
    let n = bytes.len();
    // One byte short or long: no longer a padding bucket.
    assert!(matches!(
        open_as(&f, &f.bob, &bytes[..n - 1]),
        Err(OpenError::Truncated { .. })
    ));
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        open_as(&f, &f.bob, &long),
        Err(OpenError::Malformed(_))
    ));
    let huge = vec![1u8; MAX_ENVELOPE_LEN + 1];
    assert_eq!(
        open_as(&f, &f.bob, &huge),
        Err(OpenError::TooLarge {
            len: MAX_ENVELOPE_LEN + 1
        })
    );
}

#[test]
fn rejects_other_versions_and_unknown_types() {
    let f = Fixture::new();
    let mut bytes = seal(&f, &f.alice, Stream::Broadcast, 1, b"x");
    bytes[0] = 2;
    assert_eq!(
        open_as(&f, &f.bob, &bytes),
        Err(OpenError::UnsupportedVersion(2))
    );
    // A future version's short message is still reported as a version problem.
    assert_eq!(
        open_as(&f, &f.bob, &[2, 0, 0]),
        Err(OpenError::UnsupportedVersion(2))
    );
    let mut bytes = seal(&f, &f.alice, Stream::Broadcast, 1, b"x");
    bytes[1] = 4;
    assert_eq!(
        open_as(&f, &f.bob, &bytes),
        Err(OpenError::UnknownMessageType(4))
    );
    let mut bytes = seal(&f, &f.alice, Stream::Broadcast, 1, b"x");
    bytes[1] = 9;
    assert_eq!(
        open_as(&f, &f.bob, &bytes),
        Err(OpenError::UnknownMessageType(9))
    );
}

#[test]
fn error_kinds_are_distinct() {
    let kinds = [
        OpenError::Truncated { len: 0 },
        OpenError::TooLarge { len: 0 },
        OpenError::Malformed(""),
        OpenError::UnsupportedVersion(0),
        OpenError::UnknownMessageType(0),
        OpenError::BadSignature,
        OpenError::WrongRoom,
        OpenError::NotForMe,
        OpenError::NotMember(DeviceId([0; 32])),
        OpenError::DecryptFailed,
        OpenError::Replayed {
            sender: DeviceId([0; 32]),
            stream: Stream::Broadcast,
            seq: 0,
        },
    ]
    .map(|e| e.kind());
    let unique: std::collections::BTreeSet<_> = kinds.iter().collect();
    assert_eq!(unique.len(), kinds.len());
}

fn stream_strategy(f: &Fixture) -> impl Strategy<Value = Stream> + use<> {
    let bob = f.bob.device_id();
    prop_oneof![Just(Stream::Broadcast), Just(Stream::Direct(bob))]
}

proptest! {
    // Failures are saved beside this file (`envelope.proptest-regressions`) and replayed
    // first on the next run; commit that file when it appears.
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn envelope_round_trip(
        plaintext in prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..2000),
            1 => proptest::collection::vec(any::<u8>(), 60_000..140_000),
        ],
        stream in stream_strategy(&Fixture::new()),
        seq in any::<u64>(),
        nonce in any::<[u8; 24]>(),
        admission_type in any::<bool>(),
    ) {
        let f = Fixture::new();
        let sealer = Sealer::new(&f.keys, &f.alice);
        let ty = if admission_type { MessageType::Admission } else { MessageType::Engine };
        let plaintext = if admission_type {
            Admission::create(&f.lobby, &f.alice, "alice").unwrap().encode()
        } else {
            plaintext
        };
        let bytes = sealer.seal_with_nonce(ty, stream, seq, nonce, &plaintext).unwrap();
        prop_assert_eq!(bytes.len(), sealed_len(plaintext.len()));
        // Deterministic given the nonce.
        prop_assert_eq!(&bytes, &sealer.seal_with_nonce(ty, stream, seq, nonce, &plaintext).unwrap());
        let header = EnvelopeHeader::parse(&bytes).unwrap();
        prop_assert_eq!(header.ty, ty);
        prop_assert_eq!(header.room, f.keys.room_id());
        prop_assert_eq!(header.sender, f.alice.device_id());
        prop_assert_eq!(header.stream, stream);
        prop_assert_eq!(header.seq, seq);
        let opened = open_as(&f, &f.bob, &bytes).unwrap();
        prop_assert_eq!(opened.plaintext, plaintext);
        prop_assert_eq!(opened.seq, seq);
        prop_assert_eq!(opened.stream, stream);
        prop_assert_eq!(opened.ty, ty);
    }

    #[test]
    fn invite_round_trip(
        workspace in any::<[u8; 16]>(),
        lobby in any::<[u8; 32]>(),
        secret in any::<[u8; 32]>(),
        expires_at in 1u64..,
        tls in any::<bool>(),
        host in "[a-z0-9][a-z0-9.-]{0,60}",
        port in proptest::option::of(1u16..),
        path in "(/[A-Za-z0-9_~%/.-]{0,80})?",
        upper in any::<bool>(),
    ) {
        let scheme = if tls { "wss" } else { "ws" };
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let url = format!("{scheme}://{host}{port}{path}");
        let invite = Invite::new(
            WorkspaceId(workspace),
            LobbySecret::from_bytes(lobby),
            InviteSecret::from_bytes(secret),
            expires_at,
            &url,
        )
        .unwrap();
        let token = invite.to_token();
        prop_assert_eq!(token.len(), invite.token_len());
        prop_assert!(token.starts_with("cueinv1"));
        let text: String = if upper { token.to_uppercase() } else { token.to_string() };
        let back = Invite::parse(&text).unwrap();
        prop_assert_eq!(back.relay_url(), url.as_str());
        prop_assert_eq!(back.lobby().as_bytes(), &lobby);
        prop_assert_eq!(back.secret().as_bytes(), &secret);
        prop_assert_eq!(back.expires_at(), expires_at);
        prop_assert_eq!(back.workspace_id(), WorkspaceId(workspace));
        prop_assert_eq!(&back, &invite);
    }

    #[test]
    fn admission_round_trip(seed in any::<[u8; 32]>(), name in "[A-Za-z0-9._-]{1,32}") {
        let f = Fixture::new();
        let device = DeviceKey::from_bytes(&seed);
        let admission = Admission::create(&f.lobby, &device, &name).unwrap();
        let bytes = admission.encode();
        prop_assert_eq!(bytes.len(), admission.encoded_len());
        prop_assert_eq!(bytes.len(), 98 + name.len());
        let back = Admission::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &admission);
        prop_assert!(back.verify(&f.lobby).is_ok());
        prop_assert_eq!(back.device, device.device_id());
    }
}
