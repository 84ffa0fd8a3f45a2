//! A relay served in-process on 127.0.0.1 and clients that speak to it (the join
//! handshake is cue-testkit's). Every wait has a deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cue_proto::{ClientFrame, Limits, PeerId, RelayFrame, RoomId, encode};
use cue_relay::{Config, ServeError, serve};
use cue_testkit::async_ws::{self, Origin, Ws};
use cue_testkit::join::SigningKey;
use cue_testkit::{JoinError, Welcome};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Bytes, Message};

pub use cue_testkit::{Next, room_key, room_of};

/// The longest any test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A relay served in-process by `cue_relay::serve`.
pub struct TestRelay {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestRelay {
    pub async fn start(config: Config) -> TestRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config, listener, async {
            let _ = stopped.await;
        }));
        TestRelay {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the relay and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            timeout(DEADLINE, task)
                .await
                .expect("serve returns after shutdown")
                .unwrap()
                .unwrap();
        }
    }

    /// GETs `path` and returns (status code, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    pub async fn metric(&self, line_prefix: &str) -> u64 {
        metric(self.addr, line_prefix).await
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .expect("the relay answers and closes")
        .unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the first metrics line starting with `line_prefix`.
pub async fn metric(addr: SocketAddr, line_prefix: &str) -> u64 {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find(|line| line.starts_with(line_prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_prefix:?} in\n{body}"))
}

/// Waits until `condition` holds, polling, or panics at the deadline.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A WebSocket client of the relay, admitted or not.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    /// Opens a WebSocket to `room`'s path, from `source` if given (any 127.x address).
    pub async fn connect(relay: SocketAddr, room: &RoomId) -> Client {
        Client::connect_with(relay, room, None, None).await.unwrap()
    }

    pub async fn connect_with(
        relay: SocketAddr,
        room: &RoomId,
        source: Option<IpAddr>,
        forwarded_for: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let from = Origin {
            source,
            forwarded_for,
        };
        let ws = timeout(DEADLINE, async_ws::connect(relay, room, from))
            .await
            .expect("the upgrade is answered")?;
        Ok(Client { ws })
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        self.send_bytes(encode(frame)).await;
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(Bytes::from(bytes)))
            .await
            .unwrap();
    }

    /// The next frame or the end, skipping pings.
    pub async fn next(&mut self) -> Next {
        loop {
            let message = timeout(DEADLINE, self.ws.next())
                .await
                .expect("timed out waiting for the relay");
            match message.map(|read| read.map(Next::from_message)) {
                Some(Ok(Some(Next::Invalid(e)))) => panic!("the relay sends valid frames: {e}"),
                Some(Ok(Some(next))) => return next,
                Some(Ok(None)) => {}
                Some(Err(_)) | None => return Next::Gone,
            }
        }
    }

    /// The next frame; panics if the connection ends instead.
    pub async fn frame(&mut self) -> RelayFrame {
        match self.next().await {
            Next::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Skips membership notices and returns the next other frame.
    pub async fn frame_skipping_notices(&mut self) -> RelayFrame {
        loop {
            match self.frame().await {
                RelayFrame::PeerJoined(_) | RelayFrame::PeerLeft(_) => {}
                frame => return frame,
            }
        }
    }

    /// Reads until the connection closes; returns the frames seen before and the close.
    pub async fn until_closed(&mut self) -> (Vec<RelayFrame>, Next) {
        let mut frames = Vec::new();
        loop {
            match self.next().await {
                Next::Frame(frame) => frames.push(frame),
                end => return (frames, end),
            }
        }
    }
}

/// An admitted peer.
pub struct Peer {
    pub client: Client,
    pub id: PeerId,
    pub peers: Vec<PeerId>,
    pub limits: Limits,
}

/// Runs the join handshake on `client`; returns what refused it, if anything did (a
/// connection that failed is `Next::Gone`).
pub async fn handshake(
    mut client: Client,
    key: &SigningKey,
    token: Option<&str>,
) -> Result<Peer, (Client, Next)> {
    let joined = timeout(DEADLINE, async_ws::join(&mut client.ws, key, token))
        .await
        .expect("timed out waiting for the relay");
    match joined {
        Ok(Welcome { you, peers, limits }) => Ok(Peer {
            client,
            id: you,
            peers,
            limits,
        }),
        Err(JoinError::Refused(next)) => Err((client, next)),
        Err(JoinError::Transport(_)) => Err((client, Next::Gone)),
    }
}

/// Connects and joins the room of `key`; panics if refused.
pub async fn join(relay: &TestRelay, key: &SigningKey) -> Peer {
    let client = Client::connect(relay.addr, &room_of(key)).await;
    match handshake(client, key, None).await {
        Ok(peer) => peer,
        Err((_, next)) => panic!("join refused: {next:?}"),
    }
}

impl Peer {
    pub async fn broadcast(&mut self, id: u64, payload: &[u8]) {
        self.client
            .send(&ClientFrame::Broadcast {
                id,
                payload: payload.to_vec(),
            })
            .await;
    }

    pub async fn direct(&mut self, id: u64, to: PeerId, payload: &[u8]) {
        self.client
            .send(&ClientFrame::Direct {
                id,
                to,
                payload: payload.to_vec(),
            })
            .await;
    }

    /// The next message from a peer, skipping membership notices.
    pub async fn message(&mut self) -> (PeerId, bool, Vec<u8>) {
        match self.client.frame_skipping_notices().await {
            RelayFrame::Message {
                from,
                direct,
                payload,
            } => (from, direct, payload),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    pub async fn frame(&mut self) -> RelayFrame {
        self.client.frame().await
    }
}

/// A configuration with the rate limits out of the way of functional tests.
pub fn roomy_config() -> Config {
    let mut config = Config::default();
    config.limits.messages_per_second = 1_000_000;
    config.limits.burst = 1_000_000;
    config.limits.bytes_per_second = 1 << 31;
    config.limits.room_bytes_per_second = 1 << 31;
    config
}
