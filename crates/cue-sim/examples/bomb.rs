//! A decompression bomb from a member, fed to a real engine in this process: prints the
//! victim's peak memory (VmHWM) and main-loop time before and after it.
//!
//! `cargo run --release -p cue-sim --example bomb -- [change|document] [inflated MiB]`
//!
//! The bomb is one engine message of at most the default message size (1 MiB less the
//! envelope's share): a `Changes` item holding a compressed change chunk, or a `Whole`
//! item holding a document whose one op column is compressed, each inflating to zeros
//! (1,024 MiB by default). docs/benchmarks.md quotes its figures.

use std::io::Write;
use std::time::Instant;

use cue_core::wire::{Item, Message, encode};
use cue_core::{Config, DocId, FileId, Input};
use cue_sim::World;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

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

fn chunk(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend([0; 4]);
    out.push(kind);
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

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "change".into());
    let mib: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let zeros = deflated_zeros(mib);
    let item = match kind.as_str() {
        "change" => Item::Changes {
            doc: DocId::Index,
            changes: vec![chunk(2, &zeros)],
        },
        "document" => {
            let mut data = Vec::new();
            uleb(0, &mut data); // actors
            uleb(0, &mut data); // heads
            uleb(0, &mut data); // change columns
            uleb(1, &mut data); // op columns: one, compressed
            uleb((1 << 4) | 0b1000, &mut data);
            uleb(zeros.len() as u64, &mut data);
            data.extend(&zeros);
            Item::Whole {
                doc: DocId::File(FileId([9; 16])),
                bytes: chunk(0, &data),
            }
        }
        other => {
            eprintln!("bomb: unknown kind {other} (change or document)");
            std::process::exit(2);
        }
    };
    let bytes = encode(&Message { items: vec![item] });
    let config = Config::default();
    if bytes.len() > config.max_message_bytes {
        eprintln!(
            "bomb: {} bytes do not fit one message of {}; ask for fewer MiB",
            bytes.len(),
            config.max_message_bytes
        );
        std::process::exit(2);
    }
    drop(zeros);

    let mut w = World::new(2, 1, config);
    w.connect_all();
    w.write(0, "a.md", b"before\n");
    w.settle(5);
    let from = w.peers[0].device;
    let before = vm_hwm_kib();
    let t = Instant::now();
    w.input(
        1,
        Input::Message {
            from,
            bytes: bytes.clone(),
        },
    );
    let took = t.elapsed();
    let after = vm_hwm_kib();
    // Everything else keeps working.
    w.write(0, "a.md", b"after\n");
    w.settle(5);
    let synced = w.read(1, "a.md").as_deref() == Some("after\n");
    println!(
        "bomb: {kind}, message {} bytes, inflating to {mib} MiB",
        bytes.len()
    );
    println!(
        "victim VmHWM: {} KiB before, {} KiB after (+{} KiB); handling took {:.1} ms",
        before,
        after,
        after - before,
        took.as_secs_f64() * 1e3
    );
    println!(
        "counters: {:?}; an edit after it synced: {synced}",
        w.peers[1].engine.counters()
    );
}
