//! `diff_files`: structure, metadata and value differences between two files,
//! across codecs, chunkings and window sizes.

use deathtensors_plugins as _;

use std::path::Path;

use deathtensors::diff::{diff_files, diff_files_with_progress, DiffOptions, DiffReport, ValueChange};
use deathtensors::format::LayoutHeader;
use deathtensors::reader::DtReader;
use deathtensors::writer::{write_entries, Entry, TensorData, WriteOptions};
use deathtensors::Error;
use deathtensors_integration_tests::{opts, pattern, tensor, write_valid, Lcg};
use serde_json::{json, Map, Value};

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i64_bytes(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Lcg::new(seed);
    (0..n)
        .map(|_| (rng.below(2_000_001) as f32 - 1_000_000.0) / 1000.0)
        .collect()
}

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// Compressed options that cut tensors into many small chunks.
fn chunked(codec: &str, chunk_bytes: u64) -> WriteOptions {
    WriteOptions {
        chunk_bytes,
        ..opts(Some(codec), Some("sha256"))
    }
}

fn write(dir: &Path, name: &str, tensors: &[TensorData<'_>], options: &WriteOptions) -> DtReader {
    let path = write_valid(dir, name, tensors, &Map::new(), options);
    DtReader::open(path).expect("open")
}

fn write_with_meta(dir: &Path, name: &str, tensors: &[TensorData<'_>], global: Value) -> DtReader {
    let path = write_valid(dir, name, tensors, &map(global), &opts(None, None));
    DtReader::open(path).expect("open")
}

fn write_entries_at(dir: &Path, name: &str, entries: &[Entry<'_>]) -> DtReader {
    let path = dir.join(name);
    write_entries(&path, entries, &Map::new(), &opts(Some("zstd"), None)).expect("write");
    DtReader::open(path).expect("open")
}

fn exact() -> DiffOptions {
    DiffOptions::default()
}

fn windowed(window_bytes: usize) -> DiffOptions {
    DiffOptions {
        window_bytes,
        ..DiffOptions::default()
    }
}

fn tolerant(rtol: f64, atol: f64) -> DiffOptions {
    DiffOptions {
        rtol,
        atol,
        ..DiffOptions::default()
    }
}

fn diff(a: &DtReader, b: &DtReader, options: &DiffOptions) -> DiffReport {
    diff_files(a, b, options).expect("diff")
}

fn assert_identical(r: &DiffReport) {
    assert!(r.identical, "{r:#?}");
    assert!(r.added.is_empty() && r.removed.is_empty(), "{r:#?}");
    assert!(r.shape_changed.is_empty() && r.dtype_changed.is_empty() && r.layout_changed.is_empty());
    assert!(r.value_changed.is_empty() && r.metadata_changed.is_empty() && !r.global_metadata_changed);
}

/// `(name, differing, first_index)` of each value change.
type Summary<'a> = Vec<(&'a str, Option<u64>, Option<&'a [u64]>)>;

/// The only value change of a report.
fn only_value_change(r: &DiffReport) -> &ValueChange {
    assert!(!r.identical);
    assert_eq!(r.value_changed.len(), 1, "{r:#?}");
    assert!(r.added.is_empty() && r.removed.is_empty() && r.shape_changed.is_empty() && r.dtype_changed.is_empty());
    &r.value_changed[0]
}

/// A mixed set of tensors: several dtypes, one spanning many chunks and windows.
struct Mixed {
    big: Vec<u8>,
    ints: Vec<u8>,
    half: Vec<u8>,
    flags: Vec<u8>,
    complex: Vec<u8>,
    empty: Vec<u8>,
}

impl Mixed {
    fn new() -> Self {
        Mixed {
            big: f32_bytes(&random_f32(256 * 100, 1)),
            ints: i64_bytes(&(0..999).map(|i| i * i - 7).collect::<Vec<_>>()),
            half: pattern(2 * 3001, 2),
            flags: (0..77u8).map(|i| u8::from(i % 3 == 0)).collect(),
            complex: f32_bytes(&random_f32(2 * 500, 3)),
            empty: Vec::new(),
        }
    }

    fn tensors(&self) -> Vec<TensorData<'_>> {
        vec![
            tensor("big", "F32", &[256, 100], &self.big),
            tensor("ints", "I64", &[999], &self.ints),
            tensor("half", "BF16", &[3001], &self.half),
            tensor("flags", "BOOL", &[7, 11], &self.flags),
            tensor("complex", "C64", &[500], &self.complex),
            tensor("empty", "F32", &[0, 4], &self.empty),
        ]
    }
}

#[test]
fn identical_across_codecs_chunkings_and_windows() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mixed::new();
    let t = m.tensors();
    let files = [
        write(dir.path(), "raw", &t, &opts(None, None)),
        write(dir.path(), "raw-sha", &t, &opts(None, Some("blake3"))),
        write(dir.path(), "zstd-default", &t, &opts(Some("zstd"), None)),
        write(dir.path(), "zstd-640", &t, &chunked("zstd", 640)),
        write(dir.path(), "lz4-1000", &t, &chunked("lz4", 1000)),
    ];
    // Sanity: the files really are stored differently.
    assert!(files[0].codec().is_none() && files[3].tensor("big").unwrap().chunks.as_ref().unwrap().len() > 100);
    for a in &files {
        for b in &files {
            for options in [exact(), tolerant(1e-3, 1e-3)] {
                assert_identical(&diff(a, b, &options));
            }
        }
    }
    // Windows of every alignment against the chunks (8 rounds down to one
    // C64 element, 1000 to 1000 / item-size elements).
    for b in &files[1..] {
        for options in [windowed(8), windowed(1000), windowed(4 * 97)] {
            assert_identical(&diff(&files[0], b, &options));
            assert_identical(&diff(b, &files[3], &options));
        }
    }
}

#[test]
fn added_and_removed_tensors_are_named_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y, z, w) = (vec![1u8; 4], vec![2u8; 4], vec![3u8; 4], vec![4u8; 4]);
    let a = write(
        dir.path(),
        "a",
        &[
            tensor("x", "U8", &[4], &x),
            tensor("y", "U8", &[4], &y),
            tensor("w", "U8", &[4], &w),
        ],
        &opts(None, None),
    );
    let b = write(
        dir.path(),
        "b",
        &[
            tensor("z", "U8", &[4], &z),
            tensor("y", "U8", &[4], &y),
            tensor("a", "U8", &[4], &x),
        ],
        &opts(Some("lz4"), None),
    );
    let r = diff(&a, &b, &exact());
    assert_eq!(r.removed, ["x", "w"]);
    assert_eq!(r.added, ["z", "a"]);
    assert!(r.value_changed.is_empty() && r.shape_changed.is_empty() && r.metadata_changed.is_empty());
    assert!(!r.identical);
    let back = diff(&b, &a, &exact());
    assert_eq!((back.added, back.removed), (r.removed, r.added));
}

