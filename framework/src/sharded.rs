//! The index of a sharded checkpoint: many `.deathtensors` files plus one
//! JSON file that says which tensor lives in which shard.
//!
//! The layout follows the convention of `model.safetensors.index.json`:
//!
//! ```text
//! big_model-00001-of-00003.deathtensors
//! big_model-00002-of-00003.deathtensors
//! big_model-00003-of-00003.deathtensors
//! big_model.deathtensors.index.json
//! ```
//!
//! ```json
//! {
//!   "metadata": {"total_size": 123456789, "format": "deathtensors", "global_metadata": {}},
//!   "weight_map": {"layer.0.weight": "big_model-00001-of-00003.deathtensors"}
//! }
//! ```
//!
//! `weight_map` lists the tensors in saved order; `total_size` is the sum of
//! the raw bytes stored (a sparse tensor's indices count, a second name of a
//! tied weight does not: see [`ShardedIndex::stored_nbytes`]);
//! `global_metadata` is there only when the writer got some.
//! The Python package writes indexes (`save_sharded`); both fronts read them
//! through [`ShardedIndex`].
//!
//! An index is untrusted input: a JSON object of at most [`MAX_INDEX_BYTES`]
//! bytes (strict JSON, as the file header) whose `weight_map` maps names to
//! plain file names in the index's own folder (see [`bad_shard_name`]), so a
//! hostile index cannot reach a file outside that folder.

use std::path::{Path, PathBuf};

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Mutex, PoisonError};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::format::TensorInfo;
use crate::jsonfile::{parse_json_text, read_json_file};
use crate::reader::DtReader;

/// What a checkpoint's stem gets to name its index.
pub const INDEX_SUFFIX: &str = ".deathtensors.index.json";
/// The value of `metadata.format` in a deathtensors index.
pub const INDEX_FORMAT: &str = "deathtensors";
/// An index larger than this is refused (one for 10^6 tensors is about 100 MB).
pub const MAX_INDEX_BYTES: u64 = 100 * 1024 * 1024;
/// Endings stripped from a path to find a checkpoint's stem.
const STEM_ENDINGS: [&str; 4] = [INDEX_SUFFIX, ".dt.index.json", ".deathtensors", ".dt"];

/// A checked index: its `metadata` and its `weight_map`, in file order.
#[derive(Debug, Clone)]
pub struct ShardedIndex {
    path: PathBuf,
    metadata: Map<String, Value>,
    weight_map: Vec<(String, String)>,
}

impl ShardedIndex {
    /// Read the index at `path`: a JSON object of at most `max_bytes` whose
    /// `weight_map` is an object of plain shard file names. This is all that
    /// Hugging Face indexes (`model.safetensors.index.json`) promise; see
    /// [`ShardedIndex::read_deathtensors`] for the checks of our own.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; [`Error::InvalidIndex`] naming
    /// the first rule it breaks.
    pub fn read(path: impl AsRef<Path>, max_bytes: u64) -> Result<Self> {
        let path = path.as_ref();
        let value = read_json_file(path, max_bytes, |reason| Error::InvalidIndex {
            path: path.to_owned(),
            reason,
        })?;
        Self::from_value(path, value)
    }

    /// [`ShardedIndex::read`] of index text already in memory (`path` names
    /// it in messages and places its shards).
    ///
    /// # Errors
    /// [`Error::InvalidIndex`] naming the first rule `text` breaks.
    pub fn parse(path: impl AsRef<Path>, text: &[u8]) -> Result<Self> {
        let path = path.as_ref();
        let value = parse_json_text(text, |reason| Error::InvalidIndex {
            path: path.to_owned(),
            reason,
        })?;
        Self::from_value(path, value)
    }

