//! `cue sync status` for people, in the manner of git and tailscale: one headline line
//! (`~/notes: up to date · relay connected · 2 peers online`), then sections only for
//! what needs attention (deletions paused, pending changes, conflicts, overlapping edits,
//! files not synced),
//! one line a peer with when it last synced, and hints in parentheses.
//!
//! [`render`] is a pure function of the status document, so tests pin the wording; the
//! caller decides colour ([`Paint`]) from the terminal, `NO_COLOR` and `--json`.

use std::fmt::Write as _;
use std::path::Path;

use anstyle::{AnsiColor, Style};
use cue_daemon::control::{CatchUpReport, ConflictReport, OverlapReport, StatusReport};

/// Whether to colour, decided once by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paint {
    pub colour: bool,
}

const GOOD: Style = AnsiColor::Green.on_default();
const WARN: Style = AnsiColor::Yellow.on_default();
const BAD: Style = AnsiColor::Red.on_default().bold();
const HINT: Style = Style::new().dimmed();
const HEAD: Style = Style::new().bold();

impl Paint {
    /// Colour where stdout takes it: a terminal, `NO_COLOR` unset or empty, `CLICOLOR`
    /// not 0, a `TERM` that is not dumb (anstream's rules); never for JSON.
    pub fn for_stdout(json: bool) -> Paint {
        let choice = anstream::AutoStream::choice(&std::io::stdout());
        Paint {
            colour: !json && choice != anstream::ColorChoice::Never,
        }
    }

