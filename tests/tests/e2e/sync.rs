//! Syncing across real daemons: live edits both ways, offline work merged on restart,
//! delete and restore, ignore rules, edits made with `sed -i`, a relay restart (also one
//! killed in the middle of a burst) and a crash.

use std::time::Duration;

use cue_e2e::{Peer, Relay, pair, tree, wait_converged, wait_for_file, wait_until};

#[test]
fn files_already_there_and_live_edits_sync_both_ways() {
    let relay = Relay::start();
    let a = Peer::new("alice");
    let b = Peer::new("bob");
    a.write(
        "notes/today.md",
        "---\ntitle: Today\ntags: [a]\n---\nfirst line\n",
    );
    a.init(&relay.url());
    b.join(&a.invite());
    a.start();
    b.start();
    // Initial sync of what was there before init.
    wait_for_file(&b, "notes/today.md", "imported file", |c| {
        c.contains("first line")
    });

    // An in-place edit on a, a temp-file-and-rename save on b.
    a.write(
        "notes/today.md",
        "---\ntitle: Today\ntags: [a]\n---\nfirst line\nfrom alice\n",
    );
    wait_for_file(&b, "notes/today.md", "alice's edit", |c| {
        c.contains("from alice")
    });
    b.write_via_rename(
        "notes/today.md",
        "---\ntitle: Today\ntags: [a]\n---\nfirst line\nfrom alice\nfrom bob\n",
    );
    wait_for_file(&a, "notes/today.md", "bob's edit", |c| {
        c.contains("from bob")
    });

    // A new file, and a deletion.
    b.write("b.txt", "made by bob\n");
    wait_for_file(&a, "b.txt", "bob's new file", |c| c == "made by bob\n");
    a.remove("b.txt");
    wait_until("the deletion to reach bob", || b.read("b.txt").is_none());

    // Nothing echoes: the daemons' own writes are not changes, so both settle with
    // nothing pending.
    wait_until("nothing pending on either side", || {
        a.status().0["pending_changes"] == 0 && b.status().0["pending_changes"] == 0
    });
    assert_eq!(a.read("notes/today.md"), b.read("notes/today.md"));
    a.stop();
    b.stop();
}

#[test]
fn concurrent_offline_edits_merge_when_the_daemons_start_again() {
    let (_relay, a, b) = pair();
    a.write("doc.md", "one\ntwo\nthree\n");
    a.write("gone.md", "to be deleted\n");
    wait_for_file(&b, "doc.md", "the first version", |c| {
        c == "one\ntwo\nthree\n"
    });
    wait_for_file(&b, "gone.md", "the file to delete", |_| true);
    a.stop();
    b.stop();

    // Both edit while stopped: different lines of one file, a new file, a deletion.
    a.write("doc.md", "one (alice)\ntwo\nthree\n");
    a.write("new-on-a.md", "alice was offline\n");
    b.write("doc.md", "one\ntwo\nthree (bob)\n");
    b.remove("gone.md");

    a.start();
    b.start();
    let merged = "one (alice)\ntwo\nthree (bob)\n";
    wait_for_file(&a, "doc.md", "both edits", |c| c == merged);
    wait_for_file(&b, "doc.md", "both edits", |c| c == merged);
    wait_for_file(&b, "new-on-a.md", "alice's offline file", |_| true);
    wait_until("bob's offline deletion to reach alice", || {
        a.read("gone.md").is_none()
    });
    a.stop();
    b.stop();
}

#[test]
fn delete_then_restore() {
    let (_relay, a, b) = pair();
    a.write("keep.md", "precious\n");
    wait_for_file(&b, "keep.md", "the file", |c| c == "precious\n");
    b.remove("keep.md");
    wait_until("the deletion to reach alice", || {
        a.read("keep.md").is_none()
    });
    a.cue_ok(&["sync", "restore", "keep.md"]);
    assert_eq!(a.read("keep.md").as_deref(), Some("precious\n"));
    wait_for_file(&b, "keep.md", "the restored file", |c| c == "precious\n");
    let log = a.cue_ok(&["activity", "log", "--json"]);
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .inspect(|v| {
            assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
            assert!(v["device"].is_string(), "{v}");
        })
        .collect();
    assert!(entries.iter().any(|v| v["kind"] == "restore"), "{log}");
    // Bob's deletion is logged here as a deletion, by bob.
    assert!(
        entries
            .iter()
            .any(|v| v["kind"] == "delete" && v["device"] == "bob" && v["path"] == "keep.md"),
        "{log}"
    );
    a.stop();
    b.stop();
}

