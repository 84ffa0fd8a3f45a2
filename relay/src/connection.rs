//! One TCP connection, from accept to close.
//!
//! 1. HTTP: read the request head (bounded), answer `/healthz` and `/metrics`, or upgrade
//!    `/v1/rooms/{id}` to a WebSocket.
//! 2. Join: optional auth token, then the signed challenge. Until admitted a connection
//!    gets nothing but these frames and may send nothing else, in small frames, within
//!    the handshake timeout (counted from accept). They are read by [`HandshakeSocket`],
//!    not tungstenite, so that a stranger cannot make the relay buffer a large message.
//! 3. Admitted: tungstenite takes the socket, with the admitted limits, and one task
//!    multiplexes the peer's incoming frames, its bounded outbound queue, pings, the idle
//!    timer, the slow-reader kick, the stalled-write timer and shutdown.
//!
//! Every way out goes through [`End`], so every close is counted and, where the socket
//! still works, says why.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use cue_proto::{
    ClientFrame, DecodeError, MAX_HANDSHAKE_FRAME_BYTES, RefuseReason, RelayFrame, RoomId, decode,
    decode_limited, encode, verify_join_proof,
};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, sleep_until, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, error::CapacityError};

use crate::Shared;
use crate::http::{self, Request};
use crate::metrics::{CloseCause, HttpRejection};
use crate::per_ip::IpSlot;
use crate::preauth::{HandshakeSocket, Incoming, ReadError};
use crate::room::{DeliveryError, Inbox, Membership, Outbox, outbound_queue, retry_after_ms};
use crate::socket::{Socket, WriteClock};

type Ws = WebSocketStream<Socket>;

/// How long the relay tries to say goodbye (a refusal, a close frame) before it just drops
/// the socket.
const FAREWELL_TIMEOUT: Duration = Duration::from_millis(500);

/// Frames written in one go before a flush, so a busy peer's queue drains in few system
/// calls without starving its reads.
const WRITE_BATCH: usize = 64;

/// Keeps the open-connections gauge true however the task ends.
struct OpenConnection<'a>(&'a Shared);

impl<'a> OpenConnection<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.metrics.connections_open.fetch_add(1, Relaxed);
        shared.metrics.connections_total.fetch_add(1, Relaxed);
        OpenConnection(shared)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

/// Serves one accepted connection to its end.
pub(crate) async fn handle(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _open = OpenConnection::new(&shared);
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let peer_ip = peer.ip().to_canonical();
    // A trusted proxy carries many clients; they are counted once their address is read.
    let mut slots: Vec<IpSlot> = Vec::with_capacity(1);
    if !shared.config.is_trusted_proxy(peer_ip) {
        match shared.ips.try_acquire(peer_ip) {
            Some(slot) => slots.push(slot),
            None => return too_many_connections(&shared, stream).await,
        }
    }

    let mut shutdown = shared.shutdown.clone();
    let request = tokio::select! {
        request = timeout_at(deadline, http::read_request(&mut stream)) => request,
        _ = shutdown.wait_for(|stop| *stop) => return,
    };
    let request = match request {
        Ok(Ok(request)) => request,
        Ok(Err(http::HeadError::Closed)) | Ok(Err(http::HeadError::Io(_))) => return,
        Ok(Err(error)) => {
            tracing::debug!(%error, "bad HTTP request");
            shared.metrics.rejected(HttpRejection::BadRequest);
            let _ = timeout(
                FAREWELL_TIMEOUT,
                http::respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    "",
                    "bad request\n",
                ),
            )
            .await;
            return;
        }
        Err(_elapsed) => {
            shared.metrics.closed(CloseCause::HandshakeTimeout);
            return;
        }
    };

    let room_id = match route(&shared, &mut stream, &request).await {
        Some(room_id) => room_id,
        None => return,
    };
    let client_ip = request.client_address(peer, &shared.config);
    if slots.is_empty() {
        match shared.ips.try_acquire(client_ip) {
            Some(slot) => slots.push(slot),
            None => return too_many_connections(&shared, stream).await,
        }
    }
    let Some(key) = request.websocket_key.as_deref() else {
        return;
    };
    if timeout_at(deadline, http::accept_upgrade(&mut stream, key))
        .await
        .map_or(true, |written| written.is_err())
    {
        return;
    }
    let mut joining = Joining {
        socket: HandshakeSocket::new(stream, request.rest),
        shared: &shared,
        shutdown: &mut shutdown,
    };
    let joined = joining.run(room_id, deadline).await;
    let (stream, leftover) = joining.socket.into_parts();
    let clock = WriteClock::new();
    // Admitted: tungstenite takes over with the admitted limits. Refused: it only says
    // goodbye, with the small ones.
    let ws_config = match joined {
        Ok(()) => shared.ws_config,
        Err(_) => shared.handshake_ws_config,
    };
    let ws = WebSocketStream::from_partially_read(
        Socket::new(stream, clock.clone()),
        leftover,
        Role::Server,
        Some(ws_config),
    )
    .await;
    let mut connection = Connection {
        ws,
        shared: shared.clone(),
        shutdown: &mut shutdown,
        clock,
    };
    let end = match joined {
        Ok(()) => connection.run(room_id).await,
        Err(end) => end,
    };
    connection.finish(end).await;
}

