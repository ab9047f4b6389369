//! The built-in dtype set.
//!
//! | id | bytes | torch | numpy |
//! |---|---|---|---|
//! | BOOL | 1 | bool | `\|b1` |
//! | U8, I8 | 1 | uint8, int8 | `\|u1`, `\|i1` |
//! | U16, I16 | 2 | uint16, int16 | `<u2`, `<i2` |
//! | U32, I32 | 4 | uint32, int32 | `<u4`, `<i4` |
//! | U64, I64 | 8 | uint64, int64 | `<u8`, `<i8` |
//! | F16, BF16 | 2 | float16, bfloat16 | `<f2`, none |
//! | F32, F64 | 4, 8 | float32, float64 | `<f4`, `<f8` |
//! | C64, C128 | 8, 16 | complex64, complex128 | `<c8`, `<c16` |
//! | F8_E4M3, F8_E5M2 | 1 | float8_e4m3fn, float8_e5m2 | none |
//!
//! Every dtype decodes its elements to numbers for the framework's value
//! algorithms (stats): [`DtypeHandler::decode_f64`] for all of them and
//! [`DtypeHandler::decode_i128`] (exact) for BOOL and the integers. F16 decodes
//! through a 65536-entry table and the F8 formats through 256-entry tables,
//! each built once on first use; BF16 is a shift.

use std::sync::OnceLock;

use deathtensors::registry::{DtypeHandler, DtypeKind, Plugin};

/// Decodes whole stored elements to `f64` values (two per complex element).
type F64Decoder = fn(&[u8], &mut [f64]);
/// Decodes whole stored integer elements exactly to `i128`.
type I128Decoder = fn(&[u8], &mut [i128]);

/// A dtype described by plain data.
pub struct BuiltinDtype {
    id: &'static str,
    summary: &'static str,
    item_size: usize,
    kind: DtypeKind,
    torch: Option<&'static str>,
    numpy: Option<&'static str>,
    to_f64: F64Decoder,
    to_i128: Option<I128Decoder>,
}

impl Plugin for BuiltinDtype {
    fn id(&self) -> &'static str {
        self.id
    }
    fn summary(&self) -> &'static str {
        self.summary
    }
}

impl DtypeHandler for BuiltinDtype {
    fn item_size(&self) -> usize {
        self.item_size
    }
    fn kind(&self) -> DtypeKind {
        self.kind
    }
    fn torch_name(&self) -> Option<&'static str> {
        self.torch
    }
    fn numpy_name(&self) -> Option<&'static str> {
        self.numpy
    }
    fn decode_f64(&self, bytes: &[u8], out: &mut [f64]) -> bool {
        (self.to_f64)(bytes, out);
        true
    }
    fn decode_i128(&self, bytes: &[u8], out: &mut [i128]) -> bool {
        match self.to_i128 {
            Some(decode) => {
                decode(bytes, out);
                true
            }
            None => false,
        }
    }
}

/// The first `N` bytes of `c` (which has at least `N`: callers use `chunks_exact(N)`).
#[inline(always)]
fn le<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&c[..N]);
    a
}

/// `f64` and exact `i128` decoders of a little-endian primitive integer type.
macro_rules! int_decoders {
    ($($t:ty => $to_f64:ident, $to_i128:ident;)*) => {$(
        fn $to_f64(bytes: &[u8], out: &mut [f64]) {
            const N: usize = std::mem::size_of::<$t>();
            for (c, o) in bytes.chunks_exact(N).zip(out) {
                *o = <$t>::from_le_bytes(le::<N>(c)) as f64;
            }
        }
        fn $to_i128(bytes: &[u8], out: &mut [i128]) {
            const N: usize = std::mem::size_of::<$t>();
            for (c, o) in bytes.chunks_exact(N).zip(out) {
                *o = i128::from(<$t>::from_le_bytes(le::<N>(c)));
            }
        }
    )*};
}

int_decoders! {
    u8 => u8_f64, u8_i128;
    i8 => i8_f64, i8_i128;
    u16 => u16_f64, u16_i128;
    i16 => i16_f64, i16_i128;
    u32 => u32_f64, u32_i128;
    i32 => i32_f64, i32_i128;
    u64 => u64_f64, u64_i128;
    i64 => i64_f64, i64_i128;
}

