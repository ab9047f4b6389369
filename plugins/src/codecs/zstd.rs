//! The `zstd` codec: Zstandard frames, one per chunk (or per filter plane).
//!
//! Header configuration: `{"codec": "zstd", "level": 3}`. Levels 1..=22
//! (negative levels are zstd's fast modes). Byte planes from a filter are
//! compressed with a minimum match length of 7 and, at levels up to 9, zstd's
//! `fast` strategy with a one-step search and a tiny hash table: planes of
//! float exponents are close to order-0 data, where short matches cost more
//! than Huffman-coded literals, so this is both smaller and several times
//! faster (measured in bench/bench_compression.py: levels 1 to 9 then give the
//! same ratio). Levels 10 and up keep their own search. The frames are standard
//! zstd either way. Decompression writes into the caller's buffer of the
//! chunk's declared raw length and fails unless the frame fills it exactly.
//! Compression and decompression contexts are reused per thread.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use deathtensors::registry::{Codec, Plugin};
use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe::{CParameter, WriteBuf};

/// Zstandard.
pub struct ZstdCodec;

impl Plugin for ZstdCodec {
    fn id(&self) -> &'static str {
        "zstd"
    }
    fn summary(&self) -> &'static str {
        "Zstandard compression, one frame per chunk or plane (compress=True)"
    }
}

/// Highest level at which planes use the one-step search.
const PLANE_FAST_SEARCH_MAX_LEVEL: i32 = 9;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, bool, Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Whether zstd has `level`.
fn check_level(level: i32) -> Result<(), String> {
    let range = zstd::compression_level_range();
    if !range.contains(&level) {
        return Err(format!(
            "zstd level {level} is outside {}..={}",
            range.start(),
            range.end()
        ));
    }
    Ok(())
}

/// Run `f` with this thread's compression context for `level`, made for
/// byte planes when `plane` is set.
fn with_compressor<R>(
    level: i32,
    plane: bool,
    f: impl FnOnce(&mut Compressor<'static>) -> Result<R, String>,
) -> Result<R, String> {
    check_level(level)?;
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !matches!(&*slot, Some((l, p, _)) if *l == level && *p == plane) {
            // Planes at levels up to 9 all start from level 1 (the `fast` strategy, whose
            // target length would otherwise act as an acceleration factor).
            let fast_plane = plane && level <= PLANE_FAST_SEARCH_MAX_LEVEL;
            let mut c = Compressor::new(if fast_plane { 1 } else { level }).map_err(|e| e.to_string())?;
            // Frames carry zstd's content checksum, so damage to compressed bytes is
            // an error even in files without a footer.
            c.include_checksum(true).map_err(|e| e.to_string())?;
            if plane {
                c.set_parameter(CParameter::MinMatch(7)).map_err(|e| e.to_string())?;
            }
            if fast_plane {
                c.set_parameter(CParameter::SearchLog(1)).map_err(|e| e.to_string())?;
                c.set_parameter(CParameter::HashLog(6)).map_err(|e| e.to_string())?;
            }
            *slot = Some((level, plane, c));
        }
        let (_, _, c) = slot.as_mut().ok_or("no zstd context")?;
        f(c)
    })
}

/// zstd's error code for a destination buffer too small for the frame.
const DST_TOO_SMALL: usize =
    (zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall as usize).wrapping_neg();

impl Codec for ZstdCodec {
    fn default_level(&self) -> i32 {
        3
    }

    fn check_level(&self, level: i32) -> Result<(), String> {
        check_level(level)
    }

    fn compress(&self, raw: &[u8], level: i32) -> Result<Vec<u8>, String> {
        with_compressor(level, false, |c| c.compress(raw).map_err(|e| e.to_string()))
    }

    /// Compresses straight into `out`, with no buffer of its own and no copy.
    /// With room for zstd's bound (what the writer gives) it compresses in
    /// one pass; with less it goes block by block and reports a frame that
    /// does not fit (`dstSize_tooSmall`) as `None`.
    fn compress_plane(&self, plane: &[u8], level: i32, out: &mut [u8]) -> Result<Option<usize>, String> {
        with_compressor(level, true, |c| match c.context_mut().compress2(out, plane) {
            Ok(n) => Ok(Some(n)),
            Err(code) if code == DST_TOO_SMALL => Ok(None),
            Err(code) => Err(format!("zstd: {}", zstd::zstd_safe::get_error_name(code))),
        })
    }

