//! The engine's costs for one 4 KB Markdown file, as medians and p99 over repeated runs
//! (the figures of docs/benchmarks.md, "## Engine"):
//! `cargo run --release -p cue-core --example costs`.

#![allow(clippy::unwrap_used)] // a measuring tool: any failure is a bug to see at once

use std::time::Instant;

use automerge::ActorId;
use automerge::transaction::Transactable;
use cue_core::FileDoc;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<f64>) {
    let p50 = percentile(&mut samples, 0.5);
    let p99 = percentile(&mut samples, 0.99);
    println!(
        "{name:<48} p50 {p50:>8.3} ms   p99 {p99:>8.3} ms   (n={})",
        samples.len()
    );
}

fn note(i: usize) -> String {
    let mut s = String::from("---\ntitle: Weekly notes\ntags: [team, notes]\nstatus: draft\n---\n");
    let mut n = 0;
    while s.len() < 4096 {
        s.push_str(&format!(
            "Line {n} of note {i}: the quick brown fox jumps over the lazy dog.\n"
        ));
        n += 1;
    }
    s
}

fn main() {
    let text = note(0);
    // A local edit, and applying it on another peer.
    let mut apply = Vec::new();
    let mut apply_only = Vec::new();
    let mut render = Vec::new();
    let mut local = Vec::new();
    // One long-lived pair of documents, as the daemon keeps them cached: each round a
    // small edit somewhere in the text, made on one and applied on the other.
    let mut a = FileDoc::new(ActorId::from(vec![1; 20]));
    a.write("n.md", text.as_bytes(), 0).unwrap();
    let mut b = FileDoc::load(&a.save(), ActorId::from(vec![2; 20])).unwrap();
    let mut current = text.clone();
    for round in 0..220 {
        let line = format!("Line {} of note", (round * 7) % 50);
        let edited = current.replacen(&line, &format!("{line} ({round})"), 1);
        let t = Instant::now();
        let hash = a.write("n.md", edited.as_bytes(), 0).unwrap().unwrap();
        let change = automerge::Change::from_bytes(a.change(&hash).unwrap()).unwrap();
        let l = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        b.automerge().apply_changes(vec![change]).unwrap();
        let applied = t.elapsed().as_secs_f64() * 1e3;
        let bytes = b.materialize().unwrap();
        let total = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(bytes, edited.as_bytes());
        current = edited;
        if round >= 20 {
            local.push(l);
            apply.push(total);
            apply_only.push(applied);
            render.push(total - applied);
        }
    }
    report("local edit (diff + commit), 4 KB", local);
    report("apply one remote edit + materialise, 4 KB", apply);
    report("  of which automerge apply_changes", apply_only);
    report("  of which materialise (render the file)", render);

    // Load a document with 100 edits of history.
    let mut a = FileDoc::new(ActorId::from(vec![1; 20]));
    let mut t2 = text.clone();
    a.write("n.md", t2.as_bytes(), 0).unwrap();
    for i in 0..100 {
        t2 = t2.replacen("lazy", &format!("lazy{i}"), 1);
        a.write("n.md", t2.as_bytes(), 0).unwrap();
    }
    let saved = a.save();
    let mut load = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let d = FileDoc::load(&saved, ActorId::from(vec![3; 20])).unwrap();
        let _ = d.materialize().unwrap();
        load.push(t.elapsed().as_secs_f64() * 1e3);
    }
    report("load + materialise, 100 edits of history", load);

    // A new note, piece by piece: what an import or a copy-in pays a file, and what a
    // first version built from the content alone would (the change encoded from its
    // expanded form, without a document: the same bytes, so the same hash).
    let mut whole = Vec::new();
    let mut parse = Vec::new();
    let mut splice = Vec::new();
    let mut commit = Vec::new();
    let mut save = Vec::new();
    let mut load_new = Vec::new();
    let mut encode = Vec::new();
    for i in 0..300 {
        let text = note(i);
        let t = Instant::now();
        let mut d = FileDoc::new(ActorId::from(vec![1; 20]));
        d.write("n.md", text.as_bytes(), 0).unwrap();
        whole.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let saved = d.save();
        save.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let _ = FileDoc::load(&saved, ActorId::from(vec![3; 20])).unwrap();
        load_new.push(t.elapsed().as_secs_f64() * 1e3);
        let heads = d.heads();
        let change = d.automerge().get_changes(&[])[0].clone();
        let expanded = automerge::ExpandedChange::from(&change);
        let t = Instant::now();
        let again = automerge::Change::from(expanded);
        encode.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(again.hash(), heads[0]);

        let t = Instant::now();
        let _ = cue_core::frontmatter::parse(&text);
        parse.push(t.elapsed().as_secs_f64() * 1e3);
        let mut bare = automerge::AutoCommit::new().with_actor(ActorId::from(vec![1; 20]));
        let t = Instant::now();
        let body = bare
            .put_object(automerge::ROOT, "body", automerge::ObjType::Text)
            .unwrap();
        bare.splice_text(&body, 0, 0, &text).unwrap();
        splice.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        bare.commit();
        commit.push(t.elapsed().as_secs_f64() * 1e3);
    }
    report("new note: FileDoc::new + write", whole);
    report("  frontmatter parse", parse);
    report("  automerge put_object + splice_text alone", splice);
    report("  automerge commit alone", commit);
    report("  save", save);
    report("  load", load_new);
    report("  its change encoded from the expanded form", encode);
    println!(
        "stored size after 100 edits: {} B for {} B of text ({:.2}x)",
        saved.len(),
        t2.len(),
        saved.len() as f64 / t2.len() as f64
    );
}
