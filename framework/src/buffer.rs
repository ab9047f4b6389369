//! A buffer aligned to 64 bytes, allocated fallibly.
//!
//! Reads allocate their output uninitialised ([`UninitBuf`]) and fill every
//! byte: zeroing it first is a whole extra pass over memory that the
//! allocator hands back from earlier, freed buffers (`calloc` must `memset`
//! those). Reading all-MiniLM-L6-v2 uncompressed into reused memory went
//! from 6.5-7.1 to 8.4-9.4 GB/s on one core (docs/performance.md).
//!
//! (Transparent huge pages for large buffers were tried and measured: they
//! help a warm process but cost 2-3x on a fresh one, whose first faults pay
//! for compaction, so buffers are plain heap memory.)
//!
//! The memory comes from the allocator's zeroed path at its natural 16-byte
//! alignment (`calloc`), 64 bytes more than asked, and the buffer starts at
//! the first 64-byte boundary inside. A 64-byte-aligned `alloc_zeroed` would
//! allocate and then `memset` every page up front; `calloc` knows that fresh
//! pages from the kernel are zero, so a large buffer costs resident memory
//! only as it is written. A hostile file that declares a huge tensor and
//! fails on its first chunk therefore never makes the process touch the
//! declared size.

use std::alloc::{self, Layout};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// Alignment of every [`AlignedBuf`]: enough for any dtype and for SIMD loads.
pub const BUFFER_ALIGNMENT: usize = 64;

/// A type whose dangling pointer is 64-byte aligned (for empty buffers).
#[repr(align(64))]
struct Align64;

/// Zero-initialised bytes aligned to [`BUFFER_ALIGNMENT`].
///
/// Allocation failure is an [`Error::OutOfMemory`], never an abort, so a file
/// declaring an absurd tensor size cannot crash the process.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// What the allocator returned (`ptr` is the first 64-byte boundary in it).
    base: *mut u8,
}

/// Alignment the allocation itself is made with: the allocator's natural one, so zeroing is `calloc`.
const ALLOC_ALIGNMENT: usize = 16;

