//! Writing `.deathtensors` files, atomically.
//!
//! The file is written to a temporary file in the target's directory, synced,
//! and renamed over the target, so an interrupted save never leaves a partial
//! file at the target path and readers of the old file keep reading it.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;

use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::atomic::AtomicFile;
use crate::chunk::{self, AppliedFilter};
use crate::direct;
use crate::error::{Error, Result};
use crate::format::{
    self, align_up, Chunk, CompressionHeader, FilterHeader, Header, LayoutHeader, Preamble, TensorHeader, TensorInfo,
    DEFAULT_CHUNK_BYTES, DEFAULT_MAX_HEADER_LEN, FLAG_CHECKSUM, FLAG_COMPRESSED, MAX_CHUNK_RAW_LEN, MAX_HEADER_DEPTH,
    PREAMBLE_LEN, TENSOR_ALIGNMENT,
};
use crate::reader::DtReader;
use crate::registry::{self, ChecksumAlgorithm, Codec, DtypeHandler, DtypeKind, Filter};

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

/// A random-access source of bytes that the writer reads as it writes them
/// (see [`Entry::Pull`]): a file read by ranges over the network, say.
pub trait ByteSource: Sync {
    /// Fill `buf` with the source's bytes at `offset`.
    ///
    /// # Errors
    /// Whatever reading fails with; the write is abandoned and returns it.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// Bytes in memory are a source too (a file held whole, a test's data).
impl ByteSource for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?));
        match range.and_then(|r| self.get(r)) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(Error::Truncated {
                what: "a read of bytes in memory",
                needed: offset.saturating_add(buf.len() as u64),
                available: self.len() as u64,
            }),
        }
    }
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
    /// Let a durable write of a large uncompressed file go around the page
    /// cache ([`direct`]). The default comes from the environment
    /// ([`direct::enabled_by_env`]: true unless `DEATHTENSORS_DIRECT_IO=0`).
    pub direct_io: bool,
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
            direct_io: direct::enabled_by_env(),
        }
    }
}

/// One entry of a file to write.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // a handful per write, built once: boxing would only add noise
pub enum Entry<'a> {
    /// A tensor given as bytes.
    Data(TensorData<'a>),
    /// A second name for an earlier tensor of this write (tied weights): no
    /// bytes are written; the header entry shares the target's bytes.
    Alias {
        /// The new name.
        name: String,
        /// Name of an earlier `Data` or `Copy` entry.
        target: String,
        /// Per-tensor metadata of the alias.
        metadata: Map<String, Value>,
    },
    /// A non-dense tensor (e.g. sparse COO): its primary part, which carries
    /// the layout, and its other parts, written as entries `part_of` it.
    /// `layout.parts` maps each part name to the name of its entry in `parts`.
    Layout {
        /// The primary part (e.g. sparse values), named as the tensor.
        primary: TensorData<'a>,
        /// The layout object of the header.
        layout: LayoutHeader,
        /// The other parts (e.g. sparse indices), under their entry names.
        parts: Vec<TensorData<'a>>,
    },
    /// A tensor whose bytes the writer reads from `source` while it writes
    /// them, a piece at a time (at most [`WriteOptions::chunk_bytes`] per
    /// thread for a compressed file, 8 MiB otherwise): memory stays bounded
    /// whatever the tensor's size. The bytes are taken as they are (BOOL bytes
    /// are not checked).
    Pull {
        /// Unique name.
        name: String,
        /// Dtype id (a registered dtype).
        dtype: String,
        /// Dimensions; the byte length follows from them and the dtype.
        shape: Vec<u64>,
        /// Per-tensor metadata.
        metadata: Map<String, Value>,
        /// Where the bytes are.
        source: &'a dyn ByteSource,
        /// The offset of the tensor's first byte in `source`.
        offset: u64,
    },
    /// A tensor of another open file, copied as stored (no decompression when
    /// the compression of source and destination agree), e.g. by append.
    Copy {
        /// The file to copy from.
        source: &'a DtReader,
        /// The tensor's name in `source` (and in the new file).
        name: String,
        /// Per-tensor metadata in the new file.
        metadata: Map<String, Value>,
    },
}

impl Entry<'_> {
    /// The tensor's name in the file to write.
    pub fn name(&self) -> &str {
        match self {
            Entry::Data(t) | Entry::Layout { primary: t, .. } => &t.name,
            Entry::Alias { name, .. } | Entry::Copy { name, .. } | Entry::Pull { name, .. } => name,
        }
    }
}

impl std::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Data(t) => f.debug_tuple("Data").field(&t.name).finish(),
            Entry::Layout { primary, layout, .. } => f
                .debug_struct("Layout")
                .field("name", &primary.name)
                .field("layout", &layout.id)
                .finish(),
            Entry::Alias { name, target, .. } => f
                .debug_struct("Alias")
                .field("name", name)
                .field("target", target)
                .finish(),
            Entry::Pull { name, offset, .. } => f
                .debug_struct("Pull")
                .field("name", name)
                .field("offset", offset)
                .finish(),
            Entry::Copy { source, name, .. } => f
                .debug_struct("Copy")
                .field("source", &source.path())
                .field("name", name)
                .finish(),
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
    let entries: Vec<Entry<'_>> = tensors.iter().cloned().map(Entry::Data).collect();
    write_entries(path, &entries, global_metadata, options)
}

