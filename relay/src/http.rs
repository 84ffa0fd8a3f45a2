//! The HTTP/1.1 request that opens every connection: a WebSocket upgrade to a room, or a
//! plain `GET /healthz` or `GET /metrics`.
//!
//! The relay reads the request head itself (bounded in size and time) rather than letting
//! tungstenite do it, so one parse serves routing, the upgrade and `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;

/// The longest request head accepted; browsers and proxies send well under 2 KiB.
const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// Why a request head could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("connection closed before the request was complete")]
    Closed,
    #[error("request head over {MAX_HEAD_BYTES} bytes")]
    TooLong,
    #[error("malformed request: {0}")]
    Malformed(#[from] httparse::Error),
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
}

/// The parts of a request the relay uses.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// The path without its query string.
    pub(crate) path: String,
    /// `Sec-WebSocket-Key` when the request is a valid WebSocket upgrade.
    pub(crate) websocket_key: Option<String>,
    /// Every `X-Forwarded-For` header, in order, joined with commas.
    pub(crate) forwarded_for: Option<String>,
    /// Bytes the client sent after the head (already WebSocket frames, in principle).
    pub(crate) rest: Vec<u8>,
}

/// Reads until the end of the request head. The caller bounds the time.
pub(crate) async fn read_request(stream: &mut TcpStream) -> Result<Request, HeadError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(HeadError::Closed);
        }
        buffer.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buffer)? {
            httparse::Status::Complete(head_len) => {
                return Ok(Request::from_parsed(&request, buffer[head_len..].to_vec()));
            }
            httparse::Status::Partial if buffer.len() >= MAX_HEAD_BYTES => {
                return Err(HeadError::TooLong);
            }
            httparse::Status::Partial => {}
        }
    }
}

impl Request {
    fn from_parsed(request: &httparse::Request<'_, '_>, rest: Vec<u8>) -> Request {
        let header = |name: &str| -> Vec<String> {
            request
                .headers
                .iter()
                .filter(|header| header.name.eq_ignore_ascii_case(name))
                .map(|header| String::from_utf8_lossy(header.value).trim().to_owned())
                .collect()
        };
        let has_token = |name: &str, token: &str| {
            header(name).iter().any(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        };
        let is_upgrade = has_token("connection", "upgrade")
            && has_token("upgrade", "websocket")
            && header("sec-websocket-version")
                .iter()
                .any(|version| version == "13");
        let websocket_key = is_upgrade
            .then(|| header("sec-websocket-key").into_iter().next())
            .flatten()
            .filter(|key| !key.is_empty());
        let forwarded = header("x-forwarded-for");
        let path = request.path.unwrap_or("");
        Request {
            method: request.method.unwrap_or("").to_owned(),
            path: path.split('?').next().unwrap_or("").to_owned(),
            websocket_key,
            forwarded_for: (!forwarded.is_empty()).then(|| forwarded.join(",")),
            rest,
        }
    }

    /// The client's address: the TCP peer, unless the peer is a trusted proxy, in which
    /// case the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
    /// (Entries left of it were written by the client and prove nothing.)
    pub(crate) fn client_address(&self, peer: SocketAddr, config: &Config) -> IpAddr {
        let peer_ip = peer.ip().to_canonical();
        if !config.is_trusted_proxy(peer_ip) {
            return peer_ip;
        }
        let Some(forwarded) = &self.forwarded_for else {
            return peer_ip;
        };
        for entry in forwarded.rsplit(',') {
            let entry = entry.trim();
            let parsed = entry
                .parse::<IpAddr>()
                .ok()
                .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()));
            match parsed {
                Some(address) if config.is_trusted_proxy(address) => continue,
                Some(address) => return address.to_canonical(),
                // Garbage where an address should be: stop trusting the chain here, and
                // count the connection under the proxy that handed it over.
                None => return peer_ip,
            }
        }
        peer_ip
    }
}

/// Writes a small plain-text response and closes the write side.
pub(crate) async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    extra_headers: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Completes the WebSocket upgrade (RFC 6455 §4.2.2).
pub(crate) async fn accept_upgrade(stream: &mut TcpStream, key: &str) -> std::io::Result<()> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Request {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(text.as_bytes()).unwrap().is_complete());
        Request::from_parsed(&request, Vec::new())
    }

    #[test]
    fn recognises_an_upgrade() {
        let request = parse(
            "GET /v1/rooms/ab?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        assert_eq!(request.path, "/v1/rooms/ab");
        assert_eq!(
            request.websocket_key.as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        let plain = parse("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(plain.websocket_key, None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let request = parse(
            "GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n",
        );
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        let mut config = Config::default();
        assert_eq!(
            request.client_address(proxy, &config),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        // 10.0.0.2 is a trusted hop too; the client is the first untrusted one from the
        // right, never the spoofable left-most entry.
        assert_eq!(
            request.client_address(proxy, &config),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            request.client_address(stranger, &config),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
    }
}
