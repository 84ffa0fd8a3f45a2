//! A `cue-relay` process on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow};
use rustix::process::Signal;

use crate::Kit;
use crate::process::{kill, signal};

/// Listen on a free port of loopback.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// How long `/metrics` may take to answer (generous: machines running tests are busy).
const METRICS_TIMEOUT: Duration = Duration::from_secs(30);

/// A relay process, killed when dropped.
#[derive(Debug)]
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
}

impl Relay {
    /// `kit`'s `cue-relay` on `listen` ([`ANY_PORT`], or the address of a relay that was
    /// stopped, to restart it), with extra flags (limits: `--messages-per-second N`).
    pub fn start(kit: &Kit, listen: &str, flags: &[&str]) -> anyhow::Result<Relay> {
        let mut command = Command::new(&kit.relay);
        command
            .args(["--listen", listen])
            .args(flags)
            .env("RUST_LOG", "warn");
        Relay::spawn(command).with_context(|| format!("starting {}", kit.relay.display()))
    }

    /// Runs `command`, a relay that prints `listening on ADDR` once bound (`cue-relay`,
    /// or the load generator's bare relay), and returns when it listens. Its stderr is
    /// dropped.
    pub fn spawn(mut command: Command) -> anyhow::Result<Relay> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        match listening(&mut child) {
            Ok(addr) => Ok(Relay { child, addr }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM ("going away" to every peer), then waits for the process; returns the
    /// address to restart it on.
    pub fn stop(mut self) -> SocketAddr {
        signal(self.child.id(), Signal::TERM);
        let _ = self.child.wait();
        self.addr
    }

    /// kill -9, as a crash would; returns the address to restart it on.
    pub fn kill(mut self) -> SocketAddr {
        kill(self.child.id());
        let _ = self.child.wait();
        self.addr
    }

    /// `GET /metrics`: the Prometheus text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(METRICS_TIMEOUT))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let (_head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("not an HTTP response: {response:?}"))?;
        Ok(body.to_owned())
    }

    /// One value of `/metrics`, by its whole name and labels (e.g.
    /// `cue_relay_refusals_total{reason="rate_limited"}`).
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        metric_value(&self.metrics()?, name).ok_or_else(|| anyhow!("metric {name} not in /metrics"))
    }
}

/// The value of `name` (with its labels, as printed) in the Prometheus text `metrics`.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok())?
        })
}

/// Reads the relay's first line, `listening on ADDR`. A relay that dies closes its
/// stdout, which ends the read: this cannot hang.
fn listening(child: &mut Child) -> anyhow::Result<SocketAddr> {
    let stdout = child.stdout.take().context("the relay's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    Ok(line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("the relay did not start: {line:?}"))?
        .parse()?)
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill(self.child.id());
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_found_by_its_whole_name_and_labels() {
        let text = "# HELP x\ncue_a_total 3\ncue_a_total_more 4\ncue_b{limit=\"messages\"} 7\n";
        assert_eq!(metric_value(text, "cue_a_total"), Some(3.0));
        assert_eq!(metric_value(text, "cue_b{limit=\"messages\"}"), Some(7.0));
        assert_eq!(metric_value(text, "cue_b"), None);
    }
}
