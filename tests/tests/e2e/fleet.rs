//! Relays as a fleet (docs/deploy.md §3): three `cue-relay` behind HAProxy hashing on the
//! room path, several workspaces. Rooms spread over the instances, each syncs, a kill -9
//! of an instance loses nothing, and a room split when the instance comes back reunites
//! with no operator action (`crates/cue-daemon/src/alone.rs`).
//!
//! The same test runs behind nginx (hash on `$request_uri`, consistent). Needs `haproxy`
//! and `nginx` (Debian's packages; `.ci/run` installs them). Without one, its test says so
//! and passes, except under CI, where it fails.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cue_e2e::*;

/// The HAProxy configuration docs/deploy.md §3 gives, on loopback and without TLS.
fn haproxy_config(listen: SocketAddr, relays: &[SocketAddr]) -> String {
    let mut cfg = format!(
        "global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    option redispatch
    retries 2
frontend relay
    bind {listen}
    default_backend relays
backend relays
    balance uri
    hash-type consistent
    option forwardfor
    option httpchk GET /healthz
    default-server check inter 1s fall 2 rise 2 on-marked-down shutdown-sessions
"
    );
    for (i, r) in relays.iter().enumerate() {
        cfg.push_str(&format!("    server r{i} {r}\n"));
    }
    cfg
}

/// The nginx configuration docs/deploy.md §3 gives, on loopback and without TLS, its
/// files in `dir`.
fn nginx_config(dir: &std::path::Path, listen: SocketAddr, relays: &[SocketAddr]) -> String {
    let d = dir.display();
    let servers: String = relays
        .iter()
        .map(|r| format!("        server {r} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    format!(
        "worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream relays {{
        hash $request_uri consistent;
{servers}    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://relays;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_read_timeout 120s;
            proxy_buffering off;
        }}
    }}
}}
"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Haproxy,
    Nginx,
}

