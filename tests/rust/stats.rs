//! Per-tensor statistics: every dtype, raw and compressed (many chunks),
//! against references computed here from the values written, in f64 with
//! compensated two-pass sums and in exact i128.

use deathtensors_plugins as _;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use deathtensors::reader::DtReader;
use deathtensors::stats::{all_stats, tensor_stats, TensorStats};
use deathtensors::writer::{write_entries, Entry, TensorData, WriteOptions};
use deathtensors::Error;
use deathtensors_integration_tests::{opts, tensor, write_valid, Lcg};
use serde_json::{json, Map, Value};

const CODECS: [Option<&str>; 3] = [None, Some("zstd"), Some("lz4")];

/// Options that cut compressed tensors into many small chunks.
fn small_chunks(codec: Option<&str>) -> WriteOptions {
    WriteOptions {
        chunk_bytes: 640,
        ..opts(codec, None)
    }
}

fn open(dir: &Path, name: &str, tensors: &[TensorData<'_>], options: &WriteOptions) -> DtReader {
    let path = write_valid(dir, name, tensors, &Map::new(), options);
    DtReader::open(path).expect("open")
}

fn le_bytes<const N: usize, T: Copy>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

// ---------------------------------------------------------------- references

/// Neumaier-compensated sum.
fn compensated_sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut c) = (0.0f64, 0.0f64);
    for v in values {
        let t = sum + v;
        c += if sum.abs() >= v.abs() {
            (sum - t) + v
        } else {
            (v - t) + sum
        };
        sum = t;
    }
    sum + c
}

/// Mean and population standard deviation, two-pass and compensated.
fn mean_stddev(values: &[f64]) -> (Option<f64>, Option<f64>) {
    if values.is_empty() {
        return (None, None);
    }
    let n = values.len() as f64;
    let mean = compensated_sum(values.iter().copied()) / n;
    let m2 = compensated_sum(values.iter().map(|v| (v - mean) * (v - mean)));
    (Some(mean), Some((m2 / n).sqrt()))
}

/// What a tensor's statistics must be.
#[derive(Debug)]
struct Expected {
    min: Value,
    max: Value,
    mean: Option<f64>,
    stddev: Option<f64>,
    nnz: u64,
    nan: u64,
    inf: u64,
    /// Largest magnitude, the scale of rounding errors in mean and stddev.
    scale: f64,
    /// (mean_real, mean_imag, stddev_real, stddev_imag) for complex tensors.
    parts: Option<[Option<f64>; 4]>,
}

fn json_f64(x: f64) -> Value {
    json!(x)
}

fn expect_float(values: &[f64]) -> Expected {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (mean, stddev) = mean_stddev(&finite);
    let min = finite.iter().copied().reduce(f64::min);
    let max = finite.iter().copied().reduce(f64::max);
    Expected {
        min: min.map_or(Value::Null, json_f64),
        max: max.map_or(Value::Null, json_f64),
        mean,
        stddev,
        nnz: values.iter().filter(|&&v| v != 0.0).count() as u64,
        nan: values.iter().filter(|v| v.is_nan()).count() as u64,
        inf: values.iter().filter(|v| v.is_infinite()).count() as u64,
        scale: finite.iter().fold(0.0, |a, v| a.max(v.abs())),
        parts: None,
    }
}

fn expect_int(values: &[i128], boolean: bool) -> Expected {
    let json = |v: i128| {
        if boolean {
            Value::Bool(v != 0)
        } else if v < 0 {
            json!(i64::try_from(v).unwrap())
        } else {
            json!(u64::try_from(v).unwrap())
        }
    };
    let n = values.len() as i128;
    let sum: i128 = values.iter().sum();
    // Exact deviations scaled by n: d = x·n − Σx, so variance = Σd² / n³.
    let var = values.iter().map(|&x| ((x * n - sum) as f64).powi(2)).sum::<f64>() / (n as f64).powi(3);
    Expected {
        min: values.iter().copied().min().map_or(Value::Null, json),
        max: values.iter().copied().max().map_or(Value::Null, json),
        mean: (n > 0).then(|| sum as f64 / n as f64),
        stddev: (n > 0).then(|| var.sqrt()),
        nnz: values.iter().filter(|&&v| v != 0).count() as u64,
        nan: 0,
        inf: 0,
        scale: values.iter().map(|v| v.unsigned_abs() as f64).fold(0.0, f64::max),
        parts: None,
    }
}

