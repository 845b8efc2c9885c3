//! ActionFormer's `LocalMaskedMHCA`: depthwise convolutions (carrying the block's stride) and
//! LayerNorms on queries, keys and values, 1x1 projections, and multi-head attention in which
//! every query sees the keys within `window_size / 2` positions on either side (ActionFormer's
//! sliding-chunk kernel attends to exactly these keys) and no padded key.
//!
//! Each query's band of keys is gathered (`[B, H, T, window, D]`), so work and memory grow
//! with `T x window`, not `T^2`: hours of video at the feature rate fit, and a training step
//! costs what ActionFormer's sliding chunks cost. Global attention (window 0) uses the crate's
//! fused attention.

use crate::norm::LayerNorm;
use burn::module::Module;
use burn::nn::conv::Conv1d;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor, TensorData};

use super::head::{MaskedConv1d, mask_float, pointwise_forward};
use crate::attention::attention;

/// Local masked multi-head convolutional self-attention (ActionFormer's `LocalMaskedMHCA`).
#[derive(Module, Debug)]
pub struct LocalAttention {
    /// Depthwise conv on the queries (carries the block's stride).
    pub q_conv: MaskedConv1d,
    /// Norm after `q_conv`.
    pub q_norm: LayerNorm,
    /// Depthwise conv on the keys.
    pub k_conv: MaskedConv1d,
    /// Norm after `k_conv`.
    pub k_norm: LayerNorm,
    /// Depthwise conv on the values.
    pub v_conv: MaskedConv1d,
    /// Norm after `v_conv`.
    pub v_norm: LayerNorm,
    /// Query projection (1x1).
    pub query: Conv1d,
    /// Key projection (1x1).
    pub key: Conv1d,
    /// Value projection (1x1).
    pub value: Conv1d,
    /// Output projection (1x1).
    pub proj: Conv1d,
    /// Heads.
    pub num_heads: usize,
    /// Window (0: global).
    pub window_size: usize,
    /// Zero the norms' outputs at padded positions (see [`super::head::HeadConfig::mask_norms`]).
    pub mask_norms: bool,
}

impl LocalAttention {
    /// # Shapes
    /// - x: `[B, C, T]`, mask `[B, T]` -> `[B, C, T / stride]`, `[B, T / stride]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Tensor<3>, Tensor<2, Bool>) {
        let norm = |n: &LayerNorm, z: Tensor<3>, m: &Tensor<2, Bool>| {
            super::head::norm(n, z, m, self.mask_norms)
        };
        let (q, qmask) = self.q_conv.forward(x.clone(), mask.clone());
        let (k, kmask) = self.k_conv.forward(x.clone(), mask.clone());
        let (v, _) = self.v_conv.forward(x, mask);
        let q = pointwise_forward(&self.query, norm(&self.q_norm, q, &qmask));
        let k = pointwise_forward(&self.key, norm(&self.k_norm, k, &kmask));
        let v = pointwise_forward(&self.value, norm(&self.v_norm, v, &kmask));
        let [b, c, t] = q.dims();
        let tk = k.dims()[2];
        let h = self.num_heads;
        let heads = |z: Tensor<3>, len: usize| z.reshape([b, h, c / h, len]).swap_dims(2, 3);
        let (q, k, v) = (heads(q, t), heads(k, tk), heads(v, tk));
        let scale = ((c / h) as f64).powf(-0.5);
        let out = if self.window_size == 0 {
            // Padded keys get -1e9 (softmax weight 0).
            let key_pad = (kmask.float().neg() + 1.0) * -1e9; // [B, Tk]
            let bias = key_pad.unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(1);
            attention(q, k, v, Some(bias), scale)
        } else {
            band_attention(q, k, v, &kmask, self.window_size / 2, scale)
        }; // [B, H, T, C/H]
        let out = out.swap_dims(2, 3).reshape([b, c, t]);
        let out = pointwise_forward(&self.proj, out) * mask_float(&qmask);
        (out, qmask)
    }
}

