//! The network session: this device's standing in the relay room, between the engine's
//! messages and the relay client's frames.
//!
//! [`Session`] owns everything about the room that outlives one message:
//!
//! - whether we are connected, and the relay client's command channel;
//! - the peer maps: which device each relay peer spoke for (learned from that device's
//!   envelopes, the only place a device id can be trusted) and the peer to send a device
//!   its direct messages through;
//! - the devices whose admission we verified during this run (members before the engine
//!   has taken the admission in);
//! - the sequence-number allocators of our broadcast stream and our direct streams;
//! - the replay guard, and whether the store has its latest state;
//! - counts of the envelopes refused, by reason, for the log.
//!
//! They live in one type because they change together and their rules are about each
//! other: an envelope is opened with the member list and the guard, its sender teaches us
//! a route, the guard must reach the store before the message's effects do, a number must
//! be reserved on disk before it is sealed into an envelope. The main loop only hands
//! over relay events and the engine's outgoing messages; the session seals, opens,
//! admits and routes (docs/protocol.md §2 describes envelopes, sequence numbers and
//! admissions; docs/security.md what each check defends against).
//!
//! Rules kept here:
//!
//! - **Admission first.** On joining the room our admission goes out before any engine
//!   message, so that peers (a new one especially) know us when our `Hello` arrives; a
//!   peer that joins later gets it directly.
//! - **A sequence number is never reused.** Numbers come out of blocks reserved in the
//!   store (write and fsync) before their first number is sealed.
//! - **The replay guard is stored no later than the effects of the messages it
//!   admitted.** See [`Replay`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use cue_core::Input;
use cue_crypto::{
    Admission, DeviceId as CryptoDeviceId, MessageType, OpenError, Opened, ReplayGuard, Sealer,
    SeqAllocator, SeqNext, Stream,
};
use cue_proto::PeerId;
use tokio::sync::mpsc;

use crate::driver::{Driver, DriverError, KEY_REPLAY, NS_NET, Outgoing, now_ms};
use crate::relay_client::{RelayCommand, RelayEvent};
use crate::store::{Store, StoreError};
use crate::workspace::Workspace;

/// Where the reservations of the two streams' sequence numbers are stored.
const SEQ_BROADCAST: &str = "broadcast";
const SEQ_DIRECT: &str = "direct";

/// The kinds of an engine message's items, for the debug log (a failing end-to-end test
/// prints it: what was exchanged, not what it held).
fn item_kinds(bytes: &[u8]) -> Vec<&'static str> {
    cue_core::wire::decode(bytes).map_or_else(
        |_| vec!["undecodable"],
        |m| m.items.iter().map(cue_core::wire::Item::kind).collect(),
    )
}

fn core_id(d: &CryptoDeviceId) -> cue_core::DeviceId {
    cue_core::DeviceId(d.0)
}

/// The network session of one running daemon (see the module docs).
pub(crate) struct Session<'w> {
    ws: &'w Workspace,
    /// The keys of the secret generation whose room we are in.
    keys: cue_crypto::WorkspaceKeys,
    relay: mpsc::UnboundedSender<RelayCommand>,
    connected: bool,
    /// Why the relay could not be reached or was lost, while not connected (for status).
    relay_problem: Option<String>,
    peers: Peers,
    admitted: HashSet<CryptoDeviceId>,
    replay: Replay,
    seqs: Seqs,
    rejected: BTreeMap<&'static str, u64>,
    /// Envelopes opened in this run (status shows it: a removed device opens nothing).
    opened: u64,
    /// How many other connections the room has, as the relay says.
    present: usize,
    /// Devices whose messages were dropped as a stranger's (not, or not yet, known as
    /// members): when one's admission arrives after all, the room is asked to say hello
    /// again, so that what was dropped is found missing and pulled. (Bounded: a flood of
    /// made-up senders cannot grow it.)
    strangers: HashSet<CryptoDeviceId>,
}

/// At most this many strangers are remembered; past it the set starts again.
const STRANGERS_KEPT: usize = 64;

/// An envelope that passed every check, waiting to be handed to the engine.
struct Received {
    from: PeerId,
    sender: CryptoDeviceId,
    what: What,
}