#[test]
fn ignored_files_and_git_stay_local() {
    let (_relay, a, b) = pair();
    a.write(".cueignore", "*.log\nbuild/\n");
    wait_for_file(&b, ".cueignore", "the ignore rules", |_| true);
    a.write("debug.log", "noise\n");
    a.write("build/out.bin", "artefact\n");
    a.write(".git/config", "[core]\n");
    a.write("marker.md", "after the ignored ones\n");
    wait_for_file(&b, "marker.md", "the marker", |_| true);
    // The marker was written after the ignored files, and changes flow in order.
    assert!(b.read("debug.log").is_none());
    assert!(b.read("build/out.bin").is_none());
    assert!(b.read(".git/config").is_none());
    a.stop();
    b.stop();
}

/// A `.cueignore` added after the files it names were synced (here on one peer, and
/// arriving on the other as a synced file): both keep the files, nothing is deleted.
#[test]
fn a_cueignore_added_later_deletes_nothing_anywhere() {
    let (_relay, a, b) = pair();
    a.write("debug.log", "noise\n");
    a.write("build/out.bin", "artefact\n");
    a.write("notes.md", "kept\n");
    wait_for_file(&b, "build/out.bin", "the artefact", |_| true);
    wait_for_file(&b, "debug.log", "the log", |_| true);
    b.write(".cueignore", "*.log\nbuild/\n");
    wait_for_file(&a, ".cueignore", "the ignore rules", |_| true);
    // Something after the rules, to know both daemons have taken them in and rescanned.
    b.write("marker.md", "after the rules\n");
    wait_for_file(&a, "marker.md", "the marker", |_| true);
    a.write("marker2.md", "and back\n");
    wait_for_file(&b, "marker2.md", "the second marker", |_| true);
    for peer in [&a, &b] {
        assert_eq!(peer.read("debug.log").as_deref(), Some("noise\n"));
        assert_eq!(peer.read("build/out.bin").as_deref(), Some("artefact\n"));
        assert_eq!(peer.read("notes.md").as_deref(), Some("kept\n"));
    }
    let log = a.cue_ok(&["activity", "log", "--json"]);
    assert!(!log.contains("\"delete\""), "{log}");
    // Status says how many synced files the rules now leave out here.
    for peer in [&a, &b] {
        wait_until(
            &format!("{}'s status to count the ignored files", peer.name),
            || peer.status().0["ignored_files"] == 2,
        );
        let text = String::from_utf8_lossy(&peer.cue(&["sync", "status"]).stdout).into_owned();
        assert!(
            text.contains("2 synced files are ignored here by .cueignore"),
            "{text}"
        );
    }
    a.stop();
    b.stop();
}

#[test]
fn a_relay_restart_loses_nothing() {
    let (relay, a, b) = pair();
    a.write("r.md", "before\n");
    wait_for_file(&b, "r.md", "the first version", |c| c == "before\n");
    let addr = relay.stop();
    wait_until("alice to notice the relay is gone", || {
        a.status().0["relay"]["connected"] == false
    });
    a.write("r.md", "before\nduring the outage\n");
    wait_until("alice to take the edit in", || {
        a.status().0["pending_changes"] != 0
    });
    let _relay = Relay::start_on(&addr.to_string());
    wait_for_file(&b, "r.md", "the edit made while the relay was down", |c| {
        c.contains("during the outage")
    });
    a.stop();
    b.stop();
}

#[test]
fn a_crash_right_after_an_edit_loses_nothing() {
    let (_relay, a, b) = pair();
    wait_until("the peers to meet", || {
        a.status().0["peers"][0]["online"] == true
    });
    b.stop();
    a.write("crash.md", "saved just before the crash\n");
    wait_until("alice to take the edit in", || a.status().0["files"] == 1);
    a.kill_daemon();
    a.start();
    b.start();
    wait_for_file(&b, "crash.md", "the edit from before the crash", |c| {
        c == "saved just before the crash\n"
    });
    a.stop();
    b.stop();
}

