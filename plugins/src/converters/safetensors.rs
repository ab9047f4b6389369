//! The `safetensors` converter: Hugging Face `.safetensors` files in and out,
//! through the `safetensors` crate.
//!
//! Registry id `"safetensors"`, extension `safetensors`.
//!
//! # Import (`.safetensors` → `.deathtensors`)
//!
//! The source is memory-mapped and parsed with
//! [`SafeTensors::read_metadata`] (the crate's validation: header size,
//! contiguous offsets, byte lengths that match dtype and shape). Each tensor
//! is handed to the writer as a slice of the map, so the bytes go from the
//! page cache to the new file tensor by tensor: the pages are file-backed and
//! reclaimable, and the only anonymous memory is the writer's per-chunk
//! buffers (compression) — never a copy of the file. The destination is
//! written atomically with the caller's [`WriteOptions`] (codec, checksum).
//! Tensors keep the order of their bytes in the source (empty tensors at one
//! offset by name), or the order recorded by an export (below); global
//! metadata keys are sorted, since safetensors keeps them in a map without
//! order.
//!
//! # Import by ranges (a remote source)
//!
//! [`import_from`] converts a source it reads through a
//! [`ByteSource`] (a Hub file read by HTTP range) without a local copy: the
//! 8-byte length (the crate's 100 MB header limit checked before the header
//! is fetched), the header, parsed into the crate's [`Metadata`] (the same
//! validation), and a check that the tensors end exactly at the source's
//! length. Each tensor becomes an [`Entry::Pull`], read by the writer piece
//! by piece as it writes it, so memory stays bounded whatever the source's
//! size. The output is byte for byte what [`import_file`] writes.
//!
//! # Export (`.deathtensors` → `.safetensors`)
//!
//! The file is laid out as the safetensors crate lays out its own: a header
//! padded with spaces to 8 bytes, tensors sorted by dtype alignment, then
//! name. The header is built with the crate's types, and the crate parses it
//! back (its checks of offsets, dtypes and shapes) before anything is
//! written; its `__metadata__` keys are sorted, so one source always gives
//! the same bytes. The tensors follow one at a time: an uncompressed one is a
//! borrowed slice of a memory map of the source; a compressed one is decoded
//! into one buffer and dropped once written. Peak memory is bounded by the
//! largest tensor. Everything goes through one [`AtomicFile`], like every
//! other writer: a locked temporary file in the destination's folder
//! (removed by the next writer if the process dies), given the replaced
//! file's mode, synced and renamed over the destination. (The crate's
//! `serialize_to_file` renames a temporary file of its own over the path it
//! is given, so it could not write into ours.)
//!
//! Refused, with an error naming the tensor: dtypes safetensors lacks
//! (`C128`, third-party dtypes), sparse tensors (a `layout` or `part_of`
//! entry: densify them first), and a tensor named `__metadata__`. A second
//! name of a tensor (`alias_of`, tied weights) is written as a tensor of its
//! own with a copy of the bytes, since safetensors has no aliases; importing
//! the result gives two independent tensors.
//!
//! # Dtypes
//!
//! Bit-exact both ways for every dtype both formats share; the ids are the
//! same in both: `BOOL U8 I8 U16 I16 U32 I32 U64 I64 F16 BF16 F32 F64 C64
//! F8_E4M3 F8_E5M2` (`F8_E4M3` is torch's `float8_e4m3fn` in both). Importing a
//! safetensors dtype deathtensors lacks (`F4`, `F6_*`, `F8_E8M0`,
//! `F8_E4M3FNUZ`, `F8_E5M2FNUZ`) is an error.
//!
//! # Metadata
//!
//! safetensors metadata (`__metadata__`) maps strings to strings; deathtensors
//! metadata is any JSON, global and per tensor. An export writes:
//!
//! - each global metadata value that is a JSON string, as is;
//! - each other global value as its compact JSON text, and the JSON array of
//!   those keys under [`JSON_KEYS_KEY`] (`"__deathtensors_json__"`);
//! - per-tensor metadata, as the JSON object `{tensor name: {key: value}}` of
//!   the tensors that have any, under [`TENSOR_METADATA_KEY`]
//!   (`"__deathtensors_tensor_metadata__"`);
//! - the deathtensors tensor order, as a JSON array of names under
//!   [`TENSOR_ORDER_KEY`] (`"__deathtensors_tensor_order__"`), only when it
//!   differs from the order an import restores without it: the order of
//!   their bytes (dtype alignment descending, then name), and by name among
//!   empty tensors, which share an offset.
//!
//! Example: global `{"model": "mlp", "epoch": 3, "cfg": {"lr": 0.1}}` and
//! metadata `{"layer": 1}` on tensor `w` become
//!
//! ```json
//! {"__deathtensors_json__": "[\"epoch\",\"cfg\"]",
//!  "__deathtensors_tensor_metadata__": "{\"w\":{\"layer\":1}}",
//!  "cfg": "{\"lr\":0.1}", "epoch": "3", "model": "mlp"}
//! ```
//!
//! (keys sorted, so that one source always exports to the same bytes).
//!
//! An import reverses this: the keys listed in `__deathtensors_json__` are
//! decoded back to their JSON values, per-tensor metadata and order are
//! restored, and the reserved keys are removed. Files written by other tools
//! have no reserved keys, so every value imports as a string. Reserved keys
//! that are not valid JSON of the expected shape make the import fail; names
//! they list that the file does not hold are ignored. A deathtensors global
//! metadata key equal to a reserved key cannot be exported.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use deathtensors::atomic::AtomicFile;
use deathtensors::format::TensorInfo;
use deathtensors::reader::DtReader;
use deathtensors::registry::{self, Converter, Plugin};
use deathtensors::writer::{check_metadata_nesting, write_entries, ByteSource, Entry, TensorData, WriteOptions};
use deathtensors::{Error, Result};
use memmap2::{Mmap, MmapMut, UncheckedAdvice};
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use serde_json::{Map, Value};

