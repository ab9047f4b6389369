//! The `lz4` codec: LZ4 block format (lz4_flex), one block per chunk.
//!
//! Header configuration: `{"codec": "lz4", "level": 0}`; LZ4 has no levels
//! and ignores the value. The block carries no length prefix: the chunk's
//! raw length comes from the header, and decoding must produce exactly it.

use deathtensors::registry::{Codec, Plugin};

/// LZ4 block compression (fast mode, `compress="lz4"`).
pub struct Lz4Codec;

impl Plugin for Lz4Codec {
    fn id(&self) -> &'static str {
        "lz4"
    }
    fn summary(&self) -> &'static str {
        "LZ4 block compression via lz4_flex: fastest decompression (compress=\"lz4\")"
    }
}

impl Codec for Lz4Codec {
    fn default_level(&self) -> i32 {
        0
    }

    fn effective_level(&self, _requested: i32) -> i32 {
        0
    }

    fn compress(&self, raw: &[u8], _level: i32) -> Result<Vec<u8>, String> {
        Ok(lz4_flex::block::compress(raw))
    }

    /// An LZ4 block's best case is one long match: a 255-byte run of its
    /// length per extension byte (plus a token, a literal and an offset to
    /// start), so no byte decodes to more than 256.
    fn max_expansion(&self) -> u64 {
        256
    }

    fn decompress_into(&self, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
        let expected = out.len();
        let n = lz4_flex::block::decompress_into(stored, out).map_err(|e| format!("lz4: {e}"))?;
        if n != expected {
            return Err(format!(
                "lz4 block decodes to {n} bytes, the header declares {expected}"
            ));
        }
        Ok(())
    }
}

deathtensors::register_codec!(Lz4Codec);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        let packed = Lz4Codec.compress(&raw, 0).unwrap();
        let mut out = vec![0u8; raw.len()];
        Lz4Codec.decompress_into(&packed, &mut out).unwrap();
        assert_eq!(out, raw);
        let mut short = vec![0u8; 10];
        assert!(Lz4Codec.decompress_into(&packed, &mut short).is_err());
        let mut long = vec![0u8; raw.len() + 7];
        assert!(Lz4Codec.decompress_into(&packed, &mut long).is_err());
        assert!(Lz4Codec.decompress_into(&[0xff; 9], &mut out).is_err());
    }

    #[test]
    fn planes_go_through_the_default_copy() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        let packed = Lz4Codec.compress(&raw, 0).unwrap();
        let mut room = vec![0u8; packed.len()];
        assert_eq!(Lz4Codec.compress_plane(&raw, 0, &mut room).unwrap(), Some(packed.len()));
        assert_eq!(room, packed);
        let mut short = vec![0u8; packed.len() - 1];
        assert_eq!(Lz4Codec.compress_plane(&raw, 0, &mut short).unwrap(), None);
    }
}
