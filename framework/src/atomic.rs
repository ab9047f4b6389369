//! Writing a file atomically: a temporary file in the target's folder, synced
//! and renamed over the target, so readers and crashes see either the old file
//! or the complete new one. Every writer of the project (tensor files,
//! manifests, converters) goes through [`AtomicFile`].
//!
//! Temporary files are named `.<target name>.<random>.dt-tmp` in the target's
//! folder. The writer holds an exclusive `flock(2)` on its temporary file for
//! as long as it lives; the kernel drops that lock when the process dies, even
//! by `SIGKILL`. [`AtomicFile::create`] first removes every temporary file of
//! that shape in the folder whose lock it can take, i.e. those of dead
//! writers, so a killed save leaves nothing behind for longer than the next
//! save in that folder. A concurrent writer's file is never removed: it is
//! locked from before anyone can see it as unlocked (see [`locked_temp_file`]).
//!
//! A target that is a symbolic link is written through: the file it points
//! to is replaced (a link into the Hugging Face cache stays a link), as a
//! plain `open(2)` for writing would do. Replacing an existing file keeps its
//! permission bits; a new file gets `0666 & ~umask`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How the names of temporary files end (they also start with a `.`).
pub const TEMP_SUFFIX: &str = ".dt-tmp";

/// Most symbolic links followed from a target (Linux's own limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// How often [`AtomicFile::create`] retries when a cleaner took the lock of
/// its brand-new temporary file first (each retry needs that race again).
const CREATE_ATTEMPTS: usize = 16;

/// A temporary file that becomes `target` on [`AtomicFile::commit`], or
/// vanishes if dropped first.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
    dir: PathBuf,
}

impl AtomicFile {
    /// Create the temporary file next to `target`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `target` has no file name; I/O errors.
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = resolve_symlinks(target.as_ref())?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| Error::InvalidArgument(format!("{:?} is not a file path", target.display().to_string())))?;
        remove_stale_temp_files(&dir);
        let tmp = locked_temp_file(&dir, &format!(".{}.", name.to_string_lossy()))?;
        Ok(AtomicFile { tmp, target, dir })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// The temporary file's path (for error messages, or for writers that
    /// need a path).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Give the file the target's permission bits if it exists, else the
    /// mode a plain create would (`0666 & ~umask`; temp files start at 0600),
    /// sync it if `durable`, rename it over the target, and sync the folder if
    /// `durable`.
    ///
    /// # Errors
    /// I/O errors; the target is then untouched and the temp file removed.
    pub fn commit(self, durable: bool) -> Result<()> {
        let tmp_path = self.tmp.path().to_path_buf();
        let io = |e| Error::io(&tmp_path, e);
        let file = self.tmp.as_file();
        file.set_permissions(std::fs::Permissions::from_mode(replacement_mode(&self.target)))
            .map_err(io)?;
        if durable {
            file.sync_all().map_err(io)?;
        }
        self.tmp
            .persist(&self.target)
            .map_err(|e| Error::io(&self.target, e.error))?;
        if durable {
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// The path a write to `target` lands on: `target` itself, or the end of the
/// chain of symbolic links it starts (which need not exist yet). Relative
/// links are resolved against the folder of the link.
///
/// # Errors
/// [`Error::InvalidArgument`] for a chain longer than [`MAX_SYMLINK_HOPS`]
/// (a loop); I/O errors reading a link.
fn resolve_symlinks(target: &Path) -> Result<PathBuf> {
    let mut path = target.to_path_buf();
    for _ in 0..MAX_SYMLINK_HOPS {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&path).map_err(|e| Error::io(&path, e))?;
                path = match path.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            _ => return Ok(path),
        }
    }
    Err(Error::InvalidArgument(format!(
        "{} is a chain of more than {MAX_SYMLINK_HOPS} symbolic links (a loop?)",
        target.display()
    )))
}

/// Create `dir/<prefix><random>.dt-tmp` and take an exclusive `flock` on it,
/// retrying with a new name if a concurrent [`remove_stale_temp_files`] got
/// the lock first (it removes the file while holding the lock, so a file
/// still at its path after we hold the lock is ours until we die).
///
/// # Errors
/// I/O errors creating the file; [`Error::Io`] if every attempt lost the race.
pub fn locked_temp_file(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile> {
    for _ in 0..CREATE_ATTEMPTS {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, without_temp_name(dir, e)))?;
        if try_lock(tmp.as_file()) && is_at(tmp.as_file(), tmp.path()) {
            return Ok(tmp);
        }
    }
    Err(Error::io(
        dir,
        std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "could not lock a new temporary file (another process keeps taking it)",
        ),
    ))
}

