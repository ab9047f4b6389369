//! Round trips through the writer and reader, and the guarantees of the file
//! layout: alignment, preamble, chunking, checksums, lazy reads, atomic saves.

use deathtensors_plugins as _;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use deathtensors::format::{Chunk, FLAG_CHECKSUM, FLAG_COMPRESSED, FOOTER_LEN, MAGIC, PREAMBLE_LEN, TENSOR_ALIGNMENT};
use deathtensors::reader::DtReader;
use deathtensors::registry;
use deathtensors::writer::{write_file, TensorData, WriteOptions};
use deathtensors::Error;
use deathtensors_integration_tests::{hidden_entries, noise, opts, pattern, tensor, write_valid, Lcg};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const CODECS: [Option<&str>; 3] = [None, Some("zstd"), Some("lz4")];
const CHECKSUMS: [Option<&str>; 3] = [None, Some("sha256"), Some("blake3")];

fn modes() -> impl Iterator<Item = (Option<&'static str>, Option<&'static str>)> {
    CODECS
        .into_iter()
        .flat_map(|c| CHECKSUMS.into_iter().map(move |s| (c, s)))
}

fn mode_name(codec: Option<&str>, checksum: Option<&str>) -> String {
    format!(
        "{}-{}.deathtensors",
        codec.unwrap_or("raw"),
        checksum.unwrap_or("nosum")
    )
}

fn item_size(dtype: &str) -> usize {
    registry::dtypes().unwrap().get(dtype).unwrap().item_size()
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Flip the bits of the byte at `at` in the file at `path`.
fn flip_byte(path: &Path, at: u64) {
    let file = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0xff;
    file.write_all_at(&b, at).unwrap();
}

/// Overwrite bytes at `at` in the file at `path`, in place.
fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, at).unwrap();
}

/// Check that `reader` holds exactly `expected`, in order, and that the
/// layout rules hold for each tensor.
fn assert_holds(reader: &DtReader, expected: &[TensorData<'_>]) {
    let keys: Vec<&str> = reader.keys().collect();
    let names: Vec<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(keys, names);
    let compressed = reader.codec().is_some();
    for t in expected {
        let info = reader.tensor(&t.name).unwrap();
        assert_eq!(info.dtype.id(), t.dtype, "{}", t.name);
        assert_eq!(info.shape, t.shape, "{}", t.name);
        assert_eq!(info.nbytes, t.data.len() as u64, "{}", t.name);
        assert_eq!(info.metadata, t.metadata, "{}", t.name);
        let got = reader.read_tensor(&t.name).unwrap();
        assert!(got[..] == *t.data, "tensor {:?} differs after the round trip", t.name);
        if !got.is_empty() {
            // Empty buffers are only 8-byte aligned: see empty_read_buffers_are_64_byte_aligned.
            assert_eq!(got.as_ptr() as usize % 64, 0, "read buffers are 64-byte aligned");
        }
        let mut into = vec![0u8; t.data.len()];
        reader.read_into(info, &mut into).unwrap();
        assert!(into[..] == *t.data);
        if compressed {
            let chunks = info.chunks.as_ref().expect("compressed tensors have chunk tables");
            assert_contiguous(info.file_offset, info.stored_len, info.nbytes, chunks);
        } else {
            assert!(info.chunks.is_none());
            if info.nbytes > 0 {
                // Only tensors that hold bytes need aligning.
                assert_eq!(
                    info.file_offset % TENSOR_ALIGNMENT,
                    0,
                    "{} at {}",
                    t.name,
                    info.file_offset
                );
            }
            assert_eq!(info.stored_len, info.nbytes);
        }
    }
}

fn assert_contiguous(file_offset: u64, stored_len: u64, nbytes: u64, chunks: &[Chunk]) {
    let mut cursor = file_offset;
    for c in chunks {
        assert_eq!(c.offset(), cursor, "chunks are contiguous");
        assert!(c.stored_len() >= 1 && c.stored_len() <= c.raw_len());
        cursor += c.stored_len();
    }
    assert_eq!(cursor, file_offset + stored_len, "chunks fill the byte range");
    assert_eq!(chunks.iter().map(Chunk::raw_len).sum::<u64>(), nbytes);
}

#[test]
fn every_dtype_round_trips_in_every_mode() {
    let dtypes: Vec<&str> = registry::dtypes().unwrap().ids().collect();
    assert_eq!(dtypes.len(), 17);
    let datas: Vec<Vec<u8>> = dtypes
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut v = pattern(3 * 5 * item_size(d), i as u64);
            if *d == "BOOL" {
                v.iter_mut().for_each(|b| *b &= 1); // writers refuse other bytes
            }
            v
        })
        .collect();
    let scalars: Vec<Vec<u8>> = dtypes
        .iter()
        .map(|d| {
            let mut v = noise(item_size(d), 99);
            if *d == "BOOL" {
                v.iter_mut().for_each(|b| *b &= 1); // writers refuse other bytes
            }
            v
        })
        .collect();
    let scalar_names: Vec<String> = dtypes.iter().map(|d| format!("scalar_{d}")).collect();
    let mut tensors = Vec::new();
    for ((d, data), (scalar, scalar_name)) in dtypes.iter().zip(&datas).zip(scalars.iter().zip(&scalar_names)) {
        tensors.push(tensor(d, d, &[3, 5], data));
        tensors.push(tensor(scalar_name, d, &[], scalar));
    }
    let dir = tempfile::tempdir().unwrap();
    for chunk_bytes in [1 << 20, 16] {
        for (codec, checksum) in modes() {
            let mut options = opts(codec, checksum);
            options.chunk_bytes = chunk_bytes;
            let path = write_valid(dir.path(), &mode_name(codec, checksum), &tensors, &Map::new(), &options);
            let reader = DtReader::open(&path).unwrap();
            assert_eq!(reader.codec().map(|c| c.id()), codec);
            assert_eq!(reader.checksum().map(|c| c.id()), checksum);
            assert_holds(&reader, &tensors);
            match checksum {
                Some(_) => reader.verify().unwrap(),
                None => assert!(matches!(reader.verify(), Err(Error::NoChecksum))),
            }
        }
    }
}

#[test]
fn the_most_compressible_tensors_stay_within_their_codecs_expansion_bound() {
    // All-zero tensors compress as far as a codec can; the expansion bound the
    // reader enforces at open must never refuse what the writer makes of them.
    let zeros = vec![0u8; 64 << 20];
    let dir = tempfile::tempdir().unwrap();
    for codec in ["zstd", "lz4"] {
        for chunk_bytes in [4096, 1 << 20, 64 << 20] {
            let tensors = [
                tensor("u8", "U8", &[zeros.len() as u64], &zeros),
                tensor("f32", "F32", &[(zeros.len() / 4) as u64], &zeros),
                tensor("bf16", "BF16", &[1 << 20], &zeros[..2 << 20]),
            ];
            let mut options = opts(Some(codec), None);
            options.chunk_bytes = chunk_bytes;
            let path = write_valid(
                dir.path(),
                &format!("{codec}-{chunk_bytes}"),
                &tensors,
                &Map::new(),
                &options,
            );
            let reader = DtReader::open(&path).unwrap_or_else(|e| panic!("{codec} {chunk_bytes}: {e}"));
            for t in &tensors {
                assert!(reader.read_tensor(&t.name).unwrap().iter().all(|&b| b == 0));
            }
        }
    }
}

