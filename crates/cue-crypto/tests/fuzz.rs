//! Random-input tests standing in for cargo-fuzz (which needs a nightly toolchain).
//!
//! Normal runs use small counts. The full run (a million inputs a decoder; byte flips over
//! 1,000 messages), in release mode:
//!
//! ```text
//! CUE_FUZZ_ITERS=1000000 cargo test --release -p cue-crypto --test fuzz -- --nocapture
//! ```
//!
//! `CUE_FUZZ_ITERS` sets the number of random inputs per decoder target; when it is set,
//! the byte-flip test runs over 1,000 messages instead of 50. `CUE_FUZZ_SEED` replays a
//! run (the seed is printed).

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{Fixture, Rng, fuzz_iters, fuzz_seed};
use cue_crypto::{
    Admission, EnvelopeHeader, Invite, InviteSecret, LobbyMessage, LobbySecret, MessageType,
    ReplayGuard, RotationRecord, Sealer, Stream, WorkspaceId, WorkspaceSecret,
    open_without_replay_check, seal_secret,
};

fn valid_envelopes(f: &Fixture, rng: &mut Rng) -> Vec<Vec<u8>> {
    let alice = Sealer::new(&f.keys, &f.alice);
    let carol = Sealer::new(&f.keys, &f.carol);
    let admission = Admission::create(&f.lobby, &f.carol, "carol")
        .unwrap()
        .encode();
    let mut out = Vec::new();
    for i in 0..16u64 {
        let len = [0, 10, 256, 257, 700, 5000][rng.below(6)];
        let text = rng.bytes(len);
        let stream = if i % 2 == 0 {
            Stream::Broadcast
        } else {
            Stream::Direct(f.bob.device_id())
        };
        out.push(alice.seal(MessageType::Engine, stream, i, &text).unwrap());
    }
    out.push(
        carol
            .seal(MessageType::Admission, Stream::Broadcast, 0, &admission)
            .unwrap(),
    );
    out
}

/// Turns a valid input into a nearby invalid one: the shapes that reach the deeper
/// checks, which purely random bytes almost never do.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= rng.nonzero_byte();
            }
            1 => v.truncate(rng.below(v.len() + 1)),
            2 => {
                let extra = rng.below(40);
                v.extend(rng.bytes(extra));
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0xff, 1, 0x80][rng.below(4)];
            }
            4 if v.len() > 2 => {
                // Remove or duplicate a slice somewhere in the middle.
                let a = rng.below(v.len());
                let b = (a + rng.below(32)).min(v.len());
                if rng.below(2) == 0 {
                    v.drain(a..b);
                } else {
                    let chunk = v[a..b].to_vec();
                    v.splice(a..a, chunk);
                }
            }
            _ => {}
        }
    }
    v
}

#[test]
fn random_envelopes_never_panic_and_never_open() {
    let iters = fuzz_iters(20_000);
    let seed = fuzz_seed();
    println!("envelope fuzz: {iters} inputs, seed {seed}");
    let f = Fixture::new();
    let mut rng = Rng::new(seed);
    let valid = valid_envelopes(&f, &mut rng);
    let me = f.bob.device_id();
    let carol_admission = Admission::create(&f.lobby, &f.carol, "carol")
        .unwrap()
        .encode();
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for _ in 0..iters {
        let input = match rng.below(5) {
            0 => {
                let len = rng.below(1200);
                rng.bytes(len)
            }
            4 => {
                // Validly sealed and signed, with a random or mutated admission inside:
                // reaches the decoders behind the AEAD.
                let sender = if rng.below(2) == 0 {
                    &f.alice
                } else {
                    &f.carol
                };
                let inner = if rng.below(2) == 0 {
                    let len = rng.below(200);
                    rng.bytes(len)
                } else {
                    mutate(&mut rng, &carol_admission)
                };
                let bytes = Sealer::new(&f.keys, sender)
                    .seal(MessageType::Admission, Stream::Broadcast, rng.u64(), &inner)
                    .unwrap();
                match open_without_replay_check(&f.keys, &me, &bytes, f.is_member()) {
                    Ok(opened) => {
                        // Only Carol's own admissions open (the envelope cannot check
                        // the signature, bound to the lobby room), and of those only the
                        // genuine one verifies.
                        assert_eq!(opened.sender, f.carol.device_id());
                        let admission = Admission::decode(&opened.plaintext).unwrap();
                        assert_eq!(admission.device, f.carol.device_id());
                        if admission.verify(&f.lobby).is_ok() {
                            assert_eq!(opened.plaintext, carol_admission);
                        }
                        *kinds.entry("sealed_admission_opened").or_default() += 1;
                    }
                    Err(e) => *kinds.entry(e.kind()).or_default() += 1,
                }
                continue;
            }
            1 => {
                // Structurally valid header and length, random everything else: reaches
                // the signature check with arbitrary sender keys.
                let len = [470, 726, 1238][rng.below(3)];
                let mut v = rng.bytes(len);
                v[0] = 1;
                v[1] = 1 + rng.below(3) as u8;
                v
            }
            _ => {
                let base = &valid[rng.below(valid.len())];
                mutate(&mut rng, base)
            }
        };
        let _ = EnvelopeHeader::parse(&input);
        match open_without_replay_check(&f.keys, &me, &input, f.is_member()) {
            Ok(opened) => {
                // Only an unchanged valid envelope may open (a mutation can be undone by a
                // later one, or truncate-then-extend can restore it).
                assert!(
                    valid.contains(&input),
                    "a mutated envelope opened: {opened:?}"
                );
                *kinds.entry("opened_unchanged").or_default() += 1;
            }
            Err(e) => *kinds.entry(e.kind()).or_default() += 1,
        }
    }
    println!("outcomes: {kinds:?}");
}

