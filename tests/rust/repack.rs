//! `repack_file`: rewriting a file with another codec, level or checksum.

use deathtensors_plugins as _;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use deathtensors::format::LayoutHeader;
use deathtensors::reader::DtReader;
use deathtensors::writer::{repack_file, write_entries, Entry, RepackOptions};
use deathtensors::Error;
use deathtensors_integration_tests::{noise, opts, pattern, tensor};
use serde_json::{json, Map, Value};

const CODECS: [Option<&str>; 3] = [None, Some("zstd"), Some("lz4")];
const CHECKSUMS: [Option<&str>; 3] = [None, Some("sha256"), Some("blake3")];

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn repack(codec: Option<Option<&str>>, level: Option<i32>, checksum: Option<Option<&str>>) -> RepackOptions {
    RepackOptions {
        codec: codec.map(|c| c.map(str::to_owned)),
        level,
        checksum: checksum.map(|c| c.map(str::to_owned)),
        durable: false,
    }
}

/// A file of every kind of entry: tensors over several chunks, one with
/// metadata, an alias with metadata of its own, a sparse tensor, an empty one.
fn write_mixed(path: &Path, codec: Option<&str>, checksum: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let big = pattern(300_000, 1); // several 64 KiB chunks
    let weights: Vec<u8> = (0..40_000u32)
        .flat_map(|i| ((i % 977) as f32 * 0.01).to_le_bytes())
        .collect();
    let values = noise(12, 3);
    let indices: Vec<u8> = [0i64, 1, 2, 2, 1, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut t = tensor("weights", "F32", &[200, 200], &weights);
    t.metadata = obj(json!({"layer": 1, "init": "kaiming"}));
    let entries = [
        Entry::Data(tensor("big", "U8", &[300_000], &big)),
        Entry::Data(t),
        Entry::Alias {
            name: "tied".into(),
            target: "weights".into(),
            metadata: obj(json!({"tied": true})),
        },
        Entry::Layout {
            primary: tensor("sp", "F32", &[3], &values),
            layout: LayoutHeader {
                id: "sparse_coo".into(),
                shape: vec![3, 3],
                params: Map::new(),
                parts: obj(json!({"indices": "sp.indices"})),
            },
            parts: vec![tensor("sp.indices", "I64", &[2, 3], &indices)],
        },
        Entry::Data(tensor("empty", "F16", &[0, 4], &[])),
    ];
    let mut options = opts(codec, checksum);
    options.chunk_bytes = 64 << 10;
    write_entries(path, &entries, &obj(json!({"model": "mixed", "n": [1, 2]})), &options).unwrap();
    vec![
        ("big".into(), big),
        ("weights".into(), weights.clone()),
        ("tied".into(), weights),
        ("sp".into(), values),
        ("sp.indices".into(), indices),
        ("empty".into(), Vec::new()),
    ]
}

/// Everything but the storage of `a` and `b` is the same: names in order,
/// dtypes, shapes, metadata, aliases, layouts, parts, values.
fn assert_same_contents(a: &DtReader, b: &DtReader, values: &[(String, Vec<u8>)]) {
    assert_eq!(a.metadata(), b.metadata());
    let names = |r: &DtReader| r.tensors().iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b));
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(x.dtype.id(), y.dtype.id(), "{}", x.name);
        assert_eq!(x.shape, y.shape, "{}", x.name);
        assert_eq!(x.metadata, y.metadata, "{}", x.name);
        assert_eq!(x.alias_of, y.alias_of, "{}", x.name);
        assert_eq!(x.layout, y.layout, "{}", x.name);
        assert_eq!(x.part_of, y.part_of, "{}", x.name);
    }
    for (name, want) in values {
        assert_eq!(&b.read_tensor(name).unwrap()[..], &want[..], "{name}");
    }
}

#[test]
fn every_mode_repacks_to_every_other_mode() {
    let dir = tempfile::tempdir().unwrap();
    for from_codec in CODECS {
        for from_sum in CHECKSUMS {
            let src = dir.path().join("src.deathtensors");
            let values = write_mixed(&src, from_codec, from_sum);
            let source = DtReader::open(&src).unwrap();
            for to_codec in CODECS {
                for to_sum in CHECKSUMS {
                    let dst = dir.path().join("dst.deathtensors");
                    repack_file(&src, &dst, &repack(Some(to_codec), None, Some(to_sum))).unwrap();
                    let out = DtReader::open(&dst).unwrap();
                    let mode = format!("{from_codec:?}/{from_sum:?} -> {to_codec:?}/{to_sum:?}");
                    assert_eq!(out.codec().map(|c| c.id()), to_codec, "{mode}");
                    assert_eq!(out.checksum().map(|c| c.id()), to_sum, "{mode}");
                    if to_sum.is_some() {
                        out.verify().unwrap();
                    }
                    assert_same_contents(&source, &out, &values);
                }
            }
        }
    }
}

