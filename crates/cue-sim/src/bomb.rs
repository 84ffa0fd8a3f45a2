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
}

/// A chunk of `kind` that inflates to `mib` MiB.
pub fn bomb(kind: Kind, mib: usize) -> Vec<u8> {
    let zeros = deflated_zeros(mib);
    let (chunk_type, data) = match kind {
        Kind::Change => (2, zeros),
        Kind::Document => {
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