/// The key of a safetensors header that holds the file's string metadata (not a tensor).
const METADATA_KEY: &str = "__metadata__";
/// Reserved `__metadata__` key: JSON array of the global keys whose values are JSON text.
pub const JSON_KEYS_KEY: &str = "__deathtensors_json__";
/// Reserved `__metadata__` key: JSON object `{tensor name: metadata object}`.
pub const TENSOR_METADATA_KEY: &str = "__deathtensors_tensor_metadata__";
/// Reserved `__metadata__` key: JSON array of tensor names in deathtensors order.
pub const TENSOR_ORDER_KEY: &str = "__deathtensors_tensor_order__";
/// Every reserved key.
pub const RESERVED_KEYS: [&str; 3] = [JSON_KEYS_KEY, TENSOR_METADATA_KEY, TENSOR_ORDER_KEY];

/// Bytes of the little-endian header length that starts every safetensors file.
const LEN_PREFIX: u64 = 8;

/// Hugging Face safetensors.
pub struct SafetensorsConverter;

impl Plugin for SafetensorsConverter {
    fn id(&self) -> &'static str {
        "safetensors"
    }
    fn summary(&self) -> &'static str {
        "Hugging Face .safetensors files, in and out (bit-exact; JSON metadata kept in reserved keys)"
    }
}

deathtensors::register_converter!(SafetensorsConverter);

impl Converter for SafetensorsConverter {
    fn extensions(&self) -> &'static [&'static str] {
        &["safetensors"]
    }

    fn import(&self, src: &Path, dst: &Path, options: &WriteOptions) -> Result<()> {
        import_file(src, dst, options)
    }

    fn import_from(
        &self,
        source: &dyn ByteSource,
        len: u64,
        label: &str,
        dst: &Path,
        options: &WriteOptions,
    ) -> Result<()> {
        import_from(source, len, label, dst, options)
    }

    fn export(&self, src: &Path, dst: &Path) -> Result<()> {
        export_file(src, dst)
    }
}

/// The safetensors dtype of a deathtensors dtype id, if safetensors has it.
pub fn safetensors_dtype(id: &str) -> Option<Dtype> {
    Some(match id {
        "BOOL" => Dtype::BOOL,
        "U8" => Dtype::U8,
        "I8" => Dtype::I8,
        "U16" => Dtype::U16,
        "I16" => Dtype::I16,
        "U32" => Dtype::U32,
        "I32" => Dtype::I32,
        "U64" => Dtype::U64,
        "I64" => Dtype::I64,
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "F32" => Dtype::F32,
        "F64" => Dtype::F64,
        "F8_E4M3" => Dtype::F8_E4M3,
        "F8_E5M2" => Dtype::F8_E5M2,
        "C64" => Dtype::C64,
        _ => return None,
    })
}

/// The deathtensors dtype id of a safetensors dtype, if deathtensors has it.
pub fn deathtensors_dtype(dtype: Dtype) -> Option<&'static str> {
    Some(match dtype {
        Dtype::BOOL => "BOOL",
        Dtype::U8 => "U8",
        Dtype::I8 => "I8",
        Dtype::U16 => "U16",
        Dtype::I16 => "I16",
        Dtype::U32 => "U32",
        Dtype::I32 => "I32",
        Dtype::U64 => "U64",
        Dtype::I64 => "I64",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::F32 => "F32",
        Dtype::F64 => "F64",
        Dtype::F8_E4M3 => "F8_E4M3",
        Dtype::F8_E5M2 => "F8_E5M2",
        Dtype::C64 => "C64",
        _ => return None,
    })
}

