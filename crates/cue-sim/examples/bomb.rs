//! A decompression bomb from a member, fed to a real engine in this process: prints the
//! victim's peak memory (VmHWM) and main-loop time before and after it.
//!
//! `cargo run --release -p cue-sim --example bomb -- [change|document] [inflated MiB] [items]`
//! `... -- rle|padded|empty|deletions [Mi] [items]`: a document claiming that many
//! mebi-operations (`padded`: beside half as many bytes of zeros) or mebi-empty-changes, or a member's change of a hundred-odd bytes claiming that many
//! mebi-deletions in a note of 300 characters. A fourth argument `alone` hands the
//! items' bytes to automerge directly, as the engine did before it checked them (a
//! document loaded, changes applied to the victim's copy of their document), under
//! `catch_unwind`: what the checks spare the victim.
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
    // MiB (or Mi operations, changes, deletions); "64k" for Ki of them.
    let size = args.next().unwrap_or_else(|| "1024".into());
    let units: u64 = match size.strip_suffix('k') {
        Some(ki) => ki.parse::<u64>().unwrap_or(1) << 10,
        None => size.parse::<u64>().unwrap_or(1024) << 20,
    };
    let mib = usize::try_from(units >> 20).unwrap_or(1).max(1);
    let count: u8 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let alone = args.next().as_deref() == Some("alone");
    let config = Config::default();
    let mut w = World::new(2, 1, config.clone());
    w.connect_all();
    // A note of 300 characters made in one save: what a change deleting them all deletes.
    let note = "x".repeat(300);
    w.write(0, "a.md", note.as_bytes());
    w.settle(5);
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
            bytes: cue_sim::bomb::claiming(Kind::RunLength, units),
        },
        "empty" => Item::Whole {
            doc: DocId::File(FileId([i; 16])),
            bytes: cue_sim::bomb::claiming(Kind::EmptyChanges, units),
        },
        // Runs claiming `units` operations beside `units / 2` bytes of zeros: the claim
        // fits two a byte of what the document inflates to, and past 32 Mi (and a little)
        // the largest file's bound refuses it (docs/security.md, "Decompression bomb").
        "padded" => Item::Whole {
            doc: DocId::File(FileId([i; 16])),
            bytes: cue_sim::bomb::padded_run_length(units, (units / 2 + 4096) as usize),
        },
        "deletions" => deletions(&w, units),
        other => {
            eprintln!(
                "bomb: unknown kind {other} (change, document, rle, padded, empty or deletions)"
            );
            std::process::exit(2);
        }
    };
    let items = (0..count).map(item).collect();
    let bytes = encode(&Message { items });
    if bytes.len() > config.max_message_bytes {
        eprintln!(
            "bomb: {} bytes do not fit one message of {}; ask for fewer MiB",
            bytes.len(),
            config.max_message_bytes
        );
        std::process::exit(2);
    }

    if alone {
        let items = (0..count).map(item).collect();
        return automerge_alone(&w, items);
    }
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
        "bomb: {kind} {size}, message {} bytes, {count} item(s)",
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

/// Peer 0's change deleting its note's 300 characters, claiming `claimed` deletions,
/// sealed as peer 0 seals: a member's own change, as the victim would get it.
fn deletions(w: &World, claimed: u64) -> Item {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};
    let Some((doc, stored)) = w.peers[0].store.docs.iter().find_map(|(d, b)| match d {
        DocId::File(_) => Some((*d, b.clone())),
        DocId::Index => None,
    }) else {
        eprintln!("bomb: no note to delete from");
        std::process::exit(2);
    };
    let actor = cue_core::actor_for(&w.peers[0].device, w.peers[0].epoch);
    let change = AutoCommit::load(&stored).ok().and_then(|d| {
        let mut d = d.with_actor(actor);
        let body = d.get(ROOT, "body").ok().flatten()?.1;
        let len = d.length(&body);
        d.splice_text(&body, 0, len as isize, "").ok()?;
        d.commit();
        let deletion = d.get_last_local_change()?.raw_bytes().to_vec();
        cue_sim::bomb::deletions_claiming(&deletion, len as u64, claimed)
    });
    let Some(change) = change else {
        eprintln!("bomb: could not make the deletion");
        std::process::exit(2);
    };
    cue_sim::seal_as(
        &cue_sim::key_for(0),
        w.peers[0].epoch,
        Item::Changes {
            doc,
            changes: vec![change],
        },
    )
}

/// What automerge alone makes of `items`: each document loaded, each item's changes
/// read and applied to peer 1's stored copy of their document.
fn automerge_alone(w: &World, items: Vec<Item>) {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    std::panic::set_hook(Box::new(|_| {}));
    for item in items {
        let before = vm_hwm_kib();
        let t = Instant::now();
        let outcome = match item {
            Item::Whole { bytes, .. } => catch_unwind(|| automerge::AutoCommit::load(&bytes))
                .map(|r| r.map(|_| ()).map_err(|e| e.to_string())),
            Item::Changes { doc, changes }
            | Item::Sealed {
                item: cue_core::wire::Sealable::Changes { doc, changes },
                ..
            } => {
                let stored = w.peers[1].store.docs.get(&doc).cloned().unwrap_or_default();
                catch_unwind(AssertUnwindSafe(|| {
                    let mut target =
                        automerge::AutoCommit::load(&stored).map_err(|e| e.to_string())?;
                    let parsed: Result<Vec<automerge::Change>, _> = changes
                        .into_iter()
                        .map(automerge::Change::from_bytes)
                        .collect();
                    let parsed = parsed.map_err(|e| e.to_string())?;
                    target.apply_changes(parsed).map_err(|e| e.to_string())
                }))
            }
            _ => Ok(Ok(())),
        };
        let took = t.elapsed();
        let outcome = match outcome {
            Err(_) => "automerge panicked".to_string(),
            Ok(Err(e)) => format!("refused: {e}"),
            Ok(Ok(())) => "taken".to_string(),
        };
        println!(
            "automerge alone: VmHWM {} KiB before, {} KiB after; {:.1} ms; {outcome}",
            before,
            vm_hwm_kib(),
            took.as_secs_f64() * 1e3
        );
    }
}
