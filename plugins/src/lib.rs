//! The built-in plugins of deathtensors.
//!
//! Each plugin is one file that defines its type, implements its trait and
//! registers it right beside it with a `deathtensors::register_*!` macro:
//!
//! - codecs: [`codecs::zstd`], [`codecs::lz4`]
//! - checksums: [`checksums::sha256`], [`checksums::blake3`]
//! - filters: [`filters::bytegroup`]
//! - dtypes: [`dtypes`]
//! - layouts: [`layouts::sparse_coo`]
//! - converters: [`converters::safetensors`]
//!
//! Binaries and the Python module link this crate with
//! `use deathtensors_plugins as _;` and call [`link`] so that the linker
//! keeps every registration.

#![warn(missing_docs)]

pub mod checksums;
pub mod codecs;
pub mod converters;
pub mod dtypes;
pub mod filters;
pub mod layouts;

/// Make sure this crate is linked into the final artifact.
///
/// Registrations live in statics that nothing refers to; calling this from a
/// binary's `main` (or a module's init) keeps the crate in the link.
#[inline(never)]
pub fn link() -> usize {
    std::hint::black_box(dtypes::BUILTIN_DTYPE_COUNT)
}
