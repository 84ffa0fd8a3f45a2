//! Engine messages: what one engine says to another inside an envelope.
//!
//! One message carries many items, so that a first sync of thousands of documents costs a
//! few relay messages rather than thousands (the relay admits ~100 messages a second).
//! An item that does not fit into one message is cut into chunks.
//!
//! Encoding: a version byte, then postcard. postcard is not self-describing, so variants
//! are only ever added at the end of an enum and the version byte changes with anything
//! else.

use serde::{Deserialize, Serialize};

use crate::ids::DocId;
use crate::seal::Seal;

/// 2: changes travel with their authors' seals ([`Item::Sealed`]); a peer of version 1
/// would take changes no seal reaches, so the two do not talk.
pub const WIRE_VERSION: u8 = 2;

/// Heads of a document, as raw change hashes.
pub type Heads = Vec<[u8; 32]>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item {
    /// "Here I am; this is a digest of everything I hold." Sent on connecting, to each
    /// newly seen peer, after a catch-up changed what we hold, and periodically.
    Hello { digest: [u8; 32], reply: bool },
    /// "Send me what I lack": our heads for the listed documents. `complete` means the
    /// list names every document we hold, so the responder also sends the documents we
    /// do not list. `full` asks for whole documents (a full resync after a long
    /// absence). A long list travels in chunks like any large item.
    Pull {
        id: u64,
        full: bool,
        complete: bool,
        entries: Vec<(DocId, Heads)>,
    },
    /// Changes to one document: live edits, or what a pull asked for.
    Changes { doc: DocId, changes: Vec<Vec<u8>> },
    /// A whole document (automerge `save()` bytes), for a peer that lacks it.
    Whole { doc: DocId, bytes: Vec<u8> },
    /// "I now hold these heads": confirms live changes, so the sender can count what no
    /// peer has yet.
    Ack { entries: Vec<(DocId, Heads)> },
    /// The end of the answer to pull `id`.
    PullDone { id: u64 },
    /// One piece of an item too large for one message.
    Chunk {
        id: u64,
        index: u32,
        total: u32,
        bytes: Vec<u8>,
    },
    /// A whole document with the content it renders to and its heads, for a peer that
    /// lacks it: the peer writes `content` at once and checks it against the document
    /// later, when it has time, instead of loading every document of a first sync
    /// (loading a document costs milliseconds, writing its content microseconds; see
    /// docs/benchmarks.md, "## Daemon").
    Adopt {
        doc: DocId,
        bytes: Vec<u8>,
        heads: Heads,
        content: Vec<u8>,
    },
    /// A document's changes (`Changes`, `Whole` or `Adopt`) with the latest seal of each
    /// device that changed it (`crate::seal`), so that the receiver can tell the changes
    /// are their authors' whoever passes them on.
    Sealed { seals: Vec<Seal>, item: Sealable },
}

impl Item {
    /// What kind of item it is, in a word (logs, counts); a sealed item is named by what
    /// it seals.
    pub fn kind(&self) -> &'static str {
        match self {
            Item::Hello { .. } => "hello",
            Item::Pull { .. } => "pull",
            Item::Changes { .. } => "changes",
            Item::Whole { .. } => "whole",
            Item::Ack { .. } => "ack",
            Item::PullDone { .. } => "pull_done",
            Item::Chunk { .. } => "chunk",
            Item::Adopt { .. } => "adopt",
            Item::Sealed { item, .. } => match item {
                Sealable::Changes { .. } => "changes",
                Sealable::Whole { .. } => "whole",
                Sealable::Adopt { .. } => "adopt",
            },
        }
    }
}

/// What a seal can wrap: a document's changes, never another `Sealed` (a type of its own,
/// so that decoding cannot recurse: nested items would overflow the stack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sealable {
    Changes {
        doc: DocId,
        changes: Vec<Vec<u8>>,
    },
    Whole {
        doc: DocId,
        bytes: Vec<u8>,
    },
    Adopt {
        doc: DocId,
        bytes: Vec<u8>,
        heads: Heads,
        content: Vec<u8>,
    },
}

impl Sealable {
    /// `item` if it is a document's changes; otherwise it back.
    pub fn from_item(item: Item) -> Result<Sealable, Item> {
        match item {
            Item::Changes { doc, changes } => Ok(Sealable::Changes { doc, changes }),
            Item::Whole { doc, bytes } => Ok(Sealable::Whole { doc, bytes }),
            Item::Adopt {
                doc,
                bytes,
                heads,
                content,
            } => Ok(Sealable::Adopt {
                doc,
                bytes,
                heads,
                content,
            }),
            other => Err(other),
        }
    }

