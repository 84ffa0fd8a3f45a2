//! `cue-relay-load`: the relay's benchmark. It starts the real `cue-relay` (and, to compare,
//! a bare broadcast relay built on the same tokio-tungstenite with no auth and no limits),
//! drives R rooms × P peers over loopback, and prints a Markdown table: deliveries a
//! second at saturation, hop latency p50/p99 at half load, the default limits holding, and
//! the resident memory of 10,000 idle connections. `hostile` measures the relay's memory
//! under slow readers and unauthenticated senders. See docs/benchmarks.md.

mod hostile;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cue_proto::{ClientFrame, RelayFrame, decode, encode};
use cue_testkit::async_ws::{self, Origin, Ws};
use cue_testkit::{Relay, room_key, room_of};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio_tungstenite::tungstenite::{Bytes, Message};

#[derive(Debug, Parser)]
#[command(about = "Load generator and bare comparison relay for cue-relay")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run every scenario against a fresh cue-relay and bare relay; print a Markdown table.
    Bench {
        /// Rooms.
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// Peers per room (each sends and receives).
        #[arg(long, default_value_t = 10)]
        peers: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 300)]
        size: usize,
        /// Seconds measured per scenario (after one second of warm-up).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Messages in flight per sender in the saturation run.
        #[arg(long, default_value_t = 8)]
        window: u64,
        /// Idle connections for the memory figure (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// The cue-relay binary (default: next to this one).
        #[arg(long)]
        relay_bin: Option<PathBuf>,
        /// Run both relays on these CPUs only (a `taskset -c` list, e.g. `0`), so that
        /// they do not share cores with this generator. The half-load rate is then half of
        /// the saturation measured in this placement.
        #[arg(long)]
        relay_cpus: Option<String>,
        /// Pin this generator to these CPUs (e.g. `1`). On a single CPU it runs a
        /// current-thread runtime: one core, no work stealing between workers.
        #[arg(long)]
        load_cpus: Option<String>,
        /// How paced senders wait for their next message: `timer` sleeps on tokio's timer
        /// (1 ms resolution, so every message due within a millisecond leaves in one
        /// burst); `spin` yields until the exact time, spreading sends over the
        /// millisecond (it keeps the generator's core busy: use it with --load-cpus).
        #[arg(long, value_enum, default_value_t = Pacing::Timer)]
        pacing: Pacing,
    },
    /// Measure cue-relay's resident memory under slow readers and under unauthenticated
    /// connections sending a large message (one fresh relay each); print a Markdown table.
    Hostile {
        /// Peers from one address that join rooms and never read (0 skips this attack).
        #[arg(long, default_value_t = 256)]
        slow_readers: usize,
        /// MiB sent to each slow reader (below the 8 MiB outbound queue, so the queue
        /// never overflows and only the write timeout can drop the reader).
        #[arg(long, default_value_t = 6)]
        mib_per_reader: usize,
        /// Unauthenticated connections from one address (0 skips this attack). Above the
        /// relay's per-address limit (256) give `--relay-arg=--max-connections-per-ip=N`.
        #[arg(long, default_value_t = 1000)]
        strangers: usize,
        /// Bytes of the message each stranger sends, all but the last (0: none).
        #[arg(long, default_value_t = 1 << 20)]
        stranger_message_bytes: usize,
        /// Seconds to watch the relay's memory after each attack has sent everything.
        #[arg(long, default_value_t = 15.0)]
        watch: f64,
        /// A flag for every cue-relay started (repeat for several).
        #[arg(long = "relay-arg", allow_hyphen_values = true)]
        relay_args: Vec<String>,
        /// The cue-relay binary (default: next to this one).
        #[arg(long)]
        relay_bin: Option<PathBuf>,
    },
    /// Serve the bare comparison relay: every binary message is sent to every other
    /// connection on the same path. No auth, no limits, unbounded queues.
    BareRelay {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Pacing {
    Timer,
    Spin,
}

/// Where the relays and this generator run.
#[derive(Debug, Clone, Default)]
struct Placement {
    relay_cpus: Option<String>,
    load_cpus: Option<String>,
}

/// Parses a `taskset -c` style list (`0`, `0,2`, `1-3`).
fn parse_cpus(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match part.split_once('-') {
            Some((first, last)) => cpus.extend(first.parse::<usize>()?..=last.parse::<usize>()?),
            None => cpus.push(part.parse()?),
        }
    }
    if cpus.is_empty() {
        bail!("empty CPU list {list:?}");
    }
    Ok(cpus)
}