/// A source that is not a valid safetensors file.
fn bad_source(src: impl std::fmt::Display, reason: impl std::fmt::Display) -> Error {
    Error::InvalidHeader(format!("{src} is not a valid safetensors file: {reason}"))
}

/// The largest header the `safetensors` crate reads (its `MAX_HEADER_SIZE`):
/// a source read by ranges is held to the same limit before its header is fetched.
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Unknown plugin ids are usage errors: report them before reading anything.
fn check_plugin_ids(options: &WriteOptions) -> Result<()> {
    if let Some(codec) = &options.codec {
        registry::codecs()?.get(codec)?;
    }
    if let Some(checksum) = &options.checksum {
        registry::checksums()?.get(checksum)?;
    }
    Ok(())
}

/// One tensor of a source, checked: what the new file says of it, and where its bytes are.
struct SourceTensor {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    /// Its bytes, as offsets from the start of the source file.
    range: std::ops::Range<u64>,
    metadata: Map<String, Value>,
}

/// What a source's header says, in deathtensors terms: the tensors in the
/// order to write them, and the global metadata.
struct SourceLayout {
    tensors: Vec<SourceTensor>,
    global: Map<String, Value>,
}

/// The tensors and metadata of a source whose header (`header_len` bytes,
/// validated by the crate) gave `metadata`: reserved keys decoded, dtypes
/// mapped, offsets made absolute. `src` names the source in errors.
fn source_layout(src: &dyn std::fmt::Display, header_len: usize, metadata: &Metadata) -> Result<SourceLayout> {
    let data_start = LEN_PREFIX
        .checked_add(header_len as u64)
        .ok_or_else(|| bad_source(src, "header length overflows"))?;
    // In the order of their bytes; tensors at the same offsets (empty ones)
    // by name: the crate breaks such ties in its hash map's random order, which
    // made two imports of one file differ.
    let mut names = metadata.offset_keys();
    names.sort_by_cached_key(|n| (metadata.info(n).map(|i| i.data_offsets), n.clone()));
    let decoded = decode_metadata(metadata.metadata().clone().unwrap_or_default(), &names)
        .map_err(|reason| bad_source(src, reason))?;
    // Metadata nested deeper than a header may be is the source's fault: a
    // format error naming it, not a usage error from the writer.
    check_metadata_nesting(
        &decoded.global,
        decoded.tensor_metadata.iter().map(|(n, m)| (n.as_str(), m)),
    )
    .map_err(|e| bad_source(src, e))?;

    let mut tensors = Vec::with_capacity(names.len());
    let mut tensor_metadata = decoded.tensor_metadata;
    for name in decoded.order {
        let info = metadata
            .info(&name)
            .ok_or_else(|| bad_source(src, format_args!("tensor {name:?} is listed but has no entry")))?;
        let dtype = deathtensors_dtype(info.dtype).ok_or_else(|| {
            Error::UnsupportedDtype(format!(
                "{src}: tensor {name:?} has the safetensors dtype {:?}, which deathtensors has no dtype for",
                info.dtype
            ))
        })?;
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        let item_size = registry::dtypes()?.get(dtype)?.item_size();
        if deathtensors::format::tensor_nbytes(&shape, item_size).is_none() {
            // The crate takes it (an empty tensor of shape [0, 2^63]); the format does not.
            return Err(bad_source(
                src,
                format_args!(
                    "tensor {name:?}: shape {shape:?} is too large for the deathtensors format \
                     (its non-zero dimensions times the item size must fit in 63 bits)"
                ),
            ));
        }
        let (begin, end) = info.data_offsets;
        let range = data_start
            .checked_add(begin as u64)
            .zip(data_start.checked_add(end as u64))
            .map(|(b, e)| b..e)
            .ok_or_else(|| bad_source(src, format_args!("tensor {name:?}: offsets {begin}..{end} overflow")))?;
        tensors.push(SourceTensor {
            shape,
            metadata: tensor_metadata.remove(&name).unwrap_or_default(),
            name,
            dtype,
            range,
        });
    }
    Ok(SourceLayout {
        tensors,
        global: decoded.global,
    })
}