    pub fn into_item(self) -> Item {
        match self {
            Sealable::Changes { doc, changes } => Item::Changes { doc, changes },
            Sealable::Whole { doc, bytes } => Item::Whole { doc, bytes },
            Sealable::Adopt {
                doc,
                bytes,
                heads,
                content,
            } => Item::Adopt {
                doc,
                bytes,
                heads,
                content,
            },
        }
    }

    pub fn doc(&self) -> DocId {
        match self {
            Sealable::Changes { doc, .. }
            | Sealable::Whole { doc, .. }
            | Sealable::Adopt { doc, .. } => *doc,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub items: Vec<Item>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("unsupported engine message version {0}")]
    Version(u8),
    #[error("malformed engine message: {0}")]
    Malformed(String),
}

pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    // Encoding into a Vec cannot fail for these types.
    out.extend(postcard::to_allocvec(msg).unwrap_or_default());
    out
}

pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    let (&v, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    if v != WIRE_VERSION {
        return Err(WireError::Version(v));
    }
    postcard::from_bytes(rest).map_err(|e| WireError::Malformed(e.to_string()))
}

pub fn encode_item(item: &Item) -> Vec<u8> {
    postcard::to_allocvec(item).unwrap_or_default()
}

pub fn decode_item(bytes: &[u8]) -> Result<Item, WireError> {
    postcard::from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Bytes a message adds around its items (version byte and the item count).
const MESSAGE_OVERHEAD: usize = 1 + 5;
/// Bytes a chunk item adds around its payload, at most.
const CHUNK_OVERHEAD: usize = 1 + 10 + 5 + 5 + 5;

/// Pack items into messages of at most `max` bytes each, cutting items that alone exceed
/// it into chunks (ids from `next_chunk_id`). Order is kept.
pub fn pack(items: Vec<Item>, max: usize, next_chunk_id: &mut u64) -> Vec<Vec<u8>> {
    let max = max.max(256);
    let mut out = Vec::new();
    let mut current: Vec<Item> = Vec::new();
    let mut size = MESSAGE_OVERHEAD;
    let flush = |current: &mut Vec<Item>, size: &mut usize, out: &mut Vec<Vec<u8>>| {
        if !current.is_empty() {
            out.push(encode(&Message {
                items: std::mem::take(current),
            }));
        }
        *size = MESSAGE_OVERHEAD;
    };
    for item in items {
        let len = encode_item(&item).len();
        if len + MESSAGE_OVERHEAD > max {
            flush(&mut current, &mut size, &mut out);
            let bytes = encode_item(&item);
            let piece = max - MESSAGE_OVERHEAD - CHUNK_OVERHEAD;
            let total = bytes.len().div_ceil(piece) as u32;
            let id = *next_chunk_id;
            *next_chunk_id += 1;
            for (index, part) in bytes.chunks(piece).enumerate() {
                out.push(encode(&Message {
                    items: vec![Item::Chunk {
                        id,
                        index: index as u32,
                        total,
                        bytes: part.to_vec(),
                    }],
                }));
            }
            continue;
        }
        if size + len > max {
            flush(&mut current, &mut size, &mut out);
        }
        size += len;
        current.push(item);
    }
    flush(&mut current, &mut size, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::FileId;
    use proptest::prelude::*;

    #[test]
    fn packs_within_limit_and_chunks_big_items() {
        let small = Item::Changes {
            doc: DocId::Index,
            changes: vec![vec![1; 100]],
        };
        let big = Item::Whole {
            doc: DocId::File(FileId([3; 16])),
            bytes: vec![7; 10_000],
        };
        let mut next = 0;
        let msgs = pack(vec![small.clone(), big, small], 1024, &mut next);
        assert!(
            msgs.iter().all(|m| m.len() <= 1024),
            "{:?}",
            msgs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(msgs.len() > 10);
        assert_eq!(next, 1);
        for m in &msgs {
            decode(m).unwrap();
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn roundtrip(n in 0u64..1000, data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let m = Message { items: vec![
                Item::Hello { digest: [n as u8; 32], reply: n % 2 == 0 },
                Item::Whole { doc: DocId::File(FileId([n as u8; 16])), bytes: data.clone() },
                Item::Chunk { id: n, index: 1, total: 2, bytes: data },
                Item::PullDone { id: n },
            ]};
            prop_assert_eq!(decode(&encode(&m)).unwrap(), m);
        }
    }
}
