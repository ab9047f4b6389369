//! Python bindings of the sharded index (`deathtensors::sharded`).
//!
//! The index crosses the boundary as JSON text; `deathtensors._sharded` parses it.

use std::ffi::OsString;
use std::path::PathBuf;

// Paths come in as `PathBuf` (str, bytes or os.PathLike, not necessarily UTF-8)
// and go back as `OsString`, which Python gets as a `str` (a `PathBuf` would be
// a `pathlib.Path`).

use deathtensors::sharded::{self, ShardedIndex};
use pyo3::prelude::*;

use crate::OffGil;

use crate::to_py;

/// Read and check the index at `path` (at most `max_bytes`); returns it as
/// JSON text, `{"metadata": {...}, "weight_map": {...}}`. With
/// `deathtensors=False` only the rules every Hugging Face index follows are
/// checked (a `model.safetensors.index.json`, say).
#[pyfunction]
#[pyo3(signature = (path, max_bytes, deathtensors=true))]
fn read_sharded_index(py: Python<'_>, path: PathBuf, max_bytes: u64, deathtensors: bool) -> PyResult<String> {
    let index = py
        .off_gil(|| {
            if deathtensors {
                ShardedIndex::read_deathtensors(&path, max_bytes)
            } else {
                ShardedIndex::read(&path, max_bytes)
            }
        })
        .map_err(|e| to_py(py, e))?;
    Ok(index.to_json().to_string())
}

/// The index of the sharded checkpoint `path` names (itself, `path` +
/// `.index.json`, or its stem + `.deathtensors.index.json`); raises
/// `FileNotFoundError` listing the names tried.
#[pyfunction]
fn resolve_sharded_index(py: Python<'_>, path: PathBuf) -> PyResult<OsString> {
    sharded::resolve_index(&path)
        .map(PathBuf::into_os_string)
        .map_err(|e| to_py(py, e))
}

/// The index of the sharded checkpoint `path` names, or `None` when it names
/// one file (the rule the CLI and `diff` follow: a `.json` path that is not a
/// tensor file, or a missing path whose index exists).
#[pyfunction]
fn checkpoint_index(path: PathBuf) -> Option<OsString> {
    sharded::names_checkpoint(&path)
        .then(|| sharded::resolve_index(&path).ok())
        .flatten()
        .map(PathBuf::into_os_string)
}

/// The Hugging Face index of a foreign sharded checkpoint that `path` names
/// (files ending in `.{extension}`), or `None` when it names a single file.
#[pyfunction]
fn foreign_index(path: PathBuf, extension: &str) -> Option<OsString> {
    sharded::foreign_index(&path, extension).map(PathBuf::into_os_string)
}

/// The stem of a checkpoint's path (`big.deathtensors` → `big`), which its
/// shards and index are named after.
#[pyfunction]
fn checkpoint_stem(path: PathBuf) -> OsString {
    sharded::checkpoint_stem(&path).into_os_string()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MAX_INDEX_BYTES", sharded::MAX_INDEX_BYTES)?;
    m.add("INDEX_SUFFIX", sharded::INDEX_SUFFIX)?;
    m.add("INDEX_FORMAT", sharded::INDEX_FORMAT)?;
    m.add_function(wrap_pyfunction!(read_sharded_index, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_sharded_index, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint_index, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint_stem, m)?)?;
    m.add_function(wrap_pyfunction!(foreign_index, m)?)?;
    Ok(())
}
