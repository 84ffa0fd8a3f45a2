//! A raw relay client that floods a room of its own: the misbehaving peer of the flood
//! tests and benchmark. It joins with [`crate::sync_ws`], then sends as fast as its pace
//! allows on a thread of its own, counting what the relay refuses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use cue_proto::{ClientFrame, RefuseReason, RelayFrame, decode};
use tungstenite::Message;

use crate::join::{message, room_key};
use crate::sync_ws::{self, Ws};

/// Payload bytes of each flooded message.
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
        let (ws, _welcome) = sync_ws::connect_and_join(relay, &room_key(seed), deadline)
            .context("the flooder was not admitted")?;
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

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.counts.sent.load(Relaxed)
    }

    /// `Refused { reason: RateLimited }` frames received so far.
    pub fn rate_limited(&self) -> u64 {
        self.counts.rate_limited.load(Relaxed)
    }

    /// When the flood began (just after admission).
    pub fn started(&self) -> Instant {
        self.started
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
    mut ws: Ws,
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
            match ws.send(message(&frame)) {
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