/// BOOL bytes other than 0x00 and 0x01 are true to every reader (safetensors,
/// torch, ours); the writer takes only 0 and 1, so such bytes are written as 1.
fn canonical_bools(bytes: &mut [u8]) {
    for b in bytes {
        *b = u8::from(*b != 0);
    }
}

/// Read the safetensors file `src` and write the `.deathtensors` file `dst`
/// (see the [module docs](self)).
///
/// # Errors
/// I/O errors; [`Error::InvalidHeader`] for a source the `safetensors` crate
/// refuses, a dtype deathtensors lacks, or malformed reserved metadata;
/// anything [`write_entries`] refuses (an unknown codec or checksum id).
pub fn import_file(src: &Path, dst: &Path, options: &WriteOptions) -> Result<()> {
    check_plugin_ids(options)?;
    let meta = std::fs::metadata(src).map_err(|e| Error::io(src, e))?;
    if !meta.is_file() {
        let reason = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(Error::io(
            src,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
        ));
    }
    if meta.len() < LEN_PREFIX {
        return Err(bad_source(
            src.display(),
            format_args!("it has {} bytes, fewer than the 8-byte header length", meta.len()),
        ));
    }
    let file = File::open(src).map_err(|e| Error::io(src, e))?;
    // SAFETY: a read-only shared map of a regular file we hold open. As with
    // every mapped reader (safetensors' own included), another process that
    // truncates the file while we read it would fault us; the bytes are
    // otherwise plain data, validated by the crate before any slice is taken.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(src, e))?;
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential); // a hint; fine if refused
    let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| bad_source(src.display(), e))?;
    let layout = source_layout(&src.display(), header_len, &metadata)?;

    let mut found = Vec::with_capacity(layout.tensors.len());
    for t in layout.tensors {
        let data = usize::try_from(t.range.start)
            .ok()
            .zip(usize::try_from(t.range.end).ok())
            .and_then(|(b, e)| map.get(b..e))
            .ok_or_else(|| {
                bad_source(
                    src.display(),
                    format_args!("tensor {:?}: offsets {:?} are out of range", t.name, t.range),
                )
            })?;
        let fixed = (t.dtype == "BOOL" && data.iter().any(|&b| b > 1)).then(|| {
            let mut bytes = data.to_vec();
            canonical_bools(&mut bytes);
            bytes
        });
        found.push((t, data, fixed));
    }
    let entries: Vec<Entry> = found
        .iter()
        .map(|(t, data, fixed)| {
            Entry::Data(TensorData {
                name: t.name.clone(),
                dtype: t.dtype.to_owned(),
                shape: t.shape.clone(),
                data: fixed.as_deref().unwrap_or(data),
                metadata: t.metadata.clone(),
            })
        })
        .collect();
    write_entries(dst, &entries, &layout.global, options)
}

/// A source's BOOL tensor, read with [`canonical_bools`] applied.
struct CanonicalBools<'a>(&'a dyn ByteSource);

impl ByteSource for CanonicalBools<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read_at(offset, buf)?;
        canonical_bools(buf);
        Ok(())
    }
}

/// Read a safetensors file of `len` bytes through `source` (`label` names it
/// in errors) and write the `.deathtensors` file `dst`, as [`import_file`]
/// does, without a local copy: the header is read whole (at most the crate's
/// 100 MB limit, checked before it is read), then each tensor's bytes as the
/// writer writes them, a piece at a time.
///
/// # Errors
/// As [`import_file`], plus what `source` fails with; a header whose
/// tensors do not end exactly at `len` is an [`Error::InvalidHeader`].
pub fn import_from(source: &dyn ByteSource, len: u64, label: &str, dst: &Path, options: &WriteOptions) -> Result<()> {
    check_plugin_ids(options)?;
    if len < LEN_PREFIX {
        return Err(bad_source(
            label,
            format_args!("it has {len} bytes, fewer than the 8-byte header length"),
        ));
    }
    let mut prefix = [0u8; LEN_PREFIX as usize];
    source.read_at(0, &mut prefix)?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_LEN {
        return Err(bad_source(
            label,
            format_args!("its header of {header_len} bytes is over the limit of {MAX_HEADER_LEN}"),
        ));
    }
    if header_len > len - LEN_PREFIX {
        return Err(bad_source(
            label,
            format_args!("its header of {header_len} bytes does not fit in its {len} bytes"),
        ));
    }
    let mut text = vec![0u8; header_len as usize];
    source.read_at(LEN_PREFIX, &mut text)?;
    let text =
        std::str::from_utf8(&text).map_err(|e| bad_source(label, format_args!("its header is not UTF-8: {e}")))?;
    // The crate's own checks (contiguous offsets, lengths that match dtype and shape).
    let metadata: Metadata = serde_json::from_str(text).map_err(|e| bad_source(label, e))?;
    let end = LEN_PREFIX + header_len + metadata.data_len() as u64;
    if end != len {
        return Err(bad_source(
            label,
            format_args!("its tensors end at byte {end}, but it has {len} bytes"),
        ));
    }
    let layout = source_layout(&label, header_len as usize, &metadata)?;
    let bools = CanonicalBools(source);
    let entries: Vec<Entry> = layout
        .tensors
        .into_iter()
        .map(|t| Entry::Pull {
            source: if t.dtype == "BOOL" { &bools } else { source },
            offset: t.range.start,
            name: t.name,
            dtype: t.dtype.to_owned(),
            shape: t.shape,
            metadata: t.metadata,
        })
        .collect();
    write_entries(dst, &entries, &layout.global, options)
}

