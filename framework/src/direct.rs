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
//! Where direct I/O is unavailable (file systems that refuse `O_DIRECT`, a
//! device whose alignment is not a divisor of [`DIRECT_ALIGN`], other
//! operating systems) [`write_direct`] returns `Ok(false)` and leaves the
//! file empty, and the caller writes it through the page cache. That holds
//! also when the refusal (`EINVAL`) comes after some blocks were written.
//! `DEATHTENSORS_DIRECT_IO=0` in the environment turns direct I/O off
//! ([`enabled_by_env`], read into [`WriteOptions`](crate::writer::WriteOptions)).
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::ffi::OsStr;
use std::fs::File;
use std::io;

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

/// Consecutive writes that may make no aligned progress before a block
/// write gives up (a device that keeps answering short writes).
const MAX_STALLS: usize = 3;

/// The environment variable that turns direct I/O off when set to `0`.
pub const DIRECT_IO_ENV: &str = "DEATHTENSORS_DIRECT_IO";

/// Whether this process's environment allows direct I/O ([`DIRECT_IO_ENV`]
/// is unset or not `0`). Read when [`WriteOptions`](crate::writer::WriteOptions)
/// are made, which the Python module does while it holds the GIL (so no
/// Python thread changes the environment meanwhile).
pub fn enabled_by_env() -> bool {
    env_allows(std::env::var_os(DIRECT_IO_ENV).as_deref())
}

/// Whether the value `setting` of [`DIRECT_IO_ENV`] (`None`: unset) allows direct I/O.
pub fn env_allows(setting: Option<&OsStr>) -> bool {
    setting.is_none_or(|v| v != "0")
}

/// Whether a durable write of `len` bytes should try direct I/O.
pub fn wanted(len: u64) -> bool {
    cfg!(target_os = "linux") && len >= DIRECT_MIN_BYTES
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

/// One positioned write: `pwrite(2)`, or a stand-in in tests.
type WriteAt<'a> = dyn Fn(&File, &[u8], u64) -> io::Result<usize> + Sync + 'a;

/// Whether an error says that this file takes no direct I/O (as opposed to a
/// failing write: a full disk, a broken device).
fn is_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Write the bytes of a file of `len` bytes, `pieces` (`(file offset,
/// bytes)`, sorted by offset and not overlapping; zeros between them), into
/// `file`, a new and empty file, with direct I/O.
///
/// Returns `Ok(false)`, with `file` empty again, when direct I/O is not
/// available for this file; the caller then writes it the usual way. The
/// caller still syncs the file (for its size and the device's cache).
///
/// # Errors
/// I/O errors of the writes (a full disk, a failing device).
#[cfg(target_os = "linux")]
pub fn write_direct(file: &File, pieces: &[(u64, &[u8])], len: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    match reopen_direct(file) {
        Some(direct) => write_blocks(&direct, pieces, len, &|f: &File, buf: &[u8], at: u64| {
            f.write_at(buf, at)
        }),
        None => Ok(false),
    }
}

/// Direct I/O is Linux-only here.
#[cfg(not(target_os = "linux"))]
pub fn write_direct(_file: &File, _pieces: &[(u64, &[u8])], _len: u64) -> io::Result<bool> {
    Ok(false)
}

/// A second descriptor of `file` opened with `O_DIRECT` (through
/// `/proc/self/fd`, so it is the same file whatever happened to its name),
/// or `None` when the file system refuses it or says that its alignment does
/// not divide [`DIRECT_ALIGN`].
#[cfg(target_os = "linux")]
fn reopen_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    use rustix::fs::{statx, AtFlags, StatxFlags};

    let direct = File::options()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()?;
    let (a, b) = (file.metadata().ok()?, direct.metadata().ok()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return None;
    }
    // Linux 6.1+ tells the alignments; older kernels answer EINVAL to a misfit write.
    if let Ok(st) = statx(&direct, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) {
        if StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN) {
            let fits = |align: u32| align != 0 && DIRECT_ALIGN % align as usize == 0;
            if !fits(st.stx_dio_offset_align) || !fits(st.stx_dio_mem_align) {
                return None;
            }
        }
    }
    Some(direct)
}

