//! The benchmark's workspaces, on cue-testkit's real processes: a `cue-relay` and `cue`
//! daemons in temporary folders on 127.0.0.1. Every wait polls a condition with a
//! deadline; every process started here is stopped by its pid when its handle drops.

use std::path::PathBuf;
use std::time::Duration;

use cue_testkit::{ANY_PORT, Kit, Peer, Relay, wait_until};

/// `cue` and `cue-relay` from the flags, else `CUE_BIN`/`CUE_RELAY_BIN`, else next to
/// this executable (`target/release/`). `CUE_BENCH_KEEP=1` leaves the peers' folders
/// behind, to look into their stores.
pub fn kit(cue: Option<PathBuf>, relay: Option<PathBuf>) -> anyhow::Result<Kit> {
    let mut kit = Kit::locate("cue-bench", cue, relay)?;
    kit.keep = std::env::var_os("CUE_BENCH_KEEP").is_some();
    Ok(kit)
}

/// `cue-relay-load` from the flag, else `CUE_RELAY_LOAD_BIN`, else next to this
/// executable.
pub fn relay_load_bin(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    cue_testkit::binary(
        flag,
        "CUE_RELAY_LOAD_BIN",
        "cue-relay-load",
        "cue-relay-load",
    )
}

/// A workspace: one relay, `n` peers (the first made it, the others joined its invite),
/// every daemon started and every peer seeing all others online.
pub fn cluster(kit: &Kit, n: usize, deadline: Duration) -> anyhow::Result<(Relay, Vec<Peer>)> {
    let relay = Relay::start(kit, ANY_PORT, &[])?;
    let peers = cluster_on(kit, &relay, n, deadline)?;
    Ok((relay, peers))
}

/// A workspace of `n` peers on a running relay, as [`cluster`].
pub fn cluster_on(
    kit: &Kit,
    relay: &Relay,
    n: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<Peer>> {
    let mut peers = Vec::new();
    for i in 0..n {
        peers.push(Peer::new(kit, &format!("p{i}"))?);
    }
    peers[0].init(&relay.url())?;
    let token = peers[0].invite()?;
    for p in &peers[1..] {
        p.join(&token)?;
    }
    for p in &peers {
        p.start()?;
    }
    for p in &peers {
        wait_until(
            &format!("{} to see {} peers online", p.name, n - 1),
            deadline,
            || Ok(p.online_peers()? == n - 1),
        )?;
    }
    Ok(peers)
}
