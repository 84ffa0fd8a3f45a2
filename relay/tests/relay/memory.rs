//! What a client can make the relay hold is bounded: a peer that stops reading is dropped,
//! and a stranger cannot send more than a handshake frame.

use std::net::SocketAddr;
use std::time::Duration;

use cue_proto::{RefuseReason, RelayFrame};
use cue_relay::Config;
use cue_testkit::async_ws::{self, Ws};
use cue_testkit::join::SigningKey;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::util::*;

/// Joins the room of `key` over a socket with a tiny receive buffer, so that a peer that
/// never reads stalls the relay's writes after little data.
async fn join_never_reading(relay: SocketAddr, key: &SigningKey) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = timeout(DEADLINE, socket.connect(relay))
        .await
        .unwrap()
        .unwrap();
    let request = format!("ws://{relay}{}", room_of(key).path())
        .into_client_request()
        .unwrap();
    let (mut ws, _) = timeout(DEADLINE, tokio_tungstenite::client_async(request, stream))
        .await
        .unwrap()
        .unwrap();
    timeout(DEADLINE, async_ws::join(&mut ws, key, None))
        .await
        .unwrap()
        .unwrap();
    ws
}

/// The most bytes the kernel may buffer on one loopback connection's sending side.
fn max_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

#[tokio::test]
async fn a_peer_that_never_reads_is_dropped_at_the_write_timeout_and_counted() {
    let mut config = roomy_config();
    config.write_timeout = Duration::from_millis(300);
    // A queue far larger than what is sent: only the stalled write can end the peer.
    config.outbound_queue_frames = 1 << 16;
    config.outbound_queue_bytes = 1 << 30;
    let relay = TestRelay::start(config).await;
    let key = room_key(21);
    let mut sender = join(&relay, &key).await;
    let mut reader = join(&relay, &key).await;
    assert_eq!(sender.frame().await, RelayFrame::PeerJoined(reader.id));
    let slow = join_never_reading(relay.addr, &key).await;
    let RelayFrame::PeerJoined(slow_id) = sender.frame().await else {
        panic!("expected the slow peer's arrival");
    };
    assert_eq!(reader.frame().await, RelayFrame::PeerJoined(slow_id));

    // More than the kernel and tungstenite can hold for it, then stop: the queue never
    // overflows, so before write timeouts this peer held it all for good.
    let message = vec![7u8; 64 * 1024];
    let total = max_send_buffer() + (8 << 20);
    for id in 0..(total / message.len()) as u64 {
        sender.direct(id, slow_id, &message).await;
    }
    assert_eq!(
        sender.frame().await,
        RelayFrame::PeerLeft(slow_id),
        "the slow reader is dropped"
    );
    assert_eq!(reader.frame().await, RelayFrame::PeerLeft(slow_id));
    assert_eq!(
        relay
            .metric("cue_relay_closed_total{cause=\"write_timeout\"}")
            .await,
        1
    );
    assert_eq!(
        relay
            .metric("cue_relay_closed_total{cause=\"slow_reader\"}")
            .await,
        0
    );

    // The sender goes on as before.
    sender.direct(1, reader.id, b"still here").await;
    assert_eq!(
        reader.message().await,
        (sender.id, true, b"still here".to_vec())
    );
    reader.broadcast(2, b"and back").await;
    assert_eq!(
        sender.message().await,
        (reader.id, false, b"and back".to_vec())
    );

    // The slow peer's socket was closed: reading it ends (after what was in flight).
    let mut stream = slow.into_inner();
    let mut buffer = vec![0u8; 64 * 1024];
    timeout(DEADLINE, async {
        while let Ok(read) = stream.read(&mut buffer).await {
            if read == 0 {
                break;
            }
        }
    })
    .await
    .expect("the relay closed the slow reader's socket");
    relay.stop().await;
}

#[tokio::test]
async fn a_stranger_sending_64_kib_is_closed_from_the_frame_header() {
    let relay = TestRelay::start(Config::default()).await;
    let key = room_key(22);
    let mut stranger = Client::connect(relay.addr, &room_of(&key)).await;
    assert!(matches!(
        stranger.frame().await,
        RelayFrame::Challenge { .. }
    ));
    stranger.send_bytes(vec![0u8; 64 * 1024]).await;
    // Closed: with a refusal naming the handshake limit if it arrives before the reset
    // (the relay does not read the rest of the message, so the close may be a reset).
    let (frames, _end) = stranger.until_closed().await;
    for frame in frames {
        assert!(
            matches!(
                frame,
                RelayFrame::Refused {
                    reason: RefuseReason::TooLarge,
                    limit: 512,
                    ..
                }
            ),
            "{frame:?}"
        );
    }
    assert_eq!(
        relay
            .metric("cue_relay_closed_total{cause=\"oversized\"}")
            .await,
        1
    );
    // Admitted peers still send messages up to the configured limit.
    let mut a = join(&relay, &key).await;
    let mut b = join(&relay, &key).await;
    let big = vec![1u8; 1024 * 1024];
    a.broadcast(1, &big).await;
    assert_eq!(b.message().await, (a.id, false, big));
    relay.stop().await;
}

#[tokio::test]
async fn a_stranger_trickling_a_large_frame_header_is_closed_before_its_payload() {
    let relay = TestRelay::start(Config::default()).await;
    let room = room_of(&room_key(23));
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        room.path()
    );
    // The upgrade and, in the same write, the header of a 1 MiB binary frame (masked, as
    // a client's must be) with none of its payload: the relay refuses from the header.
    let mut bytes = request.into_bytes();
    bytes.extend([0x82, 0x80 | 127]);
    bytes.extend((1u64 << 20).to_be_bytes());
    bytes.extend([1, 2, 3, 4]);
    tokio::io::AsyncWriteExt::write_all(&mut stream, &bytes)
        .await
        .unwrap();
    let mut received = Vec::new();
    let _ = timeout(DEADLINE, stream.read_to_end(&mut received))
        .await
        .expect("closed without waiting for the payload");
    let head_end = received
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("an HTTP response")
        + 4;
    let text = String::from_utf8_lossy(&received[..head_end]);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // Then the server's frames (short, unmasked): the challenge, the refusal, and a close
    // frame whose code says 1009, message too large.
    let mut frames = &received[head_end..];
    let mut close_code = None;
    while let [first, second, rest @ ..] = frames {
        let len = usize::from(second & 0x7f);
        assert!(len < 126 && rest.len() >= len, "short frames only");
        if first & 0x0f == 0x8 {
            close_code = Some(u16::from_be_bytes([rest[0], rest[1]]));
        }
        frames = &rest[len..];
    }
    assert_eq!(close_code, Some(1009));
    relay.stop().await;
}
