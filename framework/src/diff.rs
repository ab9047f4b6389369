//! Comparing two files (or sharded checkpoints, [`diff_sides`]) tensor by tensor: [`diff_files`].
//!
//! Values are compared in windows of whole elements ([`DEFAULT_WINDOW_BYTES`],
//! 4 MiB, by default) read with [`DtReader::read_range`] from both files, so
//! only the chunks covering a window are decoded and no tensor is ever held
//! whole. When a tensor is compressed, windows are made of its whole chunks
//! (of the file with the larger chunks), so that each chunk is decoded once,
//! or at most twice in the other file, however the two files are chunked.
//! Tensors are compared in parallel, and the windows of each tensor too;
//! memory stays bounded by two windows (or two chunks, if larger) per
//! thread. A window whose decoded bytes are equal in both files is equal and
//! is not looked at further, so unchanged tensors cost one `memcmp` per
//! window.
//!
//! Decoded bytes are compared, never stored ones: a compressed and an
//! uncompressed file, two codecs, or two chunkings of the same tensors are
//! identical. What is not compared: the codec and its level, chunking,
//! filters, the checksum algorithm, tensor order, and whether a name is an
//! alias (`alias_of`) or a tensor of its own: an alias compares by its values
//! like any other tensor.
//!
//! # What is reported
//!
//! The tensors of a file are those it lists: entries that are a part of
//! another tensor (`part_of`, e.g. the indices of a sparse tensor) are not
//! tensors of their own.
//!
//! - `added` / `removed`: names only in `b` (in `b`'s order) / only in `a` (in
//!   `a`'s order).
//! - For names in both (in `a`'s order): `dtype_changed` (dtype ids),
//!   `shape_changed` (shapes; the logical shape for a non-dense tensor),
//!   `layout_changed` (`null` for dense, else `{"id", "params"}`), and
//!   `metadata_changed` (the per-tensor metadata keys whose values differ:
//!   `a` holds `a`'s value of each such key present in `a`, `b` holds `b`'s).
//!   Values are compared only when dtype, shape and layout agree; a tensor
//!   whose dtype, shape or layout changed is not in `value_changed`.
//! - `value_changed`: see [`ValueChange`]: how many elements differ, the
//!   largest absolute difference (float and complex dtypes), and the index of
//!   the first differing element.
//! - `global_metadata_changed` and `global_metadata`: the file metadata keys
//!   whose values differ, as for tensors.
//! - `identical`: nothing of the above.
//!
//! # Exact and tolerant comparison
//!
//! With `rtol == atol == 0` (the default) the comparison is exact: elements
//! are equal when their bytes are equal. So `0.0` and `-0.0` differ, and two
//! NaNs are equal only when they have the same bits.
//!
//! With `rtol` or `atol` given, float and complex elements are decoded with
//! [`DtypeHandler::decode_f64`] and `a` is close to `b` when
//! `|a − b| ≤ atol + rtol·|b|` (numpy's `isclose`, with `b` the reference;
//! `|z|` is the modulus for complex dtypes). NaN equals NaN only where both
//! files have a NaN at that position (a complex element is NaN when either
//! part is); an infinity equals only the same infinity. Integer and BOOL
//! dtypes, and float dtypes whose plugin has no numeric decoding, always
//! compare exactly.
//!
//! # Non-dense tensors
//!
//! A sparse tensor (an entry with a `layout`) compares with another of the
//! same layout id and parameters part by part, by value: the primary part
//! (the values) with the tolerance above, the other parts (the indices)
//! exactly. When a part's dtype or shape differs (say, a different number of
//! stored elements), elements cannot be paired and the tensor is reported in
//! `value_changed` with `differing: null`. Two tensors whose layouts differ
//! (dense against sparse, or other parameters) are reported in
//! `layout_changed` even when they hold the same logical values.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::format::{Chunk, TensorInfo};
use crate::reader::DtReader;
use crate::registry::{DtypeHandler, DtypeKind};
use crate::sharded::{Checkpoint, Source};

/// Bytes of each tensor compared at a time (rounded down to whole elements).
pub const DEFAULT_WINDOW_BYTES: usize = 4 << 20;

/// Elements of a differing window decoded at a time (on the stack).
const SUB_BLOCK: usize = 1024;

