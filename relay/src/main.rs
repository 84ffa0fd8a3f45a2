//! `cue-relay`: runs the relay (see the `cue_relay` library) or, as `cue-relay
//! healthcheck`, checks one that is running.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use cue_relay::{RelayArgs, healthcheck, parse_listen, serve};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "cue-relay",
    version,
    about = "The cue relay: stateless, rate-limited WebSocket rooms"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    relay: RelayArgs,

    /// Log format on stderr (filter with RUST_LOG, default info).
    #[arg(long, env = "CUE_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exit 0 if the relay answers GET /healthz with 200, else 1 (for container
    /// HEALTHCHECKs, where there is no curl).
    ///
    /// It checks the address the relay listens on, found as the relay finds it: this
    /// command's --listen; else, in a container whose process 1 is the relay, that
    /// process's --listen; else `cue-relay --listen` or CUE_RELAY_LISTEN (default
    /// 0.0.0.0:8080). An unspecified address (0.0.0.0, ::) is checked on loopback.
    Healthcheck {
        /// The URL to check; overrides every address.
        #[arg(long, env = "CUE_RELAY_HEALTHCHECK_URL")]
        url: Option<String>,
        /// The address the relay listens on (HOST:PORT, as its own --listen).
        #[arg(long, value_parser = parse_listen)]
        listen: Option<SocketAddr>,
        /// Give up after this many seconds per step.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let result = match &cli.command {
        Some(Command::Healthcheck {
            url,
            listen,
            timeout_secs,
        }) => {
            let url = url.clone().unwrap_or_else(|| {
                let given_here = matches.value_source("listen") == Some(ValueSource::CommandLine);
                let listen = listen
                    .or_else(|| (!given_here).then(relay_in_this_container).flatten())
                    .unwrap_or(cli.relay.listen);
                healthcheck::default_url(listen)
            });
            healthcheck::check(&url, Duration::from_secs(*timeout_secs)).map_err(Into::into)
        }
        None => run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "cue-relay: error: {}",
                cue_relay::error_line(error.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// The address the relay serving this container listens on: in an image whose
/// ENTRYPOINT is `cue-relay`, process 1 is the relay, and its command line (with the
/// container's environment, which the healthcheck shares) says where it listens, whether
/// the port came from CUE_RELAY_LISTEN or from `--listen` after the image name.
fn relay_in_this_container() -> Option<SocketAddr> {
    let command_line = std::fs::read("/proc/1/cmdline").ok()?;
    let args = command_line
        .split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| OsString::from_vec(arg.to_vec()));
    relay_listen_in(args)
}

/// Where a `cue-relay` server run with `args` (its argv) listens; `None` for another
/// program or a subcommand.
fn relay_listen_in(args: impl IntoIterator<Item = OsString>) -> Option<SocketAddr> {
    let mut args = args.into_iter().peekable();
    let program = Path::new(args.peek()?).file_name()?;
    if program != "cue-relay" {
        return None;
    }
    match Cli::try_parse_from(args) {
        Ok(Cli {
            command: None,
            relay,
            ..
        }) => Some(relay.listen),
        _ => None,
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a terminal: journald and `docker logs` would keep the escape codes.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let config = cli.relay.to_config()?;
    config.validate().context("check the relay's flags")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        // Install the handlers before binding, so a signal right after start-up is never
        // lost to the default action.
        let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT")?;
        let listener = TcpListener::bind(cli.relay.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cli.relay.listen))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        tracing::info!(%bound, limits = ?config.limits, "relay started");
        {
            // Tests and scripts read this line to learn the port; a closed stdout is not
            // an error for a server.
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "listening on {bound}");
            let _ = stdout.flush();
        }
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
            }
        };
        serve(config, listener, shutdown).await?;
        tracing::info!("relay stopped");
        Ok(())
    });
    // serve() leaves no task behind; this bounds the exit even if a blocking call (DNS,
    // a stuck write to stderr) would hold the runtime.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_healthcheck_reads_the_relays_own_command_line() {
        assert_eq!(
            relay_listen_in(args(&[
                "/usr/local/bin/cue-relay",
                "--listen",
                "0.0.0.0:9000"
            ])),
            Some("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(
            relay_listen_in(args(&["cue-relay", "--listen=[::]:7000", "--burst", "5"])),
            Some("[::]:7000".parse().unwrap())
        );
        assert_eq!(relay_listen_in(args(&["/sbin/init"])), None);
        assert_eq!(relay_listen_in(args(&["cue-relay", "healthcheck"])), None);
        assert_eq!(relay_listen_in(args(&[])), None);
    }

    #[test]
    fn healthcheck_flags_parse() {
        let cli = Cli::try_parse_from(["cue-relay", "healthcheck", "--listen", "localhost:9000"])
            .unwrap();
        let Some(Command::Healthcheck { listen, .. }) = cli.command else {
            panic!("not the healthcheck");
        };
        assert!(listen.unwrap().ip().is_loopback());
    }
}