#[test]
fn shape_and_dtype_changes_are_reported_and_values_not_compared() {
    let dir = tempfile::tempdir().unwrap();
    let data = f32_bytes(&random_f32(6, 9));
    let other = f32_bytes(&random_f32(6, 10));
    let a = write(
        dir.path(),
        "a",
        &[
            tensor("reshaped", "F32", &[2, 3], &data),
            tensor("retyped", "F32", &[6], &data),
            tensor("both", "F32", &[6], &data),
        ],
        &opts(None, None),
    );
    let b = write(
        dir.path(),
        "b",
        &[
            tensor("reshaped", "F32", &[3, 2], &other),
            tensor("retyped", "I32", &[6], &data),
            tensor("both", "U8", &[24], &data),
        ],
        &opts(Some("zstd"), None),
    );
    let r = diff(&a, &b, &exact());
    let shapes: Vec<(&str, &[u64], &[u64])> = r
        .shape_changed
        .iter()
        .map(|c| (c.name.as_str(), &c.a[..], &c.b[..]))
        .collect();
    assert_eq!(
        shapes,
        [("reshaped", &[2, 3][..], &[3, 2][..]), ("both", &[6][..], &[24][..])]
    );
    let dtypes: Vec<(&str, &str, &str)> = r
        .dtype_changed
        .iter()
        .map(|c| (c.name.as_str(), c.a.as_str(), c.b.as_str()))
        .collect();
    assert_eq!(dtypes, [("retyped", "F32", "I32"), ("both", "F32", "U8")]);
    assert!(r.value_changed.is_empty(), "{r:#?}");
    assert!(!r.identical);
}

