//! The plugin registry: codecs, checksum algorithms, dtypes and converters.
//!
//! Plugins register themselves with [`inventory`] right beside their type,
//! through the macros [`register_codec!`](crate::register_codec),
//! [`register_checksum!`](crate::register_checksum),
//! [`register_dtype!`](crate::register_dtype),
//! [`register_filter!`](crate::register_filter) and
//! [`register_converter!`](crate::register_converter). Lookup is by string id.
//! An unknown id is an [`Error::UnknownPlugin`] listing the ids available; two
//! registrations of one id are an [`Error::DuplicatePlugin`] naming both
//! crates (inventory's order is unspecified, so "first wins" would be silent
//! nondeterminism).
//!
//! A crate nothing refers to is not linked, and its registrations vanish with
//! it: a binary that wants a plugin crate must `use that_crate as _;` (or call
//! a function of it).

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::writer::{ByteSource, WriteOptions};

/// What every plugin has: an id and a one-line summary.
pub trait Plugin: Send + Sync + 'static {
    /// The id the registry finds the plugin by (`"zstd"`, `"sha256"`, `"BF16"`).
    fn id(&self) -> &'static str;
    /// One line saying what the plugin is, for `deathtensors plugins`.
    fn summary(&self) -> &'static str;
}

/// A compression codec applied to each chunk of a tensor independently.
pub trait Codec: Plugin {
    /// The level used when the caller gives none.
    fn default_level(&self) -> i32;

    /// The level actually used (and written in the header) when `requested` is asked for.
    /// Codecs without levels return a constant.
    fn effective_level(&self, requested: i32) -> i32 {
        requested
    }

    /// Check a level before anything is written, so that a bad one is refused
    /// up front (and never lands in a header), whatever the tensors are.
    ///
    /// # Errors
    /// A message saying which levels the codec accepts. The default accepts all.
    fn check_level(&self, _level: i32) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Compress `raw` at `level` and return the compressed bytes.
    ///
    /// # Errors
    /// A message when the codec fails (an invalid level, say).
    fn compress(&self, raw: &[u8], level: i32) -> std::result::Result<Vec<u8>, String>;

    /// Compress one byte plane produced by a [`Filter`] (e.g. all exponent
    /// bytes of a chunk) straight into `out`, the rest of the writer's buffer
    /// for the chunk: at least the plane's length plus
    /// [`crate::chunk::plane_headroom`]. Returns how many bytes of `out` it
    /// wrote, or `None` when the plane does not fit. Either way the writer
    /// stores the plane raw unless the codec shrank it by 5%. Planes are close
    /// to order-0 data, so a codec may tune itself for entropy coding here.
    /// The default calls [`Codec::compress`] and copies.
    ///
    /// # Errors
    /// As [`Codec::compress`].
    fn compress_plane(&self, plane: &[u8], level: i32, out: &mut [u8]) -> std::result::Result<Option<usize>, String> {
        let packed = self.compress(plane, level)?;
        Ok(out.get_mut(..packed.len()).map(|dst| {
            dst.copy_from_slice(&packed);
            packed.len()
        }))
    }

    /// Whether writers should split floating-point chunks into byte planes
    /// (with the dtype's default [`Filter`]) before this codec. True for
    /// entropy coders such as zstd; false for pure match finders such as lz4,
    /// which gain nothing from it.
    fn wants_byte_planes(&self) -> bool {
        false
    }

    /// The most raw bytes one stored byte can decode to: a bound on the
    /// codec's compression ratio that holds for every valid input. The reader
    /// refuses, at open, a compressed chunk (or plane) that claims more raw
    /// bytes than `stored × max_expansion`, so a decompression bomb never gets
    /// to allocate. The default, `u64::MAX`, declares no bound (no check).
    fn max_expansion(&self) -> u64 {
        u64::MAX
    }

    /// Decompress `stored` into `out`, which has exactly the chunk's declared
    /// raw length. The codec must never write past `out` nor allocate more
    /// than a small constant beyond it.
    ///
    /// # Errors
    /// A message when `stored` is not valid or does not decode to exactly
    /// `out.len()` bytes.
    fn decompress_into(&self, stored: &[u8], out: &mut [u8]) -> std::result::Result<(), String>;

