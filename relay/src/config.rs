//! The relay's settings: every limit of docs/reference.md §4.3 in one type, checked once at
//! start.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use cue_proto::{FRAME_OVERHEAD, Limits, MAX_HANDSHAKE_FRAME_BYTES};

/// Everything the relay enforces. [`Config::default`] holds the defaults of
/// docs/reference.md §4.3.
#[derive(Debug, Clone)]
pub struct Config {
    /// The limits announced to every peer in its welcome.
    pub limits: Limits,
    /// Open connections from one client address (including ones still in their handshake).
    pub max_connections_per_ip: u32,
    /// Open connections in all; further connections wait in the kernel's backlog.
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For` is believed. Connections from anywhere else are
    /// counted under their own address, whatever they claim.
    pub trusted_proxies: Vec<IpNet>,
    /// A shared secret demanded before the challenge; `None` admits anyone holding the
    /// room key.
    pub auth_token: Option<String>,
    /// From accept to admission: HTTP request, upgrade, auth and proof.
    pub handshake_timeout: Duration,
    /// How often the relay pings an admitted peer.
    pub ping_interval: Duration,
    /// A peer from which nothing (not even a pong) arrived for this long is closed.
    pub idle_timeout: Duration,
    /// A peer whose socket accepts no bytes for this long while frames wait for it is
    /// dropped as a slow reader; with the queue bounds below, this is what keeps a peer
    /// that stops reading from holding memory.
    pub write_timeout: Duration,
    /// Frames waiting to be written to one peer; more and the peer is dropped as a slow
    /// reader.
    pub outbound_queue_frames: usize,
    /// Bytes waiting to be written to one peer; more and the peer is dropped as a slow
    /// reader. At least one largest frame.
    pub outbound_queue_bytes: usize,
    /// tungstenite's read buffer, allocated eagerly for every connection: small, so idle
    /// connections stay cheap (its default of 128 KiB would be 1.2 GiB for 10,000).
    pub read_buffer_bytes: usize,
    /// tungstenite gathers writes up to this many bytes before a system call.
    pub write_buffer_bytes: usize,
    /// How long shutdown waits for sockets to close after "going away".
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            max_connections_per_ip: 256,
            max_connections: 50_000,
            trusted_proxies: Vec::new(),
            auth_token: None,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 8 * 1024 * 1024,
            read_buffer_bytes: 4096,
            write_buffer_bytes: 16 * 1024,
            shutdown_grace: Duration::from_millis(1500),
        }
    }
}

/// A setting the relay cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A limit that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A limit does not fit the rate limiter's 32-bit counters.
    #[error("{name} is {value}, above the largest supported value {max}")]
    TooBig {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: u64,
        /// The largest accepted.
        max: u64,
    },
    /// One setting must be at least another.
    #[error("{name} ({value}) must be at least {needed} ({why})")]
    TooSmall {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: u64,
        /// The smallest accepted.
        needed: u64,
        /// What forces that.
        why: &'static str,
    },
    /// The auth token cannot fit in a handshake frame.
    #[error("the auth token is {0} bytes; at most 400 are supported")]
    TokenTooLong(usize),
}

/// The longest auth token: its frame must fit [`MAX_HANDSHAKE_FRAME_BYTES`].
const MAX_TOKEN_BYTES: usize = 400;
const _: () = assert!(MAX_TOKEN_BYTES + 16 <= MAX_HANDSHAKE_FRAME_BYTES);

impl Config {
    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let rate_limits = [
            ("max message bytes", limits.max_message_bytes),
            ("messages per second", limits.messages_per_second),
            ("burst", limits.burst),
            ("bytes per second", limits.bytes_per_second),
            ("room bytes per second", limits.room_bytes_per_second),
            ("max peers per room", limits.max_peers_per_room),
        ];
        for (name, value) in rate_limits {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
            if value > u64::from(u32::MAX) {
                return Err(ConfigError::TooBig {
                    name,
                    value,
                    max: u64::from(u32::MAX),
                });
            }
        }
        for (name, value) in [
            (
                "max connections per ip",
                u64::from(self.max_connections_per_ip),
            ),
            ("max connections", self.max_connections as u64),
            ("outbound queue frames", self.outbound_queue_frames as u64),
            ("read buffer bytes", self.read_buffer_bytes as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (name, value) in [
            ("handshake timeout", self.handshake_timeout),
            ("ping interval", self.ping_interval),
            ("idle timeout", self.idle_timeout),
            ("write timeout", self.write_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        if limits.bytes_per_second < limits.max_message_bytes {
            return Err(ConfigError::TooSmall {
                name: "bytes per second",
                value: limits.bytes_per_second,
                needed: limits.max_message_bytes,
                why: "the largest message must fit in a second's budget",
            });
        }
        if (self.outbound_queue_bytes as u64) < self.max_frame_bytes() as u64 {
            return Err(ConfigError::TooSmall {
                name: "outbound queue bytes",
                value: self.outbound_queue_bytes as u64,
                needed: self.max_frame_bytes() as u64,
                why: "the queue must hold the largest frame",
            });
        }
        if let Some(token) = &self.auth_token
            && token.len() > MAX_TOKEN_BYTES
        {
            return Err(ConfigError::TokenTooLong(token.len()));
        }
        Ok(())
    }

    /// The largest WebSocket message an admitted peer may send: a largest payload and its
    /// frame header.
    pub fn max_frame_bytes(&self) -> usize {
        usize::try_from(self.limits.max_message_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(FRAME_OVERHEAD)
    }

    /// Whether `address` is a trusted proxy.
    pub fn is_trusted_proxy(&self, address: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(address))
    }
}

/// An address or a CIDR block (`10.0.0.0/8`, `fd00::/8`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    address: IpAddr,
    prefix: u8,
}

/// Why an `IpNet` did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR block (like 10.0.0.0/8 or 192.0.2.7)")]
pub struct IpNetError(String);

impl IpNet {
    /// Whether `address` lies in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || IpNetError(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address = IpAddr::from_str(address)
            .map_err(|_| error())?
            .to_canonical();
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| error())?,
            None => max,
        };
        if prefix > max {
            return Err(error());
        }
        Ok(IpNet { address, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_match_their_addresses() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        let single: IpNet = "192.0.2.7".parse().unwrap();
        assert!(single.contains(ip("192.0.2.7")));
        assert!(!single.contains(ip("192.0.2.8")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        assert!(!all.contains(ip("::1")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("proxy.local".parse::<IpNet>().is_err());
    }

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() {
        assert_eq!(Config::default().validate(), Ok(()));
        let mut config = Config::default();
        config.limits.messages_per_second = 0;
        assert_eq!(
            config.validate(),
            Err(ConfigError::Zero("messages per second"))
        );
        let config = Config {
            outbound_queue_bytes: 1000,
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::TooSmall { .. })
        ));
        let mut config = Config::default();
        config.limits.room_bytes_per_second = 1 << 40;
        assert!(matches!(config.validate(), Err(ConfigError::TooBig { .. })));
    }
}
