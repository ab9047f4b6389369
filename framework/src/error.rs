//! The one error type of the framework.
//!
//! Every failure is a variant of [`Error`]; each message says what is wrong
//! and where (file, tensor name, byte offset). [`Error::class_name`] gives the
//! name of the Python exception class the error maps to, so that the Python
//! front maps errors without knowing the variants.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, writing or looking up plugins.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error, with the path it concerns.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The first 8 bytes are not `DTLEGION`.
    #[error("not a deathtensors file: the magic is {found:?}, expected \"DTLEGION\"")]
    BadMagic {
        /// The 8 bytes found (lossily decoded).
        found: String,
    },

    /// The version field is not one this reader understands.
    #[error("unsupported format version {0}; this reader supports version 1")]
    UnsupportedVersion(u32),

    /// Flag bit 2 (encryption) is set. It is reserved; such files are refused.
    #[error("the file sets flag bit 2 (encryption), which is reserved: encrypted files are not supported")]
    Encrypted,

    /// Flag bits this version does not define are set.
    #[error("unknown flag bits {0:#010x} are set")]
    UnknownFlags(u32),

    /// The declared JSON header length is over the reader's limit.
    #[error(
        "the header declares {len} bytes, over the limit of {limit} bytes (raise it with ReadOptions::max_header_len)"
    )]
    HeaderTooLarge {
        /// Declared length.
        len: u64,
        /// The limit in force.
        limit: u64,
    },

    /// The file ends before a structure it declares.
    #[error("truncated file: {what} needs {needed} bytes but the file has {available}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed (from the start of the file).
        needed: u64,
        /// Bytes the file has.
        available: u64,
    },

    /// The JSON header is not valid UTF-8 / JSON, or breaks a rule of the schema.
    #[error("invalid header: {0}")]
    InvalidHeader(String),

    /// The index of a sharded checkpoint is not one (see [`crate::sharded`]).
    #[error("sharded index {path:?}: {reason}")]
    InvalidIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A manifest sidecar is not one (see [`crate::manifest`]).
    #[error("{} is not a deathtensors manifest: {reason}", path.display())]
    InvalidManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// An error in one shard of a sharded checkpoint.
    #[error("shard {shard:?}: {source}")]
    InShard {
        /// The shard's file name, as the index gives it.
        shard: String,
        /// The error.
        source: Box<Error>,
    },

    /// An error found in a file whose message would not name it otherwise: a
    /// format error of its preamble or header, found when it is opened (an
    /// [`Error::Io`] names its path already). [`Error::root`] is the error itself.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: Box<Error>,
    },

    /// A tensor entry of the header breaks a rule (dtype, shape, byte range, chunks).
    #[error("tensor {name:?}: {reason}")]
    InvalidTensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// The data region is longer than the tensors it holds.
    #[error("{extra} trailing bytes after the last tensor (data region ends at file offset {end})")]
    TrailingBytes {
        /// Number of unexplained bytes.
        extra: u64,
        /// File offset where the data should have ended.
        end: u64,
    },

    /// A stored chunk does not decode to its declared raw length.
    #[error("tensor {name:?}: chunk {index} at file offset {offset} is corrupt: {reason}")]
    CorruptChunk {
        /// The tensor's name.
        name: String,
        /// Index of the chunk within the tensor.
        index: usize,
        /// File offset of the chunk.
        offset: u64,
        /// What the codec reported.
        reason: String,
    },

    /// The footer digest does not match the file's contents.
    #[error("checksum mismatch ({algorithm}): the footer says {expected} but the file hashes to {computed}")]
    ChecksumMismatch {
        /// Algorithm id.
        algorithm: String,
        /// Hex digest stored in the footer.
        expected: String,
        /// Hex digest computed.
        computed: String,
    },

    /// Verification was asked for a file written without a checksum footer.
    #[error("the file has no checksum footer (it was written without checksum=...), so it cannot be verified")]
    NoChecksum,

    /// No plugin of this kind has this id.
    #[error("unknown {kind} {id:?}; available: {available}")]
    UnknownPlugin {
        /// Plugin kind ("codec", "checksum", "dtype", "converter").
        kind: &'static str,
        /// The id asked for.
        id: String,
        /// Comma-separated list of registered ids.
        available: String,
    },

    /// Two linked crates register a plugin of one kind under one id.
    #[error("two {kind} plugins are registered with the id {id:?}: one by crate {first}, one by crate {second}")]
    DuplicatePlugin {
        /// Plugin kind.
        kind: &'static str,
        /// The id registered twice.
        id: String,
        /// Crate of the first registration.
        first: &'static str,
        /// Crate of the second registration.
        second: &'static str,
    },

    /// No tensor of this name in the file.
    #[error("no tensor named {0:?}")]
    TensorNotFound(String),

    /// A caller passed an argument that cannot be honoured.
    #[error("{0}")]
    InvalidArgument(String),

    /// A valid input (a foreign file being converted, say) holds a dtype that
    /// deathtensors has no equivalent for.
    #[error("{0}")]
    UnsupportedDtype(String),

    /// Memory for a buffer of the declared size could not be obtained.
    #[error("cannot allocate {0} bytes for tensor data")]
    OutOfMemory(u64),
}

