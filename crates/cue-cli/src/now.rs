//! `cue sync now [--timeout DURATION]` (docs/reference.md §1.4): a one-shot sync for
//! scripts and cron, with or without a running daemon.
//!
//! With a daemon, it asks it to announce this device's state to every online peer and to
//! ask theirs (`Input::SyncNow`), again every two seconds, and watches status until every
//! online peer holds exactly what this device holds (`peers[].in_sync`) and nothing of
//! this device's is unconfirmed. Without one, it starts one for the while and stops it
//! after. Exit 0 when synced; 1 with the reason when no peer is reachable in time.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use cue_daemon::DaemonLock;
use cue_daemon::control::{self, Request, StatusReport};
use cue_daemon::driver::now_ms;
use cue_daemon::run::{socket_for, start_background};
use cue_daemon::workspace::Workspace;

/// How often the peers are asked again for their state while waiting.
const ASK_EVERY: Duration = Duration::from_secs(2);
/// How often status is read while waiting.
const POLL: Duration = Duration::from_millis(250);

/// Synced: connected, some peer online, every online peer holding what we hold, nothing
/// unconfirmed, no catch-up under way.
fn synced(s: &StatusReport) -> bool {
    let online: Vec<_> = s.peers.iter().filter(|p| p.online).collect();
    s.relay.connected
        && !online.is_empty()
        && online.iter().all(|p| p.in_sync)
        && s.pending_changes == 0
        && s.catch_up.is_none()
}

/// Why it is not synced yet, in words.
fn why_not(s: &StatusReport) -> String {
    if let Some(m) = s.membership.as_ref().filter(|m| m.state != "member") {
        return m.reason.clone().unwrap_or_else(|| m.state.clone());
    }
    if !s.relay.connected {
        return match &s.relay.reason {
            Some(r) => format!("the relay at {} cannot be reached: {r}", s.relay.url),
            None => format!("the relay at {} was not reached", s.relay.url),
        };
    }
    let online: Vec<_> = s.peers.iter().filter(|p| p.online).collect();
    if online.is_empty() {
        return "no other device of the workspace is online".into();
    }
    let behind: Vec<&str> = online
        .iter()
        .filter(|p| !p.in_sync)
        .map(|p| p.name.as_str())
        .collect();
    format!(
        "still exchanging with {} ({} changes of this device not yet confirmed)",
        behind.join(", "),
        s.pending_changes
    )
}

pub fn now(root: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let ws = Workspace::open(root)?;
    let started_here = if DaemonLock::probe(&ws.dir())?.is_none() {
        start_background(root, None, None, Duration::from_secs(120))?;
        true
    } else {
        false
    };
    let socket = socket_for(root)?;
    let t0 = now_ms();
    let start = Instant::now();
    let mut first_pending = None;
    let mut asked: Option<Instant> = None;
    let outcome = loop {
        if asked.is_none_or(|t| t.elapsed() >= ASK_EVERY) {
            let _ = control::request(&socket, &Request::SyncNow, Duration::from_secs(10));
            asked = Some(Instant::now());
        }
        let status = control::request(&socket, &Request::Status, Duration::from_secs(10))
            .ok()
            .and_then(|r| r.status);
        if let Some(s) = &status {
            first_pending.get_or_insert(s.pending_changes);
            if synced(s) {
                break Ok(s.clone());
            }
        }
        if start.elapsed() >= timeout {
            break Err(
                status.map_or_else(|| "the daemon did not answer".to_string(), |s| why_not(&s))
            );
        }
        std::thread::sleep(POLL);
    };
    // What moved: changes from other devices taken in meanwhile.
    let received = cue_daemon::Store::open(&ws.store_path())
        .and_then(|s| s.activity_since(t0, 100_000))
        .map(|entries| {
            entries
                .iter()
                .filter(|e| {
                    e.record.device != ws.device_name()
                        && matches!(
                            e.record.kind,
                            cue_daemon::ActivityKind::RemoteChange
                                | cue_daemon::ActivityKind::Delete
                                | cue_daemon::ActivityKind::Rename
                                | cue_daemon::ActivityKind::Restore
                        )
                })
                .count()
        })
        .unwrap_or(0);
    if started_here {
        let _ = control::request(&socket, &Request::Stop, Duration::from_secs(60));
    }
    match outcome {
        Ok(s) => {
            let names: Vec<&str> = s
                .peers
                .iter()
                .filter(|p| p.online)
                .map(|p| p.name.as_str())
                .collect();
            println!(
                "Synced with {} in {:.1} s: {} of this device's confirmed, {} from the others taken in.",
                names.join(", "),
                start.elapsed().as_secs_f64(),
                crate::status_view::plural(first_pending.unwrap_or(0), "change", "changes"),
                crate::status_view::plural(received as u64, "change", "changes"),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => bail!(
            "not synced within {} s: {reason}",
            timeout.as_secs_f64().round()
        ),
    }
}
