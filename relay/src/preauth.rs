//! WebSocket frames before admission, read one at a time with a small size limit.
//!
//! tungstenite reserves a frame's whole declared length as soon as it has parsed the
//! frame's header, up to `max_frame_size`; with the admitted peers' limit (1 MiB) that let
//! any stranger make the relay hold a megabyte per connection before proving anything.
//! tokio-tungstenite 0.30 fixes the configuration when the stream is made (its
//! `WebSocketStream` has `get_config` but no `set_config`), so the relay does not hand the
//! socket to tungstenite until the peer is admitted: it reads the few handshake frames
//! here, refusing a frame longer than [`MAX_HANDSHAKE_FRAME_BYTES`] from its header, and
//! reads exactly one frame at a time, so whatever the peer sends after its proof stays in
//! the socket (or in [`HandshakeSocket::into_parts`]'s leftover) for tungstenite, which
//! then starts with the admitted limits.

use std::io::{self, Cursor};

use cue_proto::MAX_HANDSHAKE_FRAME_BYTES;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// The largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// What a peer sent before admission.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A whole binary message: a handshake frame, in principle.
    Binary(Vec<u8>),
    /// A text message (its payload is not read: the connection is closed for it).
    Text,
    /// The peer began the closing handshake.
    Close,
}

/// Why no message could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket closed or failed.
    Io(io::Error),
    /// A frame header announced more than the pre-admission limit.
    TooLarge(u64),
    /// Not a valid client frame for this stage (RFC 6455 §5, and no fragments).
    Protocol(&'static str),
}

impl From<io::Error> for ReadError {
    fn from(error: io::Error) -> Self {
        ReadError::Io(error)
    }
}

/// A freshly upgraded connection, before admission.
#[derive(Debug)]
pub(crate) struct HandshakeSocket {
    stream: TcpStream,
    /// Bytes read along with the HTTP request head (the client may pipeline frames after
    /// it), consumed before the socket.
    pending: Vec<u8>,
    consumed: usize,
}

impl HandshakeSocket {
    pub(crate) fn new(stream: TcpStream, pending: Vec<u8>) -> Self {
        HandshakeSocket {
            stream,
            pending,
            consumed: 0,
        }
    }

    /// The socket and the bytes read from it but not yet consumed, for tungstenite.
    pub(crate) fn into_parts(mut self) -> (TcpStream, Vec<u8>) {
        self.pending.drain(..self.consumed);
        (self.stream, self.pending)
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let buffered = (self.pending.len() - self.consumed).min(buf.len());
        buf[..buffered].copy_from_slice(&self.pending[self.consumed..self.consumed + buffered]);
        self.consumed += buffered;
        if buffered < buf.len() {
            self.stream.read_exact(&mut buf[buffered..]).await?;
        }
        Ok(())
    }

