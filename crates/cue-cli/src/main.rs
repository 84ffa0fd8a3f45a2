//! `cue`: the command line of cue (docs/reference.md §1). It makes and joins workspaces,
//! starts and stops the sync daemon (which lives in `cue-daemon`), and reports status and
//! activity.
//!
//! Errors are one line on stderr saying what to do, exit 1; usage errors exit 2 (clap's
//! own). The commands, flags and JSON keys are pinned by the contract: end-to-end tests
//! drive exactly these.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod demo;
mod history;
mod members;
mod now;
mod progress;
mod status_view;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use cue_daemon::control::{self, Request, StatusContext, StatusReport};
use cue_daemon::driver::{Driver, now_ms, offline_status};
use cue_daemon::run::{run_foreground, start_background};
use cue_daemon::workspace::{Workspace, find_root};
use cue_daemon::{DaemonLock, Store};

#[derive(Debug, Parser)]
#[command(
    name = "cue",
    version,
    about = "Keep a folder in sync between machines, local-first and end-to-end encrypted",
    after_help = "Example:\n  cue sync init --relay wss://relay.example.org\n  cue sync start\n  cue sync invite   # give the token to your other machine: cue sync join TOKEN"
)]
struct Cli {
    /// Act on the workspace at DIR (like git -C) instead of the current folder.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// Workspaces and the sync daemon.
    #[command(
        subcommand,
        after_help = "Example:\n  cue sync init --relay wss://relay.example.org --name laptop && cue sync start\n  cue sync status"
    )]
    Sync(SyncCmd),
    /// Watch the folder and sync it, in the foreground (`watch --sync`).
    #[command(
        after_help = "Example (an always-on peer on a server):\n  cue -C /srv/notes watch --sync"
    )]
    Watch {
        /// Sync through the relay (the same as `cue sync start --foreground`).
        #[arg(long)]
        sync: bool,
        /// Relay URL to use from now on, ws:// or wss:// (saved into the config).
        #[arg(long, value_name = "URL")]
        relay: Option<String>,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// What happened in the workspace.
    #[command(subcommand, after_help = "Example:\n  cue activity log --since 1d")]
    Activity(ActivityCmd),
    /// The versions of a file, newest first: REV, time, device, what changed (follows
    /// renames).
    #[command(
        after_help = "Example:\n  cue history notes/plan.md\n  cue history notes/plan.md --json | jq '.[0].rev'"
    )]
    History {
        /// The file, relative to the current folder.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Write every synced file's automerge document and the index into DIR (readable by
    /// any automerge implementation: docs/schema.md).
    #[command(after_help = "Example:\n  cue export --automerge ~/notes-export")]
    Export {
        /// Write automerge documents (the only format today).
        #[arg(long, value_name = "DIR")]
        automerge: PathBuf,
    },
    /// Print a version of a file, as it was (REV from `cue history`).
    #[command(after_help = "Example:\n  cue show notes/plan.md --at 3f2a9c1d0e4b")]
    Show {
        /// The file, relative to the current folder.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// The version: a REV of `cue history` (at least its first 4 hex digits).
        #[arg(long, value_name = "REV")]
        at: String,
    },
    /// Run the relay in this process (the same code as `cue-relay`).
    #[command(after_help = "Example:\n  cue relay --listen 127.0.0.1:8080")]
    Relay(RelayCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Example:\n  cue completions bash > ~/.local/share/bash-completion/completions/cue"
    )]
    Completions {
        /// The shell to write the script for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Show the whole system on this machine: a relay and two peers in temporary
    /// folders, edits on both, live convergence, figures; cleans up after itself.
    #[command(after_help = "Example:\n  cue demo")]
    Demo,
}

/// The relay's auth token for this run of the daemon, for self-hosted relays that ask
/// for one: used instead of `sync.relay.auth_token` and never saved.
#[derive(Debug, Args)]
struct AuthArgs {
    /// The relay's auth token, instead of sync.relay.auth_token (not saved). A flag is
    /// visible to every user of the machine in `ps`: prefer the variable or
    /// --auth-token-file.
    #[arg(
        long,
        env = "CUE_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    auth_token: Option<String>,
    /// Read the relay's auth token from this file (surrounding whitespace ignored; keep
    /// it mode 0600), instead of sync.relay.auth_token (not saved).
    #[arg(
        long,
        env = "CUE_AUTH_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "auth_token"
    )]
    auth_token_file: Option<PathBuf>,
}

impl AuthArgs {
    /// The token these say, if any (an empty one is none: the config's is used).
    fn token(&self) -> anyhow::Result<Option<String>> {
        Ok(match &self.auth_token_file {
            Some(path) => Some(cue_relay::read_token_file(path)?),
            None => self.auth_token.clone().filter(|token| !token.is_empty()),
        })
    }
}

#[derive(Debug, Args)]
struct RelayCmd {
    #[command(flatten)]
    relay: cue_relay::RelayArgs,