/// Pins the calling thread, and so every thread it starts later, to `cpus`.
fn pin_self(cpus: &[usize]) -> anyhow::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    rustix::thread::sched_setaffinity(None, &set).context("sched_setaffinity")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut current_thread = false;
    if let Cmd::Bench {
        load_cpus: Some(list),
        ..
    } = &cli.command
    {
        let cpus = parse_cpus(list)?;
        pin_self(&cpus)?;
        current_thread = cpus.len() == 1;
    }
    let runtime = if current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Runtime::new()?
    };
    match cli.command {
        Cmd::BareRelay { listen } => runtime.block_on(bare_relay(listen)),
        Cmd::Hostile {
            slow_readers,
            mib_per_reader,
            strangers,
            stranger_message_bytes,
            watch,
            relay_args,
            relay_bin,
        } => {
            let relay_bin = match relay_bin {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("cue-relay"),
            };
            let hostile = hostile::Hostile {
                slow_readers,
                bytes_per_reader: mib_per_reader << 20,
                strangers,
                stranger_message_bytes,
                watch: Duration::from_secs_f64(watch),
                relay_args,
            };
            runtime.block_on(hostile::run(&relay_bin, hostile))
        }
        Cmd::Bench {
            rooms,
            peers,
            size,
            seconds,
            window,
            idle,
            relay_bin,
            relay_cpus,
            load_cpus,
            pacing,
        } => {
            let relay_bin = match relay_bin {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("cue-relay"),
            };
            let shape = Shape {
                rooms,
                peers,
                size: size.max(16),
                seconds,
                pacing,
            };
            if let Some(list) = &relay_cpus {
                parse_cpus(list)?;
            }
            let placement = Placement {
                relay_cpus,
                load_cpus,
            };
            runtime.block_on(bench(shape, window, idle, relay_bin, placement))
        }
    }
}

// ---------------------------------------------------------------------------------------
// The bare relay

/// Rooms by path; each room's members by connection number. Plain mutexes held only to
/// look up and fan out, as in cue-relay, so the comparison isolates auth and limits.
type BareRoom = Arc<std::sync::Mutex<HashMap<u64, mpsc::UnboundedSender<Bytes>>>>;
type BareRooms = Arc<std::sync::Mutex<HashMap<String, BareRoom>>>;

async fn bare_relay(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let rooms: BareRooms = Arc::default();
    let next_id = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let rooms = rooms.clone();
        let id = next_id.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let _ = bare_connection(rooms, stream, id).await;
        });
    }
}