    fn wants_byte_planes(&self) -> bool {
        true
    }

    /// A zstd block regenerates at most 128 KiB and takes at least 4 bytes
    /// (a 3-byte block header and one RLE byte), and a frame adds its header:
    /// no frame decodes to more than 32768 bytes per stored byte.
    fn max_expansion(&self) -> u64 {
        32768
    }

    fn decompress_into(&self, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
        let expected = out.len();
        decompress_checked(stored, out, expected)
    }

    fn decompress_into_uninit(&self, stored: &[u8], out: &mut [MaybeUninit<u8>]) -> Result<(), String> {
        let expected = out.len();
        decompress_checked(stored, &mut UninitOut { buf: out, filled: 0 }, expected)
    }
}

/// The magic number that starts a (non-skippable) zstd frame, as stored.
const FRAME_MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();

/// Check that `stored` is exactly one zstd frame, as the format asks: zstd
/// itself would also decode frames one after another and skip skippable ones.
fn check_one_frame(stored: &[u8]) -> Result<(), String> {
    if !stored.starts_with(&FRAME_MAGIC) {
        return Err("the stored bytes do not start with a zstd frame".into());
    }
    match zstd::zstd_safe::find_frame_compressed_size(stored) {
        Ok(n) if n == stored.len() => Ok(()),
        Ok(n) => Err(format!(
            "{} bytes follow the zstd frame ({n} bytes): a chunk is exactly one frame",
            stored.len() - n
        )),
        Err(code) => Err(format!("zstd: {}", zstd::zstd_safe::get_error_name(code))),
    }
}

/// Decompress one frame with this thread's context into `out`, which must
/// end up holding exactly `expected` bytes.
fn decompress_checked<C: WriteBuf + ?Sized>(stored: &[u8], out: &mut C, expected: usize) -> Result<(), String> {
    check_one_frame(stored)?;
    let n = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Decompressor::new().map_err(|e| e.to_string())?);
        }
        let d = slot.as_mut().ok_or("no zstd context")?;
        d.decompress_to_buffer(stored, out).map_err(|e| format!("zstd: {e}"))
    })?;
    if n != expected {
        return Err(format!(
            "zstd frame decodes to {n} bytes, the header declares {expected}"
        ));
    }
    Ok(())
}

/// An uninitialised output slice that zstd writes from its start: it tells
/// how many bytes it wrote, so `n == len` means every byte was written.
struct UninitOut<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    filled: usize,
}

// SAFETY: `as_slice` covers only the `filled` bytes that zstd reported writing;
// `capacity` and `as_mut_ptr` describe exactly the borrowed slice.
unsafe impl WriteBuf for UninitOut<'_> {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `filled` bytes were written (see filled_until).
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.filled) }
    }

    fn capacity(&self) -> usize {
        self.buf.len()
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.buf.as_mut_ptr().cast()
    }

    unsafe fn filled_until(&mut self, n: usize) {
        self.filled = n;
    }
}

deathtensors::register_codec!(ZstdCodec);

#[cfg(test)]
mod tests {
    use super::*;