    fn from_value(path: &Path, value: Value) -> Result<Self> {
        let bad = |reason: String| Error::InvalidIndex {
            path: path.to_owned(),
            reason,
        };
        let Value::Object(mut doc) = value else {
            return Err(bad("it must be a JSON object".into()));
        };
        let weight_map = match doc.remove("weight_map") {
            None => return Err(bad("it has no \"weight_map\"".into())),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(bad(format!(
                    "\"weight_map\" must be a JSON object, not {}",
                    json_kind(&other)
                )))
            }
        };
        let mut pairs = Vec::with_capacity(weight_map.len());
        for (tensor, shard) in weight_map {
            let why = match &shard {
                Value::String(name) => bad_shard_name(name).map(|why| format!("-> {} {why}", quoted(name))),
                other => Some(format!("is {}, not a string", json_kind(other))),
            };
            if let Some(why) = why {
                return Err(bad(format!(
                    "weight_map entry {} {why}; shards must be plain file names in the index's folder",
                    quoted(&tensor)
                )));
            }
            if let Value::String(name) = shard {
                pairs.push((tensor, name));
            }
        }
        let metadata = match doc.remove("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(bad(format!(
                    "\"metadata\" must be a JSON object, not {}",
                    json_kind(&other)
                )))
            }
        };
        Ok(ShardedIndex {
            path: path.to_owned(),
            metadata,
            weight_map: pairs,
        })
    }

    /// [`ShardedIndex::read`], then the rules of a deathtensors index:
    /// `metadata.format` is [`INDEX_FORMAT`] when present, `total_size` a
    /// non-negative integer when present and not `null`, `global_metadata`
    /// an object when present.
    ///
    /// # Errors
    /// As [`ShardedIndex::read`].
    pub fn read_deathtensors(path: impl AsRef<Path>, max_bytes: u64) -> Result<Self> {
        let index = Self::read(path, max_bytes)?;
        index.check_deathtensors()?;
        Ok(index)
    }

    /// The rules of a deathtensors index beyond [`ShardedIndex::read`]'s (see
    /// [`ShardedIndex::read_deathtensors`]).
    ///
    /// # Errors
    /// [`Error::InvalidIndex`] naming the first rule broken.
    pub fn check_deathtensors(&self) -> Result<()> {
        let bad = |reason: String| Error::InvalidIndex {
            path: self.path.clone(),
            reason,
        };
        let m = &self.metadata;
        match m.get("format") {
            None => {
                // A Hugging Face index of safetensors shards: say so now, not
                // "not a deathtensors file" of its first shard when a tensor is read.
                if let Some((_, shard)) = self.weight_map.iter().find(|(_, s)| s.ends_with(".safetensors")) {
                    return Err(bad(format!(
                        "it is a safetensors index (shard {shard:?}), not a deathtensors one: convert the \
                         checkpoint first (deathtensors.from_safetensors, or `deathtensors convert`)"
                    )));
                }
            }
            Some(Value::String(f)) if f == INDEX_FORMAT => {}
            Some(other) => return Err(bad(format!("metadata.format is {other}, not {INDEX_FORMAT:?}"))),
        }
        if let Some(total) = m.get("total_size").filter(|t| !t.is_null()) {
            if total.as_u64().is_none() {
                return Err(bad(format!(
                    "metadata.total_size must be a non-negative integer, not {total}"
                )));
            }
        }
        if let Some(g) = m.get("global_metadata").filter(|g| !g.is_object()) {
            return Err(bad(format!(
                "metadata.global_metadata must be a JSON object, not {}",
                json_kind(g)
            )));
        }
        Ok(())
    }

    /// The checked index of the checkpoint `path` names (see [`resolve_index`]),
    /// read with the default size limit.
    ///
    /// # Errors
    /// As [`resolve_index`] and [`ShardedIndex::read_deathtensors`].
    pub fn of_checkpoint(path: impl AsRef<Path>) -> Result<Self> {
        Self::read_deathtensors(resolve_index(path)?, MAX_INDEX_BYTES)
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder holding the index and its shards.
    pub fn folder(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// The index's `metadata` object (`{}` when absent).
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// `metadata.global_metadata`: the checkpoint's global metadata (`None` when absent).
    pub fn global_metadata(&self) -> Option<&Map<String, Value>> {
        self.metadata.get("global_metadata").and_then(Value::as_object)
    }

    /// `metadata.total_size`: the raw bytes of every tensor (`None` when absent or `null`).
    pub fn total_size(&self) -> Option<u64> {
        self.metadata.get("total_size").and_then(Value::as_u64)
    }

    /// `(tensor, shard file name)` pairs in index (saved) order.
    pub fn weight_map(&self) -> &[(String, String)] {
        &self.weight_map
    }

    /// Every shard named by the index, once each, in the order they first
    /// appear, with the tensors the index places in it (in index order).
    pub fn by_shard(&self) -> Vec<(&str, Vec<&str>)> {
        let mut position = std::collections::HashMap::new();
        let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
        for (tensor, shard) in &self.weight_map {
            let i = *position.entry(shard.as_str()).or_insert_with(|| {
                out.push((shard.as_str(), Vec::new()));
                out.len() - 1
            });
            out[i].1.push(tensor.as_str());
        }
        out
    }

    /// Open `shard` and check that it holds `tensors` (those the index
    /// places in it, see [`ShardedIndex::by_shard`]) as tensors of its own.
    /// To visit a checkpoint one shard at a time (one file open at once),
    /// call it for each item of [`ShardedIndex::by_shard`].
    ///
    /// # Errors
    /// [`Error::InShard`] naming `shard`: it cannot be opened, is not a valid
    /// file, or lacks one of `tensors` (or holds it only as a stored part of
    /// another tensor).
    pub fn open_shard(&self, shard: &str, tensors: &[&str]) -> Result<DtReader> {
        in_shard(shard, || {
            let r = DtReader::open(self.shard_path(shard))?;
            // A stored part of another tensor (sparse indices) is not a tensor of its own.
            let held = |t: &str| r.tensor(t).is_ok_and(|info| info.part_of.is_none());
            let missing: Vec<&str> = tensors.iter().copied().filter(|t| !held(t)).collect();
            if missing.is_empty() {
                return Ok(r);
            }
            Err(Error::InvalidIndex {
                path: self.path.clone(),
                reason: format!(
                    "it places {} tensor(s) in this shard that it lacks: {:?}",
                    missing.len(),
                    &missing[..missing.len().min(10)]
                ),
            })
        })
    }

    /// The bytes that the tensors `tensors` of one shard add to `total_size`:
    /// each one's raw bytes plus those of its stored parts (a sparse tensor's
    /// indices), and nothing for a second name of a tensor (tied weights),
    /// which the shard stores once. This is what `save_sharded` writes.
    ///
    /// # Errors
    /// [`Error::TensorNotFound`] when the shard lacks one of `tensors`; a
    /// format error naming the shard when it holds tensors besides them (the
    /// index would hide them: a shard of another checkpoint, or tampering).
    pub fn stored_nbytes(shard: &DtReader, tensors: &[&str]) -> Result<u64> {
        for t in tensors {
            shard.tensor(t)?;
        }
        let wanted: std::collections::HashSet<&str> = tensors.iter().copied().collect();
        let extra: Vec<&str> = shard
            .tensors()
            .iter()
            .filter(|t| t.part_of.is_none() && !wanted.contains(t.name.as_str()))
            .map(|t| t.name.as_str())
            .collect();
        if let Some(first) = extra.first() {
            let reason = format!(
                "the index does not place it in this shard ({} such tensor(s): {:?})",
                extra.len(),
                &extra[..extra.len().min(10)]
            );
            return Err(Error::tensor(first, reason).in_file(shard.path()));
        }
        Ok(shard
            .tensors()
            .iter()
            .filter(|t| t.alias_of.is_none())
            .filter(|t| wanted.contains(t.part_of.as_deref().unwrap_or(&t.name)))
            .map(|t| t.nbytes)
            .fold(0, u64::saturating_add))
    }

    /// The path of a shard named by the index.
    pub fn shard_path(&self, shard: &str) -> PathBuf {
        self.path.with_file_name(shard)
    }

    /// The index as JSON (`{"metadata": ..., "weight_map": {...}}`), after its checks.
    pub fn to_json(&self) -> Value {
        let weight_map: Map<String, Value> = self
            .weight_map
            .iter()
            .map(|(t, s)| (t.clone(), Value::String(s.clone())))
            .collect();
        serde_json::json!({"metadata": self.metadata, "weight_map": weight_map})
    }
}

/// A checkpoint with every shard open, each checked to hold the tensors the
/// index places in it. While one is open, the soft limit on open files is
/// lifted to the hard one ([`OpenFileLimit`]): a checkpoint of more shards
/// than `ulimit -Sn` (256 on macOS, 1024 on most Linux) still opens.
pub struct Checkpoint {
    index: ShardedIndex,
    /// `(shard file name, its reader)`, in the order the index first names them.
    shards: Vec<(String, DtReader)>,
    /// Tensor name → position of its shard in `shards`.
    shard_of: HashMap<String, usize>,
    /// Dropped after the shards (fields drop in order).
    _limit: OpenFileLimit,
}

/// While one lives (in any thread), the soft limit on open files
/// (`RLIMIT_NOFILE`, `ulimit -Sn`) is lifted to the hard limit; when the last
/// one is dropped the old soft limit is put back (a lower soft limit closes
/// nothing already open). Where the limit cannot be raised, nothing changes.
pub struct OpenFileLimit(());

/// How many [`OpenFileLimit`]s live, and the soft limit to put back.
static LIFTED: Mutex<(usize, Option<libc::rlimit>)> = Mutex::new((0, None));

impl OpenFileLimit {
    /// Lift the soft limit (once for all the guards alive at a time).
    pub fn lift() -> Self {
        let mut lifted = LIFTED.lock().unwrap_or_else(PoisonError::into_inner);
        if lifted.0 == 0 {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: both calls only read or write the struct they are given.
            lifted.1 = unsafe {
                (libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max)
                    .then(|| {
                        let old = limit;
                        limit.rlim_cur = limit.rlim_max;
                        (libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0).then_some(old)
                    })
                    .flatten()
            };
        }
        lifted.0 += 1;
        OpenFileLimit(())
    }
}

impl Drop for OpenFileLimit {
    fn drop(&mut self) {
        let mut lifted = LIFTED.lock().unwrap_or_else(PoisonError::into_inner);
        lifted.0 -= 1;
        if lifted.0 == 0 {
            if let Some(old) = lifted.1.take() {
                // SAFETY: as in `lift`.
                unsafe {
                    libc::setrlimit(libc::RLIMIT_NOFILE, &old);
                }
            }
        }
    }
}

impl Checkpoint {
    /// Open every shard of `index`, in the order it first names them.
    ///
    /// # Errors
    /// [`Error::InShard`] naming the first shard that cannot be opened, is
    /// not a valid file, or lacks a tensor the index places in it.
    pub fn open(index: ShardedIndex) -> Result<Self> {
        let limit = OpenFileLimit::lift();
        let mut shards = Vec::new();
        let mut shard_of = HashMap::with_capacity(index.weight_map.len());
        for (shard, tensors) in index.by_shard() {
            let r = index.open_shard(shard, &tensors)?;
            for t in tensors {
                shard_of.insert(t.to_owned(), shards.len());
            }
            shards.push((shard.to_owned(), r));
        }
        Ok(Checkpoint {
            index,
            shards,
            shard_of,
            _limit: limit,
        })
    }

    /// The index.
    pub fn index(&self) -> &ShardedIndex {
        &self.index
    }

    /// `(shard file name, its reader)`, in the order the index first names them.
    pub fn shards(&self) -> &[(String, DtReader)] {
        &self.shards
    }

    /// The shard holding `tensor` and its reader.
    ///
    /// # Errors
    /// [`Error::TensorNotFound`] when the index does not name `tensor`.
    pub fn shard(&self, tensor: &str) -> Result<(&str, &DtReader)> {
        let (name, r) = self
            .shard_of
            .get(tensor)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| Error::TensorNotFound(tensor.to_owned()))?;
        Ok((name, r))
    }

    /// Every tensor of the index, in index order, with the reader of its shard.
    pub fn tensors(&self) -> impl Iterator<Item = (&DtReader, &TensorInfo)> + '_ {
        self.index.weight_map.iter().filter_map(|(t, _)| {
            let (_, r) = self.shard(t).ok()?;
            Some((r, r.tensor(t).ok()?))
        })
    }
}

