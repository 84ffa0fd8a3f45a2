//! `cue-relay healthcheck`: a tiny HTTP client for the container's HEALTHCHECK, because
//! the distroless runtime image has no curl.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why the relay is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The URL is not `http://host:port/path`.
    #[error("{0:?} is not an http:// URL")]
    BadUrl(String),
    /// Could not connect, send or read.
    #[error("{url}: {source}")]
    Io {
        /// The URL checked.
        url: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The relay answered something other than 200.
    #[error("{url} answered {status:?}")]
    Status {
        /// The URL checked.
        url: String,
        /// Its status line.
        status: String,
    },
}

/// The health URL for a relay listening on `listen`: loopback when it listens on every
/// address.
pub fn default_url(listen: SocketAddr) -> String {
    let host = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        ip if ip.is_ipv6() => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/healthz", listen.port())
}

/// GETs `url` and succeeds on a 200 answer within `timeout` per step.
pub fn check(url: &str, timeout: Duration) -> Result<(), HealthError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HealthError::BadUrl(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    let io = |source| HealthError::Io {
        url: url.to_owned(),
        source,
    };
    let address = authority
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| HealthError::BadUrl(url.to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut response = Vec::with_capacity(256);
    stream.take(4096).read_to_end(&mut response).map_err(io)?;
    let status = String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(HealthError::Status {
            url: url.to_owned(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_reaches_the_listener() {
        assert_eq!(
            default_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            default_url("[::]:9000".parse().unwrap()),
            "http://[::1]:9000/healthz"
        );
        assert_eq!(
            default_url("10.1.2.3:80".parse().unwrap()),
            "http://10.1.2.3:80/healthz"
        );
        assert!(matches!(
            check("https://x/healthz", Duration::from_secs(1)),
            Err(HealthError::BadUrl(_))
        ));
    }
}
