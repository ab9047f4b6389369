//! The JSON manifest sidecar: a small file that describes a `.deathtensors`
//! file (its full header, size, codec, checksum algorithm and footer digest)
//! so that it can be browsed without downloading the file itself.
//!
//! The sidecar of `model.deathtensors` is `model.deathtensors.manifest.json`
//! ([`sidecar_path`]), in the same folder. `docs/format_spec.md` (§13) is the
//! normative description of its schema:
//!
//! ```json
//! {
//!   "manifest_version": 1,
//!   "generator": "deathtensors 0.3.0",
//!   "file_name": "model.deathtensors",
//!   "file_size": 2180900,
//!   "format_version": 1,
//!   "flags": 3,
//!   "header_len": 1064,
//!   "data_start": 1088,
//!   "codec": "zstd",
//!   "compression_level": 3,
//!   "checksum": "blake3",
//!   "digest": "9d0c...",
//!   "metadata": {"model": "demo"},
//!   "tensor_count": 3,
//!   "total_nbytes": 2621952,
//!   "tensors": [{"name": "w", "dtype": "F32", "shape": [640, 1024], "numel": 655360,
//!                "nbytes": 2621440, "stored_nbytes": 2179716, "chunks": 3, "metadata": {}}],
//!   "header": {"metadata": {"model": "demo"}, "compression": {"codec": "zstd", "level": 3}, "...": "..."}
//! }
//! ```
//!
//! Building a manifest reads the header and the 32-byte footer only: no
//! tensor data is read, and the digest is the one stored in the footer (not
//! recomputed; use [`DtReader::verify`] for that).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::atomic::AtomicFile;
use crate::error::{Error, Result};
use crate::format::{Header, TensorInfo, VERSION};
use crate::jsonfile::read_json_file;
use crate::reader::{hex, DtReader};

/// The value of the `manifest_version` key this crate writes and reads.
pub const MANIFEST_VERSION: u64 = 1;

/// What the sidecar's name adds to the file's name.
pub const SIDECAR_SUFFIX: &str = ".manifest.json";

/// Largest manifest [`read`] accepts and [`write_manifest`] writes, in bytes:
/// a manifest holds the header (which readers bound at 100 MB by default)
/// and a summary line per tensor, written compactly once the header is large
/// ([`manifest_text`]).
pub const MAX_MANIFEST_LEN: u64 = 4 * crate::format::DEFAULT_MAX_HEADER_LEN;

/// A header up to this many bytes gets an indented manifest; a larger one a
/// compact one (indenting a header of many chunks made it several times larger).
const INDENT_UP_TO: u64 = 1 << 20;

/// The default sidecar path of `dt_path`: the same path with
/// [`SIDECAR_SUFFIX`] appended (`model.deathtensors` →
/// `model.deathtensors.manifest.json`).
pub fn sidecar_path(dt_path: impl AsRef<Path>) -> PathBuf {
    let mut name = dt_path.as_ref().as_os_str().to_owned();
    name.push(SIDECAR_SUFFIX);
    PathBuf::from(name)
}

/// One row of `tensors`, borrowed from the layout.
#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    dtype: &'a str,
    shape: &'a [u64],
    numel: u64,
    nbytes: u64,
    stored_nbytes: u64,
    chunks: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alias_of: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layout: Option<LayoutRow<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    part_of: Option<&'a str>,
    metadata: &'a Map<String, Value>,
}

/// The `layout` of a row: the layout id and the logical shape.
#[derive(Serialize)]
struct LayoutRow<'a> {
    id: &'a str,
    shape: &'a [u64],
}

/// The rows, serialized one at a time.
struct Rows<'a>(&'a [TensorInfo]);

impl Serialize for Rows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|t| Row {
            name: &t.name,
            dtype: t.dtype.id(),
            shape: &t.shape,
            numel: t.numel(),
            nbytes: t.nbytes,
            stored_nbytes: t.stored_len,
            chunks: t.chunks.as_ref().map(Vec::len),
            alias_of: t.alias_of.as_deref(),
            layout: t.layout.as_deref().map(|l| LayoutRow {
                id: &l.id,
                shape: &l.shape,
            }),
            part_of: t.part_of.as_deref(),
            metadata: &t.metadata,
        }))
    }
}

/// A manifest, borrowed from an open file: serialized straight to text (a
/// `Value` tree of a 200,000-tensor header cost about 30 times the header).
#[derive(Serialize)]
struct Manifest<'a> {
    manifest_version: u64,
    generator: &'static str,
    file_name: String,
    file_size: u64,
    format_version: u32,
    flags: u32,
    header_len: u64,
    data_start: u64,
    codec: Option<&'static str>,
    compression_level: Option<i32>,
    checksum: Option<&'static str>,
    digest: Option<String>,
    metadata: &'a Map<String, Value>,
    tensor_count: usize,
    total_nbytes: u64,
    tensors: Rows<'a>,
    header: &'a Header,
}