#[test]
fn a_third_peer_joining_later_gets_everything() {
    let (relay, a, b) = pair();
    a.write("one.md", "1\n");
    b.write("two.md", "2\n");
    wait_for_file(&a, "two.md", "bob's file", |_| true);
    wait_for_file(&b, "one.md", "alice's file", |_| true);
    let c = Peer::new("carol");
    c.write("three.md", "3\n");
    c.join(&b.invite());
    c.start();
    for (p, f) in [
        (&c, "one.md"),
        (&c, "two.md"),
        (&a, "three.md"),
        (&b, "three.md"),
    ] {
        wait_for_file(p, f, "the other peers' files", |_| true);
    }
    drop(relay);
    for p in [&a, &b, &c] {
        p.stop();
    }
}

#[test]
fn sed_in_place_edits_sync() {
    let (_relay, a, b) = pair();
    let first = "---\ntitle: Draft\n---\nthe colour is red\n";
    a.write("notes/sed.md", first);
    wait_for_file(&b, "notes/sed.md", "the first version", |c| c == first);

    // GNU sed -i writes a temporary `sedXXXXXX` next to the file and renames it over.
    a.sed_in_place("notes/sed.md", "s/red/blue/");
    let mut expected = first.replace("red", "blue");
    assert_eq!(a.read("notes/sed.md").as_deref(), Some(expected.as_str()));
    wait_for_file(&b, "notes/sed.md", "the sed -i edit", |c| c == expected);

    // Several in a row, as fast as a shell runs them.
    for i in 0..8 {
        a.sed_in_place("notes/sed.md", &format!("$a line {i} from alice"));
        expected.push_str(&format!("line {i} from alice\n"));
    }
    assert_eq!(a.read("notes/sed.md").as_deref(), Some(expected.as_str()));
    wait_for_file(&b, "notes/sed.md", "every quick sed -i", |c| c == expected);

    // And the other way, on the frontmatter and the body at once.
    b.sed_in_place(
        "notes/sed.md",
        "s/title: Draft/title: Final/;s/line 3 from/line three from/",
    );
    let expected = expected
        .replace("title: Draft", "title: Final")
        .replace("line 3 from", "line three from");
    wait_for_file(&a, "notes/sed.md", "bob's sed -i", |c| c == expected);
    wait_converged(&[&a, &b]);
    // sed's temporaries never became files of the workspace.
    let files: Vec<String> = tree(b.root()).into_keys().collect();
    assert_eq!(files, ["notes/sed.md"]);
    a.stop();
    b.stop();
}

/// A save is open, truncate, write, close; a writer held off the CPU between the
/// truncation and the write (a loaded machine, a slow program) leaves the file empty for
/// that while. The half-done save is neither synced nor kept as a version: the other
/// peer goes from the old text to the new, and the history holds the two saves only. The
/// same for a new file made empty and written after a pause.
#[test]
fn a_writer_pausing_in_the_middle_of_a_save_syncs_only_the_finished_file() {
    use std::io::Write as _;
    let (_relay, a, b) = pair();
    let v1 = "---\ntitle: Plan\n---\nfirst line\n";
    let v2 = "---\ntitle: Plan\n---\nfirst line\nsecond line\n";
    a.write("plan.md", v1);
    wait_for_file(&b, "plan.md", "the first version", |c| c == v1);
    for (rel, old, new) in [("plan.md", Some(v1), v2), ("new.md", None, v1)] {
        let mut file = std::fs::File::create(a.path(rel)).unwrap();
        // The pause: twenty quiet periods of the watcher (10 ms), well within the
        // longest a batch waits for a save to end (1 s) on a loaded machine.
        std::thread::sleep(std::time::Duration::from_millis(200));
        file.write_all(new.as_bytes()).unwrap();
        drop(file);
        let seen = std::cell::RefCell::new(Vec::<String>::new());
        wait_for_file(&b, rel, "the finished save", |c| {
            let mut seen = seen.borrow_mut();
            if seen.last().map(String::as_str) != Some(c) {
                seen.push(c.to_string());
            }
            c == new
        });
        let seen = seen.into_inner();
        assert!(
            seen.iter().all(|c| Some(c.as_str()) == old || c == new),
            "{rel}: bob saw a half-done save: {seen:?}"
        );
        let history = a.cue_ok(&["history", rel, "--json"]);
        let versions = serde_json::from_str::<serde_json::Value>(&history).unwrap();
        let sizes: Vec<_> = versions
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["size"].as_u64().unwrap() as usize)
            .collect();
        let expected: Vec<usize> = [Some(new.len()), old.map(str::len)]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(sizes, expected, "{rel}: {history}");
    }
    a.stop();
    b.stop();
}

