//! The join client over tokio-tungstenite (feature `async`): for the relay's own tests,
//! which serve it in-process, and its load generator, which holds thousands of
//! connections.

use std::net::{IpAddr, SocketAddr};

use cue_proto::RoomId;
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;

use crate::join::{Handshake, JoinError, Turn, Welcome};

/// A WebSocket to a relay.
pub type Ws = WebSocketStream<TcpStream>;

/// Where a connection comes from, as the relay sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// The local address to connect from (any 127.x address on loopback), else the
    /// system's choice.
    pub source: Option<IpAddr>,
    /// An `X-Forwarded-For` header, as a proxy in front of the relay would add.
    pub forwarded_for: Option<&'a str>,
}

/// Opens a WebSocket to `room`'s path on `relay`, with Nagle off. The relay can refuse
/// the upgrade (`tungstenite::Error::Http` with its status).
pub async fn connect(
    relay: SocketAddr,
    room: &RoomId,
    from: Origin<'_>,
) -> Result<Ws, tungstenite::Error> {
    let socket = match relay {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(source) = from.source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(relay).await?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://{relay}{}", room.path()).into_client_request()?;
    if let Some(forwarded) = from.forwarded_for {
        let value = HeaderValue::from_str(forwarded).map_err(tungstenite::http::Error::from)?;
        request.headers_mut().insert("X-Forwarded-For", value);
    }
    let (ws, _response) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(ws)
}

/// Runs the join handshake on `ws` (see [`Handshake`]). It waits as long as the relay
/// takes: callers put their own deadline around it.
pub async fn join(
    ws: &mut Ws,
    key: &SigningKey,
    token: Option<&str>,
) -> Result<Welcome, JoinError> {
    let mut handshake = Handshake::new(key, token);
    loop {
        match handshake.turn(ws.next().await)? {
            Turn::ReadAgain => {}
            Turn::Send(reply) => ws.send(reply).await.map_err(JoinError::Transport)?,
            Turn::Admitted(welcome) => return Ok(welcome),
        }
    }
}
