//! Python bindings of the converters: `import_foreign` and `export_foreign`.
//!
//! Both look the converter up in the registry by id (`"safetensors"`), release
//! the GIL for the whole conversion and map errors with [`crate::to_py`]. Path
//! expansion, default destinations and sharded checkpoints are Python
//! (`deathtensors/_convert.py`).

use std::path::PathBuf;

use deathtensors::registry;
use deathtensors::writer::WriteOptions;
use pyo3::prelude::*;

use crate::to_py;

/// Convert the foreign file `src` to the `.deathtensors` file `dst` with
/// converter `converter` (GIL released).
#[pyfunction]
#[pyo3(signature = (converter, src, dst, codec=None, level=None, checksum=None))]
fn import_foreign(
    py: Python<'_>,
    converter: &str,
    src: PathBuf,
    dst: PathBuf,
    codec: Option<String>,
    level: Option<i32>,
    checksum: Option<String>,
) -> PyResult<()> {
    let converter = registry::converters()
        .and_then(|r| r.get(converter))
        .map_err(|e| to_py(py, e))?;
    let options = WriteOptions {
        codec,
        level,
        checksum,
        ..WriteOptions::default()
    };
    py.detach(|| registry::import_foreign(converter, &src, &dst, &options))
        .map_err(|e| to_py(py, e))
}

/// Convert the `.deathtensors` file `src` to the foreign file `dst` with
/// converter `converter` (GIL released).
#[pyfunction]
fn export_foreign(py: Python<'_>, converter: &str, src: PathBuf, dst: PathBuf) -> PyResult<()> {
    let converter = registry::converters()
        .and_then(|r| r.get(converter))
        .map_err(|e| to_py(py, e))?;
    py.detach(|| registry::export_foreign(converter, &src, &dst))
        .map_err(|e| to_py(py, e))
}

/// `(id, extensions)` of every registered converter.
#[pyfunction]
fn converter_extensions(py: Python<'_>) -> PyResult<Vec<(String, Vec<String>)>> {
    let registry = registry::converters().map_err(|e| to_py(py, e))?;
    Ok(registry
        .entries()
        .map(|(c, _)| {
            (
                c.id().to_owned(),
                c.extensions().iter().map(|e| (*e).to_owned()).collect(),
            )
        })
        .collect())
}

/// Add this module's functions to `_core`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(import_foreign, m)?)?;
    m.add_function(wrap_pyfunction!(export_foreign, m)?)?;
    m.add_function(wrap_pyfunction!(converter_extensions, m)?)?;
    Ok(())
}
