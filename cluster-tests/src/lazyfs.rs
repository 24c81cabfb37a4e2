//! A filesystem that forgets what was not fsynced, for power-loss tests (in the spirit of
//! Jepsen's LazyFS). It passes a backing directory through FUSE, with one difference: file data
//! written since the last fsync of that file is kept in memory only, as in a page cache, and
//! [`LazyFs::power_cut`] drops it. Creating, renaming and removing files and directories, and
//! truncation, go to the backing directory at once (only data is lazy, as with LazyFS's default).
//!
//! Files are opened with `direct_io`, so the kernel's own page cache holds none of their data and
//! every read and write reaches this filesystem. Only `fsync`/`fdatasync` (on any descriptor of
//! the file) make data durable; `sync_file_range`, `close` and `flush` do not, because on a real
//! machine they do not survive a power cut either.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Attributes may be cached this long by the kernel: sizes change under writes.
const TTL: Duration = Duration::ZERO;

/// A mounted lazy filesystem; unmounted when dropped.
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
    pub mountpoint: PathBuf,
}

/// What has been written to a file and not yet fsynced, in write order.
#[derive(Default)]
struct Pending {
    writes: Vec<(u64, Vec<u8>)>,
}

impl Pending {
    fn end(&self) -> u64 {
        self.writes.iter().map(|(o, d)| o + d.len() as u64).max().unwrap_or(0)
    }

    fn bytes(&self) -> usize {
        self.writes.iter().map(|(_, d)| d.len()).sum()
    }
}

struct State {
    backing: PathBuf,
    /// Inode number to path under `backing` (the root is the empty path).
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_ino: u64,
    pending: HashMap<u64, Pending>,
    /// Bytes dropped by power cuts, for the test's log.
    dropped: usize,
}

