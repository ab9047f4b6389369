//! The `bytegroup` filter: split floating-point chunks into byte planes.
//!
//! Header configuration: `{"id": "bytegroup", "params": {"width": 2, "rotate": 1}}`.
//!
//! Each chunk is read as little-endian units of `width` bytes (the dtype's
//! size; for complex dtypes, the size of one float part). Each unit is rotated
//! left by `rotate` bits, then plane `p` collects byte `p` (least significant
//! first) of every unit: plane 0 is all low bytes, plane `width - 1` all high
//! bytes. With `rotate = 1` the sign bit moves from the top of the unit to the
//! bottom, so for BF16, F32 and F64 the top plane holds exponent bits alone.
//! The exponent of real weights takes few values and compresses to about a
//! third; the mantissa planes barely compress and are usually stored raw.

use deathtensors::registry::{DtypeHandler, DtypeKind, Filter, Plugin};
use serde_json::{json, Map, Value};

/// Byte grouping with sign rotation for multi-byte floating-point dtypes.
pub struct ByteGroupFilter;

impl Plugin for ByteGroupFilter {
    fn id(&self) -> &'static str {
        "bytegroup"
    }
    fn summary(&self) -> &'static str {
        "byte planes of float chunks, sign rotated out of the exponent byte (before zstd)"
    }
}

fn param(params: &Map<String, Value>, key: &str) -> Result<u64, String> {
    params
        .get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("parameter {key:?} must be a non-negative integer"))
}

fn width_and_rotate(params: &Map<String, Value>) -> (usize, u32) {
    // Called only with parameters that plane_count accepted.
    let width = params.get("width").and_then(Value::as_u64).unwrap_or(1) as usize;
    let rotate = params.get("rotate").and_then(Value::as_u64).unwrap_or(0) as u32;
    (width, rotate)
}

