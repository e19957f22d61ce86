//! Settings: flags and env vars over `duet.toml` over the identity kept in
//! the data dir over generated defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use duet_server::ServerConfig;
use duet_usersig::UserSigKey;
use serde::{Deserialize, Serialize};

/// Flags shared by every command that needs the app identity.
#[derive(Args, Debug, Clone, Default)]
pub struct AppFlags {
    /// Config file (TOML).
    #[arg(long, env = "DUET_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite store, app identity).
    #[arg(long, env = "DUET_DATA", global = true)]
    pub data: Option<PathBuf>,
    /// SDKAppID.
    #[arg(long, env = "DUET_SDKAPPID", global = true)]
    pub sdkappid: Option<u64>,
    /// App secret key (signs and verifies UserSigs).
    #[arg(long, env = "DUET_SECRET_KEY", global = true, hide_env_values = true)]
    pub secret_key: Option<String>,
}

/// `duet.toml`. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listen address.
    pub listen: Option<SocketAddr>,
    /// Data directory.
    pub data: Option<PathBuf>,
    /// SDKAppID.
    pub sdkappid: Option<u64>,
    /// Secret key.
    pub secret_key: Option<String>,
    /// `sqlite` or a `postgres://` URL.
    pub store: Option<String>,
    /// PostgreSQL schema (with a `postgres://` store).
    pub pg_schema: Option<String>,
    /// None, or a `nats://` URL.
    pub bus: Option<String>,
    /// This node's id on the bus.
    pub node_id: Option<String>,
    /// App administrators.
    pub admins: Option<Vec<String>>,
    /// Retention of offline entries and history, days (0 = forever).
    pub retention_days: Option<u64>,
    /// How long users may recall their own messages, seconds.
    pub recall_window_secs: Option<u64>,
    /// Newest messages per conversation handed over by offline sync.
    pub sync_per_conversation: Option<u32>,
    /// Idle timeout of client connections, seconds.
    pub heartbeat_timeout_secs: Option<u64>,
    /// Devices per platform a user may have online at once.
    pub max_devices_per_platform: Option<usize>,
    /// Most client connections.
    pub max_connections: Option<usize>,
}

/// The app identity kept in `<data>/identity.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Identity {
    /// SDKAppID.
    pub sdkappid: u64,
    /// Secret key.
    pub secret_key: String,
}

/// Reads the config file: the given path (must exist), else `./duet.toml` if present.
pub fn load_file(flags: &AppFlags) -> Result<FileConfig> {
    let path = match &flags.config {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from("duet.toml");
            if !p.exists() {
                return Ok(FileConfig::default());
            }
            p
        }
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The data directory.
pub fn data_dir(flags: &AppFlags, file: &FileConfig) -> PathBuf {
    flags
        .data
        .clone()
        .or_else(|| file.data.clone())
        .unwrap_or_else(|| PathBuf::from("duet-data"))
}

fn identity_path(data: &Path) -> PathBuf {
    data.join("identity.toml")
}

fn read_identity(data: &Path) -> Result<Option<Identity>> {
    let p = identity_path(data);
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(
        toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?,
    ))
}

/// Resolves the app key without creating anything (client commands).
pub fn find_key(flags: &AppFlags) -> Result<Option<UserSigKey>> {
    let file = load_file(flags)?;
    let data = data_dir(flags, &file);
    let stored = read_identity(&data)?;
    let sdkappid = flags
        .sdkappid
        .or(file.sdkappid)
        .or(stored.as_ref().map(|i| i.sdkappid));
    let secret = flags
        .secret_key
        .clone()
        .or(file.secret_key.clone())
        .or(stored.map(|i| i.secret_key));
    Ok(match (sdkappid, secret) {
        (Some(a), Some(k)) => Some(UserSigKey::new(a, k)),
        _ => None,
    })
}

/// Resolves the app key for the server, creating and keeping an identity in
/// the data dir on first start. Returns the key and whether it was created.
pub fn server_key(flags: &AppFlags, file: &FileConfig, data: &Path) -> Result<(UserSigKey, bool)> {
    let stored = read_identity(data)?;
    let sdkappid = flags
        .sdkappid
        .or(file.sdkappid)
        .or(stored.as_ref().map(|i| i.sdkappid));
    let secret = flags
        .secret_key
        .clone()
        .or(file.secret_key.clone())
        .or(stored.as_ref().map(|i| i.secret_key.clone()));
    if let (Some(a), Some(k)) = (sdkappid, secret.clone()) {
        if k.is_empty() {
            bail!("the secret key is empty");
        }
        return Ok((UserSigKey::new(a, k), false));
    }
    let id = Identity {
        sdkappid: sdkappid.unwrap_or_else(|| 1_400_000_000 + rand::random_range(0..100_000_000u64)),
        secret_key: secret.unwrap_or_else(duet_usersig::generate_secret_key),
    };
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let p = identity_path(data);
    let text = format!(
        "# Duet app identity, created on first start. Keep the secret key secret.\n{}",
        toml::to_string(&id)?
    );
    write_private(&p, &text).with_context(|| format!("writing {}", p.display()))?;
    Ok((UserSigKey::new(id.sdkappid, id.secret_key), true))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Builds the server settings from the file config.
pub fn server_config(listen: SocketAddr, key: UserSigKey, file: &FileConfig) -> ServerConfig {
    let mut c = ServerConfig::new(listen, key);
    if let Some(a) = &file.admins {
        c.admins = a.clone();
    }
    if let Some(d) = file.retention_days {
        c.retention = (d > 0).then(|| Duration::from_secs(d * 24 * 3600));
    }
    if let Some(s) = file.recall_window_secs {
        c.recall_window = Duration::from_secs(s);
    }
    if let Some(n) = file.sync_per_conversation {
        c.sync_per_conversation = n.max(1);
    }
    if let Some(s) = file.heartbeat_timeout_secs {
        c.heartbeat_timeout = Duration::from_secs(s.max(5));
    }
    if let Some(n) = file.max_devices_per_platform {
        c.max_devices_per_platform = n.max(1);
    }
    if let Some(n) = file.max_connections {
        c.max_connections = n;
    }
    c
}