/// `f`'s result, its error naming the shard ([`Error::InShard`]).
///
/// # Errors
/// `f`'s.
pub fn in_shard<T>(shard: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    f().map_err(|e| Error::InShard {
        shard: shard.to_owned(),
        // The shard's name says where: not its path again.
        source: Box::new(match e {
            Error::InFile { source, .. } => *source,
            e => e,
        }),
    })
}

/// What a path names: one file, or a sharded checkpoint (see [`names_checkpoint`]).
pub enum Source {
    /// One `.deathtensors` file.
    File(DtReader),
    /// A sharded checkpoint, every shard open.
    Checkpoint(Checkpoint),
}

impl Source {
    /// Open `path` as a checkpoint when [`names_checkpoint`] says it names
    /// one (its index checked by [`ShardedIndex::read_deathtensors`]), else
    /// as one file.
    ///
    /// # Errors
    /// As [`DtReader::open`], or [`resolve_index`], [`ShardedIndex::read_deathtensors`]
    /// and [`Checkpoint::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if names_checkpoint(path) {
            Ok(Source::Checkpoint(Checkpoint::open(ShardedIndex::of_checkpoint(
                path,
            )?)?))
        } else {
            Ok(Source::File(DtReader::open(path)?))
        }
    }
}

/// Why `name` is not a plain file name in the index's folder, or `None` if it is.
///
/// Refused: the empty name, NUL, `/` or `\`, `.` and `..`, and drive-letter
/// names (`C:x`), whichever system reads the index.
pub fn bad_shard_name(name: &str) -> Option<&'static str> {
    let bytes = name.as_bytes();
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('\0') {
        Some("contains a NUL character")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name == "." || name == ".." {
        Some("is a relative folder reference")
    } else if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        Some("is an absolute path")
    } else {
        None
    }
}

