//! Opening and reading `.deathtensors` files.

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};

use memmap2::MmapMut;

use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::buffer::{self, AlignedBuf, UninitBuf};
use crate::chunk::{self, AppliedFilter};
use crate::error::{Error, Result};
use crate::format::{self, Chunk, Layout, Preamble, TensorInfo, DEFAULT_MAX_HEADER_LEN, FOOTER_LEN, PREAMBLE_LEN};
use crate::registry::{ChecksumAlgorithm, Codec, DtypeKind};
use crate::select::{DimSelection, Runs};

/// Reads are made in pieces of this size (each prefaulted, then read), and a
/// range of several pieces is read by several threads at once.
const PARALLEL_READ_PIECE: usize = 1 << 20;
/// Block size of the verification pipeline (three blocks in flight). 1 MiB
/// hashes as fast as 4 MiB did (about 4 GB/s with SHA-256 here) and keeps a
/// verify running beside an append or repack to 3 MiB.
const VERIFY_BLOCK: usize = 1 << 20;
/// Blocks of an uncompressed tensor that [`DtReader::read_selection`] reads
/// one at a time (each trimmed to the span of its picked elements).
pub const SELECTION_BLOCK: usize = 1 << 20;
/// Picked bytes of an uncompressed tensor closer than this share one read.
const SELECTION_GAP: u64 = 16 << 10;

/// Options for [`DtReader::open_with`].
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Largest JSON header accepted, in bytes (default 100 MB).
    pub max_header_len: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            max_header_len: DEFAULT_MAX_HEADER_LEN,
        }
    }
}

/// An open file: its validated layout and the handle its bytes are read from.
///
/// Reads use positioned I/O on the handle opened at [`DtReader::open`], so a
/// file replaced on disk (by an atomic save) keeps being read from the old,
/// complete contents; every method takes `&self` and may run on many threads.
pub struct DtReader {
    path: PathBuf,
    file: File,
    file_len: u64,
    layout: Arc<Layout>,
    decoded: AtomicU64,
    mapping: OnceLock<Arc<MmapMut>>,
}

/// Make the bytes of a BOOL tensor 0 or 1. The format's BOOL is `0x00`
/// false and `0x01` true, and reads take any other byte (which writers must
/// not write, but a foreign or hostile file may hold) as true, as stats do:
/// handed to torch or numpy as a bool, a byte of 2 would compare unequal to
/// `True`. `out` has been filled.
fn canonical_bools(info: &TensorInfo, out: &mut [MaybeUninit<u8>]) {
    if info.dtype.kind() == DtypeKind::Bool {
        // SAFETY: the read that filled `out` returned Ok, so every byte is written.
        for b in unsafe { buffer::assume_init_mut(out) } {
            *b = u8::from(*b != 0);
        }
    }
}

/// Whether rayon's pool has a single worker (`RAYON_NUM_THREADS=1`): work is
/// then done on the calling thread, because handing it to that one worker
/// would serialise every thread that reads at the same time.
fn single_threaded() -> bool {
    rayon::current_num_threads() <= 1
}

/// Per-thread scratch of chunk decoding: stored bytes and decoded planes.
type Scratch = (Vec<u8>, Vec<u8>);

/// Blocks of an uncompressed tensor handed to [`DtReader::map_blocks`].
pub const MAP_BLOCK_BYTES: usize = 4 << 20;

