//! ActionFormer-style TAL head (Zhang et al. 2022): masked 1-D convolution embedding, a
//! transformer stem and downsampling branch with local masked attention (a 6-level pyramid),
//! a per-level LayerNorm neck, and classification / regression heads shared over levels.
//!
//! Unlike ActionFormer, activations are zeroed at padded positions after every norm, so outputs
//! at valid positions do not depend on how much padding follows (tested).
//!
//! Local attention is computed as full attention under a band mask of `window_size / 2` on each
//! side (ActionFormer's sliding-chunk kernel attends to the same keys); memory is quadratic in
//! the sequence length, fine for the hundreds of snippets of a TAL video.

use crate::attention::attention;
use crate::fastmath::gelu;
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::pool::{MaxPool1d, MaxPool1dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, PaddingConfig1d};
use burn::tensor::activation::relu;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::points::PyramidConfig;
use crate::backbone::residual::drop_path;
use crate::error::{Error, Result};

/// Head settings (defaults: ActionFormer on THUMOS-14 with I3D features, except `input_dim`,
/// `num_classes`).
#[derive(Config, Debug)]
pub struct HeadConfig {
    /// Width of the input features (the backbone's feature dimension).
    pub input_dim: usize,
    /// Number of action classes.
    pub num_classes: usize,
    /// Width inside the head.
    #[config(default = 512)]
    pub embed_dim: usize,
    /// Masked conv + LayerNorm + ReLU layers of the projection.
    #[config(default = 2)]
    pub embed_convs: usize,
    /// Transformer blocks before the pyramid (stride 1).
    #[config(default = 2)]
    pub stem_blocks: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub num_heads: usize,
    /// Local attention window (THUMOS: 19); 0 for global attention.
    #[config(default = 19)]
    pub window_size: usize,
    /// Conv + LayerNorm + ReLU layers of each prediction head before its output conv.
    #[config(default = 2)]
    pub head_layers: usize,
    /// Kernel size of the prediction heads.
    #[config(default = 3)]
    pub head_kernel: usize,
    /// Prior probability the classification bias starts at.
    #[config(default = 0.01)]
    pub prior_prob: f64,
    /// Stochastic depth in the transformer blocks.
    #[config(default = 0.1)]
    pub drop_path: f64,
    /// Pyramid levels (strides 1, 2, 4, ... : one branch block per level after the first) and
    /// their regression ranges.
    #[config(default = "PyramidConfig::new()")]
    pub pyramid: PyramidConfig,
}

/// A 1-D convolution whose output is zeroed at padded positions; with a stride, the mask is
/// subsampled (nearest).
#[derive(Module, Debug)]
pub struct MaskedConv1d {
    /// The convolution (padding `kernel / 2`).
    pub conv: Conv1d,
    /// Stride.
    pub stride: usize,
}

/// [`MaskedConv1d`]: a 1-D convolution with `kernel / 2` zero padding.
#[derive(Config, Debug)]
pub struct MaskedConv1dConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Kernel size.
    pub kernel: usize,
    /// Stride. Default 1.
    #[config(default = 1)]
    pub stride: usize,
    /// Groups (the channel count: depthwise). Default 1.
    #[config(default = 1)]
    pub groups: usize,
    /// Whether the convolution has a bias. Default true.
    #[config(default = true)]
    pub bias: bool,
}

impl MaskedConv1dConfig {
    /// Build the layer.
    pub fn init(&self, device: &Device) -> MaskedConv1d {
        let [cin, cout] = self.channels;
        let k = self.kernel;
        MaskedConv1d {
            conv: Conv1dConfig::new(cin, cout, k)
                .with_stride(self.stride)
                .with_padding(PaddingConfig1d::Explicit(k / 2, k / 2))
                .with_groups(self.groups)
                .with_bias(self.bias)
                .init(device),
            stride: self.stride,
        }
    }
}

impl MaskedConv1d {
    /// # Shapes
    /// - x: `[B, C, T]`, mask `[B, T]` -> `[B, C', T / stride]`, `[B, T / stride]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Tensor<3>, Tensor<2, Bool>) {
        let mask = subsample(mask, self.stride);
        let y = self.conv.forward(x);
        (y * mask_float(&mask), mask)
    }
}

fn subsample(mask: Tensor<2, Bool>, stride: usize) -> Tensor<2, Bool> {
    if stride == 1 {
        return mask;
    }
    let [b, t] = mask.dims();
    mask.reshape([b, t / stride, stride])
        .narrow(2, 0, 1)
        .reshape([b, t / stride])
}

