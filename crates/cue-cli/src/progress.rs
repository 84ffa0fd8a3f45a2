//! Progress bars on stderr (indicatif), drawn only when stderr is a terminal: the
//! import at `cue sync init` and `join`, and a joined device's first sync, which
//! `cue sync start` follows through the daemon's control socket until it completes.
//!
//! Where stderr is not a terminal the bars are hidden (indicatif's own check) and
//! `start` does not wait for the first sync at all: scripts get the contract's
//! behaviour, "returns once the daemon answers".

use std::path::Path;
use std::time::{Duration, Instant};

use cue_daemon::control::{self, Request, StatusReport};
use cue_daemon::workspace::Workspace;
use cue_daemon::{DaemonLock, Store, StoreError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Store metadata written by `cue sync join`: this device expects a first sync (a new
/// workspace made by `init` has nobody to sync with, so its `start` never waits).
const NS_CLI: &str = "cli";
const KEY_FIRST_SYNC: &str = "first_sync_expected";

/// How long `start` shows "connecting" or "waiting for a peer" before leaving the first
/// sync to the daemon.
const PATIENCE: Duration = Duration::from_secs(15);

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style(unit: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{eta}} left)"
    ))
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn stderr_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(spinner_style());
    bar
}

/// The import of the files already in a folder: a spinner while the folder is scanned,
/// then a bar over the files taken in.
#[derive(Debug)]
pub struct ImportBar {
    bar: ProgressBar,
    counting: bool,
}

impl ImportBar {
    pub fn start() -> ImportBar {
        let bar = stderr_bar();
        bar.set_message("scanning the folder");
        bar.enable_steady_tick(Duration::from_millis(100));
        ImportBar {
            bar,
            counting: false,
        }
    }