#[test]
fn metadata_changes_list_the_differing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0u8; 8];
    let with = |meta: Value| TensorData {
        metadata: map(meta),
        ..tensor("t", "U8", &[8], &data)
    };
    let plain = tensor("same", "U8", &[8], &data);
    let a = write_with_meta(
        dir.path(),
        "a",
        &[with(json!({"lr": 0.1, "layer": 3, "gone": true})), plain.clone()],
        json!({"model": "tiny", "step": 10}),
    );
    let b = write_with_meta(
        dir.path(),
        "b",
        &[with(json!({"lr": 0.2, "layer": 3, "new": [1, 2]})), plain.clone()],
        json!({"model": "tiny", "step": 11}),
    );
    let r = diff(&a, &b, &exact());
    assert_eq!(r.metadata_changed.len(), 1);
    let c = &r.metadata_changed[0];
    assert_eq!(c.name, "t");
    assert_eq!(Value::Object(c.a.clone()), json!({"lr": 0.1, "gone": true}));
    assert_eq!(Value::Object(c.b.clone()), json!({"lr": 0.2, "new": [1, 2]}));
    assert!(r.global_metadata_changed);
    let g = r.global_metadata.as_ref().unwrap();
    assert_eq!(
        (Value::Object(g.a.clone()), Value::Object(g.b.clone())),
        (json!({"step": 10}), json!({"step": 11}))
    );
    assert!(r.value_changed.is_empty() && !r.identical);

    // Only the global metadata differs: still not identical.
    let c = write_with_meta(dir.path(), "c", std::slice::from_ref(&plain), json!({"k": 1}));
    let d = write_with_meta(dir.path(), "d", &[plain], json!({}));
    let r = diff(&c, &d, &exact());
    assert!(r.global_metadata_changed && !r.identical && r.metadata_changed.is_empty());
    assert_eq!(Value::Object(r.global_metadata.unwrap().a), json!({"k": 1}));
}

#[test]
fn one_changed_element_is_found_with_its_index_in_every_window_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut values = random_f32(64 * 100, 4);
    let a_bytes = f32_bytes(&values);
    let original = values[37 * 100 + 58];
    values[37 * 100 + 58] += 0.5;
    let expected = (f64::from(values[37 * 100 + 58]) - f64::from(original)).abs();
    let b_bytes = f32_bytes(&values);
    let a = write(
        dir.path(),
        "a",
        &[tensor("w", "F32", &[64, 100], &a_bytes)],
        &opts(None, None),
    );
    let b = write(
        dir.path(),
        "b",
        &[tensor("w", "F32", &[64, 100], &b_bytes)],
        &chunked("zstd", 512),
    );
    for options in [
        exact(),
        windowed(4),
        windowed(6),
        windowed(256),
        windowed(4096),
        tolerant(0.0, 1e-3),
    ] {
        let r = diff(&a, &b, &options);
        let v = only_value_change(&r);
        assert_eq!(v.name, "w");
        assert_eq!(v.differing, Some(1), "{options:?}");
        assert_eq!(v.numel, 6400);
        assert_eq!(v.first_index.as_deref(), Some(&[37, 58][..]), "{options:?}");
        assert_eq!(v.max_abs_diff, Some(expected));
        assert!(v.part.is_none());
    }
}

#[test]
fn several_changes_across_windows_count_and_report_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000i64;
    let a_vals: Vec<i64> = (0..n).collect();
    let mut b_vals = a_vals.clone();
    for i in [9_999usize, 17, 5_000, 18] {
        b_vals[i] = -1;
    }
    let (ab, bb) = (i64_bytes(&a_vals), i64_bytes(&b_vals));
    let a = write(
        dir.path(),
        "a",
        &[tensor("n", "I64", &[100, 100], &ab)],
        &chunked("lz4", 800),
    );
    let b = write(
        dir.path(),
        "b",
        &[tensor("n", "I64", &[100, 100], &bb)],
        &chunked("zstd", 3000),
    );
    for options in [exact(), windowed(264), windowed(1000), tolerant(0.5, 100.0)] {
        let r = diff(&a, &b, &options);
        let v = only_value_change(&r);
        assert_eq!(v.differing, Some(4), "{options:?}");
        assert_eq!(v.first_index.as_deref(), Some(&[0, 17][..]));
        // Integers have no max_abs_diff, and tolerances do not apply to them.
        assert_eq!(v.max_abs_diff, None);
    }
}

