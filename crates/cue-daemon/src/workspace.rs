//! A workspace on disk: `.cuedeck/` with its config, keys and store
//! (docs/reference.md §2.1).
//!
//! `init` makes a new workspace secret and device key; `join` takes the secret from an
//! invite token, so joining needs no relay. The secrets live in files of mode 0600,
//! created with that mode (never widened and then narrowed). The store is created here
//! too; importing the files already present is the driver's start-up scan, run by the
//! caller right after.
//!
//! `.cuedeck/` also holds a `.gitignore` of `*`, so that `git add -A` in a workspace that
//! is a git repository never stages the keys: written when the workspace is made, and
//! when one made before it was is opened (docs/reference.md §2.1).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cue_core::Generation;
use cue_crypto::{
    DeviceKey, Invite, InviteSecret, LobbySecret, RoomId, WorkspaceId, WorkspaceKeys,
    WorkspaceSecret,
};
use zeroize::Zeroizing;

use crate::config::{CONFIG_FILE, Config};
use crate::store::{STORE_FILE, Store};

/// The workspace's private folder (its name is one cue-core never syncs).
pub use cue_core::paths::CUEDECK_DIR;
/// The workspace secret (64 hex digits), mode 0600.
pub const SECRET_FILE: &str = "workspace.key";
/// This device's ed25519 seed (64 hex digits), mode 0600.
pub const DEVICE_KEY_FILE: &str = "device.key";
/// The lobby secret (64 hex digits), mode 0600: the lobby room, where devices are
/// admitted and catch up with rotations (docs/security.md).
pub const LOBBY_KEY_FILE: &str = "lobby.key";
/// Which generation `workspace.key` is: `NUMBER WINNER_HEX` (absent: the first).
pub const GENERATION_FILE: &str = "generation";
/// The secret of a rotation this device made and has not held yet (64 hex digits, mode
/// 0600), with its generation in [`NEXT_GENERATION_FILE`]: kept before the rotation is
/// recorded, so that no crash or power cut can record it with its secret lost.
pub const NEXT_SECRET_FILE: &str = "workspace.key.next";
/// The generation of [`NEXT_SECRET_FILE`], as [`GENERATION_FILE`].
pub const NEXT_GENERATION_FILE: &str = "generation.next";
/// The secrets of generations this device held before the one it holds, one file each
/// (`NUMBER-WINNER_HEX`, 64 hex digits, mode 0600): a removal that stands for good can
/// take the workspace back to one of them (docs/security.md, "Removing a device", 3b).
pub const PAST_SECRETS_DIR: &str = "past";
/// How many past secrets are kept (the most recent generations).
const MAX_PAST_SECRETS: usize = 64;
/// The workspace id users see (32 hex digits); it stays when the secret is rotated.
pub const WORKSPACE_ID_FILE: &str = "workspace.id";
/// The proof that this device made the workspace (96 hex digits: its id and the salt
/// whose hash with it is the workspace id; cue-crypto `MakerProof`), on the device that
/// made it, from versions that name the maker; it goes into the member list at every
/// start until it stands there (docs/security.md).
pub const MAKER_FILE: &str = "maker";
/// The invite this device joins with, while no member has admitted it yet (64 hex
/// digits, mode 0600).
pub const JOIN_KEY_FILE: &str = "join.key";
/// Why a member refused this device's invite (text), once one did.
pub const JOIN_REFUSED_FILE: &str = "join.refused";
/// The device that admitted this one (64 hex digits): taken for a member before the
/// member list says so (see `Engine::trust`).
pub const ADMITTED_BY_FILE: &str = "admitted_by";
/// Where the background daemon's standard streams go.
pub const LOG_FILE: &str = "daemon.log";
/// Keeps git away from everything in `.cuedeck/` (the keys above all).
pub const GITIGNORE_FILE: &str = ".gitignore";
/// What [`GITIGNORE_FILE`] holds: every name, itself included.
const GITIGNORE_TEXT: &str =
    "# Written by cue: nothing here is for git; workspace.key is the workspace's secret.\n*\n";

