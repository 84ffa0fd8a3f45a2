//! Limits, faults and safety: small relay messages, rate limits, the mass-deletion
//! guard, symlinks, a crash during the first sync, a full resync, what the relay sees,
//! and several peers (five and ten) converging.

use cue_e2e::{
    Peer, Recorder, Relay, contains, pair, pair_on, pair_with_alice_env, wait_converged,
    wait_for_file, wait_until,
};

#[test]
fn files_larger_than_a_relay_message_sync_in_pieces() {
    let relay = Relay::start_with("127.0.0.1:0", &["--max-message-bytes", "65536"]);
    let (_relay, a, b) = pair_on(relay);
    // ~1 MiB of text that does not compress into one message, and a binary file.
    let text: String = (0..40_000)
        .map(|i| format!("line {i} {}\n", i * 7919 % 10007))
        .collect();
    a.write("big.md", &text);
    let binary: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(a.path("blob.bin"), &binary).unwrap();
    wait_for_file(&b, "big.md", "the whole large file", |c| c == text);
    wait_until("the binary file", || {
        std::fs::read(b.path("blob.bin")).is_ok_and(|c| c == binary)
    });
    a.stop();
    b.stop();
}

#[test]
fn files_over_max_file_size_are_skipped_and_listed() {
    let (_relay, a, b) = pair();
    a.stop();
    set_max_file_size(&a, 1000);
    a.write("huge.txt", &"x".repeat(5000));
    a.write("small.txt", "fits\n");
    a.start();
    wait_for_file(&b, "small.txt", "the small file", |_| true);
    let (s, _) = a.status();
    let skipped = s["skipped"].as_array().unwrap();
    assert!(
        skipped
            .iter()
            .any(|k| k["path"] == "huge.txt" && k["reason"].is_string()),
        "{s}"
    );
    assert!(b.read("huge.txt").is_none());
    // Deleted, it leaves the list.
    a.remove("huge.txt");
    wait_until("the deleted file to leave the list", || {
        !a.status().0["skipped"]
            .as_array()
            .is_some_and(|s| s.iter().any(|k| k["path"] == "huge.txt"))
    });
    a.stop();
    b.stop();
}

