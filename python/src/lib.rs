//! `deathtensors._core`: the thin PyO3 layer.
//!
//! It converts arguments, releases the GIL, calls the framework and maps
//! errors to the classes of `deathtensors.errors`. Everything else (torch and
//! numpy adapters, path expansion, the public API) is Python.

use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_void};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use deathtensors::buffer::{AlignedBuf, UninitBuf};
use deathtensors::format::LayoutHeader;
use deathtensors::format::{Layout, TensorInfo};
use deathtensors::reader::{hex, read_layout, DtReader, ReadOptions};
use deathtensors::registry;
use deathtensors::select::DimSelection;
use deathtensors::writer::{
    append_file, repack_file, write_entries, Entry, FilterChoice, RepackOptions, TensorData, WriteOptions,
};
use deathtensors::Error;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use serde_json::{Map, Value};

mod convert;
mod diff;
mod manifest;
mod sharded;

/// Running library work without the GIL.
pub(crate) trait OffGil {
    /// Run `f` with the GIL released, through
    /// [`deathtensors::parallel::install`]: in place, or in a child forked
    /// after the parent's parallel work (a `multiprocessing` or `DataLoader`
    /// worker) on a pool of its own instead of waiting forever on the
    /// parent's.
    fn off_gil<T: Send>(self, f: impl FnOnce() -> T + Send) -> T;
}

impl OffGil for Python<'_> {
    fn off_gil<T: Send>(self, f: impl FnOnce() -> T + Send) -> T {
        self.detach(|| deathtensors::parallel::install(f))
    }
}

/// Map a framework error to the matching `deathtensors.errors` class.
pub(crate) fn to_py(py: Python<'_>, err: Error) -> PyErr {
    if let Error::Io { path, source } = &err {
        let (errno, message) = os_error(source);
        return PyOSError::new_err((errno, message, path.clone().into_os_string()));
    }
    if let Error::InShard { shard, source } = &err {
        if let Error::Io { path, source } = source.as_ref() {
            let (errno, message) = os_error(source);
            let message = format!("shard {shard:?}: {message}");
            return PyOSError::new_err((errno, message, path.clone().into_os_string()));
        }
    }
    let message = err.to_string();
    match py
        .import("deathtensors.errors")
        .and_then(|m| m.getattr(err.class_name()))
        .and_then(|cls| cls.call1((message.clone(),)))
    {
        Ok(instance) => PyErr::from_value(instance),
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// The errno and message of an I/O error, looking through wrappers (the
/// `tempfile` crate wraps the OS error with its path) so that Python raises
/// the matching `OSError` subclass (`FileNotFoundError` for `ENOENT`...).
fn os_error(error: &std::io::Error) -> (i32, String) {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = error.get_ref().map(|e| e as _);
    while let Some(e) = cause {
        if let Some(inner) = e.downcast_ref::<std::io::Error>() {
            if let Some(errno) = inner.raw_os_error() {
                return (errno, inner.to_string());
            }
        }
        cause = e.source();
    }
    if let Some(errno) = error.raw_os_error() {
        return (errno, error.to_string());
    }
    use std::io::ErrorKind::*;
    let errno = match error.kind() {
        NotFound => libc::ENOENT,
        PermissionDenied => libc::EACCES,
        AlreadyExists => libc::EEXIST,
        _ => 0,
    };
    (errno, error.to_string())
}

fn parse_map(py: Python<'_>, text: Option<&str>, what: &str) -> PyResult<Map<String, Value>> {
    match text {
        None => Ok(Map::new()),
        Some(t) => match serde_json::from_str::<Value>(t) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(to_py(py, Error::InvalidArgument(format!("{what} must be a dict")))),
            // serde_json stops at 128 levels, and the header allows fewer anyway.
            Err(e) if e.to_string().starts_with("recursion limit exceeded") => Err(to_py(
                py,
                Error::InvalidArgument(format!(
                    "{what} is nested too deeply: a header holds at most {} levels of JSON",
                    deathtensors::format::MAX_HEADER_DEPTH
                )),
            )),
            Err(e) => Err(to_py(
                py,
                Error::InvalidArgument(format!("{what} is not JSON-serialisable: {e}")),
            )),
        },
    }
}

/// Bytes owned by Rust, exposed to Python through the buffer protocol.
///
/// `torch.frombuffer` and `numpy.frombuffer` view it without copying; the
/// views keep it alive.
#[pyclass(frozen, module = "deathtensors._core")]
struct Buffer {
    data: AlignedBuf,
}

#[pymethods]
impl Buffer {
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let (ptr, len) = {
            let b = slf.get();
            (b.data.as_ptr(), b.data.len())
        };
        // SAFETY: ptr/len describe memory owned by `slf`, which the view keeps alive
        // (FillInfo takes a reference to the exporter). The memory is writable: each
        // Buffer is handed to exactly one consumer and never read by Rust again.
        let ret = unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr as *mut c_void, len as isize, 0, flags) };
        if ret == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.data.len()
    }
}

