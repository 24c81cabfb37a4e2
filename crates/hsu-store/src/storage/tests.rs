//! Tests of the sled storage: openraft's storage suite, and directories of another format, opened twice, truncated or garbage.

use std::io::Write;

use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};

use super::*;
use crate::storage::log::LogStore;
use crate::storage::sm::{SmShared, StateMachine};
use crate::types::{NodeId, TypeConfig};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let disk = Disk::open(dir.path(), true).map_err(|e| StorageIOError::write(&e))?;
        let log = LogStore::open(&disk).map_err(|e| StorageIOError::write(&e))?;
        let sm = SmShared::open(&disk, 1000).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, StateMachine { shared: sm }))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(SledBuilder).unwrap();
}

#[test]
fn refuses_a_directory_of_another_format() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_db(dir.path()).unwrap());
    std::fs::write(dir.path().join(VERSION_FILE), "hsu-store/99\n").unwrap();
    let err = open_db(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Version { ref found, .. } if found == "hsu-store/99"), "{err}");
    std::fs::remove_file(dir.path().join(VERSION_FILE)).unwrap();
    let err = open_db(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::MissingVersion { .. }), "{err}");
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _db = open_db(dir.path()).unwrap();
    let err = open_db(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
}

#[test]
fn truncated_engine_files_are_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(dir.path()).unwrap();
        let t = db.open_tree("log").unwrap();
        for i in 0..2000u64 {
            t.insert(be(i), vec![7u8; 300]).unwrap();
        }
        db.flush().unwrap();
    }
    // Cut every file of the engine to a fraction of its length.
    for entry in walk(&dir.path().join(SLED_DIR)) {
        let len = std::fs::metadata(&entry).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&entry).unwrap();
        f.set_len(len / 3).unwrap();
    }
    // Whatever sled makes of it, opening must not panic; if it opens, the data is checked by the
    // store's own record checks (covered by the integration tests).
    let _ = open_db(dir.path());
}

#[test]
fn garbage_engine_files_are_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_db(dir.path()).unwrap());
    for entry in walk(&dir.path().join(SLED_DIR)) {
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&entry).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap();
    }
    let err = open_db(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::Engine { .. }), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
