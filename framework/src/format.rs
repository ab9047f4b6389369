//! The v1 file layout: constants, the JSON header schema, and its validation.
//!
//! ```text
//! magic "DTLEGION" (8) | version u32 = 1 | flags u32 | header length u64
//! JSON header (UTF-8) | NUL padding to 8 | data | optional 32-byte footer
//! ```
//!
//! All integers are little-endian. `docs/format_spec.md` is the normative text.

use std::collections::{HashMap, HashSet};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::registry::{self, ChecksumAlgorithm, Codec, DtypeHandler, Filter};

/// The first eight bytes of every file.
pub const MAGIC: &[u8; 8] = b"DTLEGION";
/// The format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Flag bit 0: tensors are stored as compressed chunks.
pub const FLAG_COMPRESSED: u32 = 1 << 0;
/// Flag bit 1: a 32-byte checksum footer ends the file.
pub const FLAG_CHECKSUM: u32 = 1 << 1;
/// Flag bit 2: encryption, reserved. Files that set it are refused.
pub const FLAG_ENCRYPTED: u32 = 1 << 2;
/// Bytes before the JSON header: magic, version, flags, header length.
pub const PREAMBLE_LEN: u64 = 24;
/// Length of the checksum footer.
pub const FOOTER_LEN: u64 = 32;
/// Non-empty uncompressed tensors start at file offsets that are multiples of this.
pub const TENSOR_ALIGNMENT: u64 = 64;
/// Default raw size of a compression chunk.
pub const DEFAULT_CHUNK_BYTES: u64 = 1 << 20;
/// Largest raw length a chunk may declare (bounds each decompression).
pub const MAX_CHUNK_RAW_LEN: u64 = 64 << 20;
/// Default limit on the JSON header length.
pub const DEFAULT_MAX_HEADER_LEN: u64 = 100_000_000;
/// Deepest nesting of JSON arrays and objects a header may have (the top-level
/// object is level 1); the reader refuses deeper headers and the writer
/// refuses metadata that would make one.
pub const MAX_HEADER_DEPTH: usize = 127;

/// The `compression` object of the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionHeader {
    /// Codec id (a registered [`Codec`]).
    pub codec: String,
    /// Level the writer used (informative).
    pub level: i32,
}

/// One compressed chunk: `[offset, stored length, raw length]`, or
/// `[offset, stored length, raw length, [plane stored lengths...]]` when the
/// tensor has a filter.
///
/// `offset` is relative to the start of the data region (absolute in
/// [`TensorInfo`]). Without planes, a chunk whose stored length equals its
/// raw length is stored raw (neither filter nor codec applied; writers do
/// this when nothing shrinks by 5%). With planes, the chunk is the filter's
/// planes one after another, each compressed on its own; a plane whose
/// stored length equals its raw length is stored raw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "ChunkRepr")]
pub struct Chunk {
    offset: u64,
    stored_len: u64,
    raw_len: u64,
    planes: Option<Vec<u64>>,
}

/// A chunk as written: `[offset, stored_len, raw_len]`, or with the planes'
/// stored lengths as a fourth element.
#[derive(Serialize)]
#[serde(untagged)]
enum ChunkRepr {
    Plain(u64, u64, u64),
    Planes(u64, u64, u64, Vec<u64>),
}

/// Read straight from the array (an untagged enum would buffer every chunk
/// of a header into serde's generic content tree before trying its forms).
impl<'de> Deserialize<'de> for Chunk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct ChunkVisitor;
        impl<'de> Visitor<'de> for ChunkVisitor {
            type Value = Chunk;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a chunk: [offset, stored_len, raw_len] or [offset, stored_len, raw_len, [plane lengths]]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Chunk, A::Error> {
                let mut field = |i: usize| {
                    seq.next_element::<u64>()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))
                };
                let (offset, stored_len, raw_len) = (field(0)?, field(1)?, field(2)?);
                let planes = seq.next_element::<Vec<u64>>()?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(5, &self));
                }
                Ok(Chunk::new(offset, stored_len, raw_len, planes))
            }
        }
        d.deserialize_seq(ChunkVisitor)
    }
}

impl From<Chunk> for ChunkRepr {
    fn from(c: Chunk) -> Self {
        match c.planes {
            None => ChunkRepr::Plain(c.offset, c.stored_len, c.raw_len),
            Some(p) => ChunkRepr::Planes(c.offset, c.stored_len, c.raw_len, p),
        }
    }
}

impl Chunk {
    /// A chunk entry.
    pub fn new(offset: u64, stored_len: u64, raw_len: u64, planes: Option<Vec<u64>>) -> Self {
        Chunk {
            offset,
            stored_len,
            raw_len,
            planes,
        }
    }
    /// Offset (relative to the data region in the header, absolute in [`TensorInfo`]).
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Bytes stored in the file.
    pub fn stored_len(&self) -> u64 {
        self.stored_len
    }
    /// Bytes after decoding.
    pub fn raw_len(&self) -> u64 {
        self.raw_len
    }
    /// Stored length of each filter plane, when the tensor has a filter.
    pub fn planes(&self) -> Option<&[u64]> {
        self.planes.as_deref()
    }
    /// Whether the chunk is stored without codec or filter.
    pub fn is_raw(&self) -> bool {
        self.planes.is_none() && self.stored_len == self.raw_len
    }
}

