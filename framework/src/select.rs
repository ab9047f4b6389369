//! A strided selection of a tensor (`t[a:b:s, i, c:d]` in numpy's terms,
//! every step positive): which bytes it picks and where each lands in the
//! output, so that a read touches only the chunks (or, uncompressed, the byte
//! span) holding picked elements. [`crate::reader::DtReader::read_selection`]
//! reads one.
//!
//! The picked elements, in C order, are cut into **runs**: the picks along
//! the last dimension under one combination of the other dimensions' picks.
//! Trailing dimensions picked whole are merged first, so that `t[3:9]` of a
//! `[rows, cols]` tensor is one run, not one per row. Because every step is
//! positive, byte offsets grow with the output position: the elements that a
//! block of the tensor (a chunk) holds fill one contiguous piece of the
//! output, which is what lets blocks be read in parallel into disjoint pieces.

/// The indices picked along one dimension: `start, start + step, ...`,
/// `count` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DimSelection {
    /// First index.
    pub start: u64,
    /// Distance between picked indices (at least 1).
    pub step: u64,
    /// Number of indices picked (0 picks nothing).
    pub count: u64,
}

impl DimSelection {
    /// Every index of a dimension of length `len`.
    pub fn all(len: u64) -> Self {
        DimSelection {
            start: 0,
            step: 1,
            count: len,
        }
    }
}

/// A selection checked against a tensor's shape, as runs (see the module docs).
#[derive(Debug)]
pub struct Runs {
    /// Per dimension before the last: (first index, step, count, bytes per index).
    outer: Vec<(u64, u64, u64, u64)>,
    /// Byte offset of the first pick along the last dimension.
    base: u64,
    /// Elements per run.
    count: u64,
    /// Bytes from one element of a run to the next.
    stride: u64,
    /// Bytes per element.
    esize: u64,
    /// Number of runs.
    runs: u64,
}

impl Runs {
    /// Check `selection` (one entry per dimension of `shape`; none for a 0-d
    /// tensor) and cut it into runs of elements of `esize` bytes.
    ///
    /// # Errors
    /// A message when the selection does not fit the shape: another number of
    /// dimensions, a step of 0, or an index past the end.
    pub fn new(shape: &[u64], selection: &[DimSelection], esize: u64) -> Result<Runs, String> {
        if selection.len() != shape.len() {
            return Err(format!(
                "a selection of {} dimensions for a tensor of {}",
                selection.len(),
                shape.len()
            ));
        }
        let mut dims: Vec<(u64, DimSelection)> = Vec::with_capacity(shape.len().max(1));
        for (d, (&len, &s)) in shape.iter().zip(selection).enumerate() {
            if s.step == 0 {
                return Err(format!("dimension {d}: a step of 0"));
            }
            // One index or none: the step plays no part (and can be as large as a u64).
            let s = match s.count {
                0 => DimSelection::all(0),
                1 => DimSelection { step: 1, ..s },
                _ => s,
            };
            let last = s
                .count
                .checked_sub(1)
                .map(|n| n.checked_mul(s.step).and_then(|x| x.checked_add(s.start)));
            if let Some(last) = last {
                if last.is_none_or(|last| last >= len) {
                    return Err(format!(
                        "dimension {d} has {len} indices; {} from {} by {} goes past them",
                        s.count, s.start, s.step
                    ));
                }
            }
            dims.push((len, s));
        }
        if dims.is_empty() {
            dims.push((1, DimSelection::all(1))); // a 0-d tensor: its one element
        }
        // Every product below is at most the tensor's size in bytes (a shape's
        // non-zero dimensions times the item size fit 63 bits, a format rule);
        // checked all the same, since a `Runs` can be made from any shape.
        let too_big = || "the tensor's size overflows 64 bits".to_owned();
        let mul = |a: u64, b: u64| a.checked_mul(b).ok_or_else(too_big);
        // Merge a dimension picked whole into the one before it, when that
        // one's picks are contiguous (step 1: one index has step 1 by now):
        // fewer, longer runs, and fewer dimensions to count through.
        for i in (1..dims.len()).rev() {
            let ((plen, p), (len, s)) = (dims[i - 1], dims[i]);
            if s != DimSelection::all(len) || p.step != 1 {
                continue;
            }
            let merged = DimSelection {
                start: mul(p.start, len)?,
                step: 1,
                count: mul(p.count, len)?,
            };
            dims[i - 1] = (mul(plen, len)?, merged);
            dims.remove(i);
        }
        let (last_len, last) = dims[dims.len() - 1];
        let mut outer = Vec::with_capacity(dims.len() - 1);
        let mut bytes_per_index = mul(esize, last_len)?;
        for &(len, s) in dims[..dims.len() - 1].iter().rev() {
            outer.push((s.start, s.step, s.count, bytes_per_index));
            bytes_per_index = mul(bytes_per_index, len)?;
        }
        outer.reverse();
        let (mut base, mut count, mut stride) = (mul(last.start, esize)?, last.count, mul(last.step, esize)?);
        // Runs of one element (`t[..., 1]`): the dimension above makes the runs
        // instead, its picks `stride` apart, so that a run is many elements.
        while count == 1 {
            let Some((start, step, picks, bytes)) = outer.pop() else {
                break;
            };
            base = base.checked_add(mul(start, bytes)?).ok_or_else(too_big)?;
            (count, stride) = (picks, mul(step, bytes)?);
        }
        let runs = outer.iter().try_fold(1u64, |n, o| mul(n, o.2))?;
        Ok(Runs {
            outer,
            base,
            count,
            stride,
            esize,
            runs: if count == 0 { 0 } else { runs },
        })
    }