    /// [`Codec::decompress_into`] into memory that may be uninitialised (a
    /// read's fresh output buffer). On success every byte of `out` must have
    /// been written. The default zeroes `out` and calls
    /// [`Codec::decompress_into`]; a codec that can write into uninitialised
    /// memory overrides it and saves that pass.
    ///
    /// # Errors
    /// As [`Codec::decompress_into`].
    fn decompress_into_uninit(&self, stored: &[u8], out: &mut [MaybeUninit<u8>]) -> std::result::Result<(), String> {
        self.decompress_into(stored, crate::buffer::zero_fill(out))
    }
}

/// A streaming hash with a 32-byte digest.
pub trait StreamingHash: Send {
    /// Feed bytes.
    fn update(&mut self, data: &[u8]);
    /// Finish and return the digest.
    fn finish(self: Box<Self>) -> [u8; 32];
}

/// A checksum algorithm for the 32-byte footer.
pub trait ChecksumAlgorithm: Plugin {
    /// A fresh hasher.
    fn hasher(&self) -> Box<dyn StreamingHash>;
}

/// The family a dtype belongs to; algorithms (stats, diff) dispatch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeKind {
    /// One byte, 0 or 1.
    Bool,
    /// Unsigned integer.
    UnsignedInt,
    /// Two's-complement signed integer.
    SignedInt,
    /// IEEE-style floating point (including BF16 and the F8 formats).
    Float,
    /// A pair of floats (real, imaginary).
    Complex,
}

/// A tensor element type.
pub trait DtypeHandler: Plugin {
    /// Bytes per element.
    fn item_size(&self) -> usize;
    /// The family of the dtype.
    fn kind(&self) -> DtypeKind;
    /// Name of the matching `torch` dtype attribute (`"bfloat16"`), if any.
    fn torch_name(&self) -> Option<&'static str>;
    /// The matching numpy dtype string (`"<f4"`), if numpy has one.
    fn numpy_name(&self) -> Option<&'static str>;

    /// Decode whole elements to `f64`, for algorithms that work on values
    /// (stats, diff) without naming a concrete dtype.
    ///
    /// `bytes` holds whole elements as stored (little-endian). `out` holds one
    /// value per element, or two (real part, then imaginary part) for
    /// [`DtypeKind::Complex`]; callers pass exactly that many. Floating-point
    /// values convert exactly, NaN and ±Inf included; integers round to the
    /// nearest `f64`; BOOL gives 0.0 or 1.0 (any non-zero byte is true).
    ///
    /// Returns `false`, leaving `out` untouched, when the dtype has no numeric
    /// value (the default). Callers ask whether a dtype supports decoding by
    /// passing empty slices.
    fn decode_f64(&self, _bytes: &[u8], _out: &mut [f64]) -> bool {
        false
    }

    /// Decode whole elements of an integer or BOOL dtype exactly to `i128`,
    /// one value per element (`out` has exactly as many values as `bytes` has
    /// elements). BOOL gives 0 or 1 (any non-zero byte is true). Values must
    /// lie in the range of `i64` or `u64`, so that exact sums over any tensor
    /// fit in `i128`.
    ///
    /// Returns `false`, leaving `out` untouched, when the dtype is not an
    /// integer dtype or has no numeric value (the default). Callers ask whether
    /// a dtype supports it by passing empty slices.
    fn decode_i128(&self, _bytes: &[u8], _out: &mut [i128]) -> bool {
        false
    }
}

/// A reversible transform of a chunk into byte planes, applied before the codec.
///
/// A chunk of `n` bytes becomes `planes` planes of `n / planes` bytes each,
/// laid out one after another; the framework compresses each plane on its own
/// and stores raw any plane the codec does not shrink enough. Parameters live
/// in the header (`{"id": ..., "params": {...}}`) so that the file says how to
/// undo the transform.
pub trait Filter: Plugin {
    /// Parameter sets worth trying for tensors of `dtype`, the usual best
    /// first; empty if the filter does not apply to it. When there are
    /// several, writers encode a sample of each tensor with each set and keep
    /// the one that stores smallest (see `chunk::choose_params`).
    fn candidate_params(&self, dtype: &dyn DtypeHandler) -> Vec<Map<String, Value>>;

    /// Check parameters read from a file for a tensor of `dtype`, and return
    /// the number of planes (every chunk's raw length must be a multiple of it).
    ///
    /// # Errors
    /// A message naming the bad parameter.
    fn plane_count(&self, params: &Map<String, Value>, dtype: &dyn DtypeHandler) -> std::result::Result<usize, String>;

    /// Split `raw` into planes written one after another into `out` (same length).
    /// `params` were accepted by [`Filter::plane_count`].
    fn encode(&self, params: &Map<String, Value>, raw: &[u8], out: &mut [u8]);

