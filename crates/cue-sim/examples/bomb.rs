//! A decompression bomb from a member, fed to a real engine in this process: prints the
//! victim's peak memory (VmHWM) and main-loop time before and after it.
//!
//! `cargo run --release -p cue-sim --example bomb -- [change|document] [inflated MiB] [items]`
//!
//! The bomb is one engine message of at most the default message size (1 MiB less the
//! envelope's share): a `Changes` item holding a compressed change chunk, or a `Whole`
//! item holding a document whose one op column is compressed, each inflating to zeros
//! (1,024 MiB by default). With `items`, the message holds that many such items (each
//! below the 64 MiB bound, say): what a message just under every bound costs.
//! docs/benchmarks.md quotes its figures.

use std::time::Instant;

use cue_core::wire::{Item, Message, encode};
use cue_core::{Config, DocId, FileId, Input};
use cue_sim::World;
use cue_sim::bomb::{Kind, bomb};

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
    let count: u8 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let item = |i: u8| match kind.as_str() {
        "change" => Item::Changes {
            doc: DocId::Index,
            changes: vec![bomb(Kind::Change, mib)],
        },
        "document" => Item::Whole {
            doc: DocId::File(FileId([i; 16])),
            bytes: bomb(Kind::Document, mib),
        },
        "rle" => Item::Whole {
            doc: DocId::File(FileId([i; 16])),
            bytes: bomb(Kind::RunLength, mib),
        },
        other => {
            eprintln!("bomb: unknown kind {other} (change or document)");
            std::process::exit(2);
        }
    };
    let items = (0..count).map(item).collect();
    let bytes = encode(&Message { items });
    let config = Config::default();
    if bytes.len() > config.max_message_bytes {
        eprintln!(
            "bomb: {} bytes do not fit one message of {}; ask for fewer MiB",
            bytes.len(),
            config.max_message_bytes
        );
        std::process::exit(2);
    }

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
    // Items over the sender's budget of inflated bytes wait for later ticks (the sender's
    // later messages wait behind them): time passes until each was handled.
    let handled = |w: &World| {
        let c = w.peers[1].engine.counters();
        c.bad_changes + c.bad_documents + c.oversized_items
    };
    let mut waited_s = 0;
    let mut longest_tick = std::time::Duration::ZERO;
    while handled(&w) < u64::from(count) && waited_s < 120 {
        let t = Instant::now();
        w.advance(1_000);
        longest_tick = longest_tick.max(t.elapsed());
        waited_s += 1;
    }
    // Everything else keeps working.
    w.write(0, "a.md", b"after\n");
    w.settle(5);
    let synced = w.read(1, "a.md").as_deref() == Some("after\n");
    println!(
        "bomb: {kind}, message {} bytes, {count} item(s) inflating to {mib} MiB each",
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
        "all handled after {waited_s} s of engine time (longest tick {:.1} ms)",
        longest_tick.as_secs_f64() * 1e3
    );
    println!(
        "counters: {:?}; an edit after it synced: {synced}",
        w.peers[1].engine.counters()
    );
}
