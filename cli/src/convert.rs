//! `deathtensors convert`: conversion to and from other formats.
//!
//! ```text
//! deathtensors convert to-safetensors SRC DST [--json]
//! deathtensors convert from-safetensors SRC DST [--compress[=CODEC]] [--level N] [--checksum ALGO] [--json]
//! deathtensors convert SRC DST [--to FORMAT] [--from FORMAT] [--compress[=CODEC]] [--checksum ALGO] [--json]
//! ```
//!
//! The generic form picks the converter from the registry: `--to FORMAT` is a
//! converter id or one of its extensions (default: DST's extension), and
//! `--to deathtensors` (or a DST ending in `.deathtensors`) imports, with the
//! converter picked by `--from` or SRC's extension. Imports write a SHA-256
//! footer unless `--checksum none`, like `from_safetensors(checksum=True)`.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use deathtensors::reader::DtReader;
use deathtensors::registry::{self, Converter};
use deathtensors::sharded;
use deathtensors::writer::WriteOptions;
use deathtensors::Error;
use serde_json::json;

use crate::{expand_path, human, pretty, Outcome, EXIT_OK};

/// Extensions that name the deathtensors format itself.
const NATIVE: [&str; 2] = ["deathtensors", "dt"];

/// Arguments of `deathtensors convert`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ConvertArgs {
    #[command(subcommand)]
    direction: Option<Direction>,
    /// The file to convert (generic form), or a sharded checkpoint (its index or base path); ~ and $VARS are expanded.
    #[arg(required = true)]
    src: Option<OsString>,
    /// The file to write, replaced atomically (for a sharded SRC, the output's base path).
    #[arg(required = true)]
    dst: Option<OsString>,
    /// Target format: a converter id or extension (`safetensors`), or `deathtensors` to import.
    /// Default: DST's extension.
    #[arg(long, value_name = "FORMAT")]
    to: Option<String>,
    /// Source format of an import: a converter id or extension. Default: SRC's extension.
    #[arg(long, value_name = "FORMAT")]
    from: Option<String>,
    #[command(flatten)]
    write: WriteArgs,
    /// Print a JSON summary (converter, tensors, bytes in and out).
    #[arg(long)]
    json: bool,
}

/// How an import writes the `.deathtensors` file (also `hub-convert`'s options).
#[derive(clap::Args, serde::Serialize)]
pub(crate) struct WriteArgs {
    /// Compress the .deathtensors file: `--compress` uses zstd, `--compress=lz4` names the codec.
    #[arg(long, value_name = "CODEC", num_args = 0..=1, require_equals = true, default_missing_value = "zstd")]
    compress: Option<String>,
    /// Compression level (default: the codec's).
    #[arg(long, requires = "compress", allow_negative_numbers = true)]
    level: Option<i32>,
    /// Checksum algorithm of the footer (sha256, blake3), or `none`. Default: sha256.
    #[arg(long, value_name = "ALGO")]
    checksum: Option<String>,
}

impl WriteArgs {
    fn given(&self) -> bool {
        self.compress.is_some() || self.checksum.is_some()
    }

    fn options(&self) -> WriteOptions {
        let checksum = match self.checksum.as_deref() {
            None => Some("sha256".to_owned()),
            Some("none") => None,
            Some(id) => Some(id.to_owned()),
        };
        WriteOptions {
            codec: self.compress.clone(),
            level: self.level,
            checksum,
            ..WriteOptions::default()
        }
    }
}

