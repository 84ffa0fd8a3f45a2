//! `cue-bench --quick` end to end, so the harness cannot rot: every measurement runs on
//! real daemons and produces its figures. Nothing here checks a duration.
//!
//! It needs the `cue`, `cue-relay` and `cue-relay-load` binaries of the same profile next
//! to `cue-bench`; if they are missing it builds them (`cargo build -p cue-cli -p
//! cue-relay -p cue-relay-load`).

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;
use std::process::Command;

/// Builds `cue`, `cue-relay` and `cue-relay-load` into `dir` (`target/<profile>`) unless
/// they are there.
fn ensure_binaries(dir: &Path) {
    if ["cue", "cue-relay", "cue-relay-load"]
        .iter()
        .all(|b| dir.join(b).exists())
    {
        return;
    }
    let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
    let profile = if profile == "debug" {
        "dev".to_string()
    } else {
        profile
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--profile",
            &profile,
            "-p",
            "cue-cli",
            "-p",
            "cue-relay",
            "-p",
            "cue-relay-load",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building cue, cue-relay and cue-relay-load failed"
    );
}

#[test]
fn quick_run_measures_everything() {
    let bench = Path::new(env!("CARGO_BIN_EXE_cue-bench"));
    ensure_binaries(bench.parent().unwrap());
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("quick.json");
    let doc = out.path().join("benchmarks.md");
    std::fs::write(
        &doc,
        "# b\n\nkept above\n<!-- cue-bench:begin -->\nold run\n<!-- cue-bench:end -->\nkept below\n",
    )
    .unwrap();
    let run = Command::new(bench)
        .arg("--quick")
        .args(["--curve", "30"])
        .arg("--out")
        .arg(&json)
        .arg("--docs")
        .arg(&doc)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "cue-bench --quick failed: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let table = String::from_utf8(run.stdout).unwrap();
    assert!(table.contains("| save→peer p50, 2 peers |"), "{table}");
    assert!(table.contains("| first sync, 50 × 4 KB"), "{table}");

    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for lat in r["latency"].as_array().unwrap() {
        for run in lat["runs"].as_array().unwrap() {
            assert_eq!(run["lost"], 0, "a save never arrived: {run}");
            assert_eq!(run["first_receiver_ms"]["n"], 10, "{run}");
        }
    }
    let sync = &r["first_sync"][0]["runs"][0];
    assert_eq!(sync["files"], 50);
    // Measured, whatever the values: the relay carried the files, /proc was readable.
    assert!(
        sync["wire_bytes_out"].as_f64().unwrap() >= 50.0 * 4096.0 * 0.3,
        "{sync}"
    );
    for key in [
        "idle_rss_mib_src",
        "idle_cpu_s_per_min_src",
        "store_over_raw_import",
    ] {
        assert!(sync[key].as_f64().is_some(), "{key} missing: {sync}");
    }

    // One point of the curve: 30 notes synced, 20 more copied in, all timed.
    let curve = &r["curve"][0];
    for key in [
        "init_s",
        "first_sync_s",
        "burst_all_on_peer_s",
        "peak_mib_new",
    ] {
        assert!(curve[key].as_f64().is_some(), "{key} missing: {curve}");
    }
    assert!(table.contains("| curve, 30 files: first sync"), "{table}");

    // The flood figure: latency without and with each flood; the flooders flooded and
    // were refused (counts, not rates, are checked: the relay answered at all).
    let flood = &r["flood"]["runs"][0];
    for key in ["no_flood", "flood_10x", "flood_unpaced"] {
        assert_eq!(flood[key]["first_receiver_ms"]["n"], 10, "{key}: {flood}");
    }
    for key in ["flood_10x", "flood_unpaced"] {
        let f = &flood[key]["flooder"];
        assert!(f["sent"].as_u64().unwrap() > 0, "{key}: {f}");
        assert!(
            f["refused_rate_limited"].as_u64().unwrap() > 0,
            "{key}: {f}"
        );
    }
    assert!(table.contains("flood in another room at 10 ×"), "{table}");

    // The relay's load generator ran and its output is passed through.
    let load = &r["relay_load"];
    assert_eq!(load["ok"], true, "{load}");
    let printed = load["stdout"].as_str().unwrap();
    assert!(!printed.trim().is_empty(), "{load}");
    assert!(table.contains(printed.trim()), "{table}");

    // The docs section was replaced, the rest kept.
    let doc = std::fs::read_to_string(&doc).unwrap();
    assert!(
        doc.starts_with("# b\n\nkept above\n<!-- cue-bench:begin -->\n"),
        "{doc}"
    );
    assert!(
        doc.ends_with("<!-- cue-bench:end -->\nkept below\n"),
        "{doc}"
    );
    assert!(!doc.contains("old run"), "{doc}");
    assert!(
        doc.contains("--quick") && doc.contains("| save→peer p50, 2 peers |"),
        "{doc}"
    );
    assert!(doc.contains(printed.trim()), "{doc}");
}
