//! Hostile input: one test per rule of the format, each on bytes crafted by
//! hand, asserting the specific error; plus a deterministic fuzz loop.
//!
//! Layout reminder: `data_start = 24 + header_len + nul_padding(header_len)`;
//! uncompressed tensors need `(data_start + begin) % 64 == 0`, so crafted
//! headers are padded with spaces ([`craft_aligned`]).

use deathtensors_plugins as _;

use deathtensors::format::{DEFAULT_MAX_HEADER_LEN, FLAG_CHECKSUM, FLAG_COMPRESSED, FLAG_ENCRYPTED, MAX_CHUNK_RAW_LEN};
use deathtensors::reader::{DtReader, ReadOptions};
use deathtensors::registry;
use deathtensors::Error;
use deathtensors_integration_tests::{
    craft, craft_aligned, noise, open_bytes, open_bytes_with, opts, pattern, preamble, read_everything, tensor,
    write_valid, Lcg,
};
use serde_json::{json, Map};

/// An uncompressed F32 tensor of 4 elements at the start of the data region.
const ONE_TENSOR: &str = r#"{"tensors":[{"name":"a","dtype":"F32","shape":[4],"offsets":[0,16]}]}"#;

fn sixteen() -> Vec<u8> {
    (1..=16).collect()
}

/// The error of opening `bytes` (what went wrong, under the context naming
/// the file); panics when they open, or when the error does not name the file.
fn open_err(bytes: &[u8]) -> Error {
    open_err_with(bytes, &ReadOptions::default())
}

fn open_err_with(bytes: &[u8], options: &ReadOptions) -> Error {
    match open_bytes_with(bytes, options) {
        Ok(r) => panic!("a hostile file opened: tensors {:?}", r.keys().collect::<Vec<_>>()),
        Err(Error::InFile { path, source }) => {
            assert!(path.ends_with("crafted.deathtensors"), "the error names {path:?}");
            *source
        }
        Err(e @ Error::Io { .. }) => e,
        Err(e) => panic!("an error that does not name the file: {e:?}"),
    }
}

/// `bytes` with a footer appended: the digest of everything after the preamble.
fn with_footer(mut bytes: Vec<u8>, algorithm: &str) -> Vec<u8> {
    let mut hasher = registry::checksums().unwrap().get(algorithm).unwrap().hasher();
    hasher.update(&bytes[24..]);
    bytes.extend_from_slice(&hasher.finish());
    bytes
}

fn assert_invalid_tensor(err: &Error, tensor: &str, needle: &str) {
    match err {
        Error::InvalidTensor { name, reason } => {
            assert_eq!(name, tensor, "{err}");
            assert!(reason.contains(needle), "reason {reason:?} should mention {needle:?}");
        }
        other => panic!("expected InvalidTensor for {tensor:?}, got {other:?}"),
    }
}

fn assert_invalid_header(err: &Error, needle: &str) {
    match err {
        Error::InvalidHeader(msg) => assert!(msg.contains(needle), "message {msg:?} should mention {needle:?}"),
        other => panic!("expected InvalidHeader, got {other:?}"),
    }
}

/// A compressed file holding one U8 tensor of `shape` with `chunks`, and `data`.
fn compressed(shape: &str, offsets: &str, chunks: &str, data: &[u8]) -> Vec<u8> {
    let json = format!(
        r#"{{"compression":{{"codec":"zstd","level":3}},"tensors":[{{"name":"c","dtype":"U8","shape":{shape},"offsets":{offsets},"chunks":{chunks}}}]}}"#
    );
    craft(FLAG_COMPRESSED, json.as_bytes(), data)
}

// ---------------------------------------------------------------- baselines