impl LazyFs {
    /// Mounts a lazy view of `backing` (created if missing) at `mountpoint` (likewise).
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<LazyFs> {
        std::fs::create_dir_all(backing).with_context(|| format!("cannot create {}", backing.display()))?;
        std::fs::create_dir_all(mountpoint).with_context(|| format!("cannot create {}", mountpoint.display()))?;
        let state = Arc::new(Mutex::new(State {
            backing: backing.to_path_buf(),
            paths: HashMap::from([(INodeNo::ROOT.0, PathBuf::new())]),
            inodes: HashMap::from([(PathBuf::new(), INodeNo::ROOT.0)]),
            next_ino: 2,
            pending: HashMap::new(),
            dropped: 0,
        }));
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("hsuct-lazyfs".into())];
        let session = fuser::spawn_mount(Fs { state: state.clone() }, mountpoint, &config)
            .with_context(|| format!("cannot mount the lazy filesystem at {}", mountpoint.display()))?;
        Ok(LazyFs { state, session: Some(session), mountpoint: mountpoint.to_path_buf() })
    }

    /// The power goes out: every write not yet fsynced is gone. Returns how many bytes were lost.
    /// The processes using the filesystem must be dead already (a power cut kills them too).
    pub fn power_cut(&self) -> usize {
        let mut s = lock(&self.state);
        let lost: usize = s.pending.values().map(Pending::bytes).sum();
        s.pending.clear();
        s.dropped += lost;
        lost
    }

    /// Checks, through the mount, that this filesystem does what a power-loss test needs: a
    /// file fsynced keeps its data over a power cut, one written and closed but not fsynced
    /// loses it (and reads back what was written until then). Run on an empty mount.
    pub fn self_check(&self) -> Result<()> {
        use std::io::Write;
        let (kept, lost) = (self.mountpoint.join(".kept"), self.mountpoint.join(".lost"));
        let mut f = File::create(&kept)?;
        f.write_all(b"durable")?;
        f.sync_all()?;
        drop(f);
        File::create(&lost)?.write_all(b"volatile")?;
        anyhow::ensure!(std::fs::read(&lost)? == b"volatile", "an unsynced write does not read back");
        let cut = self.power_cut();
        anyhow::ensure!(cut == b"volatile".len(), "the power cut dropped {cut} bytes, expected 8");
        anyhow::ensure!(std::fs::read(&kept)? == b"durable", "an fsynced file lost its data");
        anyhow::ensure!(std::fs::read(&lost)?.is_empty(), "an unsynced file kept its data over a power cut");
        std::fs::remove_file(&kept)?;
        std::fs::remove_file(&lost)?;
        Ok(())
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                eprintln!("unmounting {}: {e}", self.mountpoint.display());
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

struct Fs {
    state: Arc<Mutex<State>>,
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

impl State {
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn ino_of(&mut self, rel: &Path) -> u64 {
        if let Some(ino) = self.inodes.get(rel) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(rel.to_path_buf(), ino);
        self.paths.insert(ino, rel.to_path_buf());
        ino
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.inodes.remove(rel) {
            self.paths.remove(&ino);
            self.pending.remove(&ino);
        }
    }

    fn attr(&mut self, rel: &Path) -> Result<FileAttr, Errno> {
        let md = std::fs::symlink_metadata(self.full(rel)).map_err(errno)?;
        let ino = self.ino_of(rel);
        let kind = if md.is_dir() {
            FileType::Directory
        } else if md.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = match self.pending.get(&ino) {
            Some(p) => md.len().max(p.end()),
            None => md.len(),
        };
        let time = |secs: i64, nsecs: i64| {
            UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64) + Duration::from_nanos(nsecs.max(0) as u64)
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: time(md.ctime(), md.ctime_nsec()),
            kind,
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Removes `name` of `parent` from the backing directory with `how` (at once) and forgets it.
    fn remove(&mut self, parent: INodeNo, name: &OsStr, how: fn(&Path) -> std::io::Result<()>) -> Result<(), Errno> {
        let rel = self.path(parent)?.join(name);
        how(&self.full(&rel)).map_err(errno)?;
        self.forget_path(&rel);
        Ok(())
    }

    /// Writes what is pending for `ino` to the backing file and fsyncs it.
    fn persist(&mut self, ino: u64) -> Result<(), Errno> {
        let rel = self.paths.get(&ino).cloned().ok_or(Errno::ENOENT)?;
        let file = OpenOptions::new().write(true).open(self.full(&rel)).map_err(errno)?;
        if let Some(p) = self.pending.remove(&ino) {
            for (offset, data) in &p.writes {
                file.write_all_at(data, *offset).map_err(errno)?;
            }
        }
        file.sync_all().map_err(errno)
    }

    fn read(&self, ino: u64, rel: &Path, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let file = File::open(self.full(rel)).map_err(errno)?;
        let backing_len = file.metadata().map_err(errno)?.len();
        let pending = self.pending.get(&ino);
        let len = backing_len.max(pending.map_or(0, Pending::end));
        let end = (offset + u64::from(size)).min(len);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let from_backing = backing_len.min(end).saturating_sub(offset) as usize;
        if from_backing > 0 {
            file.read_exact_at(&mut buf[..from_backing], offset).map_err(errno)?;
        }
        for (w_off, data) in pending.map(|p| p.writes.as_slice()).unwrap_or_default() {
            let (w_start, w_end) = (*w_off, w_off + data.len() as u64);
            let (start, stop) = (w_start.max(offset), w_end.min(end));
            if start < stop {
                let src = &data[(start - w_start) as usize..(stop - w_start) as usize];
                buf[(start - offset) as usize..(stop - offset) as usize].copy_from_slice(src);
            }
        }
        Ok(buf)
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = lock(&self.state);
        let result = s.path(parent).and_then(|p| s.attr(&p.join(name)));
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut s = lock(&self.state);
        match s.path(ino).and_then(|p| s.attr(&p)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = lock(&self.state);
        let result = (|| {
            let rel = s.path(ino)?;
            let full = s.full(&rel);
            if let Some(mode) = mode {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).map_err(errno)?;
            }
            if let Some(size) = size {
                // A truncation is metadata: at once. Pending writes past the new end are cut.
                OpenOptions::new().write(true).open(&full).and_then(|f| f.set_len(size)).map_err(errno)?;
                if let Some(p) = s.pending.get_mut(&ino.0) {
                    p.writes.retain_mut(|(off, data)| {
                        if *off >= size {
                            return false;
                        }
                        data.truncate((size - *off).min(data.len() as u64) as usize);
                        true
                    });
                }
            }
            s.attr(&rel)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let mut s = lock(&self.state);
        let result = (|| {
            let rel = s.path(parent)?.join(name);
            std::fs::create_dir(s.full(&rel)).map_err(errno)?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(s.full(&rel), std::fs::Permissions::from_mode(mode & 0o7777));
            s.attr(&rel)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.state).remove(parent, name, |p| std::fs::remove_file(p)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.state).remove(parent, name, |p| std::fs::remove_dir(p)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = lock(&self.state);
        let result = (|| {
            let from = s.path(parent)?.join(name);
            let to = s.path(newparent)?.join(newname);
            std::fs::rename(s.full(&from), s.full(&to)).map_err(errno)?;
            // The target's old inode is gone; everything at or under `from` moves to `to`.
            s.forget_path(&to);
            let moved: Vec<(PathBuf, u64)> =
                s.inodes.iter().filter(|(p, _)| p.starts_with(&from)).map(|(p, i)| (p.clone(), *i)).collect();
            for (old, ino) in moved {
                // `join("")` would add a trailing slash, which a file's path must not have.
                let new = match old.strip_prefix(&from) {
                    Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
                    _ => to.clone(),
                };
                s.inodes.remove(&old);
                s.inodes.insert(new.clone(), ino);
                s.paths.insert(ino, new);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let s = lock(&self.state);
        match s.path(ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = lock(&self.state);
        let result = (|| {
            let rel = s.path(parent)?.join(name);
            use std::os::unix::fs::OpenOptionsExt;
            let mut options = OpenOptions::new();
            options.write(true).create(true).mode(mode & 0o7777);
            if flags & libc_o_excl() != 0 {
                options.create_new(true);
            }
            if flags & libc_o_trunc() != 0 {
                options.truncate(true);
            }
            options.open(s.full(&rel)).map_err(errno)?;
            let attr = s.attr(&rel)?;
            if flags & libc_o_trunc() != 0 {
                s.pending.remove(&attr.ino.0);
            }
            Ok(attr)
        })();
        match result {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = lock(&self.state);
        match s.path(ino).and_then(|rel| s.read(ino.0, &rel, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = lock(&self.state);
        match s.path(ino) {
            Ok(_) => {
                s.pending.entry(ino.0).or_default().writes.push((offset, data.to_vec()));
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() is not a sync.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut s = lock(&self.state);
        match s.persist(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Directory changes are durable at once here.
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut s = lock(&self.state);
        let rel = match s.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let entries = match std::fs::read_dir(s.full(&rel)) {
            Ok(rd) => rd.flatten().collect::<Vec<_>>(),
            Err(e) => return reply.error(errno(e)),
        };
        let mut all = vec![(ino.0, FileType::Directory, ".".into()), (ino.0, FileType::Directory, "..".into())];
        for e in entries {
            let name = e.file_name();
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let child = s.ino_of(&rel.join(&name));
            all.push((child, kind, name));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 30, 1 << 29, 1 << 29, 1 << 20, 1 << 19, 4096, 255, 4096);
    }
}

fn libc_o_excl() -> i32 {
    rustix::fs::OFlags::EXCL.bits() as i32
}

fn libc_o_trunc() -> i32 {
    rustix::fs::OFlags::TRUNC.bits() as i32
}
