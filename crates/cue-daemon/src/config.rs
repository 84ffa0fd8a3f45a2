//! `.cuedeck/config.toml`: the workspace's settings (docs/reference.md §2.3), with their
//! defaults.
//!
//! Every key is optional in the file: a missing one takes its default, so a config
//! written by an older version keeps working. Unknown keys are refused, since a typo
//! (`tombstone_day = 1`) silently ignored would be worse than a clear error. Day counts
//! accept fractions (`0.5` is twelve hours), which tests use to shorten them.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The config file's name inside `.cuedeck/`.
pub const CONFIG_FILE: &str = "config.toml";

/// Why the config could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid cue config: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub sync: SyncConfig,
    pub device: DeviceConfig,
}

/// `[sync]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// A longer gap since the last sync makes the next catch-up a full resync.
    pub max_offline_days: f64,
    /// Kept for the contract; cue's store keeps unconfirmed changes in the store itself.
    pub pending_changes_dir: String,
    /// How long a deleted file can be restored.
    pub tombstone_days: f64,
    /// How long a path must be quiet before the watcher reports it.
    pub debounce_ms: u64,
    /// Larger files are not synced and are listed under `skipped`.
    pub max_file_size: u64,
    /// How long the activity log keeps an entry (fractions allowed; 0 keeps them all).
    pub activity_retention_days: f64,
    pub relay: RelayConfig,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_offline_days: 7.0,
            pending_changes_dir: ".cuedeck/sync/pending".to_string(),
            tombstone_days: 7.0,
            debounce_ms: 10,
            max_file_size: 16 * 1024 * 1024,
            activity_retention_days: 90.0,
            relay: RelayConfig::default(),
        }
    }
}

/// `[sync.relay]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// `ws://` or `wss://`.
    pub url: String,
    /// Sent when the relay asks for one (self-hosted relays may).
    pub auth_token: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            url: "ws://127.0.0.1:8080".to_string(),
            auth_token: String::new(),
        }
    }
}

/// `[device]`: this machine's name in the workspace (naming rules: docs/reference.md §2.5).
/// Kept in the config so that a user can rename the device by editing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    pub name: String,
}

const DAY_MS: f64 = 24.0 * 3600.0 * 1000.0;

impl Config {
    /// Reads and checks the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.message().to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Writes the config atomically (temporary file and rename), so a crash never
    /// leaves half a file. It may hold the relay's auth token, so the file is mode 0600
    /// from its creation on, and a config of wider mode is replaced by one of 0600.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let write_err = |source| ConfigError::Write {
            path: path.display().to_string(),
            source,
        };
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Write {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let tmp = path.with_extension("toml.tmp");
        // A temporary file left by a crash may have another mode: start afresh, since
        // the mode below applies only to a file it creates.
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(e)),
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        file.write_all(text.as_bytes()).map_err(write_err)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(write_err)?;
        Ok(())
    }

    /// The checks `load` applies: reasonable numbers and a usable relay URL.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.sync;
        for (name, v) in [
            ("max_offline_days", s.max_offline_days),
            ("tombstone_days", s.tombstone_days),
            ("activity_retention_days", s.activity_retention_days),
        ] {
            if !(0.0..=100_000.0).contains(&v) {
                return Err(format!(
                    "sync.{name} must be a number of days between 0 and 100000, not {v}"
                ));
            }
        }
        if s.debounce_ms > 10_000 {
            return Err(format!(
                "sync.debounce_ms must be at most 10000, not {}",
                s.debounce_ms
            ));
        }
        if s.max_file_size == 0 || s.max_file_size > cue_crypto::MAX_PLAINTEXT_LEN as u64 * 64 {
            return Err(format!(
                "sync.max_file_size must be between 1 and {} bytes",
                cue_crypto::MAX_PLAINTEXT_LEN as u64 * 64
            ));
        }
        cue_crypto::validate_relay_url(&s.relay.url)
            .map_err(|e| format!("sync.relay.url {:?}: {e}", s.relay.url))?;
        if !self.device.name.is_empty() {
            cue_crypto::validate_device_name(&self.device.name)
                .map_err(|e| format!("device.name {:?}: {e}", self.device.name))?;
        }
        Ok(())
    }

    /// Activity entries older than this many milliseconds are dropped (`None`: kept).
    pub fn activity_retention_ms(&self) -> Option<i64> {
        let days = self.sync.activity_retention_days;
        (days > 0.0).then_some((days * DAY_MS) as i64)
    }

    /// The engine's settings from this config.
    pub fn engine_config(&self) -> cue_core::Config {
        cue_core::Config {
            max_offline_ms: (self.sync.max_offline_days * DAY_MS) as i64,
            tombstone_ms: (self.sync.tombstone_days * DAY_MS) as i64,
            max_file_size: self.sync.max_file_size,
            ..cue_core::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn defaults_round_trip_and_fill_missing_keys() {
        let c = Config::default();
        let text = toml::to_string_pretty(&c).expect("serialize");
        assert!(text.contains("max_offline_days = 7.0"));
        assert!(text.contains("[sync.relay]"));
        let back: Config = toml::from_str(&text).expect("parse");
        assert_eq!(back, c);
        let partial: Config =
            toml::from_str("[sync]\ntombstone_days = 0.5\n").expect("partial config");
        assert_eq!(partial.sync.tombstone_days, 0.5);
        assert_eq!(partial.sync.debounce_ms, 10);
        assert_eq!(partial.sync.relay.url, "ws://127.0.0.1:8080");
        assert_eq!(partial.engine_config().tombstone_ms, 12 * 3600 * 1000);
        // Integers are accepted where days are fractional.
        let int: Config = toml::from_str("[sync]\nmax_offline_days = 3\n").expect("int days");
        assert_eq!(int.sync.max_offline_days, 3.0);
    }

    #[test]
    fn refuses_typos_and_bad_values() {
        assert!(toml::from_str::<Config>("[sync]\ntombstone_day = 1\n").is_err());
        let mut c = Config::default();
        c.sync.tombstone_days = -1.0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.sync.relay.url = "http://example.com".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_config_is_private_to_its_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CONFIG_FILE);
        let mode = |p: &Path| std::fs::metadata(p).expect("config").permissions().mode() & 0o777;
        let mut c = Config::default();
        c.sync.relay.auth_token = "s3cret".into();
        c.save(&path).expect("save");
        assert_eq!(mode(&path), 0o600, "a new config");
        // One written before, readable by everyone, is tightened by the next write.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        c.save(&path).expect("save");
        assert_eq!(mode(&path), 0o600, "a rewritten config");
        assert_eq!(Config::load(&path).expect("load"), c);
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CONFIG_FILE);
        let mut c = Config::default();
        c.sync.relay.url = "ws://127.0.0.1:9".into();
        c.device.name = "laptop".into();
        c.save(&path).expect("save");
        assert_eq!(Config::load(&path).expect("load"), c);
    }
}