enum What {
    Admit(Admission),
    Engine(Vec<u8>),
    /// Opened, but its content is refused (an admission that is not the sender's own).
    Nothing,
}

impl<'w> Session<'w> {
    /// Picks up where the last run left off: the replay guard and the sequence-number
    /// reservations from the store. Not connected until the relay client says so.
    pub fn resume(
        ws: &'w Workspace,
        keys: cue_crypto::WorkspaceKeys,
        store: &Store,
        relay: mpsc::UnboundedSender<RelayCommand>,
    ) -> Result<Self, StoreError> {
        Ok(Session {
            ws,
            keys,
            relay,
            connected: false,
            relay_problem: None,
            peers: Peers::default(),
            admitted: HashSet::new(),
            replay: Replay::load(store)?,
            seqs: Seqs::resume(store)?,
            rejected: BTreeMap::new(),
            opened: 0,
            present: 0,
            strangers: HashSet::new(),
        })
    }

    /// Whether we are in the relay room.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Moves to the room of another secret generation (a rotation): the old connection
    /// is closed, `relay` is the client of the new room, and until it connects every
    /// peer is offline for the engine.
    pub fn switch(
        &mut self,
        driver: &mut Driver,
        keys: cue_crypto::WorkspaceKeys,
        relay: mpsc::UnboundedSender<RelayCommand>,
    ) -> Result<(), DriverError> {
        self.close();
        self.keys = keys;
        self.relay = relay;
        self.relay_problem = None;
        if self.connected {
            let sends = self.forget_room(driver)?;
            self.send_all(driver, sends);
        }
        Ok(())
    }

    /// Out of the room (the connection lost, or left): nobody is there for this device
    /// any more, and the engine is told so. Returns what it wants sent.
    fn forget_room(&mut self, driver: &mut Driver) -> Result<Vec<Outgoing>, DriverError> {
        self.connected = false;
        self.present = 0;
        self.peers.clear();
        self.replay.guard_mut().on_disconnect();
        self.input(driver, Input::Disconnected)
    }

    /// Leaves the room for good (this device was removed from the workspace).
    pub fn leave(&mut self, driver: &mut Driver) -> Result<(), DriverError> {
        self.close();
        if self.connected {
            let sends = self.forget_room(driver)?;
            self.send_all(driver, sends);
        }
        self.relay_problem = Some("this device was removed from the workspace".into());
        Ok(())
    }

    /// While not connected: why the last attempt to reach the relay failed, or why the
    /// connection was lost (`None` before the first attempt has ended).
    pub fn relay_problem(&self) -> Option<&str> {
        if self.connected {
            None
        } else {
            self.relay_problem.as_deref()
        }
    }

    /// Connected, with no other connection in the room.
    pub fn alone(&self) -> bool {
        self.connected && self.present == 0
    }

    /// Drops the connection and connects again (see `alone.rs`).
    pub fn reconnect(&self) {
        let _ = self.relay.send(RelayCommand::Reconnect);
    }

