//! `C = A B` on strided `f32` matrices, threaded by output blocks: each block is one
//! single-threaded call of the `gemm` crate's kernels, the blocks run on the thread pool.
//!
//! Measured on the CI machine (Intel Xeon, AVX-512, 2 vCPUs; `docs/performance.md`): the
//! `gemm` crate's own threading (what Flex's matmul asks for above 192^3 multiply-adds) reached
//! 214-246 GFLOPS on a ViT-S block's products on 2 threads, one thread alone 114-235, while
//! blocks of at most 384 columns and a few hundred rows, one per task, reached 380-457. Small
//! products, which Flex runs on one thread, are split the same way down to [`MIN_WORK`].

use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::gemm::{Mat, gemm_raw};

/// Below this many multiply-adds a product runs on the calling thread.
const MIN_WORK: usize = 1 << 18;

/// Narrowest output block a column split goes down to.
const MIN_COLS: usize = 96;

/// Fewest rows a row split goes down to.
const MIN_ROWS: usize = 64;

/// How many contiguous copies one transposing copy of `b` costs when the `gemm` crate packs
/// it: `b` strided along its columns (a product with a transposed weight, the input gradient
/// of a linear layer) is gathered element by element. Measured on the Xeon of
/// `docs/performance.md`, one thread: a `[196, 1536] x [1536, 384]^T` block spends 27% of its
/// time packing (4% when `b` is contiguous), and splitting such products by columns, so each
/// thread transposes half of `b` instead of all of it, ran 183 -> 192, 155 -> 183-195 and
/// 174 -> 198 GFLOPS per thread on a ViT-S block's input gradients at 392 tokens, 191 -> 208
/// at 1568 (no change on the other products, whose `b` packs contiguously).
const TRANSPOSED_PACK: usize = 8;

/// Output blocks `(rows, cols)` for an `[m, n]` product with `k` inner: one block per thread,
/// the grid (`tm` row blocks by `tn` column blocks, `tm tn = threads`) that packs the least.
/// Each block is one call of the `gemm` crate, which packs the block's rows of `a` (`m k / tm`)
/// and its columns of `b` (`k n / tn`): the whole grid packs `tn m k + tm k n` elements, so the
/// split runs along the longer side; `b` weighs [`TRANSPOSED_PACK`] times more when it is
/// strided along its columns (`b_transposed`). Fewer, larger blocks measured faster than more,
/// smaller ones (on 2 threads, a ViT-S block's products 5% faster than with four blocks of at
/// most 384 columns, the weight gradients 10-25%), for the packing; narrower blocks than
/// [`MIN_ROWS`] x [`MIN_COLS`] are not made, so a thin product uses fewer threads.
fn blocks(m: usize, n: usize, k: usize, threads: usize, b_transposed: bool) -> (usize, usize) {
    let b_weight = if b_transposed { TRANSPOSED_PACK } else { 1 };
    if m * n * k < MIN_WORK || threads <= 1 {
        return (m.max(1), n.max(1));
    }
    let mut best: Option<(usize, (usize, usize))> = None;
    for t in (1..=threads).rev() {
        for tm in (1..=t).filter(|tm| t % tm == 0) {
            let (mb, nb) = (m.div_ceil(tm), n.div_ceil(t / tm));
            let fits = (tm == 1 || mb >= MIN_ROWS) && (tm == t || nb >= MIN_COLS);
            let packed = (t / tm) * m + tm * n * b_weight;
            if fits && best.is_none_or(|(p, _)| packed < p) {
                best = Some((packed, (mb, nb)));
            }
        }
        if best.is_some() {
            break;
        }
    }
    best.map_or((m, n), |(_, b)| b)
}

