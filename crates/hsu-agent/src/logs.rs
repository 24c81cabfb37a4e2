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

/// The last `tail` lines of `path` (all of it when `tail` is 0), as bytes ending with a newline
/// unless the file does not, and the offset they end at.
pub fn read_tail(path: &Path, tail: usize) -> io::Result<(Vec<u8>, u64)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let end = bytes.len() as u64;
    if tail == 0 {
        return Ok((bytes, end));
    }
    // Skip a final newline, then find the `tail`-th newline from the end.
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |_| {
        let mut seen = 0;
        let mut at = 0;
        for (i, b) in body.iter().enumerate().rev() {
            if *b == b'\n' {
                seen += 1;
                if seen == tail {
                    at = i + 1;
                    break;
                }
            }
        }
        at
    });
    Ok((bytes[start..].to_vec(), end))
}

/// Follows `path` from `offset`: what was appended since, read every `every`; a file that got
/// shorter was rotated (copy-truncate) and is read again from its start. Sends chunks until the
/// receiver is dropped.
pub async fn follow(
    path: PathBuf,
    mut offset: u64,
    every: std::time::Duration,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    use std::io::{Read, Seek, SeekFrom};
    loop {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0;
        }
        if len > offset {
            let chunk = (|| -> io::Result<Vec<u8>> {
                let mut f = std::fs::File::open(&path)?;
                f.seek(SeekFrom::Start(offset))?;
                let mut buf = Vec::new();
                f.take(len - offset).read_to_end(&mut buf)?;
                Ok(buf)
            })();
            match chunk {
                Ok(buf) if !buf.is_empty() => {
                    offset += buf.len() as u64;
                    if tx.send(buf).await.is_err() {
                        return;
                    }
                }
                _ => {}
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_takes_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stdout.log");
        assert_eq!(read_tail(&log, 3).unwrap(), (vec![], 0), "a missing file is empty");
        std::fs::write(&log, "a\nb\nc\nd\n").unwrap();
        assert_eq!(read_tail(&log, 2).unwrap(), (b"c\nd\n".to_vec(), 8));
        assert_eq!(read_tail(&log, 10).unwrap().0, b"a\nb\nc\nd\n");
        assert_eq!(read_tail(&log, 0).unwrap().0, b"a\nb\nc\nd\n");
        std::fs::write(&log, "a\nb\npartial").unwrap();
        assert_eq!(read_tail(&log, 1).unwrap().0, b"partial");
    }

    #[tokio::test]
    async fn follow_sends_what_is_appended_and_survives_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stdout.log");
        let mut f = crate::process::open_log(&log).unwrap();
        f.write_all(b"old\n").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let task = tokio::spawn(follow(log.clone(), 4, std::time::Duration::from_millis(20), tx));
        f.write_all(b"one\n").unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"one\n");
        f.set_len(0).unwrap();
        f.write_all(b"x\n").unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"x\n", "after a truncation the file is read from its start");
        drop(rx);
        task.await.unwrap();
    }

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