#[test]
fn a_relay_killed_in_the_middle_of_a_burst_loses_nothing() {
    let (relay, a, b) = pair();
    wait_until("the peers to meet", || {
        a.status().0["peers"][0]["online"] == true
    });
    let mut relay = Some(relay);
    let mut addr = None;
    let mut log = String::new();
    for i in 0..50 {
        a.write(&format!("burst/a{i:02}.md"), &format!("alice's file {i}\n"));
        b.write_via_rename(&format!("burst/b{i:02}.md"), &format!("bob's file {i}\n"));
        log.push_str(&format!("entry {i}\n"));
        a.write("log.md", &log);
        if i == 15 {
            // kill -9: no "going away", the sockets just die.
            addr = relay.take().map(Relay::kill);
        }
        if i == 35 {
            relay = Some(Relay::start_on(&addr.unwrap().to_string()));
        }
        // Pacing the burst.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for i in 0..50 {
        wait_for_file(&b, &format!("burst/a{i:02}.md"), "alice's burst", |c| {
            c == format!("alice's file {i}\n")
        });
        wait_for_file(&a, &format!("burst/b{i:02}.md"), "bob's burst", |c| {
            c == format!("bob's file {i}\n")
        });
    }
    wait_for_file(&b, "log.md", "every append", |c| c == log);
    wait_converged(&[&a, &b]);
    a.stop();
    b.stop();
}

/// Both peers append to one file at once, as `>>` does (open, append, close), A every
/// 3 ms and B every 5 ms: every line survives, on both peers, whatever the
/// interleaving with the daemons replacing the file by the other's version.
#[test]
fn concurrent_appends_keep_every_line() {
    use std::io::Write as _;
    let (_relay, a, b) = pair();
    a.write("log.md", "# log\n");
    wait_for_file(&b, "log.md", "the log", |_| true);
    let append = |peer: &Peer, who: &str, lines: usize, every_ms: u64| {
        let path = peer.path("log.md");
        for i in 0..lines {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            // One write, as `echo … >>` makes (`writeln!` would make four).
            f.write_all(format!("{who} {i}\n").as_bytes()).unwrap();
            drop(f);
            // The pace of the workload, not a wait for a condition.
            std::thread::sleep(Duration::from_millis(every_ms));
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| append(&a, "A", 500, 3));
        s.spawn(|| append(&b, "B", 300, 5));
    });
    let missing = |text: &str| -> Vec<String> {
        let lines: std::collections::BTreeSet<&str> = text.lines().collect();
        let want = (0..500)
            .map(|i| format!("A {i}"))
            .chain((0..300).map(|i| format!("B {i}")));
        want.filter(|l| !lines.contains(l.as_str())).collect()
    };
    let mut last = (None, None);
    let settled = cue_testkit::wait_until("every line on both", Duration::from_secs(30), || {
        last = (a.read("log.md"), b.read("log.md"));
        Ok(last.0.is_some()
            && last.0 == last.1
            && missing(last.0.as_deref().unwrap_or("")).is_empty())
    })
    .is_ok();
    let (ta, tb) = last;
    let (ta, tb) = (ta.unwrap_or_default(), tb.unwrap_or_default());
    assert!(
        settled,
        "alice misses {:?}, bob misses {:?}; same bytes: {}; odd lines at alice: {:?}",
        missing(&ta),
        missing(&tb),
        ta == tb,
        ta.lines()
            .filter(|l| !(l.starts_with("A ") || l.starts_with("B ")) || l.len() > 6)
            .collect::<Vec<_>>()
    );
    a.stop();
    b.stop();
}

