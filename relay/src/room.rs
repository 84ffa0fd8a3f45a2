//! Rooms and their members: who is in which room, and the bounded queue towards each.
//!
//! A room exists while it has a member. The registry lock is taken only to join and leave;
//! delivering a message takes only its room's lock, and never waits inside it: each
//! recipient's queue is offered the frame without blocking, and a recipient whose queue is
//! full is dropped as a slow reader rather than buffered.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cue_proto::{Limits, PeerId, RelayFrame, RoomId, encode};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Bytes;

use crate::metrics::Metrics;

/// The sending side of a peer's outbound queue, bounded in frames and in bytes.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    sender: mpsc::Sender<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The receiving side, owned by the peer's connection task.
#[derive(Debug)]
pub(crate) struct Inbox {
    receiver: mpsc::Receiver<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
}

/// The queue is full: its reader is too slow.
#[derive(Debug)]
pub(crate) struct Overflow;

pub(crate) fn outbound_queue(frames: usize, max_bytes: usize) -> (Outbox, Inbox) {
    let (sender, receiver) = mpsc::channel(frames);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            sender,
            queued_bytes: queued_bytes.clone(),
            max_bytes,
        },
        Inbox {
            receiver,
            queued_bytes,
        },
    )
}

impl Outbox {
    /// Queues `frame` without waiting, or reports that the queue is full.
    pub(crate) fn offer(&self, frame: Bytes) -> Result<(), Overflow> {
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(Overflow);
        }
        match self.sender.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Err(Overflow)
            }
            // The connection is already ending; nothing to deliver to.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Ok(())
            }
        }
    }
}

impl Inbox {
    /// The next frame to write.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.receiver.recv().await?;
        self.queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        Some(frame)
    }

    /// The next frame if one is already waiting (to batch writes before a flush).
    pub(crate) fn try_recv(&mut self) -> Option<Bytes> {
        let frame = self.receiver.try_recv().ok()?;
        self.queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        Some(frame)
    }
}

/// A member as the room sees it: where to queue its frames, and how to drop it.
#[derive(Debug)]
struct Member {
    outbox: Outbox,
    /// Set to `true` to make the member's connection task close it (slow reader).
    kick: watch::Sender<bool>,
}

impl Member {
    /// Queues a frame, dropping the member if its queue is full. Returns whether it was
    /// queued.
    fn deliver(&self, frame: &Bytes) -> bool {
        match self.outbox.offer(frame.clone()) {
            Ok(()) => true,
            Err(Overflow) => {
                self.kick.send_replace(true);
                false
            }
        }
    }
}

#[derive(Debug)]
struct Members {
    by_id: HashMap<PeerId, Member>,
}

/// One room: its members and the budget of bytes it may deliver.
#[derive(Debug)]
pub(crate) struct Room {
    members: Mutex<Members>,
    delivered_bytes: DefaultDirectRateLimiter,
    room_bytes_burst: u32,
}

