//! `cue sync devices`, `remove`, `rotate` and `invite`: what they show and how a device
//! is named, shared by the daemon and by the command line when no daemon runs.

use serde::{Deserialize, Serialize};

use cue_core::{DeviceInfo, Engine};

use crate::control::rfc3339;

/// One device as `cue sync devices --json` lists it (docs/reference.md §1.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    pub device_id: String,
    pub short_id: String,
    pub name: String,
    /// When it was admitted (unknown for the device that made the workspace and for
    /// devices admitted before cue recorded it).
    pub joined: Option<String>,
    /// The name of the device that admitted it.
    pub admitted_by: Option<String>,
    pub last_seen: Option<String>,
    pub online: bool,
    pub removed: bool,
    /// Who removed it, and when.
    pub removed_by: Option<String>,
    pub removed_at: Option<String>,
    pub this_device: bool,
}

/// Every device the engine knows, this one first, then by name.
pub fn report(engine: &Engine, connected: bool) -> Vec<DeviceReport> {
    let devices = engine.devices();
    let name_of = |d: &cue_core::DeviceId| {
        devices
            .iter()
            .find(|x| x.device == *d)
            .map_or_else(|| d.short(), |x| x.name.clone())
    };
    let mut out: Vec<DeviceReport> = devices
        .iter()
        .map(|d: &DeviceInfo| DeviceReport {
            device_id: hex::encode(d.device.0),
            short_id: d.device.short(),
            name: d.name.clone(),
            joined: d.joined_ms.map(rfc3339),
            admitted_by: d.admitted_by.as_ref().map(name_of),
            last_seen: d.last_seen_ms.map(rfc3339),
            online: d.this_device || (d.online && connected),
            removed: d.removed.is_some(),
            removed_by: d.removed.as_ref().map(|r| name_of(&r.by)),
            removed_at: d.removed.as_ref().map(|r| rfc3339(r.at_ms)),
            this_device: d.this_device,
        })
        .collect();
    out.sort_by(|a, b| {
        (!a.this_device, a.removed, &a.name).cmp(&(!b.this_device, b.removed, &b.name))
    });
    out
}

/// The device a user names by its name or a prefix of its id (hex). Ambiguous or
/// unknown names are errors that list what matches.
pub fn resolve(devices: &[DeviceReport], query: &str) -> Result<DeviceReport, String> {
    let q = query.trim();
    let lower = q.to_ascii_lowercase();
    let by_name: Vec<&DeviceReport> = devices.iter().filter(|d| d.name == q).collect();
    let matches: Vec<&DeviceReport> = if by_name.is_empty() {
        devices
            .iter()
            .filter(|d| lower.len() >= 4 && d.device_id.starts_with(&lower))
            .collect()
    } else {
        by_name
    };
    let line = |d: &DeviceReport| format!("  {} {}", d.short_id, d.name);
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "no device of this workspace is named {q:?} or has an id starting with it (ids need at least 4 hex digits); the devices are:\n{}",
            devices.iter().map(line).collect::<Vec<_>>().join("\n")
        )),
        many => Err(format!(
            "{q:?} names {} devices; give the id (or more of it):\n{}",
            many.len(),
            many.iter().map(|d| line(d)).collect::<Vec<_>>().join("\n")
        )),
    }
}

/// Makes an invite (kept in `store`) and its token: `{"token", "id", "expires"}`.
pub fn invite(
    ws: &crate::workspace::Workspace,
    admitted: bool,
    store: &mut crate::store::Store,
    now_ms: i64,
    expires_ms: i64,
    uses: Option<u32>,
    generation: u32,
) -> Result<serde_json::Value, String> {
    if !admitted {
        return Err(
            "this device is not a member of the workspace (not admitted yet, or removed): it cannot invite"
                .into(),
        );
    }
    let expires = now_ms.saturating_add(expires_ms);
    let (secret, id) = crate::invites::create(store, now_ms, expires, uses, generation)
        .map_err(|e| e.to_string())?;
    let token = ws
        .invite_token(
            &secret,
            u64::try_from(expires.div_euclid(1000)).unwrap_or(0),
        )
        .map_err(|e| e.to_string())?;
    Ok(serde_json::json!({"token": token, "id": id.to_string(), "expires": rfc3339(expires)}))
}

/// `--expires` as milliseconds: a duration (`1s`, `90m`, `7d`, `2w`), at least a second.
pub fn parse_expiry(s: &str) -> Result<i64, String> {
    let bad =
        || format!("invalid duration {s:?}: use a number and a unit, like 30m, 12h, 7d or 2w");
    let s = s.trim();
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let unit = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            _ => return Err(bad()),
        };
        total = total
            .checked_add(n.checked_mul(unit).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || total <= 0 {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, name: &str) -> DeviceReport {
        DeviceReport {
            device_id: id.repeat(64 / id.len()),
            short_id: id.repeat(8 / id.len()),
            name: name.into(),
            joined: None,
            admitted_by: None,
            last_seen: None,
            online: false,
            removed: false,
            removed_by: None,
            removed_at: None,
            this_device: false,
        }
    }

    #[test]
    fn a_device_is_named_by_name_or_id_prefix_and_ambiguity_is_an_error() {
        let all = vec![dev("ab", "laptop"), dev("ac", "desk"), dev("ad", "laptop2")];
        assert_eq!(resolve(&all, "desk").unwrap().name, "desk");
        assert_eq!(resolve(&all, "abab").unwrap().name, "laptop");
        let e = resolve(&all, "zzzz").unwrap_err();
        assert!(e.contains("laptop") && e.contains("desk"), "{e}");
        let twins = vec![dev("ab", "same"), dev("ac", "same")];
        let e = resolve(&twins, "same").unwrap_err();
        assert!(e.contains("names 2 devices"), "{e}");
        // Too short a prefix matches nothing rather than everything.
        assert!(resolve(&all, "a").is_err());
    }

    #[test]
    fn expiry_durations() {
        assert_eq!(parse_expiry("1s"), Ok(1_000));
        assert_eq!(parse_expiry("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_expiry("1h30m"), Ok(5_400_000));
        for bad in ["", "0s", "7", "7x", "-1d", "d"] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
    }
}
