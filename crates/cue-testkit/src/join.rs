//! The client's side of the relay's join handshake, without IO.
//!
//! A client opens a WebSocket to its room's path (`/v1/rooms/{room id}`); the relay may
//! ask for its auth token (`AuthRequired`), then sends a `Challenge` whose nonce the
//! client signs with the room key (`Proof`), and admits it with `Welcome`. [`Handshake`]
//! decides what to answer to each frame; [`crate::sync_ws`] and `crate::async_ws` carry
//! the frames over blocking tungstenite and over tokio. The daemon has its own client
//! (`cue-daemon`'s `relay_client.rs`), which also reconnects and resends: this one is for
//! the programs that poke at a relay.

use cue_proto::{ClientFrame, DecodeError, Limits, PeerId, RelayFrame, RoomId, decode, encode};
pub use ed25519_dalek::SigningKey;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Bytes, Message};

/// A room key made from `seed`: the same seed, the same room, so separate connections
/// (and separate processes) meet in it without sharing a secret.
pub fn room_key(seed: u64) -> SigningKey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    SigningKey::from_bytes(&bytes)
}

/// The room whose key is `key`: its id is the public key.
pub fn room_of(key: &SigningKey) -> RoomId {
    RoomId(key.verifying_key().to_bytes())
}

/// What a relay client reads next, of what matters to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Frame(RelayFrame),
    /// A binary message that is not a relay frame.
    Invalid(DecodeError),
    /// A close frame (its code and reason).
    Closed(Option<(u16, String)>),
    /// The connection ended without a close frame.
    Gone,
}

impl Next {
    /// What `message` says; `None` for what a relay client passes over (pings, pongs,
    /// text).
    pub fn from_message(message: Message) -> Option<Next> {
        match message {
            Message::Binary(bytes) => Some(match decode(&bytes) {
                Ok(frame) => Next::Frame(frame),
                Err(e) => Next::Invalid(e),
            }),
            Message::Close(frame) => {
                Some(Next::Closed(frame.map(|CloseFrame { code, reason }| {
                    (u16::from(code), reason.to_string())
                })))
            }
            _ => None,
        }
    }
}

/// A frame as the WebSocket message that carries it.
pub fn message(frame: &ClientFrame) -> Message {
    Message::Binary(Bytes::from(encode(frame)))
}

/// What the relay said when it admitted a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// This connection's id in the room.
    pub you: PeerId,
    /// The peers already in the room.
    pub peers: Vec<PeerId>,
    pub limits: Limits,
}

/// Why a join did not end in a [`Welcome`].
#[derive(Debug)]
pub enum JoinError {
    /// The relay answered something else than the next step of the handshake (a
    /// refusal, a close), or the connection ended.
    Refused(Next),
    /// Reading or writing failed (a read timeout among others).
    Transport(tungstenite::Error),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Refused(next) => write!(f, "the relay did not admit us: {next:?}"),
            JoinError::Transport(e) => write!(f, "the join handshake failed: {e}"),
        }
    }
}

impl std::error::Error for JoinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JoinError::Refused(_) => None,
            JoinError::Transport(e) => Some(e),
        }
    }
}

/// Where the handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing read yet: the relay asks for the token or challenges at once.
    Opened,
    /// The token is sent: a challenge must follow.
    TokenSent,
    /// The proof is sent: a welcome must follow.
    ProofSent,
}

/// What to do after a frame of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Send(ClientFrame),
    Admitted(Welcome),
}

/// The join handshake as a state machine: [`Handshake::step`] takes each frame the relay
/// sends and says what to answer, until it admits the client or sends anything else.
#[derive(Debug)]
pub struct Handshake<'a> {
    key: &'a SigningKey,
    token: Option<&'a str>,
    state: State,
}

