//! Counters for `GET /metrics`, in the Prometheus text format.
//!
//! Labels are closed sets (reasons, causes), never room ids or addresses: those would
//! leak who talks to whom and grow without bound.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use cue_proto::RefuseReason;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseCause {
    /// The peer closed, or its socket failed.
    Peer,
    /// The relay is shutting down ("going away").
    Shutdown,
    /// No request, auth or proof within the handshake timeout.
    HandshakeTimeout,
    /// Nothing heard for the idle timeout (no pong either).
    IdleTimeout,
    /// Its outbound queue overflowed.
    SlowReader,
    /// Its socket accepted no bytes for the write timeout while frames waited for it.
    WriteTimeout,
    /// A WebSocket message over the size limit.
    Oversized,
    /// A protocol violation (text frame, wrong frame in the handshake, bad WebSocket).
    ProtocolError,
    /// Refused during the handshake (auth, proof, room full).
    Refused,
}

impl CloseCause {
    const ALL: [CloseCause; 9] = [
        CloseCause::Peer,
        CloseCause::Shutdown,
        CloseCause::HandshakeTimeout,
        CloseCause::IdleTimeout,
        CloseCause::SlowReader,
        CloseCause::WriteTimeout,
        CloseCause::Oversized,
        CloseCause::ProtocolError,
        CloseCause::Refused,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseCause::Peer => "peer",
            CloseCause::Shutdown => "shutdown",
            CloseCause::HandshakeTimeout => "handshake_timeout",
            CloseCause::IdleTimeout => "idle_timeout",
            CloseCause::SlowReader => "slow_reader",
            CloseCause::WriteTimeout => "write_timeout",
            CloseCause::Oversized => "oversized",
            CloseCause::ProtocolError => "protocol_error",
            CloseCause::Refused => "refused",
        }
    }
}

/// Why a connection was turned away before the WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpRejection {
    /// Its client address already has the maximum of connections.
    PerIpLimit,
    /// Not a valid HTTP request, or a bad room id.
    BadRequest,
    /// An unknown path.
    NotFound,
}

impl HttpRejection {
    const ALL: [HttpRejection; 3] = [
        HttpRejection::PerIpLimit,
        HttpRejection::BadRequest,
        HttpRejection::NotFound,
    ];

    fn as_str(self) -> &'static str {
        match self {
            HttpRejection::PerIpLimit => "per_ip_limit",
            HttpRejection::BadRequest => "bad_request",
            HttpRejection::NotFound => "not_found",
        }
    }
}

/// All the relay's counters; cheap relaxed atomics, read only by `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) connections_open: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) peers: AtomicU64,
    pub(crate) rooms: AtomicU64,
    pub(crate) admitted_total: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) http_requests: AtomicU64,
    refusals: [AtomicU64; RefuseReason::ALL.len()],
    closes: [AtomicU64; CloseCause::ALL.len()],
    http_rejections: [AtomicU64; HttpRejection::ALL.len()],
}

impl Metrics {
    pub(crate) fn refused(&self, reason: RefuseReason) {
        let index = RefuseReason::ALL
            .iter()
            .position(|known| *known == reason)
            .unwrap_or(0);
        self.refusals[index].fetch_add(1, Relaxed);
    }

    pub(crate) fn closed(&self, cause: CloseCause) {
        self.closes[cause as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected(&self, rejection: HttpRejection) {
        self.http_rejections[rejection as usize].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut single = |name: &str, kind: &str, help: &str, value: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", value.load(Relaxed));
        };
        single(
            "cue_relay_connections",
            "gauge",
            "Open TCP connections (HTTP, handshaking and admitted).",
            &self.connections_open,
        );
        single(
            "cue_relay_connections_total",
            "counter",
            "TCP connections accepted.",
            &self.connections_total,
        );
        single(
            "cue_relay_peers",
            "gauge",
            "Peers admitted to a room.",
            &self.peers,
        );
        single(
            "cue_relay_rooms",
            "gauge",
            "Rooms with at least one peer.",
            &self.rooms,
        );
        single(
            "cue_relay_admitted_total",
            "counter",
            "Peers admitted after a valid join proof.",
            &self.admitted_total,
        );
        single(
            "cue_relay_messages_in_total",
            "counter",
            "Broadcast and direct messages accepted from peers.",
            &self.messages_in,
        );
        single(
            "cue_relay_bytes_in_total",
            "counter",
            "Payload bytes of the messages accepted.",
            &self.bytes_in,
        );
        single(
            "cue_relay_messages_out_total",
            "counter",
            "Messages queued for delivery to a peer (a broadcast counts once per recipient).",
            &self.deliveries,
        );
        single(
            "cue_relay_bytes_out_total",
            "counter",
            "Payload bytes queued for delivery.",
            &self.bytes_out,
        );
        single(
            "cue_relay_http_requests_total",
            "counter",
            "Plain HTTP requests answered (healthz, metrics, errors).",
            &self.http_requests,
        );

        let _ = writeln!(
            out,
            "# HELP cue_relay_refusals_total Frames refused, by reason (each also sent to the peer in a Refused frame)."
        );
        let _ = writeln!(out, "# TYPE cue_relay_refusals_total counter");
        for (reason, count) in RefuseReason::ALL.iter().zip(&self.refusals) {
            let _ = writeln!(
                out,
                "cue_relay_refusals_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                count.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cue_relay_rate_limit_hits_total Messages refused by a rate limit, by limit."
        );
        let _ = writeln!(out, "# TYPE cue_relay_rate_limit_hits_total counter");
        for (limit, reason) in [
            ("messages", RefuseReason::RateLimited),
            ("bytes", RefuseReason::ByteRateLimited),
            ("room_bytes", RefuseReason::RoomByteRateLimited),
        ] {
            let index = RefuseReason::ALL
                .iter()
                .position(|known| *known == reason)
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "cue_relay_rate_limit_hits_total{{limit=\"{limit}\"}} {}",
                self.refusals[index].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cue_relay_closed_total WebSocket connections ended, by cause."
        );
        let _ = writeln!(out, "# TYPE cue_relay_closed_total counter");
        for (cause, count) in CloseCause::ALL.iter().zip(&self.closes) {
            let _ = writeln!(
                out,
                "cue_relay_closed_total{{cause=\"{}\"}} {}",
                cause.as_str(),
                count.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cue_relay_http_rejections_total Connections turned away before the upgrade, by reason."
        );
        let _ = writeln!(out, "# TYPE cue_relay_http_rejections_total counter");
        for (rejection, count) in HttpRejection::ALL.iter().zip(&self.http_rejections) {
            let _ = writeln!(
                out,
                "cue_relay_http_rejections_total{{reason=\"{}\"}} {}",
                rejection.as_str(),
                count.load(Relaxed)
            );
        }
        out
    }
}
