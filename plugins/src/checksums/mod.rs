//! Checksum algorithms for the 32-byte footer.

pub mod blake3;
pub mod sha256;