impl<'a> Manifest<'a> {
    fn of(reader: &'a DtReader) -> Result<Self> {
        let layout = reader.layout();
        let digest = match reader.checksum() {
            Some(_) => Some(hex(&reader.stored_digest()?)),
            None => None,
        };
        let tensors = reader.tensors();
        Ok(Manifest {
            manifest_version: MANIFEST_VERSION,
            generator: concat!("deathtensors ", env!("CARGO_PKG_VERSION")),
            file_name: reader
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            file_size: reader.file_len(),
            format_version: VERSION,
            flags: layout.flags,
            header_len: layout.header_len,
            data_start: layout.data_start,
            codec: reader.codec().map(|c| c.id()),
            compression_level: layout.header.compression.as_ref().map(|c| c.level),
            checksum: reader.checksum().map(|c| c.id()),
            digest,
            metadata: reader.metadata(),
            tensor_count: tensors.iter().filter(|t| t.part_of.is_none()).count(),
            total_nbytes: tensors.iter().filter(|t| t.alias_of.is_none()).map(|t| t.nbytes).sum(),
            tensors: Rows(tensors),
            header: &layout.header,
        })
    }
}

/// Open the file whose manifest is wanted. A path that names a sharded
/// checkpoint ([`crate::sharded::names_checkpoint`]: its index, or its base
/// path) is refused with what to do instead: a manifest describes one file.
///
/// # Errors
/// [`Error::InvalidArgument`] for a checkpoint; as [`DtReader::open`].
pub fn open_described(path: impl AsRef<Path>) -> Result<DtReader> {
    let path = path.as_ref();
    // Only a path that leads to a valid index: a missing `.json` file or a
    // manifest sidecar given by mistake get the errors of opening them.
    let index = crate::sharded::names_checkpoint(path)
        .then(|| crate::sharded::ShardedIndex::of_checkpoint(path).ok())
        .flatten();
    if let Some(index) = index {
        let first = index.by_shard().first().map(|(s, _)| (*s).to_owned());
        return Err(Error::InvalidArgument(format!(
            "{} names a sharded checkpoint, and a manifest describes one file: write one per shard \
             (`deathtensors manifest {}`, or deathtensors.write_manifest of each)",
            path.display(),
            first.as_deref().unwrap_or("SHARD")
        )));
    }
    DtReader::open(path)
}

/// The manifest of an open file, as a JSON object.
///
/// It holds the full header (as parsed), the file's name (without its
/// folder) and size, the format version, the flags, the codec and level, the
/// checksum algorithm and the footer's digest in lower-case hex (`null` when
/// the file has no footer), the global metadata and a summary row per header
/// entry. Reads nothing but the 32-byte footer.
///
/// # Errors
/// I/O errors reading the footer.
pub fn manifest(reader: &DtReader) -> Result<Value> {
    serde_json::to_value(Manifest::of(reader)?)
        .map_err(|e| Error::InvalidArgument(format!("the manifest does not serialize: {e}")))
}

/// Write the manifest of `reader` to `out`, or to [`sidecar_path`] of the
/// file when `out` is `None`, and return the path written.
///
/// The JSON ([`manifest_text`]) goes to a temporary file in the
/// target's folder which is synced and renamed over the target, so readers
/// never see a partial manifest.
///
/// # Errors
/// I/O errors reading the footer or writing the sidecar;
/// [`Error::InvalidArgument`] when `out` is the tensor file itself (through a
/// symbolic link or not), which the manifest would replace.
pub fn write_manifest(reader: &DtReader, out: Option<&Path>) -> Result<PathBuf> {
    let target = out.map_or_else(|| sidecar_path(reader.path()), Path::to_path_buf);
    crate::atomic::refuse_same_file(
        reader.path(),
        &target,
        "writing the manifest there would replace the tensor file",
    )?;
    let text = manifest_text(reader)?;
    write_atomically(&target, text.as_bytes())?;
    Ok(target)
}

/// The manifest of `reader` as the text [`write_manifest`] writes: indented
/// for a header up to 1 MiB, on one line above that, with a final newline.
///
/// # Errors
/// As [`manifest`]; [`Error::InvalidArgument`] when the text would be over
/// [`MAX_MANIFEST_LEN`], which [`read`] refuses.
pub fn manifest_text(reader: &DtReader) -> Result<String> {
    let value = Manifest::of(reader)?;
    let mut text = if reader.layout().data_start - crate::format::PREAMBLE_LEN <= INDENT_UP_TO {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    }
    .map_err(|e| Error::InvalidArgument(format!("the manifest does not serialize: {e}")))?;
    text.push('\n');
    if text.len() as u64 > MAX_MANIFEST_LEN {
        return Err(Error::InvalidArgument(format!(
            "the manifest of {} would be {} bytes, over the {MAX_MANIFEST_LEN} that manifests may hold",
            reader.path().display(),
            text.len()
        )));
    }
    Ok(text)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = AtomicFile::create(path)?;
    out.file().write_all(bytes).map_err(|e| Error::io(path, e))?;
    out.commit(true)
}

