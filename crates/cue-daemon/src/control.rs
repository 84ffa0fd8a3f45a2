//! The control socket: how `cue` talks to a running daemon.
//!
//! A Unix socket at [`crate::control_socket_path`], private to the user (its folder is
//! 0700). One JSON request a line, one JSON response a line, then the daemon closes the
//! connection. The requests are few (status, stop, restore, resolve); the activity log
//! is read by the CLI straight from the store, which SQLite lets another process read
//! while the daemon writes.
//!
//! Also here: the `status --json` document (docs/reference.md §1.9), built by the daemon
//! from the live engine, or by the CLI from the store when no daemon runs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// What the CLI asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Stop after making everything durable; answered once it is.
    Stop,
    Restore {
        path: String,
    },
    Resolve {
        path: String,
    },
    /// Let the deletions the mass-deletion guard holds through.
    ApplyDeletions,
    /// The folder of a disk listed as not mounted is a plain folder again.
    ForgetMount {
        path: String,
    },
    /// A new invite (`data`: `{"token": …, "id": …}`).
    Invite {
        expires_ms: i64,
        uses: Option<u32>,
    },
    /// This device's invites (`data`: a list of [`crate::invites::InviteInfo`]).
    Invites,
    /// Revokes the invite whose id starts with `id` (`data`: its full id).
    Revoke {
        id: String,
    },
    /// The devices of the workspace (`data`: a list of [`crate::devices::DeviceReport`]).
    Devices,
    /// Rotates the secret, removing the devices listed (full hex ids); `data`: the new
    /// generation's number.
    Rotate {
        remove: Vec<String>,
    },
    /// `cue sync now`: announce and ask every online peer for its state (then poll status).
    SyncNow,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Response {
    pub ok: bool,
    /// One line saying what went wrong and what to do.
    pub error: Option<String>,
    pub status: Option<StatusReport>,
    /// What a request other than status answers with.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Response::default()
        }
    }

    pub fn with_data(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            data: Some(data),
            ..Response::default()
        }
    }
}

/// `cue sync status --json` (docs/reference.md §1.9: nested objects, these keys at least).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub schema_version: u32,
    pub workspace_id: String,
    pub device_id: String,
    pub device_name: String,
    pub root: String,
    pub daemon: DaemonInfo,
    pub relay: RelayInfo,
    pub peers: Vec<PeerReport>,
    pub files: u64,
    pub pending_changes: u64,
    pub conflicts: Vec<ConflictReport>,
    /// Paragraphs that concurrent edits from two devices both changed, found on this
    /// device and not yet cleared with `cue sync resolve` (docs/reference.md §1.9, §3.1).
    #[serde(default)]
    pub overlaps: Vec<OverlapReport>,
    pub skipped: Vec<SkippedReport>,
    pub last_full_resync: Option<String>,
    /// Deletions the mass-deletion guard holds (local ones and peers'), if any.
    pub deletions_paused: Option<DeletionsPausedReport>,
    /// The catch-up with a peer under way (a first sync shows its progress here).
    #[serde(default)]
    pub catch_up: Option<CatchUpReport>,
    /// Files received with their content, not yet checked against their documents (a
    /// few are checked each tick after a first sync).
    #[serde(default)]
    pub files_unverified: u64,
    /// Input from peers the engine refused (a decompression bomb, a forged change, too
    /// many pulls, a member-list entry without an admission, ...), by kind; kinds at zero
    /// are left out (docs/security.md).
    #[serde(default)]
    pub refused_input: std::collections::BTreeMap<String, u64>,
    /// Where this device stands in the workspace (docs/reference.md §1.9).
    #[serde(default)]
    pub membership: Option<MembershipReport>,
    /// Synced files this device's `.cueignore` excludes now (beyond the contract).
    #[serde(default)]
    pub ignored_files: u64,
    /// Whether this folder keeps Unix modes (beyond the contract): `false` on exFAT, FAT
    /// and the like, where this device never changes a file's executable bit.
    #[serde(default = "yes")]
    pub modes_kept: bool,
}

fn yes() -> bool {
    true
}

/// `member`, `waiting_for_admission` (joined; the member who made the invite must be
/// online), `refused` (the invite admits nobody), or `removed`; why, and which
/// generation of the workspace secret this device holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembershipReport {
    pub state: String,
    pub reason: Option<String>,
    pub generation: u32,
}

/// Deletions held by the mass-deletion guard (docs/reference.md §1.9, §3.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeletionsPausedReport {
    pub count: u64,
    pub reason: String,
    /// RFC 3339.
    pub since: String,
}

