//! Fused attention on `f32` slices: the forward keeps only the output and the row log-sum-exp;
//! the backward is FlashAttention-2's, recomputing each query tile's probabilities from the
//! log-sum-exp (the recurrence is written out in `crate::attention`'s docs).
//!
//! Per query tile of `tile` rows the scores against every key live in one thread-local scratch
//! of `Nk x tile` floats (400 KB at 1568 x 64: the L2 cache), transposed: one row per key, the
//! tile's queries along it. In that layout every product of the forward and the backward reads
//! its operands as rows (keys, values, the output gradient's rows; each head's queries and
//! output gradients transposed once), so they run on the `gemm` crate's microkernels without
//! its per-call packing (`super::ukernel`), and the softmax runs down the columns with the SIMD
//! lanes across queries. A head's keys and values, which every tile reads whole, are copied
//! into rows of their own once per head when the model's head split leaves them a token apart
//! (`dense_head`), and the backward accumulates a head's key and value gradients over the tiles
//! in rows of its own before writing them out once. No other intermediate. The forward runs
//! (batch, head, query tile) tasks on the thread pool; the backward runs one task per (batch,
//! head), which owns that head's key and value gradients.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::gemm::Mat;
use super::simd;
use super::ukernel::gemm_direct;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Batch.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Queries.
    pub nq: usize,
    /// Keys (and values).
    pub nk: usize,
    /// Query and key width.
    pub d: usize,
    /// Value width.
    pub dv: usize,
}

impl Dims {
    /// `[batch, heads, nq, nk, d, dv]`.
    pub fn sizes(&self) -> [usize; 6] {
        [self.batch, self.heads, self.nq, self.nk, self.d, self.dv]
    }
}

/// A `[B, H, rows, cols]` operand of a strided tensor whose last axis is contiguous: element
/// `(b, h, i, j)` at `offset + b sb + h sh + i si + j`; a stride of 0 broadcasts along its axis.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [usize; 3],
}

impl<'a> View<'a> {
    /// The operand, checked to lie inside `data` for every index below `dims` (`[B, H, rows,
    /// cols]`, the sizes it is read at); `None` when it does not.
    pub fn new(
        data: &'a [f32],
        offset: usize,
        strides: [usize; 3],
        dims: [usize; 4],
    ) -> Option<Self> {
        if dims.contains(&0) {
            return Some(View {
                data,
                offset,
                strides,
            });
        }
        let last = offset
            + (dims[0] - 1) * strides[0]
            + (dims[1] - 1) * strides[1]
            + (dims[2] - 1) * strides[2]
            + dims[3]
            - 1;
        (last < data.len()).then_some(View {
            data,
            offset,
            strides,
        })
    }

    fn start(&self, b: usize, h: usize, i: usize) -> usize {
        self.offset + b * self.strides[0] + h * self.strides[1] + i * self.strides[2]
    }

    /// Rows from `i` on of head `(b, h)` as a matrix operand.
    fn mat(&self, b: usize, h: usize, i: usize) -> Mat {
        Mat {
            ptr: self.data[self.start(b, h, i)..].as_ptr(),
            rs: self.strides[2] as isize,
            cs: 1,
        }
    }

    /// Row `i` of head `(b, h)`, `len` elements.
    fn row(&self, b: usize, h: usize, i: usize, len: usize) -> &'a [f32] {
        let s = self.start(b, h, i);
        &self.data[s..s + len]
    }
}

/// The operands of one call: q `[B, H, Nq, D]`, k `[B, H, Nk, D]`, v `[B, H, Nk, Dv]`, and an
/// additive bias `[B | 1, H | 1, Nq | 1, Nk]` (broadcast axes have stride 0).
#[derive(Clone, Copy, Debug)]
pub struct Operands<'a> {
    /// Queries.
    pub q: View<'a>,
    /// Keys.
    pub k: View<'a>,
    /// Values.
    pub v: View<'a>,
    /// The additive bias, if any.
    pub bias: Option<View<'a>>,
    /// Multiplies the scores before the bias is added.
    pub scale: f32,
    /// Query rows per tile.
    pub tile: usize,
}