// SAFETY: AlignedBuf uniquely owns its allocation, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocate `len` zeroed bytes.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when the allocator refuses.
    pub fn zeroed(len: u64) -> Result<Self> {
        Self::allocate(len, true)
    }

    /// Allocate `len` bytes, zeroed (`calloc`) or not (`malloc`).
    fn allocate(len: u64, zeroed: bool) -> Result<Self> {
        let size = usize::try_from(len).map_err(|_| Error::OutOfMemory(len))?;
        if size == 0 {
            return Ok(AlignedBuf {
                ptr: NonNull::<Align64>::dangling().cast(),
                len: 0,
                base: std::ptr::null_mut(),
            });
        }
        let layout = Self::layout(size).ok_or(Error::OutOfMemory(len))?;
        // SAFETY: layout has non-zero size.
        let base = unsafe {
            if zeroed {
                alloc::alloc_zeroed(layout)
            } else {
                alloc::alloc(layout)
            }
        };
        if base.is_null() {
            return Err(Error::OutOfMemory(len));
        }
        let offset = base.align_offset(BUFFER_ALIGNMENT);
        // SAFETY: offset < BUFFER_ALIGNMENT, and the allocation has BUFFER_ALIGNMENT bytes to spare.
        let ptr = NonNull::new(unsafe { base.add(offset) }).ok_or(Error::OutOfMemory(len))?;
        Ok(AlignedBuf { ptr, len: size, base })
    }

    fn layout(size: usize) -> Option<Layout> {
        let padded = size.checked_add(BUFFER_ALIGNMENT)?;
        Layout::from_size_align(padded, ALLOC_ALIGNMENT).ok()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Raw pointer to the first byte (dangling but aligned when empty).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Mutable raw pointer to the first byte.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

/// Bytes aligned to [`BUFFER_ALIGNMENT`] that are not initialised yet: the
/// output of a read before it is filled.
///
/// Only [`UninitBuf::as_uninit_mut`] gives access, as `MaybeUninit<u8>`, and
/// [`UninitBuf::assume_init`] turns it into an [`AlignedBuf`] once every byte
/// has been written. Like [`AlignedBuf::zeroed`], a large allocation costs no
/// resident memory until it is written.
pub struct UninitBuf(AlignedBuf);

impl UninitBuf {
    /// Allocate `len` uninitialised bytes.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when the allocator refuses.
    pub fn new(len: u64) -> Result<Self> {
        AlignedBuf::allocate(len, false).map(UninitBuf)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// The bytes, to be written.
    pub fn as_uninit_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: ptr is valid for len bytes (or dangling with len 0); MaybeUninit needs no initialisation.
        unsafe { std::slice::from_raw_parts_mut(self.0.ptr.as_ptr().cast(), self.0.len) }
    }

    /// The filled buffer.
    ///
    /// # Safety
    /// Every byte must have been written through [`UninitBuf::as_uninit_mut`].
    pub unsafe fn assume_init(self) -> AlignedBuf {
        self.0
    }
}

/// Zero `out` and return it as initialised bytes: the fallback for code that
/// can only write into a `&mut [u8]`.
pub fn zero_fill(out: &mut [MaybeUninit<u8>]) -> &mut [u8] {
    out.fill(MaybeUninit::new(0));
    // SAFETY: every byte was just written.
    unsafe { assume_init_mut(out) }
}

/// The bytes of `out` as initialised (`<[MaybeUninit<u8>]>::assume_init_mut`,
/// which is newer than this crate's minimum Rust).
///
/// # Safety
/// Every byte of `out` must have been written.
pub unsafe fn assume_init_mut(out: &mut [MaybeUninit<u8>]) -> &mut [u8] {
    // SAFETY: same size and alignment; the caller guarantees initialisation.
    unsafe { &mut *(out as *mut [MaybeUninit<u8>] as *mut [u8]) }
}

/// View initialised bytes as possibly-uninitialised ones, to pass them to code
/// that writes into `&mut [MaybeUninit<u8>]`.
///
/// # Safety
/// The caller must not write `MaybeUninit::uninit()` through the result: the
/// bytes must stay initialised (code that only stores real bytes is fine).
pub unsafe fn as_uninit_mut(out: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: same size and alignment; the caller keeps the bytes initialised.
    unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

/// Copy `src` into `out` (same length) and return it as initialised bytes.
///
/// # Panics
/// If the lengths differ.
#[inline]
pub fn copy_into<'o>(out: &'o mut [MaybeUninit<u8>], src: &[u8]) -> &'o mut [u8] {
    assert_eq!(out.len(), src.len(), "copy_into: lengths differ");
    // SAFETY: both are valid for `src.len()` bytes and cannot overlap (`out` is
    // borrowed mutably); afterwards every byte of `out` is written.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), out.as_mut_ptr().cast::<u8>(), src.len());
        assume_init_mut(out)
    }
}

/// Ask the kernel to back the whole pages of `out` with memory now, in one
/// system call (Linux's `MADV_POPULATE_WRITE`), instead of one page fault per
/// page as a copy first touches them. Returns whether those pages are now
/// resident: populated by this call, or already so (`false` for a region too
/// small to be worth it, off Linux, and on kernels before 5.14 or sandboxes
/// without the call).
///
/// Only a hint: no byte changes value, and an error (an old kernel, memory
/// that cannot be written) is ignored. A read's output comes fresh from the
/// kernel whenever it is over glibc's mmap threshold, and for such memory a
/// copy from the page cache is dominated by its faults: populating first
/// made the fresh-process load of a 1 GiB BF16 file 6-18% faster
/// (docs/performance.md, "Page faults"). Memory the allocator hands back from
/// freed buffers is resident already, and populating it again walks every
/// page for nothing (a third of a 1 MiB `pread`'s time here), so pages that
/// `mincore` reports resident are left alone. Callers use it only where the
/// bytes that follow are real file bytes of the same length (`pread`), or
/// where a chunk's planes have all decoded to their declared lengths and the
/// filter is about to write every byte (`chunk::decode`), so a file cannot
/// make the process populate memory that decoding would not write.
pub fn prefault(out: &mut [MaybeUninit<u8>]) -> bool {
    #[cfg(target_os = "linux")]
    {
        /// Below this the system call costs about what the faults it saves do.
        const PREFAULT_MIN: usize = 64 * 1024;
        if out.len() < PREFAULT_MIN {
            return false;
        }
        let page = page_size();
        let start = out.as_mut_ptr() as usize;
        let begin = start.next_multiple_of(page);
        let end = (start + out.len()) & !(page - 1);
        if end <= begin {
            return false;
        }
        // SAFETY: [begin, end) lies inside `out`, which we may write, and
        // populating pages changes no byte's value.
        resident(begin, end, page)
            || unsafe { libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_POPULATE_WRITE) } == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = out;
        false
    }
}