#[test]
fn zero_size_and_scalar_tensors_round_trip() {
    let scalar = 2.5f64.to_le_bytes();
    let five = [1u8, 2, 3, 4, 5];
    let tensors = [
        tensor("empty_first", "F32", &[0], &[]),
        tensor("scalar", "F64", &[], &scalar),
        tensor("empty_mid", "I16", &[3, 0, 5], &[]),
        tensor("five", "U8", &[5], &five),
        tensor("empty_2d", "BF16", &[0, 0], &[]),
        tensor("scalar_u8", "U8", &[], &five[..1]),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (codec, checksum) in modes() {
        let path = write_valid(
            dir.path(),
            &mode_name(codec, checksum),
            &tensors,
            &Map::new(),
            &opts(codec, checksum),
        );
        let reader = DtReader::open(&path).unwrap();
        assert_holds(&reader, &tensors);
        assert_eq!(reader.tensor("scalar").unwrap().numel(), 1);
        assert_eq!(reader.tensor("empty_mid").unwrap().numel(), 0);
        assert_eq!(reader.read_tensor("empty_mid").unwrap().len(), 0);
        // An empty tensor sits at the end of the previous non-empty one (the data start at first).
        let mut previous_end = reader.layout().data_start;
        for info in reader.tensors() {
            if info.nbytes == 0 {
                assert_eq!(info.file_offset, previous_end, "{codec:?}: {}", info.name);
                assert_eq!(info.stored_len, 0);
            } else {
                previous_end = info.file_offset + info.stored_len;
            }
        }
        if checksum.is_some() {
            reader.verify().unwrap();
        }
    }
}

#[test]
fn zero_size_tensor_last_after_odd_length_tensor() {
    let five = [1u8, 2, 3, 4, 5];
    let tensors = [
        tensor("five", "U8", &[5], &five),
        tensor("empty_last", "F32", &[0], &[]),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (codec, checksum) in modes() {
        let path = write_valid(
            dir.path(),
            &mode_name(codec, checksum),
            &tensors,
            &Map::new(),
            &opts(codec, checksum),
        );
        let reader = DtReader::open(&path).unwrap_or_else(|e| panic!("{codec:?}/{checksum:?}: {e}"));
        assert_holds(&reader, &tensors);
    }
}

#[test]
fn empty_read_buffers_are_64_byte_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_valid(
        dir.path(),
        "e.dt",
        &[tensor("e", "F32", &[0], &[])],
        &Map::new(),
        &opts(None, None),
    );
    let buf = DtReader::open(&path).unwrap().read_tensor("e").unwrap();
    assert!(buf.is_empty());
    assert_eq!(buf.as_ptr() as usize % 64, 0);
    assert_eq!(
        deathtensors::buffer::AlignedBuf::zeroed(0).unwrap().as_ptr() as usize % 64,
        0
    );
}

#[test]
fn only_empty_tensors_and_no_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for (codec, checksum) in modes() {
        let none: [TensorData<'_>; 0] = [];
        let path = write_valid(
            dir.path(),
            "none.dt",
            &none,
            &obj(json!({"k": 1})),
            &opts(codec, checksum),
        );
        let reader = DtReader::open(&path).unwrap();
        assert_eq!(reader.keys().count(), 0);
        assert_eq!(reader.metadata()["k"], json!(1));
        let empties = [tensor("e", "F32", &[0, 7], &[]), tensor("f", "C128", &[9, 0], &[])];
        let path = write_valid(dir.path(), "empty.dt", &empties, &Map::new(), &opts(codec, checksum));
        assert_holds(&DtReader::open(&path).unwrap(), &empties);
    }
}

#[test]
fn tensor_order_is_preserved() {
    let names = [
        "zeta",
        "alpha",
        "Mu",
        "10",
        "2",
        "",
        "ünï ✓ 名前",
        "with \"quotes\"\n\\",
        "a.b/c:d",
    ];
    let datas: Vec<Vec<u8>> = (0..names.len()).map(|i| pattern(4 * (i + 1), i as u64)).collect();
    let tensors: Vec<TensorData<'_>> = names
        .iter()
        .zip(&datas)
        .map(|(n, d)| tensor(n, "F32", &[d.len() as u64 / 4], d))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for codec in CODECS {
        let path = write_valid(
            dir.path(),
            &mode_name(codec, None),
            &tensors,
            &Map::new(),
            &opts(codec, None),
        );
        let reader = DtReader::open(&path).unwrap();
        assert_eq!(reader.keys().collect::<Vec<_>>(), names);
        let header_order: Vec<&str> = reader.layout().header.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(header_order, names);
        assert_holds(&reader, &tensors);
    }
}

fn any_json() -> Value {
    json!({
        "null": null,
        "true": true,
        "false": false,
        "zero": 0,
        "negative": -42,
        "u64_max": u64::MAX,
        "i64_min": i64::MIN,
        "float": 1.5,
        "small_float": -0.25e-10,
        "big_float": 1e300,
        "string": "héllo \"wörld\"\n\t\\ \u{0} ✓",
        "empty_string": "",
        "array": [1, "two", 3.0, null, [false], {"x": []}],
        "empty_array": [],
        "object": {"nested": {"deeper": {"deepest": [1, 2, {"k": "v"}]}}},
        "empty_object": {},
    })
}

#[test]
fn metadata_of_any_json_type_round_trips() {
    let global = obj(any_json());
    let mut per_tensor = obj(any_json());
    per_tensor.insert("only_here".into(), json!(["per", "tensor"]));
    let data = pattern(64, 1);
    let mut with_meta = tensor("with_meta", "U8", &[64], &data);
    with_meta.metadata = per_tensor.clone();
    let tensors = [with_meta, tensor("without_meta", "U8", &[64], &data)];
    let dir = tempfile::tempdir().unwrap();
    for (codec, checksum) in modes() {
        let path = write_valid(
            dir.path(),
            &mode_name(codec, checksum),
            &tensors,
            &global,
            &opts(codec, checksum),
        );
        let reader = DtReader::open(&path).unwrap();
        assert_eq!(reader.metadata(), &global);
        let keys: Vec<&String> = reader.metadata().keys().collect();
        assert_eq!(keys, global.keys().collect::<Vec<_>>(), "metadata key order is kept");
        assert_eq!(reader.tensor("with_meta").unwrap().metadata, per_tensor);
        assert!(reader.tensor("without_meta").unwrap().metadata.is_empty());
        assert_holds(&reader, &tensors);
    }
}

#[test]
fn metadata_floats_round_trip_exactly() {
    let floats = [
        0.1,
        1.0 / 3.0,
        2.0 / 3.0,
        std::f64::consts::PI,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        123_456_789.123_456_78,
        9_007_199_254_740_993.0,
        -0.0,
    ];
    let global: Map<String, Value> = floats
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("f{i}"), json!(f)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write_valid(dir.path(), "floats.dt", &[], &global, &opts(None, None));
    let reader = DtReader::open(&path).unwrap();
    for (i, f) in floats.iter().enumerate() {
        let got = reader.metadata()[&format!("f{i}")].as_f64().unwrap();
        assert_eq!(got.to_bits(), f.to_bits(), "metadata float {f:e} came back as {got:e}");
    }
}

#[test]
fn uncompressed_tensors_are_64_byte_aligned_in_the_file() {
    let sizes = [1usize, 3, 7, 63, 64, 65, 127, 200, 1000];
    let datas: Vec<Vec<u8>> = sizes.iter().map(|&n| noise(n, n as u64)).collect();
    let tensors: Vec<TensorData<'_>> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| tensor(&format!("t{i}"), "U8", &[d.len() as u64], d))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for checksum in CHECKSUMS {
        let path = write_valid(
            dir.path(),
            &mode_name(None, checksum),
            &tensors,
            &Map::new(),
            &opts(None, checksum),
        );
        let bytes = fs::read(&path).unwrap();
        let reader = DtReader::open(&path).unwrap();
        assert_eq!(reader.layout().data_start % TENSOR_ALIGNMENT, 0);
        let mut previous_end = reader.layout().data_start;
        for (t, info) in tensors.iter().zip(reader.tensors()) {
            assert_eq!(info.file_offset % TENSOR_ALIGNMENT, 0);
            let at = info.file_offset as usize;
            assert!(
                bytes[at..at + t.data.len()] == *t.data,
                "tensor bytes lie at file_offset"
            );
            assert!(
                bytes[previous_end as usize..at].iter().all(|&b| b == 0),
                "gaps are zero"
            );
            assert!(info.file_offset - previous_end < TENSOR_ALIGNMENT, "gaps are minimal");
            previous_end = info.file_offset + info.stored_len;
        }
        let footer = if checksum.is_some() { FOOTER_LEN } else { 0 };
        assert_eq!(previous_end + footer, bytes.len() as u64);
    }
}

