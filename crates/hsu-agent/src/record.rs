//! What the agent runs, on disk: `DATA/units/NAME/record.json` holds the unit's spec, the process
//! it started (pid + start time) and its group, and the ports it allocated. Written atomically
//! (temporary file, fsync, rename, fsync of the directory) before the agent reports a start, so an
//! agent that restarts — after kill -9 too — re-adopts exactly what runs, and after a reboot it can
//! start the same units again with no server to ask.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use hsu_model::unit::UnitSpec;
use serde::{Deserialize, Serialize};

use crate::process::ProcId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub spec: UnitSpec,
    /// The unit's main process, while one was started and not seen to exit.
    pub proc: Option<ProcId>,
    /// Its process group (the main process's pid).
    pub pgid: Option<u32>,
    pub ports: BTreeMap<String, u16>,
    pub restarts: u32,
}

/// `DATA/units`.
pub fn units_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("units")
}

/// `DATA/units/NAME`: the record, the logs and the default working directory.
pub fn unit_dir(data_dir: &Path, name: &str) -> PathBuf {
    units_dir(data_dir).join(name)
}

fn record_path(data_dir: &Path, name: &str) -> PathBuf {
    unit_dir(data_dir, name).join("record.json")
}

pub fn write(data_dir: &Path, r: &Record) -> std::io::Result<()> {
    let dir = unit_dir(data_dir, r.spec.name.as_str());
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join("record.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, record_path(data_dir, r.spec.name.as_str()))?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Removes the record (the logs stay).
pub fn remove(data_dir: &Path, name: &str) -> std::io::Result<()> {
    match std::fs::remove_file(record_path(data_dir, name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every record under `DATA/units`. A record that cannot be read is an error naming its file:
/// the agent must not guess whether a process it started is still out there.
pub fn read_all(data_dir: &Path) -> Result<BTreeMap<String, Record>, String> {
    let mut out = BTreeMap::new();
    let dir = units_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path().join("record.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let r: Record = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        out.insert(r.spec.name.as_str().to_string(), r);
    }
    Ok(out)
}