    /// `done` of `total` files taken in.
    pub fn update(&mut self, done: usize, total: usize) {
        if !self.counting {
            self.counting = true;
            self.bar.disable_steady_tick();
            self.bar.set_style(bar_style("files"));
            self.bar.set_length(total as u64);
            self.bar.set_message("importing");
        }
        self.bar.set_position(done as u64);
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// Notes that this device, just joined, expects a first sync from its peers.
pub fn expect_first_sync(store: &mut Store) -> Result<(), StoreError> {
    store.put_meta(NS_CLI, KEY_FIRST_SYNC, b"1")
}

fn first_sync_expected(store_path: &Path) -> bool {
    Store::open(store_path)
        .and_then(|s| s.get_meta(NS_CLI, KEY_FIRST_SYNC))
        .is_ok_and(|v| v.is_some())
}

/// Where a first sync is, from the daemon's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstSync {
    /// The daemon has not reached the relay yet.
    Connecting,
    /// Connected; no peer is online or none has begun to answer.
    WaitingForPeer,
    /// A peer is sending the workspace: `held` of `total` files here so far.
    Receiving { peer: String, held: u64, total: u64 },
    /// This device has completed a sync with a peer.
    Done,
}

/// A pure function of the status document: what the first-sync bar shows.
pub fn first_sync(r: &StatusReport) -> FirstSync {
    if r.peers.iter().any(|p| p.last_sync.is_some()) {
        return FirstSync::Done;
    }
    if let Some(c) = &r.catch_up {
        return FirstSync::Receiving {
            peer: c.peer.clone(),
            held: c.files_held,
            total: c.files_total,
        };
    }
    if !r.relay.connected {
        FirstSync::Connecting
    } else {
        FirstSync::WaitingForPeer
    }
}

/// After `cue sync start` on a terminal: follows a joined device's first sync until it
/// completes, or until waiting longer would only be waiting (relay unreachable, no peer
/// online), saying so. Ctrl-C stops only the watching: the daemon runs in its own session.
pub fn follow_first_sync(ws: &Workspace, socket: &Path) {
    let bar = stderr_bar();
    if bar.is_hidden() || !first_sync_expected(&ws.store_path()) {
        return;
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut last_phase = None;
    let mut since = Instant::now();
    let outcome = loop {
        let report = match control::request(socket, &Request::Status, Duration::from_secs(2)) {
            Ok(r) => r.status,
            // Busy taking in a large message: ask again while it runs.
            Err(_) if DaemonLock::probe(&ws.dir()).is_ok_and(|pid| pid.is_some()) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(_) => None,
        };
        let Some(report) = report else {
            break "The daemon has stopped; see .cuedeck/daemon.log, then `cue sync start`."
                .to_string();
        };
        let phase = first_sync(&report);
        let kind = std::mem::discriminant(&phase);
        if last_phase != Some(kind) {
            last_phase = Some(kind);
            since = Instant::now();
            if matches!(phase, FirstSync::Receiving { .. }) {
                bar.disable_steady_tick();
                bar.set_style(bar_style("files"));
            } else {
                bar.set_style(spinner_style());
                bar.enable_steady_tick(Duration::from_millis(100));
            }
        }
        match phase {
            FirstSync::Done => {
                break format!(
                    "First sync done: {} files in {}.",
                    report.files,
                    ws.root.display()
                );
            }
            FirstSync::Receiving { peer, held, total } => {
                bar.set_message(format!("first sync from {peer}"));
                bar.set_length(total);
                bar.set_position(held);
            }
            FirstSync::Connecting => {
                bar.set_message(format!(
                    "first sync: connecting to {} (Ctrl-C stops watching; the daemon goes on)",
                    report.relay.url
                ));
                if since.elapsed() > PATIENCE {
                    break "The relay is not reachable yet: the daemon keeps retrying and syncs when it gets through (`cue sync status` shows how far it has got).".to_string();
                }
            }
            FirstSync::WaitingForPeer => {
                bar.set_message(
                    "first sync: waiting for a peer to come online (Ctrl-C stops watching; the daemon goes on)",
                );
                if since.elapsed() > PATIENCE {
                    break "No other device is online yet: the first sync starts when one is (`cue sync status` shows how far it has got).".to_string();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    bar.finish_and_clear();
    eprintln!("{outcome}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use cue_daemon::control::{CatchUpReport, DaemonInfo, PeerReport, RelayInfo};

    fn report(connected: bool) -> StatusReport {
        StatusReport {
            schema_version: 1,
            workspace_id: "00".repeat(16),
            device_id: "11".repeat(32),
            device_name: "desktop".into(),
            root: "/tmp/notes".into(),
            daemon: DaemonInfo {
                running: true,
                pid: Some(1),
                log: None,
                answering: true,
            },
            relay: RelayInfo {
                url: "ws://127.0.0.1:8080".into(),
                connected,
                reason: None,
                opened: 0,
            },
            peers: vec![],
            files: 0,
            pending_changes: 0,
            conflicts: vec![],
            overlaps: vec![],
            skipped: vec![],
            last_full_resync: None,
            deletions_paused: None,
            catch_up: None,
            files_unverified: 0,
            refused_input: Default::default(),
            membership: None,
            ignored_files: 0,
            modes_kept: true,
        }
    }

    #[test]
    fn the_first_sync_goes_from_connecting_to_done() {
        let mut r = report(false);
        assert_eq!(first_sync(&r), FirstSync::Connecting);
        r.relay.connected = true;
        assert_eq!(first_sync(&r), FirstSync::WaitingForPeer);
        r.peers.push(PeerReport {
            device_id: "22".repeat(32),
            name: "laptop".into(),
            online: true,
            last_sync: None,
            in_sync: false,
        });
        r.catch_up = Some(CatchUpReport {
            peer: "laptop".into(),
            first: true,
            full: false,
            files_held: 3,
            files_total: 10,
        });
        assert_eq!(
            first_sync(&r),
            FirstSync::Receiving {
                peer: "laptop".into(),
                held: 3,
                total: 10
            }
        );
        r.catch_up = None;
        r.peers[0].last_sync = Some("2026-11-22T03:00:00Z".into());
        assert_eq!(first_sync(&r), FirstSync::Done);
        // Once synced, a disconnected daemon is still done with its first sync.
        r.relay.connected = false;
        assert_eq!(first_sync(&r), FirstSync::Done);
    }

    #[test]
    fn a_joined_store_expects_a_first_sync_and_a_new_one_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.sqlite");
        let mut store = Store::open(&path).expect("store");
        assert!(!first_sync_expected(&path));
        expect_first_sync(&mut store).expect("mark");
        drop(store);
        assert!(first_sync_expected(&path));
    }
}