#[test]
fn preamble_and_header_are_as_documented() {
    let data = pattern(4 * 64, 5);
    let tensors = [tensor("w", "F32", &[8, 8], &data)];
    let dir = tempfile::tempdir().unwrap();
    for (codec, checksum) in modes() {
        let path = write_valid(
            dir.path(),
            &mode_name(codec, checksum),
            &tensors,
            &Map::new(),
            &opts(codec, checksum),
        );
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"DTLEGION");
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(bytes[8..12], 1u32.to_le_bytes(), "version 1, little-endian");
        let flags = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
        let mut expected_flags = 0;
        if codec.is_some() {
            expected_flags |= FLAG_COMPRESSED;
        }
        if checksum.is_some() {
            expected_flags |= FLAG_CHECKSUM;
        }
        assert_eq!(flags, expected_flags);
        assert_eq!(FLAG_COMPRESSED, 1);
        assert_eq!(FLAG_CHECKSUM, 2);
        let header_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        let reader = DtReader::open(&path).unwrap();
        assert_eq!(reader.layout().header_len, header_len);
        assert_eq!(reader.layout().flags, flags);
        let header_end = (PREAMBLE_LEN + header_len) as usize;
        let data_start = reader.layout().data_start as usize;
        assert!(data_start >= header_end && data_start - header_end < 8);
        assert_eq!(data_start % 8, 0);
        assert!(bytes[header_end..data_start].iter().all(|&b| b == 0), "NUL padding");
        let header: Value = serde_json::from_slice(&bytes[24..header_end]).unwrap();
        assert_eq!(header["tensors"][0]["name"], "w");
        assert_eq!(header["tensors"][0]["dtype"], "F32");
        assert_eq!(header["tensors"][0]["shape"], json!([8, 8]));
        match codec {
            Some(id) => {
                assert_eq!(header["compression"]["codec"], id);
                assert!(header["compression"]["level"].is_i64());
                assert!(header["tensors"][0]["chunks"].is_array());
            }
            None => {
                assert!(header.get("compression").is_none());
                assert!(header["tensors"][0].get("chunks").is_none());
            }
        }
        match checksum {
            Some(id) => {
                assert_eq!(header["checksum"], id);
                // The footer is the digest of everything between the preamble and the footer.
                let end = bytes.len() - FOOTER_LEN as usize;
                let mut hasher = registry::checksums().unwrap().get(id).unwrap().hasher();
                hasher.update(&bytes[PREAMBLE_LEN as usize..end]);
                let digest = hasher.finish();
                assert_eq!(&bytes[end..], &digest[..]);
                assert_eq!(reader.stored_digest().unwrap(), digest);
            }
            None => assert!(header.get("checksum").is_none()),
        }
        let footer = if checksum.is_some() { FOOTER_LEN } else { 0 };
        assert_eq!(reader.file_len(), bytes.len() as u64);
        assert_eq!(
            reader.layout().data_start + reader.layout().data_len + footer,
            bytes.len() as u64
        );
    }
}