async fn bare_connection(rooms: BareRooms, stream: TcpStream, id: u64) -> anyhow::Result<()> {
    let mut path = String::new();
    // tungstenite dictates the callback's error type (an HTTP response).
    #[allow(clippy::result_large_err)]
    let callback = |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                    response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let room = {
        let mut rooms = rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        rooms.entry(path.clone()).or_default().clone()
    };
    room.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(id, tx);
    loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Binary(bytes))) => {
                    let members = room.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    for (other, tx) in members.iter() {
                        if *other != id {
                            let _ = tx.send(bytes.clone());
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            Some(frame) = rx.recv() => {
                ws.feed(Message::Binary(frame)).await?;
                for _ in 1..64 {
                    let Ok(frame) = rx.try_recv() else { break };
                    ws.feed(Message::Binary(frame)).await?;
                }
                ws.flush().await?;
            }
        }
    }
    let mut rooms = rooms
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut members = room.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    members.remove(&id);
    if members.is_empty() {
        rooms.remove(&path);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Clients

#[derive(Debug, Clone, Copy)]
struct Shape {
    rooms: usize,
    peers: usize,
    size: usize,
    seconds: f64,
    pacing: Pacing,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Cue,
    Bare,
}

/// Connects (from `source`) and, for the cue relay, joins the room.
async fn connect(kind: Kind, relay: SocketAddr, room: usize, source: IpAddr) -> anyhow::Result<Ws> {
    let key = room_key(room as u64 + 1);
    let from = Origin {
        source: Some(source),
        forwarded_for: None,
    };
    let mut ws = async_ws::connect(relay, &room_of(&key), from).await?;
    if kind == Kind::Cue {
        async_ws::join(&mut ws, &key, None).await?;
    }
    Ok(ws)
}

/// Where the peers' traffic is counted.
#[derive(Debug, Default)]
struct Counters {
    measuring: AtomicBool,
    deliveries: AtomicU64,
    sent: AtomicU64,
    refused: AtomicU64,
}

/// How senders pace themselves.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// At most this many messages not yet received by the sender's designated receiver.
    Window(u64),
    /// This many messages a second per sender.
    Rate(f64),
}

/// Per sender: how far its designated receiver has read.
#[derive(Debug, Default)]
struct Acks {
    received: AtomicU64,
    notify: Notify,
}

struct RunResult {
    deliveries_per_second: f64,
    sent_per_second: f64,
    refused_per_second: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    relay_cpu: f64,
    load_cpu: f64,
}

async fn run_load(
    kind: Kind,
    relay: SocketAddr,
    relay_pid: u32,
    shape: Shape,
    pace: Pace,
) -> anyhow::Result<RunResult> {
    let base = Instant::now();
    let counters = Arc::new(Counters::default());
    let (stop_all, stop) = watch::channel(false);
    let senders = shape.rooms * shape.peers;
    let acks: Arc<Vec<Acks>> = Arc::new((0..senders).map(|_| Acks::default()).collect());
    let mut tasks = Vec::new();
    let mut sinks = Vec::new();
    for room in 0..shape.rooms {
        for peer in 0..shape.peers {
            let index = room * shape.peers + peer;
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index / 200) as u8));
            let ws = connect(kind, relay, room, source).await?;
            let (sink, stream) = ws.split();
            // This peer acknowledges for the previous peer of its room.
            let acks_for = room * shape.peers + (peer + shape.peers - 1) % shape.peers;
            tasks.push(tokio::spawn(receive(
                kind,
                stream,
                base,
                counters.clone(),
                stop.clone(),
                acks.clone(),
                acks_for,
            )));
            match pace {
                Pace::Window(window) => {
                    tokio::spawn(send_windowed(
                        kind,
                        sink,
                        index,
                        shape.size,
                        window,
                        base,
                        counters.clone(),
                        stop.clone(),
                        acks.clone(),
                    ));
                }
                Pace::Rate(_) => sinks.push(sink),
            }
        }
    }
    if let Pace::Rate(rate) = pace {
        tokio::spawn(send_paced(
            kind,
            sinks,
            shape,
            rate,
            base,
            counters.clone(),
            stop.clone(),
        ));
    }
    // Warm up, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = process_cpu_seconds(relay_pid)?;
    let load_cpu_before = process_cpu_seconds(std::process::id())?;
    counters.measuring.store(true, Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(shape.seconds)).await;
    counters.measuring.store(false, Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(relay_pid)? - cpu_before;
    let load_cpu = process_cpu_seconds(std::process::id())? - load_cpu_before;
    stop_all.send_replace(true);
    for notify in acks.iter() {
        notify.notify.notify_one();
    }
    let mut latencies: Vec<u32> = Vec::new();
    for task in tasks {
        if let Ok(Ok(samples)) = tokio::time::timeout(Duration::from_secs(2), task).await {
            latencies.extend(samples);
        }
    }
    latencies.sort_unstable();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .map_or(f64::NAN, |us| f64::from(*us))
    };
    Ok(RunResult {
        deliveries_per_second: counters.deliveries.load(Relaxed) as f64 / elapsed,
        sent_per_second: counters.sent.load(Relaxed) as f64 / elapsed,
        refused_per_second: counters.refused.load(Relaxed) as f64 / elapsed,
        p50_us: quantile(0.5),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        relay_cpu: cpu / elapsed,
        load_cpu: load_cpu / elapsed,
    })
}