/// Attention of every query `i` over the keys `j` with `|i - j| <= half` that are valid
/// (`kmask`). The sequence is cut into blocks of `BLOCK.max(half)` positions; each block's
/// queries attend, by one batched matmul, to the keys of the block and its two neighbours under
/// the band mask (ActionFormer's sliding chunks, without overlapping views): work and memory
/// `O(T x block)`.
///
/// # Shapes
/// - q, k, v `[B, H, T, D]`, kmask `[B, T]` -> `[B, H, T, D]`
pub(crate) fn band_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    kmask: &Tensor<2, Bool>,
    half: usize,
    scale: f64,
) -> Tensor<4> {
    const BLOCK: usize = 16;
    let [b, h, t, d] = q.dims();
    let s = BLOCK.max(half);
    let nb = t.div_ceil(s);
    let tp = nb * s;
    let device = q.device();
    let pad_t = |z: Tensor<4>| {
        if tp == t {
            z
        } else {
            Tensor::cat(vec![z, Tensor::zeros([b, h, tp - t, d], &device)], 2)
        }
    };
    // Each block's keys (or values): its left neighbour, itself, its right neighbour.
    let windows = |z: Tensor<4>| {
        let edge = Tensor::<5>::zeros([b, h, 1, s, d], &device);
        let z = Tensor::cat(
            vec![edge.clone(), pad_t(z).reshape([b, h, nb, s, d]), edge],
            2,
        );
        Tensor::cat((0..3).map(|o| z.clone().narrow(2, o, nb)).collect(), 3) // [B, H, nb, 3s, D]
    };
    let scores = pad_t(q)
        .reshape([b, h, nb, s, d])
        .matmul(windows(k).swap_dims(3, 4)); // [B, H, nb, s, 3s]
    // Keys outside the band, before the start, after the end or padded: -1e9 (weight 0).
    let band: Vec<f32> = (0..s)
        .flat_map(|i| {
            (0..3 * s).map(move |j| {
                if (j + i).abs_diff(s + 2 * i) <= half {
                    0.0
                } else {
                    -1e9
                }
            })
        })
        .collect();
    let band = Tensor::<5>::from_data(TensorData::new(band, [1, 1, 1, s, 3 * s]), &device);
    let mut valid = kmask.clone().float();
    if tp > t {
        valid = Tensor::cat(vec![valid, Tensor::zeros([b, tp - t], &device)], 1);
    }
    let edge = Tensor::<3>::zeros([b, 1, s], &device);
    let valid = Tensor::cat(vec![edge.clone(), valid.reshape([b, nb, s]), edge], 1);
    let valid = Tensor::cat((0..3).map(|o| valid.clone().narrow(1, o, nb)).collect(), 2); // [B, nb, 3s]
    let key_bias = ((valid - 1.0) * 1e9).reshape([b, 1, nb, 1, 3 * s]);
    let p = softmax(scores * scale + band + key_bias, 4);
    p.matmul(windows(v)).reshape([b, h, tp, d]).narrow(2, 0, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The gathered band equals full attention under a band mask (the formula), with padded
    /// keys, at both ends of the sequence.
    #[test]
    fn band_equals_masked_full_attention() {
        let device = crate::backend::cpu_device();
        let (b, h, t, d, half) = (2, 3, 40, 4, 4);
        let r = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Default, &device);
        let (q, k, v) = (r([b, h, t, d]), r([b, h, t, d]), r([b, h, t, d]));
        let valid: Vec<bool> = (0..b * t).map(|i| i < t || i - t < 31).collect();
        let kmask = Tensor::<2, Bool>::from_data(TensorData::new(valid.clone(), [b, t]), &device);
        let got = band_attention(q.clone(), k.clone(), v.clone(), &kmask, half, 0.5);
        let bias: Vec<f32> = (0..b)
            .flat_map(|bb| {
                let valid = &valid;
                (0..t).flat_map(move |i| {
                    (0..t).map(move |j| {
                        if i.abs_diff(j) <= half && valid[bb * t + j] {
                            0.0
                        } else {
                            -1e9
                        }
                    })
                })
            })
            .collect();
        let bias = Tensor::<4>::from_data(TensorData::new(bias, [b, 1, t, t]), &device);
        let scores = q.matmul(k.swap_dims(2, 3)) * 0.5 + bias;
        let want = softmax(scores, 3).matmul(v);
        // Rows of padded queries see only padded keys in their band (masked later anyway).
        let qmask = Tensor::<2, Bool>::from_data(TensorData::new(valid, [b, t]), &device)
            .float()
            .reshape([b, 1, t, 1]);
        let err = ((got - want) * qmask).abs().max().into_scalar::<f32>();
        assert!(err < 1e-5, "band attention differs by {err}");
    }
}
