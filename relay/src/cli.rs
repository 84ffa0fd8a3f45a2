//! The relay's command line, shared by `cue-relay` and `cue relay`.

use std::io::Read as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use cue_proto::Limits;

use crate::config::{Config, IpNet};

/// Flags of the relay; each is also a `CUE_RELAY_*` environment variable.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Address to listen on, HOST:PORT; a host name is resolved and its first address
    /// used (port 0 picks a free one; the bound address is printed).
    #[arg(long, env = "CUE_RELAY_LISTEN", default_value = "0.0.0.0:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Shared secret that peers must present before joining (empty: none). A flag is
    /// visible to every user of the machine in `ps`: prefer the variable or
    /// --auth-token-file.
    #[arg(
        long,
        env = "CUE_RELAY_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub auth_token: Option<String>,

    /// Read the auth token from this file (surrounding whitespace ignored; keep it mode
    /// 0600), instead of --auth-token.
    #[arg(
        long,
        env = "CUE_RELAY_AUTH_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "auth_token"
    )]
    pub auth_token_file: Option<PathBuf>,

    /// Most peers in one room.
    #[arg(long, env = "CUE_RELAY_MAX_PEERS_PER_ROOM", default_value_t = Limits::default().max_peers_per_room)]
    pub max_peers_per_room: u64,

    /// Messages a second a peer may send, sustained.
    #[arg(long, env = "CUE_RELAY_MESSAGES_PER_SECOND", default_value_t = Limits::default().messages_per_second)]
    pub messages_per_second: u64,

    /// Messages a peer may send at once above the sustained rate.
    #[arg(long, env = "CUE_RELAY_BURST", default_value_t = Limits::default().burst)]
    pub burst: u64,

    /// Payload bytes a second a peer may send.
    #[arg(long, env = "CUE_RELAY_BYTES_PER_SECOND", default_value_t = Limits::default().bytes_per_second)]
    pub bytes_per_second: u64,

    /// Payload bytes a second a room may deliver (a broadcast counts once per recipient).
    #[arg(long, env = "CUE_RELAY_ROOM_BYTES_PER_SECOND", default_value_t = Limits::default().room_bytes_per_second)]
    pub room_bytes_per_second: u64,

    /// Largest payload of one message, in bytes.
    #[arg(long, env = "CUE_RELAY_MAX_MESSAGE_BYTES", default_value_t = Limits::default().max_message_bytes)]
    pub max_message_bytes: u64,

    /// Open connections from one client address.
    #[arg(long, env = "CUE_RELAY_MAX_CONNECTIONS_PER_IP", default_value_t = Config::default().max_connections_per_ip)]
    pub max_connections_per_ip: u32,

    /// Open connections in all.
    #[arg(long, env = "CUE_RELAY_MAX_CONNECTIONS", default_value_t = Config::default().max_connections)]
    pub max_connections: usize,

    /// Proxies (addresses or CIDR blocks, comma-separated) whose X-Forwarded-For is
    /// believed.
    #[arg(
        long = "trusted-proxies",
        visible_alias = "trusted-proxy",
        env = "CUE_RELAY_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// Time from connect to admission (e.g. 10s, 500ms).
    #[arg(long, env = "CUE_RELAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Interval between pings to each peer.
    #[arg(long, env = "CUE_RELAY_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A peer silent this long (no frame, no pong) is closed.
    #[arg(long, env = "CUE_RELAY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// A peer whose socket takes no bytes for this long, while frames wait for it, is
    /// dropped as a slow reader.
    #[arg(long, env = "CUE_RELAY_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Frames queued towards one peer before it is dropped as a slow reader.
    #[arg(long, env = "CUE_RELAY_OUTBOUND_QUEUE_FRAMES", default_value_t = Config::default().outbound_queue_frames)]
    pub outbound_queue_frames: usize,

    /// Bytes queued towards one peer before it is dropped as a slow reader.
    #[arg(long, env = "CUE_RELAY_OUTBOUND_QUEUE_BYTES", default_value_t = Config::default().outbound_queue_bytes)]
    pub outbound_queue_bytes: usize,

    /// WebSocket read buffer per connection, in bytes.
    #[arg(long, env = "CUE_RELAY_READ_BUFFER_BYTES", default_value_t = Config::default().read_buffer_bytes)]
    pub read_buffer_bytes: usize,
}