    fn paint(self, style: Style, text: &str) -> String {
        if self.colour {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }
}

/// The workspace folder as the user knows it: under the home folder, `~/...`.
pub fn display_root(root: &str, home: Option<&Path>) -> String {
    if let Some(home) = home
        && let Ok(rest) = Path::new(root).strip_prefix(home)
        && !home.as_os_str().is_empty()
    {
        if rest.as_os_str().is_empty() {
            return "~".to_string();
        }
        return format!("~/{}", rest.display());
    }
    root.to_string()
}

/// `just now`, `5 min ago`, `3 h ago`, `2 days ago` for an RFC 3339 time.
pub fn ago(rfc3339: &str, now_ms: i64) -> String {
    let Ok(t) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return rfc3339.to_string();
    };
    let then_ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let secs = (now_ms - then_ms).max(0) / 1000;
    match secs {
        0..60 => "just now".to_string(),
        60..3600 => format!("{} min ago", secs / 60),
        3600..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// `1 file`, `2 files`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What a catch-up says in the headline: `first sync, 340 of 1000 files`.
pub fn catch_up_text(c: &CatchUpReport) -> String {
    let what = if c.first {
        "first sync".to_string()
    } else if c.full {
        format!("full resync with {}", c.peer)
    } else {
        format!("catching up with {}", c.peer)
    };
    format!("{what}, {} of {} files", c.files_held, c.files_total)
}

/// How many files could not be written on this device, if any.
fn unwritable(r: &StatusReport) -> Option<u64> {
    let n = r
        .skipped
        .iter()
        .filter(|s| s.reason.starts_with("cannot be written"))
        .count() as u64;
    (n > 0).then_some(n)
}

/// One conflict as status and `cue sync resolve` name it: the path, the kind, and where
/// the other version went (a conflict copy) or what was kept and set aside.
pub fn conflict_line(c: &ConflictReport) -> String {
    // (The detail quotes frontmatter values and device names: a peer's words.)
    printable(&match &c.copy {
        Some(copy) => format!("{} ({}): the other version is in {copy}", c.path, c.kind),
        None if c.detail.is_empty() => format!("{} ({})", c.path, c.kind),
        None => format!("{} ({}): {}", c.path, c.kind, c.detail),
    })
}

/// One overlapping edit as status and `cue sync resolve` name it, in the activity log's
/// words: `plan.md, line 6 ("We meet on Tuesday."): edited at the same time on desk and
/// laptop`.
pub fn overlap_line(o: &OverlapReport) -> String {
    printable(&format!(
        "{}, {}",
        o.path,
        cue_core::overlap_detail(o.line, &o.excerpt, &o.devices)
    ))
}

/// The whole human status, ending with a newline.
pub fn render(r: &StatusReport, home: Option<&Path>, now_ms: i64, paint: Paint) -> String {
    let mut out = String::new();
    let running = r.daemon.running;
    let online = r.peers.iter().filter(|p| p.online).count() as u64;
    // Until a first peer has synced, every local change is "not confirmed" (a new
    // workspace counts several for its first file): nothing to worry about, so neither
    // the headline nor a section counts them. The JSON keeps the count.
    let first_peer_awaited = r.peers.iter().all(|p| p.last_sync.is_none());
    let pending = if first_peer_awaited {
        0
    } else {
        r.pending_changes
    };

    // The headline.
    let mut parts: Vec<String> = Vec::new();
    let mut said_lone = false;
    // Not (or no longer) a member: that says it all.
    let standing = r
        .membership
        .as_ref()
        .filter(|m| m.state != "member")
        .filter(|_| running);
    let state = if !running {
        paint.paint(BAD, "not running")
    } else if !r.daemon.answering {
        paint.paint(WARN, "running, not answering")
    } else if let Some(m) = standing {
        match m.state.as_str() {
            "waiting_for_admission" => paint.paint(WARN, "waiting to be admitted"),
            "refused" => paint.paint(BAD, "invite refused"),
            _ => paint.paint(BAD, "removed from the workspace"),
        }
    } else if let Some(c) = &r.catch_up {
        paint.paint(WARN, &catch_up_text(c))
    } else if pending > 0 {
        paint.paint(
            WARN,
            &format!("{} not yet confirmed", plural(pending, "change", "changes")),
        )
    } else if r.deletions_paused.is_some() {
        paint.paint(
            BAD,
            &format!(
                "{} paused",
                plural(
                    r.deletions_paused.as_ref().map_or(0, |p| p.count),
                    "deletion",
                    "deletions"
                )
            ),
        )
    } else if let Some(n) = unwritable(r) {
        paint.paint(
            BAD,
            &format!("{} cannot be written here", plural(n, "file", "files")),
        )
    } else if r.peers.is_empty() {
        said_lone = true;
        "waiting for a first peer".to_string()
    } else if first_peer_awaited && r.pending_changes > 0 {
        "waiting for a first sync".to_string()
    } else {
        paint.paint(GOOD, "up to date")
    };
    parts.push(state);
    if running && r.daemon.answering && standing.is_none() {
        parts.push(if r.relay.connected {
            paint.paint(GOOD, "relay connected")
        } else {
            paint.paint(WARN, "offline, retrying")
        });
        if r.peers.is_empty() {
            if !said_lone {
                parts.push("no other devices yet".to_string());
            }
        } else {
            parts.push(plural(online, "peer online", "peers online"));
        }
    } else {
        parts.push(plural(r.files, "file", "files"));
    }
    if !r.conflicts.is_empty() {
        parts.push(paint.paint(
            WARN,
            &plural(r.conflicts.len() as u64, "conflict", "conflicts"),
        ));
    }
    if !r.overlaps.is_empty() {
        parts.push(paint.paint(
            WARN,
            &plural(
                r.overlaps.len() as u64,
                "overlapping edit",
                "overlapping edits",
            ),
        ));
    }
    let _ = writeln!(
        out,
        "{}: {}",
        paint.paint(HEAD, &display_root(&r.root, home)),
        parts.join(" · ")
    );
    let hint = |out: &mut String, text: &str| {
        let _ = writeln!(out, "  {}", paint.paint(HINT, &format!("({text})")));
    };
    if !running {
        hint(&mut out, "start syncing with `cue sync start`");
    } else if !r.daemon.answering {
        let pid = r
            .daemon
            .pid
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default();
        hint(
            &mut out,
            &format!(
                "the daemon{pid} did not answer in time, busy (a large file) or stuck: \
                 what follows is what its store holds; ask again in a moment"
            ),
        );
    } else if let Some(m) = standing {
        hint(&mut out, m.reason.as_deref().unwrap_or_default());
        if let Some(reason) = r.relay.reason.as_ref().filter(|_| m.state != "removed") {
            hint(
                &mut out,
                &format!("cannot reach the relay at {}: {reason}", r.relay.url),
            );
        }
    } else if !r.relay.connected {
        let why = match &r.relay.reason {
            Some(reason) => format!("cannot reach the relay at {}: {reason}", r.relay.url),
            // The first attempt is still under way.
            None => format!("cannot reach the relay at {} yet", r.relay.url),
        };
        hint(
            &mut out,
            &format!("{why}; the daemon keeps retrying, and your work is kept meanwhile"),
        );
        let log = match &r.daemon.log {
            Some(log) => format!("details in {log}"),
            None => "details in the daemon's own output: it runs in the foreground".to_string(),
        };
        hint(&mut out, &log);
    } else if r.peers.is_empty() {
        hint(
            &mut out,
            "add a device: `cue sync invite` here, then `cue sync join TOKEN` there; it gets everything made here",
        );
    }
    if !r.modes_kept {
        hint(
            &mut out,
            "this folder keeps no Unix modes (exFAT, FAT?): files keep the executable bit they have on the other devices, and nothing here changes it",
        );
    }
    if r.ignored_files > 0 {
        // A rule any member can write (`.cueignore` syncs): say it, or a `*` there would
        // look like nothing changing.
        hint(
            &mut out,
            &format!(
                "{} ignored here by .cueignore: kept as they are on this device, no longer synced",
                plural(r.ignored_files, "synced file is", "synced files are")
            ),
        );
    }

    // Sections, only when there is something to say.
    if let Some(paused) = &r.deletions_paused {
        let _ = writeln!(out, "\n{}", paint.paint(BAD, "Deletions paused:"));
        let _ = writeln!(
            out,
            "  {} held: {}",
            plural(paused.count, "deletion", "deletions"),
            paused.reason
        );
        hint(
            &mut out,
            "`cue sync restore .` brings the files back, `cue sync apply-deletions` lets them through from here",
        );
    }
    if pending > 0 {
        let _ = writeln!(out, "\n{}", paint.paint(HEAD, "Pending changes:"));
        let _ = writeln!(
            out,
            "  {} made here that no peer has confirmed yet",
            plural(pending, "change", "changes")
        );
        hint(
            &mut out,
            "they go out when a peer is online; nothing is lost meanwhile",
        );
    }
    if !r.conflicts.is_empty() {
        let _ = writeln!(out, "\n{}", paint.paint(HEAD, "Conflicts:"));
        for c in &r.conflicts {
            let _ = writeln!(out, "  {}", paint.paint(WARN, &conflict_line(c)));
        }
        hint(
            &mut out,
            "delete or rename a conflict copy to resolve it, or `cue sync resolve PATH` to mark it seen",
        );
    }
    if !r.overlaps.is_empty() {
        let _ = writeln!(out, "\n{}", paint.paint(HEAD, "Overlapping edits:"));
        for o in &r.overlaps {
            let _ = writeln!(out, "  {}", paint.paint(WARN, &overlap_line(o)));
        }
        hint(
            &mut out,
            "both edits are kept, mixed together: read the paragraph and fix it, then `cue sync resolve PATH`",
        );
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(out, "\n{}", paint.paint(HEAD, "Not synced:"));
        for s in &r.skipped {
            let _ = writeln!(out, "  {}: {}", printable(&s.path), s.reason);
        }
        if r.skipped
            .iter()
            .any(|s| s.reason.starts_with("larger than"))
        {
            hint(&mut out, "max_file_size is set in .cuedeck/config.toml");
        }
    }
    if !r.peers.is_empty() {
        let _ = writeln!(out, "\n{}", paint.paint(HEAD, "Peers:"));
        let width = r
            .peers
            .iter()
            .map(|p| printable(&p.name).len())
            .max()
            .unwrap_or(0);
        for p in &r.peers {
            let state = if p.online {
                paint.paint(GOOD, "online ")
            } else {
                "offline".to_string()
            };
            let seen = match &p.last_sync {
                Some(t) => format!("last synced {}", ago(t, now_ms)),
                None => "never synced".to_string(),
            };
            let _ = writeln!(out, "  {:<width$}  {state}  {seen}", printable(&p.name));
        }
    }
    if let Some(t) = &r.last_full_resync {
        let _ = writeln!(out, "\nLast full resync: {} ({t})", ago(t, now_ms));
    }
    out
}

/// `name` as it can be printed on one line of a terminal: control characters (a newline,
/// an escape sequence) shown escaped, everything else as it is.
/// `text` with its control characters escaped (`\u{1b}`, `\n`): what a peer wrote (a
/// frontmatter value, a device name, a file name) can neither drive the terminal nor
/// make a line of its own.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cue_daemon::control::{
        ConflictReport, DaemonInfo, PeerReport, RelayInfo, SkippedReport, rfc3339,
    };