#[test]
fn crafted_baselines_open() {
    let reader = open_bytes(&craft_aligned(0, ONE_TENSOR, &sixteen())).unwrap();
    assert_eq!(&reader.read_tensor("a").unwrap()[..], &sixteen()[..]);

    // A footer the flags do not announce is just trailing bytes.
    let err = open_err(&with_footer(craft_aligned(0, ONE_TENSOR, &sixteen()), "sha256"));
    assert!(matches!(err, Error::TrailingBytes { extra: 32, .. }), "{err:?}");
    let json = r#"{"checksum":"blake3","tensors":[{"name":"a","dtype":"F32","shape":[4],"offsets":[0,16]}]}"#;
    let reader = open_bytes(&with_footer(craft_aligned(FLAG_CHECKSUM, json, &sixteen()), "blake3")).unwrap();
    reader.verify().unwrap();

    // Raw chunks (stored == raw) need no codec.
    let reader = open_bytes(&compressed(
        "[8]",
        "[0,8]",
        "[[0,4,4],[4,4,4]]",
        &[1, 2, 3, 4, 5, 6, 7, 8],
    ))
    .unwrap();
    assert_eq!(&reader.read_tensor("c").unwrap()[..], &[1, 2, 3, 4, 5, 6, 7, 8]);

    // A real zstd chunk.
    let raw = vec![9u8; 1000];
    let packed = registry::codecs()
        .unwrap()
        .get("zstd")
        .unwrap()
        .compress(&raw, 3)
        .unwrap();
    let n = packed.len();
    let reader = open_bytes(&compressed(
        "[1000]",
        &format!("[0,{n}]"),
        &format!("[[0,{n},1000]]"),
        &packed,
    ))
    .unwrap();
    assert_eq!(&reader.read_tensor("c").unwrap()[..], &raw[..]);

    // No tensors at all, with and without NUL padding.
    assert_eq!(
        open_bytes(&craft(0, br#"{"tensors":[]}"#, &[])).unwrap().keys().count(),
        0
    );
    assert_eq!(
        open_bytes(&craft(0, br#"{"tensors":[]}  "#, &[]))
            .unwrap()
            .keys()
            .count(),
        0
    );
}

// ---------------------------------------------------------------- preamble

#[test]
fn file_shorter_than_the_preamble_is_truncated() {
    let good = craft_aligned(0, ONE_TENSOR, &sixteen());
    for len in [0usize, 1, 8, 16, 23] {
        match open_err(&good[..len]) {
            Error::Truncated { needed, available, .. } => {
                assert_eq!(needed, 24);
                assert_eq!(available, len as u64);
            }
            other => panic!("{len} bytes: {other:?}"),
        }
    }
}

#[test]
fn bad_magic_is_refused() {
    for magic in [b"DTLEGIOX", b"\0\0\0\0\0\0\0\0", b"PK\x03\x04abcd", b"dtlegion"] {
        let mut bytes = craft_aligned(0, ONE_TENSOR, &sixteen());
        bytes[..8].copy_from_slice(magic);
        let err = open_err(&bytes);
        assert!(matches!(err, Error::BadMagic { .. }), "{err:?}");
        assert_eq!(err.class_name(), "FormatError");
    }
}

#[test]
fn other_versions_are_refused() {
    for version in [0u32, 2, 0x0100_0000, u32::MAX] {
        let mut bytes = craft_aligned(0, ONE_TENSOR, &sixteen());
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let err = open_err(&bytes);
        assert!(matches!(err, Error::UnsupportedVersion(v) if v == version), "{err:?}");
    }
}

#[test]
fn encryption_flag_is_refused() {
    for flags in [
        FLAG_ENCRYPTED,
        FLAG_ENCRYPTED | FLAG_COMPRESSED | FLAG_CHECKSUM,
        FLAG_ENCRYPTED | 0x80,
    ] {
        let err = open_err(&craft_aligned(flags, ONE_TENSOR, &sixteen()));
        assert!(matches!(err, Error::Encrypted), "flags {flags:#x}: {err:?}");
        assert_eq!(err.class_name(), "EncryptedFileError");
    }
}

#[test]
fn unknown_flag_bits_are_refused() {
    for (flags, unknown) in [
        (0x80, 0x80),
        (1 << 31, 1 << 31),
        (0x80 | FLAG_COMPRESSED, 0x80),
        (0x18, 0x18),
    ] {
        let err = open_err(&craft_aligned(flags, ONE_TENSOR, &sixteen()));
        assert!(
            matches!(err, Error::UnknownFlags(u) if u == unknown),
            "flags {flags:#x}: {err:?}"
        );
    }
}

#[test]
fn header_length_over_the_limit_is_refused() {
    for len in [DEFAULT_MAX_HEADER_LEN + 1, u64::MAX / 2, u64::MAX] {
        let mut bytes = preamble(0, len).to_vec();
        bytes.extend_from_slice(b"{}");
        let err = open_err(&bytes);
        assert!(
            matches!(err, Error::HeaderTooLarge { len: l, limit } if l == len && limit == DEFAULT_MAX_HEADER_LEN),
            "{err:?}"
        );
    }
    let good = craft_aligned(0, ONE_TENSOR, &sixteen());
    let header_len = u64::from_le_bytes(good[16..24].try_into().unwrap());
    let small = ReadOptions { max_header_len: 16 };
    let err = open_err_with(&good, &small);
    assert!(
        matches!(err, Error::HeaderTooLarge { len, limit: 16 } if len == header_len),
        "{err:?}"
    );
    let just_enough = ReadOptions {
        max_header_len: header_len,
    };
    assert!(open_bytes_with(&good, &just_enough).is_ok());
    let one_less = ReadOptions {
        max_header_len: header_len - 1,
    };
    assert!(matches!(open_err_with(&good, &one_less), Error::HeaderTooLarge { .. }));
}

#[test]
fn header_length_beyond_the_file_is_truncated() {
    let good = craft_aligned(0, ONE_TENSOR, &sixteen());
    let file_len = good.len() as u64;
    for len in [file_len - 23, file_len, file_len + 1000, 50_000_000] {
        let mut bytes = good.clone();
        bytes[16..24].copy_from_slice(&len.to_le_bytes());
        match open_err(&bytes) {
            Error::Truncated { needed, available, .. } => {
                assert_eq!(available, file_len);
                assert!(needed > file_len);
            }
            other => panic!("header_len {len}: {other:?}"),
        }
    }
}

#[test]
fn header_length_near_u64_max_with_a_raised_limit_is_truncated() {
    let unlimited = ReadOptions {
        max_header_len: u64::MAX,
    };
    for len in [u64::MAX, u64::MAX - 23, u64::MAX - 30] {
        let mut bytes = preamble(0, len).to_vec();
        bytes.extend_from_slice(br#"{"tensors":[]}"#);
        let err = open_err_with(&bytes, &unlimited);
        assert!(matches!(err, Error::Truncated { .. }), "header_len {len}: {err:?}");
    }
}

// ---------------------------------------------------------------- JSON

#[test]
fn invalid_utf8_in_the_header_is_refused() {
    for bad in [&b"\xff"[..], b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"] {
        let mut json = br#"{"metadata":{"k":""#.to_vec();
        json.extend_from_slice(bad);
        json.extend_from_slice(br#""},"tensors":[]}"#);
        let err = open_err(&craft(0, &json, &[]));
        assert!(matches!(err, Error::InvalidHeader(_)), "{bad:?}: {err:?}");
    }
    let err = open_err(&craft(
        0,
        br#"{"tensors":[{"name":"\xff","dtype":"U8","shape":[0],"offsets":[0,0]}]}"#,
        &[],
    ));
    assert!(matches!(err, Error::InvalidHeader(_)), "{err:?}");
}

#[test]
fn invalid_json_is_refused() {
    let texts = [
        "",
        " ",
        "{",
        "}",
        "[]",
        "null",
        "\"tensors\"",
        r#"{"tensors":[]} x"#,
        r#"{"tensors":[]}{}"#,
        r#"{"tensors":[],}"#,
        r#"{'tensors':[]}"#,
        r#"{tensors:[]}"#,
        r#"{"tensors":[]"#,
        r#"{"metadata":{"s":"\ud800"},"tensors":[]}"#,
        r#"{"metadata":{"s":"\x"},"tensors":[]}"#,
        r#"{"metadata":{"s":"tab	inside"},"tensors":[]}"#,
        r#"{"metadata":{"n":01},"tensors":[]}"#,
        // Schema violations.
        r#"{}"#,
        r#"{"tensors":{}}"#,
        r#"{"tensors":[],"extra":1}"#,
        r#"{"tensors":[],"metadata":[]}"#,
        r#"{"tensors":[],"checksum":7}"#,
        r#"{"tensors":[],"compression":{"codec":"zstd"}}"#,
        r#"{"tensors":[],"compression":{"codec":"zstd","level":3,"x":1}}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[0],"offsets":[0,0],"extra":1}]}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[0]}]}"#,
        r#"{"tensors":[{"name":5,"dtype":"U8","shape":[0],"offsets":[0,0]}]}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[1.5],"offsets":[0,0]}]}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[-1],"offsets":[0,0]}]}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[18446744073709551616],"offsets":[0,0]}]}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[0],"offsets":[0]}]}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[0],"offsets":[0,0,0]}]}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[0],"offsets":[-1,0]}]}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[0],"offsets":[0,0],"chunks":[[0,1]]}]}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[0],"offsets":[0,0],"metadata":5}]}"#,
    ];
    for text in texts {
        let err = open_err(&craft(0, text.as_bytes(), &[]));
        assert!(matches!(err, Error::InvalidHeader(_)), "{text:?}: {err:?}");
        assert_eq!(err.class_name(), "FormatError");
    }
}

#[test]
fn duplicate_json_keys_are_refused() {
    let texts = [
        r#"{"tensors":[],"tensors":[]}"#,
        r#"{"metadata":{},"tensors":[],"metadata":{}}"#,
        r#"{"metadata":{"a":1,"a":1},"tensors":[]}"#,
        r#"{"metadata":{"a":1,"b":2,"a":"other"},"tensors":[]}"#,
        r#"{"metadata":{"x":[{"y":{"z":1,"z":2}}]},"tensors":[]}"#,
        r#"{"metadata":{"x":{"y":{"z":{"w":[[{"k":null,"k":null}]]}}}},"tensors":[]}"#,
        r#"{"compression":{"codec":"zstd","codec":"lz4","level":3},"tensors":[]}"#,
        r#"{"tensors":[{"name":"a","name":"b","dtype":"U8","shape":[0],"offsets":[0,0]}]}"#,
        r#"{"tensors":[{"name":"a","dtype":"U8","shape":[0],"offsets":[0,0],"metadata":{"m":1,"m":2}}]}"#,
    ];
    for text in texts {
        let err = open_err(&craft(0, text.as_bytes(), &[]));
        assert_invalid_header(&err, "duplicate key");
    }
    // Equal keys in different objects are fine.
    let ok = r#"{"metadata":{"a":{"a":1},"b":{"a":2}},"tensors":[]}"#;
    assert!(open_bytes(&craft(0, ok.as_bytes(), &[])).is_ok());
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let n = 10_000;
    let unbalanced = format!(r#"{{"metadata":{{"x":{}}},"tensors":[]}}"#, "[".repeat(n));
    let balanced = format!(
        r#"{{"metadata":{{"x":{}{}}},"tensors":[]}}"#,
        "[".repeat(n),
        "]".repeat(n)
    );
    let objects = format!(
        r#"{{"metadata":{{"x":{}1{}}},"tensors":[]}}"#,
        r#"{"a":"#.repeat(n),
        "}".repeat(n)
    );
    let in_tensor_meta = format!(
        r#"{{"tensors":[{{"name":"a","dtype":"U8","shape":[0],"offsets":[0,0],"metadata":{{"x":{}{}}}}}]}}"#,
        "[".repeat(n),
        "]".repeat(n)
    );
    for text in [unbalanced, balanced, objects, in_tensor_meta] {
        let err = open_err(&craft(0, text.as_bytes(), &[]));
        assert!(matches!(err, Error::InvalidHeader(_)), "{err:?}");
    }
    // Moderate nesting is fine.
    let moderate = format!(
        r#"{{"metadata":{{"x":{}{}}},"tensors":[]}}"#,
        "[".repeat(50),
        "]".repeat(50)
    );
    assert!(open_bytes(&craft(0, moderate.as_bytes(), &[])).is_ok());
}

#[test]
fn non_finite_numbers_are_refused() {
    for value in ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e999", "-1e999"] {
        let text = format!(r#"{{"metadata":{{"x":{value}}},"tensors":[]}}"#);
        let err = open_err(&craft(0, text.as_bytes(), &[]));
        assert!(matches!(err, Error::InvalidHeader(_)), "{value}: {err:?}");
    }
}

#[test]
fn non_nul_padding_is_refused() {
    // 24 + 14 = 38: two padding bytes.
    let text = br#"{"tensors":[]}"#;
    let good = craft(0, text, &[]);
    assert_eq!(good.len(), 40);
    assert!(open_bytes(&good).is_ok());
    for at in [38usize, 39] {
        for byte in [b' ', 1, 0xff, b'}'] {
            let mut bad = good.clone();
            bad[at] = byte;
            let err = open_err(&bad);
            assert_invalid_header(&err, &format!("offset {at}"));
        }
    }
}

// ---------------------------------------------------------------- plugins named by the header

#[test]
fn unknown_dtype_is_an_invalid_tensor_naming_it() {
    for dtype in ["F99", "f32", "", "float32"] {
        let json = ONE_TENSOR.replace("\"F32\"", &format!("{dtype:?}"));
        let err = open_err(&craft_aligned(0, &json, &sixteen()));
        assert_invalid_tensor(&err, "a", &format!("{dtype:?}"));
        if dtype == "F99" {
            assert!(err.to_string().contains("F99"), "{err}");
            assert!(
                err.to_string().contains("F32"),
                "the message lists the dtypes available: {err}"
            );
        }
    }
}

/// A plugin id named by a file but not registered here makes the file unreadable:
/// a format error (CLI exit 1) whose message still lists the ids available.
#[test]
fn unknown_codec_named_by_a_file_is_a_format_error() {
    let json = r#"{"compression":{"codec":"brotli","level":1},"tensors":[]}"#;
    let err = open_err(&craft(FLAG_COMPRESSED, json.as_bytes(), &[]));
    match &err {
        Error::InvalidHeader(msg) => {
            assert!(msg.contains("codec \"brotli\""), "{msg}");
            assert!(msg.contains("zstd") && msg.contains("lz4"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.class_name(), "FormatError");
    assert!(err.is_bad_file());
}

#[test]
fn unknown_checksum_named_by_a_file_is_a_format_error() {
    let json = r#"{"checksum":"md5","tensors":[]}"#;
    let err = open_err(&craft(FLAG_CHECKSUM, json.as_bytes(), &[0; 32]));
    match &err {
        Error::InvalidHeader(msg) => {
            assert!(msg.contains("checksum \"md5\""), "{msg}");
            assert!(msg.contains("sha256") && msg.contains("blake3"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.class_name(), "FormatError");
}

// ---------------------------------------------------------------- shapes and byte ranges

#[test]
fn shape_product_overflowing_u64_is_refused() {
    for shape in [
        "[4294967296,4294967296]",
        "[18446744073709551615,2]",
        "[4611686018427387904]",
    ] {
        let json = ONE_TENSOR.replace("[4]", shape);
        let err = open_err(&craft_aligned(0, &json, &sixteen()));
        assert_invalid_tensor(&err, "a", "overflows");
    }
}

#[test]
fn huge_element_count_with_a_small_byte_range_is_refused() {
    let json = ONE_TENSOR.replace("[4]", "[1000000000000]");
    let err = open_err(&craft_aligned(0, &json, &sixteen()));
    assert_invalid_tensor(&err, "a", "4000000000000");
    let json = ONE_TENSOR.replace("[4]", "[1000000,1000000]");
    assert_invalid_tensor(&open_err(&craft_aligned(0, &json, &sixteen())), "a", "bytes");
    // A shape that is too small for the range is refused just the same.
    let json = ONE_TENSOR.replace("[4]", "[3]");
    assert_invalid_tensor(&open_err(&craft_aligned(0, &json, &sixteen())), "a", "12 bytes");
}

#[test]
fn byte_range_beyond_the_data_region_is_refused() {
    for offsets in [
        "[0,32]",
        "[16,0]",
        "[64,80]",
        "[0,18446744073709551615]",
        "[18446744073709551615,15]",
    ] {
        let json = ONE_TENSOR.replace("[0,16]", offsets);
        let err = open_err(&craft_aligned(0, &json, &sixteen()));
        assert!(
            matches!(err, Error::InvalidTensor { ref name, .. } if name == "a"),
            "{offsets}: {err:?}"
        );
    }
    let json = ONE_TENSOR.replace("[0,16]", "[0,32]");
    assert_invalid_tensor(
        &open_err(&craft_aligned(0, &json, &sixteen())),
        "a",
        "outside the data region of 16 bytes (is the file truncated?)",
    );
    // A reversed range is no sign of a cut-off file.
    let json = ONE_TENSOR.replace("[0,16]", "[16,0]");
    let err = open_err(&craft_aligned(0, &json, &sixteen())).to_string();
    assert!(!err.contains("truncated"), "{err}");
}

#[test]
fn overlapping_tensors_are_refused() {
    let data = noise(128, 1);
    let json = r#"{"tensors":[
        {"name":"big","dtype":"F32","shape":[32],"offsets":[0,128]},
        {"name":"inner","dtype":"F32","shape":[16],"offsets":[64,128]}]}"#;
    let err = open_err(&craft_aligned(0, json, &data));
    assert!(
        matches!(err, Error::InvalidTensor { ref reason, .. } if reason.contains("overlaps")),
        "{err:?}"
    );
    let json = r#"{"tensors":[
        {"name":"one","dtype":"U8","shape":[128],"offsets":[0,128]},
        {"name":"two","dtype":"I8","shape":[128],"offsets":[0,128]}]}"#;
    let err = open_err(&craft_aligned(0, json, &data));
    assert!(
        matches!(err, Error::InvalidTensor { ref reason, .. } if reason.contains("overlaps")),
        "{err:?}"
    );
    // Compressed tensors with raw chunks may overlap by a single byte.
    let json = r#"{"compression":{"codec":"lz4","level":0},"tensors":[
        {"name":"x","dtype":"U8","shape":[5],"offsets":[0,5],"chunks":[[0,5,5]]},
        {"name":"y","dtype":"U8","shape":[4],"offsets":[4,8],"chunks":[[4,4,4]]}]}"#;
    let err = open_err(&craft(FLAG_COMPRESSED, json.as_bytes(), &data[..8]));
    assert!(
        matches!(err, Error::InvalidTensor { ref reason, .. } if reason.contains("overlaps")),
        "{err:?}"
    );
}

#[test]
fn duplicate_tensor_names_are_refused() {
    let data = noise(128, 2);
    let json = r#"{"tensors":[
        {"name":"w","dtype":"F32","shape":[16],"offsets":[0,64]},
        {"name":"w","dtype":"F32","shape":[16],"offsets":[64,128]}]}"#;
    let err = open_err(&craft_aligned(0, json, &data));
    assert_invalid_tensor(&err, "w", "twice");
}

#[test]
fn misaligned_uncompressed_tensors_are_refused() {
    let data = noise(20, 3);
    let json = ONE_TENSOR.replace("[0,16]", "[4,20]");
    let err = open_err(&craft_aligned(0, &json, &data));
    assert_invalid_tensor(&err, "a", "multiple of 64");
    // The header is not padded: data_start itself is misaligned.
    let bytes = craft(0, ONE_TENSOR.as_bytes(), &sixteen());
    assert_ne!((bytes.len() - 16) % 64, 0);
    assert_invalid_tensor(&open_err(&bytes), "a", "multiple of 64");
    // A second tensor right after a 16-byte one.
    let json = r#"{"tensors":[
        {"name":"a","dtype":"F32","shape":[4],"offsets":[0,16]},
        {"name":"b","dtype":"F32","shape":[4],"offsets":[16,32]}]}"#;
    assert_invalid_tensor(&open_err(&craft_aligned(0, json, &noise(32, 4))), "b", "multiple of 64");
}

#[test]
fn empty_uncompressed_tensors_need_no_alignment() {
    let json = r#"{"tensors":[
        {"name":"a","dtype":"F32","shape":[4],"offsets":[0,16]},
        {"name":"e","dtype":"F32","shape":[0],"offsets":[16,16]}]}"#;
    let reader = open_bytes(&craft_aligned(0, json, &sixteen())).unwrap();
    assert!(reader.read_tensor("e").unwrap().is_empty());
    // An empty tensor still has to lie inside the data region.
    let json = json.replace("[16,16]", "[17,17]");
    assert_invalid_tensor(
        &open_err(&craft_aligned(0, &json, &sixteen())),
        "e",
        "outside the data region",
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut data = sixteen();
    data.push(0);
    let bytes = craft_aligned(0, ONE_TENSOR, &data);
    let err = open_err(&bytes);
    assert!(
        matches!(err, Error::TrailingBytes { extra: 1, end } if end == bytes.len() as u64 - 1),
        "{err:?}"
    );
    let err = open_err(&craft(0, br#"{"tensors":[]}"#, &[0; 64]));
    assert!(matches!(err, Error::TrailingBytes { extra: 64, .. }), "{err:?}");
    // Bytes hidden between the last tensor and the footer.
    let json = r#"{"checksum":"sha256","tensors":[{"name":"a","dtype":"F32","shape":[4],"offsets":[0,16]}]}"#;
    let bytes = with_footer(craft_aligned(FLAG_CHECKSUM, json, &data), "sha256");
    assert!(matches!(open_err(&bytes), Error::TrailingBytes { extra: 1, .. }));
}

// ---------------------------------------------------------------- flags against the header

#[test]
fn compressed_flag_and_codec_must_agree() {
    let err = open_err(&craft_aligned(FLAG_COMPRESSED, ONE_TENSOR, &sixteen()));
    assert_invalid_header(&err, "names no codec");
    let json = r#"{"compression":{"codec":"zstd","level":3},"tensors":[]}"#;
    let err = open_err(&craft(0, json.as_bytes(), &[]));
    assert_invalid_header(&err, "flag bit 0");
}

#[test]
fn checksum_flag_and_algorithm_must_agree() {
    let err = open_err(&craft_aligned(
        FLAG_CHECKSUM,
        ONE_TENSOR,
        &[sixteen(), vec![0; 32]].concat(),
    ));
    assert_invalid_header(&err, "names no checksum");
    let json = r#"{"checksum":"sha256","tensors":[]}"#;
    let err = open_err(&with_footer(craft(0, json.as_bytes(), &[]), "sha256"));
    assert_invalid_header(&err, "flag bit 1");
}

#[test]
fn checksum_flag_without_footer_bytes_is_truncated() {
    let json = r#"{"checksum":"sha256","tensors":[]}"#;
    for footer in [0usize, 1, 31] {
        let bytes = craft(FLAG_CHECKSUM, json.as_bytes(), &vec![0; footer]);
        match open_err(&bytes) {
            Error::Truncated { needed, available, .. } => {
                assert_eq!(available, bytes.len() as u64);
                assert_eq!(needed, (bytes.len() - footer + 32) as u64);
            }
            other => panic!("{footer}-byte footer: {other:?}"),
        }
    }
    assert!(open_bytes(&craft(FLAG_CHECKSUM, json.as_bytes(), &[0; 32])).is_ok());
    // With tensor data, the "footer" eats into the last tensor: its range leaves the data region.
    let json = r#"{"checksum":"sha256","tensors":[{"name":"a","dtype":"F32","shape":[16],"offsets":[0,64]}]}"#;
    let err = open_err(&craft_aligned(FLAG_CHECKSUM, json, &noise(64, 7)));
    assert_invalid_tensor(&err, "a", "outside the data region");
}

#[test]
fn chunk_tables_must_match_the_compression_flag() {
    let json = r#"{"tensors":[{"name":"a","dtype":"U8","shape":[4],"offsets":[0,4],"chunks":[[0,4,4]]}]}"#;
    assert_invalid_tensor(&open_err(&craft_aligned(0, json, &[1, 2, 3, 4])), "a", "not compressed");
    let json = r#"{"compression":{"codec":"zstd","level":3},
        "tensors":[{"name":"a","dtype":"U8","shape":[4],"offsets":[0,4]}]}"#;
    assert_invalid_tensor(
        &open_err(&craft(FLAG_COMPRESSED, json.as_bytes(), &[1, 2, 3, 4])),
        "a",
        "no chunk table",
    );
}

// ---------------------------------------------------------------- chunk tables

#[test]
fn chunk_raw_lengths_must_add_up_to_the_shape() {
    let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
    for (shape, chunks) in [
        ("[8]", "[[0,4,4],[4,4,5]]"),
        ("[10]", "[[0,4,4],[4,4,4]]"),
        ("[7]", "[[0,4,4],[4,4,4]]"),
        ("[0]", "[[0,4,4],[4,4,4]]"),
    ] {
        let err = open_err(&compressed(shape, "[0,8]", chunks, &data));
        assert_invalid_tensor(&err, "c", "chunks decode to");
    }
    // A zero-size tensor with no chunks and an empty range is fine; one with a chunk is not.
    assert!(open_bytes(&compressed("[0]", "[0,0]", "[]", &[])).is_ok());
    assert_invalid_tensor(
        &open_err(&compressed("[8]", "[0,0]", "[]", &[])),
        "c",
        "chunks decode to",
    );
}

#[test]
fn chunk_raw_length_over_the_maximum_is_refused() {
    let big = MAX_CHUNK_RAW_LEN + 1;
    let err = open_err(&compressed(
        &format!("[{big}]"),
        "[0,8]",
        &format!("[[0,8,{big}]]"),
        &[0; 8],
    ));
    assert_invalid_tensor(&err, "c", "raw length");
    let err = open_err(&compressed("[8]", "[0,8]", "[[0,8,18446744073709551615]]", &[0; 8]));
    assert_invalid_tensor(&err, "c", "raw length");
    // Exactly the maximum is allowed by the table (the bytes are garbage, so reading fails);
    // 2048 stored bytes are the fewest zstd can expand to that much.
    let max = MAX_CHUNK_RAW_LEN;
    let reader = open_bytes(&compressed(
        &format!("[{max}]"),
        "[0,2048]",
        &format!("[[0,2048,{max}]]"),
        &[0; 2048],
    ))
    .unwrap();
    assert!(matches!(
        reader.read_tensor("c"),
        Err(Error::CorruptChunk { index: 0, .. })
    ));
}

#[test]
fn zero_length_chunks_are_refused() {
    let data = [0u8; 8];
    let err = open_err(&compressed("[8]", "[0,8]", "[[0,4,4],[4,0,0],[4,4,4]]", &data));
    assert_invalid_tensor(&err, "c", "chunk 1");
    let err = open_err(&compressed("[8]", "[0,8]", "[[0,0,4],[0,8,4]]", &data));
    assert_invalid_tensor(&err, "c", "chunk 0");
}

#[test]
fn non_contiguous_chunks_are_refused() {
    let data = noise(9, 5);
    for (len, chunks, needle) in [
        (9, "[[0,4,4],[5,4,4]]", "chunk 1: starts at 5"),
        (8, "[[0,4,4],[3,4,4]]", "chunk 1: starts at 3"),
        (8, "[[1,4,4],[5,3,4]]", "chunk 0: starts at 1"),
        (8, "[[4,4,4],[0,4,4]]", "chunk 0: starts at 4"),
        (8, "[[0,4,4],[4,8,8]]", "runs past"),
        (8, "[[0,4,4],[4,18446744073709551615,4]]", "chunk 1"),
        (9, "[[0,4,4],[4,4,4]]", "chunks end at 8"),
    ] {
        let err = open_err(&compressed("[8]", &format!("[0,{len}]"), chunks, &data[..len]));
        assert_invalid_tensor(&err, "c", needle);
    }
}

#[test]
fn stored_length_over_raw_length_is_refused() {
    let data = noise(8, 6);
    let err = open_err(&compressed("[7]", "[0,8]", "[[0,5,4],[5,3,3]]", &data));
    assert_invalid_tensor(&err, "c", "stored length 5");
}

#[test]
fn decompression_bombs_are_refused_at_open() {
    // A tiny tensor whose chunk table claims a huge total raw size (each chunk within the
    // codec's expansion bound, 32768 bytes from 1 stored byte).
    let n = 1000u64;
    let chunks: Vec<String> = (0..n).map(|i| format!("[{i},1,32768]")).collect();
    let bytes = compressed(
        "[8]",
        &format!("[0,{n}]"),
        &format!("[{}]", chunks.join(",")),
        &vec![0; n as usize],
    );
    let err = open_err(&bytes);
    assert_invalid_tensor(&err, "c", "chunks decode to");

    // The same table with a shape that does not say so either.
    let bytes = compressed(
        "[1000]",
        &format!("[0,{n}]"),
        &format!("[{}]", chunks.join(",")),
        &vec![0; n as usize],
    );
    assert_invalid_tensor(&open_err(&bytes), "c", "chunks decode to");

    // A raw total that would overflow u64 is refused before it is summed (each chunk is
    // bounded, so this is a shape overflow instead).
    let bytes = compressed("[18446744073709551615,2]", "[0,2]", "[[0,1,1],[1,1,1]]", &[0, 0]);
    assert_invalid_tensor(&open_err(&bytes), "c", "overflows");
}

#[test]
fn chunks_claiming_more_than_their_codec_can_expand_are_refused_at_open() {
    // Shape and chunk table agree on 4 × MAX_CHUNK_RAW_LEN bytes from 4 stored bytes: no
    // codec makes that much of so little, so the file is refused before anything is read
    // or allocated, and memory stays bounded by the file's size.
    let total = 4 * MAX_CHUNK_RAW_LEN;
    let chunks: Vec<String> = (0..4).map(|i| format!("[{i},1,{MAX_CHUNK_RAW_LEN}]")).collect();
    let bytes = compressed(
        &format!("[{total}]"),
        "[0,4]",
        &format!("[{}]", chunks.join(",")),
        &[0x28, 0xb5, 0x2f, 0xfd],
    );
    assert_invalid_tensor(&open_err(&bytes), "c", "the codec expands at most 32768x");

    // The bound is each codec's own: zstd 32768, lz4 256, exactly.
    for (codec, bound) in [("zstd", 32768u64), ("lz4", 256)] {
        let file = |raw: u64| {
            let json = format!(
                r#"{{"compression":{{"codec":"{codec}","level":1}},"tensors":[{{"name":"c","dtype":"U8","shape":[{raw}],"offsets":[0,1],"chunks":[[0,1,{raw}]]}}]}}"#
            );
            craft(FLAG_COMPRESSED, json.as_bytes(), &[0])
        };
        assert!(
            open_bytes(&file(bound)).is_ok(),
            "{codec}: {bound} from 1 byte is possible"
        );
        assert_invalid_tensor(&open_err(&file(bound + 1)), "c", &format!("at most {bound}x"));
    }

    // Each compressed plane of a filtered chunk is held to the bound on its own.
    let planes = |first: u64| {
        let json = format!(
            r#"{{"compression":{{"codec":"zstd","level":3}},"tensors":[{{"name":"f","dtype":"F32","shape":[40000],"offsets":[0,{end}],"chunks":[[0,{end},160000,[{first},40000,40000,40000]]],"filter":{BYTEGROUP_F32}}}]}}"#,
            end = first + 120_000
        );
        craft(FLAG_COMPRESSED, json.as_bytes(), &vec![0; first as usize + 120_000])
    };
    assert!(open_bytes(&planes(2)).is_ok());
    assert_invalid_tensor(&open_err(&planes(1)), "f", "plane 0 claims 40000 raw bytes from 1");
}

#[test]
fn a_consistent_huge_chunk_table_within_the_bound_fails_cleanly_when_read() {
    // 4 chunks of MAX_CHUNK_RAW_LEN, each from the 2048 bytes zstd needs at least: the
    // table is consistent, so the file opens; reading garbage must fail cleanly.
    let total = 4 * MAX_CHUNK_RAW_LEN;
    let chunks: Vec<String> = (0..4)
        .map(|i| format!("[{},2048,{MAX_CHUNK_RAW_LEN}]", i * 2048))
        .collect();
    let bytes = compressed(
        &format!("[{total}]"),
        "[0,8192]",
        &format!("[{}]", chunks.join(",")),
        &noise(8192, 3),
    );
    let reader = open_bytes(&bytes).unwrap();
    let err = reader
        .read_tensor("c")
        .err()
        .expect("reading 8 KiB of noise as 256 MiB must fail");
    assert!(
        matches!(err, Error::CorruptChunk { .. } | Error::OutOfMemory(_)),
        "{err:?}"
    );
}

#[test]
fn garbage_chunks_are_corrupt_chunk_errors_when_read() {
    for codec in ["zstd", "lz4"] {
        let json = format!(
            r#"{{"compression":{{"codec":"{codec}","level":1}},"tensors":[
            {{"name":"g","dtype":"U8","shape":[4096],"offsets":[0,64],"chunks":[[0,32,2048],[32,32,2048]]}}]}}"#
        );
        for seed in 0..20 {
            let reader = open_bytes(&craft(FLAG_COMPRESSED, json.as_bytes(), &noise(64, seed))).unwrap();
            match reader.read_tensor("g") {
                Err(Error::CorruptChunk { name, .. }) => assert_eq!(name, "g"),
                Err(other) => panic!("{codec}: {other:?}"),
                Ok(_) => panic!("{codec}: 32 noise bytes decoded to 2048"),
            }
        }
    }
}

