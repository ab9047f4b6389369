//! Chunk filters applied before the codec.

pub mod bytegroup;