    /// Envelopes opened so far in this run.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// Envelopes refused so far, by reason.
    pub fn rejected(&self) -> &BTreeMap<&'static str, u64> {
        &self.rejected
    }

    /// How many times the replay guard was encoded for the store.
    pub fn replay_writes(&self) -> u64 {
        self.replay.writes
    }

    /// Handles relay events in order, sending what the engine answers as it goes. Each
    /// run of consecutive messages is opened together, so the replay guard is encoded
    /// once for the run (the events given are those that were waiting together).
    pub fn on_relay_events(
        &mut self,
        driver: &mut Driver,
        events: Vec<RelayEvent>,
    ) -> Result<(), DriverError> {
        let mut events = events.into_iter().peekable();
        while let Some(event) = events.next() {
            let sends = match event {
                RelayEvent::Message { from, payload, .. } => {
                    let mut run = VecDeque::from([(from, payload)]);
                    while let Some(RelayEvent::Message { from, payload, .. }) =
                        events.next_if(|e| matches!(e, RelayEvent::Message { .. }))
                    {
                        run.push_back((from, payload));
                    }
                    self.receive(driver, run)?;
                    continue;
                }
                RelayEvent::Connected { you, peers, limits } => {
                    tracing::info!(?you, peers = peers.len(), "joined the relay room");
                    self.connected = true;
                    self.relay_problem = None;
                    self.present = peers.len();
                    self.peers.clear();
                    let limit = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
                    if let Some(max) = cue_crypto::max_plaintext_for(limit) {
                        driver.engine_mut().set_max_message_bytes(max);
                    }
                    self.send_admission(driver.store_mut(), None);
                    self.input(driver, Input::Connected)?
                }
                RelayEvent::PeerJoined(peer) => {
                    self.present += 1;
                    self.send_admission(driver.store_mut(), Some(peer));
                    Vec::new()
                }
                RelayEvent::PeerLeft(peer) => {
                    self.present = self.present.saturating_sub(1);
                    match self.peers.left(peer) {
                        Some(device) => {
                            self.replay.guard_mut().on_peer_left(&device);
                            let device = core_id(&device);
                            self.input(driver, Input::PeerLeft { device })?
                        }
                        None => Vec::new(),
                    }
                }
                RelayEvent::Disconnected { reason } => {
                    tracing::info!(%reason, "offline; reconnecting");
                    self.relay_problem = Some(format!("connection lost: {reason}"));
                    self.forget_room(driver)?
                }
                RelayEvent::Unreachable { reason } => {
                    self.relay_problem = Some(reason);
                    Vec::new()
                }
            };
            self.send_all(driver, sends);
        }
        Ok(())
    }

    /// Opens a run of messages, then hands each to the engine in order.
    ///
    /// Opening all first lets one store write of the guard cover the whole run. Opening
    /// depends on earlier messages in one way only: one of them may make a device a
    /// member (an admission, or an index change from another member). An admission
    /// counts at once (`admitted`); for the rest, a message refused as not a member's is
    /// opened again after the messages before it have been handed to the engine, exactly
    /// as if each had been handled alone.
    fn receive(
        &mut self,
        driver: &mut Driver,
        mut run: VecDeque<(PeerId, Vec<u8>)>,
    ) -> Result<(), DriverError> {
        while !run.is_empty() {
            let mut opened = Vec::new();
            while let Some((from, payload)) = run.pop_front() {
                match self.open(driver, from, &payload) {
                    Ok(received) => opened.push(received),
                    Err(OpenError::NotMember(_)) if !opened.is_empty() => {
                        run.push_front((from, payload));
                        break;
                    }
                    Err(error) => {
                        *self.rejected.entry(error.kind()).or_default() += 1;
                        tracing::debug!(%error, "dropped a message");
                        if let OpenError::NotMember(device) = error {
                            if self.strangers.len() >= STRANGERS_KEPT {
                                self.strangers.clear();
                            }
                            self.strangers.insert(device);
                        }
                    }
                }
            }
            for received in opened {
                let sends = self.deliver(driver, received)?;
                self.send_all(driver, sends);
            }
        }
        Ok(())
    }

    /// Every check of docs/protocol.md §2.4, the replay guard last; an admission that
    /// checks out makes its device a member for the messages after it.
    fn open(
        &mut self,
        driver: &Driver,
        from: PeerId,
        payload: &[u8],
    ) -> Result<Received, OpenError> {
        let me = self.ws.device.device_id();
        let engine = driver.engine();
        let admitted = &self.admitted;
        let opened = self.replay.open(&self.keys, &me, payload, |d| {
            let d2 = core_id(d);
            !engine.removed().contains_key(&d2) && (engine.is_member(&d2) || admitted.contains(d))
        })?;
        self.opened += 1;
        if let Some(gap) = &opened.gap {
            tracing::debug!(?gap, "broadcasts from a peer may have been withheld");
        }
        let Opened {
            sender,
            ty,
            plaintext,
            ..
        } = opened;
        let what = match ty {
            MessageType::Engine => What::Engine(plaintext),
            MessageType::Admission => match Admission::decode(&plaintext) {
                Ok(a) if a.device == sender && a.verify(&self.ws.lobby_room()).is_ok() => {
                    self.admitted.insert(a.device);
                    What::Admit(a)
                }
                _ => {
                    *self.rejected.entry("bad_admission").or_default() += 1;
                    What::Nothing
                }
            },
            // Lobby messages belong to the lobby room, never to this one.
            MessageType::Lobby => {
                *self.rejected.entry("lobby_in_room").or_default() += 1;
                What::Nothing
            }
        };
        Ok(Received { from, sender, what })
    }

    /// Hands an opened message to the engine; learns the route to its sender.
    fn deliver(
        &mut self,
        driver: &mut Driver,
        received: Received,
    ) -> Result<Vec<Outgoing>, DriverError> {
        let Received { from, sender, what } = received;
        self.peers.learn(from, sender);
        let input = match what {
            What::Nothing => return Ok(Vec::new()),
            What::Admit(admission) => {
                let device = core_id(&admission.device);
                if driver.engine().members().get(&device) == Some(&admission.name) {
                    return Ok(Vec::new());
                }
                let mut sends = self.input(
                    driver,
                    Input::Admit {
                        device,
                        admission: admission.encode(),
                        name: admission.name,
                    },
                )?;
                // Its messages that came before its admission were dropped (a relay's
                // rate limit can delay an admission behind them): hellos both ways make
                // each side pull what the other holds.
                if self.strangers.remove(&sender) && driver.engine().is_member(&device) {
                    tracing::debug!(device = ?sender, "admitted a device whose messages were dropped: saying hello again");
                    sends.extend(self.input(driver, Input::SyncNow)?);
                }
                return Ok(sends);
            }
            What::Engine(bytes) => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    tracing::debug!(from = ?sender, items = ?item_kinds(&bytes), "received");
                }
                Input::Message {
                    from: core_id(&sender),
                    bytes,
                }
            }
        };
        self.input(driver, input)
    }

    /// Every input the session gives the engine goes through here: the guard first.
    fn input(&mut self, driver: &mut Driver, input: Input) -> Result<Vec<Outgoing>, DriverError> {
        self.persist_replay(driver);
        driver.input(now_ms(), input)
    }

    /// Hands the replay guard to the driver if it changed since it last was: it goes
    /// into the driver's next transaction (or its `flush`).
    pub fn persist_replay(&mut self, driver: &mut Driver) {
        self.replay.hand_over(driver);
    }

    /// Seals the engine's messages and gives them to the relay client: broadcasts to the
    /// room, direct messages to the device's peer when we know it. Nothing while offline:
    /// the engine catches up on connecting.
    pub fn send_all(&mut self, driver: &mut Driver, sends: Vec<Outgoing>) {
        self.send_with(driver.store_mut(), sends);
    }

    /// [`Session::send_all`] from inside the driver's work (a watcher batch fed a part at
    /// a time: `Driver::watch_step`), with the driver's store for the sequence numbers.
    pub fn send_with(&mut self, store: &mut Store, sends: Vec<Outgoing>) {
        if !self.connected {
            return;
        }
        for (to, bytes) in sends {
            if tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!(to = ?to, items = ?item_kinds(&bytes), "sending");
            }
            let stream = match to {
                None => Stream::Broadcast,
                Some(d) => Stream::Direct(CryptoDeviceId(d.0)),
            };
            let sealed = self.seal(store, MessageType::Engine, stream, &bytes);
            let Some(envelope) = sealed else {
                continue;
            };
            // A direct message to a device whose relay peer we have not learned yet goes
            // to the room; the others drop it as not theirs.
            let cmd = match to.and_then(|d| self.peers.route(&d)) {
                Some(peer) => RelayCommand::Direct(peer, envelope),
                None => RelayCommand::Broadcast(envelope),
            };
            let _ = self.relay.send(cmd);
        }
    }

    /// Our admission: to the room (`None`) or to one peer that just joined.
    fn send_admission(&mut self, store: &mut Store, to: Option<PeerId>) {
        let ws = self.ws;
        let admission = match Admission::create(&ws.lobby_room(), &ws.device, &ws.device_name()) {
            Ok(a) => a,
            Err(error) => {
                tracing::error!(%error, "cannot make our admission (device name)");
                return;
            }
        };
        // Sealed on the broadcast stream even when sent to one peer: we do not know its
        // device yet, which a direct stream would name.
        let bytes = admission.encode();
        let Some(envelope) = self.seal(store, MessageType::Admission, Stream::Broadcast, &bytes)
        else {
            return;
        };
        let cmd = match to {
            None => RelayCommand::Broadcast(envelope),
            Some(p) => RelayCommand::Direct(p, envelope),
        };
        let _ = self.relay.send(cmd);
    }

    fn seal(
        &mut self,
        store: &mut Store,
        ty: MessageType,
        stream: Stream,
        plaintext: &[u8],
    ) -> Option<Vec<u8>> {
        let seq = self.seqs.next(store, &stream)?;
        match Sealer::new(&self.keys, &self.ws.device).seal(ty, stream, seq, plaintext) {
            Ok(env) => Some(env),
            Err(error) => {
                tracing::error!(%error, "cannot seal a message");
                None
            }
        }
    }

    /// Asks the relay client to close the connection and end.
    pub fn close(&self) {
        let _ = self.relay.send(RelayCommand::Close);
    }
}

