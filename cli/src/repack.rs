//! `deathtensors repack`: rewrite a file with another codec, level or checksum.
//!
//! ```text
//! deathtensors repack SRC [DST] [--compress[=CODEC|none]] [--level N] [--checksum ALGO|none] [--json]
//! ```
//!
//! What is not given is kept from SRC. DST defaults to SRC, replaced
//! atomically. A sharded checkpoint is handed to the Python package, which
//! repacks it a shard at a time ([`Outcome::Python`]).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use deathtensors::reader::DtReader;
use deathtensors::sharded::names_checkpoint;
use deathtensors::writer::{repack_file, RepackOptions};
use deathtensors::Error;
use serde_json::json;

use crate::{expand_path, human, pretty, Outcome, EXIT_OK};

/// Arguments of `deathtensors repack`.
#[derive(clap::Args)]
pub(crate) struct RepackArgs {
    /// The .deathtensors file, or a sharded checkpoint (its index or base path); ~ and $VARS are expanded.
    src: OsString,
    /// Where to write the result, replaced atomically (for a checkpoint, its base path). Default: SRC itself.
    dst: Option<OsString>,
    /// Compress with zstd (`--compress`), another codec (`--compress=lz4`), or not at all (`--compress=none`).
    /// Default: SRC's codec.
    #[arg(long, value_name = "CODEC", num_args = 0..=1, require_equals = true, default_missing_value = "zstd")]
    compress: Option<String>,
    /// Compression level. Default: SRC's when its codec is kept, otherwise the codec's.
    #[arg(long, allow_negative_numbers = true)]
    level: Option<i32>,
    /// Checksum algorithm of the footer (sha256, blake3), or `none` for no footer. Default: SRC's.
    #[arg(long, value_name = "ALGO")]
    checksum: Option<String>,
    /// Print a JSON summary (settings and bytes before and after).
    #[arg(long)]
    json: bool,
}

/// `Some(None)` for `none`, `Some(Some(id))` for an id, `None` when not given.
fn setting(value: &Option<String>) -> Option<Option<String>> {
    value.as_ref().map(|v| (v != "none").then(|| v.clone()))
}

/// `codec (level N)`, `none`: how a file stores its tensors.
fn storage(reader: &DtReader) -> String {
    match (reader.codec(), &reader.layout().header.compression) {
        (Some(c), Some(h)) => format!("{} (level {})", c.id(), h.level),
        _ => "none".into(),
    }
}

/// Run the command: its output, or for a sharded checkpoint a request for the Python package.
pub(crate) fn run(args: RepackArgs) -> Result<Outcome, Error> {
    let src = expand_path(&args.src);
    let options = RepackOptions {
        codec: setting(&args.compress),
        level: args.level,
        checksum: setting(&args.checksum),
        ..RepackOptions::default()
    };
    if names_checkpoint(&src) {
        return python_request(&args, &options).map(Outcome::Python);
    }
    let dst = args.dst.as_ref().map_or_else(|| src.clone(), expand_path);
    let before = DtReader::open(&src)?;
    let (storage_in, checksum_in, bytes_in) = (storage(&before), before.checksum().map(|c| c.id()), before.file_len());
    drop(before);
    let spinner = crate::progress::spinner(bytes_in, "repacking");
    let repacked = repack_file(&src, &dst, &options);
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    repacked?;
    let after = DtReader::open(&dst)?;
    let tensors = after.tensors().iter().filter(|t| t.part_of.is_none()).count();
    let (storage_out, checksum_out) = (storage(&after), after.checksum().map(|c| c.id()));
    let bytes_out = std::fs::metadata(&dst)
        .map(|m| m.len())
        .map_err(|e| Error::io(&dst, e))?;
    let shown = |p: &Path| p.to_string_lossy().into_owned();
    let mut s = String::new();
    if args.json {
        s = pretty(&json!({
            "src": shown(&src),
            "dst": shown(&dst),
            "tensors": tensors,
            "compression": [storage_in, storage_out],
            "checksum": [checksum_in, checksum_out],
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }));
    } else {
        let _ = writeln!(
            s,
            "repacked {} -> {}: {tensors} tensors, compression {storage_in} -> {storage_out}, \
             checksum {} -> {}, {} -> {}",
            shown(&src),
            shown(&dst),
            checksum_in.unwrap_or("none"),
            checksum_out.unwrap_or("none"),
            human(bytes_in),
            human(bytes_out)
        );
    }
    Ok(Outcome::Done(s, EXIT_OK))
}

/// The request that hands the repack of a sharded checkpoint to the Python
/// package (`deathtensors._cli`), with the settings already read.
fn python_request(args: &RepackArgs, options: &RepackOptions) -> Result<String, Error> {
    let utf8 = |p: &OsString| {
        p.to_str().map(str::to_owned).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{p:?}: the command line hands a sharded checkpoint to Python as JSON, so its paths must be \
                 valid UTF-8 here; deathtensors.repack takes any folder"
            ))
        })
    };
    Ok(json!({
        "command": "repack",
        "src": utf8(&args.src)?,
        "dst": args.dst.as_ref().map(utf8).transpose()?,
        "set_codec": options.codec.is_some(),
        "codec": options.codec.clone().flatten(),
        "level": options.level,
        "set_checksum": options.checksum.is_some(),
        "checksum": options.checksum.clone().flatten(),
        "json": args.json,
    })
    .to_string())
}
