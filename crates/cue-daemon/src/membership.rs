//! This device's standing in the workspace: the secret generation it holds (and so the
//! room it is in), being admitted, being removed, and rotating the secret
//! (docs/security.md, "Removing a device and rotating the secret").
//!
//! The engine decides which generation is current from the rotation records in the
//! index ([`cue_core::Engine::generation`]); this module holds the secrets, follows the
//! engine after every event (moving to the room of the current generation once it holds
//! its secret, asking in the lobby when it does not), answers the lobby, and makes
//! rotations. The rules are the simulation's (`cue-sim/src/rotation.rs`).

use std::collections::HashMap;

use cue_core::{DeviceId as CoreId, Generation, Input, Removal};
use cue_crypto::{
    DeviceId, InviteSecret, LobbyMessage, RotationRecord, WorkspaceKeys, WorkspaceSecret,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::driver::{Driver, DriverError, now_ms};
use crate::invites;
use crate::lobby::{self, Heard, Lobby};
use crate::relay_client::{self, RelayEvent, RelayParams};
use crate::session::Session;
use crate::workspace::Workspace;

/// At most this many secrets handed over ahead of the records that make them current.
const MAX_PENDING_SECRETS: usize = 8;

/// Why a rotation cannot be made now.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("this device is not admitted to the workspace yet: it holds no secret to rotate")]
    NotAdmitted,
    #[error("this device was removed from the workspace")]
    Removed,
    #[error(
        "this device is catching up with a rotation made elsewhere; try again once `cue sync status` shows it connected"
    )]
    CatchingUp,
    #[error(
        "a rotation removes at most {max} devices at a time; {0} were asked for",
        max = cue_crypto::MAX_REMOVED
    )]
    TooMany(usize),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Workspace(#[from] crate::workspace::WorkspaceError),
}

/// A room's relay client, started for the main loop to take.
pub(crate) type Room = (mpsc::UnboundedReceiver<RelayEvent>, JoinHandle<()>);

pub(crate) struct Membership {
    pub lobby: Lobby,
    held: Generation,
    secret: Option<WorkspaceSecret>,
    /// Secrets handed over (or made here) for generations the engine does not take for
    /// current yet.
    pending: HashMap<Generation, WorkspaceSecret>,
    joining: Option<InviteSecret>,
    refused: Option<String>,
    removed: Option<Removal>,
    params: RelayParams,
    /// A client for a new room, for the main loop to swap in.
    pub new_room: Option<Room>,
    lobby_alone: crate::alone::Alone,
    /// Set while removals that lost are made again: the `follow` of that rotation does
    /// not start another (if the record did not take, it would go round for ever).
    redoing: bool,
}

/// Where this device stands, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// `member`, `waiting_for_admission`, `refused` or `removed`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub generation: u32,
}

impl Membership {
    /// Starts the lobby's relay client; the room's is started by the caller from
    /// [`Membership::room_keys`] (there is none while waiting to be admitted).
    pub fn start(ws: &Workspace, auth_token: String) -> (Membership, Room) {
        let (lobby_tx, lobby_cmds) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let params = RelayParams {
            url: ws.config.sync.relay.url.clone(),
            auth_token,
            keys: ws.lobby.keys(),
        };
        let task = tokio::spawn(relay_client::run(params.clone(), events_tx, lobby_cmds));
        let membership = Membership {
            lobby: Lobby::new(ws, lobby_tx),
            held: ws.generation,
            secret: ws.secret.clone(),
            // A rotation of ours recorded before a crash, its secret not held yet.
            pending: ws
                .next_secret()
                .filter(|(g, _)| g.number > ws.generation.number)
                .into_iter()
                .collect(),
            joining: ws.joining.clone(),
            refused: ws.join_refused(),
            removed: None,
            params,
            new_room: None,
            lobby_alone: crate::alone::Alone::new(crate::alone::jitter()),
            redoing: false,
        };
        (membership, (events, task))
    }

    /// The keys of the room to be in, if this device holds a secret.
    pub fn room_keys(&self) -> Option<WorkspaceKeys> {
        self.secret.as_ref().map(WorkspaceKeys::derive)
    }