#[test]
fn float_tolerances() {
    let dir = tempfile::tempdir().unwrap();
    let base: Vec<f64> = (0..3000).map(|i| 1.0 + f64::from(i)).collect();
    // b = a·(1 + 1e-7): every element differs relatively by 1e-7.
    let rel: Vec<f64> = base.iter().map(|x| x * (1.0 + 1e-7)).collect();
    // c = a + 0.01 on every third element.
    let abs: Vec<f64> = base
        .iter()
        .enumerate()
        .map(|(i, x)| if i % 3 == 1 { x + 0.01 } else { *x })
        .collect();
    let (ab, rb, cb) = (f64_bytes(&base), f64_bytes(&rel), f64_bytes(&abs));
    let a = write(dir.path(), "a", &[tensor("x", "F64", &[3000], &ab)], &opts(None, None));
    let b = write(
        dir.path(),
        "b",
        &[tensor("x", "F64", &[3000], &rb)],
        &chunked("zstd", 4096),
    );
    let c = write(
        dir.path(),
        "c",
        &[tensor("x", "F64", &[3000], &cb)],
        &opts(Some("lz4"), None),
    );

    let r = diff(&a, &b, &windowed(1024));
    let v = only_value_change(&r);
    assert_eq!(v.differing, Some(3000));
    assert_eq!(v.first_index.as_deref(), Some(&[0][..]));
    let expected_max = base.iter().zip(&rel).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert_eq!(v.max_abs_diff, Some(expected_max));
    assert!(expected_max > 2.9e-4 && expected_max < 3.1e-4);
    assert_identical(&diff(&a, &b, &tolerant(1e-6, 0.0)));
    assert_eq!(
        diff(&a, &b, &tolerant(1e-8, 0.0)).value_changed[0].differing,
        Some(3000)
    );
    // Relative to b: atol alone must cover the largest difference.
    assert_identical(&diff(&a, &b, &tolerant(0.0, 4e-4)));
    let r = diff(&a, &b, &tolerant(0.0, 1.5e-4));
    let v = only_value_change(&r);
    let expected = base.iter().zip(&rel).filter(|(x, y)| (*x - *y).abs() > 1.5e-4).count() as u64;
    assert_eq!(v.differing, Some(expected));
    assert!(expected > 0 && expected < 3000);
    assert_eq!(v.max_abs_diff, Some(expected_max));

    let r = diff(&a, &c, &windowed(800));
    let v = only_value_change(&r);
    assert_eq!(v.differing, Some(1000));
    assert_eq!(v.first_index.as_deref(), Some(&[1][..]));
    let max = v.max_abs_diff.unwrap();
    assert!((max - 0.01).abs() < 1e-9, "{max}");
    assert_identical(&diff(&a, &c, &tolerant(0.0, 0.0101)));
    assert_eq!(
        diff(&a, &c, &tolerant(0.0, 0.0099)).value_changed[0].differing,
        Some(1000)
    );
}

#[test]
fn nan_zero_and_infinity_rules() {
    let dir = tempfile::tempdir().unwrap();
    let quiet = f32::NAN;
    let other_nan = f32::from_bits(0x7fc0_0001);
    let a_vals = [quiet, quiet, 1.0, 0.0, f32::INFINITY, f32::INFINITY, 2.0];
    let b_vals = [quiet, other_nan, quiet, -0.0, f32::INFINITY, 1e30, 2.0];
    let (ab, bb) = (f32_bytes(&a_vals), f32_bytes(&b_vals));
    let a = write(dir.path(), "a", &[tensor("v", "F32", &[7], &ab)], &opts(None, None));
    let b = write(
        dir.path(),
        "b",
        &[tensor("v", "F32", &[7], &bb)],
        &opts(Some("zstd"), None),
    );

    // Exact: bytes. Same NaN bits are equal; other NaN bits, NaN vs 1, 0 vs -0, inf vs 1e30 differ.
    let r = diff(&a, &b, &exact());
    let v = only_value_change(&r);
    assert_eq!(v.differing, Some(4));
    assert_eq!(v.first_index.as_deref(), Some(&[1][..]));
    assert_eq!(v.max_abs_diff, Some(f64::INFINITY));

    // Tolerant: NaN == NaN where both are NaN; 0 == -0; inf only equals inf.
    let r = diff(&a, &b, &tolerant(1.0, 1e40));
    let v = only_value_change(&r);
    assert_eq!(v.differing, Some(2)); // [2] NaN vs 1, [5] inf vs 1e30
    assert_eq!(v.first_index.as_deref(), Some(&[2][..]));
}