    /// Undo [`Filter::encode`]: `planes` are the planes in order, each `out.len() / planes.len()` bytes.
    fn decode(&self, params: &Map<String, Value>, planes: &[&[u8]], out: &mut [u8]);

    /// [`Filter::decode`] into memory that may be uninitialised; every byte of
    /// `out` must be written. The default zeroes `out` and calls
    /// [`Filter::decode`]; filters that write every byte anyway override it.
    fn decode_uninit(&self, params: &Map<String, Value>, planes: &[&[u8]], out: &mut [MaybeUninit<u8>]) {
        self.decode(params, planes, crate::buffer::zero_fill(out))
    }
}

/// A tensor layout other than dense: how several stored parts make one tensor.
///
/// The header entry of such a tensor holds its primary part (e.g. the values
/// of a sparse tensor) and a `layout` object naming the plugin, the logical
/// (dense) shape and the other parts, which are ordinary tensor entries marked
/// `part_of` the tensor. Readers list the tensor once.
pub trait Layout: Plugin {
    /// Names of the parts besides the primary one (e.g. `["indices"]`).
    fn part_names(&self) -> &'static [&'static str];

    /// Check dtypes and shapes of the parts against the logical shape.
    /// `primary` and each of `parts` (in [`Layout::part_names`] order) are
    /// `(dtype, shape)`.
    ///
    /// # Errors
    /// A message saying what does not fit.
    fn check(
        &self,
        shape: &[u64],
        params: &Map<String, Value>,
        primary: (&dyn DtypeHandler, &[u64]),
        parts: &[(&dyn DtypeHandler, &[u64])],
    ) -> std::result::Result<(), String>;
}

/// Converts between `.deathtensors` and a foreign format.
pub trait Converter: Plugin {
    /// File extensions (without the dot) of the foreign format.
    fn extensions(&self) -> &'static [&'static str];

    /// Read the foreign file `src` and write a `.deathtensors` file `dst`.
    ///
    /// # Errors
    /// When `src` cannot be read or parsed, or `dst` cannot be written.
    fn import(&self, src: &Path, dst: &Path, options: &WriteOptions) -> Result<()>;

    /// Read a foreign file of `len` bytes through `source` (a remote file read
    /// by ranges, say; `label` names it in errors) and write the
    /// `.deathtensors` file `dst`, without a local copy of the source.
    ///
    /// # Errors
    /// As [`Converter::import`], plus what `source` fails with. The default
    /// is an [`Error::InvalidArgument`]: the converter can only read files.
    fn import_from(
        &self,
        source: &dyn ByteSource,
        len: u64,
        label: &str,
        dst: &Path,
        options: &WriteOptions,
    ) -> Result<()> {
        let _ = (source, len, dst, options);
        Err(Error::InvalidArgument(format!(
            "converter {} reads only local files: download {label} first",
            self.id()
        )))
    }

    /// Read the `.deathtensors` file `src` and write the foreign file `dst`.
    ///
    /// # Errors
    /// When `src` cannot be read, or holds something the foreign format cannot express.
    fn export(&self, src: &Path, dst: &Path) -> Result<()>;
}

/// [`Converter::import`] of `src` into `dst`, refusing to convert a file
/// onto itself. Both fronts convert through this and [`export_foreign`].
///
/// # Errors
/// [`Error::InvalidArgument`] when `dst` is `src` (the same path once
/// symbolic links are followed): the conversion would replace the source
/// with its copy in the other format. Otherwise the converter's errors.
pub fn import_foreign(converter: &dyn Converter, src: &Path, dst: &Path, options: &WriteOptions) -> Result<()> {
    crate::atomic::refuse_same_file(src, dst, "converting it onto itself would replace the source")?;
    converter.import(src, dst, options)
}

/// [`Converter::export`] of `src` into `dst`, refusing to convert a file onto itself.
///
/// # Errors
/// As [`import_foreign`].
pub fn export_foreign(converter: &dyn Converter, src: &Path, dst: &Path) -> Result<()> {
    crate::atomic::refuse_same_file(src, dst, "converting it onto itself would replace the source")?;
    converter.export(src, dst)
}

/// One registration: the plugin and the crate that submitted it.
pub struct Registration<T: ?Sized + 'static> {
    /// `CARGO_PKG_NAME` of the registering crate (filled in by the macros).
    pub crate_name: &'static str,
    /// The plugin itself.
    pub plugin: &'static T,
}

