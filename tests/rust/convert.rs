//! The safetensors converter, through the registry: bit-exact round trips of
//! every dtype both formats share, refusals, metadata, and files written by
//! the `safetensors` crate itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use deathtensors::format::LayoutHeader;
use deathtensors::reader::DtReader;
use deathtensors::registry::{self, Converter};
use deathtensors::writer::{write_entries, ByteSource, Entry, TensorData, WriteOptions};
use deathtensors::Error;
use deathtensors_integration_tests::{hidden_entries, noise, opts, tensor, write_valid};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{json, Map, Value};

/// Every dtype both formats have, with its item size.
const SHARED: [(&str, usize); 15] = [
    ("BOOL", 1),
    ("U8", 1),
    ("I8", 1),
    ("U16", 2),
    ("I16", 2),
    ("U32", 4),
    ("I32", 4),
    ("U64", 8),
    ("I64", 8),
    ("F16", 2),
    ("BF16", 2),
    ("F32", 4),
    ("F64", 8),
    ("F8_E4M3", 1),
    ("F8_E5M2", 1),
];

fn converter() -> &'static dyn Converter {
    registry::converters()
        .expect("registry")
        .get("safetensors")
        .expect("the safetensors converter is registered")
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// (name, dtype, shape, bytes) of every tensor of a deathtensors file, in order.
type Row = (String, String, Vec<u64>, Vec<u8>);

fn dt_rows(path: &Path) -> Vec<Row> {
    let r = DtReader::open(path).expect("open");
    r.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype.id().to_owned(),
                t.shape.clone(),
                r.read_tensor(&t.name).expect("read").to_vec(),
            )
        })
        .collect()
}

/// The same rows from a safetensors file, read with the `safetensors` crate.
fn st_rows(path: &Path) -> HashMap<String, (String, Vec<u64>, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("read safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("the crate reads what we export");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (
                    format!("{:?}", view.dtype()),
                    view.shape().iter().map(|&d| d as u64).collect(),
                    view.data().to_vec(),
                ),
            )
        })
        .collect()
}

fn st_metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).expect("read safetensors");
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("header");
    meta.metadata().clone().unwrap_or_default()
}

/// Tensors of every shared dtype in a few shapes (scalar, empty, 1-d, 3-d), in a non-sorted order.
fn all_dtype_tensors() -> Vec<(String, &'static str, Vec<u64>, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, &(dtype, size)) in SHARED.iter().enumerate().rev() {
        for (j, shape) in [vec![], vec![0, 3], vec![37], vec![2, 3, 5]].into_iter().enumerate() {
            let n: u64 = shape.iter().product();
            let mut data = noise(n as usize * size, (i * 10 + j) as u64);
            if dtype == "BOOL" {
                data.iter_mut().for_each(|b| *b &= 1);
            }
            out.push((format!("t{j}.{dtype}"), dtype, shape, data));
        }
    }
    out
}

fn write_all_dtypes(dir: &Path, options: &WriteOptions) -> PathBuf {
    let tensors = all_dtype_tensors();
    let data: Vec<TensorData<'_>> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| tensor(name, dtype, shape, data))
        .collect();
    write_valid(dir, "all.deathtensors", &data, &Map::new(), options)
}

#[test]
fn registered_with_its_extension() {
    let c = converter();
    assert_eq!(c.id(), "safetensors");
    assert_eq!(c.extensions(), ["safetensors"]);
}

