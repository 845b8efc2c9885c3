//! Clips cut into tubelet patches, the rows of a patch embedding's matrix product, in one
//! gather pass: each output row is a patch, `C x kt x kh` runs of `kw` neighbouring pixels
//! copied from the clip in place. The backend's reshape-permute-reshape made the same copy
//! element by element through a generic strided walk, about as long as the product it feeds.

use rayon::prelude::*;

use super::gemm::{assume_init, uninit};

/// Output rows per task: enough work to outweigh a task's cost, enough tasks for the pool.
const ROWS_PER_TASK: usize = 64;

/// A clip batch read in place: `[N, C, T, H, W]` elements of `data` from `offset` through
/// `strides` (elements; the last axis contiguous).
#[derive(Clone, Copy, Debug)]
pub struct ClipView<'a> {
    /// Storage.
    pub data: &'a [f32],
    /// Element of index `[0, 0, 0, 0, 0]`.
    pub offset: usize,
    /// Sizes `[N, C, T, H, W]`.
    pub dims: [usize; 5],
    /// Strides of the first four axes; the last axis has stride 1.
    pub strides: [usize; 4],
}

/// The patches of `clips` for a kernel (= stride) `k = [kt, kh, kw]` (each at least 1) and
/// their shape: one row of `C kt kh kw` per patch in `(n, t', h', w')` order, columns in
/// `(c, kt, kh, kw)` order (the convolution weight's flattening). The axes are cut to
/// multiples of the kernel (the rest dropped, as the convolution does).
///
/// # Panics
/// If a patch would read past `data`.
///
/// # Shapes
/// - clips `[N, C, T, H, W]` -> `[N T' H' W', C kt kh kw]`, `T' = T / kt` rounded down
pub fn patchify(clips: ClipView<'_>, k: [usize; 3]) -> (Vec<f32>, [usize; 2]) {
    let [n, c, t, h, w] = clips.dims;
    let [kt, kh, kw] = k;
    let (to, ho, wo) = (t / kt, h / kh, w / kw);
    let (rows, cols) = (n * to * ho * wo, c * kt * kh * kw);
    if cols == 0 {
        return (Vec::new(), [rows, cols]);
    }
    let mut out = uninit(rows * cols);
    let [sn, sc, st, sh] = clips.strides;
    out.par_chunks_mut(cols * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, row) in chunk.chunks_mut(cols).enumerate() {
                let r = task * ROWS_PER_TASK + i;
                let (ni, ti, hi, wi) = (
                    r / (to * ho * wo),
                    (r / (ho * wo)) % to,
                    (r / wo) % ho,
                    r % wo,
                );
                let corner = clips.offset + ni * sn + ti * kt * st + hi * kh * sh + wi * kw;
                let mut runs = row.chunks_mut(kw);
                for ci in 0..c {
                    for a in 0..kt {
                        for b in 0..kh {
                            let s = corner + ci * sc + a * st + b * sh;
                            let run = runs.next().expect("a row holds C kt kh runs");
                            for (d, v) in run.iter_mut().zip(&clips.data[s..s + kw]) {
                                d.write(*v);
                            }
                        }
                    }
                }
            }
        });
    // SAFETY: the rows cover `out` and each wrote its `C kt kh` runs of `kw`, all of it.
    (unsafe { assume_init(out) }, [rows, cols])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element against the index formula, on a strided (cropped) view.
    #[test]
    fn rows_are_patches_in_weight_order() {
        let (full, dims, k) = ([2, 3, 5, 9, 10], [2, 3, 4, 8, 10], [2, 4, 5]);
        let len: usize = full.iter().product();
        let data: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let strides = [
            full[1] * full[2] * full[3] * full[4],
            full[2] * full[3] * full[4],
            full[3] * full[4],
            full[4],
        ];
        let clips = ClipView {
            data: &data,
            offset: 0,
            dims,
            strides,
        };
        let (to, ho, wo) = (dims[2] / k[0], dims[3] / k[1], dims[4] / k[2]);
        let cols = dims[1] * k[0] * k[1] * k[2];
        let (out, shape) = patchify(clips, k);
        assert_eq!(shape, [dims[0] * to * ho * wo, cols]);
        let mut row = 0;
        for n in 0..dims[0] {
            for t in 0..to {
                for h in 0..ho {
                    for w in 0..wo {
                        let mut col = 0;
                        for c in 0..dims[1] {
                            for a in 0..k[0] {
                                for b in 0..k[1] {
                                    for e in 0..k[2] {
                                        let at = n * strides[0]
                                            + c * strides[1]
                                            + (t * k[0] + a) * strides[2]
                                            + (h * k[1] + b) * strides[3]
                                            + w * k[2]
                                            + e;
                                        assert_eq!(
                                            out[row * cols + col],
                                            at as f32,
                                            "row {row} col {col}"
                                        );
                                        col += 1;
                                    }
                                }
                            }
                        }
                        row += 1;
                    }
                }
            }
        }
    }
}
