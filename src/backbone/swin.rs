//! Video Swin Transformer (Liu et al. 2022): 3-D patch embedding, 3-D (shifted) window
//! attention with relative position bias, 2x2 spatial patch merging between stages. Numerics
//! follow torchvision's `swin3d_t/s/b` (`SwinTransformer3d`), including how windows shrink to
//! inputs smaller than a window.

use crate::attention::attention;
use crate::norm::{LayerNorm, LayerNormConfig};
use crate::precision::{compute, linear, up};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::residual::{MlpBranch, ResidualBranch, TransformerBlock, drop_path, drop_path_schedule};
use super::{
    BackboneOutput, FeatureLayout, LayerTaps, VideoBackbone, check_input, check_layers, tap_tokens,
};
use crate::error::Result;

/// Published Video Swin sizes.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SwinPreset {
    /// Swin-T: 96 wide, depths 2-2-6-2.
    Tiny,
    /// Swin-S: 96 wide, depths 2-2-18-2.
    Small,
    /// Swin-B: 128 wide, depths 2-2-18-2.
    Base,
}

/// Video Swin settings (defaults: Swin-T as torchvision `swin3d_t`).
#[derive(Config, Debug)]
pub struct SwinConfig {
    /// Patch size `[t, h, w]`.
    #[config(default = "[2, 4, 4]")]
    pub patch_size: [usize; 3],
    /// Width of the first stage (doubles at every stage).
    #[config(default = 96)]
    pub embed_dim: usize,
    /// Blocks per stage.
    #[config(default = "vec![2, 2, 6, 2]")]
    pub depths: Vec<usize>,
    /// Heads per stage.
    #[config(default = "vec![3, 6, 12, 24]")]
    pub num_heads: Vec<usize>,
    /// Window size `[t, h, w]`.
    #[config(default = "[8, 7, 7]")]
    pub window_size: [usize; 3],
    /// MLP width as a multiple of the token width.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Stochastic depth of the last block (linearly increasing from 0; torchvision: 0.1 for T).
    #[config(default = 0.0)]
    pub drop_path_rate: f64,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl SwinConfig {
    /// The configuration of a published size.
    pub fn preset(p: SwinPreset) -> Self {
        match p {
            SwinPreset::Tiny => Self::new(),
            SwinPreset::Small => Self::new().with_depths(vec![2, 2, 18, 2]),
            SwinPreset::Base => Self::new()
                .with_embed_dim(128)
                .with_depths(vec![2, 2, 18, 2])
                .with_num_heads(vec![4, 8, 16, 32]),
        }
    }

    /// Build the model.
    pub fn init(&self, device: &Device) -> VideoSwin {
        let ln = |d| {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let mut dps = drop_path_schedule(self.drop_path_rate, self.depths.iter().sum()).into_iter();
        let n_stages = self.depths.len();
        let [wt, wh, ww] = self.window_size;
        let table_len = (2 * wt - 1) * (2 * wh - 1) * (2 * ww - 1);
        let stages = self
            .depths
            .iter()
            .enumerate()
            .map(|(s, &depth)| {
                let dim = self.embed_dim << s;
                let heads = self.num_heads[s];
                let hidden = (dim as f64 * self.mlp_ratio) as usize;
                let blocks = (0..depth)
                    .map(|i| {
                        let dp = dps.next().expect("one probability per block");
                        let shift = if i % 2 == 0 {
                            [0; 3]
                        } else {
                            self.window_size.map(|w| w / 2)
                        };
                        SwinBlock {
                            attn: WindowAttentionBranch {
                                norm: ln(dim),
                                qkv: LinearConfig::new(dim, 3 * dim).init(device),
                                proj: LinearConfig::new(dim, dim).init(device),
                                relative_position_bias_table: Param::from_tensor(Tensor::random(
                                    [table_len, heads],
                                    burn::tensor::Distribution::Normal(0.0, 0.02),
                                    device,
                                )),
                                num_heads: heads,
                                window_size: self.window_size,
                                shift_size: shift,
                                drop_path: dp,
                            },
                            mlp: MlpBranch {
                                norm: ln(dim),
                                fc1: LinearConfig::new(dim, hidden).init(device),
                                fc2: LinearConfig::new(hidden, dim).init(device),
                                drop_path: dp,
                            },
                        }
                    })
                    .collect();
                SwinStage {
                    blocks,
                    merge: (s + 1 < n_stages).then(|| PatchMerging {
                        norm: ln(4 * dim),
                        reduction: LinearConfig::new(4 * dim, 2 * dim)
                            .with_bias(false)
                            .init(device),
                    }),
                }
            })
            .collect();
        let last = self.embed_dim << (n_stages - 1);
        VideoSwin {
            patch_embed: PatchEmbed3d {
                proj: Conv3dConfig::new([3, self.embed_dim], self.patch_size)
                    .with_stride(self.patch_size)
                    .init(device),
                norm: ln(self.embed_dim),
                patch_size: self.patch_size,
            },
            stages,
            norm: ln(last),
            layout: FeatureLayout::Clip,
        }
    }
}

/// Zero-pad dims 1..=3 of a `[B, T, H, W, C]` tensor (at the end) to `to`.
fn pad_thw(x: Tensor<5>, to: [usize; 3]) -> Tensor<5> {
    let [b, t, h, w, c] = x.dims();
    if [t, h, w] == to {
        return x;
    }
    Tensor::zeros([b, to[0], to[1], to[2], c], (&x.device(), x.dtype()))
        .slice_assign([0..b, 0..t, 0..h, 0..w, 0..c], x)
}

/// 3-D patch embedding: pad to whole patches, `Conv3d` (kernel = stride = patch), LayerNorm.
#[derive(Module, Debug)]
pub struct PatchEmbed3d {
    /// Projection.
    pub proj: Conv3d,
    /// Norm over channels.
    pub norm: LayerNorm,
    /// Patch size `[t, h, w]`.
    pub patch_size: [usize; 3],
}

impl PatchEmbed3d {
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, F/pt, H/ph, W/pw, C]` (rounded up)
    pub fn forward(&self, clips: Tensor<5>) -> Tensor<5> {
        let [n, c, t, h, w] = clips.dims();
        let p = self.patch_size;
        let up = |s: usize, p: usize| s.div_ceil(p) * p;
        let (tp, hp, wp) = (up(t, p[0]), up(h, p[1]), up(w, p[2]));
        let x = if (tp, hp, wp) != (t, h, w) {
            Tensor::zeros([n, c, tp, hp, wp], &clips.device())
                .slice_assign([0..n, 0..c, 0..t, 0..h, 0..w], clips)
        } else {
            clips
        };
        let x = super::patches::patch_embedding(&self.proj, x);
        self.norm.forward(x)
    }
}

/// Window and shift actually used for an input: a window no smaller than the input along a
/// dimension becomes the input's size there, with no shift (torchvision's rule).
fn effective_window(
    size: [usize; 3],
    window: [usize; 3],
    shift: [usize; 3],
) -> ([usize; 3], [usize; 3]) {
    let mut w = window;
    let mut s = shift;
    for i in 0..3 {
        if size[i] <= window[i] {
            w[i] = size[i];
            s[i] = 0;
        }
    }
    (w, s)
}

/// torchvision's relative position index for the configured window, `[vol, vol]` flattened.
fn relative_position_index(window: [usize; 3]) -> Vec<i64> {
    let [wt, wh, ww] = window;
    let coords: Vec<[i64; 3]> = (0..wt)
        .flat_map(|t| {
            (0..wh).flat_map(move |h| (0..ww).map(move |w| [t as i64, h as i64, w as i64]))
        })
        .collect();
    let (wt, wh, ww) = (wt as i64, wh as i64, ww as i64);
    let mut idx = Vec::with_capacity(coords.len() * coords.len());
    for a in &coords {
        for b in &coords {
            let d0 = a[0] - b[0] + wt - 1;
            let d1 = a[1] - b[1] + wh - 1;
            let d2 = a[2] - b[2] + ww - 1;
            idx.push(d0 * (2 * wh - 1) * (2 * ww - 1) + d1 * (2 * ww - 1) + d2);
        }
    }
    idx
}

/// Shifted-window attention mask `[num_windows, vol, vol]` (0 or -100), torchvision's
/// `_compute_attention_mask_3d`.
fn attention_mask(padded: [usize; 3], window: [usize; 3], shift: [usize; 3]) -> (Vec<f32>, usize) {
    let region = |i: usize, x: usize| -> usize {
        // Slices (0, -w), (-w, -s), (-s, None) along a dimension of size `padded[i]`.
        let (n, w, s) = (padded[i], window[i], shift[i]);
        // Unshifted dimension: the last slice `(-0, None)` is the whole axis and wins.
        if s == 0 {
            2
        } else if x < n - w {
            0
        } else if x < n - s {
            1
        } else {
            2
        }
    };
    let [tp, hp, wp] = padded;
    let [wt, wh, ww] = window;
    let (nt, nh, nw) = (tp / wt, hp / wh, wp / ww);
    let vol = wt * wh * ww;
    let nwin = nt * nh * nw;
    let mut labels = vec![0usize; nwin * vol];
    for t in 0..tp {
        for h in 0..hp {
            for w in 0..wp {
                let label = region(0, t) * 9 + region(1, h) * 3 + region(2, w);
                let win = ((t / wt) * nh + h / wh) * nw + w / ww;
                let pos = ((t % wt) * wh + h % wh) * ww + w % ww;
                labels[win * vol + pos] = label;
            }
        }
    }
    let mut mask = vec![0f32; nwin * vol * vol];
    for win in 0..nwin {
        for i in 0..vol {
            for j in 0..vol {
                if labels[win * vol + i] != labels[win * vol + j] {
                    mask[(win * vol + i) * vol + j] = -100.0;
                }
            }
        }
    }
    (mask, nwin)
}

/// Attention branch of a Swin block: `proj(window_attention(norm(x)))`.
#[derive(Module, Debug)]
pub struct WindowAttentionBranch {
    /// Pre-norm (`norm1`).
    pub norm: LayerNorm,
    /// Fused query/key/value projection.
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    /// Relative position bias, `[(2wt-1)(2wh-1)(2ww-1), heads]`.
    pub relative_position_bias_table: Param<Tensor<2>>,
    /// Heads.
    pub num_heads: usize,
    /// Configured window.
    pub window_size: [usize; 3],
    /// Configured shift (zero or half the window).
    pub shift_size: [usize; 3],
    /// Stochastic depth probability.
    pub drop_path: f64,
}

impl WindowAttentionBranch {
    fn relative_bias(&self, window: [usize; 3], device: &Device) -> Tensor<4> {
        let vol: usize = window.iter().product();
        let full = relative_position_index(self.window_size);
        let n_full: usize = self.window_size.iter().product();
        // torchvision slices the full window's index to the smaller window's volume.
        let idx: Vec<i64> = (0..vol)
            .flat_map(|i| (0..vol).map(move |j| (i, j)))
            .map(|(i, j)| full[i * n_full + j])
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [vol * vol]), device);
        self.relative_position_bias_table
            .val()
            .select(0, idx)
            .reshape([vol, vol, self.num_heads])
            .permute([2, 0, 1])
            .unsqueeze_dim(0)
    }
}

impl ResidualBranch<5> for WindowAttentionBranch {
    /// # Shapes
    /// - x: `[B, T, H, W, C]` -> `[B, T, H, W, C]`
    fn branch(&self, x: Tensor<5>) -> Tensor<5> {
        let device = x.device();
        let [b, t, h, w, c] = x.dims();
        let (win, shift) = effective_window([t, h, w], self.window_size, self.shift_size);
        let [wt, wh, ww] = win;
        let padded = [
            t.div_ceil(wt) * wt,
            h.div_ceil(wh) * wh,
            w.div_ceil(ww) * ww,
        ];
        let [tp, hp, wp] = padded;
        // Norm in f32, the rest in the autocast precision, the output back in f32.
        let mut x = pad_thw(self.norm.forward_as(x, compute().dtype()), padded);
        let shifted = shift.iter().sum::<usize>() > 0;
        if shifted {
            x = x.roll(
                &[-(shift[0] as i64), -(shift[1] as i64), -(shift[2] as i64)],
                &[1, 2, 3],
            );
        }
        let (nt, nh, nw) = (tp / wt, hp / wh, wp / ww);
        let nwin = nt * nh * nw;
        let vol = wt * wh * ww;
        // Partition into windows with at most 6 dimensions (NdArray's limit): fold the batch
        // with the temporal windows, keep (ww, C) together as the last axis.
        let windows = x
            .reshape([b * nt, wt, nh, wh, nw, ww * c])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * nwin, vol, c]);
        let heads = self.num_heads;
        let hd = c / heads;
        let qkv = linear(&self.qkv, windows)
            .reshape([b * nwin, vol, 3, heads, hd])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(0, i, 1)
                .reshape([b * nwin, heads, vol, hd])
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scale = (hd as f64).powf(-0.5);
        let bias = self.relative_bias(win, &device); // [1, heads, vol, vol]
        let out = if shifted {
            // Each window has its own shift mask: fold the windows into the head axis so one
            // bias [1, nwin * heads, vol, vol] broadcasts over the batch.
            let (mask, _) = attention_mask(padded, win, shift);
            let mask = Tensor::<4>::from_data(TensorData::new(mask, [nwin, 1, vol, vol]), &device);
            let bias = (bias + mask).reshape([1, nwin * heads, vol, vol]);
            let fold = |t: Tensor<4>| t.reshape([b, nwin * heads, vol, hd]);
            attention(fold(q), fold(k), fold(v), Some(bias), scale).reshape([
                b * nwin,
                heads,
                vol,
                hd,
            ])
        } else {
            attention(q, k, v, Some(bias), scale)
        };
        let out = out.swap_dims(1, 2).reshape([b * nwin, vol, c]);
        let out = linear(&self.proj, out);
        let mut y = out
            .reshape([b * nt, nh, nw, wt, wh, ww * c])
            .permute([0, 3, 1, 4, 2, 5])
            .reshape([b, tp, hp, wp, c]);
        if shifted {
            y = y.roll(
                &[shift[0] as i64, shift[1] as i64, shift[2] as i64],
                &[1, 2, 3],
            );
        }
        let y = y.slice([0..b, 0..t, 0..h, 0..w, 0..c]);
        up(drop_path(y, self.drop_path))
    }
}

/// One Swin block: shifted-window attention, then the MLP, each residual.
pub type SwinBlock = TransformerBlock<WindowAttentionBranch>;

/// 2x2 spatial patch merging (stays non-reversible: it changes the shape).
#[derive(Module, Debug)]
pub struct PatchMerging {
    /// Norm over the 4C concatenated channels.
    pub norm: LayerNorm,
    /// 4C -> 2C projection (no bias).
    pub reduction: Linear,
}

impl PatchMerging {
    /// # Shapes
    /// - x: `[B, T, H, W, C]` -> `[B, T, ceil(H/2), ceil(W/2), 2C]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let [b, t, h, w, c] = x.dims();
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        let x = pad_thw(x, [t, 2 * h2, 2 * w2]).reshape([b * t, h2, 2, w2, 2, c]);
        let pick = |dh: usize, dw: usize| {
            x.clone()
                .slice([0..b * t, 0..h2, dh..dh + 1, 0..w2, dw..dw + 1, 0..c])
                .reshape([b * t, h2, w2, c])
        };
        // torchvision order: x0 = (0, 0), x1 = (1, 0), x2 = (0, 1), x3 = (1, 1) in (h, w).
        let x = Tensor::cat(vec![pick(0, 0), pick(1, 0), pick(0, 1), pick(1, 1)], 3).reshape([
            b,
            t,
            h2,
            w2,
            4 * c,
        ]);
        linear(&self.reduction, self.norm.forward(x))
    }
}