fn bool_f64(bytes: &[u8], out: &mut [f64]) {
    for (&b, o) in bytes.iter().zip(out) {
        *o = f64::from(u8::from(b != 0));
    }
}

fn bool_i128(bytes: &[u8], out: &mut [i128]) {
    for (&b, o) in bytes.iter().zip(out) {
        *o = i128::from(b != 0);
    }
}

/// F32 elements, and C64 elements as (real, imaginary) pairs of F32.
fn f32_f64(bytes: &[u8], out: &mut [f64]) {
    for (c, o) in bytes.chunks_exact(4).zip(out) {
        *o = f64::from(f32::from_le_bytes(le::<4>(c)));
    }
}

/// F64 elements, and C128 elements as (real, imaginary) pairs of F64.
fn f64_f64(bytes: &[u8], out: &mut [f64]) {
    for (c, o) in bytes.chunks_exact(8).zip(out) {
        *o = f64::from_le_bytes(le::<8>(c));
    }
}

fn bf16_f64(bytes: &[u8], out: &mut [f64]) {
    for (c, o) in bytes.chunks_exact(2).zip(out) {
        *o = f64::from(f32::from_bits(u32::from(u16::from_le_bytes(le::<2>(c))) << 16));
    }
}

fn f16_f64(bytes: &[u8], out: &mut [f64]) {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    // Every F16 value is exact in f32, which halves the table (256 KiB).
    let table = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| minifloat(u32::from(bits), 5, 10, false) as f32)
            .collect()
    });
    for (c, o) in bytes.chunks_exact(2).zip(out) {
        let bits = usize::from(u16::from_le_bytes(le::<2>(c)));
        *o = table.get(bits).map_or(f64::NAN, |&v| f64::from(v));
    }
}

fn byte_table(bytes: &[u8], out: &mut [f64], table: &[f64; 256]) {
    for (&b, o) in bytes.iter().zip(out) {
        *o = table[usize::from(b)];
    }
}

fn f8_e4m3_f64(bytes: &[u8], out: &mut [f64]) {
    static TABLE: OnceLock<[f64; 256]> = OnceLock::new();
    byte_table(
        bytes,
        out,
        TABLE.get_or_init(|| std::array::from_fn(|b| minifloat(b as u32, 4, 3, true))),
    );
}

fn f8_e5m2_f64(bytes: &[u8], out: &mut [f64]) {
    static TABLE: OnceLock<[f64; 256]> = OnceLock::new();
    byte_table(
        bytes,
        out,
        TABLE.get_or_init(|| std::array::from_fn(|b| minifloat(b as u32, 5, 2, false))),
    );
}

/// The value of a small binary float: sign bit above `exp_bits` exponent bits
/// above `man_bits` mantissa bits, bias `2^(exp_bits-1) - 1`, subnormals.
///
/// IEEE-like formats (`finite_only == false`) reserve the top exponent for
/// ±Inf (zero mantissa) and NaN. The `fn` formats (`finite_only == true`,
/// torch's float8_e4m3fn) have no infinities: only the all-ones exponent and
/// mantissa is NaN, and the rest of the top exponent holds normal numbers.
fn minifloat(bits: u32, exp_bits: u32, man_bits: u32, finite_only: bool) -> f64 {
    let sign = if bits >> (exp_bits + man_bits) & 1 == 1 {
        -1.0
    } else {
        1.0
    };
    let exp_max = (1u32 << exp_bits) - 1;
    let exp = (bits >> man_bits) & exp_max;
    let man = bits & ((1u32 << man_bits) - 1);
    let bias = (1i32 << (exp_bits - 1)) - 1;
    let scale = f64::from(1u32 << man_bits);
    if exp == exp_max {
        if finite_only {
            if man == (1u32 << man_bits) - 1 {
                return f64::NAN;
            }
        } else if man == 0 {
            return sign * f64::INFINITY;
        } else {
            return f64::NAN;
        }
    }
    if exp == 0 {
        sign * f64::from(man) / scale * 2f64.powi(1 - bias)
    } else {
        sign * (1.0 + f64::from(man) / scale) * 2f64.powi(exp as i32 - bias)
    }
}