/// Write `entries` (tensors, aliases, copies from other files) to `path` atomically.
///
/// `path` may be the file a `Copy` source reads: the source keeps reading its
/// open handle while the new file replaces the name.
///
/// # Errors
/// As [`write_file`]; also an alias whose target is unknown, later, or an alias.
pub fn write_entries(
    path: impl AsRef<Path>,
    entries: &[Entry<'_>],
    global_metadata: &Map<String, Value>,
    options: &WriteOptions,
) -> Result<()> {
    let path = path.as_ref();
    // An append or repack of the file in progress finishes first: committed
    // under it, the save would be undone by its result.
    let mut wait = || Ok(crate::atomic::wait_for_updates(path));
    write_entries_gated(path, entries, global_metadata, options, &mut wait)
}

/// [`write_entries`], calling `gate` once the new file is complete and
/// before it replaces `path`: an error from `gate` discards the new file,
/// and what it returns (a lock) is held until the new file is in place.
fn write_entries_gated(
    path: impl AsRef<Path>,
    entries: &[Entry<'_>],
    global_metadata: &Map<String, Value>,
    options: &WriteOptions,
    gate: &mut dyn FnMut() -> Result<Option<File>>,
) -> Result<()> {
    let plan = Plan::new(entries, options)?;
    check_metadata_nesting(
        global_metadata,
        plan.items.iter().map(|i| (i.name.as_str(), &i.metadata)),
    )?;
    let mut out = AtomicFile::create(path)?;
    let tmp_path = out.path().to_path_buf();
    let io = |e| Error::io(&tmp_path, e);
    let file = out.file();

    let mut header = Header {
        metadata: global_metadata.clone(),
        compression: plan.codec.map(|(c, level)| CompressionHeader {
            codec: c.id().to_owned(),
            level,
        }),
        checksum: plan.checksum.map(|c| c.id().to_owned()),
        tensors: Vec::with_capacity(entries.len()),
    };
    let mut flags = 0;
    if plan.codec.is_some() {
        flags |= FLAG_COMPRESSED;
    }
    if plan.checksum.is_some() {
        flags |= FLAG_CHECKSUM;
    }

    let digest = match plan.codec {
        None => write_uncompressed(file, &plan, &mut header, flags, &tmp_path)?,
        Some((codec, level)) => write_compressed(file, &plan, &mut header, flags, codec, level, &tmp_path)?,
    };
    if let Some(digest) = digest {
        file.write_all(&digest).map_err(io)?;
    }
    let _turn = gate()?;
    out.commit(options.durable)
}

/// Write `entries` (which copy from `source`, the file at `src`) to `path`
/// while `source`'s checksum footer is verified on another thread: stored
/// bytes are copied unchecked and get a fresh footer, so a file that the old
/// footer says is damaged must not come out verifying. The new file replaces
/// `path` only once the source has verified; when both fail, the verification
/// error is the one returned (a damaged source explains a failed decode).
/// A source without a footer is written as is.
fn write_verifying_source(
    path: &Path,
    entries: &[Entry<'_>],
    global_metadata: &Map<String, Value>,
    options: &WriteOptions,
    source: &DtReader,
    src: &Path,
) -> Result<()> {
    // The caller holds the update lock of `src` already: the gates never wait.
    if source.checksum().is_none() {
        return write_entries_gated(path, entries, global_metadata, options, &mut || Ok(None));
    }
    std::thread::scope(|scope| {
        let mut check = Some(scope.spawn(|| source.verify().map_err(|e| e.in_file(src))));
        let mut join = || {
            check.take().map_or(Ok(()), |handle| {
                handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        };
        let written = write_entries_gated(path, entries, global_metadata, options, &mut || join().map(|()| None));
        join().and(written)
    })
}

/// Add `new` entries to the file at `path` without decoding its tensors: the
/// old tensors are copied as stored into a new file that atomically replaces
/// the old one, so a crash at any moment leaves the old file intact. The
/// file keeps its codec, level and checksum algorithm (the footer is
/// recomputed); `extra_global_metadata` is merged over the file's global
/// metadata. A name that exists is an error unless `overwrite`, which
/// replaces that tensor in place (aliases of a replaced tensor keep the old
/// bytes as tensors of their own). Peak memory is a few copy buffers, not the
/// file's size. Concurrent appends to one file take turns
/// ([`lock_for_update`](crate::atomic::lock_for_update)), so none is lost.
/// A file with a checksum footer is verified (one more read of it, on
/// another thread while the new file is written) before the new file
/// replaces it, since its bytes are copied without being decoded and the new
/// footer would vouch for them.
///
/// # Errors
/// A name that exists without `overwrite`; anything [`write_entries`] refuses;
/// I/O and format errors from reading the old file; [`Error::ChecksumMismatch`]
/// (naming the file) when its footer does not match its contents.
pub fn append_file(
    path: impl AsRef<Path>,
    new: &[Entry<'_>],
    extra_global_metadata: &Map<String, Value>,
    overwrite: bool,
) -> Result<()> {
    let path = path.as_ref();
    let _updating = crate::atomic::lock_for_update(path)?;
    let source = DtReader::open(path)?;
    let new_names: std::collections::HashMap<String, usize> =
        new.iter().enumerate().map(|(i, e)| (e.name().to_owned(), i)).collect();
    if let Some(part) = source
        .tensors()
        .iter()
        .find(|t| t.part_of.is_some() && new_names.contains_key(&t.name))
    {
        return Err(Error::InvalidArgument(format!(
            "{:?} is a stored part of tensor {:?} in {}, not a tensor: it cannot be added or replaced on its own",
            part.name,
            part.part_of.as_deref().unwrap_or_default(),
            path.display()
        )));
    }
    if !overwrite {
        if let Some(name) = source.keys().find(|k| new_names.contains_key(*k)) {
            return Err(Error::InvalidArgument(format!(
                "tensor {name:?} is already in {}; pass overwrite=True to replace it",
                path.display()
            )));
        }
    }
    let mut placed = vec![false; new.len()];
    let mut entries = Vec::with_capacity(source.tensors().len() + new.len());
    for t in source.tensors() {
        if t.part_of.as_ref().is_some_and(|owner| new_names.contains_key(owner)) {
            continue; // a part of a tensor being replaced
        }
        if let Some(&i) = new_names.get(&t.name) {
            entries.push(new[i].clone());
            placed[i] = true;
            continue;
        }
        entries.push(match &t.alias_of {
            Some(target) if !new_names.contains_key(target) => Entry::Alias {
                name: t.name.clone(),
                target: target.clone(),
                metadata: t.metadata.clone(),
            },
            _ => Entry::Copy {
                source: &source,
                name: t.name.clone(),
                metadata: t.metadata.clone(),
            },
        });
    }
    entries.extend(new.iter().zip(&placed).filter(|(_, &p)| !p).map(|(e, _)| e.clone()));
    alias_targets_first(&mut entries);
    let mut global = source.metadata().clone();
    global.extend(extra_global_metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    let options = WriteOptions {
        codec: source.codec().map(|c| c.id().to_owned()),
        // The file's own level, unless its codec refuses it (a header written by
        // another tool): then the codec's default, so that the file can grow.
        level: source
            .layout()
            .header
            .compression
            .as_ref()
            .map(|c| c.level)
            .filter(|&level| source.codec().is_some_and(|c| c.check_level(level).is_ok())),
        checksum: source.checksum().map(|c| c.id().to_owned()),
        ..WriteOptions::default()
    };
    write_verifying_source(path, &entries, &global, &options, &source, path)
}

/// What [`repack_file`] changes. A field left `None` keeps the source's setting.
#[derive(Debug, Clone)]
pub struct RepackOptions {
    /// `Some(Some(id))` compresses with codec `id`, `Some(None)` stores the
    /// tensors raw, `None` keeps the source's codec.
    pub codec: Option<Option<String>>,
    /// Compression level. `None`: the source's when its codec is kept (its
    /// chunks are then copied as stored), otherwise the codec's default.
    pub level: Option<i32>,
    /// `Some(Some(id))` writes a footer with checksum algorithm `id`,
    /// `Some(None)` writes none, `None` keeps the source's algorithm (or its
    /// lack of a footer).
    pub checksum: Option<Option<String>>,
    /// fsync the file and its directory before returning (default true).
    pub durable: bool,
}

impl Default for RepackOptions {
    fn default() -> Self {
        RepackOptions {
            codec: None,
            level: None,
            checksum: None,
            durable: true,
        }
    }
}

/// Rewrite the file at `src` to `dst` with another codec, level or checksum
/// (`options`), keeping everything else: tensors and their order, per-tensor
/// and global metadata, aliases, sparse tensors. `dst` is replaced
/// atomically and may be `src` itself.
///
/// Tensors whose stored form does not change (same codec and level) are
/// copied as stored; the others are decoded and encoded again a piece at a
/// time, so memory stays at a few chunks per thread whatever the file's size.
/// A source with a checksum footer is verified (one more read of it, on
/// another thread while `dst` is written) before the new file replaces
/// `dst`: the new footer must not vouch for bytes the old one says are
/// damaged.
/// A repack waits for appends to `src` in progress, and they for it
/// ([`lock_for_update`](crate::atomic::lock_for_update)).
///
/// # Errors
/// A level without a codec, unknown codec or checksum ids, a level the codec
/// refuses ([`Error::InvalidArgument`], [`Error::UnknownPlugin`]);
/// [`Error::ChecksumMismatch`] (naming `src`) when its footer does not match;
/// format, I/O and corrupt-chunk errors of `src`, naming it; I/O errors
/// writing `dst`, which is then left as it was.
pub fn repack_file(src: impl AsRef<Path>, dst: impl AsRef<Path>, options: &RepackOptions) -> Result<()> {
    let (src, dst) = (src.as_ref(), dst.as_ref());
    let _updating = crate::atomic::lock_for_update(src)?;
    let source = DtReader::open(src).map_err(|e| foreign_source(e, src))?;
    let stored_codec = source.codec().map(|c| c.id().to_owned());
    let codec = options.codec.clone().unwrap_or_else(|| stored_codec.clone());
    if codec.is_none() && options.level.is_some() {
        return Err(Error::InvalidArgument(
            "a compression level needs a codec: the repacked file would be uncompressed".into(),
        ));
    }
    // The source's level when its codec is kept, unless the codec refuses it
    // (a header written by another tool): then the codec's default.
    let kept_level = source
        .layout()
        .header
        .compression
        .as_ref()
        .map(|c| c.level)
        .filter(|&level| source.codec().is_some_and(|c| c.check_level(level).is_ok()))
        .filter(|_| codec == stored_codec);
    let write = WriteOptions {
        codec,
        level: options.level.or(kept_level),
        checksum: options
            .checksum
            .clone()
            .unwrap_or_else(|| source.checksum().map(|c| c.id().to_owned())),
        durable: options.durable,
        ..WriteOptions::default()
    };
    let entries: Vec<Entry<'_>> = source
        .tensors()
        .iter()
        .map(|t| match &t.alias_of {
            Some(target) => Entry::Alias {
                name: t.name.clone(),
                target: target.clone(),
                metadata: t.metadata.clone(),
            },
            None => Entry::Copy {
                source: &source,
                name: t.name.clone(),
                metadata: t.metadata.clone(),
            },
        })
        .collect();
    write_verifying_source(dst, &entries, source.metadata(), &write, &source, src)
}

/// `e`, or for a source that is not a deathtensors file but is named like
/// one a converter reads (`.safetensors`), an [`Error::InvalidArgument`]
/// saying that it is imported, not repacked.
fn foreign_source(e: Error, src: &Path) -> Error {
    if !matches!(e.root(), Error::BadMagic { .. }) {
        return e;
    }
    let extension = src.extension().and_then(|x| x.to_str()).unwrap_or_default();
    let converter = crate::registry::converters()
        .ok()
        .and_then(|r| r.by_extension(extension));
    match converter {
        Some(c) => Error::InvalidArgument(format!(
            "{} is a {} file, not a deathtensors file: repack rewrites deathtensors files; import it with \
             `deathtensors convert SRC DST` (from Python, the converter's import function, such as \
             deathtensors.from_safetensors)",
            src.display(),
            c.id(),
        )),
        None => e,
    }
}

/// Let every alias come after the tensor it names. An append keeps a replaced
/// name in its place and puts new names last, so a tie given as `{"new": t,
/// "old": t}` becomes an alias `old` before its target `new`: the earlier
/// entry then takes the bytes and the later one becomes the alias (other
/// aliases of the same tensor follow it), which stores the same tensors.
fn alias_targets_first(entries: &mut [Entry<'_>]) {
    use std::collections::HashMap;
    let mut position: HashMap<String, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name().to_owned(), i))
        .collect();
    // Tensors whose bytes moved to an earlier alias: holder -> that alias's name.
    // The other aliases of a holder are pointed at its new name once, at the end
    // (rewriting them at each move was quadratic in the aliases).
    let mut moved: HashMap<String, String> = HashMap::new();
    for i in 0..entries.len() {
        let Entry::Alias {
            name: alias,
            target,
            metadata,
        } = entries[i].clone()
        else {
            continue;
        };
        let holder = moved.get(&target).cloned().unwrap_or(target);
        let Some(&j) = position.get(&holder).filter(|&&j| j > i) else {
            continue; // already after its target, or an unknown target (the write reports it)
        };
        let Entry::Data(mut data) = entries[j].clone() else {
            continue;
        };
        let holder_metadata = std::mem::replace(&mut data.metadata, metadata);
        data.name = alias.clone();
        entries[i] = Entry::Data(data);
        entries[j] = Entry::Alias {
            name: holder.clone(),
            target: alias.clone(),
            metadata: holder_metadata,
        };
        position.insert(alias.clone(), i);
        position.insert(holder.clone(), j);
        moved.insert(holder, alias);
    }
    if moved.is_empty() {
        return;
    }
    for e in entries.iter_mut() {
        if let Entry::Alias { name, target, .. } = e {
            if let Some(new) = moved.get(target.as_str()).filter(|new| *new != name) {
                *target = new.clone();
            }
        }
    }
}

/// Where an item's bytes come from.
enum Body<'a> {
    /// Bytes to store (and compress, in a compressed file).
    Bytes(&'a [u8]),
    /// A tensor of another file whose compression differs from this write's:
    /// decoded a piece at a time as it is written, like a `Pull`.
    Decode(&'a DtReader, &'a TensorInfo),
    /// A tensor of another file whose stored form is copied verbatim.
    Stored(&'a DtReader, &'a TensorInfo),
    /// Shares the bytes of the item at this index.
    Alias(usize),
    /// Bytes read from a source as they are written, from this offset.
    Pull(&'a dyn ByteSource, u64),
}

/// One checked entry.
struct Item<'a> {
    name: String,
    dtype: &'static dyn DtypeHandler,
    shape: Vec<u64>,
    nbytes: u64,
    metadata: Map<String, Value>,
    body: Body<'a>,
    /// The filter for newly compressed bytes (compressed files only).
    filter: Option<SelectedFilter>,
    /// Layout of a non-dense tensor's primary part.
    layout: Option<Box<LayoutHeader>>,
    /// The tensor this item is a secondary part of.
    part_of: Option<String>,
}

impl<'a> Item<'a> {
    /// An item for bytes given by the caller.
    fn from_data(t: &TensorData<'a>) -> Result<Self> {
        let dtype = registry::dtypes()?.get(&t.dtype)?;
        let nbytes = byte_size(&t.name, &t.shape, dtype)?;
        if nbytes != t.data.len() as u64 {
            return Err(Error::InvalidArgument(format!(
                "tensor {:?}: shape {:?} of {} needs {nbytes} bytes but {} were given",
                t.name,
                t.shape,
                t.dtype,
                t.data.len()
            )));
        }
        if dtype.kind() == DtypeKind::Bool {
            if let Some(at) = t.data.iter().position(|&b| b > 1) {
                return Err(Error::InvalidArgument(format!(
                    "tensor {:?}: byte {at} is {:#04x}, but {} elements must be 0x00 (false) or 0x01 (true)",
                    t.name, t.data[at], t.dtype
                )));
            }
        }
        Ok(Item {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            nbytes,
            metadata: t.metadata.clone(),
            body: Body::Bytes(t.data),
            filter: None,
            layout: None,
            part_of: None,
        })
    }
}

impl Item<'_> {
    /// The bytes to encode, for a `Bytes` body.
    fn bytes(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

impl Body<'_> {
    /// Whether the bytes are read from a source as they are written.
    fn is_pulled(&self) -> bool {
        matches!(self, Body::Pull(..) | Body::Decode(..))
    }

    /// Bytes `[at, at + buf.len())` of the tensor of a [pulled](Body::is_pulled) body.
    fn pull(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            Body::Pull(source, offset) => source.read_at(offset + at, buf),
            Body::Decode(reader, info) => reader.read_range(info, at, buf).map_err(|e| e.in_file(reader.path())),
            _ => Err(Error::InvalidArgument(
                "a tensor without a source has no bytes to read".into(),
            )),
        }
    }
}

/// The checked inputs of a write.
struct Plan<'a> {
    items: Vec<Item<'a>>,
    codec: Option<(&'static dyn Codec, i32)>,
    checksum: Option<&'static dyn ChecksumAlgorithm>,
    chunk_bytes: u64,
    /// Direct I/O for the bytes of a durable write ([`WriteOptions::durable`]
    /// and [`WriteOptions::direct_io`]).
    direct: bool,
}

impl<'a> Plan<'a> {
    fn new(entries: &'a [Entry<'a>], options: &WriteOptions) -> Result<Self> {
        let codec = match &options.codec {
            Some(id) => {
                let codec = registry::codecs()?.get(id)?;
                let level = codec.effective_level(options.level.unwrap_or_else(|| codec.default_level()));
                codec.check_level(level).map_err(|e| {
                    Error::InvalidArgument(format!("compression level {level} for {}: {e}", codec.id()))
                })?;
                Some((codec, level))
            }
            None => None,
        };
        let checksum = options
            .checksum
            .as_deref()
            .map(|id| registry::checksums()?.get(id))
            .transpose()?;
        if options.chunk_bytes == 0 || options.chunk_bytes > MAX_CHUNK_RAW_LEN {
            return Err(Error::InvalidArgument(format!(
                "chunk_bytes must be in 1..={MAX_CHUNK_RAW_LEN}, not {}",
                options.chunk_bytes
            )));
        }
        let candidates: Vec<&'static dyn Filter> = match (&options.filter, codec) {
            (_, None) | (FilterChoice::Off, _) => Vec::new(),
            (FilterChoice::Id(id), Some(_)) => vec![registry::filters()?.get(id)?],
            (FilterChoice::Auto, Some((c, _))) if c.wants_byte_planes() => {
                registry::filters()?.entries().map(|(f, _)| f).collect()
            }
            (FilterChoice::Auto, Some(_)) => Vec::new(),
        };
        // Each name's position in `items`, so that an alias finds its target at once.
        let mut index: std::collections::HashMap<String, usize> =
            std::collections::HashMap::with_capacity(entries.len());
        let mut items: Vec<Item<'a>> = Vec::with_capacity(entries.len());
        let add = |item: Item<'a>, items: &mut Vec<Item<'a>>, index: &mut std::collections::HashMap<String, usize>| {
            if let Some(earlier) = index.insert(item.name.clone(), items.len()) {
                // A stored part's name is made up by its layout: say whose it is.
                let part = [&item, &items[earlier]].into_iter().find_map(|i| i.part_of.as_deref());
                return Err(Error::InvalidArgument(match part {
                    Some(owner) => format!(
                        "{:?} names both a tensor and a stored part of tensor {owner:?}",
                        item.name
                    ),
                    None => format!("tensor name {:?} is given twice", item.name),
                }));
            }
            items.push(item);
            Ok(())
        };
        for entry in entries {
            let item = match entry {
                Entry::Data(t) => Item::from_data(t)?,
                Entry::Layout { primary, layout, parts } => {
                    let mut item = Item::from_data(primary)?;
                    item.layout = Some(Box::new(layout.clone()));
                    add(item, &mut items, &mut index)?;
                    for part in parts {
                        let mut item = Item::from_data(part)?;
                        item.part_of = Some(primary.name.clone());
                        add(item, &mut items, &mut index)?;
                    }
                    continue;
                }
                Entry::Alias { name, target, metadata } => {
                    let j = index.get(target.as_str()).copied().ok_or_else(|| {
                        Error::InvalidArgument(format!("alias {name:?}: no earlier tensor named {target:?}"))
                    })?;
                    let t: &Item<'_> = &items[j];
                    let refused = if matches!(t.body, Body::Alias(_)) {
                        Some("is itself an alias; point at the tensor it names")
                    } else if t.layout.is_some() {
                        Some("is not dense (it has a layout); only dense tensors can be aliased")
                    } else if t.part_of.is_some() {
                        Some("is a stored part of another tensor, not a tensor")
                    } else {
                        None
                    };
                    if let Some(why) = refused {
                        return Err(Error::InvalidArgument(format!("alias {name:?}: {target:?} {why}")));
                    }
                    Item {
                        name: name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        nbytes: t.nbytes,
                        metadata: metadata.clone(),
                        body: Body::Alias(j),
                        filter: None,
                        layout: None,
                        part_of: None,
                    }
                }
                Entry::Pull {
                    name,
                    dtype,
                    shape,
                    metadata,
                    source,
                    offset,
                } => {
                    let dtype = registry::dtypes()?.get(dtype)?;
                    Item {
                        name: name.clone(),
                        dtype,
                        shape: shape.clone(),
                        nbytes: byte_size(name, shape, dtype)?,
                        metadata: metadata.clone(),
                        body: Body::Pull(*source, *offset),
                        filter: None,
                        layout: None,
                        part_of: None,
                    }
                }
                Entry::Copy { source, name, metadata } => {
                    let info = source.tensor(name)?;
                    // Chunks of the same codec are copied unless a level is asked that
                    // differs from the one the source names (one its codec refuses, from
                    // a header written by another tool, says nothing of them).
                    let stored_level = source.layout().header.compression.as_ref().map(|c| c.level);
                    let same_storage = match (source.codec(), codec) {
                        (None, None) => true,
                        (Some(a), Some((b, level))) => {
                            a.id() == b.id()
                                && stored_level
                                    .filter(|&l| a.check_level(l).is_ok())
                                    .is_none_or(|l| l == level)
                        }
                        _ => false,
                    };
                    let body = if same_storage {
                        Body::Stored(source, info)
                    } else {
                        Body::Decode(source, info)
                    };
                    Item {
                        name: name.clone(),
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        nbytes: info.nbytes,
                        metadata: metadata.clone(),
                        body,
                        filter: None,
                        layout: info.layout.clone(),
                        part_of: info.part_of.clone(),
                    }
                }
            };
            add(item, &mut items, &mut index)?;
        }
        let chosen: Vec<Option<SelectedFilter>> = match codec {
            Some((codec, level)) if !candidates.is_empty() => {
                // The samples of pulled tensors are read first, one at a time: a
                // source need not take concurrent reads.
                let pulled = items
                    .iter()
                    .map(|item| pulled_sample(item, &candidates))
                    .collect::<Result<Vec<_>>>()?;
                items
                    .par_iter()
                    .zip(&pulled)
                    .map(|(item, sample)| choose_filter(item, sample.as_deref(), &candidates, codec, level))
                    .collect::<Result<_>>()?
            }
            _ => vec![None; items.len()],
        };
        for (item, filter) in items.iter_mut().zip(chosen) {
            item.filter = filter;
        }
        Ok(Plan {
            items,
            codec,
            checksum,
            chunk_bytes: options.chunk_bytes,
            direct: options.durable && options.direct_io,
        })
    }
}

/// The filter and parameters for `item`: the first of `filters` that applies
/// to its dtype; among that filter's candidate parameters, the one that stores
/// a sample of the item's bytes smallest (`chunk::choose_params`).
///
/// `pulled` is the sample of a [pulled](Body::is_pulled) item, read by [`pulled_sample`].
fn choose_filter(
    item: &Item<'_>,
    pulled: Option<&[u8]>,
    filters: &[&'static dyn Filter],
    codec: &'static dyn Codec,
    level: i32,
) -> Result<Option<SelectedFilter>> {
    if item.bytes().is_none() && !item.body.is_pulled() {
        return Ok(None);
    }
    let Some((f, candidates)) = filter_candidates(item, filters)? else {
        return Ok(None);
    };
    let sample = match item.bytes() {
        Some(bytes) => chunk::filter_sample(bytes, sample_unit(item, &candidates)),
        None => pulled,
    };
    let pick = match sample {
        Some(sample) => chunk::choose_params(sample, codec, level, f, &candidates).map_err(|reason| {
            Error::InvalidArgument(format!("tensor {:?}: codec {} failed: {reason}", item.name, codec.id()))
        })?,
        None => 0,
    };
    Ok(candidates
        .into_iter()
        .nth(pick)
        .map(|(params, planes)| (f, params, planes)))
}

/// The first of `filters` that applies to `item`'s dtype, with its candidate
/// parameters and the plane count of each.
#[allow(clippy::type_complexity)] // a local pairing, named by the doc
fn filter_candidates(
    item: &Item<'_>,
    filters: &[&'static dyn Filter],
) -> Result<Option<(&'static dyn Filter, Vec<(Map<String, Value>, usize)>)>> {
    let Some((f, params)) = filters.iter().find_map(|f| {
        let params = f.candidate_params(item.dtype);
        (!params.is_empty()).then_some((*f, params))
    }) else {
        return Ok(None);
    };
    let refused = |e: String| Error::InvalidArgument(format!("filter {} refuses its own parameters: {e}", f.id()));
    let candidates = params
        .into_iter()
        .map(|p| f.plane_count(&p, item.dtype).map(|n| (p, n)).map_err(refused))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((f, candidates)))
}

/// The unit a filter trial's sample is made of: an element times the most planes.
fn sample_unit(item: &Item<'_>, candidates: &[(Map<String, Value>, usize)]) -> usize {
    let widest = candidates.iter().map(|(_, n)| *n).max().unwrap_or(1);
    item.dtype.item_size().max(1) * widest
}

/// The filter trial's sample of a [pulled](Body::is_pulled) item, read from its
/// source: the bytes [`chunk::filter_sample`] would take were the tensor in memory.
fn pulled_sample(item: &Item<'_>, filters: &[&'static dyn Filter]) -> Result<Option<Vec<u8>>> {
    if !item.body.is_pulled() {
        return Ok(None);
    }
    let Some((_, candidates)) = filter_candidates(item, filters)? else {
        return Ok(None);
    };
    let Some(range) = chunk::filter_sample_range(item.nbytes, sample_unit(item, &candidates)) else {
        return Ok(None);
    };
    let mut sample = vec![0u8; (range.end - range.start) as usize];
    item.body.pull(range.start, &mut sample)?;
    Ok(Some(sample))
}

/// Refuse global and per-tensor (`(name, metadata)`) metadata that would nest
/// the header deeper than [`MAX_HEADER_DEPTH`] levels, which readers refuse.
/// Writers call it; a converter calls it first to blame its source file.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the metadata and the depth it reaches.
pub fn check_metadata_nesting<'m>(
    global: &Map<String, Value>,
    tensors: impl IntoIterator<Item = (&'m str, &'m Map<String, Value>)>,
) -> Result<()> {
    check_nesting("the global metadata", global, 1)?;
    for (name, metadata) in tensors {
        // The top-level object, the `tensors` array and the entry enclose it.
        check_nesting(&format!("the metadata of tensor {name:?}"), metadata, 3)?;
    }
    Ok(())
}

/// Refuse `metadata` that would nest the header deeper than
/// [`MAX_HEADER_DEPTH`] levels (which the reader refuses), given the
/// `enclosing` containers around it in the header. Walks without recursion.
fn check_nesting(what: &str, metadata: &Map<String, Value>, enclosing: usize) -> Result<()> {
    let mut deepest = enclosing + 1;
    let mut stack: Vec<(&Value, usize)> = metadata.values().map(|v| (v, enclosing + 2)).collect();
    while let Some((value, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(level);
        stack.extend(children.map(|v| (v, level + 1)));
    }
    if deepest > MAX_HEADER_DEPTH {
        return Err(Error::InvalidArgument(format!(
            "{what} is nested too deeply: the header would be {deepest} levels deep, over the limit of {MAX_HEADER_DEPTH}"
        )));
    }
    Ok(())
}

fn byte_size(name: &str, shape: &[u64], dtype: &dyn DtypeHandler) -> Result<u64> {
    crate::format::tensor_nbytes(shape, dtype.item_size()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "tensor {name:?}: shape {shape:?} overflows (its non-zero dimensions times the item size must fit in 63 bits)"
        ))
    })
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
///
/// # Errors
/// [`Error::InvalidArgument`] when the header would be over the
/// [`DEFAULT_MAX_HEADER_LEN`] that readers accept: refused before any data is
/// written, rather than a file that no reader opens.
fn data_start_for(json_len: usize) -> Result<u64> {
    let start = align_up(PREAMBLE_LEN + json_len as u64, TENSOR_ALIGNMENT).expect("header length is small");
    let header_len = start - PREAMBLE_LEN;
    if header_len > DEFAULT_MAX_HEADER_LEN {
        return Err(Error::InvalidArgument(format!(
            "the header would be {header_len} bytes, over the {DEFAULT_MAX_HEADER_LEN} bytes that readers \
             accept: the metadata (or the list of tensors) is too large"
        )));
    }
    Ok(start)
}

/// Writes pieces to the file, feeds the hashing thread, and starts writeback.
struct Sink<'f, 'p> {
    file: &'f mut File,
    hash: Option<mpsc::SyncSender<Cow<'p, [u8]>>>,
    written: u64,
    synced: u64,
}

impl<'p> Sink<'_, 'p> {
    fn put(&mut self, piece: Cow<'p, [u8]>) -> std::io::Result<()> {
        self.file.write_all(&piece)?;
        self.written += piece.len() as u64;
        if self.written - self.synced >= WRITEBACK_EVERY {
            start_writeback(self.file, self.synced, self.written - self.synced);
            self.synced = self.written;
        }
        if let Some(tx) = &self.hash {
            tx.send(piece)
                .map_err(|_| std::io::Error::other("the hashing thread stopped"))?;
        }
        Ok(())
    }
}