/// Read the `.deathtensors` file `src` and write the safetensors file `dst`
/// (see the [module docs](self)). `src` and `dst` may be the same path.
///
/// # Errors
/// Anything [`DtReader::open`] and reading a tensor can fail with;
/// [`Error::InvalidArgument`] for what safetensors cannot express (a complex
/// or third-party dtype, a sparse tensor, a tensor named `__metadata__`, a
/// global metadata key that is reserved); I/O errors writing `dst`.
pub fn export_file(src: &Path, dst: &Path) -> Result<()> {
    let reader = DtReader::open(src)?;
    let mut views = Vec::with_capacity(reader.tensors().len());
    let mut tensor_metadata = Map::new();
    for info in reader.tensors() {
        let name = &info.name;
        if let Some(owner) = &info.part_of {
            return Err(Error::InvalidArgument(format!(
                "tensor {owner:?} is sparse ({name:?} is one of its parts): safetensors holds only dense \
                 tensors; densify it before converting"
            )));
        }
        if let Some(layout) = &info.layout {
            return Err(Error::InvalidArgument(format!(
                "tensor {name:?} is sparse (layout {}): safetensors holds only dense tensors; densify it \
                 before converting",
                layout.id
            )));
        }
        let id = info.dtype.id();
        let dtype = safetensors_dtype(id).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "tensor {name:?} has dtype {id}, which safetensors cannot store (it has no C128 or \
                 third-party dtypes); convert the tensor to a supported dtype first"
            ))
        })?;
        if name == METADATA_KEY {
            return Err(Error::InvalidArgument(
                "a tensor named \"__metadata__\" cannot be stored in safetensors, where that key holds the \
                 metadata; rename it first"
                    .to_owned(),
            ));
        }
        let shape = info
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::tensor(name, "shape does not fit this platform's usize"))?;
        let len = usize::try_from(info.nbytes).map_err(|_| Error::OutOfMemory(info.nbytes))?;
        let mapped = match (&info.chunks, len) {
            (None, 1..) => {
                let (map, offset, _) = reader.tensor_mapping(name)?;
                Some((map, offset))
            }
            _ => None,
        };
        if !info.metadata.is_empty() {
            tensor_metadata.insert(name.clone(), Value::Object(info.metadata.clone()));
        }
        views.push(LazyTensor {
            reader: &reader,
            info,
            dtype,
            shape,
            len,
            mapped,
        });
    }
    let order: Vec<&str> = views.iter().map(|v| v.info.name.as_str()).collect();
    let stored = stored_order(&views);
    let offsets = data_offsets(&views, &stored)?;
    // What an import restores without the order key: the order of the bytes,
    // tensors at one offset (empty ones) by name.
    let mut restored: Vec<((usize, usize), &str)> = offsets.iter().zip(&stored).map(|(&o, &i)| (o, order[i])).collect();
    restored.sort_unstable();
    let restored: Vec<&str> = restored.into_iter().map(|(_, name)| name).collect();
    let data_info = encode_metadata(reader.metadata(), tensor_metadata, &order, &restored)?;
    let header = safetensors_header(&views, &stored, &offsets, data_info)?;

    let mut out = AtomicFile::create(dst)?;
    let temp = out.path().to_owned();
    let mut file = std::io::BufWriter::with_capacity(1 << 20, out.file());
    let io = |e| Error::io(&temp, e);
    file.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    file.write_all(&header).map_err(io)?;
    for &i in &stored {
        let view = &views[i];
        file.write_all(&view.read()?).map_err(io)?;
        view.release();
    }
    file.flush().map_err(io)?;
    drop(file);
    out.commit(true) // dropping `out` on an error above removes the temporary file
}