/// A tensor's bytes inside a private memory map of its file (zero-copy).
///
/// Holds the map, so the memory stays valid after the file is closed. Writes
/// land in private copy-on-write pages and never reach the file.
#[pyclass(frozen, module = "deathtensors._core")]
struct MappedBuffer {
    map: Arc<memmap2::MmapMut>,
    offset: usize,
    len: usize,
}

#[pymethods]
impl MappedBuffer {
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let (ptr, len) = {
            let b = slf.get();
            // The map is private and writable; Rust never reads or writes it, so handing
            // out a mutable pointer creates no aliasing Rust could observe.
            (b.map.as_ptr().wrapping_add(b.offset) as *mut c_void, b.len)
        };
        // SAFETY: [ptr, ptr+len) lies in the map (validated offsets), which `slf` keeps alive.
        let ret = unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr, len as isize, 0, flags) };
        if ret == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.len
    }

    /// `(address, length)` of the whole map, to check that views point into it.
    fn mapping_range(&self) -> (usize, usize) {
        (self.map.as_ptr() as usize, self.map.len())
    }
}

/// Raw bytes of one tensor to be saved: kept alive by the Python objects held here.
struct Source {
    _owner: Py<PyAny>,
    _buffer: Option<PyBuffer<u8>>,
    ptr: usize,
    len: usize,
}

/// Borrow the bytes of a CPU-contiguous torch tensor, numpy array or bytes-like object.
fn source(obj: &Bound<'_, PyAny>) -> PyResult<Source> {
    let owner = obj.clone().unbind();
    if obj.hasattr("data_ptr")? && obj.hasattr("element_size")? {
        if !obj.call_method0("is_contiguous")?.extract::<bool>()? {
            return Err(PyValueError::new_err("internal: tensor must be contiguous"));
        }
        let device: String = obj.getattr("device")?.getattr("type")?.extract()?;
        if device != "cpu" {
            return Err(PyValueError::new_err("internal: tensor must be on the CPU"));
        }
        let numel: usize = obj.call_method0("numel")?.extract()?;
        let item: usize = obj.call_method0("element_size")?.extract()?;
        let ptr: usize = obj.call_method0("data_ptr")?.extract()?;
        return Ok(Source {
            _owner: owner,
            _buffer: None,
            ptr,
            len: numel * item,
        });
    }
    if obj.hasattr("__array_interface__")? {
        let c_contig: bool = obj.getattr("flags")?.getattr("c_contiguous")?.extract()?;
        if !c_contig {
            return Err(PyValueError::new_err("internal: array must be C-contiguous"));
        }
        let interface = obj.getattr("__array_interface__")?;
        let data = interface.get_item("data")?;
        let ptr: usize = data.get_item(0)?.extract()?;
        let len: usize = obj.getattr("nbytes")?.extract()?;
        return Ok(Source {
            _owner: owner,
            _buffer: None,
            ptr,
            len,
        });
    }
    let buffer = PyBuffer::<u8>::get(obj)?;
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err("buffer must be C-contiguous"));
    }
    let (ptr, len) = (buffer.buf_ptr() as usize, buffer.len_bytes());
    Ok(Source {
        _owner: owner,
        _buffer: Some(buffer),
        ptr,
        len,
    })
}

/// One parsed entry tuple: bytes to save, or an alias of an earlier name.
enum Spec {
    Data(String, String, Vec<u64>, Map<String, Value>),
    Alias(String, String, Map<String, Value>),
    /// A non-dense tensor: primary part as `Data`, its layout, and its parts
    /// `(entry name, dtype, shape)`; their bytes follow the primary's in `sources`.
    Layout(Box<Spec>, LayoutHeader, Vec<(String, String, Vec<u64>)>),
}