    const NOW: i64 = 1_763_700_000_000;
    const OFF: Paint = Paint { colour: false };

    fn report() -> StatusReport {
        StatusReport {
            schema_version: 1,
            workspace_id: "00".repeat(16),
            device_id: "11".repeat(32),
            device_name: "laptop".into(),
            root: "/home/ann/notes".into(),
            daemon: DaemonInfo {
                running: true,
                pid: Some(42),
                log: Some("/home/ann/notes/.cuedeck/daemon.log".into()),
                answering: true,
            },
            relay: RelayInfo {
                url: "wss://relay.example.org".into(),
                connected: true,
                reason: None,
                opened: 0,
            },
            peers: vec![
                PeerReport {
                    device_id: "22".repeat(32),
                    name: "desktop".into(),
                    online: true,
                    last_sync: Some(rfc3339(NOW - 5_000)),
                    in_sync: false,
                },
                PeerReport {
                    device_id: "33".repeat(32),
                    name: "server".into(),
                    online: true,
                    last_sync: Some(rfc3339(NOW - 3 * 3_600_000)),
                    in_sync: false,
                },
            ],
            files: 12,
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

    fn home() -> Option<&'static Path> {
        Some(Path::new("/home/ann"))
    }

    #[test]
    fn all_is_well_is_one_headline_and_the_peers() {
        let text = render(&report(), home(), NOW, OFF);
        assert_eq!(
            text,
            "~/notes: up to date · relay connected · 2 peers online\n\
             \n\
             Peers:\n  \
             desktop  online   last synced just now\n  \
             server   online   last synced 3 h ago\n"
        );
    }

    /// A member's frontmatter value and device name carry terminal control sequences
    /// and line breaks: status shows them escaped, on their own lines, and drives
    /// nothing (before, a peer could clear the screen, retitle the window, or forge a
    /// line of status).
    #[test]
    fn a_peers_words_cannot_drive_the_terminal_or_forge_lines() {
        let mut r = report();
        r.peers[0].name = "desk\u{1b}]0;owned\u{7}".into();
        r.conflicts = vec![ConflictReport {
            path: "n.md".into(),
            kind: "frontmatter".into(),
            time: rfc3339(NOW),
            copy: None,
            detail: "title: kept \"\u{1b}[2J\nAll is well\" (bob)".into(),
        }];
        let text = render(&r, home(), NOW, OFF);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text}"
        );
        assert!(text.contains("\\u{1b}[2J\\nAll is well"), "{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("All is well")),
            "a forged line: {text}"
        );
        assert!(text.contains("desk\\u{1b}]0;owned\\u{7}"), "{text}");
    }

    #[test]
    fn sections_appear_for_pending_changes_conflicts_and_skipped_files() {
        let mut r = report();
        r.pending_changes = 3;
        r.peers[1].online = false;
        r.peers[1].last_sync = Some(rfc3339(NOW - 2 * 86_400_000));
        r.conflicts = vec![
            ConflictReport {
                path: "a.md".into(),
                kind: "create".into(),
                time: rfc3339(NOW),
                copy: Some("a.conflict-desktop-222222.md".into()),
                detail: String::new(),
            },
            ConflictReport {
                path: "b.md".into(),
                kind: "frontmatter".into(),
                time: rfc3339(NOW),
                copy: None,
                detail: "title: kept \"B\" (desk); set aside \"b\" (laptop)".into(),
            },
        ];
        r.skipped = vec![SkippedReport {
            path: "big.iso".into(),
            reason: "larger than max_file_size (20000000 bytes)".into(),
        }];
        let text = render(&r, home(), NOW, OFF);
        assert_eq!(
            text,
            "~/notes: 3 changes not yet confirmed · relay connected · 1 peer online · 2 conflicts\n\
             \n\
             Pending changes:\n  \
             3 changes made here that no peer has confirmed yet\n  \
             (they go out when a peer is online; nothing is lost meanwhile)\n\
             \n\
             Conflicts:\n  \
             a.md (create): the other version is in a.conflict-desktop-222222.md\n  \
             b.md (frontmatter): title: kept \"B\" (desk); set aside \"b\" (laptop)\n  \
             (delete or rename a conflict copy to resolve it, or `cue sync resolve PATH` to mark it seen)\n\
             \n\
             Not synced:\n  \
             big.iso: larger than max_file_size (20000000 bytes)\n  \
             (max_file_size is set in .cuedeck/config.toml)\n\
             \n\
             Peers:\n  \
             desktop  online   last synced just now\n  \
             server   offline  last synced 2 days ago\n"
        );
    }

    #[test]
    fn overlapping_edits_are_counted_in_the_headline_and_listed_with_both_devices() {
        let mut r = report();
        r.overlaps = vec![OverlapReport {
            path: "plan.md".into(),
            line: 6,
            excerpt: "We meet on Tuesday.".into(),
            devices: vec!["desktop".into(), "laptop".into()],
            time: rfc3339(NOW),
        }];
        let text = render(&r, home(), NOW, OFF);
        assert_eq!(
            text,
            "~/notes: up to date · relay connected · 2 peers online · 1 overlapping edit\n\
             \n\
             Overlapping edits:\n  \
             plan.md, line 6 (\"We meet on Tuesday.\"): edited at the same time on desktop and laptop\n  \
             (both edits are kept, mixed together: read the paragraph and fix it, then `cue sync resolve PATH`)\n\
             \n\
             Peers:\n  \
             desktop  online   last synced just now\n  \
             server   online   last synced 3 h ago\n"
        );
    }

    /// A daemon that holds the workspace but does not answer (busy merging a large file)
    /// is running: said so, with what its store holds, not "not running".
    #[test]
    fn a_daemon_that_does_not_answer_is_running_not_answering() {
        let mut r = report();
        r.daemon.answering = false;
        r.relay.connected = false;
        let text = render(&r, home(), NOW, OFF);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("~/notes: running, not answering · 12 files")
        );
        let hint = lines.next().unwrap_or_default();
        assert!(
            hint.contains("(pid 42) did not answer in time") && hint.contains("its store holds"),
            "{text}"
        );
    }

    #[test]
    fn a_stopped_daemon_and_an_unreachable_relay_say_what_to_do() {
        let mut r = report();
        r.daemon = DaemonInfo {
            running: false,
            pid: None,
            log: None,
            answering: true,
        };
        r.relay.connected = false;
        r.peers.iter_mut().for_each(|p| p.online = false);
        let text = render(&r, home(), NOW, OFF);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("~/notes: not running · 12 files"));
        assert_eq!(
            lines.next(),
            Some("  (start syncing with `cue sync start`)")
        );

        r.daemon.running = true;
        r.daemon.log = Some("/home/ann/notes/.cuedeck/daemon.log".into());
        let text = render(&r, home(), NOW, OFF);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("~/notes: up to date · offline, retrying · 0 peers online")
        );
        assert!(
            lines
                .next()
                .is_some_and(|l| l.contains("wss://relay.example.org") && l.contains("retrying")),
            "{text}"
        );

        // Once an attempt has failed, the hint says why and where the log is.
        r.relay.reason = Some("connection refused by 127.0.0.1:9".into());
        let text = render(&r, home(), NOW, OFF);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "  (cannot reach the relay at wss://relay.example.org: connection refused by \
             127.0.0.1:9; the daemon keeps retrying, and your work is kept meanwhile)"
        );
        assert_eq!(
            lines[2],
            "  (details in /home/ann/notes/.cuedeck/daemon.log)"
        );

        // A daemon in the foreground logs to its own output.
        r.daemon.log = None;
        let text = render(&r, home(), NOW, OFF);
        assert!(
            text.contains("(details in the daemon's own output: it runs in the foreground)"),
            "{text}"
        );
    }

    #[test]
    fn a_first_sync_shows_its_progress_in_the_headline() {
        let mut r = report();
        r.peers.truncate(1);
        r.peers[0].last_sync = None;
        r.catch_up = Some(CatchUpReport {
            peer: "desktop".into(),
            first: true,
            full: false,
            files_held: 340,
            files_total: 1000,
        });
        let text = render(&r, home(), NOW, OFF);
        assert!(
            text.starts_with(
                "~/notes: first sync, 340 of 1000 files · relay connected · 1 peer online\n"
            ),
            "{text}"
        );
        assert!(text.contains("desktop  online   never synced"), "{text}");
        let c = r.catch_up.as_mut().expect("set above");
        c.first = false;
        assert_eq!(
            catch_up_text(c),
            "catching up with desktop, 340 of 1000 files"
        );
        c.full = true;
        assert_eq!(
            catch_up_text(c),
            "full resync with desktop, 340 of 1000 files"
        );
    }

    #[test]
    fn files_that_cannot_be_written_here_are_the_headline_and_listed() {
        let mut r = report();
        r.skipped = vec![SkippedReport {
            path: "t2/x/in.md".into(),
            reason: "cannot be written here (a component on the way to t2/x/in.md is a file, not a folder); kept on the other devices".into(),
        }];
        let text = render(&r, home(), NOW, OFF);
        assert!(
            text.starts_with("~/notes: 1 file cannot be written here · "),
            "{text}"
        );
        assert!(
            text.contains("Not synced:\n  t2/x/in.md: cannot be written here"),
            "{text}"
        );
        assert!(!text.contains("max_file_size"), "{text}");
    }

    /// A file cue does not sync because its name holds a newline (or another control
    /// character) is listed on one line, the character shown escaped: printed as it
    /// was, it broke the list (and a terminal's escape sequence would act).
    #[test]
    fn a_skipped_name_with_control_characters_is_shown_escaped() {
        let mut r = report();
        r.skipped = vec![SkippedReport {
            path: "two\nlines\u{1b}[31m.md".into(),
            reason: "its name holds a control character".into(),
        }];
        let text = render(&r, home(), NOW, OFF);
        assert!(
            text.contains("Not synced:\n  two\\nlines\\u{1b}[31m.md: its name holds"),
            "{text}"
        );
    }

    #[test]
    fn a_lone_device_is_told_how_to_add_one() {
        let mut r = report();
        r.peers.clear();
        let text = render(&r, home(), NOW, OFF);
        assert_eq!(
            text,
            "~/notes: waiting for a first peer · relay connected\n  \
             (add a device: `cue sync invite` here, then `cue sync join TOKEN` there; it gets everything made here)\n"
        );
    }

    #[test]
    fn changes_no_peer_could_confirm_yet_raise_no_alarm() {
        // Right after `init`, one file: the engine counts 3 changes, and nobody to
        // confirm them.
        let mut r = report();
        r.peers.clear();
        r.files = 1;
        r.pending_changes = 3;
        let lone = render(&r, home(), NOW, OFF);
        assert!(
            lone.starts_with("~/notes: waiting for a first peer · relay connected\n"),
            "{lone}"
        );
        assert!(!lone.contains("change"), "{lone}");
        assert!(!lone.contains('3'), "{lone}");

        // A joined folder whose daemon never ran.
        r.daemon = DaemonInfo {
            running: false,
            pid: None,
            log: None,
            answering: true,
        };
        r.relay.connected = false;
        r.pending_changes = 1;
        let text = render(&r, home(), NOW, OFF);
        assert_eq!(
            text,
            "~/notes: not running · 1 file\n  (start syncing with `cue sync start`)\n"
        );

        // Peers known, none synced yet: waiting, not alarming.
        r.daemon.running = true;
        r.relay.connected = true;
        r.peers = report().peers;
        r.peers.iter_mut().for_each(|p| {
            p.last_sync = None;
            p.online = false;
        });
        let text = render(&r, home(), NOW, OFF);
        assert!(
            text.starts_with(
                "~/notes: waiting for a first sync · relay connected · 0 peers online\n"
            ),
            "{text}"
        );
        assert!(!text.contains("Pending changes"), "{text}");

        // Once a peer has synced, unconfirmed changes are news again.
        r.peers[0].last_sync = Some(rfc3339(NOW - 60_000));
        let text = render(&r, home(), NOW, OFF);
        assert!(
            text.starts_with("~/notes: 1 change not yet confirmed · "),
            "{text}"
        );
        assert!(
            text.contains("Pending changes:\n  1 change made here"),
            "{text}"
        );
    }

    #[test]
    fn colour_only_when_asked_and_the_text_is_the_same() {
        let r = report();
        let plain = render(&r, home(), NOW, OFF);
        assert!(!plain.contains('\x1b'));
        let coloured = render(&r, home(), NOW, Paint { colour: true });
        assert!(coloured.contains("\x1b["), "{coloured:?}");
        assert_eq!(anstream::adapter::strip_str(&coloured).to_string(), plain);
    }

    #[test]
    fn the_home_folder_is_shown_as_a_tilde() {
        let home = Some(Path::new("/home/ann"));
        assert_eq!(display_root("/home/ann/notes", home), "~/notes");
        assert_eq!(display_root("/home/ann", home), "~");
        assert_eq!(display_root("/home/annex/notes", home), "/home/annex/notes");
        assert_eq!(display_root("/srv/notes", home), "/srv/notes");
        assert_eq!(display_root("/srv/notes", None), "/srv/notes");
    }

    #[test]
    fn times_read_as_how_long_ago() {
        assert_eq!(ago(&rfc3339(NOW - 59_000), NOW), "just now");
        assert_eq!(ago(&rfc3339(NOW - 5 * 60_000), NOW), "5 min ago");
        assert_eq!(ago(&rfc3339(NOW - 47 * 3_600_000), NOW), "47 h ago");
        assert_eq!(ago(&rfc3339(NOW - 3 * 86_400_000), NOW), "3 days ago");
        assert_eq!(ago("not a time", NOW), "not a time");
    }
}