/// How to compare: the tolerance of float values and the window size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiffOptions {
    /// Relative tolerance of float and complex values (0: none).
    pub rtol: f64,
    /// Absolute tolerance of float and complex values (0: none).
    pub atol: f64,
    /// Bytes compared at a time per tensor and thread (rounded down to whole
    /// elements, at least one; rounded up to whole chunks of a compressed
    /// tensor). Larger windows mean fewer reads and more memory;
    /// [`DEFAULT_WINDOW_BYTES`] by default.
    pub window_bytes: usize,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            rtol: 0.0,
            atol: 0.0,
            window_bytes: DEFAULT_WINDOW_BYTES,
        }
    }
}

impl DiffOptions {
    /// Exact comparison: elements are equal when their bytes are.
    pub fn is_exact(&self) -> bool {
        self.rtol == 0.0 && self.atol == 0.0
    }

    fn check(&self) -> Result<()> {
        for (what, v) in [("rtol", self.rtol), ("atol", self.atol)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "{what} must be a finite number >= 0, not {v}"
                )));
            }
        }
        if self.window_bytes == 0 {
            return Err(Error::InvalidArgument("window_bytes must be at least 1".into()));
        }
        Ok(())
    }
}

/// Something of one tensor that differs: its value in `a` and in `b`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change<T> {
    /// The tensor's name.
    pub name: String,
    /// The value in the first file.
    pub a: T,
    /// The value in the second file.
    pub b: T,
}

/// Metadata keys whose values differ between two maps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetadataDelta {
    /// The first map's value of each differing key it has.
    pub a: Map<String, Value>,
    /// The second map's value of each differing key it has.
    pub b: Map<String, Value>,
}

/// A tensor whose values differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueChange {
    /// The tensor's name.
    pub name: String,
    /// Elements that differ (beyond the tolerance, if any). For a non-dense
    /// tensor, stored elements over all its parts; `None` when a part's dtype
    /// or shape differs, so that elements cannot be paired.
    pub differing: Option<u64>,
    /// Elements compared (a non-dense tensor: stored elements of all its
    /// parts in the first file).
    pub numel: u64,
    /// For float and complex dtypes, the largest `|a − b|` over all elements
    /// (those within the tolerance included); positions where one side is
    /// NaN count as differing but not here. `None` for other dtypes. JSON
    /// writes a non-finite value (an infinity against a number) as `null`.
    pub max_abs_diff: Option<f64>,
    /// Index (one number per dimension) of the first differing element, in
    /// row-major order; in the part named by `part` for a non-dense tensor.
    pub first_index: Option<Vec<u64>>,
    /// For a non-dense tensor, the part `first_index` is in (e.g.
    /// `"indices"`), or the one whose dtype or shape differs; `None` for the
    /// primary part (the values) and for dense tensors.
    pub part: Option<String>,
}

/// Everything that differs between two files; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffReport {
    /// Tensors only in the second file, in its order.
    pub added: Vec<String>,
    /// Tensors only in the first file, in its order.
    pub removed: Vec<String>,
    /// Tensors whose (logical) shape differs.
    pub shape_changed: Vec<Change<Vec<u64>>>,
    /// Tensors whose dtype differs (dtype ids).
    pub dtype_changed: Vec<Change<String>>,
    /// Tensors whose layout differs: `null` for dense, else `{"id", "params"}`.
    pub layout_changed: Vec<Change<Value>>,
    /// Tensors of equal dtype, shape and layout whose values differ.
    pub value_changed: Vec<ValueChange>,
    /// Tensors whose metadata differs: the differing keys only.
    pub metadata_changed: Vec<Change<Map<String, Value>>>,
    /// Whether the global (file) metadata differs.
    pub global_metadata_changed: bool,
    /// The differing global metadata keys, when there are any.
    pub global_metadata: Option<MetadataDelta>,
    /// True when nothing above differs.
    pub identical: bool,
}

/// A tensor and the reader of the file holding it.
type Held<'r> = (&'r DtReader, &'r TensorInfo);

