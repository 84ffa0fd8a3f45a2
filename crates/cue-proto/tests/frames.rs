//! Every frame survives encode → decode unchanged, at the length `encoded_len` predicts;
//! and no input whatsoever makes the decoder panic.

use cue_proto::{
    ClientFrame, DecodeError, Frame, Limits, PeerId, RefuseReason, RelayFrame, decode,
    decode_limited, encode,
};
use proptest::prelude::*;

fn peer() -> impl Strategy<Value = PeerId> {
    // Mix small ids (one-byte varints) with full-width ones so every varint length shows.
    prop_oneof![0u64..200, any::<u64>()].prop_map(PeerId)
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 100..20_000),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        ".{0,300}".prop_map(|token| ClientFrame::Auth { token }),
        proptest::array::uniform32(any::<u8>()).prop_flat_map(|first| {
            proptest::array::uniform32(any::<u8>()).prop_map(move |second| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&first);
                signature[32..].copy_from_slice(&second);
                ClientFrame::Proof { signature }
            })
        }),
        (any::<u64>(), payload()).prop_map(|(id, payload)| ClientFrame::Broadcast { id, payload }),
        (any::<u64>(), peer(), payload()).prop_map(|(id, to, payload)| ClientFrame::Direct {
            id,
            to,
            payload
        }),
    ]
}

fn reason() -> impl Strategy<Value = RefuseReason> {
    proptest::sample::select(RefuseReason::ALL.to_vec())
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                max_message_bytes,
                messages_per_second,
                burst,
                bytes_per_second,
                room_bytes_per_second,
                max_peers_per_room,
            )| Limits {
                max_message_bytes,
                messages_per_second,
                burst,
                bytes_per_second,
                room_bytes_per_second,
                max_peers_per_room,
            },
        )
}

fn relay_frame() -> impl Strategy<Value = RelayFrame> {
    prop_oneof![
        Just(RelayFrame::AuthRequired),
        proptest::array::uniform32(any::<u8>()).prop_map(|nonce| RelayFrame::Challenge { nonce }),
        (peer(), proptest::collection::vec(peer(), 0..60), limits())
            .prop_map(|(you, peers, limits)| RelayFrame::Welcome { you, peers, limits }),
        peer().prop_map(RelayFrame::PeerJoined),
        peer().prop_map(RelayFrame::PeerLeft),
        (peer(), any::<bool>(), payload()).prop_map(|(from, direct, payload)| {
            RelayFrame::Message {
                from,
                direct,
                payload,
            }
        }),
        (
            proptest::option::of(any::<u64>()),
            reason(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(id, reason, limit, retry_after_ms)| RelayFrame::Refused {
                id,
                reason,
                limit,
                retry_after_ms
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let bytes = encode(&frame);
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        prop_assert_eq!(decode::<ClientFrame>(&bytes)?, frame.clone());
        prop_assert_eq!(decode_limited::<ClientFrame>(&bytes, bytes.len())?, frame);
    }

    #[test]
    fn relay_frames_round_trip(frame in relay_frame()) {
        let bytes = frame.encode();
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        prop_assert_eq!(RelayFrame::decode(&bytes)?, frame);
    }

    #[test]
    fn a_truncated_frame_is_an_error(frame in client_frame(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&frame);
        let cut = cut.index(bytes.len());
        prop_assert!(decode::<ClientFrame>(&bytes[..cut]).is_err());
    }

    #[test]
    fn a_limit_below_the_length_refuses_unparsed(frame in relay_frame()) {
        let bytes = encode(&frame);
        let max = bytes.len() - 1;
        prop_assert_eq!(
            decode_limited::<RelayFrame>(&bytes, max),
            Err(DecodeError::TooLong { len: bytes.len(), max })
        );
    }
}

/// A small, seeded generator: the fuzz loop must replay exactly from its seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Random bytes, and valid frames with random mutations (which reach far deeper into the
/// decoder than noise), through both decoders. Run a million or more with
/// `CUE_FUZZ_ITERS=1000000 cargo test --release -p cue-proto --test frames fuzz`.
#[test]
fn fuzz_decoders_never_panic() {
    let iterations: u64 = std::env::var("CUE_FUZZ_ITERS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("CUE_FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0x00c0_ffee);
    let mut rng = SplitMix(seed);
    let seeds: Vec<Vec<u8>> = vec![
        encode(&ClientFrame::Auth {
            token: "secret".into(),
        }),
        encode(&ClientFrame::Proof { signature: [7; 64] }),
        encode(&ClientFrame::Broadcast {
            id: 1 << 40,
            payload: vec![1; 40],
        }),
        encode(&ClientFrame::Direct {
            id: 5,
            to: PeerId(u64::MAX),
            payload: vec![2; 10],
        }),
        encode(&RelayFrame::Welcome {
            you: PeerId(9),
            peers: vec![PeerId(1), PeerId(300), PeerId(u64::MAX)],
            limits: Limits::default(),
        }),
        encode(&RelayFrame::Refused {
            id: Some(3),
            reason: RefuseReason::RateLimited,
            limit: 100,
            retry_after_ms: 10,
        }),
        encode(&RelayFrame::Message {
            from: PeerId(4),
            direct: true,
            payload: vec![3; 20],
        }),
    ];
    let mut decoded_ok = 0u64;
    let mut input = Vec::with_capacity(512);
    for _ in 0..iterations {
        input.clear();
        if rng.below(4) == 0 {
            let length = rng.below(96);
            input.extend((0..length).map(|_| rng.next() as u8));
            if rng.below(2) == 0 && !input.is_empty() {
                input[0] = cue_proto::PROTOCOL_VERSION;
            }
        } else {
            input.extend_from_slice(&seeds[rng.below(seeds.len())]);
            for _ in 0..=rng.below(4) {
                match rng.below(4) {
                    0 if !input.is_empty() => {
                        let at = rng.below(input.len());
                        input[at] = rng.next() as u8;
                    }
                    1 if !input.is_empty() => {
                        let at = rng.below(input.len());
                        input.truncate(at);
                    }
                    2 => {
                        let at = rng.below(input.len() + 1);
                        input.insert(at, rng.next() as u8);
                    }
                    _ => {
                        // A varint-looking run: the likeliest way to claim a huge length.
                        let at = rng.below(input.len() + 1);
                        for _ in 0..rng.below(10) {
                            input.insert(at, 0x80 | rng.next() as u8);
                        }
                    }
                }
            }
        }
        if let Ok(frame) = decode::<ClientFrame>(&input) {
            decoded_ok += 1;
            // Whatever decodes must encode to a frame that decodes to the same value.
            assert_eq!(decode::<ClientFrame>(&encode(&frame)), Ok(frame));
        }
        if let Ok(frame) = decode_limited::<RelayFrame>(&input, 4096) {
            decoded_ok += 1;
            assert_eq!(decode::<RelayFrame>(&encode(&frame)), Ok(frame));
        }
    }
    eprintln!("fuzz: {iterations} inputs (seed {seed}), {decoded_ok} decoded as frames");
    assert!(
        iterations < 1_000 || decoded_ok > 0,
        "the mutator never produced a valid frame"
    );
}