fn mask_float(mask: &Tensor<2, Bool>) -> Tensor<3> {
    mask.clone().float().unsqueeze_dim(1)
}

/// LayerNorm over the channels of `[B, C, T]`.
fn channel_norm(norm: &LayerNorm, x: Tensor<3>) -> Tensor<3> {
    norm.forward(x.swap_dims(1, 2)).swap_dims(1, 2)
}

/// [`channel_norm`], then zero at padded positions: a norm maps zeros to its bias, which the
/// next convolution would carry into valid positions (outputs would depend on padding).
fn norm_masked(norm: &LayerNorm, x: Tensor<3>, mask: &Tensor<2, Bool>) -> Tensor<3> {
    channel_norm(norm, x) * mask_float(mask)
}

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
}

impl LocalAttention {
    /// # Shapes
    /// - x: `[B, C, T]`, mask `[B, T]` -> `[B, C, T / stride]`, `[B, T / stride]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Tensor<3>, Tensor<2, Bool>) {
        let (q, qmask) = self.q_conv.forward(x.clone(), mask.clone());
        let (k, kmask) = self.k_conv.forward(x.clone(), mask.clone());
        let (v, _) = self.v_conv.forward(x, mask);
        let q = self.query.forward(norm_masked(&self.q_norm, q, &qmask));
        let k = self.key.forward(norm_masked(&self.k_norm, k, &kmask));
        let v = self.value.forward(norm_masked(&self.v_norm, v, &kmask));
        let [b, c, t] = q.dims();
        let tk = k.dims()[2];
        let h = self.num_heads;
        let heads = |z: Tensor<3>, len: usize| z.reshape([b, h, c / h, len]).swap_dims(2, 3);
        let (q, k, v) = (heads(q, t), heads(k, tk), heads(v, tk));
        let scale = ((c / h) as f64).powf(-0.5);
        // Keys outside the window or padded get -1e9 (softmax weight 0).
        let half = self.window_size / 2;
        let band: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..tk).map(move |j| {
                    if self.window_size == 0 || i.abs_diff(j) <= half {
                        0.0
                    } else {
                        -1e9
                    }
                })
            })
            .collect();
        let device = q.device();
        let band = Tensor::<2>::from_data(TensorData::new(band, [t, tk]), &device);
        let key_pad = (kmask.float().neg() + 1.0) * -1e9; // [B, Tk]
        let bias = band.unsqueeze_dim::<3>(0).unsqueeze_dim::<4>(0)
            + key_pad.unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(1); // [B, 1, T, Tk]
        let out = attention(q, k, v, Some(bias), scale); // [B, H, T, C/H]
        let out = out.swap_dims(2, 3).reshape([b, c, t]);
        let out = self.proj.forward(out) * mask_float(&qmask);
        (out, qmask)
    }
}

/// Pre-norm transformer block, optionally downsampling by 2 (max-pooled skip).
#[derive(Module, Debug)]
pub struct HeadBlock {
    /// Norm before attention.
    pub ln1: LayerNorm,
    /// Attention.
    pub attn: LocalAttention,
    /// Skip path pooling when downsampling.
    pub pool_skip: Option<MaxPool1d>,
    /// Norm before the MLP.
    pub ln2: LayerNorm,
    /// MLP expansion (1x1 conv).
    pub fc1: Conv1d,
    /// MLP projection (1x1 conv).
    pub fc2: Conv1d,
    /// Stochastic depth.
    pub drop_path: f64,
}

impl HeadBlock {
    fn new(cfg: &HeadConfig, stride: usize, device: &Device) -> Self {
        let d = cfg.embed_dim;
        let ln = || LayerNormConfig::new(d).init(device);
        let k = if stride > 1 { stride + 1 } else { 3 };
        let dw = || {
            MaskedConv1dConfig::new([d, d], k)
                .with_stride(stride)
                .with_groups(d)
                .with_bias(false)
                .init(device)
        };
        let pw = |i, o| Conv1dConfig::new(i, o, 1).init(device);
        Self {
            ln1: ln(),
            attn: LocalAttention {
                q_conv: dw(),
                q_norm: ln(),
                k_conv: dw(),
                k_norm: ln(),
                v_conv: dw(),
                v_norm: ln(),
                query: pw(d, d),
                key: pw(d, d),
                value: pw(d, d),
                proj: pw(d, d),
                num_heads: cfg.num_heads,
                window_size: cfg.window_size,
            },
            pool_skip: (stride > 1).then(|| {
                MaxPool1dConfig::new(stride + 1)
                    .with_stride(stride)
                    .with_padding(PaddingConfig1d::Explicit(
                        stride.div_ceil(2),
                        stride.div_ceil(2),
                    ))
                    .init()
            }),
            ln2: ln(),
            fc1: pw(d, 4 * d),
            fc2: pw(4 * d, d),
            drop_path: cfg.drop_path,
        }
    }