/// A catch-up with a peer under way: `files_held` of `files_total` so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatchUpReport {
    /// The name of the peer being caught up with.
    pub peer: String,
    /// This device has never completed a sync with any peer: its first sync.
    pub first: bool,
    /// Whole documents after a long absence (a full resync).
    pub full: bool,
    pub files_held: u64,
    pub files_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub running: bool,
    pub pid: Option<u32>,
    /// Where the daemon logs: `.cuedeck/daemon.log` for a daemon in the background, `None`
    /// for one in the foreground (its own stderr). Beyond the contract (docs/reference.md
    /// §1.9).
    #[serde(default)]
    pub log: Option<String>,
    /// Whether the running daemon answered this status (`false`: it holds the
    /// workspace's lock but did not answer on its control socket in time, busy or stuck;
    /// the rest is what its store holds). Beyond the contract (docs/reference.md §1.9).
    #[serde(default = "answered")]
    pub answering: bool,
}

fn answered() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayInfo {
    pub url: String,
    pub connected: bool,
    /// While not connected: why the last attempt failed (connection refused, DNS, TLS,
    /// the relay's HTTP status or refusal, a timeout) or the connection was lost. Beyond
    /// the contract (docs/reference.md §1.9).
    #[serde(default)]
    pub reason: Option<String>,
    /// Envelopes from peers this daemon opened since it started (a removed device opens
    /// nothing new). Beyond the contract.
    #[serde(default)]
    pub opened: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    pub device_id: String,
    pub name: String,
    pub online: bool,
    pub last_sync: Option<String>,
    /// Online and holding exactly what this device holds (beyond the contract).
    #[serde(default)]
    pub in_sync: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictReport {
    pub path: String,
    pub kind: String,
    pub time: String,
    /// The conflict copy holding the losing version, if there is one.
    pub copy: Option<String>,
    pub detail: String,
}

/// A paragraph both sides of a merge changed: both edits are kept, interleaved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverlapReport {
    pub path: String,
    /// The paragraph's first line in the file when the merge was made, from 1.
    pub line: u32,
    /// That line, cut short.
    pub excerpt: String,
    /// The names of the devices whose edits were merged.
    pub devices: Vec<String>,
    /// When the merge was made here (RFC 3339).
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedReport {
    pub path: String,
    pub reason: String,
}

/// RFC 3339 UTC with milliseconds, from milliseconds since the Unix epoch.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // Always three digits of milliseconds (the well-known RFC 3339 format drops
    // trailing zeros), so that times sort as strings do.
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod time_tests {
    use super::rfc3339;

    #[test]
    fn times_have_three_digits_of_milliseconds_and_sort_as_strings() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        let a = rfc3339(1_795_320_055_290);
        let b = rfc3339(1_795_320_055_298);
        assert!(a.ends_with(".290Z"), "{a}");
        assert!(a < b);
        let parsed =
            time::OffsetDateTime::parse(&a, &time::format_description::well_known::Rfc3339)
                .unwrap();
        assert_eq!(parsed.unix_timestamp_nanos(), 1_795_320_055_290_000_000);
    }
}

/// What the status document needs besides the engine's [`cue_core::Status`].
#[derive(Debug, Clone)]
pub struct StatusContext<'a> {
    pub workspace: &'a crate::workspace::Workspace,
    pub running: bool,
    /// The running daemon did not answer: this status is made from its store.
    pub not_answering: bool,
    pub pid: Option<u32>,
    pub connected: bool,
    /// Why the relay is not connected, when known.
    pub relay_reason: Option<String>,
    /// Where the daemon's log is, when it is a file.
    pub log: Option<std::path::PathBuf>,
    pub deletions_paused: Option<crate::driver::Paused>,
    pub standing: Option<crate::membership::Standing>,
    pub opened: u64,
}