fn expect_complex(pairs: &[(f64, f64)]) -> Expected {
    let finite: Vec<(f64, f64)> = pairs
        .iter()
        .copied()
        .filter(|(re, im)| re.is_finite() && im.is_finite())
        .collect();
    let abs: Vec<f64> = finite.iter().map(|(re, im)| re.hypot(*im)).collect();
    let mut e = expect_float(&abs);
    let (mean_re, sd_re) = mean_stddev(&finite.iter().map(|p| p.0).collect::<Vec<_>>());
    let (mean_im, sd_im) = mean_stddev(&finite.iter().map(|p| p.1).collect::<Vec<_>>());
    e.parts = Some([mean_re, mean_im, sd_re, sd_im]);
    e.nnz = pairs.iter().filter(|(re, im)| *re != 0.0 || *im != 0.0).count() as u64;
    e.nan = pairs.iter().filter(|(re, im)| re.is_nan() || im.is_nan()).count() as u64;
    e.inf = pairs
        .iter()
        .filter(|(re, im)| !re.is_nan() && !im.is_nan() && (re.is_infinite() || im.is_infinite()))
        .count() as u64;
    e
}

fn assert_close(what: &str, got: Option<f64>, want: Option<f64>, scale: f64, rel: f64) {
    match (got, want) {
        (Some(g), Some(w)) => {
            let tol = rel * w.abs().max(scale).max(f64::MIN_POSITIVE);
            assert!(
                (g - w).abs() <= tol,
                "{what}: got {g:e}, want {w:e} (tolerance {tol:e})"
            );
        }
        (g, w) => assert_eq!(g, w, "{what}"),
    }
}

fn check(stats: &TensorStats, e: &Expected, rel: f64) {
    let ctx = format!("{} {} {:?}", stats.name, stats.dtype, stats.shape);
    assert_eq!(stats.min, e.min, "{ctx}: min");
    assert_eq!(stats.max, e.max, "{ctx}: max");
    assert_eq!(
        (stats.nnz, stats.nan_count, stats.inf_count),
        (e.nnz, e.nan, e.inf),
        "{ctx}"
    );
    assert_close(&format!("{ctx}: mean"), stats.mean, e.mean, e.scale, rel);
    assert_close(&format!("{ctx}: stddev"), stats.stddev, e.stddev, e.scale, rel);
    match (&stats.complex, e.parts) {
        (None, None) => {}
        (Some(c), Some([mr, mi, sr, si])) => {
            assert_close(&format!("{ctx}: mean_real"), c.mean_real, mr, e.scale, rel);
            assert_close(&format!("{ctx}: mean_imag"), c.mean_imag, mi, e.scale, rel);
            assert_close(&format!("{ctx}: stddev_real"), c.stddev_real, sr, e.scale, rel);
            assert_close(&format!("{ctx}: stddev_imag"), c.stddev_imag, si, e.scale, rel);
        }
        (got, want) => panic!("{ctx}: complex parts {got:?}, want {want:?}"),
    }
}

/// Value of a small binary float with `e` exponent and `m` mantissa bits,
/// written from the definition (independently of the dtype plugin).
/// `fn_format`: no infinities, only all-ones exponent and mantissa is NaN.
fn small_float(bits: u32, e: u32, m: u32, fn_format: bool) -> f64 {
    let sign = if bits & (1 << (e + m)) != 0 { -1.0 } else { 1.0 };
    let exponent = ((bits >> m) & ((1 << e) - 1)) as i32;
    let mantissa = bits & ((1 << m) - 1);
    let bias = (1i32 << (e - 1)) - 1;
    let all_ones = (1i32 << e) - 1;
    if exponent == all_ones && !fn_format {
        return if mantissa == 0 { sign * f64::INFINITY } else { f64::NAN };
    }
    if exponent == all_ones && fn_format && mantissa == (1 << m) - 1 {
        return f64::NAN;
    }
    let (significand, power) = if exponent == 0 {
        (f64::from(mantissa), 1 - bias - m as i32)
    } else {
        (f64::from(mantissa | (1 << m)), exponent - bias - m as i32)
    };
    sign * significand * 2f64.powi(power)
}

