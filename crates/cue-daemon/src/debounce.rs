//! Batches raw notify events by a quiet period, without waking while nothing happens.
//!
//! A debouncer that polls its queue (notify-debouncer-full polls every `timeout / 4`, 400
//! times a second with our 10 ms debounce) costs an idle daemon more CPU than its whole
//! idle budget (docs/benchmarks.md, "## Daemon"). This batcher blocks until an event comes,
//! then collects events until `quiet` passes without one (or `max` since the batch began,
//! so that a file written without pause is still reported), and hands the batch over. An
//! idle daemon's watcher thread never runs.
//!
//! A file closed after writing (inotify's `CLOSE_WRITE`, under a name that is not an
//! editor's temporary) is a finished save: the batch then ends after a short grace
//! (`GRACE`, for the rename or chmod that may follow) rather than the full quiet period,
//! so a save reaches the engine ~1 ms after it, not 10. Renames are not taken as the end
//! of a save: vim renames the file away before writing the new one.
//!
//! The other way round, a file made or written and not yet closed is a save under way:
//! while one is, the batch waits for its close (up to `max`), however long the writer
//! pauses. Otherwise a writer that truncates the file and is then held off the CPU for
//! more than the quiet period (a loaded machine; `std::fs::write` is open-with-truncate,
//! then write) has its empty file taken in, synced to every peer and kept in the
//! history as a version of its own.
//!
//! What the debouncer did that the watcher relies on is kept: within a batch, the two
//! halves of a rename that notify joined (a `Both` event with the same tracker) are
//! dropped in favour of the joined event, and repeated events for one path in a row are
//! kept once. Everything else (what a path is now) the watcher decides by looking at
//! the disk, so the batch boundaries only affect how often it looks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::Event;
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};

use crate::paths::is_temporary_name;

/// How long a batch waits after a finished save for what follows it.
const GRACE: Duration = Duration::from_millis(1);

/// A file closed after writing, under a name that is not a temporary's.
fn finished_save(e: &Event) -> bool {
    e.kind == EventKind::Access(AccessKind::Close(AccessMode::Write))
        && e.paths.first().is_some_and(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !is_temporary_name(n))
        })
}

/// The saves a batch has seen begin and not end: files made or written since their last
/// close, removal or rename away.
#[derive(Debug, Default)]
struct Unfinished(BTreeSet<PathBuf>);

impl Unfinished {
    /// `synced`: whether a path is one cue syncs (the store's own files, kept open and
    /// written all the time, and ignored files never hold a batch).
    fn see(&mut self, e: &Event, synced: &dyn Fn(&Path) -> bool) {
        let Some(path) = e.paths.first() else {
            return;
        };
        match e.kind {
            EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_))
                if synced(path) =>
            {
                self.0.insert(path.clone());
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(RenameMode::From | RenameMode::Both)) => {
                self.0.remove(path);
            }
            _ => {}
        }
    }

    fn any(&self) -> bool {
        !self.0.is_empty()
    }
}

/// One batch: the events in the order they happened, and the watcher's errors.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub events: Vec<Event>,
    pub errors: Vec<notify::Error>,
}

/// Runs the batcher on its own thread until the sending side (the notify watcher) is
/// dropped; `handle` gets every batch.
/// `synced` tells the paths cue syncs (see [`Unfinished::see`]).
pub(crate) fn spawn(
    rx: Receiver<notify::Result<Event>>,
    quiet: Duration,
    max: Duration,
    synced: impl Fn(&Path) -> bool + Send + 'static,
    mut handle: impl FnMut(Batch) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cue-watch-batch".into())
        .spawn(move || {
            // Blocks while idle: no timer, no wake-ups.
            while let Ok(first) = rx.recv() {
                let (batch, open) = collect(first, &rx, quiet, max, &synced);
                handle(batch);
                if !open {
                    return;
                }
            }
        })
}

/// A batch being collected.
struct Collecting<'a> {
    raw: Batch,
    synced: &'a dyn Fn(&Path) -> bool,
    unfinished: Unfinished,
    start: Instant,
    /// The quiet period now: short right after a finished save, else the full one,
    /// counted from the last event that can be a change. A file merely opened or read
    /// (an editor, an indexer, a script polling it) changes nothing and does not hold the
    /// batch back: otherwise a file read in a loop would sync only at `max`.
    wait_for: Duration,
    last_change: Instant,
    quiet: Duration,
    max: Duration,
}