/// Copy `len` stored bytes at `offset` of `source` through `put`, a piece at a time.
fn copy_stored(
    source: &DtReader,
    offset: u64,
    len: u64,
    put: &mut dyn FnMut(Cow<'_, [u8]>) -> Result<()>,
) -> Result<()> {
    let mut at = 0u64;
    while at < len {
        let n = (WRITE_PIECE as u64).min(len - at) as usize;
        let mut buf = vec![0u8; n];
        source.read_stored(offset + at, &mut buf)?;
        put(Cow::Owned(buf))?;
        at += n as u64;
    }
    Ok(())
}

fn write_uncompressed(
    file: &mut File,
    plan: &Plan<'_>,
    header: &mut Header,
    flags: u32,
    tmp_path: &Path,
) -> Result<Option<[u8; 32]>> {
    let io = |e| Error::io(tmp_path, e);
    let mut cursor = 0u64;
    for item in &plan.items {
        let offsets = match item.body {
            Body::Alias(j) => header.tensors[j].offsets,
            // Empty tensors sit at the cursor: they hold no bytes to align.
            _ if item.nbytes == 0 => [cursor, cursor],
            _ => {
                let begin = align_up(cursor, TENSOR_ALIGNMENT).expect("sizes come from memory or a file");
                cursor = begin + item.nbytes;
                [begin, cursor]
            }
        };
        header.tensors.push(entry(plan, item, offsets, None));
    }
    let json_len = serde_json::to_vec(&*header).expect("serializes").len();
    let data_start = data_start_for(json_len)?;
    let text = header_bytes(header, data_start);
    let preamble = Preamble {
        flags,
        header_len: text.len() as u64,
    }
    .encode();
    debug_assert_eq!(format::nul_padding(text.len() as u64), 0);

    let entries = &header.tensors;
    if plan
        .items
        .iter()
        .all(|i| !matches!(i.body, Body::Stored(..)) && !i.body.is_pulled())
    {
        return write_in_parallel(file, &preamble, &text, plan, entries, tmp_path);
    }
    file.write_all(&preamble).map_err(io)?;
    let mut sink = Sink {
        file,
        hash: None,
        written: PREAMBLE_LEN,
        synced: 0,
    };
    match plan.checksum {
        None => {
            put_body(&mut sink, &text, plan, entries, tmp_path)?;
            Ok(None)
        }
        Some(algorithm) => std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<Cow<'_, [u8]>>(8);
            let hashing = scope.spawn(move || {
                let mut hasher = algorithm.hasher();
                for piece in rx {
                    hasher.update(&piece);
                }
                hasher.finish()
            });
            sink.hash = Some(tx);
            let written = put_body(&mut sink, &text, plan, entries, tmp_path);
            sink.hash = None; // closes the channel
            let digest = hashing
                .join()
                .map_err(|_| io(std::io::Error::other("the hashing thread panicked")))?;
            written.map(|()| Some(digest))
        }),
    }
}

