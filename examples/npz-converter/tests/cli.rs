//! The example plugin seen from outside: a binary that links it lists it, and
//! the registry converts with it (`.npy`/`.npz` files are written by hand
//! here, byte by byte, as numpy writes them).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use deathtensors::reader::DtReader;
use deathtensors::registry::{self, Converter};
use deathtensors::writer::{write_file, TensorData, WriteOptions};
use deathtensors_npz_converter as _;
use deathtensors_plugins as _;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_deathtensors-npz");

fn npz() -> &'static dyn Converter {
    deathtensors_plugins::link();
    deathtensors_npz_converter::link();
    registry::converters()
        .expect("no duplicate converters")
        .get("npz")
        .expect("the npz converter is registered")
}

/// A `.npy` file as numpy 1.x/2.x writes it: magic, version 1.0, header
/// length, the header dict padded with spaces to a multiple of 64, the data.
fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let fortran = if fortran { "True" } else { "False" };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run deathtensors-npz");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_linked_binary_lists_the_plugin() {
    let (code, text, err) = run(&["plugins"]);
    assert_eq!(code, 0, "{err}");
    let converters = text
        .split("converters:")
        .nth(1)
        .unwrap_or_else(|| panic!("no converters section in:\n{text}"));
    let line = converters
        .lines()
        .find(|l| l.trim_start().starts_with("npz "))
        .unwrap_or_else(|| panic!("npz is not listed under converters:\n{text}"));
    assert!(line.contains("[deathtensors-npz-converter]"), "{line}");
    // The built-in plugins are still there.
    assert!(
        text.contains("zstd") && text.contains("sha256") && text.contains("F32"),
        "{text}"
    );

    let (code, json, err) = run(&["plugins", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&json).expect("plugins --json prints JSON");
    let row = rows
        .iter()
        .find(|r| r["kind"] == "converter" && r["id"] == "npz")
        .expect("npz converter row");
    assert_eq!(row["crate"], "deathtensors-npz-converter");
}

#[test]
fn the_stock_binary_does_not_list_it() {
    // `deathtensors` itself does not link the example, so it cannot know it:
    // proof that the registration comes from linking, not from the framework.
    let stock = Path::new(BIN).with_file_name("deathtensors");
    if !stock.exists() {
        return; // only built when the cli package's binary is built too
    }
    let out = Command::new(stock).arg("plugins").output().expect("run deathtensors");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("zstd"), "{text}");
    assert!(!text.contains("deathtensors-npz-converter"), "{text}");
}

#[test]
fn npy_round_trips_through_deathtensors_and_npz() {
    let dir = tempfile::tempdir().unwrap();
    let values = [1.5f32, -2.0, 0.0, f32::INFINITY, 3.25, -0.125];
    let src = dir.path().join("weights.npy");
    std::fs::write(&src, npy("<f4", false, "(2, 3)", &f32_bytes(&values))).unwrap();

    let dt = dir.path().join("weights.deathtensors");
    let options = WriteOptions {
        codec: Some("zstd".into()),
        checksum: Some("sha256".into()),
        ..Default::default()
    };
    npz().import(&src, &dt, &options).unwrap();
    let r = DtReader::open(&dt).unwrap();
    r.verify().unwrap();
    assert_eq!(r.keys().collect::<Vec<_>>(), ["weights"]);
    let t = r.tensor("weights").unwrap();
    assert_eq!((t.dtype.id(), t.shape.as_slice()), ("F32", &[2u64, 3][..]));
    assert_eq!(&r.read_tensor("weights").unwrap()[..], &f32_bytes(&values)[..]);

    // Export to .npz: one stored member "weights.npy" holding a numpy header and the bytes.
    let out = dir.path().join("out.npz");
    npz().export(&dt, &out).unwrap();
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(archive.len(), 1);
    let mut member = archive.by_name("weights.npy").unwrap();
    let mut bytes = Vec::new();
    member.read_to_end(&mut bytes).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    assert_eq!((10 + header_len) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"),
        "{header}"
    );
    assert_eq!(&bytes[10 + header_len..], &f32_bytes(&values)[..]);
    drop(member);

    // And back again.
    let again = dir.path().join("again.deathtensors");
    npz().import(&out, &again, &WriteOptions::default()).unwrap();
    let r2 = DtReader::open(&again).unwrap();
    assert_eq!(&r2.read_tensor("weights").unwrap()[..], &f32_bytes(&values)[..]);

    // A single-tensor file also exports to a bare .npy, byte-identical to numpy's layout.
    let single = dir.path().join("single.npy");
    npz().export(&dt, &single).unwrap();
    assert_eq!(std::fs::read(&single).unwrap(), bytes);
}