/// A synced file rewritten in place, slowly, until it is over `max_file_size`: the
/// watcher sees it empty and half-written on the way. The other device keeps the content
/// from before the rewrite (not an empty or cut file), and both list the file as skipped.
#[test]
fn a_file_grown_past_max_file_size_in_place_keeps_its_content_elsewhere() {
    use std::io::Write as _;
    let (_relay, a, b) = pair();
    a.stop();
    set_max_file_size(&a, 100_000);
    a.start();
    a.write("grows.md", "the real content\n");
    wait_for_file(&b, "grows.md", "the first version", |c| {
        c == "the real content\n"
    });
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(a.path("grows.md"))
        .unwrap();
    // Empty for a while (long enough to reach bob), then written in pieces, as a slow
    // copy does.
    wait_for_file(&b, "grows.md", "the empty file", str::is_empty);
    for _ in 0..20 {
        f.write_all(&[b'x'; 10_000]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(f);
    wait_until("both devices to list the file as skipped", || {
        [&a, &b].iter().all(|p| {
            p.status().0["skipped"]
                .as_array()
                .is_some_and(|s| s.iter().any(|k| k["path"] == "grows.md"))
        })
    });
    wait_for_file(&b, "grows.md", "the content from before", |c| {
        c == "the real content\n"
    });
    assert_eq!(
        std::fs::metadata(a.path("grows.md")).unwrap().len(),
        200_000,
        "the large file stays as it is where it was written"
    );
    a.stop();
    b.stop();
}

/// A large file copied in slowly: the watcher catches it small on the way, and its
/// beginning reaches the other device. Once it is over `max_file_size`, the beginning is
/// taken back there (a cut copy is no version of the file), and the device that has it
/// lists it as skipped, whole.
#[test]
fn a_file_copied_in_past_max_file_size_leaves_no_cut_copy_elsewhere() {
    use std::io::Write as _;
    let (_relay, a, b) = pair();
    a.stop();
    set_max_file_size(&a, 100_000);
    a.start();
    let mut f = std::fs::File::create(a.path("copied.bin")).unwrap();
    f.write_all(&[b'x'; 10_000]).unwrap();
    f.flush().unwrap();
    wait_for_file(&b, "copied.bin", "the beginning", |c| !c.is_empty());
    for _ in 0..20 {
        f.write_all(&[b'x'; 10_000]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(f);
    wait_until("the beginning to be taken back on the other device", || {
        !b.path("copied.bin").exists()
    });
    assert!(
        a.status().0["skipped"]
            .as_array()
            .is_some_and(|s| s.iter().any(|k| k["path"] == "copied.bin")),
        "listed as skipped where it is"
    );
    assert_eq!(
        std::fs::metadata(a.path("copied.bin")).unwrap().len(),
        210_000,
        "the large file stays as it is where it was written"
    );
    a.stop();
    b.stop();
}

/// A synced file grown past `max_file_size` and then ignored (to quiet the listing): the
/// rescan the new rule asks for finds it neither synced nor too large, and that is no
/// deletion; the other device keeps its copy.
#[test]
fn a_file_grown_too_large_and_then_ignored_is_not_deleted_elsewhere() {
    let (_relay, a, b) = pair();
    a.stop();
    set_max_file_size(&a, 100_000);
    a.start();
    a.write("big.md", "small at first\n");
    wait_for_file(&b, "big.md", "the file", |c| c == "small at first\n");
    a.write("big.md", &"x".repeat(200_000));
    wait_until("alice to list the file as too large", || {
        a.status().0["skipped"]
            .as_array()
            .is_some_and(|s| s.iter().any(|k| k["path"] == "big.md"))
    });
    a.write(".cueignore", "big.md\n");
    wait_for_file(&b, ".cueignore", "the rule", |c| c == "big.md\n");
    nothing_deleted_on_bob(&a, &b);
    assert_eq!(b.read("big.md").as_deref(), Some("small at first\n"));
    a.stop();
    b.stop();
}

/// Once what alice did before reached bob (a file written after it arrives), bob has
/// deleted nothing.
fn nothing_deleted_on_bob(a: &Peer, b: &Peer) {
    a.write("after.md", "after\n");
    wait_for_file(b, "after.md", "a file written after", |_| true);
    let log = b.cue_ok(&["activity", "log", "--json"]);
    assert!(!log.contains("\"delete\""), "{log}");
}

/// A folder synced before a rule ignored it, removed while the daemon runs (`rm -rf
/// build` with `build/` ignored): no deletion anywhere; the other device keeps its copy.
#[test]
fn an_ignored_folder_removed_while_running_is_deleted_nowhere() {
    let (_relay, a, b) = pair();
    a.write("build/out.log", "log\n");
    wait_for_file(&b, "build/out.log", "the file", |c| c == "log\n");
    a.write(".cueignore", "build/\n");
    wait_for_file(&b, ".cueignore", "the rule", |c| c == "build/\n");
    std::fs::remove_dir_all(a.path("build")).unwrap();
    nothing_deleted_on_bob(&a, &b);
    assert_eq!(b.read("build/out.log").as_deref(), Some("log\n"));
    a.stop();
    b.stop();
}

/// Files over `max_file_size` renamed, alone and with their folder: the rename is taken
/// without reading them (a file of gigabytes was read whole into memory to be compared),
/// a synced file grown too large keeps the content from before on the other device
/// under its new name, and the listing of skipped files follows the new names.
#[test]
fn files_too_large_to_sync_are_renamed_without_being_read() {
    let (_relay, a, b) = pair();
    a.stop();
    set_max_file_size(&a, 100_000);
    a.start();
    a.write("grew.md", "small at first\n");
    a.write("docs/keep.md", "kept\n");
    wait_for_file(&b, "grew.md", "the file", |c| c == "small at first\n");
    wait_for_file(&b, "docs/keep.md", "the file", |_| true);
    a.write("grew.md", &"x".repeat(200_000));
    a.write("docs/huge.bin", &"y".repeat(300_000));
    let skipped = |p: &Peer| -> Vec<String> {
        let mut paths: Vec<String> = p.status().0["skipped"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(|k| k["path"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        paths
    };
    wait_until("alice to list both as too large", || {
        skipped(&a) == ["docs/huge.bin", "grew.md"]
    });
    std::fs::rename(a.path("grew.md"), a.path("renamed.md")).unwrap();
    std::fs::rename(a.path("docs"), a.path("papers")).unwrap();
    wait_for_file(
        &b,
        "renamed.md",
        "the renamed file, as it was before it grew",
        |c| c == "small at first\n",
    );
    wait_for_file(&b, "papers/keep.md", "the folder's file", |c| c == "kept\n");
    wait_until("alice to list the new names", || {
        skipped(&a) == ["papers/huge.bin", "renamed.md"]
    });
    assert_eq!(b.read("grew.md"), None);
    assert_eq!(b.read("docs/keep.md"), None);
    a.stop();
    b.stop();
}

/// The workspace's `.cuedeck` removed while the daemon runs (to leave the workspace, or
/// start afresh): the daemon stops rather than go on syncing on a store no command can
/// reach any more, the folder's files stay as they are, and the other device goes on.
#[test]
fn a_removed_cuedeck_stops_its_daemon() {
    let (_relay, a, b) = pair();
    a.write("notes.md", "one\n");
    wait_for_file(&b, "notes.md", "the note", |_| true);
    let pid = a.status().0["daemon"]["pid"].as_u64().unwrap();
    std::fs::remove_dir_all(a.path(".cuedeck")).unwrap();
    wait_until("alice's daemon to stop", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert_eq!(
        a.read("notes.md").as_deref(),
        Some("one\n"),
        "the files stay"
    );
    assert_eq!(b.status().0["daemon"]["running"], true, "the other goes on");
    b.stop();
}

/// `.cuedeck` removed and copied back from a backup at once (faster than the watcher's
/// batch): not the store the daemon holds open, so it stops too, rather than go on
/// unseen beside a second daemon a `start` would then run on the copy.
#[test]
fn a_cuedeck_put_back_from_a_copy_stops_its_daemon() {
    let (_relay, a, b) = pair();
    a.write("notes.md", "one\n");
    wait_for_file(&b, "notes.md", "the note", |_| true);
    let pid = a.status().0["daemon"]["pid"].as_u64().unwrap();
    let backup = tempfile::tempdir().unwrap();
    cue_e2e::copy_as_is(&a.path(".cuedeck"), backup.path());
    std::fs::remove_dir_all(a.path(".cuedeck")).unwrap();
    cue_e2e::copy_as_is(&backup.path().join(".cuedeck"), a.root());
    wait_until("alice's daemon to stop", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    b.stop();
}

/// The workspace folder dragged to the Trash (moved away) while the daemon runs: the
/// daemon stops and says why, rather than go on syncing the folder wherever it went
/// (peers' edits landing in the Trash, the folder at the old place ignored). Put back,
/// it starts again and catches up.
#[test]
fn a_workspace_folder_moved_away_stops_its_daemon() {
    let (_relay, a, b) = pair();
    a.write("notes.md", "one\n");
    wait_for_file(&b, "notes.md", "the note", |_| true);
    let pid = a.status().0["daemon"]["pid"].as_u64().unwrap();
    let trash = tempfile::tempdir().unwrap();
    let moved = trash.path().join("notes");
    std::fs::rename(a.root(), &moved).unwrap();
    wait_until("alice's daemon to stop", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    let log = std::fs::read_to_string(moved.join(".cuedeck/daemon.log")).unwrap();
    assert!(log.contains("was moved or removed"), "{log}");
    b.write("notes.md", "one\ntwo\n");
    std::fs::rename(&moved, a.root()).unwrap();
    a.start();
    wait_for_file(&a, "notes.md", "bob's edit, once back", |c| {
        c == "one\ntwo\n"
    });
    a.stop();
    b.stop();
}

/// Names no synced file can have (a backslash, a tab, a newline, bytes that are not
/// UTF-8) are listed under
/// `skipped` with the reason, whether found at start-up or made while running, and leave
/// the list when the file goes.
#[test]
fn names_that_cannot_be_synced_are_listed_as_skipped() {
    let (_relay, a, b) = pair();
    a.stop();
    a.write("back\\slash.md", "x\n");
    a.start();
    a.write("tab\there.md", "x\n");
    a.write("new\nline.md", "x\n");
    // A name that is not UTF-8 (made by a program, or copied from an old disk).
    let not_utf8 = {
        use std::os::unix::ffi::OsStrExt as _;
        a.root().join(std::ffi::OsStr::from_bytes(b"caf\xe9.md"))
    };
    std::fs::write(&not_utf8, "x\n").unwrap();
    a.write("fine.md", "synced\n");
    wait_for_file(&b, "fine.md", "the file with a good name", |_| true);
    let skipped = |p: &Peer| -> Vec<(String, String)> {
        p.status().0["skipped"]
            .as_array()
            .map(|s| {
                s.iter()
                    .map(|k| {
                        (
                            k["path"].as_str().unwrap_or("").to_string(),
                            k["reason"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_until("the four names listed as skipped", || {
        let s = skipped(&a);
        [
            "back\\slash.md",
            "tab\there.md",
            "new\nline.md",
            "caf\u{fffd}.md",
        ]
        .iter()
        .all(|n| {
            s.iter()
                .any(|(p, r)| p == n && r.contains("cannot be synced"))
        })
    });
    a.remove("tab\there.md");
    std::fs::remove_file(&not_utf8).unwrap();
    wait_until("removed ones to leave the list", || {
        !skipped(&a)
            .iter()
            .any(|(p, _)| p == "tab\there.md" || p == "caf\u{fffd}.md")
    });
    assert!(b.read("back\\slash.md").is_none());
    a.stop();
    b.stop();
}

#[test]
fn a_rate_limited_relay_still_delivers_everything() {
    let relay = Relay::start_with(
        "127.0.0.1:0",
        &["--messages-per-second", "3", "--burst", "3"],
    );
    let (_relay, a, b) = pair_on(relay);
    for i in 0..30 {
        a.write(&format!("burst/{i:02}.md"), &format!("file {i}\n"));
    }
    for i in 0..30 {
        wait_for_file(
            &b,
            &format!("burst/{i:02}.md"),
            "every file of the burst",
            |c| c == format!("file {i}\n"),
        );
    }
    a.stop();
    b.stop();
}

/// A panic inside the sync engine (automerge trusting what is inside a crafted change,
/// say: docs/security.md) does not stop the daemon: the engine is made again from the
/// store, the save whose batch failed is taken in again by a scan, the room is joined
/// again, and syncing goes on both ways. (The failure is the test hook of debug builds,
/// `CUE_TEST_ENGINE_FAILS_ON`, a panic where the engine handles the batch.)
#[test]
fn a_failing_engine_is_started_again_and_loses_nothing() {
    let (_relay, a, b) = pair_with_alice_env("CUE_TEST_ENGINE_FAILS_ON", "boom.md");
    a.write("before.md", "before\n");
    wait_for_file(&b, "before.md", "a save before the failure", |c| {
        c == "before\n"
    });
    a.write("boom.md", "the save the engine failed on\n");
    wait_for_file(&b, "boom.md", "the save whose batch failed", |c| {
        c == "the save the engine failed on\n"
    });
    assert!(a.running(), "the daemon stopped when its engine failed");
    b.write("after.md", "after\n");
    wait_for_file(&a, "after.md", "a peer's save after the failure", |c| {
        c == "after\n"
    });
    a.write("before.md", "before, edited after\n");
    wait_for_file(&b, "before.md", "an edit after the failure", |c| {
        c == "before, edited after\n"
    });
    let log = std::fs::read_to_string(a.root().join(".cuedeck/daemon.log")).unwrap_or_default();
    assert!(
        log.contains("starting it again from the store"),
        "the failure is not in the log: {log}"
    );
    a.stop();
    b.stop();
}

/// A peer whose messages make the engine fail every time (a crafted change that slips
/// past every check) cannot keep the daemon starting over: after two failures on its
/// messages it is not listened to for the rest of the run (nothing is taken from it, and
/// its catch-ups go unanswered), and the daemon keeps running and taking in this
/// device's saves.
#[test]
fn a_peer_whose_messages_keep_failing_the_engine_is_not_listened_to() {
    let (_relay, a, b) = pair_with_alice_env("CUE_TEST_ENGINE_FAILS_ON", "<messages>");
    let log = || std::fs::read_to_string(a.root().join(".cuedeck/daemon.log")).unwrap_or_default();
    for i in 0..3 {
        b.write(&format!("from-bob-{i}.md"), "bob\n");
    }
    wait_until("alice stops listening to bob", || {
        log().contains("not listening to it until the daemon is started again")
    });
    assert!(a.running(), "the daemon stopped: {}", log());
    a.write("from-alice.md", "alice\n");
    wait_until("alice's daemon takes in her save", || {
        a.status().0["files"].as_u64() == Some(1)
    });
    assert!(a.running(), "the daemon stopped: {}", log());
    assert!(a.read("from-bob-0.md").is_none());
    a.stop();
    b.stop();
}

#[test]
fn mass_deletion_is_not_propagated() {
    let (_relay, a, b) = pair();
    for i in 0..22 {
        a.write(&format!("mounted/{i:02}.md"), &format!("{i}\n"));
    }
    a.write("other.md", "stays\n");
    wait_until("all files on bob", || {
        (0..22).all(|i| b.read(&format!("mounted/{i:02}.md")).is_some())
    });
    // The folder vanishes at once, as an unmounted disk would.
    std::fs::remove_dir_all(a.path("mounted")).unwrap();
    wait_until("alice to pause deletions", || {
        a.status().0["deletions_paused"]["count"] == 22
    });
    // Later changes still flow; the deletions do not.
    a.write("after.md", "still syncing\n");
    wait_for_file(&b, "after.md", "a change after the guard tripped", |_| true);
    assert!((0..22).all(|i| b.read(&format!("mounted/{i:02}.md")).is_some()));
    let log = a.cue_ok(&["activity", "log", "--json"]);
    assert!(
        log.lines()
            .any(|l| l.contains("\"kind\":\"error\"") && l.contains("deletions paused")),
        "{log}"
    );
    // The way back: restore brings them back here, and the guard is lifted.
    a.cue_ok(&["sync", "restore", "."]);
    wait_until("the files back on alice", || {
        (0..22).all(|i| a.read(&format!("mounted/{i:02}.md")).is_some())
    });
    assert!(a.status().0["deletions_paused"].is_null());
    a.stop();
    b.stop();
}

/// A folder moved out of the workspace and back in (a mistaken drag): the guard trips,
/// and once the files are back it ends by itself. It said "deletions paused" until the
/// next start, holding every later deletion meanwhile.
#[test]
fn the_guard_ends_when_the_missing_files_are_back() {
    let (_relay, a, b) = pair();
    for i in 0..22 {
        a.write(&format!("dir/{i:02}.md"), &format!("{i}\n"));
    }
    a.write("other.md", "stays\n");
    wait_until("all files on bob", || {
        (0..22).all(|i| b.read(&format!("dir/{i:02}.md")).is_some())
    });
    let away = tempfile::tempdir().unwrap();
    std::fs::rename(a.path("dir"), away.path().join("dir")).unwrap();
    wait_until("alice to pause deletions", || {
        !a.status().0["deletions_paused"].is_null()
    });
    std::fs::rename(away.path().join("dir"), a.path("dir")).unwrap();
    wait_until("the pause to end", || {
        a.status().0["deletions_paused"].is_null()
    });
    // A deletion now is one.
    a.remove("other.md");
    wait_until("the deletion on bob", || b.read("other.md").is_none());
    assert!((0..22).all(|i| b.read(&format!("dir/{i:02}.md")).is_some()));
    a.stop();
    b.stop();
}

#[test]
fn held_deletions_go_through_when_applied() {
    let (_relay, a, b) = pair();
    for i in 0..22 {
        a.write(&format!("old/{i:02}.md"), &format!("{i}\n"));
    }
    a.write("other.md", "stays\n");
    wait_until("all files on bob", || {
        (0..22).all(|i| b.read(&format!("old/{i:02}.md")).is_some())
    });
    std::fs::remove_dir_all(a.path("old")).unwrap();
    wait_until("alice to pause deletions", || {
        !a.status().0["deletions_paused"].is_null()
    });
    a.cue_ok(&["sync", "apply-deletions"]);
    // Bob's guard holds deletions from a peer as it would its own: he applies them too.
    wait_until("bob to pause the deletions he received", || {
        b.status().0["deletions_paused"]["count"] == 22
    });
    assert!((0..22).all(|i| b.read(&format!("old/{i:02}.md")).is_some()));
    // Without a daemon, status says so too (the held deletions are in the store).
    b.stop();
    assert_eq!(b.status().0["deletions_paused"]["count"], 22);
    b.start();
    b.cue_ok(&["sync", "apply-deletions"]);
    wait_until("the deletions on bob", || {
        (0..22).all(|i| b.read(&format!("old/{i:02}.md")).is_none())
    });
    assert_eq!(b.read("other.md").as_deref(), Some("stays\n"));
    assert!(a.status().0["deletions_paused"].is_null());
    a.stop();
    b.stop();
}

#[test]
fn system_metadata_files_are_never_synced() {
    let (_relay, a, b) = pair();
    // Seen by the watcher, at any depth...
    for rel in [
        ".DS_Store",
        "sub/deep/.DS_Store",
        "Thumbs.db",
        "sub/desktop.ini",
    ] {
        a.write(rel, "folder metadata\n");
    }
    a.write("sub/deep/marker.md", "after the metadata\n");
    wait_for_file(&b, "sub/deep/marker.md", "the marker", |_| true);
    // ...and by the start-up scan.
    a.stop();
    a.write("other/Thumbs.db", "folder metadata\n");
    a.write("other/marker.md", "after a restart\n");
    a.start();
    wait_for_file(&b, "other/marker.md", "the second marker", |_| true);
    for rel in [
        ".DS_Store",
        "sub/deep/.DS_Store",
        "Thumbs.db",
        "sub/desktop.ini",
        "other/Thumbs.db",
    ] {
        assert!(!b.path(rel).exists(), "{rel} reached bob");
    }
    assert_eq!(a.status().0["files"], 2, "only the markers are synced");
    a.stop();
    b.stop();
}

#[test]
fn symlinks_are_never_followed() {
    let (_relay, a, b) = pair();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "outside secret\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), a.path("link.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path(), a.path("linkdir")).unwrap();
    a.write("marker.md", "after the links\n");
    wait_for_file(&b, "marker.md", "the marker", |_| true);
    assert!(b.read("link.txt").is_none());
    assert!(!b.path("linkdir").exists());
    assert!(std::fs::symlink_metadata(b.path("link.txt")).is_err());
    a.stop();
    b.stop();
}

#[test]
fn the_relay_sees_no_file_names_and_no_content() {
    let relay = Relay::start();
    let proxy = Recorder::start(relay.addr);
    // Device names long enough that random ciphertext cannot hold them by chance: "bob"
    // (three bytes) turned up once in a CI run (100 KB of random bytes holds a given
    // three bytes about once in 170 runs).
    let a = Peer::new("alice-laptop");
    let b = Peer::new("bob-desktop");
    a.init(&proxy.url());
    b.join(&a.invite());
    a.start();
    b.start();
    a.write("confidential-plans.md", "the launch is on tuesday\n");
    wait_for_file(&b, "confidential-plans.md", "the file", |_| true);
    let wire = proxy.recorded();
    assert!(
        wire.len() > 1000,
        "the proxy saw the traffic ({} bytes)",
        wire.len()
    );
    for needle in [
        "confidential-plans",
        "launch is on tuesday",
        "alice-laptop",
        "bob-desktop",
    ] {
        assert!(
            !contains(&wire, needle.as_bytes()),
            "{needle:?} on the wire"
        );
    }
    a.stop();
    b.stop();
}

#[test]
fn a_crash_during_the_first_sync_loses_nothing() {
    let relay = Relay::start();
    let a = Peer::new("alice");
    for i in 0..300 {
        a.write(&format!("d{}/f{i:03}.md", i % 7), &format!("content {i}\n"));
    }
    a.init(&relay.url());
    let b = Peer::new("bob");
    b.join(&a.invite());
    a.start();
    b.start();
    wait_until("bob to have something", || b.path("d0").exists());
    b.kill_daemon();
    b.start();
    wait_until("all 300 files on bob", || {
        (0..300).all(|i| {
            b.read(&format!("d{}/f{i:03}.md", i % 7)).as_deref() == Some(&format!("content {i}\n"))
        })
    });
    a.stop();
    b.stop();
}

#[test]
fn a_long_absence_means_a_full_resync() {
    let (_relay, a, b) = pair();
    a.write("x.md", "v1\n");
    wait_for_file(&b, "x.md", "the file", |_| true);
    wait_until("bob to have synced with alice", || {
        b.status().0["peers"][0]["last_sync"].is_string()
    });
    b.stop();
    // Any gap is too long now.
    let config = b.path(".cuedeck/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("max_offline_days = 7.0", "max_offline_days = 0.0"),
    )
    .unwrap();
    a.write("x.md", "v1\nv2\n");
    b.write("mine.md", "offline work\n");
    b.start();
    wait_for_file(&b, "x.md", "the change made while away", |c| {
        c == "v1\nv2\n"
    });
    wait_for_file(&a, "mine.md", "bob's offline work, kept", |_| true);
    wait_until("the full resync in status", || {
        b.status().0["last_full_resync"].is_string()
    });
    let log = b.cue_ok(&["activity", "log", "--json"]);
    assert!(log.contains("\"kind\":\"full_resync\""), "{log}");
    a.stop();
    b.stop();
}

#[test]
fn five_peers_converge() {
    peers_converge(5);
}

#[test]
fn ten_peers_converge() {
    peers_converge(10);
}

/// `n` daemons in one workspace: each creates a file and edits one made by another while
/// all are online, then each edits its own line of one shared file while all are stopped;
/// every peer ends with the same tree, byte for byte, holding every edit.
fn peers_converge(n: usize) {
    let relay = Relay::start();
    let first = Peer::new("p0");
    for k in 0..n {
        first.write(&format!("shared/{k}.md"), &format!("shared file {k}\n"));
    }
    let lines = |edited: &dyn Fn(usize) -> bool| -> String {
        (0..n)
            .map(|i| {
                if edited(i) {
                    format!("line {i}: edited by peer {i}\n")
                } else {
                    format!("line {i}: as written\n")
                }
            })
            .collect()
    };
    first.write("all.md", &lines(&|_| false));
    first.init(&relay.url());
    let token = first.invite();
    let mut peers = vec![first];
    for i in 1..n {
        let p = Peer::new(&format!("p{i}"));
        p.join(&token);
        peers.push(p);
    }
    for p in &peers {
        p.start();
    }
    let all: Vec<&Peer> = peers.iter().collect();
    wait_converged(&all);

    // Live: a new file each, and an edit to a file another peer made.
    for (i, p) in peers.iter().enumerate() {
        p.write(&format!("from-{i}.md"), &format!("written by peer {i}\n"));
        let k = (i + 1) % n;
        p.write_via_rename(
            &format!("shared/{k}.md"),
            &format!("shared file {k}\nedited by peer {i}\n"),
        );
    }
    for p in &peers {
        for i in 0..n {
            wait_for_file(p, &format!("from-{i}.md"), "every peer's file", |c| {
                c == format!("written by peer {i}\n")
            });
            let k = (i + 1) % n;
            wait_for_file(p, &format!("shared/{k}.md"), "every peer's edit", |c| {
                c == format!("shared file {k}\nedited by peer {i}\n")
            });
        }
    }
    wait_converged(&all);

    // Offline: everyone edits one file at once, each its own line.
    for p in &peers {
        p.stop();
    }
    for (i, p) in peers.iter().enumerate() {
        let text = p.read("all.md").unwrap();
        let mine = format!("line {i}: as written\n");
        assert!(text.contains(&mine), "{text}");
        p.write(
            "all.md",
            &text.replace(&mine, &format!("line {i}: edited by peer {i}\n")),
        );
    }
    for p in &peers {
        p.start();
    }
    let merged = lines(&|_| true);
    for p in &peers {
        wait_for_file(p, "all.md", "every peer's line", |c| c == merged);
    }
    wait_converged(&all);
    for p in &peers {
        p.stop();
    }
}

/// Sets a stopped peer's `max_file_size` (from the default).
fn set_max_file_size(peer: &Peer, bytes: u64) {
    let config = peer.path(".cuedeck/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("max_file_size = 16777216"), "{text}");
    let text = text.replace(
        "max_file_size = 16777216",
        &format!("max_file_size = {bytes}"),
    );
    std::fs::write(&config, text).unwrap();
}

/// `.cuedeck/`'s store damaged on disk while the daemon is stopped: the index's row no
/// longer decodes. The daemon starts, says so, and keeps every file where it is (it
/// used to remove them all: the empty index that took the damaged one's place held
/// none), including a note only this device has; an edit made then reaches the other.
#[test]
fn a_damaged_index_in_the_store_removes_no_file() {
    let (_relay, a, b) = pair();
    a.write("notes/plan.md", "# Plan\n");
    a.write("todo.md", "- one\n");
    wait_for_file(&b, "todo.md", "the first notes", |c| c == "- one\n");
    wait_for_file(&b, "notes/plan.md", "the first notes", |c| c == "# Plan\n");
    b.stop();
    a.write("only-here.md", "made while b was away\n");
    wait_until("a to take in only-here.md", || {
        a.status().0["files"].as_u64() == Some(3)
    });
    a.stop();
    {
        let db = rusqlite::Connection::open(a.path(".cuedeck/store.sqlite3")).unwrap();
        db.execute_batch(
            "DELETE FROM doc_chunks WHERE doc = 'index';
             UPDATE docs SET snapshot = x'856f4a830102030405' WHERE doc = 'index';",
        )
        .unwrap();
    }
    a.start();
    wait_until("a to report the damaged index", || {
        a.status().0["refused_input"]["bad_documents"].as_u64() >= Some(1)
    });
    a.write("todo.md", "- one\n- two\n");
    b.start();
    wait_for_file(&b, "todo.md", "an edit after the damage", |c| {
        c == "- one\n- two\n"
    });
    wait_for_file(&b, "only-here.md", "the note only a had", |c| {
        c == "made while b was away\n"
    });
    wait_converged(&[&a, &b]);
    assert_eq!(a.read("notes/plan.md").as_deref(), Some("# Plan\n"));
    assert_eq!(
        a.read("only-here.md").as_deref(),
        Some("made while b was away\n")
    );
}

/// Unmounts a filesystem when dropped (a test that fails leaves no mount behind).
struct Mounted(std::path::PathBuf);

impl Mounted {
    /// Unmounts, waiting out a busy disk (a daemon holds a file it wrote lately open
    /// until its flush, within a second).
    fn unmount(self) {
        wait_until("the disk to unmount", || umount(&self.0, false));
        std::mem::forget(self);
    }
}

fn umount(on: &std::path::Path, lazy: bool) -> bool {
    let mut umount = std::process::Command::new("umount");
    if lazy {
        umount.arg("-l");
    }
    umount
        .arg(on)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // (Busy: detached now, gone once let go, never left behind.)
        if !umount(&self.0, false) {
            umount(&self.0, true);
        }
    }
}

/// `mount --bind FROM ON` (a disk that keeps its files when unmounted and mounted
/// again); `None` without the right to mount.
fn bind_mount(from: &std::path::Path, on: std::path::PathBuf) -> Option<Mounted> {
    let done = std::process::Command::new("mount")
        .arg("--bind")
        .arg(from)
        .arg(&on)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    done.then_some(Mounted(on))
}

/// `p` wrote nothing onto the bare `folder` of a disk not mounted, and holds no deletion.
fn nothing_written_onto_the_bare_folder(p: &Peer, folder: &str) {
    let bare: Vec<_> = std::fs::read_dir(p.path(folder)).unwrap().collect();
    assert!(bare.is_empty(), "written onto the bare folder: {bare:?}");
    assert!(p.status().0["deletions_paused"].is_null());
}

/// Whether `p`'s status lists `folder` under skipped as not mounted.
fn listed_not_mounted(p: &Peer, folder: &str) -> bool {
    listed_skipped(p, folder, "not mounted")
}

/// Whether `p`'s status lists `folder` under skipped for a reason that starts `why`.
fn listed_skipped(p: &Peer, folder: &str, why: &str) -> bool {
    p.status().0["skipped"].as_array().is_some_and(|s| {
        s.iter().any(|k| {
            k["path"] == folder && k["reason"].as_str().is_some_and(|r| r.starts_with(why))
        })
    })
}

/// A disk mounted inside the workspace (here a folder bind-mounted there) syncs as any
/// folder; unmounted while the daemon is stopped, the folder left behind is empty, and
/// the next start used to take every file of it for deleted, on every device (held by
/// the guard only when they were most of the workspace). Now it is listed as not
/// mounted, its files stay everywhere, what the others change in it meanwhile is not
/// written onto the bare folder, and mounted again it gets those changes. Needs the
/// right to mount (root, as on the project's machines); without it the test says so
/// and checks nothing.
#[test]
fn a_disk_unmounted_inside_the_workspace_deletes_nothing() {
    let (_relay, a, b) = pair();
    let disk = tempfile::tempdir().unwrap();
    a.stop();
    std::fs::create_dir(a.path("media")).unwrap();
    let Some(mount) = bind_mount(disk.path(), a.path("media")) else {
        eprintln!("skipped: cannot mount here (not root)");
        return;
    };
    a.write("notes.md", "notes\n");
    for i in 0..3 {
        a.write(&format!("media/track{i}.md"), &format!("track {i}\n"));
    }
    a.start();
    wait_for_file(&b, "media/track2.md", "the mounted disk's files", |c| {
        c == "track 2\n"
    });
    a.stop();
    mount.unmount();
    assert!(a.read("media/track0.md").is_none(), "still mounted");
    a.start();
    let not_mounted = |a: &Peer| listed_not_mounted(a, "media");
    wait_until("a to list media as not mounted", || not_mounted(&a));
    // b edits and adds on the disk's folder meanwhile: a keeps it all, writing nothing
    // onto the bare folder (its next edit shows b's changes were taken in).
    b.write("media/track0.md", "track 0, edited on b\n");
    b.write("media/new.md", "made on b\n");
    b.write("notes.md", "notes\nfrom b\n");
    wait_for_file(&a, "notes.md", "b's edit", |c| c.contains("from b"));
    a.write("notes.md", "notes\nfrom b\nafter the unmount\n");
    wait_for_file(&b, "notes.md", "an edit after the unmount", |c| {
        c.contains("after the unmount")
    });
    for i in 1..3 {
        assert_eq!(
            b.read(&format!("media/track{i}.md")),
            Some(format!("track {i}\n"))
        );
    }
    assert_eq!(
        b.read("media/track0.md").as_deref(),
        Some("track 0, edited on b\n")
    );
    nothing_written_onto_the_bare_folder(&a, "media");
    // Mounted again while a runs: b's changes are written onto the disk.
    let _mount = bind_mount(disk.path(), a.path("media")).expect("mounted again");
    wait_for_file(&a, "media/new.md", "b's new file on the disk", |c| {
        c == "made on b\n"
    });
    wait_for_file(&a, "media/track0.md", "b's edit on the disk", |c| {
        c.contains("edited on b")
    });
    wait_until("a to list media as mounted", || !not_mounted(&a));
    wait_converged(&[&a, &b]);
    // And watched again: an edit on the disk reaches b as it is made.
    a.write("media/track1.md", "track 1, edited on the disk\n");
    wait_for_file(
        &b,
        "media/track1.md",
        "an edit on the disk mounted again",
        |c| c.contains("edited on the disk"),
    );
}

/// A disk mounted in the workspace while the daemon runs (here a folder bind-mounted on
/// an empty folder of it): its files sync at once, and its edits as they are made. The
/// watcher watched the folder under the disk, not the disk: its files used to wait for
/// the next start. Needs the right to mount, as the test above.
#[test]
fn a_disk_mounted_while_the_daemon_runs_is_synced_and_watched() {
    let (_relay, a, b) = pair();
    a.write("notes.md", "notes\n");
    std::fs::create_dir(a.path("photos")).unwrap();
    wait_for_file(&b, "notes.md", "a's note", |c| c == "notes\n");
    let disk = tempfile::tempdir().unwrap();
    std::fs::write(disk.path().join("album.md"), "# Album\n").unwrap();
    let Some(mount) = bind_mount(disk.path(), a.path("photos")) else {
        eprintln!("skipped: cannot mount here (not root)");
        return;
    };
    wait_for_file(&b, "photos/album.md", "the disk's note", |c| {
        c == "# Album\n"
    });
    a.write("photos/album.md", "# Album\n\nSummer.\n");
    wait_for_file(&b, "photos/album.md", "an edit on the disk", |c| {
        c.contains("Summer.")
    });
    b.write("photos/from-b.md", "from b\n");
    wait_for_file(&a, "photos/from-b.md", "b's note, on the disk", |c| {
        c == "from b\n"
    });
    assert_eq!(
        std::fs::read_to_string(disk.path().join("from-b.md"))
            .ok()
            .as_deref(),
        Some("from b\n"),
        "b's note is on the disk itself"
    );
    wait_converged(&[&a, &b]);
    // Unmounted while the daemon runs: listed as not mounted at once, its files kept
    // everywhere, and b's next edit not written onto the bare folder. What then happens
    // in the disk's own folder (a bind mount's source, which the watcher watched) is not
    // the workspace's: a file removed there is no deletion.
    mount.unmount();
    wait_until("a to list photos as not mounted", || {
        listed_not_mounted(&a, "photos")
    });
    std::fs::remove_file(disk.path().join("from-b.md")).unwrap();
    b.write("photos/album.md", "# Album\n\nSummer.\nWinter.\n");
    b.write("notes.md", "notes\nafter the unmount\n");
    wait_for_file(&a, "notes.md", "b's later edit", |c| {
        c.contains("after the unmount")
    });
    assert_eq!(
        b.read("photos/album.md").as_deref(),
        Some("# Album\n\nSummer.\nWinter.\n")
    );
    // (Whatever a sent after the removal has reached b once a's later note has.)
    a.write("marker.md", "after the removal\n");
    wait_for_file(&b, "marker.md", "a's note after the removal", |c| {
        c.contains("after the removal")
    });
    assert_eq!(b.read("photos/from-b.md").as_deref(), Some("from b\n"));
    nothing_written_onto_the_bare_folder(&a, "photos");
}

/// A disk mounted over a folder that already held synced files hides them. The next
/// scan (a restart, a disk mounted elsewhere) used to take every one of them for
/// deleted, on every device (the guard held them only when they were most of the
/// workspace), and the disk's files for edits of them. Now the folder is listed as
/// mounted over while the disk is there, at a restart too: nothing of it is deleted,
/// sent, or written onto the disk; unmounted, the folder syncs again and gets what the
/// others changed meanwhile. Needs the right to mount, as the tests above.
#[test]
fn a_disk_mounted_over_synced_files_deletes_none_of_them() {
    let (_relay, a, b) = pair();
    a.write("notes.md", "notes\n");
    a.write("archive/plan.md", "# Plan\n");
    a.write("archive/old.md", "old\n");
    wait_for_file(&b, "archive/old.md", "a's archive", |c| c == "old\n");
    wait_for_file(&b, "archive/plan.md", "a's plan", |c| c == "# Plan\n");
    let disk = tempfile::tempdir().unwrap();
    std::fs::write(disk.path().join("plan.md"), "the disk's plan\n").unwrap();
    std::fs::write(disk.path().join("other.md"), "only on the disk\n").unwrap();
    let Some(mount) = bind_mount(disk.path(), a.path("archive")) else {
        eprintln!("skipped: cannot mount here (not root)");
        return;
    };
    // b edits a hidden note at once (before a has read the mount list again, or after).
    b.write("archive/plan.md", "# Plan\nfrom b\n");
    let over = |p: &Peer| listed_skipped(p, "archive", "a disk is mounted over");
    wait_until("a to list archive as mounted over", || over(&a));
    // And a starts again with the disk still there.
    a.stop();
    a.start();
    wait_until("a to list archive as mounted over after a restart", || {
        over(&a)
    });
    // An edit on the disk is not one of the folder's.
    std::fs::write(a.path("archive/other.md"), "only on the disk, edited\n").unwrap();
    a.write("marker.md", "after the restart\n");
    wait_for_file(&b, "marker.md", "a's note after the restart", |c| {
        c == "after the restart\n"
    });
    assert_eq!(b.read("archive/old.md").as_deref(), Some("old\n"));
    assert_eq!(
        b.read("archive/plan.md").as_deref(),
        Some("# Plan\nfrom b\n")
    );
    assert!(
        b.read("archive/other.md").is_none(),
        "the disk's file was sent"
    );
    for p in [&a, &b] {
        assert!(p.status().0["deletions_paused"].is_null());
    }
    assert_eq!(
        std::fs::read_to_string(disk.path().join("plan.md")).unwrap(),
        "the disk's plan\n",
        "b's edit was written onto the disk"
    );
    // Unmounted: the folder syncs again, with b's edit written into it.
    mount.unmount();
    wait_for_file(
        &a,
        "archive/plan.md",
        "b's edit, once the disk is away",
        |c| c == "# Plan\nfrom b\n",
    );
    wait_until("a to list archive as synced again", || !over(&a));
    a.write("archive/old.md", "old\nedited after\n");
    wait_for_file(&b, "archive/old.md", "an edit in the folder again", |c| {
        c.contains("edited after")
    });
    wait_converged(&[&a, &b]);
    assert!(
        b.read("archive/other.md").is_none(),
        "the disk's file was sent"
    );
    assert_eq!(
        b.read("archive/plan.md").as_deref(),
        Some("# Plan\nfrom b\n")
    );
}

/// A disk unmounted for good: its folder used to stay "not mounted" for as long as it
/// existed, what was made in it never synced, and the only way out (removing the
/// folder) deleted the disk's files everywhere. `cue sync forget-mount` makes it a plain
/// folder again: the files synced from the disk are written into it, deleted nowhere,
/// and what was made in it syncs. It refuses a folder that is mounted or was never a
/// disk's. Needs the right to mount, as the tests above.
#[test]
fn a_disk_gone_for_good_is_forgotten_and_its_files_kept() {
    let (_relay, a, b) = pair();
    std::fs::create_dir(a.path("media")).unwrap();
    let disk = tempfile::tempdir().unwrap();
    let Some(mount) = bind_mount(disk.path(), a.path("media")) else {
        eprintln!("skipped: cannot mount here (not root)");
        return;
    };
    for i in 0..3 {
        a.write(&format!("media/track{i}.md"), &format!("track {i}\n"));
    }
    a.write("notes.md", "notes\n");
    wait_for_file(&b, "media/track2.md", "the disk's files", |c| {
        c == "track 2\n"
    });
    wait_for_file(&b, "notes.md", "a's note", |c| c == "notes\n");
    let refused = a.cue(&["sync", "forget-mount", "media"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is mounted"),
        "{refused:?}"
    );
    mount.unmount();
    wait_until("a to list media as not mounted", || {
        listed_not_mounted(&a, "media")
    });
    let refused = a.cue(&["sync", "forget-mount", "notes.md"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not the folder of a disk"),
        "{refused:?}"
    );
    // b adds a note there meanwhile: a cannot write it (the disk is away).
    b.write("media/from-b.md", "made on b\n");
    b.write("notes.md", "notes\nafter b's note\n");
    wait_for_file(&a, "notes.md", "b's later edit", |c| {
        c.contains("after b's")
    });
    // Used as a plain folder: a new note there, and one under a name the disk held.
    a.write("media/new.md", "made in the plain folder\n");
    a.write("media/track1.md", "another track 1\n");
    // Forgotten with no daemon running: the command itself writes the files.
    a.stop();
    a.cue_ok(&["sync", "forget-mount", "media"]);
    assert_eq!(a.read("media/track0.md").as_deref(), Some("track 0\n"));
    assert_eq!(a.read("media/from-b.md").as_deref(), Some("made on b\n"));
    a.start();
    wait_until("a to list media as synced again", || {
        !listed_not_mounted(&a, "media")
    });
    wait_for_file(&b, "media/new.md", "the note made in the folder", |c| {
        c == "made in the plain folder\n"
    });
    wait_converged(&[&a, &b]);
    // Both track 1s kept: the disk's and the one made in the folder.
    let ones: Vec<String> = std::fs::read_dir(b.path("media"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .filter(|c| c.contains("track 1"))
        .collect();
    assert!(ones.iter().any(|c| c == "track 1\n"), "{ones:?}");
    assert!(ones.iter().any(|c| c == "another track 1\n"), "{ones:?}");
    assert_eq!(b.read("media/track2.md").as_deref(), Some("track 2\n"));
    assert!(a.status().0["deletions_paused"].is_null());
    // And a plain folder from now: a removal there is a deletion.
    a.remove("media/track2.md");
    wait_until("b to delete track2", || b.read("media/track2.md").is_none());
}
