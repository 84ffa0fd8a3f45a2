//! The lobby: a second relay room per workspace where devices are admitted and catch up
//! with rotations (docs/security.md, "Removing a device and rotating the secret").
//!
//! Its keys come from the lobby secret, which never changes and which invites carry, so
//! anyone who holds or held an invite can be here: nothing here is trusted for being
//! here. What is said:
//!
//! - a joining device asks with its invite (`JoinRequest`, with a proof made from the
//!   invite secret); the device that made the invite checks it (`invites.rs`) and answers
//!   with the current secret sealed to the joining device's key, or with why not;
//! - every member says which secret generation it holds (`Hello`), on connecting, when
//!   it changes, and now and then; a member ahead answers by the engine's rule
//!   ([`cue_core::Engine::answer_hello`]): the rotation records, and the secret sealed to
//!   the asker if it is a member, so a device away during a rotation catches up, and a
//!   removed one learns it was removed.
//!
//! Envelopes here are sealed under the lobby's payload key and signed by the sender's
//! device key like any other; the replay guard is in memory, and sequence numbers start
//! from the clock at each start so that they never go back across restarts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cue_core::{Generation, LobbyAnswer};
use cue_crypto::{
    DeviceId, LobbyMessage, MessageType, ReplayGuard, RoomId, Sealer, Stream, WorkspaceKeys,
    WorkspaceSecret,
};
use cue_proto::PeerId;
use tokio::sync::mpsc;

use crate::relay_client::{RelayCommand, RelayEvent};
use crate::workspace::Workspace;

/// How often a member says hello anyway, and a joining device asks again.
const HELLO_EVERY: Duration = Duration::from_secs(30);
/// At most one hello a second when asked for by changes (a burst of records).
const HELLO_AT_MOST: Duration = Duration::from_secs(1);

/// Lobby senders whose replay windows are kept, at most (see `ReplayGuard::bound`).
const LOBBY_SENDERS_KEPT: usize = 4096;

/// Which connection each lobby sender was last heard on, for answers sent to it alone:
/// at most [`LOBBY_SENDERS_KEPT`], those heard from longest ago dropped first (anyone
/// holding the lobby's secret may send each message from a new key, and a route was kept
/// for each while its connection lasted). A device without a route is answered through
/// the whole lobby (sealed to it all the same); an honest one is heard again at its next
/// hello.
#[derive(Debug, Default)]
struct Routes {
    by_sender: HashMap<DeviceId, (PeerId, u64)>,
    heard: u64,
}

impl Routes {
    fn insert(&mut self, sender: DeviceId, peer: PeerId) {
        self.heard += 1;
        self.by_sender.insert(sender, (peer, self.heard));
        if self.by_sender.len() > LOBBY_SENDERS_KEPT
            && let Some(oldest) = self
                .by_sender
                .iter()
                .min_by_key(|(_, (_, heard))| *heard)
                .map(|(d, _)| *d)
        {
            self.by_sender.remove(&oldest);
        }
    }

    fn get(&self, sender: &DeviceId) -> Option<PeerId> {
        self.by_sender.get(sender).map(|(peer, _)| *peer)
    }

    /// The connection `peer` left: its senders' routes go.
    fn left(&mut self, peer: PeerId) {
        self.by_sender.retain(|_, (p, _)| *p != peer);
    }

    fn clear(&mut self) {
        self.by_sender.clear();
    }
}

/// What the lobby heard that the daemon must act on.
#[derive(Debug)]
pub(crate) enum Heard {
    /// The answer to our join request: the secret, sealed to this device, with the
    /// invite's proof.
    Admitted {
        generation: Generation,
        sealed: Vec<u8>,
        proof: [u8; 32],
        from: DeviceId,
    },
    /// A member handed us the secret of `generation`, sealed to this device.
    Secret {
        generation: Generation,
        sealed: Vec<u8>,
        from: DeviceId,
    },
    /// Rotation records, for the engine, and who sent them.
    Records {
        records: Vec<Vec<u8>>,
        from: DeviceId,
    },
    /// A device asks to join with one of our invites.
    JoinRequest {
        device: DeviceId,
        invite: cue_crypto::InviteId,
        name: String,
        proof: [u8; 32],
    },
    /// A device says which generation it holds.
    Hello {
        device: DeviceId,
        theirs: Generation,
    },
    /// The member who made our invite refused it.
    Refused(String),
}