/// A stage: a chain of Swin blocks, then patch merging (except after the last stage).
#[derive(Module, Debug)]
pub struct SwinStage {
    /// The residual chain.
    pub blocks: Vec<SwinBlock>,
    /// Merging into the next stage.
    pub merge: Option<PatchMerging>,
}

/// The Video Swin Transformer.
#[derive(Module, Debug)]
pub struct VideoSwin {
    /// Patch embedding.
    pub patch_embed: PatchEmbed3d,
    /// Stages.
    pub stages: Vec<SwinStage>,
    /// Final norm.
    pub norm: LayerNorm,
    /// How the last layer is pooled into features (not a parameter: set by the run).
    #[module(skip)]
    pub layout: FeatureLayout,
}

impl VideoSwin {
    /// The last layer before pooling: the token map after the last stage and norm.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, T', H', W', C]`
    pub fn forward_unpooled(&self, clips: Tensor<5>) -> Result<Tensor<5>> {
        Ok(self.run(clips, LayerTaps::default())?.0)
    }

    fn run(&self, clips: Tensor<5>, taps: LayerTaps<'_>) -> Result<(Tensor<5>, Vec<Tensor<3>>)> {
        let LayerTaps { layers, max_tokens } = taps;
        check_input("swin", &clips)?;
        let layout = self.layout;
        check_layers("swin", layers, self.stages.len())?;
        let mut x = self.patch_embed.forward(clips);
        let mut inter = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            for blk in &stage.blocks {
                x = blk.forward(x);
            }
            if layers.contains(&i) {
                let [n, t, h, w, c] = x.dims();
                let tokens = x.clone().reshape([n, t * h * w, c]);
                inter.push(tap_tokens("swin", tokens, layout, t, max_tokens)?);
            }
            if let Some(m) = &stage.merge {
                x = m.forward(x);
            }
        }
        Ok((self.norm.forward(x), inter))
    }

    /// Features from the last stage's token map: final norm, then the mean over tokens (all
    /// of a clip's, or per temporal position with [`FeatureLayout::Temporal`]).
    ///
    /// # Shapes
    /// - x: `[N, T', H', W', C]` -> `[N * P, C]`
    pub fn pool_map(&self, x: Tensor<5>) -> Tensor<2> {
        self.mean_tokens(self.norm.forward(x)).0
    }

    fn mean_tokens(&self, x: Tensor<5>) -> (Tensor<2>, usize) {
        let [n, t, h, w, c] = x.dims();
        crate::backbone::pool_layout(x.reshape([n, t, h * w, c]), self.layout)
    }
}