/// The stem of a checkpoint's path: `path` without the first of
/// [`INDEX_SUFFIX`], `.dt.index.json`, `.deathtensors` or `.dt` it ends in
/// (`big.deathtensors` → `big`). Shards are `{stem}-0000k-of-0000n.deathtensors`
/// and the index `{stem}.deathtensors.index.json`.
pub fn checkpoint_stem(path: impl AsRef<Path>) -> PathBuf {
    let bytes = path.as_ref().as_os_str().as_bytes();
    let stem = STEM_ENDINGS
        .iter()
        .find_map(|e| bytes.strip_suffix(e.as_bytes()))
        .unwrap_or(bytes);
    PathBuf::from(OsStr::from_bytes(stem))
}

/// The index of the sharded checkpoint `path` names: `path` itself when it
/// ends in `.json` (or is a file other than a `.deathtensors`/`.dt` one),
/// else `path` + `.index.json`, else its stem + [`INDEX_SUFFIX`], whichever
/// exists first (`big.deathtensors` → `big.deathtensors.index.json`).
///
/// # Errors
/// [`Error::Io`] (not found) listing the names tried.
pub fn resolve_index(path: impl AsRef<Path>) -> Result<PathBuf> {
    let path = path.as_ref();
    let bytes = path.as_os_str().as_bytes();
    let is_tensor_file = bytes.ends_with(b".deathtensors") || bytes.ends_with(b".dt");
    if bytes.ends_with(b".json") || (path.is_file() && !is_tensor_file) {
        return Ok(path.to_owned());
    }
    // Built from the bytes, so that a path that is not UTF-8 keeps its name.
    let joined = |a: &[u8], b: &[u8]| PathBuf::from(OsStr::from_bytes(&[a, b].concat()));
    let mut candidates = vec![joined(bytes, b".index.json")];
    let by_stem = joined(checkpoint_stem(path).as_os_str().as_bytes(), INDEX_SUFFIX.as_bytes());
    if by_stem != candidates[0] {
        candidates.push(by_stem);
    }
    if let Some(found) = candidates.iter().find(|c| c.exists()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|c| quoted(&c.to_string_lossy())).collect();
    Err(Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no sharded index for {} (tried {})",
                quoted(&path.to_string_lossy()),
                tried.join(", ")
            ),
        ),
    ))
}

