//! The relay client: one WebSocket to the workspace's room, kept up for as long as the
//! daemon runs.
//!
//! It speaks frames only (`cue-proto`); sealing and opening envelopes is the main loop's
//! business, which keeps every secret but the room key out of this task. It joins by the
//! signed challenge (answering an auth request with the configured token first),
//! reports the relay's peers joining and leaving and their messages, and sends what the
//! main loop hands it, in that order, at the rates the relay announced; a message the
//! relay refuses for rate is sent again after the relay's `retry_after_ms`, before
//! anything handed after it (`relay_outbox.rs`). A direct message to a relay peer that
//! has left the room is dropped there: the main loop learns of the leave only once it
//! has handled every message received before it, and answering that backlog
//! (acknowledgements, mostly) would otherwise send one message after another to a peer
//! the relay no longer knows. A lost connection is reported and retried with
//! exponential backoff from about 100 ms, capped at 5 s, with jitter so that many peers
//! dropped by one relay restart do not return in lockstep. An unreachable relay is a
//! state ("offline, retrying"), never an error: an attempt that fails before admission
//! is logged as "cannot reach relay at URL: why" (once while the reason stays the same)
//! and its reason reported for status; "relay connection lost" is logged only for a
//! connection that had been admitted.

use std::net::SocketAddr;
use std::time::Duration;

use cue_crypto::WorkspaceKeys;
use cue_proto::{ClientFrame, Limits, PeerId, RefuseReason, RelayFrame, RoomId};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::relay_outbox::Outbox;

/// What happened at the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// Admitted to the room.
    Connected {
        you: PeerId,
        peers: Vec<PeerId>,
        limits: Limits,
    },
    PeerJoined(PeerId),
    PeerLeft(PeerId),
    Message {
        from: PeerId,
        direct: bool,
        payload: Vec<u8>,
    },
    /// The connection is gone (every peer is offline now); reconnecting.
    Disconnected {
        reason: String,
    },
    /// An attempt to join the room failed before admission (nothing to reach, refused,
    /// TLS, the relay's HTTP answer, a timeout): why, for status. Sent when the reason
    /// differs from the last attempt's; retrying.
    Unreachable {
        reason: String,
    },
}

/// What the main loop asks the client to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayCommand {
    Broadcast(Vec<u8>),
    Direct(PeerId, Vec<u8>),
    /// Drop the connection and connect again at once (alone in a room that a balancer
    /// may have split: `alone.rs`).
    Reconnect,
    /// Close the connection and end the task.
    Close,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct RelayParams {
    /// `ws://host:port` or `wss://...` (no room path).
    pub url: String,
    pub auth_token: String,
    /// The workspace keys: the room id and the room key that signs the challenge.
    pub keys: WorkspaceKeys,
}

impl std::fmt::Debug for RelayParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayParams")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The WebSocket URL of the room.
pub fn room_url(base: &str, room: &RoomId) -> String {
    format!("{}{}", base.trim_end_matches('/'), room.path())
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

enum End {
    /// Asked to stop (or the main loop is gone).
    Closed,
    /// The connection failed or dropped; `admitted` says whether we had joined the room.
    Lost { reason: String, admitted: bool },
}

/// Runs the client until [`RelayCommand::Close`] (or the command channel closes).
pub async fn run(
    params: RelayParams,
    events: mpsc::UnboundedSender<RelayEvent>,
    mut commands: mpsc::UnboundedReceiver<RelayCommand>,
) {
    let mut backoff = BACKOFF_START;
    // The reason of the last failed attempt since the last admission: a relay that stays
    // unreachable for the same reason is logged (and reported) once, not every retry.
    let mut unreachable: Option<String> = None;
    loop {
        match session(&params, &events, &mut commands).await {
            End::Closed => return,
            End::Lost {
                reason,
                admitted: true,
            } => {
                tracing::warn!(url = %params.url, %reason, "relay connection lost; reconnecting");
                backoff = BACKOFF_START;
                unreachable = None;
                if events.send(RelayEvent::Disconnected { reason }).is_err() {
                    return;
                }
            }
            End::Lost {
                reason,
                admitted: false,
            } => {
                if unreachable.as_deref() == Some(reason.as_str()) {
                    tracing::debug!(url = %params.url, %reason, "relay still unreachable");
                } else {
                    // Said in words, not fields: this is the line a user looks for.
                    tracing::warn!("cannot reach relay at {}: {reason}; retrying", params.url);
                    unreachable = Some(reason.clone());
                    if events.send(RelayEvent::Unreachable { reason }).is_err() {
                        return;
                    }
                }
            }
        }
        let delay = jitter(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        let until = Instant::now() + delay;
        // While waiting, what the main loop sends cannot go anywhere: drop it (the
        // engine catches up on reconnecting), but obey a close at once.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                cmd = commands.recv() => match cmd {
                    None | Some(RelayCommand::Close) => return,
                    Some(RelayCommand::Reconnect) => break,
                    Some(_) => {}
                },
            }
        }
    }
}

