//! The daemon's main loop, and starting it in the background.
//!
//! One task owns the [`Driver`] (engine, store, folder) and the network session
//! (`session.rs`: sealing and opening envelopes, admissions, peers, sequence numbers and
//! the replay guard), and with them everything secret; around it run the watcher (a std
//! thread bridging its channel), the relay client task (frames only), the control socket
//! and a tick: every 250 ms while the engine has background work (compaction, a pull) or
//! events arrived lately, every 2 s otherwise, so that an idle daemon costs next to
//! nothing; back to back, after any waiting event, while adopted documents wait for their
//! check. The loop itself only dispatches: each event goes to its handler, and what
//! the engine wants sent goes through the session.
//!
//! Order of start-up: lock, store, engine, watcher, scan (so that a change made during
//! the scan is seen by the watcher), control socket, relay. `cue sync start` waits for
//! the control socket, so when it returns the folder has been scanned and is watched.
//! A clean stop handles the watcher's last events, commits, closes the relay connection
//! and removes the socket before answering.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::control::{self, Pending, Request, Response, StatusContext};
use crate::driver::{Driver, DriverError, Outgoing, WatchWork, now_ms};
use crate::lock::{DaemonLock, LockError, control_socket_path, prepare_socket_dir};
use crate::membership::Membership;
use crate::relay_client::RelayEvent;
use crate::session::Session;
use crate::watch::{WatchConfig, WatchEvent, Watcher};
use crate::workspace::{Workspace, WorkspaceError};

/// Set in the environment of a daemon started by `cue sync start`: it makes itself a
/// session leader, away from the caller's terminal.
pub const DETACHED_ENV: &str = "CUE_DAEMON_DETACHED";

const TICK: Duration = Duration::from_millis(250);
/// How long a stop goes on taking in what the watcher saw before it (a save made just
/// before `cue sync stop`). What is left after that (most of a copy of thousands of
/// files, which takes seconds to minutes to take in) stays on disk, and the next start's
/// scan takes it in: a stop must not wait for a burst, and a container's stop grants
/// ten seconds before it kills.
const STOP_TAKES_IN_AT_MOST: Duration = Duration::from_secs(2);
/// The tick when nothing is under way: the hello every `anti_entropy_ms` (30 s) and the
/// expiry of tombstones (days) are all that is left to do.
const IDLE_TICK: Duration = Duration::from_secs(2);
/// How long the daemon must have been quiet before it truncates the store's WAL.
const RECLAIM_AFTER_QUIET: Duration = Duration::from_secs(5);
/// At most this many relay events are taken at once (the first and those already waiting
/// behind it): messages received together are opened together and the replay guard is
/// stored once for them, while a save waits behind at most one such batch.
const RELAY_BATCH: usize = 16;

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("a cue daemon is already running for this workspace{}; stop it with `cue sync stop`", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning { pid: Option<u32> },
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("cannot take the daemon lock: {0}")]
    Lock(LockError),
    #[error("cannot set up the control socket: {0}")]
    Socket(String),
    #[error("cannot watch the folder: {0}")]
    Watch(#[from] crate::watch::WatchError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start the daemon in the background: {0}")]
    Spawn(String),
    #[error(
        "the workspace folder {} was moved or removed: stopped, nothing more is synced or written there; start cue again in the folder where it is now",
        .0.display()
    )]
    RootMoved(std::path::PathBuf),
    #[error(
        "the workspace's {} folder (its keys and store) was removed or moved away: stopped; the files stay as they are. To sync this folder again, `cue sync join` an invite (its files are merged, never overwritten)",
        .0.display()
    )]
    StoreGone(std::path::PathBuf),
}

/// The environment variable that carries the relay's auth token to a daemon started in
/// the background (never its command line, which every user sees in `ps`); the `cue`
/// command line reads it too (docs/reference.md §2.3).
pub const AUTH_TOKEN_ENV: &str = "CUE_AUTH_TOKEN";
/// The variable naming a file that holds the relay's auth token.
pub const AUTH_TOKEN_FILE_ENV: &str = "CUE_AUTH_TOKEN_FILE";