#[test]
fn random_invites_never_panic() {
    let iters = fuzz_iters(20_000);
    let seed = fuzz_seed();
    println!("invite fuzz: {iters} inputs, seed {seed}");
    let mut rng = Rng::new(seed ^ 1);
    let tokens: Vec<String> = ["ws://127.0.0.1:8080", "wss://relay.example.com/x"]
        .iter()
        .map(|url| {
            Invite::new(
                WorkspaceId(rng.array()),
                LobbySecret::from_bytes(rng.array()),
                InviteSecret::from_bytes(rng.array()),
                1 + rng.u64() / 2,
                url,
            )
            .unwrap()
            .to_token()
            .to_string()
        })
        .collect();
    let mut ok = 0u64;
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..iters {
        let input: String = match rng.below(4) {
            3 => {
                // A correct checksum around random content: reaches the payload checks
                // (version, consistency, URL).
                let len = rng.below(200);
                let mut payload = rng.bytes(len);
                if let Some(v) = payload.first_mut() {
                    *v %= 3;
                }
                let hrp = bech32::Hrp::parse("cueinv").unwrap();
                bech32::encode_lower::<bech32::Bech32m>(hrp, &payload).unwrap()
            }
            0 => {
                let len = rng.below(300);
                String::from_utf8_lossy(&rng.bytes(len)).into_owned()
            }
            1 => {
                // Random characters from the token alphabet behind a good prefix.
                let alphabet = b"qpzry9x8gf2tvdw0s3jn54khce6mua7lQPZRY1bio";
                let len = rng.below(1100);
                let body: String = (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())] as char)
                    .collect();
                format!("cueinv1{body}")
            }
            _ => {
                let base = &tokens[rng.below(tokens.len())];
                String::from_utf8_lossy(&mutate(&mut rng, base.as_bytes())).into_owned()
            }
        };
        match Invite::parse(&input) {
            Ok(_) => {
                // Only an intact token parses (a mutation may add trimmed whitespace).
                assert!(tokens.iter().any(|t| t == input.trim()), "{input:?} parsed");
                ok += 1
            }
            Err(e) => {
                let name = format!("{e:?}");
                let name = name.split([' ', '(', '{']).next().unwrap_or("").to_owned();
                *kinds.entry(name).or_default() += 1;
                // Every error renders as one line a user can read.
                let msg = e.to_string();
                assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
            }
        }
    }
    println!("parsed: {ok}, errors: {kinds:?}");
}

#[test]
fn random_admissions_and_guards_never_panic() {
    let iters = fuzz_iters(20_000);
    let seed = fuzz_seed();
    println!("admission + replay-guard fuzz: {iters} inputs each, seed {seed}");
    let f = Fixture::new();
    let mut rng = Rng::new(seed ^ 2);
    let good = Admission::create(&f.lobby, &f.carol, "carol-laptop")
        .unwrap()
        .encode();
    let mut guard = ReplayGuard::new();
    for i in 0..40u64 {
        guard
            .accept(f.alice.device_id(), Stream::Broadcast, i * 3)
            .unwrap();
    }
    let guard_bytes = postcard::to_allocvec(&guard).unwrap();
    for _ in 0..iters {
        let input = if rng.below(2) == 0 {
            let len = rng.below(200);
            rng.bytes(len)
        } else {
            mutate(&mut rng, &good)
        };
        if let Ok(a) = Admission::decode(&input)
            && a.verify(&f.lobby).is_ok()
        {
            assert_eq!(input, good, "only the genuine admission verifies");
        }
        let input = if rng.below(2) == 0 {
            let len = rng.below(300);
            rng.bytes(len)
        } else {
            mutate(&mut rng, &guard_bytes)
        };
        if let Ok(mut g) = postcard::from_bytes::<ReplayGuard>(&input) {
            // A decoded guard, however odd, must keep working.
            let _ = g.accept(f.alice.device_id(), Stream::Broadcast, rng.u64());
        }
    }
}