/// Parse `(name, dtype_id, shape, data, metadata_json | None[, alias_of | None[, layout | None]])`
/// tuples. `data` is a contiguous CPU torch tensor, a C-contiguous numpy array
/// or a bytes-like; with `alias_of` set, `data` is `None` and no bytes are
/// written. `layout` is `(layout_id, logical_shape, params_json | None,
/// [(part, entry_name, dtype_id, shape, data), ...])` for a non-dense tensor
/// whose primary part is `data`.
fn parse_entries(py: Python<'_>, entries: &Bound<'_, PyList>) -> PyResult<(Vec<Spec>, Vec<Source>)> {
    let mut sources = Vec::with_capacity(entries.len());
    let mut specs = Vec::with_capacity(entries.len());
    for item in entries.iter() {
        let tuple = item.cast::<PyTuple>()?;
        let name: String = tuple.get_item(0)?.extract()?;
        let meta: Option<String> = tuple.get_item(4)?.extract()?;
        let metadata = parse_map(py, meta.as_deref(), "tensor metadata")?;
        let alias: Option<String> = if tuple.len() > 5 {
            tuple.get_item(5)?.extract()?
        } else {
            None
        };
        if let Some(target) = alias {
            specs.push(Spec::Alias(name, target, metadata));
            continue;
        }
        let dtype: String = tuple.get_item(1)?.extract()?;
        let shape: Vec<u64> = tuple.get_item(2)?.extract()?;
        sources.push(source(&tuple.get_item(3)?)?);
        let data = Spec::Data(name, dtype, shape, metadata);
        let layout = if tuple.len() > 6 {
            tuple.get_item(6)?
        } else {
            py.None().into_bound(py)
        };
        if layout.is_none() {
            specs.push(data);
            continue;
        }
        let (id, logical, params, parts): (String, Vec<u64>, Option<String>, Vec<Bound<'_, PyTuple>>) =
            layout.extract()?;
        let mut part_map = Map::new();
        let mut part_specs = Vec::with_capacity(parts.len());
        for part in parts {
            let (part_name, entry, dtype, shape, obj): (String, String, String, Vec<u64>, Bound<'_, PyAny>) =
                part.extract()?;
            sources.push(source(&obj)?);
            part_map.insert(part_name, Value::String(entry.clone()));
            part_specs.push((entry, dtype, shape));
        }
        let header = LayoutHeader {
            id,
            shape: logical,
            params: parse_map(py, params.as_deref(), "layout params")?,
            parts: part_map,
        };
        specs.push(Spec::Layout(Box::new(data), header, part_specs));
    }
    Ok((specs, sources))
}

/// Framework entries over parsed specs; `sources` must outlive them.
fn to_entries<'a>(specs: Vec<Spec>, sources: &'a [Source]) -> Vec<Entry<'a>> {
    fn bytes(s: &Source) -> &[u8] {
        // SAFETY: `sources` holds a reference to each owning Python object (and its
        // buffer export) for as long as the entries borrow it.
        unsafe { std::slice::from_raw_parts(s.ptr as *const u8, s.len) }
    }
    let mut data = sources.iter();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let (primary, layout, parts) = match spec {
            Spec::Alias(name, target, metadata) => {
                out.push(Entry::Alias { name, target, metadata });
                continue;
            }
            Spec::Layout(primary, layout, parts) => (*primary, Some(layout), parts),
            data_spec => (data_spec, None, Vec::new()),
        };
        let (Spec::Data(name, dtype, shape, metadata), Some(s)) = (primary, data.next()) else {
            continue;
        };
        let primary = TensorData {
            name,
            dtype,
            shape,
            data: bytes(s),
            metadata,
        };
        let Some(layout) = layout else {
            out.push(Entry::Data(primary));
            continue;
        };
        let parts = parts
            .into_iter()
            .zip(data.by_ref())
            .map(|((name, dtype, shape), s)| TensorData {
                name,
                dtype,
                shape,
                data: bytes(s),
                metadata: Map::new(),
            })
            .collect();
        out.push(Entry::Layout { primary, layout, parts });
    }
    out
}

/// The permission bits for a file written to `path`: the replaced file's,
/// else `0o666 & ~umask` (read without changing the process's umask).
#[pyfunction]
fn file_mode_for(path: PathBuf) -> u32 {
    deathtensors::atomic::replacement_mode(&path)
}