inventory::collect!(Registration<dyn Codec>);
inventory::collect!(Registration<dyn ChecksumAlgorithm>);
inventory::collect!(Registration<dyn DtypeHandler>);
inventory::collect!(Registration<dyn Converter>);
inventory::collect!(Registration<dyn Filter>);
inventory::collect!(Registration<dyn Layout>);

/// Register a [`Codec`] value (a `const`-constructible expression).
#[macro_export]
macro_rules! register_codec {
    ($plugin:expr) => {
        $crate::inventory::submit! {
            $crate::registry::Registration::<dyn $crate::registry::Codec> {
                crate_name: env!("CARGO_PKG_NAME"),
                plugin: &$plugin,
            }
        }
    };
}

/// Register a [`ChecksumAlgorithm`] value.
#[macro_export]
macro_rules! register_checksum {
    ($plugin:expr) => {
        $crate::inventory::submit! {
            $crate::registry::Registration::<dyn $crate::registry::ChecksumAlgorithm> {
                crate_name: env!("CARGO_PKG_NAME"),
                plugin: &$plugin,
            }
        }
    };
}

/// Register a [`DtypeHandler`] value.
#[macro_export]
macro_rules! register_dtype {
    ($plugin:expr) => {
        $crate::inventory::submit! {
            $crate::registry::Registration::<dyn $crate::registry::DtypeHandler> {
                crate_name: env!("CARGO_PKG_NAME"),
                plugin: &$plugin,
            }
        }
    };
}

/// Register a [`Converter`] value.
#[macro_export]
macro_rules! register_converter {
    ($plugin:expr) => {
        $crate::inventory::submit! {
            $crate::registry::Registration::<dyn $crate::registry::Converter> {
                crate_name: env!("CARGO_PKG_NAME"),
                plugin: &$plugin,
            }
        }
    };
}

/// Register a [`Filter`] value.
#[macro_export]
macro_rules! register_filter {
    ($plugin:expr) => {
        $crate::inventory::submit! {
            $crate::registry::Registration::<dyn $crate::registry::Filter> {
                crate_name: env!("CARGO_PKG_NAME"),
                plugin: &$plugin,
            }
        }
    };
}

/// Register a [`Layout`] value.
#[macro_export]
macro_rules! register_layout {
    ($plugin:expr) => {
        $crate::inventory::submit! {
            $crate::registry::Registration::<dyn $crate::registry::Layout> {
                crate_name: env!("CARGO_PKG_NAME"),
                plugin: &$plugin,
            }
        }
    };
}

/// The plugins of one kind, by id.
pub struct Registry<T: ?Sized + 'static> {
    kind: &'static str,
    by_id: BTreeMap<&'static str, (&'static T, &'static str)>,
}

/// A duplicate id found while building a registry.
#[derive(Debug, Clone)]
struct Duplicate {
    id: String,
    first: &'static str,
    second: &'static str,
}

impl<T: ?Sized + Plugin> Registry<T> {
    fn build<'a>(
        kind: &'static str,
        registrations: impl Iterator<Item = &'a Registration<T>>,
    ) -> std::result::Result<Self, Duplicate> {
        let mut by_id = BTreeMap::new();
        for registration in registrations {
            let id = registration.plugin.id();
            if let Some((_, first)) = by_id.insert(id, (registration.plugin, registration.crate_name)) {
                let (mut a, mut b) = (first, registration.crate_name);
                if a > b {
                    std::mem::swap(&mut a, &mut b);
                }
                return Err(Duplicate {
                    id: id.to_owned(),
                    first: a,
                    second: b,
                });
            }
        }
        Ok(Registry { kind, by_id })
    }

    /// The plugin with this id.
    ///
    /// # Errors
    /// [`Error::UnknownPlugin`] listing the registered ids.
    pub fn get(&self, id: &str) -> Result<&'static T> {
        self.by_id
            .get(id)
            .map(|(plugin, _)| *plugin)
            .ok_or_else(|| Error::UnknownPlugin {
                kind: self.kind,
                id: id.to_owned(),
                available: self.ids().collect::<Vec<_>>().join(", "),
            })
    }

    /// Registered ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_id.keys().copied()
    }

    /// `(plugin, crate name)` pairs, sorted by id.
    pub fn entries(&self) -> impl Iterator<Item = (&'static T, &'static str)> + '_ {
        self.by_id.values().copied()
    }
}