    /// `raw` compressed as a plane, with room for as many bytes as it has.
    fn plane(raw: &[u8], level: i32) -> Vec<u8> {
        let mut out = vec![0u8; raw.len()];
        let n = ZstdCodec.compress_plane(raw, level, &mut out).unwrap().unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn round_trip_and_bounds() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for packed in [ZstdCodec.compress(&raw, 3).unwrap(), plane(&raw, 3)] {
            assert!(packed.len() < raw.len());
            let mut out = vec![0u8; raw.len()];
            ZstdCodec.decompress_into(&packed, &mut out).unwrap();
            assert_eq!(out, raw);
            // Declared raw length too small: error, no overflow.
            let mut short = vec![0u8; raw.len() - 1];
            assert!(ZstdCodec.decompress_into(&packed, &mut short).is_err());
            // Declared too large: error.
            let mut long = vec![0u8; raw.len() + 1];
            assert!(ZstdCodec.decompress_into(&packed, &mut long).is_err());
        }
        // Garbage: error.
        let mut out = vec![0u8; 10];
        assert!(ZstdCodec.decompress_into(&[1, 2, 3, 4, 5], &mut out).is_err());
        // Into uninitialised memory: the same bytes, the same length checks.
        let packed = ZstdCodec.compress(&raw, 3).unwrap();
        let mut fresh = vec![MaybeUninit::<u8>::uninit(); raw.len()];
        ZstdCodec.decompress_into_uninit(&packed, &mut fresh).unwrap();
        // SAFETY: decompress_into_uninit returned Ok, so it wrote every byte.
        assert_eq!(unsafe { deathtensors::buffer::assume_init_mut(&mut fresh) }, &raw[..]);
        let mut short = vec![MaybeUninit::<u8>::uninit(); raw.len() - 1];
        assert!(ZstdCodec.decompress_into_uninit(&packed, &mut short).is_err());
        let mut long = vec![MaybeUninit::<u8>::uninit(); raw.len() + 1];
        assert!(ZstdCodec.decompress_into_uninit(&packed, &mut long).is_err());
        assert!(ZstdCodec.compress(&raw, 99).is_err());
    }

    #[test]
    fn a_chunk_is_exactly_one_frame() {
        // Regression: two frames, or a skippable frame before or after one,
        // decoded as one chunk, though the format says a chunk is one frame.
        let half = vec![3u8; 5_000];
        let frame = ZstdCodec.compress(&half, 3).unwrap();
        let mut skippable = 0x184D_2A50u32.to_le_bytes().to_vec();
        skippable.extend_from_slice(&4u32.to_le_bytes());
        skippable.extend_from_slice(b"junk");
        let cases = [
            ([frame.clone(), frame.clone()].concat(), 10_000, "follow the zstd frame"),
            (
                [skippable.clone(), frame.clone()].concat(),
                5_000,
                "do not start with a zstd frame",
            ),
            ([frame.clone(), skippable].concat(), 5_000, "follow the zstd frame"),
            (frame[..frame.len() - 1].to_vec(), 5_000, "zstd:"),
        ];
        for (stored, len, needle) in cases {
            let mut out = vec![0u8; len];
            let e = ZstdCodec.decompress_into(&stored, &mut out).unwrap_err();
            assert!(e.contains(needle), "{e}");
            let mut fresh = vec![MaybeUninit::<u8>::uninit(); len];
            assert!(ZstdCodec.decompress_into_uninit(&stored, &mut fresh).is_err());
        }
        let mut out = vec![0u8; 5_000];
        ZstdCodec.decompress_into(&frame, &mut out).unwrap();
        assert_eq!(out, half);
    }

    #[test]
    fn contexts_follow_level_changes() {
        let raw = vec![7u8; 50_000];
        let a = ZstdCodec.compress(&raw, 1).unwrap();
        let b = ZstdCodec.compress(&raw, 19).unwrap();
        let c = plane(&raw, 1);
        for packed in [a, b, c] {
            let mut out = vec![0u8; raw.len()];
            ZstdCodec.decompress_into(&packed, &mut out).unwrap();
            assert_eq!(out, raw);
        }
    }

    #[test]
    fn a_plane_that_does_not_fit_its_room_is_none() {
        // An xorshift stream: incompressible, so no frame fits in fewer bytes.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut room = vec![0u8; noise.len() * 19 / 20];
        assert_eq!(ZstdCodec.compress_plane(&noise, 3, &mut room).unwrap(), None);
        // The context is still good afterwards, and a plane that fits is exact.
        let ramp: Vec<u8> = (0..200_000u32).map(|i| (i / 1000) as u8).collect();
        let n = ZstdCodec.compress_plane(&ramp, 3, &mut room).unwrap().unwrap();
        let mut back = vec![0u8; ramp.len()];
        ZstdCodec.decompress_into(&room[..n], &mut back).unwrap();
        assert_eq!(back, ramp);
        // No room at all is a frame that does not fit, not an error; a bad level is one.
        assert_eq!(ZstdCodec.compress_plane(&ramp, 3, &mut []).unwrap(), None);
        assert!(ZstdCodec.compress_plane(&ramp, 99, &mut room).is_err());
    }
}
