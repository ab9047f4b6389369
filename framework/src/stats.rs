//! Per-tensor statistics computed over stored bytes, block by block.
//!
//! [`tensor_stats`] reads one tensor through [`DtReader::map_blocks`] (one
//! chunk of a compressed tensor, or 4 MiB of an uncompressed one, per task, in
//! parallel) and never holds more than one decoded block per thread;
//! [`all_stats`] does every tensor of a file, tensors in parallel too. The
//! framework names no concrete dtype: values come from the dtype plugin's
//! [`DtypeHandler::decode_f64`] / [`DtypeHandler::decode_i128`], and the
//! algorithm follows its [`DtypeKind`].
//!
//! # What is reported
//!
//! Every tensor has `name`, `dtype`, `shape`, `nbytes`, `count` (elements),
//! `min`, `max`, `mean`, `stddev` (population: divided by the number of values,
//! not by one less), `nnz`, `nan_count` and `inf_count`. With no value to
//! describe (no element, or no finite one), `min` and `max` are JSON `null` and
//! `mean` and `stddev` are `None`.
//!
//! - **Integers** (U8 … I64): `min`/`max` are exact JSON integers (U64 and I64
//!   extremes included); sums are exact (`i128`), so `mean` is the exact mean
//!   rounded once to `f64`. `nan_count` and `inf_count` are 0.
//! - **BOOL**: `min`/`max` are JSON booleans (`false`/`true`, as torch and
//!   numpy report them); `mean` is the fraction of true elements and `stddev`
//!   that of 0/1 values; `nnz` counts true elements. Any non-zero byte is true.
//! - **Floats** (F16, BF16, F32, F64, F8_E4M3, F8_E5M2): `min`, `max`, `mean`
//!   and `stddev` are over the finite values only; NaN and ±Inf are counted in
//!   `nan_count` and `inf_count`, never propagated. `min`/`max` are JSON
//!   numbers holding the stored value exactly (an F32 0.1 reads
//!   0.10000000149011612). `nnz` counts elements that are not zero: -0.0 is
//!   zero, NaN is not. When both 0.0 and -0.0 are the minimum, either may be
//!   reported. F8_E4M3 (torch's float8_e4m3fn) has no infinities.
//! - **Complex** (C64, C128): an element is NaN when either part is NaN,
//!   otherwise Inf when either part is infinite, otherwise finite; so
//!   `nan_count + inf_count + finite elements == count`. Over the finite
//!   elements, `min`, `max`, `mean` and `stddev` describe the magnitude `|z|`,
//!   and four extra keys describe the parts: `mean_real`, `mean_imag`,
//!   `stddev_real` and `stddev_imag` (torch's complex `std` is
//!   `sqrt(stddev_real² + stddev_imag²)`). `nnz` counts `z != 0` (either part
//!   non-zero or NaN). The extra keys appear for complex tensors only.
//!
//! Values of magnitude over 2^450 are taken scaled by an exact power of two
//! for the moments, so `mean` and `stddev` are finite whenever the finite
//! values they describe are (1000 copies of 1e308 have a standard deviation,
//! and so do 1e200 and -1e200, though their squares overflow `f64`). Should
//! rounding at the very edge of `f64` still overflow one, it is reported as
//! `None` rather than as an infinity.
//!
//! # How it stays exact enough
//!
//! Each block is cut into sub-blocks of 1024 values, decoded into a buffer on
//! the stack. A sub-block's float moments are computed in `f64` with two
//! passes: the mean first, then the sum of squared deviations from it (`M2`),
//! which does not cancel catastrophically as `Σx² − (Σx)²/n` does. Integer
//! sub-blocks sum exactly in `i128` and take deviations from the exact mean
//! split into an integer and a fraction. Partial results `(n, mean, M2)` are
//! merged with the parallel formula of Chan, Golub and LeVeque (1979):
//!
//! ```text
//! n = na + nb    δ = mean_b − mean_a
//! mean = mean_a + δ·nb/n
//! M2 = M2a + M2b + δ²·na·nb/n
//! ```
//!
//! first sub-block after sub-block within a block, then blocks pairwise, so
//! rounding grows with the logarithm of the block count. `stddev = √(M2/n)`.
//! On 10⁸ F32 values the mean and standard deviation agree with a float64
//! reference to far better than 10⁻⁹ relative.

use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::format::TensorInfo;
use crate::reader::DtReader;
use crate::registry::{DtypeHandler, DtypeKind};

/// Values decoded at a time: the two-pass unit, small enough for the stack and L1.
const SUB_BLOCK: usize = 1024;
/// Independent accumulators per pass, so that the compiler can vectorise.
const LANES: usize = 8;