    /// # Shapes
    /// - x: `[B, C, T]`, mask `[B, T]` -> `[B, C, T / stride]`, `[B, T / stride]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Tensor<3>, Tensor<2, Bool>) {
        let (a, out_mask) = self
            .attn
            .forward(norm_masked(&self.ln1, x.clone(), &mask), mask);
        let m = mask_float(&out_mask);
        let skip = match &self.pool_skip {
            Some(p) => p.forward(x),
            None => x,
        };
        let x = skip * m.clone() + drop_path(a, self.drop_path);
        let y = self.fc2.forward(gelu(self.fc1.forward(norm_masked(
            &self.ln2,
            x.clone(),
            &out_mask,
        ))));
        (x + drop_path(y * m, self.drop_path), out_mask)
    }
}

/// A prediction head shared over levels: (masked conv + LayerNorm + ReLU) x n, then a conv.
#[derive(Module, Debug)]
pub struct PredictionHead {
    /// Hidden convs.
    pub convs: Vec<MaskedConv1d>,
    /// Their norms.
    pub norms: Vec<LayerNorm>,
    /// Output conv.
    pub out: MaskedConv1d,
}

impl PredictionHead {
    fn new(cfg: &HeadConfig, outputs: usize, device: &Device) -> Self {
        let d = cfg.embed_dim;
        let k = cfg.head_kernel;
        Self {
            convs: (0..cfg.head_layers)
                .map(|_| {
                    MaskedConv1dConfig::new([d, d], k)
                        .with_bias(false)
                        .init(device)
                })
                .collect(),
            norms: (0..cfg.head_layers)
                .map(|_| LayerNormConfig::new(d).init(device))
                .collect(),
            out: MaskedConv1dConfig::new([d, outputs], k).init(device),
        }
    }

    fn forward(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> Tensor<3> {
        let mut x = x;
        for (c, n) in self.convs.iter().zip(&self.norms) {
            x = relu(norm_masked(n, c.forward(x, mask.clone()).0, &mask));
        }
        self.out.forward(x, mask).0
    }
}

/// The head's outputs over all pyramid points (level by level, positions ascending; the order
/// of [`PyramidConfig::points`]).
#[derive(Debug, Clone)]
pub struct HeadOutput {
    /// Class logits, `[B, P, C]`.
    pub cls_logits: Tensor<3>,
    /// Distances to start and end in units of the level's stride, `[B, P, 2]`, non-negative.
    pub offsets: Tensor<3>,
    /// Valid points, `[B, P]`.
    pub mask: Tensor<2, Bool>,
}

/// The ActionFormer-style head.
#[derive(Module, Debug)]
pub struct TalHead {
    /// Projection convs.
    pub embed: Vec<MaskedConv1d>,
    /// Their norms.
    pub embed_norms: Vec<LayerNorm>,
    /// Stride-1 transformer blocks.
    pub stem: Vec<HeadBlock>,
    /// Downsampling transformer blocks, one per pyramid level after the first.
    pub branch: Vec<HeadBlock>,
    /// Per-level LayerNorm (the identity FPN).
    pub neck: Vec<LayerNorm>,
    /// Classification head.
    pub cls: PredictionHead,
    /// Regression head.
    pub reg: PredictionHead,
    /// Per-level regression scale.
    pub scales: Vec<Param<Tensor<1>>>,
    /// Total stride of the last level: input lengths are padded to a multiple of it.
    pub max_stride: usize,
}

impl HeadConfig {
    /// Build the head.
    pub fn init(&self, device: &Device) -> Result<TalHead> {
        let strides = &self.pyramid.strides;
        let levels = strides.len();
        let doubling = strides.iter().enumerate().all(|(i, &s)| s == 1 << i);
        if levels == 0 || !doubling || self.pyramid.regression_ranges.len() != levels {
            return Err(Error::Config(format!(
                "head pyramid strides must be 1, 2, 4, ... with one regression range each, got {strides:?}"
            )));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(Error::Config(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            )));
        }
        let d = self.embed_dim;
        let mut cls = PredictionHead::new(self, self.num_classes, device);
        // Classification bias starts at the prior: -log((1 - p) / p).
        let bias = -((1.0 - self.prior_prob) / self.prior_prob).ln();
        cls.out.conv.bias = Some(Param::from_tensor(Tensor::full(
            [self.num_classes],
            bias,
            device,
        )));
        Ok(TalHead {
            embed: (0..self.embed_convs)
                .map(|i| {
                    let cin = if i == 0 { self.input_dim } else { d };
                    MaskedConv1dConfig::new([cin, d], 3)
                        .with_bias(false)
                        .init(device)
                })
                .collect(),
            embed_norms: (0..self.embed_convs)
                .map(|_| LayerNormConfig::new(d).init(device))
                .collect(),
            stem: (0..self.stem_blocks)
                .map(|_| HeadBlock::new(self, 1, device))
                .collect(),
            branch: (1..levels)
                .map(|_| HeadBlock::new(self, 2, device))
                .collect(),
            neck: (0..levels)
                .map(|_| LayerNormConfig::new(d).init(device))
                .collect(),
            cls,
            reg: PredictionHead::new(self, 2, device),
            scales: (0..levels)
                .map(|_| Param::from_tensor(Tensor::ones([1], device)))
                .collect(),
            max_stride: strides[levels - 1],
        })
    }
}

