//! Durable writes of large files with direct I/O (Linux `O_DIRECT`).
//!
//! A durable save must put every byte on the device before it renames the
//! temporary file. Through the page cache that costs twice: the kernel first
//! allocates and fills a page-cache page for every 4 KiB written (on a VM
//! whose freed memory goes back to the host, that allocation alone swung
//! from 0.3 to 3 s per GiB here), then writes the pages back on `fsync`.
//! Direct I/O skips the page cache: each block goes from a small staging
//! buffer straight to the device, so the save costs one pass of the device
//! (0.29-0.36 s per GiB on this machine's virtio disk, against 0.5-1.7 s for
//! buffered writes plus `fsync`; docs/performance.md, "Direct I/O").
//!
//! The file's bytes are assembled in blocks aligned to [`DIRECT_ALIGN`] in
//! the file, copied from the caller's pieces into page-aligned staging
//! buffers (tensor memory is only 64-byte aligned, and a tensor's file offset
//! is only 64-byte aligned), and written by a few threads, so that one copies
//! while another waits on the device. The last block is padded with zeros to
//! the alignment and the file is then cut to its real length.
//!
//! Where direct I/O is unavailable (tmpfs, some network and FUSE file
//! systems, other operating systems, a device whose block is larger than
//! [`DIRECT_ALIGN`]) [`write_direct`] says so before writing anything and the
//! caller writes through the page cache as before. `DEATHTENSORS_DIRECT_IO=0`
//! in the environment turns direct I/O off.

use std::fs::File;
use std::path::Path;

/// Files smaller than this are written through the page cache: their
/// `fsync` is short, and a staging buffer would be a large share of them.
pub const DIRECT_MIN_BYTES: u64 = 64 << 20;

/// Alignment of direct writes, in memory and in the file: a page, which is a
/// multiple of every common logical block size (512 and 4096 bytes).
pub const DIRECT_ALIGN: usize = 4096;

/// Largest staging block.
const MAX_BLOCK: usize = 4 << 20;

/// Smallest staging block.
const MIN_BLOCK: usize = 1 << 20;

/// Threads writing blocks: with blocking writes, one copies into its buffer
/// while the others wait for the device.
const WRITERS: usize = 4;

/// The environment variable that turns direct I/O off when set to `0`.
pub const DIRECT_IO_ENV: &str = "DEATHTENSORS_DIRECT_IO";

/// Whether a durable write of `len` bytes should try direct I/O, given this
/// process's environment.
pub fn wanted(len: u64) -> bool {
    wanted_with(len, std::env::var_os(DIRECT_IO_ENV).as_deref())
}

/// Whether a durable write of `len` bytes should try direct I/O when
/// [`DIRECT_IO_ENV`] has the value `setting` (`None`: unset).
pub fn wanted_with(len: u64, setting: Option<&std::ffi::OsStr>) -> bool {
    cfg!(target_os = "linux") && len >= DIRECT_MIN_BYTES && setting.is_none_or(|v| v != "0")
}

/// The staging block for a file of `len` bytes: at most 1/64 of the file per
/// writer thread, so the staging memory stays under 1/16 of the file's size.
pub fn block_size(len: u64) -> usize {
    let share = usize::try_from(len / 64).unwrap_or(usize::MAX);
    let block = share.clamp(MIN_BLOCK, MAX_BLOCK);
    block / DIRECT_ALIGN * DIRECT_ALIGN
}

/// Copy the bytes of file range `[at, at + out.len())` from `pieces` into
/// `out`, zeros where no piece lies.
///
/// `pieces` are `(file offset, bytes)`, sorted by offset and not overlapping.
fn assemble(pieces: &[(u64, &[u8])], at: u64, out: &mut [u8]) {
    let end = at + out.len() as u64;
    // The first piece that ends after `at`.
    let first = pieces.partition_point(|(o, b)| o + b.len() as u64 <= at);
    let mut cursor = at;
    for (offset, bytes) in &pieces[first..] {
        if *offset >= end {
            break;
        }
        let from = (*offset).max(at);
        let to = (offset + bytes.len() as u64).min(end);
        out[(cursor - at) as usize..(from - at) as usize].fill(0);
        out[(from - at) as usize..(to - at) as usize]
            .copy_from_slice(&bytes[(from - offset) as usize..(to - offset) as usize]);
        cursor = to;
    }
    out[(cursor - at) as usize..].fill(0);
}

/// A page-aligned staging buffer of `len` bytes (within a `Vec`, so freeing is
/// ordinary; `calloc` memory costs nothing until written).
struct Staging {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl Staging {
    fn new(len: usize) -> Self {
        let vec = vec![0u8; len + DIRECT_ALIGN];
        let start = vec.as_ptr().align_offset(DIRECT_ALIGN);
        Staging { vec, start, len }
    }

