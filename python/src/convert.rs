//! Python bindings of the converters: `import_foreign`, `import_remote` and
//! `export_foreign`.
//!
//! Each looks the converter up in the registry by id (`"safetensors"`),
//! releases the GIL for the whole conversion and maps errors with
//! [`crate::to_py`]. Path expansion, default destinations and sharded
//! checkpoints are Python (`deathtensors/_convert.py`).

use std::path::PathBuf;
use std::sync::Mutex;

use deathtensors::registry::{self, Converter};
use deathtensors::writer::{ByteSource, WriteOptions};
use deathtensors::{Error, Result};
use pyo3::prelude::*;

use crate::OffGil;

use crate::{fetch_exact, to_py};

/// The registered converter `converter` and the options of an import.
fn import_setup(
    py: Python<'_>,
    converter: &str,
    codec: Option<String>,
    level: Option<i32>,
    checksum: Option<String>,
) -> PyResult<(&'static dyn Converter, WriteOptions)> {
    let converter = registry::converters()
        .and_then(|r| r.get(converter))
        .map_err(|e| to_py(py, e))?;
    let options = WriteOptions {
        codec,
        level,
        checksum,
        ..WriteOptions::default()
    };
    Ok((converter, options))
}

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
    let (converter, options) = import_setup(py, converter, codec, level, checksum)?;
    py.off_gil(|| registry::import_foreign(converter, &src, &dst, &options))
        .map_err(|e| to_py(py, e))
}

/// A remote file read through a Python `fetch(offset, length)` callable
/// (taking the GIL for each read). The first exception `fetch` raises is kept,
/// to be raised in place of the error that ends the conversion.
struct PyFetchSource {
    fetch: Py<PyAny>,
    raised: Mutex<Option<PyErr>>,
}

impl ByteSource for PyFetchSource {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        Python::attach(
            |py| match fetch_exact(self.fetch.bind(py), offset, buf, "a range read") {
                Ok(None) => Ok(()),
                Ok(Some(short)) => Err(short),
                Err(e) => {
                    let reason = e.to_string();
                    self.raised.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    Err(Error::InvalidArgument(format!("fetch failed: {reason}")))
                }
            },
        )
    }
}

/// Convert the foreign file of `file_len` bytes that `fetch(offset, length)`
/// reads (a remote file; `label` names it in errors) to the `.deathtensors`
/// file `dst` with converter `converter`, without a local copy of the source
/// (GIL released, but for each `fetch`). An exception raised by `fetch`
/// propagates as it is.
#[pyfunction]
#[pyo3(signature = (converter, label, file_len, fetch, dst, codec=None, level=None, checksum=None))]
#[allow(clippy::too_many_arguments)] // the Python signature, keywords and all
fn import_remote(
    py: Python<'_>,
    converter: &str,
    label: &str,
    file_len: u64,
    fetch: Py<PyAny>,
    dst: PathBuf,
    codec: Option<String>,
    level: Option<i32>,
    checksum: Option<String>,
) -> PyResult<()> {
    let (converter, options) = import_setup(py, converter, codec, level, checksum)?;
    let source = PyFetchSource {
        fetch,
        raised: Mutex::new(None),
    };
    let result = py.off_gil(|| converter.import_from(&source, file_len, label, &dst, &options));
    if let Some(e) = source.raised.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    result.map_err(|e| to_py(py, e))
}

/// Convert the `.deathtensors` file `src` to the foreign file `dst` with
/// converter `converter` (GIL released).
#[pyfunction]
fn export_foreign(py: Python<'_>, converter: &str, src: PathBuf, dst: PathBuf) -> PyResult<()> {
    let converter = registry::converters()
        .and_then(|r| r.get(converter))
        .map_err(|e| to_py(py, e))?;
    py.off_gil(|| registry::export_foreign(converter, &src, &dst))
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
    m.add_function(wrap_pyfunction!(import_remote, m)?)?;
    m.add_function(wrap_pyfunction!(export_foreign, m)?)?;
    m.add_function(wrap_pyfunction!(converter_extensions, m)?)?;
    Ok(())
}