/// What can go wrong with a workspace, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(
        "{0} is not in a cue workspace (no .cuedeck/ here or above); run `cue sync init` or `cue sync join TOKEN` first"
    )]
    NotAWorkspace(PathBuf),
    #[error("{0} is already a cue workspace (it has .cuedeck/); use it, or pick another folder")]
    AlreadyAWorkspace(PathBuf),
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error(
        "invalid device name {name:?}: {message}; use letters, digits, '.', '_' or '-', at most 32"
    )]
    BadName { name: String, message: String },
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Invite(#[from] cue_crypto::InviteError),
    #[error("invalid relay URL {url:?}: {message}")]
    BadRelay { url: String, message: String },
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("cannot create {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error(
        "this invite expired at {at} (UTC): it admits nobody; ask a member for a new one (`cue sync invite`)"
    )]
    InviteExpired { at: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// An opened workspace: where it is, its settings and its keys.
pub struct Workspace {
    /// The workspace folder (canonical).
    pub root: PathBuf,
    pub config: Config,
    /// The secret of [`Workspace::generation`]; `None` while this device waits for a
    /// member to admit it (it joined, and holds an invite: [`Workspace::joining`]).
    pub secret: Option<WorkspaceSecret>,
    /// Which generation of the workspace secret `secret` is.
    pub generation: Generation,
    pub workspace: WorkspaceId,
    pub lobby: LobbySecret,
    pub device: DeviceKey,
    /// The invite this device joins with, until a member admits it.
    pub joining: Option<InviteSecret>,
}

impl std::fmt::Debug for Workspace {
    // Keys never go into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("root", &self.root)
            .field("workspace_id", &self.workspace_id())
            .field("device_id", &self.device_id_hex())
            .finish_non_exhaustive()
    }
}

/// The nearest folder at or above `start` that holds `.cuedeck/`.
pub fn find_root(start: &Path) -> Result<PathBuf, WorkspaceError> {
    let start = start
        .canonicalize()
        .map_err(|_| WorkspaceError::NotAWorkspace(start.to_owned()))?;
    let mut dir = start.as_path();
    loop {
        if dir.join(CUEDECK_DIR).is_dir() {
            return Ok(dir.to_owned());
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return Err(WorkspaceError::NotAWorkspace(start)),
        }
    }
}

/// The device name from `--name`, else from the host name made to fit the rules.
pub fn choose_device_name(name: Option<&str>) -> Result<String, WorkspaceError> {
    if let Some(name) = name {
        cue_crypto::validate_device_name(name).map_err(|e| WorkspaceError::BadName {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        return Ok(name.to_string());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    Ok(sanitize_name(host.trim()))
}

/// A host name as a valid device name: other characters become `-`, cut to 32.
fn sanitize_name(host: &str) -> String {
    let mut name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(cue_crypto::MAX_DEVICE_NAME_LEN)
        .collect();
    if cue_crypto::validate_device_name(&name).is_err() {
        name = "device".to_string();
    }
    name
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a new workspace starts from: a secret of its own (`init`), or an invite (`join`).
enum Made {
    Secret(WorkspaceSecret),
    Joining(InviteSecret),
}

/// Writes a small text file (not a secret), whole or not at all, and durably (the file
/// and its name flushed: these files say which secret is held).
fn write_text(path: &Path, text: &str) -> Result<(), WorkspaceError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{text}\n").as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(io_err(path))?;
    sync_folder_of(path)
}

/// Flushes the folder holding `path` (a name just given there).
fn sync_folder_of(path: &Path) -> Result<(), WorkspaceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn write_generation_to(path: &Path, g: Generation) -> Result<(), WorkspaceError> {
    write_text(path, &format!("{} {}", g.number, hex::encode(g.winner)))
}

fn write_generation(dir: &Path, g: Generation) -> Result<(), WorkspaceError> {
    write_generation_to(&dir.join(GENERATION_FILE), g)
}

fn read_generation(dir: &Path) -> Result<Generation, WorkspaceError> {
    read_generation_from(&dir.join(GENERATION_FILE))
}

fn read_generation_from(path: &Path) -> Result<Generation, WorkspaceError> {
    let path = path.to_owned();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Generation::default());
    };
    let damaged = || WorkspaceError::Key {
        path: path.clone(),
        message: "is damaged: it should hold a number and 64 hex digits".into(),
    };
    let (n, w) = text.trim().split_once(' ').ok_or_else(damaged)?;
    let mut winner = [0u8; 32];
    hex::decode_to_slice(w, &mut winner).map_err(|_| damaged())?;
    Ok(Generation {
        number: n.parse().map_err(|_| damaged())?,
        winner,
    })
}

/// A past secret's file name: its generation's number and winner.
fn past_name(g: Generation) -> String {
    format!("{}-{}", g.number, hex::encode(g.winner))
}

fn read_workspace_id(dir: &Path) -> Result<WorkspaceId, WorkspaceError> {
    let path = dir.join(WORKSPACE_ID_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| WorkspaceError::Key {
        path: path.clone(),
        message: format!("cannot read: {e}"),
    })?;
    text.trim().parse().map_err(|_| WorkspaceError::Key {
        path,
        message: "is not 32 hex digits; the file is damaged".into(),
    })
}

/// Writes a secret at `path` whole (a temporary file renamed over it), file and name
/// flushed.
fn put_secret(path: &Path, secret: &WorkspaceSecret) -> Result<(), WorkspaceError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_secret(&tmp, secret.as_bytes())?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_folder_of(path)
}