// ---------------------------------------------------------------- data

/// Floats around `center` with NaN, ±Inf, 0.0 and -0.0 sprinkled in.
fn floats(n: usize, seed: u64, center: f64, spread: f64) -> Vec<f64> {
    let mut rng = Lcg::new(seed);
    (0..n)
        .map(|i| match i % 211 {
            17 => f64::NAN,
            41 => f64::INFINITY,
            99 => f64::NEG_INFINITY,
            5 | 150 => 0.0,
            6 => -0.0,
            _ => center + spread * ((rng.below(2_000_001) as f64) / 1e6 - 1.0),
        })
        .collect()
}

/// Integers over the full range of a `bits`-bit type, with zeros and both extremes.
fn ints(n: usize, seed: u64, bits: u32, signed: bool) -> Vec<i128> {
    let mut rng = Lcg::new(seed);
    let (lo, hi) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    (0..n)
        .map(|i| match i % 97 {
            0 => lo,
            1 => hi,
            2 | 3 => 0,
            _ => lo + (i128::from(rng.next_u64()) % (hi - lo + 1)),
        })
        .collect()
}

/// One tensor of every dtype: (dtype, bytes, what its stats must be).
fn every_dtype(n: usize) -> Vec<(&'static str, Vec<u8>, Expected)> {
    let mut out = Vec::new();
    let bools: Vec<i128> = ints(n, 1, 8, false).iter().map(|v| i128::from(v % 3 != 0)).collect();
    out.push((
        "BOOL",
        bools.iter().map(|&v| v as u8).collect(),
        expect_int(&bools, true),
    ));
    macro_rules! int {
        ($id:literal, $t:ty, $bits:literal, $signed:literal, $seed:literal) => {{
            let v = ints(n, $seed, $bits, $signed);
            let bytes = v.iter().flat_map(|&x| (x as $t).to_le_bytes()).collect();
            out.push(($id, bytes, expect_int(&v, false)));
        }};
    }
    int!("U8", u8, 8, false, 2);
    int!("I8", i8, 8, true, 3);
    int!("U16", u16, 16, false, 4);
    int!("I16", i16, 16, true, 5);
    int!("U32", u32, 32, false, 6);
    int!("I32", i32, 32, true, 7);
    int!("U64", u64, 64, false, 8);
    int!("I64", i64, 64, true, 9);

    let f32s: Vec<f32> = floats(n, 10, 3.0, 10.0).iter().map(|&v| v as f32).collect();
    let wide: Vec<f64> = f32s.iter().map(|&v| f64::from(v)).collect();
    out.push(("F32", le_bytes(&f32s, f32::to_le_bytes), expect_float(&wide)));
    let f64s = floats(n, 11, -1e5, 3.0);
    out.push(("F64", le_bytes(&f64s, f64::to_le_bytes), expect_float(&f64s)));

    // Half-width floats: random bit patterns cover NaN, Inf, subnormals, -0.0.
    let mut rng = Lcg::new(12);
    let halves: Vec<u16> = (0..n).map(|_| (rng.next_u64() >> 40) as u16).collect();
    let f16: Vec<f64> = halves
        .iter()
        .map(|&b| small_float(u32::from(b), 5, 10, false))
        .collect();
    out.push(("F16", le_bytes(&halves, u16::to_le_bytes), expect_float(&f16)));
    let bf16: Vec<f64> = halves.iter().map(|&b| small_float(u32::from(b), 8, 7, false)).collect();
    out.push(("BF16", le_bytes(&halves, u16::to_le_bytes), expect_float(&bf16)));
    let bytes: Vec<u8> = (0..n).map(|_| (rng.next_u64() >> 50) as u8).collect();
    let e4m3: Vec<f64> = bytes.iter().map(|&b| small_float(u32::from(b), 4, 3, true)).collect();
    out.push(("F8_E4M3", bytes.clone(), expect_float(&e4m3)));
    let e5m2: Vec<f64> = bytes.iter().map(|&b| small_float(u32::from(b), 5, 2, false)).collect();
    out.push(("F8_E5M2", bytes, expect_float(&e5m2)));

    let re = floats(n, 13, 1.0, 4.0);
    let im = floats(n, 14, -2.0, 1.0);
    let c64: Vec<(f32, f32)> = re
        .iter()
        .zip(im.iter().rev())
        .map(|(&a, &b)| (a as f32, b as f32))
        .collect();
    let c64_wide: Vec<(f64, f64)> = c64.iter().map(|&(a, b)| (f64::from(a), f64::from(b))).collect();
    let bytes = c64
        .iter()
        .flat_map(|(a, b)| [a.to_le_bytes(), b.to_le_bytes()])
        .flatten()
        .collect();
    out.push(("C64", bytes, expect_complex(&c64_wide)));
    let c128: Vec<(f64, f64)> = re.iter().copied().zip(im.iter().copied()).collect();
    let bytes = c128
        .iter()
        .flat_map(|(a, b)| [a.to_le_bytes(), b.to_le_bytes()])
        .flatten()
        .collect();
    out.push(("C128", bytes, expect_complex(&c128)));
    out
}