/// The `layout` object of a tensor entry (a non-dense tensor such as sparse COO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutHeader {
    /// Layout id (a registered [`Layout`](crate::registry::Layout)).
    pub id: String,
    /// The logical (dense) shape of the tensor.
    pub shape: Vec<u64>,
    /// The layout's parameters.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    /// Part name → name of the entry holding it (marked `part_of` this tensor).
    pub parts: Map<String, Value>,
}

/// The `filter` object of a tensor entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterHeader {
    /// Filter id (a registered [`Filter`]).
    pub id: String,
    /// The filter's parameters.
    #[serde(default)]
    pub params: Map<String, Value>,
}

/// One tensor entry of the header, as written in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorHeader {
    /// The tensor's name (any Unicode string, unique in the file).
    pub name: String,
    /// Dtype id (a registered [`DtypeHandler`]).
    pub dtype: String,
    /// Dimensions, outermost first; `[]` is a scalar.
    pub shape: Vec<u64>,
    /// `[begin, end)` of the stored bytes, relative to the data region.
    pub offsets: [u64; 2],
    /// The chunks, in order, when the file is compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<Chunk>>,
    /// The filter applied to each chunk before the codec, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Box<FilterHeader>>,
    /// For a second name of an earlier tensor (tied weights): that tensor's
    /// name. The entry then repeats the target's dtype, shape, offsets,
    /// chunks and filter, and shares its bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_of: Option<String>,
    /// For the primary part of a non-dense tensor: its layout. The entry's
    /// dtype and shape are those of the primary part (e.g. sparse values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Box<LayoutHeader>>,
    /// For a secondary part of a non-dense tensor: that tensor's name. Such
    /// entries are not listed as tensors of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_of: Option<String>,
    /// Per-tensor metadata: any JSON values.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// The JSON header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Global metadata: any JSON values.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Present exactly when flag bit 0 is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<CompressionHeader>,
    /// Checksum algorithm id; present exactly when flag bit 1 is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Tensors in the order the writer's caller gave them.
    pub tensors: Vec<TensorHeader>,
}

/// Parse JSON text, refusing duplicate object keys anywhere in it.
///
/// serde_json keeps the last of two equal keys silently; a header with
/// duplicate keys is ambiguous, so it is refused. Arrays and objects may be
/// nested [`MAX_HEADER_DEPTH`] levels deep.
///
/// # Errors
/// [`Error::InvalidHeader`] on invalid UTF-8, invalid JSON, duplicate keys or
/// deeper nesting.
pub fn parse_json_strict<T: for<'de> Deserialize<'de>>(text: &[u8]) -> Result<T> {
    parse_json_strict_nested(text, MAX_HEADER_DEPTH)
}

/// [`parse_json_strict`] with arrays and objects nested at most `depth`
/// levels deep: a document that holds a header one level down (a manifest)
/// needs one more level than a header.
///
/// # Errors
/// As [`parse_json_strict`].
pub fn parse_json_strict_nested<T: for<'de> Deserialize<'de>>(text: &[u8], depth: usize) -> Result<T> {
    parse_checked(text, Place::Any, depth)
}

/// Check `text` with a [`Strict`] walk from `place`, then deserialize it
/// straight into `T`: no intermediate `serde_json::Value` tree, which takes
/// several times the text's size for a header of many tensors and chunks.
///
/// The walk bounds the nesting at `depth`, so serde_json's own recursion
/// limit (a fixed 128) is turned off in both passes: the second one reads
/// only text the walk accepted.
fn parse_checked<T: for<'de> Deserialize<'de>>(text: &[u8], place: Place, depth: usize) -> Result<T> {
    let invalid = |e: serde_json::Error| Error::InvalidHeader(e.to_string());
    let mut de = serde_json::Deserializer::from_slice(text);
    de.disable_recursion_limit();
    Strict {
        place,
        depth_left: depth,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(invalid)?;
    let mut de = serde_json::Deserializer::from_slice(text);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de).map_err(invalid)?;
    de.end().map_err(invalid)?;
    Ok(value)
}

impl Header {
    /// Parse header text: strict JSON (see [`parse_json_strict`]) whose
    /// top level, `compression` and tensor entries are JSON objects.
    ///
    /// serde would also fill a struct from a JSON array; the format says
    /// objects, so arrays in their place are refused.
    ///
    /// # Errors
    /// [`Error::InvalidHeader`] naming the first problem.
    pub fn parse(text: &[u8]) -> Result<Header> {
        parse_checked(text, Place::Header, MAX_HEADER_DEPTH)
    }
}

