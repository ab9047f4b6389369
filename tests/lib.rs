//! Shared helpers of the integration tests.
//!
//! Two families of helpers:
//!
//! - writing valid files through the real writer ([`write_valid`], [`opts`],
//!   [`tensor`], [`pattern`]);
//! - crafting files byte by byte for the hostile-input tests ([`craft`],
//!   [`craft_aligned`], [`aligned_header`], [`open_bytes`]);
//! - measuring the memory a call allocates ([`Counting`], [`peak_of`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use deathtensors::format::{Preamble, PREAMBLE_LEN, TENSOR_ALIGNMENT};
use deathtensors::reader::{DtReader, ReadOptions};
use deathtensors::writer::{write_file, TensorData, WriteOptions};
use deathtensors::Result;
use serde_json::{Map, Value};

use deathtensors_plugins as _;

/// Write options with the given codec and checksum ids, not durable (tests
/// need no fsync).
pub fn opts(codec: Option<&str>, checksum: Option<&str>) -> WriteOptions {
    WriteOptions {
        codec: codec.map(str::to_owned),
        checksum: checksum.map(str::to_owned),
        durable: false,
        ..Default::default()
    }
}

/// A tensor to write, without metadata.
pub fn tensor<'a>(name: &str, dtype: &str, shape: &[u64], data: &'a [u8]) -> TensorData<'a> {
    TensorData {
        name: name.to_owned(),
        dtype: dtype.to_owned(),
        shape: shape.to_vec(),
        data,
        metadata: Map::new(),
    }
}

/// `len` deterministic bytes: a mix of runs (compressible) and noise
/// (incompressible), different for each `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Lcg::new(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let run = (rng.next_u64() % 200) as usize + 1;
        let compressible = rng.next_u64() & 1 == 0;
        let fill = rng.next_u64() as u8;
        for _ in 0..run.min(len - out.len()) {
            out.push(if compressible { fill } else { rng.next_u64() as u8 });
        }
    }
    out
}

/// `len` bytes of noise (compresses poorly).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Lcg::new(seed);
    (0..len).map(|_| (rng.next_u64() >> 24) as u8).collect()
}

/// Write `tensors` with `options` to `dir/name` and return the path.
///
/// # Panics
/// When the write fails (the inputs are meant to be valid).
pub fn write_valid(
    dir: &Path,
    name: &str,
    tensors: &[TensorData<'_>],
    metadata: &Map<String, Value>,
    options: &WriteOptions,
) -> PathBuf {
    let path = dir.join(name);
    if let Err(e) = write_file(&path, tensors, metadata, options) {
        panic!("writing a valid file failed: {e}");
    }
    path
}

/// Names of the entries of `dir` that start with a dot (temporary files).
pub fn hidden_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// The 24-byte preamble with magic `DTLEGION`, version 1, `flags` and `header_len`.
pub fn preamble(flags: u32, header_len: u64) -> [u8; 24] {
    Preamble { flags, header_len }.encode()
}

/// A file: preamble (header length = `header.len()`), `header`, NUL padding
/// to a multiple of 8, then `data` (which includes any footer).
pub fn craft(flags: u32, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = preamble(flags, header.len() as u64).to_vec();
    out.extend_from_slice(header);
    out.resize(out.len().next_multiple_of(8), 0);
    out.extend_from_slice(data);
    out
}

/// `json` padded with spaces so that the data region starts at a multiple of 64.
pub fn aligned_header(json: &str) -> String {
    let preamble = PREAMBLE_LEN as usize;
    let padded = (preamble + json.len()).next_multiple_of(TENSOR_ALIGNMENT as usize) - preamble;
    let mut text = json.to_owned();
    text.push_str(&" ".repeat(padded - json.len()));
    text
}

/// [`craft`] with the header padded by [`aligned_header`], so that offset 0
/// of the data region is 64-byte aligned.
pub fn craft_aligned(flags: u32, json: &str, data: &[u8]) -> Vec<u8> {
    craft(flags, aligned_header(json).as_bytes(), data)
}

/// Write `bytes` to a fresh temporary file and open it with default options.
///
/// The reader keeps its handle, so the file may vanish once this returns.
pub fn open_bytes(bytes: &[u8]) -> Result<DtReader> {
    open_bytes_with(bytes, &ReadOptions::default())
}

/// [`open_bytes`] with explicit read options.
pub fn open_bytes_with(bytes: &[u8], options: &ReadOptions) -> Result<DtReader> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crafted.deathtensors");
    std::fs::write(&path, bytes).expect("write crafted file");
    DtReader::open_with(&path, options)
}

/// Read every tensor of `reader`, then verify it when it has a footer.
///
/// # Errors
/// The first error met.
pub fn read_everything(reader: &DtReader) -> Result<()> {
    let names: Vec<String> = reader.keys().map(str::to_owned).collect();
    for name in &names {
        let buf = reader.read_tensor(name)?;
        assert_eq!(buf.len() as u64, reader.tensor(name)?.nbytes);
    }
    if reader.checksum().is_some() {
        reader.verify()?;
    }
    Ok(())
}

/// A tiny deterministic pseudo-random generator (Knuth's MMIX LCG).
#[derive(Debug, Clone)]
pub struct Lcg(u64);

impl Lcg {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Lcg(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 bits (high bits are the better ones).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 ^ (self.0 >> 29)
    }

    /// A value in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        (self.next_u64() >> 11) % bound
    }
}

/// The system allocator, counting the bytes live now and at most since the
/// last [`peak_of`]. A test binary that measures memory installs it as its
/// `#[global_allocator]` and holds one test only: tests running beside it
/// would count too.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// Bytes allocated at most while `f` ran, beyond what was live before it
/// (counted where [`Counting`] is the global allocator; 0 elsewhere).
pub fn peak_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (PEAK.load(Ordering::Relaxed) - before, out)
}