/// A program keeps a file open for appending (a logger) while the other peer edits the
/// file: cue replaces the file with the merged version, and the logger goes on writing
/// to the file it has open, which is no longer in the folder. cue keeps that file aside
/// for a while and merges what is written to it: no line is lost, on either peer.
#[test]
fn a_program_writing_to_a_replaced_file_loses_nothing() {
    use std::io::Write as _;
    let (_relay, a, b) = pair();
    a.write("app.log.md", "# app\n");
    wait_for_file(&b, "app.log.md", "the log", |_| true);
    let mut logger = std::fs::OpenOptions::new()
        .append(true)
        .open(a.path("app.log.md"))
        .unwrap();
    logger.write_all(b"L 0\n").unwrap();
    wait_for_file(&b, "app.log.md", "the first line", |c| c.contains("L 0"));
    b.write("app.log.md", "# app, edited on bob\nL 0\n");
    wait_for_file(&a, "app.log.md", "bob's edit", |c| {
        c.contains("edited on bob")
    });
    // The logger's file is now the replaced one.
    for i in 1..20 {
        logger.write_all(format!("L {i}\n").as_bytes()).unwrap();
    }
    drop(logger);
    wait_until("every logged line in the file on both peers", || {
        [&a, &b].iter().all(|p| {
            let text = p.read("app.log.md").unwrap_or_default();
            text.contains("edited on bob")
                && (0..20).all(|i| text.lines().any(|l| l == format!("L {i}")))
        })
    });
    a.stop();
    b.stop();
}

/// A device whose folder (`.cuedeck` included) is put back from last night's backup:
/// its edits after that still reach the others. (Its store's counters went back with it:
/// the next run's changes took the actor and sequence numbers of runs the backup
/// missed, which peers held, and its messages the numbers peers had already seen: all
/// refused or dropped as replays.)
/// And its own seals from those runs, which the peers hand back, outranked the ones it
/// made next: its new changes went out under a seal that did not reach them, refused as
/// forged. And the changes of those runs it got back it sealed again, under a seal
/// ranking above theirs that named only those that had arrived: the rest were refused
/// everywhere as forged, and the two devices pulled each other without end.
///
/// And once it made a change before the missed runs' changes came back, its new seal
/// (on its new changes alone) took the place of the missed runs' seal everywhere: nobody could pass those runs'
/// changes on as its own, a file made in them never came back, and the two devices
/// pulled each other without end.
#[test]
fn a_device_put_back_from_a_backup_still_syncs_its_edits() {
    let (_relay, a, b) = pair();
    a.write("notes.md", "one\n");
    wait_for_file(&b, "notes.md", "the first version", |c| c == "one\n");
    a.stop();
    let backup = tempfile::tempdir().unwrap();
    cue_e2e::copy_as_is(&a.path(".cuedeck"), backup.path());
    // The runs the backup will miss: several starts, edits, a new file.
    for round in 0..3 {
        a.start();
        a.write("notes.md", &format!("one\nround {round}\n"));
        a.write(&format!("r{round}.md"), "made after the backup\n");
        wait_for_file(&b, "notes.md", "the round's edit", |c| {
            c.contains(&format!("round {round}"))
        });
        a.stop();
    }
    // The disk dies; the folder comes back from the backup (the files as they were
    // then), some time later: the clock, which keeps a run's epoch from being one a
    // missed run used, has moved past the missed runs' epochs (quick starts count on
    // from the last, ahead of the clock).
    let log = std::fs::read_to_string(a.path(".cuedeck/daemon.log")).unwrap();
    let last_epoch: u64 = log
        .lines()
        .filter_map(|l| l.split(" epoch=").nth(1))
        .filter_map(|e| e.split_whitespace().next()?.parse().ok())
        .max()
        .expect("the daemon logs its epoch");
    wait_until("the clock to pass the missed runs' epochs", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        now > last_epoch
    });
    std::fs::remove_dir_all(a.path(".cuedeck")).unwrap();
    cue_e2e::copy_as_is(&backup.path().join(".cuedeck"), a.root());
    a.write("notes.md", "one\n");
    for round in 0..3 {
        std::fs::remove_file(a.path(&format!("r{round}.md"))).unwrap();
    }
    a.start();
    wait_converged(&[&a, &b]);
    a.write("notes.md", "one\nround 2\nafter the restore\n");
    a.write("later.md", "made after the restore\n");
    wait_for_file(&b, "later.md", "a file made after the restore", |c| {
        c == "made after the restore\n"
    });
    wait_for_file(&b, "notes.md", "an edit made after the restore", |c| {
        c.contains("after the restore")
    });
    wait_converged(&[&a, &b]);
    a.stop();
    b.stop();
}

