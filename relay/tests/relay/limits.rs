//! Every limit refuses with a frame that names it, and touches nobody else.

use cue_proto::{ClientFrame, FRAME_OVERHEAD, RefuseReason, RelayFrame};
use cue_relay::Config;

use crate::util::*;

#[tokio::test]
async fn the_51st_peer_is_refused() {
    let relay = TestRelay::start(Config::default()).await;
    let key = room_key(5);
    let mut peers = Vec::new();
    for _ in 0..50 {
        peers.push(join(&relay, &key).await);
    }
    assert_eq!(peers[49].peers.len(), 49);

    let client = Client::connect(relay.addr, &room_of(&key)).await;
    let (mut client, refusal) = handshake(client, &key, None).await.err().expect("refused");
    assert_eq!(
        refusal,
        Next::Frame(RelayFrame::Refused {
            id: None,
            reason: RefuseReason::RoomFull,
            limit: 50,
            retry_after_ms: 0
        })
    );
    assert_eq!(
        client.next().await,
        Next::Closed(Some((1013, "room full".into())))
    );

    // Another room is not full, and a place freed in this one can be taken.
    join(&relay, &room_key(6)).await;
    let gone = peers.pop().unwrap();
    drop(gone);
    eventually("the leaver to be gone", || async {
        relay.metric("cue_relay_peers ").await == 49
    })
    .await;
    join(&relay, &key).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_peer_over_its_rate_is_told_and_nobody_else_is_affected() {
    let mut config = Config::default();
    config.limits.messages_per_second = 5;
    config.limits.burst = 5;
    let relay = TestRelay::start(config).await;
    let mut spammer = join(&relay, &room_key(1)).await;
    let mut calm = join(&relay, &room_key(1)).await;
    let mut listener = join(&relay, &room_key(1)).await;
    let mut elsewhere_a = join(&relay, &room_key(2)).await;
    let mut elsewhere_b = join(&relay, &room_key(2)).await;
    assert_eq!(spammer.limits.messages_per_second, 5);

    for id in 0..30u64 {
        spammer.broadcast(id, b"spam").await;
    }
    // The spammer hears a refusal for every message past its burst, each naming the
    // message, the limit, and when to retry.
    let mut refused = Vec::new();
    while refused.len() < 20 {
        match spammer.client.frame_skipping_notices().await {
            RelayFrame::Refused {
                id: Some(id),
                reason: RefuseReason::RateLimited,
                limit: 5,
                retry_after_ms,
            } => {
                assert!(
                    retry_after_ms > 0 && retry_after_ms <= 1000,
                    "{retry_after_ms}"
                );
                refused.push(id);
            }
            RelayFrame::Message { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        refused.iter().all(|id| *id >= 5),
        "the burst passes: {refused:?}"
    );

    // The calm peer of the same room and a room elsewhere go through untouched.
    for id in 0..3u64 {
        calm.broadcast(id, b"calm").await;
        elsewhere_a.broadcast(id, b"elsewhere").await;
    }
    let mut from_calm = 0;
    let mut from_spammer = 0;
    while from_calm < 3 {
        let (from, _, payload) = listener.message().await;
        if from == calm.id {
            assert_eq!(payload, b"calm");
            from_calm += 1;
        } else {
            assert_eq!(from, spammer.id);
            from_spammer += 1;
        }
    }
    assert!(
        from_spammer <= 10,
        "no more than the burst and a refill got through"
    );
    for _ in 0..3 {
        assert_eq!(elsewhere_b.message().await.2, b"elsewhere");
    }
    assert!(
        relay
            .metric("cue_relay_rate_limit_hits_total{limit=\"messages\"}")
            .await
            >= 20
    );
    relay.stop().await;
}

#[tokio::test]
async fn byte_rates_are_limited_per_peer_and_per_room() {
    let mut config = roomy_config();
    config.limits.max_message_bytes = 1000;
    config.limits.bytes_per_second = 3000;
    config.limits.room_bytes_per_second = 5000;
    let relay = TestRelay::start(config).await;
    let key = room_key(7);
    let mut a = join(&relay, &key).await;
    let mut b = join(&relay, &key).await;
    let _c = join(&relay, &key).await;

    // A's own budget: 3 messages of 1000 bytes, then refused.
    for id in 0..4u64 {
        a.broadcast(id, &[0u8; 1000]).await;
    }
    // Each of A's broadcasts costs the room 2000 (two recipients): the room's 5000 pass
    // two of them and refuse the third; the fourth is over A's own 3000.
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        if let RelayFrame::Refused {
            id, reason, limit, ..
        } = a.client.frame_skipping_notices().await
        {
            reasons.push((id, reason, limit));
        }
    }
    assert_eq!(
        reasons,
        vec![
            (Some(2), RefuseReason::RoomByteRateLimited, 5000),
            (Some(3), RefuseReason::ByteRateLimited, 3000)
        ]
    );
    // B's broadcast of 1000 bytes to two peers needs 2000 of the room's remaining 1000.
    b.broadcast(10, &[1u8; 1000]).await;
    loop {
        match b.client.frame_skipping_notices().await {
            // A's two broadcasts that the room let through.
            RelayFrame::Message { from, .. } => assert_eq!(from, a.id),
            refusal => {
                assert!(matches!(
                    refusal,
                    RelayFrame::Refused {
                        id: Some(10),
                        reason: RefuseReason::RoomByteRateLimited,
                        ..
                    }
                ));
                break;
            }
        }
    }
    relay.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection() {
    let mut config = roomy_config();
    config.limits.max_message_bytes = 1024;
    let relay = TestRelay::start(config).await;
    let key = room_key(8);
    let mut big = join(&relay, &key).await;
    let mut a = join(&relay, &key).await;
    let mut b = join(&relay, &key).await;

    // Over the message limit but within the frame slack: refused by id, connection kept.
    big.broadcast(1, &[0u8; 1025]).await;
    assert_eq!(
        big.client.frame_skipping_notices().await,
        RelayFrame::Refused {
            id: Some(1),
            reason: RefuseReason::TooLarge,
            limit: 1024,
            retry_after_ms: 0
        }
    );
    // Over the WebSocket limit: the relay refuses and closes with 1009.
    big.client
        .send(&ClientFrame::Broadcast {
            id: 2,
            payload: vec![0u8; 1024 + FRAME_OVERHEAD + 1],
        })
        .await;
    let (frames, end) = big.client.until_closed().await;
    assert!(
        frames.iter().any(|frame| matches!(
            frame,
            RelayFrame::Refused {
                reason: RefuseReason::TooLarge,
                limit: 1024,
                ..
            }
        )),
        "{frames:?}"
    );
    assert_eq!(end, Next::Closed(Some((1009, "message too large".into()))));

    // The others carry on.
    assert_eq!(a.frame().await, RelayFrame::PeerJoined(b.id));
    assert_eq!(a.frame().await, RelayFrame::PeerLeft(big.id));
    a.broadcast(1, &[7u8; 1024]).await;
    assert_eq!(b.message().await, (a.id, false, vec![7u8; 1024]));
    eventually("the oversized close to be counted", || async {
        relay
            .metric("cue_relay_closed_total{cause=\"oversized\"}")
            .await
            == 1
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let mut config = Config::default();
    config.max_connections_per_ip = 2;
    let relay = TestRelay::start(config).await;
    let room = room_of(&room_key(1));
    let first = "127.0.0.2".parse().unwrap();
    let second = "127.0.0.3".parse().unwrap();

    let _one = Client::connect_with(relay.addr, &room, Some(first), None)
        .await
        .unwrap();
    let _two = Client::connect_with(relay.addr, &room, Some(first), None)
        .await
        .unwrap();
    let third = Client::connect_with(relay.addr, &room, Some(first), None).await;
    assert!(
        matches!(&third, Err(tokio_tungstenite::tungstenite::Error::Http(response)) if response.status() == 429),
        "{:?}",
        third.err()
    );
    // Another address has its own allowance, whatever it claims to forward for.
    let _other = Client::connect_with(relay.addr, &room, Some(second), Some("127.0.0.2"))
        .await
        .unwrap();
    assert_eq!(
        relay
            .metric("cue_relay_http_rejections_total{reason=\"per_ip_limit\"}")
            .await,
        1
    );
    relay.stop().await;
}

#[tokio::test]
async fn forwarded_clients_are_counted_only_behind_a_trusted_proxy() {
    let mut config = Config::default();
    config.max_connections_per_ip = 2;
    config.trusted_proxies = vec!["127.0.0.5".parse().unwrap()];
    let relay = TestRelay::start(config).await;
    let room = room_of(&room_key(1));
    let proxy = Some("127.0.0.5".parse().unwrap());

    // Through the proxy, each forwarded client has its own allowance of two.
    let mut held = Vec::new();
    for client in ["203.0.113.1", "203.0.113.1", "203.0.113.2", "203.0.113.2"] {
        held.push(
            Client::connect_with(relay.addr, &room, proxy, Some(client))
                .await
                .unwrap(),
        );
    }
    let third = Client::connect_with(relay.addr, &room, proxy, Some("203.0.113.1")).await;
    assert!(matches!(
        &third,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) if response.status() == 429
    ));
    // A spoofed left-most entry does not help: the proxy appended the real one.
    let spoofed =
        Client::connect_with(relay.addr, &room, proxy, Some("198.51.100.7, 203.0.113.2")).await;
    assert!(spoofed.is_err());
    relay.stop().await;
}
