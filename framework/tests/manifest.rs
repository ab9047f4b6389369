//! The manifest sidecar of real files. (The framework's unit tests cannot
//! link the plugin crate against the same copy of the framework, so this is
//! an integration test.)

use deathtensors::manifest::{manifest, read, write_manifest};
use deathtensors::reader::{hex, DtReader};
use deathtensors::writer::{write_file, TensorData, WriteOptions};
use deathtensors_plugins as _;
use serde_json::{json, Map};

#[test]
fn manifest_of_a_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.deathtensors");
    let data: Vec<u8> = (0..24u8).collect();
    let mut meta = Map::new();
    meta.insert("layer".into(), json!(3));
    let tensors = [
        TensorData {
            name: "w".into(),
            dtype: "F32".into(),
            shape: vec![2, 3],
            data: &data,
            metadata: meta,
        },
        TensorData {
            name: "b".into(),
            dtype: "U8".into(),
            shape: vec![4],
            data: &data[..4],
            metadata: Map::new(),
        },
    ];
    let mut global = Map::new();
    global.insert("model".into(), json!("tiny"));
    let options = WriteOptions {
        codec: Some("zstd".into()),
        checksum: Some("sha256".into()),
        ..Default::default()
    };
    write_file(&path, &tensors, &global, &options).unwrap();
    let reader = DtReader::open(&path).unwrap();
    let written = write_manifest(&reader, None).unwrap();
    assert_eq!(written, dir.path().join("m.deathtensors.manifest.json"));
    let m = read(&written).unwrap();
    assert_eq!(m, manifest(&reader).unwrap());
    assert_eq!(m["manifest_version"], json!(1));
    assert_eq!(m["file_name"], json!("m.deathtensors"));
    assert_eq!(m["file_size"], json!(std::fs::metadata(&path).unwrap().len()));
    assert_eq!(m["format_version"], json!(1));
    assert_eq!(m["flags"], json!(3));
    assert_eq!(m["codec"], json!("zstd"));
    assert_eq!(m["checksum"], json!("sha256"));
    assert_eq!(m["digest"], json!(hex(&reader.stored_digest().unwrap())));
    assert_eq!(m["metadata"], json!({"model": "tiny"}));
    assert_eq!(m["tensor_count"], json!(2));
    assert_eq!(m["total_nbytes"], json!(28));
    assert_eq!(m["tensors"][0]["shape"], json!([2, 3]));
    assert_eq!(m["tensors"][0]["metadata"], json!({"layer": 3}));
    assert_eq!(m["header"], serde_json::to_value(&reader.layout().header).unwrap());
    assert_eq!(m["header"]["tensors"][1]["name"], json!("b"));
    // Nothing was decoded to build it.
    assert_eq!(reader.decoded_bytes(), 0);

    let other = dir.path().join("elsewhere.json");
    assert_eq!(write_manifest(&reader, Some(&other)).unwrap(), other);
    assert_eq!(read(&other).unwrap(), m);

    // A file that is not a manifest is a format error naming the file.
    let err = read(&path).unwrap_err();
    assert_eq!(err.class_name(), "FormatError");
    assert!(err.to_string().contains("not a deathtensors manifest"), "{err}");
    std::fs::write(&other, b"{\"a\": 1}").unwrap();
    assert!(read(&other).unwrap_err().to_string().contains("manifest_version"));
}

#[test]
fn uncompressed_file_without_footer_has_null_codec_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.deathtensors");
    let data = [1u8, 0, 1];
    let tensors = [TensorData {
        name: "mask".into(),
        dtype: "BOOL".into(),
        shape: vec![3],
        data: &data,
        metadata: Map::new(),
    }];
    write_file(&path, &tensors, &Map::new(), &WriteOptions::default()).unwrap();
    let m = manifest(&DtReader::open(&path).unwrap()).unwrap();
    assert_eq!(m["codec"], json!(null));
    assert_eq!(m["checksum"], json!(null));
    assert_eq!(m["digest"], json!(null));
    assert_eq!(m["tensors"][0]["chunks"], json!(null));
    assert_eq!(m["tensors"][0]["dtype"], json!("BOOL"));
}