impl Collecting<'_> {
    fn push(&mut self, r: notify::Result<Event>) {
        match r {
            Ok(e) => {
                self.unfinished.see(&e, self.synced);
                let saved = finished_save(&e);
                if saved || !matches!(e.kind, EventKind::Access(_)) || e.need_rescan() {
                    self.wait_for = if saved {
                        GRACE.min(self.quiet)
                    } else {
                        self.quiet
                    };
                    self.last_change = Instant::now();
                }
                self.raw.events.push(e)
            }
            Err(e) => self.raw.errors.push(e),
        }
    }

    /// When the batch ends unless more comes: at `max` while a save is under way.
    fn deadline(&self) -> Instant {
        let cut = self.start + self.max;
        if self.unfinished.any() {
            cut
        } else {
            (self.last_change + self.wait_for).min(cut)
        }
    }
}

/// Collects one batch that starts with `first`. Returns it and whether the channel is
/// still open.
fn collect(
    first: notify::Result<Event>,
    rx: &Receiver<notify::Result<Event>>,
    quiet: Duration,
    max: Duration,
    synced: &dyn Fn(&Path) -> bool,
) -> (Batch, bool) {
    let start = Instant::now();
    let mut batch = Collecting {
        raw: Batch::default(),
        synced,
        unfinished: Unfinished::default(),
        start,
        wait_for: quiet,
        last_change: start,
        quiet,
        max,
    };
    batch.push(first);
    let mut open = true;
    while let Some(wait) = batch
        .deadline()
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        match rx.recv_timeout(wait) {
            Ok(r) => batch.push(r),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                open = false;
                break;
            }
        }
    }
    let mut raw = batch.raw;
    raw.events = prune(raw.events);
    (raw, open)
}

fn rename_mode(e: &Event) -> Option<RenameMode> {
    match e.kind {
        EventKind::Modify(ModifyKind::Name(mode)) => Some(mode),
        _ => None,
    }
}