#[test]
fn complex_values_compare_by_modulus() {
    let dir = tempfile::tempdir().unwrap();
    // Three C128 elements: (1+1i), (3+4i), (nan+0i).
    let a_vals = [1.0, 1.0, 3.0, 4.0, f64::NAN, 0.0];
    let b_vals = [1.0, 1.0, 3.03, 4.04, 0.0, f64::NAN];
    let (ab, bb) = (f64_bytes(&a_vals), f64_bytes(&b_vals));
    let a = write(dir.path(), "a", &[tensor("z", "C128", &[3], &ab)], &opts(None, None));
    let b = write(
        dir.path(),
        "b",
        &[tensor("z", "C128", &[3], &bb)],
        &opts(Some("lz4"), None),
    );
    let r = diff(&a, &b, &exact());
    let v = only_value_change(&r);
    assert_eq!(v.differing, Some(2));
    assert_eq!(v.first_index.as_deref(), Some(&[1][..]));
    let expected = 0.03f64.hypot(0.04);
    assert!((v.max_abs_diff.unwrap() - expected).abs() < 1e-12);
    // |Δ| = 0.05 ≤ 0.06; both NaN elements are equal.
    assert_identical(&diff(&a, &b, &tolerant(0.0, 0.06)));
    assert_eq!(diff(&a, &b, &tolerant(0.0, 0.04)).value_changed[0].differing, Some(1));
}

#[test]
fn scalars_and_bools() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (f32_bytes(&[1.0]), f32_bytes(&[2.0]));
    let (t, f) = ([1u8, 0, 1], [1u8, 1, 1]);
    let a = write(
        dir.path(),
        "a",
        &[tensor("s", "F32", &[], &one), tensor("b", "BOOL", &[3], &t)],
        &opts(None, None),
    );
    let b = write(
        dir.path(),
        "b",
        &[tensor("s", "F32", &[], &two), tensor("b", "BOOL", &[3], &f)],
        &opts(Some("zstd"), None),
    );
    let r = diff(&a, &b, &tolerant(0.1, 0.1));
    assert_eq!(r.value_changed.len(), 2);
    let s = &r.value_changed[0];
    assert_eq!(
        (s.name.as_str(), s.differing, s.first_index.as_deref()),
        ("s", Some(1), Some(&[][..]))
    );
    assert_eq!(s.max_abs_diff, Some(1.0));
    let b = &r.value_changed[1];
    assert_eq!(
        (b.name.as_str(), b.differing, b.first_index.as_deref()),
        ("b", Some(1), Some(&[1][..]))
    );
    assert_eq!(b.max_abs_diff, None);
}

#[test]
fn aliases_compare_by_value() {
    let dir = tempfile::tempdir().unwrap();
    let w = f32_bytes(&random_f32(300, 5));
    let mut changed = w.clone();
    changed[4 * 120] ^= 1;
    let w = &w[..];
    let alias = Entry::Alias {
        name: "tied".into(),
        target: "w".into(),
        metadata: Map::new(),
    };
    let a = write_entries_at(dir.path(), "a", &[data("w", w), alias.clone()]);
    let b = write_entries_at(dir.path(), "b", &[data("w", w), data("tied", w)]);
    assert!(a.tensor("tied").unwrap().alias_of.is_some());
    assert_identical(&diff(&a, &b, &exact()));
    assert_identical(&diff(&b, &a, &windowed(64)));
    let c = write_entries_at(dir.path(), "c", &[data("w", &changed), alias]);
    let r = diff(&a, &c, &exact());
    let names: Summary<'_> = r
        .value_changed
        .iter()
        .map(|v| (v.name.as_str(), v.differing, v.first_index.as_deref()))
        .collect();
    assert_eq!(
        names,
        [("w", Some(1), Some(&[120][..])), ("tied", Some(1), Some(&[120][..]))]
    );
}