#[test]
fn random_lobby_messages_and_rotation_records_never_panic() {
    let iters = fuzz_iters(20_000);
    let seed = fuzz_seed();
    println!("lobby + rotation fuzz: {iters} inputs each, seed {seed}");
    let f = Fixture::new();
    let mut rng = Rng::new(seed ^ 4);
    let removed = [f.carol.device_id(), f.bob.device_id()];
    let record = RotationRecord::create(WorkspaceId([1; 16]), 2, [3; 32], &f.alice, 5, &removed);
    let record_bytes = record.encode();
    let invite = InviteSecret::from_bytes([6; 32]);
    let lobby = [
        LobbyMessage::JoinRequest {
            invite: invite.id(),
            name: "carol".into(),
            proof: invite.proof(&f.lobby, &f.carol.device_id(), "carol"),
        },
        seal_secret(
            &f.carol.device_id(),
            &f.lobby,
            2,
            record.hash(),
            &WorkspaceSecret::from_bytes([7; 32]),
        )
        .unwrap(),
        LobbyMessage::Refused {
            invite: invite.id(),
            reason: "expired".into(),
        },
        LobbyMessage::Hello {
            generation: 2,
            winner: record.hash(),
        },
        LobbyMessage::Records {
            records: vec![record_bytes.clone(); 3],
        },
    ]
    .map(|m| m.encode());
    let (mut records_ok, mut lobby_ok) = (0u64, 0u64);
    for _ in 0..iters {
        let input = match rng.below(3) {
            0 => {
                let len = rng.below(400);
                rng.bytes(len)
            }
            1 => mutate(&mut rng, &record_bytes),
            _ => {
                let base = &lobby[rng.below(lobby.len())];
                mutate(&mut rng, base)
            }
        };
        if let Ok(r) = RotationRecord::decode(&input) {
            records_ok += 1;
            if r.verify().is_ok() {
                assert_eq!(input, record_bytes, "only the genuine record verifies");
            }
        }
        if let Ok(m) = LobbyMessage::decode(&input) {
            lobby_ok += 1;
            assert_eq!(LobbyMessage::decode(&m.encode()), Ok(m));
        }
    }
    println!("decoded: {records_ok} records, {lobby_ok} lobby messages");
}

/// Flips every byte position of nonce, associated data, ciphertext and signature, one at
/// a time, with a random non-zero XOR: every variant must be rejected. 50 messages in a
/// normal run, 1,000 when `CUE_FUZZ_ITERS` is set.
#[test]
fn every_flipped_byte_is_rejected() {
    let messages = if std::env::var_os("CUE_FUZZ_ITERS").is_some() {
        1000
    } else {
        50
    };
    let seed = fuzz_seed();
    let f = Fixture::new();
    let mut rng = Rng::new(seed ^ 3);
    let sealer = Sealer::new(&f.keys, &f.alice);
    let me = f.bob.device_id();
    let mut flips = 0u64;
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for m in 0..messages {
        let len = rng.below(600);
        let text = rng.bytes(len);
        let stream = if m % 3 == 0 {
            Stream::Direct(me)
        } else {
            Stream::Broadcast
        };
        let bytes = sealer
            .seal(MessageType::Engine, stream, rng.u64(), &text)
            .unwrap();
        assert_eq!(
            open_without_replay_check(&f.keys, &me, &bytes, f.is_member())
                .unwrap()
                .plaintext,
            text
        );
        let mut flipped = bytes.clone();
        for i in 0..bytes.len() {
            let x = rng.nonzero_byte();
            flipped[i] ^= x;
            match open_without_replay_check(&f.keys, &me, &flipped, f.is_member()) {
                Ok(_) => panic!("message {m}: flipping byte {i} with {x:#04x} was accepted"),
                Err(e) => *kinds.entry(e.kind()).or_default() += 1,
            }
            flipped[i] ^= x;
            flips += 1;
        }
    }
    println!("byte flips: {messages} messages, {flips} variants, all rejected: {kinds:?}");
}
