//! Python bindings of the manifest sidecar (`deathtensors::manifest`).
//!
//! Values cross the boundary as JSON text; `deathtensors._manifest` parses it.

use std::ffi::OsString;
use std::path::PathBuf;

// Paths come in as `PathBuf` (str, bytes or os.PathLike, not necessarily UTF-8)
// and go back as `OsString`, which Python gets as a `str` (a `PathBuf` would be
// a `pathlib.Path`).

use deathtensors::manifest;
use pyo3::prelude::*;

use crate::OffGil;

use crate::to_py;

/// The manifest of the file at `path`, as JSON text (header and footer only; GIL released).
#[pyfunction]
fn manifest_json(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let value = py
        .off_gil(|| manifest::open_described(&path).and_then(|r| manifest::manifest(&r)))
        .map_err(|e| to_py(py, e))?;
    Ok(value.to_string())
}

/// Write the manifest of `dt_path` atomically to `manifest_path` (default:
/// the sidecar `<dt_path>.manifest.json`); returns the path written.
#[pyfunction]
#[pyo3(signature = (dt_path, manifest_path=None))]
fn write_manifest(py: Python<'_>, dt_path: PathBuf, manifest_path: Option<PathBuf>) -> PyResult<OsString> {
    let written = py
        .off_gil(|| {
            manifest::open_described(&dt_path).and_then(|r| manifest::write_manifest(&r, manifest_path.as_deref()))
        })
        .map_err(|e| to_py(py, e))?;
    Ok(written.into_os_string())
}

/// Read and check a manifest; returns its JSON text.
#[pyfunction]
fn read_manifest(py: Python<'_>, manifest_path: PathBuf) -> PyResult<String> {
    let value = py
        .off_gil(|| manifest::read(&manifest_path))
        .map_err(|e| to_py(py, e))?;
    Ok(value.to_string())
}

/// The sidecar name `<dt_path>.manifest.json`.
#[pyfunction]
fn manifest_sidecar_path(dt_path: PathBuf) -> OsString {
    manifest::sidecar_path(&dt_path).into_os_string()
}

/// Add this module's functions to `_core`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MANIFEST_VERSION", manifest::MANIFEST_VERSION)?;
    m.add_function(wrap_pyfunction!(manifest_json, m)?)?;
    m.add_function(wrap_pyfunction!(write_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(read_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(manifest_sidecar_path, m)?)?;
    Ok(())
}