impl DtReader {
    /// Open and validate a file with default limits.
    ///
    /// # Errors
    /// I/O errors, and any rule of the format the file breaks.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &ReadOptions::default())
    }

    /// Open and validate a file.
    ///
    /// Reads the preamble and the header only; no tensor bytes are read.
    ///
    /// # Errors
    /// I/O errors, and any rule of the format the file breaks.
    pub fn open_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore it.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            return Err(Error::io(&path, std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        if !meta.is_file() {
            return Err(Error::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        let file_len = meta.len();
        let layout = read_layout(file_len, options, |offset, buf| {
            file.read_exact_at(buf, offset).map_err(|e| Error::io(&path, e))
        })
        .map_err(|e| e.in_file(&path))?;
        Ok(DtReader {
            path,
            file,
            file_len,
            layout: Arc::new(layout),
            decoded: AtomicU64::new(0),
            mapping: OnceLock::new(),
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `(device, inode)` of the open file: which file this reader holds,
    /// whatever its path names now (a save replaces a path with a new inode).
    ///
    /// # Errors
    /// I/O errors of `fstat`.
    pub fn file_identity(&self) -> Result<(u64, u64)> {
        let meta = self.file.metadata().map_err(|e| Error::io(&self.path, e))?;
        Ok((meta.dev(), meta.ino()))
    }

    /// The file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The validated layout (header, offsets, plugins).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The layout, shared: it outlives the reader (and its open file) for as
    /// long as a clone is held, as a closed file's description does.
    pub fn shared_layout(&self) -> Arc<Layout> {
        Arc::clone(&self.layout)
    }

    /// Tensors in the order they were saved.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.layout.tensors
    }

    /// Tensor names in the order they were saved.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.layout.tensors.iter().map(|t| t.name.as_str())
    }

    /// One tensor's entry.
    ///
    /// # Errors
    /// [`Error::TensorNotFound`].
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.layout.tensor(name)
    }

    /// The global metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.layout.header.metadata
    }

    /// The codec, when the file is compressed.
    pub fn codec(&self) -> Option<&'static dyn Codec> {
        self.layout.codec
    }

    /// The checksum algorithm, when the file has a footer.
    pub fn checksum(&self) -> Option<&'static dyn ChecksumAlgorithm> {
        self.layout.checksum
    }

    /// Read one tensor's decoded bytes into a new 64-byte-aligned buffer.
    ///
    /// Reads only that tensor's bytes; compressed chunks decode in parallel.
    ///
    /// # Errors
    /// Unknown name, I/O errors, corrupt chunks, allocation failure.
    pub fn read_tensor(&self, name: &str) -> Result<AlignedBuf> {
        let info = self.tensor(name)?;
        let mut buf = UninitBuf::new(info.nbytes)?;
        self.read_into_uninit(info, buf.as_uninit_mut())?;
        // SAFETY: read_into_uninit returned Ok, so it wrote every byte.
        Ok(unsafe { buf.assume_init() })
    }

    /// Read several tensors at once, in parallel across tensors and chunks.
    ///
    /// # Errors
    /// As [`DtReader::read_tensor`], for the first tensor that fails.
    pub fn read_tensors(&self, names: &[&str]) -> Result<Vec<AlignedBuf>> {
        names.par_iter().map(|name| self.read_tensor(name)).collect()
    }

    /// Decode `info`'s bytes into `out`, which must be exactly `info.nbytes` long.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] on a wrong `out` length, I/O errors, corrupt chunks.
    pub fn read_into(&self, info: &TensorInfo, out: &mut [u8]) -> Result<()> {
        // SAFETY: the read paths store only real bytes into `out`.
        self.read_into_uninit(info, unsafe { buffer::as_uninit_mut(out) })
    }

    /// [`DtReader::read_into`] into memory that may be uninitialised (no need
    /// to zero it first). On `Ok` every byte of `out` has been written; on an
    /// error its contents are unspecified.
    ///
    /// # Errors
    /// As [`DtReader::read_into`].
    pub fn read_into_uninit(&self, info: &TensorInfo, out: &mut [MaybeUninit<u8>]) -> Result<()> {
        if out.len() as u64 != info.nbytes {
            return Err(Error::InvalidArgument(format!(
                "output buffer has {} bytes, tensor {:?} has {}",
                out.len(),
                info.name,
                info.nbytes
            )));
        }
        match (&info.chunks, self.layout.codec) {
            (Some(chunks), Some(codec)) => self.read_chunks(info, chunks, codec, out)?,
            _ => self.read_at(out, info.file_offset)?,
        }
        canonical_bools(info, out);
        Ok(())
    }

    /// Fill `out` from file `offset` (every byte, or an error).
    ///
    /// Pieces of [`PARALLEL_READ_PIECE`] bytes are each prefaulted
    /// ([`buffer::prefault`]) just before they are read, while the fresh
    /// pages are still in cache. Their length is that of file bytes the
    /// header placed inside the data region, so a file never makes this
    /// populate more memory than the file's own size.
    fn read_at(&self, out: &mut [MaybeUninit<u8>], offset: u64) -> Result<()> {
        let read = |piece: &mut [MaybeUninit<u8>], at: u64| {
            let mut done = 0;
            for step in piece.chunks_mut(PARALLEL_READ_PIECE) {
                buffer::prefault(step);
                let at = at + done as u64;
                pread_exact(&self.file, step, at).map_err(|e| self.io_at(e, at, step.len()))?;
                done += step.len();
            }
            Ok(())
        };
        if out.len() < 2 * PARALLEL_READ_PIECE || single_threaded() {
            return read(out, offset);
        }
        out.par_chunks_mut(PARALLEL_READ_PIECE)
            .enumerate()
            .try_for_each(|(i, piece)| read(piece, offset + (i * PARALLEL_READ_PIECE) as u64))
    }

    /// The error of a read of `len` bytes at `at` that failed with `e`: a file
    /// that ended first shrank since it was opened (the header placed every
    /// range inside it), so the error gives the end the read needed and the
    /// file's length now.
    fn io_at(&self, e: std::io::Error, at: u64, len: usize) -> Error {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Truncated {
                what: "tensor data (the file shrank while open)",
                needed: at.saturating_add(len as u64),
                available: self.file.metadata().map_or(self.file_len, |m| m.len()),
            }
        } else {
            Error::io(&self.path, e)
        }
    }

    fn read_chunks(
        &self,
        info: &TensorInfo,
        chunks: &[Chunk],
        codec: &dyn Codec,
        out: &mut [MaybeUninit<u8>],
    ) -> Result<()> {
        let pieces = chunk_pieces(out, chunks, &info.name)?;
        if pieces.len() == 1 || single_threaded() {
            // On the caller's thread: no hand-off to the pool, and concurrent callers
            // decode in parallel even when the pool has one worker.
            let mut scratch = Scratch::default();
            return pieces
                .into_iter()
                .zip(chunks)
                .enumerate()
                .try_for_each(|(index, (piece, chunk))| {
                    self.decode_chunk(info, index, chunk, codec, piece, &mut scratch)
                });
        }
        pieces
            .into_par_iter()
            .zip(chunks.par_iter())
            .enumerate()
            .try_for_each_init(Scratch::default, |scratch, (index, (piece, chunk))| {
                self.decode_chunk(info, index, chunk, codec, piece, scratch)
            })
    }

    /// Decode one chunk of `info` into `out` (its raw length).
    fn decode_chunk(
        &self,
        info: &TensorInfo,
        index: usize,
        chunk: &Chunk,
        codec: &dyn Codec,
        out: &mut [MaybeUninit<u8>],
        (stored, planes): &mut Scratch,
    ) -> Result<()> {
        self.decoded.fetch_add(chunk.raw_len(), Ordering::Relaxed);
        if chunk.is_raw() {
            return self.read_at(out, chunk.offset());
        }
        let n = chunk.stored_len() as usize;
        stored.clear();
        stored.try_reserve_exact(n).map_err(|_| Error::OutOfMemory(n as u64))?;
        self.read_at(&mut stored.spare_capacity_mut()[..n], chunk.offset())?;
        // SAFETY: read_at filled the first n bytes of the spare capacity.
        unsafe { stored.set_len(n) };
        decode_chunk_of(info, index, chunk, codec, stored, out, planes)
    }

    /// Read stored bytes at absolute file `offset` (for copying tensors
    /// verbatim into another file). The range must lie in the data region.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] outside the data region; I/O errors.
    pub fn read_stored(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let start = self.layout.data_start;
        let end = start + self.layout.data_len;
        if offset < start || offset.checked_add(out.len() as u64).is_none_or(|e| e > end) {
            return Err(Error::InvalidArgument(format!(
                "stored range at {offset} (+{}) is outside the data region [{start}, {end})",
                out.len()
            )));
        }
        // SAFETY: read_at stores only real bytes.
        self.read_at(unsafe { buffer::as_uninit_mut(out) }, offset)
    }

    /// Decode bytes `[start, start + out.len())` of `info` into `out`,
    /// decompressing only the chunks that cover that range.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the range is outside the tensor; I/O
    /// errors; corrupt chunks.
    pub fn read_range(&self, info: &TensorInfo, start: u64, out: &mut [u8]) -> Result<()> {
        // SAFETY: the read paths store only real bytes into `out`.
        self.read_range_uninit(info, start, unsafe { buffer::as_uninit_mut(out) })
    }

    /// [`DtReader::read_range`] into memory that may be uninitialised: on
    /// `Ok` every byte of `out` has been written.
    ///
    /// # Errors
    /// As [`DtReader::read_range`].
    pub fn read_range_uninit(&self, info: &TensorInfo, start: u64, out: &mut [MaybeUninit<u8>]) -> Result<()> {
        let end = start
            .checked_add(out.len() as u64)
            .filter(|&e| e <= info.nbytes)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "byte range [{start}, {start} + {}) is outside tensor {:?} of {} bytes",
                    out.len(),
                    info.name,
                    info.nbytes
                ))
            })?;
        let (Some(chunks), Some(codec)) = (&info.chunks, self.layout.codec) else {
            self.read_at(out, info.file_offset + start)?;
            canonical_bools(info, out);
            return Ok(());
        };
        // (chunk index, chunk's raw start, first byte wanted, output piece) per overlapping chunk.
        let mut pieces = Vec::new();
        let mut rest = &mut *out;
        let mut raw_at = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            let raw_end = raw_at + c.raw_len();
            if raw_end > start && raw_at < end {
                let (lo, hi) = (raw_at.max(start), raw_end.min(end));
                let (head, tail) = rest.split_at_mut((hi - lo) as usize);
                pieces.push((i, raw_at, lo, head));
                rest = tail;
            }
            raw_at = raw_end;
        }
        pieces
            .into_par_iter()
            .try_for_each_init(Scratch::default, |scratch, (i, raw_start, lo, piece)| {
                let chunk = &chunks[i];
                if piece.len() as u64 == chunk.raw_len() {
                    return self.decode_chunk(info, i, chunk, codec, piece, scratch);
                }
                let mut whole = UninitBuf::new(chunk.raw_len())?;
                self.decode_chunk(info, i, chunk, codec, whole.as_uninit_mut(), scratch)?;
                // SAFETY: decode_chunk returned Ok, so it wrote every byte.
                let whole = unsafe { whole.assume_init() };
                let from = (lo - raw_start) as usize;
                buffer::copy_into(piece, &whole[from..from + piece.len()]);
                Ok(())
            })?;
        canonical_bools(info, out);
        Ok(())
    }

    /// Read a strided selection of `info` (one [`DimSelection`] per dimension,
    /// none for a 0-d tensor): the picked elements in C order, as numpy's
    /// `t[a:b:s, i, ...]` with positive steps gives them. Only what holds a
    /// picked element is read: the chunks of a compressed tensor (each
    /// decoded once, in parallel), or, uncompressed, the spans of picked bytes
    /// (picks less than 16 KiB apart share one read), a [`SELECTION_BLOCK`]
    /// at a time. Memory beyond the output is one chunk or block per thread.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a selection that does not fit the
    /// shape; I/O errors; corrupt chunks.
    pub fn read_selection(&self, info: &TensorInfo, selection: &[DimSelection]) -> Result<AlignedBuf> {
        let esize = info.dtype.item_size() as u64;
        let runs = Runs::new(&info.shape, selection, esize)
            .map_err(|reason| Error::InvalidArgument(format!("selection of tensor {:?}: {reason}", info.name)))?;
        if let Some(start) = runs.contiguous() {
            // One range (`t[3:9]`, `t[5, 2:4]`): read straight into the output.
            let mut out = UninitBuf::new(runs.len() * esize)?;
            self.read_range_uninit(info, start, out.as_uninit_mut())?;
            // SAFETY: read_range_uninit returned Ok, so it wrote every byte.
            return Ok(unsafe { out.assume_init() });
        }
        let mut out = AlignedBuf::zeroed(runs.len() * esize)?;
        // Blocks of the tensor as (index, raw start, raw length): chunks, or fixed pieces.
        let blocks: Vec<(usize, u64, u64)> = match (&info.chunks, self.layout.codec) {
            (Some(chunks), Some(_)) => {
                let mut at = 0;
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        at += c.raw_len();
                        (i, at - c.raw_len(), c.raw_len())
                    })
                    .collect()
            }
            _ => {
                let step = SELECTION_BLOCK as u64;
                (0..info.nbytes.div_ceil(step))
                    .map(|b| (b as usize, b * step, step.min(info.nbytes - b * step)))
                    .collect()
            }
        };
        // Each block's picks fill one contiguous piece of the output (see `select`).
        let mut pieces = Vec::new();
        let mut rest: &mut [u8] = &mut out;
        let mut done = 0;
        for (i, start, len) in blocks {
            let upto = runs.rank(start + len);
            if upto > done {
                let (piece, tail) = std::mem::take(&mut rest).split_at_mut(((upto - done) * esize) as usize);
                pieces.push((i, start, done, piece));
                rest = tail;
                done = upto;
            }
        }
        pieces.into_par_iter().try_for_each_init(
            || (Scratch::default(), Vec::new()),
            |(scratch, buf), (i, start, first, piece)| {
                let block_start = match (&info.chunks, self.layout.codec) {
                    (Some(chunks), Some(codec)) => {
                        buf.resize(chunks[i].raw_len() as usize, 0);
                        // SAFETY: decoding stores only real bytes.
                        let into = unsafe { buffer::as_uninit_mut(buf) };
                        self.decode_chunk(info, i, &chunks[i], codec, into, scratch)?;
                        start
                    }
                    _ => {
                        // Only the spans of picked bytes (with the small gaps between).
                        let end = first + piece.len() as u64 / esize;
                        for (lo, hi, k0, k1) in runs.spans(first, end, SELECTION_GAP) {
                            buf.resize((hi - lo) as usize, 0);
                            // SAFETY: read_at stores only real bytes.
                            self.read_at(unsafe { buffer::as_uninit_mut(buf) }, info.file_offset + lo)?;
                            let to = &mut piece[((k0 - first) * esize) as usize..((k1 - first) * esize) as usize];
                            runs.gather(lo, buf, k0, to);
                        }
                        return Ok(());
                    }
                };
                runs.gather(block_start, buf, first, piece);
                Ok(())
            },
        )?;
        // SAFETY: the output is initialised (zeroed, then written).
        canonical_bools(info, unsafe { buffer::as_uninit_mut(&mut out) });
        Ok(out)
    }

    /// Apply `f` to each decoded block of `info`, in parallel, and return the
    /// results in order. A block is one chunk of a compressed tensor, or
    /// [`MAP_BLOCK_BYTES`] of an uncompressed one; every block holds whole
    /// elements. Memory stays bounded by one block per thread.
    ///
    /// # Errors
    /// I/O errors; corrupt chunks.
    pub fn map_blocks<T, F>(&self, info: &TensorInfo, f: F) -> Result<Vec<T>>
    where
        T: Send,
        F: Fn(&[u8]) -> T + Sync,
    {
        match (&info.chunks, self.layout.codec) {
            (Some(chunks), Some(codec)) => chunks
                .par_iter()
                .enumerate()
                .map_init(
                    || (Scratch::default(), Vec::new()),
                    |(scratch, buf), (i, chunk)| {
                        buf.resize(chunk.raw_len() as usize, 0);
                        // SAFETY: decoding stores only real bytes.
                        self.decode_chunk(info, i, chunk, codec, unsafe { buffer::as_uninit_mut(buf) }, scratch)?;
                        Ok(f(buf))
                    },
                )
                .collect(),
            _ => {
                let blocks = info.nbytes.div_ceil(MAP_BLOCK_BYTES as u64);
                (0..blocks)
                    .into_par_iter()
                    .map_init(Vec::new, |buf, b| {
                        let at = b * MAP_BLOCK_BYTES as u64;
                        buf.resize((info.nbytes - at).min(MAP_BLOCK_BYTES as u64) as usize, 0);
                        // SAFETY: read_at stores only real bytes.
                        self.read_at(unsafe { buffer::as_uninit_mut(buf) }, info.file_offset + at)?;
                        Ok(f(buf))
                    })
                    .collect()
            }
        }
    }

    /// A private (copy-on-write) memory map of the whole file, shared by every
    /// caller, plus the byte range of `name` in it: zero-copy access to an
    /// uncompressed tensor. Writing through the map never changes the file;
    /// the map stays valid as long as any clone of the `Arc` lives, even after
    /// this reader is dropped. Like every `MAP_PRIVATE` map, pages not yet
    /// written reflect the file, so a file changed in place (not replaced, as
    /// deathtensors' own atomic saves do) shows through.
    ///
    /// The first call also reads every BOOL tensor of the file (usually a
    /// few small masks) through the map, to hand out their bytes as 0 or 1 as
    /// the other reads do (see `canonical_bools`).
    ///
    /// # Errors
    /// [`Error::TensorNotFound`]; [`Error::InvalidArgument`] for a compressed
    /// file; I/O errors from `mmap`.
    pub fn tensor_mapping(&self, name: &str) -> Result<(Arc<MmapMut>, usize, usize)> {
        let info = self.tensor(name)?;
        if info.chunks.is_some() {
            return Err(Error::InvalidArgument(format!(
                "tensor {name:?} is stored compressed, so it cannot be memory-mapped; use get_tensor (which decompresses it)"
            )));
        }
        let map = match self.mapping.get() {
            Some(m) => m.clone(),
            None => {
                // SAFETY: a private map of a file we hold open; validation bounded every
                // offset by the length the file had, and the map is never shrunk by us.
                let mut m = unsafe {
                    memmap2::MmapOptions::new()
                        .len(self.file_len as usize)
                        .map_copy(&self.file)
                }
                .map_err(|e| Error::io(&self.path, e))?;
                // BOOL bytes other than 0 and 1 read as 1 (see `canonical_bools`), here
                // too: before the map is shared, writing (copy-on-write) only bytes
                // that need it, so a clean file's pages stay the page cache's.
                let tensors = self.layout.tensors.iter();
                for t in tensors.filter(|t| t.dtype.kind() == DtypeKind::Bool && t.chunks.is_none()) {
                    let at = t.file_offset as usize;
                    for b in m[at..at + t.nbytes as usize].iter_mut().filter(|b| **b > 1) {
                        *b = 1;
                    }
                }
                self.mapping.get_or_init(|| Arc::new(m)).clone()
            }
        };
        Ok((map, info.file_offset as usize, info.nbytes as usize))
    }

    /// Raw bytes produced from chunks so far (decompressed or copied), for
    /// tests and diagnostics that prove reads stay lazy.
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// The digest stored in the footer.
    ///
    /// # Errors
    /// [`Error::NoChecksum`] when the file has no footer; I/O errors.
    pub fn stored_digest(&self) -> Result<[u8; 32]> {
        if self.layout.checksum.is_none() {
            return Err(Error::NoChecksum);
        }
        let mut digest = [0u8; 32];
        self.file
            .read_exact_at(&mut digest, self.file_len - FOOTER_LEN)
            .map_err(|e| self.io_at(e, self.file_len - FOOTER_LEN, digest.len()))?;
        Ok(digest)
    }

    /// Hash header, padding and data, and compare with the footer.
    ///
    /// One thread reads while another hashes.
    ///
    /// # Errors
    /// [`Error::NoChecksum`], [`Error::ChecksumMismatch`], I/O errors.
    pub fn verify(&self) -> Result<()> {
        self.verify_with_progress(&|_| {})
    }

    /// [`DtReader::verify`], calling `progress` with the number of bytes
    /// hashed after each block (for progress bars). The total is
    /// `file_len() - 24 - 32`.
    ///
    /// # Errors
    /// As [`DtReader::verify`].
    pub fn verify_with_progress(&self, progress: &dyn Fn(u64)) -> Result<()> {
        let algorithm = self.layout.checksum.ok_or(Error::NoChecksum)?;
        let expected = self.stored_digest()?;
        let computed = self.compute_digest(algorithm, progress)?;
        if computed != expected {
            return Err(Error::ChecksumMismatch {
                algorithm: algorithm.id().to_owned(),
                expected: hex(&expected),
                computed: hex(&computed),
            });
        }
        Ok(())
    }

    fn compute_digest(&self, algorithm: &dyn ChecksumAlgorithm, progress: &dyn Fn(u64)) -> Result<[u8; 32]> {
        let end = self.file_len - FOOTER_LEN;
        let (full_tx, full_rx) = mpsc::sync_channel::<Result<(Vec<u8>, usize)>>(2);
        let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(3);
        for _ in 0..3 {
            let _ = free_tx.send(vec![0u8; VERIFY_BLOCK]);
        }
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut at = PREAMBLE_LEN;
                while at < end {
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let n = VERIFY_BLOCK.min((end - at) as usize);
                    let result = self
                        .file
                        .read_exact_at(&mut buf[..n], at)
                        .map_err(|e| self.io_at(e, at, n));
                    let failed = result.is_err();
                    if full_tx.send(result.map(|()| (buf, n))).is_err() || failed {
                        return;
                    }
                    at += n as u64;
                }
            });
            let mut hasher = algorithm.hasher();
            let mut done = 0u64;
            while let Ok(block) = full_rx.recv() {
                let (buf, n) = block?;
                hasher.update(&buf[..n]);
                done += n as u64;
                progress(done);
                let _ = free_tx.send(buf);
            }
            Ok(hasher.finish())
        })
    }
}