/// The replay guard, and whether the driver holds its latest state.
///
/// **The rule: the store never holds the effects of a message without the guard that
/// admitted it.** Otherwise a crash after the effects were committed would let the same
/// envelope in again (a hostile relay replaying it) and apply it twice. The session
/// hands the guard to the driver before every input it gives the engine
/// ([`Session::input`]); the driver writes it in that input's transaction, which comes
/// before the input's file writes and messages. So the guard that admitted a message is
/// committed with the message's effects or before them, never after.
///
/// The other way round is harmless, and is what lets one write cover a whole run of
/// messages: the guard is written with the first message's effects, and a crash before
/// the last one's only loses those messages, as the network might have. No genuine
/// envelope is refused for it (the relay delivers an envelope once and keeps nothing;
/// the sender's engine sends what was not acknowledged again, under new sequence
/// numbers). Nor can the guard on disk refuse a genuine envelope it has not seen: it is
/// always a state the guard had, and the guard records only envelopes that passed every
/// other check (docs/protocol.md §2.4).
///
/// Encoding the guard costs its size (every sender's window), so it is encoded only when
/// it changed since the last hand-over: once per run of messages received together.
struct Replay {
    guard: ReplayGuard,
    /// Changed since it was last handed to the driver.
    dirty: bool,
    /// How many times it was encoded.
    writes: u64,
}

