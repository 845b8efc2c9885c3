//! Layer norm over the last axis of `[rows, C]` `f32` data: the forward writes the output and
//! each row's mean and reciprocal standard deviation in one pass per row; the backward reads
//! the input, those statistics and the output's gradient once per row and writes the input's
//! gradient, the scale's and shift's gradients summed per thread and then across threads.
//! Rows are spread over the thread pool in blocks of [`ROWS`].

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::simd;

/// Rows per parallel task.
const ROWS: usize = 32;

/// The affine parameters and epsilon of one call.
#[derive(Clone, Copy, Debug)]
pub struct Affine<'a> {
    /// Scale `[C]`.
    pub gamma: &'a [f32],
    /// Shift `[C]`.
    pub beta: &'a [f32],
    /// Added to the variance.
    pub epsilon: f32,
}

/// `out = layer_norm(x)` (every element written) and the row statistics (`mean`, `rstd`: one value per row).
pub fn forward(
    x: &[f32],
    p: &Affine,
    out: &mut [MaybeUninit<f32>],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let c = p.gamma.len();
    assert!(c > 0 && p.beta.len() == c, "layer norm: parameter sizes");
    assert!(x.len() == out.len() && x.len() == mean.len() * c && rstd.len() == mean.len());
    out.par_chunks_mut(ROWS * c)
        .zip(x.par_chunks(ROWS * c))
        .zip(mean.par_chunks_mut(ROWS).zip(rstd.par_chunks_mut(ROWS)))
        .for_each(|((out, x), (mean, rstd))| {
            for (i, (o, x)) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)).enumerate() {
                (mean[i], rstd[i]) = simd::layer_norm_row(x, p.gamma, p.beta, p.epsilon, o);
            }
        });
}

/// The statistics the forward wrote, per row.
#[derive(Clone, Copy, Debug)]
pub struct Stats<'a> {
    /// Row means.
    pub mean: &'a [f32],
    /// Row reciprocal standard deviations.
    pub rstd: &'a [f32],
}

/// `dx` (into `dx`, every element written) and the scale's and shift's gradients (returned,
/// `[C]` each) from the input, its statistics, the scale and the output's gradient `g`. Each
/// block of [`ROWS`] rows sums its own part and the parts add up in block order, so the result
/// does not depend on the thread count or on which thread ran which block.
pub fn backward(
    x: &[f32],
    g: &[f32],
    gamma: &[f32],
    s: &Stats,
    dx: &mut [MaybeUninit<f32>],
) -> (Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    assert!(c > 0 && x.len() == g.len() && x.len() == dx.len() && x.len() == s.mean.len() * c);
    let blocks = s.mean.len().div_ceil(ROWS);
    // Per block: `c` scale sums, then `c` shift sums.
    let mut parts = vec![0.0f32; blocks * 2 * c];
    parts
        .par_chunks_mut(2 * c)
        .zip(dx.par_chunks_mut(ROWS * c))
        .zip(x.par_chunks(ROWS * c).zip(g.par_chunks(ROWS * c)))
        .zip(s.mean.par_chunks(ROWS).zip(s.rstd.par_chunks(ROWS)))
        .for_each(|(((part, dx), (x, g)), (mean, rstd))| {
            let (dgamma, dbeta) = part.split_at_mut(c);
            let rows = dx
                .chunks_exact_mut(c)
                .zip(x.chunks_exact(c).zip(g.chunks_exact(c)));
            for (i, (dx, (x, g))) in rows.enumerate() {
                let row = simd::NormRow {
                    x,
                    g,
                    gamma,
                    mean: mean[i],
                    rstd: rstd[i],
                };
                simd::layer_norm_row_backward(row, dx, dgamma, dbeta);
            }
        });
    let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
    for part in parts.chunks_exact(2 * c) {
        simd::add(&mut dgamma, &part[..c]);
        simd::add(&mut dbeta, &part[c..]);
    }
    (dgamma, dbeta)
}