#[test]
fn every_shared_dtype_round_trips_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    for (codec, checksum) in [(None, None), (Some("zstd"), Some("sha256")), (Some("lz4"), None)] {
        let src = write_all_dtypes(dir.path(), &opts(codec, checksum));
        let expected = dt_rows(&src);
        assert_eq!(expected.len(), 60);

        let st = dir.path().join("all.safetensors");
        converter().export(&src, &st).expect("export");
        let exported = st_rows(&st);
        assert_eq!(exported.len(), expected.len());
        for (name, dtype, shape, bytes) in &expected {
            let (d, s, b) = &exported[name];
            assert_eq!((d, s), (dtype, shape), "{name}");
            assert!(b == bytes, "{name}: bytes differ after export");
        }

        for (codec_back, checksum_back) in [(None, None), (Some("zstd"), Some("sha256"))] {
            let back = dir.path().join("back.deathtensors");
            converter()
                .import(&st, &back, &opts(codec_back, checksum_back))
                .expect("import");
            assert_eq!(dt_rows(&back), expected, "round trip {codec:?} -> {codec_back:?}");
            let r = DtReader::open(&back).unwrap();
            assert_eq!(r.codec().map(|c| c.id()), codec_back);
            if checksum_back.is_some() {
                r.verify().expect("the imported file verifies");
            }
            assert!(r.metadata().is_empty(), "{:?}", r.metadata());
        }
    }
    assert!(
        hidden_entries(dir.path()).is_empty(),
        "{:?}",
        hidden_entries(dir.path())
    );
}

#[test]
fn c128_is_refused_naming_tensor_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let ok = vec![0u8; 8];
    let bad = vec![0u8; 3 * 16];
    let src = write_valid(
        dir.path(),
        "c.deathtensors",
        &[tensor("fine", "F32", &[2], &ok), tensor("spectrum", "C128", &[3], &bad)],
        &Map::new(),
        &opts(None, None),
    );
    let dst = dir.path().join("c.safetensors");
    let err = converter().export(&src, &dst).expect_err("C128 is refused");
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(msg.contains("\"spectrum\"") && msg.contains("C128"), "{msg}");
    assert!(!dst.exists());
    assert!(hidden_entries(dir.path()).is_empty());
}

#[test]
fn metadata_of_every_json_type_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let global = obj(json!({
        "model": "mlp", "epoch": 3, "lr": 0.001, "neg": -42, "max": u64::MAX, "min": i64::MIN,
        "tiny": 5e-324, "flag": false, "nothing": null, "list": [1, "two", [3.5], {"x": null}],
        "cfg": {"layers": [64, 64], "act": "gelu", "deep": {"a": {"b": true}}},
        "looks_like_json": "{\"not\": \"decoded\"}", "empty": "", "unicode": "ε → ∞ 🦀"
    }));
    let a = noise(16, 1);
    let b = noise(8, 2);
    let mut w = tensor("w", "F32", &[4], &a);
    w.metadata = obj(json!({"layer": 1, "init": "kaiming", "scale": [0.5, null], "frozen": true}));
    let mut plain = tensor("b", "U8", &[8], &b);
    plain.metadata = obj(json!({"note": "string only"}));
    let src = write_valid(
        dir.path(),
        "m.deathtensors",
        &[w, plain, tensor("z", "U8", &[8], &b)],
        &global,
        &opts(Some("zstd"), None),
    );
    let st = dir.path().join("m.safetensors");
    converter().export(&src, &st).unwrap();

    // In the safetensors file: strings as is, everything else JSON text, plus reserved keys.
    let raw = st_metadata(&st);
    assert_eq!(raw["model"], "mlp");
    assert_eq!(raw["epoch"], "3");
    assert_eq!(raw["nothing"], "null");
    assert_eq!(raw["looks_like_json"], "{\"not\": \"decoded\"}");
    let listed: Vec<String> = serde_json::from_str(&raw["__deathtensors_json__"]).unwrap();
    assert!(listed.contains(&"cfg".to_owned()) && !listed.contains(&"model".to_owned()));
    let per: Value = serde_json::from_str(&raw["__deathtensors_tensor_metadata__"]).unwrap();
    assert_eq!(per["w"]["layer"], 1);
    assert!(per.get("z").is_none(), "tensors without metadata are not listed");

    let back = dir.path().join("m2.deathtensors");
    converter().import(&st, &back, &opts(None, None)).unwrap();
    let r = DtReader::open(&back).unwrap();
    assert_eq!(r.metadata(), &global);
    assert_eq!(
        serde_json::to_string(r.metadata()).unwrap().len(),
        serde_json::to_string(&global).unwrap().len()
    );
    let orig = DtReader::open(&src).unwrap();
    for t in orig.tensors() {
        assert_eq!(r.tensor(&t.name).unwrap().metadata, t.metadata, "{}", t.name);
    }
    // safetensors stores "b" and "w"... sorted by dtype then name; our order comes back.
    assert_eq!(r.keys().collect::<Vec<_>>(), ["w", "b", "z"]);
}

