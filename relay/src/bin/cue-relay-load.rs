//! `cue-relay-load`: the relay's benchmark. It starts the real `cue-relay` (and, to compare,
//! a bare broadcast relay built on the same tokio-tungstenite with no auth and no limits),
//! drives R rooms × P peers over loopback, and prints a Markdown table: deliveries a
//! second at saturation, hop latency p50/p99 at half load, the default limits holding, and
//! the resident memory of 10,000 idle connections. See docs/benchmarks.md.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cue_proto::{ClientFrame, RelayFrame, RoomId, decode, encode, sign_join_proof};
use ed25519_dalek::SigningKey;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
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
    },
    /// Serve the bare comparison relay: every binary message is sent to every other
    /// connection on the same path. No auth, no limits, unbounded queues.
    BareRelay {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Cmd::BareRelay { listen } => runtime.block_on(bare_relay(listen)),
        Cmd::Bench {
            rooms,
            peers,
            size,
            seconds,
            window,
            idle,
            relay_bin,
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
            };
            runtime.block_on(bench(shape, window, idle, relay_bin))
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
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Cue,
    Bare,
}

type Ws = WebSocketStream<TcpStream>;

fn room_key(room: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(room as u64 + 1).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

/// Connects (from `source`) and, for the cue relay, joins the room.
async fn connect(kind: Kind, relay: SocketAddr, room: usize, source: IpAddr) -> anyhow::Result<Ws> {
    let key = room_key(room);
    let room_id = RoomId(key.verifying_key().to_bytes());
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(relay).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{relay}{}", room_id.path());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    if kind == Kind::Bare {
        return Ok(ws);
    }
    loop {
        let Some(message) = ws.next().await else {
            bail!("closed during the handshake");
        };
        let Message::Binary(bytes) = message? else {
            continue;
        };
        match decode::<RelayFrame>(&bytes)? {
            RelayFrame::Challenge { nonce } => {
                let proof = ClientFrame::Proof {
                    signature: sign_join_proof(&key, &nonce),
                };
                ws.send(Message::Binary(Bytes::from(encode(&proof))))
                    .await?;
            }
            RelayFrame::Welcome { .. } => return Ok(ws),
            other => bail!("refused: {other:?}"),
        }
    }
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
    relay_cpu: f64,
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
    let stop = Arc::new(AtomicBool::new(false));
    let senders = shape.rooms * shape.peers;
    let acks: Arc<Vec<Acks>> = Arc::new((0..senders).map(|_| Acks::default()).collect());
    let mut tasks = Vec::new();
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
            tokio::spawn(send(
                kind,
                sink,
                index,
                shape.size,
                pace,
                base,
                counters.clone(),
                stop.clone(),
                acks.clone(),
            ));
        }
    }
    // Warm up, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = process_cpu_seconds(relay_pid)?;
    counters.measuring.store(true, Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(shape.seconds)).await;
    counters.measuring.store(false, Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(relay_pid)? - cpu_before;
    stop.store(true, Relaxed);
    for notify in acks.iter() {
        notify.notify.notify_one();
    }
    let mut latencies: Vec<u32> = Vec::new();
    for task in tasks {
        // Receivers end at their next message or after a short wait.
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
        relay_cpu: cpu / elapsed,
    })
}

#[allow(clippy::too_many_arguments)]
async fn send(
    kind: Kind,
    mut sink: SplitSink<Ws, Message>,
    index: usize,
    size: usize,
    pace: Pace,
    base: Instant,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    acks: Arc<Vec<Acks>>,
) {
    let mut payload = vec![0u8; size];
    let mut seq = 0u64;
    let (period, per_tick) = match pace {
        Pace::Rate(rate) => {
            let period = (1.0 / rate).max(0.001);
            (
                Duration::from_secs_f64(period),
                (rate * period).round().max(1.0) as u64,
            )
        }
        Pace::Window(_) => (Duration::ZERO, 1),
    };
    let mut ticker = (!period.is_zero()).then(|| tokio::time::interval(period));
    while !stop.load(Relaxed) {
        match (&mut ticker, pace) {
            (Some(ticker), _) => {
                ticker.tick().await;
            }
            (None, Pace::Window(window)) => loop {
                let notified = acks[index].notify.notified();
                if seq < acks[index].received.load(Relaxed) + window || stop.load(Relaxed) {
                    break;
                }
                notified.await;
            },
            (None, Pace::Rate(_)) => {}
        }
        for _ in 0..per_tick {
            let now = base.elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&now.to_le_bytes());
            payload[8..12].copy_from_slice(&(index as u32).to_le_bytes());
            payload[12..16].copy_from_slice(&(seq as u32).to_le_bytes());
            let bytes = match kind {
                Kind::Bare => payload.clone(),
                Kind::Cue => encode(&ClientFrame::Broadcast {
                    id: seq,
                    payload: payload.clone(),
                }),
            };
            if sink
                .feed(Message::Binary(Bytes::from(bytes)))
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
        if sink.flush().await.is_err() {
            return;
        }
    }
}