/// Read and validate the preamble and header of a file of `file_len` bytes
/// through `read_at(offset, buf)`, which fills `buf` from that offset.
///
/// This is how [`DtReader::open_with`] reads a local file, and how a remote
/// file is inspected with two HTTP range requests (the preamble, then the
/// header and its padding) without downloading its data. The header length
/// is checked against `options.max_header_len` and the file length before the
/// header is read, so `read_at` is never asked for more than that.
///
/// # Errors
/// Whatever `read_at` returns, and any rule of the format the file breaks.
pub fn read_layout<F>(file_len: u64, options: &ReadOptions, mut read_at: F) -> Result<Layout>
where
    F: FnMut(u64, &mut [u8]) -> Result<()>,
{
    if file_len < PREAMBLE_LEN {
        return Err(Error::Truncated {
            what: "the 24-byte preamble",
            needed: PREAMBLE_LEN,
            available: file_len,
        });
    }
    let mut pre = [0u8; 24];
    read_at(0, &mut pre)?;
    let preamble = Preamble::decode(&pre)?;
    if preamble.header_len > options.max_header_len {
        return Err(Error::HeaderTooLarge {
            len: preamble.header_len,
            limit: options.max_header_len,
        });
    }
    let header_end = PREAMBLE_LEN.saturating_add(preamble.header_len);
    let padded_end = header_end.saturating_add(format::nul_padding(preamble.header_len));
    if padded_end > file_len {
        return Err(Error::Truncated {
            what: "the JSON header and its padding",
            needed: padded_end,
            available: file_len,
        });
    }
    let mut text = vec![0u8; (padded_end - PREAMBLE_LEN) as usize];
    read_at(PREAMBLE_LEN, &mut text)?;
    let padding = text.split_off(preamble.header_len as usize);
    if let Some(pos) = padding.iter().position(|&b| b != 0) {
        return Err(Error::InvalidHeader(format!(
            "padding byte at file offset {} is {:#04x}, not NUL",
            header_end + pos as u64,
            padding[pos]
        )));
    }
    let header = format::Header::parse(&text)?;
    format::validate(preamble, header, file_len)
}