#[test]
fn aliases_of_one_target_are_decoded_once() {
    // Regression: each alias was decoded and compared as a tensor of its own, so
    // a small file of many aliases of one large tensor cost a pass per alias.
    let dir = tempfile::tempdir().unwrap();
    let w = f32_bytes(&random_f32(300, 6));
    let mut changed = w.clone();
    changed[4 * 7] ^= 1;
    let with_aliases = |name: &str, bytes: &[u8]| {
        let mut entries = vec![data("w", bytes)];
        entries.extend((0..5).map(|i| Entry::Alias {
            name: format!("tied.{i}"),
            target: "w".into(),
            metadata: Map::new(),
        }));
        write_entries_at(dir.path(), name, &entries)
    };
    let (a, c) = (with_aliases("a", &w), with_aliases("c", &changed));
    let r = diff(&a, &c, &exact());
    let names: Vec<(&str, Option<u64>)> = r.value_changed.iter().map(|v| (v.name.as_str(), v.differing)).collect();
    assert_eq!(
        names,
        [
            ("w", Some(1)),
            ("tied.0", Some(1)),
            ("tied.1", Some(1)),
            ("tied.2", Some(1)),
            ("tied.3", Some(1)),
            ("tied.4", Some(1))
        ]
    );
    assert_eq!(a.decoded_bytes(), 1200, "decoded once, not once per alias");
    assert_eq!(c.decoded_bytes(), 1200);
}

fn data<'a>(name: &str, bytes: &'a [u8]) -> Entry<'a> {
    Entry::Data(tensor(name, "F32", &[300], bytes))
}

/// A sparse COO entry `name` of shape `[4, 5]` with the given indices and values.
fn sparse<'a>(name: &str, indices: &'a [u8], values: &'a [u8], nnz: u64) -> Entry<'a> {
    let mut parts = Map::new();
    parts.insert("indices".into(), Value::String(format!("{name}.indices")));
    Entry::Layout {
        primary: tensor(name, "F32", &[nnz], values),
        layout: LayoutHeader {
            id: "sparse_coo".into(),
            shape: vec![4, 5],
            params: Map::new(),
            parts,
        },
        parts: vec![tensor(&format!("{name}.indices"), "I64", &[2, nnz], indices)],
    }
}

#[test]
fn sparse_tensors_compare_part_by_part() {
    let dir = tempfile::tempdir().unwrap();
    let idx = i64_bytes(&[0, 1, 3, 2, 4, 0]);
    let idx_moved = i64_bytes(&[0, 1, 3, 2, 4, 1]);
    let idx4 = i64_bytes(&[0, 1, 3, 3, 2, 4, 0, 1]);
    let vals = f32_bytes(&[1.0, 2.0, 3.0]);
    let vals_changed = f32_bytes(&[1.0, 2.5, 3.0]);
    let vals4 = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let dense = f32_bytes(&[0.0; 20]);
    let a = write_entries_at(dir.path(), "a", &[sparse("s", &idx, &vals, 3)]);
    let same = write_entries_at(dir.path(), "same", &[sparse("s", &idx, &vals, 3)]);
    let r = diff(&a, &same, &exact());
    assert_identical(&r);
    // Parts are not tensors of their own.
    assert!(r.added.is_empty() && r.removed.is_empty());

    let r = diff(
        &a,
        &write_entries_at(dir.path(), "v", &[sparse("s", &idx, &vals_changed, 3)]),
        &exact(),
    );
    let v = only_value_change(&r);
    assert_eq!(
        (v.differing, v.first_index.as_deref(), v.part.as_deref()),
        (Some(1), Some(&[1][..]), None)
    );
    assert_eq!(v.max_abs_diff, Some(0.5));
    assert_eq!(v.numel, 3 + 6);

    let r = diff(
        &a,
        &write_entries_at(dir.path(), "i", &[sparse("s", &idx_moved, &vals, 3)]),
        &exact(),
    );
    let v = only_value_change(&r);
    assert_eq!(
        (v.differing, v.first_index.as_deref(), v.part.as_deref()),
        (Some(1), Some(&[1, 2][..]), Some("indices"))
    );

    let r = diff(
        &a,
        &write_entries_at(dir.path(), "n", &[sparse("s", &idx4, &vals4, 4)]),
        &exact(),
    );
    let v = only_value_change(&r);
    assert_eq!((v.differing, v.first_index.as_deref()), (None, None));
    assert!(r.shape_changed.is_empty());

    let d = write_entries_at(dir.path(), "d", &[Entry::Data(tensor("s", "F32", &[4, 5], &dense))]);
    let r = diff(&a, &d, &exact());
    assert_eq!(r.layout_changed.len(), 1, "{r:#?}");
    assert_eq!(r.layout_changed[0].a, json!({"id": "sparse_coo", "params": {}}));
    assert_eq!(r.layout_changed[0].b, Value::Null);
    // The logical shapes agree; the primary part's dtype too.
    assert!(r.shape_changed.is_empty() && r.dtype_changed.is_empty() && r.value_changed.is_empty());
    assert!(!r.identical);
}