struct Balancer {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The balancer in the foreground, or `None` when it is not installed (outside CI).
fn balancer(kind: Kind, relays: &[SocketAddr]) -> Option<Balancer> {
    let program = match kind {
        Kind::Haproxy => "haproxy",
        Kind::Nginx => "nginx",
    };
    let found = Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{program} is not installed: .ci/run installs it"
        );
        eprintln!(
            "{program} is not installed: this fleet test is skipped (apt-get install {program})"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let path = dir.path().join("balancer.cfg");
    let config = match kind {
        Kind::Haproxy => haproxy_config(addr, relays),
        Kind::Nginx => nginx_config(dir.path(), addr, relays),
    };
    std::fs::File::create(&path)
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let mut command = Command::new(program);
    match kind {
        Kind::Haproxy => command.args(["-db", "-f"]).arg(&path),
        Kind::Nginx => command
            .arg("-c")
            .arg(&path)
            .args(["-e", "stderr", "-g", "daemon off;"]),
    };
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(&format!("{program} to listen"), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    Some(Balancer {
        kind,
        child,
        addr,
        _dir: dir,
    })
}

fn rooms(r: &Relay) -> u64 {
    r.metric("cue_relay_rooms")
}

/// HAProxy's health checks reached `r` (at least `n` of them).
fn checked(r: &Relay, n: u64) -> bool {
    r.metric("cue_relay_http_requests_total") >= n
}

fn online_peers(p: &Peer) -> usize {
    p.status().0["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["online"] == true)
        .count()
}

#[test]
fn behind_haproxy_rooms_spread_fail_over_and_reunite_after_a_split() {
    fleet(Kind::Haproxy);
}

#[test]
fn behind_nginx_rooms_spread_fail_over_and_reunite_after_a_split() {
    fleet(Kind::Nginx);
}

fn fleet(kind: Kind) {
    let mut relays: Vec<Option<Relay>> = (0..3).map(|_| Some(Relay::start())).collect();
    let addrs: Vec<SocketAddr> = relays
        .iter()
        .map(|r| {
            r.as_ref()
                .unwrap()
                .url()
                .trim_start_matches("ws://")
                .parse()
                .unwrap()
        })
        .collect();
    let Some(lb) = balancer(kind, &addrs) else {
        return;
    };
    if kind == Kind::Haproxy {
        wait_until("HAProxy to find every relay healthy", || {
            relays.iter().flatten().all(|r| checked(r, 2))
        });
    }
    let url = format!("ws://{}", lb.addr);

    // Six workspaces of two peers each.
    let pairs: Vec<(Peer, Peer)> = (0..6)
        .map(|i| {
            let a = Peer::new(&format!("a{i}"));
            let b = Peer::new(&format!("b{i}"));
            a.init(&url);
            b.join(&a.invite());
            a.start();
            b.start();
            (a, b)
        })
        .collect();
    for (i, (a, b)) in pairs.iter().enumerate() {
        a.write("first.md", &format!("workspace {i}\n"));
        wait_for_file(b, "first.md", "the first file", |_| true);
    }
    let used = relays.iter().flatten().filter(|r| rooms(r) > 0).count();
    assert!(
        used >= 2,
        "every room on one relay: the hash spreads nothing"
    );

    // kill -9 the busiest relay: its rooms fail over, nothing is lost.
    let busiest = (0..3)
        .max_by_key(|&i| relays[i].as_ref().map_or(0, rooms))
        .unwrap();
    let killed_at = relays[busiest].take().unwrap().kill();
    for (i, (a, b)) in pairs.iter().enumerate() {
        a.write("after-kill.md", &format!("workspace {i} after the kill\n"));
        wait_for_file(b, "after-kill.md", "a file written after the kill", |_| {
            true
        });
    }

    // The relay comes back. Restarting one side of each workspace sends it where the
    // balancer now hashes the room, the returned relay for the rooms it held, while the
    // other side stays on the relay it failed over to: those rooms are split.
    relays[busiest] = Some(Relay::start_on(&killed_at.to_string()));
    let returned = std::time::Instant::now();
    let back = relays[busiest].as_ref().unwrap();
    if lb.kind == Kind::Haproxy {
        // Marked up after two good checks ("rise 2"); the third is after that.
        wait_until("HAProxy to take the relay back", || checked(back, 3));
    }
    // nginx tries a failed server again only after its fail_timeout (2 s) has passed
    // since the last connection it failed.
    wait_until("nginx's fail_timeout to pass", || {
        lb.kind == Kind::Haproxy || returned.elapsed() > Duration::from_secs(3)
    });
    let is_split = |(a, b): &(Peer, Peer)| {
        // Both sides connected, and neither sees the other.
        let connected = |p: &Peer| p.status().0["relay"]["connected"] == true;
        connected(a) && connected(b) && online_peers(a) == 0 && online_peers(b) == 0
    };
    let mut split = 0;
    for _attempt in 0..6 {
        for (_, b) in &pairs {
            b.stop();
            b.start();
        }
        wait_until("every peer to be connected again", || {
            pairs.iter().all(|(a, b)| {
                [a, b]
                    .iter()
                    .all(|p| p.status().0["relay"]["connected"] == true)
            })
        });
        // A moment for the admissions of peers that did meet.
        std::thread::sleep(Duration::from_millis(500));
        split = pairs.iter().filter(|p| is_split(p)).count();
        if split > 0 {
            break;
        }
    }
    eprintln!(
        "{split} of {} workspaces split after the relay came back; rooms per relay: {:?}",
        pairs.len(),
        relays
            .iter()
            .map(|r| r.as_ref().map(rooms))
            .collect::<Vec<_>>()
    );
    assert!(split > 0, "no room split: the test would prove nothing");

    // With no operator action, every workspace syncs again within the bound (alone.rs:
    // at most 30 s alone before reconnecting, twice that if both sides move at once).
    for (i, (a, b)) in pairs.iter().enumerate() {
        a.write(
            "after-return.md",
            &format!("workspace {i} after the return\n"),
        );
        b.write("from-b.md", &format!("workspace {i} from b\n"));
    }
    for (a, b) in &pairs {
        cue_testkit::poll_until(
            &format!("{} and {} to sync again", a.name, b.name),
            Duration::from_secs(100),
            Duration::from_millis(200),
            || Ok(b.read("after-return.md").is_some() && a.read("from-b.md").is_some()),
        )
        .unwrap();
    }
    for (a, b) in &pairs {
        a.stop();
        b.stop();
    }
    drop(lb);
}