/// One side of a comparison: the tensors it lists, each with the reader of
/// the file that holds it, and its global metadata. A side is one file
/// ([`DiffSide::file`]) or a sharded checkpoint ([`DiffSide::checkpoint`]),
/// so a file compares with its resharded or converted self.
pub struct DiffSide<'r> {
    tensors: Vec<Held<'r>>,
    metadata: Cow<'r, Map<String, Value>>,
}

impl<'r> DiffSide<'r> {
    /// The tensors of one file (every entry but the parts of other tensors)
    /// and its metadata.
    pub fn file(r: &'r DtReader) -> Self {
        DiffSide {
            tensors: r
                .tensors()
                .iter()
                .filter(|t| t.part_of.is_none())
                .map(|t| (r, t))
                .collect(),
            metadata: Cow::Borrowed(r.metadata()),
        }
    }

    /// The tensors of a checkpoint in index order, each from its shard, and
    /// the checkpoint's global metadata.
    pub fn checkpoint(c: &'r Checkpoint) -> Self {
        DiffSide {
            tensors: c.tensors().collect(),
            metadata: c
                .index()
                .global_metadata()
                .map_or_else(|| Cow::Owned(Map::new()), Cow::Borrowed),
        }
    }

    /// A file or a checkpoint, as [`Source::open`] found it.
    pub fn source(s: &'r Source) -> Self {
        match s {
            Source::File(r) => Self::file(r),
            Source::Checkpoint(c) => Self::checkpoint(c),
        }
    }

    /// The bytes of this side's tensors (and their parts) whose names `other`
    /// also lists: what a comparison reads from each side, for progress bars.
    pub fn shared_bytes(&self, other: &DiffSide<'_>) -> u64 {
        let names: HashSet<&str> = other.tensors.iter().map(|(_, t)| t.name.as_str()).collect();
        self.tensors
            .iter()
            .filter(|(_, t)| names.contains(t.name.as_str()))
            .map(|(r, t)| {
                let parts = t.layout.iter().flat_map(|l| l.parts.values());
                parts
                    .filter_map(|p| r.tensor(p.as_str()?).ok())
                    .map(|p| p.nbytes)
                    .fold(t.nbytes, u64::saturating_add)
            })
            .fold(0, u64::saturating_add)
    }
}

/// Compare the tensors, metadata and values of two open files.
///
/// See the [module docs](self) for what is compared and reported.
///
/// # Errors
/// [`Error::InvalidArgument`] for a negative or non-finite tolerance or a
/// zero window; I/O errors and corrupt chunks of either file.
pub fn diff_files(a: &DtReader, b: &DtReader, options: &DiffOptions) -> Result<DiffReport> {
    diff_sides(&DiffSide::file(a), &DiffSide::file(b), options, &|_| {})
}