/// Statistics of one tensor. Serialises to the JSON object the Python and
/// CLI fronts return; see the [module docs](self) for what each field means
/// for each kind of dtype.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorStats {
    /// The tensor's name.
    pub name: String,
    /// Its dtype id (`"F32"`).
    pub dtype: String,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Bytes of the decoded tensor.
    pub nbytes: u64,
    /// Number of elements.
    pub count: u64,
    /// Smallest value (|z| for complex): an exact integer for integer dtypes,
    /// a boolean for BOOL, a number for floats; `null` with no finite value.
    pub min: Value,
    /// Largest value, as [`TensorStats::min`].
    pub max: Value,
    /// Mean of the finite values (|z| for complex).
    pub mean: Option<f64>,
    /// Population standard deviation of the finite values (|z| for complex).
    pub stddev: Option<f64>,
    /// Elements that are not zero (-0.0 is zero, NaN is not).
    pub nnz: u64,
    /// NaN elements (complex: either part NaN). 0 for non-float dtypes.
    pub nan_count: u64,
    /// ±Inf elements (complex: either part infinite, neither NaN). 0 for
    /// non-float dtypes.
    pub inf_count: u64,
    /// For complex dtypes only: statistics of the real and imaginary parts,
    /// serialised as extra keys of the same object.
    #[serde(flatten)]
    pub complex: Option<ComplexPartsStats>,
}

/// Statistics of the real and imaginary parts of a complex tensor's finite
/// elements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ComplexPartsStats {
    /// Mean of the real parts.
    pub mean_real: Option<f64>,
    /// Mean of the imaginary parts.
    pub mean_imag: Option<f64>,
    /// Population standard deviation of the real parts.
    pub stddev_real: Option<f64>,
    /// Population standard deviation of the imaginary parts.
    pub stddev_imag: Option<f64>,
}

/// Statistics of the tensor `name`, read block by block (in parallel) from
/// the stored bytes; memory stays bounded by one block per thread.
///
/// # Errors
/// [`Error::TensorNotFound`]; [`Error::InvalidArgument`] when the tensor's
/// dtype plugin has no numeric decoding; I/O errors and corrupt chunks.
pub fn tensor_stats(reader: &DtReader, name: &str) -> Result<TensorStats> {
    stats_of(reader, reader.tensor(name)?)
}

/// Statistics of every tensor of the file, in file order; tensors are done in
/// parallel, each as [`tensor_stats`] does it. A second name of a tensor
/// (`alias_of`) gets its target's statistics, not a second pass over the same
/// bytes: a small file of many aliases of one large tensor costs one pass.
///
/// # Errors
/// As [`tensor_stats`], for the first tensor that fails.
pub fn all_stats(reader: &DtReader) -> Result<Vec<TensorStats>> {
    all_stats_with_progress(reader, &|_| {})
}

/// [`all_stats`], calling `progress` with a tensor's byte size as each
/// tensor finishes (from any thread; for progress bars).
///
/// # Errors
/// As [`all_stats`].
pub fn all_stats_with_progress(reader: &DtReader, progress: &(dyn Fn(u64) + Sync)) -> Result<Vec<TensorStats>> {
    let tensors = reader.tensors();
    let mut rows: Vec<Option<TensorStats>> = tensors
        .par_iter()
        .map(|info| {
            if info.alias_of.is_some() {
                return Ok(None);
            }
            let s = stats_of(reader, info)?;
            progress(info.nbytes);
            Ok(Some(s))
        })
        .collect::<Result<_>>()?;
    // An alias names an earlier tensor that is no alias (the format's rule).
    let at: std::collections::HashMap<&str, usize> =
        tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
    for (i, info) in tensors.iter().enumerate() {
        let Some(target) = &info.alias_of else { continue };
        let found = at.get(target.as_str()).and_then(|&j| rows[j].clone());
        let mut row = match found {
            Some(row) => row,
            None => stats_of(reader, info)?, // not reachable in a valid file; computed, not guessed
        };
        row.name.clone_from(&info.name);
        progress(info.nbytes);
        rows[i] = Some(row);
    }
    Ok(rows.into_iter().flatten().collect())
}

fn stats_of(reader: &DtReader, info: &TensorInfo) -> Result<TensorStats> {
    let dtype = info.dtype;
    let item_size = dtype.item_size();
    if item_size == 0 {
        return Err(invalid(info, "its dtype has a zero item size".to_owned()));
    }
    let count = info.nbytes / item_size as u64;
    let mut stats = TensorStats {
        name: info.name.clone(),
        dtype: dtype.id().to_owned(),
        shape: info.shape.clone(),
        nbytes: info.nbytes,
        count,
        min: Value::Null,
        max: Value::Null,
        mean: None,
        stddev: None,
        nnz: 0,
        nan_count: 0,
        inf_count: 0,
        complex: None,
    };
    match dtype.kind() {
        kind @ (DtypeKind::Bool | DtypeKind::UnsignedInt | DtypeKind::SignedInt) => {
            if !dtype.decode_i128(&[], &mut []) {
                return Err(no_decoding(info));
            }
            reduce::<IntPartial>(reader, info)?.finish(kind == DtypeKind::Bool, &mut stats);
        }
        DtypeKind::Float => {
            if !dtype.decode_f64(&[], &mut []) {
                return Err(no_decoding(info));
            }
            reduce::<FloatPartial>(reader, info)?.finish(&mut stats);
        }
        DtypeKind::Complex => {
            if !dtype.decode_f64(&[], &mut []) {
                return Err(no_decoding(info));
            }
            reduce::<ComplexPartial>(reader, info)?.finish(&mut stats);
        }
    }
    Ok(stats)
}