#[test]
fn reserved_global_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = [1u8];
    let src = write_valid(
        dir.path(),
        "r.deathtensors",
        &[tensor("a", "U8", &[1], &d)],
        &obj(json!({"__deathtensors_json__": "mine"})),
        &opts(None, None),
    );
    let err = converter().export(&src, &dir.path().join("r.safetensors")).unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}

/// (name, dtype, shape, bytes) of a tensor written with the `safetensors` crate.
type StTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// A file written by the `safetensors` crate, as Hugging Face tools write them.
fn crate_written(dir: &Path) -> (PathBuf, Vec<StTensor>) {
    let mut tensors = Vec::new();
    let dtypes = [
        Dtype::BOOL,
        Dtype::U8,
        Dtype::I8,
        Dtype::U16,
        Dtype::I16,
        Dtype::U32,
        Dtype::I32,
        Dtype::U64,
        Dtype::I64,
        Dtype::F16,
        Dtype::BF16,
        Dtype::F32,
        Dtype::F64,
        Dtype::F8_E4M3,
        Dtype::F8_E5M2,
        Dtype::C64,
    ];
    for (i, dtype) in dtypes.into_iter().enumerate() {
        let shape = vec![3, i + 1];
        let mut data = noise(3 * (i + 1) * dtype.bitsize() / 8, 100 + i as u64);
        if dtype == Dtype::BOOL {
            data.iter_mut().for_each(|b| *b &= 1);
        }
        tensors.push((format!("layer.{i}.{dtype:?}"), dtype, shape, data));
    }
    tensors.push(("scalar".into(), Dtype::F32, vec![], vec![0, 0, 128, 63]));
    tensors.push(("empty".into(), Dtype::F16, vec![0, 4], vec![]));
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let path = dir.join("hf.safetensors");
    let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(views, Some(meta), &path).unwrap();
    (path, tensors)
}

#[test]
fn a_file_written_by_the_crate_imports_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (src, tensors) = crate_written(dir.path());
    for options in [opts(None, None), opts(Some("zstd"), Some("blake3"))] {
        let dst = dir.path().join("hf.deathtensors");
        converter().import(&src, &dst, &options).unwrap();
        let r = DtReader::open(&dst).unwrap();
        assert_eq!(r.metadata(), &obj(json!({"format": "pt"})));
        assert_eq!(r.tensors().len(), tensors.len());
        for (name, dtype, shape, bytes) in &tensors {
            let t = r.tensor(name).unwrap();
            assert_eq!(t.dtype.id(), format!("{dtype:?}"));
            assert_eq!(t.shape, shape.iter().map(|&d| d as u64).collect::<Vec<_>>());
            assert!(&r.read_tensor(name).unwrap()[..] == bytes.as_slice(), "{name}");
            assert!(t.metadata.is_empty());
        }
        // The import keeps the order of the bytes in the source.
        let bytes = std::fs::read(&src).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(r.keys().collect::<Vec<_>>(), meta.offset_keys());
        // Export again: the bytes of the tensors are those the crate wrote.
        let again = dir.path().join("again.safetensors");
        converter().export(&dst, &again).unwrap();
        let rows = st_rows(&again);
        for (name, _, _, b) in &tensors {
            assert!(&rows[name].2 == b, "{name}");
        }
        assert_eq!(
            st_metadata(&again),
            HashMap::from([("format".to_owned(), "pt".to_owned())])
        );
    }
}