/// Read a manifest written by [`write_manifest`] and check that it is one.
///
/// The text must be strict JSON (no duplicate keys) holding an object with
/// `"manifest_version": 1`, the keys of §13 of the format spec with their
/// types, and a `header` that is a valid header object.
///
/// # Errors
/// I/O errors; [`Error::InvalidManifest`] (a format error) naming what makes
/// the file not a manifest, or a `manifest_version` this crate does not know.
pub fn read(path: impl AsRef<Path>) -> Result<Value> {
    let path = path.as_ref();
    let bad = |reason: String| Error::InvalidManifest {
        path: path.to_owned(),
        reason,
    };
    let value = read_json_file(path, MAX_MANIFEST_LEN, bad)?;
    check(&value).map_err(bad)?;
    Ok(value)
}

/// Check the shape of a manifest value; the reason it is not one otherwise.
///
/// # Errors
/// A message naming the first missing or ill-typed key.
pub fn check(value: &Value) -> std::result::Result<(), String> {
    let top = value.as_object().ok_or("the top level is not a JSON object")?;
    match top.get("manifest_version") {
        None => return Err("it has no \"manifest_version\" key".into()),
        Some(v) => match v.as_u64() {
            Some(MANIFEST_VERSION) => {}
            Some(n) if n > MANIFEST_VERSION => {
                return Err(format!(
                    "manifest_version {n} is newer than this reader understands ({MANIFEST_VERSION})"
                ))
            }
            _ => return Err(format!("manifest_version is {v}, expected {MANIFEST_VERSION}")),
        },
    }
    let need = |key: &str, ok: fn(&Value) -> bool, what: &str| match top.get(key) {
        Some(v) if ok(v) => Ok(()),
        Some(v) => Err(format!("{key:?} must be {what}, not {v}")),
        None => Err(format!("the key {key:?} is missing")),
    };
    let nullable_str = |v: &Value| v.is_null() || v.is_string();
    need("file_name", Value::is_string, "a string")?;
    need("file_size", Value::is_u64, "a non-negative integer")?;
    need("format_version", Value::is_u64, "a non-negative integer")?;
    need("codec", nullable_str, "a string or null")?;
    need("checksum", nullable_str, "a string or null")?;
    need("digest", nullable_str, "a string or null")?;
    need("metadata", Value::is_object, "an object")?;
    need("tensors", Value::is_array, "an array")?;
    need("header", Value::is_object, "an object")?;
    let header_text = serde_json::to_vec(&top["header"]).map_err(|e| e.to_string())?;
    let header = Header::parse(&header_text).map_err(|e| format!("\"header\": {e}"))?;
    let rows = top["tensors"].as_array().map_or(0, Vec::len);
    if rows != header.tensors.len() {
        return Err(format!(
            "\"tensors\" has {rows} rows but the header has {} entries",
            header.tensors.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[test]
    fn sidecar_name_appends_suffix() {
        assert_eq!(
            sidecar_path("/a/b/model.deathtensors"),
            PathBuf::from("/a/b/model.deathtensors.manifest.json")
        );
        assert_eq!(sidecar_path("m.dt"), PathBuf::from("m.dt.manifest.json"));
    }

    #[test]
    fn check_names_what_is_wrong() {
        let ok = json!({
            "manifest_version": 1, "file_name": "m", "file_size": 10, "format_version": 1,
            "codec": null, "checksum": "sha256", "digest": "00", "metadata": {},
            "tensors": [{"name": "a"}],
            "header": {"tensors": [{"name": "a", "dtype": "F32", "shape": [], "offsets": [0, 4]}]},
        });
        assert_eq!(check(&ok), Ok(()));
        let mut v = ok.clone();
        v["manifest_version"] = json!(2);
        assert!(check(&v).unwrap_err().contains("newer"));
        let mut v = ok.clone();
        v.as_object_mut().unwrap().remove("manifest_version");
        assert!(check(&v).unwrap_err().contains("manifest_version"));
        let mut v = ok.clone();
        v["file_size"] = json!("ten");
        assert!(check(&v).unwrap_err().contains("file_size"));
        let mut v = ok.clone();
        v["header"]["extra"] = json!(1);
        assert!(check(&v).unwrap_err().contains("header"));
        let mut v = ok;
        v["tensors"] = json!([]);
        assert!(check(&v).unwrap_err().contains("rows"));
        assert!(check(&json!([1])).is_err());
    }
}