/// `d` scaled by a random factor in [0.5, 1.5).
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() {
        f64::from(u16::from_le_bytes(b)) / 65536.0
    } else {
        0.5
    };
    d.mul_f64(0.5 + r)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// One connection, from connecting to its end.
async fn session(
    params: &RelayParams,
    events: &mpsc::UnboundedSender<RelayEvent>,
    commands: &mut mpsc::UnboundedReceiver<RelayCommand>,
) -> End {
    let mut ws = match connect(params).await {
        Ok(ws) => ws,
        Err(end) => return end,
    };
    let limits = match handshake(params, &mut ws, events, commands).await {
        Ok(limits) => limits,
        Err(end) => return end,
    };
    exchange(ws, events, commands, &limits).await
}

fn lost(reason: String) -> End {
    End::Lost {
        reason,
        admitted: false,
    }
}

fn admitted_lost(reason: String) -> End {
    End::Lost {
        reason,
        admitted: true,
    }
}

/// Connects to the room's WebSocket one step at a time (name lookup, TCP, then TLS and
/// the HTTP upgrade), so that a failure says which step failed and why.
async fn connect(params: &RelayParams) -> Result<Ws, End> {
    let url = room_url(&params.url, &params.keys.room_id());
    // 16 MiB envelopes plus frame overhead; the relay enforces its own, smaller limit.
    let config = WebSocketConfig::default()
        .max_message_size(Some(cue_crypto::MAX_ENVELOPE_LEN + 1024))
        .max_frame_size(Some(cue_crypto::MAX_ENVELOPE_LEN + 1024));
    let request = url
        .as_str()
        .into_client_request()
        .map_err(|e| lost(format!("the relay URL is not usable: {e}")))?;
    let tls = request.uri().scheme_str() == Some("wss");
    let host = request
        .uri()
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if tls { 443 } else { 80 });
    let stream = tcp_connect(&host, port).await.map_err(lost)?;
    let upgrade =
        tokio_tungstenite::client_async_tls_with_config(request, stream, Some(config), None);
    match tokio::time::timeout(CONNECT_TIMEOUT, upgrade).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(e)) => Err(lost(upgrade_failure(&e, tls))),
        Err(_) => Err(lost(format!(
            "timed out: connected, but no WebSocket answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// The TCP connection to the relay's host: each address the name resolves to in turn.
/// The error is why, in words (no lookup, refused, unreachable, timed out).
async fn tcp_connect(host: &str, port: u16) -> Result<TcpStream, String> {
    let timeout = CONNECT_TIMEOUT.as_secs();
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Err(_) => return Err(format!("DNS lookup of {host} timed out after {timeout} s")),
            Ok(Err(e)) => return Err(format!("DNS lookup of {host} failed: {e}")),
            Ok(Ok(addrs)) => addrs.collect(),
        };
    let mut why = format!("DNS lookup of {host} found no address");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Small frames go out at once (an acknowledgement, a short edit).
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => why = connect_failure(&e, addr),
            Err(_) => why = format!("timed out connecting to {addr} after {timeout} s"),
        }
    }
    Err(why)
}

