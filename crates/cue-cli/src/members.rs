//! `cue sync invite`, `devices`, `remove` and `rotate`: through the daemon when one
//! runs, on the store directly otherwise (docs/reference.md §1.3, §1.6).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use cue_daemon::DaemonLock;
use cue_daemon::control::{self, Request, Response};
use cue_daemon::devices::{self, DeviceReport};
use cue_daemon::driver::{Driver, now_ms};
use cue_daemon::invites::{self, InviteInfo};
use cue_daemon::membership;
use cue_daemon::workspace::Workspace;

use crate::status_view::printable;

/// Sends `req` to the daemon, or does it here when none runs (holding the lock so that
/// none starts meanwhile).
fn ask(root: &Path, req: Request) -> anyhow::Result<serde_json::Value> {
    let ws = Workspace::open(root)?;
    let response = if DaemonLock::probe(&ws.dir())?.is_some() {
        let socket = cue_daemon::run::socket_for(root)?;
        control::request(&socket, &req, Duration::from_secs(30))
            .context("the daemon did not answer; check `cue sync status` and .cuedeck/daemon.log")?
    } else {
        offline(&ws, req)?
    };
    if !response.ok {
        bail!("{}", response.error.unwrap_or_else(|| "failed".into()));
    }
    Ok(response.data.unwrap_or_default())
}

fn offline(ws: &Workspace, req: Request) -> anyhow::Result<Response> {
    let _lock = match DaemonLock::acquire(&ws.dir()) {
        Ok(l) => l,
        Err(cue_daemon::LockError::AlreadyRunning { .. }) => {
            bail!("a daemon started meanwhile; run the command again")
        }
        Err(e) => return Err(e.into()),
    };
    let mut driver = Driver::open(ws, &ws.config)?;
    let now = now_ms();
    let held = ws.generation.number;
    let data = match req {
        Request::Invite { expires_ms, uses } => {
            let admitted = ws.secret.is_some() && driver.engine().removed_here().is_none();
            devices::invite(
                ws,
                admitted,
                driver.store_mut(),
                now,
                expires_ms,
                uses,
                held,
            )
            .map_err(|e| anyhow!(e))?
        }
        Request::Invites => serde_json::to_value(invites::list(driver.store(), now, held)?)?,
        Request::Revoke { id } => serde_json::to_value(invites::revoke(driver.store_mut(), &id)?)?,
        Request::Devices => serde_json::to_value(devices::report(driver.engine(), false))?,
        Request::Rotate { remove } => {
            if ws.secret.is_none() {
                bail!("{}", membership::RotateError::NotAdmitted);
            }
            let removed = remove
                .iter()
                .filter_map(|h| parse_id(h))
                .collect::<Vec<_>>();
            let (generation, secret, _sends) =
                membership::make_rotation(ws, &mut driver, ws.generation, &removed)?;
            // Peers learn of it through the lobby when the daemon next runs.
            if driver.engine().generation() == generation {
                ws.hold_secret(&secret, generation)?;
            }
            driver.flush()?;
            serde_json::to_value(generation.number)?
        }
        _ => bail!("not a request for this command"),
    };
    Ok(Response::with_data(data))
}

fn parse_id(h: &str) -> Option<cue_crypto::DeviceId> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(h, &mut b).ok()?;
    Some(cue_crypto::DeviceId(b))
}