/// Writes a secret file with mode 0600 from its creation on.
fn write_secret(path: &Path, bytes: &[u8; 32]) -> Result<(), WorkspaceError> {
    let hexed = Zeroizing::new(hex::encode(bytes));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(hexed.as_bytes()).map_err(io_err(path))?;
    f.write_all(b"\n").map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Writes `.cuedeck/.gitignore` unless the folder already has one (whatever its content:
/// one a user changed is theirs). Written under a temporary name and renamed, so git never
/// reads it half written.
fn write_gitignore(cuedeck_dir: &Path) -> Result<(), WorkspaceError> {
    let path = cuedeck_dir.join(GITIGNORE_FILE);
    if std::fs::symlink_metadata(&path).is_ok() {
        return Ok(());
    }
    let tmp = cuedeck_dir.join(format!("{GITIGNORE_FILE}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(GITIGNORE_TEXT.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io_err(&path))
}

/// Makes a file that holds a secret (a config with the relay's auth token, written by
/// a version that made it readable by everyone) private to its owner. A failure (a
/// file not ours, a read-only folder) is logged, not fatal.
fn tighten(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.permissions().mode() & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "made the config, which holds the relay's auth token, private (mode 0600)")
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "the config holds the relay's auth token and is readable by others; chmod 600 it")
        }
    }
}

fn read_secret(path: &Path) -> Result<[u8; 32], WorkspaceError> {
    let key_err = |message: String| WorkspaceError::Key {
        path: path.to_owned(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| key_err(format!("cannot read: {e}")))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(key_err(
            "is readable by other users; run `chmod 600` on it (it is a secret)".into(),
        ));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| key_err(e.to_string()))?);
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| key_err("is not 64 hex digits; the key file is damaged".into()))?;
    Ok(out)
}

impl Workspace {
    /// `.cuedeck/` of this workspace.
    pub fn dir(&self) -> PathBuf {
        self.root.join(CUEDECK_DIR)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join(CONFIG_FILE)
    }