/// Runs the daemon in this process until it is stopped (`cue sync start --foreground`,
/// `cue watch --sync`). `relay` overrides the relay URL and is saved into the config;
/// `auth_token` overrides `sync.relay.auth_token` for this run and is never saved.
pub fn run_foreground(
    root: &Path,
    relay: Option<&str>,
    auth_token: Option<&str>,
) -> Result<(), RunError> {
    if std::env::var_os(DETACHED_ENV).is_some() {
        // Our own session: the caller's terminal closing or its Ctrl-C never reaches us.
        // Fails only if we already lead a group, which a spawned child never does.
        let _ = rustix::process::setsid();
    }
    // wss:// relays: rustls with ring, the one provider compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut ws = Workspace::open(root)?;
    let lock = match DaemonLock::acquire(&ws.dir()) {
        Ok(l) => l,
        Err(LockError::AlreadyRunning { pid }) => return Err(RunError::AlreadyRunning { pid }),
        Err(e) => return Err(RunError::Lock(e)),
    };
    if let Some(url) = relay {
        ws.set_relay(url)?;
    }
    crate::memory::limit_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let auth_token =
        auth_token.map_or_else(|| ws.config.sync.relay.auth_token.clone(), str::to_string);
    let result = runtime.block_on(daemon(ws, auth_token));
    // Tasks still running (the control socket's) end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(lock);
    result
}

/// Starts the daemon in the background: this executable again with `--foreground`, in
/// its own session, its output to `.cuedeck/daemon.log`; returns once the daemon answers
/// on its control socket (it has scanned the folder and armed its watcher), or with the
/// daemon's own error.
pub fn start_background(
    root: &Path,
    relay: Option<&str>,
    auth_token: Option<&str>,
    deadline: Duration,
) -> Result<u32, RunError> {
    let ws = Workspace::open(root)?;
    // A daemon killed a moment ago still holds the lock while its threads exit: wait for
    // it rather than calling it running.
    if let Ok(Some(pid)) = DaemonLock::probe_running(&ws.dir()) {
        return Err(RunError::AlreadyRunning { pid });
    }
    let exe = std::env::current_exe().map_err(|e| RunError::Spawn(e.to_string()))?;
    let log_path = ws.log_path();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| RunError::Spawn(format!("{}: {e}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| RunError::Spawn(e.to_string()))?;
    let log_len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(exe);
    cmd.arg("-C")
        .arg(&ws.root)
        .args(["sync", "start", "--foreground"]);
    if let Some(url) = relay {
        cmd.args(["--relay", url]);
    }
    if let Some(token) = auth_token {
        // The token as the caller found it (flag, variable or file), to the daemon
        // through its environment: readable only by this user (/proc/PID/environ).
        cmd.env(AUTH_TOKEN_ENV, token)
            .env_remove(AUTH_TOKEN_FILE_ENV);
    }
    cmd.env(DETACHED_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .current_dir(&ws.root);
    let mut child = cmd.spawn().map_err(|e| RunError::Spawn(e.to_string()))?;
    let socket = control_socket_path(&ws.root).map_err(|e| RunError::Socket(e.to_string()))?;
    let until = std::time::Instant::now() + deadline;
    let mut wait = Duration::from_millis(5);
    // Another daemon that answered meanwhile (several `start`s at once: one takes the
    // lock, the others' daemons exit).
    let mut other: Option<u32> = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // The daemon's last log line says why (already running, bad config...).
            let text = std::fs::read(&log_path).unwrap_or_default();
            let since =
                String::from_utf8_lossy(&text[(log_len as usize).min(text.len())..]).into_owned();
            let tail = since
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            // (Several starts at once share the log: the daemon that won can write
            // after ours said it lost, so ours is not always the last line; the lock
            // says who holds the workspace.)
            let holder = match DaemonLock::probe_running(&ws.dir()) {
                Ok(Some(pid)) => Some(pid),
                _ => None,
            };
            if since.contains("already running") || other.is_some() || holder.is_some() {
                return Err(RunError::AlreadyRunning {
                    pid: other.or(holder.flatten()),
                });
            }
            return Err(RunError::Spawn(format!(
                "the daemon exited ({status}): {tail} (see {})",
                log_path.display()
            )));
        }
        if let Ok(r) = control::request(&socket, &Request::Status, Duration::from_secs(2))
            && r.ok
        {
            // Ours, or another that holds the workspace (ours then exits: see above).
            match r.status.and_then(|s| s.daemon.pid) {
                Some(pid) if pid != child.id() => other = Some(pid),
                _ => return Ok(child.id()),
            }
        }
        if std::time::Instant::now() >= until {
            return Err(RunError::Spawn(format!(
                "the daemon did not answer within {} s (see {})",
                deadline.as_secs(),
                log_path.display()
            )));
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_millis(100));
    }
}

/// What the main loop waits on, besides its tick.
struct Inbox {
    watch: mpsc::Receiver<Vec<WatchEvent>>,
    relay: mpsc::UnboundedReceiver<RelayEvent>,
    lobby: mpsc::UnboundedReceiver<RelayEvent>,
    control: mpsc::Receiver<Pending>,
    sigterm: Signal,
    sigint: Signal,
}

/// What runs beside the main loop, to take down at the end.
struct Services {
    watcher: Watcher,
    socket: PathBuf,
    control_task: JoinHandle<()>,
}

/// The main loop's state: the driver, the network session, and when to tick.
struct Daemon<'w> {
    ws: &'w Workspace,
    driver: Driver,
    session: Session<'w>,
    membership: Membership,
    /// The relay clients (the room's, the lobby's, and those of rooms left).
    relay_tasks: Vec<JoinHandle<()>>,
    /// How long the room has had nobody else in it (see `alone.rs`).
    alone: crate::alone::Alone,
    next_tick: tokio::time::Instant,
    /// The store's WAL and free pages are given back once the daemon has been quiet for
    /// [`RECLAIM_AFTER_QUIET`] after writing (a WAL grows to megabytes between
    /// checkpoints, which alone would be several times a small workspace's size).
    last_busy: std::time::Instant,
    reclaim_due: bool,
    /// When a stop was asked for (the time `STOP_TAKES_IN_AT_MOST` counts from).
    stop_asked: Option<std::time::Instant>,
    /// Changes the watcher saw that the stop left to the next start's scan.
    left_for_next_start: usize,
}