    /// The relay client of a room.
    pub fn connect_room(
        &self,
        keys: WorkspaceKeys,
        commands: mpsc::UnboundedReceiver<relay_client::RelayCommand>,
    ) -> Room {
        let (events_tx, events) = mpsc::unbounded_channel();
        let params = RelayParams {
            keys,
            ..self.params.clone()
        };
        (
            events,
            tokio::spawn(relay_client::run(params, events_tx, commands)),
        )
    }

    pub fn standing(&self) -> Standing {
        let generation = self.held.number;
        if let Some(r) = &self.removed {
            return Standing {
                state: "removed",
                reason: Some(format!(
                    "removed from the workspace at {} (it keeps the files it had; nothing new reaches it)",
                    crate::control::rfc3339(r.at_ms)
                )),
                generation,
            };
        }
        if let Some(reason) = &self.refused {
            return Standing {
                state: "refused",
                reason: Some(format!(
                    "the invite was refused: {reason}; ask a member for a new invite and join with it"
                )),
                generation,
            };
        }
        if self.joining.is_some() {
            return Standing {
                state: "waiting_for_admission",
                reason: Some(
                    "waiting for the member who made the invite to be online and admit this device"
                        .into(),
                ),
                generation,
            };
        }
        Standing {
            state: "member",
            reason: None,
            generation,
        }
    }

    /// Whether this device holds a secret (a member that was admitted, not removed).
    pub fn admitted(&self) -> bool {
        self.secret.is_some() && self.removed.is_none()
    }

    /// Why the relay cannot be reached, when this device is not in a room (waiting to
    /// be admitted): the lobby's connection is the one that tells.
    pub fn relay_problem(&self) -> Option<String> {
        if self.joining.is_some() {
            self.lobby.problem.clone()
        } else {
            None
        }
    }

    /// Lobby events: what was heard is handled, then the engine followed.
    pub fn on_lobby(
        &mut self,
        ws: &Workspace,
        driver: &mut Driver,
        session: &mut Session<'_>,
        events: Vec<RelayEvent>,
    ) -> Result<(), DriverError> {
        let (heard, greet) = self.lobby.on_events(events);
        if greet {
            self.lobby.hello_soon();
            self.greet(ws);
        }
        for h in heard {
            self.heard(ws, driver, session, h)?;
        }
        self.follow(ws, driver, session)
    }

    /// Now and then: say hello again (or ask again to join), and reconnect the lobby if
    /// it is alone there while someone should be (`alone.rs`). `others`: whether the
    /// workspace has other members.
    pub fn tick(&mut self, ws: &Workspace, others: bool) {
        if self.lobby.due(true) {
            self.say(ws);
        }
        let expected =
            self.removed.is_none() && self.refused.is_none() && (others || self.joining.is_some());
        let j = crate::alone::jitter();
        if !self.lobby.alone() {
            self.lobby_alone.met(j);
        }
        if self
            .lobby_alone
            .check(std::time::Instant::now(), self.lobby.alone(), expected, j)
        {
            tracing::info!("alone in the lobby while others should be there: connecting again");
            self.lobby.reconnect();
        }
    }

    fn greet(&mut self, ws: &Workspace) {
        if self.lobby.due(false) {
            self.say(ws);
        }
    }

    /// A join request while waiting to be admitted; our generation otherwise.
    fn say(&mut self, ws: &Workspace) {
        if self.removed.is_some() || self.refused.is_some() {
            return;
        }
        let msg = match &self.joining {
            Some(invite) => {
                let name = ws.device_name();
                LobbyMessage::JoinRequest {
                    invite: invite.id(),
                    proof: invite.proof(&self.lobby.room(), &ws.device.device_id(), &name),
                    name,
                }
            }
            None => LobbyMessage::Hello {
                generation: self.held.number,
                winner: self.held.winner,
            },
        };
        self.lobby.send(ws, None, &msg);
    }