/// The order in which safetensors files store tensors (the crate's
/// `serialize` and every file it writes): dtype descending (by alignment),
/// then name. Indices into `views`.
fn stored_order(views: &[LazyTensor<'_>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..views.len()).collect();
    order.sort_by(|&l, &r| {
        let (l, r) = (&views[l], &views[r]);
        r.dtype.cmp(&l.dtype).then(l.info.name.cmp(&r.info.name))
    });
    order
}

/// Where the bytes of each tensor of `views` lie in the data of a safetensors
/// file that stores them in the order `stored`: `(start, end)`, in that order.
///
/// # Errors
/// [`Error::InvalidArgument`] when they add up past `usize`.
fn data_offsets(views: &[LazyTensor<'_>], stored: &[usize]) -> Result<Vec<(usize, usize)>> {
    let mut at = 0usize;
    stored
        .iter()
        .map(|&i| {
            let start = at;
            at = at.checked_add(views[i].len).ok_or_else(|| {
                Error::InvalidArgument(
                    "safetensors cannot hold this file: its tensors add up to more bytes than this platform can \
                     address"
                        .to_owned(),
                )
            })?;
            Ok((start, at))
        })
        .collect()
}

/// The header of the safetensors file of `views` stored in the order
/// `stored` at `offsets` (see [`data_offsets`]), with `data_info` as its
/// `__metadata__` (left out when empty):
/// JSON padded with spaces to a multiple of 8 bytes, as the crate writes it,
/// but with the `__metadata__` keys sorted, so that one source always gives
/// the same bytes (the crate writes them in hash-map order, which changes
/// from run to run). The crate parses it back before anything is written:
/// its own checks (contiguous offsets, sizes that match dtype and shape)
/// hold for what we write.
///
/// # Errors
/// [`Error::InvalidArgument`] when safetensors refuses the header (over its
/// 100 MB limit, or a check of the crate's).
fn safetensors_header(
    views: &[LazyTensor<'_>],
    stored: &[usize],
    offsets: &[(usize, usize)],
    data_info: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let refused = |why: String| Error::InvalidArgument(format!("safetensors cannot hold this file: {why}"));
    let mut doc = Map::new();
    if !data_info.is_empty() {
        let sorted: BTreeMap<String, String> = data_info.into_iter().collect();
        doc.insert(METADATA_KEY.to_owned(), serde_json::json!(sorted));
    }
    for (&i, &data_offsets) in stored.iter().zip(offsets) {
        let view = &views[i];
        let info = safetensors::tensor::TensorInfo {
            dtype: view.dtype,
            shape: view.shape.clone(),
            data_offsets,
        };
        doc.insert(
            view.info.name.clone(),
            serde_json::to_value(info).map_err(|e| refused(e.to_string()))?,
        );
    }
    let mut text = serde_json::to_vec(&doc).map_err(|e| refused(e.to_string()))?;
    text.resize(text.len().next_multiple_of(8), b' ');
    if text.len() as u64 > MAX_HEADER_LEN {
        return Err(refused(format!(
            "its header would have {} bytes, over the {MAX_HEADER_LEN} that safetensors reads",
            text.len()
        )));
    }
    serde_json::from_slice::<Metadata>(&text).map_err(|e| refused(e.to_string()))?;
    Ok(text)
}

/// One tensor of the source, read only when its bytes are written.
struct LazyTensor<'a> {
    reader: &'a DtReader,
    info: &'a TensorInfo,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
    /// The file's memory map and the tensor's offset in it (uncompressed tensors).
    mapped: Option<(Arc<MmapMut>, usize)>,
}

impl LazyTensor<'_> {
    /// The tensor's bytes: borrowed from the map when uncompressed, else
    /// decoded into one buffer.
    fn read(&self) -> Result<Cow<'_, [u8]>> {
        if let Some((map, offset)) = &self.mapped {
            return offset
                .checked_add(self.len)
                .and_then(|end| map.get(*offset..end))
                .map(Cow::Borrowed)
                .ok_or_else(|| Error::tensor(&self.info.name, "byte range lies outside the mapped file"));
        }
        let mut out = Vec::new();
        out.try_reserve_exact(self.len)
            .map_err(|_| Error::OutOfMemory(self.info.nbytes))?;
        out.resize(self.len, 0);
        self.reader.read_into(self.info, &mut out)?;
        Ok(Cow::Owned(out))
    }

    /// Once its bytes are written, drop the mapped pages of an uncompressed
    /// tensor from this process's resident set, so that an export does not
    /// keep the whole source resident: the pages stay in the page cache, and
    /// the map would fault them back in from the file if touched again.
    fn release(&self) {
        if let Some((map, offset)) = &self.mapped {
            // SAFETY: the bytes [offset, offset + len) were written and the borrow
            // `read` handed out is gone (`&self` borrows nothing of the map). The
            // map is a private map of the source that nothing writes, so
            // MADV_DONTNEED cannot change what it reads: dropped pages fault back
            // in with the file's bytes. Failure is harmless.
            let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, *offset, self.len) };
        }
    }
}

