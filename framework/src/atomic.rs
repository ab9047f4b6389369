//! Writing a file atomically: a temporary file in the target's folder, synced
//! and renamed over the target, so readers and crashes see either the old file
//! or the complete new one. Every writer of the project (tensor files,
//! manifests, converters) goes through [`AtomicFile`].
//!
//! Temporary files are named `.<target name>.<random>.tmp` in the target's
//! folder; one left by a killed process is never read as a tensor file and
//! is safe to delete.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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
        let target = target.as_ref().to_path_buf();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| Error::InvalidArgument(format!("{} is not a file path", target.display())))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(&dir, e))?;
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

    /// Give the file the mode a plain create would (`0666 & ~umask`; temp
    /// files start at 0600), sync it if `durable`, rename it over the target,
    /// and sync the folder if `durable`.
    ///
    /// # Errors
    /// I/O errors; the target is then untouched and the temp file removed.
    pub fn commit(self, durable: bool) -> Result<()> {
        let tmp_path = self.tmp.path().to_path_buf();
        let io = |e| Error::io(&tmp_path, e);
        let file = self.tmp.as_file();
        file.set_permissions(std::fs::Permissions::from_mode(0o666 & !umask()))
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
}
