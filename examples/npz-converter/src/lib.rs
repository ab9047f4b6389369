//! An example third-party plugin for deathtensors: a converter between
//! `.deathtensors` and NumPy's `.npy` (one array) and `.npz` (a zip archive of
//! `.npy` members, as written by `numpy.savez` and `numpy.savez_compressed`).
//!
//! The crate depends on `deathtensors` alone (plus `zip` for the archive) and
//! registers its [`NpzConverter`] with
//! [`deathtensors::register_converter!`]: no code of the framework or of the
//! built-in plugins knows it exists. Any program that links this crate finds
//! it in the registry under the id `"npz"`:
//!
//! ```no_run
//! use deathtensors::registry;
//! use deathtensors_npz_converter as _; // link the plugin
//! # use deathtensors_plugins as _;
//!
//! deathtensors_npz_converter::link();
//! let npz = registry::converters()?.get("npz")?;
//! npz.import("arrays.npz".as_ref(), "model.deathtensors".as_ref(), &Default::default())?;
//! npz.export("model.deathtensors".as_ref(), "back.npz".as_ref())?;
//! # Ok::<(), deathtensors::Error>(())
//! ```
//!
//! The dtype correspondence comes from the registry too: each dtype plugin
//! names its numpy equivalent ([`DtypeHandler::numpy_name`]), so a dtype that
//! numpy lacks (`BF16`, `F8_E4M3`, `F8_E5M2`) is refused on export with an
//! error naming the tensor, and a numpy dtype deathtensors lacks (strings,
//! objects, structured arrays, datetimes) is refused on import. Big-endian and
//! Fortran-ordered arrays are converted to little-endian C order on import.
//! `.npz` has no metadata, so export drops any.
//!
//! Limits of this example: import holds every array of an archive in memory
//! at once (the writer takes all tensors together); export streams one tensor
//! at a time, and writes archives uncompressed, like `numpy.savez`.

#![warn(missing_docs)]

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::Path;

use deathtensors::atomic::AtomicFile;
use deathtensors::reader::DtReader;
use deathtensors::registry::{self, Converter, DtypeHandler, DtypeKind, Plugin};
use deathtensors::writer::{write_file, TensorData, WriteOptions};
use deathtensors::{Error, Result};

/// The NumPy `.npy` / `.npz` converter, registered under the id `"npz"`.
pub struct NpzConverter;

deathtensors::register_converter!(NpzConverter);

/// Make sure this crate is linked into the final binary.
///
/// Its only item anything would refer to is a registration in a static that
/// nothing names, so a binary that merely depends on the crate can lose it
/// (and the converter with it) at link time. Call this from `main`; it
/// returns the converter's id.
#[inline(never)]
pub fn link() -> &'static str {
    std::hint::black_box(NpzConverter.id())
}

/// The first bytes of every `.npy` file.
pub const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Longest `.npy` header dictionary accepted on import.
pub const MAX_NPY_HEADER: usize = 1 << 20;
/// Largest decompression ratio of deflate: a member claiming more than this
/// many raw bytes per stored byte is corrupt (or a zip bomb).
const MAX_DEFLATE_RATIO: u64 = 1032;

impl Plugin for NpzConverter {
    fn id(&self) -> &'static str {
        "npz"
    }

    fn summary(&self) -> &'static str {
        "NumPy .npz archives and .npy arrays (example third-party plugin)"
    }
}