/// `out` (a tensor's decoded bytes) cut into one piece per chunk, in order.
/// Validated layouts guarantee the raw lengths add up to `out.len()`; that is
/// checked again here because the pieces must cover every byte of `out`.
fn chunk_pieces<'o>(
    out: &'o mut [MaybeUninit<u8>],
    chunks: &[Chunk],
    name: &str,
) -> Result<Vec<&'o mut [MaybeUninit<u8>]>> {
    let total = chunks.iter().try_fold(0u64, |sum, c| sum.checked_add(c.raw_len()));
    if total != Some(out.len() as u64) {
        return Err(Error::tensor(name, "its chunks' raw lengths do not add up to its size"));
    }
    let mut pieces = Vec::with_capacity(chunks.len());
    let mut rest = out;
    for c in chunks {
        let (head, tail) = rest.split_at_mut(c.raw_len() as usize);
        pieces.push(head);
        rest = tail;
    }
    Ok(pieces)
}

/// Decode chunk `index` of `info` from its `stored` bytes into `out`; a
/// failure is [`Error::CorruptChunk`] naming the tensor, chunk and offset.
fn decode_chunk_of(
    info: &TensorInfo,
    index: usize,
    chunk: &Chunk,
    codec: &dyn Codec,
    stored: &[u8],
    out: &mut [MaybeUninit<u8>],
    planes: &mut Vec<u8>,
) -> Result<()> {
    let filter = info.filter.as_ref().map(|(f, params, planes)| AppliedFilter {
        filter: *f,
        params,
        planes: *planes,
    });
    chunk::decode(stored, chunk, codec, filter, out, planes).map_err(|reason| Error::CorruptChunk {
        name: info.name.clone(),
        index,
        offset: chunk.offset(),
        reason,
    })
}

