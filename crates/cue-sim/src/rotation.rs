//! Rotations in the simulation: the daemon's rules for the secret generations (which
//! room a peer is in, when it moves, what it answers in the lobby) without the
//! cryptography.
//!
//! A record here is `sim-rotation | generation | parent | author | time | removed…`,
//! its hash a BLAKE3 of those bytes; the check stands for the daemon's signature check
//! (an author is whoever the bytes say, which is what a signature proves). A peer holds
//! a generation's secret when it made the rotation or a peer handed it over in the lobby
//! ([`cue_core::Engine::answer_hello`]); it is in the room of the secret it holds, and
//! messages reach only peers in the sender's room.

use std::sync::Arc;

use cue_core::{DeviceId, Generation, Input, LobbyAnswer, MakerCheck, RotationCheck, RotationMeta};

use crate::World;

const TAG: &[u8] = b"sim-rotation";

/// An encoded record.
pub fn record(
    generation: u32,
    parent: [u8; 32],
    author: DeviceId,
    at_ms: i64,
    removed: &[DeviceId],
) -> Vec<u8> {
    let mut b = TAG.to_vec();
    b.extend_from_slice(&generation.to_be_bytes());
    b.extend_from_slice(&parent);
    b.extend_from_slice(&author.0);
    b.extend_from_slice(&at_ms.to_be_bytes());
    for d in removed {
        b.extend_from_slice(&d.0);
    }
    b
}

/// The check every simulated engine gets.
pub fn check() -> RotationCheck {
    Arc::new(|bytes: &[u8]| {
        let rest = bytes.strip_prefix(TAG)?;
        if rest.len() < 4 + 32 + 32 + 8 || (rest.len() - 76) % 32 != 0 {
            return None;
        }
        let generation = u32::from_be_bytes(rest[..4].try_into().ok()?);
        let parent: [u8; 32] = rest[4..36].try_into().ok()?;
        let author = DeviceId(rest[36..68].try_into().ok()?);
        let at_ms = i64::from_be_bytes(rest[68..76].try_into().ok()?);
        let removed = rest[76..]
            .chunks(32)
            .map(|c| c.try_into().map(DeviceId))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(RotationMeta {
            generation,
            parent,
            rotated_by: author,
            at_ms,
            removed,
            hash: *blake3::hash(bytes).as_bytes(),
        })
    })
}

/// What peer 0, which made the simulated workspace, writes to name itself its maker
/// (the daemon's is a salt that hashes with its id to the workspace id).
pub fn maker_proof(device: DeviceId) -> Vec<u8> {
    let mut b = b"sim-maker".to_vec();
    b.extend_from_slice(&device.0);
    b
}

/// The check every simulated engine gets: only peer 0's proof names a maker.
pub fn maker_check() -> MakerCheck {
    let maker = crate::key_for(0).device();
    Arc::new(move |bytes: &[u8]| {
        let id = DeviceId(bytes.strip_prefix(b"sim-maker")?.try_into().ok()?);
        (id == maker).then_some(id)
    })
}

impl World {
    /// `peer` rotates the secret, removing `removed` (`cue sync rotate`, `remove`): a new
    /// secret it holds, and a record for its engine.
    pub fn rotate(&mut self, peer: usize, removed: &[usize]) {
        let removed: Vec<DeviceId> = removed.iter().map(|&i| self.peers[i].device).collect();
        let p = &mut self.peers[peer];
        let current = p.engine.generation();
        // As the daemon (`make_rotation`): on the current generation, held or not, but
        // not while the index is behind the one held, and never once removed.
        if (current.number < p.held.number && !p.engine.passed_over(p.held))
            || p.engine.removed_here().is_some()
        {
            return;
        }
        let now = self.now_ms + p.clock_offset_ms;
        let bytes = record(current.number + 1, current.winner, p.device, now, &removed);
        let hash = *blake3::hash(&bytes).as_bytes();
        p.secrets.insert(Generation {
            number: current.number + 1,
            winner: hash,
        });
        self.input(
            peer,
            Input::Rotations {
                records: vec![bytes],
            },
        );
    }

