//! The `cue-relay` binary: start-up line, healthcheck, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cue_proto::RelayFrame;

use crate::util::*;

const BINARY: &str = env!("CARGO_BIN_EXE_cue-relay");

/// Starts the binary on a free port and reads its `listening on` line.
fn start_binary(extra: &[&str]) -> (Child, SocketAddr) {
    start_binary_with(
        Command::new(BINARY)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra),
    )
}

/// Starts `command` (the binary with its flags) and reads its `listening on` line.
fn start_binary_with(command: &mut Command) -> (Child, SocketAddr) {
    let mut child = command
        .env_remove("CUE_RELAY_LISTEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the relay did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn healthcheck(addr: SocketAddr) -> bool {
    healthcheck_with(
        &["healthcheck", "--url", &format!("http://{addr}/healthz")],
        None,
    )
}

/// Runs the binary with `args`, and CUE_RELAY_LISTEN set to `env_listen` if given;
/// whether it exits 0.
fn healthcheck_with(args: &[&str], env_listen: Option<&str>) -> bool {
    let mut command = Command::new(BINARY);
    command.args(args).env_remove("CUE_RELAY_LISTEN");
    if let Some(listen) = env_listen {
        command.env("CUE_RELAY_LISTEN", listen);
    }
    command.stderr(Stdio::null()).status().unwrap().success()
}

fn sigterm(child: &Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_going_away_and_exits_zero() {
    let (mut child, addr) = start_binary(&[]);
    assert!(healthcheck(addr));
    let key = room_key(4);
    let room = room_of(&key);
    let mut peers = Vec::new();
    for _ in 0..3 {
        let client = Client::connect(addr, &room).await;
        peers.push(handshake(client, &key, None).await.ok().expect("admitted"));
    }
    // One connection still in its handshake is closed the same way.
    let mut joining = Client::connect(addr, &room).await;
    assert!(matches!(
        joining.frame().await,
        RelayFrame::Challenge { .. }
    ));

    sigterm(&child);

    for peer in &mut peers {
        let (_, end) = peer.client.until_closed().await;
        assert_eq!(end, Next::Closed(Some((1001, "going away".into()))));
    }
    let (_, end) = joining.until_closed().await;
    assert_eq!(end, Next::Closed(Some((1001, "going away".into()))));
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!healthcheck(addr), "nothing listens any more");
}

#[test]
fn bad_flags_are_a_usage_error_and_env_vars_are_read() {
    let output = Command::new(BINARY)
        .args(["--max-peers-per-room", "many"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));

    // An invalid limit from the environment is refused with one clear line.
    let output = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0"])
        .env("CUE_RELAY_MESSAGES_PER_SECOND", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("messages per second must be greater than zero"),
        "{stderr}"
    );
}

#[test]
fn the_healthcheck_finds_the_address_as_the_server_does() {
    // A host name is resolved, by the server and the healthcheck alike.
    let (mut child, addr) =
        start_binary_with(Command::new(BINARY).args(["--listen", "localhost:0"]));
    assert!(addr.ip().is_loopback(), "{addr}");
    let by_name = format!("localhost:{}", addr.port());
    let by_address = addr.to_string();
    assert!(healthcheck_with(
        &["healthcheck", "--listen", &by_name],
        None
    ));
    assert!(healthcheck_with(
        &["healthcheck", "--listen", &by_address],
        None
    ));
    assert!(healthcheck_with(
        &["--listen", &by_address, "healthcheck"],
        None
    ));
    assert!(healthcheck_with(&["healthcheck"], Some(&by_address)));
    // The command's own --listen wins over the environment.
    assert!(healthcheck_with(
        &["healthcheck", "--listen", &by_address],
        Some("127.0.0.1:1")
    ));
    assert!(!healthcheck_with(&["healthcheck"], Some("127.0.0.1:1")));
    sigterm(&child);
    assert!(wait_exit(&mut child).success());
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let mut child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("CUE_RELAY_LISTEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
    sigterm(&child);
    assert!(wait_exit(&mut child).success());
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("relay started"), "{logs}");
    assert!(!logs.contains('\x1b'), "escape codes in {logs:?}");
}