/// Why a TCP connection to `addr` failed, in words.
fn connect_failure(e: &std::io::Error, addr: SocketAddr) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => format!("connection refused by {addr}"),
        ErrorKind::TimedOut => format!("timed out connecting to {addr}"),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            format!("{addr} is unreachable: {e}")
        }
        _ => format!("cannot connect to {addr}: {e}"),
    }
}

/// Why the TLS handshake or the WebSocket upgrade failed, in words.
fn upgrade_failure(e: &WsError, tls: bool) -> String {
    match e {
        WsError::Http(response) => {
            format!("rejected by the relay with HTTP {}", response.status())
        }
        WsError::Tls(e) => format!("TLS error: {e}"),
        // rustls reports a failed handshake as an IO error wrapping its own.
        WsError::Io(io) if tls => match io.get_ref() {
            Some(inner) if inner.is::<rustls::Error>() => format!("TLS error: {inner}"),
            _ if io.kind() == std::io::ErrorKind::InvalidData => format!("TLS error: {io}"),
            _ => format!("the connection failed during TLS or the WebSocket upgrade: {io}"),
        },
        WsError::Io(io) => format!("the connection failed during the WebSocket upgrade: {io}"),
        WsError::Url(e) => format!("the relay URL is not usable: {e}"),
        other => format!("the WebSocket upgrade failed: {other}"),
    }
}

/// Why the relay refused to admit us, in words.
fn refusal(reason: RefuseReason, limit: u64) -> String {
    let why = match reason {
        RefuseReason::AuthRequired => {
            "it needs an auth token and ours is missing or wrong (sync.relay.auth_token, or CUE_AUTH_TOKEN)".to_string()
        }
        RefuseReason::RoomFull => format!("the room is full ({limit} devices)"),
        RefuseReason::BadProof => "our proof of the room key did not verify".to_string(),
        other => other.as_str().to_string(),
    };
    format!("rejected by the relay: {why}")
}