#[test]
fn settings_left_out_are_kept_and_unchanged_chunks_are_copied_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.deathtensors");
    let mut options = opts(Some("zstd"), Some("blake3"));
    options.level = Some(7);
    let weights = pattern(200_000, 9);
    write_entries(
        &src,
        &[Entry::Data(tensor("w", "U8", &[200_000], &weights))],
        &Map::new(),
        &options,
    )
    .unwrap();
    let dst = dir.path().join("dst.deathtensors");
    repack_file(&src, &dst, &repack(None, None, None)).unwrap();
    let (a, b) = (DtReader::open(&src).unwrap(), DtReader::open(&dst).unwrap());
    assert_eq!(b.codec().map(|c| c.id()), Some("zstd"));
    assert_eq!(b.layout().header.compression.as_ref().map(|c| c.level), Some(7));
    assert_eq!(b.checksum().map(|c| c.id()), Some("blake3"));
    // Same codec and level: the stored chunks are the source's, byte for byte.
    let stored = |r: &DtReader| {
        let info = r.tensor("w").unwrap();
        let mut buf = vec![0u8; info.stored_len as usize];
        r.read_stored(info.file_offset, &mut buf).unwrap();
        buf
    };
    assert_eq!(stored(&a), stored(&b));

    // Only the checksum asked: still copied as stored.
    repack_file(&src, &dst, &repack(None, None, Some(None))).unwrap();
    let b = DtReader::open(&dst).unwrap();
    assert!(b.checksum().is_none());
    assert_eq!(stored(&a), stored(&b));

    // Another level re-encodes: the header names it and the chunks change.
    repack_file(&src, &dst, &repack(None, Some(1), None)).unwrap();
    let b = DtReader::open(&dst).unwrap();
    assert_eq!(b.layout().header.compression.as_ref().map(|c| c.level), Some(1));
    assert_ne!(stored(&a), stored(&b));
    assert_eq!(&b.read_tensor("w").unwrap()[..], &weights[..]);

    // A new codec without a level takes the codec's default, not the source's 7.
    repack_file(&src, &dst, &repack(Some(Some("lz4")), None, None)).unwrap();
    let b = DtReader::open(&dst).unwrap();
    let lz4 = deathtensors::registry::codecs().unwrap().get("lz4").unwrap();
    assert_eq!(
        b.layout().header.compression.as_ref().map(|c| c.level),
        Some(lz4.effective_level(lz4.default_level()))
    );
}

#[test]
fn a_file_repacks_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.deathtensors");
    let values = write_mixed(&path, None, None);
    let before = DtReader::open(&path).unwrap();
    repack_file(&path, &path, &repack(Some(Some("zstd")), Some(5), Some(Some("sha256")))).unwrap();
    let after = DtReader::open(&path).unwrap();
    assert_eq!(after.codec().map(|c| c.id()), Some("zstd"));
    after.verify().unwrap();
    assert_same_contents(&before, &after, &values);
    assert!(fs::metadata(&path).unwrap().len() < before.file_len());
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["m.deathtensors"]);
}

#[test]
fn a_damaged_source_is_refused_and_the_destination_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    for checksum in [Some("sha256"), None] {
        let src = dir.path().join("src.deathtensors");
        write_mixed(&src, Some("zstd"), checksum);
        let info = DtReader::open(&src).unwrap().tensor("big").unwrap().clone();
        let chunk = info
            .chunks
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| !c.is_raw())
            .unwrap()
            .clone();
        let file = fs::OpenOptions::new().write(true).open(&src).unwrap();
        file.write_all_at(&[0xFF; 8], chunk.offset()).unwrap();
        let dst = dir.path().join("dst.deathtensors");
        fs::write(&dst, b"earlier contents").unwrap();
        // To lz4 (every chunk decoded) and to zstd at another level (the same).
        for codec in ["lz4", "zstd"] {
            let err = repack_file(&src, &dst, &repack(Some(Some(codec)), Some(9), None)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("src.deathtensors"), "{text}");
            match (checksum, err.root()) {
                (Some(_), Error::ChecksumMismatch { .. }) => {}
                (None, Error::CorruptChunk { name, offset, .. }) => {
                    assert_eq!(name, "big");
                    assert_eq!(*offset, chunk.offset());
                }
                (_, other) => panic!("{checksum:?} to {codec}: unexpected {other:?}"),
            }
            assert_eq!(fs::read(&dst).unwrap(), b"earlier contents");
        }
    }
}

#[test]
fn bad_options_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.deathtensors");
    write_mixed(&src, None, None);
    let dst = dir.path().join("dst.deathtensors");
    let err = repack_file(&src, &dst, &repack(None, Some(3), None)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("needs a codec"), "{err}");
    let err = repack_file(&src, &dst, &repack(Some(Some("zstd")), Some(99), None)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = repack_file(&src, &dst, &repack(Some(Some("brotli")), None, None)).unwrap_err();
    assert!(matches!(err, Error::UnknownPlugin { .. }), "{err:?}");
    let err = repack_file(&src, &dst, &repack(None, None, Some(Some("md5")))).unwrap_err();
    assert!(matches!(err, Error::UnknownPlugin { .. }), "{err:?}");
    assert!(!dst.exists());
    let err = repack_file(dir.path().join("missing.deathtensors"), &dst, &RepackOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn a_foreign_file_is_pointed_to_convert() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("model.safetensors");
    let data = [0u8; 16];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    safetensors::serialize_to_file([("w", view)], None, &src).unwrap();
    let dst = dir.path().join("out.deathtensors");
    let err = repack_file(&src, &dst, &RepackOptions::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("is a safetensors file"), "{err}");
    assert!(err.to_string().contains("deathtensors convert"), "{err}");
    // Named otherwise, the same bytes are simply not a deathtensors file.
    let other = dir.path().join("model.bin");
    fs::copy(&src, &other).unwrap();
    let err = repack_file(&other, &dst, &RepackOptions::default()).unwrap_err();
    assert!(matches!(err.root(), Error::BadMagic { .. }), "{err:?}");
    assert!(!dst.exists());
}