/// [`write_direct`] on a descriptor already opened for it, with `write` for
/// each positioned write.
fn write_blocks(file: &File, pieces: &[(u64, &[u8])], len: u64, write: &WriteAt<'_>) -> io::Result<bool> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    debug_assert!(pieces.windows(2).all(|w| w[0].0 + w[0].1.len() as u64 <= w[1].0));
    let padded = len.next_multiple_of(DIRECT_ALIGN as u64);
    preallocate(file, padded)?;
    let block = block_size(len);
    let block_len = |at: u64| (padded - at).min(block as u64) as usize;

    // The first block alone: it tells whether this file takes direct writes
    // before any other thread starts.
    let mut staging = Staging::new(block);
    let first = staging.block(block_len(0));
    assemble(pieces, 0, first);
    if let Err(e) = write_block(file, first, 0, write) {
        return refused_or(file, e);
    }

    let next = AtomicU64::new(block as u64);
    let failed = AtomicBool::new(false);
    let write_all_blocks = |staging: &mut Staging| -> io::Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let at = next.fetch_add(block as u64, Ordering::Relaxed);
            if at >= padded {
                break;
            }
            let out = staging.block(block_len(at));
            assemble(pieces, at, out);
            if let Err(e) = write_block(file, out, at, write) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    let results: Vec<io::Result<()>> = std::thread::scope(|scope| {
        // Helpers that cannot start (a thread limit) leave the work to the others.
        let helpers: Vec<_> = (1..WRITERS)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("dt-direct-write".into())
                    .spawn_scoped(scope, || write_all_blocks(&mut Staging::new(block)))
                    .ok()
            })
            .collect();
        let mut results = vec![write_all_blocks(&mut staging)];
        results.extend(helpers.into_iter().map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("a writer thread panicked")))
        }));
        results
    });
    let mut errors = results.into_iter().filter_map(Result::err).collect::<Vec<_>>();
    // A failing write outranks a refusal: it is what the caller must hear.
    errors.sort_by_key(is_refusal);
    match errors.into_iter().next() {
        Some(e) => refused_or(file, e),
        None => {
            file.set_len(len)?;
            Ok(true)
        }
    }
}

/// After error `e`: a refusal of direct I/O empties the file and says so
/// (`Ok(false)`); anything else is the caller's error.
fn refused_or(file: &File, e: io::Error) -> io::Result<bool> {
    if is_refusal(&e) {
        file.set_len(0)?;
        Ok(false)
    } else {
        Err(e)
    }
}