pub(crate) struct Lobby {
    keys: WorkspaceKeys,
    room: RoomId,
    me: DeviceId,
    relay: mpsc::UnboundedSender<RelayCommand>,
    connected: bool,
    routes: Routes,
    guard: ReplayGuard,
    seq: u64,
    last_hello: Option<Instant>,
    /// A hello is owed as soon as one may be said ([`Lobby::owe_hello`]).
    owed: bool,
    /// Why the lobby could not be reached, while not connected (for status).
    pub problem: Option<String>,
    /// How many other connections the lobby has, as the relay says.
    present: usize,
    /// Lobby messages refused, by reason (for the log).
    pub rejected: HashMap<&'static str, u64>,
}

impl Lobby {
    pub fn new(ws: &Workspace, relay: mpsc::UnboundedSender<RelayCommand>) -> Lobby {
        let keys = ws.lobby.keys();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Lobby {
            room: keys.room_id(),
            keys,
            me: ws.device.device_id(),
            relay,
            connected: false,
            routes: Routes::default(),
            guard: ReplayGuard::new(),
            // A thousand numbers a millisecond: more than a device sends, and never
            // below what an earlier run used.
            seq: now.saturating_mul(1000),
            last_hello: None,
            owed: false,
            problem: None,
            present: 0,
            rejected: HashMap::new(),
        }
    }

    pub fn room(&self) -> RoomId {
        self.room
    }

    /// Takes in relay events; returns what was heard, in order, and whether the lobby
    /// just connected or a peer came (the daemon then says hello or asks again).
    pub fn on_events(&mut self, events: Vec<RelayEvent>) -> (Vec<Heard>, bool) {
        let mut heard = Vec::new();
        let mut greet = false;
        for event in events {
            match event {
                RelayEvent::Connected { peers, .. } => {
                    self.connected = true;
                    self.present = peers.len();
                    self.problem = None;
                    self.routes.clear();
                    greet = true;
                }
                RelayEvent::PeerJoined(_) => {
                    self.present += 1;
                    greet = true;
                }
                RelayEvent::PeerLeft(peer) => {
                    self.present = self.present.saturating_sub(1);
                    self.routes.left(peer);
                }
                RelayEvent::Disconnected { reason } => {
                    self.connected = false;
                    self.present = 0;
                    self.problem = Some(format!("connection lost: {reason}"));
                    self.routes.clear();
                    self.guard.on_disconnect();
                }
                RelayEvent::Unreachable { reason } => self.problem = Some(reason),
                RelayEvent::Message { from, payload, .. } => {
                    if let Some(h) = self.open(from, &payload) {
                        heard.push(h);
                    }
                }
            }
        }
        (heard, greet)
    }

    fn open(&mut self, from: PeerId, payload: &[u8]) -> Option<Heard> {
        let opened =
            match cue_crypto::open(&self.keys, &self.me, &mut self.guard, payload, |_| true) {
                Ok(o) => o,
                Err(e) => {
                    *self.rejected.entry(e.kind()).or_default() += 1;
                    return None;
                }
            };
        // Anyone holding the lobby's secret may send, each message from a new key: a
        // window each, kept for good, grew memory without bound.
        self.guard.bound(LOBBY_SENDERS_KEPT);
        if opened.ty != MessageType::Lobby {
            *self.rejected.entry("not_lobby").or_default() += 1;
            return None;
        }
        let sender = opened.sender;
        self.routes.insert(sender, from);
        let msg = match LobbyMessage::decode(&opened.plaintext) {
            Ok(m) => m,
            Err(error) => {
                tracing::debug!(%error, "a lobby message that does not decode");
                *self.rejected.entry("bad_lobby_message").or_default() += 1;
                return None;
            }
        };
        Some(match msg {
            LobbyMessage::JoinRequest {
                invite,
                name,
                proof,
            } => Heard::JoinRequest {
                device: sender,
                invite,
                name,
                proof,
            },
            LobbyMessage::Hello { generation, winner } => Heard::Hello {
                device: sender,
                theirs: Generation {
                    number: generation,
                    winner,
                },
            },
            LobbyMessage::Records { records } => Heard::Records {
                records,
                from: sender,
            },
            LobbyMessage::Refused { reason, .. } => Heard::Refused(reason),
            LobbyMessage::Secret {
                generation,
                winner,
                sealed,
            } => Heard::Secret {
                generation: Generation {
                    number: generation,
                    winner,
                },
                sealed,
                from: sender,
            },
            LobbyMessage::Admitted {
                generation,
                winner,
                sealed,
                proof,
                ..
            } => Heard::Admitted {
                generation: Generation {
                    number: generation,
                    winner,
                },
                sealed,
                proof,
                from: sender,
            },
        })
    }

