//! Devices come and go (docs/reference.md §1.3, §1.6; docs/security.md, "Removing a
//! device and rotating the secret"): `cue sync devices`, `remove`, `rotate`, and invites
//! that expire and run out.

use cue_e2e::*;

fn membership(p: &Peer) -> String {
    p.status().0["membership"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn devices(p: &Peer) -> Vec<serde_json::Value> {
    let out = p.cue_ok(&["sync", "devices", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn opened(p: &Peer) -> u64 {
    p.status().0["relay"]["opened"].as_u64().unwrap()
}

/// Three peers; carol is removed: alice and bob keep syncing, carol opens nothing more,
/// says she was removed, and can come back neither with her old token nor by restarting;
/// a fresh invite admits a new device.
#[test]
fn a_removed_device_opens_nothing_new_and_cannot_come_back() {
    let relay = Relay::start();
    let (a, b, c) = (Peer::new("alice"), Peer::new("bob"), Peer::new("carol"));
    a.write("plan.md", "the plan\n");
    a.init(&relay.url());
    let token = a.invite();
    b.join(&token);
    c.join(&token);
    for p in [&a, &b, &c] {
        p.start();
    }
    wait_converged(&[&a, &b, &c]);

    let listed = devices(&a);
    assert_eq!(listed.len(), 3, "{listed:?}");
    let me = listed.iter().find(|d| d["this_device"] == true).unwrap();
    assert_eq!(me["name"], "alice");
    for name in ["bob", "carol"] {
        let d = listed.iter().find(|d| d["name"] == name).unwrap();
        assert_eq!(d["admitted_by"], "alice", "{d}");
        assert!(d["joined"].is_string(), "{d}");
        assert_eq!(d["removed"], false);
    }

    let out = a.cue_ok(&["sync", "remove", "carol"]);
    assert!(out.contains("Removed carol"), "{out}");
    wait_until("carol to learn she was removed", || {
        membership(&c) == "removed"
    });
    let carol_opened = opened(&c);

    // Alice and Bob go on, in both directions.
    a.write("after.md", "written after the removal\n");
    b.write("plan.md", "the plan\nbob's line\n");
    wait_for_file(&b, "after.md", "alice's new file", |_| true);
    wait_for_file(&a, "plan.md", "bob's edit", |c| c.contains("bob's line"));
    assert_eq!(c.read("after.md"), None);
    assert_eq!(c.read("plan.md").as_deref(), Some("the plan\n"));
    assert_eq!(
        opened(&c),
        carol_opened,
        "carol opened a message after removal"
    );
    let listed = devices(&b);
    let carol = listed.iter().find(|d| d["name"] == "carol").unwrap();
    assert_eq!(carol["removed"], true);
    assert_eq!(carol["removed_by"], "alice");

    // Restarting changes nothing for her.
    c.stop();
    c.start();
    wait_until("carol to say again she was removed", || {
        membership(&c) == "removed"
    });
    // Her old token admits nobody any more, not even a new device of hers.
    let again = Peer::new("carol2");
    again.join(&token);
    again.start();
    wait_until("the old token to be refused", || {
        membership(&again) == "refused"
    });
    let (status, _) = again.status();
    let why = status["membership"]["reason"].as_str().unwrap();
    assert!(why.contains("rotated"), "{why}");
    assert_eq!(again.read("plan.md"), None);

    // A fresh invite admits a new device, which gets everything.
    let d = Peer::new("dave");
    d.join(&a.invite());
    d.start();
    wait_for_file(&d, "after.md", "everything", |_| true);
    wait_for_file(&d, "plan.md", "bob's edit", |c| c.contains("bob's line"));
    assert_eq!(membership(&d), "member");
    for p in [&a, &b, &c, &again, &d] {
        p.stop();
    }
}

/// An invite made with `--expires 1s` fails two seconds later with a clear error; a
/// `--uses 1` invite admits one device and refuses the second.
#[test]
fn invites_expire_and_run_out() {
    let relay = Relay::start();
    let a = Peer::new("alice");
    a.write("x.md", "x\n");
    a.init(&relay.url());
    a.start();

    let short = a.cue_ok(&["sync", "invite", "--expires", "1s"]);
    let made = std::time::Instant::now();
    wait_until("the invite to expire", || {
        made.elapsed() >= std::time::Duration::from_secs(2)
    });
    let late = Peer::new("late");
    let out = late.cue(&["sync", "join", short.trim(), "--name", "late"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("expired") && err.contains("cue sync invite"),
        "{err}"
    );
    assert!(
        !late.path(".cuedeck").exists(),
        "a refused join left a workspace"
    );

    let once = a.cue_ok(&["sync", "invite", "--uses", "1"]);
    let first = Peer::new("first");
    first.join(once.trim());
    first.start();
    wait_for_file(&first, "x.md", "the workspace", |_| true);
    let second = Peer::new("second");
    second.join(once.trim());
    second.start();
    wait_until("the second device to be refused", || {
        membership(&second) == "refused"
    });
    let why = second.status().0["membership"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("used up"), "{why}");
    assert_eq!(second.read("x.md"), None);

    let list = a.cue_ok(&["sync", "invite", "--list"]);
    assert!(
        list.contains("used up") && list.contains("expired"),
        "{list}"
    );
    for p in [&a, &first, &second] {
        p.stop();
    }
}

/// Devices offline during a removal: a member gets the new secret from a member when it
/// returns, with what was written meanwhile, and its own offline edit reaches the others;
/// the removed device learns, when it returns, that it was removed.
#[test]
fn devices_offline_during_a_removal_catch_up_or_learn_they_were_removed() {
    let (_relay, a, b) = pair();
    let c = Peer::new("carol");
    c.join(&a.invite());
    c.start();
    a.write("n.md", "one\n");
    wait_for_file(&b, "n.md", "the first version", |_| true);
    wait_for_file(&c, "n.md", "the first version", |_| true);
    b.stop();
    c.stop();
    b.write("mine.md", "written offline\n");
    let out = a.cue_ok(&["sync", "remove", "carol"]);
    assert!(out.contains("generation 1"), "{out}");
    a.write("n.md", "one\ntwo\n");
    b.start();
    c.start();
    wait_for_file(&b, "n.md", "the edit made after the rotation", |c| {
        c.contains("two")
    });
    wait_for_file(&a, "mine.md", "bob's offline file", |_| true);
    assert_eq!(b.status().0["membership"]["generation"], 1);
    wait_until("carol to learn on her return that she was removed", || {
        membership(&c) == "removed"
    });
    assert_eq!(c.read("n.md").as_deref(), Some("one\n"));
    assert_eq!(c.read("mine.md"), None);
    for p in [&a, &b, &c] {
        p.stop();
    }
}

/// A device that joined again from scratch (its `.cuedeck/` deleted) under a new name
/// leaves its old self as an offline peer; `cue sync remove` takes the old one out of
/// status and devices, and the new one goes on syncing.
#[test]
fn the_old_self_of_a_device_that_joined_again_can_be_removed() {
    let (_relay, a, b) = pair();
    a.write("n.md", "one\n");
    wait_for_file(&b, "n.md", "the first version", |_| true);
    b.stop();
    std::fs::remove_dir_all(b.path(".cuedeck")).unwrap();
    b.cue_ok(&["sync", "join", a.invite().trim(), "--name", "bob-again"]);
    b.start();
    let names = |p: &Peer| -> Vec<String> {
        p.status().0["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_string())
            .collect()
    };
    wait_until("alice to see both of bob's selves", || {
        let n = names(&a);
        n.contains(&"bob".to_string()) && n.contains(&"bob-again".to_string())
    });
    // The new self made its own document of the n.md it found on disk. Alice removes
    // the old self and edits at once, maybe before she and the new self first meet: the
    // found n.md is then an earlier version of hers, and the two are one file (they
    // became a conflict copy before session 15, and this test failed now and then).
    a.cue_ok(&["sync", "remove", "bob"]);
    wait_until("the old self to leave alice's peers", || {
        names(&a) == vec!["bob-again".to_string()]
    });
    a.write("n.md", "one\ntwo\n");
    wait_for_file(&b, "n.md", "an edit after the removal", |c| {
        c.contains("two")
    });
    assert_eq!(names(&b), vec!["alice".to_string()]);
    for p in [&a, &b] {
        assert_eq!(p.read("n.md").as_deref(), Some("one\ntwo\n"));
        assert_eq!(p.status().0["conflicts"], serde_json::json!([]));
    }
    a.stop();
    b.stop();
}

/// A device joins again from scratch with its old folder while the others edited on:
/// each file it still holds is an earlier version of the others' and becomes the same
/// file, with their edits, not a conflict copy; a file it edited on its own meanwhile
/// is the one conflict copy.
#[test]
fn a_device_joining_again_with_its_old_folder_gets_the_edits_without_conflict_copies() {
    let (_relay, a, b) = pair();
    a.write("plan.md", "# Plan\n");
    a.write("notes/todo.md", "- one\n");
    a.write("same.md", "unchanged\n");
    a.write("both.md", "base\n");
    wait_for_file(&b, "both.md", "the first versions", |_| true);
    b.stop();
    std::fs::remove_dir_all(b.path(".cuedeck")).unwrap();
    a.write("plan.md", "# Plan\n\nship it\n");
    a.write("notes/todo.md", "- one\n- two\n");
    a.write("both.md", "base, alice\n");
    b.write("both.md", "base, bob\n");
    b.cue_ok(&["sync", "join", a.invite().trim(), "--name", "bob-again"]);
    b.start();
    wait_for_file(&b, "notes/todo.md", "alice's edits", |c| c.contains("two"));
    wait_until("both peers to settle the four files", || {
        [&a, &b].iter().all(|p| tree(&p.path("")).len() == 5)
    });
    for p in [&a, &b] {
        assert_eq!(p.read("plan.md").as_deref(), Some("# Plan\n\nship it\n"));
        assert_eq!(p.read("notes/todo.md").as_deref(), Some("- one\n- two\n"));
        assert_eq!(p.read("same.md").as_deref(), Some("unchanged\n"));
        let conflicts = p.status().0["conflicts"].as_array().unwrap().clone();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0]["path"], "both.md");
    }
    a.stop();
    b.stop();
}

/// A member that was in the lobby but not in the room when another member rotated the
/// secret never got the rotation record (a relay keeps nothing). When the member that
/// rotated says hello from the new generation, the one left behind asks at once and is
/// handed the record and the secret: edits reach it in seconds, not at its periodic hello
/// (30 s).
#[test]
fn a_member_that_missed_a_rotation_catches_up_from_the_lobby_at_once() {
    let relay = Relay::start();
    let proxy = FaultProxy::start(relay.addr);
    let (a, b) = (Peer::new("alice"), Peer::new("bob"));
    a.init(&relay.url());
    let token = a.invite();
    let lobby = cue_crypto::Invite::parse(token.trim())
        .unwrap()
        .lobby()
        .keys()
        .room_id()
        .path();
    b.cue_ok(&["sync", "join", token.trim(), "--relay", &proxy.url()]);
    a.start();
    b.start();
    a.write("n.md", "one\n");
    wait_for_file(&b, "n.md", "the first version", |c| c == "one\n");

    // Bob's connections drop; only the lobby comes back.
    proxy.set_only_path(Some(lobby));
    let (accepted, _, _) = proxy.counts();
    proxy.cut_all();
    wait_until("bob back in the lobby", || proxy.counts().0 > accepted);
    a.cue_ok(&["sync", "rotate"]);
    wait_until("alice in the new generation", || {
        a.status().0["membership"]["generation"] == 1
    });
    // (Bob may hold the new secret already, asked in the lobby: its room is refused.)
    // Bob's room comes back: the old generation's, where nobody is.
    proxy.set_only_path(None);
    a.write("n.md", "one\ntwo\n");
    let started = std::time::Instant::now();
    wait_for_file(&b, "n.md", "the edit after the rotation", |c| {
        c.contains("two")
    });
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "bob caught up only after {:?}: at its periodic hello",
        started.elapsed()
    );
    a.stop();
    b.stop();
}