// ---------------------------------------------------------------- tests

#[test]
fn every_dtype_every_codec_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let cases = every_dtype(3000);
    assert_eq!(cases.len(), deathtensors_plugins::dtypes::BUILTIN_DTYPE_COUNT);
    let names: Vec<String> = cases.iter().map(|(id, ..)| format!("t_{id}")).collect();
    let tensors: Vec<TensorData<'_>> = cases
        .iter()
        .zip(&names)
        .map(|((id, bytes, _), name)| tensor(name, id, &[30, 100], bytes))
        .collect();
    for codec in CODECS {
        let reader = open(dir.path(), &format!("{codec:?}.dt"), &tensors, &small_chunks(codec));
        if codec.is_some() {
            assert!(reader
                .tensors()
                .iter()
                .all(|t| t.chunks.as_ref().map_or(0, Vec::len) > 3));
        }
        let all = all_stats(&reader).unwrap();
        assert_eq!(all.len(), cases.len());
        for ((id, bytes, expected), (name, from_all)) in cases.iter().zip(names.iter().zip(&all)) {
            let stats = tensor_stats(&reader, name).unwrap();
            assert_eq!(&stats, from_all, "all_stats differs from tensor_stats for {name}");
            assert_eq!((stats.name.as_str(), stats.dtype.as_str()), (name.as_str(), *id));
            assert_eq!(
                (stats.shape.clone(), stats.nbytes, stats.count),
                (vec![30, 100], bytes.len() as u64, 3000)
            );
            check(&stats, expected, 1e-12);
        }
    }
}

#[test]
fn nan_and_inf_are_counted_never_propagated() {
    let dir = tempfile::tempdir().unwrap();
    let f32s = [
        1.5f32,
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        0.0,
        -3.0,
    ];
    let f32_bytes = le_bytes(&f32s, f32::to_le_bytes);
    let all_nan = le_bytes(&[f32::NAN; 5], f32::to_le_bytes);
    // E4M3FN: 0x7F and 0xFF are NaN, 0x7E is 448 and 0x78 is 256 (no infinities).
    let e4m3 = [0x7Fu8, 0xFF, 0x7E, 0x78, 0x80];
    // E5M2: 0x7C = +Inf, 0xFC = -Inf, 0x7E = NaN, 0x3C = 1.0.
    let e5m2 = [0x7Cu8, 0xFC, 0x7E, 0x3C];
    let tensors = [
        tensor("f32", "F32", &[8], &f32_bytes),
        tensor("nan", "F32", &[5], &all_nan),
        tensor("e4m3", "F8_E4M3", &[5], &e4m3),
        tensor("e5m2", "F8_E5M2", &[4], &e5m2),
    ];
    for codec in CODECS {
        let reader = open(dir.path(), &format!("{codec:?}.dt"), &tensors, &small_chunks(codec));
        let s = tensor_stats(&reader, "f32").unwrap();
        assert_eq!((s.nan_count, s.inf_count, s.nnz, s.count), (2, 2, 6, 8));
        assert_eq!((s.min.clone(), s.max.clone()), (json!(-3.0), json!(1.5)));
        let (mean, sd) = mean_stddev(&[1.5, -0.0, 0.0, -3.0]);
        assert_close("f32 mean", s.mean, mean, 3.0, 1e-15);
        assert_close("f32 stddev", s.stddev, sd, 3.0, 1e-15);

        let s = tensor_stats(&reader, "nan").unwrap();
        assert_eq!((s.nan_count, s.inf_count, s.nnz), (5, 0, 5));
        assert_eq!(
            (s.min.clone(), s.max.clone(), s.mean, s.stddev),
            (Value::Null, Value::Null, None, None)
        );

        let s = tensor_stats(&reader, "e4m3").unwrap();
        assert_eq!((s.nan_count, s.inf_count, s.nnz), (2, 0, 4));
        assert_eq!((s.min.clone(), s.max.clone()), (json!(-0.0), json!(448.0)));
        assert_eq!(s.mean, Some((448.0 + 256.0) / 3.0));

        let s = tensor_stats(&reader, "e5m2").unwrap();
        assert_eq!((s.nan_count, s.inf_count, s.nnz), (1, 2, 4));
        assert_eq!(
            (s.min.clone(), s.max.clone(), s.mean, s.stddev),
            (json!(1.0), json!(1.0), Some(1.0), Some(0.0))
        );
    }
}

