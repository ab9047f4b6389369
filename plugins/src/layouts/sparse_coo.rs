//! The `sparse_coo` layout: a sparse tensor in coordinate format, as torch's
//! `sparse_coo` layout.
//!
//! Header configuration, on the entry holding the values:
//! `"layout": {"id": "sparse_coo", "shape": [1000, 64], "params": {"coalesced": false},
//! "parts": {"indices": "<name of the indices entry>"}}`.
//!
//! - values: shape `[nnz, *dense_dims]`, any dtype;
//! - indices: I64, shape `[sparse_dims, nnz]`;
//! - `sparse_dims + len(dense_dims) = len(shape)`, and the dense dims equal
//!   the trailing dims of `shape`.
//!
//! Index bounds are data, not layout: readers check them when building the
//! tensor (torch's `check_invariants`).

use deathtensors::registry::{DtypeHandler, Layout, Plugin};
use serde_json::{Map, Value};

/// Coordinate-format sparse tensors.
pub struct SparseCooLayout;

impl Plugin for SparseCooLayout {
    fn id(&self) -> &'static str {
        "sparse_coo"
    }
    fn summary(&self) -> &'static str {
        "sparse COO tensors: I64 indices [sparse_dims, nnz] + values [nnz, *dense_dims]"
    }
}

impl Layout for SparseCooLayout {
    fn part_names(&self) -> &'static [&'static str] {
        &["indices"]
    }

    fn check(
        &self,
        shape: &[u64],
        params: &Map<String, Value>,
        (values_dtype, values): (&dyn DtypeHandler, &[u64]),
        parts: &[(&dyn DtypeHandler, &[u64])],
    ) -> Result<(), String> {
        if let Some(k) = params.keys().find(|k| *k != "coalesced") {
            return Err(format!("unknown parameter {k:?}"));
        }
        if params.get("coalesced").is_some_and(|v| !v.is_boolean()) {
            return Err("parameter \"coalesced\" must be a boolean".into());
        }
        let [(idx_dtype, indices)] = parts else {
            return Err(format!("expects 1 part (indices), got {}", parts.len()));
        };
        if idx_dtype.id() != "I64" {
            return Err(format!("indices must be I64, not {}", idx_dtype.id()));
        }
        let [sparse_dims, nnz] = indices else {
            return Err(format!("indices must be 2-d [sparse_dims, nnz], not {indices:?}"));
        };
        let Some((&values_nnz, dense)) = values.split_first() else {
            return Err("values must have at least one dimension (nnz)".into());
        };
        if values_nnz != *nnz {
            return Err(format!("indices hold {nnz} entries but values hold {values_nnz}"));
        }
        if *sparse_dims + dense.len() as u64 != shape.len() as u64 {
            return Err(format!(
                "{sparse_dims} sparse + {} dense dims do not make the {}-d shape {shape:?}",
                dense.len(),
                shape.len()
            ));
        }
        if shape[*sparse_dims as usize..] != *dense {
            return Err(format!(
                "values' dense dims {dense:?} differ from the shape's {shape:?}"
            ));
        }
        // The dense tensor must be one a framework can index (format spec §3.4).
        if deathtensors::format::tensor_nbytes(shape, values_dtype.item_size()).is_none() {
            return Err(format!(
                "the shape {shape:?} overflows 63 bits over its non-zero dimensions"
            ));
        }
        Ok(())
    }
}

deathtensors::register_layout!(SparseCooLayout);

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(id: &str) -> &'static dyn DtypeHandler {
        deathtensors::registry::dtypes().unwrap().get(id).unwrap()
    }

    #[test]
    fn shapes_must_agree() {
        let p = Map::new();
        let ok = SparseCooLayout.check(&[10, 20, 3], &p, (dt("F32"), &[5, 3]), &[(dt("I64"), &[2, 5])]);
        assert!(ok.is_ok(), "{ok:?}");
        assert!(SparseCooLayout
            .check(&[10, 20], &p, (dt("F32"), &[5]), &[(dt("I32"), &[2, 5])])
            .is_err());
        assert!(SparseCooLayout
            .check(&[10, 20], &p, (dt("F32"), &[4]), &[(dt("I64"), &[2, 5])])
            .is_err());
        assert!(SparseCooLayout
            .check(&[10, 20], &p, (dt("F32"), &[5]), &[(dt("I64"), &[3, 5])])
            .is_err());
        assert!(SparseCooLayout
            .check(&[10, 20, 4], &p, (dt("F32"), &[5, 3]), &[(dt("I64"), &[2, 5])])
            .is_err());
        assert!(SparseCooLayout
            .check(&[10], &p, (dt("F32"), &[]), &[(dt("I64"), &[1, 0])])
            .is_err());
        let mut bad = Map::new();
        bad.insert("coalesced".into(), Value::from(1));
        assert!(SparseCooLayout
            .check(&[10], &bad, (dt("F32"), &[0]), &[(dt("I64"), &[1, 0])])
            .is_err());
    }
}