/// The safetensors `__metadata__` of an export (see the [module docs](self)).
///
/// `order` is the deathtensors tensor order, `restored` the order an import
/// of the safetensors file gives its tensors without the order key (the
/// order of their bytes, tensors at one offset by name).
///
/// # Errors
/// [`Error::InvalidArgument`] when `global` uses a reserved key.
pub fn encode_metadata(
    global: &Map<String, Value>,
    tensor_metadata: Map<String, Value>,
    order: &[&str],
    restored: &[&str],
) -> Result<HashMap<String, String>> {
    let mut out = HashMap::with_capacity(global.len() + RESERVED_KEYS.len());
    let mut json_keys = Vec::new();
    for (key, value) in global {
        if RESERVED_KEYS.contains(&key.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "global metadata key {key:?} is reserved by the safetensors converter; rename it before converting"
            )));
        }
        let text = match value {
            Value::String(s) => s.clone(),
            other => {
                json_keys.push(Value::String(key.clone()));
                other.to_string()
            }
        };
        out.insert(key.clone(), text);
    }
    if !json_keys.is_empty() {
        out.insert(JSON_KEYS_KEY.to_owned(), Value::Array(json_keys).to_string());
    }
    if !tensor_metadata.is_empty() {
        out.insert(
            TENSOR_METADATA_KEY.to_owned(),
            Value::Object(tensor_metadata).to_string(),
        );
    }
    if order != restored {
        out.insert(TENSOR_ORDER_KEY.to_owned(), serde_json::json!(order).to_string());
    }
    Ok(out)
}

/// What an import takes from a safetensors `__metadata__`.
#[derive(Debug, Default, PartialEq)]
pub struct DecodedMetadata {
    /// Global metadata, reserved keys removed and JSON values restored (keys sorted).
    pub global: Map<String, Value>,
    /// Per-tensor metadata by tensor name.
    pub tensor_metadata: HashMap<String, Map<String, Value>>,
    /// Every tensor name of the file, in the order to write them.
    pub order: Vec<String>,
}

/// JSON text held in a metadata value, read as strictly as a header: a
/// duplicate key is refused (which of the two would win is ambiguous) and
/// nesting is bounded.
fn strict_json(text: &str) -> Result<Value> {
    deathtensors::format::parse_json_strict(text.as_bytes())
}

