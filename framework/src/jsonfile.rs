//! Small JSON files that travel beside tensor files (the manifest sidecar,
//! the index of a sharded checkpoint): read as untrusted input.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::format::{parse_json_strict_nested, MAX_HEADER_DEPTH};

/// How deep arrays and objects may nest in these files: one level more than
/// in a header, since each holds header JSON one level further down (a
/// manifest the whole header under `"header"`, an index the global metadata
/// under `"metadata"`), and a file whose header is at the limit must still
/// get a sidecar that reads.
pub(crate) const MAX_SIDECAR_DEPTH: usize = MAX_HEADER_DEPTH + 1;

/// Read the JSON file at `path`: a regular file of at most `limit` bytes
/// holding strict JSON (UTF-8, no duplicate keys, nested at most
/// [`MAX_SIDECAR_DEPTH`] levels; see [`parse_json_strict_nested`]).
///
/// Opening never blocks (a FIFO is refused, not waited on), and the checks
/// and the read use one handle, so the file cannot be swapped in between.
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened or read; otherwise `bad`
/// applied to the reason the content is refused: `"not a regular file"`,
/// `"it has N bytes, over the limit of L"`, `"it grew over the limit of L
/// bytes"` or `"not valid JSON (or not UTF-8): ..."`.
pub(crate) fn read_json_file(path: &Path, limit: u64, bad: impl Fn(String) -> Error) -> Result<Value> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore it.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > limit {
        return Err(bad(format!("it has {} bytes, over the limit of {limit}", meta.len())));
    }
    let mut text = Vec::with_capacity(meta.len() as usize);
    // At most one byte past the limit: a file that grew since fstat is caught.
    (&mut file)
        .take(limit.saturating_add(1))
        .read_to_end(&mut text)
        .map_err(|e| Error::io(path, e))?;
    if text.len() as u64 > limit {
        return Err(bad(format!("it grew over the limit of {limit} bytes")));
    }
    parse_json_text(&text, bad)
}

/// `text` parsed by [`parse_json_strict_nested`] to [`MAX_SIDECAR_DEPTH`];
/// a parse failure is `bad` applied to `"not valid JSON (or not UTF-8): ..."`.
///
/// # Errors
/// As described.
pub(crate) fn parse_json_text(text: &[u8], bad: impl Fn(String) -> Error) -> Result<Value> {
    parse_json_strict_nested(text, MAX_SIDECAR_DEPTH).map_err(|e| match e {
        Error::InvalidHeader(why) => bad(format!("not valid JSON (or not UTF-8): {why}")),
        other => other,
    })
}
