//! cue-relay: the stateless, rate-limited WebSocket relay of workspace rooms.
//!
//! Peers of one workspace meet in a room at `/v1/rooms/{room id}` after proving, with a
//! signed challenge, that they hold the room key. The relay forwards their opaque payloads
//! (broadcast to the room, or to one peer), tells them who joins and leaves, and enforces
//! the limits of docs/reference.md §4.3, refusing with a frame that names the limit rather
//! than queueing. It keeps nothing on disk and can read nothing: it depends on `cue-proto`
//! (frames and the join proof) and on no crate that could open an envelope.
//!
//! [`serve`] runs a relay on a bound listener until a shutdown future completes; the
//! `cue-relay` binary and `cue relay` are thin wrappers around it. [`RelayArgs`] is the
//! shared command line (every flag also a `CUE_RELAY_*` variable).

mod cli;
mod config;
mod connection;
pub mod healthcheck;
mod http;
mod metrics;
mod per_ip;
mod preauth;
mod room;
mod socket;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cue_proto::MAX_HANDSHAKE_FRAME_BYTES;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use cli::{RelayArgs, TokenFileError, error_line, parse_listen, read_token_file};
pub use config::{Config, ConfigError, IpNet, IpNetError};

use metrics::Metrics;
use per_ip::PerIpConnections;
use room::Rooms;

/// Why the relay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is inconsistent.
    #[error("invalid relay configuration: {0}")]
    Config(#[from] ConfigError),
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// tungstenite's limits for an admitted peer.
    pub(crate) ws_config: WebSocketConfig,
    /// Its limits for saying goodbye to a peer refused before admission.
    pub(crate) handshake_ws_config: WebSocketConfig,
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) ips: Arc<PerIpConnections>,
    /// Turns `true` once, when the relay shuts down.
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// tungstenite's limits, all four set: the defaults would accept 64 MiB messages, buffer
/// writes without bound and allocate 128 KiB of read buffer per connection.
fn websocket_config(config: &Config) -> WebSocketConfig {
    let max_frame = config.max_frame_bytes();
    WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_buffer_bytes)
        // Room for a whole batch of largest frames: past it a write fails rather than
        // grows. The outbound queue in front of it is what bounds a slow reader.
        .max_write_buffer_size(
            config
                .write_buffer_bytes
                .saturating_add(max_frame.saturating_mul(2)),
        )
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// tungstenite's limits before admission, where it only sends a refusal and a close frame
/// and reads the peer's close: nothing larger than a handshake frame is accepted
/// (`preauth` reads the handshake itself).
fn handshake_websocket_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes.min(MAX_HANDSHAKE_FRAME_BYTES))
        .write_buffer_size(0)
        .max_write_buffer_size(2 * MAX_HANDSHAKE_FRAME_BYTES)
        .max_message_size(Some(MAX_HANDSHAKE_FRAME_BYTES))
        .max_frame_size(Some(MAX_HANDSHAKE_FRAME_BYTES))
}

/// Runs the relay on `listener` until `shutdown` completes.
///
/// Then it stops accepting, closes every WebSocket with "going away" (1001), waits up to
/// `config.shutdown_grace` for the connections to finish, aborts what remains and returns.
/// No task outlives this future: dropping it aborts them all.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    config.validate()?;
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        ws_config: websocket_config(&config),
        handshake_ws_config: handshake_websocket_config(&config),
        rooms: Arc::new(Rooms::new(config.limits)),
        metrics: Arc::new(Metrics::default()),
        ips: PerIpConnections::new(config.max_connections_per_ip),
        shutdown: stopped,
        config,
    });
    // As in mini-redis: a connection takes a permit before it is accepted, so past the
    // limit new clients wait in the kernel's backlog instead of costing memory here.
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                // Frames are small and latency matters more than packet count.
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                connections.spawn(async move {
                    connection::handle(shared, stream, peer).await;
                    drop(permit);
                });
            }
            Err(error) => {
                // Usually out of file descriptors: wait for connections to close rather
                // than spin; the listener itself stays good.
                tracing::warn!(%error, ?backoff, "accept failed; retrying");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        while let Some(finished) = connections.try_join_next() {
            if let Err(error) = finished {
                tracing::error!(%error, "connection task failed");
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "shutting down: closing every connection"
    );
    stop.send_replace(true);
    let drained = tokio::time::timeout(shared.config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "connections still open after the grace period; aborting them"
        );
    }
    connections.shutdown().await;
    Ok(())
}