    fn heard(
        &mut self,
        ws: &Workspace,
        driver: &mut Driver,
        session: &mut Session<'_>,
        heard: Heard,
    ) -> Result<(), DriverError> {
        let room = self.lobby.room();
        match heard {
            Heard::JoinRequest {
                device,
                invite,
                name,
                proof,
            } => {
                let Some(secret) = self.secret.clone() else {
                    return Ok(());
                };
                let ask = invites::Ask {
                    invite: &invite,
                    device: &device,
                    name: &name,
                    proof: &proof,
                };
                let verdict = match invites::admit(
                    driver.store_mut(),
                    &room,
                    &ask,
                    now_ms(),
                    self.held.number,
                ) {
                    Ok(v) => v,
                    Err(error) => {
                        tracing::warn!(%error, "cannot check an invite");
                        return Ok(());
                    }
                };
                match verdict {
                    None => {}
                    Some(Ok(invite_secret)) => {
                        match cue_crypto::seal_admission(
                            &invite_secret,
                            &device,
                            &room,
                            self.held.number,
                            self.held.winner,
                            &secret,
                        ) {
                            Ok(msg) => self.lobby.send(ws, Some(device), &msg),
                            Err(error) => tracing::warn!(%error, "cannot seal the secret"),
                        }
                        tracing::info!(device = %device.short(), %name, "admitted a device with our invite");
                        let sends = driver.input(
                            now_ms(),
                            Input::Admitted {
                                device: CoreId(device.0),
                            },
                        )?;
                        session.send_all(driver, sends);
                    }
                    Some(Err(reason)) => {
                        tracing::info!(device = %device.short(), %reason, "refused a join request");
                        self.lobby.send(
                            ws,
                            Some(device),
                            &LobbyMessage::Refused { invite, reason },
                        );
                    }
                }
            }
            Heard::Hello { device, theirs } => {
                if self.secret.is_none() || self.removed.is_some() {
                    return Ok(());
                }
                // A member ahead of us (it moved to a new secret's room while we were
                // not in the old one, so the record never reached us): say where we
                // are, and it answers with the records and the secret. Without this we
                // would wait for our periodic hello, 30 s.
                if theirs.number > self.held.number
                    && driver.engine().knows_member(&CoreId(device.0))
                {
                    tracing::info!(from = %device.short(), generation = theirs.number, "a member is ahead of our secret: asking it");
                    self.lobby.owe_hello();
                    self.greet(ws);
                }
                let answer = driver
                    .engine()
                    .answer_hello(self.held, CoreId(device.0), theirs);
                for msg in lobby::answer(answer, &device, &room, self.held, self.secret.as_ref()) {
                    self.lobby.send(ws, Some(device), &msg);
                }
            }
            // Only from devices that are or were members, and not removed for good:
            // anyone holding the lobby's secret (an old invite's holder) is in the
            // lobby. A member that a removed device's own branch removes is heard (a
            // device that met that branch first learns the workspace's from it); the
            // records themselves are judged by the chain's rules (docs/security.md).
            Heard::Records { records, from } => {
                if !driver.engine().takes_records_from(&CoreId(from.0)) {
                    tracing::debug!(from = %from.short(), "rotation records from a non-member: ignored");
                    return Ok(());
                }
                let sends = driver.input(now_ms(), Input::Rotations { records })?;
                session.send_all(driver, sends);
            }
            Heard::Admitted {
                generation,
                sealed,
                proof,
                from,
            } => {
                // Only the answer to our own request, proven with our invite's secret:
                // anyone else in the lobby could seal a secret of its own to us.
                let Some(invite) = self.joining.clone() else {
                    return Ok(());
                };
                let secret = match cue_crypto::open_admission(
                    &ws.device,
                    &invite,
                    &room,
                    generation.number,
                    &generation.winner,
                    &sealed,
                    &proof,
                ) {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::warn!(%error, from = %from.short(), "an admission without our invite's proof: ignored");
                        return Ok(());
                    }
                };
                tracing::info!(from = %from.short(), generation = generation.number, "admitted to the workspace");
                let by = CoreId(from.0);
                if let Err(error) = ws.set_admitted_by(&by) {
                    tracing::warn!(%error, "cannot record who admitted us");
                }
                driver.trust(by);
                self.hold(ws, driver, session, generation, secret)?;
            }
            Heard::Secret {
                generation,
                sealed,
                from,
            } => {
                if self.joining.is_some() {
                    return Ok(());
                }
                let secret = match cue_crypto::open_secret(
                    &ws.device,
                    &room,
                    generation.number,
                    &generation.winner,
                    &sealed,
                ) {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::debug!(%error, "a sealed secret that does not open");
                        return Ok(());
                    }
                };
                if driver.engine().knows_member(&CoreId(from.0))
                    && self.pending.len() < MAX_PENDING_SECRETS
                {
                    self.pending.insert(generation, secret);
                }
            }
            Heard::Refused(reason) => {
                if self.joining.is_some() && self.refused.is_none() {
                    tracing::warn!(%reason, "our invite was refused");
                    if let Err(error) = ws.set_join_refused(&reason) {
                        tracing::warn!(%error, "cannot record the refusal");
                    }
                    self.refused = Some(reason);
                }
            }
        }
        Ok(())
    }

    /// After any event: where the engine says the workspace is, go (see the module docs).
    pub fn follow(
        &mut self,
        ws: &Workspace,
        driver: &mut Driver,
        session: &mut Session<'_>,
    ) -> Result<(), DriverError> {
        if self.joining.is_some() || self.removed.is_some() {
            return Ok(());
        }
        if let Some(r) = driver.engine().removed_here() {
            tracing::warn!(by = %r.by.short(), "this device was removed from the workspace");
            self.removed = Some(r);
            self.secret = None;
            self.pending.clear();
            session.leave(driver)?;
            self.lobby.close();
            return Ok(());
        }
        let current = driver.engine().generation();
        // Behind what we hold (a device just admitted, whose index has not caught up):
        // wait for the records to arrive. Unless the chain passed over the generation we
        // hold (a removal for good voided its branch: docs/security.md): then to the
        // current one, older as it is.
        let passed = driver.engine().passed_over(self.held);
        if current == self.held || (current.number < self.held.number && !passed) {
            let redo = driver.engine().removals_to_redo();
            if current == self.held && !redo.is_empty() && !self.redoing {
                let removed: Vec<DeviceId> = redo.iter().map(|d| DeviceId(d.0)).collect();
                tracing::info!(
                    n = removed.len(),
                    "our removal lost to a concurrent rotation: removing again"
                );
                self.redoing = true;
                let done = self.rotate(ws, driver, session, &removed);
                self.redoing = false;
                if let Err(error) = done {
                    tracing::warn!(%error, "cannot rotate again");
                }
            }
            return Ok(());
        }
        // (A generation held before: the chain came back to it, docs/security.md 3b.)
        match self
            .pending
            .remove(&current)
            .or_else(|| ws.past_secret(current))
        {
            Some(secret) => self.hold(ws, driver, session, current, secret),
            None => {
                // Ask: a member ahead answers with the secret sealed to us.
                self.greet(ws);
                Ok(())
            }
        }
    }

    /// Holds `generation`'s secret from now on, and moves to its room.
    fn hold(
        &mut self,
        ws: &Workspace,
        driver: &mut Driver,
        session: &mut Session<'_>,
        generation: Generation,
        secret: WorkspaceSecret,
    ) -> Result<(), DriverError> {
        if let Err(error) = ws.hold_secret(&secret, generation) {
            // Without it on disk the next start would be in the old room: keep trying.
            tracing::error!(%error, "cannot store the new workspace secret");
            self.pending.insert(generation, secret);
            return Ok(());
        }
        let keys = WorkspaceKeys::derive(&secret);
        self.held = generation;
        self.secret = Some(secret);
        self.joining = None;
        // (Not the secrets of generations passed over: they would fill the slots.)
        self.pending
            .retain(|g, _| g.number > generation.number && !driver.engine().passed_over(*g));
        let (tx, commands) = mpsc::unbounded_channel();
        let room = self.connect_room(keys.clone(), commands);
        session.switch(driver, keys, tx)?;
        self.new_room = Some(room);
        tracing::info!(
            generation = generation.number,
            "moved to the room of the current secret"
        );
        self.lobby.hello_soon();
        self.greet(ws);
        Ok(())
    }

    /// Rotates the workspace secret, removing `removed` (`cue sync rotate`, `remove`).
    pub fn rotate(
        &mut self,
        ws: &Workspace,
        driver: &mut Driver,
        session: &mut Session<'_>,
        removed: &[DeviceId],
    ) -> Result<Generation, RotateError> {
        if self.removed.is_some() {
            return Err(RotateError::Removed);
        }
        if self.secret.is_none() {
            return Err(RotateError::NotAdmitted);
        }
        let (generation, secret, sends) = make_rotation(ws, driver, self.held, removed)?;
        // The record goes to the old room first, then we move.
        session.send_all(driver, sends);
        self.pending.insert(generation, secret);
        self.follow(ws, driver, session)?;
        Ok(generation)
    }
}

