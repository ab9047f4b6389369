//! Property tests (proptest): random tensors round-trip bit-exact; damaged files give typed errors.
//!
//! The strategies draw every registered dtype, shapes with zero-size
//! dimensions and 0-d scalars, any Unicode names (the empty one included),
//! metadata of any JSON value, every codec (with levels), every checksum and
//! chunk sizes small enough to cut tensors into many chunks. Case counts are
//! bounded so that the whole file runs in seconds under `cargo test` (debug).

use std::panic::{catch_unwind, AssertUnwindSafe};

use deathtensors::format::{MAX_HEADER_DEPTH, PREAMBLE_LEN};
use deathtensors::reader::DtReader;
use deathtensors::registry;
use deathtensors::writer::{write_file, FilterChoice, TensorData, WriteOptions};
use deathtensors::Error;
use deathtensors_integration_tests::{open_bytes, opts, read_everything};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Number, Value};

/// Every registered dtype as `(id, item size)`, sorted by id.
fn dtypes() -> Vec<(&'static str, usize)> {
    assert_eq!(deathtensors_plugins::link(), 17);
    let mut all: Vec<_> = registry::dtypes()
        .unwrap()
        .entries()
        .map(|(d, _)| (d.id(), d.item_size()))
        .collect();
    all.sort_unstable();
    all
}

// ---------------------------------------------------------------- strategies

/// A JSON scalar: every kind of number serde_json holds (finite floats only:
/// JSON has no NaN), and any Unicode string.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON numbers are finite", |f| Number::from_f64(f).map(Value::Number)),
        any::<String>().prop_map(Value::String),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A metadata object: any string keys, any JSON values, in the order drawn.
fn metadata() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((any::<String>(), json_value()), 0..4).prop_map(|kv| kv.into_iter().collect())
}

/// A shape of 0 to 4 dimensions (0-d scalars and zero-size dimensions
/// included) of at most 256 elements, so that small chunk sizes cut it into
/// many chunks without making the case slow.
fn shape() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(prop_oneof![1 => Just(0u64), 6 => 1u64..=8], 0..=4).prop_map(|mut dims| {
        while dims.iter().product::<u64>() > 256 {
            if let Some(d) = dims.iter_mut().find(|d| **d > 1) {
                *d /= 2;
            }
        }
        dims
    })
}

/// The bytes of one tensor: runs (which compress) or noise (which does not),
/// so that both compressed and raw chunks occur.
fn tensor_bytes(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), len),
        (any::<u8>(), 1usize..=16)
            .prop_map(move |(b, run)| (0..len).map(|i| b.wrapping_add((i / run) as u8)).collect()),
    ]
}

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    data: Vec<u8>,
    metadata: Map<String, Value>,
}

/// One tensor of a random registered dtype, without its name.
fn spec() -> impl Strategy<Value = Spec> {
    (prop::sample::select(dtypes()), shape(), metadata()).prop_flat_map(|((dtype, item), shape, metadata)| {
        let len = shape.iter().product::<u64>() as usize * item;
        tensor_bytes(len).prop_map(move |mut data| {
            if dtype == "BOOL" {
                data.iter_mut().for_each(|b| *b &= 1); // writers refuse other bytes
            }
            Spec {
                name: String::new(),
                dtype,
                shape: shape.clone(),
                data,
                metadata: metadata.clone(),
            }
        })
    })
}

/// 0 to `max` tensors with distinct names (any Unicode, the empty string
/// included), in a random order.
fn specs(max: usize) -> impl Strategy<Value = Vec<Spec>> {
    let name = prop_oneof![1 => Just(String::new()), 8 => any::<String>()];
    prop::collection::vec((name, spec()), 0..=max).prop_map(|pairs| {
        let mut seen = std::collections::HashSet::new();
        pairs
            .into_iter()
            .filter(|(n, _)| seen.insert(n.clone()))
            .map(|(name, s)| Spec { name, ..s })
            .collect()
    })
}

/// Codec (none, zstd at levels from negative to high, lz4), checksum, chunk size and filter choice.
fn options() -> impl Strategy<Value = WriteOptions> {
    let codec = prop_oneof![
        Just((None, None)),
        (-7i32..=12).prop_map(|l| (Some("zstd"), Some(l))),
        Just((Some("zstd"), None)),
        any::<i32>().prop_map(|l| (Some("lz4"), Some(l))),
    ];
    let checksum = prop::sample::select(vec![None, Some("sha256"), Some("blake3")]);
    let chunk = prop_oneof![1u64..=64, 65u64..=4096];
    let filter = prop::sample::select(vec![FilterChoice::Auto, FilterChoice::Off]);
    (codec, checksum, chunk, filter).prop_map(|((codec, level), checksum, chunk_bytes, filter)| WriteOptions {
        level,
        chunk_bytes,
        filter,
        ..opts(codec, checksum)
    })
}