/// Save tensors (see [`parse_entries`] for `entries`). `filter` is `"auto"`
/// (default), `"none"` or a filter id.
#[pyfunction]
#[pyo3(signature = (path, entries, global_metadata=None, codec=None, level=None, checksum=None, chunk_bytes=None, filter=None, durable=true))]
#[allow(clippy::too_many_arguments)]
fn save(
    py: Python<'_>,
    path: PathBuf,
    entries: &Bound<'_, PyList>,
    global_metadata: Option<&str>,
    codec: Option<String>,
    level: Option<i32>,
    checksum: Option<String>,
    chunk_bytes: Option<u64>,
    filter: Option<String>,
    durable: bool,
) -> PyResult<()> {
    let (specs, sources) = parse_entries(py, entries)?;
    let global = parse_map(py, global_metadata, "global_metadata")?;
    let entries = to_entries(specs, &sources);
    let mut options = WriteOptions {
        codec,
        level,
        checksum,
        durable,
        ..Default::default()
    };
    if let Some(c) = chunk_bytes {
        options.chunk_bytes = c;
    }
    options.filter = match filter.as_deref() {
        None | Some("auto") => FilterChoice::Auto,
        Some("none") => FilterChoice::Off,
        Some(id) => FilterChoice::Id(id.to_owned()),
    };
    let result = py.off_gil(|| write_entries(&path, &entries, &global, &options));
    drop(entries);
    drop(sources);
    result.map_err(|e| to_py(py, e))
}

/// Add tensors to an existing file without decoding its tensors, replacing it
/// atomically; the file keeps its codec, level and checksum.
#[pyfunction]
#[pyo3(signature = (path, entries, extra_global_metadata=None, overwrite=false))]
fn append(
    py: Python<'_>,
    path: PathBuf,
    entries: &Bound<'_, PyList>,
    extra_global_metadata: Option<&str>,
    overwrite: bool,
) -> PyResult<()> {
    let (specs, sources) = parse_entries(py, entries)?;
    let extra = parse_map(py, extra_global_metadata, "extra_global_metadata")?;
    let entries = to_entries(specs, &sources);
    let result = py.off_gil(|| append_file(&path, &entries, &extra, overwrite));
    drop(entries);
    drop(sources);
    result.map_err(|e| to_py(py, e))
}

/// Rewrite `src` to `dst` with another codec, level or checksum
/// ([`repack_file`]): `codec` and `checksum` are the new settings where
/// `set_codec` / `set_checksum` is true (`None`: none), else the source's are kept.
#[pyfunction]
#[pyo3(signature = (src, dst, set_codec=false, codec=None, level=None, set_checksum=false, checksum=None, durable=true))]
#[allow(clippy::too_many_arguments)]
fn repack(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    set_codec: bool,
    codec: Option<String>,
    level: Option<i32>,
    set_checksum: bool,
    checksum: Option<String>,
    durable: bool,
) -> PyResult<()> {
    let options = RepackOptions {
        codec: set_codec.then_some(codec),
        level,
        checksum: set_checksum.then_some(checksum),
        durable,
    };
    py.off_gil(|| repack_file(&src, &dst, &options))
        .map_err(|e| to_py(py, e))
}

/// An open file. Thread-safe; `close()` releases the handle.
#[pyclass(frozen, module = "deathtensors._core")]
struct Reader {
    inner: RwLock<Option<Arc<DtReader>>>,
    /// The file's layout, kept after close so that its description still answers.
    layout: Arc<Layout>,
    file_len: u64,
}

impl Reader {
    fn get(&self) -> PyResult<Arc<DtReader>> {
        self.inner
            .read()
            .map_err(|_| PyRuntimeError::new_err("reader lock poisoned"))?
            .clone()
            .ok_or_else(|| PyValueError::new_err("I/O operation on a closed deathtensors file"))
    }
}

#[pymethods]
impl Reader {
    #[new]
    #[pyo3(signature = (path, max_header_len=None))]
    fn new(py: Python<'_>, path: PathBuf, max_header_len: Option<u64>) -> PyResult<Self> {
        let mut options = ReadOptions::default();
        if let Some(m) = max_header_len {
            options.max_header_len = m;
        }
        let reader = py
            .off_gil(|| DtReader::open_with(&path, &options))
            .map_err(|e| to_py(py, e))?;
        Ok(Reader {
            layout: reader.shared_layout(),
            file_len: reader.file_len(),
            inner: RwLock::new(Some(Arc::new(reader))),
        })
    }

    /// JSON text describing the file: codec, checksum, metadata, and each tensor
    /// with dtype, shape, nbytes, absolute offsets, stored length, chunk count and metadata.
    fn describe(&self) -> String {
        describe(&self.layout, self.file_len, true)
    }

    /// [`Reader::describe`] without the tensors.
    fn describe_file(&self) -> String {
        describe(&self.layout, self.file_len, false)
    }

    /// Names of the tensors (those with no `part_of`), then of the stored
    /// parts of non-dense tensors, each in file order.
    fn tensor_names(&self) -> (Vec<&str>, Vec<&str>) {
        let (mut dense, mut parts) = (Vec::new(), Vec::new());
        for t in &self.layout.tensors {
            if t.part_of.is_none() { &mut dense } else { &mut parts }.push(t.name.as_str());
        }
        (dense, parts)
    }

