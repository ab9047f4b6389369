//! Writing `.deathtensors` files, atomically.
//!
//! The file is written to a temporary file in the target's directory, synced,
//! and renamed over the target, so an interrupted save never leaves a partial
//! file at the target path and readers of the old file keep reading it.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::chunk::{self, AppliedFilter};
use crate::error::{Error, Result};
use crate::format::{
    self, align_up, Chunk, CompressionHeader, FilterHeader, Header, Preamble, TensorHeader, DEFAULT_CHUNK_BYTES,
    FLAG_CHECKSUM, FLAG_COMPRESSED, MAX_CHUNK_RAW_LEN, PREAMBLE_LEN, TENSOR_ALIGNMENT,
};
use crate::registry::{self, ChecksumAlgorithm, Codec, DtypeHandler, Filter};

/// A filter chosen for a tensor: plugin, parameters, plane count.
type SelectedFilter = (&'static dyn Filter, Map<String, Value>, usize);

/// Pieces handed to the hashing thread while writing.
const WRITE_PIECE: usize = 8 << 20;
/// Start background writeback after this many bytes (Linux).
const WRITEBACK_EVERY: u64 = 64 << 20;
static ZEROS: [u8; TENSOR_ALIGNMENT as usize] = [0; TENSOR_ALIGNMENT as usize];

/// One tensor to write: borrowed bytes plus what the header says of them.
#[derive(Debug, Clone)]
pub struct TensorData<'a> {
    /// Unique name.
    pub name: String,
    /// Dtype id (a registered dtype).
    pub dtype: String,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// The tensor's bytes, C-contiguous, little-endian.
    pub data: &'a [u8],
    /// Per-tensor metadata.
    pub metadata: Map<String, Value>,
}

/// How to write a file.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Codec id to compress with; `None` stores tensors raw.
    pub codec: Option<String>,
    /// Codec level; `None` uses the codec's default.
    pub level: Option<i32>,
    /// Checksum algorithm id for the footer; `None` writes no footer.
    pub checksum: Option<String>,
    /// Which filter to apply before the codec (compressed files only).
    pub filter: FilterChoice,
    /// Target raw size of a compression chunk.
    pub chunk_bytes: u64,
    /// fsync the file and its directory before returning (default true).
    pub durable: bool,
}

/// How the writer picks a chunk filter for each tensor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FilterChoice {
    /// Use the first registered filter (by id) that applies to the tensor's
    /// dtype, if the codec [wants byte planes](Codec::wants_byte_planes).
    #[default]
    Auto,
    /// No filter.
    Off,
    /// This filter id, for every tensor whose dtype it applies to.
    Id(String),
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            codec: None,
            level: None,
            checksum: None,
            filter: FilterChoice::Auto,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            durable: true,
        }
    }
}