/// Answers plain HTTP requests; returns the room for a valid upgrade.
async fn route(shared: &Shared, stream: &mut TcpStream, request: &Request) -> Option<RoomId> {
    let plain = |status, body: String| (status, "text/plain; charset=utf-8", "", body);
    let response = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/healthz") => plain("200 OK", "ok\n".into()),
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            "",
            shared.metrics.render(),
        ),
        (method, path) => match RoomId::from_path(path) {
            Some(Ok(room)) if method == "GET" && request.websocket_key.is_some() => {
                return Some(room);
            }
            Some(Ok(_)) => (
                "426 Upgrade Required",
                "text/plain; charset=utf-8",
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
                "this is a WebSocket endpoint\n".into(),
            ),
            Some(Err(error)) => {
                shared.metrics.rejected(HttpRejection::BadRequest);
                plain("400 Bad Request", format!("{error}\n"))
            }
            None => {
                shared.metrics.rejected(HttpRejection::NotFound);
                plain("404 Not Found", "not found\n".into())
            }
        },
    };
    shared.metrics.http_requests.fetch_add(1, Relaxed);
    let (status, content_type, headers, body) = response;
    let _ = timeout(
        FAREWELL_TIMEOUT,
        http::respond(stream, status, content_type, headers, &body),
    )
    .await;
    None
}

async fn too_many_connections(shared: &Shared, mut stream: TcpStream) {
    shared.metrics.rejected(HttpRejection::PerIpLimit);
    tracing::debug!("connection refused: per-address limit reached");
    let body = format!(
        "too many connections from this address (limit {})\n",
        shared.config.max_connections_per_ip
    );
    let _ = timeout(
        FAREWELL_TIMEOUT,
        http::respond(
            &mut stream,
            "429 Too Many Requests",
            "text/plain; charset=utf-8",
            "Retry-After: 10\r\n",
            &body,
        ),
    )
    .await;
}

/// How a connection ends.
#[derive(Debug)]
enum End {
    /// Say why (a refusal frame, then a close frame), then close.
    Close {
        cause: CloseCause,
        code: CloseCode,
        reason: &'static str,
        refusal: Option<RelayFrame>,
    },
    /// The peer closed; flush tungstenite's reply to its close frame.
    PeerClosed,
    /// The socket is unusable or the peer must not be waited for (slow reader).
    Drop(CloseCause),
}

impl End {
    fn shutdown() -> End {
        End::Close {
            cause: CloseCause::Shutdown,
            code: CloseCode::Away,
            reason: "going away",
            refusal: None,
        }
    }

    fn refuse(reason: RefuseReason, limit: u64, code: CloseCode, text: &'static str) -> End {
        End::Close {
            cause: CloseCause::Refused,
            code,
            reason: text,
            refusal: Some(refusal(None, reason, limit, 0)),
        }
    }

    fn oversized(max_message_bytes: u64) -> End {
        End::Close {
            cause: CloseCause::Oversized,
            code: CloseCode::Size,
            reason: "message too large",
            refusal: Some(refusal(None, RefuseReason::TooLarge, max_message_bytes, 0)),
        }
    }

    fn protocol_error() -> End {
        End::Close {
            cause: CloseCause::ProtocolError,
            code: CloseCode::Protocol,
            reason: "protocol error",
            refusal: None,
        }
    }