/// What the loop does after an event.
enum Flow {
    Continue,
    /// Stop cleanly; answer this `cue sync stop` when done.
    Stop(Option<Pending>),
}

async fn daemon(ws: Workspace, auth_token: String) -> Result<(), RunError> {
    let mut driver = Driver::open(&ws, &ws.config)?;
    let (watcher, watch) = watch_and_scan(&ws, &mut driver)?;
    let (relay_tx, relay_cmds) = mpsc::unbounded_channel();
    let (membership, (lobby, lobby_task)) = Membership::start(&ws, auth_token);
    // While waiting to be admitted there is no room to be in: the session waits, never
    // connected, until the lobby hands it the secret's keys (placeholder keys till then,
    // which never reach a relay).
    let keys = membership.room_keys().unwrap_or_else(|| {
        cue_crypto::WorkspaceKeys::derive(&cue_crypto::WorkspaceSecret::from_bytes([0; 32]))
    });
    let session =
        Session::resume(&ws, keys.clone(), driver.store(), relay_tx).map_err(DriverError::from)?;
    let watch = bridge(watch)?;
    let (socket, control, control_task) = listen(&ws)?;
    let (relay, mut relay_tasks) = match membership.room_keys() {
        Some(keys) => {
            let (events, task) = membership.connect_room(keys, relay_cmds);
            (events, vec![task, lobby_task])
        }
        None => (mpsc::unbounded_channel().1, vec![lobby_task]),
    };
    tracing::info!(
        root = %ws.root.display(),
        relay = %ws.config.sync.relay.url,
        device = %driver.device_name(),
        epoch = driver.epoch(),
        "daemon ready"
    );
    let mut inbox = Inbox {
        watch,
        relay,
        lobby,
        control,
        sigterm: signal(SignalKind::terminate()).map_err(RunError::Runtime)?,
        sigint: signal(SignalKind::interrupt()).map_err(RunError::Runtime)?,
    };
    let mut services = Services {
        watcher,
        socket,
        control_task,
    };
    prune_activity(&mut driver, &ws.config);
    // Loading the store and scanning the folder peak well above what the daemon keeps.
    crate::memory::release_free_memory();
    let mut daemon = Daemon {
        ws: &ws,
        driver,
        session,
        membership,
        relay_tasks: std::mem::take(&mut relay_tasks),
        alone: crate::alone::Alone::new(crate::alone::jitter()),
        next_tick: tokio::time::Instant::now() + TICK,
        last_busy: std::time::Instant::now(),
        reclaim_due: false,
        stop_asked: None,
        left_for_next_start: 0,
    };
    let (outcome, stop_reply) = match daemon.run(&mut inbox, &mut services.watcher).await {
        Ok(reply) => (Ok(()), reply),
        Err(e) => (Err(e), None),
    };
    let result = daemon.finish(outcome, &mut inbox.watch).await;
    daemon.session.close();
    daemon.membership.lobby.close();
    services.end(std::mem::take(&mut daemon.relay_tasks)).await;
    tracing::info!(
        rejected = ?daemon.session.rejected(),
        replay_writes = daemon.session.replay_writes(),
        "daemon stopped"
    );
    if let Some(pending) = stop_reply {
        answer_stop(pending, &result, daemon.left_for_next_start).await;
    }
    result
}

