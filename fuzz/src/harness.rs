//! The bodies of the fuzz targets, one function per target.
//!
//! Each function takes the fuzzer's bytes and returns what the library said
//! about them: `Ok(())` when they were accepted, or the typed [`Error`] they
//! were refused with. Anything else is a bug and panics: a panic inside the
//! library, or a broken invariant checked here (a tensor read that returns
//! the wrong length, a range read that disagrees with the whole read, a chunk
//! that does not round-trip, an imported file that does not read back).
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` call these functions, and
//! `tests/rust/fuzz_regressions.rs` includes this very file to replay saved
//! inputs through the same code, so a regression test exercises exactly what
//! the fuzzer found.
//!
//! Work per input is bounded so that a slow input means a slow library, not
//! a greedy harness: whole-tensor reads and statistics stop after
//! [`DECODE_BUDGET`] decoded bytes, and chunks are at most [`MAX_CHUNK_RAW`]
//! bytes in the `chunks` target.

use std::mem::MaybeUninit;
use std::path::Path;

use deathtensors::chunk::{self, AppliedFilter};
use deathtensors::error::{Error, Result};
use deathtensors::format::{
    self, Chunk, Header, Preamble, TensorInfo, FLAG_CHECKSUM, FLAG_COMPRESSED, FOOTER_LEN, MAGIC, PREAMBLE_LEN,
};
use deathtensors::reader::DtReader;
use deathtensors::registry::{self, Codec, DtypeHandler};
use deathtensors::sharded::{bad_shard_name, ShardedIndex};
use deathtensors::stats;
use deathtensors::writer::{append_file, repack_file, Entry, RepackOptions, TensorData, WriteOptions};
use serde_json::{Map, Value};

/// Decoded bytes after which `open_read` stops reading whole tensors of one
/// input: a valid compressed file may legitimately decode to up to 32768
/// times its size (zstd's expansion bound); reading all of it is not a bug,
/// only slow.
pub const DECODE_BUDGET: u64 = 64 << 20;

/// Largest raw chunk length the `chunks` target builds.
pub const MAX_CHUNK_RAW: u64 = 1 << 20;

/// Bytes at the start of a `chunks` input before the plane lengths: codec,
/// dtype, filter selector, two filter parameters, and the raw length (u32).
pub const CHUNK_INPUT_PREFIX: usize = 9;

fn link() {
    // Keeps the plugin crate, and so its registrations, in the link.
    std::hint::black_box(deathtensors_plugins::link());
}

/// Target `header`: the preamble decoder and the JSON header parser and
/// validator.
///
/// Input that starts with the magic is a file prefix: its first 24 bytes go
/// through [`Preamble::decode`] and must re-encode to themselves, and the
/// rest is the header text, validated with the preamble's flags and
/// declared header length. Other input is header text alone, validated with
/// the flags its fields call for and its real length. Either way the text is
/// parsed by [`Header::parse`] and validated by [`format::validate`] as if
/// the data region its tensors declare followed it (so that validation runs
/// to its end), and a header that validates must serialise and parse back
/// to itself.
///
/// # Errors
/// The error the library refused the bytes with.
pub fn header(data: &[u8]) -> Result<()> {
    link();
    let (declared, text) = match data.first_chunk::<24>() {
        Some(pre) if pre.starts_with(MAGIC) => {
            let p = Preamble::decode(pre)?;
            assert_eq!(&p.encode(), pre, "the preamble re-encodes to its bytes");
            (Some(p), &data[24..])
        }
        _ => (None, data),
    };
    let header = Header::parse(text)?;
    let preamble = declared.unwrap_or_else(|| {
        let mut flags = 0;
        if header.compression.is_some() {
            flags |= FLAG_COMPRESSED;
        }
        if header.checksum.is_some() {
            flags |= FLAG_CHECKSUM;
        }
        Preamble {
            flags,
            header_len: text.len() as u64,
        }
    });
    let data_len = header.tensors.iter().map(|t| t.offsets[1]).max().unwrap_or(0);
    let footer = if preamble.flags & FLAG_CHECKSUM != 0 {
        FOOTER_LEN
    } else {
        0
    };
    let file_len = PREAMBLE_LEN
        .saturating_add(preamble.header_len)
        .saturating_add(format::nul_padding(preamble.header_len))
        .saturating_add(data_len)
        .saturating_add(footer);
    let layout = format::validate(preamble, header.clone(), file_len)?;
    assert_eq!(layout.tensors.len(), header.tensors.len());
    assert!(
        layout.data_start >= PREAMBLE_LEN + preamble.header_len,
        "the data starts after the header"
    );
    assert!(layout
        .data_start
        .checked_add(layout.data_len)
        .is_some_and(|end| end <= file_len));
    let text = serde_json::to_vec(&header).expect("a valid header serialises");
    let again = Header::parse(&text).expect("a serialised header parses");
    assert_eq!(again, header, "a valid header round-trips through JSON");
    Ok(())
}

/// Target `open_read`: the bytes as a whole file, opened with default limits
/// and read every way the reader offers.
///
/// Every tensor is read whole (within [`DECODE_BUDGET`]), in a few ranges
/// ([`DtReader::read_range`]: the first element, a middle span, the last
/// element; each must equal the same bytes of the whole read), through
/// [`deathtensors::reader::decode_stored`] of its stored bytes (the remote
/// path; must equal the whole read) and through [`stats::tensor_stats`]; a
/// file with a footer is verified.
///
/// # Errors
/// The first error the library reported; reading goes on through every
/// tensor even after one fails, so that a later tensor is exercised too.
pub fn open_read(data: &[u8]) -> Result<()> {
    link();
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let path = dir.path().join("input.deathtensors");
    std::fs::write(&path, data).map_err(|e| Error::io(&path, e))?;
    let reader = DtReader::open(&path)?;
    assert_eq!(reader.file_len(), data.len() as u64);
    let mut first_error = None;
    let mut keep = |r: Result<()>| {
        if let Err(e) = r {
            // Every error must render: messages are built from file contents.
            assert!(!e.to_string().is_empty());
            first_error.get_or_insert(e);
        }
    };
    for info in reader.tensors() {
        keep(read_tensor_every_way(&reader, info, data));
    }
    if reader.checksum().is_some() {
        keep(reader.verify());
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Target `append`: the bytes as an existing file that
/// [`append_file`] adds a 48-byte U8 tensor to (under a name the file does not
/// use, with one extra global metadata key).
///
/// An input the reader refuses must be refused by the append too, and a
/// refused append must leave the file's bytes as they were. An accepted one
/// must give a file that opens and lists the old tensors, then the new one;
/// whose global metadata is the old one plus the extra key; where every old
/// tensor that read before (within [`DECODE_BUDGET`]) reads the same bytes;
/// where the new one reads back as given; and which verifies when it has a
/// footer (append recomputes it).
///
/// # Errors
/// The error the library refused the bytes with.
pub fn append(data: &[u8]) -> Result<()> {
    link();
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let path = dir.path().join("input.deathtensors");
    std::fs::write(&path, data).map_err(|e| Error::io(&path, e))?;
    let before = DtReader::open(&path);
    let mut name = String::from("appended");
    if let Ok(old) = &before {
        while old.tensor(&name).is_ok() {
            name.push('_');
        }
    }
    let bytes: Vec<u8> = (0u8..48).collect();
    let entry = Entry::Data(TensorData {
        name: name.clone(),
        dtype: "U8".into(),
        shape: vec![48],
        data: &bytes,
        metadata: Map::new(),
    });
    let mut extra = Map::new();
    extra.insert("fuzz.appended".into(), Value::from(1));
    let result = append_file(&path, &[entry], &extra, false);
    let old = match (before, result) {
        (Err(refused), Err(_)) => {
            assert_unchanged(&path, data);
            return Err(refused);
        }
        (Err(refused), Ok(())) => panic!("append accepted a file the reader refuses ({refused})"),
        (Ok(_), Err(refused)) => {
            assert_unchanged(&path, data);
            return Err(refused);
        }
        (Ok(old), Ok(())) => old,
    };
    let new = DtReader::open(&path).unwrap_or_else(|e| panic!("the appended file does not open: {e}"));
    let old_keys: Vec<&str> = old.keys().collect();
    let mut new_keys: Vec<&str> = new.keys().collect();
    assert_eq!(new_keys.pop(), Some(name.as_str()), "the new tensor comes last");
    assert_eq!(new_keys, old_keys, "the old tensors keep their order");
    let mut metadata = old.metadata().clone();
    metadata.extend(extra);
    assert_eq!(new.metadata(), &metadata, "global metadata: the old plus the extra key");
    let mut decoded = 0u64;
    for info in old.tensors() {
        decoded = decoded.saturating_add(info.nbytes);
        if decoded > DECODE_BUDGET {
            break;
        }
        if let Ok(was) = old.read_tensor(&info.name) {
            let now = new.read_tensor(&info.name);
            assert!(
                now.as_ref().is_ok_and(|now| now[..] == was[..]),
                "{info:?}: read differently after the append"
            );
        }
    }
    assert_eq!(
        &new.read_tensor(&name).expect("the appended tensor reads")[..],
        &bytes[..]
    );
    if new.checksum().is_some() {
        new.verify()
            .unwrap_or_else(|e| panic!("the appended file does not verify: {e}"));
    }
    Ok(())
}

/// Target `repack`: the bytes as a file that [`repack_file`] rewrites to
/// another file with another codec (none → zstd → lz4 → none, so every
/// chunk is decoded and encoded again) and another checksum (none → SHA-256
/// → BLAKE3 → none).
///
/// A file the reader refuses is refused by the repack too; a refused repack
/// leaves the source unchanged and writes no destination. An accepted one
/// opens with the settings asked, keeps the tensors in order (aliases and
/// stored parts included) with their metadata and the global metadata, and
/// every tensor that reads from the source reads the same from the new file;
/// a source with a footer verified, and one whose tensor does not read was
/// refused (a repack decodes them all). Sources that declare more than
/// [`DECODE_BUDGET`] bytes are opened only.
///
/// # Errors
/// The error the library refused the bytes with.
pub fn repack(data: &[u8]) -> Result<()> {
    link();
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let (src, dst) = (
        dir.path().join("input.deathtensors"),
        dir.path().join("output.deathtensors"),
    );
    std::fs::write(&src, data).map_err(|e| Error::io(&src, e))?;
    let before = DtReader::open(&src);
    if let Ok(old) = &before {
        let declared = old.tensors().iter().fold(0u64, |n, t| n.saturating_add(t.nbytes));
        if declared > DECODE_BUDGET {
            return Ok(());
        }
    }
    let codec = match before.as_ref().ok().and_then(|r| r.codec()).map(|c| c.id()) {
        None => Some("zstd"),
        Some("zstd") => Some("lz4"),
        Some(_) => None,
    };
    let checksum = match before.as_ref().ok().and_then(|r| r.checksum()).map(|c| c.id()) {
        None => Some("sha256"),
        Some("sha256") => Some("blake3"),
        Some(_) => None,
    };
    let options = RepackOptions {
        codec: Some(codec.map(str::to_owned)),
        checksum: Some(checksum.map(str::to_owned)),
        durable: false,
        ..RepackOptions::default()
    };
    let result = repack_file(&src, &dst, &options);
    let old = match (before, result) {
        (Err(refused), Err(_)) | (Ok(_), Err(refused)) => {
            assert_unchanged(&src, data);
            assert!(!dst.exists(), "a refused repack wrote its destination");
            return Err(refused);
        }
        (Err(refused), Ok(())) => panic!("repack accepted a file the reader refuses ({refused})"),
        (Ok(old), Ok(())) => old,
    };
    assert_unchanged(&src, data);
    if old.checksum().is_some() {
        old.verify()
            .unwrap_or_else(|e| panic!("repack accepted a file that does not verify: {e}"));
    }
    let new = DtReader::open(&dst).unwrap_or_else(|e| panic!("the repacked file does not open: {e}"));
    assert_eq!(new.codec().map(|c| c.id()), codec, "the codec asked");
    assert_eq!(new.checksum().map(|c| c.id()), checksum, "the checksum asked");
    if new.checksum().is_some() {
        new.verify()
            .unwrap_or_else(|e| panic!("the repacked file does not verify: {e}"));
    }
    assert_eq!(new.metadata(), old.metadata(), "global metadata");
    let shape = |r: &DtReader| -> Vec<(String, Option<String>, Option<String>, String)> {
        r.tensors()
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.alias_of.clone(),
                    t.part_of.clone(),
                    format!("{:?}", t.metadata),
                )
            })
            .collect()
    };
    assert_eq!(
        shape(&new),
        shape(&old),
        "tensors, aliases, parts and their metadata, in order"
    );
    for info in old.tensors() {
        match old.read_tensor(&info.name) {
            Ok(was) => {
                let now = new.read_tensor(&info.name);
                assert!(
                    now.as_ref().is_ok_and(|now| now[..] == was[..]),
                    "{info:?}: read differently after the repack"
                );
            }
            Err(e) => panic!("{info:?}: repack accepted a tensor that does not read ({e})"),
        }
    }
    Ok(())
}

fn assert_unchanged(path: &Path, data: &[u8]) {
    let now = std::fs::read(path).unwrap_or_else(|e| panic!("the refused file is gone: {e}"));
    assert!(now == data, "a refused append or a repack changed the source");
}

fn read_tensor_every_way(reader: &DtReader, info: &TensorInfo, data: &[u8]) -> Result<()> {
    let item = info.dtype.item_size() as u64;
    assert!(item > 0 && info.nbytes % item == 0, "{info:?}: whole elements");
    let whole = if reader.decoded_bytes().saturating_add(info.nbytes) <= DECODE_BUDGET {
        let buf = reader.read_tensor(&info.name)?;
        assert_eq!(buf.len() as u64, info.nbytes, "{info:?}: read_tensor length");
        // The remote path (stored bytes fetched by range) decodes them alike.
        let stored = &data[info.file_offset as usize..(info.file_offset + info.stored_len) as usize];
        match deathtensors::reader::decode_stored(reader.layout(), info, stored) {
            Ok(remote) => assert!(
                remote[..] == buf[..],
                "{info:?}: decode_stored differs from read_tensor"
            ),
            Err(e) => panic!("{info:?}: read_tensor succeeded, decode_stored failed: {e}"),
        }
        Some(buf)
    } else {
        None
    };
    let n = info.nbytes;
    let spans = [
        (0, item.min(n)),
        (n / 2 / item * item, (n / 2 / item * item + 3 * item).min(n)),
        (n.saturating_sub(item), n),
    ];
    for (start, end) in spans {
        if reader.decoded_bytes() > DECODE_BUDGET {
            break;
        }
        let mut piece = vec![0u8; (end - start) as usize];
        reader.read_range(info, start, &mut piece)?;
        if let Some(whole) = &whole {
            assert_eq!(
                &piece[..],
                &whole[start as usize..end as usize],
                "{info:?}: read_range [{start}, {end})"
            );
        }
    }
    let past_end = reader.read_range(info, n, &mut [0u8; 1]);
    assert!(
        matches!(past_end, Err(Error::InvalidArgument(_))),
        "{info:?}: a range past the end is refused"
    );
    if reader.decoded_bytes().saturating_add(n) <= DECODE_BUDGET {
        match stats::tensor_stats(reader, &info.name) {
            Ok(s) => assert_eq!(s.count, n / item, "{info:?}: stats count"),
            // A dtype without numeric decoding has no statistics: a usage error, not a bad file.
            Err(Error::InvalidArgument(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Target `chunks`: one chunk decoded through [`chunk::decode`], the code
/// path the reader uses, with a fuzzer-chosen codec, dtype, filter and raw
/// length, after the checks the header validator makes; then the raw bytes
/// of the input are encoded with [`chunk::encode`] and must decode back.
///
/// Input layout (see [`chunk_input`], which builds it):
///
/// | bytes | meaning |
/// |---|---|
/// | 0 | codec: index into the sorted codec ids, modulo their count |
/// | 1 | dtype: index into the sorted dtype ids, modulo their count |
/// | 2 | filter: even = none; odd = filter `(b >> 1) % count` of the sorted filter ids |
/// | 3, 4 | the filter's `width` and `rotate` parameters |
/// | 5..9 | u32 `k`: raw length `(k % max + 1) × unit`, `unit` = lcm(item size, planes), at most [`MAX_CHUNK_RAW`] |
/// | 9.. | with a filter: one u32 per plane, its stored length `v % plane_raw + 1` |
/// | rest | the stored bytes (without a filter: all of them, which must be 1..=raw length) |
///
/// As in the validator, a codec unit may not claim more raw bytes than
/// [`Codec::max_expansion`] times its stored bytes.
///
/// # Errors
/// [`Error::InvalidArgument`] for input the validator would have refused
/// (too short, bad filter parameters); [`Error::CorruptChunk`] when the
/// chunk does not decode.
pub fn chunks(data: &[u8]) -> Result<()> {
    link();
    let short = || Error::InvalidArgument("chunk input too short".into());
    let prefix = data.first_chunk::<CHUNK_INPUT_PREFIX>().ok_or_else(short)?;
    let codec = nth(registry::codecs()?.entries().map(|e| e.0), prefix[0]).ok_or_else(short)?;
    let dtype = nth(registry::dtypes()?.entries().map(|e| e.0), prefix[1]).ok_or_else(short)?;
    let filter = if prefix[2] & 1 == 0 {
        None
    } else {
        let f = nth(registry::filters()?.entries().map(|e| e.0), prefix[2] >> 1).ok_or_else(short)?;
        let mut params = Map::new();
        params.insert("width".into(), Value::from(prefix[3]));
        params.insert("rotate".into(), Value::from(prefix[4]));
        let planes = f.plane_count(&params, dtype).map_err(Error::InvalidArgument)?;
        if planes == 0 {
            return Err(Error::InvalidArgument("zero planes".into()));
        }
        Some((f, params, planes))
    };
    let planes = filter.as_ref().map_or(1, |f| f.2 as u64);
    let unit = lcm(dtype.item_size() as u64, planes);
    let units = u64::from(u32::from_le_bytes([prefix[5], prefix[6], prefix[7], prefix[8]]));
    let raw_len = (units % (MAX_CHUNK_RAW / unit).max(1) + 1) * unit;
    let mut rest = &data[CHUNK_INPUT_PREFIX..];
    let (plane_lens, stored) = match &filter {
        None => (None, rest),
        Some(_) => {
            let plane_raw = raw_len / planes;
            let mut lens = Vec::new();
            for _ in 0..planes {
                let (v, tail) = rest.split_first_chunk::<4>().ok_or_else(short)?;
                lens.push(u64::from(u32::from_le_bytes(*v)) % plane_raw + 1);
                rest = tail;
            }
            let stored_len: u64 = lens.iter().sum();
            (Some(lens), rest.get(..stored_len as usize).ok_or_else(short)?)
        }
    };
    let stored_len = stored.len() as u64;
    if stored_len == 0 || stored_len > raw_len {
        return Err(Error::InvalidArgument(format!(
            "stored length {stored_len} not in 1..={raw_len}"
        )));
    }
    // The validator's expansion bound on every codec unit (a raw chunk or plane is a copy).
    let units: Vec<(u64, u64)> = match &plane_lens {
        None => vec![(stored_len, raw_len)],
        Some(lens) => lens.iter().map(|&len| (len, raw_len / planes)).collect(),
    };
    if units
        .iter()
        .any(|&(s, r)| s < r && r > s.saturating_mul(codec.max_expansion()))
    {
        return Err(Error::InvalidArgument(
            "a codec unit claims more than the codec can expand to".into(),
        ));
    }
    let applied = filter.as_ref().map(|(f, params, planes)| AppliedFilter {
        filter: *f,
        params,
        planes: *planes,
    });
    round_trip(&data[CHUNK_INPUT_PREFIX..], codec, dtype, applied);
    let chunk = Chunk::new(0, stored_len, raw_len, plane_lens);
    let mut out = vec![MaybeUninit::new(0u8); raw_len as usize];
    let mut scratch = Vec::new();
    chunk::decode(stored, &chunk, codec, applied, &mut out, &mut scratch).map_err(|reason| Error::CorruptChunk {
        name: format!("{}/{}", codec.id(), dtype.id()),
        index: 0,
        offset: 0,
        reason,
    })
}

/// Encode up to [`MAX_CHUNK_RAW`] bytes of `raw` (whole units) as the writer
/// does, and check that they decode back unchanged.
fn round_trip(raw: &[u8], codec: &dyn Codec, dtype: &dyn DtypeHandler, filter: Option<AppliedFilter<'_>>) {
    let unit = lcm(dtype.item_size() as u64, filter.map_or(1, |f| f.planes as u64)) as usize;
    let len = raw.len().min(MAX_CHUNK_RAW as usize) / unit * unit;
    if len == 0 {
        return;
    }
    let raw = &raw[..len];
    let (stored, planes) = chunk::encode(raw, codec, codec.default_level(), filter).expect("encoding never fails");
    let chunk = Chunk::new(0, stored.len() as u64, len as u64, planes);
    // Decoding writes into memory that may be uninitialised, so it must write
    // every byte: decode over two different fillers; a byte left unwritten
    // keeps its filler and cannot match `raw` both times.
    for filler in [0x00, 0xFF] {
        let mut out = vec![MaybeUninit::new(filler); len];
        chunk::decode(&stored, &chunk, codec, filter, &mut out, &mut Vec::new())
            .unwrap_or_else(|e| panic!("{} chunk of {} bytes does not decode: {e}", codec.id(), len));
        // SAFETY: every element was initialised with the filler, then maybe overwritten.
        let out = unsafe { deathtensors::buffer::assume_init_mut(&mut out) };
        assert!(out == raw, "{} chunk of {len} bytes decodes to other bytes", codec.id());
    }
}

/// Build a `chunks` input that decodes `stored` as one chunk of `raw_len`
/// bytes (see [`chunks`] for the layout). Returns `None` when the ids are not
/// registered or the lengths cannot be expressed.
pub fn chunk_input(
    codec: &str,
    dtype: &str,
    filter: Option<(&str, u8, u8)>,
    raw_len: u64,
    planes: Option<&[u64]>,
    stored: &[u8],
) -> Option<Vec<u8>> {
    link();
    let index = |ids: Vec<&str>, id: &str| ids.iter().position(|i| *i == id).and_then(|i| u8::try_from(i).ok());
    let codec = index(registry::codecs().ok()?.ids().collect(), codec)?;
    let dtype_index = index(registry::dtypes().ok()?.ids().collect(), dtype)?;
    let item = registry::dtypes().ok()?.get(dtype).ok()?.item_size() as u64;
    let (selector, width, rotate) = match filter {
        None => (0, 0, 0),
        Some((id, width, rotate)) => (
            index(registry::filters().ok()?.ids().collect(), id)? << 1 | 1,
            width,
            rotate,
        ),
    };
    let n = planes.map_or(1, |p| p.len() as u64);
    let unit = lcm(item, n);
    if raw_len == 0 || raw_len > MAX_CHUNK_RAW || raw_len % unit != 0 {
        return None;
    }
    let mut out = vec![codec, dtype_index, selector, width, rotate];
    out.extend_from_slice(&u32::try_from(raw_len / unit - 1).ok()?.to_le_bytes());
    for &len in planes.unwrap_or_default() {
        out.extend_from_slice(&u32::try_from(len.checked_sub(1)?).ok()?.to_le_bytes());
    }
    out.extend_from_slice(stored);
    Some(out)
}

/// Target `safetensors_import`: the bytes as a `.safetensors` file imported
/// by the `safetensors` converter plugin.
///
/// The write options depend on the input's length (plain; zstd with
/// SHA-256; lz4 with BLAKE3), so every writer path sees fuzzed tensors. An
/// import that succeeds must give a file that opens, verifies, and holds
/// the source's tensors byte for byte, as the `safetensors` crate reads them.
///
/// # Errors
/// The error the converter refused the bytes with.
pub fn safetensors_import(data: &[u8]) -> Result<()> {
    link();
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let src = dir.path().join("input.safetensors");
    let dst = dir.path().join("imported.deathtensors");
    std::fs::write(&src, data).map_err(|e| Error::io(&src, e))?;
    let (codec, checksum) = match data.len() % 3 {
        0 => (None, None),
        1 => (Some("zstd"), Some("sha256")),
        _ => (Some("lz4"), Some("blake3")),
    };
    let options = WriteOptions {
        codec: codec.map(str::to_owned),
        checksum: checksum.map(str::to_owned),
        durable: false,
        ..WriteOptions::default()
    };
    registry::converters()?
        .get("safetensors")?
        .import(&src, &dst, &options)?;
    check_import(data, &dst);
    Ok(())
}

/// An imported file reads back as the `safetensors` crate reads its source
/// (a BOOL byte other than 0 as 1).
fn check_import(source: &[u8], imported: &Path) {
    let expected = safetensors::SafeTensors::deserialize(source)
        .unwrap_or_else(|e| panic!("the import accepted a file the safetensors crate refuses: {e}"));
    let reader = DtReader::open(imported).unwrap_or_else(|e| panic!("an imported file does not open: {e}"));
    if reader.checksum().is_some() {
        reader
            .verify()
            .unwrap_or_else(|e| panic!("an imported file does not verify: {e}"));
    }
    assert_eq!(reader.tensors().len(), expected.len(), "tensor count");
    for (name, view) in expected.tensors() {
        let info = reader.tensor(&name).unwrap_or_else(|e| panic!("{e}"));
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        assert_eq!(info.shape, shape, "{name:?}: shape");
        let bytes = reader
            .read_tensor(&name)
            .unwrap_or_else(|e| panic!("{name:?} does not read: {e}"));
        // BOOL bytes other than 0 and 1 are true, and are imported as 1.
        let want: Vec<u8> = if view.dtype() == safetensors::Dtype::BOOL {
            view.data().iter().map(|&b| u8::from(b != 0)).collect()
        } else {
            view.data().to_vec()
        };
        assert!(bytes[..] == want[..], "{name:?}: bytes differ from the source");
    }
}

/// Target `sharded_index`: the reader of a sharded checkpoint's index
/// ([`ShardedIndex::parse`] and [`ShardedIndex::check_deathtensors`]).
///
/// An index that is accepted must keep only shard names that stay in its
/// folder, list every tensor once in [`ShardedIndex::by_shard`], and read
/// back to itself from [`ShardedIndex::to_json`].
///
/// # Errors
/// The error the index was refused with.
pub fn sharded_index(data: &[u8]) -> Result<()> {
    let path = Path::new("fuzz/model.deathtensors.index.json");
    let index = ShardedIndex::parse(path, data)?;
    index.check_deathtensors()?;
    for (tensor, shard) in index.weight_map() {
        assert_eq!(bad_shard_name(shard), None, "{tensor:?} -> {shard:?} was accepted");
        assert_eq!(
            index.shard_path(shard).parent(),
            path.parent(),
            "{shard:?} leaves the folder"
        );
    }
    let grouped: usize = index.by_shard().iter().map(|(_, t)| t.len()).sum();
    assert_eq!(grouped, index.weight_map().len(), "by_shard lists every tensor once");
    let text = index.to_json().to_string();
    let again = ShardedIndex::parse(path, text.as_bytes())
        .unwrap_or_else(|e| panic!("an accepted index does not read back from its JSON: {e}"));
    assert_eq!(again.weight_map(), index.weight_map(), "weight_map round trip");
    assert_eq!(again.metadata(), index.metadata(), "metadata round trip");
    Ok(())
}

/// Item `selector` (modulo the count) of `items`, or `None` when there are none.
fn nth<T>(items: impl Iterator<Item = T>, selector: u8) -> Option<T> {
    let mut items: Vec<T> = items.collect();
    if items.is_empty() {
        return None;
    }
    let i = usize::from(selector) % items.len();
    Some(items.swap_remove(i))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b).max(1) * b
}