impl Replay {
    fn load(store: &Store) -> Result<Self, StoreError> {
        let guard = store
            .get_meta(NS_NET, KEY_REPLAY)?
            .and_then(|b| postcard::from_bytes::<ReplayGuard>(&b).ok())
            .unwrap_or_default();
        Ok(Replay {
            guard,
            dirty: false,
            writes: 0,
        })
    }

    /// `cue_crypto::open` with this guard. The guard changes only when the envelope is
    /// accepted.
    fn open(
        &mut self,
        keys: &cue_crypto::WorkspaceKeys,
        me: &CryptoDeviceId,
        payload: &[u8],
        is_member: impl Fn(&CryptoDeviceId) -> bool,
    ) -> Result<Opened, OpenError> {
        let opened = cue_crypto::open(keys, me, &mut self.guard, payload, is_member)?;
        self.dirty = true;
        Ok(opened)
    }

    /// For changes other than accepting an envelope (disconnections).
    fn guard_mut(&mut self) -> &mut ReplayGuard {
        self.dirty = true;
        &mut self.guard
    }

    fn hand_over(&mut self, driver: &mut Driver) {
        if !self.dirty {
            return;
        }
        match postcard::to_allocvec(&self.guard) {
            Ok(bytes) => {
                driver.set_replay_state(bytes);
                self.dirty = false;
                self.writes += 1;
            }
            Err(error) => tracing::error!(%error, "cannot encode the replay guard"),
        }
    }
}

/// Which device each relay peer spoke for, and the peer to reach each device through.
///
/// Invariant: a route `device → peer` exists only while `peer` is known to speak for
/// `device`. A device may be known under two peers for a while (it reconnected before
/// the relay reported its old connection gone); the route is the latest, and when either
/// peer leaves the route is dropped, so direct messages go to the room (which reaches
/// the device too) until it speaks again.
#[derive(Default)]
struct Peers {
    device_of: HashMap<PeerId, CryptoDeviceId>,
    route: HashMap<cue_core::DeviceId, PeerId>,
}

