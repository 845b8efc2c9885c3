//! Fused attention on `f32` slices: the forward keeps only the output and the row log-sum-exp;
//! the backward is FlashAttention-2's, recomputing each query tile's probabilities from the
//! log-sum-exp (the recurrence is written out in `crate::attention`'s docs).
//!
//! Per query tile of `tile` rows the scores against every key live in one thread-local scratch
//! of `tile x Nk` floats (400 KB at 64 x 1568: the L2 cache); the products run in the `gemm`
//! crate's microkernels and the softmax in SIMD row kernels, with no other intermediate. The
//! forward runs (batch, head, query tile) tasks on the thread pool; the backward runs one task
//! per (batch, head), which owns that head's key and value gradients.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::gemm::{Mat, gemm};
use super::simd;

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
            super::gemm::gemm_raw(
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
    /// Per-thread transposed keys and values of the head a backward task works on.
    static HEAD: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Head `(b, h)` of `x` (`rows x cols`) transposed into `dst` (`cols x rows`, row-major).
///
/// The products against a head's transposed keys or values (`Q K^T`, `dO V^T`) then read a
/// row-major operand, which the `gemm` crate uses in place; given the strided original it
/// repacks the whole head for every query tile (measured: a tenth of a block's step at 1568
/// tokens).
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

/// The output (every element written, in the memory order of `[B, Nq, H, Dv]`: see
/// [`HeadsInner`]) and the row log-sum-exp `[B, H, Nq]` (contiguous).
pub fn forward(dims: &Dims, x: &Operands, out: &mut [MaybeUninit<f32>], lse: &mut [f32]) {
    let Dims { heads, nq, dv, .. } = *dims;
    let out = HeadsInner::new(out, [dims.batch, heads, nq, dv]);
    assert_eq!(lse.len(), dims.batch * heads * nq, "attention: lse size");
    let tile = x.tile.max(1);
    if nq == 0 || dv == 0 {
        return;
    }
    lse.par_chunks_mut(nq).enumerate().for_each(|(bh, lse)| {
        // Not a thread-local: the tiles below may run on this thread between other heads'.
        let mut kt = vec![0.0f32; dims.d * dims.nk];
        transpose_head(&x.k, (bh / heads, bh % heads), dims.nk, dims.d, &mut kt);
        let kt = Mat::rows(&kt, dims.nk);
        lse.par_chunks_mut(tile).enumerate().for_each(|(t, l)| {
            let r = tile_rows(t, tile, nq);
            forward_tile(dims, x, (bh / heads, bh % heads, kt), r, out, l)
        })
    });
}

/// One query tile of one head (`kt`: its keys transposed): scores, softmax rows, `P V`,
/// normalised.
fn forward_tile(
    dims: &Dims,
    x: &Operands,
    (b, h, kt): (usize, usize, Mat),
    r: Range<usize>,
    out: HeadsInner,
    lse: &mut [f32],
) {
    let Dims { nk, d, .. } = *dims;
    let rows = r.len();
    let mut sums = vec![0.0f32; rows];
    with_scratch(rows * nk, |s, _| {
        // SAFETY: the views are bounds-checked for every (b, h, row, column) of the call.
        unsafe { gemm((rows, nk, d), s, nk, false, x.q.mat(b, h, r.start), kt, 1.0) };
        for (i, row) in s.chunks_exact_mut(nk.max(1)).enumerate() {
            let bias = x.bias.map(|v| v.row(b, h, r.start + i, nk));
            let (m, l) = simd::softmax_row(row, x.scale, bias);
            lse[i] = m + l.ln();
            sums[i] = l;
        }
        // SAFETY: as above; `s` is `[rows, nk]`; this task owns the tile's output rows.
        let pv = (Mat::rows(s, nk), x.v.mat(b, h, 0), 1.0);
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
        let (kt, vt) = &mut *head.borrow_mut();
        let (kt, vt) = (at_least(kt, d * nk), at_least(vt, wv * nk));
        transpose_head(&x.k, (b, h), nk, d, kt);
        transpose_head(&x.v, (b, h), nk, wv, vt);
        let kv_t = (Mat::rows(kt, nk), Mat::rows(vt, nk));
        backward_tiles(dims, x, saved, (bh, kv_t), grads, dbias);
    });
}

/// The query tiles of head `bh` (`kt`, `vt`: its keys and values transposed), as
/// [`backward_head`].
fn backward_tiles(
    dims: &Dims,
    x: &Operands,
    saved: &Saved,
    (bh, (kt, vt)): (usize, (Mat, Mat)),
    [dq, dk, dv]: [HeadsInner; 3],
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
    let tile = x.tile.max(1);
    for t in 0..nq.div_ceil(tile) {
        let r = tile_rows(t, tile, nq);
        let rows = r.len();
        let first = t == 0;
        with_scratch(rows * nk, |p, ds| {
            let (q_r, go_r) = (x.q.mat(b, h, r.start), saved.grad_out.mat(b, h, r.start));
            // SAFETY (every product below): the views are bounds-checked for the whole call,
            // the scratch is `[rows, nk]`, the gradients are this head's contiguous chunks.
            unsafe { gemm((rows, nk, d), p, nk, false, q_r, kt, 1.0) };
            for (i, row) in p.chunks_exact_mut(nk.max(1)).enumerate() {
                let bias = x.bias.map(|v| v.row(b, h, r.start + i, nk));
                simd::probs_row(row, x.scale, bias, saved.lse[bh * nq + r.start + i]);
            }
            // dV += P^T dO (the first tile writes it; `dv` is initialised from then on).
            let pt = Mat::rows(p, nk).t();
            unsafe { dv.gemm((b, h, 0), (nk, rows), !first, (pt, go_r, 1.0)) };
            // dP = dO V^T, then dS = P (dP - rowsum(dO O)) in place.
            unsafe { gemm((rows, nk, wv), ds, nk, false, go_r, vt, 1.0) };
            for (i, (p, ds)) in p
                .chunks_exact(nk.max(1))
                .zip(ds.chunks_exact_mut(nk.max(1)))
                .enumerate()
            {
                let row = r.start + i;
                let delta = simd::dot(
                    saved.grad_out.row(b, h, row, wv),
                    saved.out.row(b, h, row, wv),
                );
                simd::dsoftmax_row(p, ds, delta);
                if let Some(db) = dbias.as_deref_mut() {
                    // A bias broadcast over the queries has one row: every query adds into it.
                    let at = if db.len() == nk { 0 } else { row * nk };
                    simd::add(&mut db[at..at + nk], ds);
                }
            }
            // dQ = scale dS K, dK += scale dS^T Q
            let dsk = (Mat::rows(ds, nk), x.k.mat(b, h, 0), x.scale);
            unsafe { dq.gemm((b, h, r.start), (rows, nk), false, dsk) };
            let dst = Mat::rows(ds, nk).t();
            unsafe { dk.gemm((b, h, 0), (nk, rows), !first, (dst, q_r, x.scale)) };
        });
    }
}
