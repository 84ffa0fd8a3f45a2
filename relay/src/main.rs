//! `cue-relay`: runs the relay (see the `cue_relay` library) or, as `cue-relay
//! healthcheck`, checks one that is running.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use cue_relay::{RelayArgs, healthcheck, serve};
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
    Healthcheck {
        /// The URL to check (default: /healthz on the port of --listen, on loopback).
        #[arg(long, env = "CUE_RELAY_HEALTHCHECK_URL")]
        url: Option<String>,
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
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Healthcheck { url, timeout_secs }) => {
            let url = url
                .clone()
                .unwrap_or_else(|| healthcheck::default_url(cli.relay.listen));
            healthcheck::check(&url, Duration::from_secs(*timeout_secs)).map_err(Into::into)
        }
        None => run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cue-relay: error: {error:#}");
            ExitCode::FAILURE
        }
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
    let config = cli.relay.to_config();
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