/// Undo [`encode_metadata`]. `names` are the file's tensors in stored order.
///
/// # Errors
/// A message when a reserved key holds text that is not JSON of the expected
/// shape, or a key listed in `__deathtensors_json__` holds invalid JSON.
pub fn decode_metadata(raw: HashMap<String, String>, names: &[String]) -> std::result::Result<DecodedMetadata, String> {
    let mut raw: BTreeMap<String, String> = raw.into_iter().collect();
    let reserved = |raw: &mut BTreeMap<String, String>, key: &str| -> std::result::Result<Option<Value>, String> {
        raw.remove(key)
            .map(|text| strict_json(&text).map_err(|e| format!("metadata key {key:?} is not JSON: {e}")))
            .transpose()
    };
    let json_keys = match reserved(&mut raw, JSON_KEYS_KEY)? {
        None => Vec::new(),
        Some(Value::Array(keys)) => keys
            .into_iter()
            .map(|k| match k {
                Value::String(s) => Ok(s),
                other => Err(format!("metadata key {JSON_KEYS_KEY:?} lists {other}, not a key")),
            })
            .collect::<std::result::Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "metadata key {JSON_KEYS_KEY:?} must be a JSON array, not {other}"
            ))
        }
    };
    let mut tensor_metadata = HashMap::new();
    match reserved(&mut raw, TENSOR_METADATA_KEY)? {
        None => {}
        Some(Value::Object(m)) => {
            for (name, value) in m {
                let Value::Object(md) = value else {
                    return Err(format!(
                        "metadata key {TENSOR_METADATA_KEY:?}: the metadata of {name:?} must be a JSON object"
                    ));
                };
                tensor_metadata.insert(name, md);
            }
        }
        Some(_) => return Err(format!("metadata key {TENSOR_METADATA_KEY:?} must be a JSON object")),
    }
    let mut order = Vec::with_capacity(names.len());
    match reserved(&mut raw, TENSOR_ORDER_KEY)? {
        None => {}
        Some(Value::Array(listed)) => {
            let present: HashSet<&str> = names.iter().map(String::as_str).collect();
            let mut seen = HashSet::new();
            for v in listed {
                let Value::String(name) = v else {
                    return Err(format!(
                        "metadata key {TENSOR_ORDER_KEY:?} lists {v}, not a tensor name"
                    ));
                };
                if present.contains(name.as_str()) && seen.insert(name.clone()) {
                    order.push(name);
                }
            }
        }
        Some(_) => return Err(format!("metadata key {TENSOR_ORDER_KEY:?} must be a JSON array")),
    }
    if order.len() < names.len() {
        let placed: HashSet<String> = order.iter().cloned().collect();
        order.extend(names.iter().filter(|n| !placed.contains(*n)).cloned());
    }
    let json_keys: HashSet<String> = json_keys.into_iter().collect();
    let mut global = Map::new();
    for (key, text) in raw {
        let value = if json_keys.contains(&key) {
            strict_json(&text).map_err(|e| format!("metadata key {key:?} is listed as JSON but is not: {e}"))?
        } else {
            Value::String(text)
        };
        global.insert(key, value);
    }
    Ok(DecodedMetadata {
        global,
        tensor_metadata,
        order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn dtype_ids_map_both_ways_with_matching_sizes() {
        crate::link();
        let reg = deathtensors::registry::dtypes().unwrap();
        let mut shared = 0;
        for id in reg.ids() {
            if let Some(d) = safetensors_dtype(id) {
                shared += 1;
                assert_eq!(deathtensors_dtype(d), Some(id));
                assert_eq!(d.bitsize(), 8 * reg.get(id).unwrap().item_size(), "{id}");
                assert_eq!(format!("{d:?}"), id);
            }
        }
        assert_eq!(shared, 16);
        assert_eq!(safetensors_dtype("C64"), Some(Dtype::C64));
        assert!(safetensors_dtype("C128").is_none());
        assert!(deathtensors_dtype(Dtype::F8_E8M0).is_none());
        assert!(deathtensors_dtype(Dtype::F8_E4M3FNUZ).is_none());
    }

    #[test]
    fn metadata_round_trips_every_json_type() {
        let global = obj(json!({
            "s": "text", "n": 3, "f": 0.1, "neg": -7, "big": u64::MAX, "t": true, "null": null,
            "list": [1, "a", null], "obj": {"k": [1.5]}, "looks_like_json": "[1, 2]"
        }));
        let per = obj(json!({"w": {"layer": 1, "name": "fc"}}));
        let raw = encode_metadata(&global, per.clone(), &["w", "b"], &["b", "w"]).unwrap();
        assert_eq!(raw["s"], "text");
        assert_eq!(raw["looks_like_json"], "[1, 2]");
        assert_eq!(raw["n"], "3");
        let names = vec!["b".to_owned(), "w".to_owned()];
        let back = decode_metadata(raw, &names).unwrap();
        assert_eq!(back.global, global);
        assert_eq!(back.tensor_metadata["w"], obj(per["w"].clone()));
        assert_eq!(back.order, ["w", "b"]);
    }

    #[test]
    fn plain_files_import_as_strings_and_reserved_keys_are_checked() {
        let raw: HashMap<String, String> = [("format".to_owned(), "pt".to_owned())].into();
        let names = vec!["a".to_owned()];
        let back = decode_metadata(raw, &names).unwrap();
        assert_eq!(back.global, obj(json!({"format": "pt"})));
        assert_eq!(back.order, ["a"]);

        let bad: HashMap<String, String> = [(JSON_KEYS_KEY.to_owned(), "{".to_owned())].into();
        assert!(decode_metadata(bad, &names).unwrap_err().contains(JSON_KEYS_KEY));
        let bad: HashMap<String, String> = [
            (JSON_KEYS_KEY.to_owned(), "[\"x\"]".to_owned()),
            ("x".to_owned(), "not json".to_owned()),
        ]
        .into();
        assert!(decode_metadata(bad, &names).unwrap_err().contains("\"x\""));

        let global = obj(json!({ JSON_KEYS_KEY: "x" }));
        let err = encode_metadata(&global, Map::new(), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
    }

    #[test]
    fn order_ignores_unknown_names_and_appends_missing_ones() {
        let raw: HashMap<String, String> = [(TENSOR_ORDER_KEY.to_owned(), r#"["c","zz","a","c"]"#.to_owned())].into();
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(decode_metadata(raw, &names).unwrap().order, ["c", "a", "b"]);
    }
}