/// A file replaced by a folder of its name (`rm plan; mkdir plan; echo > plan/a.md`),
/// all within one watcher batch, then the folder replaced by a file again: each time the
/// old one is a deletion everywhere (restorable), nothing comes back as a conflict copy,
/// and both peers hold the same files.
#[test]
fn a_file_replaced_by_a_folder_of_its_name_and_back_is_a_deletion_everywhere() {
    let (_relay, a, b) = pair();
    a.write("plan", "a file\n");
    wait_for_file(&b, "plan", "the file", |c| c == "a file\n");

    std::fs::remove_file(a.path("plan")).unwrap();
    std::fs::create_dir(a.path("plan")).unwrap();
    std::fs::write(a.path("plan/a.md"), "in the folder\n").unwrap();
    wait_for_file(&b, "plan/a.md", "the file in the folder", |c| {
        c == "in the folder\n"
    });
    wait_converged(&[&a, &b]);
    let files: Vec<String> = tree(b.root()).into_keys().collect();
    assert_eq!(files, ["plan/a.md"], "no conflict copy of the old file");

    std::fs::remove_dir_all(a.path("plan")).unwrap();
    std::fs::write(a.path("plan"), "a file again\n").unwrap();
    wait_for_file(&b, "plan", "the file again", |c| c == "a file again\n");
    wait_converged(&[&a, &b]);
    let files: Vec<String> = tree(b.root()).into_keys().collect();
    assert_eq!(files, ["plan"], "no conflict copy of the folder's file");
    // Both were deletions, with something to restore.
    let log = b.cue_ok(&["activity", "log", "--json"]);
    for path in ["plan", "plan/a.md"] {
        assert!(
            log.lines().any(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["kind"] == "delete" && v["path"] == path
            }),
            "{path} deleted: {log}"
        );
    }
    a.stop();
    b.stop();
}

/// A save inside a folder, a new file in it, and the folder renamed right after (one
/// watcher batch, as a script or a quick `mv` does): a rename with the new content, not
/// a deletion, and the new file synced too.
#[test]
fn a_folder_renamed_right_after_a_save_inside_it_moves_the_saved_file() {
    use std::io::Write as _;
    let (_relay, a, b) = pair();
    a.write("drafts/plan.md", "plan\n");
    wait_for_file(&b, "drafts/plan.md", "the file", |_| true);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(a.path("drafts/plan.md"))
        .unwrap();
    f.write_all(b"one more line\n").unwrap();
    drop(f);
    std::fs::write(a.path("drafts/new.md"), "new\n").unwrap();
    std::fs::rename(a.path("drafts"), a.path("final")).unwrap();
    wait_for_file(
        &b,
        "final/plan.md",
        "the moved file, with its new line",
        |c| c == "plan\none more line\n",
    );
    wait_for_file(&b, "final/new.md", "the new file", |c| c == "new\n");
    wait_converged(&[&a, &b]);
    let files: Vec<String> = tree(b.root()).into_keys().collect();
    assert_eq!(files, ["final/new.md", "final/plan.md"]);
    let log = b.cue_ok(&["activity", "log", "--json"]);
    assert!(!log.contains("\"delete\""), "{log}");
    a.stop();
    b.stop();
}

/// Two running peers create the same new file at the same moment, five times over: each
/// time one version keeps the name and the other becomes a conflict copy, on both peers,
/// and both list the conflict.
#[test]
fn a_file_created_at_once_on_two_peers_keeps_both_versions() {
    let (_relay, a, b) = pair();
    wait_until("the peers to meet", || {
        a.status().0["peers"][0]["online"] == true
    });
    for i in 0..5 {
        std::thread::scope(|s| {
            s.spawn(|| a.write(&format!("race{i}.md"), "A side\n"));
            s.spawn(|| b.write(&format!("race{i}.md"), "B side\n"));
        });
    }
    let versions = |peer: &Peer, i: usize| -> Vec<String> {
        let mut v: Vec<String> = tree(&peer.path(""))
            .into_iter()
            .filter(|(p, _)| p.starts_with(&format!("race{i}.")))
            .map(|(_, c)| String::from_utf8_lossy(&c).into_owned())
            .collect();
        v.sort();
        v
    };
    wait_until("both versions of every race on both peers", || {
        [&a, &b]
            .iter()
            .all(|p| (0..5).all(|i| versions(p, i) == ["A side\n", "B side\n"]))
    });
    wait_until("five conflicts listed on both peers", || {
        [&a, &b].iter().all(|p| {
            p.status().0["conflicts"]
                .as_array()
                .is_some_and(|c| c.len() == 5)
        })
    });
    a.stop();
    b.stop();
}

