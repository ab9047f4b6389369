//! Python bindings of diff.

use std::path::PathBuf;

use deathtensors::diff::{diff_sides, DiffOptions, DiffSide};
use deathtensors::sharded::Source;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::OffGil;

use crate::to_py;

/// Compare two files or sharded checkpoints (GIL released). Returns the report as JSON text plus
/// each `value_changed` entry's `max_abs_diff` as a float (JSON cannot carry
/// infinities, so the Python side puts these back).
#[pyfunction]
#[pyo3(signature = (path_a, path_b, rtol=0.0, atol=0.0, window_bytes=None))]
fn diff_files(
    py: Python<'_>,
    path_a: PathBuf,
    path_b: PathBuf,
    rtol: f64,
    atol: f64,
    window_bytes: Option<usize>,
) -> PyResult<(String, Vec<Option<f64>>)> {
    let mut options = DiffOptions {
        rtol,
        atol,
        ..DiffOptions::default()
    };
    if let Some(w) = window_bytes {
        options.window_bytes = w;
    }
    let report = py
        .off_gil(|| {
            let (a, b) = (Source::open(&path_a)?, Source::open(&path_b)?);
            diff_sides(&DiffSide::source(&a), &DiffSide::source(&b), &options, &|_| {})
        })
        .map_err(|e| to_py(py, e))?;
    let text = serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let max_abs_diffs = report.value_changed.iter().map(|v| v.max_abs_diff).collect();
    Ok((text, max_abs_diffs))
}

/// Add this module's functions to `_core`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(diff_files, m)?)
}