fn invalid(info: &TensorInfo, reason: String) -> Error {
    Error::InvalidTensor {
        name: info.name.clone(),
        reason,
    }
}

fn no_decoding(info: &TensorInfo) -> Error {
    Error::InvalidArgument(format!(
        "tensor {:?}: dtype {} has no numeric decoding, so it has no statistics",
        info.name,
        info.dtype.id()
    ))
}

/// A partial result over some elements, mergeable with its neighbours.
trait Partial: Sized + Send + Default {
    /// The partial result of one decoded block of whole elements.
    fn of_block(dtype: &dyn DtypeHandler, bytes: &[u8]) -> Self;
    /// The partial result of `self`'s elements followed by `other`'s.
    fn merge(self, other: Self) -> Self;
}

/// Run `P` over every block of `info` and merge the blocks pairwise.
fn reduce<P: Partial>(reader: &DtReader, info: &TensorInfo) -> Result<P> {
    let dtype = info.dtype;
    let item_size = dtype.item_size();
    let blocks = reader.map_blocks(info, |bytes| {
        if bytes.len() % item_size != 0 {
            return Err(invalid(
                info,
                format!(
                    "a decoded block of {} bytes is not a whole number of {item_size}-byte elements",
                    bytes.len()
                ),
            ));
        }
        Ok(P::of_block(dtype, bytes))
    })?;
    let mut level = blocks.into_iter().collect::<Result<Vec<P>>>()?;
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        let mut it = level.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => a.merge(b),
                None => a,
            });
        }
        level = next;
    }
    Ok(level.pop().unwrap_or_default())
}

/// Count, mean and sum of squared deviations (`M2`) of some finite values.
///
/// Values of magnitude over 2^450 have deviations whose squares may overflow
/// f64, although the standard deviation is finite (1000 copies of 1e308,
/// or 1e200 and -1e200). Such values are taken scaled by 2^-[`BIG_SCALE`]
/// (exactly: a power of two), and `scaled` says so: the true mean is
/// `mean` × 2^BIG_SCALE and the true `M2` is `m2` × 2^(2 BIG_SCALE). Values
/// small enough to vanish under that scaling are below f64's precision of
/// the result anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
    scaled: bool,
}

/// Magnitude above which values are taken scaled (see [`Moments`]): 2^450,
/// under which n ≤ 2^64 squared deviations (each ≤ 2^902) cannot overflow.
const BIG: f64 = 2.907_354_897_182_427_6e135;
/// The power of two such values are scaled down by.
const BIG_SCALE: i32 = 600;

/// `x` × 2^`exp`, exactly while the result is normal.
fn times_pow2(x: f64, exp: i32) -> f64 {
    // 2^exp in two factors, so that neither overflows nor underflows for |exp| ≤ 2000.
    let half = exp / 2;
    x * 2f64.powi(half) * 2f64.powi(exp - half)
}

impl Moments {
    /// Two-pass moments of `values`, all finite, whose sum is `sum`.
    fn of_finite(values: &[f64], sum: f64) -> Moments {
        if values.is_empty() {
            return Moments::default();
        }
        if !values.iter().any(|v| v.abs() > BIG) {
            return Moments::unscaled(values, sum);
        }
        let mut scaled = [0.0f64; SUB_BLOCK];
        let mut moments = Moments::default();
        for piece in values.chunks(SUB_BLOCK) {
            let part = &mut scaled[..piece.len()];
            for (s, &v) in part.iter_mut().zip(piece) {
                *s = times_pow2(v, -BIG_SCALE);
            }
            // The caller's sum, scaled, is exact if it did not overflow.
            let sum = if sum.is_finite() && piece.len() == values.len() {
                times_pow2(sum, -BIG_SCALE)
            } else {
                lanes_total(part)
            };
            moments = moments.merge(Moments {
                scaled: true,
                ..Moments::unscaled(part, sum)
            });
        }
        moments
    }