/// A message from sender `index`: the send time (nanoseconds since `base`), the sender and
/// its sequence number in the first 16 bytes of the payload.
fn stamped(kind: Kind, payload: &mut [u8], base: Instant, index: usize, seq: u64) -> Message {
    let now = base.elapsed().as_nanos() as u64;
    payload[..8].copy_from_slice(&now.to_le_bytes());
    payload[8..12].copy_from_slice(&(index as u32).to_le_bytes());
    payload[12..16].copy_from_slice(&(seq as u32).to_le_bytes());
    let bytes = match kind {
        Kind::Bare => payload.to_vec(),
        Kind::Cue => encode(&ClientFrame::Broadcast {
            id: seq,
            payload: payload.to_vec(),
        }),
    };
    Message::Binary(Bytes::from(bytes))
}

/// Saturation: one task a sender, keeping `window` messages in flight (not yet read by
/// the sender's designated receiver).
#[allow(clippy::too_many_arguments)]
async fn send_windowed(
    kind: Kind,
    mut sink: SplitSink<Ws, Message>,
    index: usize,
    size: usize,
    window: u64,
    base: Instant,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    acks: Arc<Vec<Acks>>,
) {
    let mut payload = vec![0u8; size];
    let mut seq = 0u64;
    while !*stop.borrow() {
        loop {
            let notified = acks[index].notify.notified();
            if seq < acks[index].received.load(Relaxed) + window || *stop.borrow() {
                break;
            }
            notified.await;
        }
        if sink
            .send(stamped(kind, &mut payload, base, index, seq))
            .await
            .is_err()
        {
            return;
        }
        seq += 1;
        if counters.measuring.load(Relaxed) {
            counters.sent.fetch_add(1, Relaxed);
        }
    }
}

/// A fixed offered rate: one task sends for every sender, `rate` messages a second each,
/// at exponentially distributed intervals (Poisson arrivals, as from independent peers),
/// taking the senders in turn.
async fn send_paced(
    kind: Kind,
    mut sinks: Vec<SplitSink<Ws, Message>>,
    shape: Shape,
    rate: f64,
    base: Instant,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
) {
    let total = rate * sinks.len() as f64;
    let mut payload = vec![0u8; shape.size];
    let mut seqs = vec![0u64; sinks.len()];
    // xorshift64*: reproducible and good enough for inter-arrival times.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        // (0, 1]: never 0, whose logarithm is infinite.
        ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    let mut next = Instant::now();
    let mut turn = 0;
    while !*stop.borrow() {
        next += Duration::from_secs_f64(-uniform().ln() / total);
        match shape.pacing {
            Pacing::Timer => {
                if next > Instant::now() {
                    tokio::time::sleep_until(next.into()).await;
                }
            }
            Pacing::Spin => {
                while Instant::now() < next {
                    tokio::task::yield_now().await;
                }
            }
        }
        let index = turn;
        turn = (turn + 1) % sinks.len();
        let message = stamped(kind, &mut payload, base, index, seqs[index]);
        if sinks[index].send(message).await.is_err() {
            return;
        }
        seqs[index] += 1;
        if counters.measuring.load(Relaxed) {
            counters.sent.fetch_add(1, Relaxed);
        }
    }
}

async fn receive(
    kind: Kind,
    mut stream: SplitStream<Ws>,
    base: Instant,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    acks: Arc<Vec<Acks>>,
    acks_for: usize,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    loop {
        // The stream first: the stop signal is looked at only when nothing is waiting.
        let next = tokio::select! {
            biased;
            next = stream.next() => next,
            _ = stop.wait_for(|stop| *stop) => return latencies,
        };
        // Read the clock as soon as the frame is out of the socket, before decoding it.
        let now = base.elapsed().as_nanos() as u64;
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(_)) | None => return latencies,
        };
        let Message::Binary(bytes) = message else {
            continue;
        };
        let payload: &[u8];
        let decoded;
        match kind {
            Kind::Bare => payload = &bytes,
            Kind::Cue => match decode::<RelayFrame>(&bytes) {
                Ok(RelayFrame::Message { payload: inner, .. }) => {
                    decoded = inner;
                    payload = &decoded;
                }
                Ok(RelayFrame::Refused { .. }) => {
                    if counters.measuring.load(Relaxed) {
                        counters.refused.fetch_add(1, Relaxed);
                    }
                    continue;
                }
                _ => continue,
            },
        }
        if payload.len() < 16 {
            continue;
        }
        let sent = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
        let sender = u32::from_le_bytes(payload[8..12].try_into().unwrap_or_default()) as usize;
        let seq = u32::from_le_bytes(payload[12..16].try_into().unwrap_or_default());
        if sender == acks_for {
            acks[sender].received.store(u64::from(seq) + 1, Relaxed);
            acks[sender].notify.notify_one();
        }
        if counters.measuring.load(Relaxed) {
            counters.deliveries.fetch_add(1, Relaxed);
            latencies.push((now.saturating_sub(sent) / 1000) as u32);
        }
        if *stop.borrow() {
            return latencies;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Processes and measurements

/// A relay process (`cue-relay` or the bare relay), killed when dropped.
fn server(mut command: Command) -> anyhow::Result<Relay> {
    command.env("RUST_LOG", "error");
    Relay::spawn(command).context("starting a relay")
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        bail!("unreadable /proc/{pid}/stat");
    };
    Ok((user + system) / 100.0)
}