/// The system's page size.
#[cfg(target_os = "linux")]
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| {
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(4096)
    })
}

/// Whether every page of `[begin, end)` (page-aligned, inside memory the
/// caller owns) is resident, asked of `mincore` a window at a time; `false`
/// at the first page that is not, or when the kernel does not answer.
#[cfg(target_os = "linux")]
fn resident(begin: usize, end: usize, page: usize) -> bool {
    const WINDOW: usize = 256;
    let mut pages = [0u8; WINDOW];
    let mut at = begin;
    while at < end {
        let len = (end - at).min(WINDOW * page);
        // SAFETY: [at, at + len) is page-aligned memory of the caller's, and
        // `pages` has a byte for each of its at most WINDOW pages.
        if unsafe { libc::mincore(at as *mut libc::c_void, len, pages.as_mut_ptr()) } != 0 {
            return false;
        }
        if pages[..len.div_ceil(page)].iter().any(|&p| p & 1 == 0) {
            return false;
        }
        at += len;
    }
    true
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len != 0 {
            if let Some(layout) = Self::layout(self.len) {
                // SAFETY: `base` was allocated in `zeroed` with this layout.
                unsafe { alloc::dealloc(self.base, layout) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let b = AlignedBuf::zeroed(1000).unwrap();
        assert_eq!(b.as_ptr() as usize % BUFFER_ALIGNMENT, 0);
        assert!(b.iter().all(|&x| x == 0));
        let empty = AlignedBuf::zeroed(0).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.as_ptr() as usize % BUFFER_ALIGNMENT, 0);
    }

    #[test]
    fn every_size_is_aligned_and_writable_to_its_end() {
        for size in [1u64, 15, 16, 63, 64, 65, 4095, 4096, 131_073, 1 << 20] {
            let mut b = AlignedBuf::zeroed(size).unwrap();
            assert_eq!(b.as_ptr() as usize % BUFFER_ALIGNMENT, 0, "{size}");
            assert_eq!(b.len() as u64, size);
            let last = b.len() - 1;
            b[last] = 0xAB;
            b[0] = 0xCD;
            assert!(b.iter().skip(1).take(last.saturating_sub(1)).all(|&x| x == 0));
        }
    }

    /// Held by the two tests that make large regions resident or measure that
    /// they are not, so that neither lands inside the other's measurement
    /// (the other tests of this binary allocate little).
    #[cfg(target_os = "linux")]
    static RESIDENT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[cfg(target_os = "linux")]
    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_buffer_is_not_resident_until_written() {
        let _held = RESIDENT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // A hostile header can declare a huge tensor that fails on its first
        // chunk: allocating the output must not touch the declared size.
        let before = resident_bytes();
        let b = AlignedBuf::zeroed(512 << 20).unwrap();
        let after = resident_bytes();
        assert!(b.iter().step_by(1 << 20).all(|&x| x == 0));
        let growth = after.saturating_sub(before);
        assert!(growth < 64 << 20, "allocating 512 MiB made {growth} bytes resident");
        let before = resident_bytes();
        let u = UninitBuf::new(512 << 20).unwrap();
        let growth = resident_bytes().saturating_sub(before);
        assert_eq!(u.len(), 512 << 20);
        assert!(
            growth < 64 << 20,
            "allocating 512 MiB uninitialised made {growth} bytes resident"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn prefault_makes_pages_resident_and_keeps_every_byte() {
        let _held = RESIDENT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let size = 64 << 20;
        let mut b = UninitBuf::new(size).unwrap();
        let before = resident_bytes();
        if prefault(b.as_uninit_mut()) {
            let growth = resident_bytes().saturating_sub(before);
            assert!(
                growth > 48 << 20,
                "prefault of 64 MiB made only {growth} bytes resident"
            );
        } else {
            eprintln!("this kernel has no MADV_POPULATE_WRITE: residency not checked");
        }
        // Unaligned, partly written and short regions: values are kept.
        let out = b.as_uninit_mut();
        for (i, x) in out.iter_mut().enumerate().take(1 << 20) {
            x.write((i % 251) as u8);
        }
        prefault(&mut out[3..(1 << 20) - 5]);
        assert!(!prefault(&mut out[..100]), "a region under a page is left alone");
        // SAFETY: the first MiB was written above.
        let head = unsafe { assume_init_mut(&mut out[..1 << 20]) };
        assert!(head.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
        prefault(&mut []);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn residency_is_seen_page_by_page() {
        let _held = RESIDENT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let page = page_size();
        // Over glibc's largest mmap threshold (32 MiB), so it comes fresh from the kernel.
        let size = 40 << 20;
        let mut b = UninitBuf::new(size as u64 + page as u64).unwrap();
        let out = b.as_uninit_mut();
        let skip = (out.as_ptr() as usize).next_multiple_of(page) - out.as_ptr() as usize;
        let out = &mut out[skip..skip + size];
        let (begin, end) = (out.as_ptr() as usize, out.as_ptr() as usize + size);
        assert!(!resident(begin, end, page), "a fresh 40 MiB buffer reads as resident");
        for x in out.iter_mut() {
            x.write(1);
        }
        assert!(resident(begin, end, page), "a written buffer reads as not resident");
        assert!(prefault(out), "prefault of resident memory reports it not resident");
        // SAFETY: a 0-length populate changes nothing; it tells whether the kernel has the call.
        if unsafe { libc::madvise(begin as *mut libc::c_void, 0, libc::MADV_POPULATE_WRITE) } != 0 {
            eprintln!("this kernel has no MADV_POPULATE_WRITE: repopulating not checked");
            return;
        }
        // One page given back to the kernel in the last window: not all resident.
        let last = end - page;
        // SAFETY: the page is ours; MADV_DONTNEED makes it read as zeros again.
        assert_eq!(
            unsafe { libc::madvise(last as *mut libc::c_void, page, libc::MADV_DONTNEED) },
            0
        );
        assert!(!resident(begin, end, page), "a page given back still reads as resident");
        assert!(
            prefault(out),
            "prefault of a partly resident region did not populate it"
        );
        assert!(resident(begin, end, page));
    }

    #[test]
    fn uninit_buffers_are_aligned_and_keep_what_is_written() {
        for size in [0u64, 1, 63, 64, 65, 4096, 131_073, 1 << 20] {
            let mut b = UninitBuf::new(size).unwrap();
            assert_eq!(b.len() as u64, size);
            let out = b.as_uninit_mut();
            assert_eq!(out.as_ptr() as usize % BUFFER_ALIGNMENT, 0, "{size}");
            for (i, x) in out.iter_mut().enumerate() {
                x.write(i as u8);
            }
            // SAFETY: every byte was written above.
            let b = unsafe { b.assume_init() };
            assert!(b.iter().enumerate().all(|(i, &x)| x == i as u8));
        }
        assert!(matches!(UninitBuf::new(u64::MAX), Err(Error::OutOfMemory(_))));
    }

    #[test]
    fn zero_fill_and_copy_into_initialise_every_byte() {
        let mut raw = [MaybeUninit::new(7u8); 100];
        assert!(zero_fill(&mut raw).iter().all(|&x| x == 0));
        let src: Vec<u8> = (0..100).collect();
        assert_eq!(copy_into(&mut raw, &src), &src[..]);
    }

    #[test]
    fn absurd_sizes_are_errors_not_aborts() {
        assert!(matches!(AlignedBuf::zeroed(u64::MAX), Err(Error::OutOfMemory(_))));
        assert!(matches!(AlignedBuf::zeroed(1 << 62), Err(Error::OutOfMemory(_))));
    }
}