impl VideoBackbone for VideoSwin {
    /// Per-clip features (mean over the final token map) and the tapped stages' outputs (before
    /// merging) as tokens.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> features `[N * P, C]`, layers `[N * P, T'H_iW_i / P, C_i]`
    ///   (`P = T'` with temporal tokens, else 1)
    fn forward_tapped(&self, clips: Tensor<5>, taps: LayerTaps<'_>) -> Result<BackboneOutput> {
        let (x, kept) = self.run(clips, taps)?;
        let (features, positions) = self.mean_tokens(x);
        Ok(BackboneOutput {
            features,
            layers: kept,
            positions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_index_matches_torchvision_formula_corners() {
        let idx = relative_position_index([2, 2, 2]);
        // (0,0,0) vs itself: (1, 1, 1) offsets -> 1*9 + 1*3 + 1 = 13; vs (1,1,1): (0,0,0) -> 0.
        assert_eq!(idx[0], 13);
        assert_eq!(idx[7], 0);
        assert_eq!(idx[7 * 8], 26);
    }

    #[test]
    fn mask_blocks_cross_region_pairs_only() {
        let (mask, nwin) = attention_mask([4, 4, 4], [2, 2, 2], [1, 1, 1]);
        assert_eq!(nwin, 8);
        // First window lies in region 0 everywhere: no masking.
        assert!(mask[..64].iter().all(|&m| m == 0.0));
        // The last window straddles regions: some pairs are masked.
        assert!(mask[7 * 64..].contains(&-100.0));
    }

    #[test]
    fn shapes_with_padding_and_small_inputs() {
        let device = crate::backend::cpu_device();
        let m = SwinConfig::new()
            .with_embed_dim(8)
            .with_depths(vec![2, 2])
            .with_num_heads(vec![1, 2])
            .with_window_size([2, 3, 3])
            .init(&device);
        let x = Tensor::<5>::random(
            [2, 3, 4, 30, 26],
            burn::tensor::Distribution::Default,
            &device,
        );
        let out = m.forward(x, &[0, 1]).unwrap();
        assert_eq!(out.features.dims(), [2, 16]);
        // 30x26 -> patches 8x7 -> merged 4x4.
        assert_eq!(out.layers[0].dims(), [2, 2 * 8 * 7, 8]);
        assert_eq!(out.layers[1].dims(), [2, 2 * 4 * 4, 16]);
    }
}