impl Converter for NpzConverter {
    fn extensions(&self) -> &'static [&'static str] {
        &["npz", "npy"]
    }

    /// Read a `.npy` or `.npz` file (told apart by its first bytes) and write
    /// its arrays, in archive order, as a `.deathtensors` file. A `.npy`
    /// array is named after the file's stem; `.npz` members are named as
    /// `numpy.load` names them (the member name without `.npy`).
    fn import(&self, src: &Path, dst: &Path, options: &WriteOptions) -> Result<()> {
        let arrays = read_arrays(src)?;
        let tensors: Vec<TensorData<'_>> = arrays
            .iter()
            .map(|a| TensorData {
                name: a.name.clone(),
                dtype: a.dtype.id().to_owned(),
                shape: a.shape.clone(),
                data: &a.data,
                metadata: Default::default(),
            })
            .collect();
        write_file(dst, &tensors, &Default::default(), options)
    }

    /// Write every tensor of `src` as a `.npz` member `<name>.npy`, or, when
    /// `dst` ends in `.npy`, the file's only tensor as a `.npy` array. The
    /// target is written atomically; nothing is written when a tensor cannot
    /// be expressed (a dtype numpy lacks, a sparse tensor).
    fn export(&self, src: &Path, dst: &Path) -> Result<()> {
        let reader = DtReader::open(src)?;
        let mut plan = Vec::new();
        for t in reader.tensors() {
            if t.part_of.is_some() {
                continue;
            }
            if let Some(layout) = &t.layout {
                return Err(Error::InvalidArgument(format!(
                    "{}: tensor {:?} is a {} (sparse) tensor; NumPy .npy/.npz hold dense arrays only",
                    src.display(),
                    t.name,
                    layout.id
                )));
            }
            let descr = t.dtype.numpy_name().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: tensor {:?} has dtype {}, which NumPy has no dtype for, so it cannot be exported to {}; \
                     cast it (e.g. to F32) first, or convert to a format that has it",
                    src.display(),
                    t.name,
                    t.dtype.id(),
                    dst.display()
                ))
            })?;
            plan.push((t.name.as_str(), descr, t.shape.as_slice()));
        }
        let single = dst.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"));
        if single && plan.len() != 1 {
            return Err(Error::InvalidArgument(format!(
                "{} holds {} tensors but a .npy file holds exactly one array; export to a .npz archive instead",
                src.display(),
                plan.len()
            )));
        }
        let io = |e| Error::io(dst, e);
        write_atomically(dst, |out| {
            if single {
                let (name, descr, shape) = plan[0];
                out.write_all(&npy_header(descr, shape)).map_err(io)?;
                out.write_all(&reader.read_tensor(name)?).map_err(io)?;
                return Ok(());
            }
            let mut zip = zip::ZipWriter::new(out);
            for &(name, descr, shape) in &plan {
                let data = reader.read_tensor(name)?;
                let header = npy_header(descr, shape);
                let size = (header.len() + data.len()) as u64;
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Stored)
                    .large_file(size >= u64::from(u32::MAX));
                zip.start_file(format!("{name}.npy"), options)
                    .map_err(|e| zip_error(dst, e))?;
                zip.write_all(&header).map_err(io)?;
                zip.write_all(&data).map_err(io)?;
            }
            zip.finish().map_err(|e| zip_error(dst, e))?;
            Ok(())
        })
    }
}

/// One array read from a `.npy` file or `.npz` member.
pub struct Array {
    /// The array's name.
    pub name: String,
    /// Its deathtensors dtype.
    pub dtype: &'static dyn DtypeHandler,
    /// Its shape (C order).
    pub shape: Vec<u64>,
    /// Its elements: little-endian, C order.
    pub data: Vec<u8>,
}

/// Read the arrays of a `.npy` or `.npz` file, in file order.
///
/// # Errors
/// I/O errors; [`Error::InvalidArgument`] naming the file (and member) when
/// it is not a valid `.npy`/`.npz` or holds a dtype deathtensors lacks.
pub fn read_arrays(src: &Path) -> Result<Vec<Array>> {
    let mut file = File::open(src).map_err(|e| Error::io(src, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(src, e))?.len();
    let mut magic = [0u8; 6];
    let got = read_up_to(&mut file, &mut magic).map_err(|e| Error::io(src, e))?;
    file.rewind().map_err(|e| Error::io(src, e))?;
    if &magic[..got] == NPY_MAGIC {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| Error::io(src, e))?;
        let stem = src
            .file_stem()
            .map_or_else(|| "array".into(), |s| s.to_string_lossy().into_owned());
        return Ok(vec![parse_npy(stem, bytes, &src.display().to_string())?]);
    }
    if !magic.starts_with(b"PK") {
        return Err(Error::InvalidArgument(format!(
            "{}: neither a NumPy .npy file (magic \\x93NUMPY) nor a .npz (zip) archive",
            src.display()
        )));
    }
    let mut archive = zip::ZipArchive::new(file).map_err(|e| zip_error(src, e))?;
    let mut arrays = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(|e| zip_error(src, e))?;
        if member.is_dir() {
            continue;
        }
        let where_ = format!("{} member {:?}", src.display(), member.name());
        let name = member
            .name()
            .strip_suffix(".npy")
            .ok_or_else(|| Error::InvalidArgument(format!("{where_}: not a .npy member (its name lacks .npy)")))?
            .to_owned();
        let size = member.size();
        let bound = match member.compression() {
            zip::CompressionMethod::Stored => file_len,
            _ => member
                .compressed_size()
                .saturating_mul(MAX_DEFLATE_RATIO)
                .saturating_add(1024),
        };
        if size > bound {
            return Err(Error::InvalidArgument(format!(
                "{where_}: declares {size} bytes, more than its {} stored bytes can hold",
                member.compressed_size()
            )));
        }
        let mut data = Vec::new();
        data.try_reserve_exact(size as usize)
            .map_err(|_| Error::OutOfMemory(size))?;
        (&mut member)
            .take(size.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| Error::InvalidArgument(format!("{where_}: {e}")))?;
        if data.len() as u64 != size {
            return Err(Error::InvalidArgument(format!(
                "{where_}: holds {} bytes but declares {size}",
                data.len()
            )));
        }
        arrays.push(parse_npy(name, data, &where_)?);
    }
    Ok(arrays)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn zip_error(path: &Path, e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::Io(io) => Error::io(path, io),
        other => Error::InvalidArgument(format!("{}: not a valid .npz (zip) archive: {other}", path.display())),
    }
}

