//! `cue-relay-load hostile`: the relay's resident memory under two cheap attacks, each
//! against a fresh `cue-relay` process (see docs/benchmarks.md, "Relay memory under
//! hostile clients").
//!
//! 1. Slow readers: N peers from one address each join a room of their own (a room is
//!    just a key the client makes up) over a socket with a 4 KiB receive buffer and never
//!    read; a partner from another address sends each of them `bytes_per_reader` in
//!    direct messages, less than the outbound queue holds, so the queue never overflows.
//! 2. Strangers: M connections from one address upgrade to a room and, without joining,
//!    send the header of a message (by default a largest one, 1 MiB) and all but one
//!    byte of it, or nothing at all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use cue_proto::{ClientFrame, PeerId, encode};
use cue_testkit::async_ws::{self, Origin, Ws};
use cue_testkit::{Relay, room_key, room_of};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::{rss_mib, server};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Hostile {
    pub(crate) slow_readers: usize,
    pub(crate) bytes_per_reader: usize,
    pub(crate) strangers: usize,
    /// The message each stranger sends (all but its last byte); 0 sends nothing after
    /// the upgrade, holding the connection until the handshake timeout.
    pub(crate) stranger_message_bytes: usize,
    /// How long to watch the relay after each attack has sent everything.
    pub(crate) watch: Duration,
    /// Extra flags for every cue-relay started.
    pub(crate) relay_args: Vec<String>,
}

const SLOW_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const SENDER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const STRANGER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

pub(crate) async fn run(relay_bin: &Path, hostile: Hostile) -> anyhow::Result<()> {
    println!(
        "| attack | RSS before MiB | peak MiB | at the end of the watch MiB | closed by the relay |"
    );
    println!("| --- | ---: | ---: | ---: | --- |");
    if hostile.slow_readers > 0 {
        let relay = start(relay_bin, &hostile.relay_args)?;
        let row = slow_readers(&relay, &hostile).await?;
        println!(
            "| {} slow readers from one address, {} MiB sent to each | {:.1} | {:.1} | {:.1} | {} |",
            hostile.slow_readers,
            hostile.bytes_per_reader >> 20,
            row.before,
            row.peak,
            row.end,
            row.closed
        );
    }
    if hostile.strangers > 0 {
        let relay = start(relay_bin, &hostile.relay_args)?;
        let row = strangers(&relay, &hostile).await?;
        let what = match hostile.stranger_message_bytes {
            0 => "nothing sent after the upgrade".to_owned(),
            bytes if bytes % (1 << 20) == 0 => format!("{} MiB message each", bytes >> 20),
            bytes => format!("{bytes}-byte message each"),
        };
        println!(
            "| {} unauthenticated connections from one address, {what} | {:.1} | {:.1} | {:.1} | {} |",
            hostile.strangers, row.before, row.peak, row.end, row.closed
        );
    }
    println!();
    println!("(watched for {:?} after sending)", hostile.watch);
    Ok(())
}

fn start(relay_bin: &Path, args: &[String]) -> anyhow::Result<Relay> {
    let mut command = Command::new(relay_bin);
    command.args(["--listen", "127.0.0.1:0"]).args(args);
    server(command)
}

struct Row {
    before: f64,
    peak: f64,
    end: f64,
    closed: String,
}

/// Samples the relay's RSS every 50 ms for `watch`; returns the peak and the last sample.
async fn watch_rss(relay: &Relay, watch: Duration, mut peak: f64) -> anyhow::Result<(f64, f64)> {
    let until = Instant::now() + watch;
    let mut last = rss_mib(relay.pid())?;
    while Instant::now() < until {
        last = rss_mib(relay.pid())?;
        peak = peak.max(last);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((peak, last))
}

/// The relay's close counters that moved, as `cause=count` pairs (older relays lack some).
fn closes(relay: &Relay) -> String {
    let causes = [
        "write_timeout",
        "slow_reader",
        "oversized",
        "handshake_timeout",
        "protocol_error",
        "peer",
    ];
    let metrics = relay.metrics().unwrap_or_default();
    let counted: Vec<String> = causes
        .iter()
        .filter_map(|cause| {
            let name = format!("cue_relay_closed_total{{cause=\"{cause}\"}}");
            let value = cue_testkit::metric_value(&metrics, &name)?;
            (value > 0.0).then(|| format!("{cause} {value}"))
        })
        .collect();
    if counted.is_empty() {
        "none".to_owned()
    } else {
        counted.join(", ")
    }
}

/// Joins room `room` from `source`; returns the connection and the peers already there.
async fn connect_from(
    relay: SocketAddr,
    room: u64,
    source: IpAddr,
) -> anyhow::Result<(Ws, Vec<PeerId>)> {
    let key = room_key(room);
    let from = Origin {
        source: Some(source),
        forwarded_for: None,
    };
    let mut ws = async_ws::connect(relay, &room_of(&key), from).await?;
    let welcome = async_ws::join(&mut ws, &key, None).await?;
    Ok((ws, welcome.peers))
}

/// Joins room `room` from [`SLOW_SOURCE`] over a socket with a 4 KiB receive buffer (an
/// attacker's best case: the kernel holds least of what the relay sends).
async fn slow_reader(relay: SocketAddr, room: u64) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(SLOW_SOURCE, 0))?;
    socket.set_recv_buffer_size(4096)?;
    let stream = socket.connect(relay).await?;
    let key = room_key(room);
    let request = format!("ws://{relay}{}", room_of(&key).path()).into_client_request()?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    async_ws::join(&mut ws, &key, None).await?;
    Ok(ws)
}