/// Decode a tensor of `layout` from its stored bytes fetched some other way
/// than by a [`DtReader`] (an HTTP range of a remote file, say): `stored` is
/// the file's bytes `[info.file_offset, info.file_offset + info.stored_len)`.
/// Chunks decode in parallel, each bounded by its declared raw length.
///
/// # Errors
/// [`Error::InvalidArgument`] when `stored` has another length;
/// [`Error::OutOfMemory`]; [`Error::CorruptChunk`].
pub fn decode_stored(layout: &Layout, info: &TensorInfo, stored: &[u8]) -> Result<AlignedBuf> {
    if stored.len() as u64 != info.stored_len {
        return Err(Error::InvalidArgument(format!(
            "tensor {:?} stores {} bytes, {} were given",
            info.name,
            info.stored_len,
            stored.len()
        )));
    }
    let mut out = UninitBuf::new(info.nbytes)?;
    let (Some(chunks), Some(codec)) = (&info.chunks, layout.codec) else {
        buffer::copy_into(out.as_uninit_mut(), stored);
        canonical_bools(info, out.as_uninit_mut());
        // SAFETY: every byte was just copied.
        return Ok(unsafe { out.assume_init() });
    };
    chunk_pieces(out.as_uninit_mut(), chunks, &info.name)?
        .into_par_iter()
        .zip(chunks.par_iter())
        .enumerate()
        .try_for_each_init(Vec::new, |planes, (index, (piece, chunk))| {
            // Validated: chunks are contiguous from `file_offset` and end at `stored_len`.
            let at = (chunk.offset() - info.file_offset) as usize;
            let bytes = stored.get(at..at + chunk.stored_len() as usize).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "chunk {index} of {:?} lies outside its stored bytes",
                    info.name
                ))
            })?;
            decode_chunk_of(info, index, chunk, codec, bytes, piece, planes)
        })?;
    canonical_bools(info, out.as_uninit_mut());
    // SAFETY: every chunk decoded Ok, and the chunks' pieces cover `out`.
    Ok(unsafe { out.assume_init() })
}