#[test]
fn multi_chunk_compressed_tensor_round_trips_with_contiguous_chunks() {
    // 100 rows of 33 F32 (132 bytes per row): 7 whole rows per 1000-byte chunk.
    let compressible = vec![7u8; 100 * 33 * 4];
    let random = noise(100 * 33 * 4, 3);
    let long_rows = pattern(2 * 1000 * 4, 4);
    let tensors = [
        tensor("compressible", "F32", &[100, 33], &compressible),
        tensor("random", "F32", &[100, 33], &random),
        tensor("long_rows", "F32", &[2, 1000], &long_rows),
    ];
    let dir = tempfile::tempdir().unwrap();
    for codec in ["zstd", "lz4"] {
        for checksum in CHECKSUMS {
            let mut options = opts(Some(codec), checksum);
            options.chunk_bytes = 1000;
            let path = write_valid(
                dir.path(),
                &mode_name(Some(codec), checksum),
                &tensors,
                &Map::new(),
                &options,
            );
            let reader = DtReader::open(&path).unwrap();
            assert_holds(&reader, &tensors);
            let mut previous_end = reader.layout().data_start;
            for info in reader.tensors() {
                let chunks = info.chunks.as_ref().unwrap();
                assert!(chunks.len() > 1, "{} has {} chunks", info.name, chunks.len());
                assert_eq!(info.file_offset, previous_end, "tensors follow each other");
                assert_eq!(chunks[0].offset(), info.file_offset);
                previous_end = info.file_offset + info.stored_len;
                for c in chunks {
                    assert!(c.raw_len() <= 1000);
                    if info.name == "long_rows" {
                        assert_eq!(c.raw_len() % 4, 0, "a long row splits at whole elements");
                    } else {
                        assert_eq!(c.raw_len() % 132, 0, "chunks hold whole rows");
                    }
                }
                let (last, rest) = chunks.split_last().unwrap();
                assert!(rest.iter().all(|c| c.raw_len() == chunks[0].raw_len()));
                assert!(last.raw_len() <= chunks[0].raw_len());
            }
            let compressible = reader.tensor("compressible").unwrap();
            assert!(compressible.chunks.as_ref().unwrap().iter().all(|c| !c.is_raw()));
            assert!(compressible.stored_len < compressible.nbytes / 4);
            let random = reader.tensor("random").unwrap();
            // Noise is stored raw: whole chunks (lz4), or every filter plane (zstd + bytegroup).
            for c in random.chunks.as_ref().unwrap() {
                assert_eq!(c.stored_len(), c.raw_len(), "noise is stored raw");
                if let Some(planes) = c.planes() {
                    assert!(planes.iter().all(|&p| p * 4 == c.raw_len()), "every plane raw");
                }
            }
            assert_eq!(random.stored_len, random.nbytes);
            if checksum.is_some() {
                reader.verify().unwrap();
            }
        }
    }
}

#[test]
fn verify_detects_one_flipped_byte() {
    let data = pattern(4096, 8);
    let tensors = [tensor("a", "U8", &[4096], &data), tensor("b", "U8", &[4096], &data)];
    let dir = tempfile::tempdir().unwrap();
    for codec in CODECS {
        for checksum in ["sha256", "blake3"] {
            let path = write_valid(dir.path(), "v.dt", &tensors, &Map::new(), &opts(codec, Some(checksum)));
            let reader = DtReader::open(&path).unwrap();
            reader.verify().unwrap();
            let len = reader.file_len();
            let b = reader.tensor("b").unwrap();
            let data_byte = b.file_offset + b.stored_len / 2;
            let header_end = PREAMBLE_LEN + reader.layout().header_len;
            drop(reader);

            // A data byte.
            flip_byte(&path, data_byte);
            let reader = DtReader::open(&path).unwrap();
            match reader.verify() {
                Err(Error::ChecksumMismatch {
                    algorithm,
                    expected,
                    computed,
                }) => {
                    assert_eq!(algorithm, checksum);
                    assert_ne!(expected, computed);
                    assert_eq!(expected.len(), 64);
                }
                other => panic!("{codec:?}/{checksum}: expected ChecksumMismatch, got {other:?}"),
            }
            flip_byte(&path, data_byte);
            DtReader::open(&path).unwrap().verify().unwrap();

            // A header byte: the last padding space becomes a newline, still valid JSON.
            overwrite(&path, header_end - 1, b"\n");
            let reader = DtReader::open(&path).unwrap();
            assert!(
                matches!(reader.verify(), Err(Error::ChecksumMismatch { .. })),
                "header bytes are hashed"
            );
            overwrite(&path, header_end - 1, b" ");

            // A footer byte.
            flip_byte(&path, len - 1);
            let reader = DtReader::open(&path).unwrap();
            assert!(matches!(reader.verify(), Err(Error::ChecksumMismatch { .. })));
            flip_byte(&path, len - 1);
            DtReader::open(&path).unwrap().verify().unwrap();
        }
    }
}

#[test]
fn verify_without_footer_is_no_checksum() {
    let data = pattern(100, 9);
    let dir = tempfile::tempdir().unwrap();
    for codec in CODECS {
        let path = write_valid(
            dir.path(),
            "n.dt",
            &[tensor("a", "U8", &[100], &data)],
            &Map::new(),
            &opts(codec, None),
        );
        let reader = DtReader::open(&path).unwrap();
        assert!(reader.checksum().is_none());
        let err = reader.verify().unwrap_err();
        assert!(matches!(err, Error::NoChecksum), "{err:?}");
        assert_eq!(err.class_name(), "NoChecksumError");
        assert!(matches!(reader.stored_digest(), Err(Error::NoChecksum)));
    }
}

#[test]
fn reading_one_tensor_reads_only_its_bytes() {
    let a = pattern(1000, 10);
    let b = pattern(1000, 11);
    let c = pattern(1000, 12);
    let tensors = [
        tensor("a", "U8", &[1000], &a),
        tensor("b", "U8", &[1000], &b),
        tensor("c", "U8", &[1000], &c),
    ];
    let dir = tempfile::tempdir().unwrap();

    // Uncompressed: garbage in b, written after the reader opened, is read back as is.
    let path = write_valid(dir.path(), "lazy.dt", &tensors, &Map::new(), &opts(None, None));
    let reader = DtReader::open(&path).unwrap();
    let info = reader.tensor("b").unwrap();
    overwrite(&path, info.file_offset, &vec![0xAB; 1000]);
    assert!(reader.read_tensor("a").unwrap()[..] == a[..]);
    assert!(reader.read_tensor("c").unwrap()[..] == c[..]);
    assert!(reader.read_tensor("b").unwrap().iter().all(|&x| x == 0xAB));
    let reopened = DtReader::open(&path).unwrap();
    assert!(reopened.read_tensor("a").unwrap()[..] == a[..]);
    assert!(reopened.read_tensor("c").unwrap()[..] == c[..]);

    // Compressed: a destroyed chunk of b does not stop a and c from reading.
    let mut options = opts(Some("zstd"), None);
    options.chunk_bytes = 300;
    let path = write_valid(dir.path(), "lazy_z.dt", &tensors, &Map::new(), &options);
    let info = DtReader::open(&path).unwrap().tensor("b").unwrap().clone();
    overwrite(&path, info.file_offset, &vec![0xAB; info.stored_len as usize]);
    let reader = DtReader::open(&path).unwrap();
    assert!(reader.read_tensor("a").unwrap()[..] == a[..]);
    assert!(reader.read_tensor("c").unwrap()[..] == c[..]);
    assert!(matches!(reader.read_tensor("b"), Err(Error::CorruptChunk { ref name, .. }) if name == "b"));
}