impl RelayArgs {
    /// The configuration these flags describe (validated by [`crate::serve`]); fails
    /// only when the auth token file cannot be read.
    pub fn to_config(&self) -> Result<Config, TokenFileError> {
        let auth_token = match &self.auth_token_file {
            Some(path) => Some(read_token_file(path)?),
            None => self.auth_token.clone().filter(|token| !token.is_empty()),
        };
        Ok(Config {
            limits: Limits {
                max_message_bytes: self.max_message_bytes,
                messages_per_second: self.messages_per_second,
                burst: self.burst,
                bytes_per_second: self.bytes_per_second,
                room_bytes_per_second: self.room_bytes_per_second,
                max_peers_per_room: self.max_peers_per_room,
            },
            max_connections_per_ip: self.max_connections_per_ip,
            max_connections: self.max_connections,
            trusted_proxies: self.trusted_proxies.clone(),
            auth_token,
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            outbound_queue_frames: self.outbound_queue_frames,
            outbound_queue_bytes: self.outbound_queue_bytes,
            read_buffer_bytes: self.read_buffer_bytes,
            ..Config::default()
        })
    }
}

/// A token file larger than this is not a token file (a token is at most 400 bytes).
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Why an auth token file gave no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the auth token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the auth token file {0} is empty; write the token into it")]
    Empty(String),
    #[error("the auth token file {0} is larger than 4096 bytes; it should hold only the token")]
    TooLarge(String),
}

/// The auth token held in the file at `path`, without surrounding whitespace (so a
/// file written by `echo TOKEN > file` works). Shared by `cue-relay --auth-token-file`
/// and the `cue` client's.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let shown = path.display().to_string();
    let read = |source| TokenFileError::Read {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(TokenFileError::TooLarge(shown));
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty(shown));
    }
    Ok(token.to_string())
}

/// `IP:PORT`, `[IPv6]:PORT`, or `HOST:PORT` with a host name to resolve (`localhost:8080`).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} is not HOST:PORT (like 0.0.0.0:8080 or localhost:8080)"
        ));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "{text:?} is not HOST:PORT (like 0.0.0.0:8080 or localhost:8080)"
        ));
    }
    text.to_socket_addrs()
        .map_err(|error| format!("cannot resolve {host:?}: {error}"))?
        .next()
        .ok_or_else(|| format!("{host:?} has no address"))
}