/// Starts the watcher, then scans (so that a change made during the scan is seen).
fn watch_and_scan(
    ws: &Workspace,
    driver: &mut Driver,
) -> Result<(Watcher, std::sync::mpsc::Receiver<Vec<WatchEvent>>), RunError> {
    let rules = crate::ignore_rules::IgnoreRules::load(&ws.root)
        .map_err(|e| RunError::Driver(DriverError::Ignore(e)))?;
    let debounce = Duration::from_millis(ws.config.sync.debounce_ms);
    let (watcher, watch_rx) = Watcher::start(&ws.root, rules, WatchConfig { debounce })?;
    // Not connected yet: the scan's changes are stored, and sent on connecting.
    let _ = driver.startup_scan(now_ms())?;
    Ok((watcher, watch_rx))
}

/// The watcher's std channel, bridged: each batch is what was waiting together.
fn bridge(
    watch_rx: std::sync::mpsc::Receiver<Vec<WatchEvent>>,
) -> Result<mpsc::Receiver<Vec<WatchEvent>>, RunError> {
    let (watch_tx, watch_events) = mpsc::channel::<Vec<WatchEvent>>(64);
    std::thread::Builder::new()
        .name("cue-watch-bridge".into())
        .spawn(move || {
            while let Ok(mut batch) = watch_rx.recv() {
                while let Ok(more) = watch_rx.try_recv() {
                    batch.extend(more);
                }
                if watch_tx.blocking_send(batch).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| RunError::Spawn(e.to_string()))?;
    Ok(watch_events)
}

/// The control socket: answering it means "ready", so it comes after the scan.
fn listen(ws: &Workspace) -> Result<(PathBuf, mpsc::Receiver<Pending>, JoinHandle<()>), RunError> {
    let socket = control_socket_path(&ws.root).map_err(|e| RunError::Socket(e.to_string()))?;
    prepare_socket_dir(&socket).map_err(|e| RunError::Socket(e.to_string()))?;
    // We hold the lock, so a socket file there is a dead daemon's.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| RunError::Socket(format!("{}: {e}", socket.display())))?;
    let (control_tx, control_rx) = mpsc::channel::<Pending>(16);
    let control_task = tokio::spawn(control::serve(listener, control_tx));
    Ok((socket, control_rx, control_task))
}

/// A command's answer: what went wrong with the command itself is the user's to read;
/// a failure of the driver is the daemon's too.
fn answered<E: std::fmt::Display>(
    command: Result<Result<Vec<Outgoing>, E>, DriverError>,
) -> (Response, Result<Vec<Outgoing>, DriverError>) {
    match command {
        Ok(Ok(sends)) => (Response::ok(), Ok(sends)),
        Ok(Err(e)) => (Response::error(e.to_string()), Ok(Vec::new())),
        Err(e) => (Response::error(e.to_string()), Err(e)),
    }
}

impl Daemon<'_> {
    /// The main loop: until a signal, `cue sync stop`, or an error of the driver.
    async fn run(
        &mut self,
        inbox: &mut Inbox,
        watcher: &mut Watcher,
    ) -> Result<Option<Pending>, RunError> {
        loop {
            let flow = tokio::select! {
                // In this order: the tick comes last, so that background work done tick
                // after tick (checking adopted documents) never holds up an event.
                biased;
                _ = inbox.sigterm.recv() => Ok(Flow::Stop(None)),
                _ = inbox.sigint.recv() => Ok(Flow::Stop(None)),
                Some(batch) = inbox.watch.recv() => self.on_watch(batch, inbox),
                Some(first) = inbox.relay.recv() => {
                    self.on_relay(with_waiting(first, &mut inbox.relay))
                }
                Some(first) = inbox.lobby.recv() => {
                    self.on_lobby(with_waiting(first, &mut inbox.lobby))
                }
                Some(pending) = inbox.control.recv() => self.on_control(pending),
                () = tokio::time::sleep_until(self.next_tick) => self.on_tick(),
            };
            // A rotation moved us to another room: its client takes the old one's place.
            if let Some((events, task)) = self.membership.new_room.take() {
                inbox.relay = events;
                self.relay_tasks.push(task);
            }
            if let Flow::Stop(reply) = flow? {
                // The stop's time for what the watcher still holds counts from here.
                self.stop_asked.get_or_insert_with(std::time::Instant::now);
                return Ok(reply);
            }
            self.follow_mounts(watcher)?;
            if watcher.watch_unwatched() {
                tracing::info!("a folder the watcher could not watch may be read now");
                let out = self.driver.rescan(now_ms())?;
                self.session.send_all(&mut self.driver, out);
            }
        }
    }

    /// Saves, renames and removals in the folder, a step at a time: what peers send
    /// meanwhile (their edits, the answers to our pulls, a pull of theirs) is taken
    /// between two steps, not after the whole batch. A `git checkout` of thousands of
    /// files held it for as long as the checkout took to take in (25 s for 10,000 notes),
    /// and a pull answered that late was answered against what the asker held when it
    /// asked: every note again, already sent, 60 MB made at once.
    fn on_watch(&mut self, batch: Vec<WatchEvent>, inbox: &mut Inbox) -> Result<Flow, RunError> {
        self.busy();
        let root_gone = batch.iter().any(|e| matches!(e, WatchEvent::RootGone));
        let batch_store_gone = batch.iter().any(|e| matches!(e, WatchEvent::StoreGone));
        // (Trips the mass-deletion guard when the folder itself is gone.)
        let mut work = self.driver.watch_begin(batch);
        // The folder moved away (dragged to the Trash, renamed) or removed: the daemon
        // would go on syncing it wherever it went, peers' writes landing in the Trash.
        if root_gone && self.driver.root_moved() {
            self.driver.flush()?;
            return Err(RunError::RootMoved(self.driver.root_path().to_path_buf()));
        }
        // `.cuedeck` removed (to leave the workspace, or to start afresh): the store is
        // open still, and syncing on it would go on where no command reaches (no lock, no
        // socket, no pid file). Stopping loses nothing the folder holds.
        if batch_store_gone {
            // (Kept where the store went, if it was moved rather than removed.)
            self.driver.flush()?;
            let store = self.driver.root_path().join(crate::paths::CUEDECK_DIR);
            return Err(RunError::StoreGone(store));
        }
        // A stop asked for meanwhile (`cue sync stop`, a signal) goes on taking the batch
        // in for `STOP_TAKES_IN_AT_MOST`; the rest is on disk, for the next start's scan.
        let mut stop = None;
        loop {
            let sends = self.take_in_step(&mut work);
            if let Flow::Stop(reply) = self.after_event(sends)? {
                stop.get_or_insert(reply);
            }
            if work.done() {
                return Ok(stop.map_or(Flow::Continue, Flow::Stop));
            }
            if let Some(reply) = stop.take() {
                if self.stop_time_over() {
                    self.left_for_next_start += work.left();
                    return Ok(Flow::Stop(reply));
                }
                stop = Some(reply);
                continue;
            }
            if signalled(&mut inbox.sigterm) || signalled(&mut inbox.sigint) {
                stop = Some(None);
                self.stop_asked.get_or_insert_with(std::time::Instant::now);
                continue;
            }
            // One relay batch a step, no more: a peer streaming a first sync at us must
            // not hold the folder's batch up either. Not after a rotation moved us to
            // another room: the main loop takes its channel once the batch is in.
            if self.membership.new_room.is_none()
                && let Ok(first) = inbox.relay.try_recv()
                && let Flow::Stop(reply) = self.on_relay(with_waiting(first, &mut inbox.relay))?
            {
                stop.get_or_insert(reply);
            }
            // `cue sync status` answers during a long batch too.
            if stop.is_none()
                && let Ok(pending) = inbox.control.try_recv()
                && let Flow::Stop(reply) = self.on_control(pending)?
            {
                stop = Some(reply);
            }
            if stop.is_some() {
                self.stop_asked.get_or_insert_with(std::time::Instant::now);
            }
        }
    }

    /// The next step of a watcher batch (`Driver::watch_step`), its messages sent as each
    /// part is stored; what is left to send.
    fn take_in_step(&mut self, work: &mut WatchWork) -> Result<Vec<Outgoing>, DriverError> {
        let session = &mut self.session;
        self.driver.watch_step(now_ms(), work, &mut |store, sends| {
            session.send_with(store, sends)
        })
    }

    /// Whether a stop's time for taking in what the watcher saw is over (counted from
    /// when it was asked for, or from now).
    fn stop_time_over(&mut self) -> bool {
        self.stop_asked
            .get_or_insert_with(std::time::Instant::now)
            .elapsed()
            >= STOP_TAKES_IN_AT_MOST
    }

    /// The room: joined or lost, peers coming and going, their messages.
    fn on_relay(&mut self, events: Vec<RelayEvent>) -> Result<Flow, RunError> {
        self.busy();
        let handled = self.session.on_relay_events(&mut self.driver, events);
        self.after_event(handled.map(|()| Vec::new()))
    }

    /// The lobby: admissions, and catching up with rotations.
    fn on_lobby(&mut self, events: Vec<RelayEvent>) -> Result<Flow, RunError> {
        let handled =
            self.membership
                .on_lobby(self.ws, &mut self.driver, &mut self.session, events);
        self.after_event(handled.map(|()| Vec::new()))
    }

    /// A request on the control socket.
    fn on_control(&mut self, pending: Pending) -> Result<Flow, RunError> {
        if matches!(pending.request, Request::Stop) {
            return Ok(Flow::Stop(Some(pending)));
        }
        let Pending { request, reply, .. } = pending;
        let (response, sends) = self.answer(request);
        let _ = reply.send(response);
        self.after_event(sends)
    }

    /// Time passed: the driver's tick, space given back after a quiet while, and the
    /// next tick set by how much is under way.
    fn on_tick(&mut self) -> Result<Flow, RunError> {
        if self.reclaim_due && self.last_busy.elapsed() >= RECLAIM_AFTER_QUIET {
            self.reclaim_due = false;
            prune_activity(&mut self.driver, &self.ws.config);
            reclaim_space(&mut self.driver);
            crate::memory::release_free_memory();
        }
        let writes = self.driver.store_writes();
        let step = self.driver.tick(now_ms());
        // Compaction and checks run in ticks: space is given back after them.
        if self.driver.store_writes() != writes {
            self.busy();
        }
        let every = if self.driver.checking() {
            Duration::ZERO
        } else if self.reclaim_due || self.driver.wants_frequent_ticks() {
            TICK
        } else {
            IDLE_TICK
        };
        self.next_tick = tokio::time::Instant::now() + every;
        self.session.send_all(&mut self.driver, step?);
        self.rejoin_if_restarted();
        let others = self.driver.engine().members().len() > 1;
        self.heal_split_room(others);
        self.membership.tick(self.ws, others);
        self.membership
            .follow(self.ws, &mut self.driver, &mut self.session)?;
        Ok(Flow::Continue)
    }

    /// A disk mounted in the workspace, or unmounted, while the daemon runs (seen at a
    /// tick, or with a watcher batch): the watcher watches its folder again, then the
    /// workspace is scanned (what changed before the watch), so that a disk's edits are
    /// seen as they are made, and an unmounted one is listed as not mounted.
    fn follow_mounts(&mut self, watcher: &mut Watcher) -> Result<(), RunError> {
        let mounted = self.driver.take_mounted();
        if mounted.is_empty() {
            return Ok(());
        }
        for folder in &mounted {
            tracing::info!(folder, "a disk was mounted or unmounted in the workspace");
            watcher.watch_again(folder);
        }
        let out = self.driver.rescan(now_ms())?;
        self.session.send_all(&mut self.driver, out);
        Ok(())
    }

    /// Alone in the room while the workspace has other members: after a while, connect
    /// again, in case a balancer split the room over two relays (`alone.rs`).
    fn heal_split_room(&mut self, others: bool) {
        let j = crate::alone::jitter();
        let alone = self.session.alone();
        if !alone {
            self.alone.met(j);
        }
        if self
            .alone
            .check(std::time::Instant::now(), alone, others, j)
        {
            tracing::info!(
                "alone in the room while the workspace has other members: connecting again"
            );
            self.session.reconnect();
        }
    }

    /// The engine failed and was made again from the store (`Driver::engine_failed`):
    /// it knows no peer, so the room is joined again, and the peers and their admissions
    /// reach it as on any connection.
    fn rejoin_if_restarted(&mut self) {
        if self.driver.take_restarted() {
            tracing::info!("the sync engine was started again: joining the room again");
            self.session.reconnect();
        }
    }

    fn busy(&mut self) {
        (self.last_busy, self.reclaim_due) = (std::time::Instant::now(), true);
    }

    /// After any event but a tick: send what the engine wants sent, and tick soon, since
    /// whatever just happened may have left work for the ticks (documents to check, a
    /// pull to start, space to give back).
    fn after_event(&mut self, sends: Result<Vec<Outgoing>, DriverError>) -> Result<Flow, RunError> {
        self.next_tick = self.next_tick.min(tokio::time::Instant::now() + TICK);
        self.session.send_all(&mut self.driver, sends?);
        self.rejoin_if_restarted();
        // What was just sent went to the room we are in; now the engine may say that the
        // workspace moved on (a rotation).
        self.membership
            .follow(self.ws, &mut self.driver, &mut self.session)?;
        Ok(Flow::Continue)
    }

    fn answer(&mut self, req: Request) -> (Response, Result<Vec<Outgoing>, DriverError>) {
        let now = now_ms();
        let command = match req {
            Request::Status | Request::Stop => {
                let status = self.driver.status();
                let context = StatusContext {
                    workspace: self.ws,
                    running: true,
                    not_answering: false,
                    pid: Some(std::process::id()),
                    connected: self.session.connected(),
                    relay_reason: self
                        .session
                        .relay_problem()
                        .map(str::to_string)
                        .or_else(|| self.membership.relay_problem()),
                    // A daemon in the background writes to daemon.log (start_background);
                    // one in the foreground to its own stderr.
                    log: std::env::var_os(DETACHED_ENV).map(|_| self.ws.log_path()),
                    deletions_paused: self.driver.deletions_paused(&status),
                    standing: Some(self.membership.standing()),
                    opened: self.session.opened(),
                };
                let response = Response {
                    ok: true,
                    status: Some(control::status_report(&context, &status)),
                    ..Response::default()
                };
                return (response, Ok(Vec::new()));
            }
            Request::Restore { path } => self.driver.restore(now, &path),
            Request::Resolve { path } => self.driver.resolve(now, &path),
            Request::ApplyDeletions => self.driver.apply_deletions(now).map(|(_, out)| Ok(out)),
            Request::ForgetMount { path } => {
                return answered(self.driver.forget_mount(now, &path));
            }
            Request::Invite { expires_ms, uses } => {
                let made = crate::devices::invite(
                    self.ws,
                    self.membership.admitted(),
                    self.driver.store_mut(),
                    now,
                    expires_ms,
                    uses,
                    self.membership.standing().generation,
                );
                return (
                    match made {
                        Ok(data) => Response::with_data(data),
                        Err(e) => Response::error(e),
                    },
                    Ok(Vec::new()),
                );
            }
            Request::SyncNow => self.driver.input(now, cue_core::Input::SyncNow).map(Ok),
            Request::Invites => {
                let listed = crate::invites::list(
                    self.driver.store(),
                    now,
                    self.membership.standing().generation,
                );
                return (data_or_error(listed), Ok(Vec::new()));
            }
            Request::Revoke { id } => {
                let revoked = crate::invites::revoke(self.driver.store_mut(), &id);
                return (data_or_error(revoked), Ok(Vec::new()));
            }
            Request::Devices => {
                let devices =
                    crate::devices::report(self.driver.engine(), self.session.connected());
                return (data_or_error::<_, String>(Ok(devices)), Ok(Vec::new()));
            }
            Request::Rotate { remove } => {
                let removed: Vec<cue_crypto::DeviceId> = remove
                    .iter()
                    .filter_map(|h| {
                        let mut b = [0u8; 32];
                        hex::decode_to_slice(h, &mut b).ok()?;
                        Some(cue_crypto::DeviceId(b))
                    })
                    .collect();
                let rotated =
                    self.membership
                        .rotate(self.ws, &mut self.driver, &mut self.session, &removed);
                return (data_or_error(rotated.map(|g| g.number)), Ok(Vec::new()));
            }
        };
        answered(command)
    }

    /// The clean stop's work on the store: take in what the watcher still has (a save
    /// just before the stop), commit (the replay guard with the rest), and give space
    /// back (free pages to the filesystem and an empty WAL: the store at rest is small).
    async fn finish(
        &mut self,
        outcome: Result<(), RunError>,
        watch: &mut mpsc::Receiver<Vec<WatchEvent>>,
    ) -> Result<(), RunError> {
        let debounce = self.ws.config.sync.debounce_ms;
        tokio::time::sleep(Duration::from_millis(debounce * 2 + 20)).await;
        let mut result = outcome;
        'batches: while let Ok(batch) = watch.try_recv() {
            if self.stop_time_over() {
                self.left_for_next_start += batch.len();
                continue;
            }
            let mut work = self.driver.watch_begin(batch);
            loop {
                match self.take_in_step(&mut work) {
                    Ok(sends) => self.session.send_all(&mut self.driver, sends),
                    Err(e) => {
                        result = result.and(Err(e.into()));
                        break 'batches;
                    }
                }
                if work.done() {
                    break;
                }
                if self.stop_time_over() {
                    self.left_for_next_start += work.left();
                    break;
                }
            }
        }
        if self.left_for_next_start > 0 {
            tracing::info!(
                left = self.left_for_next_start,
                "changes the watcher saw are left on disk for the next start's scan"
            );
        }
        match self.driver.late_writes(now_ms(), true) {
            Ok(sends) => self.session.send_all(&mut self.driver, sends),
            Err(e) => result = result.and(Err(e.into())),
        }
        self.session.persist_replay(&mut self.driver);
        if let Err(e) = self.driver.flush() {
            result = result.and(Err(e.into()));
        }
        reclaim_space(&mut self.driver);
        result
    }
}