/// Write the preamble, the header text and every tensor's bytes at their
/// offsets, while one more thread hashes the same bytes in file order, zero
/// gaps included. A durable write of a large file goes around the page cache
/// ([`direct`]); otherwise the pieces are written from all cores (page-cache
/// copies scale with cores), and gaps are never written: the new file reads
/// zeros there.
fn write_in_parallel(
    file: &mut File,
    preamble: &[u8],
    text: &[u8],
    plan: &Plan<'_>,
    entries: &[TensorHeader],
    tmp_path: &Path,
) -> Result<Option<[u8; 32]>> {
    let io = |e| Error::io(tmp_path, e);
    let data_start = PREAMBLE_LEN + text.len() as u64;
    let mut pieces: Vec<(u64, &[u8])> = vec![(0, preamble), (PREAMBLE_LEN, text)];
    let mut in_order: Vec<&[u8]> = vec![text];
    let mut cursor = 0u64;
    let mut end = data_start;
    for (item, h) in plan.items.iter().zip(entries) {
        let Some(bytes) = item.bytes().filter(|b| !b.is_empty()) else {
            continue;
        };
        let gap = (h.offsets[0] - cursor) as usize;
        if gap > 0 {
            in_order.push(&ZEROS[..gap]);
        }
        for (k, piece) in bytes.chunks(WRITE_PIECE).enumerate() {
            pieces.push((data_start + h.offsets[0] + (k * WRITE_PIECE) as u64, piece));
            in_order.push(piece);
        }
        cursor = h.offsets[1];
        end = data_start + cursor;
    }
    let file_ref = &*file;
    let digest = std::thread::scope(|scope| {
        let hashing = plan.checksum.map(|algorithm| {
            scope.spawn(move || {
                let mut hasher = algorithm.hasher();
                for piece in &in_order {
                    hasher.update(piece);
                }
                hasher.finish()
            })
        });
        let written_directly = if plan.direct && direct::wanted(end) {
            direct::write_direct(file_ref, &pieces, end)
        } else {
            Ok(false)
        };
        let written = written_directly.and_then(|done| {
            if done {
                return Ok(());
            }
            pieces
                .par_iter()
                .try_for_each(|(at, piece)| file_ref.write_all_at(piece, *at))
        });
        let digest = hashing
            .map(|h| {
                h.join()
                    .map_err(|_| std::io::Error::other("the hashing thread panicked"))
            })
            .transpose();
        written.and(digest)
    })
    .map_err(io)?;
    file.seek(SeekFrom::Start(end)).map_err(io)?;
    Ok(digest)
}

