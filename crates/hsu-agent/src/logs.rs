//! Size-rotated log files. A unit writes straight into `stdout.log` and `stderr.log` (opened with
//! `O_APPEND`, so it needs no pipe to the agent and outlives an agent restart). The agent rotates
//! a file that passed its size limit by copy-and-truncate, as logrotate's `copytruncate` does:
//! `stdout.log.N` becomes `.N+1` (the oldest beyond `max_files` is removed), the file is copied to
//! `.1`, then truncated; lines the unit writes between the copy and the truncation are lost, which
//! is the known price of rotating under a writer that cannot be told to reopen.

use std::io;
use std::path::{Path, PathBuf};

/// Rotates `path` if it is larger than `max_size`; returns true if it did.
pub fn rotate_if_needed(path: &Path, max_size: u64, max_files: u32) -> io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_size {
        return Ok(false);
    }
    if max_files == 0 {
        truncate(path)?;
        return Ok(true);
    }
    let _ = std::fs::remove_file(numbered(path, max_files));
    for n in (1..max_files).rev() {
        match std::fs::rename(numbered(path, n), numbered(path, n + 1)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::copy(path, numbered(path, 1))?;
    truncate(path)?;
    Ok(true)
}

fn truncate(path: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(0)
}

/// `stdout.log.N`.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotates_past_the_limit_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stdout.log");
        let mut f = crate::process::open_log(&log).unwrap();
        for round in 0..5u8 {
            f.write_all(&[b'a' + round; 1500]).unwrap();
            assert!(rotate_if_needed(&log, 1024, 3).unwrap(), "round {round} passed 1024 bytes");
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
            // The writer keeps its descriptor: with O_APPEND it writes at the new end.
            f.write_all(b"x").unwrap();
            assert_eq!(std::fs::read(&log).unwrap(), b"x");
            f.set_len(0).unwrap();
        }
        // Newest first: .1 has the last round's bytes; only 3 old files are kept.
        assert_eq!(std::fs::read(numbered(&log, 1)).unwrap(), vec![b'e'; 1500]);
        assert_eq!(std::fs::read(numbered(&log, 3)).unwrap(), vec![b'c'; 1500]);
        assert!(!numbered(&log, 4).exists());
        assert!(!rotate_if_needed(&log, 1024, 3).unwrap(), "an empty file is not rotated");
    }
}