/// Write all of `buf` at `at`. A short write is continued from the last
/// aligned offset it reached (rewriting the same bytes is harmless), since
/// direct writes must start aligned.
fn write_block(file: &File, buf: &[u8], at: u64, write: &WriteAt<'_>) -> io::Result<()> {
    let mut done = 0usize;
    let mut stalls = 0;
    while done < buf.len() {
        match write(file, &buf[done..], at + done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let reached = done + n;
                let aligned = if reached == buf.len() {
                    reached
                } else {
                    reached / DIRECT_ALIGN * DIRECT_ALIGN
                };
                if aligned > done {
                    done = aligned;
                    stalls = 0;
                } else {
                    stalls += 1;
                    if stalls >= MAX_STALLS {
                        return Err(io::Error::other(format!(
                            "direct writes at offset {} keep stopping short of {DIRECT_ALIGN} bytes",
                            at + done as u64
                        )));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Allocate the file's blocks up front, so that the writes are overwrites
/// that the file system lets run in parallel (ext4 serialises direct writes
/// that extend a file) and a full disk fails before any byte is written.
/// Only a full disk, a quota or a size limit are errors: elsewhere the writes
/// work without it.
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(len) = libc::off64_t::try_from(len) else {
            return Ok(());
        };
        // SAFETY: a plain system call on a valid descriptor.
        if unsafe { libc::fallocate64(file.as_raw_fd(), 0, 0, len) } != 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) {
                return Err(e);
            }
        }
    }
    let _ = (file, len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
    fn the_environment_turns_it_off_with_0_only() {
        assert!(env_allows(None));
        assert!(env_allows(Some(OsStr::new("1"))));
        assert!(!env_allows(Some(OsStr::new("0"))));
        assert!(!wanted(DIRECT_MIN_BYTES - 1));
        assert_eq!(wanted(DIRECT_MIN_BYTES), cfg!(target_os = "linux"));
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

    /// A file of `len` bytes in two pieces with a gap, and what it must hold.
    fn sample(len: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let a: Vec<u8> = (0..len / 3).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..len - len / 3 - 100).map(|i| (i % 241) as u8 ^ 0x5a).collect();
        let mut want = vec![0u8; len];
        want[..a.len()].copy_from_slice(&a);
        want[len - b.len()..].copy_from_slice(&b);
        (a, b, want)
    }

    /// Run [`write_blocks`] on a scratch file with `write` standing in for pwrite.
    fn run(len: usize, write: &WriteAt<'_>) -> (io::Result<bool>, Vec<u8>, Vec<u8>) {
        let (a, b, want) = sample(len);
        let pieces: Vec<(u64, &[u8])> = vec![(0, &a), ((len - b.len()) as u64, &b)];
        let file = tempfile::tempfile().unwrap();
        let result = write_blocks(&file, &pieces, len as u64, write);
        let mut got = vec![0u8; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut got, 0).unwrap();
        (result, got, want)
    }

    fn pwrite(f: &File, buf: &[u8], at: u64) -> io::Result<usize> {
        f.write_at(buf, at)
    }

    #[test]
    fn files_of_every_end_are_written_whole() {
        let block = block_size(0);
        for len in [
            DIRECT_ALIGN,
            3 * DIRECT_ALIGN + 1,
            block,
            block + DIRECT_ALIGN,
            5 * block - 7,
        ] {
            let (result, got, want) = run(len, &pwrite);
            assert!(result.unwrap(), "{len}");
            assert!(got == want, "{len}: the file differs from its pieces");
        }
    }

    #[test]
    fn a_refusal_after_some_blocks_empties_the_file_and_falls_back() {
        let block = block_size(0);
        let calls = AtomicUsize::new(0);
        let refuse_third = |f: &File, buf: &[u8], at: u64| {
            if calls.fetch_add(1, Ordering::SeqCst) == 2 {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                f.write_at(buf, at)
            }
        };
        let (result, got, _) = run(6 * block, &refuse_third);
        assert!(!result.unwrap(), "a refusal is a fallback, not an error");
        assert!(got.is_empty(), "the refused file kept {} bytes", got.len());
    }

    #[test]
    fn a_failing_write_is_an_error_even_beside_a_refusal() {
        let block = block_size(0);
        let calls = AtomicUsize::new(0);
        let fail = |f: &File, buf: &[u8], at: u64| match calls.fetch_add(1, Ordering::SeqCst) {
            0 => f.write_at(buf, at),
            1 => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let (result, _, _) = run(6 * block, &fail);
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        // The first block failing alone: the error, not a fallback.
        let eio = |_: &File, _: &[u8], _: u64| Err(io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(run(DIRECT_ALIGN, &eio).0.unwrap_err().raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn short_and_interrupted_writes_resume_at_an_aligned_offset() {
        let calls = AtomicUsize::new(0);
        let misaligned = std::sync::Mutex::new(Vec::new());
        let stutter = |f: &File, buf: &[u8], at: u64| {
            if at % DIRECT_ALIGN as u64 != 0 {
                misaligned.lock().unwrap().push(at);
            }
            match calls.fetch_add(1, Ordering::SeqCst) % 3 {
                0 => Err(io::Error::from(io::ErrorKind::Interrupted)),
                1 => f.write_at(&buf[..buf.len().min(DIRECT_ALIGN + 1000)], at),
                _ => f.write_at(buf, at),
            }
        };
        let len = 3 * block_size(0) + 123;
        let (result, got, want) = run(len, &stutter);
        assert!(result.unwrap());
        assert!(got == want, "the file differs from its pieces");
        assert!(
            misaligned.lock().unwrap().is_empty(),
            "writes started off the alignment"
        );
        // A device that never gets a whole aligned block through: an error, not a spin.
        let dribble = |f: &File, buf: &[u8], at: u64| f.write_at(&buf[..buf.len().min(10)], at);
        assert!(run(2 * DIRECT_ALIGN, &dribble).0.is_err());
    }
}