    /// The engine's settings: the config's, whether this folder ignores case, and whether
    /// it keeps Unix modes (both probed in `.cuedeck/`).
    pub fn engine_config(&self, config: &Config) -> cue_core::Config {
        cue_core::Config {
            case_insensitive: crate::fsio::ignores_case(&self.dir()),
            modes_unkept: !crate::fsio::keeps_modes(&self.dir()),
            ..config.engine_config()
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir().join(STORE_FILE)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join(LOG_FILE)
    }

    /// The workspace id users see (32 hex digits).
    pub fn workspace_id(&self) -> String {
        self.workspace.to_string()
    }

    /// The keys of the secret held (the room and the payload key), if one is.
    pub fn keys(&self) -> Option<WorkspaceKeys> {
        self.secret.as_ref().map(WorkspaceKeys::derive)
    }

    /// The lobby room's id: admissions are signed for it, since it stays the same when
    /// the secret is rotated.
    pub fn lobby_room(&self) -> RoomId {
        self.lobby.keys().room_id()
    }

    /// The device that admitted this one, if it joined with an invite.
    pub fn admitted_by(&self) -> Option<cue_core::DeviceId> {
        let text = std::fs::read_to_string(self.dir().join(ADMITTED_BY_FILE)).ok()?;
        cue_core::DeviceId::from_hex(text.trim())
    }

    /// Remembers which device admitted this one.
    pub fn set_admitted_by(&self, device: &cue_core::DeviceId) -> Result<(), WorkspaceError> {
        write_text(&self.dir().join(ADMITTED_BY_FILE), &device.to_string())
    }

    /// Why a member refused this device's invite, if one did.
    pub fn join_refused(&self) -> Option<String> {
        std::fs::read_to_string(self.dir().join(JOIN_REFUSED_FILE))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// A member refused our invite: remembered, so that the daemon stops asking and
    /// status says why until the user joins with another token.
    pub fn set_join_refused(&self, reason: &str) -> Result<(), WorkspaceError> {
        let path = self.dir().join(JOIN_REFUSED_FILE);
        std::fs::write(&path, format!("{reason}\n")).map_err(io_err(&path))
    }

    /// Holds a new generation's secret: written under a temporary name and renamed over
    /// `workspace.key`, then its generation, each flushed; the invite this device joined
    /// with goes, and a kept rotation's secret once held or passed.
    /// (The files only: a running daemon keeps what it holds in `membership.rs`.)
    pub fn hold_secret(
        &self,
        secret: &WorkspaceSecret,
        generation: Generation,
    ) -> Result<(), WorkspaceError> {
        let dir = self.dir();
        // The secret held until now stays at hand (see `PAST_SECRETS_DIR`).
        if let (Ok(old), Ok(held)) = (read_secret(&dir.join(SECRET_FILE)), read_generation(&dir))
            && held != generation
            && let Err(error) = self.keep_past_secret(held, &WorkspaceSecret::from_bytes(old))
        {
            tracing::warn!(%error, "cannot keep the secret of the generation held until now");
        }
        put_secret(&dir.join(SECRET_FILE), secret)?;
        write_generation(&dir, generation)?;
        for f in [JOIN_KEY_FILE, JOIN_REFUSED_FILE] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        if self
            .next_secret()
            .is_none_or(|(next, _)| next.number <= generation.number)
        {
            for f in [NEXT_SECRET_FILE, NEXT_GENERATION_FILE] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        Ok(())
    }

    /// Keeps `secret`, of `generation`, among the past secrets (the oldest beyond
    /// [`MAX_PAST_SECRETS`] dropped).
    fn keep_past_secret(
        &self,
        generation: Generation,
        secret: &WorkspaceSecret,
    ) -> Result<(), WorkspaceError> {
        let past = self.dir().join(PAST_SECRETS_DIR);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&past)
            .map_err(io_err(&past))?;
        put_secret(&past.join(past_name(generation)), secret)?;
        // The oldest kept first (a generation numbered higher may be one passed over).
        let mut kept: Vec<(std::time::SystemTime, u32, PathBuf)> = std::fs::read_dir(&past)
            .map_err(io_err(&past))?
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let number = name.split_once('-')?.0.parse().ok()?;
                Some((e.metadata().ok()?.modified().ok()?, number, e.path()))
            })
            .collect();
        kept.sort();
        let extra = kept.len().saturating_sub(MAX_PAST_SECRETS);
        for (_, _, path) in kept.into_iter().take(extra) {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// The secret of `generation` if this device held it before (see
    /// [`PAST_SECRETS_DIR`]).
    pub fn past_secret(&self, generation: Generation) -> Option<WorkspaceSecret> {
        let path = self
            .dir()
            .join(PAST_SECRETS_DIR)
            .join(past_name(generation));
        read_secret(&path).ok().map(WorkspaceSecret::from_bytes)
    }

    /// Keeps the secret of a rotation this device is about to record (durably, before
    /// the record: recorded and then lost, nobody would hold the secret of the workspace's
    /// current generation, and no one could rotate again). The daemon holds it once the
    /// record stands (see [`Workspace::next_secret`]).
    pub fn keep_next_secret(
        &self,
        secret: &WorkspaceSecret,
        generation: Generation,
    ) -> Result<(), WorkspaceError> {
        let dir = self.dir();
        // Never a new secret beside an older rotation's generation.
        match std::fs::remove_file(dir.join(NEXT_GENERATION_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(&dir.join(NEXT_GENERATION_FILE))(e));
            }
            _ => {}
        }
        put_secret(&dir.join(NEXT_SECRET_FILE), secret)?;
        write_generation_to(&dir.join(NEXT_GENERATION_FILE), generation)
    }

    /// The kept secret of a rotation this device made, with its generation, if any.
    pub fn next_secret(&self) -> Option<(Generation, WorkspaceSecret)> {
        let dir = self.dir();
        let generation = read_generation_from(&dir.join(NEXT_GENERATION_FILE)).ok()?;
        let secret = read_secret(&dir.join(NEXT_SECRET_FILE)).ok()?;
        (generation.number > 0).then(|| (generation, WorkspaceSecret::from_bytes(secret)))
    }

    /// This device's id (64 hex digits).
    pub fn device_id_hex(&self) -> String {
        hex::encode(self.device.device_id().0)
    }

    /// This device's id as the engine knows it.
    pub fn core_device_id(&self) -> cue_core::DeviceId {
        cue_core::DeviceId(self.device.device_id().0)
    }

    /// This device's key as the engine seals its changes with (docs/security.md).
    pub fn seal_key(&self) -> cue_core::seal::SealKey {
        cue_core::seal::SealKey::from_seed(&self.device.to_bytes())
    }

    /// How the engine checks the admissions kept in the member list: the admission must
    /// be of the entry's device, for this workspace's room, with a valid signature
    /// (docs/protocol.md §2.6).
    pub fn admission_check(&self) -> cue_core::AdmissionCheck {
        let room = self.lobby_room();
        std::sync::Arc::new(move |device: &cue_core::DeviceId, bytes: &[u8]| {
            let a = cue_crypto::Admission::decode(bytes).ok()?;
            (a.device.0 == device.0 && a.verify(&room).is_ok()).then_some(a.name)
        })
    }

    /// How the engine checks the entry naming the workspace's maker: a proof whose hash
    /// is this workspace's id (cue-crypto `MakerProof`).
    pub fn maker_check(&self) -> cue_core::MakerCheck {
        let workspace = self.workspace;
        std::sync::Arc::new(move |bytes: &[u8]| {
            cue_crypto::MakerProof::names_maker_of(bytes, workspace)
                .map(|d| cue_core::DeviceId(d.0))
        })
    }

    /// This device's proof that it made the workspace, if it did (and the workspace was
    /// made by a version that names its maker): see [`MAKER_FILE`].
    pub fn maker_proof(&self) -> Option<Vec<u8>> {
        let text = std::fs::read_to_string(self.root.join(CUEDECK_DIR).join(MAKER_FILE)).ok()?;
        hex::decode(text.trim()).ok()
    }

    /// How the engine checks rotation records: well formed, of this workspace, signed by
    /// the device they name as their author (the engine then checks that it is a member).
    pub fn rotation_check(&self) -> cue_core::RotationCheck {
        let workspace = self.workspace;
        std::sync::Arc::new(move |bytes: &[u8]| {
            let r = cue_crypto::RotationRecord::decode(bytes).ok()?;
            if r.workspace != workspace || r.verify().is_err() {
                return None;
            }
            Some(cue_core::RotationMeta {
                generation: r.generation,
                parent: r.parent,
                rotated_by: cue_core::DeviceId(r.rotated_by.0),
                at_ms: r.at_ms,
                removed: r.removed.iter().map(|d| cue_core::DeviceId(d.0)).collect(),
                hash: r.hash(),
            })
        })
    }

    /// This device's own admission, encoded, as it goes into the member list (empty if
    /// the device name cannot be admitted, which `init` and `join` refuse).
    pub fn own_admission(&self) -> Vec<u8> {
        cue_crypto::Admission::create(&self.lobby_room(), &self.device, &self.device_name())
            .map(|a| a.encode())
            .unwrap_or_default()
    }

    /// The device name in use.
    pub fn device_name(&self) -> String {
        if self.config.device.name.is_empty() {
            sanitize_name("device")
        } else {
            self.config.device.name.clone()
        }
    }

    /// Opens the workspace whose root is `root` (see [`find_root`]).
    pub fn open(root: &Path) -> Result<Workspace, WorkspaceError> {
        let root = root
            .canonicalize()
            .map_err(|_| WorkspaceError::NotAWorkspace(root.to_owned()))?;
        let dir = root.join(CUEDECK_DIR);
        if !dir.is_dir() {
            return Err(WorkspaceError::NotAWorkspace(root));
        }
        let config = Config::load(&dir.join(CONFIG_FILE))?;
        if !config.sync.relay.auth_token.is_empty() {
            tighten(&dir.join(CONFIG_FILE));
        }
        let device = DeviceKey::from_bytes(&read_secret(&dir.join(DEVICE_KEY_FILE))?);
        // A device admitted a moment ago: its daemon writes `workspace.key`, then removes
        // `join.key`; a reader in between (status, a `start` following the daemon) must
        // take the secret, not fail on the invite that just went.
        let secret_path = dir.join(SECRET_FILE);
        let (secret, joining) = if secret_path.exists() {
            (
                Some(WorkspaceSecret::from_bytes(read_secret(&secret_path)?)),
                None,
            )
        } else {
            match read_secret(&dir.join(JOIN_KEY_FILE)) {
                Ok(invite) => (None, Some(InviteSecret::from_bytes(invite))),
                Err(_) if secret_path.exists() => (
                    Some(WorkspaceSecret::from_bytes(read_secret(&secret_path)?)),
                    None,
                ),
                Err(e) => return Err(e),
            }
        };
        // A workspace made before `.cuedeck/.gitignore` existed gets one now. Failing to
        // write it (a read-only folder) does not stop the workspace from being used.
        if let Err(error) = write_gitignore(&dir) {
            tracing::warn!(%error, "cannot write .cuedeck/.gitignore; git could stage the keys");
        }
        let generation = read_generation(&dir)?;
        // A workspace made before rotations existed holds its first secret: its id and
        // lobby come from it, and are written down now that the secret can change.
        let (workspace, lobby) = match (&secret, generation.number) {
            (Some(first), 0) if !dir.join(LOBBY_KEY_FILE).exists() => {
                let lobby = LobbySecret::derive_legacy(first);
                let id = WorkspaceKeys::derive(first).workspace_id();
                write_secret(&dir.join(LOBBY_KEY_FILE), lobby.as_bytes())?;
                write_text(&dir.join(WORKSPACE_ID_FILE), &id.to_string())?;
                (id, lobby)
            }
            _ => (
                read_workspace_id(&dir)?,
                LobbySecret::from_bytes(read_secret(&dir.join(LOBBY_KEY_FILE))?),
            ),
        };
        Ok(Workspace {
            root,
            config,
            secret,
            generation,
            workspace,
            lobby,
            device,
            joining,
        })
    }

    /// Makes a new workspace in `root`: `.cuedeck/`, a new secret and device key, the
    /// config and an empty store.
    pub fn init(
        root: &Path,
        relay: Option<&str>,
        name: Option<&str>,
    ) -> Result<Workspace, WorkspaceError> {
        let secret =
            WorkspaceSecret::generate().map_err(|e| WorkspaceError::Random(e.to_string()))?;
        let lobby = LobbySecret::generate().map_err(|e| WorkspaceError::Random(e.to_string()))?;
        Self::create(root, Made::Secret(secret), None, lobby, relay, name)
    }

    /// Makes the workspace of an invite token in `root`, without the relay. Files already
    /// in the folder are imported by the start-up scan and merged when peers meet. The
    /// device holds no workspace secret yet: the daemon asks in the lobby, and the member
    /// who made the invite admits it (docs/security.md). An invite already expired by
    /// this machine's clock is refused here (the member checks again by its own).
    pub fn join(
        root: &Path,
        token: &str,
        relay: Option<&str>,
        name: Option<&str>,
    ) -> Result<Workspace, WorkspaceError> {
        let invite = Invite::parse(token)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if invite.is_expired(now) {
            let at = i64::try_from(invite.expires_at()).unwrap_or(i64::MAX / 1000) * 1000;
            return Err(WorkspaceError::InviteExpired {
                at: crate::control::rfc3339(at),
            });
        }
        let relay = relay.unwrap_or(invite.relay_url()).to_string();
        Self::create(
            root,
            Made::Joining(invite.secret().clone()),
            Some(invite.workspace_id()),
            invite.lobby().clone(),
            Some(&relay),
            name,
        )
    }

    fn create(
        root: &Path,
        made: Made,
        workspace: Option<WorkspaceId>,
        lobby: LobbySecret,
        relay: Option<&str>,
        name: Option<&str>,
    ) -> Result<Workspace, WorkspaceError> {
        if !root.is_dir() {
            return Err(WorkspaceError::NotAFolder(root.to_owned()));
        }
        let root = root.canonicalize().map_err(io_err(root))?;
        let dir = root.join(CUEDECK_DIR);
        if dir.exists() {
            return Err(WorkspaceError::AlreadyAWorkspace(root));
        }
        // Check everything before creating anything, so a bad flag leaves no trace.
        let name = choose_device_name(name)?;
        let mut config = Config::default();
        if let Some(url) = relay {
            cue_crypto::validate_relay_url(url).map_err(|e| WorkspaceError::BadRelay {
                url: url.to_string(),
                message: e.to_string(),
            })?;
            config.sync.relay.url = url.to_string();
        }
        config.device.name = name;
        let device = DeviceKey::generate().map_err(|e| WorkspaceError::Random(e.to_string()))?;
        // A new workspace's id names the device that makes it (see `MAKER_FILE`).
        let (workspace, maker) = match workspace {
            Some(id) => (id, None),
            None => {
                let proof = cue_crypto::MakerProof::generate(device.device_id())
                    .map_err(|e| WorkspaceError::Random(e.to_string()))?;
                (proof.workspace_id(), Some(proof))
            }
        };

        // Build in a temporary folder and rename it into place: a workspace is either
        // complete or absent, never half made.
        let tmp = root.join(format!(".cuedeck.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(io_err(&tmp))?;
        let built = (|| {
            match &made {
                Made::Secret(secret) => write_secret(&tmp.join(SECRET_FILE), secret.as_bytes())?,
                Made::Joining(invite) => write_secret(&tmp.join(JOIN_KEY_FILE), invite.as_bytes())?,
            }
            write_secret(&tmp.join(LOBBY_KEY_FILE), lobby.as_bytes())?;
            write_text(&tmp.join(WORKSPACE_ID_FILE), &workspace.to_string())?;
            if let Some(proof) = &maker {
                write_text(&tmp.join(MAKER_FILE), &hex::encode(proof.encode()))?;
            }
            write_secret(&tmp.join(DEVICE_KEY_FILE), &device.to_bytes())?;
            write_gitignore(&tmp)?;
            config.save(&tmp.join(CONFIG_FILE))?;
            drop(Store::open(&tmp.join(STORE_FILE))?);
            Ok::<(), WorkspaceError>(())
        })();
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(WorkspaceError::Io {
                path: dir,
                source: e,
            });
        }
        let (secret, joining) = match made {
            Made::Secret(s) => (Some(s), None),
            Made::Joining(i) => (None, Some(i)),
        };
        Ok(Workspace {
            root,
            config,
            secret,
            generation: Generation::default(),
            workspace,
            lobby,
            device,
            joining,
        })
    }

    /// An invite token for `secret` (a secret, like a password), expiring at `expires_at`
    /// (Unix seconds). The invite itself is kept by `invites.rs`.
    pub fn invite_token(
        &self,
        secret: &InviteSecret,
        expires_at: u64,
    ) -> Result<String, WorkspaceError> {
        let invite = Invite::new(
            self.workspace,
            self.lobby.clone(),
            secret.clone(),
            expires_at,
            &self.config.sync.relay.url,
        )?;
        Ok(invite.to_token().to_string())
    }

    /// Saves a new relay URL into the config.
    pub fn set_relay(&mut self, url: &str) -> Result<(), WorkspaceError> {
        cue_crypto::validate_relay_url(url).map_err(|e| WorkspaceError::BadRelay {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        if self.config.sync.relay.url != url {
            self.config.sync.relay.url = url.to_string();
            self.config.save(&self.config_path())?;
        }
        Ok(())
    }
}

/// A second device of `a`'s workspace in `root`, joined with an invite and holding the
/// secret as a member's admission would hand it over (for tests).
#[cfg(test)]
pub(crate) fn joined_for_tests(a: &Workspace, root: &Path, name: &str) -> Workspace {
    let invite = InviteSecret::from_bytes([1; 32]);
    let token = a.invite_token(&invite, u64::MAX / 2).expect("token");
    let b = Workspace::join(root, &token, None, Some(name)).expect("join");
    b.hold_secret(a.secret.as_ref().expect("secret"), a.generation)
        .expect("hold");
    Workspace::open(root).expect("open")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_open_and_join_from_the_invite() {
        let a = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::init(a.path(), Some("ws://127.0.0.1:9"), Some("alice")).expect("init");
        for f in [SECRET_FILE, DEVICE_KEY_FILE, CONFIG_FILE] {
            let mode = std::fs::metadata(ws.dir().join(f))
                .expect("key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert!(matches!(
            Workspace::init(a.path(), None, None),
            Err(WorkspaceError::AlreadyAWorkspace(_))
        ));
        let again = Workspace::open(a.path()).expect("open");
        assert_eq!(again.workspace_id(), ws.workspace_id());
        assert_eq!(again.device_id_hex(), ws.device_id_hex());
        assert_eq!(again.device_name(), "alice");

        let b = tempfile::tempdir().expect("tempdir");
        let invite = InviteSecret::from_bytes([1; 32]);
        let token = ws.invite_token(&invite, u64::MAX / 2).expect("token");
        let pending = Workspace::join(b.path(), &token, None, Some("bob")).expect("join");
        // Joined, but holding no secret until a member admits it.
        assert!(pending.secret.is_none());
        assert_eq!(pending.joining.as_ref().map(|i| i.id()), Some(invite.id()));
        assert_eq!(pending.lobby_room(), ws.lobby_room());
        let joined = joined_for_tests(&ws, tempfile::tempdir().expect("tmp").path(), "bob");
        assert_eq!(joined.workspace_id(), ws.workspace_id());
        assert_ne!(joined.device_id_hex(), ws.device_id_hex());
        assert_eq!(joined.config.sync.relay.url, "ws://127.0.0.1:9");
        assert_eq!(
            joined.keys().map(|k| k.room_id()),
            ws.keys().map(|k| k.room_id())
        );
        // The maker's proof (kept by it alone) names it to a device that joined, and
        // names no one in another workspace.
        let proof = ws.maker_proof().expect("the maker keeps its proof");
        assert_eq!(joined.maker_proof(), None);
        let me = cue_core::DeviceId(ws.device.device_id().0);
        assert_eq!((joined.maker_check())(&proof), Some(me));
        assert_eq!((ws.maker_check())(&proof), Some(me));
        let other =
            Workspace::init(tempfile::tempdir().expect("tmp").path(), None, None).expect("init");
        assert_eq!((other.maker_check())(&proof), None);
        // An expired invite is refused at once, with when it expired.
        let expired = ws.invite_token(&invite, 1).expect("token");
        let c = tempfile::tempdir().expect("tempdir");
        let e = Workspace::join(c.path(), &expired, None, None).expect_err("refused");
        assert!(e.to_string().contains("expired at 1970-01-01"), "{e}");
        assert_eq!(std::fs::read_dir(c.path()).expect("ls").count(), 0);

        let sub = a.path().join("x/y");
        std::fs::create_dir_all(&sub).expect("mkdir");
        assert_eq!(
            find_root(&sub).expect("root"),
            a.path().canonicalize().expect("canon")
        );
    }

    #[test]
    fn a_config_holding_an_auth_token_is_made_private_on_open() {
        let a = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::init(a.path(), None, Some("alice")).expect("init");
        let path = ws.config_path();
        let mode = || {
            std::fs::metadata(&path)
                .expect("config")
                .permissions()
                .mode()
                & 0o777
        };
        // A config edited by hand to hold a token, readable by everyone.
        let text = std::fs::read_to_string(&path).expect("read");
        let text = text.replace("auth_token = \"\"", "auth_token = \"s3cret\"");
        assert!(text.contains("s3cret"), "{text}");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let opened = Workspace::open(a.path()).expect("open");
        assert_eq!(opened.config.sync.relay.auth_token, "s3cret");
        assert_eq!(mode(), 0o600);
    }

    #[test]
    fn cuedeck_holds_a_gitignore_of_everything() {
        let a = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::init(a.path(), None, Some("alice")).expect("init");
        let gitignore = ws.dir().join(GITIGNORE_FILE);
        let text = std::fs::read_to_string(&gitignore).expect("written by init");
        assert_eq!(text.lines().rfind(|l| !l.starts_with('#')), Some("*"));

        let b = tempfile::tempdir().expect("tempdir");
        let token = ws
            .invite_token(&InviteSecret::from_bytes([1; 32]), u64::MAX / 2)
            .expect("token");
        let joined = Workspace::join(b.path(), &token, None, Some("bob")).expect("join");
        assert_eq!(
            std::fs::read_to_string(joined.dir().join(GITIGNORE_FILE)).expect("written by join"),
            text
        );

        // A workspace made before the file existed gets it when opened.
        std::fs::remove_file(&gitignore).expect("rm");
        Workspace::open(a.path()).expect("open");
        assert_eq!(
            std::fs::read_to_string(&gitignore).expect("rewritten"),
            text
        );
        let leftovers: Vec<_> = std::fs::read_dir(ws.dir())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // One the user changed is left as it is.
        std::fs::write(&gitignore, "*\n!config.toml\n").expect("edit");
        Workspace::open(a.path()).expect("open");
        assert_eq!(
            std::fs::read_to_string(&gitignore).expect("kept"),
            "*\n!config.toml\n"
        );
    }

    #[test]
    fn bad_input_leaves_nothing_behind() {
        let a = tempfile::tempdir().expect("tempdir");
        assert!(Workspace::init(a.path(), None, Some("bad name")).is_err());
        assert!(Workspace::init(a.path(), Some("http://x"), None).is_err());
        assert!(Workspace::join(a.path(), "cueinv1garbage", None, None).is_err());
        assert_eq!(std::fs::read_dir(a.path()).expect("ls").count(), 0);
        assert!(matches!(
            find_root(a.path()),
            Err(WorkspaceError::NotAWorkspace(_))
        ));
    }

    #[test]
    fn host_names_become_valid_device_names() {
        assert_eq!(sanitize_name("my laptop"), "my-laptop");
        assert_eq!(sanitize_name(""), "device");
        assert_eq!(sanitize_name(&"x".repeat(40)).len(), 32);
    }
}

#[cfg(test)]
mod past_secrets {
    use super::*;

    /// Every secret held before stays at hand (mode 0600), the most recent 64: a removal
    /// that stands for good can take the workspace back to a generation passed through.
    #[test]
    fn the_secrets_held_before_are_kept() {
        let a = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::init(a.path(), None, Some("alice")).expect("init");
        let g = |n: u32| Generation {
            number: n,
            winner: [n as u8; 32],
        };
        let secrets: Vec<WorkspaceSecret> = (1..=70)
            .map(|_| WorkspaceSecret::generate().expect("random"))
            .collect();
        for (i, s) in secrets.iter().enumerate() {
            ws.hold_secret(s, g(i as u32 + 1)).expect("hold");
        }
        let zero = Generation::default();
        // The first 6 (generation 0 and 1 to 5) made room for the later ones.
        assert!(ws.past_secret(zero).is_none());
        assert!(ws.past_secret(g(5)).is_none());
        assert!(ws.past_secret(g(6)) == Some(secrets[5].clone()));
        assert!(ws.past_secret(g(69)) == Some(secrets[68].clone()));
        // The one held is not among them.
        assert!(ws.past_secret(g(70)).is_none());
        let kept = std::fs::read_dir(ws.dir().join(PAST_SECRETS_DIR)).expect("dir");
        let mut n = 0;
        for e in kept {
            let mode = e
                .expect("entry")
                .metadata()
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            n += 1;
        }
        assert_eq!(n, MAX_PAST_SECRETS);
        // A fresh workspace: generation 0's secret is kept at the first rotation.
        let b = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::init(b.path(), None, Some("bob")).expect("init");
        let first_b = ws.secret.clone().expect("secret");
        ws.hold_secret(&secrets[0], g(1)).expect("hold");
        assert!(ws.past_secret(zero) == Some(first_b));
    }
}
