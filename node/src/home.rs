//! The node's home directory: where it is, what lives in it, and the small files the command
//! and the daemon share (the configuration and the daemon's status).
//!
//! ```text
//! HOME/                 mode 0700
//!   identity.key        who this node is (crate::identity)
//!   contacts.bin        the contact book (crate::contact)
//!   config.json         display name and team network key (0600: the key is a secret)
//!   app/                the message database (crate::app)
//!   status.json         written by a running daemon every second
//! ```
//!
//! The home is `--home`, else `$CAIRN_HOME`, else the platform's data directory
//! (`$XDG_DATA_HOME/cairn` or `~/.local/share/cairn` on Linux, `~/Library/Application
//! Support/cairn` on macOS, `%APPDATA%\cairn` on Windows).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::private_file;

/// Name of the configuration file inside the home.
pub const CONFIG_FILE_NAME: &str = "config.json";
/// Name of the file a running daemon refreshes every second.
pub const STATUS_FILE_NAME: &str = "status.json";
/// A status file older than this is from a daemon that stopped (or hangs).
pub const STATUS_STALE_SECS: u64 = 5;
/// BLAKE3 context turning a team secret into the network key.
pub const NETWORK_KEY_CONTEXT: &str = "cairn 2026 network key";

const CONFIG_VERSION: u32 = 1;
/// A configuration is a few hundred bytes; anything much larger is not ours.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;
const MAX_STATUS_BYTES: u64 = 64 * 1024;

/// Why the home or one of its files could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    #[error(
        "no home directory: could not find the platform data directory; pass --home DIR or \
         set CAIRN_HOME"
    )]
    NoDataDir,
    #[error("no configuration in {}: run `cairn init --name NAME` first", .path.display())]
    NoConfig { path: PathBuf },
    #[error("could not access {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} can be read by other users (mode {mode:03o}); run `chmod 600 {}` and try again",
        .path.display(), .path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("{} is not a valid Cairn configuration ({reason})", .path.display())]
    BadConfig { path: PathBuf, reason: String },
}

/// Where a node keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// The home at `root`, as given.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The home the user asked for: `flag` (`--home`), else `$CAIRN_HOME` (if not empty),
    /// else the platform data directory.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Self, HomeError> {
        if let Some(root) = flag {
            return Ok(Self::at(root));
        }
        if let Some(root) = std::env::var_os("CAIRN_HOME").filter(|v| !v.is_empty()) {
            return Ok(Self::at(root));
        }
        platform_data_dir()
            .map(|dir| Self::at(dir.join("cairn")))
            .ok_or(HomeError::NoDataDir)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE_NAME)
    }

    pub fn status_path(&self) -> PathBuf {
        self.root.join(STATUS_FILE_NAME)
    }

    /// Creates the home directory (mode 0700) if needed.
    pub fn create(&self) -> Result<(), HomeError> {
        private_file::create_home(&self.root).map_err(|source| HomeError::Io {
            path: self.root.clone(),
            source,
        })
    }

    /// Reads `config.json`.
    pub fn load_config(&self) -> Result<Config, HomeError> {
        let path = self.config_path();
        let bytes = read_private(&path, MAX_CONFIG_BYTES)?
            .ok_or_else(|| HomeError::NoConfig { path: path.clone() })?;
        let bad = |reason: String| HomeError::BadConfig {
            path: path.clone(),
            reason,
        };
        let file: ConfigFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if file.version > CONFIG_VERSION {
            return Err(bad(format!(
                "format {} is from a newer Cairn; update Cairn",
                file.version
            )));
        }
        let key = hex::decode(&file.network_key)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| bad("network_key is not 64 hex digits".into()))?;
        Ok(Config {
            display_name: file.display_name,
            network_key: key,
        })
    }

    /// Writes `config.json` (mode 0600, atomically), replacing any earlier one.
    pub fn save_config(&self, config: &Config) -> Result<(), HomeError> {
        self.create()?;
        let file = ConfigFile {
            version: CONFIG_VERSION,
            display_name: config.display_name.clone(),
            network_key: hex::encode(config.network_key),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| HomeError::BadConfig {
            path: self.config_path(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        let path = self.config_path();
        private_file::write_atomically(&path, &bytes, private_file::Replace::Allow)
            .map_err(|source| HomeError::Io { path, source })
    }

    /// Writes `status.json` atomically (for the daemon, every second), so a reader never
    /// sees half a file.
    pub fn write_status(&self, status: &DaemonStatus) -> Result<(), HomeError> {
        let path = self.status_path();
        let bytes = serde_json::to_vec(status).map_err(|e| HomeError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        private_file::write_atomically(&path, &bytes, private_file::Replace::Allow)
            .map_err(|source| HomeError::Io { path, source })
    }

    /// The running daemon's status: `None` if no daemon wrote one, or if it is stale (older
    /// than [`STATUS_STALE_SECS`] at `now_secs`, or its process is gone).
    pub fn live_status(&self, now_secs: u64) -> Result<Option<DaemonStatus>, HomeError> {
        let path = self.status_path();
        let Some(bytes) = read_private(&path, MAX_STATUS_BYTES)? else {
            return Ok(None);
        };
        // A file we cannot parse is a daemon of another version or a torn write from a
        // crash: either way not a live daemon we can read.
        let Ok(status) = serde_json::from_slice::<DaemonStatus>(&bytes) else {
            tracing::warn!(path = %path.display(), "ignoring an unreadable status file");
            return Ok(None);
        };
        if now_secs.saturating_sub(status.updated_at) > STATUS_STALE_SECS {
            return Ok(None);
        }
        if !process_exists(status.pid) {
            return Ok(None);
        }
        Ok(Some(status))
    }
}

/// What `config.json` holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The name this node's contact code carries.
    pub display_name: String,
    /// The team network key (the Noise PSK of every link).
    pub network_key: [u8; 32],
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("display_name", &self.display_name)
            .field("network_key", &"<secret>")
            .finish()
    }
}

impl Config {
    /// The network key of a team secret (`cairn init --network SECRET`), or the default
    /// network's without one.
    pub fn network_key_for(secret: Option<&str>) -> [u8; 32] {
        match secret {
            Some(secret) => blake3::derive_key(NETWORK_KEY_CONTEXT, secret.as_bytes()),
            None => cairn_transports::hop::NetworkKey::default_network().0,
        }
    }

    pub fn network_key(&self) -> cairn_transports::hop::NetworkKey {
        cairn_transports::hop::NetworkKey(self.network_key)
    }
}

#[derive(Serialize, Deserialize)]
struct ConfigFile {
    version: u32,
    display_name: String,
    /// 64 hex digits.
    network_key: String,
}

/// What a running daemon reports in `status.json`, refreshed every second. Figures a daemon
/// does not report read as zero; fields this build does not know are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The daemon's process id.
    pub pid: u32,
    /// Unix seconds of this report.
    pub updated_at: u64,
    /// Distinct peers seen since start.
    #[serde(default)]
    pub peers_seen: u64,
    /// Links up now.
    #[serde(default)]
    pub links_up: u64,
    /// Items in the sync store.
    #[serde(default)]
    pub store_items: u64,
    /// Bytes of those items.
    #[serde(default)]
    pub store_bytes: u64,
    /// Envelopes carried for others.
    #[serde(default)]
    pub carried: u64,
}