    fn text_frame() -> End {
        End::Close {
            cause: CloseCause::ProtocolError,
            code: CloseCode::Unsupported,
            reason: "binary frames only",
            refusal: None,
        }
    }

    /// A WebSocket-level error while reading.
    fn from_ws_error(error: WsError, max_message_bytes: u64) -> End {
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                End::oversized(max_message_bytes)
            }
            WsError::Protocol(error) => {
                tracing::debug!(%error, "WebSocket protocol error");
                End::protocol_error()
            }
            _ => End::Drop(CloseCause::Peer),
        }
    }
}

fn refusal(id: Option<u64>, reason: RefuseReason, limit: u64, retry_after_ms: u64) -> RelayFrame {
    RelayFrame::Refused {
        id,
        reason,
        limit,
        retry_after_ms,
    }
}

/// A connection between the upgrade and admission: the auth token, then the proof.
struct Joining<'a> {
    socket: HandshakeSocket,
    shared: &'a Shared,
    shutdown: &'a mut watch::Receiver<bool>,
}

impl Joining<'_> {
    /// Ok once the peer has proved it holds the room key.
    async fn run(&mut self, room_id: RoomId, deadline: Instant) -> Result<(), End> {
        self.authenticate(deadline).await?;
        self.prove(room_id, deadline).await
    }

    fn handshake_timeout() -> End {
        End::Close {
            cause: CloseCause::HandshakeTimeout,
            code: CloseCode::Policy,
            reason: "handshake timeout",
            refusal: None,
        }
    }

    /// Waits for one frame before admission: small, binary, within the deadline.
    async fn handshake_frame(&mut self, deadline: Instant) -> Result<ClientFrame, End> {
        let next = tokio::select! {
            next = timeout_at(deadline, self.socket.next_message()) => next,
            _ = self.shutdown.wait_for(|stop| *stop) => return Err(End::shutdown()),
        };
        match next {
            Err(_elapsed) => Err(Self::handshake_timeout()),
            Ok(Err(ReadError::Io(error))) => {
                tracing::debug!(%error, "connection lost before admission");
                Err(End::Drop(CloseCause::Peer))
            }
            Ok(Err(ReadError::TooLarge(len))) => {
                tracing::debug!(len, "oversized handshake frame");
                Err(End::oversized(MAX_HANDSHAKE_FRAME_BYTES as u64))
            }
            Ok(Err(ReadError::Protocol(error))) => {
                tracing::debug!(error, "WebSocket protocol error before admission");
                Err(End::protocol_error())
            }
            Ok(Ok(Incoming::Binary(bytes))) => {
                decode_limited::<ClientFrame>(&bytes, MAX_HANDSHAKE_FRAME_BYTES)
                    .map_err(|error| self.undecodable(&error))
            }
            Ok(Ok(Incoming::Text)) => Err(End::text_frame()),
            // Answer the peer's close frame with ours.
            Ok(Ok(Incoming::Close)) => Err(End::Close {
                cause: CloseCause::Peer,
                code: CloseCode::Normal,
                reason: "",
                refusal: None,
            }),
        }
    }

    fn undecodable(&self, error: &DecodeError) -> End {
        tracing::debug!(%error, "undecodable handshake frame");
        let (reason, limit, code) = match error {
            DecodeError::TooLong { max, .. } => {
                (RefuseReason::TooLarge, *max as u64, CloseCode::Size)
            }
            _ => (RefuseReason::Malformed, 0, CloseCode::Protocol),
        };
        self.shared.metrics.refused(reason);
        End::refuse(reason, limit, code, "bad handshake frame")
    }

    async fn send_now(&mut self, frame: &RelayFrame, deadline: Instant) -> Result<(), End> {
        let sent = tokio::select! {
            sent = timeout_at(deadline, self.socket.send_binary(encode(frame))) => sent,
            _ = self.shutdown.wait_for(|stop| *stop) => return Err(End::shutdown()),
        };
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Drop(CloseCause::Peer)),
            Err(_elapsed) => Err(Self::handshake_timeout()),
        }
    }

    async fn authenticate(&mut self, deadline: Instant) -> Result<(), End> {
        let Some(expected) = self.shared.config.auth_token.clone() else {
            return Ok(());
        };
        self.send_now(&RelayFrame::AuthRequired, deadline).await?;
        match self.handshake_frame(deadline).await? {
            ClientFrame::Auth { token }
                if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) =>
            {
                Ok(())
            }
            ClientFrame::Auth { .. } => {
                self.shared.metrics.refused(RefuseReason::AuthRequired);
                tracing::debug!("refused: wrong auth token");
                Err(End::refuse(
                    RefuseReason::AuthRequired,
                    0,
                    CloseCode::Policy,
                    "auth token required",
                ))
            }
            _ => {
                self.shared.metrics.refused(RefuseReason::AuthRequired);
                Err(End::refuse(
                    RefuseReason::AuthRequired,
                    0,
                    CloseCode::Policy,
                    "auth token required",
                ))
            }
        }
    }

    async fn prove(&mut self, room_id: RoomId, deadline: Instant) -> Result<(), End> {
        let mut nonce = [0u8; 32];
        if getrandom::fill(&mut nonce).is_err() {
            tracing::error!("no OS randomness for a challenge nonce");
            return Err(End::Close {
                cause: CloseCause::Refused,
                code: CloseCode::Error,
                reason: "internal error",
                refusal: None,
            });
        }
        self.send_now(&RelayFrame::Challenge { nonce }, deadline)
            .await?;
        match self.handshake_frame(deadline).await? {
            ClientFrame::Proof { signature } if verify_join_proof(&room_id, &nonce, &signature) => {
                Ok(())
            }
            ClientFrame::Proof { .. } => {
                self.shared.metrics.refused(RefuseReason::BadProof);
                tracing::debug!("refused: bad join proof");
                Err(End::refuse(
                    RefuseReason::BadProof,
                    0,
                    CloseCode::Policy,
                    "bad proof",
                ))
            }
            _ => {
                self.shared.metrics.refused(RefuseReason::UnexpectedFrame);
                Err(End::refuse(
                    RefuseReason::UnexpectedFrame,
                    0,
                    CloseCode::Policy,
                    "expected a proof",
                ))
            }
        }
    }
}