/// A command for `program`, under `taskset -c CPUS` when the relays are pinned (so the
/// relay's runtime sees one CPU from its start and sizes its workers to it).
fn placed(program: &std::path::Path, placement: &Placement) -> Command {
    match &placement.relay_cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.args(["-c", cpus]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

fn cue_relay(
    relay_bin: &std::path::Path,
    raised: bool,
    placement: &Placement,
) -> anyhow::Result<Relay> {
    let mut command = placed(relay_bin, placement);
    command.args(["--listen", "127.0.0.1:0"]);
    if raised {
        command.args([
            "--messages-per-second",
            "4000000000",
            "--burst",
            "4000000000",
            "--bytes-per-second",
            "4000000000",
            "--room-bytes-per-second",
            "4000000000",
        ]);
    }
    server(command)
}

fn bare_relay_process(placement: &Placement) -> anyhow::Result<Relay> {
    let mut command = placed(&std::env::current_exe()?, placement);
    command.arg("bare-relay");
    server(command)
}

/// Opens `count` admitted, idle connections (200 per source address), holds them, and
/// returns the relay's RSS before and with them.
async fn idle_rss(
    kind: Kind,
    server: &Relay,
    count: usize,
    peers: usize,
) -> anyhow::Result<(f64, f64)> {
    let before = rss_mib(server.pid())?;
    let mut held = Vec::with_capacity(count);
    let mut pending = futures_util::stream::iter(0..count)
        .map(|index| {
            let source = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                1 + (index / 200 / 250) as u8,
                1 + ((index / 200) % 250) as u8,
            ));
            connect(kind, server.addr, 1000 + index / peers, source)
        })
        .buffer_unordered(64);
    while let Some(ws) = pending.next().await {
        let (sink, mut stream) = ws?.split();
        // Keep reading so pings are answered, as a real idle client does.
        held.push(tokio::spawn(async move {
            while let Some(Ok(_)) = stream.next().await {}
            drop(sink);
        }));
    }
    // Let the relay settle (joins announced, buffers released).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = rss_mib(server.pid())?;
    for task in held {
        task.abort();
    }
    Ok((before, with))
}

