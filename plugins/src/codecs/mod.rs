//! Compression codecs.

pub mod lz4;
pub mod zstd;