/// Where a kernel writes a `[B, H, rows, cols]` result: in the memory order of
/// `[B, rows, H, cols]`, the order the model's head merge (`swap_dims(1, 2)` then a reshape)
/// and the linear layers' gradients read without a copy. Each (batch, head, row) is one
/// contiguous run of `cols` floats; tasks write disjoint runs.
#[derive(Clone, Copy)]
struct HeadsInner {
    ptr: *mut f32,
    len: usize,
    heads: usize,
    rows: usize,
    cols: usize,
}

// SAFETY: tasks write disjoint rows (each (batch, head, row) belongs to one task) while the
// buffer is borrowed by the call that made this value.
unsafe impl Send for HeadsInner {}
unsafe impl Sync for HeadsInner {}

impl HeadsInner {
    fn new(buf: &mut [MaybeUninit<f32>], dims: [usize; 4]) -> Self {
        let [batch, heads, rows, cols] = dims;
        assert_eq!(
            buf.len(),
            batch * heads * rows * cols,
            "attention: result size"
        );
        HeadsInner {
            ptr: buf.as_mut_ptr().cast(),
            len: buf.len(),
            heads,
            rows,
            cols,
        }
    }

    /// Elements between consecutive rows of one head.
    fn ld(&self) -> usize {
        self.heads * self.cols
    }

    fn offset(&self, b: usize, h: usize, i: usize) -> usize {
        (b * self.rows + i) * self.ld() + h * self.cols
    }

    /// `dst (+)= beta a b` into rows `i..i + m` of head `(b, h)` (`m x cols`).
    ///
    /// # Safety
    /// The operands must be valid for the product; no other task may write these rows.
    unsafe fn gemm(
        &self,
        (b, h, i): (usize, usize, usize),
        mk: (usize, usize),
        acc: bool,
        ab: (Mat, Mat, f32),
    ) {
        let (m, k) = mk;
        if m == 0 {
            return;
        }
        let at = self.offset(b, h, i);
        assert!(
            at + (m - 1) * self.ld() + self.cols <= self.len,
            "attention: rows"
        );
        // SAFETY: inside the buffer (checked); rows owned by the caller (contract).
        unsafe {
            gemm_direct(
                (m, self.cols, k),
                (self.ptr.add(at), self.len - at),
                self.ld(),
                acc,
                ab,
            )
        }
    }

    /// Row `i` of head `(b, h)`, possibly uninitialised.
    ///
    /// # Safety
    /// No other task may touch the row while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_uninit(&self, b: usize, h: usize, i: usize) -> &mut [MaybeUninit<f32>] {
        let at = self.offset(b, h, i);
        assert!(at + self.cols <= self.len, "attention: row");
        // SAFETY: inside the buffer (checked); owned (contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at).cast(), self.cols) }
    }

    /// Row `i` of head `(b, h)`.
    ///
    /// # Safety
    /// The row must be initialised, and no other task may touch it while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, b: usize, h: usize, i: usize) -> &mut [f32] {
        let at = self.offset(b, h, i);
        assert!(at + self.cols <= self.len, "attention: row");
        // SAFETY: inside the buffer (checked); initialised and owned (contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), self.cols) }
    }
}

thread_local! {
    /// Per-thread tile scratch (scores, and the backward's score gradients).
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// Per-thread transposed queries and output gradients of the head a backward task works on.
    static HEAD: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// Per-thread contiguous keys and values of that head (see [`dense_head`]) and its key and
    /// value gradients as they accumulate over the query tiles.
    static DENSE: RefCell<[Vec<f32>; 4]> = const { RefCell::new([const { Vec::new() }; 4]) };
}

