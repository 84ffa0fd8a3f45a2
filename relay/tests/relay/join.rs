//! Joining rooms and moving messages.

use cue_proto::{ClientFrame, Limits, PeerId, RefuseReason, RelayFrame};
use cue_relay::Config;

use crate::util::*;

#[tokio::test]
async fn peers_join_broadcast_direct_and_leave() {
    let relay = TestRelay::start(Config::default()).await;
    let key = room_key(1);
    let mut a = join(&relay, &key).await;
    assert!(a.peers.is_empty());
    assert_eq!(a.limits, Limits::default());
    let mut b = join(&relay, &key).await;
    assert_eq!(b.peers, vec![a.id]);
    assert_eq!(a.frame().await, RelayFrame::PeerJoined(b.id));
    let mut c = join(&relay, &key).await;
    assert_eq!(a.frame().await, RelayFrame::PeerJoined(c.id));
    assert_eq!(b.frame().await, RelayFrame::PeerJoined(c.id));
    let mut ids = c.peers.clone();
    ids.sort();
    let mut expected = vec![a.id, b.id];
    expected.sort();
    assert_eq!(ids, expected);

    // A broadcast reaches every other member, byte for byte, and not its sender.
    a.broadcast(1, b"hello room").await;
    assert_eq!(b.message().await, (a.id, false, b"hello room".to_vec()));
    assert_eq!(c.message().await, (a.id, false, b"hello room".to_vec()));

    // A direct message reaches one peer only: C's next message is B's broadcast.
    a.direct(2, b.id, b"just b").await;
    assert_eq!(b.message().await, (a.id, true, b"just b".to_vec()));
    b.broadcast(3, b"from b").await;
    assert_eq!(c.message().await, (b.id, false, b"from b".to_vec()));
    assert_eq!(a.message().await, (b.id, false, b"from b".to_vec()));

    // A direct to someone not in the room is refused by name.
    a.direct(4, PeerId(12345), b"nobody").await;
    assert_eq!(
        a.frame().await,
        RelayFrame::Refused {
            id: Some(4),
            reason: RefuseReason::UnknownPeer,
            limit: 0,
            retry_after_ms: 0
        }
    );

    // Leaving is announced.
    let c_id = c.id;
    drop(c);
    assert_eq!(a.frame().await, RelayFrame::PeerLeft(c_id));
    assert_eq!(b.frame().await, RelayFrame::PeerLeft(c_id));
    assert_eq!(relay.metric("cue_relay_rooms ").await, 1);
    drop(a);
    drop(b);
    eventually("the empty room to disappear", || async {
        relay.metric("cue_relay_rooms ").await == 0 && relay.metric("cue_relay_peers ").await == 0
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn rooms_are_separate() {
    let relay = TestRelay::start(Config::default()).await;
    let mut a = join(&relay, &room_key(1)).await;
    let mut b = join(&relay, &room_key(1)).await;
    let mut other = join(&relay, &room_key(2)).await;
    assert!(other.peers.is_empty());
    a.broadcast(1, b"room one").await;
    assert_eq!(b.message().await.2, b"room one");
    other.broadcast(1, b"room two").await;
    // `a` sees B's join, then nothing from room two: its next message is B's.
    b.broadcast(2, b"still room one").await;
    assert_eq!(a.message().await, (b.id, false, b"still room one".to_vec()));
    relay.stop().await;
}

#[tokio::test]
async fn a_bad_proof_is_refused() {
    let relay = TestRelay::start(Config::default()).await;
    let key = room_key(1);
    let room = room_of(&key);

    // Signed by another key.
    let client = Client::connect(relay.addr, &room).await;
    let (_, refusal) = handshake(client, &room_key(2), None)
        .await
        .err()
        .expect("refused");
    assert_eq!(
        refusal,
        Next::Frame(RelayFrame::Refused {
            id: None,
            reason: RefuseReason::BadProof,
            limit: 0,
            retry_after_ms: 0
        })
    );

    // A garbage signature, and the connection is closed after the refusal.
    let mut client = Client::connect(relay.addr, &room).await;
    assert!(matches!(client.frame().await, RelayFrame::Challenge { .. }));
    client
        .send(&ClientFrame::Proof {
            signature: [0x55; 64],
        })
        .await;
    let (frames, end) = client.until_closed().await;
    assert_eq!(
        frames,
        vec![RelayFrame::Refused {
            id: None,
            reason: RefuseReason::BadProof,
            limit: 0,
            retry_after_ms: 0
        }]
    );
    assert_eq!(end, Next::Closed(Some((1008, "bad proof".into()))));
    assert_eq!(
        relay
            .metric("cue_relay_refusals_total{reason=\"bad_proof\"}")
            .await,
        2
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_stranger_on_the_path_receives_nothing_of_the_room() {
    let mut config = Config::default();
    config.handshake_timeout = std::time::Duration::from_millis(500);
    let relay = TestRelay::start(config).await;
    let key = room_key(1);
    let room = room_of(&key);
    let mut a = join(&relay, &key).await;
    let mut b = join(&relay, &key).await;
    assert_eq!(a.frame().await, RelayFrame::PeerJoined(b.id));

    // One stranger tries to broadcast without proving, one just listens.
    let mut pushy = Client::connect(relay.addr, &room).await;
    let mut lurker = Client::connect(relay.addr, &room).await;
    pushy
        .send(&ClientFrame::Broadcast {
            id: 1,
            payload: b"let me in".to_vec(),
        })
        .await;
    for n in 0..5u64 {
        a.broadcast(n, b"secret-ish traffic").await;
        assert_eq!(b.message().await.2, b"secret-ish traffic");
    }

    let (frames, end) = pushy.until_closed().await;
    assert!(matches!(frames[0], RelayFrame::Challenge { .. }));
    assert_eq!(
        frames[1..],
        [RelayFrame::Refused {
            id: None,
            reason: RefuseReason::UnexpectedFrame,
            limit: 0,
            retry_after_ms: 0
        }]
    );
    assert!(matches!(end, Next::Closed(_)));

    // The lurker gets its challenge, then is closed at the handshake timeout.
    let (frames, end) = lurker.until_closed().await;
    assert_eq!(frames.len(), 1, "only the challenge: {frames:?}");
    assert!(matches!(frames[0], RelayFrame::Challenge { .. }));
    assert_eq!(end, Next::Closed(Some((1008, "handshake timeout".into()))));

    // The members never heard of them either.
    b.broadcast(9, b"done").await;
    assert_eq!(
        a.frame().await,
        RelayFrame::Message {
            from: b.id,
            direct: false,
            payload: b"done".to_vec()
        }
    );
    relay.stop().await;
}

#[tokio::test]
async fn the_auth_token_is_demanded_before_the_challenge() {
    let mut config = Config::default();
    config.auth_token = Some("correct horse".into());
    let relay = TestRelay::start(config).await;
    let key = room_key(3);
    let room = room_of(&key);

    let client = Client::connect(relay.addr, &room).await;
    let (mut client, refusal) = handshake(client, &key, Some("wrong"))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        refusal,
        Next::Frame(RelayFrame::Refused {
            id: None,
            reason: RefuseReason::AuthRequired,
            limit: 0,
            retry_after_ms: 0
        })
    );
    assert!(matches!(client.next().await, Next::Closed(Some((1008, _)))));

    // A proof without the token is refused too.
    let mut client = Client::connect(relay.addr, &room).await;
    assert_eq!(client.frame().await, RelayFrame::AuthRequired);
    client
        .send(&ClientFrame::Proof { signature: [1; 64] })
        .await;
    let (frames, _) = client.until_closed().await;
    assert!(matches!(
        frames[..],
        [RelayFrame::Refused {
            reason: RefuseReason::AuthRequired,
            ..
        }]
    ));

    let client = Client::connect(relay.addr, &room).await;
    let peer = handshake(client, &key, Some("correct horse")).await;
    assert!(peer.is_ok(), "the right token admits");
    relay.stop().await;
}