/// An error as the one line `cue-relay` and `cue` print on stderr (docs/reference.md
/// §1.11): the message, then each cause whose text the line does not already hold. Many
/// errors repeat their source in their own message (`"{url}: {source}"`, or a bare
/// `"{0}"` around another error) and also return it as their `source()`, which would
/// otherwise print it twice. Line breaks inside a message become spaces.
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = one_line(&error.to_string());
    let mut source = error.source();
    while let Some(cause) = source {
        let text = one_line(&cause.to_string());
        if !text.is_empty() && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `250ms`, `10s`, `2m`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (like 500ms, 10s or 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        relay: RelayArgs,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("{0}")]
        Bare(#[from] Inner),
        #[error("{url}: {source}")]
        Io { url: String, source: Inner },
        #[error("cannot start")]
        Plain(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the invite token's checksum does not match:\n  copy the whole line again")]
    struct Inner;

    #[test]
    fn an_error_is_one_line_and_says_each_cause_once() {
        let inner = "the invite token's checksum does not match: copy the whole line again";
        assert_eq!(error_line(&Outer::Bare(Inner)), inner);
        let io = Outer::Io {
            url: "http://127.0.0.1:9/healthz".into(),
            source: Inner,
        };
        assert_eq!(
            error_line(&io),
            format!("http://127.0.0.1:9/healthz: {inner}")
        );
        assert_eq!(
            error_line(&Outer::Plain(Inner)),
            format!("cannot start: {inner}")
        );
        // anyhow's context: each layer once, the repeated one dropped.
        let error = anyhow::Error::new(Outer::Bare(Inner)).context("joining the workspace");
        assert_eq!(
            error_line(error.as_ref()),
            format!("joining the workspace: {inner}")
        );
        // What `cue-relay healthcheck` printed twice.
        let refused = crate::healthcheck::HealthError::Io {
            url: "http://127.0.0.1:9/healthz".into(),
            source: std::io::Error::from_raw_os_error(111),
        };
        let line = error_line(&refused);
        assert!(line.starts_with("http://127.0.0.1:9/healthz: "), "{line}");
        assert_eq!(line.matches("os error 111").count(), 1, "{line}");
    }

    #[test]
    fn defaults_are_the_design_defaults() {
        let cli = Cli::try_parse_from(["cue-relay"]).unwrap();
        let config = cli.relay.to_config().unwrap();
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.max_connections_per_ip, 256);
        assert_eq!(config.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.ping_interval, Duration::from_secs(20));
        assert_eq!(cli.relay.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn flags_reach_the_config() {
        let cli = Cli::try_parse_from([
            "cue-relay",
            "--listen",
            "127.0.0.1:0",
            "--trusted-proxy",
            "10.0.0.0/8,192.0.2.1",
            "--handshake-timeout",
            "250ms",
            "--burst",
            "7",
            "--auth-token",
            "",
        ])
        .unwrap();
        let config = cli.relay.to_config().unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
        assert_eq!(config.handshake_timeout, Duration::from_millis(250));
        assert_eq!(config.limits.burst, 7);
        assert_eq!(config.auth_token, None);
        assert!(parse_duration("3h").is_err());
        assert_eq!(config.write_timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_auth_token_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token\n").unwrap();
        let file = path.to_str().unwrap();
        let cli = Cli::try_parse_from(["cue-relay", "--auth-token-file", file]).unwrap();
        let config = cli.relay.to_config().unwrap();
        assert_eq!(config.auth_token.as_deref(), Some("s3cret-token"));
        // Not both: which one would win is not obvious.
        assert!(
            Cli::try_parse_from(["cue-relay", "--auth-token-file", file, "--auth-token", "x"])
                .is_err()
        );
        // An empty or missing file is an error that names it, never "no token".
        std::fs::write(&path, " \n").unwrap();
        let cli = Cli::try_parse_from(["cue-relay", "--auth-token-file", file]).unwrap();
        let error = cli.relay.to_config().unwrap_err().to_string();
        assert!(
            error.contains("is empty") && error.contains(file),
            "{error}"
        );
        let missing = dir.path().join("missing");
        let cli =
            Cli::try_parse_from(["cue-relay", "--auth-token-file", missing.to_str().unwrap()])
                .unwrap();
        let error = cli.relay.to_config().unwrap_err().to_string();
        assert!(
            error.starts_with("cannot read the auth token file"),
            "{error}"
        );
    }

    #[test]
    fn the_listen_address_may_be_a_host_name() {
        let cli = Cli::try_parse_from(["cue-relay", "--listen", "localhost:8080"]).unwrap();
        assert!(cli.relay.listen.ip().is_loopback(), "{}", cli.relay.listen);
        assert_eq!(cli.relay.listen.port(), 8080);
        assert_eq!(parse_listen("[::]:9000"), Ok("[::]:9000".parse().unwrap()));
        assert!(parse_listen("localhost").is_err(), "a port is needed");
        assert!(parse_listen("localhost:http").is_err());
        assert!(parse_listen(":8080").is_err());
        assert!(Cli::try_parse_from(["cue-relay", "--listen", "no.such.host.invalid:80"]).is_err());
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    }
}