/// Head `(b, h)` of `x` (`rows x cols`) transposed into `dst` (`cols x rows`, row-major).
///
/// The score products (`K Q^T`, `V dO^T`, see [`forward_tile`]) read their right operand as
/// rows of queries, which the microkernels use in place once a head's queries (or output
/// gradients) are transposed: once per head instead of a repacking per query tile.
fn transpose_head(x: &View, (b, h): (usize, usize), rows: usize, cols: usize, dst: &mut [f32]) {
    const BLOCK: usize = 16;
    if rows == 0 || cols == 0 {
        return;
    }
    // A block of rows (a few KB, in L1) read column by column, each column written contiguously.
    let rs = x.strides[2];
    let start = x.start(b, h, 0);
    let src = &x.data[start..start + (rows - 1) * rs + cols];
    for j0 in (0..rows).step_by(BLOCK) {
        let j1 = (j0 + BLOCK).min(rows);
        for c in 0..cols {
            let out = &mut dst[c * rows + j0..c * rows + j1];
            for (o, j) in out.iter_mut().zip(j0..j1) {
                *o = src[j * rs + c];
            }
        }
    }
}

/// Head `(b, h)` of `x` (`rows x cols`) as a view of its own: `x` itself when its rows are
/// already contiguous, else the rows copied into `buf` (a head of a `[B, N, H, D]` tensor
/// seen as `[B, H, N, D]`, as the model's head split leaves keys and values).
///
/// Every query tile reads a head's keys and values whole. In place, their rows lie a whole
/// token (all heads) apart: at 1568 tokens a head's 400 KB of keys spread over 2.4 MB, many
/// more pages and cache sets than the products' working set needs. Measured on the Xeon of
/// `docs/performance.md`: attention (forward + backward) on the head split of `[1, 1568, 384]`
/// tensors took 47.7-48.3 ms against 41.2-41.9 ms on contiguous heads, the cost of the copies
/// included.
fn dense_head<'b>(
    x: &View<'b>,
    (b, h): (usize, usize),
    (rows, cols): (usize, usize),
    buf: &'b mut Vec<f32>,
) -> View<'b> {
    if x.strides[2] == cols || rows <= 1 {
        return *x;
    }
    buf.clear();
    buf.reserve(rows * cols);
    for i in 0..rows {
        buf.extend_from_slice(x.row(b, h, i, cols));
    }
    View {
        data: buf,
        offset: 0,
        strides: [0, 0, cols],
    }
}

/// Grows `v` to at least `len` floats and returns the first `len`.
fn at_least(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// Runs `f` with two scratch slices of `len` floats each.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let (a, b) = &mut *s.borrow_mut();
        f(at_least(a, len), at_least(b, len))
    })
}

fn tile_rows(t: usize, tile: usize, n: usize) -> Range<usize> {
    t * tile..((t + 1) * tile).min(n)
}

/// Query rows per tile: the caller's, rounded down to a multiple of 64 (from 64 on) or of 16
/// (from 16 on), so the transposed score tiles are whole panels of the microkernels (64 rows
/// on AVX-512; a 32-row remainder panel measured a quarter slower per multiply-add) or at
/// least whole SIMD registers wide (their fast path).
fn tile_size(tile: usize) -> usize {
    let tile = tile.max(1);
    let unit = if tile >= 64 { 64 } else { 16 };
    if tile >= 16 { tile / unit * unit } else { tile }
}

/// `dst (+)= beta a b` into a scratch tile (`ld` floats per row).
///
/// # Safety
/// As [`gemm_direct`]: `a` and `b` must address `[m, k]` and `[k, n]` valid elements.
unsafe fn product(
    dst: &mut [f32],
    ld: usize,
    mnk: (usize, usize, usize),
    accumulate: bool,
    ab: (Mat, Mat, f32),
) {
    // SAFETY: an initialised slice is a valid destination; the operands: the caller's.
    unsafe { gemm_direct(mnk, (dst.as_mut_ptr(), dst.len()), ld, accumulate, ab) }
}