#[test]
fn saving_over_an_open_file_leaves_the_reader_on_the_old_contents() {
    let old = pattern(5000, 20);
    let new = pattern(777 * 4, 21);
    let dir = tempfile::tempdir().unwrap();
    for (codec, checksum) in modes() {
        let path = write_valid(
            dir.path(),
            "model.dt",
            &[tensor("old", "U8", &[5000], &old)],
            &obj(json!({"v": 1})),
            &opts(codec, checksum),
        );
        let reader = DtReader::open(&path).unwrap();
        let held = reader.file_identity().unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(held, (meta.dev(), meta.ino()));
        write_valid(
            dir.path(),
            "model.dt",
            &[
                tensor("new", "I32", &[777], &new),
                tensor("other", "U8", &[3], &[1, 2, 3]),
            ],
            &obj(json!({"v": 2})),
            &opts(codec, checksum),
        );
        assert!(reader.read_tensor("old").unwrap()[..] == old[..]);
        assert_eq!(reader.metadata()["v"], 1);
        if checksum.is_some() {
            reader.verify().unwrap();
        }
        let fresh = DtReader::open(&path).unwrap();
        // The path now names another file; the old reader still holds its own.
        assert_eq!(reader.file_identity().unwrap(), held);
        assert_ne!(fresh.file_identity().unwrap(), held);
        assert_eq!(fresh.keys().collect::<Vec<_>>(), ["new", "other"]);
        assert!(fresh.read_tensor("new").unwrap()[..] == new[..]);
        assert!(matches!(fresh.read_tensor("old"), Err(Error::TensorNotFound(ref n)) if n == "old"));
        assert!(hidden_entries(dir.path()).is_empty());
    }
}

#[test]
fn no_temporary_files_remain_after_saves() {
    let data = pattern(3000, 30);
    let dir = tempfile::tempdir().unwrap();
    for (i, (codec, checksum)) in modes().enumerate() {
        let mut options = opts(codec, checksum);
        options.durable = i % 2 == 0;
        write_valid(
            dir.path(),
            "same.dt",
            &[tensor("x", "U8", &[3000], &data)],
            &Map::new(),
            &options,
        );
        write_valid(
            dir.path(),
            &format!("{i}.dt"),
            &[tensor("x", "U8", &[3000], &data)],
            &Map::new(),
            &options,
        );
    }
    assert_eq!(hidden_entries(dir.path()), Vec::<String>::new());
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 10);
    assert!(names.contains(&"same.dt".to_owned()));
}