async fn receive(
    kind: Kind,
    mut stream: SplitStream<Ws>,
    base: Instant,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    acks: Arc<Vec<Acks>>,
    acks_for: usize,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        if stop.load(Relaxed) {
            return latencies;
        }
        let Ok(Some(Ok(message))) = next else {
            if matches!(next, Ok(None) | Ok(Some(Err(_)))) {
                return latencies;
            }
            continue;
        };
        let Message::Binary(bytes) = message else {
            continue;
        };
        let payload: Vec<u8> = match kind {
            Kind::Bare => bytes.to_vec(),
            Kind::Cue => match decode::<RelayFrame>(&bytes) {
                Ok(RelayFrame::Message { payload, .. }) => payload,
                Ok(RelayFrame::Refused { .. }) => {
                    if counters.measuring.load(Relaxed) {
                        counters.refused.fetch_add(1, Relaxed);
                    }
                    continue;
                }
                _ => continue,
            },
        };
        if payload.len() < 16 {
            continue;
        }
        let now = base.elapsed().as_nanos() as u64;
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
    }
}

// ---------------------------------------------------------------------------------------
// Processes and measurements

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(mut command: Command) -> anyhow::Result<Server> {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("RUST_LOG", "error")
            .spawn()
            .context("starting a relay")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("relay stdout")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .parse()?;
        Ok(Server { child, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

fn cue_relay(relay_bin: &PathBuf, raised: bool) -> anyhow::Result<Server> {
    let mut command = Command::new(relay_bin);
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
    Server::start(command)
}

fn bare_relay_process() -> anyhow::Result<Server> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("bare-relay");
    Server::start(command)
}

/// Opens `count` admitted, idle connections (200 per source address), holds them, and
/// returns the relay's RSS before and with them.
async fn idle_rss(
    kind: Kind,
    server: &Server,
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

async fn bench(shape: Shape, window: u64, idle: usize, relay_bin: PathBuf) -> anyhow::Result<()> {
    let deliveries_per_message = (shape.peers - 1) as f64;
    println!(
        "shape: {} rooms x {} peers, {} B payloads, {} s measured per run; {} cores",
        shape.rooms,
        shape.peers,
        shape.size,
        shape.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let row = |name: &str, result: &RunResult| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            result.sent_per_second,
            result.deliveries_per_second,
            result.refused_per_second,
            result.p50_us,
            result.p99_us,
            result.relay_cpu
        );
    };
    println!();
    println!(
        "| run | sent/s | deliveries/s | refused/s | hop p50 µs | hop p99 µs | relay CPU (cores) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");

    let cue = cue_relay(&relay_bin, true)?;
    let bare = bare_relay_process()?;
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

    let half_rate = cue_max.deliveries_per_second
        / 2.0
        / deliveries_per_message
        / (shape.rooms * shape.peers) as f64;
    let cue_half = run_load(Kind::Cue, cue.addr, cue.pid(), shape, Pace::Rate(half_rate)).await?;
    row(
        &format!("half load ({half_rate:.0} msg/s a sender), cue-relay"),
        &cue_half,
    );
    let bare_half = run_load(
        Kind::Bare,
        bare.addr,
        bare.pid(),
        shape,
        Pace::Rate(half_rate),
    )
    .await?;
    row(
        &format!("half load ({half_rate:.0} msg/s a sender), bare relay"),
        &bare_half,
    );
    // Light load: the hop latency when neither the relay nor this generator competes for
    // the cores.
    let light = run_load(Kind::Cue, cue.addr, cue.pid(), shape, Pace::Rate(10.0)).await?;
    row("light load (10 msg/s a sender), cue-relay", &light);
    let bare_light = run_load(Kind::Bare, bare.addr, bare.pid(), shape, Pace::Rate(10.0)).await?;
    row("light load (10 msg/s a sender), bare relay", &bare_light);
    drop(cue);

    let limited = cue_relay(&relay_bin, false)?;
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
                Kind::Cue => cue_relay(&relay_bin, false)?,
                Kind::Bare => bare_relay_process()?,
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