// ---------------------------------------------------------------- fuzz

/// A valid compressed, checksummed file with several tensors and chunks.
fn fuzz_seed_file(codec: Option<&str>) -> Vec<u8> {
    let a = pattern(64 * 16 * 4, 1);
    let b = noise(300, 2);
    let c = 1.5f32.to_le_bytes();
    let zeros = vec![0u8; 2048];
    let mut with_meta = tensor("b", "I8", &[300], &b);
    with_meta.metadata = serde_json::from_value(json!({"note": "x", "n": [1, 2.5, null]})).unwrap();
    let tensors = [
        tensor("a", "F32", &[64, 16], &a),
        with_meta,
        tensor("c", "F32", &[], &c),
        tensor("empty", "BF16", &[0, 3], &[]),
        tensor("zeros", "U16", &[32, 32], &zeros),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut options = opts(codec, Some("sha256"));
    options.chunk_bytes = 512;
    let global: Map<String, serde_json::Value> = serde_json::from_value(json!({"model": "fuzz", "v": 1})).unwrap();
    let path = write_valid(dir.path(), "seed.dt", &tensors, &global, &options);
    let bytes = std::fs::read(path).unwrap();
    let reader = open_bytes(&bytes).unwrap();
    read_everything(&reader).unwrap();
    bytes
}

fn fuzz(codec: Option<&str>, flips: usize, truncations: usize) {
    let good = fuzz_seed_file(codec);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.dt");
    let mut rng = Lcg::new(0xDEA7_4E55);
    let mut opened = 0;
    for _ in 0..flips {
        let mut bytes = good.clone();
        let at = rng.below(bytes.len() as u64) as usize;
        bytes[at] ^= 1 + rng.below(255) as u8;
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(reader) = DtReader::open(&path) {
            opened += 1;
            let outcome = read_everything(&reader);
            // The footer covers everything after the preamble: a change there is always caught.
            if at >= 24 {
                assert!(outcome.is_err(), "{codec:?}: a flip at {at} went unnoticed");
            }
        }
    }
    assert!(opened > 0, "some flips (in the data) leave the file openable");
    for _ in 0..truncations {
        let len = rng.below(good.len() as u64) as usize;
        std::fs::write(&path, &good[..len]).unwrap();
        if let Ok(reader) = DtReader::open(&path) {
            let _ = read_everything(&reader);
            panic!("{codec:?}: a file truncated to {len} of {} bytes opened", good.len());
        }
    }
}

#[test]
fn fuzz_flips_and_truncations_of_a_compressed_checksummed_file() {
    fuzz(Some("zstd"), 2000, 200);
}

#[test]
fn fuzz_flips_and_truncations_of_other_files() {
    fuzz(Some("lz4"), 500, 100);
    fuzz(None, 500, 100);
}

// ---------------------------------------------------------------- the bytegroup filter

/// A compressed file with one F32 tensor of 8 elements (32 bytes) whose entry
/// carries `filter` and `chunks`, followed by `data`.
fn filtered(filter: &str, chunks: &str, end: usize, data: &[u8]) -> Vec<u8> {
    let json = format!(
        r#"{{"compression":{{"codec":"zstd","level":3}},"tensors":[{{"name":"f","dtype":"F32","shape":[8],"offsets":[0,{end}],"chunks":{chunks},"filter":{filter}}}]}}"#
    );
    craft(FLAG_COMPRESSED, json.as_bytes(), data)
}

const BYTEGROUP_F32: &str = r#"{"id":"bytegroup","params":{"width":4,"rotate":1}}"#;

#[test]
fn a_valid_filtered_chunk_of_raw_planes_opens_and_decodes() {
    // Four raw planes of 8 bytes: plane p holds byte p of each rotated unit.
    let values: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
    let mut planes = vec![0u8; 32];
    for (i, v) in values.iter().enumerate() {
        for (p, b) in v.to_bits().rotate_left(1).to_le_bytes().iter().enumerate() {
            planes[p * 8 + i] = *b;
        }
    }
    let bytes = filtered(BYTEGROUP_F32, "[[0,32,32,[8,8,8,8]]]", 32, &planes);
    let reader = open_bytes(&bytes).unwrap();
    let got = reader.read_tensor("f").unwrap();
    let expected: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(&got[..], &expected[..]);
}

#[test]
fn filter_rules_are_enforced_at_open() {
    let data = vec![0u8; 32];
    let cases: [(&str, &str, &str); 8] = [
        (r#"{"id":"shuffle9","params":{}}"#, "[[0,32,32,[8,8,8,8]]]", "shuffle9"),
        (
            r#"{"id":"bytegroup","params":{"width":3,"rotate":1}}"#,
            "[[0,32,32,[8,8,8,8]]]",
            "width 3",
        ),
        (
            r#"{"id":"bytegroup","params":{"width":4,"rotate":40}}"#,
            "[[0,32,32,[8,8,8,8]]]",
            "rotate 40",
        ),
        (BYTEGROUP_F32, "[[0,32,32,[8,8,16]]]", "3 planes"),
        (BYTEGROUP_F32, "[[0,32,32,[8,8,8,9]]]", "plane 3"),
        (BYTEGROUP_F32, "[[0,32,32,[8,8,8,0]]]", "plane 3"),
        (BYTEGROUP_F32, "[[0,30,32,[8,8,8,8]]]", "planes add up to 32"),
        (BYTEGROUP_F32, "[[0,30,32]]", "lists no planes"),
    ];
    for (filter, chunks, needle) in cases {
        let err = open_err(&filtered(filter, chunks, 32, &data));
        assert_invalid_tensor(&err, "f", needle);
    }
    // Planes without a filter, and a filter in an uncompressed file.
    let json = r#"{"compression":{"codec":"zstd","level":3},"tensors":[{"name":"f","dtype":"F32","shape":[8],"offsets":[0,32],"chunks":[[0,32,32,[8,8,8,8]]]}]}"#;
    assert_invalid_tensor(
        &open_err(&craft(FLAG_COMPRESSED, json.as_bytes(), &data)),
        "f",
        "no filter",
    );
    let json = r#"{"tensors":[{"name":"f","dtype":"F32","shape":[8],"offsets":[0,32],"filter":{"id":"bytegroup","params":{"width":4,"rotate":1}}}]}"#;
    assert_invalid_tensor(&open_err(&craft_aligned(0, json, &data)), "f", "not compressed");
    // A filter on a dtype it does not divide (U8 with width 4).
    let json = r#"{"compression":{"codec":"zstd","level":3},"tensors":[{"name":"f","dtype":"U8","shape":[32],"offsets":[0,32],"chunks":[[0,32,32,[8,8,8,8]]],"filter":{"id":"bytegroup","params":{"width":4,"rotate":1}}}]}"#;
    assert_invalid_tensor(
        &open_err(&craft(FLAG_COMPRESSED, json.as_bytes(), &data)),
        "f",
        "does not divide",
    );
}

#[test]
fn damaged_compressed_planes_are_corrupt_chunk_errors_without_a_footer() {
    // Weights-like floats: the exponent plane compresses, the others are stored raw.
    let mut lcg = Lcg::new(7);
    let values: Vec<u8> = (0..1 << 16)
        .flat_map(|_| (((lcg.next_u64() % 2001) as f32 - 1000.0) * 1e-5).to_le_bytes())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write_valid(
        dir.path(),
        "w",
        &[tensor("w", "F32", &[1 << 16], &values)],
        &Map::new(),
        &opts(Some("zstd"), None),
    );
    let reader = DtReader::open(&path).unwrap();
    let info = reader.tensor("w").unwrap().clone();
    let chunk = info.chunks.as_ref().unwrap()[0].clone();
    let planes = chunk.planes().expect("float chunks are filtered").to_vec();
    let plane_raw = chunk.raw_len() / 4;
    let (p, &len) = planes
        .iter()
        .enumerate()
        .find(|(_, &l)| l < plane_raw)
        .expect("a compressed plane");
    let start = chunk.offset() + planes[..p].iter().sum::<u64>();
    drop(reader);
    let bytes = std::fs::read(&path).unwrap();
    // Flip bytes inside the compressed plane's frame (past its 4-byte magic).
    for k in [4u64, len / 2, len - 2] {
        let mut damaged = bytes.clone();
        damaged[(start + k) as usize] ^= 0x5a;
        match open_bytes(&damaged).unwrap().read_tensor("w") {
            Err(Error::CorruptChunk { name, index, .. }) => {
                assert_eq!((name.as_str(), index), ("w", 0));
            }
            other => panic!("flip at {k}: expected CorruptChunk, got {:?}", other.map(|b| b.len())),
        }
    }
    assert_eq!(&open_bytes(&bytes).unwrap().read_tensor("w").unwrap()[..], &values[..]);
}

// ---------------------------------------------------------------- aliases and layouts

/// Two uncompressed F32 entries over bytes [0, 16); `second` is JSON for the second entry's extra fields.
fn aliased(second: &str) -> Vec<u8> {
    let json = format!(
        r#"{{"tensors":[{{"name":"a","dtype":"F32","shape":[4],"offsets":[0,16]}},{{"name":"b","dtype":"F32","shape":[4],"offsets":[0,16]{second}}}]}}"#
    );
    craft_aligned(0, &json, &sixteen())
}

#[test]
fn aliases_share_bytes_only_when_they_repeat_their_target() {
    let reader = open_bytes(&aliased(r#","alias_of":"a""#)).unwrap();
    assert_eq!(reader.tensor("b").unwrap().alias_of.as_deref(), Some("a"));
    assert_eq!(&reader.read_tensor("b").unwrap()[..], &sixteen()[..]);
    // Without alias_of the same bytes are an overlap.
    assert_invalid_tensor(&open_err(&aliased("")), "b", "overlaps");
    // Unknown, later or self targets.
    assert_invalid_tensor(&open_err(&aliased(r#","alias_of":"zz""#)), "b", "earlier tensor");
    assert_invalid_tensor(&open_err(&aliased(r#","alias_of":"b""#)), "b", "earlier tensor");
    // An alias must repeat dtype and shape.
    let json = r#"{"tensors":[{"name":"a","dtype":"F32","shape":[4],"offsets":[0,16]},{"name":"b","dtype":"I32","shape":[4],"offsets":[0,16],"alias_of":"a"}]}"#;
    assert_invalid_tensor(&open_err(&craft_aligned(0, json, &sixteen())), "b", "must repeat");
    // Alias of an alias.
    let json = r#"{"tensors":[{"name":"a","dtype":"F32","shape":[4],"offsets":[0,16]},{"name":"b","dtype":"F32","shape":[4],"offsets":[0,16],"alias_of":"a"},{"name":"c","dtype":"F32","shape":[4],"offsets":[0,16],"alias_of":"b"}]}"#;
    assert_invalid_tensor(&open_err(&craft_aligned(0, json, &sixteen())), "c", "another alias");
}

/// A sparse COO tensor "s" of shape [4]: values F32 [2] at [0, 8), indices I64 [1, 2] at [64, 80).
fn sparse(layout: &str, indices_extra: &str) -> Vec<u8> {
    let json = format!(
        r#"{{"tensors":[{{"name":"s","dtype":"F32","shape":[2],"offsets":[0,8],"layout":{layout}}},{{"name":"s/i","dtype":"I64","shape":[1,2],"offsets":[64,80]{indices_extra}}}]}}"#
    );
    let mut data = vec![0u8; 80];
    data[64] = 1;
    data[72] = 3;
    craft_aligned(0, &json, &data)
}

const SPARSE_OK: &str = r#"{"id":"sparse_coo","shape":[4],"params":{"coalesced":true},"parts":{"indices":"s/i"}}"#;
const PART_OF_S: &str = r#","part_of":"s""#;

#[test]
fn layouts_are_checked_by_their_plugin() {
    let reader = open_bytes(&sparse(SPARSE_OK, PART_OF_S)).unwrap();
    assert!(reader.tensor("s").unwrap().layout.is_some());
    assert_eq!(reader.tensor("s/i").unwrap().part_of.as_deref(), Some("s"));
    let cases = [
        (
            r#"{"id":"csr9","shape":[4],"parts":{"indices":"s/i"}}"#,
            PART_OF_S,
            "s",
            "csr9",
        ),
        (
            r#"{"id":"sparse_coo","shape":[4],"parts":{}}"#,
            PART_OF_S,
            "s",
            "needs parts",
        ),
        (
            r#"{"id":"sparse_coo","shape":[4],"parts":{"indices":"nope"}}"#,
            PART_OF_S,
            "s",
            "not an entry part_of it",
        ),
        (
            r#"{"id":"sparse_coo","shape":[4,4],"parts":{"indices":"s/i"}}"#,
            PART_OF_S,
            "s",
            "sparse",
        ),
        (
            r#"{"id":"sparse_coo","shape":[4],"params":{"x":1},"parts":{"indices":"s/i"}}"#,
            PART_OF_S,
            "s",
            "unknown parameter",
        ),
        (SPARSE_OK, "", "s", "not an entry part_of it"),
    ];
    for (layout, extra, tensor, needle) in cases {
        let err = open_err(&sparse(layout, extra));
        assert_invalid_tensor(&err, tensor, needle);
    }
}

#[test]
fn parts_must_be_listed_by_their_owner() {
    let json = r#"{"tensors":[{"name":"a","dtype":"F32","shape":[4],"offsets":[0,16],"part_of":"a2"},{"name":"a2","dtype":"F32","shape":[4],"offsets":[64,80]}]}"#;
    let mut data = sixteen();
    data.resize(80, 0);
    assert_invalid_tensor(&open_err(&craft_aligned(0, json, &data)), "a", "does not list it");
}

#[test]
fn bool_bytes_other_than_0_and_1_read_as_true() {
    // Writers must store BOOL as 0x00 / 0x01; a foreign file may hold other bytes, which
    // reads take as true, as stats do. They used to reach torch as bools of value 2 or 255.
    let stored = [0u8, 1, 2, 255, 0, 7, 1, 128].repeat(64);
    let canonical = [0u8, 1, 1, 1, 0, 1, 1, 1].repeat(64);
    let plain = craft_aligned(
        0,
        r#"{"tensors":[{"name":"b","dtype":"BOOL","shape":[512],"offsets":[0,512]}]}"#,
        &stored,
    );
    let zstd_codec = registry::codecs().unwrap().get("zstd").unwrap();
    let packed = zstd_codec.compress(&stored, 3).unwrap();
    let n = packed.len();
    let json = format!(
        r#"{{"compression":{{"codec":"zstd","level":3}},"tensors":[{{"name":"b","dtype":"BOOL","shape":[512],"offsets":[0,{n}],"chunks":[[0,{n},512]]}}]}}"#
    );
    let zstd = craft_aligned(FLAG_COMPRESSED, &json, &packed);
    // The zero-copy map of the plain file holds them canonical too (the file does not change).
    let reader = open_bytes(&plain).unwrap();
    let (map, at, len) = reader.tensor_mapping("b").unwrap();
    assert_eq!(&map[at..at + len], &canonical[..]);
    for bytes in [plain, zstd] {
        let reader = open_bytes(&bytes).unwrap();
        assert_eq!(&reader.read_tensor("b").unwrap()[..], &canonical[..]);
        let info = reader.tensor("b").unwrap();
        let mut part = [9u8; 5];
        reader.read_range(info, 2, &mut part).unwrap();
        assert_eq!(part, canonical[2..7]);
        // The remote path (stored bytes fetched by ranges) too.
        let mut stored = vec![0u8; info.stored_len as usize];
        reader.read_stored(info.file_offset, &mut stored).unwrap();
        let remote = deathtensors::reader::decode_stored(reader.layout(), info, &stored).unwrap();
        assert_eq!(&remote[..], &canonical[..]);
    }
}