#[test]
fn empty_and_zero_dimensional_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let scalar = 2.5f64.to_le_bytes();
    let int_scalar = (-7i32).to_le_bytes();
    let tensors = [
        tensor("empty_f32", "F32", &[0], &[]),
        tensor("empty_i64", "I64", &[3, 0], &[]),
        tensor("empty_c64", "C64", &[0, 4], &[]),
        tensor("empty_bool", "BOOL", &[0], &[]),
        tensor("scalar_f64", "F64", &[], &scalar),
        tensor("scalar_i32", "I32", &[], &int_scalar),
    ];
    for codec in CODECS {
        let reader = open(dir.path(), &format!("{codec:?}.dt"), &tensors, &small_chunks(codec));
        for name in ["empty_f32", "empty_i64", "empty_c64", "empty_bool"] {
            let s = tensor_stats(&reader, name).unwrap();
            assert_eq!(
                (s.count, s.nbytes, s.nnz, s.nan_count, s.inf_count),
                (0, 0, 0, 0, 0),
                "{name}"
            );
            assert_eq!(
                (s.min.clone(), s.max.clone(), s.mean, s.stddev),
                (Value::Null, Value::Null, None, None)
            );
        }
        let c = tensor_stats(&reader, "empty_c64")
            .unwrap()
            .complex
            .expect("complex parts");
        assert_eq!(
            (c.mean_real, c.mean_imag, c.stddev_real, c.stddev_imag),
            (None, None, None, None)
        );

        let s = tensor_stats(&reader, "scalar_f64").unwrap();
        assert_eq!((s.shape.clone(), s.count, s.nnz), (vec![], 1, 1));
        assert_eq!(
            (s.min.clone(), s.max.clone(), s.mean, s.stddev),
            (json!(2.5), json!(2.5), Some(2.5), Some(0.0))
        );
        let s = tensor_stats(&reader, "scalar_i32").unwrap();
        assert_eq!(
            (s.min.clone(), s.max.clone(), s.mean, s.stddev),
            (json!(-7), json!(-7), Some(-7.0), Some(0.0))
        );
    }
}

#[test]
fn integer_extremes_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let u = le_bytes(&[u64::MAX, 0, u64::MAX - 1, u64::MAX], u64::to_le_bytes);
    let i = le_bytes(&[i64::MIN, i64::MAX, -1, 1], i64::to_le_bytes);
    let near_max = le_bytes(&[u64::MAX, u64::MAX - 2, u64::MAX - 1, u64::MAX - 3], u64::to_le_bytes);
    let tensors = [
        tensor("u", "U64", &[4], &u),
        tensor("i", "I64", &[2, 2], &i),
        tensor("near_max", "U64", &[4], &near_max),
    ];
    for codec in CODECS {
        let reader = open(dir.path(), &format!("{codec:?}.dt"), &tensors, &small_chunks(codec));
        let s = tensor_stats(&reader, "u").unwrap();
        assert_eq!((s.min.clone(), s.max.clone(), s.nnz), (json!(0u64), json!(u64::MAX), 3));
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"max\":18446744073709551615"), "{text}");
        let s = tensor_stats(&reader, "i").unwrap();
        assert_eq!((s.min.clone(), s.max.clone()), (json!(i64::MIN), json!(i64::MAX)));
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"min\":-9223372036854775808"), "{text}");
        // The exact sum is -1, far below the rounding step of f64 at 2^63.
        assert_eq!(s.mean, Some(-0.25));
        // Small spread at the top of the range: f64 values would all round to 2^64.
        let s = tensor_stats(&reader, "near_max").unwrap();
        assert_eq!(s.stddev, Some(1.25f64.sqrt()));
        assert_eq!(s.mean, Some(u64::MAX as f64));
    }
}