impl<'a> Handshake<'a> {
    /// A join with the room key `key`, giving `token` if the relay asks for one (an empty
    /// one without it, which such a relay refuses).
    pub fn new(key: &'a SigningKey, token: Option<&'a str>) -> Handshake<'a> {
        Handshake {
            key,
            token,
            state: State::Opened,
        }
    }

    /// The answer to `frame`, or `Err(frame)` when it is not the handshake's next step
    /// (the relay refused, or broke the protocol).
    pub fn step(&mut self, frame: RelayFrame) -> Result<Step, RelayFrame> {
        match (self.state, frame) {
            (State::Opened, RelayFrame::AuthRequired) => {
                self.state = State::TokenSent;
                Ok(Step::Send(ClientFrame::Auth {
                    token: self.token.unwrap_or_default().to_owned(),
                }))
            }
            (State::Opened | State::TokenSent, RelayFrame::Challenge { nonce }) => {
                self.state = State::ProofSent;
                Ok(Step::Send(ClientFrame::Proof {
                    signature: cue_proto::sign_join_proof(self.key, &nonce),
                }))
            }
            (State::ProofSent, RelayFrame::Welcome { you, peers, limits }) => {
                Ok(Step::Admitted(Welcome { you, peers, limits }))
            }
            (_, other) => Err(other),
        }
    }

    /// One turn of a client driving the handshake over a WebSocket: what it read (`None`
    /// when the stream ended) becomes what to do next, or why the join failed.
    pub(crate) fn turn(
        &mut self,
        read: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<Turn, JoinError> {
        let next = match read {
            None => Next::Gone,
            Some(Err(e)) => return Err(JoinError::Transport(e)),
            Some(Ok(message)) => match Next::from_message(message) {
                None => return Ok(Turn::ReadAgain),
                Some(next) => next,
            },
        };
        let Next::Frame(frame) = next else {
            return Err(JoinError::Refused(next));
        };
        match self.step(frame) {
            Ok(Step::Send(reply)) => Ok(Turn::Send(message(&reply))),
            Ok(Step::Admitted(welcome)) => Ok(Turn::Admitted(welcome)),
            Err(other) => Err(JoinError::Refused(Next::Frame(other))),
        }
    }
}

/// What a client driving a [`Handshake`] does after a read.
#[derive(Debug)]
pub(crate) enum Turn {
    ReadAgain,
    Send(Message),
    Admitted(Welcome),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_is_answered_with_a_proof_that_verifies() {
        let key = room_key(1);
        let mut join = Handshake::new(&key, None);
        let nonce = [9u8; 32];
        let Ok(Step::Send(ClientFrame::Proof { signature })) =
            join.step(RelayFrame::Challenge { nonce })
        else {
            panic!("no proof");
        };
        assert!(cue_proto::verify_join_proof(
            &room_of(&key),
            &nonce,
            &signature
        ));
    }

    #[test]
    fn the_token_goes_first_when_asked_for() {
        let key = room_key(2);
        let mut join = Handshake::new(&key, Some("secret"));
        assert_eq!(
            join.step(RelayFrame::AuthRequired),
            Ok(Step::Send(ClientFrame::Auth {
                token: "secret".into()
            }))
        );
        assert!(matches!(
            join.step(RelayFrame::Challenge { nonce: [0; 32] }),
            Ok(Step::Send(ClientFrame::Proof { .. }))
        ));
        let welcome = RelayFrame::Welcome {
            you: PeerId(1),
            peers: vec![],
            limits: Limits::default(),
        };
        assert!(matches!(join.step(welcome), Ok(Step::Admitted(_))));
    }

    #[test]
    fn anything_out_of_order_is_a_refusal() {
        let key = room_key(3);
        let mut join = Handshake::new(&key, None);
        let welcome = RelayFrame::Welcome {
            you: PeerId(1),
            peers: vec![],
            limits: Limits::default(),
        };
        // A welcome before any proof is not an admission.
        assert_eq!(join.step(welcome.clone()), Err(welcome));
        let mut join = Handshake::new(&key, None);
        join.step(RelayFrame::Challenge { nonce: [0; 32] })
            .unwrap_or_else(|_| panic!("the challenge is answered"));
        assert_eq!(
            join.step(RelayFrame::AuthRequired),
            Err(RelayFrame::AuthRequired)
        );
    }

    #[test]
    fn the_same_seed_is_the_same_room() {
        assert_eq!(room_of(&room_key(7)), room_of(&room_key(7)));
        assert_ne!(room_of(&room_key(7)), room_of(&room_key(8)));
    }
}