impl Error {
    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// This error, naming `path` ([`Error::InFile`]) unless it names a path already.
    #[must_use]
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            Error::Io { .. }
            | Error::InFile { .. }
            | Error::InShard { .. }
            | Error::InvalidIndex { .. }
            | Error::InvalidManifest { .. } => self,
            other => Error::InFile {
                path: path.into(),
                source: Box::new(other),
            },
        }
    }

    /// The error under the context that names where it was found
    /// ([`Error::InFile`], [`Error::InShard`]): what went wrong itself.
    pub fn root(&self) -> &Error {
        match self {
            Error::InFile { source, .. } | Error::InShard { source, .. } => source.root(),
            other => other,
        }
    }

    /// Shorthand for [`Error::InvalidTensor`].
    pub fn tensor(name: &str, reason: impl Into<String>) -> Self {
        Error::InvalidTensor {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }

    /// Name of the Python exception class (in `deathtensors.errors`) this error maps to.
    ///
    /// I/O errors map to `"OSError"`; the Python layer turns that into the
    /// matching built-in (`FileNotFoundError`, `PermissionError`, ...).
    pub fn class_name(&self) -> &'static str {
        match self {
            Error::Io { .. } => "OSError",
            Error::ChecksumMismatch { .. } => "ChecksumError",
            Error::NoChecksum => "NoChecksumError",
            Error::UnknownPlugin { .. } | Error::DuplicatePlugin { .. } => "PluginError",
            Error::TensorNotFound(_) => "TensorNotFoundError",
            Error::InvalidArgument(_) => "InvalidArgumentError",
            Error::UnsupportedDtype(_) => "UnsupportedDtypeError",
            Error::OutOfMemory(_) => "DeathtensorsError",
            Error::Encrypted => "EncryptedFileError",
            Error::InShard { source, .. } | Error::InFile { source, .. } => source.class_name(),
            Error::BadMagic { .. }
            | Error::UnsupportedVersion(_)
            | Error::UnknownFlags(_)
            | Error::HeaderTooLarge { .. }
            | Error::Truncated { .. }
            | Error::InvalidHeader(_)
            | Error::InvalidIndex { .. }
            | Error::InvalidManifest { .. }
            | Error::InvalidTensor { .. }
            | Error::TrailingBytes { .. }
            | Error::CorruptChunk { .. } => "FormatError",
        }
    }

    /// True for errors that mean "this file is bad or cannot be trusted"
    /// (as opposed to a usage error or an unknown tensor name).
    pub fn is_bad_file(&self) -> bool {
        matches!(
            self.class_name(),
            "FormatError" | "ChecksumError" | "NoChecksumError" | "EncryptedFileError" | "OSError"
        )
    }
}
