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

use deathtensors::registry::{DtypeHandler, DtypeKind, Plugin};

/// A dtype described by plain data.
pub struct BuiltinDtype {
    id: &'static str,
    summary: &'static str,
    item_size: usize,
    kind: DtypeKind,
    torch: Option<&'static str>,
    numpy: Option<&'static str>,
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
}

/// Number of dtypes this module registers.
pub const BUILTIN_DTYPE_COUNT: usize = 17;

macro_rules! dtype {
    ($id:literal, $summary:literal, $size:literal, $kind:ident, $torch:expr, $numpy:expr) => {
        deathtensors::register_dtype!(BuiltinDtype {
            id: $id,
            summary: $summary,
            item_size: $size,
            kind: DtypeKind::$kind,
            torch: $torch,
            numpy: $numpy,
        });
    };
}

dtype!("BOOL", "boolean, one byte (0 or 1)", 1, Bool, Some("bool"), Some("|b1"));
dtype!(
    "U8",
    "unsigned 8-bit integer",
    1,
    UnsignedInt,
    Some("uint8"),
    Some("|u1")
);
dtype!("I8", "signed 8-bit integer", 1, SignedInt, Some("int8"), Some("|i1"));
dtype!(
    "U16",
    "unsigned 16-bit integer",
    2,
    UnsignedInt,
    Some("uint16"),
    Some("<u2")
);
dtype!("I16", "signed 16-bit integer", 2, SignedInt, Some("int16"), Some("<i2"));
dtype!(
    "U32",
    "unsigned 32-bit integer",
    4,
    UnsignedInt,
    Some("uint32"),
    Some("<u4")
);
dtype!("I32", "signed 32-bit integer", 4, SignedInt, Some("int32"), Some("<i4"));
dtype!(
    "U64",
    "unsigned 64-bit integer",
    8,
    UnsignedInt,
    Some("uint64"),
    Some("<u8")
);
dtype!("I64", "signed 64-bit integer", 8, SignedInt, Some("int64"), Some("<i8"));
dtype!("F16", "IEEE 754 half precision", 2, Float, Some("float16"), Some("<f2"));
dtype!(
    "BF16",
    "bfloat16 (8-bit exponent, 7-bit mantissa)",
    2,
    Float,
    Some("bfloat16"),
    None
);
dtype!(
    "F32",
    "IEEE 754 single precision",
    4,
    Float,
    Some("float32"),
    Some("<f4")
);
dtype!(
    "F64",
    "IEEE 754 double precision",
    8,
    Float,
    Some("float64"),
    Some("<f8")
);
dtype!(
    "C64",
    "complex of two F32 (real, imaginary)",
    8,
    Complex,
    Some("complex64"),
    Some("<c8")
);
dtype!(
    "C128",
    "complex of two F64 (real, imaginary)",
    16,
    Complex,
    Some("complex128"),
    Some("<c16")
);
dtype!(
    "F8_E4M3",
    "8-bit float E4M3, finite-only (torch float8_e4m3fn)",
    1,
    Float,
    Some("float8_e4m3fn"),
    None
);
dtype!(
    "F8_E5M2",
    "8-bit float E5M2 (torch float8_e5m2)",
    1,
    Float,
    Some("float8_e5m2"),
    None
);

#[cfg(test)]
mod tests {
    #[test]
    fn all_registered() {
        let reg = deathtensors::registry::dtypes().unwrap();
        assert_eq!(reg.ids().count(), super::BUILTIN_DTYPE_COUNT);
        assert_eq!(reg.get("BF16").unwrap().item_size(), 2);
    }
}