/// Write `dst` through a temporary file in its folder, renamed over it once complete.
fn write_atomically(dst: &Path, body: impl FnOnce(&mut BufWriter<&mut File>) -> Result<()>) -> Result<()> {
    let mut tmp = AtomicFile::create(dst)?;
    let tmp_path = tmp.path().to_path_buf();
    {
        let mut out = BufWriter::new(tmp.file());
        body(&mut out)?;
        out.flush().map_err(|e| Error::io(&tmp_path, e))?;
    }
    tmp.commit(true)
}

/// The `.npy` header (version 1.0, or 2.0 when the dictionary needs more
/// than 65535 bytes) of a C-ordered little-endian array, padded so that the
/// data starts at a multiple of 64 bytes as numpy does.
pub fn npy_header(descr: &str, shape: &[u64]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let padded = |prefix: usize| (prefix + dict.len() + 1).div_ceil(64) * 64;
    let (version, prefix) = if padded(10) - 10 <= usize::from(u16::MAX) {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let total = padded(prefix);
    let header_len = total - prefix;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Parse a whole `.npy` file held in `bytes` into an [`Array`] named `name`.
///
/// # Errors
/// [`Error::InvalidArgument`] (prefixed with `where_`) for a malformed file
/// or a dtype deathtensors lacks.
pub fn parse_npy(name: String, mut bytes: Vec<u8>, where_: &str) -> Result<Array> {
    let bad = |why: String| Error::InvalidArgument(format!("{where_}: not a valid .npy array: {why}"));
    if bytes.len() < 10 || &bytes[..6] != NPY_MAGIC {
        return Err(bad("it does not start with the magic \\x93NUMPY".into()));
    }
    let (len, prefix) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported format version {v}.{}", bytes[7]))),
    };
    if len > MAX_NPY_HEADER {
        return Err(bad(format!("its header declares {len} bytes (limit {MAX_NPY_HEADER})")));
    }
    let start = prefix + len;
    if bytes.len() < start {
        return Err(bad(format!(
            "its header needs {start} bytes but it has {}",
            bytes.len()
        )));
    }
    let text = std::str::from_utf8(&bytes[prefix..start]).map_err(|_| bad("its header is not UTF-8".into()))?;
    let header = parse_header(text).map_err(|why| bad(format!("header {:?}: {why}", text.trim_end())))?;
    let dtype = dtype_for_descr(&header.descr).map_err(|why| {
        Error::InvalidArgument(format!(
            "{where_}: array {name:?} has numpy dtype {:?}: {why}",
            header.descr
        ))
    })?;
    let item = dtype.item_size();
    let nbytes = header
        .shape
        .iter()
        .try_fold(item as u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {:?} overflows", header.shape)))?;
    let available = (bytes.len() - start) as u64;
    if available != nbytes {
        return Err(bad(format!(
            "shape {:?} of {} needs {nbytes} data bytes but it has {available}",
            header.shape,
            dtype.id()
        )));
    }
    bytes.drain(..start);
    if header.big_endian && item > 1 {
        let unit = if dtype.kind() == DtypeKind::Complex {
            item / 2
        } else {
            item
        };
        bytes.chunks_exact_mut(unit).for_each(<[u8]>::reverse);
    }
    if dtype.kind() == DtypeKind::Bool {
        bytes.iter_mut().for_each(|b| *b = u8::from(*b != 0));
    }
    if header.fortran_order && header.shape.len() > 1 {
        bytes = fortran_to_c(&bytes, &header.shape, item);
    }
    Ok(Array {
        name,
        dtype,
        shape: header.shape,
        data: bytes,
    })
}

/// The deathtensors dtype whose numpy name matches `descr` in kind and size
/// (byte order aside).
fn dtype_for_descr(descr: &str) -> std::result::Result<&'static dyn DtypeHandler, String> {
    let dtypes = registry::dtypes().map_err(|e| e.to_string())?;
    let body = descr.trim_start_matches(['<', '>', '|', '=']);
    let found = dtypes.entries().map(|(d, _)| d).find(|d| {
        d.numpy_name()
            .is_some_and(|n| n.trim_start_matches(['<', '>', '|', '=']) == body)
    });
    found.ok_or_else(|| {
        let known: Vec<&str> = dtypes.entries().filter_map(|(d, _)| d.numpy_name()).collect();
        format!(
            "deathtensors has no dtype for it (supported numpy dtypes: {})",
            known.join(", ")
        )
    })
}

/// Reorder the elements of a Fortran-ordered array into C order.
fn fortran_to_c(data: &[u8], shape: &[u64], item: usize) -> Vec<u8> {
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let count = data.len() / item;
    let mut strides = Vec::with_capacity(dims.len());
    let mut s = 1usize;
    for &d in &dims {
        strides.push(s);
        s *= d;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; dims.len()];
    let mut at = 0usize;
    for _ in 0..count {
        out.extend_from_slice(&data[at * item..(at + 1) * item]);
        for k in (0..dims.len()).rev() {
            index[k] += 1;
            at += strides[k];
            if index[k] < dims[k] {
                break;
            }
            at -= strides[k] * dims[k];
            index[k] = 0;
        }
    }
    out
}

/// What a `.npy` header dictionary says.
#[derive(Debug, PartialEq, Eq)]
struct NpyHeader {
    descr: String,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// A Python literal of the subset `.npy` headers use.
#[derive(Debug, PartialEq, Eq)]
enum Literal {
    Str(String),
    Int(u64),
    Bool(bool),
    Seq(Vec<Literal>),
    Dict(Vec<(Literal, Literal)>),
}

/// Parse the header dictionary without evaluating anything.
fn parse_header(text: &str) -> std::result::Result<NpyHeader, String> {
    let mut p = LiteralParser {
        s: text.as_bytes(),
        at: 0,
    };
    let Literal::Dict(pairs) = p.value(0)? else {
        return Err("not a dict".into());
    };
    p.skip_ws();
    if p.at != p.s.len() {
        return Err(format!("unexpected text at byte {}", p.at));
    }
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (k, v) in pairs {
        match (k, v) {
            (Literal::Str(k), Literal::Str(d)) if k == "descr" => descr = Some(d),
            (Literal::Str(k), Literal::Seq(_)) if k == "descr" => {
                return Err("structured (record) arrays are not supported".into())
            }
            (Literal::Str(k), Literal::Bool(b)) if k == "fortran_order" => fortran = Some(b),
            (Literal::Str(k), Literal::Seq(dims)) if k == "shape" => {
                let dims = dims
                    .into_iter()
                    .map(|d| match d {
                        Literal::Int(n) => Ok(n),
                        other => Err(format!("shape holds {other:?}, not an integer")),
                    })
                    .collect::<std::result::Result<Vec<u64>, String>>()?;
                shape = Some(dims);
            }
            (Literal::Str(k), v) => return Err(format!("unexpected value {v:?} for key {k:?}")),
            (k, _) => return Err(format!("unexpected key {k:?}")),
        }
    }
    let descr = descr.ok_or("no 'descr' key")?;
    Ok(NpyHeader {
        big_endian: descr.starts_with('>'),
        descr,
        fortran_order: fortran.ok_or("no 'fortran_order' key")?,
        shape: shape.ok_or("no 'shape' key")?,
    })
}

struct LiteralParser<'a> {
    s: &'a [u8],
    at: usize,
}

impl LiteralParser<'_> {
    const MAX_DEPTH: usize = 16;

    fn skip_ws(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Literal, String> {
        if depth > Self::MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        self.skip_ws();
        let Some(&c) = self.s.get(self.at) else {
            return Err("unexpected end".into());
        };
        match c {
            b'{' => {
                self.at += 1;
                let mut pairs = Vec::new();
                while !self.eat(b'}') {
                    let k = self.value(depth + 1)?;
                    if !self.eat(b':') {
                        return Err(format!("expected ':' at byte {}", self.at));
                    }
                    let v = self.value(depth + 1)?;
                    pairs.push((k, v));
                    if !self.eat(b',') {
                        if !self.eat(b'}') {
                            return Err(format!("expected ',' or '}}' at byte {}", self.at));
                        }
                        break;
                    }
                }
                Ok(Literal::Dict(pairs))
            }
            b'(' | b'[' => {
                let close = if c == b'(' { b')' } else { b']' };
                self.at += 1;
                let mut items = Vec::new();
                while !self.eat(close) {
                    items.push(self.value(depth + 1)?);
                    if !self.eat(b',') {
                        if !self.eat(close) {
                            return Err(format!("expected ',' or '{}' at byte {}", close as char, self.at));
                        }
                        break;
                    }
                }
                Ok(Literal::Seq(items))
            }
            b'\'' | b'"' => {
                self.at += 1;
                let start = self.at;
                while self.s.get(self.at).is_some_and(|&b| b != c && b != b'\\') {
                    self.at += 1;
                }
                if self.s.get(self.at) != Some(&c) {
                    return Err("unterminated or escaped string".into());
                }
                let text = std::str::from_utf8(&self.s[start..self.at]).map_err(|e| e.to_string())?;
                self.at += 1;
                Ok(Literal::Str(text.to_owned()))
            }
            b'0'..=b'9' => {
                let start = self.at;
                while self.s.get(self.at).is_some_and(u8::is_ascii_digit) {
                    self.at += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.at]).map_err(|e| e.to_string())?;
                // Files written by Python 2 numpy may write long integers as `3L`.
                if self.s.get(self.at) == Some(&b'L') {
                    self.at += 1;
                }
                digits
                    .parse()
                    .map(Literal::Int)
                    .map_err(|_| format!("integer {digits} is out of range"))
            }
            _ if self.s[self.at..].starts_with(b"True") => {
                self.at += 4;
                Ok(Literal::Bool(true))
            }
            _ if self.s[self.at..].starts_with(b"False") => {
                self.at += 5;
                Ok(Literal::Bool(false))
            }
            _ => Err(format!("unexpected character {:?} at byte {}", c as char, self.at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_dict_parses_without_eval() {
        let h = parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }    \n").unwrap();
        assert_eq!(h.descr, "<f4");
        assert!(!h.fortran_order && !h.big_endian);
        assert_eq!(h.shape, vec![2, 3]);
        let h = parse_header("{\"descr\": \">i8\", \"fortran_order\": True, \"shape\": (5,)}").unwrap();
        assert!(h.big_endian && h.fortran_order);
        assert_eq!(h.shape, vec![5]);
        assert_eq!(
            parse_header("{'descr': '|b1', 'fortran_order': False, 'shape': ()}")
                .unwrap()
                .shape,
            Vec::<u64>::new()
        );
        for bad in [
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}",
            "{'descr': '<f4', 'shape': (1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk",
            "__import__('os').system('true')",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
            "((((((((((((((((((((((((((((((((((((",
        ] {
            assert!(parse_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_are_padded_to_64_bytes() {
        for shape in [&[][..], &[3][..], &[2, 3, 4][..]] {
            let h = npy_header("<f4", shape);
            assert_eq!(h.len() % 64, 0);
            assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
            assert_eq!(*h.last().unwrap(), b'\n');
            let len = usize::from(u16::from_le_bytes([h[8], h[9]]));
            assert_eq!(len + 10, h.len());
        }
        assert!(String::from_utf8_lossy(&npy_header("<f4", &[3])).contains("'shape': (3,)"));
    }

    #[test]
    fn fortran_order_becomes_c_order() {
        // A 2x3 array [[0, 1, 2], [3, 4, 5]] stored column by column.
        let f: Vec<u8> = [0u8, 3, 1, 4, 2, 5].to_vec();
        assert_eq!(fortran_to_c(&f, &[2, 3], 1), vec![0, 1, 2, 3, 4, 5]);
        // 2x2x2 with 2-byte items: element (i, j, k) = 4i + 2j + k.
        let mut f = Vec::new();
        for k in 0..2u16 {
            for j in 0..2u16 {
                for i in 0..2u16 {
                    f.extend_from_slice(&(4 * i + 2 * j + k).to_le_bytes());
                }
            }
        }
        let c = fortran_to_c(&f, &[2, 2, 2], 2);
        let values: Vec<u16> = c.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(values, (0..8).collect::<Vec<u16>>());
    }
}