impl Registry<dyn Converter> {
    /// The converter whose format has this file extension (without the dot,
    /// any case).
    pub fn by_extension(&self, extension: &str) -> Option<&'static dyn Converter> {
        self.entries()
            .map(|(c, _)| c)
            .find(|c| c.extensions().iter().any(|x| x.eq_ignore_ascii_case(extension)))
    }
}

fn finish<T: ?Sized>(
    kind: &'static str,
    built: &'static std::result::Result<Registry<T>, Duplicate>,
) -> Result<&'static Registry<T>> {
    built.as_ref().map_err(|d| Error::DuplicatePlugin {
        kind,
        id: d.id.clone(),
        first: d.first,
        second: d.second,
    })
}

macro_rules! registry_accessor {
    ($(#[$doc:meta])* $name:ident, $trait:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// # Errors
        /// [`Error::DuplicatePlugin`] when two linked crates register one id.
        pub fn $name() -> Result<&'static Registry<dyn $trait>> {
            static BUILT: OnceLock<std::result::Result<Registry<dyn $trait>, Duplicate>> =
                OnceLock::new();
            finish(
                $kind,
                BUILT.get_or_init(|| {
                    Registry::build($kind, inventory::iter::<Registration<dyn $trait>>.into_iter())
                }),
            )
        }
    };
}

registry_accessor!(
    /// The registered compression codecs.
    codecs, Codec, "codec"
);
registry_accessor!(
    /// The registered checksum algorithms.
    checksums, ChecksumAlgorithm, "checksum"
);
registry_accessor!(
    /// The registered dtypes.
    dtypes, DtypeHandler, "dtype"
);
registry_accessor!(
    /// The registered chunk filters.
    filters, Filter, "filter"
);
registry_accessor!(
    /// The registered tensor layouts (sparse formats).
    layouts, Layout, "layout"
);
registry_accessor!(
    /// The registered foreign-format converters.
    converters, Converter, "converter"
);

/// One row of [`list_plugins`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// `"codec"`, `"checksum"`, `"filter"`, `"dtype"`, `"layout"` or `"converter"`.
    pub kind: &'static str,
    /// The plugin's id.
    pub id: &'static str,
    /// Its one-line summary.
    pub summary: &'static str,
    /// The crate that registered it.
    pub crate_name: &'static str,
}

/// Every registered plugin, grouped by kind and sorted by id.
///
/// # Errors
/// [`Error::DuplicatePlugin`] when any kind has a duplicate id.
pub fn list_plugins() -> Result<Vec<PluginInfo>> {
    fn rows<T: ?Sized + Plugin>(registry: &Registry<T>, out: &mut Vec<PluginInfo>) {
        out.extend(registry.entries().map(|(plugin, crate_name)| PluginInfo {
            kind: registry.kind,
            id: plugin.id(),
            summary: plugin.summary(),
            crate_name,
        }));
    }
    let mut out = Vec::new();
    rows(codecs()?, &mut out);
    rows(checksums()?, &mut out);
    rows(filters()?, &mut out);
    rows(dtypes()?, &mut out);
    rows(layouts()?, &mut out);
    rows(converters()?, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(&'static str);
    impl Plugin for Fake {
        fn id(&self) -> &'static str {
            self.0
        }
        fn summary(&self) -> &'static str {
            "fake"
        }
    }

    static A: Fake = Fake("a");
    static B: Fake = Fake("b");
    static A2: Fake = Fake("a");

    #[test]
    fn duplicate_ids_name_both_crates() {
        let regs = [
            Registration::<Fake> {
                crate_name: "crate-one",
                plugin: &A,
            },
            Registration::<Fake> {
                crate_name: "crate-two",
                plugin: &A2,
            },
        ];
        let dup = Registry::build("codec", regs.iter())
            .err()
            .expect("duplicate must be refused");
        assert_eq!(dup.id, "a");
        assert_eq!((dup.first, dup.second), ("crate-one", "crate-two"));
    }

    #[test]
    fn unknown_id_lists_available() {
        let regs = [
            Registration::<Fake> {
                crate_name: "x",
                plugin: &B,
            },
            Registration::<Fake> {
                crate_name: "x",
                plugin: &A,
            },
        ];
        let reg = Registry::build("codec", regs.iter()).expect("no duplicates");
        let err = reg.get("zz").err().expect("unknown id");
        let msg = err.to_string();
        assert!(msg.contains("\"zz\"") && msg.contains("a, b"), "{msg}");
        assert_eq!(reg.get("b").expect("known").id(), "b");
    }
}
