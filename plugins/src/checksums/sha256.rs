//! The `sha256` checksum (the default for `checksum=True`).

use deathtensors::registry::{ChecksumAlgorithm, Plugin, StreamingHash};
use sha2::{Digest, Sha256};

/// SHA-256 (FIPS 180-4), using the CPU's SHA extensions where present.
pub struct Sha256Checksum;

impl Plugin for Sha256Checksum {
    fn id(&self) -> &'static str {
        "sha256"
    }
    fn summary(&self) -> &'static str {
        "SHA-256 footer (checksum=True)"
    }
}

struct Hasher(Sha256);

impl StreamingHash for Hasher {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(self: Box<Self>) -> [u8; 32] {
        self.0.finalize().into()
    }
}

impl ChecksumAlgorithm for Sha256Checksum {
    fn hasher(&self) -> Box<dyn StreamingHash> {
        Box::new(Hasher(Sha256::new()))
    }
}

deathtensors::register_checksum!(Sha256Checksum);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        let mut h = Sha256Checksum.hasher();
        h.update(b"ab");
        h.update(b"c");
        let d = h.finish();
        assert_eq!(
            deathtensors::reader::hex(&d),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