    /// Seals and sends a lobby message, to one device or to everyone here.
    pub fn send(&mut self, ws: &Workspace, to: Option<DeviceId>, msg: &LobbyMessage) {
        if !self.connected {
            return;
        }
        self.seq += 1;
        let stream = to.map_or(Stream::Broadcast, Stream::Direct);
        let sealed = Sealer::new(&self.keys, &ws.device).seal(
            MessageType::Lobby,
            stream,
            self.seq,
            &msg.encode(),
        );
        let envelope = match sealed {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(%error, "cannot seal a lobby message");
                return;
            }
        };
        let cmd = match to.and_then(|d| self.routes.get(&d)) {
            Some(peer) => RelayCommand::Direct(peer, envelope),
            None => RelayCommand::Broadcast(envelope),
        };
        let _ = self.relay.send(cmd);
    }

    /// Says which generation we hold (or asks to join), unless we did less than a
    /// second ago; `periodic` only when [`HELLO_EVERY`] has passed.
    pub fn due(&mut self, periodic: bool) -> bool {
        if !self.connected {
            return false;
        }
        let wait = if periodic && !self.owed {
            HELLO_EVERY
        } else {
            HELLO_AT_MOST
        };
        if self.last_hello.is_some_and(|t| t.elapsed() < wait) {
            return false;
        }
        self.last_hello = Some(Instant::now());
        self.owed = false;
        true
    }

    /// A hello must be said even if one was said less than [`HELLO_AT_MOST`] ago: the
    /// next [`Lobby::due`] after that second says it (the periodic one would wait
    /// [`HELLO_EVERY`]).
    pub fn owe_hello(&mut self) {
        self.owed = true;
    }

    /// Forget when we last said hello: the next [`Lobby::due`] says it.
    pub fn hello_soon(&mut self) {
        self.last_hello = None;
    }

    pub fn close(&self) {
        let _ = self.relay.send(RelayCommand::Close);
    }

    /// Connected, with no other connection in the lobby.
    pub fn alone(&self) -> bool {
        self.connected && self.present == 0
    }

    /// Drops the connection and connects again (see `alone.rs`).
    pub fn reconnect(&self) {
        let _ = self.relay.send(RelayCommand::Reconnect);
    }
}

/// The message answering a member's hello by the engine's rule, sealing the secret we
/// hold to it when the rule says so.
pub(crate) fn answer(
    answer: LobbyAnswer,
    to: &DeviceId,
    room: &RoomId,
    held: Generation,
    secret: Option<&WorkspaceSecret>,
) -> Vec<LobbyMessage> {
    match answer {
        LobbyAnswer::Nothing => Vec::new(),
        LobbyAnswer::Records(records) => records_message(records),
        LobbyAnswer::RecordsAndSecret(records) => {
            let mut out = records_message(records);
            if let Some(secret) = secret {
                match cue_crypto::seal_secret(to, room, held.number, held.winner, secret) {
                    Ok(m) => out.push(m),
                    Err(error) => tracing::warn!(%error, "cannot seal the secret to a member"),
                }
            }
            out
        }
    }
}

fn records_message(records: Vec<Vec<u8>>) -> Vec<LobbyMessage> {
    if records.is_empty() {
        return Vec::new();
    }
    records
        .chunks(cue_crypto::MAX_LOBBY_RECORDS)
        .map(|c| LobbyMessage::Records {
            records: c.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender sending each message from a new key kept a route for each as long as its
    /// connection lasted: now at most [`LOBBY_SENDERS_KEPT`], and an honest device heard
    /// since keeps its own.
    #[test]
    fn routes_are_bounded_and_keep_the_senders_heard_from_last() {
        let mut routes = Routes::default();
        let honest = DeviceId([7; 32]);
        routes.insert(honest, PeerId(1));
        for i in 0..3 * LOBBY_SENDERS_KEPT as u64 {
            let mut key = [0; 32];
            key[..8].copy_from_slice(&i.to_le_bytes());
            key[31] = 1;
            routes.insert(DeviceId(key), PeerId(2));
            if i % 1000 == 0 {
                // Its periodic hello.
                routes.insert(honest, PeerId(1));
            }
            assert!(routes.by_sender.len() <= LOBBY_SENDERS_KEPT);
        }
        assert_eq!(routes.by_sender.len(), LOBBY_SENDERS_KEPT);
        assert_eq!(routes.get(&honest), Some(PeerId(1)));
        routes.left(PeerId(2));
        assert_eq!(routes.by_sender.len(), 1);
        assert_eq!(routes.get(&honest), Some(PeerId(1)));
    }
}