#[test]
fn bool_reports_booleans() {
    let dir = tempfile::tempdir().unwrap();
    let mixed = [1u8, 0, 1, 1];
    let all_true = [1u8; 3];
    let tensors = [
        tensor("mixed", "BOOL", &[4], &mixed),
        tensor("true", "BOOL", &[3], &all_true),
    ];
    for codec in CODECS {
        let reader = open(dir.path(), &format!("{codec:?}.dt"), &tensors, &small_chunks(codec));
        let s = tensor_stats(&reader, "mixed").unwrap();
        assert_eq!((s.min.clone(), s.max.clone(), s.nnz), (json!(false), json!(true), 3));
        assert_eq!((s.mean, s.stddev), (Some(0.75), Some(0.1875f64.sqrt())));
        let s = tensor_stats(&reader, "true").unwrap();
        assert_eq!(
            (s.min.clone(), s.max.clone(), s.mean, s.stddev),
            (json!(true), json!(true), Some(1.0), Some(0.0))
        );
    }
}

#[test]
fn complex_reports_magnitude_and_parts() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = [
        (3.0f32, 4.0f32),
        (0.0, 0.0),
        (f32::NAN, f32::INFINITY),
        (-0.0, f32::INFINITY),
        (0.0, -1.0),
    ];
    let bytes: Vec<u8> = pairs
        .iter()
        .flat_map(|(a, b)| [a.to_le_bytes(), b.to_le_bytes()])
        .flatten()
        .collect();
    let tensors = [tensor("z", "C64", &[5], &bytes)];
    for codec in CODECS {
        let reader = open(dir.path(), &format!("{codec:?}.dt"), &tensors, &small_chunks(codec));
        let s = tensor_stats(&reader, "z").unwrap();
        assert_eq!((s.nan_count, s.inf_count, s.nnz), (1, 1, 4));
        assert_eq!((s.min.clone(), s.max.clone()), (json!(0.0), json!(5.0)));
        assert_eq!(s.mean, Some(2.0));
        let c = s.complex.expect("complex parts");
        assert_eq!((c.mean_real, c.mean_imag), (Some(1.0), Some(1.0)));
        let json = serde_json::to_value(tensor_stats(&reader, "z").unwrap()).unwrap();
        for key in ["mean_real", "mean_imag", "stddev_real", "stddev_imag"] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }
}

#[test]
fn stats_serialise_to_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = le_bytes(&[1.0f32, 2.0, 3.0, 4.0], f32::to_le_bytes);
    let reader = open(
        dir.path(),
        "k.dt",
        &[tensor("w", "F32", &[2, 2], &data)],
        &opts(None, None),
    );
    let json = serde_json::to_value(tensor_stats(&reader, "w").unwrap()).unwrap();
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "name",
            "dtype",
            "shape",
            "nbytes",
            "count",
            "min",
            "max",
            "mean",
            "stddev",
            "nnz",
            "nan_count",
            "inf_count"
        ]
    );
    assert_eq!(json["shape"], json!([2, 2]));
    assert_eq!(
        (json["min"].clone(), json["max"].clone(), json["mean"].clone()),
        (json!(1.0), json!(4.0), json!(2.5))
    );
}

#[test]
fn unknown_names_and_corrupt_chunks_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0u8; 64 * 1024];
    let path = write_valid(
        dir.path(),
        "c.dt",
        &[tensor("w", "F32", &[16 * 1024], &data)],
        &Map::new(),
        &small_chunks(Some("zstd")),
    );
    let reader = DtReader::open(&path).unwrap();
    assert!(matches!(tensor_stats(&reader, "nope"), Err(Error::TensorNotFound(n)) if n == "nope"));
    let chunk = reader.tensor("w").unwrap().chunks.as_ref().unwrap()[3].clone();
    assert!(!chunk.is_raw());
    drop(reader);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let at = chunk.offset() + chunk.stored_len() / 2;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5A], at).unwrap();
    let reader = DtReader::open(&path).unwrap();
    assert!(matches!(
        tensor_stats(&reader, "w"),
        Err(Error::CorruptChunk { index: 3, .. })
    ));
    assert!(matches!(all_stats(&reader), Err(Error::CorruptChunk { .. })));
}