    /// Number of elements picked.
    pub fn len(&self) -> u64 {
        self.runs * self.count
    }

    /// Whether nothing is picked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte offset of the picks when they are one contiguous range of
    /// the tensor (one run, step 1), as `t[3:9]` or `t[5, 2:4]` are.
    pub fn contiguous(&self) -> Option<u64> {
        (self.runs == 1 && (self.stride == self.esize || self.count == 1)).then(|| self.run_offset(0))
    }

    /// Byte offset (in the tensor) of the first element of run `r`.
    fn run_offset(&self, mut r: u64) -> u64 {
        let mut at = self.base;
        for &(start, step, count, bytes) in self.outer.iter().rev() {
            at += (start + (r % count) * step) * bytes;
            r /= count;
        }
        at
    }

    /// Byte offset (in the tensor) of the picked element at output position `k`.
    pub fn element_offset(&self, k: u64) -> u64 {
        self.run_offset(k / self.count) + (k % self.count) * self.stride
    }

    /// Number of picked elements whose byte offset is below `x`: the output
    /// position of the first element at or after `x`.
    pub fn rank(&self, x: u64) -> u64 {
        // Runs are in offset order: find how many start below x.
        let (mut lo, mut hi) = (0, self.runs);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.run_offset(mid) < x {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let Some(r) = lo.checked_sub(1) else {
            return 0;
        };
        let into = x - self.run_offset(r);
        r * self.count + into.div_ceil(self.stride).min(self.count)
    }

    /// The picks at output positions `first..end` as byte spans of the tensor
    /// to read, `(start, end, first position, end position)`, in order: picks
    /// less than `gap` bytes apart share a span (reading the bytes between is
    /// cheaper than another read).
    pub fn spans(&self, first: u64, end: u64, gap: u64) -> Vec<(u64, u64, u64, u64)> {
        let mut spans: Vec<(u64, u64, u64, u64)> = Vec::new();
        if end == first {
            return spans;
        }
        let together = self.stride - self.esize <= gap;
        let (mut runs, mut j) = (RunCursor::at(self, first / self.count), first % self.count);
        let mut k = first;
        while k < end {
            // The picks of this run up to `end`: in one piece when their gaps are small.
            let n = (self.count - j).min(end - k);
            let each = if together { n } else { 1 };
            let lo = runs.offset + j * self.stride;
            let hi = lo + (each - 1) * self.stride + self.esize;
            match spans.last_mut() {
                Some(last) if lo - last.1 <= gap => (last.1, last.3) = (hi, k + each),
                _ => spans.push((lo, hi, k, k + each)),
            }
            k += each;
            j += each;
            if j == self.count {
                runs.advance();
                j = 0;
            }
        }
        spans
    }

    /// Copy the picked elements at output positions `first..first + out.len() / esize`
    /// into `out`, from `block`: the tensor's bytes from offset `block_start`,
    /// which must hold them all.
    ///
    /// # Panics
    /// When `block` does not hold them (a bug of the caller's arithmetic).
    pub fn gather(&self, block_start: u64, block: &[u8], first: u64, out: &mut [u8]) {
        let esize = self.esize as usize;
        let end = first + (out.len() / esize) as u64;
        if end == first {
            return;
        }
        let stride = self.stride as usize;
        let (mut runs, mut j) = (RunCursor::at(self, first / self.count), first % self.count);
        let mut k = first;
        while k < end {
            let n = (self.count - j).min(end - k) as usize;
            let from = (runs.offset + j * self.stride - block_start) as usize;
            let to = ((k - first) as usize) * esize;
            if stride == esize {
                out[to..to + n * esize].copy_from_slice(&block[from..from + n * esize]);
            } else {
                debug_assert!(
                    from + (n - 1) * stride + esize <= block.len(),
                    "the block holds its picks"
                );
                let picks = block[from..].chunks(stride).take(n);
                for (dst, src) in out[to..to + n * esize].chunks_exact_mut(esize).zip(picks) {
                    dst.copy_from_slice(&src[..esize]);
                }
            }
            k += n as u64;
            j += n as u64;
            if j == self.count {
                runs.advance();
                j = 0;
            }
        }
    }
}

/// The byte offsets of runs `r, r + 1, ...` of a [`Runs`], counted through
/// its dimensions like an odometer (recomputing each from its number took a
/// division per dimension per run: slower than reading the whole tensor for
/// selections of one element a run).
struct RunCursor<'a> {
    runs: &'a Runs,
    /// The index, among its picks, of each outer dimension.
    picks: Vec<u64>,
    /// Byte offset of the current run's first element.
    offset: u64,
}