/// [`decode_stored`] of stored bytes already in a buffer of their own, which
/// an uncompressed tensor's bytes are returned in (no second copy).
///
/// # Errors
/// As [`decode_stored`].
pub fn decode_stored_buf(layout: &Layout, info: &TensorInfo, mut stored: AlignedBuf) -> Result<AlignedBuf> {
    if info.chunks.is_some() || stored.len() as u64 != info.stored_len || info.stored_len != info.nbytes {
        return decode_stored(layout, info, &stored);
    }
    // SAFETY: the bytes are initialised; canonical_bools stores only 0 or 1.
    canonical_bools(info, unsafe { buffer::as_uninit_mut(&mut stored) });
    Ok(stored)
}

/// `pread` until `out` is full, into memory that may be uninitialised; the
/// file ending first is [`std::io::ErrorKind::UnexpectedEof`].
fn pread_exact(file: &File, out: &mut [MaybeUninit<u8>], offset: u64) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < out.len() {
        match rustix::io::pread(file, &mut out[done..], offset + done as u64) {
            Ok(([], _)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok((filled, _)) => done += filled.len(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.deathtensors");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: plain libc call with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = DtReader::open(&fifo).err().expect("a FIFO is not a file");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(DtReader::open(dir.path()).is_err());
    }
}