/// `n` F32 values around 1000 with a spread of ±0.05: Σx² − (Σx)²/n cancels
/// 8 digits here, so a naive one-pass sum of squares would be far off.
fn hard_f32(n: usize) -> Vec<f32> {
    let mut rng = Lcg::new(99);
    (0..n)
        .map(|_| (1e3 + (rng.below(1_000_001) as f64 / 1e7 - 0.05)) as f32)
        .collect()
}

fn check_hard(reader: &DtReader, values: &[f32]) {
    let wide: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    let (mean, sd) = mean_stddev(&wide);
    let s = tensor_stats(reader, "x").unwrap();
    let (m, d) = (s.mean.unwrap(), s.stddev.unwrap());
    let (mean, sd) = (mean.unwrap(), sd.unwrap());
    assert!(((m - mean) / mean).abs() < 1e-9, "mean {m} vs {mean}");
    assert!(((d - sd) / sd).abs() < 1e-9, "stddev {d} vs {sd}");
}

#[test]
fn ten_million_f32_agree_with_a_compensated_two_pass_reference() {
    let dir = tempfile::tempdir().unwrap();
    let values = hard_f32(10_000_000);
    let bytes = le_bytes(&values, f32::to_le_bytes);
    for codec in [None, Some("zstd")] {
        let reader = open(
            dir.path(),
            &format!("{codec:?}.dt"),
            &[tensor("x", "F32", &[10_000, 1_000], &bytes)],
            &opts(codec, None),
        );
        check_hard(&reader, &values);
    }
}

/// Throughput of F32 stats on an uncompressed file in the page cache, and
/// the 10⁸-element accuracy bound. Run with
/// `RAYON_NUM_THREADS=1 cargo test --release -p deathtensors-integration-tests --test stats -- --ignored --nocapture`
/// for the per-core figure.
#[test]
#[ignore = "benchmark: 400 MB of F32; run in release with --ignored --nocapture"]
fn f32_throughput_and_accuracy_on_1e8_elements() {
    let dir = tempfile::tempdir().unwrap();
    let values = hard_f32(100_000_000);
    let bytes = le_bytes(&values, f32::to_le_bytes);
    let reader = open(
        dir.path(),
        "big.dt",
        &[tensor("x", "F32", &[100_000, 1_000], &bytes)],
        &opts(None, None),
    );
    drop(bytes);
    check_hard(&reader, &values);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let s = tensor_stats(&reader, "x").unwrap();
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(s.count, 100_000_000);
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "F32 stats, 400 MB uncompressed, {threads} threads: best {:.1} ms, {:.2} GB/s",
        best * 1e3,
        4e8 / best / 1e9
    );
}

#[test]
fn an_alias_gets_its_targets_statistics_without_a_second_pass() {
    // Regression: every alias was decoded again, so a small file of many
    // aliases of one large tensor cost a pass per alias.
    let dir = tempfile::tempdir().unwrap();
    let w = le_bytes(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], f32::to_le_bytes);
    let mut entries = vec![Entry::Data(tensor("w", "F32", &[8], &w))];
    entries.extend((0..4).map(|i| Entry::Alias {
        name: format!("tied.{i}"),
        target: "w".into(),
        metadata: Map::new(),
    }));
    let path = dir.path().join("tied.deathtensors");
    write_entries(&path, &entries, &Map::new(), &small_chunks(Some("zstd"))).unwrap();
    let r = DtReader::open(&path).unwrap();
    let rows = all_stats(&r).unwrap();
    assert_eq!(r.decoded_bytes(), 32, "one pass over the bytes");
    let names: Vec<&str> = rows.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["w", "tied.0", "tied.1", "tied.2", "tied.3"]);
    for row in &rows[1..] {
        assert_eq!(
            (&row.mean, &row.min, &row.max, row.count),
            (&rows[0].mean, &rows[0].min, &rows[0].max, 8)
        );
    }
    assert_eq!(rows[0].mean, Some(4.5));
}
