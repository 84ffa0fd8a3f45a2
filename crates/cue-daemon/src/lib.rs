//! The cue daemon's IO: everything between the sans-IO sync engine and the machine.
//!
//! The engine (`cue-core`) takes inputs and returns effects; this crate supplies the
//! inputs from the disk and carries the effects out, safely and durably:
//!
//! - [`paths`]: [`WorkspacePath`], the only form in which a path from a peer or the disk
//!   travels, and the list of names cue never syncs;
//! - [`fsio`]: reads and atomic, durable writes confined to the workspace by the kernel
//!   (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), with batch durability for
//!   many files at once and content preconditions so a local edit is never overwritten;
//! - [`ignore_rules`]: `.cueignore` plus the never-synced names, shared by scan and watcher;
//! - [`scan`]: the start-up (and after-overflow) inventory with blake3 hashes;
//! - [`watch`]: notify events, debounced and translated into changes of synced paths;
//! - [`store`]: the crash-safe SQLite store of opaque document bytes, engine state,
//!   sequence-number reservations and the activity log;
//! - [`lock`]: the single-daemon lock and the control socket's location;
//! - [`config`] and [`workspace`]: `.cuedeck/` with its config, keys and store;
//! - [`driver`]: the engine, store and folder tied together (effects carried out in the
//!   engine's order, start-up scan, echo suppression, the mass-deletion guard);
//! - [`relay_client`]: the WebSocket to the relay room, reconnecting with backoff;
//! - `session`: the network session: sealing and opening envelopes, admissions, the
//!   peers' routes, our sequence numbers and the replay guard (stored with the driver's
//!   transactions);
//! - [`membership`]: the secret generation held (the room), admission through the lobby
//!   (`lobby`, [`invites`]), removal and rotation;
//! - [`control`]: the control socket's requests and the `status --json` document;
//! - [`run`]: the daemon's main loop, and starting it in the background.
//!
//! The building blocks are blocking, thread-based IO; the main loop (tokio) owns the
//! driver and the session in one task, bridges the watcher's channel from a thread, and
//! runs the relay client and the control socket as tasks. Only the main loop's task holds
//! secrets beyond the room key; the relay client deals in frames.

pub mod alone;
pub mod config;
pub mod control;
mod debounce;
pub mod devices;
pub mod driver;
pub mod fsio;
mod host;
pub mod ignore_rules;
pub mod invites;
mod lobby;
pub mod lock;
pub mod membership;
mod memory;
pub mod paths;
pub mod relay_client;
mod relay_outbox;
pub mod run;
pub mod scan;
mod session;
pub mod store;
pub mod watch;
pub mod workspace;

pub use fsio::{
    BatchOutcome, Expect, FileKind, FileStat, FsError, Outcome, WorkspaceFs, WriteBatch,
};
pub use ignore_rules::{IgnoreError, IgnoreRules};
pub use lock::{DaemonLock, LockError, SocketPathError, control_socket_path, prepare_socket_dir};
pub use paths::{PathError, WorkspacePath, is_never_synced};
pub use scan::{ScanError, ScanOptions, ScanReport, ScannedFile, SkipReason, Skipped, scan};
pub use store::{
    ActivityEntry, ActivityKind, ActivityRecord, ChunkMark, Loaded, Store, StoreError, StoreTx,
};
pub use watch::{WatchConfig, WatchError, WatchEvent, Watcher};