    /// [`Moments::of_finite`] of values under [`BIG`] (whose squared deviations cannot overflow).
    ///
    /// The corrected two-pass algorithm: the deviations from `sum / n` also
    /// sum to the error of that first mean, which corrects both the mean and
    /// `M2`. F64 sums round (a thousand 0.1s sum to 99.99999999999986), and
    /// without the correction the mean of a constant tensor fell below its
    /// minimum and its standard deviation was not 0.
    fn unscaled(values: &[f64], sum: f64) -> Moments {
        let n = values.len() as f64;
        let first = sum / n;
        let mut squares = [0.0f64; LANES];
        let mut deviations = [0.0f64; LANES];
        let chunks = values.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for ((q, e), &v) in squares.iter_mut().zip(deviations.iter_mut()).zip(c) {
                let d = v - first;
                *q += d * d;
                *e += d;
            }
        }
        let error = lanes_sum(deviations) + rest.iter().map(|&v| v - first).sum::<f64>();
        let m2 = lanes_sum(squares) + rest.iter().map(|&v| (v - first) * (v - first)).sum::<f64>();
        Moments {
            n: values.len() as u64,
            mean: first + error / n,
            m2: (m2 - error * error / n).max(0.0),
            scaled: false,
        }
    }

    /// The same moments, scaled (see [`Moments`]).
    fn to_scaled(self) -> Moments {
        if self.scaled {
            return self;
        }
        Moments {
            n: self.n,
            mean: times_pow2(self.mean, -BIG_SCALE),
            m2: times_pow2(self.m2, -2 * BIG_SCALE),
            scaled: true,
        }
    }

    /// Chan et al.'s merge of two disjoint sets of values.
    fn merge(self, other: Moments) -> Moments {
        if other.n == 0 {
            return self;
        }
        if self.n == 0 {
            return other;
        }
        let (a, b) = if self.scaled == other.scaled {
            (self, other)
        } else {
            (self.to_scaled(), other.to_scaled())
        };
        let n = a.n + b.n;
        let (na, nb, nf) = (a.n as f64, b.n as f64, n as f64);
        let delta = b.mean - a.mean;
        Moments {
            n,
            mean: a.mean + delta * (nb / nf),
            m2: a.m2 + b.m2 + delta * delta * (na * (nb / nf)),
            scaled: a.scaled,
        }
    }

    fn mean(&self) -> Option<f64> {
        let mean = if self.scaled {
            // The mean of finite values is finite; rounding may not make it otherwise.
            times_pow2(self.mean, BIG_SCALE).clamp(f64::MIN, f64::MAX)
        } else {
            self.mean
        };
        Some(mean).filter(|m| self.n > 0 && m.is_finite())
    }

    fn stddev(&self) -> Option<f64> {
        let s = (self.m2 / self.n as f64).sqrt();
        let s = if self.scaled { times_pow2(s, BIG_SCALE) } else { s };
        Some(s).filter(|s| self.n > 0 && s.is_finite())
    }
}

/// The sum of `values` in [`LANES`] lanes, as [`FloatPartial::of_values`] adds them.
fn lanes_total(values: &[f64]) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a += v;
        }
    }
    lanes_sum(lanes) + rest.iter().sum::<f64>()
}

fn lanes_sum(lanes: [f64; LANES]) -> f64 {
    // Pairwise, in a fixed order.
    let [a, b, c, d, e, f, g, h] = lanes;
    ((a + b) + (c + d)) + ((e + f) + (g + h))
}

fn json_f64(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Partial statistics of a real floating-point dtype.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FloatPartial {
    moments: Moments,
    min: f64,
    max: f64,
    nnz: u64,
    nan: u64,
    inf: u64,
}

impl Default for FloatPartial {
    fn default() -> Self {
        FloatPartial {
            moments: Moments::default(),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            nnz: 0,
            nan: 0,
            inf: 0,
        }
    }
}

impl FloatPartial {
    /// Statistics of decoded values (one per element).
    fn of_values(values: &[f64]) -> FloatPartial {
        let mut sum = [0.0f64; LANES];
        let mut min = [f64::INFINITY; LANES];
        let mut max = [f64::NEG_INFINITY; LANES];
        let mut nnz = [0u64; LANES];
        let mut bad = [0u64; LANES];
        let chunks = values.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for (i, &v) in c.iter().enumerate() {
                // Branch-free, so that the loop vectorises: non-finite values
                // become neutral elements of each reduction.
                let finite = v.abs() < f64::INFINITY;
                sum[i] += if finite { v } else { 0.0 };
                let lo = if finite { v } else { f64::INFINITY };
                let hi = if finite { v } else { f64::NEG_INFINITY };
                min[i] = if lo < min[i] { lo } else { min[i] };
                max[i] = if hi > max[i] { hi } else { max[i] };
                nnz[i] += u64::from(v != 0.0);
                bad[i] += u64::from(!finite);
            }
        }
        let mut out = FloatPartial {
            min: min.iter().fold(f64::INFINITY, |a, &b| if b < a { b } else { a }),
            max: max.iter().fold(f64::NEG_INFINITY, |a, &b| if b > a { b } else { a }),
            nnz: nnz.iter().sum(),
            ..FloatPartial::default()
        };
        let mut total = lanes_sum(sum);
        let mut nonfinite: u64 = bad.iter().sum();
        for &v in rest {
            out.nnz += u64::from(v != 0.0);
            if v.is_finite() {
                total += v;
                out.min = out.min.min(v);
                out.max = out.max.max(v);
            } else {
                nonfinite += 1;
            }
        }
        if nonfinite == 0 {
            out.moments = Moments::of_finite(values, total);
            return out;
        }
        let mut finite = [0.0f64; SUB_BLOCK];
        let mut kept = 0;
        for &v in values {
            if v.is_nan() {
                out.nan += 1;
            } else if v.is_infinite() {
                out.inf += 1;
            } else if let Some(slot) = finite.get_mut(kept) {
                *slot = v;
                kept += 1;
            }
        }
        out.moments = Moments::of_finite(&finite[..kept], total);
        out
    }

    fn finish(self, stats: &mut TensorStats) {
        if self.moments.n > 0 {
            stats.min = json_f64(self.min);
            stats.max = json_f64(self.max);
        }
        // Rounding must not put the mean outside the values (or spread equal ones).
        stats.mean = self.moments.mean().map(|m| m.max(self.min).min(self.max));
        stats.stddev = self
            .moments
            .stddev()
            .map(|s| if self.min == self.max { 0.0 } else { s });
        stats.nnz = self.nnz;
        stats.nan_count = self.nan;
        stats.inf_count = self.inf;
    }
}