/// Whether `path` names a sharded checkpoint rather than one file: it ends
/// in `.json` (an index) and is not a tensor file under that name (it does
/// not start with the magic), or it does not exist and
/// [`resolve_index`] finds an index for it (`big.deathtensors` when only
/// `big.deathtensors.index.json` and the shards exist).
pub fn names_checkpoint(path: impl AsRef<Path>) -> bool {
    let path = path.as_ref();
    if path.as_os_str().as_bytes().ends_with(b".json") {
        return !starts_with_magic(path);
    }
    !path.exists() && resolve_index(path).is_ok()
}

/// The Hugging Face index of a sharded checkpoint in a foreign format whose
/// files end in `.{extension}` (`safetensors`), or `None` when `path` names
/// a single file: `path` itself when it ends in `.json`; nothing when it is
/// a file; else `path` + `.index.json`, else `path` without `.{extension}`
/// and with `.{extension}.index.json`, whichever is a file (`model` and
/// `model.safetensors` both find `model.safetensors.index.json`).
pub fn foreign_index(path: impl AsRef<Path>, extension: &str) -> Option<PathBuf> {
    let path = path.as_ref();
    let bytes = path.as_os_str().as_bytes();
    if bytes.ends_with(b".json") {
        return Some(path.to_owned());
    }
    if path.is_file() {
        return None;
    }
    let ending = format!(".{extension}");
    let stem = bytes.strip_suffix(ending.as_bytes()).unwrap_or(bytes);
    let joined = |a: &[u8], b: &[u8]| PathBuf::from(OsStr::from_bytes(&[a, b].concat()));
    [
        joined(bytes, b".index.json"),
        joined(stem, format!("{ending}.index.json").as_bytes()),
    ]
    .into_iter()
    .find(|c| c.is_file())
}