/// Write `tensors` to `path` atomically.
///
/// # Errors
/// Invalid input (duplicate names, unknown dtype/codec/checksum, a byte
/// length that does not match the shape) as [`Error::InvalidArgument`] or
/// [`Error::UnknownPlugin`]; I/O errors. On error the target is untouched.
pub fn write_file(
    path: impl AsRef<Path>,
    tensors: &[TensorData<'_>],
    global_metadata: &Map<String, Value>,
    options: &WriteOptions,
) -> Result<()> {
    let path = path.as_ref();
    let plan = Plan::new(tensors, options)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not a file path", path.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    let tmp_path = tmp.path().to_path_buf();
    let io = |e| Error::io(&tmp_path, e);
    let file = tmp.as_file_mut();

    let mut header = Header {
        metadata: global_metadata.clone(),
        compression: plan.codec.map(|(c, level)| CompressionHeader {
            codec: c.id().to_owned(),
            level,
        }),
        checksum: plan.checksum.map(|c| c.id().to_owned()),
        tensors: Vec::with_capacity(tensors.len()),
    };
    let mut flags = 0;
    if plan.codec.is_some() {
        flags |= FLAG_COMPRESSED;
    }
    if plan.checksum.is_some() {
        flags |= FLAG_CHECKSUM;
    }

    let digest = match plan.codec {
        None => write_uncompressed(file, tensors, &plan, &mut header, flags).map_err(io)?,
        Some((codec, level)) => write_compressed(file, tensors, &plan, &mut header, flags, codec, level, &tmp_path)?,
    };
    if let Some(digest) = digest {
        file.write_all(&digest).map_err(io)?;
    }
    // Temp files are created 0600; give the result the mode a plain create would.
    file.set_permissions(std::fs::Permissions::from_mode(0o666 & !process_umask()))
        .map_err(io)?;
    if options.durable {
        file.sync_all().map_err(io)?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    if options.durable {
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The process umask, read without changing it (Linux: /proc/self/status); 0o022 if unknown.
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// The checked inputs of a write.
struct Plan {
    dtypes: Vec<&'static dyn DtypeHandler>,
    /// Per tensor: the filter, its parameters and plane count (compressed files only).
    filters: Vec<Option<SelectedFilter>>,
    codec: Option<(&'static dyn Codec, i32)>,
    checksum: Option<&'static dyn ChecksumAlgorithm>,
    chunk_bytes: u64,
}

impl Plan {
    fn new(tensors: &[TensorData<'_>], options: &WriteOptions) -> Result<Self> {
        let registry = registry::dtypes()?;
        let mut seen = std::collections::HashSet::with_capacity(tensors.len());
        let mut dtypes = Vec::with_capacity(tensors.len());
        for t in tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "tensor name {:?} is given twice",
                    t.name
                )));
            }
            let dtype = registry.get(&t.dtype)?;
            let nbytes = t
                .shape
                .iter()
                .try_fold(dtype.item_size() as u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| Error::InvalidArgument(format!("tensor {:?}: shape {:?} overflows", t.name, t.shape)))?;
            if nbytes != t.data.len() as u64 {
                return Err(Error::InvalidArgument(format!(
                    "tensor {:?}: shape {:?} of {} needs {nbytes} bytes but {} were given",
                    t.name,
                    t.shape,
                    t.dtype,
                    t.data.len()
                )));
            }
            dtypes.push(dtype);
        }
        let codec = match &options.codec {
            Some(id) => {
                let codec = registry::codecs()?.get(id)?;
                let level = options.level.unwrap_or_else(|| codec.default_level());
                Some((codec, codec.effective_level(level)))
            }
            None => None,
        };
        let checksum = options
            .checksum
            .as_deref()
            .map(|id| registry::checksums()?.get(id))
            .transpose()?;
        let candidates: Vec<&'static dyn Filter> = match (&options.filter, codec) {
            (_, None) | (FilterChoice::Off, _) => Vec::new(),
            (FilterChoice::Id(id), Some(_)) => vec![registry::filters()?.get(id)?],
            (FilterChoice::Auto, Some((c, _))) if c.wants_byte_planes() => {
                registry::filters()?.entries().map(|(f, _)| f).collect()
            }
            (FilterChoice::Auto, Some(_)) => Vec::new(),
        };
        let mut filters = Vec::with_capacity(dtypes.len());
        for dtype in &dtypes {
            let chosen = candidates.iter().find_map(|f| f.params_for(*dtype).map(|p| (*f, p)));
            filters.push(match chosen {
                None => None,
                Some((f, params)) => {
                    let planes = f.plane_count(&params, *dtype).map_err(|e| {
                        Error::InvalidArgument(format!("filter {} refuses its own parameters: {e}", f.id()))
                    })?;
                    Some((f, params, planes))
                }
            });
        }
        if options.chunk_bytes == 0 || options.chunk_bytes > MAX_CHUNK_RAW_LEN {
            return Err(Error::InvalidArgument(format!(
                "chunk_bytes must be in 1..={MAX_CHUNK_RAW_LEN}, not {}",
                options.chunk_bytes
            )));
        }
        Ok(Plan {
            dtypes,
            filters,
            codec,
            checksum,
            chunk_bytes: options.chunk_bytes,
        })
    }
}

/// Serialize the header and pad it with spaces so the data starts at `data_start`.
fn header_bytes(header: &Header, data_start: u64) -> Vec<u8> {
    let mut text = serde_json::to_vec(header).expect("a Header always serializes");
    let len = data_start - PREAMBLE_LEN;
    debug_assert!(text.len() as u64 <= len);
    text.resize(len as usize, b' ');
    text
}

/// Where the data starts for a header of `json_len` bytes.
fn data_start_for(json_len: usize) -> u64 {
    align_up(PREAMBLE_LEN + json_len as u64, TENSOR_ALIGNMENT).expect("header length is small")
}

