//! Hostile and broken clients disturb nobody else.

use std::time::Duration;

use cue_proto::{RefuseReason, RelayFrame};
use cue_relay::Config;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// Reads until the relay closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = timeout(DEADLINE, stream.read_to_end(&mut received))
        .await
        .expect("the relay closes the connection");
    received
}

#[tokio::test]
async fn garbage_and_half_open_connections_disturb_nobody() {
    let mut config = Config::default();
    config.handshake_timeout = Duration::from_millis(400);
    let relay = TestRelay::start(config).await;
    let key = room_key(1);
    let room = room_of(&key);
    let mut a = join(&relay, &key).await;
    let mut b = join(&relay, &key).await;

    // Binary noise instead of HTTP: a 400, then closed.
    let mut noise = TcpStream::connect(relay.addr).await.unwrap();
    noise
        .write_all(&[0u8, 0xff, 0x13, 0x37, b'\r', b'\n', b'\r', b'\n'])
        .await
        .unwrap();
    let answer = read_to_close(&mut noise).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Half a request, then silence: closed at the handshake timeout.
    let mut half = TcpStream::connect(relay.addr).await.unwrap();
    half.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n", room.path()).as_bytes())
        .await
        .unwrap();
    // Connected and silent: closed the same way.
    let mut silent = TcpStream::connect(relay.addr).await.unwrap();

    // An upgraded stranger sending WebSocket garbage is closed.
    let mut garbage_ws = Client::connect(relay.addr, &room).await;
    assert!(matches!(
        garbage_ws.frame().await,
        RelayFrame::Challenge { .. }
    ));
    garbage_ws.send_bytes(vec![1, 0xde, 0xad, 0xbe, 0xef]).await;
    let (frames, _) = garbage_ws.until_closed().await;
    assert!(matches!(
        frames[..],
        [RelayFrame::Refused {
            reason: RefuseReason::Malformed,
            ..
        }]
    ));

    // An admitted peer sending garbage is told so and stays; text frames close it.
    let mut noisy = join(&relay, &key).await;
    noisy.client.send_bytes(vec![]).await;
    noisy.client.send_bytes(vec![1, 99, 1, 2, 3]).await;
    noisy.client.send_bytes(vec![7, 7, 7]).await;
    for _ in 0..3 {
        assert!(matches!(
            noisy.client.frame_skipping_notices().await,
            RelayFrame::Refused {
                id: None,
                reason: RefuseReason::Malformed,
                ..
            }
        ));
    }
    noisy.broadcast(1, b"still here").await;
    assert_eq!(a.message().await, (noisy.id, false, b"still here".to_vec()));
    assert_eq!(b.message().await, (noisy.id, false, b"still here".to_vec()));
    noisy.client.ws.send(Message::text("hello?")).await.unwrap();
    let (_, end) = noisy.client.until_closed().await;
    assert!(matches!(end, Next::Closed(Some((1003, _)))), "{end:?}");

    // Meanwhile, and after all of it, the members talk as before.
    a.broadcast(2, b"all well").await;
    assert_eq!(b.message().await, (a.id, false, b"all well".to_vec()));
    assert!(read_to_close(&mut half).await.is_empty());
    assert!(read_to_close(&mut silent).await.is_empty());
    b.broadcast(3, b"still well").await;
    assert_eq!(a.message().await, (b.id, false, b"still well".to_vec()));
    eventually("the handshake timeouts to be counted", || async {
        relay
            .metric("cue_relay_closed_total{cause=\"handshake_timeout\"}")
            .await
            >= 2
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn a_silent_admitted_peer_is_closed_by_the_idle_timeout() {
    let mut config = Config::default();
    config.ping_interval = Duration::from_millis(100);
    config.idle_timeout = Duration::from_millis(500);
    let relay = TestRelay::start(config).await;
    let key = room_key(2);
    let mut watcher = join(&relay, &key).await;
    // This peer never reads again, so it never answers a ping.
    let silent = join(&relay, &key).await;
    assert_eq!(watcher.frame().await, RelayFrame::PeerJoined(silent.id));
    // The watcher keeps reading (its client answers pings) and outlives the silent one.
    assert_eq!(watcher.frame().await, RelayFrame::PeerLeft(silent.id));
    eventually("the idle close to be counted", || async {
        relay
            .metric("cue_relay_closed_total{cause=\"idle_timeout\"}")
            .await
            == 1
    })
    .await;
    drop(silent);
    relay.stop().await;
}

#[tokio::test]
async fn a_slow_reader_is_dropped_while_the_others_keep_flowing() {
    let mut config = roomy_config();
    config.outbound_queue_frames = 64;
    config.outbound_queue_bytes = 2 * 1024 * 1024;
    let relay = TestRelay::start(config).await;
    let key = room_key(3);
    let mut sender = join(&relay, &key).await;
    let mut reader = join(&relay, &key).await;
    let slow = join(&relay, &key).await;
    let slow_id = slow.id;
    assert_eq!(sender.frame().await, RelayFrame::PeerJoined(reader.id));
    assert_eq!(sender.frame().await, RelayFrame::PeerJoined(slow_id));
    assert_eq!(reader.frame().await, RelayFrame::PeerJoined(slow_id));

    // The reader reads everything in its own task, publishing how many messages it has
    // and whether the slow peer has left.
    let (progress_tx, mut progress) = tokio::sync::watch::channel((0u64, false));
    let reading = tokio::spawn(async move {
        let mut next_expected = 0u64;
        loop {
            match reader.frame().await {
                RelayFrame::Message { payload, .. } => {
                    let n = u64::from_le_bytes(payload[..8].try_into().unwrap());
                    assert_eq!(n, next_expected, "messages arrive whole and in order");
                    next_expected += 1;
                    progress_tx.send_modify(|(count, _)| *count = next_expected);
                    if payload.len() == 8 {
                        return next_expected;
                    }
                }
                RelayFrame::PeerLeft(peer) => {
                    assert_eq!(peer, slow_id);
                    progress_tx.send_modify(|(_, left)| *left = true);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });

    // Broadcast bursts of 64 KiB messages until the slow peer is dropped (its socket
    // buffers and its 2 MiB queue fill). Each burst waits for the reader to catch up, so
    // the reader's queue never holds more than a burst: only the slow peer falls behind.
    let mut sent = 0u64;
    loop {
        let slow_left = timeout(
            DEADLINE,
            progress.wait_for(|(count, left)| *left || *count == sent),
        )
        .await
        .expect("the reader keeps up and the slow reader is dropped in time")
        .map(|state| state.1)
        .unwrap();
        if slow_left {
            break;
        }
        for _ in 0..8 {
            let mut payload = vec![0u8; 64 * 1024];
            payload[..8].copy_from_slice(&sent.to_le_bytes());
            sender.broadcast(sent, &payload).await;
            sent += 1;
        }
        assert!(sent < 20_000, "the slow reader was never dropped");
    }
    // The sender is told too, and the flow goes on: a final short message ends the run.
    assert_eq!(sender.frame().await, RelayFrame::PeerLeft(slow_id));
    sender.broadcast(sent, &sent.to_le_bytes()).await;
    let received = timeout(DEADLINE, reading).await.unwrap().unwrap();
    assert_eq!(received, sent + 1, "the reader got every message");
    eventually("the slow reader's close to be counted", || async {
        relay
            .metric("cue_relay_closed_total{cause=\"slow_reader\"}")
            .await
            == 1
    })
    .await;
    drop(slow);
    relay.stop().await;
}
