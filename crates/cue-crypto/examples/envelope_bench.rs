//! Cost of one envelope: seal (pad + encrypt + sign) and open (verify_strict + decrypt +
//! unpad + replay check), per message, at 300 B and 64 KiB. Prints a Markdown table for
//! `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p cue-crypto --example envelope_bench
//! ```

use std::time::{Duration, Instant};

use cue_crypto::{
    DeviceKey, MessageType, ReplayGuard, Sealer, Stream, WorkspaceKeys, WorkspaceSecret, open,
};

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    (median, p99)
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = WorkspaceKeys::derive(&WorkspaceSecret::generate()?);
    let alice = DeviceKey::generate()?;
    let bob = DeviceKey::generate()?.device_id();
    let sealer = Sealer::new(&keys, &alice);
    let member = alice.device_id();

    println!(
        "| plaintext | envelope | seal + sign median (p99) | verify + open median (p99) | messages |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (size, n) in [(300usize, 5000u64), (64 * 1024, 1000)] {
        let plaintext = vec![0x5au8; size];
        // Warm caches and the CPU's clock before measuring.
        for seq in 0..n / 10 {
            sealer.seal(MessageType::Engine, Stream::Broadcast, seq, &plaintext)?;
        }
        let mut sealed = Vec::with_capacity(n as usize);
        let mut seal_times = Vec::with_capacity(n as usize);
        for seq in 0..n {
            let start = Instant::now();
            let bytes = sealer.seal(MessageType::Engine, Stream::Broadcast, seq, &plaintext)?;
            seal_times.push(start.elapsed());
            sealed.push(bytes);
        }
        let mut guard = ReplayGuard::new();
        let mut open_times = Vec::with_capacity(n as usize);
        for bytes in &sealed {
            let start = Instant::now();
            let opened = open(&keys, &bob, &mut guard, bytes, |id| *id == member)?;
            open_times.push(start.elapsed());
            assert_eq!(opened.plaintext.len(), size);
        }
        let (seal_med, seal_p99) = stats(seal_times);
        let (open_med, open_p99) = stats(open_times);
        println!(
            "| {} B | {} B | {} ({}) | {} ({}) | {n} |",
            size,
            sealed[0].len(),
            micros(seal_med),
            micros(seal_p99),
            micros(open_med),
            micros(open_p99),
        );
    }
    Ok(())
}
