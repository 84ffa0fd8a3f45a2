//! A raw relay client that floods a room of its own: the misbehaving peer of the
//! flood figure. Adapted from the end-to-end harness's `Flooder` (`tests/src/lib.rs`)
//! with errors instead of panics and an unpaced mode (as fast as one connection sends).

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cue_proto::{ClientFrame, RefuseReason, RelayFrame, RoomId, decode, encode};
use tungstenite::{Bytes, Message};

/// Payload bytes of each flooded message (as in the e2e flood test).
const PAYLOAD: usize = 200;

/// How the flooder sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Message n goes out at n / rate seconds after admission.
    PerSecond(u64),
    /// As fast as the socket takes them: a new message whenever the last one was
    /// written out to the kernel.
    Unpaced,
}

/// Counters shared with the flooding thread.
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    rate_limited: AtomicU64,
    refused_other: AtomicU64,
}

/// What a flood did, once stopped.
#[derive(Debug, Clone)]
pub struct FloodReport {
    pub seconds: f64,
    pub sent: u64,
    /// `Refused { reason: RateLimited }` frames received.
    pub rate_limited: u64,
    /// Refusals for any other reason (byte rates, …).
    pub refused_other: u64,
    /// Why the flood ended before it was stopped (the relay closed on it), if it did.
    pub ended_early: Option<String>,
}

/// One flooding connection on its own thread until stopped or dropped.
#[derive(Debug)]
pub struct Flooder {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    started: Instant,
    thread: Option<JoinHandle<Option<String>>>,
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

impl Flooder {
    /// Joins a fresh room on `relay` (a room key from `seed`) and starts flooding; returns
    /// once admitted (or fails within `deadline`).
    pub fn start(
        relay: SocketAddr,
        seed: u64,
        pace: Pace,
        deadline: Duration,
    ) -> anyhow::Result<Flooder> {
        let mut key_seed = [7u8; 32];
        key_seed[..8].copy_from_slice(&seed.to_le_bytes());
        let key = ed25519_dalek::SigningKey::from_bytes(&key_seed);
        let room = RoomId(key.verifying_key().to_bytes());
        let stream = TcpStream::connect_timeout(&relay, deadline)
            .with_context(|| format!("the flooder connecting to {relay}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(deadline))?;
        stream.set_write_timeout(Some(deadline))?;
        let (mut ws, _) = tungstenite::client(format!("ws://{relay}{}", room.path()), stream)
            .map_err(|e| anyhow!("the flooder's WebSocket handshake: {e}"))?;
        let t = Instant::now();
        loop {
            if t.elapsed() > deadline {
                bail!("the flooder was not admitted within {deadline:?}");
            }
            let Message::Binary(bytes) = ws.read().context("the flooder's handshake")? else {
                continue;
            };
            match decode::<RelayFrame>(&bytes).map_err(|e| anyhow!("a relay frame: {e:?}"))? {
                RelayFrame::Challenge { nonce } => {
                    let proof = ClientFrame::Proof {
                        signature: cue_proto::sign_join_proof(&key, &nonce),
                    };
                    ws.send(Message::Binary(Bytes::from(encode(&proof))))
                        .context("the flooder's proof")?;
                }
                RelayFrame::Welcome { .. } => break,
                other => bail!("the flooder was not admitted: {other:?}"),
            }
        }
        // Non-blocking from here: reads only drain what has arrived (a read timeout would
        // round up to a scheduler tick and cap the rate), the sends set the pace.
        ws.get_ref().set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (st, c) = (stop.clone(), counts.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || flood(ws, pace, started, &st, &c));
        Ok(Flooder {
            stop,
            counts,
            started,
            thread: Some(thread),
        })
    }

    pub fn rate_limited(&self) -> u64 {
        self.counts.rate_limited.load(Relaxed)
    }

    /// Whether the flooding thread is still at it (the relay has not closed on it).
    pub fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the flood and says what it did.
    pub fn stop(mut self) -> FloodReport {
        self.stop.store(true, Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        let ended_early = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(why)) => why,
            Some(Err(_)) => Some("the flooding thread panicked".to_string()),
            None => None,
        };
        FloodReport {
            seconds,
            sent: self.counts.sent.load(Relaxed),
            rate_limited: self.counts.rate_limited.load(Relaxed),
            refused_other: self.counts.refused_other.load(Relaxed),
            ended_early,
        }
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The flooding loop; returns why it ended if not asked to stop.
fn flood(
    mut ws: tungstenite::WebSocket<TcpStream>,
    pace: Pace,
    started: Instant,
    stop: &AtomicBool,
    counts: &Counts,
) -> Option<String> {
    let mut id = 0u64;
    // A message is still in tungstenite's buffer: the socket took no more.
    let mut pending = false;
    while !stop.load(Relaxed) {
        if pending {
            // Wait (briefly, to see `stop`) until the socket takes more or a refusal came.
            {
                use rustix::event::{PollFd, PollFlags, Timespec};
                let mut fds = [PollFd::new(ws.get_ref(), PollFlags::OUT | PollFlags::IN)];
                let tick = Timespec {
                    tv_sec: 0,
                    tv_nsec: 10_000_000,
                };
                let _ = rustix::event::poll(&mut fds, Some(&tick));
            }
            match ws.flush() {
                Ok(()) => pending = false,
                Err(e) if would_block(&e) => {}
                Err(e) => return Some(format!("flush: {e}")),
            }
        } else {
            if let Pace::PerSecond(rate) = pace {
                // Message n goes out at n / rate.
                let due = started + Duration::from_secs_f64(id as f64 / rate.max(1) as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let frame = ClientFrame::Broadcast {
                id,
                payload: vec![0xa5; PAYLOAD],
            };
            // WouldBlock: queued in tungstenite's buffer, flushed before the next one.
            match ws.send(Message::Binary(Bytes::from(encode(&frame)))) {
                Ok(()) => {}
                Err(e) if would_block(&e) => pending = true,
                Err(e) => return Some(format!("send: {e}")),
            }
            id += 1;
            counts.sent.store(id, Relaxed);
        }
        // Drain what the relay answered.
        loop {
            match ws.read() {
                Ok(Message::Binary(bytes)) => match decode::<RelayFrame>(&bytes) {
                    Ok(RelayFrame::Refused {
                        reason: RefuseReason::RateLimited,
                        ..
                    }) => {
                        counts.rate_limited.fetch_add(1, Relaxed);
                    }
                    Ok(RelayFrame::Refused { .. }) => {
                        counts.refused_other.fetch_add(1, Relaxed);
                    }
                    _ => {}
                },
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) => return Some(format!("read: {e}")),
            }
        }
    }
    let _ = ws.close(None);
    None
}
