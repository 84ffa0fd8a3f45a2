//! The cue sync engine: a deterministic state machine with automerge inside.
//!
//! It does no IO: the driver (the daemon, or the simulation) feeds it [`Input`]s with the
//! time, hands it a [`DocStore`] to read stored documents from, and carries out the
//! [`Effect`]s it returns (persist, write or remove a file, send a message, log an
//! activity). It reads no clock and no randomness: actor ids come from the device id and
//! an epoch the driver provides, file ids from hashes of what is being created. The same
//! inputs give the same effects, which is what lets `cue-sim` replay any schedule.
//!
//! Layout: one automerge document per file ([`doc`]) and an index document ([`index`])
//! naming files, deletions, members and conflicts; [`frontmatter`] cuts Markdown into
//! mergeable pieces; [`overlap`] finds paragraphs concurrent edits both
//! changed; [`textdiff`] turns a saved file into the smallest edit; [`wire`] is
//! what engines say to each other; [`engine`] ties it together; [`carry`] is how a driver
//! carries out the engine's effects.

pub mod carry;
pub mod doc;
pub mod engine;
pub mod frontmatter;
pub mod ids;
pub mod index;
pub mod inflate;
pub mod overlap;
pub mod paths;
pub mod seal;
pub mod textdiff;
pub mod wire;

pub use doc::{ContentKind, DocError, FieldConflict, FileDoc};
pub use engine::{
    ADMISSION_PREFIX, Activity, ActivityKind, AdmissionCheck, CatchUp, CommandError, Config,
    ConflictInfo, Counters, DeletionsPaused, DeviceInfo, DocStore, Effect, Engine, Exported,
    FileMeta, Generation, HistoryError, Input, LobbyAnswer, MAKER_KEY, MakerCheck, OverlapInfo,
    PeerInfo, Persist, Removal, Restored, RotationCheck, RotationMeta, Status, Version, actor_for,
    conflict_copy_name, overlap_detail,
};
pub use ids::{
    ContentHash, DeviceId, DocId, FileId, content_hash, file_hash, is_exec, mode_with_exec,
    same_bytes, with_exec,
};
pub use index::ConflictKind;