/// Visits a transposed score tile (`[Nk, t]`) a block of keys at a time: `f(i, keys)` for
/// each of the tile's queries `i` within each block (the block's rows stay in cache while the
/// queries' rows of a `[t, Nk]` operand are read or written).
fn by_key_blocks(nk: usize, t: usize, mut f: impl FnMut(usize, Range<usize>)) {
    const BLOCK: usize = 64;
    for j0 in (0..nk).step_by(BLOCK) {
        for i in 0..t {
            f(i, j0..(j0 + BLOCK).min(nk));
        }
    }
}

/// `z[j][i] += bias(i)[j]`: each query's bias row (over the keys) added down its column of the
/// transposed scores `z` (`[Nk, t]`).
fn add_bias_t<'b>(z: &mut [f32], t: usize, bias: impl Fn(usize) -> &'b [f32]) {
    by_key_blocks(z.len() / t.max(1), t, |i, keys| {
        for (j, &v) in keys.clone().zip(&bias(i)[keys]) {
            z[j * t + i] += v;
        }
    });
}

/// `db[start + i][j] += ds[j][i]` for the tile's `t` queries (`ds`: transposed score gradients
/// `[Nk, t]`); a bias broadcast over the queries (one row of `Nk`) receives every query's, in
/// query order.
fn add_dbias_t(db: &mut [f32], ds: &[f32], t: usize, start: usize, nk: usize) {
    by_key_blocks(nk, t, |i, keys| {
        let at = if db.len() == nk { 0 } else { (start + i) * nk };
        for (o, j) in db[at + keys.start..at + keys.end].iter_mut().zip(keys) {
            *o += ds[j * t + i];
        }
    });
}

/// Columns `start..` of a row-major matrix with `ld` floats per row (a head's transposed
/// queries or output gradients, `[D, Nq]`), as a product operand.
fn columns_from(m: &[f32], start: usize, ld: usize) -> Mat {
    Mat {
        ptr: m[start..].as_ptr(),
        rs: ld as isize,
        cs: 1,
    }
}

/// The output (every element written, in the memory order of `[B, Nq, H, Dv]`: see
/// [`HeadsInner`]) and the row log-sum-exp `[B, H, Nq]` (contiguous).
pub fn forward(dims: &Dims, x: &Operands, out: &mut [MaybeUninit<f32>], lse: &mut [f32]) {
    let Dims {
        heads, nq, d, dv, ..
    } = *dims;
    let out = HeadsInner::new(out, [dims.batch, heads, nq, dv]);
    assert_eq!(lse.len(), dims.batch * heads * nq, "attention: lse size");
    let tile = tile_size(x.tile);
    if nq == 0 || dv == 0 {
        return;
    }
    lse.par_chunks_mut(nq).enumerate().for_each(|(bh, lse)| {
        let (b, h) = (bh / heads, bh % heads);
        // Not thread-locals: the tiles below may run on this thread between other heads'.
        let mut qt = vec![0.0f32; d * nq];
        transpose_head(&x.q, (b, h), nq, d, &mut qt);
        let (mut kc, mut vc) = (Vec::new(), Vec::new());
        let x = Operands {
            k: dense_head(&x.k, (b, h), (dims.nk, d), &mut kc),
            v: dense_head(&x.v, (b, h), (dims.nk, dv), &mut vc),
            ..*x
        };
        lse.par_chunks_mut(tile).enumerate().for_each(|(t, l)| {
            let r = tile_rows(t, tile, nq);
            forward_tile(dims, &x, (b, h, &qt), r, out, l)
        })
    });
}