impl Partial for FloatPartial {
    fn of_block(dtype: &dyn DtypeHandler, bytes: &[u8]) -> Self {
        let item = dtype.item_size();
        let mut buf = [0.0f64; SUB_BLOCK];
        bytes
            .chunks(SUB_BLOCK * item)
            .fold(FloatPartial::default(), |acc, sub| {
                let values = &mut buf[..sub.len() / item];
                dtype.decode_f64(sub, values);
                acc.merge(FloatPartial::of_values(values))
            })
    }

    fn merge(self, other: Self) -> Self {
        FloatPartial {
            moments: self.moments.merge(other.moments),
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            nnz: self.nnz + other.nnz,
            nan: self.nan + other.nan,
            inf: self.inf + other.inf,
        }
    }
}

/// Partial statistics of a complex dtype: |z| and both parts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ComplexPartial {
    /// Statistics of |z| over finite elements (its `nnz`, `nan`, `inf` are the elements').
    abs: FloatPartial,
    real: Moments,
    imag: Moments,
}

impl ComplexPartial {
    /// Statistics of decoded (real, imaginary) pairs.
    fn of_values(pairs: &[f64]) -> ComplexPartial {
        let mut abs = [0.0f64; SUB_BLOCK / 2];
        let mut real = [0.0f64; SUB_BLOCK / 2];
        let mut imag = [0.0f64; SUB_BLOCK / 2];
        let mut out = FloatPartial::default();
        let (mut kept, mut sums) = (0, [0.0f64; 3]);
        for pair in pairs.chunks_exact(2) {
            let (re, im) = (pair[0], pair[1]);
            out.nnz += u64::from(re != 0.0 || im != 0.0);
            if re.is_nan() || im.is_nan() {
                out.nan += 1;
            } else if re.is_infinite() || im.is_infinite() {
                out.inf += 1;
            } else if kept < abs.len() {
                let r = magnitude(re, im);
                out.min = out.min.min(r);
                out.max = out.max.max(r);
                (abs[kept], real[kept], imag[kept]) = (r, re, im);
                sums[0] += r;
                sums[1] += re;
                sums[2] += im;
                kept += 1;
            }
        }
        out.moments = Moments::of_finite(&abs[..kept], sums[0]);
        ComplexPartial {
            abs: out,
            real: Moments::of_finite(&real[..kept], sums[1]),
            imag: Moments::of_finite(&imag[..kept], sums[2]),
        }
    }

    fn finish(self, stats: &mut TensorStats) {
        self.abs.finish(stats);
        stats.complex = Some(ComplexPartsStats {
            mean_real: self.real.mean(),
            mean_imag: self.imag.mean(),
            stddev_real: self.real.stddev(),
            stddev_imag: self.imag.stddev(),
        });
    }
}

/// |re + i·im| without overflow or underflow in the intermediate square.
fn magnitude(re: f64, im: f64) -> f64 {
    let sq = re * re + im * im;
    if sq.is_finite() && sq >= f64::MIN_POSITIVE {
        sq.sqrt()
    } else {
        re.hypot(im)
    }
}

impl Partial for ComplexPartial {
    fn of_block(dtype: &dyn DtypeHandler, bytes: &[u8]) -> Self {
        let item = dtype.item_size();
        let mut buf = [0.0f64; SUB_BLOCK];
        bytes
            .chunks(SUB_BLOCK / 2 * item)
            .fold(ComplexPartial::default(), |acc, sub| {
                let pairs = &mut buf[..sub.len() / item * 2];
                dtype.decode_f64(sub, pairs);
                acc.merge(ComplexPartial::of_values(pairs))
            })
    }