async fn bench(
    shape: Shape,
    window: u64,
    idle: usize,
    relay_bin: PathBuf,
    placement: Placement,
) -> anyhow::Result<()> {
    let deliveries_per_message = (shape.peers - 1) as f64;
    let senders = (shape.rooms * shape.peers) as f64;
    println!(
        "shape: {} rooms x {} peers, {} B payloads, {} s measured per run; {} cores online",
        shape.rooms,
        shape.peers,
        shape.size,
        shape.seconds,
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map_or_else(|_| "?".to_owned(), |online| online.trim().to_owned())
    );
    println!(
        "placement: relays on CPUs {}, generator on CPUs {} ({} runtime), {:?} pacing",
        placement.relay_cpus.as_deref().unwrap_or("any"),
        placement.load_cpus.as_deref().unwrap_or("any"),
        if placement
            .load_cpus
            .as_deref()
            .and_then(|list| parse_cpus(list).ok())
            .is_some_and(|cpus| cpus.len() == 1)
        {
            "current-thread"
        } else {
            "multi-thread"
        },
        shape.pacing,
    );
    let row = |name: &str, result: &RunResult| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            result.sent_per_second,
            result.deliveries_per_second,
            result.refused_per_second,
            result.p50_us,
            result.p99_us,
            result.p999_us,
            result.relay_cpu,
            result.load_cpu,
        );
    };
    println!();
    println!(
        "| run | sent/s | deliveries/s | refused/s | hop p50 µs | hop p99 µs | hop p99.9 µs | relay CPU (cores) | generator CPU (cores) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");

    let cue = cue_relay(&relay_bin, true, &placement)?;
    let bare = bare_relay_process(&placement)?;
    let cue_max = run_load(Kind::Cue, cue.addr, cue.pid(), shape, Pace::Window(window)).await?;
    row("saturation, cue-relay (limits raised)", &cue_max);
    let bare_max = run_load(
        Kind::Bare,
        bare.addr,
        bare.pid(),
        shape,
        Pace::Window(window),
    )
    .await?;
    row("saturation, bare relay", &bare_max);

    // Half load: the same offered load for both relays, half of what the slower one
    // saturated at in this same placement, so that their latencies compare.
    let half = |max: &RunResult| max.deliveries_per_second / 2.0 / deliveries_per_message / senders;
    let rate = half(&cue_max).min(half(&bare_max));
    let cue_half = run_load(Kind::Cue, cue.addr, cue.pid(), shape, Pace::Rate(rate)).await?;
    row(
        &format!("half load ({rate:.0} msg/s a sender), cue-relay"),
        &cue_half,
    );
    let bare_half = run_load(Kind::Bare, bare.addr, bare.pid(), shape, Pace::Rate(rate)).await?;
    row(
        &format!("half load ({rate:.0} msg/s a sender), bare relay"),
        &bare_half,
    );
    // Light load: the hop latency when neither the relay nor this generator competes for
    // the cores.
    let light = run_load(Kind::Cue, cue.addr, cue.pid(), shape, Pace::Rate(10.0)).await?;
    row("light load (10 msg/s a sender), cue-relay", &light);
    let bare_light = run_load(Kind::Bare, bare.addr, bare.pid(), shape, Pace::Rate(10.0)).await?;
    row("light load (10 msg/s a sender), bare relay", &bare_light);
    drop(cue);

    let limited = cue_relay(&relay_bin, false, &placement)?;
    let over = run_load(
        Kind::Cue,
        limited.addr,
        limited.pid(),
        shape,
        Pace::Rate(150.0),
    )
    .await?;
    row(
        "default limits, 150 msg/s a sender offered (limit 100)",
        &over,
    );
    drop(limited);

    println!();
    println!(
        "ratio cue/bare at saturation: {:.2}",
        cue_max.deliveries_per_second / bare_max.deliveries_per_second
    );
    println!(
        "relay CPU per million deliveries: cue {:.2} s, bare {:.2} s",
        cue_max.relay_cpu / cue_max.deliveries_per_second * 1e6,
        bare_max.relay_cpu / bare_max.deliveries_per_second * 1e6
    );
    // The latency goal: cue-relay's hop p99 no worse than the bare relay's under the same
    // offered load (a ratio ≤ 1.00).
    println!(
        "hop p99 cue/bare: light {:.2}, half {:.2}, saturation {:.2}",
        light.p99_us / bare_light.p99_us.max(1.0),
        cue_half.p99_us / bare_half.p99_us.max(1.0),
        cue_max.p99_us / bare_max.p99_us.max(1.0)
    );
    drop(bare);

    if idle > 0 {
        println!();
        println!(
            "| idle connections | relay | RSS before MiB | RSS with them MiB | per connection KiB |"
        );
        println!("| ---: | --- | ---: | ---: | ---: |");
        for (kind, name) in [
            (Kind::Cue, "cue-relay (defaults)"),
            (Kind::Bare, "bare relay"),
        ] {
            let server = match kind {
                Kind::Cue => cue_relay(&relay_bin, false, &placement)?,
                Kind::Bare => bare_relay_process(&placement)?,
            };
            let (before, with) = idle_rss(kind, &server, idle, 50).await?;
            println!(
                "| {idle} | {name} | {before:.1} | {with:.1} | {:.1} |",
                (with - before) * 1024.0 / idle as f64
            );
        }
    }
    Ok(())
}