/// One query tile of one head (`qt`: the head's queries transposed, `[D, Nq]`): the scores
/// transposed, `Z^T = scale K Q^T + bias^T` (`[Nk, rows]`: a key's scores against the tile's
/// queries in one row), the softmax down its columns, `P V`, normalised.
fn forward_tile(
    dims: &Dims,
    x: &Operands,
    (b, h, qt): (usize, usize, &[f32]),
    r: Range<usize>,
    out: HeadsInner,
    lse: &mut [f32],
) {
    let Dims { nq, nk, d, .. } = *dims;
    let rows = r.len();
    let (mut max, mut sums) = (vec![0.0f32; rows], vec![0.0f32; rows]);
    with_scratch(rows * nk, |z, _| {
        let q_t = columns_from(qt, r.start, nq);
        // SAFETY (both products): the views are bounds-checked for every (b, h, row, column)
        // of the call, `qt` is `[d, nq]`, the scratch `[nk, rows]`; this task owns the tile's
        // output rows.
        unsafe {
            product(
                z,
                rows,
                (nk, rows, d),
                false,
                (x.k.mat(b, h, 0), q_t, x.scale),
            )
        };
        if let Some(bias) = x.bias {
            add_bias_t(z, rows, |i| bias.row(b, h, r.start + i, nk));
        }
        simd::softmax_cols(z, &mut max, &mut sums);
        for (l, (m, s)) in lse.iter_mut().zip(max.iter().zip(&sums)) {
            *l = m + s.ln();
        }
        let pv = (Mat::rows(z, rows).t(), x.v.mat(b, h, 0), 1.0);
        unsafe { out.gemm((b, h, r.start), (rows, nk), false, pv) };
    });
    // Normalising the output scales `dv` values per row instead of `nk` probabilities.
    for (i, l) in sums.into_iter().enumerate() {
        // SAFETY: the product wrote the row; this task owns it.
        simd::scale(unsafe { out.row(b, h, r.start + i) }, 1.0 / l);
    }
}

/// The gradients one backward pass writes in full: dq `[B, H, Nq, D]`, dk `[B, H, Nk, D]`, dv
/// `[B, H, Nk, Dv]` (each in the memory order of its heads-inner twin, see [`HeadsInner`];
/// possibly uninitialised before), and, when asked, the bias's, contiguous in the bias's own
/// shape `[Bb, Hb, Nqb, Nk]` (the score gradient summed over the axes the bias broadcasts).
pub struct GradsMut<'a> {
    /// Query gradient.
    pub dq: &'a mut [MaybeUninit<f32>],
    /// Key gradient.
    pub dk: &'a mut [MaybeUninit<f32>],
    /// Value gradient.
    pub dv: &'a mut [MaybeUninit<f32>],
    /// Bias gradient and the bias's shape.
    pub dbias: Option<(&'a mut [f32], [usize; 4])>,
}

/// What the backward reads besides the operands: the forward's output and row log-sum-exp
/// `[B, H, Nq]` (contiguous) and the output's gradient.
#[derive(Clone, Copy, Debug)]
pub struct Saved<'a> {
    /// The forward's output.
    pub out: View<'a>,
    /// The forward's row log-sum-exp.
    pub lse: &'a [f32],
    /// The gradient of the output.
    pub grad_out: View<'a>,
}