    fn merge(self, other: Self) -> Self {
        ComplexPartial {
            abs: self.abs.merge(other.abs),
            real: self.real.merge(other.real),
            imag: self.imag.merge(other.imag),
        }
    }
}

/// Partial statistics of an integer or BOOL dtype, with an exact sum.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IntPartial {
    n: u64,
    sum: i128,
    min: i128,
    max: i128,
    nnz: u64,
    /// Sum of squared deviations from the exact mean.
    m2: f64,
}

impl Default for IntPartial {
    fn default() -> Self {
        IntPartial {
            n: 0,
            sum: 0,
            min: i128::MAX,
            max: i128::MIN,
            nnz: 0,
            m2: 0.0,
        }
    }
}

impl IntPartial {
    /// The mean `sum / n` as an integer part (rounded down) and a fraction in `[0, 1)`.
    fn mean_parts(&self) -> (i128, f64) {
        if self.n == 0 {
            return (0, 0.0);
        }
        let n = i128::from(self.n);
        let (q, r) = (self.sum.div_euclid(n), self.sum.rem_euclid(n));
        (q, r as f64 / self.n as f64)
    }

    fn of_values(values: &[i128]) -> IntPartial {
        let mut out = IntPartial {
            n: values.len() as u64,
            ..IntPartial::default()
        };
        for &v in values {
            out.sum += v;
            out.min = out.min.min(v);
            out.max = out.max.max(v);
            out.nnz += u64::from(v != 0);
        }
        // Deviations from the exact mean: the integer part subtracts exactly.
        let (q, frac) = out.mean_parts();
        out.m2 = values
            .iter()
            .map(|&v| {
                let d = (v - q) as f64 - frac;
                d * d
            })
            .sum();
        out
    }

    fn finish(self, boolean: bool, stats: &mut TensorStats) {
        if self.n > 0 {
            let json = |v: i128| {
                if boolean {
                    Value::Bool(v != 0)
                } else if let Ok(v) = i64::try_from(v) {
                    Value::from(v)
                } else if let Ok(v) = u64::try_from(v) {
                    Value::from(v)
                } else {
                    json_f64(v as f64)
                }
            };
            stats.min = json(self.min);
            stats.max = json(self.max);
            let (q, frac) = self.mean_parts();
            stats.mean = Some(q as f64 + frac);
            stats.stddev = Some((self.m2 / self.n as f64).sqrt()).filter(|s| s.is_finite());
        }
        stats.nnz = self.nnz;
    }
}

impl Partial for IntPartial {
    fn of_block(dtype: &dyn DtypeHandler, bytes: &[u8]) -> Self {
        let item = dtype.item_size();
        let mut buf = [0i128; SUB_BLOCK];
        bytes.chunks(SUB_BLOCK * item).fold(IntPartial::default(), |acc, sub| {
            let values = &mut buf[..sub.len() / item];
            dtype.decode_i128(sub, values);
            acc.merge(IntPartial::of_values(values))
        })
    }

    fn merge(self, other: Self) -> Self {
        if other.n == 0 {
            return self;
        }
        if self.n == 0 {
            return other;
        }
        let ((qa, fa), (qb, fb)) = (self.mean_parts(), other.mean_parts());
        let delta = (qb - qa) as f64 + (fb - fa);
        let n = self.n + other.n;
        let (na, nb) = (self.n as f64, other.n as f64);
        IntPartial {
            n,
            // Exact: |sum| ≤ 2^64 · count, and count < 2^61 for 8-byte elements.
            sum: self.sum + other.sum,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            nnz: self.nnz + other.nnz,
            m2: self.m2 + other.m2 + delta * delta * (na * (nb / n as f64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Plugin;

    /// Little-endian F32 / I64 / C128 test dtypes (the real ones live in the plugins crate).
    struct Fake(DtypeKind);

    impl Plugin for Fake {
        fn id(&self) -> &'static str {
            "FAKE"
        }
        fn summary(&self) -> &'static str {
            "test dtype"
        }
    }

    impl DtypeHandler for Fake {
        fn item_size(&self) -> usize {
            match self.0 {
                DtypeKind::Float => 4,
                DtypeKind::Complex => 16,
                _ => 8,
            }
        }
        fn kind(&self) -> DtypeKind {
            self.0
        }
        fn torch_name(&self) -> Option<&'static str> {
            None
        }
        fn numpy_name(&self) -> Option<&'static str> {
            None
        }
        fn decode_f64(&self, bytes: &[u8], out: &mut [f64]) -> bool {
            match self.0 {
                DtypeKind::Float => {
                    for (c, o) in bytes.chunks_exact(4).zip(out) {
                        *o = f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                    }
                }
                _ => {
                    for (c, o) in bytes.chunks_exact(8).zip(out) {
                        *o = f64::from_le_bytes(c.try_into().unwrap());
                    }
                }
            }
            true
        }
        fn decode_i128(&self, bytes: &[u8], out: &mut [i128]) -> bool {
            for (c, o) in bytes.chunks_exact(8).zip(out) {
                *o = i128::from(i64::from_le_bytes(c.try_into().unwrap()));
            }
            true
        }
    }