/// The handshake: optional auth, the challenge, then Welcome (reported as `Connected`).
async fn handshake(
    params: &RelayParams,
    ws: &mut Ws,
    events: &mpsc::UnboundedSender<RelayEvent>,
    commands: &mut mpsc::UnboundedReceiver<RelayCommand>,
) -> Result<Limits, End> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, ws.next()) => next,
            cmd = commands.recv() => match cmd {
                None | Some(RelayCommand::Close) => {
                    let _ = ws.close(None).await;
                    return Err(End::Closed);
                }
                Some(_) => continue, // not admitted: nowhere to send it
            },
        };
        let frame = match next {
            Err(_) => {
                return Err(lost(format!(
                    "timed out: the relay did not admit us within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => return Err(lost("the relay closed the connection".into())),
            Ok(Some(Err(e))) => return Err(lost(e.to_string())),
            Ok(Some(Ok(WsMessage::Binary(bytes)))) => match cue_proto::decode::<RelayFrame>(&bytes)
            {
                Ok(f) => f,
                Err(e) => return Err(lost(format!("undecodable frame from the relay: {e}"))),
            },
            Ok(Some(Ok(WsMessage::Close(c)))) => {
                return Err(lost(format!("the relay closed the connection: {c:?}")));
            }
            Ok(Some(Ok(_))) => continue,
        };
        let reply = match frame {
            RelayFrame::AuthRequired => ClientFrame::Auth {
                token: params.auth_token.clone(),
            },
            RelayFrame::Challenge { nonce } => ClientFrame::Proof {
                signature: params.keys.sign_join(&nonce),
            },
            RelayFrame::Welcome { you, peers, limits } => {
                let connected = RelayEvent::Connected { you, peers, limits };
                return match events.send(connected) {
                    Ok(()) => Ok(limits),
                    Err(_) => Err(End::Closed),
                };
            }
            RelayFrame::Refused { reason, limit, .. } => {
                return Err(lost(refusal(reason, limit)));
            }
            _ => continue,
        };
        let encoded = WsMessage::Binary(cue_proto::encode(&reply).into());
        if let Err(e) = ws.send(encoded).await {
            return Err(lost(e.to_string()));
        }
    }
}

/// Admitted: the relay's frames become events, the main loop's commands become frames,
/// sent in order at the relay's announced pace (`relay_outbox.rs`), and frames the relay
/// refuses for rate are sent again in their place.
async fn exchange(
    ws: Ws,
    events: &mpsc::UnboundedSender<RelayEvent>,
    commands: &mut mpsc::UnboundedReceiver<RelayCommand>,
    limits: &Limits,
) -> End {
    let mut out = Outbox::new(Some(limits));
    let end = exchange_with(ws, events, commands, &mut out).await;
    if out.to_left_peers > 0 {
        tracing::debug!(
            messages = out.to_left_peers,
            "direct messages to peers that had left the room were dropped this connection"
        );
    }
    if out.refused > 0 {
        tracing::debug!(
            messages = out.refused,
            "messages refused for rate (and sent again) this connection"
        );
    }
    end
}

async fn exchange_with(
    mut ws: Ws,
    events: &mpsc::UnboundedSender<RelayEvent>,
    commands: &mut mpsc::UnboundedReceiver<RelayCommand>,
    out: &mut Outbox,
) -> End {
    loop {
        tokio::select! {
            msg = ws.next() => match incoming(msg, out) {
                Incoming::Event(event) => {
                    if events.send(event).is_err() {
                        let _ = ws.close(None).await;
                        return End::Closed;
                    }
                }
                Incoming::Nothing => {}
                Incoming::Lost(reason) => return admitted_lost(reason),
            },
            cmd = commands.recv() => match cmd {
                None | Some(RelayCommand::Close) => {
                    let _ = ws.close(None).await;
                    return End::Closed;
                }
                Some(RelayCommand::Broadcast(payload)) => {
                    out.push(ClientFrame::Broadcast { id: 0, payload });
                }
                Some(RelayCommand::Direct(to, payload)) => {
                    out.push(ClientFrame::Direct { id: 0, to, payload });
                }
                Some(RelayCommand::Reconnect) => {
                    let _ = ws.close(None).await;
                    return admitted_lost(
                        "alone in the room while others should be there: connecting again".into(),
                    );
                }
            },
            () = sleep_until_opt(out.next_wake()) => {}
        }
        let frames = out.ready(Instant::now());
        if frames.is_empty() {
            continue;
        }
        for frame in frames {
            let message = WsMessage::Binary(cue_proto::encode(&frame).into());
            if let Err(e) = ws.feed(message).await {
                return admitted_lost(e.to_string());
            }
        }
        if let Err(e) = ws.flush().await {
            return admitted_lost(e.to_string());
        }
    }
}

/// What a frame from the relay means once admitted.
enum Incoming {
    Event(RelayEvent),
    /// Nothing for the main loop (a refusal is dealt with here).
    Nothing,
    /// The connection is gone.
    Lost(String),
}

fn incoming(
    msg: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    out: &mut Outbox,
) -> Incoming {
    let bytes = match msg {
        None => return Incoming::Lost("the relay closed the connection".into()),
        Some(Err(e)) => return Incoming::Lost(e.to_string()),
        Some(Ok(WsMessage::Binary(b))) => b,
        Some(Ok(WsMessage::Close(c))) => {
            return Incoming::Lost(format!("the relay closed the connection: {c:?}"));
        }
        Some(Ok(_)) => return Incoming::Nothing,
    };
    let frame = match cue_proto::decode::<RelayFrame>(&bytes) {
        Ok(f) => f,
        Err(error) => {
            tracing::warn!(%error, "undecodable frame from the relay; ignored");
            return Incoming::Nothing;
        }
    };
    match frame {
        RelayFrame::PeerJoined(p) => Incoming::Event(RelayEvent::PeerJoined(p)),
        RelayFrame::PeerLeft(p) => {
            out.peer_left(p);
            Incoming::Event(RelayEvent::PeerLeft(p))
        }
        RelayFrame::Message {
            from,
            direct,
            payload,
        } => Incoming::Event(RelayEvent::Message {
            from,
            direct,
            payload,
        }),
        RelayFrame::Refused {
            id,
            reason,
            limit,
            retry_after_ms,
        } => {
            out.refused(id, reason, limit, retry_after_ms, Instant::now());
            Incoming::Nothing
        }
        _ => Incoming::Nothing,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_urls_join_cleanly() {
        let room = RoomId([0xab; 32]);
        assert_eq!(
            room_url("ws://127.0.0.1:8080/", &room),
            format!("ws://127.0.0.1:8080/v1/rooms/{}", "ab".repeat(32))
        );
    }

    #[tokio::test]
    async fn wss_is_supported_and_an_unreachable_relay_is_a_reason_not_a_panic() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let params = RelayParams {
            url: format!("wss://127.0.0.1:{port}"),
            auth_token: String::new(),
            keys: WorkspaceKeys::derive(&cue_crypto::WorkspaceSecret::from_bytes([7; 32])),
        };
        let (events, _rx) = mpsc::unbounded_channel();
        let (_tx, mut commands) = mpsc::unbounded_channel();
        match session(&params, &events, &mut commands).await {
            End::Lost { reason, admitted } => {
                assert!(!admitted);
                assert!(!reason.contains("TLS support"), "{reason}");
                assert_eq!(reason, format!("connection refused by 127.0.0.1:{port}"));
            }
            End::Closed => panic!("expected a lost connection"),
        }
    }

    /// Why one attempt to reach `url` failed, against a server on 127.0.0.1 that reads
    /// what the client sends first and answers `reply` (then closes).
    async fn failure_against(scheme: &str, reply: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(reply).await;
            let _ = socket.shutdown().await;
        });
        let params = RelayParams {
            url: format!("{scheme}://{addr}"),
            auth_token: String::new(),
            keys: WorkspaceKeys::derive(&cue_crypto::WorkspaceSecret::from_bytes([7; 32])),
        };
        let (events, _rx) = mpsc::unbounded_channel();
        let (_tx, mut commands) = mpsc::unbounded_channel();
        let end = session(&params, &events, &mut commands).await;
        server.await.unwrap();
        match end {
            End::Lost { reason, admitted } => {
                assert!(!admitted, "{reason}");
                reason
            }
            End::Closed => panic!("expected a failed attempt"),
        }
    }

    #[tokio::test]
    async fn a_server_that_is_not_a_relay_is_named_by_its_http_status() {
        let reason =
            failure_against("ws", b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(reason, "rejected by the relay with HTTP 404 Not Found");
    }

    #[tokio::test]
    async fn a_failed_tls_handshake_is_called_a_tls_error() {
        // wss:// to a server that answers in plain HTTP.
        let reason = failure_against(
            "wss",
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(reason.starts_with("TLS error: "), "{reason}");
    }

    #[test]
    fn a_refusal_at_admission_says_what_to_do() {
        assert_eq!(
            refusal(RefuseReason::RoomFull, 50),
            "rejected by the relay: the room is full (50 devices)"
        );
        let auth = refusal(RefuseReason::AuthRequired, 0);
        assert!(auth.contains("auth token"), "{auth}");
        assert!(auth.contains("CUE_AUTH_TOKEN"), "{auth}");
    }

    #[test]
    fn jitter_stays_within_half_either_side() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d < Duration::from_millis(150));
        }
    }
}
