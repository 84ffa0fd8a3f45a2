//! Fault injection on real processes: kill -9 of daemons at random instants, a network
//! that delays, stalls, cuts and refuses connections, and a peer flooding the relay at ten
//! times its rate limit. What is checked is what a user would notice: every content saved
//! on disk ends up on every peer, byte for byte; no file is ever seen torn (each file read
//! at any time is one of the versions written, never a prefix or a mix); the store opens
//! at every restart (the daemon starts); no stray file (conflict copy, temporary) is left.
//!
//! Each test has a short version for CI and a long one: `CUE_FAULTS_LONG=1` runs 100
//! kills, a minute of network faults and a minute of flooding. Schedules are random from a
//! seed that is printed (`--no-capture` shows it, a failure always does);
//! `CUE_FAULTS_SEED=S` replays one.
//!
//! ```sh
//! cargo build -p cue-cli -p cue-relay
//! CUE_FAULTS_LONG=1 cargo nextest run -p cue-e2e faults --no-capture
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cue_e2e::{
    DEADLINE, FaultProxy, Flooder, Pace, Peer, Relay, Rng, faults_long, is_temporary, pair, tree,
    wait_for_file, wait_until,
};

/// What the users wrote: every version of every file (as hashes), and the last one saved.
#[derive(Debug, Default)]
struct Truth {
    versions: BTreeMap<String, BTreeSet<u64>>,
    last: BTreeMap<String, Vec<u8>>,
    /// The body of each file the bursts edit, to edit it further.
    bodies: BTreeMap<String, Vec<String>>,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl Truth {
    /// Records a version about to be written.
    fn record(&mut self, rel: &str, content: &[u8]) {
        self.versions
            .entry(rel.to_string())
            .or_default()
            .insert(hash(content));
    }

    /// Records a version once it is saved: the one every peer must end with.
    fn saved(&mut self, rel: &str, content: Vec<u8>) {
        self.last.insert(rel.to_string(), content);
    }

    fn knows(&self, rel: &str, content: &[u8]) -> bool {
        self.versions
            .get(rel)
            .is_some_and(|v| v.contains(&hash(content)))
    }
}

/// Files whose user writes in place (truncate, then write): a reader may catch those half
/// written on the writer's disk, so they are checked only once settled.
fn written_in_place(rel: &str) -> bool {
    rel.contains("inplace")
}

/// One version of a file: a frontmatter title and a last line that carry a serial, so a
/// prefix or a mix of two versions is never a version, around a body of lines.
fn render(rel: &str, serial: u64, body: &[String]) -> Vec<u8> {
    let mut text = format!("---\ntitle: {rel} v{serial}\n---\n");
    for line in body {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(&format!("end of {rel} v{serial}\n"));
    text.into_bytes()
}

/// A fresh body of up to ~6 KB.
fn fresh_body(rng: &mut Rng, rel: &str) -> Vec<String> {
    (0..5 + rng.below(150))
        .map(|i| format!("{rel} line {i} {:016x}", rng.next_u64()))
        .collect()
}

/// The next version of a body, as a person edits: a line inserted, replaced or removed
/// (now and then the whole file rewritten).
fn edit_body(rng: &mut Rng, rel: &str, body: &mut Vec<String>) {
    if body.is_empty() || rng.percent(3) {
        *body = fresh_body(rng, rel);
        return;
    }
    let at = rng.below(body.len() as u64) as usize;
    let line = format!("{rel} edit {:016x}", rng.next_u64());
    match rng.below(3) {
        0 => body.insert(at, line),
        1 => body[at] = line,
        _ if body.len() > 1 => {
            body.remove(at);
        }
        _ => body.push(line),
    }
}

/// Writes `edits` random edits in `peer`'s own folder (named after it), 16 files: mostly
/// atomic saves (temporary + rename), some files saved in place; paced by a few
/// milliseconds (`pace`, lowest and highest). Stops early when `stop` is set.
fn burst(
    peer: &Peer,
    mut rng: Rng,
    truth: &Mutex<Truth>,
    edits: usize,
    pace: (u64, u64),
    stop: &AtomicBool,
) {
    for _ in 0..edits {
        if stop.load(Relaxed) {
            return;
        }
        let k = rng.below(8);
        let in_place = rng.percent(25);
        let rel = if in_place {
            format!("{}/inplace-{k}.md", peer.name)
        } else {
            format!("{}/f{k}.md", peer.name)
        };
        let serial = rng.next_u64();
        let bytes = {
            let mut t = truth.lock().unwrap();
            let body = t.bodies.entry(rel.clone()).or_default();
            edit_body(&mut rng, &rel, body);
            let bytes = render(&rel, serial, body);
            t.record(&rel, &bytes);
            bytes
        };
        if in_place {
            let p = peer.path(&rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, &bytes).unwrap();
        } else {
            peer.save_atomically(&rel, &bytes);
        }
        truth.lock().unwrap().saved(&rel, bytes);
        // Pacing the burst, not waiting for anything.
        std::thread::sleep(rng.millis(pace.0, pace.1));
    }
}

/// A burst: an edit every few milliseconds (far faster than anyone types).
const BURST: (u64, u64) = (1, 12);
/// Steady editing while faults go on: ~30 saves a second a peer, still more than a person
/// makes, without overloading a debug build on two cores.
const STEADY: (u64, u64) = (10, 60);

/// Fails unless every file of `t` (a snapshot of `p`) is one of the versions written:
/// never a prefix, a mix, or a file nobody made.
fn assert_untorn(p: &Peer, t: &BTreeMap<String, Vec<u8>>, truth: &Truth, what: &str) {
    for (rel, bytes) in t {
        if is_temporary(rel) || written_in_place(rel) {
            continue;
        }
        assert!(
            truth.knows(rel, bytes),
            "{what}: {rel} on {} ({} bytes) is torn or unknown: not a version anyone wrote. \
             Its title line: {:?}",
            p.name,
            bytes.len(),
            String::from_utf8_lossy(bytes.split(|b| *b == b'\n').nth(1).unwrap_or(&[]))
        );
    }
}

/// Reads every peer's files over and over until `done`, checking each is a version that
/// was written (a version is recorded before it is saved, so any complete file is known).
fn sample_untorn(peers: &[&Peer], truth: &Mutex<Truth>, done: &AtomicBool, what: &str) -> u64 {
    let mut reads = 0;
    while !done.load(Relaxed) {
        for p in peers {
            let t = tree(p.root());
            reads += t.len() as u64;
            assert_untorn(p, &t, &truth.lock().unwrap(), what);
        }
        // Pacing the sampling.
        std::thread::sleep(Duration::from_millis(3));
    }
    reads
}

/// Waits until every peer holds exactly the last saved version of every file and nothing
/// else; meanwhile, every file read on any peer must be one of the versions written.
fn settle(peers: &[&Peer], truth: &Truth, what: &str) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let mut behind = Vec::new();
        for p in peers {
            let t = tree(p.root());
            assert_untorn(p, &t, truth, what);
            if t != truth.last {
                let missing = truth
                    .last
                    .iter()
                    .filter(|(rel, bytes)| t.get(*rel) != Some(*bytes))
                    .map(|(rel, _)| rel.clone());
                let extra = t
                    .keys()
                    .filter(|rel| !truth.last.contains_key(*rel))
                    .cloned();
                behind.push(format!(
                    "{}: not yet the last version of {:?}; extra files {:?}",
                    p.name,
                    missing.take(8).collect::<Vec<_>>(),
                    extra.take(8).collect::<Vec<_>>()
                ));
            }
        }
        if behind.is_empty() {
            eprintln!("{what}: settled in {:?}", start.elapsed());
            return;
        }
        if start.elapsed() > DEADLINE {
            panic!(
                "{what}: after {DEADLINE:?}, edits are missing:\n{}\n{}",
                behind.join("\n"),
                peers
                    .iter()
                    .map(|p| diagnose(p))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A peer's state for a failure message: its status and the end of its daemon's log.
fn diagnose(p: &Peer) -> String {
    let (s, code) = p.status();
    let log = std::fs::read_to_string(p.path(".cuedeck/daemon.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    format!(
        "{}: status exit {code}, relay {}, peers {}, pending {}; daemon.log ends:\n  {}",
        p.name,
        s["relay"],
        s["peers"],
        s["pending_changes"],
        tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
    )
}

/// Files already in a folder before `init`/`join` (a first sync carries them).
fn seed_files(peer: &Peer, rng: &mut Rng, truth: &mut Truth, count: usize) {
    for i in 0..count {
        let rel = format!("{}/start/{:02}/n{i:03}.md", peer.name, i % 10);
        let bytes = render(&rel, i as u64, &fresh_body(rng, &rel));
        truth.record(&rel, &bytes);
        peer.save_atomically(&rel, &bytes);
        truth.saved(&rel, bytes);
    }
}

/// Restarts a killed daemon: the store must open, every time.
fn restart(peer: &Peer) {
    peer.start();
    assert!(peer.running(), "{}'s daemon did not come back", peer.name);
}

#[test]
fn kill_9_at_random_instants_loses_nothing() {
    let kills = if faults_long() { 100 } else { 5 };
    let mut rng = Rng::seeded("kill_9_at_random_instants_loses_nothing");
    let truth = Mutex::new(Truth::default());
    let relay = Relay::start();
    let a = Peer::new("alice");
    let b = Peer::new("bob");
    seed_files(&a, &mut rng, &mut truth.lock().unwrap(), 150);
    a.init(&relay.url());
    let token = a.invite();
    b.join(&token);
    a.start();

    let mut done = 0;
    let mut round = 0;
    let mut sampled = 0;
    let started = Instant::now();
    while done < kills {
        if round % 10 == 0 {
            // A first sync: bob (round 0) or a newcomer with files of its own, killed
            // while it takes the workspace in.
            let newcomer = (round > 0).then(|| {
                let c = Peer::new(&format!("carol{round}"));
                seed_files(&c, &mut rng, &mut truth.lock().unwrap(), 20);
                c.join(&token);
                c
            });
            let victim = newcomer.as_ref().unwrap_or(&b);
            victim.start();
            let after = rng.millis(0, 600);
            std::thread::sleep(after);
            eprintln!(
                "round {round}: kill -9 {} {after:?} into its first sync",
                victim.name
            );
            victim.kill_daemon();
            done += 1;
            restart(victim);
            settle(
                &[&a, &b, victim],
                &truth.lock().unwrap(),
                &format!("round {round} (first sync of {})", victim.name),
            );
            if let Some(c) = newcomer {
                c.stop();
            }
        } else {
            // An edit burst on both peers; one of them is killed at a random instant of
            // it, and sometimes again right as it restarts.
            let victim = if rng.percent(50) { &a } else { &b };
            let edits = 20 + rng.below(40) as usize;
            let after = rng.millis(0, 400);
            let again = rng.percent(20);
            let stop = AtomicBool::new(false);
            let (ra, rb) = (rng.fork(), rng.fork());
            let writing_done = AtomicBool::new(false);
            let what = format!("round {round}, during the burst");
            std::thread::scope(|s| {
                let writers = [
                    s.spawn(|| burst(&a, ra, &truth, edits, BURST, &stop)),
                    s.spawn(|| burst(&b, rb, &truth, edits, BURST, &stop)),
                ];
                let sampler = s.spawn(|| sample_untorn(&[&a, &b], &truth, &writing_done, &what));
                std::thread::sleep(after);
                eprintln!(
                    "round {round}: kill -9 {} {after:?} into a burst of {edits} edits a peer{}",
                    victim.name,
                    if again {
                        ", and again as it restarts"
                    } else {
                        ""
                    }
                );
                victim.kill_daemon();
                done += 1;
                restart(victim);
                if again && done < kills {
                    victim.kill_daemon();
                    done += 1;
                    restart(victim);
                }
                for w in writers {
                    w.join().unwrap();
                }
                writing_done.store(true, Relaxed);
                sampled += sampler.join().unwrap();
            });
            settle(
                &[&a, &b],
                &truth.lock().unwrap(),
                &format!("round {round} ({} killed)", victim.name),
            );
        }
        round += 1;
    }
    let files = truth.lock().unwrap().last.len();
    let versions: usize = truth
        .lock()
        .unwrap()
        .versions
        .values()
        .map(BTreeSet::len)
        .sum();
    eprintln!(
        "{done} kills in {round} rounds, {files} files, {versions} versions written, \
         {sampled} file reads during the bursts, all settled in {:?}",
        started.elapsed()
    );
    a.stop();
    b.stop();
}

#[test]
fn a_network_that_delays_stalls_cuts_and_refuses_loses_nothing() {
    let faulty_for = Duration::from_secs(if faults_long() { 60 } else { 6 });
    let mut rng = Rng::seeded("a_network_that_delays_stalls_cuts_and_refuses_loses_nothing");
    let truth = Mutex::new(Truth::default());
    let relay = Relay::start();
    let proxy = FaultProxy::start(relay.addr);
    let a = Peer::new("alice");
    let b = Peer::new("bob");
    seed_files(&a, &mut rng, &mut truth.lock().unwrap(), 30);
    a.init(&proxy.url());
    b.join(&a.invite());
    a.start();
    b.start();

    let stop = AtomicBool::new(false);
    let (ra, rb) = (rng.fork(), rng.fork());
    let sampled = std::thread::scope(|s| {
        // Both peers keep editing through the faults, and no file is ever seen torn.
        s.spawn(|| burst(&a, ra, &truth, usize::MAX, STEADY, &stop));
        s.spawn(|| burst(&b, rb, &truth, usize::MAX, STEADY, &stop));
        let sampler = s.spawn(|| sample_untorn(&[&a, &b], &truth, &stop, "during the faults"));
        let start = Instant::now();
        let mut faults = BTreeMap::<&str, u32>::new();
        while start.elapsed() < faulty_for {
            let lasting = rng.millis(100, 1200);
            let fault = match rng.below(5) {
                0 => {
                    proxy.set_latency(rng.millis(20, 400));
                    "latency"
                }
                1 => {
                    proxy.set_stalled(true);
                    "stall"
                }
                2 => {
                    proxy.cut_all();
                    "cut"
                }
                3 => {
                    // Cut, and refuse the reconnections for a while.
                    proxy.set_refusing(true);
                    proxy.cut_all();
                    "cut and refuse"
                }
                _ => "calm",
            };
            *faults.entry(fault).or_default() += 1;
            // The fault lasts this long (pacing the schedule, not a wait).
            std::thread::sleep(lasting);
            proxy.heal();
        }
        // A schedule that drew no cut (or cut before the peers had connected: about one
        // run in a hundred) cuts once now, while both peers are connected and editing.
        if proxy.counts().1 == 0 {
            proxy.cut_all();
            *faults.entry("cut").or_default() += 1;
        }
        stop.store(true, Relaxed);
        eprintln!(
            "faults over {faulty_for:?}: {faults:?}; proxy (passed, cut, refused) {:?}",
            proxy.counts()
        );
        sampler.join().unwrap()
    });
    eprintln!("{sampled} file reads during the faults, none torn");
    proxy.heal();
    let (_, cut, _) = proxy.counts();
    assert!(
        cut > 0,
        "the schedule cut no connection: {:?}",
        proxy.counts()
    );
    settle(
        &[&a, &b],
        &truth.lock().unwrap(),
        "after the network faults",
    );
    a.stop();
    b.stop();
}

#[test]
fn a_flood_at_ten_times_the_rate_limit_is_refused_and_other_rooms_still_sync() {
    let flood_for = Duration::from_secs(if faults_long() { 60 } else { 4 });
    let mut rng = Rng::seeded("a_flood_at_ten_times_the_rate_limit");
    let rate = 20;
    let relay = Relay::start_with(
        "127.0.0.1:0",
        &[
            "--messages-per-second",
            &rate.to_string(),
            "--burst",
            &rate.to_string(),
        ],
    );
    let truth = Mutex::new(Truth::default());
    let a = Peer::new("alice");
    let b = Peer::new("bob");
    seed_files(&a, &mut rng, &mut truth.lock().unwrap(), 10);
    a.init(&relay.url());
    b.join(&a.invite());
    a.start();
    b.start();
    settle(&[&a, &b], &truth.lock().unwrap(), "before the flood");

    // Room A: one raw client sending at ten times the limit.
    let flooder = Flooder::start(
        relay.addr,
        rng.next_u64(),
        Pace::PerSecond(10 * rate),
        DEADLINE,
    )
    .unwrap();
    wait_until("the flooder to be told it is rate limited", || {
        flooder.rate_limited() > 0
    });
    let metric = r#"cue_relay_rate_limit_hits_total{limit="messages"}"#;
    let hits_before = relay.metric(metric);
    assert!(hits_before > 0, "{}", relay.metrics());

    // Room B: the daemons edit through the flood, round after round, and every edit
    // lands while the flood goes on.
    let start = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || start.elapsed() < flood_for {
        let stop = AtomicBool::new(false);
        let (ra, rb) = (rng.fork(), rng.fork());
        std::thread::scope(|s| {
            s.spawn(|| burst(&a, ra, &truth, 15, BURST, &stop));
            s.spawn(|| burst(&b, rb, &truth, 15, BURST, &stop));
        });
        settle(
            &[&a, &b],
            &truth.lock().unwrap(),
            &format!("round {rounds} during the flood"),
        );
        assert!(flooder.alive(), "the flood stopped early");
        rounds += 1;
    }
    let limited = flooder.rate_limited();
    let sent = flooder.sent();
    let flooding = flooder.started().elapsed().as_secs_f64();
    let hits = relay.metric(metric);
    eprintln!(
        "{rounds} rounds of edits synced during {flooding:.1} s of flood: {sent} sent ({:.0} a second \
         against a limit of {rate}), {limited} refused as rate limited; relay counter \
         {hits_before} -> {hits}",
        sent as f64 / flooding
    );
    // Every refusal the flooder was told of is counted (the daemons' own, resent, too).
    assert!(hits > hits_before && hits >= limited, "{hits} {limited}");
    // Everything above what the limit lets through was refused (a few answers may still
    // be on their way).
    let allowed = rate + (rate as f64 * (flooding + 1.0)) as u64;
    assert!(
        limited + 50 >= sent.saturating_sub(allowed),
        "{sent} sent, at most {allowed} allowed, only {limited} refused"
    );
    drop(flooder);
    a.stop();
    b.stop();
}

/// How many files a burst brings: thousands (`CUE_FAULTS_LONG=1`: ten thousand).
fn burst_files() -> usize {
    if faults_long() { 10_000 } else { 2_000 }
}

/// How long a burst of thousands may take to reach the other peer in a debug build on a
/// busy machine, a restart included.
const BURST_DEADLINE: Duration = Duration::from_secs(300);

/// The synced files of a peer's folder (`.git/` and temporaries left out).
fn synced(p: &Peer) -> BTreeMap<String, Vec<u8>> {
    let mut t = tree(p.root());
    t.retain(|rel, _| !rel.starts_with(".git/") && !is_temporary(rel));
    t
}

/// How many of the files of `want` `p` holds with their bytes.
fn holding(p: &Peer, want: &BTreeMap<String, Vec<u8>>) -> usize {
    want.iter()
        .filter(|(rel, bytes)| std::fs::read(p.path(rel)).is_ok_and(|b| b == **bytes))
        .count()
}

/// Polls `cond` (pauses growing to 20 ms) until it holds; fails with `what` and each
/// peer's state after [`BURST_DEADLINE`].
fn burst_wait(what: &str, peers: &[&Peer], mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    while !cond() {
        if start.elapsed() > BURST_DEADLINE {
            panic!(
                "{what}: not after {BURST_DEADLINE:?}\n{}",
                peers
                    .iter()
                    .map(|p| diagnose(p))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    eprintln!("{what}: after {:?}", start.elapsed());
}

/// Waits until both peers hold exactly `want`, byte for byte, and nothing else; fails
/// naming what each holds otherwise.
fn burst_settle(a: &Peer, b: &Peer, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burst_wait(what, &[a, b], || synced(a) == *want && synced(b) == *want);
    }));
    if let Err(panic) = settled {
        for p in [a, b] {
            eprintln!("{}", differences(p, want));
        }
        std::panic::resume_unwind(panic);
    }
}

/// What `p` holds that is not `want` (at most ten paths each way, with each file's
/// first and last lines).
fn differences(p: &Peer, want: &BTreeMap<String, Vec<u8>>) -> String {
    let held = synced(p);
    let ends = |b: &[u8]| {
        let text = String::from_utf8_lossy(b);
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "{:?} … {:?} ({} lines)",
            lines.first().unwrap_or(&""),
            lines.last().unwrap_or(&""),
            lines.len()
        )
    };
    let mut out = vec![format!(
        "{}: {} files, want {}",
        p.name,
        held.len(),
        want.len()
    )];
    let differ = want
        .iter()
        .filter(|(rel, bytes)| held.get(*rel) != Some(*bytes));
    for (rel, bytes) in differ.take(10) {
        out.push(format!(
            "  {rel}: want {}, holds {}",
            ends(bytes),
            held.get(rel).map_or("nothing".into(), |b| ends(b))
        ));
    }
    for rel in held.keys().filter(|r| !want.contains_key(*r)).take(10) {
        out.push(format!("  extra {rel}: {}", ends(&held[rel])));
    }
    out.join("\n")
}

/// Runs git in `dir`, failing the test unless it succeeds.
fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A note of about 4 KB whose every line names its path, so a file of another path is
/// never taken for it; its title names the version.
fn burst_note(rel: &str, version: &str, rng: &mut Rng) -> Vec<u8> {
    let mut text = format!("# {rel} {version}\n\n");
    while text.len() < 4000 {
        text.push_str(&format!("{rel} {version} {:016x}\n", rng.next_u64()));
    }
    text.into_bytes()
}

/// Thousands of files copied into a running peer (`cp -r`), its daemon killed with
/// SIGKILL once some of them, not all, have reached the other peer, and started again;
/// then a `git checkout` changing all of them in the other direction's source, the
/// receiving daemon killed the same way in the middle of it. Each time every file ends
/// on both peers with the same bytes, nothing lost, nothing extra (`.git/` stays
/// unsynced).
#[test]
fn kill_9_in_the_middle_of_a_burst_of_thousands_of_files_loses_nothing() {
    let n = burst_files();
    let mut rng =
        Rng::seeded("kill_9_in_the_middle_of_a_burst_of_thousands_of_files_loses_nothing");
    let relay = Relay::start();
    let a = Peer::new("alice");
    let b = Peer::new("bob");
    a.write("readme.md", "# a workspace\n");
    a.init(&relay.url());
    b.join(&a.invite());
    a.start();
    b.start();
    let mut want = synced(&a);
    burst_settle(&a, &b, &want, "the first sync");

    // A copy-in: the files are made outside the folder, then copied in by `cp -r`.
    let staging = tempfile::tempdir().unwrap();
    let mut copied = BTreeMap::new();
    for i in 0..n {
        let rel = format!("burst/{:02}/n{i:05}.md", i % 20);
        let bytes = burst_note(&rel, "v1", &mut rng);
        let path = staging.path().join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &bytes).unwrap();
        copied.insert(rel, bytes);
    }
    let cp = std::process::Command::new("cp")
        .arg("-r")
        .arg(staging.path().join("burst"))
        .arg(a.root())
        .status()
        .unwrap();
    assert!(cp.success());
    let mut before_kill = 0;
    burst_wait("some of the copy-in on bob", &[&a, &b], || {
        before_kill = holding(&b, &copied);
        before_kill > 0
    });
    assert!(
        before_kill < n,
        "all {n} files reached bob before alice could be killed: no kill in the middle"
    );
    eprintln!("kill -9 alice with {before_kill} of {n} copied files on bob");
    a.kill_daemon();
    restart(&a);
    want.extend(copied.clone());
    burst_settle(&a, &b, &want, "the copy-in on both after alice's kill");

    // A `git checkout` on alice of a branch that changes every copied file and adds a few;
    // bob, receiving, is killed in the middle of it.
    git(a.root(), &["init", "-q", "-b", "one"]);
    // cue's own folder is no part of the project.
    std::fs::write(a.path(".git/info/exclude"), ".cuedeck/\n").unwrap();
    git(a.root(), &["add", "-A"]);
    git(a.root(), &["commit", "-q", "-m", "one"]);
    let clone = tempfile::tempdir().unwrap();
    let other = clone.path().join("two");
    let from = a.root().to_string_lossy().into_owned();
    git(clone.path(), &["clone", "-q", &from, "two"]);
    // As branches usually differ: a line changed and a line added in each file. (Every
    // line rewritten costs the daemons far more: see docs/ARCHITECTURE.md, Known gaps.)
    let mut checkout = want.clone();
    for (rel, bytes) in checkout.iter_mut().filter(|(r, _)| r.starts_with("burst/")) {
        let text = String::from_utf8_lossy(bytes).replacen(" v1\n", " v2\n", 1);
        *bytes = format!("{text}{rel} changed on branch two\n").into_bytes();
        std::fs::write(other.join(rel), &bytes).unwrap();
    }
    for i in 0..100 {
        let rel = format!("added/a{i:03}.md");
        let bytes = burst_note(&rel, "v2", &mut rng);
        std::fs::create_dir_all(other.join("added")).unwrap();
        std::fs::write(other.join(&rel), &bytes).unwrap();
        checkout.insert(rel, bytes);
    }
    git(&other, &["checkout", "-q", "-b", "two"]);
    git(&other, &["add", "-A"]);
    git(&other, &["commit", "-q", "-m", "two"]);
    git(&other, &["push", "-q", "origin", "two"]);
    let changed: BTreeMap<String, Vec<u8>> = checkout
        .iter()
        .filter(|(rel, bytes)| want.get(*rel) != Some(*bytes))
        .map(|(r, b)| (r.clone(), b.clone()))
        .collect();
    git(a.root(), &["checkout", "-q", "two"]);
    let mut before_kill = 0;
    burst_wait("some of the checkout on bob", &[&a, &b], || {
        before_kill = holding(&b, &changed);
        before_kill > 0
    });
    assert!(
        before_kill < changed.len(),
        "the whole checkout reached bob before bob could be killed: no kill in the middle"
    );
    eprintln!(
        "kill -9 bob with {before_kill} of the {} changed files",
        changed.len()
    );
    b.kill_daemon();
    // While bob's daemon is down, his user adds a line to some of the notes the checkout
    // already changed on his disk, in place and through a rename (as editors save).
    // Each ends with the checkout's change once and his line once. (A kill between a
    // batch's renames and the journal's done marks used to have such a save merged with
    // the version before the checkout, making the checkout's change twice; the kill
    // lands in that window only now and then here, the unit tests
    // `driver::power_cut::*done_mark*` put it exactly there.)
    // The notes written last (the kill most likely cut their batch short), of those bob
    // held before the checkout: for a file the checkout added, a save after a kill in
    // that window still ends as a conflict copy beside the checkout's version (nothing
    // lost; docs/ARCHITECTURE.md, "Known gaps", the write journal), which this test,
    // byte for byte, would take for a failure (seen once in CI, seed
    // 1796576457230509767).
    let mut latest: Vec<(std::time::SystemTime, &String, &Vec<u8>)> = changed
        .iter()
        .filter(|(rel, _)| !rel.starts_with("added/"))
        .filter(|(rel, bytes)| std::fs::read(b.path(rel)).ok().as_ref() == Some(*bytes))
        .filter_map(|(rel, bytes)| {
            let modified = std::fs::metadata(b.path(rel)).ok()?.modified().ok()?;
            Some((modified, rel, bytes))
        })
        .collect();
    latest.sort();
    let mut saved_while_down = 0;
    for (i, (_, rel, bytes)) in latest.into_iter().rev().take(40).enumerate() {
        let saved = format!(
            "{}{rel} saved by bob while his daemon was down\n",
            String::from_utf8_lossy(bytes)
        );
        if i % 2 == 0 {
            b.write(rel, &saved);
        } else {
            b.write_via_rename(rel, &saved);
        }
        checkout.insert(rel.clone(), saved.into_bytes());
        saved_while_down += 1;
    }
    eprintln!("{saved_while_down} notes saved on bob while his daemon was down");
    restart(&b);
    burst_settle(&a, &b, &checkout, "the checkout on both after bob's kill");
    assert!(
        !b.path(".git").exists(),
        "alice's .git/ reached bob: it must not be synced"
    );
    a.stop();
    b.stop();
}

/// Bob's edit lands on alice's disk and her daemon is killed (kill -9) within the
/// second before it flushes the file; while it is down she saves the note, adding a
/// line (in place, then, the second time, through a rename as careful editors do).
/// Started again, her save is an edit of the note as bob left it: both peers end with
/// bob's line once and hers once. The start used to take her save for the write not
/// done and merge it with the version before bob's edit, making his change twice; and,
/// when the kill came in the milliseconds between the rename and the journal's done mark
/// (seen once in a full parallel run), it still did (the unit tests
/// `driver::power_cut::*kill_before_the_done_mark*` put the kill exactly there).
#[test]
fn a_save_made_while_the_daemon_is_down_after_a_kill_repeats_no_peers_change() {
    for through_a_rename in [false, true] {
        let (_relay, a, b) = pair();
        a.write("plan.md", "# Plan\n\nfirst\n");
        wait_for_file(&b, "plan.md", "alice's note", |c| c.contains("first"));
        b.write("plan.md", "# Plan\n\nfirst\nfrom bob\n");
        wait_for_file(&a, "plan.md", "bob's line", |c| c.contains("from bob"));
        a.kill_daemon();
        let saved = "# Plan\n\nfirst\nfrom bob\nfrom alice\n";
        if through_a_rename {
            a.write_via_rename("plan.md", saved);
        } else {
            a.write("plan.md", saved);
        }
        a.start();
        wait_until("both peers to hold alice's save", || {
            a.read("plan.md").as_deref() == Some(saved)
                && b.read("plan.md").as_deref() == Some(saved)
        });
        a.stop();
        b.stop();
    }
}
