//! The plugin registry as the built-in plugins fill it.

use deathtensors_plugins as _;

use deathtensors::registry::{self, DtypeKind};
use deathtensors::Error;

/// id, item size, kind, torch name, numpy name.
type DtypeRow = (
    &'static str,
    usize,
    DtypeKind,
    Option<&'static str>,
    Option<&'static str>,
);

const DTYPES: [DtypeRow; 17] = [
    ("BOOL", 1, DtypeKind::Bool, Some("bool"), Some("|b1")),
    ("U8", 1, DtypeKind::UnsignedInt, Some("uint8"), Some("|u1")),
    ("I8", 1, DtypeKind::SignedInt, Some("int8"), Some("|i1")),
    ("U16", 2, DtypeKind::UnsignedInt, Some("uint16"), Some("<u2")),
    ("I16", 2, DtypeKind::SignedInt, Some("int16"), Some("<i2")),
    ("U32", 4, DtypeKind::UnsignedInt, Some("uint32"), Some("<u4")),
    ("I32", 4, DtypeKind::SignedInt, Some("int32"), Some("<i4")),
    ("U64", 8, DtypeKind::UnsignedInt, Some("uint64"), Some("<u8")),
    ("I64", 8, DtypeKind::SignedInt, Some("int64"), Some("<i8")),
    ("F16", 2, DtypeKind::Float, Some("float16"), Some("<f2")),
    ("BF16", 2, DtypeKind::Float, Some("bfloat16"), None),
    ("F32", 4, DtypeKind::Float, Some("float32"), Some("<f4")),
    ("F64", 8, DtypeKind::Float, Some("float64"), Some("<f8")),
    ("C64", 8, DtypeKind::Complex, Some("complex64"), Some("<c8")),
    ("C128", 16, DtypeKind::Complex, Some("complex128"), Some("<c16")),
    ("F8_E4M3", 1, DtypeKind::Float, Some("float8_e4m3fn"), None),
    ("F8_E5M2", 1, DtypeKind::Float, Some("float8_e5m2"), None),
];

