//! What automerge would inflate, measured with a bound before it sees a peer's bytes.
//!
//! automerge 0.12 inflates the DEFLATE-compressed parts of what it parses (compressed
//! change chunks, and compressed columns of document and bundle chunks) into memory with
//! no limit, before it checks anything else: a 1 MB message of compressed zeros makes it
//! allocate about 2 GB. So every automerge byte string a peer sends is walked here first,
//! chunk by chunk (the chunk layout is automerge's binary format: a header of magic
//! bytes, checksum, type and length, then for documents and bundles the column metadata
//! that says which columns are compressed). Each compressed part is inflated into a small
//! buffer that is counted and thrown away, stopping as soon as the total passes the
//! bound. Memory stays constant; the work is bounded by the limit.
//!
//! The walk is strict: bytes it cannot follow are refused (`Malformed`), so nothing
//! reaches automerge that this walk did not measure. It accepts everything automerge's
//! own `save`, `save_incremental` and change encoding produce (tested below).

use std::io::Read;

/// The most one item from a peer (a document, or the changes of one `Changes` item) may
/// take once inflated. A file is at most 16 MiB by default and its document a little
/// more; a chunked item is at most 64 MiB on the wire, and this is the same bound.
pub const MAX_INFLATED_ITEM: u64 = 64 * 1024 * 1024;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// The deflate bit of a column specification.
const DEFLATE_BIT: u32 = 0b1000;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InflateError {
    #[error("inflates to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("compressed data that does not inflate")]
    BadDeflate,
    #[error("not an automerge chunk sequence: {0}")]
    Malformed(&'static str),
}

/// A running total of inflated bytes against a limit, shared by the byte strings of one
/// item, and of the operations they claim.
#[derive(Debug, Clone)]
pub struct Budget {
    used: u64,
    limit: u64,
    ops: u64,
    changes: u64,
    foreign: bool,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget {
            used: 0,
            limit,
            ops: 0,
            changes: 0,
            foreign: false,
        }
    }

    /// Bytes counted so far.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Operations the chunks counted so far claim: the rows of their op columns, as
    /// their action column's run-length encoding says. automerge reserves memory for
    /// every claimed operation when it loads a document (a run says "N times" in a few
    /// bytes, so no inflation bound sees it): the caller bounds this too.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Changes the chunks counted so far claim: one a change chunk, and for a document
    /// or bundle the rows of its change columns, which automerge sizes its loading by
    /// as it does by op rows (a document of empty changes claiming a million made
    /// automerge 0.12 panic): the caller bounds this too.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Whether an operation counted so far is of a kind cue never makes: a text mark
    /// (automerge action 7) or one automerge does not know. cue refuses them: marks out
    /// of order applied by automerge 0.12 leave a document whose save no longer loads.
    pub fn foreign_actions(&self) -> bool {
        self.foreign
    }

    fn add(&mut self, n: u64) -> Result<(), InflateError> {
        self.used = self.used.saturating_add(n);
        if self.used > self.limit {
            return Err(InflateError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    /// Count what `bytes` (a sequence of automerge chunks: a change, a saved document,
    /// saved increments) takes once every compressed part is inflated.
    pub fn measure(&mut self, bytes: &[u8]) -> Result<(), InflateError> {
        let mut r = Reader(bytes);
        if r.0.is_empty() {
            return Err(InflateError::Malformed("empty"));
        }
        while !r.0.is_empty() {
            if r.take(4)? != MAGIC {
                return Err(InflateError::Malformed("magic bytes"));
            }
            r.take(4)?; // checksum
            let kind = r.take(1)?[0];
            let len = r.uleb()?;
            let data = r.take_u64(len)?;
            match kind {
                0 => self.document(data)?,
                1 => {
                    self.add(data.len() as u64)?;
                    self.change_ops(data)?
                }
                // A compressed change: its body inflated within the bound (and counted),
                // then read as an uncompressed one.
                2 => {
                    let body = self.inflate_into(data)?;
                    self.change_ops(&body)?
                }
                3 => self.bundle(data)?,
                _ => return Err(InflateError::Malformed("chunk type")),
            }
        }
        Ok(())
    }

    /// A document chunk: actors, heads, change column metadata, op column metadata, then
    /// the change columns, the op columns and head indices.
    fn document(&mut self, data: &[u8]) -> Result<(), InflateError> {
        let mut r = Reader(data);
        r.actors()?;
        r.hashes()?;
        let changes = r.columns()?;
        let ops = r.columns()?;
        self.change_columns(&mut r, &changes)?;
        self.op_columns(&mut r, &ops, true)?;
        self.add(r.0.len() as u64)
    }

    /// A bundle chunk: dependencies, actors, then change metadata and columns, then op
    /// metadata and columns.
    fn bundle(&mut self, data: &[u8]) -> Result<(), InflateError> {
        let mut r = Reader(data);
        r.hashes()?;
        r.actors()?;
        let changes = r.columns()?;
        self.change_columns(&mut r, &changes)?;
        let ops = r.columns()?;
        self.op_columns(&mut r, &ops, true)?;
        self.add(r.0.len() as u64)
    }

    /// Op columns: their bytes counted when `measure` (not for a change chunk, whose
    /// body was counted whole), and the most rows any of them claims added to
    /// [`Budget::ops`].
    fn op_columns(
        &mut self,
        r: &mut Reader<'_>,
        cols: &[(u32, u64)],
        measure: bool,
    ) -> Result<(), InflateError> {
        let rows = self.columns_rows(r, cols, measure)?;
        self.ops = self.ops.saturating_add(rows);
        Ok(())
    }

    /// Columns, each inflated within the budget if compressed and its bytes counted when
    /// `measure`; returns the most rows any of them claims. automerge sizes what it
    /// builds by the rows columns claim, and every column of a set should hold the same
    /// number (a group column's children hold the sum of its counts, which honest
    /// documents keep near the op count): the largest claim is what is bounded.
    fn columns_rows(
        &mut self,
        r: &mut Reader<'_>,
        cols: &[(u32, u64)],
        measure: bool,
    ) -> Result<u64, InflateError> {
        let mut most = 0u64;
        for &(spec, len) in cols {
            let data = r.take_u64(len)?;
            let rows = if spec & DEFLATE_BIT != 0 && measure {
                let cap = self.limit.saturating_sub(self.used);
                let mut counted = Counted {
                    inner: flate2::bufread::DeflateDecoder::new(data),
                    read: 0,
                    cap,
                };
                let rows = column_rows(spec, std::io::BufReader::new(&mut counted));
                if counted.read > cap {
                    return Err(InflateError::TooLarge { limit: self.limit });
                }
                self.add(counted.read)?;
                rows?
            } else if spec & DEFLATE_BIT != 0 {
                // Compression inside a change chunk's body is not automerge's format.
                return Err(InflateError::Malformed("compressed column in a change"));
            } else {
                if measure {
                    self.add(data.len() as u64)?;
                }
                column_rows(spec, data)?
            };
            let (rows, largest) = rows;
            if spec & !DEFLATE_BIT == ACTION_COLUMN && largest > LAST_CUE_ACTION {
                self.foreign = true;
            }
            most = most.max(rows);
        }
        Ok(most)
    }

    /// The operations of an uncompressed change chunk (its bytes are counted by the
    /// caller): its header, then op column metadata and columns.
    fn change_ops(&mut self, data: &[u8]) -> Result<(), InflateError> {
        let mut r = Reader(data);
        r.hashes()?; // dependencies
        let actor = r.uleb()?;
        r.take_u64(actor)?;
        r.uleb()?; // sequence number
        r.uleb()?; // start op
        r.uleb()?; // time (signed, as a LEB it reads the same)
        let message = r.uleb()?;
        r.take_u64(message)?;
        r.actors()?; // other actors
        let ops = r.columns()?;
        self.changes = self.changes.saturating_add(1);
        self.op_columns(&mut r, &ops, false)
    }

    /// A document's or bundle's change columns: their bytes counted, and the most rows
    /// any claims added to [`Budget::changes`].
    fn change_columns(
        &mut self,
        r: &mut Reader<'_>,
        cols: &[(u32, u64)],
    ) -> Result<(), InflateError> {
        let rows = self.columns_rows(r, cols, true)?;
        self.changes = self.changes.saturating_add(rows);
        Ok(())
    }
}

impl Budget {
    /// Inflates `data` into memory, counting, within what is left of the budget.
    fn inflate_into(&mut self, data: &[u8]) -> Result<Vec<u8>, InflateError> {
        let left = self.limit.saturating_sub(self.used);
        let mut out = Vec::new();
        let decoder = flate2::bufread::DeflateDecoder::new(data);
        decoder
            .take(left.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|_| InflateError::BadDeflate)?;
        self.add(out.len() as u64)?;
        Ok(out)
    }
}

/// The action column of an op column set (id 4, unsigned run-length encoded): one value
/// per operation.
const ACTION_COLUMN: u32 = (4 << 4) | 2;

/// The last action cue makes (0 to 6: make map, put, make list, delete, make text,
/// increment, make table); 7 is a text mark.
const LAST_CUE_ACTION: u64 = 6;

/// A reader that counts what it reads and fails once past `cap`: a compressed column is
/// inflated through it, never into memory.
struct Counted<R> {
    inner: R,
    read: u64,
    cap: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = self.read.saturating_add(n as u64);
        if self.read > self.cap {
            return Err(std::io::Error::other("over the bound"));
        }
        Ok(n)
    }
}

/// The rows a column claims, reading all of it (automerge's column encodings, by the
/// type in the low three bits of its specification): run-length encoded integers
/// (group, actor, integer, delta, value metadata) and strings hold runs (a positive
/// count, then one value), literals (a negative count, then that many values) and null
/// runs (a zero, then their count); booleans hold alternating run lengths; raw values
/// hold no rows of their own (their metadata column has them).
fn column_rows(spec: u32, mut input: impl Read) -> Result<(u64, u64), InflateError> {
    // Read in blocks and parsed by a state machine: a byte at a time through `Read` was
    // 5 ns a byte, 0.35 s for a 63 MiB column (and a message may hold fifteen).
    let mut rows = Rows::new(spec);
    let mut buf = [0u8; 64 * 1024];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return rows.finish(),
            Ok(n) => rows.feed(&buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(InflateError::BadDeflate),
        }
    }
}

/// Where [`Rows`] is in a column.
#[derive(Clone, Copy)]
enum At {
    /// Before a run's count (signed).
    Count,
    /// Before a null run's length.
    Nulls,
    /// Before the next of `n` values.
    Values(u64),
    /// Inside a string value: `left` bytes, then the rest of `n` values.
    StringBytes { left: u64, n: u64 },
}

/// A column's rows and largest value, counted block by block (see [`column_rows`]).
struct Rows {
    kind: u32,
    rows: u64,
    largest: u64,
    at: At,
    /// The LEB128 being read: its value so far and the next shift.
    leb: u64,
    shift: u32,
    reading: bool,
}

impl Rows {
    const BOOLEAN: u32 = 4;
    const STRING: u32 = 5;
    const VALUE: u32 = 7;

    fn new(spec: u32) -> Rows {
        Rows {
            kind: spec & 0b111,
            rows: 0,
            largest: 0,
            at: At::Count,
            leb: 0,
            shift: 0,
            reading: false,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InflateError> {
        if self.kind == Self::VALUE {
            return Ok(());
        }
        while let Some((&b, rest)) = bytes.split_first() {
            if let At::StringBytes { left, n } = self.at {
                let skip = left.min(bytes.len() as u64);
                bytes = &bytes[skip as usize..];
                self.at = match left - skip {
                    0 if n == 0 => At::Count,
                    0 => At::Values(n),
                    left => At::StringBytes { left, n },
                };
                continue;
            }
            bytes = rest;
            if self.shift >= 64 {
                return Err(InflateError::Malformed("integer overflow"));
            }
            self.leb |= u64::from(b & 0x7f) << self.shift;
            self.shift += 7;
            self.reading = true;
            if b & 0x80 != 0 {
                continue;
            }
            let (value, shift) = (self.leb, self.shift);
            self.leb = 0;
            self.shift = 0;
            self.reading = false;
            self.value(value, shift, b)?;
        }
        Ok(())
    }

    /// One whole LEB128 read: `value` unsigned, `shift` bits, `last` its last byte.
    fn value(&mut self, value: u64, shift: u32, last: u8) -> Result<(), InflateError> {
        if self.kind == Self::BOOLEAN {
            self.rows = self.rows.saturating_add(value);
            return Ok(());
        }
        self.at = match self.at {
            At::Count => {
                let signed = if shift < 64 && last & 0x40 != 0 {
                    (value | (u64::MAX << shift)) as i64
                } else {
                    value as i64
                };
                match signed {
                    0 => At::Nulls,
                    c => {
                        self.rows = self.rows.saturating_add(c.unsigned_abs());
                        // A run holds one value, a literal as many as it counts.
                        At::Values(if c > 0 { 1 } else { c.unsigned_abs() })
                    }
                }
            }
            At::Nulls => {
                self.rows = self.rows.saturating_add(value);
                At::Count
            }
            At::Values(n) => {
                self.largest = self.largest.max(value);
                let n = n - 1;
                if self.kind == Self::STRING && value > 0 {
                    At::StringBytes { left: value, n }
                } else if n == 0 {
                    At::Count
                } else {
                    At::Values(n)
                }
            }
            At::StringBytes { .. } => return Err(InflateError::Malformed("string")),
        };
        Ok(())
    }

    fn finish(self) -> Result<(u64, u64), InflateError> {
        let ended = match self.at {
            At::Count => true,
            // Booleans never leave `Count`; raw values have no structure here.
            _ => self.kind == Self::VALUE,
        };
        if self.reading || !ended {
            return Err(InflateError::Malformed("cut short"));
        }
        Ok((self.rows, self.largest))
    }
}

/// Whether every chunk of `bytes` (automerge's, as [`Budget::measure`] walks them) holds
/// what its header's checksum says: the first four bytes of the SHA-256 of its type,
/// length and contents. A cheap check of stored bytes sent on as they are, without
/// loading them (≈ 3 µs for a 4 KB note's document): damaged, they would be refused by
/// every peer. A compressed change is not checked (its checksum is of the contents
/// inflated); automerge checks it when it loads it.
pub fn chunks_intact(bytes: &[u8]) -> bool {
    use sha2::Digest;
    let mut r = Reader(bytes);
    if r.0.is_empty() {
        return false;
    }
    while !r.0.is_empty() {
        let header = (|| {
            if r.take(4)? != MAGIC {
                return Err(InflateError::Malformed("magic bytes"));
            }
            let checksum = r.take(4)?;
            let from = r.0;
            let kind = r.take(1)?[0];
            let len = r.uleb()?;
            let head = &from[..from.len() - r.0.len()];
            Ok((checksum, kind, head, r.take_u64(len)?))
        })();
        let Ok((checksum, kind, head, data)) = header else {
            return false;
        };
        if kind != 2 {
            let hash = sha2::Sha256::new()
                .chain_update(head)
                .chain_update(data)
                .finalize();
            if hash[..4] != *checksum {
                return false;
            }
        }
    }
    true
}

/// What `bytes` takes once inflated, or an error once that passes `limit`.
pub fn inflated_size(bytes: &[u8], limit: u64) -> Result<u64, InflateError> {
    let mut b = Budget::new(limit);
    b.measure(bytes)?;
    Ok(b.used())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], InflateError> {
        if n > self.0.len() {
            return Err(InflateError::Malformed("cut short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn take_u64(&mut self, n: u64) -> Result<&'a [u8], InflateError> {
        self.take(usize::try_from(n).map_err(|_| InflateError::Malformed("length"))?)
    }

    fn uleb(&mut self) -> Result<u64, InflateError> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.take(1)?[0];
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(InflateError::Malformed("integer overflow"));
            }
            value |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(InflateError::Malformed("integer overflow"))
    }

    fn actors(&mut self) -> Result<(), InflateError> {
        let n = self.uleb()?;
        for _ in 0..n {
            let len = self.uleb()?;
            self.take_u64(len)?;
        }
        Ok(())
    }

    fn hashes(&mut self) -> Result<(), InflateError> {
        let n = self.uleb()?;
        self.take_u64(n.checked_mul(32).ok_or(InflateError::Malformed("length"))?)?;
        Ok(())
    }

    /// Column metadata: a count, then (specification, length) pairs.
    fn columns(&mut self) -> Result<Vec<(u32, u64)>, InflateError> {
        let n = self.uleb()?;
        let mut cols = Vec::new();
        for _ in 0..n {
            let spec = u32::try_from(self.uleb()?)
                .map_err(|_| InflateError::Malformed("column specification"))?;
            let len = self.uleb()?;
            // Every column holds at least its metadata's worth of bytes in the chunk, so
            // the count is bounded by what is there.
            if len > self.0.len() as u64 {
                return Err(InflateError::Malformed("column length"));
            }
            cols.push((spec, len));
        }
        Ok(cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ObjType, ROOT, ReadDoc};
    use std::io::Write;

    fn uleb(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn deflate_zeros(n: usize) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(zeros.len());
            e.write_all(&zeros[..k]).unwrap();
            left -= k;
        }
        e.finish().unwrap()
    }

    /// A compressed change chunk whose data inflates to `n` zeros.
    fn compressed_chunk(n: usize) -> Vec<u8> {
        let data = deflate_zeros(n);
        let mut out = MAGIC.to_vec();
        out.extend([0; 4]);
        out.push(2);
        uleb(data.len() as u64, &mut out);
        out.extend(data);
        out
    }

    /// A document chunk with one compressed op column that inflates to `n` zeros.
    fn document_with_compressed_column(n: usize) -> Vec<u8> {
        let col = deflate_zeros(n);
        let mut data = Vec::new();
        uleb(0, &mut data); // actors
        uleb(0, &mut data); // heads
        uleb(0, &mut data); // change columns
        uleb(1, &mut data); // op columns
        uleb(u64::from((1 << 4) | DEFLATE_BIT), &mut data);
        uleb(col.len() as u64, &mut data);
        data.extend(col);
        let mut out = MAGIC.to_vec();
        out.extend([0; 4]);
        out.push(0);
        uleb(data.len() as u64, &mut out);
        out.extend(data);
        out
    }

    fn big_doc() -> AutoCommit {
        let mut d = AutoCommit::new().with_actor(ActorId::from(&[1u8; 16][..]));
        let text = d.put_object(ROOT, "body", ObjType::Text).unwrap();
        let line = "All work and no play makes Jack a dull boy.\n".repeat(2_000);
        d.splice_text(&text, 0, 0, &line).unwrap();
        d.commit();
        for i in 0..50 {
            d.splice_text(&text, i * 7, 1, "x").unwrap();
            d.commit();
        }
        d.put(ROOT, "bytes", vec![0u8; 200_000]).unwrap();
        d.commit();
        d
    }

    #[test]
    fn what_automerge_writes_is_measured_and_passes() {
        let mut d = big_doc();
        let saved = d.save();
        let inflated = inflated_size(&saved, MAX_INFLATED_ITEM).unwrap();
        assert!(
            inflated > saved.len() as u64,
            "{inflated} <= {}",
            saved.len()
        );
        // A snapshot followed by increments, as a store holds it.
        let text = d.get(ROOT, "body").unwrap().unwrap().1;
        d.splice_text(&text, 3, 0, "more").unwrap();
        d.commit();
        let mut stored = saved.clone();
        stored.extend(d.save_incremental());
        inflated_size(&stored, MAX_INFLATED_ITEM).unwrap();
        // Single changes, large (compressed) and small.
        for c in d.get_changes(&[]) {
            inflated_size(c.raw_bytes(), MAX_INFLATED_ITEM).unwrap();
            let mut c = c.clone();
            inflated_size(c.bytes().as_ref(), MAX_INFLATED_ITEM).unwrap();
        }
        assert!(AutoCommit::load(&stored).is_ok());
    }

    /// What automerge stores (a document, increments after it, single changes) is
    /// intact; one byte changed anywhere in a chunk's contents or header, or bytes cut
    /// off, is not.
    #[test]
    fn chunks_intact_tells_what_automerge_wrote_from_damaged_bytes() {
        let mut d = AutoCommit::new().with_actor(ActorId::from(&[1u8; 16][..]));
        let text = d.put_object(ROOT, "body", ObjType::Text).unwrap();
        d.splice_text(&text, 0, 0, "# A note\n\nsome text\n")
            .unwrap();
        d.commit();
        let mut stored = d.save();
        d.splice_text(&text, 2, 0, "short ").unwrap();
        d.commit();
        stored.extend(d.save_incremental());
        assert!(chunks_intact(&stored));
        for c in d.get_changes(&[]) {
            assert!(chunks_intact(c.raw_bytes()));
        }
        assert!(chunks_intact(&big_doc().save()));
        for at in [5, 9, 12, stored.len() / 2, stored.len() - 1] {
            let mut damaged = stored.clone();
            damaged[at] ^= 0x20;
            assert!(!chunks_intact(&damaged), "byte {at} changed");
        }
        assert!(!chunks_intact(&stored[..stored.len() - 3]));
        assert!(!chunks_intact(&[]));
        assert!(!chunks_intact(&[0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 5]));
    }

    #[test]
    fn a_compressed_change_that_inflates_past_the_bound_is_refused() {
        let bomb = compressed_chunk(8 * 1024 * 1024);
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        assert_eq!(
            inflated_size(&bomb, 1024 * 1024),
            Err(InflateError::TooLarge { limit: 1024 * 1024 })
        );
        assert_eq!(inflated_size(&bomb, 64 << 20), Ok(8 << 20));
    }

    #[test]
    fn a_compressed_document_column_past_the_bound_is_refused() {
        let bomb = document_with_compressed_column(8 * 1024 * 1024);
        assert_eq!(
            inflated_size(&bomb, 1024 * 1024),
            Err(InflateError::TooLarge { limit: 1024 * 1024 })
        );
    }

    #[test]
    fn garbage_is_malformed_not_measured() {
        assert!(matches!(
            inflated_size(b"hello", MAX_INFLATED_ITEM),
            Err(InflateError::Malformed(_))
        ));
        let mut cut = compressed_chunk(1000);
        cut.truncate(cut.len() - 1);
        assert!(matches!(
            inflated_size(&cut, MAX_INFLATED_ITEM),
            Err(InflateError::Malformed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = inflated_size(&bytes, 1 << 20);
        }
    }

    /// The operations a document or change claims are counted from its action column,
    /// compressed or not, and agree with what automerge made.
    #[test]
    fn operations_are_counted_as_automerge_wrote_them() {
        let mut doc = AutoCommit::new();
        let text = doc.put_object(ROOT, "t", ObjType::Text).unwrap();
        doc.splice_text(&text, 0, 0, &"x".repeat(5000)).unwrap();
        doc.commit();
        let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        doc.splice_text(&text, 0, 4000, "").unwrap();
        doc.commit();
        let deletion = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        let ops = |bytes: &[u8]| {
            let mut b = Budget::new(MAX_INFLATED_ITEM);
            b.measure(bytes).unwrap();
            b.ops()
        };
        // The text object and its 5,000 characters; the document keeps deleted ones.
        assert_eq!(ops(&change), 5001);
        assert_eq!(ops(&doc.save()), 5001);
        // 4,000 deletions in a few bytes: what a change may claim beyond its bytes.
        assert_eq!(ops(&deletion), 4000);
        assert!(deletion.len() < 200, "{}", deletion.len());
    }

    /// The changes a document claims are the rows of its change columns; a change chunk
    /// is one change.
    #[test]
    fn changes_are_counted_as_automerge_wrote_them() {
        let mut doc = AutoCommit::new();
        let text = doc.put_object(ROOT, "t", ObjType::Text).unwrap();
        doc.commit();
        for i in 0..40 {
            doc.splice_text(&text, i, 0, "x").unwrap();
            doc.commit();
        }
        doc.splice_text(&text, 0, 40, "").unwrap();
        doc.commit();
        let measured = |bytes: &[u8]| {
            let mut b = Budget::new(MAX_INFLATED_ITEM);
            b.measure(bytes).unwrap();
            (b.ops(), b.changes())
        };
        // 41 operations kept (the text and its characters, deleted ones too); 42 changes,
        // the last of them only deletions.
        assert_eq!(measured(&doc.save()), (41, 42));
        let last = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        assert_eq!(measured(&last), (40, 1));
    }
}