impl Services {
    /// After the session asked the relay clients to close: waits for them a little, stops
    /// watching and listening, removes the socket.
    async fn end(self, relay_tasks: Vec<JoinHandle<()>>) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            for task in relay_tasks {
                let _ = task.await;
            }
        })
        .await;
        drop(self.watcher);
        self.control_task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A request's answer: its data, or its error in words.
fn data_or_error<T: serde::Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Response {
    match result.map(|v| serde_json::to_value(v)) {
        Ok(Ok(v)) => Response::with_data(v),
        Ok(Err(e)) => Response::error(e.to_string()),
        Err(e) => Response::error(e.to_string()),
    }
}

/// Answers `cue sync stop` with how the stop went, and how many changes the watcher
/// saw it left for the next start (`left_for_next_start`).
async fn answer_stop(pending: Pending, result: &Result<(), RunError>, left: usize) {
    let _ = pending.reply.send(match result {
        Ok(()) => Response::with_data(serde_json::json!({ "left_for_next_start": left })),
        Err(e) => Response::error(e.to_string()),
    });
    // The answer must reach `cue sync stop` before the runtime (and its connection
    // task) goes away.
    let _ = tokio::time::timeout(Duration::from_secs(5), pending.written).await;
}

/// Whether `signal` came (without waiting for it). `recv` is cancel-safe, and the
/// runtime's other threads drive signal delivery while this one takes a batch in (a
/// multi-thread runtime: on a current-thread one the signal would be seen only once the
/// batch is in).
fn signalled(signal: &mut Signal) -> bool {
    use futures_util::FutureExt as _;
    matches!(signal.recv().now_or_never(), Some(Some(())))
}