#[test]
fn dtypes_deathtensors_lacks_are_refused_on_import() {
    let dir = tempfile::tempdir().unwrap();
    let data = [0u8; 4];
    for dtype in [Dtype::F8_E8M0, Dtype::F8_E4M3FNUZ, Dtype::F8_E5M2FNUZ] {
        let views = vec![("scales", TensorView::new(dtype, vec![4], &data).unwrap())];
        let src = dir.path().join("f8.safetensors");
        safetensors::serialize_to_file(views, None, &src).unwrap();
        let dst = dir.path().join("f8.deathtensors");
        let err = converter().import(&src, &dst, &opts(None, None)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::UnsupportedDtype(_)), "{err:?}");
        assert!(
            msg.contains("\"scales\"") && msg.contains(&format!("{dtype:?}")),
            "{msg}"
        );
        assert!(!dst.exists());
    }
}

#[test]
fn bad_sources_are_format_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("out.deathtensors");
    let (good, _) = crate_written(dir.path());
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", vec![1, 2, 3]),
        ("huge header length", u64::MAX.to_le_bytes().to_vec()),
        ("truncated data", bytes[..bytes.len() - 1].to_vec()),
        ("extra data", [bytes.clone(), vec![0]].concat()),
        ("not json", [8u64.to_le_bytes().to_vec(), b"{{{{{{{{".to_vec()].concat()),
        ("bad offsets", {
            let h = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
            [(h.len() as u64).to_le_bytes().to_vec(), h.to_vec(), vec![0; 4]].concat()
        }),
        ("a shape past the format's 63-bit extent", {
            let h = br#"{"a":{"dtype":"F32","shape":[0,9223372036854775808],"data_offsets":[0,0]}}"#;
            [(h.len() as u64).to_le_bytes().to_vec(), h.to_vec()].concat()
        }),
        ("a duplicate key in reserved metadata", {
            let h = br#"{"__metadata__":{"__deathtensors_json__":"[\"k\"]","k":"{\"a\":1,\"a\":2}"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
            [(h.len() as u64).to_le_bytes().to_vec(), h.to_vec(), vec![0]].concat()
        }),
        ("bad reserved metadata", {
            let h = br#"{"__metadata__":{"__deathtensors_json__":"[1"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
            [(h.len() as u64).to_le_bytes().to_vec(), h.to_vec(), vec![0]].concat()
        }),
    ];
    for (what, content) in cases {
        let src = dir.path().join("bad.safetensors");
        std::fs::write(&src, &content).unwrap();
        let err = converter().import(&src, &dst, &opts(None, None)).expect_err(what);
        assert!(err.is_bad_file(), "{what}: {err:?}");
        assert!(err.to_string().contains("bad.safetensors"), "{what}: {err}");
        assert!(!dst.exists(), "{what}");
        // Read by ranges, the same source is refused the same way.
        let source = Reads::new(&content);
        let err = converter()
            .import_from(
                &source,
                content.len() as u64,
                "remote.safetensors",
                &dst,
                &opts(None, None),
            )
            .expect_err(what);
        assert!(err.is_bad_file(), "{what}: {err:?}");
        assert!(err.to_string().contains("remote.safetensors"), "{what}: {err}");
        assert!(!dst.exists(), "{what}");
    }
    let err = converter().import(dir.path(), &dst, &opts(None, None)).unwrap_err();
    assert!(err.is_bad_file(), "{err:?}");
    let err = converter()
        .import(&dir.path().join("missing.safetensors"), &dst, &opts(None, None))
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(hidden_entries(dir.path()).is_empty());
}

