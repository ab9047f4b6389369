//! The seed corpus of the fuzz targets: small valid inputs that reach every
//! feature of the format, so that the fuzzer starts deep inside the parser
//! instead of at the magic number.
//!
//! Written through the real writer (and the `safetensors` crate for foreign
//! files): every dtype, uncompressed and compressed (zstd with the bytegroup
//! filter, zstd without it, lz4), several chunks per tensor, raw chunks,
//! SHA-256 and BLAKE3 footers, metadata of every JSON type, scalars, empty
//! tensors, aliases and a sparse COO tensor. From those files come the seeds
//! of the other targets: their JSON headers (`header`), their chunks
//! (`chunks`) and their safetensors exports (`safetensors_import`).
//!
//! Used by `tests/examples/fuzz_seeds.rs` (which `fuzz/run.sh` runs) and by
//! `tests/rust/fuzz_regressions.rs` (which checks that every seed is
//! accepted by its target); both include this file and `harness.rs` as
//! modules named `seeds` and `harness`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use deathtensors::error::{Error, Result};
use deathtensors::format::LayoutHeader;
use deathtensors::reader::DtReader;
use deathtensors::registry::{self, DtypeHandler, DtypeKind};
use deathtensors::writer::{write_entries, Entry, FilterChoice, TensorData, WriteOptions};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Map, Value};

use crate::harness::chunk_input;

/// The fuzz targets, in the order `fuzz/run.sh` runs them.
pub const TARGETS: [&str; 7] = [
    "header",
    "open_read",
    "chunks",
    "safetensors_import",
    "append",
    "sharded_index",
    "repack",
];

/// Most chunks of one file that become `chunks` seeds.
const CHUNK_SEEDS_PER_FILE: usize = 12;

/// Write the seed corpus under `dir`: one folder per target (see
/// [`TARGETS`]), created if missing. Returns `(target, file)` for every seed.
///
/// # Errors
/// I/O errors, or a writer or converter refusing a seed (a bug).
pub fn write_seeds(dir: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    deathtensors_plugins::link();
    for target in TARGETS {
        let sub = dir.join(target);
        std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
    }
    let mut seeds = Vec::new();
    let files = write_deathtensors_seeds(&dir.join("open_read"))?;
    for file in &files {
        seeds.push(("open_read", file.clone()));
        for target in ["append", "repack"] {
            let copy = dir.join(target).join(file.file_name().unwrap_or_default());
            std::fs::copy(file, &copy).map_err(|e| Error::io(&copy, e))?;
            seeds.push((target, copy));
        }
        let stem = stem(file);
        let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
        let text = header_text(&bytes);
        let header = dir.join("header").join(format!("{stem}.json"));
        write(&header, text)?;
        seeds.push(("header", header));
        // The preamble and the header, as a file starts.
        let prefix = dir.join("header").join(format!("{stem}.prefix"));
        write(&prefix, &bytes[..24 + text.len()])?;
        seeds.push(("header", prefix));
        for (k, input) in chunk_inputs(file)?.into_iter().enumerate() {
            let path = dir.join("chunks").join(format!("{stem}.{k}.bin"));
            write(&path, &input)?;
            seeds.push(("chunks", path));
        }
    }
    for path in write_safetensors_seeds(&dir.join("safetensors_import"))? {
        seeds.push(("safetensors_import", path));
    }
    for path in write_index_seeds(&dir.join("sharded_index"))? {
        seeds.push(("sharded_index", path));
    }
    Ok(seeds)
}

/// Indexes of sharded checkpoints, as `save_sharded` writes them and as
/// Hugging Face writes theirs: metadata of each kind, names that need
/// escaping, a shard holding many tensors.
fn write_index_seeds(dir: &Path) -> Result<Vec<PathBuf>> {
    let shard = |k: usize, n: usize| format!("model-{k:05}-of-{n:05}.deathtensors");
    let mut ours = Map::new();
    for i in 0..6 {
        ours.insert(format!("layers.{i}.weight"), json!(shard(i / 2 + 1, 3)));
    }
    let docs = [
        json!({"metadata": {"total_size": 6144, "format": "deathtensors",
                            "global_metadata": {"arch": "tiny", "step": 7, "tags": ["a", null, 1.5]}},
               "weight_map": ours}),
        // The shape of a Hugging Face index (no "format"), naming deathtensors shards
        // (safetensors shards are refused: `check_deathtensors`).
        json!({"metadata": {"total_size": 16}, "weight_map": {"w": "model-00001-of-00001.deathtensors"}}),
        json!({"weight_map": {"": "x.dt", "é\u{1b}[2J\"quote": "..m", "ab:c": "ab-ok.deathtensors"}}),
        json!({"metadata": null, "weight_map": {}}),
    ];
    let mut out = Vec::new();
    for (k, doc) in docs.iter().enumerate() {
        let path = dir.join(format!("index-{k}.json"));
        let text = if k % 2 == 0 {
            serde_json::to_string_pretty(doc)
        } else {
            serde_json::to_string(doc)
        };
        write(&path, text.unwrap_or_default().as_bytes())?;
        out.push(path);
    }
    Ok(out)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// The JSON header of a file the writer produced.
fn header_text(file: &[u8]) -> &[u8] {
    let len = file
        .get(16..24)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes);
    file.get(24..24 + len as usize).unwrap_or_default()
}