/// Builds the status document.
pub fn status_report(ctx: &StatusContext<'_>, s: &cue_core::Status) -> StatusReport {
    let ws = ctx.workspace;
    StatusReport {
        schema_version: 1,
        workspace_id: ws.workspace_id(),
        device_id: ws.device_id_hex(),
        device_name: ws.device_name(),
        root: ws.root.display().to_string(),
        daemon: DaemonInfo {
            running: ctx.running,
            pid: ctx.pid,
            log: ctx.log.as_ref().map(|p| p.display().to_string()),
            answering: !ctx.not_answering,
        },
        relay: RelayInfo {
            url: ws.config.sync.relay.url.clone(),
            connected: ctx.connected,
            reason: ctx.relay_reason.clone().filter(|_| !ctx.connected),
            opened: ctx.opened,
        },
        peers: s
            .peers
            .iter()
            .map(|p| PeerReport {
                device_id: hex::encode(p.device.0),
                name: p.name.clone(),
                online: p.online && ctx.connected,
                last_sync: p.last_sync_ms.map(rfc3339),
                in_sync: p.in_sync && ctx.connected,
            })
            .collect(),
        files: s.files as u64,
        pending_changes: s.pending_changes as u64,
        conflicts: s
            .conflicts
            .iter()
            .map(|c| ConflictReport {
                path: c.path.clone(),
                kind: c.kind.as_str().to_string(),
                time: rfc3339(c.time_ms),
                copy: c.copy.clone(),
                detail: c.detail.clone(),
            })
            .collect(),
        overlaps: s
            .overlaps
            .iter()
            .map(|o| OverlapReport {
                path: o.path.clone(),
                line: o.line,
                excerpt: o.excerpt.clone(),
                devices: o.devices.clone(),
                time: rfc3339(o.time_ms),
            })
            .collect(),
        skipped: s
            .skipped
            .iter()
            .map(|(path, size)| SkippedReport {
                path: path.clone(),
                reason: format!("larger than max_file_size ({size} bytes)"),
            })
            .chain(
                s.too_large_elsewhere
                    .iter()
                    .map(|(path, device, size)| SkippedReport {
                        path: path.clone(),
                        reason: format!(
                            "larger than max_file_size on {device} ({size} bytes); this device \
                             keeps the last synced content"
                        ),
                    }),
            )
            .chain(s.unsyncable.iter().map(|(path, why)| SkippedReport {
                path: path.clone(),
                reason: why.clone(),
            }))
            .chain(s.unwritable.iter().map(|(path, why)| SkippedReport {
                path: path.clone(),
                reason: format!("cannot be written here ({why}); kept on the other devices"),
            }))
            .collect(),
        last_full_resync: s.last_full_resync_ms.map(rfc3339),
        deletions_paused: ctx
            .deletions_paused
            .as_ref()
            .map(|p| DeletionsPausedReport {
                count: p.count as u64,
                reason: p.reason.clone(),
                since: rfc3339(p.since_ms),
            }),
        catch_up: s.catch_up.as_ref().map(|c| CatchUpReport {
            peer: s
                .peers
                .iter()
                .find(|p| p.device == c.peer)
                .map_or_else(|| hex::encode(&c.peer.0[..3]), |p| p.name.clone()),
            first: s.peers.iter().all(|p| p.last_sync_ms.is_none()),
            full: c.full,
            files_held: c.files_held as u64,
            files_total: c.files_total as u64,
        }),
        files_unverified: s.unverified as u64,
        ignored_files: s.ignored as u64,
        modes_kept: s.modes_kept,
        membership: ctx.standing.as_ref().map(|m| MembershipReport {
            state: m.state.to_string(),
            reason: m.reason.clone(),
            generation: m.generation,
        }),
        refused_input: s
            .refused
            .nonzero()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect(),
    }
}

/// Sends one request to the daemon at `socket` and waits for its answer. An error means
/// no daemon answered (none runs, or it is stuck).
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without answering",
        ));
    }
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// A request waiting for the main loop: where to send the answer, and a signal that the
/// answer has been written to the client (so that `stop` can answer before exiting).
#[derive(Debug)]
pub struct Pending {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
    pub written: oneshot::Receiver<()>,
}

/// Accepts connections on `listener` forever, handing each request to the main loop.
pub async fn serve(listener: UnixListener, to_loop: mpsc::Sender<Pending>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let to_loop = to_loop.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = TokioBufReader::new(read.take(64 * 1024));
            let mut line = String::new();
            let mut done_tx = None;
            let response =
                match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Request>(&line) {
                        Ok(request) => {
                            let (reply, rx) = oneshot::channel();
                            let (done, written) = oneshot::channel();
                            done_tx = Some(done);
                            let pending = Pending {
                                request,
                                reply,
                                written,
                            };
                            if to_loop.send(pending).await.is_err() {
                                Response::error("the daemon is stopping")
                            } else {
                                rx.await
                                    .unwrap_or_else(|_| Response::error("the daemon is stopping"))
                            }
                        }
                        Err(e) => Response::error(format!("bad request: {e}")),
                    },
                    _ => return,
                };
            if let Ok(mut text) = serde_json::to_string(&response) {
                text.push('\n');
                let _ = write.write_all(text.as_bytes()).await;
                let _ = write.shutdown().await;
            }
            if let Some(done) = done_tx {
                let _ = done.send(());
            }
        });
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn requests_are_one_json_object() {
        let r = Request::Restore {
            path: "a.md".into(),
        };
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(text, r#"{"cmd":"restore","path":"a.md"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).expect("back"), r);
    }
}