struct Connection<'a> {
    ws: Ws,
    shared: Arc<Shared>,
    shutdown: &'a mut watch::Receiver<bool>,
    clock: Arc<WriteClock>,
}

/// What woke an admitted peer's task.
enum Event {
    Shutdown,
    Kicked,
    Outbound(Bytes),
    Incoming(Option<Result<Message, WsError>>),
    Ping,
    Idle,
}

/// An admitted peer's own rate limits.
struct PeerLimits {
    messages: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
}

impl Connection<'_> {
    /// Joins the room of a peer that proved it may, and serves it until it ends.
    async fn run(&mut self, room_id: RoomId) -> End {
        let config = &self.shared.config;
        let (outbox, inbox) =
            outbound_queue(config.outbound_queue_frames, config.outbound_queue_bytes);
        let (kick, kicked) = watch::channel(false);
        let membership =
            match self
                .shared
                .rooms
                .join(room_id, outbox.clone(), kick, &self.shared.metrics)
            {
                Ok(membership) => membership,
                Err(_full) => {
                    self.shared.metrics.refused(RefuseReason::RoomFull);
                    tracing::debug!("refused: room full");
                    return End::refuse(
                        RefuseReason::RoomFull,
                        config.limits.max_peers_per_room,
                        CloseCode::Again,
                        "room full",
                    );
                }
            };
        tracing::info!(peer = %membership.peer, "peer admitted");
        let end = self.admitted(&membership, inbox, outbox, kicked).await;
        tracing::info!(peer = %membership.peer, ?end, "peer left");
        end
    }

    async fn admitted(
        &mut self,
        membership: &Membership,
        mut inbox: Inbox,
        own: Outbox,
        mut kicked: watch::Receiver<bool>,
    ) -> End {
        let config = &self.shared.config;
        let limits = config.limits;
        let nonzero = |value: u64| {
            NonZeroU32::new(u32::try_from(value).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
        };
        let peer_limits = PeerLimits {
            messages: DefaultDirectRateLimiter::direct(
                Quota::per_second(nonzero(limits.messages_per_second))
                    .allow_burst(nonzero(limits.burst)),
            ),
            bytes: DefaultDirectRateLimiter::direct(Quota::per_second(nonzero(
                limits.bytes_per_second,
            ))),
        };
        let idle_timeout = config.idle_timeout;
        let write_timeout = config.write_timeout;
        let mut ping =
            tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        // One timer for the connection's life, re-armed only when it fires early: arming a
        // fresh timer for every frame would cost a timer-wheel insert and removal each.
        let idle = sleep_until(last_heard + idle_timeout);
        tokio::pin!(idle);
        loop {
            // Select an event first and act on it after: the branches' futures borrow the
            // socket and the receivers, which the handling needs back.
            let event = tokio::select! {
                _ = self.shutdown.wait_for(|stop| *stop) => Event::Shutdown,
                Ok(_) = kicked.wait_for(|kick| *kick) => Event::Kicked,
                Some(frame) = inbox.recv() => Event::Outbound(frame),
                incoming = self.ws.next() => Event::Incoming(incoming),
                _ = ping.tick() => Event::Ping,
                () = &mut idle => Event::Idle,
            };
            match event {
                Event::Shutdown => return End::shutdown(),
                Event::Kicked => {
                    tracing::info!(peer = %membership.peer, "dropping slow reader");
                    return End::Drop(CloseCause::SlowReader);
                }
                Event::Outbound(frame) => {
                    let began = Instant::now();
                    let written = tokio::select! {
                        written = write_batch(&mut self.ws, frame, &mut inbox) => written,
                        () = self.clock.stalled(began, write_timeout) => {
                            return write_stalled(membership, write_timeout);
                        }
                        Ok(_) = kicked.wait_for(|kick| *kick) => {
                            return End::Drop(CloseCause::SlowReader);
                        }
                        _ = self.shutdown.wait_for(|stop| *stop) => return End::shutdown(),
                    };
                    if written.is_err() {
                        return End::Drop(CloseCause::Peer);
                    }
                }
                Event::Incoming(incoming) => {
                    last_heard = Instant::now();
                    let message = match incoming {
                        None => return End::Drop(CloseCause::Peer),
                        Some(Err(error)) => {
                            return End::from_ws_error(error, limits.max_message_bytes);
                        }
                        Some(Ok(message)) => message,
                    };
                    match message {
                        Message::Binary(bytes) => {
                            if let Some(refused) = self.relay(membership, &peer_limits, &bytes)
                                && own.offer(Bytes::from(encode(&refused))).is_err()
                            {
                                return End::Drop(CloseCause::SlowReader);
                            }
                        }
                        Message::Text(_) => return End::text_frame(),
                        Message::Close(_) => return End::PeerClosed,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                Event::Ping => {
                    let began = Instant::now();
                    let sent = tokio::select! {
                        sent = self.ws.send(Message::Ping(Bytes::new())) => sent,
                        () = self.clock.stalled(began, write_timeout) => {
                            return write_stalled(membership, write_timeout);
                        }
                        _ = self.shutdown.wait_for(|stop| *stop) => return End::shutdown(),
                    };
                    if sent.is_err() {
                        return End::Drop(CloseCause::Peer);
                    }
                }
                Event::Idle if last_heard + idle_timeout > Instant::now() => {
                    idle.as_mut().reset(last_heard + idle_timeout);
                }
                Event::Idle => {
                    return End::Close {
                        cause: CloseCause::IdleTimeout,
                        code: CloseCode::Policy,
                        reason: "idle timeout",
                        refusal: None,
                    };
                }
            }
        }
    }

    /// Forwards one frame from an admitted peer; returns the refusal to send back, if
    /// any.
    fn relay(
        &self,
        membership: &Membership,
        peer_limits: &PeerLimits,
        bytes: &[u8],
    ) -> Option<RelayFrame> {
        let metrics = &self.shared.metrics;
        let limits = &self.shared.config.limits;
        let refuse = |id, reason: RefuseReason, limit, retry_after_ms| {
            metrics.refused(reason);
            tracing::debug!(peer = %membership.peer, reason = reason.as_str(), "refused");
            Some(refusal(id, reason, limit, retry_after_ms))
        };
        let (id, to, payload) = match decode::<ClientFrame>(bytes) {
            Ok(ClientFrame::Broadcast { id, payload }) => (id, None, payload),
            Ok(ClientFrame::Direct { id, to, payload }) => (id, Some(to), payload),
            Ok(ClientFrame::Auth { .. } | ClientFrame::Proof { .. }) => {
                return refuse(None, RefuseReason::UnexpectedFrame, 0, 0);
            }
            Err(_) => return refuse(None, RefuseReason::Malformed, 0, 0),
        };
        let id = Some(id);
        if payload.len() as u64 > limits.max_message_bytes {
            return refuse(id, RefuseReason::TooLarge, limits.max_message_bytes, 0);
        }
        if let Err(not_until) = peer_limits.messages.check() {
            return refuse(
                id,
                RefuseReason::RateLimited,
                limits.messages_per_second,
                retry_after_ms(&peer_limits.messages, &not_until),
            );
        }
        if let Some(len) = NonZeroU32::new(u32::try_from(payload.len()).unwrap_or(u32::MAX)) {
            match peer_limits.bytes.check_n(len) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return refuse(
                        id,
                        RefuseReason::ByteRateLimited,
                        limits.bytes_per_second,
                        retry_after_ms(&peer_limits.bytes, &not_until),
                    );
                }
                // Cannot happen: validation keeps the budget above the largest message.
                Err(_) => {
                    return refuse(
                        id,
                        RefuseReason::ByteRateLimited,
                        limits.bytes_per_second,
                        0,
                    );
                }
            }
        }
        let payload_len = payload.len();
        let from = membership.peer;
        let frame = Bytes::from(encode(&RelayFrame::Message {
            from,
            direct: to.is_some(),
            payload,
        }));
        let delivered = match to {
            None => membership
                .room
                .broadcast(from, &frame, payload_len, metrics)
                .map(|_| ()),
            Some(to) => membership
                .room
                .direct(from, to, &frame, payload_len, metrics),
        };
        match delivered {
            Ok(()) => {
                metrics.messages_in.fetch_add(1, Relaxed);
                metrics.bytes_in.fetch_add(payload_len as u64, Relaxed);
                None
            }
            Err(DeliveryError::UnknownPeer) => refuse(id, RefuseReason::UnknownPeer, 0, 0),
            Err(DeliveryError::RoomBytes { retry_after_ms }) => refuse(
                id,
                RefuseReason::RoomByteRateLimited,
                limits.room_bytes_per_second,
                retry_after_ms,
            ),
        }
    }

    /// Says goodbye where the socket allows it, and counts the close.
    async fn finish(&mut self, end: End) {
        let cause = match &end {
            End::Close { cause, .. } | End::Drop(cause) => *cause,
            End::PeerClosed => CloseCause::Peer,
        };
        self.shared.metrics.closed(cause);
        match end {
            End::Close {
                code,
                reason,
                refusal,
                ..
            } => {
                let farewell = async {
                    if let Some(refusal) = refusal {
                        self.ws
                            .feed(Message::Binary(Bytes::from(encode(&refusal))))
                            .await?;
                    }
                    self.ws
                        .close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        }))
                        .await?;
                    // Wait for the peer's close frame (the closing handshake) so that the
                    // TCP close does not race, and reset, what the peer has yet to read.
                    while let Some(Ok(_)) = self.ws.next().await {}
                    Ok::<(), WsError>(())
                };
                let _ = timeout(FAREWELL_TIMEOUT, farewell).await;
            }
            End::PeerClosed => {
                let _ = timeout(FAREWELL_TIMEOUT, self.ws.flush()).await;
            }
            End::Drop(CloseCause::SlowReader | CloseCause::WriteTimeout) => {
                self.ws.get_ref().reset_on_close();
            }
            End::Drop(_) => {}
        }
    }
}

fn write_stalled(membership: &Membership, timeout: Duration) -> End {
    tracing::info!(
        peer = %membership.peer,
        ?timeout,
        "dropping slow reader: its socket took no bytes"
    );
    End::Drop(CloseCause::WriteTimeout)
}

async fn write_batch(ws: &mut Ws, first: Bytes, inbox: &mut Inbox) -> Result<(), WsError> {
    ws.feed(Message::Binary(first)).await?;
    for _ in 1..WRITE_BATCH {
        let Some(frame) = inbox.try_recv() else {
            break;
        };
        ws.feed(Message::Binary(frame)).await?;
    }
    ws.flush().await
}
