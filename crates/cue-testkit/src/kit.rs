//! Where the binaries are, and what the peers of one program have in common.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// What every [`crate::Relay`] and [`crate::Peer`] of a test program or benchmark
/// shares: the binaries they run, how peers' folders are named and whether they are
/// kept, the environment of every `cue` command.
#[derive(Debug, Clone)]
pub struct Kit {
    /// The `cue` binary.
    pub cue: PathBuf,
    /// The `cue-relay` binary.
    pub relay: PathBuf,
    /// Peers' temporary folders are named `{label}-{peer}-XXXXXX`, to tell whose they are.
    pub label: String,
    /// Leave peers' folders behind, to look into their stores afterwards.
    pub keep: bool,
    /// Set on every `cue` command, and so on the daemons those start.
    pub env: Vec<(String, String)>,
}

impl Kit {
    /// The binaries each from its flag if given, else `CUE_BIN` and `CUE_RELAY_BIN`, else
    /// next to this program ([`binary_dir`]); folders named after `label`, removed,
    /// nothing added to the environment.
    pub fn locate(
        label: &str,
        cue: Option<PathBuf>,
        relay: Option<PathBuf>,
    ) -> anyhow::Result<Kit> {
        Ok(Kit {
            cue: binary(cue, "CUE_BIN", "cue", "cue-cli")?,
            relay: binary(relay, "CUE_RELAY_BIN", "cue-relay", "cue-relay")?,
            label: label.to_owned(),
            keep: false,
            env: Vec::new(),
        })
    }
}

/// Where the workspace's own binaries are, seen from the running program: its folder
/// (`target/<profile>/` for a binary), or that folder's parent for a test or an example
/// (`target/<profile>/deps/`, `target/<profile>/examples/`). `cargo build` and `cargo
/// nextest run --workspace` put every binary of the workspace there.
pub fn binary_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .context("the running program is in no folder")?;
    Ok(match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().unwrap_or(dir),
        _ => dir,
    }
    .to_path_buf())
}

/// The binary `name` (of the workspace package `package`): `flag` if given, else the
/// variable `env`, else in [`binary_dir`]. An error says how to build it when it is not
/// there.
pub fn binary(
    flag: Option<PathBuf>,
    env: &str,
    name: &str,
    package: &str,
) -> anyhow::Result<PathBuf> {
    let path = match flag.or_else(|| std::env::var_os(env).map(PathBuf::from)) {
        Some(path) => path,
        None => binary_dir()?.join(name),
    };
    if !Path::new(&path).exists() {
        bail!(
            "{} not found: build it (`cargo build -p {package}`, with `--release` for \
             target/release) or set {env}",
            path.display()
        );
    }
    Ok(path)
}
