//! What cue's tests and benchmarks share, written once: real `cue-relay` and `cue`
//! processes on 127.0.0.1, waits with deadlines, and a client of the relay's join
//! handshake.
//!
//! - [`Kit`], [`Relay`] and [`Peer`]: the binaries of the workspace (found next to the
//!   running test or benchmark, or named by `CUE_BIN` and `CUE_RELAY_BIN`), a relay
//!   process, and a device in a temporary folder driven by `cue` commands. Every process
//!   started here is stopped by its pid when its handle drops, so a failure leaves no
//!   daemon behind.
//! - [`wait_until`]: every wait polls a condition with a deadline, never a fixed sleep.
//! - [`join`]: the join handshake as a state machine, carried by [`sync_ws`] (blocking
//!   tungstenite) and `async_ws` (tokio-tungstenite, feature `async`); the relay's own
//!   tests and its load generator use the latter.
//! - [`Flooder`]: a raw client flooding a room of its own, the misbehaving peer of the
//!   flood tests.
//!
//! Everything fails with an error rather than a panic, so that a benchmark can say which
//! run failed; tests unwrap. The daemon has its own relay client (`cue-daemon`); nothing
//! here is used in production.

mod flood;
pub mod join;
mod kit;
mod peer;
mod process;
mod relay;
pub mod sync_ws;
mod wait;

#[cfg(feature = "async")]
pub mod async_ws;

pub use flood::{FloodReport, Flooder, Pace};
pub use join::{JoinError, Next, Welcome, room_key, room_of};
pub use kit::{Kit, binary, binary_dir};
pub use peer::Peer;
pub use process::{gone, kill};
pub use relay::{ANY_PORT, Relay, metric_value};
pub use wait::{poll_until, wait_until};