/// tempfile's error names the temporary file (`... at path
/// "dir/.x.AbC123.dt-tmp"`) and hides the OS error number: give the plain OS
/// error instead, about the folder, which is what the user gave and what is
/// wrong (missing, not a folder, read-only, full).
fn without_temp_name(dir: &Path, e: std::io::Error) -> std::io::Error {
    use std::io::ErrorKind;
    if let Err(about_dir) = std::fs::metadata(dir) {
        return about_dir;
    }
    let errno = match e.kind() {
        ErrorKind::PermissionDenied => libc::EACCES,
        ErrorKind::ReadOnlyFilesystem => libc::EROFS,
        ErrorKind::StorageFull => libc::ENOSPC,
        ErrorKind::QuotaExceeded => libc::EDQUOT,
        ErrorKind::NotADirectory => libc::ENOTDIR,
        ErrorKind::NotFound => libc::ENOENT,
        _ => return e,
    };
    std::io::Error::from_raw_os_error(errno)
}

/// Remove the temporary files of dead writers from `dir`: every regular file
/// named `.*.dt-tmp` whose exclusive `flock` can be taken. Best effort:
/// files that cannot be opened or locked are left alone.
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if !(bytes.starts_with(b".") && bytes.ends_with(TEMP_SUFFIX.as_bytes())) {
            continue;
        }
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        else {
            continue;
        };
        if try_lock(&file) && is_at(&file, &path) {
            let _ = std::fs::remove_file(&path);
        }
        // Dropping `file` releases the lock.
    }
}

/// Hold an exclusive `flock` on the file `path` names (through symbolic
/// links), for a read-modify-write of it such as an append: waits while
/// another updater holds it. Each updater replaces the file by a rename, so
/// one that waited on the old file finds the name moved on once it gets the
/// lock, and locks the new file instead: two appends never both start from
/// the same old contents. The lock lasts as long as the returned handle.
///
/// Waiting is unbounded, as for any lock: every time the name has moved on,
/// another updater finished, so the waiters as a whole make progress. A
/// signal during the wait resumes it.
///
/// A save waits for them before it replaces the file
/// ([`wait_for_updates`]), so that an update that started from the old
/// contents cannot undo it.
///
/// `None` when `path` is not a regular file (opened without blocking, so a
/// FIFO cannot hang the call): there is nothing to lock, and reading it
/// fails with the reader's own error.
///
/// # Errors
/// I/O errors opening or locking the file.
pub fn lock_for_update(path: &Path) -> Result<Option<File>> {
    loop {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Ok(None);
        }
        loop {
            // SAFETY: flock on a valid open descriptor, no pointers involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(path, e));
            }
        }
        let now = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let locked = file.metadata().map_err(|e| Error::io(path, e))?;
        if (locked.dev(), locked.ino()) == (now.dev(), now.ino()) {
            return Ok(Some(file));
        }
    }
}

/// Wait for the read-modify-writes of the file at `path` in progress (an
/// append, a repack: [`lock_for_update`]) and hold their lock while the
/// caller replaces the file. A save commits after them, not under them, so
/// that they cannot replace the saved file with one made from the old
/// contents. `None` when there is no file there to wait for (or none that
/// opens: nothing can update it either).
pub fn wait_for_updates(path: &Path) -> Option<File> {
    lock_for_update(path).ok().flatten()
}

/// Take an exclusive `flock` without waiting; whether it was taken.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a valid open descriptor, no pointers involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Whether `path` (not following a link) is still the open `file`.
fn is_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Refuse to write `dst` when it is `src` (the same path once symbolic links
/// are followed): an atomic write to `dst` would replace `src`'s contents.
/// `doing` says what that would do, for the message. A hard link is another
/// name, and the atomic write replaces only that name, so it is allowed.
///
/// # Errors
/// [`Error::InvalidArgument`] naming both paths.
pub fn refuse_same_file(src: &Path, dst: &Path, doing: &str) -> Result<()> {
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(src), std::fs::canonicalize(dst)) {
        if a == b {
            return Err(Error::InvalidArgument(format!(
                "{} and {} are the same file: {doing}",
                src.display(),
                dst.display()
            )));
        }
    }
    Ok(())
}

/// The permission bits a file written to `target` gets: those of the file it
/// replaces, else what a plain `open(2)` would give (`0666 & ~umask`). Every
/// writer of the project uses it (the Python package for its JSON side files
/// too), so a checkpoint's files all get the same mode.
pub fn replacement_mode(target: &Path) -> u32 {
    match std::fs::metadata(target) {
        Ok(m) => m.permissions().mode() & 0o777,
        Err(_) => 0o666 & !umask(),
    }
}