impl<'a> RunCursor<'a> {
    /// At run `r`.
    fn at(runs: &'a Runs, mut r: u64) -> Self {
        let offset = runs.run_offset(r);
        let mut picks = vec![0; runs.outer.len()];
        for (pick, &(_, _, count, _)) in picks.iter_mut().zip(&runs.outer).rev() {
            *pick = r % count;
            r /= count;
        }
        RunCursor { runs, picks, offset }
    }

    /// On to the next run (past the last one, the offset is meaningless).
    fn advance(&mut self) {
        for (pick, &(_, step, count, bytes)) in self.picks.iter_mut().zip(&self.runs.outer).rev() {
            *pick += 1;
            if *pick < count {
                self.offset = self.offset.wrapping_add(step * bytes);
                return;
            }
            *pick = 0;
            self.offset = self.offset.wrapping_sub((count - 1) * step * bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(start: u64, step: u64, count: u64) -> DimSelection {
        DimSelection { start, step, count }
    }

    /// The byte offsets a selection picks, the slow and obvious way.
    fn picked(shape: &[u64], selection: &[DimSelection], esize: u64) -> Vec<u64> {
        let mut offsets = vec![0u64];
        for (d, s) in selection.iter().enumerate() {
            let inner: u64 = shape[d + 1..].iter().product::<u64>() * esize;
            offsets = offsets
                .iter()
                .flat_map(|&o| (0..s.count).map(move |i| o + (s.start + i * s.step) * inner))
                .collect();
        }
        offsets
    }

    #[test]
    fn runs_pick_what_indexing_picks() {
        let cases: Vec<(Vec<u64>, Vec<DimSelection>)> = vec![
            (
                vec![5, 4, 3],
                vec![sel(1, 2, 2), DimSelection::all(4), DimSelection::all(3)],
            ),
            (vec![5, 4, 3], vec![sel(0, 1, 5), sel(1, 1, 2), DimSelection::all(3)]),
            (vec![5, 4, 3], vec![sel(4, 1, 1), sel(0, 3, 2), sel(2, 1, 1)]),
            (vec![6, 8], vec![DimSelection::all(6), sel(0, 1, 1)]),
            (vec![6, 8], vec![sel(2, 1, 3), sel(1, 3, 3)]),
            (vec![7], vec![sel(6, 1, 1)]),
            (vec![], vec![]),
            (
                vec![3, 0, 2],
                vec![DimSelection::all(3), DimSelection::all(0), DimSelection::all(2)],
            ),
        ];
        for (shape, selection) in cases {
            for esize in [1, 2, 8] {
                let runs = Runs::new(&shape, &selection, esize).unwrap();
                let want = picked(&shape, &selection, esize);
                let want = if shape.contains(&0) { Vec::new() } else { want };
                assert_eq!(runs.len(), want.len() as u64, "{shape:?} {selection:?}");
                let got: Vec<u64> = (0..runs.len()).map(|k| runs.element_offset(k)).collect();
                assert_eq!(got, want, "{shape:?} {selection:?}");
                let total: u64 = shape.iter().product::<u64>() * esize;
                for x in 0..=total {
                    let below = want.iter().filter(|&&o| o < x).count() as u64;
                    assert_eq!(runs.rank(x), below, "{shape:?} {selection:?} x={x}");
                }
                // Spans cover every pick, in order, and only picks' bytes when the gap is 0.
                for gap in [0, 3, 1 << 20] {
                    let spans = runs.spans(0, runs.len(), gap);
                    let mut k = 0;
                    for &(lo, hi, k0, k1) in &spans {
                        assert_eq!(k0, k);
                        assert_eq!((runs.element_offset(k0), runs.element_offset(k1 - 1) + esize), (lo, hi));
                        k = k1;
                    }
                    assert_eq!(k, runs.len());
                    if gap == 0 {
                        let read: u64 = spans.iter().map(|s| s.1 - s.0).sum();
                        assert_eq!(read, runs.len() * esize, "{shape:?} {selection:?}");
                    }
                }
                // Gathering from the whole tensor, in two pieces, gives the picks in order.
                let tensor: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
                let mut out = vec![0u8; (runs.len() * esize) as usize];
                let half = runs.len() / 2;
                let (a, b) = out.split_at_mut((half * esize) as usize);
                runs.gather(0, &tensor, 0, a);
                runs.gather(0, &tensor, half, b);
                let expected: Vec<u8> = want
                    .iter()
                    .flat_map(|&o| tensor[o as usize..(o + esize) as usize].to_vec())
                    .collect();
                assert_eq!(out, expected, "{shape:?} {selection:?}");
            }
        }
    }

    #[test]
    fn trailing_whole_dimensions_merge_into_one_run() {
        let runs = Runs::new(
            &[100, 4, 3],
            &[sel(10, 1, 20), DimSelection::all(4), DimSelection::all(3)],
            2,
        )
        .unwrap();
        assert_eq!((runs.runs, runs.count), (1, 240));
        assert_eq!(runs.contiguous(), Some(10 * 12 * 2));
        let runs = Runs::new(&[100, 4], &[sel(10, 2, 20), DimSelection::all(4)], 2).unwrap();
        assert_eq!((runs.runs, runs.count), (20, 4));
        // One element a row: the rows make the run.
        let runs = Runs::new(
            &[100, 4, 2],
            &[DimSelection::all(100), DimSelection::all(4), sel(1, 1, 1)],
            1,
        )
        .unwrap();
        assert_eq!((runs.runs, runs.count, runs.stride), (1, 400, 2));
        assert_eq!(runs.contiguous(), None);
        let runs = Runs::new(&[100, 4], &[sel(7, 1, 1), sel(1, 1, 2)], 2).unwrap();
        assert_eq!(runs.contiguous(), Some((7 * 4 + 1) * 2));
    }

    #[test]
    fn selections_that_do_not_fit_are_refused() {
        assert!(Runs::new(&[5], &[sel(0, 1, 6)], 4).is_err());
        assert!(Runs::new(&[5], &[sel(4, 2, 2)], 4).is_err());
        assert!(Runs::new(&[5], &[sel(0, 0, 2)], 4).is_err());
        assert!(Runs::new(&[5], &[sel(u64::MAX, u64::MAX, 3)], 4).is_err());
        assert!(Runs::new(&[5, 2], &[sel(0, 1, 1)], 4).is_err());
        assert!(Runs::new(&[5], &[sel(99, 1, 0)], 4).is_ok()); // picks nothing
        assert!(Runs::new(&[u64::MAX, 4], &[DimSelection::all(u64::MAX), DimSelection::all(4)], 4).is_err());
    }

    #[test]
    fn a_single_index_takes_any_step() {
        // t[::2, 1::2**63] of a 4x4 tensor: the second dimension picks index 1 only.
        let runs = Runs::new(&[4, 4], &[sel(0, 2, 2), sel(1, 1 << 63, 1)], 2).unwrap();
        let got: Vec<u64> = (0..runs.len()).map(|k| runs.element_offset(k)).collect();
        assert_eq!(got, [2, 2 * 9]);
        assert_eq!(runs.rank(3), 1);
        let runs = Runs::new(&[4], &[sel(3, u64::MAX, 1)], 8).unwrap();
        assert_eq!(runs.contiguous(), Some(24));
    }
}