async fn slow_readers(relay: &Relay, hostile: &Hostile) -> anyhow::Result<Row> {
    let before = rss_mib(relay.pid())?;
    let mut held = Vec::with_capacity(hostile.slow_readers);
    let mut senders = Vec::with_capacity(hostile.slow_readers);
    for index in 0..hostile.slow_readers {
        let room = 50_000 + index as u64;
        held.push(
            slow_reader(relay.addr, room)
                .await
                .context("a slow reader")?,
        );
        let (sender, peers) = connect_from(relay.addr, room, SENDER_SOURCE)
            .await
            .context("a sender")?;
        // The welcome names the slow reader, already in the room.
        let slow = *peers.first().context("the slow reader is in the room")?;
        senders.push((sender, slow));
    }
    let mut peak = before;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(senders.len());
    for (sender, slow) in senders {
        let bytes = hostile.bytes_per_reader;
        tasks.push(tokio::spawn(send_to_slow_reader(sender, slow, bytes)));
    }
    for task in tasks {
        task.await??;
        peak = peak.max(rss_mib(relay.pid())?);
    }
    let sent_in = started.elapsed();
    let (peak, end) = watch_rss(relay, hostile.watch, peak).await?;
    let closed = format!(
        "{} (sending took {:.1} s)",
        closes(relay),
        sent_in.as_secs_f64()
    );
    drop(held);
    Ok(Row {
        before,
        peak,
        end,
        closed,
    })
}

/// Sends `bytes` in 1 MiB direct messages to `to`, then keeps reading (and dropping)
/// whatever the relay sends the sender, for the rest of the run.
async fn send_to_slow_reader(mut sender: Ws, to: PeerId, bytes: usize) -> anyhow::Result<()> {
    let payload = vec![0x5a; 1 << 20];
    let mut left = bytes;
    let mut id = 0;
    while left > 0 {
        let len = left.min(payload.len());
        let frame = encode(&ClientFrame::Direct {
            id,
            to,
            payload: payload[..len].to_vec(),
        });
        sender.send(Message::Binary(Bytes::from(frame))).await?;
        left -= len;
        id += 1;
    }
    tokio::spawn(async move { while let Some(Ok(_)) = sender.next().await {} });
    Ok(())
}

/// A raw upgrade request for room `room`'s path.
fn upgrade_request(relay: SocketAddr, room: u64) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {relay}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        room_of(&room_key(room)).path()
    )
}

async fn strangers(relay: &Relay, hostile: &Hostile) -> anyhow::Result<Row> {
    let before = rss_mib(relay.pid())?;
    let mut peak = before;
    // A masked binary frame header announcing the message (mask 0: the payload goes as
    // is), and all of the payload but its last byte.
    let message = hostile.stranger_message_bytes;
    let mut header = vec![0x82, 0x80 | 127];
    header.extend((message as u64).to_be_bytes());
    header.extend([0, 0, 0, 0]);
    let body = vec![0u8; message.saturating_sub(1)];
    let mut held = Vec::with_capacity(hostile.strangers);
    for index in 0..hostile.strangers {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(STRANGER_SOURCE, 0))?;
        let mut stream = socket.connect(relay.addr).await?;
        stream
            .write_all(upgrade_request(relay.addr, 90_000 + index as u64).as_bytes())
            .await?;
        read_response_head(&mut stream).await?;
        // The relay may close as soon as it has read the header: a failed write is its
        // refusal, not an error of this run.
        if message > 0 && stream.write_all(&header).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&body)).await;
        }
        held.push(stream);
        if index % 50 == 49 {
            peak = peak.max(rss_mib(relay.pid())?);
        }
    }
    let (peak, end) = watch_rss(relay, hostile.watch, peak).await?;
    let closed = closes(relay);
    drop(held);
    Ok(Row {
        before,
        peak,
        end,
        closed,
    })
}

/// Reads an HTTP response head (up to its blank line), one byte at a time: nothing of
/// what follows it is consumed.
async fn read_response_head(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(head.len() < 8192, "response head too long");
        head.push(stream.read_u8().await?);
    }
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "not upgraded: {}",
        String::from_utf8_lossy(&head)
    );
    Ok(())
}