impl TalHead {
    /// Sequence length after padding `len` to a multiple of the last level's stride.
    pub fn padded_len(&self, len: usize) -> usize {
        len.div_ceil(self.max_stride) * self.max_stride
    }

    /// Run the head on a batch of feature sequences (padded internally to a multiple of the
    /// largest stride; padded positions are masked).
    ///
    /// # Shapes
    /// - features: `[B, T, C_in]`, mask `[B, T]` (true = valid)
    /// - output: see [`HeadOutput`], `P` = points of [`PyramidConfig::points`]`(padded_len(T))`
    pub fn forward(&self, features: Tensor<3>, mask: Tensor<2, Bool>) -> Result<HeadOutput> {
        let [b, t, c] = features.dims();
        let want = self
            .embed
            .first()
            .map(|e| e.conv.weight.dims()[1])
            .unwrap_or(c);
        if c != want || t == 0 {
            return Err(Error::Shape {
                what: "head features".into(),
                expected: format!("[B, T, {want}] with T > 0"),
                got: vec![b, t, c],
            });
        }
        if mask.dims() != [b, t] {
            return Err(Error::Shape {
                what: "head mask".into(),
                expected: format!("[{b}, {t}] (the features' [B, T])"),
                got: mask.dims().to_vec(),
            });
        }
        let tp = self.padded_len(t);
        let device = features.device();
        let (mut x, mut mask) = if tp != t {
            let x = Tensor::zeros([b, tp, c], &device).slice_assign([0..b, 0..t, 0..c], features);
            let m = Tensor::<2, Bool>::from_data(
                TensorData::new(vec![false; b * tp], [b, tp]),
                &device,
            )
            .slice_assign([0..b, 0..t], mask);
            (x, m)
        } else {
            (features, mask)
        };
        x = x.swap_dims(1, 2) * mask_float(&mask); // [B, C, T], padding zeroed
        for (conv, norm) in self.embed.iter().zip(&self.embed_norms) {
            let (y, m) = conv.forward(x, mask);
            x = relu(norm_masked(norm, y, &m));
            mask = m;
        }
        for blk in &self.stem {
            (x, mask) = blk.forward(x, mask);
        }
        let mut levels = vec![(x.clone(), mask.clone())];
        for blk in &self.branch {
            (x, mask) = blk.forward(x, mask);
            levels.push((x.clone(), mask.clone()));
        }
        let (mut cls, mut off, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        for (l, (feat, m)) in levels.into_iter().enumerate() {
            let feat = norm_masked(&self.neck[l], feat, &m);
            cls.push(self.cls.forward(feat.clone(), m.clone()).swap_dims(1, 2));
            let o = self.reg.forward(feat, m.clone()) * self.scales[l].val().reshape([1, 1, 1]);
            off.push(relu(o).swap_dims(1, 2));
            masks.push(m);
        }
        Ok(HeadOutput {
            cls_logits: Tensor::cat(cls, 1),
            offsets: Tensor::cat(off, 1),
            mask: Tensor::cat(masks, 1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tal::assign::{AssignConfig, GtSegment, assign};
    use crate::tal::loss::{LossConfig, diou_loss_1d, sigmoid_focal_loss};
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::{Distribution, Int};

    fn tiny(device: &Device) -> TalHead {
        HeadConfig::new(6, 3)
            .with_embed_dim(16)
            .with_num_heads(2)
            .with_window_size(5)
            .with_drop_path(0.0)
            .init(device)
            .unwrap()
    }

    #[test]
    fn shapes_padding_and_masks() {
        let device = crate::backend::cpu_device();
        let head = tiny(&device);
        // 40 positions pad to 64: points 64 + 32 + 16 + 8 + 4 + 2 = 126.
        let x = Tensor::<3>::random([2, 40, 6], Distribution::Default, &device);
        let valid: Vec<bool> = (0..80).map(|i| i < 40 || i - 40 < 30).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(valid, [2, 40]), &device);
        let out = head.forward(x, mask).unwrap();
        assert_eq!(out.cls_logits.dims(), [2, 126, 3]);
        assert_eq!(out.offsets.dims(), [2, 126, 2]);
        let m: Vec<bool> = out.mask.clone().into_data().try_to_vec().unwrap();
        // Level 0 of video 1: 30 valid of 64; level 1: 15 of 32.
        assert_eq!(m[126..126 + 64].iter().filter(|&&v| v).count(), 30);
        assert_eq!(m[126 + 64..126 + 96].iter().filter(|&&v| v).count(), 15);
        assert_eq!(PyramidConfig::new().points(64).len(), 126);
        // At start, class probabilities sit at the prior where valid.
        let logits: Vec<f32> = out
            .cls_logits
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        let prior = -((1.0f32 - 0.01) / 0.01).ln();
        assert!(
            logits[..3].iter().all(|&l| (l - prior).abs() < 1.0),
            "{:?}",
            &logits[..3]
        );
        let off: Vec<f32> = out
            .offsets
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        assert!(off.iter().all(|&o| o >= 0.0));
        // Wrong input width is an error.
        let bad = Tensor::<3>::zeros([1, 8, 5], &device);
        let m = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; 8], [1, 8]), &device);
        assert!(head.forward(bad, m).is_err());
    }

    #[test]
    fn padded_positions_do_not_change_valid_outputs() {
        let device = crate::backend::cpu_device();
        let head = tiny(&device);
        let x = Tensor::<3>::random([1, 32, 6], Distribution::Default, &device);
        let ones =
            |n| Tensor::<2, Bool>::from_data(TensorData::new(vec![true; n], [1, n]), &device);
        let a = head.forward(x.clone(), ones(32)).unwrap();
        // Same 32 positions followed by 32 padded ones holding garbage.
        let junk = Tensor::<3>::random([1, 32, 6], Distribution::Default, &device) * 100.0;
        let x2 = Tensor::cat(vec![x, junk], 1);
        let valid: Vec<bool> = (0..64).map(|i| i < 32).collect();
        let b = head
            .forward(
                x2,
                Tensor::from_data(TensorData::new(valid, [1, 64]), &device),
            )
            .unwrap();
        let a0: Vec<f32> = a
            .cls_logits
            .narrow(1, 0, 32)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        let b0: Vec<f32> = b
            .cls_logits
            .narrow(1, 0, 32)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        let err = a0
            .iter()
            .zip(&b0)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err < 1e-4, "padding leaked into level 0: {err}");
    }