#[derive(clap::Subcommand)]
enum Direction {
    /// Convert a .deathtensors file to .safetensors (complex and sparse tensors are refused).
    ToSafetensors {
        /// The .deathtensors file, or a sharded checkpoint (its index or base path).
        src: OsString,
        /// The .safetensors file to write.
        dst: OsString,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// Convert a .safetensors file to .deathtensors.
    FromSafetensors {
        /// The .safetensors file, or a sharded checkpoint (its index or base path).
        src: OsString,
        /// The .deathtensors file to write.
        dst: OsString,
        #[command(flatten)]
        write: WriteArgs,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
}

/// One conversion to run.
struct Job {
    converter: &'static dyn Converter,
    import: Option<WriteOptions>,
    src: OsString,
    dst: OsString,
    json: bool,
}

/// Run the command: its output and exit code, or for a sharded checkpoint a
/// request for the Python package, which converts those.
pub(crate) fn run(args: ConvertArgs) -> Result<Outcome, Error> {
    let safetensors = || registry::converters()?.get("safetensors");
    let job = match args.direction {
        Some(Direction::ToSafetensors { src, dst, json }) => Job {
            converter: safetensors()?,
            import: None,
            src,
            dst,
            json,
        },
        Some(Direction::FromSafetensors { src, dst, write, json }) => Job {
            converter: safetensors()?,
            import: Some(write.options()),
            src,
            dst,
            json,
        },
        None => {
            let (Some(src), Some(dst)) = (args.src, args.dst) else {
                return Err(Error::InvalidArgument("convert needs SRC and DST".into()));
            };
            plan(src, dst, args.to, args.from, &args.write, args.json)?
        }
    };
    execute(job)
}

/// The lower-cased extension of a path as given (once ~ and $VARS are
/// expanded, as they are for the conversion itself), without the dot; for
/// the index of a sharded checkpoint, its shards' (`model.safetensors.index.json`
/// → `safetensors`). Any other `.json` file says nothing of the format.
fn extension(path: &OsStr) -> Option<String> {
    let path = expand_path(path);
    let bytes = path.as_os_str().as_bytes();
    let path = Path::new(OsStr::from_bytes(bytes.strip_suffix(b".index.json").unwrap_or(bytes)));
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .filter(|e| e != "json")
}

/// Whether `format` (an id or extension, any case, with or without the dot)
/// names the deathtensors format itself.
fn is_native(format: &str) -> bool {
    NATIVE.contains(&format.trim_start_matches('.').to_ascii_lowercase().as_str())
}

/// The converter named by `format`: its id, or one of its extensions.
fn find(format: &str) -> Result<&'static dyn Converter, Error> {
    let registry = registry::converters()?;
    let wanted = format.trim_start_matches('.');
    if let Ok(c) = registry.get(wanted) {
        return Ok(c);
    }
    registry.by_extension(wanted).ok_or_else(|| {
        let available: Vec<String> = registry
            .entries()
            .map(|(c, _)| format!("{} (.{})", c.id(), c.extensions().join(", .")))
            .collect();
        Error::UnknownPlugin {
            kind: "converter",
            id: format.to_owned(),
            available: format!("deathtensors, {}", available.join(", ")),
        }
    })
}

/// Work out the converter and direction of the generic form.
fn plan(
    src: OsString,
    dst: OsString,
    to: Option<String>,
    from: Option<String>,
    write: &WriteArgs,
    json: bool,
) -> Result<Job, Error> {
    let target = match to {
        Some(t) => t,
        None => extension(&dst).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "cannot tell the target format from {dst:?}: give --to FORMAT (a converter id, or deathtensors)"
            ))
        })?,
    };
    let importing = is_native(&target);
    if importing {
        let source = match from {
            Some(f) => f,
            None => extension(&src).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "cannot tell the format of {src:?}: give --from FORMAT (a converter id)"
                ))
            })?,
        };
        if is_native(&source) {
            return Err(Error::InvalidArgument(format!(
                "{src:?} is already a deathtensors file: `deathtensors repack` changes its compression or checksum \
                 (give --from FORMAT if it is not one)"
            )));
        }
        return Ok(Job {
            converter: find(&source)?,
            import: Some(write.options()),
            src,
            dst,
            json,
        });
    }
    let converter = find(&target)?;
    if from.is_some() || write.given() {
        return Err(Error::InvalidArgument(
            "--from, --compress and --checksum apply to imports (to a .deathtensors file) only".into(),
        ));
    }
    if let Some(ext) = extension(&src) {
        if !is_native(&ext) && find(&ext).is_ok() {
            return Err(Error::InvalidArgument(format!(
                "{src:?} is not a deathtensors file: conversions go through .deathtensors \
                 (convert it with --to deathtensors first)"
            )));
        }
    }
    Ok(Job {
        converter,
        import: None,
        src,
        dst,
        json,
    })
}

/// The request that hands the conversion of a sharded checkpoint to the
/// Python package (`deathtensors._cli`), or `None` for a single file. The
/// rules that tell one from the other are the Python API's.
fn sharded_request(job: &Job, src: &Path) -> Result<Option<String>, Error> {
    let sharded = match &job.import {
        Some(_) => job
            .converter
            .extensions()
            .iter()
            .any(|e| sharded::foreign_index(src, e).is_some()),
        None => sharded::names_checkpoint(src),
    };
    if !sharded {
        return Ok(None);
    }
    let utf8 = |p: &OsString| {
        p.to_str().map(str::to_owned).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{p:?}: the command line hands a sharded conversion to Python as JSON, so its paths must be \
                 valid UTF-8 here; deathtensors.from_safetensors/to_safetensors take any folder"
            ))
        })
    };
    let mut request = json!({
        "command": "convert",
        "converter": job.converter.id(),
        "direction": if job.import.is_some() { "import" } else { "export" },
        "src": utf8(&job.src)?,
        "dst": utf8(&job.dst)?,
        "json": job.json,
    });
    if let Some(options) = &job.import {
        request["codec"] = json!(options.codec);
        request["level"] = json!(options.level);
        request["checksum"] = json!(options.checksum);
    }
    Ok(Some(request.to_string()))
}

fn execute(job: Job) -> Result<Outcome, Error> {
    let src = expand_path(&job.src);
    if let Some(request) = sharded_request(&job, &src)? {
        return Ok(Outcome::Python(request));
    }
    let dst = expand_path(&job.dst);
    let size = std::fs::metadata(&src).map(|m| m.len()).unwrap_or(0);
    let spinner = crate::progress::spinner(size, "converting");
    let converted = match &job.import {
        Some(options) => registry::import_foreign(job.converter, &src, &dst, options),
        None => registry::export_foreign(job.converter, &src, &dst),
    };
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    converted?;
    // One side is always a deathtensors file: count its tensors (parts of sparse ones are not).
    let native = if job.import.is_some() { &dst } else { &src };
    let tensors = DtReader::open(native)?
        .tensors()
        .iter()
        .filter(|t| t.part_of.is_none())
        .count();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(|e| Error::io(p, e));
    let (bytes_in, bytes_out) = (size(&src)?, size(&dst)?);
    let direction = if job.import.is_some() { "import" } else { "export" };
    let mut s = String::new();
    if job.json {
        let mut v = json!({
            "converter": job.converter.id(),
            "direction": direction,
            "src": job.src.to_string_lossy(),
            "dst": job.dst.to_string_lossy(),
            "tensors": tensors,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        });
        if let Some(options) = &job.import {
            v["codec"] = json!(options.codec);
            v["checksum"] = json!(options.checksum);
        }
        s = pretty(&v);
    } else {
        let _ = writeln!(
            s,
            "converted {} -> {} ({} {direction}): {tensors} tensors, {} -> {}",
            job.src.to_string_lossy(),
            job.dst.to_string_lossy(),
            job.converter.id(),
            human(bytes_in),
            human(bytes_out)
        );
    }
    Ok(Outcome::Done(s, EXIT_OK))
}