/// `len` bytes of a simple deterministic generator.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// `count` elements of `dtype` that look like real data: small integers,
/// booleans, or floats of slowly varying magnitude (whose exponent bytes
/// compress, as in real weights), encoded little-endian.
fn values(dtype: &dyn DtypeHandler, count: usize, seed: u64) -> Vec<u8> {
    let size = dtype.item_size();
    let mut out = Vec::with_capacity(count * size);
    for i in 0..count {
        let x = ((i as f64 + seed as f64) * 0.37).sin() * 0.05;
        match dtype.kind() {
            DtypeKind::Bool => out.push((i % 3 == 0) as u8),
            DtypeKind::UnsignedInt | DtypeKind::SignedInt => {
                let v = (i as i64 % 11 - 5).to_le_bytes();
                out.extend_from_slice(&v[..size]);
            }
            // The top bytes of an f64 or f32, so that every width keeps the exponent.
            DtypeKind::Float | DtypeKind::Complex => {
                let part = if dtype.kind() == DtypeKind::Complex {
                    size / 2
                } else {
                    size
                };
                for p in 0..size / part {
                    let v = x * (p as f64 + 1.0);
                    if part == 8 {
                        out.extend_from_slice(&v.to_le_bytes());
                    } else {
                        out.extend_from_slice(&(v as f32).to_le_bytes()[4 - part.min(4)..]);
                    }
                }
            }
        }
    }
    out
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Global metadata with a value of every JSON type.
fn rich_metadata() -> Map<String, Value> {
    object(json!({
        "model": "seed", "epoch": 3, "loss": 0.125, "big": u64::MAX, "neg": -7,
        "ok": true, "none": null, "list": [1, "two", [3.5]], "cfg": {"lr": 1e-3, "layers": [64, 64]},
        "unicode": "\u{e9}\u{2603}\u{1f600}"
    }))
}

/// One tensor of every registered dtype, plus a scalar and an empty tensor.
struct Tensors {
    items: Vec<(String, String, Vec<u64>, Vec<u8>)>,
}

impl Tensors {
    fn every_dtype(rows: u64, cols: u64, seed: u64) -> Result<Self> {
        let mut items = Vec::new();
        for (k, (dtype, _)) in registry::dtypes()?.entries().enumerate() {
            let shape = vec![rows, cols + k as u64 % 3];
            let count = (shape[0] * shape[1]) as usize;
            items.push((
                format!("layer.{k}.{}", dtype.id()),
                dtype.id().to_owned(),
                shape,
                values(dtype, count, seed + k as u64),
            ));
        }
        items.push(("scalar".into(), "F32".into(), vec![], 1.5f32.to_le_bytes().to_vec()));
        items.push(("empty".into(), "F16".into(), vec![0, 4], Vec::new()));
        Ok(Tensors { items })
    }

    fn entries(&self) -> Vec<Entry<'_>> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, (name, dtype, shape, data))| {
                let metadata = if i % 4 == 1 {
                    object(json!({"index": i, "tag": name}))
                } else {
                    Map::new()
                };
                Entry::Data(TensorData {
                    name: name.clone(),
                    dtype: dtype.clone(),
                    shape: shape.clone(),
                    data,
                    metadata,
                })
            })
            .collect()
    }
}

fn options(codec: Option<&str>, checksum: Option<&str>, filter: FilterChoice, chunk_bytes: u64) -> WriteOptions {
    WriteOptions {
        codec: codec.map(str::to_owned),
        checksum: checksum.map(str::to_owned),
        filter,
        chunk_bytes,
        durable: false,
        ..WriteOptions::default()
    }
}