/// Where a JSON value sits, for the checks of a [`Strict`] walk: places of a
/// header that the format requires to be objects, or anywhere else.
#[derive(Clone, Copy)]
enum Place {
    /// Any value (and everything inside one).
    Any,
    /// The top level of a header: an object.
    Header,
    /// A header's `compression`: an object, or null.
    Compression,
    /// A header's `tensors`: when an array, each element is a tensor entry.
    Tensors,
    /// Entry `i` of a header's `tensors`: an object.
    Tensor(usize),
}

impl Place {
    /// The error for a value other than an object here, if the place needs one
    /// (`null` is allowed for `compression`).
    fn refuse<E: de::Error>(self, is_null: bool) -> std::result::Result<(), E> {
        let what = match self {
            Place::Header => "the header".to_owned(),
            Place::Compression if !is_null => "\"compression\"".to_owned(),
            Place::Tensor(i) => format!("tensors[{i}]"),
            _ => return Ok(()),
        };
        Err(E::custom(format_args!("{what} must be a JSON object")))
    }

    /// The place of the value under `key` of an object here.
    fn child(self, key: &str) -> Place {
        match (self, key) {
            (Place::Header, "compression") => Place::Compression,
            (Place::Header, "tensors") => Place::Tensors,
            _ => Place::Any,
        }
    }
}

/// A serde visitor that walks any JSON value, failing on a duplicate key
/// anywhere, on a non-object where its [`Place`] needs an object, and on an
/// array or object more than `depth_left` levels down.
struct Strict {
    /// Where the value sits.
    place: Place,
    /// How many levels of arrays and objects may still open, this value's included.
    depth_left: usize,
}