    /// JSON text describing one tensor (or stored part), as in [`Reader::describe`].
    fn describe_tensor(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        let t = self.layout.tensor(name).map_err(|e| to_py(py, e))?;
        Ok(serde_json::to_string(&TensorView::of(&self.layout, t)).expect("plain data always serializes"))
    }

    /// Decode one tensor into a new Rust-owned buffer (GIL released).
    fn read(&self, py: Python<'_>, name: &str) -> PyResult<Buffer> {
        let r = self.get()?;
        let data = py.off_gil(|| r.read_tensor(name)).map_err(|e| to_py(py, e))?;
        Ok(Buffer { data })
    }

    /// Decode several tensors in parallel (GIL released).
    fn read_many(&self, py: Python<'_>, names: Vec<String>) -> PyResult<Vec<Buffer>> {
        let r = self.get()?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let bufs = py.off_gil(|| r.read_tensors(&refs)).map_err(|e| to_py(py, e))?;
        Ok(bufs.into_iter().map(|data| Buffer { data }).collect())
    }

    /// Decode bytes `[start, start + length)` of one tensor, decompressing only
    /// the chunks that cover them (GIL released).
    fn read_range(&self, py: Python<'_>, name: &str, start: u64, length: u64) -> PyResult<Buffer> {
        let r = self.get()?;
        let data = py
            .off_gil(|| {
                let info = r.tensor(name)?;
                let mut buf = UninitBuf::new(length)?;
                r.read_range_uninit(info, start, buf.as_uninit_mut())?;
                // SAFETY: read_range_uninit returned Ok, so it wrote every byte.
                Ok(unsafe { buf.assume_init() })
            })
            .map_err(|e| to_py(py, e))?;
        Ok(Buffer { data })
    }

    /// Read a strided selection of one tensor, `(start, step, count)` per
    /// dimension (steps positive): the picked elements in C order, reading
    /// only the chunks or byte spans that hold them (GIL released).
    fn read_selection(&self, py: Python<'_>, name: &str, selection: Vec<(u64, u64, u64)>) -> PyResult<Buffer> {
        let r = self.get()?;
        let selection: Vec<DimSelection> = selection
            .into_iter()
            .map(|(start, step, count)| DimSelection { start, step, count })
            .collect();
        let data = py
            .off_gil(|| r.read_selection(r.tensor(name)?, &selection))
            .map_err(|e| to_py(py, e))?;
        Ok(Buffer { data })
    }

    /// Zero-copy view of an uncompressed tensor in a private map of the file.
    fn map(&self, py: Python<'_>, name: &str) -> PyResult<MappedBuffer> {
        let r = self.get()?;
        let (map, offset, len) = py.off_gil(|| r.tensor_mapping(name)).map_err(|e| to_py(py, e))?;
        Ok(MappedBuffer { map, offset, len })
    }

