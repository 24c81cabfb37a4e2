//! Persistence in sled: the data directory, the Raft log and vote ([`log`]), and the state
//! machine with its snapshots ([`sm`]). Everything outside this module sees only openraft's
//! storage traits and the store's own API, so the engine stays replaceable.
//!
//! Layout of a data directory: `VERSION` (the data format, checked at open) and `sled/` (one sled
//! database). Inside sled, the log, the Raft metadata and the state machine live in separate
//! trees; every value is a versioned, checksummed record (hsu-model's codec), and log indexes are
//! big-endian so sled's key order is index order.

// The error type of these modules is openraft's `StorageError`, which is large; it is only built
// on failure paths, so its size costs nothing on the hot path.
#[allow(clippy::result_large_err)]
pub(crate) mod log;
#[allow(clippy::result_large_err)]
pub(crate) mod sm;

use std::path::{Path, PathBuf};

use crate::error::OpenError;

/// The data format this build writes and reads. 2: log entries carry proposals (request id and
/// leader clock) and the state machine keeps client sessions.
pub const DATA_VERSION: &str = "hsu-store/2";

const VERSION_FILE: &str = "VERSION";
const SLED_DIR: &str = "sled";

/// Opens (or creates) the sled database of a data directory after checking its format version.
pub(crate) fn open_db(dir: &Path) -> Result<sled::Db, OpenError> {
    let io = |path: PathBuf| move |source| OpenError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let version_path = dir.join(VERSION_FILE);
    let sled_path = dir.join(SLED_DIR);
    match std::fs::read_to_string(&version_path) {
        Ok(found) => {
            if found.trim() != DATA_VERSION {
                return Err(OpenError::Version {
                    path: dir.to_path_buf(),
                    found: found.trim().to_string(),
                    expected: DATA_VERSION,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if sled_path.exists() {
                return Err(OpenError::MissingVersion { path: dir.to_path_buf() });
            }
            write_synced(&version_path, format!("{DATA_VERSION}\n").as_bytes()).map_err(io(version_path.clone()))?;
        }
        Err(e) => return Err(OpenError::Io { path: version_path, source: e }),
    }
    // sled reports some kinds of damage by panicking inside `open`; a damaged directory must be
    // an error the operator can read, not a crash.
    let config = sled::Config::new().path(&sled_path).flush_every_ms(None);
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open()));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
            Err(OpenError::Locked { path: sled_path, detail: e.to_string() })
        }
        Ok(Err(e)) => Err(OpenError::Engine { path: sled_path, detail: e.to_string() }),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the engine panicked while reading its files".to_string());
            Err(OpenError::Engine { path: sled_path, detail })
        }
    }
}

/// The database and what makes its writes durable. sled's own flush ends with
/// `sync_file_range`, which waits for the data to be written but neither commits file metadata
/// (the size of a file that grew) nor flushes the drive's write cache: after a power cut what it
/// flushed can be gone (cluster-tests t90 shows it). So every flush is completed by an fsync of
/// sled's data file, the `db` file that holds every tree (sled fsyncs its blob files itself; its
/// small `conf` file it does not, but a lost one is rewritten with the same parameters).
#[derive(Clone)]
pub(crate) struct Disk {
    pub db: sled::Db,
    data_file: std::sync::Arc<std::fs::File>,
    /// `StoreConfig::fsync`: false skips the fsync of log appends (the test of the power-loss
    /// test only); votes, truncations and the state machine stay durable.
    pub fsync_appends: bool,
}

impl Disk {
    /// Opens the database of `dir` (see [`open_db`]).
    pub(crate) fn open(dir: &Path, fsync_appends: bool) -> Result<Disk, OpenError> {
        let db = open_db(dir)?;
        let path = dir.join(SLED_DIR).join("db");
        let file = std::fs::File::open(&path).map_err(|source| OpenError::Io { path, source })?;
        Ok(Disk { db, data_file: std::sync::Arc::new(file), fsync_appends })
    }

    /// Makes everything written so far durable (blocking).
    pub(crate) fn flush_blocking(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.data_file.sync_data()
    }

    /// [`Disk::flush_blocking`] off the async runtime.
    pub(crate) async fn flush(&self) -> std::io::Result<()> {
        let disk = self.clone();
        tokio::task::spawn_blocking(move || disk.flush_blocking()).await.map_err(std::io::Error::other)?
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Renders a stored key for an error message: printable bytes as text, the rest escaped.
pub(crate) fn show_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// A big-endian u64, so that sled orders numeric keys numerically.
pub(crate) fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(crate) fn from_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests;
