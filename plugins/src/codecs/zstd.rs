//! The `zstd` codec: Zstandard frames, one per chunk.
//!
//! Header configuration: `{"codec": "zstd", "level": 3}`. Levels 1..=22
//! (negative levels are zstd's fast modes). Decompression writes into the
//! caller's buffer of the chunk's declared raw length and fails if the frame
//! would produce more or fewer bytes.

use deathtensors::registry::{Codec, Plugin};

/// Zstandard.
pub struct ZstdCodec;

impl Plugin for ZstdCodec {
    fn id(&self) -> &'static str {
        "zstd"
    }
    fn summary(&self) -> &'static str {
        "Zstandard compression, one frame per chunk (compress=True)"
    }
}

impl Codec for ZstdCodec {
    fn default_level(&self) -> i32 {
        3
    }

    fn compress(&self, raw: &[u8], level: i32) -> Result<Vec<u8>, String> {
        let range = zstd::compression_level_range();
        if !range.contains(&level) {
            return Err(format!(
                "zstd level {level} is outside {}..={}",
                range.start(),
                range.end()
            ));
        }
        zstd::bulk::compress(raw, level).map_err(|e| e.to_string())
    }

    fn decompress_into(&self, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
        let expected = out.len();
        let mut decompressor = zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?;
        let n = decompressor
            .decompress_to_buffer(stored, out)
            .map_err(|e| format!("zstd: {e}"))?;
        if n != expected {
            return Err(format!(
                "zstd frame decodes to {n} bytes, the header declares {expected}"
            ));
        }
        Ok(())
    }
}

deathtensors::register_codec!(ZstdCodec);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let packed = ZstdCodec.compress(&raw, 3).unwrap();
        assert!(packed.len() < raw.len());
        let mut out = vec![0u8; raw.len()];
        ZstdCodec.decompress_into(&packed, &mut out).unwrap();
        assert_eq!(out, raw);
        // Declared raw length too small: error, no overflow.
        let mut short = vec![0u8; raw.len() - 1];
        assert!(ZstdCodec.decompress_into(&packed, &mut short).is_err());
        // Declared too large: error.
        let mut long = vec![0u8; raw.len() + 1];
        assert!(ZstdCodec.decompress_into(&packed, &mut long).is_err());
        // Garbage: error.
        assert!(ZstdCodec.decompress_into(&[1, 2, 3, 4, 5], &mut out).is_err());
        assert!(ZstdCodec.compress(&raw, 99).is_err());
    }
}
