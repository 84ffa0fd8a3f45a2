//! The daemon's main loop, and starting it in the background.
//!
//! One task owns the [`Driver`] (engine, store, folder) and everything secret; around it
//! run the watcher (a std thread bridging its channel), the relay client task (frames
//! only), the control socket and a tick: every 250 ms while the engine has background
//! work (checks, compaction, a pull) or events arrived lately, every 2 s otherwise, so
//! that an idle daemon costs next to nothing. Envelopes are sealed and opened here:
//! engine messages go out sealed as broadcasts or to one device (the relay's peer id for
//! a device is learned from that device's envelopes), admissions introduce devices to
//! each other before any engine message, and everything that arrives is opened with the
//! member list and the replay guard, which is persisted with the store's next commit.
//!
//! Order of start-up: lock, store, engine, watcher, scan (so that a change made during
//! the scan is seen by the watcher), control socket, relay. `cue sync start` waits for
//! the control socket, so when it returns the folder has been scanned and is watched.
//! A clean stop handles the watcher's last events, commits, closes the relay connection
//! and removes the socket before answering.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cue_core::Input;
use cue_crypto::{
    Admission, DeviceId as CryptoDeviceId, MessageType, ReplayGuard, Sealer, SeqAllocator, SeqNext,
    Stream,
};
use cue_proto::PeerId;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::control::{self, Pending, Request, Response, StatusContext};
use crate::driver::{Driver, DriverError, KEY_REPLAY, NS_NET, Outgoing, now_ms};
use crate::lock::{DaemonLock, LockError, control_socket_path, prepare_socket_dir};
use crate::relay_client::{self, RelayCommand, RelayEvent, RelayParams};
use crate::watch::{WatchConfig, WatchEvent, Watcher};
use crate::workspace::{Workspace, WorkspaceError};

/// Set in the environment of a daemon started by `cue sync start`: it makes itself a
/// session leader, away from the caller's terminal.
pub const DETACHED_ENV: &str = "CUE_DAEMON_DETACHED";

const TICK: Duration = Duration::from_millis(250);
/// The tick when nothing is under way: the hello every `anti_entropy_ms` (30 s) and the
/// expiry of tombstones (days) are all that is left to do.
const IDLE_TICK: Duration = Duration::from_secs(2);
/// How long the daemon must have been quiet before it truncates the store's WAL.
const RECLAIM_AFTER_QUIET: Duration = Duration::from_secs(5);
const SEQ_BROADCAST: &str = "broadcast";
const SEQ_DIRECT: &str = "direct";

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
}