/// The header text and every tensor's bytes, with the zero gaps between them.
fn put_body<'p>(
    sink: &mut Sink<'_, 'p>,
    text: &'p [u8],
    plan: &'p Plan<'_>,
    entries: &[TensorHeader],
    tmp_path: &Path,
) -> Result<()> {
    let io = |e| Error::io(tmp_path, e);
    sink.put(Cow::Borrowed(text)).map_err(io)?;
    let mut cursor = 0u64;
    for (item, h) in plan.items.iter().zip(entries) {
        if item.nbytes == 0 || matches!(item.body, Body::Alias(_)) {
            continue;
        }
        let gap = (h.offsets[0] - cursor) as usize;
        if gap > 0 {
            sink.put(Cow::Borrowed(&ZEROS[..gap])).map_err(io)?;
        }
        match (&item.body, item.bytes()) {
            (_, Some(bytes)) => {
                for piece in bytes.chunks(WRITE_PIECE) {
                    sink.put(Cow::Borrowed(piece)).map_err(io)?;
                }
            }
            (Body::Stored(source, info), None) => {
                copy_stored(source, info.file_offset, info.stored_len, &mut |p| {
                    sink.put(Cow::Owned(p.into_owned())).map_err(io)
                })?;
            }
            (body, None) if body.is_pulled() => {
                let mut at = 0u64;
                while at < item.nbytes {
                    let mut piece = vec![0u8; (WRITE_PIECE as u64).min(item.nbytes - at) as usize];
                    body.pull(at, &mut piece)?;
                    sink.put(Cow::Owned(piece)).map_err(io)?;
                    at += WRITE_PIECE as u64;
                }
            }
            _ => {}
        }
        cursor = h.offsets[1];
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_compressed(
    file: &mut File,
    plan: &Plan<'_>,
    header: &mut Header,
    flags: u32,
    codec: &'static dyn Codec,
    level: i32,
    tmp_path: &Path,
) -> Result<Option<[u8; 32]>> {
    let io = |e| Error::io(tmp_path, e);
    // Chunk raw lengths of the bytes to encode; copied and aliased tensors reuse theirs.
    let plans: Vec<Vec<u64>> = plan
        .items
        .iter()
        .map(|item| match (item.bytes(), &item.body) {
            (None, body) if !body.is_pulled() => Vec::new(),
            _ => chunk_lengths(
                &item.shape,
                item.dtype.item_size() as u64,
                item.nbytes,
                plan.chunk_bytes,
            ),
        })
        .collect();
    // Reserve room for the header: every number in it at its widest. No
    // number can exceed `most`: stored bytes are never more than raw ones, so
    // offsets are bounded by the sum of the tensors' sizes (a copied tensor
    // counts its stored length too), and chunk and plane lengths by their
    // tensor's size. (u64::MAX reserved 20 digits a number, about 100 bytes a
    // chunk entry: a file of small tensors grew by far more than its data.)
    let most: u64 = plan
        .items
        .iter()
        .map(|item| match &item.body {
            Body::Stored(_, info) => info.stored_len.max(item.nbytes),
            Body::Alias(_) => 0,
            _ => item.nbytes,
        })
        .fold(0u64, u64::saturating_add);
    for (i, (item, lens)) in plan.items.iter().zip(&plans).enumerate() {
        let widest =
            |planes: Option<usize>, n: usize| vec![Chunk::new(most, most, most, planes.map(|p| vec![most; p])); n];
        let e = match &item.body {
            Body::Stored(_, info) => {
                let chunks = info.chunks.as_deref().unwrap_or_default();
                let planes = info.filter.as_ref().map(|f| f.2);
                let mut e = entry(plan, item, [most; 2], Some(widest(planes, chunks.len())));
                e.filter = info.filter.as_ref().map(filter_header);
                e
            }
            Body::Alias(j) => {
                let mut e = header.tensors[*j].clone();
                e.name = item.name.clone();
                e.metadata = item.metadata.clone();
                e.alias_of = Some(plan.items[*j].name.clone());
                e
            }
            _ => entry(
                plan,
                item,
                [most; 2],
                Some(widest(item.filter.as_ref().map(|f| f.2), lens.len())),
            ),
        };
        debug_assert_eq!(header.tensors.len(), i);
        header.tensors.push(e);
    }
    let reserved = serde_json::to_vec(&*header).expect("serializes").len();
    let data_start = data_start_for(reserved)?;
    header.tensors.clear();

    file.seek(SeekFrom::Start(data_start)).map_err(io)?;
    let batch = rayon::current_num_threads().max(1) * 4;
    let mut cursor = 0u64;
    let mut synced = 0u64;
    for (item, lens) in plan.items.iter().zip(&plans) {
        let begin = cursor;
        let e = match (&item.body, item.bytes()) {
            (Body::Alias(j), _) => {
                let mut e = header.tensors[*j].clone();
                e.name = item.name.clone();
                e.metadata = item.metadata.clone();
                e.alias_of = Some(plan.items[*j].name.clone());
                e
            }
            (Body::Stored(source, info), None) => {
                copy_stored(source, info.file_offset, info.stored_len, &mut |p| {
                    file.write_all(&p).map_err(io)
                })?;
                cursor += info.stored_len;
                let chunks = info
                    .chunks
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(|c| {
                        let at = begin + (c.offset() - info.file_offset);
                        Chunk::new(at, c.stored_len(), c.raw_len(), c.planes().map(<[u64]>::to_vec))
                    })
                    .collect();
                let mut e = entry(plan, item, [begin, cursor], Some(chunks));
                e.filter = info.filter.as_ref().map(filter_header);
                e
            }
            (_, bytes) => {
                let applied = item.filter.as_ref().map(|(f, params, planes)| AppliedFilter {
                    filter: *f,
                    params,
                    planes: *planes,
                });
                let mut chunks = Vec::with_capacity(lens.len());
                let mut at = 0u64; // where the group starts in the tensor
                for group_lens in lens.chunks(batch) {
                    let group_len: u64 = group_lens.iter().sum();
                    let group: Cow<'_, [u8]> = match (bytes, &item.body) {
                        (Some(b), _) => Cow::Borrowed(&b[at as usize..(at + group_len) as usize]),
                        (None, body) if body.is_pulled() => {
                            let mut pulled = vec![0u8; group_len as usize];
                            body.pull(at, &mut pulled)?;
                            Cow::Owned(pulled)
                        }
                        // Chunk plans are empty for the other bodies: no group to read.
                        (None, _) => {
                            return Err(Error::InvalidArgument(format!(
                                "tensor {:?} has no bytes to encode",
                                item.name
                            )))
                        }
                    };
                    at += group_len;
                    let mut slices = Vec::with_capacity(group_lens.len());
                    let mut rest = &group[..];
                    for &len in group_lens {
                        let (head, tail) = rest.split_at(len as usize);
                        slices.push(head);
                        rest = tail;
                    }
                    let encoded: Vec<_> = slices
                        .par_iter()
                        .map(|raw| chunk::encode(raw, codec, level, applied))
                        .collect();
                    for (raw, result) in slices.iter().zip(encoded) {
                        let (stored, planes) = result.map_err(|reason| {
                            Error::InvalidArgument(format!(
                                "tensor {:?}: codec {} failed: {reason}",
                                item.name,
                                codec.id()
                            ))
                        })?;
                        file.write_all(&stored).map_err(io)?;
                        chunks.push(Chunk::new(cursor, stored.len() as u64, raw.len() as u64, planes));
                        cursor += stored.len() as u64;
                    }
                }
                entry(plan, item, [begin, cursor], Some(chunks))
            }
        };
        if cursor - synced >= WRITEBACK_EVERY {
            start_writeback(file, data_start + synced, cursor - synced);
            synced = cursor;
        }
        header.tensors.push(e);
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

fn filter_header((f, params, _): &SelectedFilter) -> Box<FilterHeader> {
    Box::new(FilterHeader {
        id: f.id().to_owned(),
        params: params.clone(),
    })
}

fn entry(plan: &Plan<'_>, item: &Item<'_>, offsets: [u64; 2], chunks: Option<Vec<Chunk>>) -> TensorHeader {
    let alias_of = match item.body {
        Body::Alias(j) => Some(plan.items[j].name.clone()),
        _ => None,
    };
    TensorHeader {
        name: item.name.clone(),
        dtype: item.dtype.id().to_owned(),
        shape: item.shape.clone(),
        offsets,
        chunks,
        filter: item.filter.as_ref().map(filter_header),
        alias_of,
        layout: item.layout.clone(),
        part_of: item.part_of.clone(),
        metadata: item.metadata.clone(),
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
    fn every_alias_follows_its_target_after_reordering() {
        let bytes = [1u8, 2, 3, 4];
        let data = |name: &str| {
            Entry::Data(TensorData {
                name: name.into(),
                dtype: "U8".into(),
                shape: vec![4],
                data: &bytes,
                metadata: Map::new(),
            })
        };
        let alias = |name: &str, target: &str| Entry::Alias {
            name: name.into(),
            target: target.into(),
            metadata: Map::new(),
        };
        let mut entries = vec![
            alias("x1", "h1"),
            alias("y1", "h2"),
            alias("x2", "h1"),
            data("h1"),
            data("h2"),
            alias("x3", "h1"),
            alias("y2", "y1"),
        ];
        alias_targets_first(&mut entries);
        let shown: Vec<String> = entries
            .iter()
            .map(|e| match e {
                Entry::Data(t) => t.name.clone(),
                Entry::Alias { name, target, .. } => format!("{name}->{target}"),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(shown, ["x1", "y1", "x2->x1", "h1->x1", "h2->y1", "x3->x1", "y2->y1"]);
    }

    #[test]
    fn scalars_and_empty() {
        assert_eq!(chunk_lengths(&[], 8, 8, 1 << 20), vec![8]);
        assert!(chunk_lengths(&[0, 5], 4, 0, 1 << 20).is_empty());
        assert_eq!(chunk_lengths(&[3], 3, 9, 4), vec![3, 3, 3]);
    }
}