#[test]
fn tensors_at_the_same_offsets_import_in_name_order_every_time() {
    // Regression: the crate orders tensors of equal offsets (empty ones) as its
    // hash map iterates, so two imports of one file could differ.
    let dir = tempfile::tempdir().unwrap();
    let mut header = String::from("{");
    for name in ["e3", "e0", "e5", "e1", "e4", "e2"] {
        header += &format!(r#""{name}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}},"#);
    }
    header += r#""a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let bytes = [
        (header.len() as u64).to_le_bytes().to_vec(),
        header.into_bytes(),
        vec![0, 0, 128, 63],
    ]
    .concat();
    let src = dir.path().join("empties.safetensors");
    std::fs::write(&src, &bytes).unwrap();
    let expected = ["e0", "e1", "e2", "e3", "e4", "e5", "a"];
    for round in 0..10 {
        let dst = dir.path().join(format!("{round}.deathtensors"));
        converter().import(&src, &dst, &opts(None, None)).unwrap();
        assert_eq!(
            DtReader::open(&dst).unwrap().keys().collect::<Vec<_>>(),
            expected,
            "import {round}"
        );
        converter()
            .import_from(
                &Reads::new(&bytes),
                bytes.len() as u64,
                "remote",
                &dst,
                &opts(None, None),
            )
            .unwrap();
        assert_eq!(
            DtReader::open(&dst).unwrap().keys().collect::<Vec<_>>(),
            expected,
            "import_from {round}"
        );
    }
}

/// A source in memory that records the reads made of it, and can be made to fail.
struct Reads<'a> {
    bytes: &'a [u8],
    /// `(offset, length)` of every read, in order.
    log: Mutex<Vec<(u64, usize)>>,
    /// Reads at or past this offset fail.
    fail_from: u64,
}

impl<'a> Reads<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reads {
            bytes,
            log: Mutex::new(Vec::new()),
            fail_from: u64::MAX,
        }
    }

    fn log(&self) -> Vec<(u64, usize)> {
        self.log.lock().unwrap().clone()
    }
}

impl ByteSource for Reads<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> deathtensors::Result<()> {
        self.log.lock().unwrap().push((offset, buf.len()));
        if offset + buf.len() as u64 > self.fail_from {
            return Err(Error::InvalidArgument("the connection dropped".into()));
        }
        self.bytes.read_at(offset, buf)
    }
}

/// A file of the crate's with a tensor big enough for chunks and a filter
/// trial, and BOOL bytes other than 0 and 1 (true to every reader).
fn streamed_source(dir: &Path, big_bytes: usize) -> (PathBuf, Vec<u8>) {
    let big = noise(big_bytes, 9);
    let bools = [0u8, 1, 2, 255, 0, 7];
    let views = vec![
        ("big", TensorView::new(Dtype::F32, vec![big_bytes / 4], &big).unwrap()),
        ("mask", TensorView::new(Dtype::BOOL, vec![6], &bools).unwrap()),
        ("tiny", TensorView::new(Dtype::BF16, vec![2], &[1, 2, 3, 4]).unwrap()),
        ("none", TensorView::new(Dtype::F16, vec![0, 3], &[]).unwrap()),
    ];
    let path = dir.join("stream.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn a_source_read_by_ranges_converts_as_the_file_does() {
    let dir = tempfile::tempdir().unwrap();
    let (src, bytes) = streamed_source(dir.path(), 3 << 20);
    for options in [
        opts(None, None),
        opts(Some("zstd"), Some("sha256")),
        opts(Some("lz4"), Some("blake3")),
    ] {
        let local = dir.path().join("local.deathtensors");
        let remote = dir.path().join("remote.deathtensors");
        converter().import(&src, &local, &options).unwrap();
        let source = Reads::new(&bytes);
        converter()
            .import_from(&source, bytes.len() as u64, "remote", &remote, &options)
            .unwrap();
        assert!(
            std::fs::read(&local).unwrap() == std::fs::read(&remote).unwrap(),
            "{options:?}"
        );
        assert_eq!(
            &DtReader::open(&remote).unwrap().read_tensor("mask").unwrap()[..],
            [0, 1, 1, 1, 0, 1]
        );
        // Every byte is read about once: the header, the tensors, and at most
        // the filter trial's sample (an eighth of "big") again.
        let log = source.log();
        let read: usize = log.iter().map(|&(_, n)| n).sum();
        assert!(
            read >= bytes.len() && read <= bytes.len() + bytes.len() / 8 + 1024,
            "{read} of {}",
            bytes.len()
        );
        assert!(log.iter().all(|&(o, n)| o + n as u64 <= bytes.len() as u64));
    }
}

#[test]
fn reads_of_a_source_are_bounded_whatever_the_tensor_size() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = streamed_source(dir.path(), 20 << 20);
    let options = WriteOptions {
        chunk_bytes: 1 << 20,
        ..opts(Some("lz4"), None)
    };
    for options in [opts(None, None), options] {
        let source = Reads::new(&bytes);
        let dst = dir.path().join("bounded.deathtensors");
        converter()
            .import_from(&source, bytes.len() as u64, "remote", &dst, &options)
            .unwrap();
        let largest = source.log().iter().map(|&(_, n)| n).max().unwrap();
        // 8 MiB pieces uncompressed; a batch of chunks per thread compressed.
        let bound = (8 << 20).max((rayon::current_num_threads() * 4) << 20);
        assert!(largest <= bound, "{options:?}: a read of {largest} bytes");
    }
}