#[test]
fn npz_members_keep_order_dtypes_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("many.npz");
    let ints: Vec<u8> = [7i64].iter().flat_map(|v| v.to_le_bytes()).collect();
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&src).unwrap());
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        // numpy.savez_compressed deflates; numpy.savez stores.
        zip.start_file("z.npy", deflated).unwrap();
        zip.write_all(&npy("|u1", false, "(4,)", &[0, 1, 254, 255])).unwrap();
        zip.start_file("b/c.npy", stored).unwrap();
        zip.write_all(&npy("<i8", false, "()", &ints)).unwrap();
        zip.start_file("empty.npy", stored).unwrap();
        zip.write_all(&npy("<f8", false, "(0, 3)", &[])).unwrap();
        zip.start_file("mask.npy", stored).unwrap();
        zip.write_all(&npy("|b1", false, "(3,)", &[1, 0, 1])).unwrap();
        zip.finish().unwrap();
    }
    let dt = dir.path().join("many.deathtensors");
    npz().import(&src, &dt, &WriteOptions::default()).unwrap();
    let r = DtReader::open(&dt).unwrap();
    assert_eq!(r.keys().collect::<Vec<_>>(), ["z", "b/c", "empty", "mask"]);
    let row = |n: &str| {
        let t = r.tensor(n).unwrap();
        (t.dtype.id(), t.shape.clone(), r.read_tensor(n).unwrap().to_vec())
    };
    assert_eq!(row("z"), ("U8", vec![4], vec![0, 1, 254, 255]));
    assert_eq!(row("b/c"), ("I64", vec![], ints));
    assert_eq!(row("empty"), ("F64", vec![0, 3], vec![]));
    assert_eq!(row("mask"), ("BOOL", vec![3], vec![1, 0, 1]));
}

#[test]
fn big_endian_fortran_arrays_become_little_endian_c_order() {
    let dir = tempfile::tempdir().unwrap();
    // [[1, 2, 3], [4, 5, 6]] as big-endian int32, stored column by column.
    let column_major: Vec<u8> = [1i32, 4, 2, 5, 3, 6].iter().flat_map(|v| v.to_be_bytes()).collect();
    let src = dir.path().join("m.npy");
    std::fs::write(&src, npy(">i4", true, "(2, 3)", &column_major)).unwrap();
    let dt = dir.path().join("m.deathtensors");
    npz().import(&src, &dt, &WriteOptions::default()).unwrap();
    let r = DtReader::open(&dt).unwrap();
    let expected: Vec<u8> = [1i32, 2, 3, 4, 5, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(r.tensor("m").unwrap().dtype.id(), "I32");
    assert_eq!(&r.read_tensor("m").unwrap()[..], &expected[..]);
}

#[test]
fn export_refuses_dtypes_numpy_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let dt = dir.path().join("bf.deathtensors");
    let data = [0u8; 8];
    let tensors = [
        TensorData {
            name: "ok".into(),
            dtype: "F32".into(),
            shape: vec![2],
            data: &data,
            metadata: Default::default(),
        },
        TensorData {
            name: "half".into(),
            dtype: "BF16".into(),
            shape: vec![4],
            data: &data,
            metadata: Default::default(),
        },
    ];
    write_file(&dt, &tensors, &Default::default(), &WriteOptions::default()).unwrap();
    let out = dir.path().join("bf.npz");
    let err = npz().export(&dt, &out).unwrap_err().to_string();
    assert!(
        err.contains("\"half\"") && err.contains("BF16") && err.contains("NumPy"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is written when a tensor cannot be exported");
    // Two tensors do not fit in one .npy.
    let err = npz().export(&dt, &dir.path().join("x.npy")).unwrap_err().to_string();
    assert!(err.contains("BF16") || err.contains("exactly one"), "{err}");
}

#[test]
fn hostile_inputs_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let dt = dir.path().join("x.deathtensors");
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("code.npy", npy("<f4", false, "__import__('os')", &[]), "header"),
        ("short.npy", npy("<f4", false, "(4,)", &[0; 8]), "needs 16 data bytes"),
        ("strings.npy", npy("<U3", false, "(1,)", &[0; 12]), "no dtype"),
        ("objects.npy", npy("|O", false, "(1,)", &[0; 8]), "no dtype"),
        ("junk.npz", b"PK\x03\x04 not really a zip".to_vec(), "zip"),
    ];
    for (name, bytes, why) in cases {
        let src = dir.path().join(name);
        std::fs::write(&src, bytes).unwrap();
        let err = npz()
            .import(&src, &dt, &WriteOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(why) && err.contains(name), "{name}: {err}");
        assert!(!dt.exists());
    }
}