/// Number of dtypes this module registers.
pub const BUILTIN_DTYPE_COUNT: usize = 17;

macro_rules! dtype {
    ($id:literal, $summary:literal, $size:literal, $kind:ident, $torch:expr, $numpy:expr, $to_f64:expr, $to_i128:expr) => {
        deathtensors::register_dtype!(BuiltinDtype {
            id: $id,
            summary: $summary,
            item_size: $size,
            kind: DtypeKind::$kind,
            torch: $torch,
            numpy: $numpy,
            to_f64: $to_f64,
            to_i128: $to_i128,
        });
    };
}

dtype!(
    "BOOL",
    "boolean, one byte (0 or 1)",
    1,
    Bool,
    Some("bool"),
    Some("|b1"),
    bool_f64,
    Some(bool_i128)
);
dtype!(
    "U8",
    "unsigned 8-bit integer",
    1,
    UnsignedInt,
    Some("uint8"),
    Some("|u1"),
    u8_f64,
    Some(u8_i128)
);
dtype!(
    "I8",
    "signed 8-bit integer",
    1,
    SignedInt,
    Some("int8"),
    Some("|i1"),
    i8_f64,
    Some(i8_i128)
);
dtype!(
    "U16",
    "unsigned 16-bit integer",
    2,
    UnsignedInt,
    Some("uint16"),
    Some("<u2"),
    u16_f64,
    Some(u16_i128)
);
dtype!(
    "I16",
    "signed 16-bit integer",
    2,
    SignedInt,
    Some("int16"),
    Some("<i2"),
    i16_f64,
    Some(i16_i128)
);
dtype!(
    "U32",
    "unsigned 32-bit integer",
    4,
    UnsignedInt,
    Some("uint32"),
    Some("<u4"),
    u32_f64,
    Some(u32_i128)
);
dtype!(
    "I32",
    "signed 32-bit integer",
    4,
    SignedInt,
    Some("int32"),
    Some("<i4"),
    i32_f64,
    Some(i32_i128)
);
dtype!(
    "U64",
    "unsigned 64-bit integer",
    8,
    UnsignedInt,
    Some("uint64"),
    Some("<u8"),
    u64_f64,
    Some(u64_i128)
);
dtype!(
    "I64",
    "signed 64-bit integer",
    8,
    SignedInt,
    Some("int64"),
    Some("<i8"),
    i64_f64,
    Some(i64_i128)
);
dtype!(
    "F16",
    "IEEE 754 half precision",
    2,
    Float,
    Some("float16"),
    Some("<f2"),
    f16_f64,
    None
);
dtype!(
    "BF16",
    "bfloat16 (8-bit exponent, 7-bit mantissa)",
    2,
    Float,
    Some("bfloat16"),
    None,
    bf16_f64,
    None
);
dtype!(
    "F32",
    "IEEE 754 single precision",
    4,
    Float,
    Some("float32"),
    Some("<f4"),
    f32_f64,
    None
);
dtype!(
    "F64",
    "IEEE 754 double precision",
    8,
    Float,
    Some("float64"),
    Some("<f8"),
    f64_f64,
    None
);
dtype!(
    "C64",
    "complex of two F32 (real, imaginary)",
    8,
    Complex,
    Some("complex64"),
    Some("<c8"),
    f32_f64,
    None
);
dtype!(
    "C128",
    "complex of two F64 (real, imaginary)",
    16,
    Complex,
    Some("complex128"),
    Some("<c16"),
    f64_f64,
    None
);
dtype!(
    "F8_E4M3",
    "8-bit float E4M3, finite-only (torch float8_e4m3fn)",
    1,
    Float,
    Some("float8_e4m3fn"),
    None,
    f8_e4m3_f64,
    None
);
dtype!(
    "F8_E5M2",
    "8-bit float E5M2 (torch float8_e5m2)",
    1,
    Float,
    Some("float8_e5m2"),
    None,
    f8_e5m2_f64,
    None
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_registered() {
        let reg = deathtensors::registry::dtypes().unwrap();
        assert_eq!(reg.ids().count(), super::BUILTIN_DTYPE_COUNT);
        assert_eq!(reg.get("BF16").unwrap().item_size(), 2);
    }

    fn f64s(id: &str, bytes: &[u8]) -> Vec<f64> {
        let dtype = deathtensors::registry::dtypes().unwrap().get(id).unwrap();
        let per = if dtype.kind() == DtypeKind::Complex { 2 } else { 1 };
        let mut out = vec![0.0; bytes.len() / dtype.item_size() * per];
        assert!(dtype.decode_f64(bytes, &mut out));
        out
    }

    #[test]
    fn every_dtype_decodes_to_f64_and_integers_exactly() {
        let reg = deathtensors::registry::dtypes().unwrap();
        for (dtype, _) in reg.entries() {
            assert!(dtype.decode_f64(&[], &mut []), "{}", dtype.id());
            let integer = !matches!(dtype.kind(), DtypeKind::Float | DtypeKind::Complex);
            assert_eq!(dtype.decode_i128(&[], &mut []), integer, "{}", dtype.id());
        }
        let i64s = reg.get("I64").unwrap();
        let mut bytes = i64::MIN.to_le_bytes().to_vec();
        bytes.extend_from_slice(&(-7i64).to_le_bytes());
        let mut out = [0i128; 2];
        assert!(i64s.decode_i128(&bytes, &mut out));
        assert_eq!(out, [i128::from(i64::MIN), -7]);
        let mut out = [0i128; 1];
        assert!(reg.get("U64").unwrap().decode_i128(&u64::MAX.to_le_bytes(), &mut out));
        assert_eq!(out[0], i128::from(u64::MAX));
        let mut out = [0i128; 3];
        assert!(reg.get("BOOL").unwrap().decode_i128(&[0, 1, 7], &mut out));
        assert_eq!(out, [0, 1, 1]);
    }

    #[test]
    fn f16_matches_the_ieee_definition() {
        // 1.0, -2.0, smallest subnormal 2^-24, largest 65504, +Inf, -Inf, NaN, -0.0.
        let bits: [u16; 8] = [0x3C00, 0xC000, 0x0001, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x8000];
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let v = f64s("F16", &bytes);
        assert_eq!(&v[..4], &[1.0, -2.0, 2f64.powi(-24), 65504.0]);
        assert_eq!((v[4], v[5]), (f64::INFINITY, f64::NEG_INFINITY));
        assert!(v[6].is_nan());
        assert!(v[7] == 0.0 && v[7].is_sign_negative());
    }

    #[test]
    fn bf16_is_the_top_half_of_f32() {
        let bytes: Vec<u8> = [0x3F80u16, 0xC0A0, 0x7F80, 0x7FC0]
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect();
        let v = f64s("BF16", &bytes);
        assert_eq!(&v[..3], &[1.0, -5.0, f64::INFINITY]);
        assert!(v[3].is_nan());
    }

    #[test]
    fn f8_formats() {
        // E4M3FN: 0x7E = 448 (largest), 0x7F and 0xFF NaN, 0x78 = 256 (no Inf),
        // 0x01 = 2^-9 (smallest subnormal), 0x38 = 1.0, 0xB8 = -1.0.
        let v = f64s("F8_E4M3", &[0x7E, 0x7F, 0xFF, 0x78, 0x01, 0x38, 0xB8]);
        assert_eq!((v[0], v[3], v[4], v[5], v[6]), (448.0, 256.0, 2f64.powi(-9), 1.0, -1.0));
        assert!(v[1].is_nan() && v[2].is_nan());
        // E5M2: 0x7B = 57344 (largest), 0x7C = +Inf, 0xFC = -Inf, 0x7D NaN,
        // 0x01 = 2^-16, 0x3C = 1.0.
        let v = f64s("F8_E5M2", &[0x7B, 0x7C, 0xFC, 0x7D, 0x01, 0x3C]);
        assert_eq!(
            (v[0], v[1], v[2], v[4], v[5]),
            (57344.0, f64::INFINITY, f64::NEG_INFINITY, 2f64.powi(-16), 1.0)
        );
        assert!(v[3].is_nan());
    }

    #[test]
    fn complex_gives_real_and_imaginary_parts() {
        let mut bytes = 1.5f32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&(-2.0f32).to_le_bytes());
        assert_eq!(f64s("C64", &bytes), [1.5, -2.0]);
    }
}