// ---------------------------------------------------------------- helpers

/// `cases` cases (or `PROPTEST_CASES`, for a longer search); failures are
/// pinned as plain tests below rather than persisted in a regressions file.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn to_tensor_data(specs: &[Spec]) -> Vec<TensorData<'_>> {
    specs
        .iter()
        .map(|s| TensorData {
            name: s.name.clone(),
            dtype: s.dtype.to_owned(),
            shape: s.shape.clone(),
            data: &s.data,
            metadata: s.metadata.clone(),
        })
        .collect()
}

/// Write `specs` and return the file's bytes.
fn write_bytes(specs: &[Spec], global: &Map<String, Value>, options: &WriteOptions) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.deathtensors");
    if let Err(e) = write_file(&path, &to_tensor_data(specs), global, options) {
        panic!("writing valid tensors failed: {e}");
    }
    std::fs::read(&path).unwrap()
}

/// Metadata equal as values and as JSON text (so key order, `-0.0` and
/// every bit of every float count).
fn same_json(got: &Map<String, Value>, want: &Map<String, Value>) -> Result<(), TestCaseError> {
    prop_assert_eq!(got, want);
    prop_assert_eq!(
        serde_json::to_string(got).unwrap(),
        serde_json::to_string(want).unwrap()
    );
    Ok(())
}