    fn block(&mut self, len: usize) -> &mut [u8] {
        debug_assert!(len <= self.len);
        &mut self.vec[self.start..self.start + len]
    }
}

/// Write the bytes of a file of `len` bytes to the (new, empty) file at
/// `path` with direct I/O: `pieces` are `(file offset, bytes)`, sorted by
/// offset and not overlapping; the bytes between them are zeros.
///
/// Returns `Ok(false)` without having written anything when direct I/O is
/// not available for this file; the caller then writes it the usual way.
/// The caller still syncs the file (for its size and the device's cache).
///
/// # Errors
/// I/O errors of the writes (a full disk, a failing device).
#[cfg(target_os = "linux")]
pub fn write_direct(path: &Path, pieces: &[(u64, &[u8])], len: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    debug_assert!(pieces.windows(2).all(|w| w[0].0 + w[0].1.len() as u64 <= w[1].0));
    let Ok(file) = File::options().write(true).custom_flags(libc::O_DIRECT).open(path) else {
        return Ok(false);
    };
    let padded = len.next_multiple_of(DIRECT_ALIGN as u64);
    preallocate(&file, padded)?;
    let block = block_size(len);
    let block_len = |at: u64| (padded - at).min(block as u64) as usize;

    // The first block tells whether this file system takes direct writes.
    let mut staging = Staging::new(block);
    let first = staging.block(block_len(0));
    assemble(pieces, 0, first);
    match file.write_all_at(first, 0) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            file.set_len(0)?;
            return Ok(false);
        }
        Err(e) => return Err(e),
    }

    let next = AtomicU64::new(block as u64);
    let failed = AtomicBool::new(false);
    let write_blocks = |staging: &mut Staging| -> std::io::Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let at = next.fetch_add(block as u64, Ordering::Relaxed);
            if at >= padded {
                break;
            }
            let out = staging.block(block_len(at));
            assemble(pieces, at, out);
            if let Err(e) = file.write_all_at(out, at) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..WRITERS)
            .map(|_| scope.spawn(|| write_blocks(&mut Staging::new(block))))
            .collect();
        let mine = write_blocks(&mut staging);
        helpers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a writer thread panicked")))
            })
            .fold(mine, |acc, r| acc.and(r))
    })?;
    file.set_len(len)?;
    Ok(true)
}

/// Direct I/O is Linux-only here.
#[cfg(not(target_os = "linux"))]
pub fn write_direct(_path: &Path, _pieces: &[(u64, &[u8])], _len: u64) -> std::io::Result<bool> {
    Ok(false)
}

/// Allocate the file's blocks up front, so that the writes are overwrites
/// that the file system lets run in parallel (ext4 serialises direct writes
/// that extend a file) and a full disk fails before any byte is written.
#[cfg(target_os = "linux")]
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(len) else {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: a plain system call on a valid descriptor.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Not supported here: the writes still work, one at a time.
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assemble_places_pieces_and_zeros_the_gaps() {
        let a = [1u8; 10];
        let b = [2u8; 5];
        let pieces: Vec<(u64, &[u8])> = vec![(3, &a), (20, &b)];
        let mut whole = vec![9u8; 30];
        assemble(&pieces, 0, &mut whole);
        let mut want = vec![0u8; 30];
        want[3..13].fill(1);
        want[20..25].fill(2);
        assert_eq!(whole, want);
        // Every window of every size agrees with the whole.
        for at in 0..30u64 {
            for n in 0..=(30 - at as usize) {
                let mut out = vec![7u8; n];
                assemble(&pieces, at, &mut out);
                assert_eq!(out, want[at as usize..at as usize + n], "at {at} len {n}");
            }
        }
    }

    #[test]
    fn only_large_files_and_only_unless_turned_off() {
        use std::ffi::OsStr;
        assert!(!wanted_with(DIRECT_MIN_BYTES - 1, None));
        assert_eq!(wanted_with(DIRECT_MIN_BYTES, None), cfg!(target_os = "linux"));
        assert_eq!(wanted_with(1 << 30, Some(OsStr::new("1"))), cfg!(target_os = "linux"));
        assert!(!wanted_with(1 << 30, Some(OsStr::new("0"))));
    }

    #[test]
    fn blocks_are_aligned_and_bounded() {
        for len in [0u64, 1, 64 << 20, 100 << 20, 256 << 20, 1 << 30, 1 << 40] {
            let b = block_size(len);
            assert_eq!(b % DIRECT_ALIGN, 0, "{len}");
            assert!((MIN_BLOCK..=MAX_BLOCK).contains(&b), "{len}: {b}");
            if len >= DIRECT_MIN_BYTES {
                assert!((b * WRITERS) as u64 <= len / 16, "{len}: staging {b} x {WRITERS}");
            }
        }
    }
}