fn write_uncompressed(
    file: &mut File,
    tensors: &[TensorData<'_>],
    plan: &Plan,
    header: &mut Header,
    flags: u32,
) -> std::io::Result<Option<[u8; 32]>> {
    let mut cursor = 0u64;
    for t in tensors {
        // Empty tensors sit at the cursor: they hold no bytes to align.
        let begin = if t.data.is_empty() {
            cursor
        } else {
            align_up(cursor, TENSOR_ALIGNMENT).expect("sizes come from memory")
        };
        let end = begin + t.data.len() as u64;
        header.tensors.push(entry(t, [begin, end], None, None));
        if !t.data.is_empty() {
            cursor = end; // an empty tensor adds no gap: nothing follows it
        }
    }
    let json_len = serde_json::to_vec(&*header).expect("serializes").len();
    let data_start = data_start_for(json_len);
    let text = header_bytes(header, data_start);
    let preamble = Preamble {
        flags,
        header_len: text.len() as u64,
    }
    .encode();
    debug_assert_eq!(format::nul_padding(text.len() as u64), 0);

    let mut pieces: Vec<&[u8]> = vec![&text];
    let mut cursor = 0u64;
    for (t, h) in tensors.iter().zip(&header.tensors).filter(|(t, _)| !t.data.is_empty()) {
        let gap = (h.offsets[0] - cursor) as usize;
        if gap > 0 {
            pieces.push(&ZEROS[..gap]);
        }
        pieces.extend(t.data.chunks(WRITE_PIECE));
        cursor = h.offsets[1];
    }
    file.write_all(&preamble)?;
    let mut written = PREAMBLE_LEN;
    let mut synced = 0u64;
    let mut write = |piece: &[u8]| -> std::io::Result<()> {
        file.write_all(piece)?;
        written += piece.len() as u64;
        if written - synced >= WRITEBACK_EVERY {
            start_writeback(file, synced, written - synced);
            synced = written;
        }
        Ok(())
    };
    match plan.checksum {
        None => {
            for piece in pieces {
                write(piece)?;
            }
            Ok(None)
        }
        Some(algorithm) => std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<&[u8]>(8);
            let hashing = scope.spawn(move || {
                let mut hasher = algorithm.hasher();
                for piece in rx {
                    hasher.update(piece);
                }
                hasher.finish()
            });
            for piece in pieces {
                write(piece)?;
                if tx.send(piece).is_err() {
                    break;
                }
            }
            drop(tx);
            let digest = hashing
                .join()
                .map_err(|_| std::io::Error::other("the hashing thread panicked"))?;
            Ok(Some(digest))
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_compressed(
    file: &mut File,
    tensors: &[TensorData<'_>],
    plan: &Plan,
    header: &mut Header,
    flags: u32,
    codec: &'static dyn Codec,
    level: i32,
    tmp_path: &Path,
) -> Result<Option<[u8; 32]>> {
    let io = |e| Error::io(tmp_path, e);
    // Reserve room for the header: every number in it at its widest.
    let plans: Vec<Vec<u64>> = tensors
        .iter()
        .zip(&plan.dtypes)
        .map(|(t, d)| chunk_lengths(&t.shape, d.item_size() as u64, t.data.len() as u64, plan.chunk_bytes))
        .collect();
    for ((t, lens), filter) in tensors.iter().zip(&plans).zip(&plan.filters) {
        let planes = filter.as_ref().map(|f| vec![u64::MAX; f.2]);
        let widest = vec![Chunk::new(u64::MAX, u64::MAX, u64::MAX, planes); lens.len()];
        header
            .tensors
            .push(entry(t, [u64::MAX, u64::MAX], Some(widest), filter.as_ref()));
    }
    let reserved = serde_json::to_vec(&*header).expect("serializes").len();
    let data_start = data_start_for(reserved);
    header.tensors.clear();

    file.seek(SeekFrom::Start(data_start)).map_err(io)?;
    let batch = rayon::current_num_threads().max(1) * 4;
    let mut cursor = 0u64;
    let mut synced = 0u64;
    for ((t, lens), filter) in tensors.iter().zip(&plans).zip(&plan.filters) {
        let applied = filter.as_ref().map(|(f, params, planes)| AppliedFilter {
            filter: *f,
            params,
            planes: *planes,
        });
        let begin = cursor;
        let mut slices = Vec::with_capacity(lens.len());
        let mut rest = t.data;
        for &len in lens {
            let (head, tail) = rest.split_at(len as usize);
            slices.push(head);
            rest = tail;
        }
        let mut chunks = Vec::with_capacity(lens.len());
        for group in slices.chunks(batch) {
            let encoded: Vec<_> = group
                .par_iter()
                .map(|raw| chunk::encode(raw, codec, level, applied))
                .collect();
            for (raw, result) in group.iter().zip(encoded) {
                let (stored, planes) = result.map_err(|reason| {
                    Error::InvalidArgument(format!("tensor {:?}: codec {} failed: {reason}", t.name, codec.id()))
                })?;
                file.write_all(&stored).map_err(io)?;
                chunks.push(Chunk::new(cursor, stored.len() as u64, raw.len() as u64, planes));
                cursor += stored.len() as u64;
            }
            if cursor - synced >= WRITEBACK_EVERY {
                start_writeback(file, data_start + synced, cursor - synced);
                synced = cursor;
            }
        }
        header
            .tensors
            .push(entry(t, [begin, cursor], Some(chunks), filter.as_ref()));
    }
    let text = header_bytes(header, data_start);
    let preamble = Preamble {
        flags,
        header_len: text.len() as u64,
    }
    .encode();
    file.write_all_at(&preamble, 0).map_err(io)?;
    file.write_all_at(&text, PREAMBLE_LEN).map_err(io)?;
    let end = data_start + cursor;
    file.seek(SeekFrom::Start(end)).map_err(io)?;
    match plan.checksum {
        None => Ok(None),
        Some(algorithm) => {
            let mut hasher = algorithm.hasher();
            hasher.update(&text);
            let mut buf = vec![0u8; WRITE_PIECE];
            let mut at = data_start;
            while at < end {
                let n = WRITE_PIECE.min((end - at) as usize);
                file.read_exact_at(&mut buf[..n], at).map_err(io)?;
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Ok(Some(hasher.finish()))
        }
    }
}

fn entry(
    t: &TensorData<'_>,
    offsets: [u64; 2],
    chunks: Option<Vec<Chunk>>,
    filter: Option<&SelectedFilter>,
) -> TensorHeader {
    TensorHeader {
        name: t.name.clone(),
        dtype: t.dtype.clone(),
        shape: t.shape.clone(),
        offsets,
        chunks,
        filter: filter.map(|(f, params, _)| FilterHeader {
            id: f.id().to_owned(),
            params: params.clone(),
        }),
        metadata: t.metadata.clone(),
    }
}

/// Raw lengths of the chunks of a tensor.
///
/// A chunk holds whole rows (slices along the first dimension) when a row
/// fits in `chunk_bytes`; a longer row is split into pieces of whole
/// elements. Zero-size tensors have no chunks.
pub fn chunk_lengths(shape: &[u64], item_size: u64, nbytes: u64, chunk_bytes: u64) -> Vec<u64> {
    if nbytes == 0 {
        return Vec::new();
    }
    let row = match shape.first() {
        Some(&rows) if rows > 0 => nbytes / rows,
        _ => nbytes,
    };
    let piece = if row <= chunk_bytes {
        (chunk_bytes / row).max(1) * row
    } else {
        (chunk_bytes / item_size).max(1) * item_size
    };
    let mut out = Vec::with_capacity(nbytes.div_ceil(piece) as usize);
    let mut left = nbytes;
    while left > 0 {
        let n = piece.min(left);
        out.push(n);
        left -= n;
    }
    out
}

/// Ask the kernel to start writing back a range, so the final fsync waits less.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a valid descriptor; failure is harmless.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_whole_rows() {
        // 1000 rows of 4 KiB: 256 rows per 1 MiB chunk.
        let lens = chunk_lengths(&[1000, 1024], 4, 4096 * 1000, 1 << 20);
        assert_eq!(lens.iter().sum::<u64>(), 4096 * 1000);
        assert!(lens[..lens.len() - 1].iter().all(|&l| l == 256 * 4096));
        assert!(lens.iter().all(|&l| l % 4096 == 0));
    }

    #[test]
    fn long_rows_split_at_elements() {
        let lens = chunk_lengths(&[2, 1_000_000], 2, 4_000_000, 1 << 20);
        assert_eq!(lens.iter().sum::<u64>(), 4_000_000);
        assert!(lens.iter().all(|&l| l % 2 == 0 && l <= 1 << 20));
    }

    #[test]
    fn scalars_and_empty() {
        assert_eq!(chunk_lengths(&[], 8, 8, 1 << 20), vec![8]);
        assert!(chunk_lengths(&[0, 5], 4, 0, 1 << 20).is_empty());
        assert_eq!(chunk_lengths(&[3], 3, 9, 4), vec![3, 3, 3]);
    }
}