/// Makes a rotation record and a new secret, and gives the record to the engine; the
/// caller holds the secret once the engine takes the record for current (at once, but
/// for a record of the same generation seen meanwhile). Used by the daemon and, when
/// none runs, by the command line.
pub fn make_rotation(
    ws: &Workspace,
    driver: &mut Driver,
    held: Generation,
    removed: &[DeviceId],
) -> Result<(Generation, WorkspaceSecret, Vec<crate::driver::Outgoing>), RotateError> {
    if driver.engine().removed_here().is_some() {
        return Err(RotateError::Removed);
    }
    let current = driver.engine().generation();
    // On the current generation, held here or not: a member that made a record and
    // keeps its secret to itself (or went away for good right after) would otherwise
    // leave nobody able to rotate, and so to remove it. Not while the index is behind
    // the generation held (a device just admitted): the record would lose to it.
    if current.number < held.number && !driver.engine().passed_over(held) {
        return Err(RotateError::CatchingUp);
    }
    // (A record removing more would be refused by every member, this one included.)
    if removed.len() > cue_crypto::MAX_REMOVED {
        return Err(RotateError::TooMany(removed.len()));
    }
    let secret = WorkspaceSecret::generate().map_err(|e| RotateError::Random(e.to_string()))?;
    let record = RotationRecord::create(
        ws.workspace,
        current.number + 1,
        current.winner,
        &ws.device,
        now_ms(),
        removed,
    );
    let generation = Generation {
        number: current.number + 1,
        winner: record.hash(),
    };
    ws.keep_next_secret(&secret, generation)?;
    let sends = driver.input(
        now_ms(),
        Input::Rotations {
            records: vec![record.encode()],
        },
    )?;
    Ok((generation, secret, sends))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cue sync remove` records a rotation, and the device stops before it holds the
    /// new secret (a crash or a power cut a moment after): the secret of the generation
    /// the workspace is now at is still on disk, and the next start takes it up. Lost,
    /// nobody would hold it, and no member could rotate again.
    #[tokio::test]
    async fn a_rotation_recorded_keeps_its_secret_until_it_is_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws =
            Workspace::init(dir.path(), Some("ws://127.0.0.1:9"), Some("alice")).expect("init");
        let before = ws.generation;
        let mut driver = Driver::open(&ws, &ws.config).expect("driver");
        let (generation, secret, _sends) =
            make_rotation(&ws, &mut driver, ws.generation, &[]).expect("rotate");
        assert_eq!(driver.engine().generation(), generation, "recorded");
        // No hold, no clean stop.
        std::mem::forget(driver);

        let again = Workspace::open(dir.path()).expect("open");
        assert_eq!(again.generation, before, "not held yet");
        let (kept, kept_secret) = again.next_secret().expect("kept before the record");
        assert_eq!(kept, generation);
        assert_eq!(kept_secret.as_bytes(), secret.as_bytes());
        let (membership, (_events, task)) = Membership::start(&again, String::new());
        assert!(
            membership.pending.contains_key(&generation),
            "a start takes it up, to hold once the engine takes the record for current"
        );
        task.abort();

        again.hold_secret(&kept_secret, kept).expect("hold");
        let held = Workspace::open(dir.path()).expect("open");
        assert_eq!(held.generation, generation);
        assert!(held.next_secret().is_none(), "gone once held");
    }
}