/// Runs the daemon in this process until it is stopped (`cue sync start --foreground`,
/// `cue watch --sync`). `relay` overrides the relay URL and is saved into the config.
pub fn run_foreground(root: &Path, relay: Option<&str>) -> Result<(), RunError> {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let result = runtime.block_on(daemon(ws));
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
    deadline: Duration,
) -> Result<u32, RunError> {
    let ws = Workspace::open(root)?;
    if let Ok(Some(pid)) = DaemonLock::probe(&ws.dir()) {
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
    cmd.env(DETACHED_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .current_dir(&ws.root);
    let mut child = cmd.spawn().map_err(|e| RunError::Spawn(e.to_string()))?;
    let socket = control_socket_path(&ws.root).map_err(|e| RunError::Socket(e.to_string()))?;
    let until = std::time::Instant::now() + deadline;
    let mut wait = Duration::from_millis(5);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // The daemon's last log line says why (already running, bad config...).
            let text = std::fs::read(&log_path).unwrap_or_default();
            let tail = String::from_utf8_lossy(&text[(log_len as usize).min(text.len())..])
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            if tail.contains("already running") {
                return Err(RunError::AlreadyRunning { pid: None });
            }
            return Err(RunError::Spawn(format!(
                "the daemon exited ({status}): {tail} (see {})",
                log_path.display()
            )));
        }
        if control::request(&socket, &Request::Status, Duration::from_secs(2)).is_ok_and(|r| r.ok) {
            return Ok(child.id());
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

/// Everything about the network the main loop keeps.
struct Net {
    connected: bool,
    relay_tx: mpsc::UnboundedSender<RelayCommand>,
    peer_device: HashMap<PeerId, CryptoDeviceId>,
    device_peer: HashMap<cue_core::DeviceId, PeerId>,
    /// Devices whose admission we verified in this run (members before the engine has
    /// taken the admission in).
    admitted: HashSet<CryptoDeviceId>,
    replay: ReplayGuard,
    seq_broadcast: SeqAllocator,
    seq_direct: SeqAllocator,
    rejected: BTreeMap<&'static str, u64>,
}

async fn daemon(ws: Workspace) -> Result<(), RunError> {
    let config = ws.config.clone();
    let mut driver = Driver::open(&ws, &config)?;
    let rules = crate::ignore_rules::IgnoreRules::load(&ws.root)
        .map_err(|e| RunError::Driver(DriverError::Ignore(e)))?;
    let (watcher, watch_rx) = Watcher::start(
        &ws.root,
        rules,
        WatchConfig {
            debounce: Duration::from_millis(config.sync.debounce_ms),
        },
    )?;
    // Not connected yet: the scan's changes are stored, and sent on connecting.
    let _ = driver.startup_scan(now_ms())?;

    let replay = driver
        .store()
        .get_meta(NS_NET, KEY_REPLAY)
        .map_err(DriverError::from)?
        .and_then(|b| postcard::from_bytes::<ReplayGuard>(&b).ok())
        .unwrap_or_default();
    let seq_b = driver
        .store()
        .seq_reservation(SEQ_BROADCAST)
        .map_err(DriverError::from)?
        .unwrap_or(0);
    let seq_d = driver
        .store()
        .seq_reservation(SEQ_DIRECT)
        .map_err(DriverError::from)?
        .unwrap_or(0);

    // The watcher's std channel, bridged: each batch is what was waiting together.
    let (watch_tx, mut watch_events) = mpsc::channel::<Vec<WatchEvent>>(64);
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

    // The control socket, last: answering it means "ready".
    let socket = control_socket_path(&ws.root).map_err(|e| RunError::Socket(e.to_string()))?;
    prepare_socket_dir(&socket).map_err(|e| RunError::Socket(e.to_string()))?;
    // We hold the lock, so a socket file there is a dead daemon's.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| RunError::Socket(format!("{}: {e}", socket.display())))?;
    let (control_tx, mut control_rx) = mpsc::channel::<Pending>(16);
    let control_task = tokio::spawn(control::serve(listener, control_tx));

    let (relay_tx, relay_cmds) = mpsc::unbounded_channel();
    let (relay_events_tx, mut relay_events) = mpsc::unbounded_channel();
    let relay_task = tokio::spawn(relay_client::run(
        RelayParams {
            url: config.sync.relay.url.clone(),
            auth_token: config.sync.relay.auth_token.clone(),
            keys: ws.keys.clone(),
        },
        relay_events_tx,
        relay_cmds,
    ));
    let mut net = Net {
        connected: false,
        relay_tx,
        peer_device: HashMap::new(),
        device_peer: HashMap::new(),
        admitted: HashSet::new(),
        replay,
        seq_broadcast: SeqAllocator::resume(seq_b),
        seq_direct: SeqAllocator::resume(seq_d),
        rejected: BTreeMap::new(),
    };
    tracing::info!(
        root = %ws.root.display(),
        relay = %config.sync.relay.url,
        device = %driver.device_name(),
        epoch = driver.epoch(),
        "daemon ready"
    );

    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Runtime)?;
    prune_activity(&mut driver, &config);
    // Loading the store and scanning the folder peak well above what the daemon keeps.
    crate::memory::release_free_memory();
    let mut next_tick = tokio::time::Instant::now() + TICK;
    let mut stop_reply = None;
    // The store's WAL and free pages are given back once the daemon has been quiet for a
    // while after writing (a WAL grows to megabytes between checkpoints, which alone
    // would be several times a small workspace's size).
    let mut last_busy = std::time::Instant::now();
    let mut reclaim_due = false;
    let outcome: Result<(), RunError> = loop {
        let mut ticked = false;
        let step: Result<Vec<Outgoing>, DriverError> = tokio::select! {
            Some(batch) = watch_events.recv() => {
                (last_busy, reclaim_due) = (std::time::Instant::now(), true);
                driver.watch_events(now_ms(), batch)
            }
            Some(event) = relay_events.recv() => {
                (last_busy, reclaim_due) = (std::time::Instant::now(), true);
                on_relay_event(&ws, &mut driver, &mut net, event)
            }
            Some(pending) = control_rx.recv() => {
                match pending.request {
                    Request::Stop => {
                        stop_reply = Some(pending);
                        break Ok(());
                    }
                    req => {
                        let (response, sends) = on_request(&ws, &mut driver, &net, req);
                        let _ = pending.reply.send(response);
                        sends
                    }
                }
            }
            _ = tokio::time::sleep_until(next_tick) => {
                if reclaim_due && last_busy.elapsed() >= RECLAIM_AFTER_QUIET {
                    reclaim_due = false;
                    prune_activity(&mut driver, &config);
                    if let Err(error) = driver.store_mut().reclaim_space() {
                        tracing::warn!(%error, "cannot compact the store's files");
                    }
                    crate::memory::release_free_memory();
                }
                let writes = driver.store_writes();
                let step = driver.tick(now_ms());
                // Compaction and checks run in ticks: space is given back after them.
                if driver.store_writes() != writes {
                    (last_busy, reclaim_due) = (std::time::Instant::now(), true);
                }
                let every = if reclaim_due || driver.wants_frequent_ticks() {
                    TICK
                } else {
                    IDLE_TICK
                };
                next_tick = tokio::time::Instant::now() + every;
                ticked = true;
                step
            }
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
        };
        // Whatever just happened may have left work for the ticks (documents to check,
        // a pull to start, space to give back): tick soon.
        if !ticked {
            next_tick = next_tick.min(tokio::time::Instant::now() + TICK);
        }
        match step {
            Ok(sends) => send_all(&ws, &mut driver, &mut net, sends),
            Err(e) => break Err(e.into()),
        }
    };

    // Clean stop: take in what the watcher still has (a save just before the stop),
    // commit, close the connection, remove the socket.
    tokio::time::sleep(Duration::from_millis(config.sync.debounce_ms * 2 + 20)).await;
    let mut result = outcome;
    while let Ok(batch) = watch_events.try_recv() {
        match driver.watch_events(now_ms(), batch) {
            Ok(sends) => send_all(&ws, &mut driver, &mut net, sends),
            Err(e) => {
                result = result.and(Err(e.into()));
                break;
            }
        }
    }
    if let Ok(bytes) = postcard::to_allocvec(&net.replay) {
        driver.set_replay_state(bytes);
    }
    if let Err(e) = driver.flush() {
        result = result.and(Err(e.into()));
    }
    // Free pages back to the filesystem and an empty WAL: the store at rest is small.
    if let Err(error) = driver.store_mut().reclaim_space() {
        tracing::warn!(%error, "cannot compact the store's files");
    }
    let _ = net.relay_tx.send(RelayCommand::Close);
    let _ = tokio::time::timeout(Duration::from_secs(2), relay_task).await;
    drop(watcher);
    control_task.abort();
    let _ = std::fs::remove_file(&socket);
    tracing::info!(rejected = ?net.rejected, "daemon stopped");
    if let Some(pending) = stop_reply {
        let _ = pending.reply.send(match &result {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(e.to_string()),
        });
        // The answer must reach `cue sync stop` before the runtime (and its connection
        // task) goes away.
        let _ = tokio::time::timeout(Duration::from_secs(5), pending.written).await;
    }
    result
}

/// Drops activity entries older than `sync.activity_retention_days`.
fn prune_activity(driver: &mut Driver, config: &crate::config::Config) {
    let Some(keep) = config.activity_retention_ms() else {
        return;
    };
    match driver.store_mut().prune_activity_before(now_ms() - keep) {
        Ok(0) => {}
        Ok(n) => tracing::info!(entries = n, "dropped activity older than the retention"),
        Err(error) => tracing::warn!(%error, "cannot prune the activity log"),
    }
}

fn on_request(
    ws: &Workspace,
    driver: &mut Driver,
    net: &Net,
    req: Request,
) -> (Response, Result<Vec<Outgoing>, DriverError>) {
    let now = now_ms();
    let command = match req {
        Request::Status | Request::Stop => {
            let status = driver.status();
            let report = control::status_report(
                &StatusContext {
                    workspace: ws,
                    running: true,
                    pid: Some(std::process::id()),
                    connected: net.connected,
                    deletions_paused: driver.guard().map(str::to_string),
                },
                &status,
            );
            let response = Response {
                ok: true,
                error: None,
                status: Some(report),
            };
            return (response, Ok(Vec::new()));
        }
        Request::Restore { path } => driver.restore(now, &path),
        Request::Resolve { path } => driver.resolve(now, &path),
    };
    match command {
        Ok(Ok(sends)) => (Response::ok(), Ok(sends)),
        Ok(Err(e)) => (Response::error(e.to_string()), Ok(Vec::new())),
        Err(e) => (Response::error(e.to_string()), Err(e)),
    }
}

fn core_id(d: &CryptoDeviceId) -> cue_core::DeviceId {
    cue_core::DeviceId(d.0)
}

fn on_relay_event(
    ws: &Workspace,
    driver: &mut Driver,
    net: &mut Net,
    event: RelayEvent,
) -> Result<Vec<Outgoing>, DriverError> {
    let now = now_ms();
    match event {
        RelayEvent::Connected { you, peers, limits } => {
            tracing::info!(?you, peers = peers.len(), "joined the relay room");
            net.connected = true;
            net.peer_device.clear();
            net.device_peer.clear();
            let limit = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
            if let Some(max) = cue_crypto::max_plaintext_for(limit) {
                driver.engine_mut().set_max_message_bytes(max);
            }
            // Introduce ourselves before any engine message, so that peers (a joiner
            // especially) know us as a member when our Hello arrives.
            send_admission(ws, driver, net, None);
            driver.input(now, Input::Connected)
        }
        RelayEvent::PeerJoined(peer) => {
            send_admission(ws, driver, net, Some(peer));
            Ok(Vec::new())
        }
        RelayEvent::PeerLeft(peer) => {
            let Some(device) = net.peer_device.remove(&peer) else {
                return Ok(Vec::new());
            };
            net.device_peer.remove(&core_id(&device));
            net.replay.on_peer_left(&device);
            driver.input(
                now,
                Input::PeerLeft {
                    device: core_id(&device),
                },
            )
        }
        RelayEvent::Disconnected { reason } => {
            tracing::info!(%reason, "offline; reconnecting");
            net.connected = false;
            net.peer_device.clear();
            net.device_peer.clear();
            net.replay.on_disconnect();
            driver.input(now, Input::Disconnected)
        }
        RelayEvent::Message { from, payload, .. } => {
            let me = ws.device.device_id();
            let engine = driver.engine();
            let admitted = &net.admitted;
            let opened = cue_crypto::open(&ws.keys, &me, &mut net.replay, &payload, |d| {
                engine.is_member(&core_id(d)) || admitted.contains(d)
            });
            let opened = match opened {
                Ok(o) => o,
                Err(e) => {
                    *net.rejected.entry(e.kind()).or_default() += 1;
                    tracing::debug!(error = %e, "dropped a message");
                    return Ok(Vec::new());
                }
            };
            if let Some(gap) = &opened.gap {
                tracing::debug!(?gap, "broadcasts from a peer may have been withheld");
            }
            net.peer_device.insert(from, opened.sender);
            net.device_peer.insert(core_id(&opened.sender), from);
            if let Ok(bytes) = postcard::to_allocvec(&net.replay) {
                driver.set_replay_state(bytes);
            }
            match opened.ty {
                MessageType::Admission => {
                    let admission = match Admission::decode(&opened.plaintext) {
                        Ok(a) if a.device == opened.sender && a.verify(&ws.keys).is_ok() => a,
                        _ => {
                            *net.rejected.entry("bad_admission").or_default() += 1;
                            return Ok(Vec::new());
                        }
                    };
                    net.admitted.insert(admission.device);
                    let device = core_id(&admission.device);
                    if driver.engine().members().get(&device) == Some(&admission.name) {
                        return Ok(Vec::new());
                    }
                    driver.input(
                        now,
                        Input::Admit {
                            device,
                            name: admission.name,
                        },
                    )
                }
                MessageType::Engine => driver.input(
                    now,
                    Input::Message {
                        from: core_id(&opened.sender),
                        bytes: opened.plaintext,
                    },
                ),
            }
        }
    }
}

/// Our admission: to the room (`None`) or to one peer that just joined.
fn send_admission(ws: &Workspace, driver: &mut Driver, net: &mut Net, to: Option<PeerId>) {
    let admission = match Admission::create(&ws.keys, &ws.device, &ws.device_name()) {
        Ok(a) => a,
        Err(error) => {
            tracing::error!(%error, "cannot make our admission (device name)");
            return;
        }
    };
    // Sealed on the broadcast stream even when sent to one peer: we do not know its
    // device yet, which a direct stream would name.
    let Some(envelope) = seal(
        ws,
        driver,
        net,
        MessageType::Admission,
        Stream::Broadcast,
        &admission.encode(),
    ) else {
        return;
    };
    let cmd = match to {
        None => RelayCommand::Broadcast(envelope),
        Some(p) => RelayCommand::Direct(p, envelope),
    };
    let _ = net.relay_tx.send(cmd);
}

fn seal(
    ws: &Workspace,
    driver: &mut Driver,
    net: &mut Net,
    ty: MessageType,
    stream: Stream,
    plaintext: &[u8],
) -> Option<Vec<u8>> {
    let (alloc, name) = match stream {
        Stream::Broadcast => (&mut net.seq_broadcast, SEQ_BROADCAST),
        Stream::Direct(_) => (&mut net.seq_direct, SEQ_DIRECT),
    };
    let seq = loop {
        match alloc.allocate() {
            SeqNext::Ready(n) => break n,
            SeqNext::PersistFirst(mark) => match driver.store_mut().reserve_seq(name, mark) {
                Ok(stored) => alloc.persisted(stored),
                Err(error) => {
                    tracing::error!(%error, "cannot reserve sequence numbers; message not sent");
                    return None;
                }
            },
            SeqNext::Exhausted => {
                tracing::error!("sequence numbers exhausted; this device needs a new key");
                return None;
            }
        }
    };
    match Sealer::new(&ws.keys, &ws.device).seal(ty, stream, seq, plaintext) {
        Ok(env) => Some(env),
        Err(error) => {
            tracing::error!(%error, "cannot seal a message");
            None
        }
    }
}

fn send_all(ws: &Workspace, driver: &mut Driver, net: &mut Net, sends: Vec<Outgoing>) {
    if !net.connected {
        return; // the engine knows: it catches up on connecting
    }
    for (to, bytes) in sends {
        let stream = match to {
            None => Stream::Broadcast,
            Some(d) => Stream::Direct(CryptoDeviceId(d.0)),
        };
        let Some(envelope) = seal(ws, driver, net, MessageType::Engine, stream, &bytes) else {
            continue;
        };
        // A direct message to a device whose relay peer we have not learned yet goes to
        // the room; the others drop it as not theirs.
        let cmd = match to.and_then(|d| net.device_peer.get(&d)) {
            Some(peer) => RelayCommand::Direct(*peer, envelope),
            None => RelayCommand::Broadcast(envelope),
        };
        let _ = net.relay_tx.send(cmd);
    }
}

/// The pid of the running daemon and its socket path, for `status` and `stop`.
pub fn socket_for(root: &Path) -> Result<PathBuf, RunError> {
    control_socket_path(root).map_err(|e| RunError::Socket(e.to_string()))
}
