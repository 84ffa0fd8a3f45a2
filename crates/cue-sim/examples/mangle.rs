//! What a member's mangled changes do to automerge 0.12, and what cue's checks let
//! through: one real change (an edit of a note, a deletion, a map value, a list) edited
//! at one to three random bytes with its checksum mended, `n` times, each applied to a
//! copy of the document it was made on.
//!
//! `cargo run --release -p cue-sim --example mangle -- [n]` (default 100,000)
//! `cargo run --release -p cue-sim --example mangle -- document [n]`: the document the
//! change was made in, mangled the same way, loaded as cue loads a peer's document.
//!
//! Counted: changes automerge's parsing refuses; of the rest, those `well_formed`
//! refuses; then, applied as automerge alone would, how many panic and how many leave a
//! document whose saved form does not load again with the same heads; and with cue's
//! checks (`well_formed` before, every applied change rebuilt to its own hash after), how
//! many spoiled documents would be kept (the goal: none). docs/security.md quotes it.

use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use rand::SeedableRng;

fn main() -> Result<(), automerge::AutomergeError> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let documents = args.first().is_some_and(|a| a == "document");
    if documents {
        args.remove(0);
    }
    let n: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    std::panic::set_hook(Box::new(|_| {}));
    let mut base = AutoCommit::new().with_actor(automerge::ActorId::from(&[1u8; 16][..]));
    let text = base.put_object(ROOT, "t", ObjType::Text)?;
    base.splice_text(&text, 0, 0, "hello world\nsecond line\n")?;
    base.put(ROOT, "k", "v")?;
    base.commit();
    let mut other = base
        .fork()
        .with_actor(automerge::ActorId::from(&[2u8; 16][..]));
    other.splice_text(&text, 3, 4, "XYZ")?;
    other.put(ROOT, "k", 5)?;
    other.delete(ROOT, "k")?;
    let list = other.put_object(ROOT, "l", ObjType::List)?;
    other.insert(&list, 0, true)?;
    other.commit();
    let Some(change) = other
        .get_last_local_change()
        .map(|c| c.raw_bytes().to_vec())
    else {
        return Ok(());
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    if documents {
        documents_mangled(&other.save(), n, &mut rng);
        return Ok(());
    }
    let mut c = Counts::default();
    for _ in 0..n {
        let Some(m) = cue_sim::bomb::mangled(&change, &mut rng) else {
            continue;
        };
        let Ok(parsed) = cue_core::doc::change_from_bytes(m.clone()) else {
            c.unparsed += 1;
            continue;
        };
        let well_formed = cue_core::doc::well_formed(&parsed);
        if !well_formed {
            c.ill_formed += 1;
        }
        let hash = parsed.hash();
        let mut doc = base.fork();
        match catch_unwind(AssertUnwindSafe(|| doc.apply_changes([parsed]))) {
            Err(_) => c.panicked += 1,
            Ok(Err(_)) => c.refused += 1,
            Ok(Ok(())) => {
                let rebuilt = catch_unwind(AssertUnwindSafe(|| {
                    doc.get_change_by_hash(&hash).map(|x| x.hash())
                }));
                let intact = matches!(rebuilt, Ok(Some(h)) if h == hash);
                let heads = doc.get_heads();
                let reloaded = catch_unwind(AssertUnwindSafe(|| {
                    AutoCommit::load(&doc.save())
                        .map(|mut d| d.get_heads())
                        .ok()
                }));
                let spoiled = !matches!(reloaded, Ok(Some(ref h)) if *h == heads);
                if well_formed && intact && !spoiled {
                    // A local edit on top, saved and loaded again, as the daemon would.
                    let edited = catch_unwind(AssertUnwindSafe(|| {
                        match doc.get(ROOT, "t").ok().flatten() {
                            Some((automerge::Value::Object(ObjType::Text), text)) => {
                                let len = doc.length(&text);
                                let cut = 1.min(len as isize);
                                doc.splice_text(&text, len / 2, cut, "edit").ok()?;
                            }
                            // The change made "t" something else: edit beside it.
                            _ => doc.put(ROOT, "x", 1).ok()?,
                        }
                        doc.commit();
                        let heads = doc.get_heads();
                        let again = match AutoCommit::load(&doc.save()) {
                            Ok(mut d) => d.get_heads(),
                            Err(e) => {
                                if std::env::var("SHOW").is_ok() {
                                    eprintln!("load after edit: {e}");
                                }
                                return None;
                            }
                        };
                        (again == heads).then_some(())
                    }));
                    if !matches!(edited, Ok(Some(()))) {
                        c.edit_broken += 1;
                        if std::env::var("SHOW").is_ok() {
                            eprintln!("edit broke: panicked {}", edited.is_err());
                        }
                    }
                }
                if spoiled {
                    c.spoiled += 1;
                    if well_formed && intact {
                        c.spoiled_through_cue += 1;
                    }
                    // What a change too large to decode meets: the item's walk refuses
                    // marks, and the change must rebuild to itself.
                    let mut budget = cue_core::inflate::Budget::new(64 << 20);
                    let marks = budget.measure(&m).is_err() || budget.foreign_actions();
                    if intact && !marks {
                        c.spoiled_through_large += 1;
                    }
                }
            }
        }
    }
    println!(
        "{n} mangled changes: {} not parsed; of the rest, {} refused by well_formed. \
         automerge alone: {} panicked applying, {} refused, {} left a document whose save \
         does not load. Spoiled documents cue's checks would keep: {} ({} with the checks a \
         change too large to decode meets); of those they keep, documents a local edit \
         then breaks: {}",
        c.unparsed,
        c.ill_formed,
        c.panicked,
        c.refused,
        c.spoiled,
        c.spoiled_through_cue,
        c.spoiled_through_large,
        c.edit_broken
    );
    Ok(())
}

#[derive(Default)]
struct Counts {
    unparsed: u64,
    ill_formed: u64,
    panicked: u64,
    refused: u64,
    spoiled: u64,
    spoiled_through_cue: u64,
    spoiled_through_large: u64,
    edit_broken: u64,
}

/// `saved` mangled `n` times: how many automerge loads, how many of those make it panic
/// giving their changes back, and how many cue's `load_peer_document` lets through.
fn documents_mangled(saved: &[u8], n: u64, rng: &mut rand::rngs::StdRng) {
    let (mut loaded, mut panicked, mut through) = (0u64, 0u64, 0u64);
    for _ in 0..n {
        let Some(m) = cue_sim::bomb::mangled(saved, rng) else {
            continue;
        };
        let Ok(mut doc) = cue_core::doc::load_automerge(&m) else {
            continue;
        };
        loaded += 1;
        if catch_unwind(AssertUnwindSafe(|| doc.get_changes(&[]).len())).is_err() {
            panicked += 1;
            if cue_core::doc::load_peer_document(&m).is_ok() {
                through += 1;
            }
        }
    }
    println!(
        "{n} mangled documents: {loaded} load; {panicked} of those make automerge panic \
         giving their changes back; load_peer_document lets {through} of them through"
    );
}
