//! ActionFormer's `LocalMaskedMHCA`: depthwise convolutions (carrying the block's stride) and
//! LayerNorms on queries, keys and values, 1x1 projections, and multi-head attention in which
//! every query sees the keys within `window_size / 2` positions on either side (ActionFormer's
//! sliding-chunk kernel attends to exactly these keys) and no padded key.
//!
//! Queries are processed in chunks that each read only their band of keys, so memory grows
//! linearly with the sequence length (hours of video at the feature rate fit), not with its
//! square.

use burn::module::Module;
use burn::nn::LayerNorm;
use burn::nn::conv::Conv1d;
use burn::tensor::{Bool, Tensor, TensorData};

use super::head::{MaskedConv1d, mask_float};
use crate::attention::attention;

/// Queries per chunk of the banded attention.
const QUERY_CHUNK: usize = 256;

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
        self.forward_chunked(x, mask, QUERY_CHUNK)
    }

    /// [`LocalAttention::forward`] with `chunk` queries per band.
    fn forward_chunked(
        &self,
        x: Tensor<3>,
        mask: Tensor<2, Bool>,
        chunk: usize,
    ) -> (Tensor<3>, Tensor<2, Bool>) {
        let norm = |n: &LayerNorm, z: Tensor<3>, m: &Tensor<2, Bool>| {
            super::head::norm(n, z, m, self.mask_norms)
        };
        let (q, qmask) = self.q_conv.forward(x.clone(), mask.clone());
        let (k, kmask) = self.k_conv.forward(x.clone(), mask.clone());
        let (v, _) = self.v_conv.forward(x, mask);
        let q = self.query.forward(norm(&self.q_norm, q, &qmask));
        let k = self.key.forward(norm(&self.k_norm, k, &kmask));
        let v = self.value.forward(norm(&self.v_norm, v, &kmask));
        let [b, c, t] = q.dims();
        let tk = k.dims()[2];
        let h = self.num_heads;
        let heads = |z: Tensor<3>, len: usize| z.reshape([b, h, c / h, len]).swap_dims(2, 3);
        let (q, k, v) = (heads(q, t), heads(k, tk), heads(v, tk));
        let scale = ((c / h) as f64).powf(-0.5);
        // Padded keys get -1e9 (softmax weight 0).
        let key_pad = (kmask.float().neg() + 1.0) * -1e9; // [B, Tk]
        let out = if self.window_size == 0 || t <= chunk {
            self.band_attention(q, k, v, &key_pad, 0, 0, scale)
        } else {
            let half = self.window_size / 2;
            let chunks = (0..t)
                .step_by(chunk)
                .map(|a| {
                    let n = chunk.min(t - a);
                    let k0 = a.saturating_sub(half);
                    let k1 = (a + n + half).min(tk);
                    let narrow = |z: &Tensor<4>, from, len| z.clone().narrow(2, from, len);
                    self.band_attention(
                        narrow(&q, a, n),
                        narrow(&k, k0, k1 - k0),
                        narrow(&v, k0, k1 - k0),
                        &key_pad.clone().narrow(1, k0, k1 - k0),
                        a,
                        k0,
                        scale,
                    )
                })
                .collect();
            Tensor::cat(chunks, 2)
        }; // [B, H, T, C/H]
        let out = out.swap_dims(2, 3).reshape([b, c, t]);
        let out = self.proj.forward(out) * mask_float(&qmask);
        (out, qmask)
    }

    /// Attention of queries `q0..` over keys `k0..` (absolute positions), keys outside the
    /// window or padded (`key_pad`, `[B, Tk]`) weighted 0.
    ///
    /// # Shapes
    /// - q `[B, H, Nq, D]`, k and v `[B, H, Nk, D]`, key_pad `[B, Nk]` -> `[B, H, Nq, D]`
    #[allow(clippy::too_many_arguments)]
    fn band_attention(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        key_pad: &Tensor<2>,
        q0: usize,
        k0: usize,
        scale: f64,
    ) -> Tensor<4> {
        let (nq, nk) = (q.dims()[2], k.dims()[2]);
        let half = self.window_size / 2;
        let band: Vec<f32> = (q0..q0 + nq)
            .flat_map(|i| {
                (k0..k0 + nk).map(move |j| {
                    if self.window_size == 0 || i.abs_diff(j) <= half {
                        0.0
                    } else {
                        -1e9
                    }
                })
            })
            .collect();
        let device = q.device();
        let band = Tensor::<2>::from_data(TensorData::new(band, [nq, nk]), &device);
        let bias = band.unsqueeze_dim::<3>(0).unsqueeze_dim::<4>(0)
            + key_pad.clone().unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(1); // [B, 1, Nq, Nk]
        attention(q, k, v, Some(bias), scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tal::head::HeadConfig;
    use burn::tensor::Distribution;

    /// Chunked banded attention equals attention over all keys under the band mask, for a
    /// plain and a downsampling block, with padding at the end.
    #[test]
    fn chunks_equal_the_whole_band() {
        let device = crate::backend::cpu_device();
        let head = HeadConfig::new(8, 2)
            .with_embed_dim(16)
            .with_num_heads(2)
            .with_window_size(7)
            .init(&device)
            .unwrap();
        let t = 300;
        let x = Tensor::<3>::random([2, 16, t], Distribution::Default, &device);
        let valid: Vec<bool> = (0..2 * t).map(|i| i < t || i - t < 250).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(valid, [2, t]), &device);
        for att in [&head.stem[0].attn, &head.branch[0].attn] {
            let (whole, _) = att.forward_chunked(x.clone(), mask.clone(), usize::MAX);
            let (chunked, _) = att.forward_chunked(x.clone(), mask.clone(), 64);
            let err = (whole - chunked).abs().max().into_scalar::<f32>();
            assert!(err < 1e-5, "chunked attention differs by {err}");
        }
    }
}
