//! The join client over blocking tungstenite: a thread of its own per connection, no
//! runtime (the flooder, and anything else that pokes at a relay from plain tests).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, anyhow};
use cue_proto::RoomId;
use ed25519_dalek::SigningKey;

use crate::join::{Handshake, JoinError, Turn, Welcome, room_of};

/// A blocking WebSocket to a relay.
pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens a WebSocket to `room`'s path on `relay`, with Nagle off and `timeout` on the
/// connect and on every read and write.
pub fn connect(relay: SocketAddr, room: &RoomId, timeout: Duration) -> anyhow::Result<Ws> {
    let stream = TcpStream::connect_timeout(&relay, timeout)
        .with_context(|| format!("connecting to {relay}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let (ws, _response) = tungstenite::client(format!("ws://{relay}{}", room.path()), stream)
        .map_err(|e| anyhow!("the WebSocket handshake with {relay}: {e}"))?;
    Ok(ws)
}

/// Runs the join handshake on `ws` (see [`Handshake`]).
pub fn join(ws: &mut Ws, key: &SigningKey, token: Option<&str>) -> Result<Welcome, JoinError> {
    let mut handshake = Handshake::new(key, token);
    loop {
        match handshake.turn(Some(ws.read()))? {
            Turn::ReadAgain => {}
            Turn::Send(reply) => ws.send(reply).map_err(JoinError::Transport)?,
            Turn::Admitted(welcome) => return Ok(welcome),
        }
    }
}

/// Connects to the room of `key` and joins it; `timeout` bounds each step.
pub fn connect_and_join(
    relay: SocketAddr,
    key: &SigningKey,
    timeout: Duration,
) -> anyhow::Result<(Ws, Welcome)> {
    let mut ws = connect(relay, &room_of(key), timeout)?;
    let welcome = join(&mut ws, key, None)?;
    Ok((ws, welcome))
}