    /// Statistics of one tensor as JSON, computed in Rust block by block (GIL released).
    fn stats(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        let r = self.get()?;
        let s = py
            .off_gil(|| deathtensors::stats::tensor_stats(&r, name))
            .map_err(|e| to_py(py, e))?;
        serde_json::to_string(&s).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Statistics of every tensor as a JSON list, tensors in parallel (GIL released).
    fn all_stats(&self, py: Python<'_>) -> PyResult<String> {
        let r = self.get()?;
        let s = py
            .off_gil(|| deathtensors::stats::all_stats(&r))
            .map_err(|e| to_py(py, e))?;
        serde_json::to_string(&s).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// The bytes `names` add to a sharded index's `total_size`: their raw
    /// bytes and their stored parts', once per stored tensor (aliases add none).
    fn stored_nbytes(&self, py: Python<'_>, names: Vec<String>) -> PyResult<u64> {
        let r = self.get()?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        deathtensors::sharded::ShardedIndex::stored_nbytes(&r, &refs).map_err(|e| to_py(py, e))
    }

    /// `(st_dev, st_ino)` of the open file (fstat), whatever its path names now.
    fn file_identity(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        self.get()?.file_identity().map_err(|e| to_py(py, e))
    }

    /// Raw bytes produced from chunks so far (proves that reads stay lazy).
    fn decoded_bytes(&self) -> PyResult<u64> {
        Ok(self.get()?.decoded_bytes())
    }

    /// Decode one tensor into `bytes`.
    ///
    /// The object is allocated uninitialised with the GIL held, then filled
    /// with the GIL released; it reaches Python only once every byte is
    /// written. (`PyBytes::new_with` zeroes it with the GIL held: a pass over
    /// the whole tensor that stalls other threads.)
    fn read_bytes<'py>(&self, py: Python<'py>, name: &'py str) -> PyResult<Bound<'py, PyBytes>> {
        let r = self.get()?;
        let info = r.tensor(name).map_err(|e| to_py(py, e))?.clone();
        let len = usize::try_from(info.nbytes)
            .ok()
            .and_then(|n| ffi::Py_ssize_t::try_from(n).ok().map(|s| (n, s)));
        let Some((len, ssize)) = len else {
            return Err(to_py(py, Error::OutOfMemory(info.nbytes)));
        };
        // SAFETY: with a NULL source CPython returns a new, uninitialised bytes
        // object of `ssize` bytes (or NULL with MemoryError set).
        let object =
            unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromStringAndSize(std::ptr::null(), ssize))? };
        // SAFETY: the object is a bytes object; its buffer has `len` bytes.
        let data = unsafe { ffi::PyBytes_AsString(object.as_ptr()) } as usize;
        py.off_gil(|| {
            let ptr = data as *mut u8;
            // SAFETY: the object is new and only this call refers to it until it
            // returns, so no Python code reads or writes the buffer meanwhile;
            // the slice is of MaybeUninit, which needs no initialisation. On an
            // error the object is dropped unread.
            let out = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<MaybeUninit<u8>>(), len) };
            r.read_into_uninit(&info, out)
        })
        .map_err(|e| to_py(py, e))?;
        // SAFETY: PyBytes_FromStringAndSize returned a bytes object.
        Ok(unsafe { object.cast_into_unchecked::<PyBytes>() })
    }

    /// Check the footer; raises ChecksumError / NoChecksumError.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        let r = self.get()?;
        py.off_gil(|| r.verify()).map_err(|e| to_py(py, e))
    }

    /// Hex digest stored in the footer, or None.
    fn stored_digest(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let r = self.get()?;
        if r.checksum().is_none() {
            return Ok(None);
        }
        r.stored_digest().map(|d| Some(hex(&d))).map_err(|e| to_py(py, e))
    }

    /// Release the file handle. Further calls raise ValueError.
    fn close(&self) -> PyResult<()> {
        *self
            .inner
            .write()
            .map_err(|_| PyRuntimeError::new_err("reader lock poisoned"))? = None;
        Ok(())
    }

    /// Whether close() was called.
    #[getter]
    fn closed(&self) -> PyResult<bool> {
        Ok(self
            .inner
            .read()
            .map_err(|_| PyRuntimeError::new_err("reader lock poisoned"))?
            .is_none())
    }
}

/// Registered plugins as `(kind, id, summary, crate)` tuples.
#[pyfunction]
fn plugins(py: Python<'_>) -> PyResult<Vec<(String, String, String, String)>> {
    let rows = registry::list_plugins().map_err(|e| to_py(py, e))?;
    Ok(rows
        .into_iter()
        .map(|p| {
            (
                p.kind.to_owned(),
                p.id.to_owned(),
                p.summary.to_owned(),
                p.crate_name.to_owned(),
            )
        })
        .collect())
}

/// `(id, item_size, kind, torch_name, numpy_name)`.
type DtypeRow = (String, usize, String, Option<String>, Option<String>);

/// Registered dtypes as [`DtypeRow`] tuples.
#[pyfunction]
fn dtypes(py: Python<'_>) -> PyResult<Vec<DtypeRow>> {
    let reg = registry::dtypes().map_err(|e| to_py(py, e))?;
    Ok(reg
        .entries()
        .map(|(d, _)| {
            (
                d.id().to_owned(),
                d.item_size(),
                format!("{:?}", d.kind()),
                d.torch_name().map(str::to_owned),
                d.numpy_name().map(str::to_owned),
            )
        })
        .collect())
}

/// Ids of the registered codecs and checksums: `(codecs, checksums)`.
#[pyfunction]
fn codec_and_checksum_ids(py: Python<'_>) -> PyResult<(Vec<String>, Vec<String>)> {
    let codecs = registry::codecs().map_err(|e| to_py(py, e))?;
    let checksums = registry::checksums().map_err(|e| to_py(py, e))?;
    Ok((
        codecs.ids().map(str::to_owned).collect(),
        checksums.ids().map(str::to_owned).collect(),
    ))
}