#[test]
fn a_failing_source_fails_the_conversion_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = streamed_source(dir.path(), 1 << 20);
    let dst = dir.path().join("out.deathtensors");
    for fail_from in [4, 100, bytes.len() as u64 / 2, bytes.len() as u64 - 1] {
        for options in [opts(None, None), opts(Some("zstd"), Some("sha256"))] {
            let source = Reads {
                fail_from,
                ..Reads::new(&bytes)
            };
            let err = converter()
                .import_from(&source, bytes.len() as u64, "remote", &dst, &options)
                .unwrap_err();
            assert!(err.to_string().contains("the connection dropped"), "{err}");
            assert!(!dst.exists());
        }
    }
    assert!(hidden_entries(dir.path()).is_empty());
    // An oversized header length is refused before anything past the prefix is read.
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&200_000_000u64.to_le_bytes());
    let source = Reads::new(&huge);
    let err = converter()
        .import_from(&source, 300_000_000, "remote", &dst, &opts(None, None))
        .unwrap_err();
    assert!(err.is_bad_file() && err.to_string().contains("over the limit"), "{err}");
    assert_eq!(source.log(), [(0, 8)]);
}

#[test]
fn converters_that_read_only_files_say_so() {
    struct FilesOnly;
    impl deathtensors::registry::Plugin for FilesOnly {
        fn id(&self) -> &'static str {
            "files-only"
        }
        fn summary(&self) -> &'static str {
            "a converter of local files"
        }
    }
    impl Converter for FilesOnly {
        fn extensions(&self) -> &'static [&'static str] {
            &["fo"]
        }
        fn import(&self, _: &Path, _: &Path, _: &WriteOptions) -> deathtensors::Result<()> {
            Ok(())
        }
        fn export(&self, _: &Path, _: &Path) -> deathtensors::Result<()> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let err = FilesOnly
        .import_from(
            &Reads::new(b"x"),
            1,
            "remote.fo",
            &dir.path().join("o.deathtensors"),
            &opts(None, None),
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("download remote.fo first"), "{err}");
}

#[test]
fn aliases_export_as_tensors_of_their_own_and_sparse_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = noise(24, 7);
    let path = dir.path().join("tied.deathtensors");
    let entries = [
        Entry::Data(tensor("embed", "F32", &[2, 3], &w)),
        Entry::Alias {
            name: "lm_head".into(),
            target: "embed".into(),
            metadata: obj(json!({"tied": true})),
        },
    ];
    write_entries(&path, &entries, &Map::new(), &opts(Some("zstd"), None)).unwrap();
    let st = dir.path().join("tied.safetensors");
    converter().export(&path, &st).unwrap();
    let rows = st_rows(&st);
    assert_eq!(rows["embed"].2, w);
    assert_eq!(rows["lm_head"].2, w);
    let back = dir.path().join("tied2.deathtensors");
    converter().import(&st, &back, &opts(None, None)).unwrap();
    let r = DtReader::open(&back).unwrap();
    assert_eq!(r.tensor("lm_head").unwrap().metadata, obj(json!({"tied": true})));
    assert!(r.tensor("lm_head").unwrap().alias_of.is_none());

    let values = noise(8, 3);
    let indices: Vec<u8> = [0i64, 1, 1, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let sparse = dir.path().join("sparse.deathtensors");
    let entries = [Entry::Layout {
        primary: tensor("sp", "F32", &[2], &values),
        layout: LayoutHeader {
            id: "sparse_coo".into(),
            shape: vec![2, 2],
            params: Map::new(),
            parts: obj(json!({"indices": "sp.indices"})),
        },
        parts: vec![tensor("sp.indices", "I64", &[2, 2], &indices)],
    }];
    write_entries(&sparse, &entries, &Map::new(), &opts(None, None)).unwrap();
    let dst = dir.path().join("sparse.safetensors");
    let err = converter().export(&sparse, &dst).unwrap_err();
    assert!(
        err.to_string().contains("\"sp\"") && err.to_string().contains("sparse"),
        "{err}"
    );
    assert!(!dst.exists());
}