    /// Trains `tiny` for `steps` on one video whose features say where each action is
    /// (two indicator channels, a sinusoidal position code and a constant), returning the loss
    /// of every step. The inputs are deterministic so only the parameter draw varies.
    fn overfit_losses(device: &Device, steps: usize) -> Vec<[f32; 2]> {
        let mut head = tiny(device);
        let t = 32;
        let gts = [
            GtSegment {
                start: 4.0,
                end: 12.0,
                label: 1,
            },
            GtSegment {
                start: 18.0,
                end: 30.0,
                label: 2,
            },
        ];
        let feats: Vec<f32> = (0..t)
            .flat_map(|i| {
                let p = i as f32;
                let inside =
                    |g: &GtSegment| f32::from(u8::from(i as f64 >= g.start && i as f64 <= g.end));
                [
                    inside(&gts[0]),
                    inside(&gts[1]),
                    (p / 5.0).sin(),
                    (p / 5.0).cos(),
                    p / t as f32,
                    1.0,
                ]
            })
            .collect();
        let x = Tensor::<3>::from_data(TensorData::new(feats, [1, t, 6]), device);
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; t], [1, t]), device);
        let points = PyramidConfig::new().points(head.padded_len(t));
        let tg = assign(&points, &gts, 3, &AssignConfig::new());
        let pos: Vec<i64> = (0..points.len() as i64)
            .filter(|&i| tg.positive[i as usize])
            .collect();
        let npos = pos.len();
        assert!(npos > 0);
        let cls_t =
            Tensor::<2>::from_data(TensorData::new(tg.cls.clone(), [points.len(), 3]), device);
        let reg_t: Vec<f32> = pos
            .iter()
            .flat_map(|&i| [tg.reg[i as usize * 2], tg.reg[i as usize * 2 + 1]])
            .collect();
        let reg_t = Tensor::<2>::from_data(TensorData::new(reg_t, [npos, 2]), device);
        let idx = Tensor::<1, Int>::from_data(TensorData::new(pos, [npos]), device);
        let cfg = LossConfig::new();
        let mut optim = AdamWConfig::new().init();
        let mut losses = Vec::new();
        for _ in 0..steps {
            let out = head.forward(x.clone(), mask.clone()).unwrap();
            let logits = out.cls_logits.reshape([points.len(), 3]);
            let off = out
                .offsets
                .reshape([points.len(), 2])
                .select(0, idx.clone());
            let focal = sigmoid_focal_loss(logits, cls_t.clone(), cfg.focal_alpha, cfg.focal_gamma)
                / npos as f64;
            let diou = diou_loss_1d(off, reg_t.clone()) / npos as f64;
            losses.push([
                focal.clone().into_scalar::<f32>(),
                diou.clone().into_scalar::<f32>(),
            ]);
            let loss = focal + diou;
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optim.step(1e-2, head, grads);
        }
        losses
    }

    /// Bounds on last/first loss after 150 steps. Over 30 seeds the focal ratio is at most
    /// 0.16 and the DIoU ratio at most 0.02, except 3 seeds that plateau at 0.56-0.68: some
    /// positive points start with a negative regression output and ActionFormer's `relu` on the
    /// offsets gives them no gradient on a single video. A head that does not learn stays at 1.
    const FOCAL_RATIO: f32 = 0.3;
    const DIOU_RATIO: f32 = 0.8;

    /// Learning sanity: the head fits one video's labels. Other tests draw from Burn's
    /// process-wide RNG concurrently, so the parameter draw here is arbitrary, and a rare draw
    /// (dead `relu` offsets, see above; seen in about 1 of 30 runs of the suite) leaves the
    /// DIoU term without gradient: the focal bound must hold on every draw, the DIoU bound on
    /// one of three. A head that does not learn fails all three.
    #[test]
    fn head_overfits_one_video() {
        let device = crate::backend::cpu_device().autodiff();
        let mut diou = Vec::new();
        for _ in 0..3 {
            let losses = overfit_losses(&device, 150);
            let (first, last) = (losses[0], *losses.last().unwrap());
            assert!(
                last[0] < FOCAL_RATIO * first[0],
                "focal loss {first:?} -> {last:?}"
            );
            diou.push((first[1], last[1]));
            if last[1] < DIOU_RATIO * first[1] {
                return;
            }
        }
        panic!("DIoU loss did not fall on any of three draws (first, last): {diou:?}");
    }

    /// The robustness check behind `head_overfits_one_video` (slow; run with `--ignored
    /// --test-threads 1` so the seeds are the only source of randomness).
    #[test]
    #[ignore]
    fn head_overfits_for_every_seed() {
        let device = crate::backend::cpu_device().autodiff();
        let mut worst = [0f32; 2];
        for seed in 0..30 {
            device.seed(seed);
            let losses = overfit_losses(&device, 150);
            let (first, last) = (losses[0], *losses.last().unwrap());
            let ratio = [last[0] / first[0], last[1] / first[1]];
            eprintln!("seed {seed}: {first:?} -> {last:?} ({ratio:?})");
            worst = [worst[0].max(ratio[0]), worst[1].max(ratio[1])];
        }
        assert!(
            worst[0] < FOCAL_RATIO && worst[1] < DIOU_RATIO,
            "worst ratios {worst:?}"
        );
    }
}