    /// Log format on stderr (filter with CUE_LOG or RUST_LOG, default info).
    #[arg(long, env = "CUE_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format` of `cue relay`, as `cue-relay` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Debug, Subcommand)]
enum SyncCmd {
    /// Make this folder a new workspace (.cuedeck/), importing the files already here.
    #[command(
        after_help = "Example:\n  cue sync init --relay wss://relay.example.org --name laptop\n  cue sync init --relay ws://127.0.0.1:8080   # trying it on one machine, with `cue relay`"
    )]
    Init {
        /// Relay URL, ws:// or wss:// (default ws://127.0.0.1:8080: this machine only);
        /// saved into the config and carried by invites.
        #[arg(long, value_name = "URL")]
        relay: Option<String>,
        /// This device's name (letters, digits, '.', '_', '-'; default: the host name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Print a new invite token for another device (a secret, like a password), or
    /// list or revoke this device's invites.
    ///
    /// The token admits devices until it expires (7 days unless --expires says
    /// otherwise), at most --uses of them, and only while the workspace secret is not
    /// rotated. This device admits them: its daemon must be running when they start.
    #[command(
        after_help = "Examples:\n  cue sync invite                      # then, on the other machine: cue sync join TOKEN\n  cue sync invite --expires 1h --uses 1\n  cue sync invite --list\n  cue sync invite --revoke 3f2a"
    )]
    Invite {
        /// How long the token admits devices: 30m, 12h, 7d, 2w (default 7d).
        #[arg(long, value_name = "DURATION", value_parser = duration_ms, conflicts_with_all = ["list", "revoke"])]
        expires: Option<i64>,
        /// At most this many devices join with it (default: any number until it expires).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with_all = ["list", "revoke"])]
        uses: Option<u32>,
        /// List the invites this device made, with their state.
        #[arg(long, conflicts_with = "revoke")]
        list: bool,
        /// Revoke the invite whose id starts with ID (see --list).
        #[arg(long, value_name = "ID")]
        revoke: Option<String>,
    },
    /// Every device of the workspace: name, id, joined, admitted by, last seen, online,
    /// removed; this one marked.
    #[command(
        after_help = "Example:\n  cue sync devices\n  cue sync devices --json | jq '.[].name'"
    )]
    Devices {
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device (a lost laptop) and rotate the workspace secret: it decrypts
    /// nothing new and cannot come back with what it holds.
    #[command(after_help = "Example:\n  cue sync remove old-laptop\n  cue sync remove 3f2a9c")]
    Remove {
        /// The device's name, or the start of its id (see `cue sync devices`).
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Rotate the workspace secret (after a token leaked): earlier invites stop working.
    #[command(after_help = "Example:\n  cue sync rotate")]
    Rotate,
    /// Make this folder a copy of the workspace of TOKEN (files here are merged).
    #[command(after_help = "Example:\n  cue sync join cueinv1... --name desktop")]
    Join {
        /// The invite token (cueinv1...) that `cue sync invite` printed on a device of the
        /// workspace.
        #[arg(value_name = "TOKEN")]
        token: String,
        /// Relay URL to use instead of the one the token carries, ws:// or wss:// (saved
        /// into the config).
        #[arg(long, value_name = "URL")]
        relay: Option<String>,
        /// This device's name (letters, digits, '.', '_', '-'; default: the host name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Start the sync daemon (in the background unless --foreground).
    ///
    /// Returns once the daemon has scanned the folder and watches it; it does not wait
    /// for the relay. On a terminal, a device that joined shows its first sync's
    /// progress until it completes (Ctrl-C stops watching, the daemon goes on).
    #[command(after_help = "Example:\n  cue sync start --relay wss://relay.example.org")]
    Start {
        /// Relay URL to use from now on, ws:// or wss:// (saved into the config, and
        /// carried by the invites made after it).
        #[arg(long, value_name = "URL")]
        relay: Option<String>,
        /// Run in this terminal instead of detaching.
        #[arg(long)]
        foreground: bool,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Sync once and exit: 0 when every online peer holds what this device holds and
    /// the other way round, 1 with the reason otherwise (for scripts and cron; starts a
    /// daemon for the while if none runs).
    #[command(after_help = "Example:\n  cue sync now --timeout 1m && echo synced")]
    Now {
        /// How long to try: 30s, 2m... (default 30s).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration_ms)]
        timeout: i64,
    },
    /// Stop the daemon once everything it knows is on disk.
    #[command(after_help = "Example:\n  cue sync stop")]
    Stop,
    /// Daemon, relay, peers, pending changes and conflicts (exit 1 if no daemon runs).
    #[command(after_help = "Example:\n  cue sync status\n  cue sync status --json | jq .peers")]
    Status {
        /// One JSON object (schema_version 1), printed also when no daemon runs.
        #[arg(long)]
        json: bool,
    },
    /// Bring back a deleted file, or everything deleted under a folder (`.`: all), the
    /// deletions the mass-deletion guard holds included.
    #[command(after_help = "Examples:\n  cue sync restore notes/todo.md\n  cue sync restore .")]
    Restore {
        /// Files, folders, or `.` for the whole workspace (one file with --at).
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,
        /// Bring the file back to this version of `cue history`, as a new edit.
        #[arg(long, value_name = "REV")]
        at: Option<String>,
    },
    /// Let the deletions the mass-deletion guard holds here go through: this device's own
    /// go to the other devices (whose own guard may hold them in turn: run it there too),
    /// a peer's held here are carried out here.
    #[command(after_help = "Example:\n  cue sync apply-deletions")]
    ApplyDeletions,
    /// Mark the conflicts reported for PATH as seen, on every device.
    #[command(after_help = "Example:\n  cue sync resolve notes/todo.md")]
    Resolve {
        /// The conflicted file or its conflict copy, relative to the current folder.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Make the folder of a disk listed as not mounted a plain folder again (the disk is
    /// gone for good): the files synced from the disk are written into it, deleted
    /// nowhere, and what is made in it syncs.
    #[command(after_help = "Example:\n  cue sync forget-mount media")]
    ForgetMount {
        /// The folder, relative to the current folder.
        #[arg(value_name = "FOLDER")]
        folder: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ActivityCmd {
    /// The activity log, newest last.
    #[command(after_help = "Example:\n  cue activity log --since 2h30m --json")]
    Log {
        /// How far back: 1d, 2h30m, 45m, or a date (2026-11-01 or RFC 3339).
        #[arg(long, value_name = "WHEN", value_parser = since_arg)]
        since: Option<i64>,
        /// At most this many entries (the newest).
        #[arg(short = 'n', value_name = "N")]
        limit: Option<usize>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
        /// Keep printing new entries as they happen (Ctrl-C to stop).
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// The command line as clap sees it. `-C` is global, but names no workspace for the
/// commands that act on none (`relay`, `demo`, `completions`): it is left out of their
/// help.
fn cli_command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    // A subcommand that has an argument of the global's id keeps its own: a hidden copy.
    let dir = cmd
        .get_arguments()
        .find(|a| a.get_id() == "dir")
        .cloned()
        .map(|a| a.global(false).hide(true));
    if let Some(dir) = dir {
        for name in ["relay", "demo", "completions"] {
            cmd = cmd.mut_subcommand(name, |sub| sub.arg(dir.clone()));
        }
    }
    cmd
}

fn parse() -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    let mut cmd = cli_command();
    let matches = cmd.try_get_matches_from_mut(std::env::args_os())?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // The demo's own output is the point: the in-process relay's logs only on request.
    let json_logs = matches!(&cli.command, Top::Relay(r) if r.log_format == LogFormat::Json);
    init_logging(
        if matches!(cli.command, Top::Demo) {
            "warn"
        } else {
            "info"
        },
        json_logs,
    );
    match run(cli).map_err(anyhow::Error::downcast::<clap::Error>) {
        Ok(code) => code,
        Err(Ok(usage)) => usage_error(usage),
        Err(Err(error)) => {
            // One line: the chain of causes, each said once, ending with what to do.
            eprintln!("cue: error: {}", cue_relay::error_line(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// A usage error as one line on stderr saying what to do, exit 2; help and version as
/// clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    eprintln!(
        "cue: error: {}; see `{} --help`",
        usage_line(&e.render().to_string()),
        command_path(&args)
    );
    ExitCode::from(2)
}

/// A usage error found once the arguments are parsed (a combination clap does not
/// check): said and exited with as clap's own (status 2).
fn usage(kind: clap::error::ErrorKind, message: &str) -> anyhow::Error {
    anyhow::Error::new(cli_command().error(kind, message))
}

/// A duration such as 30s, 2m, 12h, 7d or 2w, in milliseconds (a bad one is a usage
/// error, status 2).
fn duration_ms(s: &str) -> Result<i64, String> {
    cue_daemon::devices::parse_expiry(s)
}

/// The command the arguments name, as far as they name one: `cue sync status`.
fn command_path(args: &[String]) -> String {
    let mut cmd = cli_command();
    let mut path = vec!["cue".to_string()];
    let mut args = args.iter();
    while let Some(a) = args.next() {
        if a == "-C" {
            args.next();
            continue;
        }
        if a.starts_with('-') {
            continue;
        }
        let Some(sub) = cmd.find_subcommand(a).cloned() else {
            break;
        };
        path.push(sub.get_name().to_string());
        cmd = sub;
    }
    path.join(" ")
}

/// clap's rendered error (message, tips, usage) as one line: the message and the tips.
fn usage_line(rendered: &str) -> String {
    let mut paragraphs = rendered.split("\n\n").map(|p| {
        p.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let message = paragraphs.next().unwrap_or_default();
    let message = message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_string();
    let mut line = message;
    for p in paragraphs {
        if let Some(tip) = p.strip_prefix("tip: ") {
            line.push_str(&format!(" ({tip})"));
        }
    }
    line
}

fn init_logging(default: &str, json: bool) {
    let filter = std::env::var("CUE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal that takes them (NO_COLOR, CLICOLOR, TERM),
        // never in daemon.log.
        .with_ansi(
            !json
                && anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never,
        );
    let _ = if json {
        logs.json().try_init()
    } else {
        logs.try_init()
    };
}

/// The folder the command acts on: `-C DIR`, else the current one.
fn base_dir(cli_dir: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    Ok(match cli_dir {
        Some(d) => cwd.join(d),
        None => cwd,
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let base = base_dir(&cli.dir)?;
    match cli.command {
        Top::Sync(cmd) => sync(&base, cmd),
        Top::Watch {
            sync: true,
            relay,
            auth,
        } => {
            let root = find_root(&base)?;
            foreground(&root, relay.as_deref(), auth.token()?.as_deref())
        }
        Top::Watch { sync: false, .. } => Err(usage(
            clap::error::ErrorKind::MissingRequiredArgument,
            "`cue watch` syncs the folder: run `cue watch --sync`",
        )),
        Top::Activity(ActivityCmd::Log {
            since,
            limit,
            json,
            follow,
        }) => {
            let root = find_root(&base)?;
            activity_log(&root, since, limit, json, follow)
        }
        Top::History { path, json } => {
            let root = find_root(&base)?;
            let rel = workspace_relative(&base, &root, &path)?;
            history::history(&root, &rel, json)
        }
        Top::Export { automerge } => {
            let root = find_root(&base)?;
            history::export(&root, &base.join(automerge))
        }
        Top::Show { path, at } => {
            let root = find_root(&base)?;
            let rel = workspace_relative(&base, &root, &path)?;
            history::show(&root, &rel, &at)
        }
        Top::Relay(cmd) => relay(cmd),
        Top::Completions { shell } => {
            clap_complete::generate(shell, &mut cli_command(), "cue", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Top::Demo => {
            demo::run()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn foreground(
    root: &Path,
    relay: Option<&str>,
    auth_token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    run_foreground(root, relay, auth_token)?;
    Ok(ExitCode::SUCCESS)
}

fn sync(base: &Path, cmd: SyncCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SyncCmd::Init { relay, name } => {
            let ws = Workspace::init(base, relay.as_deref(), name.as_deref())?;
            let url = &ws.config.sync.relay.url;
            let origin = if relay.is_some() {
                "from --relay"
            } else {
                "the default"
            };
            eprintln!("Relay: {url} ({origin})");
            if relay_is_local(url) {
                eprintln!(
                    "warning: {url} is on this machine only (loopback): other machines cannot reach it, and invites carry it; \
                     for a second machine, run a relay it can reach and set it with `cue sync start --relay URL` \
                     (or `--relay URL` at `cue sync init`)"
                );
            }
            let files = import(&ws, false)?;
            println!(
                "Created workspace {} in {} ({} imported) as device {}.",
                ws.workspace_id(),
                ws.root.display(),
                status_view::plural(files as u64, "file", "files"),
                ws.device_name()
            );
            println!(
                "Next: `cue sync start`; on your other machines, `cue sync join` with the token from `cue sync invite`."
            );
            Ok(ExitCode::SUCCESS)
        }
        SyncCmd::Join { token, relay, name } => {
            let ws = Workspace::join(base, &token, relay.as_deref(), name.as_deref())?;
            let url = &ws.config.sync.relay.url;
            let origin = if relay.is_some() {
                "from --relay"
            } else {
                "from the invite"
            };
            eprintln!("Relay: {url} ({origin})");
            if relay_is_local(url) {
                eprintln!(
                    "warning: {url} is on loopback: it works only if the relay runs on this machine; \
                     if it runs elsewhere, set its address with `cue sync start --relay URL`"
                );
            }
            let files = import(&ws, true)?;
            println!(
                "Joined workspace {} in {} ({} here, merged when peers meet) as device {}.",
                ws.workspace_id(),
                ws.root.display(),
                status_view::plural(files as u64, "file", "files"),
                ws.device_name()
            );
            println!(
                "Next: `cue sync start`. A member admits this device then: the one who made the invite must be online (its daemon running); until then `cue sync status` says it waits."
            );
            Ok(ExitCode::SUCCESS)
        }
        SyncCmd::Invite {
            expires,
            uses,
            list,
            revoke,
        } => members::invite(&find_root(base)?, expires, uses, list, revoke),
        SyncCmd::Devices { json } => members::devices(&find_root(base)?, json),
        SyncCmd::Remove { device } => members::remove(&find_root(base)?, Some(&device)),
        SyncCmd::Rotate => members::remove(&find_root(base)?, None),
        SyncCmd::Start {
            relay,
            foreground: true,
            auth,
        } => {
            let root = find_root(base)?;
            foreground(&root, relay.as_deref(), auth.token()?.as_deref())
        }
        SyncCmd::Start {
            relay,
            foreground: false,
            auth,
        } => {
            let root = find_root(base)?;
            let token = auth.token()?;
            let pid = start_background(
                &root,
                relay.as_deref(),
                token.as_deref(),
                Duration::from_secs(120),
            )?;
            println!("cue daemon started (pid {pid}) for {}.", root.display());
            std::io::stdout().flush()?;
            let ws = Workspace::open(&root)?;
            let socket = cue_daemon::run::socket_for(&root)?;
            progress::follow_first_sync(&ws, &socket);
            Ok(ExitCode::SUCCESS)
        }
        SyncCmd::Stop => stop(&find_root(base)?),
        SyncCmd::Now { timeout } => now::now(
            &find_root(base)?,
            Duration::from_millis(u64::try_from(timeout).unwrap_or(30_000)),
        ),
        SyncCmd::Status { json } => status(&find_root(base)?, json),
        SyncCmd::Restore {
            paths,
            at: Some(rev),
        } => {
            let [path] = paths.as_slice() else {
                return Err(usage(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--at restores one file: give one PATH (REV is a version of that file)",
                ));
            };
            let root = find_root(base)?;
            let rel = workspace_relative(base, &root, path)?;
            history::restore_at(&root, &rel, &rev)
        }
        SyncCmd::Restore { paths, at: None } => {
            let root = find_root(base)?;
            for path in &paths {
                let rel = workspace_folder_relative(base, &root, path)?;
                command(&root, Request::Restore { path: rel.clone() })?;
                if rel == "." {
                    println!("Restored the deleted files.");
                } else {
                    println!("Restored {rel}.");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SyncCmd::ForgetMount { folder } => {
            let root = find_root(base)?;
            let rel = workspace_relative(base, &root, &folder)?;
            command(&root, Request::ForgetMount { path: rel.clone() })?;
            println!(
                "{rel} is a plain folder again: the files synced from the disk are written \
                 into it, and what is made in it syncs."
            );
            Ok(ExitCode::SUCCESS)
        }
        SyncCmd::ApplyDeletions => {
            command(&find_root(base)?, Request::ApplyDeletions)?;
            println!("Applied the deletions that were paused.");
            Ok(ExitCode::SUCCESS)
        }
        SyncCmd::Resolve { path } => {
            let root = find_root(base)?;
            let rel = workspace_relative(base, &root, &path)?;
            // What is marked, named as status names it (docs/reference.md §1.5).
            let (marked, cleared): (Vec<String>, Vec<String>) = status_report(&root)
                .map(|r| {
                    let conflicts = r
                        .conflicts
                        .iter()
                        .filter(|c| c.path == rel || c.copy.as_deref() == Some(rel.as_str()))
                        .map(status_view::conflict_line)
                        .collect();
                    let overlaps = r
                        .overlaps
                        .iter()
                        .filter(|o| o.path == rel)
                        .map(status_view::overlap_line)
                        .collect();
                    (conflicts, overlaps)
                })
                .unwrap_or_default();
            command(&root, Request::Resolve { path: rel.clone() })?;
            // With neither listed (status could not be read), the command still did
            // what it could: say it as before.
            if !marked.is_empty() || cleared.is_empty() {
                println!("Marked the conflicts of {rel} as resolved.");
                for line in marked {
                    println!("  {line}");
                }
            }
            if !cleared.is_empty() {
                println!("Cleared the overlapping edits noticed in {rel} on this device.");
                for line in cleared {
                    println!("  {line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether a relay URL names this machine only (a loopback or unspecified address, or
/// localhost): another machine cannot reach such a relay.
pub(crate) fn relay_is_local(url: &str) -> bool {
    let rest = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback() || ip.is_unspecified())
}

/// Imports the files already in a new workspace (the daemon's start-up scan, offline),
/// with a progress bar on a terminal. A joined device notes that it expects a first sync.
fn import(ws: &Workspace, joined: bool) -> anyhow::Result<usize> {
    let _lock = DaemonLock::acquire(&ws.dir()).context("cannot lock the new workspace")?;
    let mut driver = Driver::open(ws, &ws.config)?;
    let mut bar = progress::ImportBar::start();
    let scanned =
        driver.startup_scan_with_progress(now_ms(), &mut |done, total| bar.update(done, total));
    bar.finish();
    scanned?;
    if joined {
        progress::expect_first_sync(driver.store_mut())?;
    }
    // Leave the store as the daemon leaves it at rest: the index's increments stored
    // whole (the engine does that once nothing happened for a while, so the ticks are
    // dated after that pause), then the freed pages and the WAL given back to the
    // filesystem.
    let mut at = now_ms() + 5_000;
    for _ in 0..64 {
        if !driver.wants_frequent_ticks() {
            break;
        }
        driver.tick(at)?;
        at += 250;
    }
    // Anything written meanwhile (a file renamed away from a clash) is flushed, and its
    // journal entry cleared.
    driver.flush()?;
    driver.store_mut().reclaim_space()?;
    Ok(driver.status().files)
}

/// PATH as the workspace names it: relative to the folder the command runs in.
fn workspace_relative(base: &Path, root: &Path, path: &Path) -> anyhow::Result<String> {
    Some(relative_to_root(base, root, path)?)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("{} does not name a file", path.display()))
}

/// A folder or file inside the workspace, `.` for the workspace itself (restore takes
/// folders); anything else is an error, never the whole workspace.
fn workspace_folder_relative(base: &Path, root: &Path, path: &Path) -> anyhow::Result<String> {
    let rel = relative_to_root(base, root, path)?;
    Ok(if rel.is_empty() { ".".into() } else { rel })
}

/// `path` (from `base`) relative to the workspace root, empty for the root itself.
fn relative_to_root(base: &Path, root: &Path, path: &Path) -> anyhow::Result<String> {
    // The root is canonical; the base may reach it through a symlink.
    let base = base.canonicalize().unwrap_or_else(|_| base.to_owned());
    let mut norm = PathBuf::new();
    for c in base.join(path).components() {
        match c {
            Component::ParentDir => {
                norm.pop();
            }
            Component::CurDir => {}
            other => norm.push(other),
        }
    }
    let rel = norm.strip_prefix(root).map_err(|_| {
        anyhow!(
            "{} is outside the workspace {}; give a path inside it",
            path.display(),
            root.display()
        )
    })?;
    rel.to_str().map(str::to_string).ok_or_else(|| {
        anyhow!(
            "{} is not valid UTF-8; cue syncs only names in UTF-8",
            path.display()
        )
    })
}

/// Runs restore/resolve through the daemon, or on the store directly when none runs.
fn command(root: &Path, req: Request) -> anyhow::Result<()> {
    let ws = Workspace::open(root)?;
    if DaemonLock::probe(&ws.dir())?.is_some() {
        let socket = cue_daemon::run::socket_for(root)?;
        let response = control::request(&socket, &req, Duration::from_secs(30)).context(
            "the daemon did not answer; check `cue sync status` and .cuedeck/daemon.log",
        )?;
        if !response.ok {
            bail!("{}", response.error.unwrap_or_else(|| "failed".into()));
        }
        return Ok(());
    }
    // No daemon: do it here, holding the lock so that none starts meanwhile. Peers learn
    // of it when the daemon next connects.
    let _lock = match DaemonLock::acquire(&ws.dir()) {
        Ok(l) => l,
        Err(cue_daemon::LockError::AlreadyRunning { .. }) => {
            bail!("a daemon started meanwhile; run the command again")
        }
        Err(e) => return Err(e.into()),
    };
    let mut driver = Driver::open(&ws, &ws.config)?;
    driver.startup_scan(now_ms())?;
    let result = match &req {
        Request::Restore { path } => driver.restore(now_ms(), path)?.map_err(|e| e.to_string()),
        Request::Resolve { path } => driver.resolve(now_ms(), path)?.map_err(|e| e.to_string()),
        Request::ApplyDeletions => Ok(driver.apply_deletions(now_ms())?.1),
        Request::ForgetMount { path } => driver
            .forget_mount(now_ms(), path)?
            .map_err(|e| e.to_string()),
        _ => return Ok(()),
    };
    // The files written made durable, and their journal entries cleared, as a daemon's
    // stop does.
    driver.flush()?;
    result.map(|_| ()).map_err(|e| anyhow!("{e}"))
}

fn stop(root: &Path) -> anyhow::Result<ExitCode> {
    let ws = Workspace::open(root)?;
    if DaemonLock::probe(&ws.dir())?.is_none() {
        println!("No cue daemon is running for {}.", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    let socket = cue_daemon::run::socket_for(root)?;
    let response = control::request(&socket, &Request::Stop, Duration::from_secs(60)).context(
        "the daemon did not answer; if it is stuck, kill it (`kill $(cat .cuedeck/daemon.pid)`)",
    )?;
    if !response.ok {
        bail!(
            "the daemon stopped with an error: {} (see .cuedeck/daemon.log)",
            response.error.unwrap_or_default()
        );
    }
    // The answer comes once everything is on disk; the lock goes when the process ends.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while DaemonLock::probe(&ws.dir())?.is_some() {
        if std::time::Instant::now() > until {
            bail!("the daemon answered but has not exited yet; check `cue sync status`");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = response
        .data
        .as_ref()
        .and_then(|d| d["left_for_next_start"].as_u64())
        .unwrap_or(0);
    if left > 0 {
        println!(
            "cue daemon stopped. About {left} changes it saw in the folder were not taken in \
             yet (a large copy or checkout): they are on disk, and its next start takes them in."
        );
    } else {
        println!("cue daemon stopped.");
    }
    Ok(ExitCode::SUCCESS)
}

/// The status document: the daemon's answer, or what the store holds when none answers.
fn status_report(root: &Path) -> anyhow::Result<StatusReport> {
    let ws = Workspace::open(root)?;
    let mut report: Option<StatusReport> = None;
    if let Some(_pid) = DaemonLock::probe(&ws.dir())? {
        let socket = cue_daemon::run::socket_for(root)?;
        if let Ok(r) = control::request(&socket, &Request::Status, Duration::from_secs(10)) {
            report = r.status;
        }
    }
    Ok(match report {
        Some(r) => r,
        None => {
            // No daemon, or one that does not answer (busy, stuck, or its socket gone):
            // what the store says, and whether a daemon holds the lock all the same.
            let held = DaemonLock::probe(&ws.dir())?;
            let s = offline_status(&ws)?;
            control::status_report(
                &StatusContext {
                    workspace: &ws,
                    running: held.is_some(),
                    not_answering: held.is_some(),
                    pid: held.flatten(),
                    connected: false,
                    relay_reason: None,
                    // The last daemon's log, if one ran here in the background.
                    log: Some(ws.log_path()).filter(|p| p.exists()),
                    // (The daemon's own guard goes with it: the peers' held deletions
                    // are in the store.)
                    deletions_paused: cue_daemon::driver::Paused::from_peers(&s),
                    standing: None,
                    opened: 0,
                },
                &s,
            )
        }
    })
}

fn status(root: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let report = status_report(root)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let text = status_view::render(
            &report,
            home.as_deref(),
            now_ms(),
            status_view::Paint::for_stdout(false),
        );
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    Ok(if report.daemon.running {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `1d`, `2h30m`, `45m`, `90s`, `1w`, or a date, to milliseconds since the epoch.
fn parse_since(s: &str, now: i64) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(s, date_format) {
        let t = d.midnight().assume_utc();
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let mut total: i64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            _ => bail!("use a duration like 1d, 2h30m or 45m, or a date like 2026-11-01"),
        };
        if num.is_empty() {
            bail!("a number must come before each unit, as in 2h30m");
        }
        // (Digits only: a number too big for the count is as long ago as can be.)
        let n: i64 = num.parse().unwrap_or(i64::MAX);
        total = total.saturating_add(n.saturating_mul(unit));
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any {
        bail!("give a unit (s, m, h, d, w), as in 1d or 2h30m");
    }
    Ok(now.saturating_sub(total))
}

/// `--since` as clap takes it: a bad value is a usage error (exit 2).
fn since_arg(s: &str) -> Result<i64, String> {
    parse_since(s, now_ms()).map_err(|e| e.to_string())
}

/// `since_ms`: milliseconds since the epoch (from `--since`).
fn activity_log(
    root: &Path,
    since_ms: Option<i64>,
    limit: Option<usize>,
    json: bool,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let ws = Workspace::open(root)?;
    let since_ms = since_ms.unwrap_or(0);
    let store = Store::open(&ws.store_path())?;
    let mut entries = store.activity_since(since_ms, 1_000_000)?;
    if let Some(n) = limit {
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    let mut last = entries.last().map_or(0, |e| e.id);
    if follow && entries.is_empty() {
        // Nothing recent enough to print: follow from the end of the log.
        loop {
            let older = store.activity_after(last, 10_000)?;
            match older.last() {
                Some(e) => last = e.id,
                None => break,
            }
        }
    }
    print_entries(entries, json)?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        // The daemon appends from another process; SQLite's WAL lets us read alongside.
        std::thread::sleep(Duration::from_millis(200));
        let more = store.activity_after(last, 1000)?;
        if let Some(e) = more.last() {
            last = e.id;
        }
        print_entries(more, json)?;
    }
}

/// A time for people: local (`TZ`, else the system's zone), to the second, with the
/// offset: `2026-11-22 12:55:34 +09:00`. JSON keeps RFC 3339 UTC (docs/reference.md
/// §1.10).
pub(crate) fn local_time(ms: i64, zone: &jiff::tz::TimeZone) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t
            .to_zoned(zone.clone())
            .strftime("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        Err(_) => control::rfc3339(ms),
    }
}

fn print_entries(entries: Vec<cue_daemon::ActivityEntry>, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let zone = jiff::tz::TimeZone::system();
    for e in entries {
        let r = e.record;
        if json {
            let line = serde_json::json!({
                "time": control::rfc3339(r.time_ms),
                "kind": r.kind.contract_name(),
                "path": r.path,
                "device": r.device,
                "detail": r.detail,
            });
            writeln!(out, "{line}")?;
        } else {
            let time = local_time(r.time_ms, &zone);
            let mut line = format!("{time}  {:<13} {}", r.kind.as_str(), r.device);
            if let Some(p) = &r.path {
                line.push_str(&format!("  {p}"));
            }
            if let Some(d) = &r.detail {
                line.push_str(&format!("  ({d})"));
            }
            // (Names and details are peers' words: no terminal control in them.)
            writeln!(out, "{}", status_view::printable(&line))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn relay(cmd: RelayCmd) -> anyhow::Result<ExitCode> {
    let config = cmd.relay.to_config()?;
    config.validate().context("check the relay's flags")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let listener = tokio::net::TcpListener::bind(cmd.relay.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cmd.relay.listen))?;
        let bound = listener.local_addr()?;
        println!("listening on {bound}");
        std::io::stdout().flush()?;
        cue_relay::serve(config, listener, async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
        .await?;
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_help_with_an_example() {
        fn walk(cmd: &clap::Command, path: &str, seen: &mut usize) {
            let help = cmd
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(help.contains("Example"), "`{path} --help` has no example");
            assert!(cmd.get_about().is_some(), "`{path}` has no description");
            *seen += 1;
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &format!("{path} {}", sub.get_name()), seen);
                }
            }
        }
        let cmd = cli_command();
        cmd.clone().debug_assert();
        let mut seen = 0;
        walk(&cmd, "cue", &mut seen);
        // cue, sync and its 14 commands, watch, activity, activity log, history, export,
        // show, relay, completions, demo.
        assert_eq!(seen, 25);
    }

    #[test]
    fn every_argument_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, seen: &mut usize) {
            for arg in cmd.get_arguments() {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    !help.trim().is_empty(),
                    "`{path}`: {} has no help",
                    arg.get_id()
                );
                *seen += 1;
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), seen);
            }
        }
        let mut cmd = cli_command();
        // Every subcommand built, so that each holds its copy of the global `-C` and
        // clap's own --help and --version.
        cmd.build();
        let mut seen = 0;
        walk(&cmd, "cue", &mut seen);
        assert!(seen > 40, "walked {seen} arguments");
    }

    #[test]
    fn dir_is_left_out_where_it_names_no_workspace() {
        let cmd = cli_command();
        let hidden = |name: &str| {
            let sub = cmd.find_subcommand(name).expect("subcommand");
            sub.get_arguments()
                .find(|a| a.get_id() == "dir")
                .is_some_and(|a| a.is_hide_set())
        };
        for name in ["relay", "demo", "completions"] {
            assert!(hidden(name), "{name}");
        }
        for name in ["sync", "watch", "activity"] {
            assert!(!hidden(name), "{name}");
        }
        let relay = cmd.find_subcommand("relay").expect("relay");
        assert!(relay.get_arguments().any(|a| a.get_id() == "log_format"));
    }

    #[test]
    fn usage_errors_become_one_line_naming_the_help_to_read() {
        let rendered = "error: unexpected argument '--bogus' found\n\n  tip: to pass '--bogus' as a value, use '-- --bogus'\n\nUsage: cue sync status [OPTIONS]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line(rendered),
            "unexpected argument '--bogus' found (to pass '--bogus' as a value, use '-- --bogus')"
        );
        let rendered = "error: the following required arguments were not provided:\n  <TOKEN>\n\nUsage: cue sync join <TOKEN>\n";
        assert_eq!(
            usage_line(rendered),
            "the following required arguments were not provided: <TOKEN>"
        );
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_path(&args(&["-C", "sync", "sync", "status", "--bogus"])),
            "cue sync status"
        );
        assert_eq!(command_path(&args(&["sync", "strat"])), "cue sync");
        assert_eq!(command_path(&args(&["--nope"])), "cue");
    }

    #[test]
    fn a_relay_on_this_machine_only_is_recognised() {
        for url in [
            "ws://127.0.0.1:8080",
            "ws://127.1.2.3",
            "wss://localhost/x",
            "ws://LOCALHOST:80",
            "ws://relay.localhost:1",
            "ws://[::1]:8080/",
            "ws://[::ffff:127.0.0.1]:8080",
            "ws://0.0.0.0:8080",
            "ws://user@127.0.0.1:9",
        ] {
            assert!(relay_is_local(url), "{url}");
        }
        for url in [
            "wss://relay.example.org",
            "ws://192.168.1.10:8080",
            "ws://[2001:db8::1]:8080",
            "ws://localhost.example.org",
            "ws://10.0.0.127",
        ] {
            assert!(!relay_is_local(url), "{url}");
        }
        // The default a workspace gets without --relay.
        assert!(relay_is_local(
            &cue_daemon::config::RelayConfig::default().url
        ));
    }

    #[test]
    fn activity_times_are_local_for_people() {
        // 2026-11-22T03:55:34.977Z
        let ms = 1_795_319_734_977;
        assert_eq!(control::rfc3339(ms), "2026-11-22T03:55:34.977Z");
        let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").expect("the tz database");
        assert_eq!(local_time(ms, &tokyo), "2026-11-22 12:55:34 +09:00");
        assert_eq!(
            local_time(ms, &jiff::tz::TimeZone::UTC),
            "2026-11-22 03:55:34 +00:00"
        );
    }

    #[test]
    fn since_accepts_durations_and_dates() {
        let now = 10 * 86_400_000;
        assert_eq!(parse_since("1d", now).expect("1d"), 9 * 86_400_000);
        assert_eq!(
            parse_since("2h30m", now).expect("2h30m"),
            now - 2 * 3_600_000 - 30 * 60_000
        );
        assert_eq!(parse_since("1970-01-02", now).expect("date"), 86_400_000);
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("12", now).is_err());
        // A count too big for the clock is as long ago as can be (it said "a number must
        // come before each unit"); a unit with no number still says so.
        assert!(parse_since("18446744073709551615s", now).expect("huge") < 0);
        let none = parse_since("d", now).unwrap_err().to_string();
        assert!(none.contains("a number must come before"), "{none}");
    }

    #[test]
    fn paths_are_taken_relative_to_the_workspace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canon");
        std::fs::create_dir_all(root.join("notes")).expect("mkdir");
        assert_eq!(
            workspace_relative(&root.join("notes"), &root, Path::new("a.md")).expect("rel"),
            "notes/a.md"
        );
        assert_eq!(
            workspace_relative(&root, &root, Path::new("./x/../b.md")).expect("rel"),
            "b.md"
        );
        assert!(workspace_relative(&root, &root, Path::new("../b.md")).is_err());
    }
}
