//! A buffer aligned to 64 bytes, allocated fallibly.
//!
//! (Transparent huge pages for large buffers were tried and measured: they
//! help a warm process but cost 2-3x on a fresh one, whose first faults pay
//! for compaction, so buffers are plain heap memory.)

use std::alloc::{self, Layout};
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
}

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
        let size = usize::try_from(len).map_err(|_| Error::OutOfMemory(len))?;
        if size == 0 {
            return Ok(AlignedBuf {
                ptr: NonNull::<Align64>::dangling().cast(),
                len: 0,
            });
        }
        let layout = Layout::from_size_align(size, BUFFER_ALIGNMENT).map_err(|_| Error::OutOfMemory(len))?;
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(Error::OutOfMemory(len))?;
        Ok(AlignedBuf { ptr, len: size })
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
            // SAFETY: allocated in `zeroed` with this exact layout.
            unsafe {
                alloc::dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.len, BUFFER_ALIGNMENT),
                )
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
    fn absurd_sizes_are_errors_not_aborts() {
        assert!(matches!(AlignedBuf::zeroed(u64::MAX), Err(Error::OutOfMemory(_))));
        assert!(matches!(AlignedBuf::zeroed(1 << 62), Err(Error::OutOfMemory(_))));
    }
}