/// The JSON description of a validated layout that `Reader.describe` and
/// `read_header` return (one shape for local and remote files).
/// One tensor's entry in a description, borrowed from the layout.
#[derive(serde::Serialize)]
struct TensorView<'a> {
    name: &'a str,
    dtype: &'a str,
    shape: &'a [u64],
    nbytes: u64,
    data_offsets: [u64; 2],
    file_offset: u64,
    stored_nbytes: u64,
    chunks: Option<usize>,
    metadata: &'a Map<String, Value>,
    alias_of: Option<&'a str>,
    layout: Option<&'a deathtensors::format::LayoutHeader>,
    part_of: Option<&'a str>,
}

impl<'a> TensorView<'a> {
    fn of(layout: &Layout, t: &'a TensorInfo) -> Self {
        let start = layout.data_start;
        TensorView {
            name: &t.name,
            dtype: t.dtype.id(),
            shape: &t.shape,
            nbytes: t.nbytes,
            data_offsets: [t.file_offset - start, t.file_offset - start + t.stored_len],
            file_offset: t.file_offset,
            stored_nbytes: t.stored_len,
            chunks: t.chunks.as_ref().map(Vec::len),
            metadata: &t.metadata,
            alias_of: t.alias_of.as_deref(),
            layout: t.layout.as_deref(),
            part_of: t.part_of.as_deref(),
        }
    }
}

/// The JSON description of a file (see `Reader::describe`), with its tensors or without.
fn describe(layout: &Layout, file_len: u64, with_tensors: bool) -> String {
    /// The tensors, serialized one at a time.
    struct Tensors<'a>(&'a Layout);
    impl serde::Serialize for Tensors<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(self.0.tensors.iter().map(|t| TensorView::of(self.0, t)))
        }
    }
    #[derive(serde::Serialize)]
    struct FileView<'a> {
        file_size: u64,
        data_start: u64,
        codec: Option<&'a str>,
        level: Option<i32>,
        checksum: Option<&'a str>,
        metadata: &'a Map<String, Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tensors: Option<Tensors<'a>>,
    }
    let view = FileView {
        file_size: file_len,
        data_start: layout.data_start,
        codec: layout.codec.map(|c| c.id()),
        level: layout.header.compression.as_ref().map(|c| c.level),
        checksum: layout.checksum.map(|c| c.id()),
        metadata: &layout.header.metadata,
        tensors: with_tensors.then_some(Tensors(layout)),
    };
    // Straight to text: a Value per tensor cost 60x the header for a million tensors.
    serde_json::to_string(&view).expect("plain data always serializes")
}

/// `fetch(offset, length) -> bytes` from Python, checked to return exactly `length` bytes.
fn fetch_exact(fetch: &Bound<'_, PyAny>, offset: u64, buf: &mut [u8], what: &'static str) -> PyResult<Option<Error>> {
    // Any bytes-like answer (bytes, bytearray, memoryview), copied once, straight into `buf`.
    let answer = fetch.call1((offset, buf.len()))?;
    let bytes = PyBuffer::<u8>::get(&answer)?;
    if bytes.item_count() != buf.len() {
        return Ok(Some(Error::Truncated {
            what,
            needed: buf.len() as u64,
            available: bytes.item_count() as u64,
        }));
    }
    bytes.copy_to_slice(answer.py(), buf)?;
    Ok(None)
}

/// Validate the header of a file of `file_len` bytes read through `fetch`:
/// the same checks as a local open. An exception raised by `fetch` propagates.
fn remote_layout(
    py: Python<'_>,
    file_len: u64,
    fetch: &Bound<'_, PyAny>,
    max_header_len: Option<u64>,
) -> PyResult<Layout> {
    let mut options = ReadOptions::default();
    if let Some(limit) = max_header_len {
        options.max_header_len = limit;
    }
    let mut raised: Option<PyErr> = None;
    let result = read_layout(file_len, &options, |offset, buf| {
        match fetch_exact(fetch, offset, buf, "a range read of the header") {
            Ok(None) => Ok(()),
            Ok(Some(short)) => Err(short),
            Err(e) => {
                raised = Some(e);
                Err(Error::InvalidArgument("fetch failed".into()))
            }
        }
    });
    if let Some(e) = raised {
        return Err(e);
    }
    result.map_err(|e| to_py(py, e))
}