impl Peers {
    /// `peer` sent an envelope signed by `device`.
    fn learn(&mut self, peer: PeerId, device: CryptoDeviceId) {
        if let Some(old) = self.device_of.insert(peer, device)
            && old != device
            && self.route.get(&core_id(&old)) == Some(&peer)
        {
            self.route.remove(&core_id(&old));
        }
        self.route.insert(core_id(&device), peer);
    }

    /// `peer` left the room: the device it spoke for, if any.
    fn left(&mut self, peer: PeerId) -> Option<CryptoDeviceId> {
        let device = self.device_of.remove(&peer)?;
        self.route.remove(&core_id(&device));
        Some(device)
    }

    fn route(&self, device: &cue_core::DeviceId) -> Option<PeerId> {
        self.route.get(device).copied()
    }

    fn clear(&mut self) {
        self.device_of.clear();
        self.route.clear();
    }
}

/// The allocators of our two streams: one for broadcasts (receivers check it for gaps)
/// and one shared by all direct streams (still strictly increasing on each).
struct Seqs {
    broadcast: SeqAllocator,
    direct: SeqAllocator,
}

impl Seqs {
    /// From the reservations stored, or the clock's microseconds when later: a store
    /// put back from a backup holds older reservations, and numbers counted from them
    /// had been used by the runs the backup missed: every peer would drop this device's
    /// messages as replays until the count passed them. (No device sends a message a
    /// microsecond; receivers take a jump ahead as they take a disconnection.)
    fn resume(store: &Store) -> Result<Self, StoreError> {
        let clock = u64::try_from(crate::driver::now_ms()).unwrap_or(0) * 1000;
        let broadcast = store
            .seq_reservation(SEQ_BROADCAST)?
            .unwrap_or(0)
            .max(clock);
        let direct = store.seq_reservation(SEQ_DIRECT)?.unwrap_or(0).max(clock);
        Ok(Seqs {
            broadcast: SeqAllocator::resume(broadcast),
            direct: SeqAllocator::resume(direct),
        })
    }