/// The FlashAttention-2 backward over query tiles, one task per (batch, head).
pub fn backward(dims: &Dims, x: &Operands, saved: &Saved, g: GradsMut) {
    let Dims {
        batch,
        heads,
        nq,
        nk,
        d,
        dv,
    } = *dims;
    assert_eq!(g.dq.len(), batch * heads * nq * d, "attention: dq size");
    assert_eq!(g.dk.len(), batch * heads * nk * d, "attention: dk size");
    assert_eq!(g.dv.len(), batch * heads * nk * dv, "attention: dv size");
    assert_eq!(saved.lse.len(), batch * heads * nq, "attention: lse size");
    if batch * heads == 0 {
        return;
    }
    let grads = [
        HeadsInner::new(g.dq, [batch, heads, nq, d]),
        HeadsInner::new(g.dk, [batch, heads, nk, d]),
        HeadsInner::new(g.dv, [batch, heads, nk, dv]),
    ];
    let per_head = (0..batch * heads).into_par_iter();
    let Some((dbias, shape)) = g.dbias else {
        per_head.for_each(|bh| backward_head(dims, x, saved, bh, grads, None));
        return;
    };
    assert_eq!(
        dbias.len(),
        shape.iter().product::<usize>(),
        "attention: dbias size"
    );
    let slice = shape[2] * nk;
    dbias.fill(0.0);
    if shape[0] == batch && shape[1] == heads {
        // One bias slice per head: each task owns its part.
        per_head
            .zip(dbias.par_chunks_mut(slice.max(1)))
            .for_each(|(bh, db)| backward_head(dims, x, saved, bh, grads, Some(db)));
        return;
    }
    // Heads share bias slices: one task per slice runs its heads in turn (batch-major), so the
    // sums do not depend on the thread count or the scheduling.
    let which = |bh: usize| {
        let (b, h) = (bh / heads, bh % heads);
        (if shape[0] > 1 { b } else { 0 }) * shape[1] + if shape[1] > 1 { h } else { 0 }
    };
    let mut by_slice: Vec<Vec<usize>> = (0..shape[0] * shape[1]).map(|_| Vec::new()).collect();
    for bh in 0..batch * heads {
        by_slice[which(bh)].push(bh);
    }
    by_slice
        .into_par_iter()
        .zip(dbias.par_chunks_mut(slice.max(1)))
        .for_each(|(members, db)| {
            for bh in members {
                backward_head(dims, x, saved, bh, grads, Some(&mut *db));
            }
        });
}

/// One head's backward over its query tiles; `dbias` (the head's bias slice `[Nqb, Nk]`)
/// receives the score gradients added in.
fn backward_head(
    dims: &Dims,
    x: &Operands,
    saved: &Saved,
    bh: usize,
    grads: [HeadsInner; 3],
    dbias: Option<&mut [f32]>,
) {
    let Dims {
        heads,
        nq,
        nk,
        d,
        dv: wv,
        ..
    } = *dims;
    let (b, h) = (bh / heads, bh % heads);
    if nq == 0 {
        for g in &grads[1..] {
            for j in 0..nk {
                // SAFETY: this task owns head (b, h)'s rows; writing initialises them.
                unsafe { g.row_uninit(b, h, j) }.fill(MaybeUninit::new(0.0));
            }
        }
        return;
    }
    HEAD.with(|head| {
        let (qt, got) = &mut *head.borrow_mut();
        let (qt, got) = (at_least(qt, d * nq), at_least(got, wv * nq));
        transpose_head(&x.q, (b, h), nq, d, qt);
        transpose_head(&saved.grad_out, (b, h), nq, wv, got);
        DENSE.with(|dense| {
            let [kc, vc, dkc, dvc] = &mut *dense.borrow_mut();
            let x = Operands {
                k: dense_head(&x.k, (b, h), (nk, d), kc),
                v: dense_head(&x.v, (b, h), (nk, wv), vc),
                ..*x
            };
            let [dq, dk, dv] = grads;
            if heads == 1 {
                // The gradients' rows are already contiguous.
                let out = ([dq, dk, dv], (b, h));
                return backward_tiles(dims, &x, saved, (bh, (qt, got)), out, dbias);
            }
            // The key and value gradients accumulate in contiguous rows, then go out once.
            let as_uninit = |v: &mut [f32]| {
                // SAFETY: `MaybeUninit<f32>` has f32's layout; initialised floats are valid.
                unsafe { &mut *(v as *mut [f32] as *mut [MaybeUninit<f32>]) }
            };
            let dkh = HeadsInner::new(as_uninit(at_least(dkc, nk * d)), [1, 1, nk, d]);
            let dvh = HeadsInner::new(as_uninit(at_least(dvc, nk * wv)), [1, 1, nk, wv]);
            let out = ([dq, dkh, dvh], (0, 0));
            backward_tiles(dims, &x, saved, (bh, (qt, got)), out, dbias);
            for (g, acc, w) in [(dk, &dkc[..nk * d], d), (dv, &dvc[..nk * wv], wv)] {
                for (j, src) in acc.chunks_exact(w.max(1)).enumerate().take(nk) {
                    // SAFETY: this task owns head (b, h)'s rows; writing initialises them.
                    for (o, &v) in unsafe { g.row_uninit(b, h, j) }.iter_mut().zip(src) {
                        o.write(v);
                    }
                }
            }
        });
    });
}