/// The valid `.deathtensors` seeds; returns their paths.
fn write_deathtensors_seeds(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut put = |name: &str, entries: &[Entry<'_>], global: &Map<String, Value>, opts: &WriteOptions| {
        let path = dir.join(format!("{name}.deathtensors"));
        write_entries(&path, entries, global, opts)?;
        files.push(path);
        Ok::<(), Error>(())
    };
    let small = Tensors::every_dtype(3, 5, 1)?;
    let chunky = Tensors::every_dtype(8, 6, 2)?;
    let auto = FilterChoice::Auto;
    let none = Map::new();
    put(
        "every_dtype_raw",
        &small.entries(),
        &rich_metadata(),
        &options(None, None, auto.clone(), 1 << 20),
    )?;
    put(
        "every_dtype_zstd_sha256",
        &chunky.entries(),
        &rich_metadata(),
        &options(Some("zstd"), Some("sha256"), auto.clone(), 128),
    )?;
    put(
        "every_dtype_lz4_blake3",
        &chunky.entries(),
        &none,
        &options(Some("lz4"), Some("blake3"), auto.clone(), 160),
    )?;
    put(
        "every_dtype_zstd_unfiltered",
        &small.entries(),
        &none,
        &options(Some("zstd"), None, FilterChoice::Off, 1 << 20),
    )?;
    // Float tensors large enough that byte planes compress: filtered chunks.
    let dtypes = registry::dtypes()?;
    let floats: Vec<(&str, Vec<u8>)> = ["BF16", "F16", "F32", "F64", "C64"]
        .iter()
        .map(|id| Ok((*id, values(dtypes.get(id)?, 384, 3))))
        .collect::<Result<_>>()?;
    let float_entries: Vec<Entry<'_>> = floats
        .iter()
        .map(|(id, data)| {
            Entry::Data(TensorData {
                name: format!("planes.{id}"),
                dtype: (*id).to_owned(),
                shape: vec![24, 16],
                data,
                metadata: Map::new(),
            })
        })
        .collect();
    put(
        "bytegroup_zstd",
        &float_entries,
        &none,
        &options(Some("zstd"), Some("blake3"), auto.clone(), 1024),
    )?;
    put(
        "raw_blake3",
        &small.entries(),
        &none,
        &options(None, Some("blake3"), auto.clone(), 1 << 20),
    )?;
    put(
        "no_tensors",
        &[],
        &rich_metadata(),
        &options(None, None, auto.clone(), 1 << 20),
    )?;

    // Incompressible bytes: raw chunks inside a compressed file.
    let noisy = noise(600, 9);
    let noisy_entries = [Entry::Data(TensorData {
        name: "noise".into(),
        dtype: "F32".into(),
        shape: vec![150],
        data: &noisy,
        metadata: Map::new(),
    })];
    put(
        "incompressible_zstd",
        &noisy_entries,
        &none,
        &options(Some("zstd"), Some("sha256"), auto.clone(), 128),
    )?;

    // Tied weights.
    let weight = values(registry::dtypes()?.get("BF16")?, 96, 4);
    let tied = [
        Entry::Data(TensorData {
            name: "embed.weight".into(),
            dtype: "BF16".into(),
            shape: vec![12, 8],
            data: &weight,
            metadata: Map::new(),
        }),
        Entry::Alias {
            name: "lm_head.weight".into(),
            target: "embed.weight".into(),
            metadata: object(json!({"tied": true})),
        },
    ];
    put("aliases_raw", &tied, &none, &options(None, None, auto.clone(), 1 << 20))?;
    put(
        "aliases_zstd",
        &tied,
        &none,
        &options(Some("zstd"), Some("sha256"), auto.clone(), 64),
    )?;

    // A sparse COO tensor of logical shape [4, 5] with 3 values.
    let sparse_values = values(registry::dtypes()?.get("F32")?, 3, 5);
    let indices: Vec<u8> = [0i64, 1, 3, 4, 0, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let sparse = [Entry::Layout {
        primary: TensorData {
            name: "sparse".into(),
            dtype: "F32".into(),
            shape: vec![3],
            data: &sparse_values,
            metadata: Map::new(),
        },
        layout: LayoutHeader {
            id: "sparse_coo".into(),
            shape: vec![4, 5],
            params: object(json!({"coalesced": true})),
            parts: object(json!({"indices": "sparse/__sparse_indices__"})),
        },
        parts: vec![TensorData {
            name: "sparse/__sparse_indices__".into(),
            dtype: "I64".into(),
            shape: vec![2, 3],
            data: &indices,
            metadata: Map::new(),
        }],
    }];
    put(
        "sparse_raw",
        &sparse,
        &none,
        &options(None, None, auto.clone(), 1 << 20),
    )?;
    put(
        "sparse_lz4",
        &sparse,
        &none,
        &options(Some("lz4"), Some("sha256"), auto, 16),
    )?;
    Ok(files)
}

/// `chunks` inputs for (some of) the chunks of a compressed file.
fn chunk_inputs(file: &Path) -> Result<Vec<Vec<u8>>> {
    let reader = DtReader::open(file)?;
    let Some(codec) = reader.codec() else {
        return Ok(Vec::new());
    };
    let mut inputs = Vec::new();
    for info in reader.tensors() {
        for chunk in info.chunks.iter().flatten() {
            let mut stored = vec![0u8; chunk.stored_len() as usize];
            reader.read_stored(chunk.offset(), &mut stored)?;
            let filter = match (&info.filter, chunk.planes()) {
                (Some((f, params, _)), Some(_)) => {
                    let param = |k: &str| params.get(k).and_then(Value::as_u64).and_then(|v| u8::try_from(v).ok());
                    Some((f.id(), param("width").unwrap_or(0), param("rotate").unwrap_or(0)))
                }
                _ => None,
            };
            let input = chunk_input(
                codec.id(),
                info.dtype.id(),
                filter,
                chunk.raw_len(),
                chunk.planes(),
                &stored,
            );
            inputs.extend(input);
        }
    }
    // Spread the picks over the file rather than taking its first tensor only.
    let step = inputs.len().div_ceil(CHUNK_SEEDS_PER_FILE).max(1);
    Ok(inputs.into_iter().step_by(step).collect())
}

/// The valid `.safetensors` seeds; returns their paths.
fn write_safetensors_seeds(dir: &Path) -> Result<Vec<PathBuf>> {
    let bad = |e: safetensors::SafeTensorError| Error::InvalidArgument(format!("safetensors seed: {e}"));
    let mut files = Vec::new();
    let shared = [
        ("BOOL", Dtype::BOOL),
        ("U8", Dtype::U8),
        ("I8", Dtype::I8),
        ("U16", Dtype::U16),
        ("I16", Dtype::I16),
        ("U32", Dtype::U32),
        ("I32", Dtype::I32),
        ("U64", Dtype::U64),
        ("I64", Dtype::I64),
        ("F16", Dtype::F16),
        ("BF16", Dtype::BF16),
        ("F32", Dtype::F32),
        ("F64", Dtype::F64),
        ("F8_E4M3", Dtype::F8_E4M3),
        ("F8_E5M2", Dtype::F8_E5M2),
    ];
    let dtypes = registry::dtypes()?;
    let mut tensors = Vec::new();
    for (k, (id, st)) in shared.iter().enumerate() {
        let shape = vec![2, k % 4 + 1];
        tensors.push((
            format!("model.{k}.{id}"),
            *st,
            shape.clone(),
            values(dtypes.get(id)?, shape[0] * shape[1], k as u64),
        ));
    }
    tensors.push(("scalar".into(), Dtype::F32, vec![], 0.5f32.to_le_bytes().to_vec()));
    tensors.push(("empty".into(), Dtype::BF16, vec![0, 3], Vec::new()));
    // BOOL bytes other than 0 and 1, which safetensors writes and reads as true
    // (a byte buffer viewed as bool): the import writes them as 1.
    tensors.push(("mask".into(), Dtype::BOOL, vec![4], vec![0, 2, 255, 1]));
    let views = tensors
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b).map_err(bad)?)))
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let every = dir.join("every_dtype.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &every).map_err(bad)?;
    files.push(every);
    let empty = dir.join("no_tensors.safetensors");
    safetensors::serialize_to_file(Vec::<(String, TensorView<'_>)>::new(), None, &empty).map_err(bad)?;
    files.push(empty);

    // An export by the converter: reserved keys for JSON metadata, per-tensor
    // metadata and tensor order.
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let source = tmp.path().join("export.deathtensors");
    let f16 = dtypes.get("F16")?;
    let data: Vec<(String, Vec<u8>)> = ["zeta", "alpha", "mid"]
        .iter()
        .enumerate()
        .map(|(k, n)| ((*n).to_owned(), values(f16, 6, k as u64)))
        .collect();
    let entries: Vec<Entry<'_>> = data
        .iter()
        .map(|(name, bytes)| {
            Entry::Data(TensorData {
                name: name.clone(),
                dtype: "F16".into(),
                shape: vec![2, 3],
                data: bytes,
                metadata: object(json!({"role": name, "n": 6})),
            })
        })
        .collect();
    write_entries(
        &source,
        &entries,
        &rich_metadata(),
        &options(None, None, FilterChoice::Auto, 1 << 20),
    )?;
    let exported = dir.join("deathtensors_export.safetensors");
    registry::converters()?.get("safetensors")?.export(&source, &exported)?;
    files.push(exported);
    Ok(files)
}