/// The process umask, read without changing it (Linux: /proc/self/status); 0o022 if unknown.
pub fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_update_lock_follows_the_file_to_its_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.dt");
        std::fs::write(&path, b"old").unwrap();
        let held = lock_for_update(&path).unwrap().expect("a regular file is locked");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                let lock = lock_for_update(&path).unwrap().unwrap();
                tx.send(()).unwrap();
                lock.metadata().unwrap().ino()
            })
        };
        // The waiter cannot get the lock while it is held...
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err());
        // ...and once the holder has replaced the file and let go, it locks the new file.
        let mut out = AtomicFile::create(&path).unwrap();
        out.file().write_all(b"new").unwrap();
        out.commit(false).unwrap();
        drop(held);
        let locked = waiter.join().unwrap();
        assert_eq!(locked, std::fs::metadata(&path).unwrap().ino());
    }

    #[test]
    fn an_update_lock_of_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(lock_for_update(&fifo).unwrap().is_none());
        assert!(lock_for_update(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn commit_replaces_and_drop_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        std::fs::write(&target, b"old").unwrap();
        let mut a = AtomicFile::create(&target).unwrap();
        a.file().write_all(b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"old"); // not yet
        a.commit(true).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let mut b = AtomicFile::create(&target).unwrap();
        b.file().write_all(b"abandoned").unwrap();
        drop(b);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask());
    }

    #[test]
    fn replacing_a_file_keeps_its_permission_bits() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("private.bin");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut a = AtomicFile::create(&target).unwrap();
        a.file().write_all(b"new").unwrap();
        a.commit(false).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn symbolic_links_are_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        let real = blobs.join("real.bin");
        std::fs::write(&real, b"old").unwrap();
        // A relative link in another folder, a link to that link, and a dangling one.
        let snapshot = dir.path().join("snap");
        std::fs::create_dir(&snapshot).unwrap();
        let link = snapshot.join("model.bin");
        std::os::unix::fs::symlink("../blobs/real.bin", &link).unwrap();
        let chain = dir.path().join("chain.bin");
        std::os::unix::fs::symlink(&link, &chain).unwrap();
        for (path, content) in [(&link, &b"one"[..]), (&chain, &b"two"[..])] {
            let mut a = AtomicFile::create(path).unwrap();
            a.file().write_all(content).unwrap();
            a.commit(false).unwrap();
            assert!(std::fs::symlink_metadata(path).unwrap().file_type().is_symlink());
            assert_eq!(std::fs::read(&real).unwrap(), content);
        }
        let dangling = dir.path().join("dangling.bin");
        std::os::unix::fs::symlink("blobs/new.bin", &dangling).unwrap();
        let mut a = AtomicFile::create(&dangling).unwrap();
        a.file().write_all(b"fresh").unwrap();
        a.commit(false).unwrap();
        assert_eq!(std::fs::read(blobs.join("new.bin")).unwrap(), b"fresh");
        let looped = dir.path().join("loop.bin");
        std::os::unix::fs::symlink("loop.bin", &looped).unwrap();
        assert!(matches!(AtomicFile::create(&looped), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn create_removes_only_the_temp_files_of_dead_writers() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        // A live writer: its temp file stays locked while `live` is open.
        let live = AtomicFile::create(&target).unwrap();
        let live_path = live.path().to_path_buf();
        // A dead writer's file: same shape, nobody holds its lock.
        let dead = dir.path().join(".other.bin.abc123.dt-tmp");
        std::fs::write(&dead, b"left by a killed process").unwrap();
        // Not ours: other names are never touched.
        for keep in [".other.bin.abc123.tmp", "visible.dt-tmp", ".notes"] {
            std::fs::write(dir.path().join(keep), b"x").unwrap();
        }
        let mut next = AtomicFile::create(dir.path().join("u.bin")).unwrap();
        assert!(!dead.exists(), "the dead writer's temp file is removed");
        assert!(live_path.exists(), "a live writer's temp file is kept");
        for keep in [".other.bin.abc123.tmp", "visible.dt-tmp", ".notes"] {
            assert!(dir.path().join(keep).exists(), "{keep} is not a temp file of ours");
        }
        next.file().write_all(b"u").unwrap();
        next.commit(false).unwrap();
        live.commit(false).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".notes", ".other.bin.abc123.tmp", "t.bin", "u.bin", "visible.dt-tmp"]
        );
    }
}