/// `cue sync invite [--expires D] [--uses N] | --list | --revoke ID`.
pub fn invite(
    root: &Path,
    expires: Option<i64>,
    uses: Option<u32>,
    list: bool,
    revoke: Option<String>,
) -> anyhow::Result<ExitCode> {
    if list {
        let listed: Vec<InviteInfo> = serde_json::from_value(ask(root, Request::Invites)?)?;
        if listed.is_empty() {
            println!("This device has made no invites.");
        }
        for i in listed {
            let uses = match i.max_uses {
                Some(m) => format!("{}/{m} used", i.uses),
                None => format!("{} used", i.uses),
            };
            println!(
                "{}  {:<32}  {uses:<10}  expires {}",
                &i.id[..8],
                i.state,
                control::rfc3339(i.expires_ms)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(id) = revoke {
        let full: String = serde_json::from_value(ask(root, Request::Revoke { id })?)?;
        println!(
            "Revoked invite {}: it admits nobody from now on.",
            &full[..8]
        );
        return Ok(ExitCode::SUCCESS);
    }
    let expires_ms = expires.unwrap_or(invites::DEFAULT_EXPIRY_MS);
    let data = ask(root, Request::Invite { expires_ms, uses })?;
    let token = data["token"].as_str().unwrap_or_default();
    println!("{token}");
    let admits = match uses {
        Some(1) => "one device".to_string(),
        Some(n) => format!("up to {n} devices"),
        None => "any number of devices".to_string(),
    };
    eprintln!(
        "This invite admits {admits} until {} (UTC); this device admits them, so its daemon must be running when they start. Revoke it with `cue sync invite --revoke {}`.",
        data["expires"].as_str().unwrap_or_default(),
        &data["id"]
            .as_str()
            .unwrap_or_default()
            .get(..8)
            .unwrap_or_default()
    );
    let ws = Workspace::open(root)?;
    let url = &ws.config.sync.relay.url;
    if crate::relay_is_local(url) {
        eprintln!(
            "warning: this token carries the relay {url}, which is on this machine only (loopback): \
             another machine cannot reach it; set one it can reach with `cue sync start --relay URL`, \
             then invite again"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cue sync devices [--json]`.
pub fn devices(root: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let listed: Vec<DeviceReport> = serde_json::from_value(ask(root, Request::Devices)?)?;
    if json {
        println!("{}", serde_json::to_string(&listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    for d in &listed {
        let mark = if d.this_device { "*" } else { " " };
        let state = if d.removed {
            format!(
                "removed{}{}",
                d.removed_by
                    .as_ref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default(),
                d.removed_at
                    .as_ref()
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_default()
            )
        } else if d.this_device {
            "this device".into()
        } else if d.online {
            "online".into()
        } else {
            match &d.last_seen {
                Some(t) => format!("offline, last seen {t}"),
                None => "offline, never seen".into(),
            }
        };
        let joined = match (&d.joined, &d.admitted_by) {
            (Some(t), Some(by)) => format!("joined {t}, admitted by {by}"),
            _ => "joined before admissions were recorded, or made the workspace".into(),
        };
        println!(
            "{mark} {:<8}  {:<24}  {}; {}",
            d.short_id,
            printable(&d.name),
            printable(&state),
            printable(&joined)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cue sync remove DEVICE` (`Some`) and `cue sync rotate` (`None`).
pub fn remove(root: &Path, device: Option<&str>) -> anyhow::Result<ExitCode> {
    let target = match device {
        Some(q) => {
            let listed: Vec<DeviceReport> = serde_json::from_value(ask(root, Request::Devices)?)?;
            let d = devices::resolve(&listed, q).map_err(|e| anyhow!(e))?;
            if d.this_device {
                bail!(
                    "{} is this device: remove it from another device of the workspace",
                    d.name
                );
            }
            if d.removed {
                bail!("{} ({}) was removed already", d.name, d.short_id);
            }
            Some(d)
        }
        None => None,
    };
    let remove = target.iter().map(|d| d.device_id.clone()).collect();
    let generation: u32 = serde_json::from_value(ask(root, Request::Rotate { remove })?)?;
    match target {
        Some(d) => println!(
            "Removed {} ({}) and rotated the workspace secret (generation {generation}). \
             It keeps the files it had, and can read nothing new; its invites and its \
             token no longer work. Devices offline now get the new secret from a member \
             when they return.",
            printable(&d.name),
            d.short_id
        ),
        None => println!(
            "Rotated the workspace secret (generation {generation}): invites made before no \
             longer work. The other devices get the new secret from a member that is \
             online when they are."
        ),
    }
    Ok(ExitCode::SUCCESS)
}
