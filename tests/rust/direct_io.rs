//! Durable saves of large files go around the page cache (direct I/O): the
//! file they make is byte for byte the one a buffered write makes, its pages
//! are not left in the page cache, and where direct I/O is unavailable the
//! save falls back to buffered writes. (The fallback after a refusal, short
//! writes and failing writes are unit tests in framework/src/direct.rs, with
//! the write call stood in for.)
#![cfg(target_os = "linux")]

use deathtensors_plugins as _;

use std::fs::File;
use std::path::Path;

use deathtensors::direct::{self, DIRECT_ALIGN, DIRECT_MIN_BYTES};
use deathtensors::reader::DtReader;
use deathtensors::writer::{write_file, TensorData, WriteOptions};
use deathtensors_integration_tests::{pattern, tensor};
use serde_json::{json, Map, Value};

/// A temporary folder under cargo's target folder: on the build's disk,
/// where `/tmp` may be a tmpfs.
fn scratch() -> std::io::Result<tempfile::TempDir> {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
}

/// Whether the file system of `dir` takes an aligned direct write.
fn direct_io_works_in(dir: &Path) -> bool {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let path = dir.join("probe");
    let Ok(file) = File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    else {
        return false;
    };
    let buf = vec![0u8; 2 * DIRECT_ALIGN];
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    let ok = file.write_all_at(&buf[start..start + DIRECT_ALIGN], 0).is_ok();
    let _ = std::fs::remove_file(&path);
    ok
}

/// Share of the file's pages that are in the page cache.
fn resident_share(path: &Path) -> f64 {
    let file = File::open(path).unwrap();
    // SAFETY: the file is not changed while mapped (the test owns it).
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let pages = map.len().div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: the mapping covers `pages` pages and `vec` has one byte for each.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 == 1).count() as f64 / pages as f64
}

/// Tensors of awkward sizes (odd lengths, so gaps and an unaligned end; an
/// empty one; a scalar) adding up to just over the direct-I/O threshold.
fn tensors<'a>(big: &'a [u8], small: &'a [u8]) -> Vec<TensorData<'a>> {
    vec![
        tensor("scalar", "F32", &[], &small[..4]),
        tensor("big", "U8", &[big.len() as u64], big),
        tensor("empty", "F16", &[0, 3], &[]),
        tensor("odd", "U8", &[small.len() as u64], small),
        tensor("tail", "I16", &[7], &small[..14]),
    ]
}

fn options(durable: bool, checksum: Option<&str>) -> WriteOptions {
    WriteOptions {
        checksum: checksum.map(str::to_owned),
        durable,
        ..Default::default()
    }
}

fn global() -> Map<String, Value> {
    match json!({"note": "x".repeat(333)}) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

#[test]
fn a_durable_large_save_is_the_file_a_buffered_save_makes() {
    let dir = scratch().unwrap();
    let big = pattern(DIRECT_MIN_BYTES as usize + 3 * DIRECT_ALIGN + 5, 1);
    let small = pattern(1_000_003, 2);
    let tensors = tensors(&big, &small);
    for checksum in [None, Some("sha256")] {
        let direct_path = dir.path().join("direct.deathtensors");
        let buffered_path = dir.path().join("buffered.deathtensors");
        write_file(&direct_path, &tensors, &global(), &options(true, checksum)).unwrap();
        write_file(&buffered_path, &tensors, &global(), &options(false, checksum)).unwrap();
        if direct_io_works_in(dir.path()) {
            let cached = resident_share(&direct_path);
            assert!(
                cached < 0.05,
                "{checksum:?}: {:.0}% cached: the save did not write directly",
                cached * 100.0
            );
        }
        let (a, b) = (
            std::fs::read(&direct_path).unwrap(),
            std::fs::read(&buffered_path).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{checksum:?}: lengths differ");
        assert!(
            a == b,
            "{checksum:?}: the durable save's bytes differ from the buffered save's"
        );
        let reader = DtReader::open(&direct_path).unwrap();
        assert_eq!(&reader.read_tensor("big").unwrap()[..], &big[..]);
        assert_eq!(&reader.read_tensor("odd").unwrap()[..], &small[..]);
        if checksum.is_some() {
            reader.verify().unwrap();
        }
    }
}

#[test]
fn a_durable_large_save_leaves_its_pages_out_of_the_page_cache() {
    let dir = scratch().unwrap();
    if !direct_io_works_in(dir.path()) {
        eprintln!("direct I/O is not available here: nothing to check");
        return;
    }
    let big = pattern(DIRECT_MIN_BYTES as usize, 3);
    let t = [tensor("big", "U8", &[big.len() as u64], &big)];
    let path = dir.path().join("m.deathtensors");
    write_file(&path, &t, &Map::new(), &options(false, None)).unwrap();
    let buffered = resident_share(&path);
    write_file(&path, &t, &Map::new(), &options(true, None)).unwrap();
    let durable = resident_share(&path);
    // A buffered write leaves its pages cached (unless memory is short);
    // direct writes never put them there.
    assert!(
        durable < 0.05,
        "a durable save left {:.0}% of its pages cached",
        durable * 100.0
    );
    assert!(
        buffered > 0.5,
        "a buffered save left only {:.0}% cached",
        buffered * 100.0
    );
    assert_eq!(
        &DtReader::open(&path).unwrap().read_tensor("big").unwrap()[..],
        &big[..]
    );
}

#[test]
fn write_direct_writes_the_assembled_bytes_or_says_it_cannot() {
    let dir = scratch().unwrap();
    let a = pattern(3 * DIRECT_ALIGN + 17, 4);
    let b = pattern(5 << 20, 5);
    let len = (a.len() + 100 + b.len() + 9) as u64;
    let pieces: Vec<(u64, &[u8])> = vec![(0, &a), (a.len() as u64 + 100, &b)];
    let mut want = vec![0u8; len as usize];
    want[..a.len()].copy_from_slice(&a);
    want[a.len() + 100..a.len() + 100 + b.len()].copy_from_slice(&b);
    let path = dir.path().join("f");
    let file = File::create(&path).unwrap();
    let done = direct::write_direct(&file, &pieces, len).unwrap();
    assert_eq!(done, direct_io_works_in(dir.path()));
    if done {
        assert!(
            std::fs::read(&path).unwrap() == want,
            "the file differs from its pieces"
        );
    } else {
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "a refused direct write left bytes"
        );
    }
}

#[test]
fn direct_io_false_writes_through_the_page_cache() {
    let dir = scratch().unwrap();
    let big = pattern(DIRECT_MIN_BYTES as usize, 9);
    let t = [tensor("big", "U8", &[big.len() as u64], &big)];
    let path = dir.path().join("m.deathtensors");
    let options = WriteOptions {
        direct_io: false,
        ..options(true, Some("blake3"))
    };
    write_file(&path, &t, &Map::new(), &options).unwrap();
    let cached = resident_share(&path);
    assert!(
        cached > 0.5,
        "only {:.0}% cached after a page-cache write",
        cached * 100.0
    );
    let reader = DtReader::open(&path).unwrap();
    reader.verify().unwrap();
    assert_eq!(&reader.read_tensor("big").unwrap()[..], &big[..]);
}