    /// The next number on `stream`, reserving a new block in the store first when the
    /// last one is used up; `None` (logged) if that fails: the message is not sent.
    fn next(&mut self, store: &mut Store, stream: &Stream) -> Option<u64> {
        let (alloc, name) = match stream {
            Stream::Broadcast => (&mut self.broadcast, SEQ_BROADCAST),
            Stream::Direct(_) => (&mut self.direct, SEQ_DIRECT),
        };
        loop {
            match alloc.allocate() {
                SeqNext::Ready(n) => return Some(n),
                SeqNext::PersistFirst(mark) => match store.reserve_seq(name, mark) {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cue_proto::Limits;

    /// Two devices of one workspace, and the first one's driver.
    struct Pair {
        _dirs: [tempfile::TempDir; 2],
        a: Workspace,
        b: Workspace,
        driver: Driver,
    }

    fn pair() -> Pair {
        let da = tempfile::tempdir().expect("tempdir");
        let db = tempfile::tempdir().expect("tempdir");
        let a = Workspace::init(da.path(), Some("ws://127.0.0.1:9"), Some("alice")).expect("a");
        let b = crate::workspace::joined_for_tests(&a, db.path(), "bob");
        let driver = Driver::open(&a, &a.config).expect("driver");
        Pair {
            _dirs: [da, db],
            a,
            b,
            driver,
        }
    }

    fn from(ws: &Workspace, ty: MessageType, seq: u64, plaintext: &[u8]) -> RelayEvent {
        let payload = Sealer::new(&ws.keys().expect("keys"), &ws.device)
            .seal(ty, Stream::Broadcast, seq, plaintext)
            .expect("seal");
        RelayEvent::Message {
            from: PeerId(7),
            direct: false,
            payload,
        }
    }

    fn admission(ws: &Workspace, seq: u64) -> RelayEvent {
        let a =
            Admission::create(&ws.lobby_room(), &ws.device, &ws.device_name()).expect("admission");
        from(ws, MessageType::Admission, seq, &a.encode())
    }

    fn stored_guard(driver: &Driver) -> ReplayGuard {
        let bytes = driver
            .store()
            .get_meta(NS_NET, KEY_REPLAY)
            .expect("read")
            .expect("a stored guard");
        postcard::from_bytes(&bytes).expect("decode")
    }

    #[test]
    fn a_run_of_messages_is_opened_in_order_and_the_guard_stored_once() {
        let mut p = pair();
        let (a, b, driver) = (&p.a, &p.b, &mut p.driver);
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut session =
            Session::resume(a, a.keys().expect("keys"), driver.store(), tx).expect("session");
        // Bob's messages are accepted only because his admission came first in the run.
        let run = vec![
            admission(b, 0),
            from(b, MessageType::Engine, 1, b"not an engine message"),
            from(b, MessageType::Engine, 2, b"nor this"),
        ];
        session.on_relay_events(driver, run).expect("handled");
        assert!(session.rejected().is_empty(), "{:?}", session.rejected());
        assert_eq!(session.replay_writes(), 1);
        // Committed with the admission's effects, before anything else was done.
        let bob = b.device.device_id();
        assert_eq!(
            stored_guard(driver).highest(&bob, &Stream::Broadcast),
            Some(2)
        );
        assert!(driver.engine().is_member(&core_id(&bob)));
        assert_eq!(session.peers.route(&core_id(&bob)), Some(PeerId(7)));
    }

    /// The member list keeps admissions; the engine takes an entry written by another
    /// member only if its admission is the entry's device's own, for this room, as signed.
    #[test]
    fn the_member_list_check_takes_only_a_devices_own_signed_admission() {
        let p = pair();
        let check = p.a.admission_check();
        let bob = Admission::create(&p.b.lobby_room(), &p.b.device, "bob").expect("admission");
        let bob_id = core_id(&bob.device);
        assert_eq!(check(&bob_id, &bob.encode()).as_deref(), Some("bob"));
        // Another device's entry holding Bob's admission, a renamed copy, garbage.
        assert_eq!(
            check(&core_id(&p.a.device.device_id()), &bob.encode()),
            None
        );
        let mut renamed = bob.clone();
        renamed.name = "eve".into();
        assert_eq!(check(&bob_id, &renamed.encode()), None);
        assert_eq!(check(&bob_id, b"bob"), None);
    }

    #[test]
    fn a_replay_after_a_restart_is_refused() {
        let mut p = pair();
        let (a, b, driver) = (&p.a, &p.b, &mut p.driver);
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut session = Session::resume(a, a.keys().expect("keys"), driver.store(), tx.clone())
            .expect("session");
        let first = admission(b, 5);
        session
            .on_relay_events(driver, vec![first.clone()])
            .expect("handled");
        drop(session);
        let mut again =
            Session::resume(a, a.keys().expect("keys"), driver.store(), tx).expect("session");
        let later = from(b, MessageType::Engine, 6, b"new");
        again
            .on_relay_events(driver, vec![first, later])
            .expect("handled");
        assert_eq!(again.rejected().get("replayed"), Some(&1));
        assert_eq!(again.rejected().len(), 1);
    }

    #[test]
    fn a_stranger_is_refused_once_and_nothing_is_stored_for_it() {
        let mut p = pair();
        let (a, b, driver) = (&p.a, &p.b, &mut p.driver);
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut session =
            Session::resume(a, a.keys().expect("keys"), driver.store(), tx).expect("session");
        let c_dir = tempfile::tempdir().expect("tempdir");
        let c = crate::workspace::joined_for_tests(a, c_dir.path(), "carol");
        let run = vec![
            admission(b, 0),
            from(&c, MessageType::Engine, 0, b"not admitted"),
        ];
        session.on_relay_events(driver, run).expect("handled");
        assert_eq!(session.rejected().get("not_member"), Some(&1));
        let carol = c.device.device_id();
        assert_eq!(
            stored_guard(driver).highest(&carol, &Stream::Broadcast),
            None
        );
    }

    /// We joined the room, where `peer` is.
    fn joined_with(peer: PeerId) -> RelayEvent {
        RelayEvent::Connected {
            you: PeerId(1),
            peers: vec![peer],
            limits: Limits::default(),
        }
    }

    /// Whether `envelope` (from the session's own device) holds an engine `Hello`
    /// asking for a reply.
    fn is_hello(ws: &Workspace, sender: &Workspace, envelope: &[u8]) -> bool {
        let Ok(opened) = cue_crypto::open_without_replay_check(
            &ws.keys().expect("keys"),
            &ws.device.device_id(),
            envelope,
            |_| true,
        ) else {
            return false;
        };
        opened.sender == sender.device.device_id()
            && opened.ty == MessageType::Engine
            && cue_core::wire::decode(&opened.plaintext).is_ok_and(|m| {
                m.items
                    .iter()
                    .any(|i| matches!(i, cue_core::wire::Item::Hello { reply: true, .. }))
            })
    }

    /// A member's admission held up behind its engine messages (a relay's rate limit
    /// made its client send it again later): those messages were dropped as a
    /// stranger's. Once it is admitted, we say hello to the room, so that both sides
    /// compare what they hold and pull what is missing, instead of waiting for the
    /// periodic hello (the flake of `robustness::a_rate_limited_relay_still_delivers_everything`).
    #[test]
    fn a_device_admitted_after_its_messages_were_dropped_is_greeted_again() {
        let mut p = pair();
        let (a, b, driver) = (&p.a, &p.b, &mut p.driver);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut session =
            Session::resume(a, a.keys().expect("keys"), driver.store(), tx).expect("session");
        session
            .on_relay_events(driver, vec![joined_with(PeerId(7))])
            .expect("handled");
        while rx.try_recv().is_ok() {}
        session
            .on_relay_events(driver, vec![from(b, MessageType::Engine, 1, b"a hello")])
            .expect("handled");
        assert_eq!(session.rejected().get("not_member"), Some(&1));
        session
            .on_relay_events(driver, vec![admission(b, 2)])
            .expect("handled");
        let mut greeted = false;
        while let Ok(cmd) = rx.try_recv() {
            if let RelayCommand::Broadcast(envelope) | RelayCommand::Direct(_, envelope) = cmd {
                greeted |= is_hello(b, a, &envelope);
            }
        }
        assert!(
            greeted,
            "no hello after the admission of a device whose messages were dropped"
        );
        // Once only: a later admission of the same device (a member now) asks nothing.
        session
            .on_relay_events(driver, vec![admission(b, 3)])
            .expect("handled");
        while let Ok(cmd) = rx.try_recv() {
            if let RelayCommand::Broadcast(envelope) | RelayCommand::Direct(_, envelope) = cmd {
                assert!(!is_hello(b, a, &envelope), "greeted twice");
            }
        }
    }

    #[test]
    fn connecting_sends_our_admission_before_anything_else() {
        let mut p = pair();
        let (a, b, driver) = (&p.a, &p.b, &mut p.driver);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut session =
            Session::resume(a, a.keys().expect("keys"), driver.store(), tx).expect("session");
        session
            .on_relay_events(driver, vec![joined_with(PeerId(2))])
            .expect("handled");
        assert!(session.connected());
        let Ok(RelayCommand::Broadcast(first)) = rx.try_recv() else {
            panic!("no admission broadcast first");
        };
        let opened = cue_crypto::open_without_replay_check(
            &b.keys().expect("keys"),
            &b.device.device_id(),
            &first,
            |_| false,
        )
        .expect("opens");
        assert_eq!(opened.ty, MessageType::Admission);
        assert_eq!(opened.sender, a.device.device_id());
    }

    #[test]
    fn routes_follow_the_latest_peer_and_never_point_at_a_peer_gone() {
        let (d1, d2) = (CryptoDeviceId([1; 32]), CryptoDeviceId([2; 32]));
        let mut peers = Peers::default();
        peers.learn(PeerId(1), d1);
        peers.learn(PeerId(2), d1); // reconnected before the old connection was reported
        assert_eq!(peers.route(&core_id(&d1)), Some(PeerId(2)));
        assert_eq!(peers.left(PeerId(1)), Some(d1));
        assert_eq!(peers.route(&core_id(&d1)), None);
        peers.learn(PeerId(2), d1);
        // A peer that now speaks for another device no longer routes to the first.
        peers.learn(PeerId(2), d2);
        assert_eq!(peers.route(&core_id(&d1)), None);
        assert_eq!(peers.route(&core_id(&d2)), Some(PeerId(2)));
        assert_eq!(peers.left(PeerId(2)), Some(d2));
        assert_eq!(peers.route(&core_id(&d2)), None);
    }
}