impl Strict {
    /// How many levels the values inside this array or object may still
    /// open; an error when this one may not open.
    fn open<E: de::Error>(&self) -> std::result::Result<usize, E> {
        self.depth_left
            .checked_sub(1)
            .ok_or_else(|| E::custom("recursion limit exceeded: arrays and objects nested too deeply"))
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<(), E> {
        self.place.refuse(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<(), E> {
        self.place.refuse(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<(), E> {
        self.place.refuse(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<(), E> {
        self.place.refuse(false)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<(), E> {
        self.place.refuse(false)
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.place.refuse(true)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        self.place.refuse(false)?;
        let depth_left = self.open()?;
        let mut i = 0;
        let element = |i| match self.place {
            Place::Tensors => Place::Tensor(i),
            _ => Place::Any,
        };
        while seq
            .next_element_seed(Strict {
                place: element(i),
                depth_left,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let depth_left = self.open()?;
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value_seed(Strict {
                place: self.place.child(&key),
                depth_left,
            })?;
            if let Some(key) = seen.replace(key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
        }
        Ok(())
    }
}

/// A tensor entry after validation, with absolute file offsets.
#[derive(Clone)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its dtype plugin.
    pub dtype: &'static dyn DtypeHandler,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Bytes of the tensor once decoded (elements × item size).
    pub nbytes: u64,
    /// Absolute file offset of the first stored byte.
    pub file_offset: u64,
    /// Bytes stored in the file (== `nbytes` when uncompressed).
    pub stored_len: u64,
    /// Chunks with absolute file offsets, when compressed.
    pub chunks: Option<Vec<Chunk>>,
    /// The filter, its parameters and its plane count, when the tensor has one.
    pub filter: Option<(&'static dyn Filter, Map<String, Value>, usize)>,
    /// The tensor this entry is a second name of (tied weights), if any.
    pub alias_of: Option<String>,
    /// The layout, for the primary part of a non-dense tensor.
    pub layout: Option<Box<LayoutHeader>>,
    /// The tensor this entry is a secondary part of, if any.
    pub part_of: Option<String>,
    /// Per-tensor metadata.
    pub metadata: Map<String, Value>,
}

impl std::fmt::Debug for TensorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorInfo")
            .field("name", &self.name)
            .field("dtype", &self.dtype.id())
            .field("shape", &self.shape)
            .field("nbytes", &self.nbytes)
            .field("file_offset", &self.file_offset)
            .field("stored_len", &self.stored_len)
            .finish_non_exhaustive()
    }
}

impl TensorInfo {
    /// Number of elements (product of the shape).
    pub fn numel(&self) -> u64 {
        self.nbytes / self.dtype.item_size() as u64
    }
}

/// Everything the preamble and header say, validated against the file length.
pub struct Layout {
    /// The flags word.
    pub flags: u32,
    /// The parsed header.
    pub header: Header,
    /// Length of the JSON text.
    pub header_len: u64,
    /// Absolute offset of the data region.
    pub data_start: u64,
    /// Length of the data region.
    pub data_len: u64,
    /// The codec, when compressed.
    pub codec: Option<&'static dyn Codec>,
    /// The checksum algorithm, when a footer is present.
    pub checksum: Option<&'static dyn ChecksumAlgorithm>,
    /// Validated tensors in header order.
    pub tensors: Vec<TensorInfo>,
    /// Name → index into `tensors`.
    pub index: HashMap<String, usize>,
}

impl Layout {
    /// The entry named `name`.
    ///
    /// # Errors
    /// [`Error::TensorNotFound`] when there is none.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::TensorNotFound(name.to_owned()))
    }
}

/// The fixed 24-byte preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Flags word.
    pub flags: u32,
    /// Declared JSON header length.
    pub header_len: u64,
}

impl Preamble {
    /// Decode and check the preamble.
    ///
    /// # Errors
    /// Bad magic, unsupported version, encryption flag, unknown flags.
    pub fn decode(bytes: &[u8; 24]) -> Result<Self> {
        let le_u32 = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        if &bytes[..8] != MAGIC {
            return Err(Error::BadMagic {
                found: String::from_utf8_lossy(&bytes[..8]).into_owned(),
            });
        }
        let version = le_u32(8);
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let flags = le_u32(12);
        if flags & FLAG_ENCRYPTED != 0 {
            return Err(Error::Encrypted);
        }
        let unknown = flags & !(FLAG_COMPRESSED | FLAG_CHECKSUM | FLAG_ENCRYPTED);
        if unknown != 0 {
            return Err(Error::UnknownFlags(unknown));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[16..24]);
        Ok(Preamble {
            flags,
            header_len: u64::from_le_bytes(len),
        })
    }

    /// Encode the preamble.
    pub fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.header_len.to_le_bytes());
        out
    }
}

/// NUL bytes after a header of `header_len` bytes to reach a multiple of 8.
pub fn nul_padding(header_len: u64) -> u64 {
    (8 - (PREAMBLE_LEN % 8 + header_len % 8) % 8) % 8
}

/// Round `value` up to a multiple of `align` (a power of two), with overflow checking.
pub fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Validate a parsed header against the preamble and the file length.
///
/// `file_len` is the whole file's length. Checks, in order: flags agree with
/// the header, codec and checksum ids are registered, the data region fits,
/// each tensor's dtype is registered, its shape's byte size does not
/// overflow, its bytes lie inside the data region, uncompressed tensors are
/// aligned and exactly `nbytes` long, chunk tables are contiguous, bounded
/// and add up to `nbytes`, no two tensors overlap, and no bytes trail the
/// last tensor.
///
/// # Errors
/// The first rule broken, as a typed [`Error`].
pub fn validate(preamble: Preamble, header: Header, file_len: u64) -> Result<Layout> {
    let compressed = preamble.flags & FLAG_COMPRESSED != 0;
    let has_footer = preamble.flags & FLAG_CHECKSUM != 0;
    let codec = match (&header.compression, compressed) {
        (Some(c), true) => Some(registry::codecs()?.get(&c.codec).map_err(named_by_file)?),
        (None, false) => None,
        (Some(_), false) => {
            return Err(Error::InvalidHeader(
                "the header names a codec but flag bit 0 (compressed) is clear".into(),
            ))
        }
        (None, true) => {
            return Err(Error::InvalidHeader(
                "flag bit 0 (compressed) is set but the header names no codec".into(),
            ))
        }
    };
    let checksum = match (&header.checksum, has_footer) {
        (Some(id), true) => Some(registry::checksums()?.get(id).map_err(named_by_file)?),
        (None, false) => None,
        (Some(_), false) => {
            return Err(Error::InvalidHeader(
                "the header names a checksum but flag bit 1 (footer) is clear".into(),
            ))
        }
        (None, true) => {
            return Err(Error::InvalidHeader(
                "flag bit 1 (footer) is set but the header names no checksum algorithm".into(),
            ))
        }
    };

    let footer_len = if has_footer { FOOTER_LEN } else { 0 };
    // Checked: `preamble.header_len` is any u64 when validate is called directly.
    let overflow = || Error::Truncated {
        what: "the header, padding and footer",
        needed: u64::MAX,
        available: file_len,
    };
    let data_start = PREAMBLE_LEN
        .checked_add(preamble.header_len)
        .and_then(|end| end.checked_add(nul_padding(preamble.header_len)))
        .ok_or_else(overflow)?;
    let needed = data_start.checked_add(footer_len).ok_or_else(overflow)?;
    if needed > file_len {
        return Err(Error::Truncated {
            what: "the header, padding and footer",
            needed,
            available: file_len,
        });
    }
    let data_len = file_len - needed;
    let dtypes = registry::dtypes()?;

    let mut tensors = Vec::with_capacity(header.tensors.len());
    let mut index = HashMap::with_capacity(header.tensors.len());
    let mut ranges: Vec<(u64, u64, usize)> = Vec::with_capacity(header.tensors.len());
    for (i, t) in header.tensors.iter().enumerate() {
        let name = t.name.as_str();
        if index.insert(t.name.clone(), i).is_some() {
            return Err(Error::tensor(name, "the name appears twice in the header"));
        }
        let dtype = dtypes.get(&t.dtype).map_err(|e| Error::tensor(name, e.to_string()))?;
        let nbytes = tensor_nbytes(&t.shape, dtype.item_size()).ok_or_else(|| {
            Error::tensor(
                name,
                format!(
                    "shape {:?} × {} bytes overflows 64 bits (or 63 bits over its non-zero dimensions)",
                    t.shape,
                    dtype.item_size()
                ),
            )
        })?;
        let [begin, end] = t.offsets;
        if begin > end || end > data_len {
            // Past the end with a sane range: most likely a cut-off copy.
            let hint = if begin <= end { " (is the file truncated?)" } else { "" };
            return Err(Error::tensor(
                name,
                format!("byte range [{begin}, {end}) is outside the data region of {data_len} bytes{hint}"),
            ));
        }
        let stored_len = end - begin;
        let filter = match &t.filter {
            None => None,
            Some(_) if codec.is_none() => {
                return Err(Error::tensor(name, "has a filter but the file is not compressed"))
            }
            Some(f) => {
                let plugin = registry::filters()?
                    .get(&f.id)
                    .map_err(|e| Error::tensor(name, e.to_string()))?;
                let count = plugin
                    .plane_count(&f.params, dtype)
                    .map_err(|e| Error::tensor(name, format!("filter {}: {e}", f.id)))?;
                if count == 0 {
                    return Err(Error::tensor(name, format!("filter {} declares zero planes", f.id)));
                }
                Some((plugin, f.params.clone(), count))
            }
        };
        let planes = filter.as_ref().map(|f| f.2);
        let chunks = match (&t.chunks, codec.is_some()) {
            (None, false) => {
                if stored_len != nbytes {
                    return Err(Error::tensor(
                        name,
                        format!(
                            "shape {:?} of {} needs {nbytes} bytes but the byte range holds {stored_len}",
                            t.shape, t.dtype
                        ),
                    ));
                }
                if nbytes > 0 && (data_start + begin) % TENSOR_ALIGNMENT != 0 {
                    return Err(Error::tensor(
                        name,
                        format!(
                            "uncompressed data starts at file offset {} which is not a multiple of {TENSOR_ALIGNMENT}",
                            data_start + begin
                        ),
                    ));
                }
                None
            }
            (Some(chunks), true) => Some(validate_chunks(
                name,
                chunks,
                [begin, end],
                nbytes,
                data_start,
                ChunkRules {
                    item_size: dtype.item_size() as u64,
                    planes,
                    max_expansion: codec.map_or(u64::MAX, |c| c.max_expansion()),
                },
            )?),
            (Some(_), false) => return Err(Error::tensor(name, "has a chunk table but the file is not compressed")),
            (None, true) => {
                return Err(Error::tensor(
                    name,
                    "the file is compressed but the tensor has no chunk table",
                ))
            }
        };
        if let Some(target) = &t.alias_of {
            check_alias(&header.tensors, &index, i, target)?;
        } else if stored_len > 0 {
            ranges.push((begin, end, i));
        }
        tensors.push(TensorInfo {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            nbytes,
            file_offset: data_start + begin,
            stored_len,
            chunks,
            filter,
            alias_of: t.alias_of.clone(),
            layout: t.layout.clone(),
            part_of: t.part_of.clone(),
            metadata: t.metadata.clone(),
        });
    }
    check_layouts(&tensors, &index)?;

    ranges.sort_unstable();
    let mut last_end = 0u64;
    let mut last_idx = None::<usize>;
    for &(begin, end, i) in &ranges {
        if begin < last_end {
            let other = last_idx.map(|j| tensors[j].name.clone()).unwrap_or_default();
            return Err(Error::tensor(
                &tensors[i].name,
                format!("byte range [{begin}, {end}) overlaps tensor {other:?}"),
            ));
        }
        last_end = end;
        last_idx = Some(i);
    }
    if last_end != data_len {
        return Err(Error::TrailingBytes {
            extra: data_len - last_end,
            end: data_start + last_end,
        });
    }

    Ok(Layout {
        flags: preamble.flags,
        header,
        header_len: preamble.header_len,
        data_start,
        data_len,
        codec,
        checksum,
        tensors,
        index,
    })
}

/// An alias (entry `i`) must name an earlier, non-alias tensor and repeat its
/// dtype, shape, offsets, chunks and filter: it shares those bytes, and is the
/// only way two entries may share bytes.
fn check_alias(tensors: &[TensorHeader], index: &HashMap<String, usize>, i: usize, target: &str) -> Result<()> {
    let t = &tensors[i];
    let j = match index.get(target) {
        Some(&j) if j < i => j,
        _ => {
            return Err(Error::tensor(
                &t.name,
                format!("alias_of {target:?} does not name an earlier tensor"),
            ))
        }
    };
    let u = &tensors[j];
    if u.alias_of.is_some() {
        return Err(Error::tensor(
            &t.name,
            format!("alias_of {target:?} names another alias"),
        ));
    }
    if u.layout.is_some() || u.part_of.is_some() {
        return Err(Error::tensor(
            &t.name,
            format!("alias_of {target:?} names a non-dense tensor or a part of one"),
        ));
    }
    if (&t.dtype, &t.shape, t.offsets, &t.chunks, &t.filter) != (&u.dtype, &u.shape, u.offsets, &u.chunks, &u.filter) {
        return Err(Error::tensor(
            &t.name,
            format!("an alias must repeat the dtype, shape, offsets, chunks and filter of {target:?}"),
        ));
    }
    Ok(())
}

/// The byte size of a tensor of `shape` with elements of `item_size` bytes
/// (§3.4), or `None` when the shape is invalid: the product overflows 64 bits
/// left to right, or the extent (item size times the non-zero dimensions)
/// exceeds `i64::MAX`, which no framework can index even when a zero
/// dimension makes the tensor empty.
pub fn tensor_nbytes(shape: &[u64], item_size: usize) -> Option<u64> {
    let nbytes = shape.iter().try_fold(item_size as u64, |acc, &d| acc.checked_mul(d))?;
    let extent = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(item_size as u64, |acc, &d| acc.checked_mul(d))?;
    (extent <= i64::MAX as u64).then_some(nbytes)
}

/// Each layout names a registered plugin, exactly its parts, each an entry
/// marked `part_of` it, and the plugin accepts their dtypes and shapes; each
/// `part_of` entry is listed by the layout of the tensor it names.
fn check_layouts(tensors: &[TensorInfo], index: &HashMap<String, usize>) -> Result<()> {
    let layouts = registry::layouts()?;
    // (owner, entry) for every part a layout lists: one pass, so that checking
    // each `part_of` entry is a lookup, not a scan of its owner's parts (which
    // made a header of many parts quadratic to open).
    let listed_parts: HashSet<(&str, &str)> = tensors
        .iter()
        .filter_map(|t| t.layout.as_ref().map(|l| (t.name.as_str(), l)))
        .flat_map(|(owner, l)| l.parts.values().filter_map(move |v| v.as_str().map(|e| (owner, e))))
        .collect();
    for t in tensors {
        if let Some(owner) = &t.part_of {
            let listed = listed_parts.contains(&(owner.as_str(), t.name.as_str()));
            if !listed || t.layout.is_some() || t.alias_of.is_some() {
                return Err(Error::tensor(
                    &t.name,
                    format!("part_of {owner:?} but that tensor's layout does not list it"),
                ));
            }
        }
        let Some(l) = &t.layout else { continue };
        if t.part_of.is_some() || t.alias_of.is_some() {
            return Err(Error::tensor(&t.name, "a layout entry cannot be a part or an alias"));
        }
        let plugin = layouts.get(&l.id).map_err(|e| Error::tensor(&t.name, e.to_string()))?;
        let wanted = plugin.part_names();
        if l.parts.len() != wanted.len() {
            return Err(Error::tensor(
                &t.name,
                format!("layout {} needs parts {wanted:?}", l.id),
            ));
        }
        let mut parts = Vec::with_capacity(wanted.len());
        for part in wanted {
            let entry = l.parts.get(*part).and_then(Value::as_str).ok_or_else(|| {
                Error::tensor(&t.name, format!("layout {} needs part {part:?} naming an entry", l.id))
            })?;
            let p = index
                .get(entry)
                .map(|&i| &tensors[i])
                .filter(|p| p.part_of.as_deref() == Some(&t.name));
            let p = p.ok_or_else(|| {
                Error::tensor(
                    &t.name,
                    format!("part {part:?} names {entry:?}, which is not an entry part_of it"),
                )
            })?;
            parts.push((p.dtype, p.shape.as_slice()));
        }
        plugin
            .check(&l.shape, &l.params, (t.dtype, &t.shape), &parts)
            .map_err(|e| Error::tensor(&t.name, format!("layout {}: {e}", l.id)))?;
    }
    Ok(())
}

/// A plugin id the file names but this build lacks makes the file unreadable
/// here: a format error (with the ids available), not a usage error.
fn named_by_file(e: Error) -> Error {
    Error::InvalidHeader(e.to_string())
}

/// What each chunk of a tensor must respect besides its place in the byte range.
struct ChunkRules {
    /// The dtype's size: raw lengths are whole elements.
    item_size: u64,
    /// Planes per chunk when the tensor has a filter.
    planes: Option<usize>,
    /// The codec's [`Codec::max_expansion`](crate::registry::Codec::max_expansion).
    max_expansion: u64,
}

/// Refuse a compressed piece (a chunk, or one plane of it) that claims more
/// raw bytes than its codec can make of its stored bytes: a decompression
/// bomb is caught at open, and memory stays bounded by the file's size.
fn check_expansion(stored: u64, raw: u64, max_expansion: u64) -> std::result::Result<(), String> {
    if raw > stored.saturating_mul(max_expansion) {
        return Err(format!(
            "claims {raw} raw bytes from {stored} stored bytes; the codec expands at most {max_expansion}x"
        ));
    }
    Ok(())
}

fn validate_chunks(
    name: &str,
    chunks: &[Chunk],
    [begin, end]: [u64; 2],
    nbytes: u64,
    data_start: u64,
    rules: ChunkRules,
) -> Result<Vec<Chunk>> {
    let ChunkRules {
        item_size,
        planes,
        max_expansion,
    } = rules;
    let mut cursor = begin;
    let mut raw_total = 0u64;
    let mut out = Vec::with_capacity(chunks.len());
    for (k, c) in chunks.iter().enumerate() {
        let bad = |why: String| Error::tensor(name, format!("chunk {k}: {why}"));
        if c.offset() != cursor {
            return Err(bad(format!(
                "starts at {} but the previous chunk ends at {cursor}",
                c.offset()
            )));
        }
        if c.raw_len() == 0 || c.raw_len() > MAX_CHUNK_RAW_LEN {
            return Err(bad(format!(
                "raw length {} is not in 1..={MAX_CHUNK_RAW_LEN}",
                c.raw_len()
            )));
        }
        if c.raw_len() % item_size != 0 {
            return Err(bad(format!(
                "raw length {} is not a whole number of {item_size}-byte elements",
                c.raw_len()
            )));
        }
        if c.stored_len() == 0 || c.stored_len() > c.raw_len() {
            return Err(bad(format!(
                "stored length {} is not in 1..=raw length {}",
                c.stored_len(),
                c.raw_len()
            )));
        }
        match (planes, c.planes()) {
            (None, None) if c.stored_len() != c.raw_len() => {
                check_expansion(c.stored_len(), c.raw_len(), max_expansion).map_err(bad)?;
            }
            (None, None) => {}
            (None, Some(_)) => return Err(bad("lists planes but the tensor has no filter".into())),
            (Some(_), None) if c.stored_len() != c.raw_len() => {
                return Err(bad(
                    "the tensor has a filter but the compressed chunk lists no planes".into()
                ))
            }
            (Some(_), None) => {} // stored raw, unfiltered
            (Some(n), Some(lens)) => {
                if lens.len() != n {
                    return Err(bad(format!("lists {} planes, the filter makes {n}", lens.len())));
                }
                if c.raw_len() % n as u64 != 0 {
                    return Err(bad(format!(
                        "raw length {} is not a multiple of {n} planes",
                        c.raw_len()
                    )));
                }
                let plane_raw = c.raw_len() / n as u64;
                let mut sum = 0u64;
                for (p, &len) in lens.iter().enumerate() {
                    if len == 0 || len > plane_raw {
                        return Err(bad(format!("plane {p} stored length {len} is not in 1..={plane_raw}")));
                    }
                    if len != plane_raw {
                        check_expansion(len, plane_raw, max_expansion)
                            .map_err(|why| bad(format!("plane {p} {why}")))?;
                    }
                    sum += len; // n * plane_raw bounds it
                }
                if sum != c.stored_len() {
                    return Err(bad(format!(
                        "planes add up to {sum} bytes, the chunk stores {}",
                        c.stored_len()
                    )));
                }
            }
        }
        cursor = cursor
            .checked_add(c.stored_len())
            .filter(|&e| e <= end)
            .ok_or_else(|| bad(format!("runs past the tensor's byte range end {end}")))?;
        raw_total = raw_total
            .checked_add(c.raw_len())
            .ok_or_else(|| bad("raw lengths overflow".into()))?;
        out.push(Chunk::new(
            data_start + c.offset(),
            c.stored_len(),
            c.raw_len(),
            c.planes.clone(),
        ));
    }
    if cursor != end {
        return Err(Error::tensor(
            name,
            format!("chunks end at {cursor} but the byte range ends at {end}"),
        ));
    }
    if raw_total != nbytes {
        return Err(Error::tensor(
            name,
            format!("chunks decode to {raw_total} bytes but the shape needs {nbytes}"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_json_refuses_duplicate_keys_at_any_depth() {
        let top = parse_json_strict::<Value>(br#"{"a":1,"a":2}"#).unwrap_err();
        assert!(top.to_string().contains("duplicate key \"a\""), "{top}");
        let deep = parse_json_strict::<Value>(br#"{"x":[{"b":{"c":1,"c":1}}]}"#).unwrap_err();
        assert!(deep.to_string().contains("duplicate key \"c\""), "{deep}");
        assert!(parse_json_strict::<Value>(br#"{"a":{"a":1}}"#).is_ok());
    }

    #[test]
    fn strict_json_refuses_deep_nesting_and_nan() {
        let deep = "[".repeat(100_000);
        assert!(parse_json_strict::<Value>(deep.as_bytes()).is_err());
        assert!(parse_json_strict::<Value>(b"{\"a\": NaN}").is_err());
        assert!(parse_json_strict::<Value>(b"{\"a\": 1} x").is_err());
        assert!(parse_json_strict::<Value>(b"{\"a\": \"\xff\"}").is_err());
    }

    #[test]
    fn strict_json_nests_exactly_to_the_depth_asked_for() {
        let nested = |levels: usize, inner: &str| format!("{}{inner}{}", "[".repeat(levels), "]".repeat(levels));
        // An empty array at the last level counts like a full one.
        for inner in ["", "1", "{}"] {
            let extra = usize::from(inner == "{}");
            let at_limit = nested(MAX_HEADER_DEPTH - extra, inner);
            assert!(parse_json_strict::<Value>(at_limit.as_bytes()).is_ok(), "{inner}");
            let over = nested(MAX_HEADER_DEPTH + 1 - extra, inner);
            let err = parse_json_strict::<Value>(over.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("recursion limit exceeded"), "{err}");
            assert!(parse_json_strict_nested::<Value>(over.as_bytes(), MAX_HEADER_DEPTH + 1).is_ok());
        }
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_HEADER_DEPTH + 1),
            "}".repeat(MAX_HEADER_DEPTH + 1)
        );
        assert!(parse_json_strict::<Value>(objects.as_bytes()).is_err());
        assert!(parse_json_strict_nested::<Value>(objects.as_bytes(), MAX_HEADER_DEPTH + 1).is_ok());
    }

    #[test]
    fn header_parts_must_be_objects_not_arrays() {
        // serde alone would accept these positional forms.
        assert!(Header::parse(br#"[{}, null, null, []]"#).is_err());
        let tensor_as_array = br#"{"tensors":[["a","F32",[2],[0,8]]]}"#;
        let err = Header::parse(tensor_as_array).unwrap_err();
        assert!(err.to_string().contains("tensors[0]"), "{err}");
        assert!(Header::parse(br#"{"compression":["zstd",3],"tensors":[]}"#).is_err());
        let ok = Header::parse(br#"{"tensors":[{"name":"a","dtype":"F32","shape":[2],"offsets":[0,8]}]}"#).unwrap();
        assert_eq!(ok.tensors[0].name, "a");
    }

    #[test]
    fn header_places_are_checked_in_the_strict_walk() {
        let message = |text: &[u8]| Header::parse(text).unwrap_err().to_string();
        assert!(message(br#""text""#).contains("the header must be a JSON object"));
        assert!(
            message(br#"{"tensors":[{"name":"a","dtype":"U8","shape":[0],"offsets":[0,0]},7]}"#)
                .contains("tensors[1] must be a JSON object")
        );
        assert!(message(br#"{"compression":"zstd","tensors":[]}"#).contains("\"compression\" must be a JSON object"));
        // null is an absent compression; arrays elsewhere are data.
        let ok = Header::parse(br#"{"compression":null,"metadata":{"list":[[1],{"x":[]}]},"tensors":[]}"#).unwrap();
        assert!(ok.compression.is_none());
        // The shape rules apply to headers only, not to other strict JSON.
        assert!(parse_json_strict::<Value>(b"[1, 2]").is_ok());
    }

    #[test]
    fn chunks_are_three_numbers_or_three_and_the_planes() {
        let chunk = |text: &str| serde_json::from_str::<Chunk>(text);
        assert_eq!(chunk("[1,2,3]").unwrap(), Chunk::new(1, 2, 3, None));
        assert_eq!(chunk("[1,2,3,[4,5]]").unwrap(), Chunk::new(1, 2, 3, Some(vec![4, 5])));
        for bad in [
            "[1,2]",
            "[]",
            "[1,2,3,[4],5]",
            "[1,2,3,null]",
            "[1,2,\"3\"]",
            "[1,2,-3]",
            r#"{"offset":1}"#,
            "7",
        ] {
            assert!(chunk(bad).is_err(), "{bad} was accepted");
        }
        for c in [Chunk::new(1, 2, 3, None), Chunk::new(9, 8, 7, Some(vec![1, 2]))] {
            assert_eq!(chunk(&serde_json::to_string(&c).unwrap()).unwrap(), c);
        }
    }

    #[test]
    fn preamble_round_trips_and_checks() {
        let p = Preamble {
            flags: FLAG_CHECKSUM,
            header_len: 1234,
        };
        assert_eq!(Preamble::decode(&p.encode()).unwrap(), p);
        let mut bad = p.encode();
        bad[0] = b'X';
        assert!(matches!(Preamble::decode(&bad), Err(Error::BadMagic { .. })));
        let mut v2 = p.encode();
        v2[8] = 2;
        assert!(matches!(Preamble::decode(&v2), Err(Error::UnsupportedVersion(2))));
        let enc = Preamble {
            flags: FLAG_ENCRYPTED,
            header_len: 2,
        }
        .encode();
        assert!(matches!(Preamble::decode(&enc), Err(Error::Encrypted)));
        let unk = Preamble {
            flags: 1 << 7,
            header_len: 2,
        }
        .encode();
        assert!(matches!(Preamble::decode(&unk), Err(Error::UnknownFlags(0x80))));
    }

    #[test]
    fn padding_reaches_eight() {
        for len in 0..64u64 {
            assert_eq!((PREAMBLE_LEN + len + nul_padding(len)) % 8, 0);
            assert!(nul_padding(len) < 8);
        }
        assert_eq!(align_up(65, 64), Some(128));
        assert_eq!(align_up(u64::MAX, 64), None);
    }
}