#[test]
fn export_replaces_the_destination_atomically_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = noise(40, 1);
    let src = write_valid(
        dir.path(),
        "o.deathtensors",
        &[
            tensor("zeta", "U8", &[8], &a[..8]),
            tensor("alpha", "F32", &[2], &a[8..16]),
            tensor("mid", "F64", &[3], &a[16..40]),
        ],
        &Map::new(),
        &opts(None, None),
    );
    let dst = dir.path().join("o.safetensors");
    std::fs::write(&dst, b"old contents").unwrap();
    converter().export(&src, &dst).unwrap();
    let raw = st_metadata(&dst);
    assert_eq!(raw["__deathtensors_tensor_order__"], r#"["zeta","alpha","mid"]"#);
    let back = dir.path().join("o2.deathtensors");
    converter().import(&dst, &back, &opts(None, None)).unwrap();
    assert_eq!(dt_rows(&back), dt_rows(&src));
    assert!(hidden_entries(dir.path()).is_empty());

    // An order that is already safetensors' own is not recorded.
    let sorted = write_valid(
        dir.path(),
        "s.deathtensors",
        &[
            tensor("alpha", "F32", &[2], &a[8..16]),
            tensor("zeta", "U8", &[8], &a[..8]),
        ],
        &Map::new(),
        &opts(None, None),
    );
    converter().export(&sorted, &dst).unwrap();
    assert!(st_metadata(&dst).is_empty());
}

#[test]
fn empty_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_valid(dir.path(), "e.deathtensors", &[], &Map::new(), &opts(None, None));
    let st = dir.path().join("e.safetensors");
    converter().export(&src, &st).unwrap();
    assert!(st_rows(&st).is_empty());
    let back = dir.path().join("e2.deathtensors");
    converter().import(&st, &back, &opts(None, None)).unwrap();
    assert!(DtReader::open(&back).unwrap().tensors().is_empty());
}

#[test]
fn a_corrupt_tensor_fails_the_export_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let first = noise(4096, 1);
    let second: Vec<u8> = (0..1 << 16).map(|i| (i % 7) as u8).collect();
    let src = write_valid(
        dir.path(),
        "z.deathtensors",
        &[
            tensor("a", "U8", &[4096], &first),
            tensor("b", "U8", &[1 << 16], &second),
        ],
        &Map::new(),
        &opts(Some("zstd"), None),
    );
    let chunk = {
        let r = DtReader::open(&src).unwrap();
        let chunks = r.tensor("b").unwrap().chunks.clone().unwrap();
        assert!(!chunks[0].is_raw(), "the test needs a compressed chunk");
        chunks[0].clone()
    };
    let mut bytes = std::fs::read(&src).unwrap();
    let at = (chunk.offset() + chunk.stored_len() / 2) as usize;
    bytes[at] ^= 0xFF;
    std::fs::write(&src, &bytes).unwrap();

    let dst = dir.path().join("z.safetensors");
    let err = converter().export(&src, &dst).unwrap_err();
    assert!(
        matches!(err, Error::CorruptChunk { ref name, .. } if name == "b"),
        "{err:?}"
    );
    assert!(!dst.exists());
    assert!(
        hidden_entries(dir.path()).is_empty(),
        "{:?}",
        hidden_entries(dir.path())
    );
}
