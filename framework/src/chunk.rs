//! Encoding and decoding one compressed chunk: the filter, the codec per
//! plane, and the raw fallback. The writer and the reader both go through
//! here, so the rules live in one place.

use std::borrow::Cow;
use std::cell::RefCell;
use std::mem::MaybeUninit;

use serde_json::{Map, Value};

use crate::buffer;
use crate::format::Chunk;
use crate::registry::{Codec, Filter};

/// A chunk or plane is stored compressed only if the codec saves at least
/// 1/20 (5%) of it; otherwise it is stored raw and decoding it is a copy.
pub fn worth_compressing(packed_len: usize, raw_len: usize) -> bool {
    (packed_len as u64) * 20 <= (raw_len as u64) * 19
}

/// An encoded chunk: its stored bytes and, when filtered, each plane's stored length.
pub type Encoded<'r> = (Cow<'r, [u8]>, Option<Vec<u64>>);

/// A filter with its parameters and plane count, as applied to one tensor.
#[derive(Clone, Copy)]
pub struct AppliedFilter<'a> {
    /// The filter plugin.
    pub filter: &'a dyn Filter,
    /// Its parameters (as in the header).
    pub params: &'a Map<String, Value>,
    /// Number of planes per chunk.
    pub planes: usize,
}

/// Encode one chunk. Returns the stored bytes and, when filtered, the stored
/// length of each plane.
///
/// # Errors
/// The codec's message when it fails.
pub fn encode<'r>(
    raw: &'r [u8],
    codec: &dyn Codec,
    level: i32,
    filter: Option<AppliedFilter<'_>>,
) -> Result<Encoded<'r>, String> {
    let Some(f) = filter else {
        let packed = codec.compress(raw, level)?;
        return Ok(if worth_compressing(packed.len(), raw.len()) {
            (Cow::Owned(packed), None)
        } else {
            (Cow::Borrowed(raw), None)
        });
    };
    with_plane_buffer(raw.len(), |planes| encode_planes(raw, codec, level, f, planes))
}

/// Largest plane buffer a thread keeps between chunks (default chunks are 1 MiB).
const KEPT_PLANE_BUFFER: usize = 8 << 20;

thread_local! {
    /// Each thread's buffer for a chunk's planes while it is encoded, instead
    /// of a fresh zeroed 1 MiB per chunk: encoding all-MiniLM-L6-v2's F32
    /// chunks in a loop went from 484 to 1096 MB/s on one core, and a whole
    /// one-thread `dt.save` of them from 0.260-0.277 s to 0.252-0.262 s.
    static PLANE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with a buffer of `len` bytes: this thread's kept one, or a fresh
/// one when that is in use or `len` is above [`KEPT_PLANE_BUFFER`].
fn with_plane_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    if len > KEPT_PLANE_BUFFER {
        return f(&mut vec![0u8; len]);
    }
    PLANE_BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0u8; len]),
    })
}

/// Room a codec gets beyond a plane's length when it compresses straight into
/// the chunk's stored bytes: 1/128 of the plane plus 1 KiB, above what zstd
/// needs (1/256 plus 64 bytes) to compress in one pass without checks.
pub fn plane_headroom(plane_len: usize) -> usize {
    plane_len / 128 + 1024
}

/// Filter `raw` into `planes` (its length) and compress each plane straight
/// into the chunk's stored bytes, or copy it there raw when the codec does
/// not shrink it enough ([`worth_compressing`]).
fn encode_planes<'r>(
    raw: &'r [u8],
    codec: &dyn Codec,
    level: i32,
    f: AppliedFilter<'_>,
    planes: &mut [u8],
) -> Result<Encoded<'r>, String> {
    f.filter.encode(f.params, raw, planes);
    let plane_len = raw.len() / f.planes;
    // Every plane is stored in at most its own length, so before each plane at
    // least its length plus the headroom is left.
    let mut out = vec![0u8; raw.len() + plane_headroom(plane_len)];
    let mut at = 0usize;
    let mut lens = Vec::with_capacity(f.planes);
    let mut any_packed = false;
    for plane in planes.chunks_exact(plane_len.max(1)).take(f.planes) {
        let stored = match codec.compress_plane(plane, level, &mut out[at..])? {
            Some(n) if worth_compressing(n, plane.len()) => {
                any_packed = true;
                n
            }
            _ => {
                out[at..at + plane.len()].copy_from_slice(plane);
                plane.len()
            }
        };
        at += stored;
        lens.push(stored as u64);
    }
    if !any_packed {
        // Nothing shrank: store the chunk as it came, so reading it is a plain copy.
        return Ok((Cow::Borrowed(raw), None));
    }
    out.truncate(at);
    Ok((Cow::Owned(out), Some(lens)))
}

