//! # deathtensors
//!
//! Safe, fast, pickle-free tensor storage. This crate is the framework: the
//! `.deathtensors` v1 file format ([`format`](mod@format)), its [`reader`] and [`writer`],
//! the plugin [`registry`] and the [`Error`] type. It names no concrete codec,
//! hash or foreign format: those are plugins (see the `deathtensors-plugins`
//! crate), found by id in the registry.
//!
//! ```no_run
//! use deathtensors::{reader::DtReader, writer::{write_file, TensorData, WriteOptions}};
//! # use deathtensors_plugins as _;
//! let data = vec![0u8; 16];
//! let tensors = [TensorData {
//!     name: "w".into(), dtype: "F32".into(), shape: vec![2, 2], data: &data,
//!     metadata: Default::default(),
//! }];
//! let options = WriteOptions { codec: Some("zstd".into()), checksum: Some("sha256".into()), ..Default::default() };
//! write_file("model.deathtensors", &tensors, &Default::default(), &options)?;
//! let reader = DtReader::open("model.deathtensors")?;
//! reader.verify()?;
//! assert_eq!(&reader.read_tensor("w")?[..], &data[..]);
//! # Ok::<(), deathtensors::Error>(())
//! ```

#![warn(missing_docs)]

pub mod atomic;
pub mod buffer;
pub mod chunk;
pub mod diff;
pub mod direct;
pub mod error;
pub mod format;
mod jsonfile;
pub mod manifest;
pub mod parallel;
pub mod reader;
pub mod registry;
pub mod select;
pub mod sharded;
pub mod stats;
pub mod writer;

pub use error::{Error, Result};
/// Re-exported so that plugin crates register through `deathtensors::inventory`.
pub use inventory;