/// The query tiles of head `bh` (`qt`, `got`: its queries and output gradients transposed,
/// `[D, Nq]` and `[Dv, Nq]`), as [`backward_head`]; the key and value gradients go to head
/// `kv` of `dk` and `dv` (the call's head, or the only head of `backward_head`'s contiguous
/// accumulators). The score tiles are transposed (`[Nk, rows]`, as in [`forward_tile`]).
fn backward_tiles(
    dims: &Dims,
    x: &Operands,
    saved: &Saved,
    (bh, (qt, got)): (usize, (&[f32], &[f32])),
    ([dq, dk, dv], kv): ([HeadsInner; 3], (usize, usize)),
    mut dbias: Option<&mut [f32]>,
) {
    let Dims {
        heads,
        nq,
        nk,
        d,
        dv: wv,
        ..
    } = *dims;
    let (b, h) = (bh / heads, bh % heads);
    let tile = tile_size(x.tile);
    for t in 0..nq.div_ceil(tile) {
        let r = tile_rows(t, tile, nq);
        let rows = r.len();
        let first = t == 0;
        let lse = &saved.lse[bh * nq + r.start..bh * nq + r.end];
        let delta: Vec<f32> = r
            .clone()
            .map(|i| simd::dot(saved.grad_out.row(b, h, i, wv), saved.out.row(b, h, i, wv)))
            .collect();
        with_scratch(rows * nk, |p, ds| {
            let (q_r, go_r) = (x.q.mat(b, h, r.start), saved.grad_out.mat(b, h, r.start));
            let (k, v) = (x.k.mat(b, h, 0), x.v.mat(b, h, 0));
            let (q_t, go_t) = (
                columns_from(qt, r.start, nq),
                columns_from(got, r.start, nq),
            );
            // SAFETY (every product below): the views are bounds-checked for the whole call,
            // `qt` and `got` are `[d, nq]` and `[wv, nq]`, the scratch `[nk, rows]`, the
            // gradients are this head's rows.
            // P^T = exp(scale K Q^T + bias^T - lse), down the columns.
            unsafe { product(p, rows, (nk, rows, d), false, (k, q_t, x.scale)) };
            if let Some(bias) = x.bias {
                add_bias_t(p, rows, |i| bias.row(b, h, r.start + i, nk));
            }
            simd::probs_cols(p, lse);
            // dV += P^T dO (the first tile writes it; `dv` is initialised from then on).
            unsafe {
                dv.gemm(
                    (kv.0, kv.1, 0),
                    (nk, rows),
                    !first,
                    (Mat::rows(p, rows), go_r, 1.0),
                )
            };
            // dP^T = V dO^T, then dS^T = P^T (dP^T - rowsum(dO O)) in place.
            unsafe { product(ds, rows, (nk, rows, wv), false, (v, go_t, 1.0)) };
            simd::dsoftmax_cols(p, ds, &delta);
            if let Some(db) = dbias.as_deref_mut() {
                add_dbias_t(db, ds, rows, r.start, nk);
            }
            // dQ = scale dS K, dK += scale dS^T Q
            let dsk = (Mat::rows(ds, rows).t(), k, x.scale);
            unsafe { dq.gemm((b, h, r.start), (rows, nk), false, dsk) };
            let dsq = (Mat::rows(ds, rows), q_r, x.scale);
            unsafe { dk.gemm((kv.0, kv.1, 0), (nk, rows), !first, dsq) };
        });
    }
}
