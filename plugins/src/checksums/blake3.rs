//! The `blake3` checksum (`checksum="blake3"`).

use deathtensors::registry::{ChecksumAlgorithm, Plugin, StreamingHash};

/// BLAKE3, 32-byte output; large updates hash on all cores.
pub struct Blake3Checksum;

impl Plugin for Blake3Checksum {
    fn id(&self) -> &'static str {
        "blake3"
    }
    fn summary(&self) -> &'static str {
        "BLAKE3 footer, multi-threaded (checksum=\"blake3\")"
    }
}

/// Updates at least this large use rayon.
const PARALLEL_UPDATE: usize = 1 << 20;

struct Hasher(blake3::Hasher);

impl StreamingHash for Hasher {
    fn update(&mut self, data: &[u8]) {
        if data.len() >= PARALLEL_UPDATE {
            // On this process's pool: rayon's global one hangs in a forked child.
            let hasher = &mut self.0;
            deathtensors::parallel::install(|| hasher.update_rayon(data));
        } else {
            self.0.update(data);
        }
    }
    fn finish(self: Box<Self>) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

impl ChecksumAlgorithm for Blake3Checksum {
    fn hasher(&self) -> Box<dyn StreamingHash> {
        Box::new(Hasher(blake3::Hasher::new()))
    }
}

deathtensors::register_checksum!(Blake3Checksum);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        let mut h = Blake3Checksum.hasher();
        h.update(&data[..5]);
        h.update(&data[5..]);
        assert_eq!(h.finish(), *blake3::hash(&data).as_bytes());
    }
}