/// `first` and the events already waiting behind it, [`RELAY_BATCH`] at most.
fn with_waiting(
    first: RelayEvent,
    rx: &mut mpsc::UnboundedReceiver<RelayEvent>,
) -> Vec<RelayEvent> {
    let mut events = vec![first];
    while events.len() < RELAY_BATCH
        && let Ok(event) = rx.try_recv()
    {
        events.push(event);
    }
    events
}

/// Saves older than this are summarised in the activity log, one entry a run of saves
/// of a file by a device with no pause longer than [`SUMMARY_WINDOW_MS`].
const SUMMARISE_AFTER_MS: i64 = 86_400_000;
const SUMMARY_WINDOW_MS: i64 = 3_600_000;

/// Summarises old saves in the activity log and drops entries older than
/// `sync.activity_retention_days`.
fn prune_activity(driver: &mut Driver, config: &crate::config::Config) {
    match driver
        .store_mut()
        .summarise_activity_before(now_ms() - SUMMARISE_AFTER_MS, SUMMARY_WINDOW_MS)
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(entries = n, "summarised old saves in the activity log"),
        Err(error) => tracing::warn!(%error, "cannot summarise the activity log"),
    }
    let Some(keep) = config.activity_retention_ms() else {
        return;
    };
    match driver.store_mut().prune_activity_before(now_ms() - keep) {
        Ok(0) => {}
        Ok(n) => tracing::info!(entries = n, "dropped activity older than the retention"),
        Err(error) => tracing::warn!(%error, "cannot prune the activity log"),
    }
}

fn reclaim_space(driver: &mut Driver) {
    if let Err(error) = driver.store_mut().reclaim_space() {
        tracing::warn!(%error, "cannot compact the store's files");
    }
}

/// The pid of the running daemon and its socket path, for `status` and `stop`.
pub fn socket_for(root: &Path) -> Result<PathBuf, RunError> {
    control_socket_path(root).map_err(|e| RunError::Socket(e.to_string()))
}