/// [`diff_files`], calling `progress` with the number of bytes (per file) of
/// each window as it is compared (from any thread; for progress bars). The
/// total is at most the bytes of the first file's tensors and parts whose
/// names the second file has.
///
/// # Errors
/// As [`diff_files`].
pub fn diff_files_with_progress(
    a: &DtReader,
    b: &DtReader,
    options: &DiffOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DiffReport> {
    diff_sides(&DiffSide::file(a), &DiffSide::file(b), options, progress)
}

/// [`diff_files_with_progress`] of two sides, each a file or a sharded
/// checkpoint (the progress total is [`DiffSide::shared_bytes`]).
///
/// # Errors
/// As [`diff_files`].
pub fn diff_sides(
    a: &DiffSide<'_>,
    b: &DiffSide<'_>,
    options: &DiffOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DiffReport> {
    options.check()?;
    let names_a: HashSet<&str> = a.tensors.iter().map(|(_, t)| t.name.as_str()).collect();
    let in_b: HashMap<&str, Held<'_>> = b.tensors.iter().map(|&(r, t)| (t.name.as_str(), (r, t))).collect();
    let removed = a
        .tensors
        .iter()
        .filter(|(_, t)| !in_b.contains_key(t.name.as_str()))
        .map(|(_, t)| t.name.clone())
        .collect();
    let added = b
        .tensors
        .iter()
        .filter(|(_, t)| !names_a.contains(t.name.as_str()))
        .map(|(_, t)| t.name.clone())
        .collect();
    let pairs: Vec<(Held<'_>, Held<'_>)> = a
        .tensors
        .iter()
        .filter_map(|&(ra, ta)| in_b.get(ta.name.as_str()).map(|&other| ((ra, ta), other)))
        .collect();
    // A pair of second names of one target (`alias_of` the same name on both
    // sides) holds that target pair's bytes: its values are compared once, as
    // the target's, not once per alias (a small file of many aliases of one
    // large tensor would cost a pass per alias).
    let index: HashMap<&str, usize> = pairs
        .iter()
        .enumerate()
        .map(|(i, ((_, ta), _))| (ta.name.as_str(), i))
        .collect();
    let same_as: Vec<Option<usize>> = pairs
        .iter()
        .map(|((_, ta), (_, tb))| match (&ta.alias_of, &tb.alias_of) {
            (Some(x), Some(y)) if x == y => index.get(x.as_str()).copied(),
            _ => None,
        })
        .collect();
    let mut outcomes: Vec<Outcome> = pairs
        .par_iter()
        .zip(&same_as)
        .map(|(&((ra, ta), (rb, tb)), same)| {
            let values = same.is_none();
            let out = compare_tensor(ra, rb, ta, tb, options, progress, values);
            if !values {
                progress(ta.nbytes);
            }
            out
        })
        .collect::<Result<_>>()?;
    for (i, same) in same_as.iter().enumerate() {
        if let Some(&target) = same.as_ref() {
            let o = &outcomes[i];
            if o.layout.is_none() && o.dtype.is_none() && o.shape.is_none() {
                let value = outcomes[target].value.clone().map(|mut v| {
                    v.name.clone_from(&pairs[i].0 .1.name);
                    v
                });
                outcomes[i].value = value;
            }
        }
    }

    let global_metadata = metadata_delta(&a.metadata, &b.metadata);
    let mut report = DiffReport {
        added,
        removed,
        shape_changed: Vec::new(),
        dtype_changed: Vec::new(),
        layout_changed: Vec::new(),
        value_changed: Vec::new(),
        metadata_changed: Vec::new(),
        global_metadata_changed: global_metadata.is_some(),
        global_metadata,
        identical: false,
    };
    for o in outcomes {
        report.shape_changed.extend(o.shape);
        report.dtype_changed.extend(o.dtype);
        report.layout_changed.extend(o.layout);
        report.value_changed.extend(o.value);
        report.metadata_changed.extend(o.metadata);
    }
    report.identical = report.added.is_empty()
        && report.removed.is_empty()
        && report.shape_changed.is_empty()
        && report.dtype_changed.is_empty()
        && report.layout_changed.is_empty()
        && report.value_changed.is_empty()
        && report.metadata_changed.is_empty()
        && !report.global_metadata_changed;
    Ok(report)
}

/// What differs in one tensor present in both files.
#[derive(Default)]
struct Outcome {
    shape: Option<Change<Vec<u64>>>,
    dtype: Option<Change<String>>,
    layout: Option<Change<Value>>,
    value: Option<ValueChange>,
    metadata: Option<Change<Map<String, Value>>>,
}

fn change<T>(name: &str, a: T, b: T) -> Change<T> {
    Change {
        name: name.to_owned(),
        a,
        b,
    }
}

fn compare_tensor(
    a: &DtReader,
    b: &DtReader,
    ta: &TensorInfo,
    tb: &TensorInfo,
    options: &DiffOptions,
    progress: &(dyn Fn(u64) + Sync),
    values: bool,
) -> Result<Outcome> {
    let name = ta.name.as_str();
    let mut out = Outcome {
        metadata: metadata_delta(&ta.metadata, &tb.metadata).map(|d| change(name, d.a, d.b)),
        ..Outcome::default()
    };
    let (la, lb) = (layout_value(ta), layout_value(tb));
    if la != lb {
        out.layout = Some(change(name, la, lb));
    }
    if ta.dtype.id() != tb.dtype.id() {
        out.dtype = Some(change(name, ta.dtype.id().to_owned(), tb.dtype.id().to_owned()));
    }
    let (sa, sb) = (logical_shape(ta), logical_shape(tb));
    if sa != sb {
        out.shape = Some(change(name, sa.to_vec(), sb.to_vec()));
    }
    if values && out.layout.is_none() && out.dtype.is_none() && out.shape.is_none() {
        out.value = compare_values(a, b, ta, tb, options, progress)?;
    }
    Ok(out)
}

fn layout_value(t: &TensorInfo) -> Value {
    match &t.layout {
        None => Value::Null,
        Some(l) => json!({"id": l.id, "params": l.params}),
    }
}

fn logical_shape(t: &TensorInfo) -> &[u64] {
    t.layout.as_ref().map_or(&t.shape, |l| &l.shape)
}

/// The keys of `a` and `b` whose values differ, or `None` when the maps are equal.
fn metadata_delta(a: &Map<String, Value>, b: &Map<String, Value>) -> Option<MetadataDelta> {
    let mut delta = MetadataDelta {
        a: Map::new(),
        b: Map::new(),
    };
    for (k, v) in a {
        if b.get(k) != Some(v) {
            delta.a.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in b {
        if a.get(k) != Some(v) {
            delta.b.insert(k.clone(), v.clone());
        }
    }
    (!delta.a.is_empty() || !delta.b.is_empty()).then_some(delta)
}

/// Compare the values of two tensors of equal dtype, shape and layout: the
/// tensor itself, or for a non-dense tensor each of its parts.
fn compare_values(
    a: &DtReader,
    b: &DtReader,
    ta: &TensorInfo,
    tb: &TensorInfo,
    options: &DiffOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Option<ValueChange>> {
    // (part name, entry in a, entry in b); the primary part has no name.
    let mut parts: Vec<(Option<&str>, &TensorInfo, Option<&TensorInfo>)> = vec![(None, ta, Some(tb))];
    if let (Some(la), Some(lb)) = (&ta.layout, &tb.layout) {
        for (part, entry) in &la.parts {
            let pa = a.tensor(entry.as_str().unwrap_or_default())?;
            let pb = lb
                .parts
                .get(part)
                .and_then(Value::as_str)
                .and_then(|n| b.tensor(n).ok());
            parts.push((Some(part.as_str()), pa, pb));
        }
    }
    let numel = parts.iter().map(|(_, pa, _)| pa.numel()).fold(0, u64::saturating_add);
    let mut change = ValueChange {
        name: ta.name.clone(),
        differing: Some(0),
        numel,
        max_abs_diff: None,
        first_index: None,
        part: None,
    };
    for (part, pa, pb) in parts {
        let pb = match pb {
            Some(pb) if pb.dtype.id() == pa.dtype.id() && pb.shape == pa.shape => pb,
            _ => {
                change.differing = None;
                change.max_abs_diff = None;
                change.first_index = None;
                change.part = part.map(str::to_owned);
                return Ok(Some(change));
            }
        };
        let r = compare_dense(a, b, pa, pb, options, progress)?;
        change.differing = change.differing.map(|n| n + r.differing);
        change.max_abs_diff = max_option(change.max_abs_diff, r.max_abs_diff);
        if let (None, Some(first)) = (&change.first_index, r.first) {
            change.first_index = Some(unravel(first, &pa.shape));
            change.part = part.map(str::to_owned);
        }
    }
    Ok((change.differing != Some(0)).then_some(change))
}

fn max_option(x: Option<f64>, y: Option<f64>) -> Option<f64> {
    match (x, y) {
        (Some(x), Some(y)) => Some(if y > x || x.is_nan() { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Row-major index of element `flat` of a tensor of `shape`.
fn unravel(mut flat: u64, shape: &[u64]) -> Vec<u64> {
    let mut index = vec![0; shape.len()];
    for (i, &dim) in shape.iter().enumerate().rev() {
        if dim > 0 {
            index[i] = flat % dim;
            flat /= dim;
        }
    }
    index
}

/// The comparison of some elements of one dense tensor.
#[derive(Debug, Clone, Copy)]
struct PartResult {
    differing: u64,
    max_abs_diff: Option<f64>,
    first: Option<u64>,
}

impl PartResult {
    fn equal(values: bool) -> Self {
        PartResult {
            differing: 0,
            max_abs_diff: values.then_some(0.0),
            first: None,
        }
    }

    fn merge(self, other: Self) -> Self {
        PartResult {
            differing: self.differing + other.differing,
            max_abs_diff: max_option(self.max_abs_diff, other.max_abs_diff),
            first: match (self.first, other.first) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            },
        }
    }
}

/// How the elements of one dtype compare.
#[derive(Clone, Copy)]
struct Rule<'a> {
    dtype: &'a dyn DtypeHandler,
    item_size: usize,
    /// Whether elements decode to f64 (float and complex dtypes with a decoding).
    values: bool,
    complex: bool,
    /// `(rtol, atol)` when not exact.
    tolerance: Option<(f64, f64)>,
}

/// Compare two dense tensors of one dtype and shape, window by window, in parallel.
fn compare_dense(
    a: &DtReader,
    b: &DtReader,
    ta: &TensorInfo,
    tb: &TensorInfo,
    options: &DiffOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PartResult> {
    let dtype = ta.dtype;
    let item_size = dtype.item_size();
    if item_size == 0 {
        return Err(Error::tensor(&ta.name, "its dtype has a zero item size"));
    }
    if ta.nbytes != tb.nbytes {
        return Err(Error::tensor(
            &ta.name,
            format!(
                "{} bytes in one file and {} in the other for one dtype and shape",
                ta.nbytes, tb.nbytes
            ),
        ));
    }
    let kind = dtype.kind();
    let values = matches!(kind, DtypeKind::Float | DtypeKind::Complex) && dtype.decode_f64(&[], &mut []);
    let rule = Rule {
        dtype,
        item_size,
        values,
        complex: kind == DtypeKind::Complex,
        tolerance: (values && !options.is_exact()).then_some((options.rtol, options.atol)),
    };
    let window = ((options.window_bytes / item_size).max(1) * item_size) as u64;
    windows(a, ta, b, tb, window)
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(buf_a, buf_b): &mut (Vec<u8>, Vec<u8>), (start, len)| {
                let len = len as usize;
                buf_a.resize(len, 0);
                buf_b.resize(len, 0);
                let (ra, rb) = rayon::join(|| a.read_range(ta, start, buf_a), || b.read_range(tb, start, buf_b));
                // Which of the two files is damaged: the error names it.
                ra.map_err(|e| e.in_file(a.path()))?;
                rb.map_err(|e| e.in_file(b.path()))?;
                progress(len as u64);
                if buf_a == buf_b {
                    return Ok(PartResult::equal(values));
                }
                Ok(compare_window(&rule, buf_a, buf_b, start / item_size as u64))
            },
        )
        .try_reduce(|| PartResult::equal(values), |x, y| Ok(x.merge(y)))
}

/// The windows `(start, len)` that cover a tensor of `ta.nbytes` bytes.
///
/// When either side is compressed, windows are whole chunks of the side
/// with the largest chunk, grouped to at least `window` bytes: that side's
/// chunks decode once each, and the other side's (no larger) at most twice,
/// however the two files are chunked. Otherwise windows are `window` bytes.
/// Chunks hold whole elements (the reader validates it), so every window does.
fn windows(a: &DtReader, ta: &TensorInfo, b: &DtReader, tb: &TensorInfo, window: u64) -> Vec<(u64, u64)> {
    let largest = |c: &[Chunk]| c.iter().map(Chunk::raw_len).max().unwrap_or(0);
    let base = match (a.codec().and(ta.chunks.as_deref()), b.codec().and(tb.chunks.as_deref())) {
        (Some(x), Some(y)) => Some(if largest(y) > largest(x) { y } else { x }),
        (x, y) => x.or(y),
    };
    let mut out = Vec::new();
    let mut start = 0u64;
    if let Some(base) = base {
        let mut len = 0u64;
        for c in base {
            len += c.raw_len();
            if len >= window {
                out.push((start, len));
                start += len;
                len = 0;
            }
        }
        if len > 0 {
            out.push((start, len));
            start += len;
        }
    }
    // Fixed windows; also a safety net should chunks not cover the tensor.
    while start < ta.nbytes {
        let len = window.min(ta.nbytes - start);
        out.push((start, len));
        start += len;
    }
    out
}

/// Compare one window of whole elements whose bytes differ somewhere;
/// `first_element` is the index of its first element in the tensor.
fn compare_window(rule: &Rule<'_>, a: &[u8], b: &[u8], first_element: u64) -> PartResult {
    let item = rule.item_size;
    let per = if rule.complex { 2 } else { 1 };
    let mut result = PartResult::equal(rule.values);
    let mut va = [0.0f64; 2 * SUB_BLOCK];
    let mut vb = [0.0f64; 2 * SUB_BLOCK];
    for (block, (ca, cb)) in a.chunks(SUB_BLOCK * item).zip(b.chunks(SUB_BLOCK * item)).enumerate() {
        if ca == cb {
            continue;
        }
        let n = ca.len() / item;
        let decoded = rule.values
            && rule.dtype.decode_f64(ca, &mut va[..n * per])
            && rule.dtype.decode_f64(cb, &mut vb[..n * per]);
        for (i, (ea, eb)) in ca.chunks_exact(item).zip(cb.chunks_exact(item)).enumerate() {
            if ea == eb {
                continue;
            }
            let mut differs = true;
            if decoded {
                let (x, y) = (&va[i * per..(i + 1) * per], &vb[i * per..(i + 1) * per]);
                let (diff, close) = if rule.complex {
                    compare_complex(x[0], x[1], y[0], y[1], rule.tolerance)
                } else {
                    compare_real(x[0], y[0], rule.tolerance)
                };
                result.max_abs_diff = max_option(result.max_abs_diff, diff);
                if rule.tolerance.is_some() {
                    differs = !close;
                }
            }
            if differs {
                result.differing += 1;
                if result.first.is_none() {
                    result.first = Some(first_element + (block * SUB_BLOCK + i) as u64);
                }
            }
        }
    }
    result
}

/// `(|x − y| unless either is NaN, whether x is close to y)`.
fn compare_real(x: f64, y: f64, tolerance: Option<(f64, f64)>) -> (Option<f64>, bool) {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => return (None, true),
        (true, false) | (false, true) => return (None, false),
        (false, false) => {}
    }
    if x == y {
        return (Some(0.0), true);
    }
    let diff = (x - y).abs();
    let close = match tolerance {
        Some((rtol, atol)) => {
            x.is_finite() && y.is_finite() && within(|s| (x * s - y * s).abs(), |s| (y * s).abs(), rtol, atol)
        }
        None => false,
    };
    (Some(diff), close)
}

/// Whether `diff(1) ≤ atol + rtol·magnitude(1)`, where `diff(s)` and
/// `magnitude(s)` compute the difference and the reference's magnitude of
/// finite operands scaled by `s`. When either side overflows (1.7e308 against
/// −1.7e308: an infinite difference under an infinite bound passed), they
/// are compared again at a quarter of the scale, where the difference of any
/// two finite values is finite.
fn within(diff: impl Fn(f64) -> f64, magnitude: impl Fn(f64) -> f64, rtol: f64, atol: f64) -> bool {
    let (d, bound) = (diff(1.0), atol + rtol * magnitude(1.0));
    if d.is_finite() && bound.is_finite() {
        return d <= bound;
    }
    const QUARTER: f64 = 0.25;
    diff(QUARTER) <= atol * QUARTER + rtol * magnitude(QUARTER)
}

/// As [`compare_real`] for complex numbers `xr + i·xi` and `yr + i·yi`.
fn compare_complex(xr: f64, xi: f64, yr: f64, yi: f64, tolerance: Option<(f64, f64)>) -> (Option<f64>, bool) {
    match (xr.is_nan() || xi.is_nan(), yr.is_nan() || yi.is_nan()) {
        (true, true) => return (None, true),
        (true, false) | (false, true) => return (None, false),
        (false, false) => {}
    }
    if xr == yr && xi == yi {
        return (Some(0.0), true);
    }
    // Equal parts (infinities included) differ by zero.
    let part = |p: f64, q: f64| if p == q { 0.0 } else { p - q };
    let diff = part(xr, yr).hypot(part(xi, yi));
    let finite = [xr, xi, yr, yi].iter().all(|v| v.is_finite());
    let close = match tolerance {
        Some((rtol, atol)) => {
            finite
                && within(
                    |s| part(xr * s, yr * s).hypot(part(xi * s, yi * s)),
                    |s| (yr * s).hypot(yi * s),
                    rtol,
                    atol,
                )
        }
        None => false,
    };
    (Some(diff), close)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unravel_is_row_major() {
        assert_eq!(unravel(0, &[]), Vec::<u64>::new());
        assert_eq!(unravel(5, &[2, 3]), vec![1, 2]);
        assert_eq!(unravel(7, &[2, 2, 2]), vec![1, 1, 1]);
        assert_eq!(unravel(4, &[10]), vec![4]);
    }

    #[test]
    fn real_closeness() {
        let tol = Some((1e-3, 0.0));
        let (diff, close) = compare_real(1.0, 1.0005, tol);
        assert!(close && (diff.unwrap() - 0.0005).abs() < 1e-12);
        assert!(!compare_real(1.0, 1.01, tol).1);
        assert_eq!(compare_real(f64::NAN, f64::NAN, tol), (None, true));
        assert_eq!(compare_real(f64::NAN, 1.0, tol), (None, false));
        assert_eq!(compare_real(f64::INFINITY, f64::INFINITY, tol), (Some(0.0), true));
        assert_eq!(
            compare_real(1.0, f64::INFINITY, Some((1.0, 1.0))),
            (Some(f64::INFINITY), false)
        );
        assert_eq!(compare_real(-0.0, 0.0, tol), (Some(0.0), true));
        assert_eq!(compare_real(1.0, 2.0, None), (Some(1.0), false));
        // The tolerance is relative to b.
        assert!(compare_real(0.0, 1.0, Some((1.0, 0.0))).1);
        assert!(!compare_real(1.0, 0.0, Some((1.0, 0.0))).1);
    }

    #[test]
    fn closeness_survives_overflow() {
        // Regression: |a - b| and atol + rtol·|b| both overflowed to infinity, and inf <= inf passed.
        let big = 1.7e308;
        assert!(!compare_real(big, -big, Some((0.6, 1e308))).1);
        assert!(
            compare_real(big, -big, Some((1.5, 1e308))).1,
            "3.4e308 <= 1e308 + 1.5 * 1.7e308"
        );
        assert!(
            compare_real(big, -big, Some((1e300, 0.0))).1,
            "an infinite bound holds any finite gap"
        );
        assert!(!compare_complex(big, big, -big, -big, Some((0.6, 1e308))).1);
        assert!(compare_complex(big, big, -big, -big, Some((2.1, 0.0))).1);
        assert!(compare_complex(big, big, big, big * 0.999, Some((0.01, 0.0))).1);
    }

    #[test]
    fn complex_closeness() {
        assert_eq!(compare_complex(0.0, 0.0, 3.0, 4.0, None), (Some(5.0), false));
        assert!(compare_complex(3.0, 4.0, 3.0, 4.05, Some((0.0, 0.1))).1);
        assert_eq!(compare_complex(f64::NAN, 0.0, 0.0, f64::NAN, None), (None, true));
        assert_eq!(
            compare_complex(f64::INFINITY, 0.0, f64::INFINITY, 1.0, Some((1.0, 1.0))),
            (Some(1.0), false)
        );
    }

    #[test]
    fn metadata_delta_keeps_differing_keys() {
        let a: Map<String, Value> = serde_json::from_str(r#"{"x": 1, "y": 2, "gone": true}"#).unwrap();
        let b: Map<String, Value> = serde_json::from_str(r#"{"x": 1, "y": 3, "new": null}"#).unwrap();
        let d = metadata_delta(&a, &b).unwrap();
        assert_eq!(Value::Object(d.a), json!({"y": 2, "gone": true}));
        assert_eq!(Value::Object(d.b), json!({"y": 3, "new": null}));
        assert!(metadata_delta(&a, &a).is_none());
    }

    #[test]
    fn bad_options_are_refused() {
        for o in [
            DiffOptions {
                rtol: -1.0,
                ..Default::default()
            },
            DiffOptions {
                atol: f64::NAN,
                ..Default::default()
            },
            DiffOptions {
                window_bytes: 0,
                ..Default::default()
            },
        ] {
            assert!(matches!(o.check(), Err(Error::InvalidArgument(_))), "{o:?}");
        }
        assert!(DiffOptions::default().check().is_ok());
        assert!(DiffOptions::default().is_exact());
    }
}