    fn two_pass(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(f64::MIN_POSITIVE)
    }

    #[test]
    fn chan_merge_equals_one_pass_over_the_union() {
        let values: Vec<f64> = (0..1000).map(|i| 1e6 + f64::from(i % 37) * 0.25).collect();
        let whole = Moments::of_finite(&values, values.iter().sum());
        for split in [1, 7, 500, 999] {
            let (a, b) = values.split_at(split);
            let merged = Moments::of_finite(a, a.iter().sum()).merge(Moments::of_finite(b, b.iter().sum()));
            assert_eq!(merged.n, 1000);
            assert!(close(merged.mean, whole.mean, 1e-15), "{merged:?} {whole:?}");
            assert!(close(merged.m2, whole.m2, 1e-10), "{merged:?} {whole:?}");
        }
        assert_eq!(Moments::default().merge(whole), whole);
        assert_eq!(whole.merge(Moments::default()), whole);
        assert_eq!(Moments::default().mean(), None);
        assert_eq!(Moments::default().stddev(), None);
    }

    #[test]
    fn float_blocks_skip_nan_and_inf() {
        let values: Vec<f32> = vec![
            1.0,
            f32::NAN,
            -2.0,
            f32::INFINITY,
            0.0,
            -0.0,
            f32::NEG_INFINITY,
            4.0,
            3.0,
        ];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = FloatPartial::of_block(&Fake(DtypeKind::Float), &bytes);
        assert_eq!((p.nan, p.inf, p.nnz, p.moments.n), (1, 2, 7, 6));
        assert_eq!((p.min, p.max), (-2.0, 4.0));
        let (mean, sd) = two_pass(&[1.0, -2.0, 0.0, 0.0, 4.0, 3.0]);
        assert!(close(p.moments.mean().unwrap(), mean, 1e-15));
        assert!(close(p.moments.stddev().unwrap(), sd, 1e-15));
    }