/// `dst = a b (+ bias)` with `a` `[m, k]`, `b` `[k, n]` (any strides), `bias` `[n]` added to
/// every row, and `dst` `[m, n]` contiguous, written in full (it may start uninitialised).
///
/// # Safety
/// `a` and `b` must address `[m, k]` and `[k, n]` valid elements.
pub unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    (a, b): (Mat, Mat),
    bias: Option<&[f32]>,
    dst: &mut [MaybeUninit<f32>],
) {
    assert_eq!(dst.len(), m * n, "matmul: destination size");
    assert!(bias.is_none_or(|b| b.len() == n), "matmul: bias size");
    if m == 0 || n == 0 {
        return;
    }
    let (mb, nb) = blocks(m, n, k, rayon::current_num_threads(), b.cs != 1);
    let cols = n.div_ceil(nb);
    let tasks = m.div_ceil(mb) * cols;
    let out = SendMut(dst.as_mut_ptr().cast::<f32>());
    let task = |t: usize| {
        let (r0, c0) = ((t / cols) * mb, (t % cols) * nb);
        let block = Block {
            rows: r0..(r0 + mb).min(m),
            cols: c0..(c0 + nb).min(n),
        };
        // SAFETY: the blocks tile `dst` (`m n` elements, checked) without overlap, so tasks
        // write disjoint elements; the operands are the caller's contract.
        unsafe { block.run((n, k), (a, b), bias, out) };
    };
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// One output block of a product.
struct Block {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

impl Block {
    /// Writes the block: the bias first when there is one, then the product added to it.
    ///
    /// # Safety
    /// `out` must hold `m n` elements (rows of `n`) of which no other thread touches this
    /// block's; `a` and `b` must address the block's rows and columns with `k` inner.
    unsafe fn run(
        &self,
        (n, k): (usize, usize),
        (a, b): (Mat, Mat),
        bias: Option<&[f32]>,
        out: SendMut,
    ) {
        let (mr, nc) = (self.rows.len(), self.cols.len());
        let a = Mat {
            ptr: a.ptr.wrapping_offset(self.rows.start as isize * a.rs),
            ..a
        };
        let b = Mat {
            ptr: b.ptr.wrapping_offset(self.cols.start as isize * b.cs),
            ..b
        };
        // SAFETY (both blocks): the block lies inside `out` (caller); only its elements are
        // written, through the pointer (no reference to memory other tasks write).
        let dst = unsafe { out.ptr().add(self.rows.start * n + self.cols.start) };
        if let Some(bias) = bias {
            for i in 0..mr {
                for (j, &v) in bias[self.cols.clone()].iter().enumerate() {
                    unsafe { dst.add(i * n + j).write(v) };
                }
            }
        }
        let len = (mr - 1) * n + nc;
        unsafe { gemm_raw((mr, nc, k), (dst, len), n, bias.is_some(), (a, b, 1.0)) };
    }
}

/// The destination shared by tasks that write disjoint blocks.
#[derive(Clone, Copy)]
struct SendMut(*mut f32);

impl SendMut {
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: only used for disjoint writes, see `matmul`.
unsafe impl Send for SendMut {}
unsafe impl Sync for SendMut {}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], a_t: bool, b_t: bool) -> Vec<f32> {
        let at = |i: usize, p: usize| if a_t { a[p * m + i] } else { a[i * k + p] };
        let bt = |p: usize, j: usize| if b_t { b[j * k + p] } else { b[p * n + j] };
        (0..m * n)
            .map(|x| (0..k).map(|p| at(x / n, p) * bt(p, x % n)).sum())
            .collect()
    }

    #[test]
    fn blocked_products_equal_the_naive_one_for_any_strides() {
        for &(m, n, k) in &[
            (3, 5, 7),
            (130, 900, 33),
            (700, 200, 64),
            (64, 64, 64),
            (513, 385, 20),
        ] {
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                    .collect();
                let am = if a_t {
                    Mat::rows(&a, m).t()
                } else {
                    Mat::rows(&a, k)
                };
                let bm = if b_t {
                    Mat::rows(&b, k).t()
                } else {
                    Mat::rows(&b, n)
                };
                let mut c = super::super::gemm::uninit(m * n);
                // SAFETY: the operands are `[m, k]` and `[k, n]` vectors; `c` is then written.
                let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
                let with_bias = (m + n) % 2 == 0;
                unsafe { matmul((m, n, k), (am, bm), with_bias.then_some(&bias[..]), &mut c) };
                let c = unsafe { super::super::gemm::assume_init(c) };
                let mut want = naive(m, n, k, &a, &b, a_t, b_t);
                if with_bias {
                    want.iter_mut()
                        .enumerate()
                        .for_each(|(x, w)| *w += bias[x % n]);
                }
                for (x, (c, w)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        (c - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}x{n}x{k} {a_t} {b_t} at {x}: {c} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn block_shapes() {
        assert_eq!(blocks(8, 8, 8, 2, false), (8, 8), "small: one block");
        assert_eq!(
            blocks(1568, 1536, 384, 2, false),
            (784, 1536),
            "rows: m + 2 n packed"
        );
        assert_eq!(
            blocks(1000, 1536, 384, 2, false),
            (1000, 768),
            "columns: 2 m + n packed"
        );
        assert_eq!(
            blocks(1568, 384, 1536, 2, false),
            (784, 384),
            "tall: rows split"
        );
        assert_eq!(blocks(384, 1536, 1568, 2, false), (384, 768));
        assert_eq!(
            blocks(1568, 384, 384, 16, false),
            (196, 192),
            "16 threads: 8 x 2"
        );
        assert_eq!(
            blocks(100, 150, 64, 2, false),
            (100, 150),
            "too thin to split"
        );
        assert_eq!(
            blocks(100, 3000, 64, 3, false),
            (100, 1000),
            "3 threads: columns"
        );
        assert_eq!(
            blocks(392, 384, 1536, 2, true),
            (392, 192),
            "a transposed b: columns, each thread transposes half"
        );
        assert_eq!(blocks(1568, 384, 1152, 2, true), (1568, 192));
        assert_eq!(blocks(392, 1536, 384, 2, true), (392, 768));
    }
}