fn sorted(mut ids: Vec<&'static str>) -> Vec<&'static str> {
    ids.sort_unstable();
    ids
}

#[test]
fn codecs_are_zstd_and_lz4() {
    let codecs = registry::codecs().unwrap();
    assert_eq!(codecs.ids().collect::<Vec<_>>(), ["lz4", "zstd"]);
    assert_eq!(codecs.get("zstd").unwrap().id(), "zstd");
    assert_eq!(codecs.get("zstd").unwrap().default_level(), 3);
    assert_eq!(codecs.get("lz4").unwrap().id(), "lz4");
}

#[test]
fn checksums_are_sha256_and_blake3() {
    let checksums = registry::checksums().unwrap();
    assert_eq!(checksums.ids().collect::<Vec<_>>(), ["blake3", "sha256"]);
}

#[test]
fn the_seventeen_dtypes_are_registered() {
    let dtypes = registry::dtypes().unwrap();
    let expected: Vec<&str> = DTYPES.iter().map(|d| d.0).collect();
    assert_eq!(expected.len(), 17);
    assert_eq!(
        dtypes.ids().collect::<Vec<_>>(),
        sorted(expected),
        "ids are listed sorted"
    );
    for (id, size, kind, torch, numpy) in DTYPES {
        let d = dtypes.get(id).unwrap();
        assert_eq!(d.id(), id);
        assert_eq!(d.item_size(), size, "{id}");
        assert_eq!(d.kind(), kind, "{id}");
        assert_eq!(d.torch_name(), torch, "{id}");
        assert_eq!(d.numpy_name(), numpy, "{id}");
        assert!(!d.summary().is_empty());
    }
}

#[test]
fn lookups_are_exact_and_case_sensitive() {
    assert!(registry::codecs().unwrap().get("ZSTD").is_err());
    assert!(registry::codecs().unwrap().get(" zstd").is_err());
    assert!(registry::dtypes().unwrap().get("f32").is_err());
    assert!(registry::dtypes().unwrap().get("").is_err());
    assert!(registry::checksums().unwrap().get("SHA256").is_err());
}

#[test]
fn unknown_ids_are_unknown_plugin_errors_listing_what_is_available() {
    let cases: [(&str, Error, Vec<&str>); 3] = [
        (
            "codec",
            registry::codecs().unwrap().get("gzip").err().unwrap(),
            vec!["lz4", "zstd"],
        ),
        (
            "checksum",
            registry::checksums().unwrap().get("md5").err().unwrap(),
            vec!["blake3", "sha256"],
        ),
        (
            "dtype",
            registry::dtypes().unwrap().get("F99").err().unwrap(),
            sorted(DTYPES.iter().map(|d| d.0).collect()),
        ),
    ];
    for (expected_kind, err, ids) in cases {
        match &err {
            Error::UnknownPlugin { kind, id, available } => {
                assert_eq!(*kind, expected_kind);
                assert!(["gzip", "md5", "F99"].contains(&id.as_str()));
                assert_eq!(available, &ids.join(", "));
            }
            other => panic!("expected UnknownPlugin, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(expected_kind), "{msg}");
        for id in ids {
            assert!(msg.contains(id), "{msg} should list {id}");
        }
        assert_eq!(err.class_name(), "PluginError");
        assert!(!err.is_bad_file());
    }
    let err = registry::converters().unwrap().get("onnx").err().unwrap();
    assert!(
        matches!(err, Error::UnknownPlugin { kind: "converter", ref id, .. } if id == "onnx"),
        "{err:?}"
    );
}

#[test]
fn list_plugins_shows_every_builtin_with_its_crate() {
    let rows = registry::list_plugins().unwrap();
    let of = |kind: &str| -> Vec<&str> { rows.iter().filter(|r| r.kind == kind).map(|r| r.id).collect() };
    assert_eq!(of("codec"), ["lz4", "zstd"]);
    assert_eq!(of("checksum"), ["blake3", "sha256"]);
    assert_eq!(of("filter"), ["bytegroup"]);
    assert_eq!(of("layout"), ["sparse_coo"]);
    assert_eq!(of("dtype"), sorted(DTYPES.iter().map(|d| d.0).collect()));
    for row in &rows {
        assert!(
            ["codec", "checksum", "filter", "dtype", "layout", "converter"].contains(&row.kind),
            "{row:?}"
        );
        assert!(!row.summary.is_empty(), "{row:?}");
    }
    for row in rows.iter().filter(|r| r.kind != "converter") {
        assert_eq!(row.crate_name, "deathtensors-plugins", "{row:?}");
    }
    // Grouped by kind in a fixed order, sorted by id within a kind.
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind).collect();
    let mut grouped = kinds.clone();
    grouped.dedup();
    let order = ["codec", "checksum", "filter", "dtype", "layout", "converter"];
    assert!(grouped.iter().all(|k| order.contains(k)));
    assert!(grouped
        .windows(2)
        .all(|w| order.iter().position(|k| k == &w[0]) < order.iter().position(|k| k == &w[1])));
    assert_eq!(rows.len(), 2 + 2 + 1 + 17 + 1 + of("converter").len());
    // Stable across calls.
    assert_eq!(registry::list_plugins().unwrap(), rows);
}

#[test]
fn codecs_round_trip_through_the_trait_and_check_lengths() {
    let raw: Vec<u8> = (0..50_000u32).map(|i| (i % 97) as u8 ^ (i / 1000) as u8).collect();
    for codec in registry::codecs().unwrap().entries().map(|(c, _)| c) {
        let packed = codec.compress(&raw, codec.default_level()).unwrap();
        assert!(packed.len() < raw.len(), "{} compresses a repetitive input", codec.id());
        let mut out = vec![0u8; raw.len()];
        codec.decompress_into(&packed, &mut out).unwrap();
        assert_eq!(out, raw, "{}", codec.id());
        let mut short = vec![0u8; raw.len() - 1];
        assert!(codec.decompress_into(&packed, &mut short).is_err(), "{}", codec.id());
        let mut long = vec![0u8; raw.len() + 1];
        assert!(codec.decompress_into(&packed, &mut long).is_err(), "{}", codec.id());
        assert!(codec.decompress_into(&[], &mut out).is_err(), "{}", codec.id());
        let empty = codec.compress(&[], codec.default_level()).unwrap();
        codec.decompress_into(&empty, &mut []).unwrap();
    }
}

#[test]
fn checksums_match_known_vectors_and_stream() {
    let vectors = [
        (
            "sha256",
            &b""[..],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            "sha256",
            b"abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            "blake3",
            b"",
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        ),
        (
            "blake3",
            b"abc",
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
        ),
    ];
    let checksums = registry::checksums().unwrap();
    for (id, input, hex) in vectors {
        let mut h = checksums.get(id).unwrap().hasher();
        h.update(input);
        assert_eq!(deathtensors::reader::hex(&h.finish()), hex, "{id}({input:?})");
    }
    let data: Vec<u8> = (0..3_000_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for algorithm in checksums.entries().map(|(c, _)| c) {
        let mut whole = algorithm.hasher();
        whole.update(&data);
        let mut pieces = algorithm.hasher();
        for piece in data.chunks(1_234_567) {
            pieces.update(piece);
        }
        pieces.update(&[]);
        assert_eq!(whole.finish(), pieces.finish(), "{}", algorithm.id());
    }
}

#[test]
fn plugin_crate_links() {
    assert_eq!(deathtensors_plugins::link(), 17);
    assert_eq!(deathtensors_plugins::dtypes::BUILTIN_DTYPE_COUNT, 17);
}