#[test]
fn report_serialises_with_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (f32_bytes(&[1.0, 2.0]), f32_bytes(&[1.0, f32::INFINITY]));
    let a = write(dir.path(), "a", &[tensor("x", "F32", &[2], &x)], &opts(None, None));
    let b = write(dir.path(), "b", &[tensor("x", "F32", &[2], &y)], &opts(None, None));
    let v = serde_json::to_value(diff(&a, &b, &exact())).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "added",
            "removed",
            "shape_changed",
            "dtype_changed",
            "layout_changed",
            "value_changed",
            "metadata_changed",
            "global_metadata_changed",
            "global_metadata",
            "identical"
        ]
    );
    assert_eq!(
        v["value_changed"],
        json!([{"name": "x", "differing": 1, "numel": 2, "max_abs_diff": null, "first_index": [1], "part": null}])
    );
    assert_eq!(v["identical"], json!(false));
}

#[test]
fn bad_options_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a", &[], &opts(None, None));
    for options in [
        tolerant(-1e-3, 0.0),
        tolerant(0.0, f64::NAN),
        tolerant(f64::INFINITY, 0.0),
        windowed(0),
    ] {
        assert!(
            matches!(diff_files(&a, &a, &options), Err(Error::InvalidArgument(_))),
            "{options:?}"
        );
    }
    assert_identical(&diff(&a, &a, &exact()));
}

#[test]
fn each_chunk_is_decoded_once_or_twice_whatever_the_window() {
    // Windows are whole chunks of the file with the larger chunks: its chunks
    // decode once each, the other file's at most twice, even for windows far
    // smaller than a chunk.
    let dir = tempfile::tempdir().unwrap();
    let n = 1u64 << 20;
    let data = pattern(n as usize, 11);
    let t = [tensor("t", "U8", &[n], &data)];
    for (window, small_chunks) in [(64 << 10, 4096), (100, 4096), (100, 1000), (1 << 20, 3000)] {
        let a = write(dir.path(), "a", &t, &chunked("zstd", 16384));
        let b = write(dir.path(), "b", &t, &chunked("lz4", small_chunks));
        assert_identical(&diff(&a, &b, &windowed(window)));
        assert_eq!(a.decoded_bytes(), n, "window {window}");
        assert!(
            b.decoded_bytes() >= n && b.decoded_bytes() <= 2 * n,
            "window {window}: {}",
            b.decoded_bytes()
        );
    }
}

#[test]
fn uncompressed_files_compare_in_small_windows() {
    let dir = tempfile::tempdir().unwrap();
    let mut values = random_f32(3 * 1000, 12);
    let a_bytes = f32_bytes(&values);
    values[2 * 1000 + 999] = -values[2 * 1000 + 999] - 1.0;
    values[1000 + 1] = f32::NAN;
    let b_bytes = f32_bytes(&values);
    let a = write(
        dir.path(),
        "a",
        &[tensor("w", "F32", &[3, 1000], &a_bytes)],
        &opts(None, None),
    );
    let b = write(
        dir.path(),
        "b",
        &[tensor("w", "F32", &[3, 1000], &b_bytes)],
        &opts(None, Some("sha256")),
    );
    for window in [1, 4, 6, 100, 4000, 1 << 20] {
        let r = diff(&a, &b, &windowed(window));
        let v = only_value_change(&r);
        assert_eq!(v.differing, Some(2), "window {window}");
        assert_eq!(v.first_index.as_deref(), Some(&[1, 1][..]), "window {window}");
    }
}