/// Validate the header of a file of `file_len` bytes that Python reads by
/// ranges (`fetch(offset, length) -> bytes`, e.g. HTTP range requests), and
/// return its description as JSON (the shape of `Reader.describe`).
///
/// `fetch` is called twice: for the 24-byte preamble, then for the header and
/// its padding once their declared length has passed the checks (at most
/// `max_header_len` bytes). An exception raised by `fetch` propagates.
#[pyfunction]
#[pyo3(signature = (file_len, fetch, max_header_len=None))]
fn read_header(
    py: Python<'_>,
    file_len: u64,
    fetch: Bound<'_, PyAny>,
    max_header_len: Option<u64>,
) -> PyResult<String> {
    let layout = remote_layout(py, file_len, &fetch, max_header_len)?;
    Ok(describe(&layout, file_len, true))
}

/// The text `deathtensors info` prints, for a file read by ranges as in
/// `read_header`, shown as `label` (`hub-info REPO FILE` prints it).
#[pyfunction]
#[pyo3(signature = (label, file_len, fetch, max_header_len=None))]
fn info_text(
    py: Python<'_>,
    label: &str,
    file_len: u64,
    fetch: Bound<'_, PyAny>,
    max_header_len: Option<u64>,
) -> PyResult<String> {
    let layout = remote_layout(py, file_len, &fetch, max_header_len)?;
    Ok(deathtensors_cli::info_text(label, &layout, file_len))
}

/// Read one tensor of a file that Python reads by ranges: validate the header
/// as `read_header` does, fetch the tensor's stored bytes with one more
/// `fetch(offset, length)` call, and decode them (chunks in parallel, GIL
/// released) with the same checks as a local read.
#[pyfunction]
#[pyo3(signature = (file_len, fetch, name, max_header_len=None))]
fn read_remote_tensor(
    py: Python<'_>,
    file_len: u64,
    fetch: Bound<'_, PyAny>,
    name: &str,
    max_header_len: Option<u64>,
) -> PyResult<Buffer> {
    let layout = remote_layout(py, file_len, &fetch, max_header_len)?;
    let info = layout.tensor(name).map_err(|e| to_py(py, e))?.clone();
    // Validated: the stored bytes lie inside the file, but the file's length is
    // what the server claims, so the buffer is allocated fallibly (calloc: no
    // page is touched before the bytes arrive).
    let mut stored = AlignedBuf::zeroed(info.stored_len).map_err(|e| to_py(py, e))?;
    if !stored.is_empty() {
        if let Some(short) = fetch_exact(&fetch, info.file_offset, &mut stored, "a range read of tensor data")? {
            return Err(to_py(py, short));
        }
    }
    let data = py
        .off_gil(|| deathtensors::reader::decode_stored_buf(&layout, &info, stored))
        .map_err(|e| to_py(py, e))?;
    Ok(Buffer { data })
}

/// Run the command line (the same tree as the `deathtensors` binary); returns the exit code.
///
/// The commands that need Python (`hub-*`, the conversion of a sharded
/// checkpoint) are parsed here and run by `deathtensors._cli.run(request_json)`
/// (GIL held).
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<std::ffi::OsString>) -> i32 {
    py.off_gil(|| {
        deathtensors_cli::run_with_python(argv, |request| {
            Python::attach(|py| {
                let run = || -> PyResult<i32> {
                    py.import("deathtensors._cli")?
                        .getattr("run")?
                        .call1((request,))?
                        .extract()
                };
                run().unwrap_or_else(|e| {
                    e.print(py);
                    deathtensors_cli::EXIT_USAGE
                })
            })
        })
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    deathtensors_plugins::link();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TENSOR_ALIGNMENT", deathtensors::format::TENSOR_ALIGNMENT)?;
    m.add("DEFAULT_CHUNK_BYTES", deathtensors::format::DEFAULT_CHUNK_BYTES)?;
    m.add_class::<Buffer>()?;
    m.add_class::<Reader>()?;
    m.add_class::<MappedBuffer>()?;
    m.add_function(wrap_pyfunction!(save, m)?)?;
    m.add_function(wrap_pyfunction!(file_mode_for, m)?)?;
    m.add_function(wrap_pyfunction!(append, m)?)?;
    m.add_function(wrap_pyfunction!(repack, m)?)?;
    m.add_function(wrap_pyfunction!(plugins, m)?)?;
    m.add_function(wrap_pyfunction!(dtypes, m)?)?;
    m.add_function(wrap_pyfunction!(codec_and_checksum_ids, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(read_header, m)?)?;
    m.add_function(wrap_pyfunction!(info_text, m)?)?;
    m.add_function(wrap_pyfunction!(read_remote_tensor, m)?)?;
    diff::register(m)?;
    manifest::register(m)?;
    convert::register(m)?;
    sharded::register(m)?;
    Ok(())
}