/// A private file's bytes, or `None` if it does not exist.
fn read_private(path: &Path, max_len: u64) -> Result<Option<Vec<u8>>, HomeError> {
    match private_file::read(path, max_len) {
        Ok(bytes) => Ok(Some(bytes.to_vec())),
        Err(private_file::ReadError::NotFound) => Ok(None),
        Err(private_file::ReadError::InsecurePermissions { mode }) => {
            Err(HomeError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            })
        }
        Err(private_file::ReadError::TooLarge) => Err(HomeError::BadConfig {
            path: path.to_path_buf(),
            reason: "too large".into(),
        }),
        Err(private_file::ReadError::NotARegularFile) => Err(HomeError::BadConfig {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        }),
        Err(private_file::ReadError::Io(source)) => Err(HomeError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether process `pid` exists. Where that cannot be asked without `libc` (no `/proc`), the
/// answer is yes and the status file's age decides alone.
fn process_exists(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    if pid == 0 {
        return false;
    }
    if proc_root.join("self").exists() {
        proc_root.join(pid.to_string()).exists()
    } else {
        true
    }
}

/// The per-user data directory of the platform, without the `cairn` part.
fn platform_data_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if cfg!(windows) {
        return non_empty("APPDATA");
    }
    let home = non_empty("HOME");
    if cfg!(target_os = "macos") {
        return home.map(|h| h.join("Library").join("Application Support"));
    }
    non_empty("XDG_DATA_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".local").join("share")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn config_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("h"));
        let config = Config {
            display_name: "Alice".into(),
            network_key: Config::network_key_for(Some("team secret")),
        };
        home.save_config(&config).unwrap();
        assert_eq!(home.load_config().unwrap(), config);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(home.config_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{config:?}").contains(&hex::encode(config.network_key)));
    }

    #[test]
    fn network_key_is_derived_from_the_secret() {
        assert_eq!(
            Config::network_key_for(Some("s")),
            blake3::derive_key("cairn 2026 network key", b"s")
        );
        assert_eq!(
            Config::network_key_for(None),
            cairn_transports::hop::NetworkKey::default_network().0
        );
    }

    #[test]
    fn status_is_live_only_while_fresh_and_the_process_exists() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        assert_eq!(home.live_status(1000).unwrap(), None);
        let status = DaemonStatus {
            pid: std::process::id(),
            updated_at: 1000,
            peers_seen: 3,
            ..DaemonStatus::default()
        };
        home.write_status(&status).unwrap();
        assert_eq!(home.live_status(1003).unwrap(), Some(status.clone()));
        assert_eq!(
            home.live_status(1000 + STATUS_STALE_SECS + 1).unwrap(),
            None
        );
        if Path::new("/proc/self").exists() {
            let gone = DaemonStatus {
                pid: u32::MAX - 1,
                ..status
            };
            home.write_status(&gone).unwrap();
            assert_eq!(home.live_status(1000).unwrap(), None);
        }
    }

    #[test]
    fn status_tolerates_unknown_and_missing_figures() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let text = format!(
            r#"{{"pid":{},"updated_at":10,"links_up":2,"future_field":"x"}}"#,
            std::process::id()
        );
        private_file::write_atomically(
            &home.status_path(),
            text.as_bytes(),
            private_file::Replace::Allow,
        )
        .unwrap();
        let status = home.live_status(10).unwrap().unwrap();
        assert_eq!(status.links_up, 2);
        assert_eq!(status.carried, 0);
    }
}