/// Open `bytes`, read every tensor and verify; the outcome, never a panic.
fn open_and_read(bytes: &[u8]) -> Result<Result<DtReader, Error>, TestCaseError> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        open_bytes(bytes).and_then(|r| read_everything(&r).map(|()| r))
    }));
    outcome.map_err(|_| TestCaseError::fail("opening or reading damaged bytes panicked"))
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(config(256))]

    /// Whatever is written reads back bit-exact: keys in order, dtype, shape,
    /// bytes, per-tensor and global metadata; the footer verifies.
    #[test]
    fn written_files_read_back_bit_exact(specs in specs(5), global in metadata(), options in options()) {
        let bytes = write_bytes(&specs, &global, &options);
        let reader = open_bytes(&bytes).unwrap();
        let keys: Vec<&str> = reader.keys().collect();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        prop_assert_eq!(keys, names);
        same_json(reader.metadata(), &global)?;
        prop_assert_eq!(reader.codec().map(|c| c.id()), options.codec.as_deref());
        prop_assert_eq!(reader.checksum().map(|c| c.id()), options.checksum.as_deref());
        for s in &specs {
            let info = reader.tensor(&s.name).unwrap();
            prop_assert_eq!(info.dtype.id(), s.dtype);
            prop_assert_eq!(&info.shape, &s.shape);
            prop_assert_eq!(info.nbytes, s.data.len() as u64);
            same_json(&info.metadata, &s.metadata)?;
            let got = reader.read_tensor(&s.name).unwrap();
            prop_assert!(got[..] == s.data[..], "tensor {:?} ({}) differs", s.name, s.dtype);
            if let Some(chunks) = &info.chunks {
                prop_assert!(chunks.iter().all(|c| c.raw_len() <= options.chunk_bytes.max(info.dtype.item_size() as u64)));
            }
        }
        if options.checksum.is_some() {
            reader.verify().unwrap();
        }
    }

    /// Names are any Unicode string (the empty one included), unique within a
    /// file: a name given twice is refused by the writer, whatever it is.
    #[test]
    fn a_name_given_twice_is_refused(name in any::<String>(), (dtype, item) in prop::sample::select(dtypes())) {
        let data = vec![0u8; item];
        let twice = [
            TensorData { name: name.clone(), dtype: dtype.to_owned(), shape: vec![1], data: &data, metadata: Map::new() },
            TensorData { name: name.clone(), dtype: dtype.to_owned(), shape: vec![], data: &data, metadata: Map::new() },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("twice.deathtensors");
        match write_file(&path, &twice, &Map::new(), &opts(None, None)) {
            Err(Error::InvalidArgument(msg)) => prop_assert!(msg.contains("twice"), "{}", msg),
            other => prop_assert!(false, "expected InvalidArgument, got {:?}", other),
        }
        prop_assert!(!path.exists());
    }

    /// Metadata nested deeper than the header allows is refused by the
    /// writer (InvalidArgument); anything shallower reads back equal. So the
    /// writer never makes a file that the reader refuses, and
    /// `MAX_HEADER_DEPTH` is the reader's real limit.
    #[test]
    fn deep_metadata_is_refused_when_written_or_reads_back(depth in 100usize..=140, per_tensor in any::<bool>()) {
        let mut value = Value::from(1);
        for i in 0..depth {
            value = if i % 2 == 0 { Value::Array(vec![value]) } else { Value::Object(Map::from_iter([("k".to_owned(), value)])) };
        }
        let meta = Map::from_iter([("deep".to_owned(), value)]);
        let data = [7u8; 4];
        let t = TensorData {
            name: "t".into(),
            dtype: "U8".into(),
            shape: vec![4],
            data: &data,
            metadata: if per_tensor { meta.clone() } else { Map::new() },
        };
        let global = if per_tensor { Map::new() } else { meta.clone() };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.deathtensors");
        // Containers around the value: the top-level object (and `tensors` and
        // the entry, for per-tensor metadata), then the metadata object.
        let header_depth = if per_tensor { 3 } else { 1 } + 1 + depth;
        match write_file(&path, &[t], &global, &opts(None, None)) {
            Err(Error::InvalidArgument(msg)) => {
                prop_assert!(header_depth > MAX_HEADER_DEPTH, "depth {} refused: {}", header_depth, msg);
                prop_assert!(msg.contains("nested too deeply") && msg.contains(&header_depth.to_string()), "{}", msg);
                prop_assert!(!path.exists());
            }
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
            Ok(()) if header_depth > MAX_HEADER_DEPTH => {
                prop_assert!(false, "a header {} levels deep was written", header_depth)
            }
            Ok(()) => match DtReader::open(&path) {
                Ok(reader) => {
                    let got = if per_tensor { &reader.tensor("t").unwrap().metadata } else { reader.metadata() };
                    same_json(got, &meta)?;
                }
                Err(e) => prop_assert!(false, "depth {}: written, then refused: {}", depth, e),
            },
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// A byte of a valid file changed anywhere gives a typed error when the
    /// file is opened or read, never a panic. Only a change in data bytes that
    /// no footer or codec checksum covers may read successfully (with other
    /// values); with a footer, `verify` catches any change after the preamble.
    #[test]
    fn a_changed_byte_gives_a_typed_error_or_other_values(
        specs in specs(3),
        global in metadata(),
        options in options(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..=8),
    ) {
        let good = write_bytes(&specs, &global, &options);
        for (at, xor) in flips {
            let at = at.index(good.len());
            let mut bytes = good.clone();
            bytes[at] ^= xor;
            match open_and_read(&bytes)? {
                Err(e) => prop_assert!(!e.to_string().is_empty()),
                Ok(reader) => {
                    if options.checksum.is_some() {
                        prop_assert!(at < PREAMBLE_LEN as usize, "a change at {} passed verification", at);
                    }
                    // What opened must be self-consistent: every listed tensor reads to its size.
                    for name in reader.keys() {
                        let info = reader.tensor(name).unwrap();
                        prop_assert_eq!(reader.read_tensor(name).unwrap().len() as u64, info.nbytes);
                    }
                }
            }
        }
    }

    /// A valid file cut short anywhere is refused when opened: its lengths no
    /// longer add up.
    #[test]
    fn a_truncated_file_is_refused_at_open(
        specs in specs(3),
        global in metadata(),
        options in options(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..=8),
    ) {
        let good = write_bytes(&specs, &global, &options);
        for cut in cuts {
            let len = cut.index(good.len());
            let outcome = catch_unwind(AssertUnwindSafe(|| open_bytes(&good[..len])))
                .map_err(|_| TestCaseError::fail(format!("opening {len} of {} bytes panicked", good.len())))?;
            match outcome {
                Ok(_) => prop_assert!(false, "a file cut to {} of {} bytes opened", len, good.len()),
                Err(e) => prop_assert!(
                    matches!(e.root(), Error::Truncated { .. } | Error::TrailingBytes { .. } | Error::InvalidHeader(_) | Error::InvalidTensor { .. }),
                    "cut to {}: {:?}", len, e
                ),
            }
        }
    }
}

// ---------------------------------------------------------------- regressions found by the properties

/// Found by `written_files_read_back_bit_exact`: without serde_json's
/// `float_roundtrip` feature this float read back one ULP off.
#[test]
fn metadata_floats_read_back_to_the_same_bits() {
    for x in [
        2.134_140_143_819_755_8e17,
        0.1,
        -0.0,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        1.0 / 3.0,
    ] {
        let global = Map::from_iter([("x".to_owned(), Value::from(x))]);
        let bytes = write_bytes(&[], &global, &opts(None, None));
        let got = open_bytes(&bytes).unwrap().metadata()["x"].as_f64().unwrap();
        assert_eq!(got.to_bits(), x.to_bits(), "{x:e} read back as {got:e}");
    }
}

/// Found by `deep_metadata_is_refused_when_written_or_reads_back`: the
/// writer wrote global metadata 126 levels deep (a header of 128 levels),
/// which the reader refuses.
#[test]
fn metadata_the_reader_would_refuse_is_refused_when_written() {
    let mut value = Value::from(1);
    for _ in 0..126 {
        value = Value::Array(vec![value]);
    }
    let global = Map::from_iter([("deep".to_owned(), value)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.deathtensors");
    match write_file(&path, &[], &global, &opts(None, None)) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("global metadata is nested too deeply"), "{msg}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert!(!path.exists());
}