    /// The driver's rule after each call: when the engine's generation is one whose
    /// secret this peer has, it moves to that room (a reconnection: the engine sees the
    /// relay go and come back). A removed peer stays where it is.
    pub(crate) fn follow_generation(&mut self, peer: usize) {
        let p = &self.peers[peer];
        let current = p.engine.generation();
        if p.engine.removed_here().is_some() {
            return;
        }
        if current == p.held {
            // As the daemon (`Membership::follow`): removals of ours that lost are redone
            // whenever we hold the current secret, not only when we just moved (a losing
            // record can arrive later).
            self.redo_removals(peer);
            return;
        }
        if !p.secrets.contains(&current) {
            return;
        }
        let online = p.online;
        self.peers[peer].held = current;
        if online {
            self.disconnect(peer);
            self.connect(peer);
        }
        // The losing side of a concurrent removal removes again, now that it is here.
        self.redo_removals(peer);
    }

    fn redo_removals(&mut self, peer: usize) {
        let redo = self.peers[peer].engine.removals_to_redo();
        // As the daemon: not again from within the rotation that redoes them.
        if !redo.is_empty() && !self.peers[peer].redoing {
            let idx: Vec<usize> = redo.iter().filter_map(|d| self.index_of(*d)).collect();
            self.peers[peer].redoing = true;
            self.rotate(peer, &idx);
            self.peers[peer].redoing = false;
        }
    }

    /// One lobby exchange: every online peer says which generation it holds, and every
    /// other online peer answers by the engine's rule. Repeated until nothing changes
    /// (bounded).
    pub fn lobby(&mut self) {
        for _ in 0..8 {
            let before: Vec<Generation> = self.peers.iter().map(|p| p.held).collect();
            let known: Vec<usize> = self
                .peers
                .iter()
                .map(|p| p.engine.all_records().len())
                .collect();
            for i in 0..self.peers.len() {
                if !self.peers[i].online {
                    continue;
                }
                for j in 0..self.peers.len() {
                    if j == i || !self.peers[j].online {
                        continue;
                    }
                    self.hello(i, j);
                }
            }
            let after: Vec<Generation> = self.peers.iter().map(|p| p.held).collect();
            let known_after: Vec<usize> = self
                .peers
                .iter()
                .map(|p| p.engine.all_records().len())
                .collect();
            if before == after && known == known_after {
                return;
            }
        }
    }

    /// `asker` says hello in the lobby and `answerer` answers.
    fn hello(&mut self, asker: usize, answerer: usize) {
        let (theirs, from) = (self.peers[asker].held, self.peers[asker].device);
        let a = &self.peers[answerer];
        let held = a.held;
        let ans = a.engine.answer_hello(held, from, theirs);
        if std::env::var_os("CUE_SIM_TRACE_LOBBY").is_some() {
            eprintln!(
                "lobby: p{asker} (holds {}, engine {}) -> p{answerer} (holds {}, engine {}): {}",
                theirs.number,
                self.peers[asker].engine.generation().number,
                held.number,
                a.engine.generation().number,
                match &ans {
                    LobbyAnswer::Nothing => "nothing".to_string(),
                    LobbyAnswer::Records(r) => format!("{} records", r.len()),
                    LobbyAnswer::RecordsAndSecret(r) => format!("{} records + secret", r.len()),
                }
            );
        }
        let (records, secret) = match ans {
            LobbyAnswer::Nothing => return,
            LobbyAnswer::Records(r) => (r, None),
            LobbyAnswer::RecordsAndSecret(r) => (r, Some(held)),
        };
        if let Some(secret) = secret {
            self.peers[asker].secrets.insert(secret);
        }
        if !records.is_empty() {
            self.input(asker, Input::Rotations { records });
        } else {
            self.follow_generation(asker);
        }
    }
}