    #[test]
    fn sub_blocks_and_lanes_cover_every_value() {
        // 2500 values: two full sub-blocks and a ragged tail, with lane remainders.
        let values: Vec<f32> = (0..2501).map(|i| (i as f32 * 0.37).sin() * 10.0 + 5.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = FloatPartial::of_block(&Fake(DtypeKind::Float), &bytes);
        let wide: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
        let (mean, sd) = two_pass(&wide);
        assert_eq!(p.moments.n, 2501);
        assert!(close(p.moments.mean().unwrap(), mean, 1e-14));
        assert!(close(p.moments.stddev().unwrap(), sd, 1e-12));
        assert_eq!(p.min, wide.iter().copied().fold(f64::INFINITY, f64::min));
        assert_eq!(p.max, wide.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    }

    #[test]
    fn huge_floats_do_not_overflow_the_mean() {
        let values = [f64::MAX, f64::MAX, f64::MAX];
        let m = Moments::of_finite(&values, values.iter().sum());
        assert_eq!(m.mean(), Some(f64::MAX));
        assert_eq!(m.stddev(), Some(0.0));
    }

    #[test]
    fn huge_floats_have_a_finite_stddev() {
        let moments = |values: &[f64]| {
            let m = Moments::of_finite(values, values.iter().sum());
            (m.mean().unwrap(), m.stddev().unwrap())
        };
        // Their squared deviations overflow f64 (they used to give None).
        assert_eq!(moments(&[1e200, -1e200]), (0.0, 1e200));
        assert_eq!(moments(&[f64::MAX, -f64::MAX]), (0.0, f64::MAX));
        let same = vec![1e308; 1000];
        let (mean, sd) = moments(&same);
        assert!(close(mean, 1e308, 1e-12) && sd <= 1e-12 * 1e308, "{mean} {sd}");
        // Scaled and unscaled sub-blocks merge: 1024 ones, then 1024 values of 1e300.
        let mixed: Vec<f64> = (0..2048).map(|i| if i < 1024 { 1.0 } else { 1e300 }).collect();
        let merged = mixed
            .chunks(1024)
            .map(|c| Moments::of_finite(c, c.iter().sum()))
            .fold(Moments::default(), Moments::merge);
        // (A sum of 1024 values carries up to ~1e-13 of relative rounding.)
        assert!(close(merged.mean().unwrap(), 0.5e300, 1e-12), "{merged:?}");
        assert!(close(merged.stddev().unwrap(), 0.5e300, 1e-12), "{merged:?}");
        // Values under 2^450 keep the unscaled path, bit for bit as before.
        let small = [1.5, -2.0, 1e130];
        let m = Moments::of_finite(&small, small.iter().sum());
        assert!(!m.scaled);
        assert_eq!(m.stddev(), Some(two_pass(&small).1));
    }

    #[test]
    fn integer_moments_are_exact_near_the_extremes() {
        let values: Vec<i128> = (0..3000).map(|i| i128::from(i64::MAX) - i128::from(i % 4)).collect();
        let whole = IntPartial::of_values(&values);
        assert_eq!(whole.sum, values.iter().sum::<i128>());
        let parts = values
            .chunks(700)
            .map(IntPartial::of_values)
            .fold(IntPartial::default(), IntPartial::merge);
        assert_eq!(parts.sum, whole.sum);
        assert_eq!((parts.min, parts.max), (i128::from(i64::MAX) - 3, i128::from(i64::MAX)));
        // Values are MAX - {0,1,2,3} equally often: variance 1.25.
        assert!(close(parts.m2 / 3000.0, 1.25, 1e-12), "{}", parts.m2);
        assert!(close(whole.m2 / 3000.0, 1.25, 1e-12), "{}", whole.m2);
        let (q, f) = parts.mean_parts();
        assert_eq!(q, i128::from(i64::MAX) - 2);
        assert!(close(f, 0.5, 1e-15));
    }

    #[test]
    fn integer_blocks_decode_through_the_dtype() {
        let values = [i64::MIN, -1, 0, 5, i64::MAX];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = IntPartial::of_block(&Fake(DtypeKind::SignedInt), &bytes);
        assert_eq!((p.n, p.nnz, p.sum), (5, 4, 3));
        assert_eq!((p.min, p.max), (i128::from(i64::MIN), i128::from(i64::MAX)));
    }

    #[test]
    fn complex_reports_magnitude_and_parts() {
        let pairs = [
            3.0,
            4.0,
            0.0,
            0.0,
            f64::NAN,
            1.0,
            f64::INFINITY,
            0.0,
            -6.0,
            8.0,
            1e300,
            1e300,
        ];
        let bytes: Vec<u8> = pairs.iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = ComplexPartial::of_block(&Fake(DtypeKind::Complex), &bytes);
        assert_eq!((p.abs.nan, p.abs.inf, p.abs.nnz, p.abs.moments.n), (1, 1, 5, 4));
        let big = 1e300 * std::f64::consts::SQRT_2;
        assert_eq!(p.abs.min, 0.0);
        assert!(close(p.abs.max, big, 1e-15));
        let (mean, _) = two_pass(&[5.0, 0.0, 10.0, big]);
        assert!(close(p.abs.moments.mean().unwrap(), mean, 1e-15));
        let (mean_re, _) = two_pass(&[3.0, 0.0, -6.0, 1e300]);
        assert!(close(p.real.mean().unwrap(), mean_re, 1e-15));
        // Squared deviations of 1e300 overflow f64; the moments do not.
        let (_, sd_re) = two_pass(&[3e-300, 0.0, -6e-300, 1.0]);
        assert!(close(p.real.stddev().unwrap(), sd_re * 1e300, 1e-14));
        let (mean_im, sd_im) = two_pass(&[4.0, 0.0, 8.0, 1e300]);
        assert!(close(p.imag.mean().unwrap(), mean_im, 1e-15));
        assert!(sd_im.is_infinite());
        let (_, sd_im) = two_pass(&[4e-300, 0.0, 8e-300, 1.0]);
        assert!(close(p.imag.stddev().unwrap(), sd_im * 1e300, 1e-14));
    }

    #[test]
    fn serialises_complex_keys_only_for_complex() {
        let mut stats = TensorStats {
            name: "t".into(),
            dtype: "F32".into(),
            shape: vec![],
            nbytes: 0,
            count: 0,
            min: Value::Null,
            max: Value::Null,
            mean: None,
            stddev: None,
            nnz: 0,
            nan_count: 0,
            inf_count: 0,
            complex: None,
        };
        let json = serde_json::to_value(&stats).unwrap();
        assert!(json.get("mean_real").is_none() && json["mean"].is_null());
        stats.complex = Some(ComplexPartsStats {
            mean_real: Some(1.0),
            mean_imag: None,
            stddev_real: Some(0.0),
            stddev_imag: None,
        });
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["mean_real"], 1.0);
        assert!(json["mean_imag"].is_null());
    }

    #[test]
    fn constant_f64_values_have_their_value_as_mean_and_no_spread() {
        // Regression: a thousand 0.1s (and three 1.7e308s) had a mean below
        // their minimum and a standard deviation above 0.
        for (v, n) in [(0.1f64, 1000usize), (0.1, 1_000_000), (1.7e308, 3), (-3.3e-7, 4097)] {
            let values = vec![v; n];
            let m = Moments::of_finite(&values, lanes_total(&values));
            assert_eq!(m.mean(), Some(v), "{v} x {n}");
            assert_eq!(m.stddev(), Some(0.0), "{v} x {n}");
        }
    }
}