/// Bytes of a tensor that [`choose_params`] encodes with each candidate: at
/// most this many, and at most an eighth of the tensor, so that choosing two
/// candidates costs at most a quarter more compression work (5.6% on
/// all-MiniLM-L6-v2 in F32, whose choices match those of 128 KiB samples).
pub const FILTER_SAMPLE_BYTES: usize = 64 << 10;

/// Tensors under this many bytes skip the trial and take the first candidate.
pub const FILTER_TRIAL_MIN_BYTES: usize = 16 << 10;

/// The sample of `bytes` that [`choose_params`] tries: a run of whole units
/// of `unit` bytes from the middle of the tensor (`None` when the tensor is
/// too small to be worth a trial).
pub fn filter_sample(bytes: &[u8], unit: usize) -> Option<&[u8]> {
    filter_sample_range(bytes.len() as u64, unit).map(|r| &bytes[r.start as usize..r.end as usize])
}

/// Where [`filter_sample`] takes its sample in a tensor of `len` bytes (for
/// bytes that are not in memory yet).
pub fn filter_sample_range(len: u64, unit: usize) -> Option<std::ops::Range<u64>> {
    if len < FILTER_TRIAL_MIN_BYTES as u64 || unit == 0 {
        return None;
    }
    let unit = unit as u64;
    let take = (len / 8).min(FILTER_SAMPLE_BYTES as u64) / unit * unit;
    let start = (len - take) / 2 / unit * unit;
    (take > 0).then_some(start..start + take)
}

/// Index of the candidate parameter set (`(params, plane count)`) under which
/// `sample` is stored smallest, the first on ties; 0 when there is only one.
///
/// # Errors
/// The codec's message when it fails.
pub fn choose_params(
    sample: &[u8],
    codec: &dyn Codec,
    level: i32,
    filter: &dyn Filter,
    candidates: &[(Map<String, Value>, usize)],
) -> Result<usize, String> {
    if candidates.len() < 2 {
        return Ok(0);
    }
    let mut best = (usize::MAX, 0);
    for (i, (params, planes)) in candidates.iter().enumerate() {
        let applied = AppliedFilter {
            filter,
            params,
            planes: *planes,
        };
        let (stored, _) = encode(sample, codec, level, Some(applied))?;
        if stored.len() < best.0 {
            best = (stored.len(), i);
        }
    }
    Ok(best.1)
}

/// Decode one chunk's `stored` bytes into `out` (exactly its raw length),
/// which may be uninitialised: on success every byte of it has been written.
/// `scratch` is reused between calls to hold decompressed planes.
///
/// # Errors
/// A message when a plane or the chunk does not decode to its declared length.
pub fn decode(
    stored: &[u8],
    chunk: &Chunk,
    codec: &dyn Codec,
    filter: Option<AppliedFilter<'_>>,
    out: &mut [MaybeUninit<u8>],
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    let (Some(lens), Some(f)) = (chunk.planes(), filter) else {
        if stored.len() == out.len() {
            buffer::copy_into(out, stored);
            return Ok(());
        }
        return codec.decompress_into_uninit(stored, out);
    };
    let plane_len = out.len() / f.planes;
    scratch.resize(out.len(), 0);
    // First decompress the compressed planes into their slots of `scratch`...
    let mut at = 0usize;
    for (p, &len) in lens.iter().enumerate() {
        let len = len as usize;
        if len != plane_len {
            let slot = &mut scratch[p * plane_len..(p + 1) * plane_len];
            codec
                .decompress_into(&stored[at..at + len], slot)
                .map_err(|e| format!("plane {p}: {e}"))?;
        }
        at += len;
    }
    // ...then hand the filter raw planes straight from `stored`.
    let mut planes: Vec<&[u8]> = Vec::with_capacity(lens.len());
    let mut at = 0usize;
    for (p, &len) in lens.iter().enumerate() {
        let len = len as usize;
        planes.push(if len == plane_len {
            &stored[at..at + len]
        } else {
            &scratch[p * plane_len..(p + 1) * plane_len]
        });
        at += len;
    }
    // Every plane is now known to hold its declared length, so the filter
    // will write all of `out`: populate its fresh pages in one call rather
    // than one fault per page inside the filter's scattered stores.
    buffer::prefault(out);
    f.filter.decode_uninit(f.params, &planes, out);
    Ok(())
}