/// Why a broadcast or direct message was not delivered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DeliveryError {
    /// The room's byte budget is spent; retry after this many milliseconds.
    RoomBytes { retry_after_ms: u64 },
    /// The recipient of a direct message is not in the room.
    UnknownPeer,
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, Members> {
        // A panic while holding the lock cannot leave the map half-changed (every change is
        // a single insert or remove), so a poisoned lock is still consistent.
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges the room's delivered-bytes budget `bytes` (a broadcast counts once per
    /// recipient, since fan-out is what costs the relay).
    fn charge(&self, bytes: usize) -> Result<(), DeliveryError> {
        // One message can never need more than a whole second's budget, or a broadcast of
        // the largest message to a full room could never go through.
        let bytes = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .min(self.room_bytes_burst);
        let Some(bytes) = NonZeroU32::new(bytes) else {
            return Ok(());
        };
        match self.delivered_bytes.check_n(bytes) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(DeliveryError::RoomBytes {
                retry_after_ms: retry_after_ms(&self.delivered_bytes, &not_until),
            }),
            // Unreachable after the clamp; refuse rather than panic.
            Err(_) => Err(DeliveryError::RoomBytes { retry_after_ms: 0 }),
        }
    }

    /// Delivers `frame` (a `Message` carrying `payload_len` bytes) to every member but
    /// `from`. Returns the number of recipients it was queued for.
    pub(crate) fn broadcast(
        &self,
        from: PeerId,
        frame: &Bytes,
        payload_len: usize,
        metrics: &Metrics,
    ) -> Result<usize, DeliveryError> {
        let members = self.lock();
        let recipients = members.by_id.len().saturating_sub(1);
        self.charge(payload_len.saturating_mul(recipients))?;
        let mut delivered = 0;
        for (id, member) in &members.by_id {
            if *id != from && member.deliver(frame) {
                delivered += 1;
            }
        }
        drop(members);
        metrics
            .deliveries
            .fetch_add(delivered as u64, Ordering::Relaxed);
        metrics
            .bytes_out
            .fetch_add((delivered * payload_len) as u64, Ordering::Relaxed);
        Ok(delivered)
    }

    /// Delivers `frame` to the one member `to`.
    pub(crate) fn direct(
        &self,
        from: PeerId,
        to: PeerId,
        frame: &Bytes,
        payload_len: usize,
        metrics: &Metrics,
    ) -> Result<(), DeliveryError> {
        let members = self.lock();
        let member = members
            .by_id
            .get(&to)
            .filter(|_| to != from)
            .ok_or(DeliveryError::UnknownPeer)?;
        self.charge(payload_len)?;
        if member.deliver(frame) {
            metrics.deliveries.fetch_add(1, Ordering::Relaxed);
            metrics
                .bytes_out
                .fetch_add(payload_len as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The milliseconds until a rate limiter lets the refused cells through, rounded up.
///
/// It reads the limiter's own clock: building a fresh `DefaultClock` for every refusal
/// costs a CPUID instruction (quanta's TSC check), which traps to the hypervisor on a VM
/// and showed up in the profile of a peer over its rate.
pub(crate) fn retry_after_ms(
    limiter: &DefaultDirectRateLimiter,
    not_until: &governor::NotUntil<governor::clock::QuantaInstant>,
) -> u64 {
    use governor::clock::Clock;
    let wait = not_until.wait_time_from(limiter.clock().now());
    u64::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// Every room that has a member.
#[derive(Debug)]
pub(crate) struct Rooms {
    by_id: Mutex<HashMap<RoomId, Arc<Room>>>,
    limits: Limits,
}

/// Admission failed: the room holds its maximum of peers.
#[derive(Debug)]
pub(crate) struct RoomFull;

/// A peer's place in a room; leaving the room is dropping it.
#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) room: Arc<Room>,
    pub(crate) room_id: RoomId,
    pub(crate) peer: PeerId,
    rooms: Arc<Rooms>,
    metrics: Arc<Metrics>,
}

impl Rooms {
    pub(crate) fn new(limits: Limits) -> Rooms {
        Rooms {
            by_id: Mutex::new(HashMap::new()),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RoomId, Arc<Room>>> {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a peer: gives it an id, queues its welcome (before anything else can reach
    /// its queue) and tells the others.
    pub(crate) fn join(
        self: &Arc<Self>,
        room_id: RoomId,
        outbox: Outbox,
        kick: watch::Sender<bool>,
        metrics: &Arc<Metrics>,
    ) -> Result<Membership, RoomFull> {
        let mut rooms = self.lock();
        let room = rooms
            .entry(room_id)
            .or_insert_with(|| {
                metrics.rooms.fetch_add(1, Ordering::Relaxed);
                Arc::new(self.new_room())
            })
            .clone();
        let mut members = room.lock();
        if members.by_id.len() as u64 >= self.limits.max_peers_per_room {
            return Err(RoomFull);
        }
        let peer = loop {
            // Random rather than a counter, so ids say nothing about how many connections
            // the relay has seen; a collision inside one room is merely redrawn.
            let candidate = PeerId(getrandom::u64().unwrap_or_else(|_| fallback_id()));
            if !members.by_id.contains_key(&candidate) {
                break candidate;
            }
        };
        let welcome = RelayFrame::Welcome {
            you: peer,
            peers: members.by_id.keys().copied().collect(),
            limits: self.limits,
        };
        // The queue is empty and holds at least one largest frame, so this cannot
        // overflow; if it somehow did, the kick makes the connection close.
        let new_member = Member { outbox, kick };
        new_member.deliver(&Bytes::from(encode(&welcome)));
        let joined = Bytes::from(encode(&RelayFrame::PeerJoined(peer)));
        for member in members.by_id.values() {
            member.deliver(&joined);
        }
        members.by_id.insert(peer, new_member);
        drop(members);
        drop(rooms);
        metrics.peers.fetch_add(1, Ordering::Relaxed);
        metrics.admitted_total.fetch_add(1, Ordering::Relaxed);
        Ok(Membership {
            room,
            room_id,
            peer,
            rooms: self.clone(),
            metrics: metrics.clone(),
        })
    }

    fn new_room(&self) -> Room {
        let burst = u32::try_from(self.limits.room_bytes_per_second).unwrap_or(u32::MAX);
        let quota = Quota::per_second(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Room {
            members: Mutex::new(Members {
                by_id: HashMap::new(),
            }),
            delivered_bytes: DefaultDirectRateLimiter::direct(quota),
            room_bytes_burst: burst,
        }
    }

    /// How many rooms exist (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// An id from a process-local counter, only if the OS randomness fails (it does not on the
/// systems we run on, but a relay that cannot draw ids should still not panic).
fn fallback_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut rooms = self.rooms.lock();
        let mut members = self.room.lock();
        if members.by_id.remove(&self.peer).is_none() {
            return;
        }
        let left = Bytes::from(encode(&RelayFrame::PeerLeft(self.peer)));
        for member in members.by_id.values() {
            member.deliver(&left);
        }
        let empty = members.by_id.is_empty();
        drop(members);
        if empty && rooms.remove(&self.room_id).is_some() {
            self.metrics.rooms.fetch_sub(1, Ordering::Relaxed);
        }
        drop(rooms);
        self.metrics.peers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cue_proto::decode;

    fn limits(max_peers: u64) -> Limits {
        Limits {
            max_peers_per_room: max_peers,
            ..Limits::default()
        }
    }

    fn member(
        rooms: &Arc<Rooms>,
        metrics: &Arc<Metrics>,
    ) -> (Result<Membership, RoomFull>, Inbox, watch::Receiver<bool>) {
        let (outbox, inbox) = outbound_queue(4, 1 << 22);
        let (kick, kicked) = watch::channel(false);
        (
            rooms.join(RoomId([1; 32]), outbox, kick, metrics),
            inbox,
            kicked,
        )
    }

    fn next(inbox: &mut Inbox) -> RelayFrame {
        decode(&inbox.try_recv().expect("a queued frame")).unwrap()
    }

    #[test]
    fn rooms_exist_while_someone_is_in_them() {
        let rooms = Arc::new(Rooms::new(limits(2)));
        let metrics = Arc::new(Metrics::default());
        let (first, mut first_inbox, _) = member(&rooms, &metrics);
        let first = first.unwrap();
        assert!(
            matches!(next(&mut first_inbox), RelayFrame::Welcome { ref peers, .. } if peers.is_empty())
        );
        let (second, mut second_inbox, _) = member(&rooms, &metrics);
        let second = second.unwrap();
        assert!(
            matches!(next(&mut second_inbox), RelayFrame::Welcome { ref peers, .. } if peers == &[first.peer])
        );
        assert_eq!(next(&mut first_inbox), RelayFrame::PeerJoined(second.peer));
        let (third, _, _) = member(&rooms, &metrics);
        assert!(third.is_err());
        let second_peer = second.peer;
        drop(second);
        assert_eq!(next(&mut first_inbox), RelayFrame::PeerLeft(second_peer));
        assert!(first_inbox.try_recv().is_none());
        drop(first);
        assert_eq!(rooms.len(), 0);
        assert_eq!(metrics.rooms.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.peers.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_queue_kicks_its_reader() {
        let rooms = Arc::new(Rooms::new(limits(3)));
        let metrics = Arc::new(Metrics::default());
        let (sender, _sender_inbox, _) = member(&rooms, &metrics);
        let sender = sender.unwrap();
        let (_slow, _slow_inbox, slow_kicked) = member(&rooms, &metrics);
        let frame = Bytes::from(vec![0u8; 100]);
        // The slow member's queue holds 4 frames, one already taken by its welcome.
        for _ in 0..3 {
            assert_eq!(
                sender.room.broadcast(sender.peer, &frame, 90, &metrics),
                Ok(1)
            );
        }
        assert!(!*slow_kicked.borrow());
        assert_eq!(
            sender.room.broadcast(sender.peer, &frame, 90, &metrics),
            Ok(0)
        );
        assert!(*slow_kicked.borrow());
    }
}