impl Filter for ByteGroupFilter {
    fn params_for(&self, dtype: &dyn DtypeHandler) -> Option<Map<String, Value>> {
        let width = match dtype.kind() {
            DtypeKind::Float => dtype.item_size(),
            DtypeKind::Complex => dtype.item_size() / 2,
            _ => return None,
        };
        if width < 2 {
            return None;
        }
        match json!({"width": width, "rotate": 1}) {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    fn plane_count(&self, params: &Map<String, Value>, dtype: &dyn DtypeHandler) -> Result<usize, String> {
        if let Some(extra) = params.keys().find(|k| *k != "width" && *k != "rotate") {
            return Err(format!("unknown parameter {extra:?}"));
        }
        let width = param(params, "width")?;
        let rotate = param(params, "rotate")?;
        if ![2, 4, 8].contains(&width) {
            return Err(format!("width {width} is not 2, 4 or 8"));
        }
        if dtype.item_size() as u64 % width != 0 {
            return Err(format!(
                "width {width} does not divide the {}-byte dtype {}",
                dtype.item_size(),
                dtype.id()
            ));
        }
        if rotate >= width * 8 {
            return Err(format!("rotate {rotate} is not below {} bits", width * 8));
        }
        Ok(width as usize)
    }

    fn encode(&self, params: &Map<String, Value>, raw: &[u8], out: &mut [u8]) {
        let (width, rotate) = width_and_rotate(params);
        match width {
            2 => encode2(raw, out, rotate),
            4 => encode4(raw, out, rotate),
            _ => encode8(raw, out, rotate),
        }
    }

    fn decode(&self, params: &Map<String, Value>, planes: &[&[u8]], out: &mut [u8]) {
        let (width, rotate) = width_and_rotate(params);
        match (width, planes) {
            (2, [p0, p1]) => decode2(p0, p1, out, rotate),
            (4, [p0, p1, p2, p3]) => decode4([p0, p1, p2, p3], out, rotate),
            _ => decode8(planes, out, rotate),
        }
    }
}

deathtensors::register_filter!(ByteGroupFilter);

fn encode2(raw: &[u8], out: &mut [u8], rotate: u32) {
    let (p0, p1) = out.split_at_mut(raw.len() / 2);
    for ((u, a), b) in raw.chunks_exact(2).zip(p0.iter_mut()).zip(p1.iter_mut()) {
        let [x, y] = u16::from_le_bytes([u[0], u[1]]).rotate_left(rotate).to_le_bytes();
        *a = x;
        *b = y;
    }
}

fn decode2(p0: &[u8], p1: &[u8], out: &mut [u8], rotate: u32) {
    for ((o, &a), &b) in out.chunks_exact_mut(2).zip(p0).zip(p1) {
        o.copy_from_slice(&u16::from_le_bytes([a, b]).rotate_right(rotate).to_le_bytes());
    }
}

fn encode4(raw: &[u8], out: &mut [u8], rotate: u32) {
    let n = raw.len() / 4;
    let (p0, rest) = out.split_at_mut(n);
    let (p1, rest) = rest.split_at_mut(n);
    let (p2, p3) = rest.split_at_mut(n);
    let units = raw.chunks_exact(4);
    for ((((u, a), b), c), d) in units
        .zip(p0.iter_mut())
        .zip(p1.iter_mut())
        .zip(p2.iter_mut())
        .zip(p3.iter_mut())
    {
        let [w, x, y, z] = u32::from_le_bytes([u[0], u[1], u[2], u[3]])
            .rotate_left(rotate)
            .to_le_bytes();
        *a = w;
        *b = x;
        *c = y;
        *d = z;
    }
}

fn decode4(planes: [&[u8]; 4], out: &mut [u8], rotate: u32) {
    let [p0, p1, p2, p3] = planes;
    for ((((o, &a), &b), &c), &d) in out.chunks_exact_mut(4).zip(p0).zip(p1).zip(p2).zip(p3) {
        o.copy_from_slice(&u32::from_le_bytes([a, b, c, d]).rotate_right(rotate).to_le_bytes());
    }
}

fn encode8(raw: &[u8], out: &mut [u8], rotate: u32) {
    let n = raw.len() / 8;
    for (i, u) in raw.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(u);
        let v = u64::from_le_bytes(b).rotate_left(rotate).to_le_bytes();
        for (p, byte) in v.iter().enumerate() {
            out[p * n + i] = *byte;
        }
    }
}

fn decode8(planes: &[&[u8]], out: &mut [u8], rotate: u32) {
    for (i, o) in out.chunks_exact_mut(8).enumerate() {
        let mut b = [0u8; 8];
        for (p, plane) in planes.iter().enumerate().take(8) {
            b[p] = plane[i];
        }
        o.copy_from_slice(&u64::from_le_bytes(b).rotate_right(rotate).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(dtype_id: &str, raw: &[u8]) -> Vec<u8> {
        let dtype = deathtensors::registry::dtypes().unwrap().get(dtype_id).unwrap();
        let params = ByteGroupFilter.params_for(dtype).expect("applies to floats");
        let n = ByteGroupFilter.plane_count(&params, dtype).unwrap();
        let mut planes = vec![0u8; raw.len()];
        ByteGroupFilter.encode(&params, raw, &mut planes);
        let len = raw.len() / n;
        let views: Vec<&[u8]> = planes.chunks(len.max(1)).take(n).collect();
        let mut back = vec![0u8; raw.len()];
        ByteGroupFilter.decode(&params, &views, &mut back);
        assert_eq!(back, raw, "{dtype_id}");
        planes
    }

    #[test]
    fn every_width_round_trips() {
        let raw: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for id in ["F16", "BF16", "F32", "F64", "C64", "C128"] {
            round_trip(id, &raw);
        }
    }

    #[test]
    fn bf16_top_plane_is_the_exponent() {
        // -1.0 and 1.0 in BF16 share the exponent 127: sign rotated away.
        let raw = [0x80, 0x3f, 0x80, 0xbf];
        let planes = round_trip("BF16", &raw);
        assert_eq!(&planes[2..], &[127, 127]);
        assert_eq!(&planes[..2], &[0x00, 0x01]); // mantissa 0, sign in the low bit
    }

    #[test]
    fn integers_and_one_byte_floats_are_skipped() {
        let reg = deathtensors::registry::dtypes().unwrap();
        for id in ["I32", "U16", "BOOL", "U8", "F8_E4M3", "F8_E5M2"] {
            assert!(ByteGroupFilter.params_for(reg.get(id).unwrap()).is_none(), "{id}");
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let f32 = deathtensors::registry::dtypes().unwrap().get("F32").unwrap();
        for bad in [
            json!({"width": 3, "rotate": 1}),
            json!({"width": 8, "rotate": 1}),
            json!({"width": 4, "rotate": 32}),
            json!({"width": 4}),
            json!({"width": 4, "rotate": 1, "x": 0}),
            json!({"width": -4, "rotate": 1}),
        ] {
            let Value::Object(m) = bad else { unreachable!() };
            assert!(ByteGroupFilter.plane_count(&m, f32).is_err(), "{m:?}");
        }
    }
}