    /// Reads the next message, skipping pings and pongs. Not cancel-safe: a caller that
    /// gives up on it (timeout, shutdown) closes the connection.
    pub(crate) async fn next_message(&mut self) -> Result<Incoming, ReadError> {
        loop {
            let (header, len) = self.read_header().await?;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                // No extension is ever negotiated.
                return Err(ReadError::Protocol("reserved bits set"));
            }
            let Some(mask) = header.mask else {
                return Err(ReadError::Protocol("unmasked client frame"));
            };
            match header.opcode {
                OpCode::Control(control) => {
                    if !header.is_final || len > MAX_CONTROL_PAYLOAD as u64 {
                        return Err(ReadError::Protocol("bad control frame"));
                    }
                    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
                    self.read_exact(&mut payload[..len as usize]).await?;
                    match control {
                        Control::Close => return Ok(Incoming::Close),
                        // Nobody is owed a pong before admission; the relay pings only
                        // admitted peers.
                        Control::Ping | Control::Pong => {}
                        Control::Reserved(_) => {
                            return Err(ReadError::Protocol("reserved opcode"));
                        }
                    }
                }
                OpCode::Data(Data::Text) => return Ok(Incoming::Text),
                OpCode::Data(Data::Binary) => {
                    if len > MAX_HANDSHAKE_FRAME_BYTES as u64 {
                        return Err(ReadError::TooLarge(len));
                    }
                    // The handshake frames are tiny: a fragmented one is not a client of
                    // ours.
                    if !header.is_final {
                        return Err(ReadError::Protocol("fragmented handshake frame"));
                    }
                    let mut payload = vec![0u8; len as usize];
                    self.read_exact(&mut payload).await?;
                    for (index, byte) in payload.iter_mut().enumerate() {
                        *byte ^= mask[index % 4];
                    }
                    return Ok(Incoming::Binary(payload));
                }
                OpCode::Data(Data::Continue | Data::Reserved(_)) => {
                    return Err(ReadError::Protocol("unexpected opcode"));
                }
            }
        }
    }

    /// Reads one frame header (2 to 14 bytes), exactly.
    async fn read_header(&mut self) -> Result<(FrameHeader, u64), ReadError> {
        let mut head = [0u8; 14];
        self.read_exact(&mut head[..2]).await?;
        let length_bytes = match head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask_bytes = if head[1] & 0x80 != 0 { 4 } else { 0 };
        let end = 2 + length_bytes + mask_bytes;
        self.read_exact(&mut head[2..end]).await?;
        match FrameHeader::parse(&mut Cursor::new(&head[..end])) {
            Ok(Some(parsed)) => Ok(parsed),
            Ok(None) => Err(ReadError::Protocol("truncated frame header")),
            Err(_) => Err(ReadError::Protocol("bad frame header")),
        }
    }

    /// Writes one binary message, unmasked as a server's are.
    pub(crate) async fn send_binary(&mut self, payload: Vec<u8>) -> io::Result<()> {
        let mut wire = Vec::with_capacity(payload.len() + 4);
        Frame::message(payload, OpCode::Data(Data::Binary), true)
            .format(&mut wire)
            .map_err(io::Error::other)?;
        self.stream.write_all(&wire).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected pair: the relay's end as a `HandshakeSocket` over `pending`, and the
    /// client's raw socket.
    async fn pair(pending: Vec<u8>) -> (HandshakeSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (HandshakeSocket::new(server, pending), client)
    }

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![first];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=65535 => {
                frame.push(0x80 | 126);
                frame.extend((len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend((len as u64).to_be_bytes());
            }
        }
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[tokio::test]
    async fn reads_exactly_one_frame_and_leaves_the_rest() {
        let proof = client_frame(0x82, b"proof");
        let after = client_frame(0x82, b"a message sent right after the proof");
        // The ping and half of the proof came with the request head; the rest follows.
        let mut pending = client_frame(0x89, b"hi");
        pending.extend(&proof[..3]);
        let (mut socket, mut client) = pair(pending).await;
        client.write_all(&proof[3..]).await.unwrap();
        client.write_all(&after).await.unwrap();
        assert_eq!(
            socket.next_message().await.unwrap(),
            Incoming::Binary(b"proof".to_vec())
        );
        let (mut stream, leftover) = socket.into_parts();
        assert!(leftover.is_empty());
        let mut rest = vec![0u8; after.len()];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, after, "the next frame is still in the socket");
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_from_its_header() {
        // Only the header is sent: the refusal does not wait for (or buffer) the payload.
        // (2 bytes, a 64-bit length, the mask.)
        let header = &client_frame(0x82, &vec![0u8; 64 * 1024])[..14];
        let (mut socket, _client) = pair(header.to_vec()).await;
        assert!(matches!(
            socket.next_message().await,
            Err(ReadError::TooLarge(65536))
        ));
    }

    #[tokio::test]
    async fn frames_a_client_must_not_send_are_protocol_errors() {
        let unmasked = vec![0x82, 0x01, 0x00];
        let fragment = client_frame(0x02, b"x");
        let continuation = client_frame(0x80, b"x");
        let reserved_bits = client_frame(0xc2, b"x");
        let long_ping = client_frame(0x89, &[0u8; 126]);
        for bytes in [unmasked, fragment, continuation, reserved_bits, long_ping] {
            let (mut socket, _client) = pair(bytes).await;
            assert!(
                matches!(socket.next_message().await, Err(ReadError::Protocol(_))),
                "accepted a bad frame"
            );
        }
        let (mut socket, _client) = pair(client_frame(0x88, &[0x03, 0xe8])).await;
        assert_eq!(socket.next_message().await.unwrap(), Incoming::Close);
        let (mut socket, _client) = pair(client_frame(0x81, b"hello")).await;
        assert_eq!(socket.next_message().await.unwrap(), Incoming::Text);
    }
}