/// The note `copy_a_large_folder_into` writes at `copied/n{i:04}.md`.
fn copied_note(i: usize) -> String {
    format!("# Note {i}\n\n{}\n", "words of a copied note ".repeat(40))
}

/// Writes 6,000 notes into `p`'s folder as fast as the disk takes them: several times
/// what a daemon takes in in two seconds here (about a third was left with 4,000).
/// Returns how many.
fn copy_a_large_folder_into(p: &Peer) -> usize {
    let files = 6000;
    for i in 0..files {
        p.write(&format!("copied/n{i:04}.md"), &copied_note(i));
    }
    files
}

/// `cue sync stop` during a large copy-in does not wait until the whole copy is taken in
/// (minutes for tens of thousands of files; `docker stop` kills after ten seconds): it
/// takes in what it can for two seconds, says how many changes it left on disk, and the
/// next start takes them in. Nothing is lost: bob gets every file.
#[test]
fn a_stop_during_a_large_copy_leaves_the_rest_to_the_next_start() {
    let (_relay, a, b) = pair();
    let before = a.status().0["files"].as_u64().unwrap_or(0);
    let files = copy_a_large_folder_into(&a);
    // Stopped once the daemon is taking the copy in: a stop that comes before the
    // watcher has reported anything has nothing to say about it (the next start's scan
    // finds it all the same).
    wait_until("alice to start taking the copy in", || {
        a.status().0["files"].as_u64().unwrap_or(0) > before
    });
    let out = a.cue(&["sync", "stop"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("not taken in yet") && said.contains("next start takes them in"),
        "the stop waited for the whole copy: {said}"
    );
    assert!(!a.running());
    a.start();
    wait_until("bob to get every copied note", || {
        b.status().0["files"].as_u64() == Some(files as u64)
    });
    for i in [0, files / 2, files - 1] {
        let path = format!("copied/n{i:04}.md");
        assert_eq!(b.read(&path), Some(copied_note(i)), "{path}");
    }
    a.stop();
    b.stop();
}

/// SIGTERM (a service manager's stop, `docker stop`) during a large copy-in stops the
/// daemon as `cue sync stop` does, within seconds, not once the whole copy is in (a
/// container is killed ten seconds after it): what is left is taken in at the next
/// start, and bob gets every file.
#[test]
fn a_sigterm_during_a_large_copy_stops_the_daemon_without_waiting_for_it() {
    use rustix::process::{Pid, Signal, kill_process};
    let (_relay, a, b) = pair();
    let files = copy_a_large_folder_into(&a);
    let pid = a.live_daemon().expect("alice's daemon runs");
    kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::TERM).unwrap();
    wait_until("alice's daemon to stop", || !a.running());
    let taken_in = a.status().0["files"].as_u64().unwrap();
    assert!(
        taken_in < files as u64,
        "the daemon stopped only once it had taken in all {taken_in} files"
    );
    a.start();
    wait_until("bob to get every copied note", || {
        b.status().0["files"].as_u64() == Some(files as u64)
    });
    assert_eq!(b.read("copied/n5999.md"), Some(copied_note(5999)));
    a.stop();
    b.stop();
}

/// Alice's daemon takes in a large copy-in (a `git checkout`, an unzipped folder) while
/// bob edits: bob's edit lands on alice's disk, and `cue sync status` answers, while
/// alice is still taking the copy in, not after it. Alice's daemon used to handle
/// nothing from peers until the whole batch was in.
#[test]
fn a_peers_edit_lands_while_a_large_copy_is_being_taken_in() {
    let (_relay, a, b) = pair();
    b.write("from-bob.md", "one\n");
    wait_for_file(&a, "from-bob.md", "bob's first version", |c| c == "one\n");
    let files = 3000;
    for i in 0..files {
        a.write(
            &format!("copied/n{i:04}.md"),
            &format!("# Note {i}\n\n{}\n", "words of a copied note ".repeat(40)),
        );
    }
    b.write("from-bob.md", "one\ntwo\n");
    wait_for_file(&a, "from-bob.md", "bob's edit", |c| c == "one\ntwo\n");
    let taken_in = a.status().0["files"].as_u64().unwrap();
    assert!(
        taken_in < files + 1,
        "bob's edit landed only once alice had taken in all {taken_in} files"
    );
    wait_until("alice to take in the whole copy", || {
        a.status().0["files"].as_u64() == Some(files + 1)
    });
    a.stop();
    b.stop();
}