/// Drops what a batch says twice: the halves of joined renames, access events, and an
/// event repeating the one kept just before it.
pub(crate) fn prune(events: Vec<Event>) -> Vec<Event> {
    let joined: BTreeSet<usize> = events
        .iter()
        .filter(|e| rename_mode(e) == Some(RenameMode::Both))
        .filter_map(Event::tracker)
        .collect();
    let mut out: Vec<Event> = Vec::with_capacity(events.len());
    for e in events {
        if matches!(e.kind, EventKind::Access(_)) && !e.need_rescan() {
            continue;
        }
        let half = matches!(rename_mode(&e), Some(RenameMode::From | RenameMode::To));
        if half && e.tracker().is_some_and(|t| joined.contains(&t)) {
            continue;
        }
        let repeat = out.last().is_some_and(|prev| {
            rename_mode(prev).is_none()
                && rename_mode(&e).is_none()
                && prev.paths == e.paths
                && !e.need_rescan()
        });
        if repeat {
            continue;
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::mpsc::channel;

    use notify::event::{CreateKind, DataChange, Flag};

    use super::*;

    fn ev(kind: EventKind, paths: &[&str]) -> Event {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    fn name(mode: RenameMode, paths: &[&str], tracker: usize) -> Event {
        ev(EventKind::Modify(ModifyKind::Name(mode)), paths).set_tracker(tracker)
    }

    fn chmod(path: &str) -> Event {
        ev(
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
            &[path],
        )
    }

    fn write(path: &str) -> Event {
        ev(
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            &[path],
        )
    }

    #[test]
    fn joined_renames_replace_their_halves_and_lone_halves_stay() {
        let events = vec![
            name(RenameMode::From, &["/w/a"], 1),
            name(RenameMode::To, &["/w/b"], 1),
            name(RenameMode::Both, &["/w/a", "/w/b"], 1),
            // Moved out of the folder: no partner, stays a lone half.
            name(RenameMode::From, &["/w/c"], 2),
        ];
        let kept = prune(events);
        assert_eq!(kept.len(), 2);
        assert_eq!(rename_mode(&kept[0]), Some(RenameMode::Both));
        assert_eq!(
            kept[0].paths,
            vec![PathBuf::from("/w/a"), PathBuf::from("/w/b")]
        );
        assert_eq!(rename_mode(&kept[1]), Some(RenameMode::From));
    }

    #[test]
    fn repeats_in_a_row_are_kept_once_but_order_around_renames_is_kept() {
        let events = vec![
            ev(EventKind::Create(CreateKind::File), &["/w/a"]),
            write("/w/a"),
            write("/w/a"),
            ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/w/a"],
            ),
            name(RenameMode::Both, &["/w/a", "/w/b"], 3),
            write("/w/a"),
        ];
        let kept = prune(events);
        let kinds: Vec<_> = kept.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                // The writes and the close say nothing the creation did not: the
                // watcher looks at what is on disk.
                EventKind::Create(CreateKind::File),
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            ]
        );
    }

    #[test]
    fn a_rescan_request_is_never_dropped() {
        let rescan = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        let kept = prune(vec![rescan.clone(), rescan]);
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(Event::need_rescan));
    }

    #[test]
    fn a_batch_ends_after_the_quiet_period_and_at_most_after_max() {
        let (tx, rx) = channel();
        // Quiet period: events that keep coming within it stay in one batch.
        for i in 0..5 {
            tx.send(Ok(chmod(&format!("/w/{i}")))).unwrap();
        }
        let first = rx.recv().unwrap();
        let (batch, open) = collect(
            first,
            &rx,
            Duration::from_millis(20),
            Duration::from_secs(5),
            &|_| true,
        );
        assert!(open);
        assert_eq!(batch.events.len(), 5);
        // A writer that never pauses still gets its batch cut at `max`: it writes until
        // told to stop (or 30 s), and the batch must end while it is still writing.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_w = stop.clone();
        let writer = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !stop_w.load(std::sync::atomic::Ordering::SeqCst) {
                if tx.send(Ok(write("/w/busy"))).is_err() {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            stop_w.load(std::sync::atomic::Ordering::SeqCst)
        });
        let first = rx.recv().unwrap();
        let (_, open) = collect(
            first,
            &rx,
            Duration::from_millis(50),
            Duration::from_millis(100),
            &|_| true,
        );
        assert!(open);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(
            writer.join().unwrap(),
            "the batch lasted as long as the writer: it was not cut at max"
        );
    }

    fn created(path: &str) -> Event {
        ev(EventKind::Create(CreateKind::File), &[path])
    }

    fn closed(path: &str) -> Event {
        ev(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &[path],
        )
    }

    /// The batch `events` make, sent at once with the channel left open and `max` a
    /// minute; fails if it took half of that (it waited for `max`: nothing ended it).
    fn collected_before_max(
        events: Vec<Event>,
        quiet: Duration,
        synced: &dyn Fn(&Path) -> bool,
    ) -> Batch {
        let (tx, rx) = channel();
        for e in events {
            tx.send(Ok(e)).unwrap();
        }
        let first = rx.recv().unwrap();
        let started = Instant::now();
        let (batch, open) = collect(first, &rx, quiet, Duration::from_secs(60), synced);
        assert!(open);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the batch waited for max"
        );
        drop(tx);
        batch
    }

    #[test]
    fn a_finished_save_ends_the_batch_without_the_quiet_period() {
        // Without the early end this would wait the whole minute.
        let batch = collected_before_max(
            vec![write("/w/a.md"), closed("/w/a.md")],
            Duration::from_secs(60),
            &|_| true,
        );
        assert_eq!(batch.events.len(), 1, "the close repeats the write");
    }

    /// A program reading files in a loop (an editor, an indexer, a script polling) sends
    /// open and read events without pause: they change nothing and must not hold a save's
    /// batch back until `max`.
    #[test]
    fn reads_in_a_loop_do_not_hold_a_batch_back() {
        let (tx, rx) = channel();
        tx.send(Ok(write("/w/a.md"))).unwrap();
        tx.send(Ok(closed("/w/a.md"))).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_r = stop.clone();
        let reader = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !stop_r.load(std::sync::atomic::Ordering::SeqCst) {
                let open = ev(
                    EventKind::Access(AccessKind::Open(AccessMode::Read)),
                    &["/w/a.md"],
                );
                if tx.send(Ok(open)).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let first = rx.recv().unwrap();
        let (batch, open) = collect(
            first,
            &rx,
            Duration::from_millis(50),
            Duration::from_secs(60),
            &|_| true,
        );
        // The reader reads for 30 s unless stopped: the batch must end while it reads.
        let ended_while_reading = !reader.is_finished();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        reader.join().unwrap();
        assert!(open);
        assert!(ended_while_reading, "the reads held the batch back");
        assert!(batch.events.iter().any(|e| e.kind == write("/w/a.md").kind));
    }

    /// `std::fs::write` truncates the file on opening it, then writes: a writer held off
    /// the CPU in between (a loaded machine) must not have its empty file taken in, nor a
    /// new file before its first write.
    #[test]
    fn a_save_under_way_holds_the_batch_until_its_close_however_long_the_writer_pauses() {
        for opening in [write("/w/a.md"), created("/w/new.md")] {
            let path = opening.paths[0].clone();
            let (tx, rx) = channel();
            tx.send(Ok(opening)).unwrap();
            let writer = std::thread::spawn(move || {
                // The pause: ten quiet periods.
                std::thread::sleep(Duration::from_millis(100));
                let path = path.to_str().unwrap();
                let _ = tx.send(Ok(write(path)));
                let _ = tx.send(Ok(closed(path)));
                tx
            });
            let first = rx.recv().unwrap();
            let (batch, open) = collect(
                first,
                &rx,
                Duration::from_millis(10),
                Duration::from_secs(60),
                &|_| true,
            );
            let _tx = writer.join().unwrap();
            assert!(open);
            assert!(
                rx.try_recv().is_err(),
                "the batch ended before the save did: {batch:?}"
            );
        }
    }

    /// The store's files (kept open, written after every event) and ignored files are
    /// never saves under way: held for them, every batch would last `max`.
    #[test]
    fn a_file_cue_does_not_sync_never_holds_a_batch() {
        let batch = collected_before_max(
            vec![
                write("/w/.cuedeck/store.sqlite3-wal"),
                write("/w/a.md"),
                closed("/w/a.md"),
            ],
            Duration::from_millis(10),
            &|p: &Path| !p.starts_with("/w/.cuedeck"),
        );
        assert_eq!(batch.events.len(), 2);
    }

    /// What ends a save under way without a close: the file removed or renamed away.
    #[test]
    fn a_save_under_way_ends_when_its_file_goes() {
        for gone in [
            ev(
                EventKind::Remove(notify::event::RemoveKind::File),
                &["/w/a.md"],
            ),
            name(RenameMode::From, &["/w/a.md"], 1),
            name(RenameMode::Both, &["/w/a.md", "/w/b.md"], 2),
        ] {
            collected_before_max(
                vec![write("/w/a.md"), gone],
                Duration::from_millis(10),
                &|_| true,
            );
        }
    }

    #[test]
    fn only_a_synced_name_closed_after_writing_is_a_finished_save() {
        assert!(finished_save(&closed("/w/notes/a.md")));
        // Editors' and tools' temporaries are renamed into place next.
        for temp in ["/w/sedAb12Cd", "/w/.a.md.swp", "/w/a.md~", "/w/a.md.tmp"] {
            assert!(!finished_save(&closed(temp)), "{temp}");
        }
        assert!(!finished_save(&write("/w/a.md")));
        assert!(!finished_save(&name(
            RenameMode::Both,
            &["/w/a.md", "/w/a.md~"],
            1
        )));
    }

    #[test]
    fn the_batcher_stops_when_the_watcher_is_dropped() {
        let (tx, rx) = channel::<notify::Result<Event>>();
        let (out_tx, out_rx) = channel();
        let thread = spawn(
            rx,
            Duration::from_millis(1),
            Duration::from_millis(10),
            |_| true,
            move |b| {
                let _ = out_tx.send(b.events.len());
            },
        )
        .unwrap();
        tx.send(Ok(write("/w/a"))).unwrap();
        assert_eq!(out_rx.recv_timeout(Duration::from_secs(10)), Ok(1));
        drop(tx);
        thread.join().unwrap();
    }
}