#[test]
fn progress_counts_every_compared_byte() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let m = Mixed::new();
    let t = m.tensors();
    let a = write(dir.path(), "a", &t, &opts(None, None));
    let b = write(dir.path(), "b", &t, &chunked("zstd", 640));
    let total: u64 = a.tensors().iter().map(|t| t.nbytes).sum();
    for window in [100, 1 << 20] {
        let seen = AtomicU64::new(0);
        let r = diff_files_with_progress(&a, &b, &windowed(window), &|n| {
            seen.fetch_add(n, Ordering::Relaxed);
        })
        .unwrap();
        assert_identical(&r);
        assert_eq!(seen.into_inner(), total, "window {window}");
    }
}

/// Write a checkpoint by hand: each shard a file, then the index.
fn write_checkpoint(dir: &Path, stem: &str, shards: &[&[TensorData<'_>]], global: Value) -> std::path::PathBuf {
    let mut weight_map = Map::new();
    for (k, tensors) in shards.iter().enumerate() {
        let shard = format!("{stem}-{:05}-of-{:05}.deathtensors", k + 1, shards.len());
        write_valid(dir, &shard, tensors, &Map::new(), &opts(Some("zstd"), Some("sha256")));
        for t in tensors.iter() {
            weight_map.insert(t.name.clone(), json!(shard));
        }
    }
    let index = dir.join(format!("{stem}.deathtensors.index.json"));
    let doc = json!({"metadata": {"format": "deathtensors", "global_metadata": global}, "weight_map": weight_map});
    std::fs::write(&index, doc.to_string()).unwrap();
    index
}

#[test]
fn a_checkpoint_is_a_side_like_a_file() {
    use deathtensors::diff::{diff_sides, DiffSide};
    use deathtensors::sharded::Source;

    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        f32_bytes(&random_f32(300, 1)),
        i64_bytes(&[1, 2, 3]),
        f64_bytes(&[0.5; 7]),
    );
    let all = [
        tensor("a", "F32", &[300], &a),
        tensor("b", "I64", &[3], &b),
        tensor("c", "F64", &[7], &c),
    ];
    let file = write_valid(
        dir.path(),
        "one.deathtensors",
        &all,
        &map(json!({"m": 1})),
        &opts(None, None),
    );
    let index = write_checkpoint(dir.path(), "ck", &[&all[..1], &all[1..]], json!({"m": 1}));

    let (f, ck) = (
        Source::open(&file).unwrap(),
        Source::open(dir.path().join("ck.deathtensors")).unwrap(),
    );
    assert!(matches!(ck, Source::Checkpoint(_)) && matches!(f, Source::File(_)));
    let same = diff_sides(
        &DiffSide::source(&f),
        &DiffSide::source(&ck),
        &DiffOptions::default(),
        &|_| {},
    )
    .unwrap();
    assert!(same.identical, "{same:?}");

    let mut b2 = b.clone();
    b2[8] = 9; // b[1]: 2 -> 9
    let changed = [tensor("a", "F32", &[300], &a), tensor("b", "I64", &[3], &b2)];
    write_checkpoint(dir.path(), "ck2", &[&changed[..1], &changed[1..]], json!({"m": 2}));
    let ck2 = Source::open(dir.path().join("ck2.deathtensors.index.json")).unwrap();
    let (one, two) = (DiffSide::source(&ck), DiffSide::source(&ck2));
    assert_eq!(one.shared_bytes(&two), 1200 + 24);
    let report = diff_sides(&one, &two, &DiffOptions::default(), &|_| {}).unwrap();
    assert_eq!(report.removed, ["c"]);
    assert_eq!(
        report
            .value_changed
            .iter()
            .map(|v| (v.name.as_str(), v.first_index.clone()))
            .collect::<Vec<_>>(),
        [("b", Some(vec![1]))]
    );
    assert!(report.global_metadata_changed);

    // A shard that lacks a tensor its index places there is refused, naming the shard.
    std::fs::remove_file(dir.path().join("ck2-00002-of-00002.deathtensors")).unwrap();
    write_valid(
        dir.path(),
        "ck2-00002-of-00002.deathtensors",
        &changed[..1],
        &Map::new(),
        &opts(None, None),
    );
    let Err(e) = Source::open(index.with_file_name("ck2.deathtensors.index.json")) else {
        panic!("a shard without its tensors opened");
    };
    assert!(
        matches!(&e, Error::InShard { shard, .. } if shard == "ck2-00002-of-00002.deathtensors"),
        "{e}"
    );
    assert_eq!(e.class_name(), "FormatError");
}