#[test]
fn failed_writes_leave_the_target_untouched() {
    let data = pattern(64, 40);
    let dir = tempfile::tempdir().unwrap();
    let path = write_valid(
        dir.path(),
        "target.dt",
        &[tensor("x", "U8", &[64], &data)],
        &Map::new(),
        &opts(Some("zstd"), Some("sha256")),
    );
    let before = fs::read(&path).unwrap();
    let good = || tensor("y", "F32", &[16], &data);

    let cases: Vec<(&str, Vec<TensorData<'_>>, WriteOptions)> = vec![
        ("duplicate names", vec![good(), good()], opts(None, None)),
        (
            "wrong byte length",
            vec![tensor("y", "F32", &[15], &data)],
            opts(None, None),
        ),
        (
            "wrong byte length, scalar",
            vec![tensor("y", "F64", &[], &data[..4])],
            opts(None, None),
        ),
        (
            "shape overflow",
            vec![tensor("y", "F32", &[u64::MAX, 2], &data)],
            opts(None, None),
        ),
        (
            "unknown dtype",
            vec![tensor("y", "F99", &[16], &data)],
            opts(None, None),
        ),
        ("unknown codec", vec![good()], opts(Some("gzip"), None)),
        ("unknown checksum", vec![good()], opts(None, Some("md5"))),
        (
            "codec failure mid-write",
            vec![good()],
            WriteOptions {
                level: Some(99),
                ..opts(Some("zstd"), Some("blake3"))
            },
        ),
        (
            "chunk_bytes zero",
            vec![good()],
            WriteOptions {
                chunk_bytes: 0,
                ..opts(Some("lz4"), None)
            },
        ),
    ];
    for (what, tensors, options) in cases {
        let err = write_file(&path, &tensors, &Map::new(), &options).expect_err(what);
        match what {
            "unknown dtype" => {
                assert!(
                    matches!(err, Error::UnknownPlugin { kind: "dtype", ref id, .. } if id == "F99"),
                    "{err:?}"
                )
            }
            "unknown codec" => {
                assert!(
                    matches!(err, Error::UnknownPlugin { kind: "codec", ref id, .. } if id == "gzip"),
                    "{err:?}"
                )
            }
            "unknown checksum" => {
                assert!(
                    matches!(err, Error::UnknownPlugin { kind: "checksum", ref id, .. } if id == "md5"),
                    "{err:?}"
                )
            }
            _ => assert!(matches!(err, Error::InvalidArgument(_)), "{what}: {err:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), before, "{what}: the target changed");
        assert_eq!(
            hidden_entries(dir.path()),
            Vec::<String>::new(),
            "{what}: a temporary file remains"
        );
    }
    let only_target: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(only_target.len(), 1);
    DtReader::open(&path).unwrap().verify().unwrap();

    let missing_dir = dir.path().join("no/such/dir/x.dt");
    let err = write_file(&missing_dir, &[good()], &Map::new(), &opts(None, None)).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn corrupt_compressed_chunk_is_a_corrupt_chunk_error() {
    let compressible: Vec<u8> = (0..20_000u32).map(|i| (i / 50) as u8).collect();
    let other = pattern(4000, 50);
    let tensors = [
        tensor("other", "U8", &[4000], &other),
        tensor("weights", "U16", &[100, 100], &compressible),
    ];
    for codec in ["zstd", "lz4"] {
        let dir = tempfile::tempdir().unwrap();
        let mut options = opts(Some(codec), None);
        options.chunk_bytes = 4000;
        let path = write_valid(dir.path(), "c.dt", &tensors, &Map::new(), &options);
        let pristine = fs::read(&path).unwrap();
        let info = DtReader::open(&path).unwrap().tensor("weights").unwrap().clone();
        let chunks = info.chunks.clone().unwrap();
        assert!(chunks.len() >= 4);
        let index = chunks.iter().rposition(|c| !c.is_raw()).unwrap();
        assert!(index > 0);
        let chunk = chunks[index].clone();

        // Destroy the start of the chunk (zstd's magic, lz4's first token).
        overwrite(&path, chunk.offset(), &[0xFF; 8]);
        let reader = DtReader::open(&path).unwrap();
        match reader.read_tensor("weights") {
            Err(Error::CorruptChunk {
                name,
                index: i,
                offset,
                reason,
            }) => {
                assert_eq!(name, "weights");
                assert_eq!(i, index);
                assert_eq!(offset, chunk.offset());
                assert!(!reason.is_empty());
            }
            other => panic!("{codec}: expected CorruptChunk, got {:?}", other.map(|b| b.len())),
        }
        let msg = reader.read_tensor("weights").err().unwrap().to_string();
        assert!(
            msg.contains("weights") && msg.contains(&chunk.offset().to_string()),
            "{msg}"
        );
        assert!(reader.read_tensor("other").unwrap()[..] == other[..]);

        // Every single-byte flip inside the chunk: right bytes, or CorruptChunk; never a panic.
        for at in chunk.offset()..chunk.offset() + chunk.stored_len() {
            fs::write(&path, &pristine).unwrap();
            flip_byte(&path, at);
            let reader = DtReader::open(&path).unwrap();
            match reader.read_tensor("weights") {
                Ok(buf) => assert_eq!(buf.len(), compressible.len()),
                Err(Error::CorruptChunk { ref name, .. }) => assert_eq!(name, "weights"),
                Err(e) => panic!("{codec}: flip at {at}: unexpected {e:?}"),
            }
        }
    }
}

/// The system's page size.
#[cfg(target_os = "linux")]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap()
}

/// How many pages of `mem` (page-aligned) are resident, asked of `mincore`.
#[cfg(target_os = "linux")]
fn resident_pages(mem: &[u8]) -> usize {
    let mut pages = vec![0u8; mem.len().div_ceil(page_size())];
    // SAFETY: `mem` is a page-aligned mapping of ours and `pages` has a byte per page.
    let rc = unsafe { libc::mincore(mem.as_ptr() as *mut libc::c_void, mem.len(), pages.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore failed");
    pages.iter().filter(|&&p| p & 1 == 1).count()
}

/// A bytegroup chunk's output is populated in one call once its planes have
/// decoded, never before: a damaged plane must not make the process back the
/// declared raw length with memory (the file, not the reader, declares it).
#[cfg(target_os = "linux")]
#[test]
fn a_damaged_plane_leaves_the_output_unpopulated_and_a_good_one_fills_it() {
    let chunk_bytes = 4 << 20;
    let values: Vec<u8> = (0..chunk_bytes / 4)
        .flat_map(|i| (((i % 977) as f32 - 488.0) * 1e-3).to_le_bytes())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut options = opts(Some("zstd"), None);
    options.chunk_bytes = chunk_bytes as u64;
    let tensors = [tensor("w", "F32", &[values.len() as u64 / 4], &values)];
    let path = write_valid(dir.path(), "p.dt", &tensors, &Map::new(), &options);
    let info = DtReader::open(&path).unwrap().tensor("w").unwrap().clone();
    let chunk = info.chunks.clone().unwrap()[0].clone();
    let lens = chunk.planes().expect("the tensor is bytegroup-filtered").to_vec();
    let plane_len = chunk.raw_len() / lens.len() as u64;

    let mut fresh = memmap2::MmapMut::map_anon(chunk_bytes).unwrap();
    let pages = chunk_bytes / page_size();
    assert_eq!(resident_pages(&fresh), 0, "a fresh mapping reads as resident");
    let reader = DtReader::open(&path).unwrap();
    reader.read_range(&info, 0, &mut fresh).unwrap();
    assert!(fresh[..] == values[..]);
    assert_eq!(resident_pages(&fresh), pages);

    // Break the frame of the last compressed plane: the planes before it decode.
    let (p, _) = lens.iter().enumerate().rfind(|(_, &len)| len != plane_len).unwrap();
    overwrite(&path, chunk.offset() + lens[..p].iter().sum::<u64>(), &[0xFF; 4]);
    let mut fresh = memmap2::MmapMut::map_anon(chunk_bytes).unwrap();
    let reader = DtReader::open(&path).unwrap();
    match reader.read_range(&info, 0, &mut fresh) {
        Err(Error::CorruptChunk { name, reason, .. }) => {
            assert_eq!(name, "w");
            assert!(reason.contains(&format!("plane {p}")), "{reason}");
        }
        other => panic!("expected CorruptChunk, got {other:?}"),
    }
    let touched = resident_pages(&fresh);
    assert_eq!(
        touched, 0,
        "{touched} pages of the output were populated by a failed decode"
    );
}

#[test]
fn a_file_that_shrinks_while_open_gives_errors_not_panics() {
    let a = pattern(5000, 70);
    let b = pattern(5000, 71);
    let tensors = [tensor("a", "U8", &[5000], &a), tensor("b", "U8", &[5000], &b)];
    let dir = tempfile::tempdir().unwrap();
    for (codec, checksum) in modes() {
        let mut options = opts(codec, checksum);
        options.chunk_bytes = 1000;
        let path = write_valid(dir.path(), "shrink.dt", &tensors, &Map::new(), &options);
        let reader = DtReader::open(&path).unwrap();
        let cut = reader.tensor("b").unwrap().file_offset + 10;
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        assert!(
            reader.read_tensor("a").unwrap()[..] == a[..],
            "bytes before the cut still read"
        );
        let err = reader.read_tensor("b").err().expect("b was cut");
        // The numbers say where the read needed to reach and how long the file is now
        // (they used to be the read's start and the length at open).
        let Error::Truncated { needed, available, .. } = err else {
            panic!("{codec:?}: {err:?}");
        };
        assert_eq!(available, cut, "{codec:?}");
        assert!(needed > cut, "{codec:?}: needs {needed}, file has {available}");
        if checksum.is_some() {
            assert!(matches!(reader.verify(), Err(Error::Truncated { .. })));
        }
        assert!(DtReader::open(&path).is_err());
    }
}

#[test]
fn writes_to_paths_that_are_not_files_fail_cleanly() {
    let data = pattern(8, 80);
    let t = [tensor("x", "U8", &[8], &data)];
    let dir = tempfile::tempdir().unwrap();
    let err = write_file("", &t, &Map::new(), &opts(None, None)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_) | Error::Io { .. }), "{err:?}");
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("keep"), b"keep").unwrap();
    let err = write_file(&sub, &t, &Map::new(), &opts(Some("zstd"), None)).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_eq!(fs::read(sub.join("keep")).unwrap(), b"keep");
    assert_eq!(hidden_entries(dir.path()), Vec::<String>::new());
}

#[test]
fn lookups_and_read_into_check_their_arguments() {
    let data = pattern(16, 60);
    let dir = tempfile::tempdir().unwrap();
    let path = write_valid(
        dir.path(),
        "a.dt",
        &[tensor("a", "F32", &[4], &data)],
        &Map::new(),
        &opts(None, None),
    );
    let reader = DtReader::open(&path).unwrap();
    assert!(matches!(reader.read_tensor("b"), Err(Error::TensorNotFound(ref n)) if n == "b"));
    assert!(matches!(reader.tensor("A"), Err(Error::TensorNotFound(_))));
    let info = reader.tensor("a").unwrap();
    let mut short = vec![0u8; 15];
    assert!(matches!(
        reader.read_into(info, &mut short),
        Err(Error::InvalidArgument(_))
    ));
    let mut long = vec![0u8; 17];
    assert!(matches!(
        reader.read_into(info, &mut long),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(reader.path(), path);
    assert!(matches!(
        DtReader::open(dir.path().join("missing.dt")),
        Err(Error::Io { .. })
    ));
    assert!(matches!(DtReader::open(dir.path()), Err(Error::Io { .. })));
}

const DTYPES: [&str; 17] = [
    "BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32", "F64", "C64", "C128",
    "F8_E4M3", "F8_E5M2",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_tensors_round_trip(
        specs in proptest::collection::vec((0usize..17, proptest::collection::vec(0u64..6, 0..4), any::<u64>()), 0..6),
        codec in 0usize..3,
        checksum in 0usize..3,
        chunk_bytes in 1u64..300,
    ) {
        let datas: Vec<Vec<u8>> = specs
            .iter()
            .map(|(d, shape, seed)| {
                let mut v = pattern(item_size(DTYPES[*d]) * shape.iter().product::<u64>() as usize, *seed);
                if DTYPES[*d] == "BOOL" {
                    v.iter_mut().for_each(|b| *b &= 1); // writers refuse other bytes
                }
                v
            })
            .collect();
        let tensors: Vec<TensorData<'_>> = specs
            .iter()
            .zip(&datas)
            .enumerate()
            .map(|(i, ((d, shape, _), data))| tensor(&format!("t{}", specs.len() - i), DTYPES[*d], shape, data))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut options = opts(CODECS[codec], CHECKSUMS[checksum]);
        options.chunk_bytes = chunk_bytes;
        let path = dir.path().join("p.dt");
        write_file(&path, &tensors, &Map::new(), &options).unwrap();
        let reader = DtReader::open(&path).unwrap();
        assert_holds(&reader, &tensors);
        if CHECKSUMS[checksum].is_some() {
            reader.verify().unwrap();
        }
    }
}

/// Regression: a filtered tensor whose first chunk is stored raw (nothing in it
/// shrank) and whose later chunks have planes must decode every chunk with the
/// filter's plane count, not one read off the first chunk.
#[test]
fn filtered_tensor_whose_first_chunk_is_raw_round_trips() {
    let mut data = noise(4096, 11); // incompressible first rows
    let mut lcg = Lcg::new(3);
    while data.len() < 4096 * 8 {
        let v = ((lcg.next_u64() % 2001) as f32 - 1000.0) * 1e-4;
        data.extend_from_slice(&v.to_le_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let mut options = opts(Some("zstd"), Some("sha256"));
    options.chunk_bytes = 4096;
    let tensors = [tensor("w", "F32", &[8, 1024], &data)];
    let path = write_valid(dir.path(), "mixed", &tensors, &Map::new(), &options);
    let reader = DtReader::open(&path).unwrap();
    let chunks = reader.tensor("w").unwrap().chunks.clone().unwrap();
    assert!(chunks[0].planes().is_none() && chunks[0].stored_len() == chunks[0].raw_len());
    assert!(chunks[1..].iter().all(|c| c.planes().map(<[u64]>::len) == Some(4)));
    assert_eq!(&reader.read_tensor("w").unwrap()[..], &data[..]);
    reader.verify().unwrap();
}

/// F32 values `scale × N(0, 1)` (Box-Muller in f64, then rounded), little-endian.
fn gaussian_f32(n: usize, scale: f64, seed: u64) -> Vec<u8> {
    let mut lcg = Lcg::new(seed);
    let mut uniform = move || ((lcg.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    (0..n)
        .flat_map(|_| {
            let (u1, u2) = (uniform(), uniform());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            ((z * scale) as f32).to_le_bytes()
        })
        .collect()
}

/// Stored bytes of `data` as F32 chunks of `chunk` bytes, bytegroup-filtered with `params`.
fn bytegroup_size(data: &[u8], params: &Map<String, Value>, chunk: usize) -> usize {
    let codec = registry::codecs().unwrap().get("zstd").unwrap();
    let filter = registry::filters().unwrap().get("bytegroup").unwrap();
    let applied = deathtensors::chunk::AppliedFilter {
        filter,
        params,
        planes: 4,
    };
    data.chunks(chunk)
        .map(|raw| {
            deathtensors::chunk::encode(raw, codec, 3, Some(applied))
                .unwrap()
                .0
                .len()
        })
        .sum()
}

/// The writer tries each `rotate` the bytegroup filter offers on a sample of
/// the tensor and keeps the one that stores smaller: 3 for weights of small
/// magnitude (the exponent's top bits are constant), 1 for N(0, 1) values.
#[test]
fn bytegroup_rotation_is_chosen_per_tensor_by_size() {
    let small = gaussian_f32(256 * 1024, 0.02, 1);
    let unit = gaussian_f32(256 * 1024, 1.0, 2);
    let dir = tempfile::tempdir().unwrap();
    let options = opts(Some("zstd"), Some("sha256"));
    let tensors = [
        tensor("small", "F32", &[256, 1024], &small),
        tensor("unit", "F32", &[256, 1024], &unit),
    ];
    let path = write_valid(dir.path(), "rotate", &tensors, &Map::new(), &options);
    let reader = DtReader::open(&path).unwrap();
    for (name, data, expected) in [("small", &small, 3), ("unit", &unit, 1)] {
        let info = reader.tensor(name).unwrap();
        let (filter, params, _) = info.filter.as_ref().unwrap();
        let id = filter.id();
        assert_eq!(id, "bytegroup", "{name}");
        assert_eq!(params["rotate"], json!(expected), "{name}");
        let other = obj(json!({"width": 4, "rotate": if expected == 3 { 1 } else { 3 }}));
        let chosen = bytegroup_size(data, params, options.chunk_bytes as usize);
        let alternative = bytegroup_size(data, &other, options.chunk_bytes as usize);
        assert!(
            chosen < alternative,
            "{name}: rotate {expected} stores {chosen}, the other {alternative}"
        );
        assert_eq!(&reader.read_tensor(name).unwrap()[..], &data[..], "{name}");
    }
    reader.verify().unwrap();
}

/// `reader::decode_stored` (remote reads) decodes a tensor from its stored
/// bytes alone, exactly as the file reader does, with the same errors.
#[test]
fn decode_stored_matches_the_file_reader() {
    let floats = gaussian_f32(64 * 1024, 0.02, 9);
    let bytes = pattern(3000, 4);
    let dir = tempfile::tempdir().unwrap();
    for (codec, checksum) in modes() {
        let mut options = opts(codec, checksum);
        options.chunk_bytes = 64 * 1024;
        let tensors = [
            tensor("f", "F32", &[64, 1024], &floats),
            tensor("b", "U8", &[3000], &bytes),
            tensor("e", "F32", &[0], &[]),
        ];
        let path = write_valid(dir.path(), &mode_name(codec, checksum), &tensors, &Map::new(), &options);
        let file = fs::read(&path).unwrap();
        let reader = DtReader::open(&path).unwrap();
        for name in ["f", "b", "e"] {
            let info = reader.tensor(name).unwrap();
            let at = info.file_offset as usize;
            let stored = &file[at..at + info.stored_len as usize];
            let decoded = deathtensors::reader::decode_stored(reader.layout(), info, stored).unwrap();
            assert_eq!(&decoded[..], &reader.read_tensor(name).unwrap()[..], "{name} {codec:?}");
            let short = &stored[..stored.len().saturating_sub(1)];
            if !stored.is_empty() {
                let err = deathtensors::reader::decode_stored(reader.layout(), info, short).err();
                assert!(matches!(err, Some(Error::InvalidArgument(_))), "{name} {codec:?}");
            }
        }
        if codec == Some("zstd") {
            let info = reader.tensor("f").unwrap();
            let at = info.file_offset as usize;
            let mut stored = file[at..at + info.stored_len as usize].to_vec();
            let frame = stored.windows(4).position(|w| w == [0x28, 0xb5, 0x2f, 0xfd]).unwrap();
            stored[frame + 40] ^= 0xff;
            let err = deathtensors::reader::decode_stored(reader.layout(), info, &stored).err();
            assert!(
                matches!(err, Some(Error::CorruptChunk { ref name, .. }) if name == "f"),
                "{err:?}"
            );
        }
    }
}

#[test]
fn read_range_decodes_only_the_covering_chunks() {
    let data = pattern(64 * 1000, 5);
    let dir = tempfile::tempdir().unwrap();
    let mut options = opts(Some("zstd"), None);
    options.chunk_bytes = 6400; // 100 rows of 64 bytes per chunk
    let tensors = [tensor("t", "U8", &[1000, 64], &data)];
    let path = write_valid(dir.path(), "range", &tensors, &Map::new(), &options);
    let reader = DtReader::open(&path).unwrap();
    let info = reader.tensor("t").unwrap().clone();
    for (start, len) in [
        (0u64, 64usize),
        (6400 - 10, 20),
        (12_345, 7_000),
        (64_000 - 1, 1),
        (0, 64_000),
    ] {
        let before = reader.decoded_bytes();
        let mut out = vec![0u8; len];
        reader.read_range(&info, start, &mut out).unwrap();
        assert_eq!(&out[..], &data[start as usize..start as usize + len]);
        let decoded = reader.decoded_bytes() - before;
        assert!(decoded <= len as u64 + 2 * 6400, "decoded {decoded} bytes for {len}");
    }
    let mut out = vec![0u8; 2];
    assert!(matches!(
        reader.read_range(&info, 63_999, &mut out),
        Err(Error::InvalidArgument(_))
    ));
}

/// Reads fill output memory that is not zeroed first (fresh or recycled heap
/// memory), so every read path must write every byte of its output. Read into
/// buffers prefilled with two different bytes: a byte a path skipped keeps its
/// filler and cannot match the tensor both times. Covers raw and compressed
/// chunks, every bytegroup width and both F32 rotations, incompressible chunks
/// stored raw, the parallel pieces of a large uncompressed read, ranges, and
/// remote decoding.
#[test]
fn every_read_path_writes_every_byte_of_its_output() {
    let small = gaussian_f32(48 * 1024, 0.02, 21); // rotate 3 wins
    let wide = gaussian_f32(48 * 1024, 1.0, 22); // rotate 1 wins
    let halves = pattern(40_000, 23);
    let doubles = pattern(64_000, 24);
    let random = noise(100_000, 25);
    let big = pattern(9 << 20, 26); // above the parallel read threshold
    let dir = tempfile::tempdir().unwrap();
    for (codec, checksum) in modes() {
        let mut options = opts(codec, checksum);
        options.chunk_bytes = 64 * 1024;
        let tensors = [
            tensor("small", "F32", &[48, 1024], &small),
            tensor("wide", "F32", &[48, 1024], &wide),
            tensor("bf16", "BF16", &[20_000], &halves),
            tensor("f16", "F16", &[20_000], &halves),
            tensor("f64", "F64", &[8000], &doubles),
            tensor("c64", "C64", &[8000], &doubles),
            tensor("random", "U8", &[100_000], &random),
            tensor("big", "U8", &[9 << 20], &big),
        ];
        let path = write_valid(dir.path(), &mode_name(codec, checksum), &tensors, &Map::new(), &options);
        let file = fs::read(&path).unwrap();
        let reader = DtReader::open(&path).unwrap();
        for t in &tensors {
            let info = reader.tensor(&t.name).unwrap();
            let what = format!("{} {codec:?}", t.name);
            for filler in [0x00u8, 0xFF] {
                let mut out = vec![filler; t.data.len()];
                reader.read_into(info, &mut out).unwrap();
                assert!(out == t.data, "read_into of {what} over {filler:#x}");
                let (start, len) = (t.data.len() / 3, t.data.len() / 2);
                let mut part = vec![filler; len];
                reader.read_range(info, start as u64, &mut part).unwrap();
                assert!(
                    part == t.data[start..start + len],
                    "read_range of {what} over {filler:#x}"
                );
            }
            // Fresh and recycled memory: read_tensor and decode_stored allocate their own.
            for _ in 0..2 {
                drop(vec![0xA5u8; t.data.len()]);
                assert!(
                    reader.read_tensor(&t.name).unwrap()[..] == *t.data,
                    "read_tensor of {what}"
                );
                let at = info.file_offset as usize;
                let stored = &file[at..at + info.stored_len as usize];
                let decoded = deathtensors::reader::decode_stored(reader.layout(), info, stored).unwrap();
                assert!(decoded[..] == *t.data, "decode_stored of {what}");
            }
        }
    }
}

/// Writers must not write BOOL bytes other than 0x00 and 0x01 (format spec
/// §8): such data is refused with the tensor and byte named, nothing written.
#[test]
fn bool_tensors_with_bytes_other_than_0_and_1_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.deathtensors");
    let err = write_file(
        &path,
        &[tensor("flags", "BOOL", &[3], &[1, 0, 2])],
        &Map::new(),
        &opts(None, None),
    );
    assert!(
        matches!(&err, Err(Error::InvalidArgument(m)) if m.contains("\"flags\"") && m.contains("byte 2")),
        "{err:?}"
    );
    assert!(!path.exists());
    write_file(
        &path,
        &[tensor("flags", "BOOL", &[3], &[1, 0, 1])],
        &Map::new(),
        &opts(None, None),
    )
    .unwrap();
    assert_eq!(
        &DtReader::open(&path).unwrap().read_tensor("flags").unwrap()[..],
        &[1, 0, 1]
    );
}