/// Whether `path` is a file that starts with the `.deathtensors` magic (a
/// tensor file whatever its name; reading stops at 8 bytes and never blocks).
fn starts_with_magic(path: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut head = [0u8; 8];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| {
            if !f.metadata()?.is_file() {
                return Ok(false);
            }
            f.take(8).read_exact(&mut head).map(|()| &head == crate::format::MAGIC)
        })
        .unwrap_or(false)
}

/// A string as JSON writes it (quoted, controls escaped), for messages.
fn quoted(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// The JSON type of `v`, for messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.deathtensors.index.json");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn foreign_index_follows_the_hugging_face_names() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        std::fs::write(at("single.safetensors"), b"x").unwrap();
        assert_eq!(foreign_index(at("single.safetensors"), "safetensors"), None);
        assert_eq!(foreign_index(at("any.json"), "safetensors"), Some(at("any.json")));
        assert_eq!(foreign_index(at("model"), "safetensors"), None, "nothing there");
        std::fs::write(at("model.safetensors.index.json"), b"{}").unwrap();
        for given in ["model", "model.safetensors"] {
            assert_eq!(
                foreign_index(at(given), "safetensors"),
                Some(at("model.safetensors.index.json")),
                "{given}"
            );
        }
        std::fs::write(at("model.index.json"), b"{}").unwrap();
        assert_eq!(
            foreign_index(at("model"), "safetensors"),
            Some(at("model.index.json")),
            "path + .index.json first"
        );
        std::fs::create_dir(at("dir.safetensors.index.json")).unwrap();
        assert_eq!(foreign_index(at("dir"), "safetensors"), None, "a folder is no index");
    }

    fn refused(text: &str, needle: &str) {
        let (_d, p) = index(text);
        let e = ShardedIndex::read_deathtensors(&p, MAX_INDEX_BYTES).unwrap_err();
        assert!(matches!(e, Error::InvalidIndex { .. }), "{e:?}");
        assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
        assert_eq!(e.class_name(), "FormatError");
    }

    #[test]
    fn a_good_index_keeps_its_order_and_metadata() {
        let (_d, p) = index(
            r#"{"metadata": {"total_size": 12, "format": "deathtensors", "global_metadata": {"a": 1}},
                "weight_map": {"z": "m-2.deathtensors", "a": "m-1.deathtensors", "m": "m-2.deathtensors"}}"#,
        );
        let i = ShardedIndex::read_deathtensors(&p, MAX_INDEX_BYTES).unwrap();
        let names: Vec<&str> = i.weight_map().iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["z", "a", "m"]);
        assert_eq!(
            i.by_shard(),
            [("m-2.deathtensors", vec!["z", "m"]), ("m-1.deathtensors", vec!["a"])]
        );
        assert_eq!(i.total_size(), Some(12));
        assert_eq!(i.global_metadata().unwrap()["a"], 1);
        assert_eq!(
            i.shard_path("m-1.deathtensors"),
            p.parent().unwrap().join("m-1.deathtensors")
        );
    }

    #[test]
    fn every_rule_has_its_error() {
        refused("[]", "JSON object");
        refused("{not json", "not valid JSON");
        refused("\u{feff}{}", "not valid JSON");
        refused(r#"{"weight_map": {"a": "x", "a": "y"}}"#, "duplicate");
        refused(r#"{"metadata": {}}"#, "no \"weight_map\"");
        refused(
            r#"{"weight_map": []}"#,
            "\"weight_map\" must be a JSON object, not an array",
        );
        refused(r#"{"weight_map": {"t": 3}}"#, "entry \"t\" is a number, not a string");
        refused(r#"{"weight_map": {"t": "../x"}}"#, "\"../x\" contains a path separator");
        refused(
            r#"{"metadata": [], "weight_map": {}}"#,
            "\"metadata\" must be a JSON object",
        );
        refused(r#"{"metadata": {"format": "pt"}, "weight_map": {}}"#, "metadata.format");
        refused(r#"{"metadata": {"total_size": -1}, "weight_map": {}}"#, "total_size");
        refused(r#"{"metadata": {"total_size": 1.5}, "weight_map": {}}"#, "total_size");
        refused(
            r#"{"metadata": {"global_metadata": 3}, "weight_map": {}}"#,
            "global_metadata",
        );
        // A Hugging Face index: refused as one up front, not by its first shard's magic later.
        refused(
            r#"{"metadata": {"total_size": 4}, "weight_map": {"a": "model-00001-of-00001.safetensors"}}"#,
            "it is a safetensors index (shard \"model-00001-of-00001.safetensors\")",
        );
        // Read as a foreign index (by the converters), it is fine.
        let (_d, p) = index(r#"{"weight_map": {"a": "model-00001-of-00001.safetensors"}}"#);
        assert!(ShardedIndex::read(&p, MAX_INDEX_BYTES).is_ok());
    }

    #[test]
    fn size_limit_and_fifo_are_refused_before_reading() {
        let (_d, p) = index(&format!(r#"{{"weight_map": {{}}, "pad": "{}"}}"#, "x".repeat(5000)));
        let e = ShardedIndex::read(&p, 4096).unwrap_err();
        assert!(e.to_string().contains("over the limit of 4096"), "{e}");
        assert!(ShardedIndex::read(&p, MAX_INDEX_BYTES).is_ok());
        let fifo = p.with_file_name("f.index.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = ShardedIndex::read(&fifo, MAX_INDEX_BYTES).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn shard_names_must_stay_in_the_folder() {
        for bad in ["", ".", "..", "a/b", "a\\b", "/etc/passwd", "C:x", "c:\\x", "a\0b"] {
            assert!(bad_shard_name(bad).is_some(), "{bad:?}");
        }
        for good in ["m-00001-of-00002.deathtensors", "..m", "ab:c", "é.dt"] {
            assert_eq!(bad_shard_name(good), None, "{good:?}");
        }
    }

    #[test]
    fn resolve_finds_the_index_of_a_base_path() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("big.deathtensors.index.json");
        std::fs::write(&index, "{}").unwrap();
        for given in ["big.deathtensors", "big", "big.deathtensors.index.json"] {
            assert_eq!(resolve_index(dir.path().join(given)).unwrap(), index, "{given}");
            assert!(names_checkpoint(dir.path().join(given)), "{given}");
        }
        let e = resolve_index(dir.path().join("other.deathtensors")).unwrap_err();
        assert!(e.to_string().contains("no sharded index"), "{e}");
        assert!(matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound));
        let single = dir.path().join("one.deathtensors");
        std::fs::write(&single, "x").unwrap();
        assert!(!names_checkpoint(&single));
        // Any .json path is an index, whatever its name.
        assert!(names_checkpoint(dir.path().join("idx.json")));
    }

    #[test]
    fn resolve_keeps_a_path_that_is_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join(std::ffi::OsStr::from_bytes(b"m\xff.deathtensors"));
        let mut name = base.as_os_str().to_owned();
        name.push(".index.json");
        std::fs::write(&name, "{}").unwrap();
        assert_eq!(resolve_index(&base).unwrap(), PathBuf::from(name));
        assert!(names_checkpoint(&base));
    }

    #[test]
    fn a_null_total_size_is_absent() {
        let (_d, p) = index(r#"{"metadata": {"total_size": null}, "weight_map": {}}"#);
        let i = ShardedIndex::read_deathtensors(&p, MAX_INDEX_BYTES).unwrap();
        assert_eq!(i.total_size(), None);
    }
}
