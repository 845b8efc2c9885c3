//! ActionFormer's TAL head (Zhang et al. 2022), layer for layer: masked 1-D convolution
//! embedding, a transformer stem and downsampling branch with local masked attention (a 6-level
//! pyramid) whose residual branches carry learnable per-channel scales (`AffineDropPath`), a
//! per-level LayerNorm neck, and classification / regression heads shared over levels.
//!
//! As in ActionFormer, LayerNorm outputs are not masked: a padded position leaves a norm
//! holding the norm's bias, which the next convolution reads at the border of the valid
//! positions. Outputs at valid positions therefore depend on whether padding follows at each
//! level (not on how much): [`TalHead::padded_len`] pads so that this is exactly as in
//! ActionFormer, which pads training batches to `max_seq_len` (tested against the official code,
//! `tests/actionformer_parity.rs`). [`HeadConfig::mask_norms`] keeps the variant that zeroes
//! padded positions after every norm.

use crate::fastmath::gelu;
use crate::norm::{LayerNorm, LayerNormConfig};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::PaddingConfig1d;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::pool::{MaxPool1d, MaxPool1dConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Bool, Device, Tensor, TensorData};

pub use super::local_attention::LocalAttention;
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
    /// Initial value of the learnable per-channel scales on both residual branches of every
    /// transformer block (ActionFormer's `AffineDropPath`); the scales exist when `drop_path`
    /// is above 0, as in ActionFormer.
    #[config(default = 1e-4)]
    pub layer_scale_init: f64,
    /// Longest training sequence (ActionFormer's `max_seq_len`, THUMOS: 2304): shorter inputs
    /// behave as if padded to it, longer ones as if padded to a multiple of the largest stride
    /// times the window ([`TalHead::padded_len`]).
    #[config(default = 2304)]
    pub max_seq_len: usize,
    /// Zero activations at padded positions after every LayerNorm, so valid outputs never
    /// depend on padding (default false: ActionFormer, whose norms leave their bias there).
    #[config(default = false)]
    pub mask_norms: bool,
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
        let mut conv = Conv1dConfig::new(cin, cout, k)
            .with_stride(self.stride)
            .with_padding(PaddingConfig1d::Explicit(k / 2, k / 2))
            .with_groups(self.groups)
            .with_bias(self.bias)
            .init(device);
        // ActionFormer's MaskedConv1D starts its bias at zero.
        if self.bias {
            conv.bias = Some(Param::from_tensor(Tensor::zeros([cout], device)));
        }
        MaskedConv1d {
            conv,
            stride: self.stride,
        }
    }
}

impl MaskedConv1d {
    /// # Shapes
    /// - x: `[B, C, T]`, mask `[B, T]` -> `[B, C', T / stride]`, `[B, T / stride]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Tensor<3>, Tensor<2, Bool>) {
        let mask = subsample(mask, self.stride);
        let y = super::conv1d::conv1d(&self.conv, x);
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

pub(crate) fn mask_float(mask: &Tensor<2, Bool>) -> Tensor<3> {
    mask.clone().float().unsqueeze_dim(1)
}

/// LayerNorm over the channels of `[B, C, T]`.
fn channel_norm(norm: &LayerNorm, x: Tensor<3>) -> Tensor<3> {
    norm.forward(x.swap_dims(1, 2)).swap_dims(1, 2)
}

/// [`channel_norm`], then, when `masked`, zero at padded positions (a norm maps zeros to its
/// bias, which the next convolution carries into the border of the valid positions).
pub(crate) fn norm(
    norm: &LayerNorm,
    x: Tensor<3>,
    mask: &Tensor<2, Bool>,
    masked: bool,
) -> Tensor<3> {
    let y = channel_norm(norm, x);
    if masked { y * mask_float(mask) } else { y }
}

/// A 1x1 convolution as one matrix product over the channels (the convolution kernels of the
/// CPU backend go through a 3-D im2col path that is several times slower for it).
///
/// # Shapes
/// - x: `[B, C_in, T]` -> `[B, C_out, T]`
pub(crate) fn pointwise_forward(conv: &Conv1d, x: Tensor<3>) -> Tensor<3> {
    let [cout, cin, _] = conv.weight.dims();
    let y = super::conv1d::product(conv.weight.val().reshape([cout, cin]), x);
    match &conv.bias {
        Some(b) => y + b.val().reshape([1, cout, 1]),
        None => y,
    }
}

/// A 1x1 convolution with its bias at zero (ActionFormer zeroes every conv bias at init).
fn pointwise(cin: usize, cout: usize, device: &Device) -> Conv1d {
    let mut c = Conv1dConfig::new(cin, cout, 1).init(device);
    c.bias = Some(Param::from_tensor(Tensor::zeros([cout], device)));
    c
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
    /// Learnable per-channel scale of the attention branch, `[C]` (with `drop_path > 0`).
    pub attn_scale: Option<Param<Tensor<1>>>,
    /// Learnable per-channel scale of the MLP branch, `[C]` (with `drop_path > 0`).
    pub mlp_scale: Option<Param<Tensor<1>>>,
    /// Stochastic depth.
    pub drop_path: f64,
    /// Zero norm outputs at padded positions ([`HeadConfig::mask_norms`]).
    pub mask_norms: bool,
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
        let pw = |i, o| pointwise(i, o, device);
        let scale = || {
            (cfg.drop_path > 0.0)
                .then(|| Param::from_tensor(Tensor::full([d], cfg.layer_scale_init, device)))
        };
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
                mask_norms: cfg.mask_norms,
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
            attn_scale: scale(),
            mlp_scale: scale(),
            drop_path: cfg.drop_path,
            mask_norms: cfg.mask_norms,
        }
    }

    /// # Shapes
    /// - x: `[B, C, T]`, mask `[B, T]` -> `[B, C, T / stride]`, `[B, T / stride]`
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<2, Bool>) -> (Tensor<3>, Tensor<2, Bool>) {
        let (a, out_mask) = self
            .attn
            .forward(norm(&self.ln1, x.clone(), &mask, self.mask_norms), mask);
        let m = mask_float(&out_mask);
        let skip = match &self.pool_skip {
            Some(p) => p.forward(x),
            None => x,
        };
        let x = skip * m.clone() + self.branch(a, &self.attn_scale);
        let h = norm(&self.ln2, x.clone(), &out_mask, self.mask_norms);
        let y = pointwise_forward(&self.fc2, gelu(pointwise_forward(&self.fc1, h)));
        (x + self.branch(y * m, &self.mlp_scale), out_mask)
    }

    /// A residual branch: scaled per channel (when the block has scales), then drop path.
    fn branch(&self, y: Tensor<3>, scale: &Option<Param<Tensor<1>>>) -> Tensor<3> {
        let y = match scale {
            Some(s) => {
                let c = s.dims()[0];
                y * s.val().reshape([1, c, 1])
            }
            None => y,
        };
        drop_path(y, self.drop_path)
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
    /// Zero norm outputs at padded positions ([`HeadConfig::mask_norms`]).
    pub mask_norms: bool,
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
            mask_norms: cfg.mask_norms,
        }
    }

    /// `inside`: `[1, 1, T]`, 0 at the columns between levels laid side by side (kept at zero
    /// after every norm, as the zero padding each level would see alone).
    fn forward(
        &self,
        x: Tensor<3>,
        mask: Tensor<2, Bool>,
        inside: Option<&Tensor<3>>,
    ) -> Tensor<3> {
        let mut x = x;
        for (c, n) in self.convs.iter().zip(&self.norms) {
            x = relu(norm(
                n,
                c.forward(x, mask.clone()).0,
                &mask,
                self.mask_norms,
            ));
            if let Some(keep) = inside {
                x = x * keep.clone();
            }
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

/// ActionFormer's head.
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
    /// ActionFormer's `max_seq_len` ([`HeadConfig::max_seq_len`]).
    pub max_seq_len: usize,
    /// ActionFormer's `max_div_factor`: inputs longer than `max_seq_len` are padded to a
    /// multiple of it (the largest `stride * (window / 2) * 2`).
    pub max_div: usize,
    /// Zero norm outputs at padded positions ([`HeadConfig::mask_norms`]).
    pub mask_norms: bool,
}

impl HeadConfig {
    /// Build the head.
    pub fn init(&self, device: &Device) -> Result<TalHead> {
        self.pyramid
            .check()
            .map_err(|(field, reason)| Error::Config(format!("head.pyramid.{field}: {reason}")))?;
        let strides = &self.pyramid.strides;
        let levels = strides.len();
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
            max_seq_len: self.max_seq_len,
            max_div: strides
                .iter()
                .map(|&s| match self.window_size {
                    w if w > 1 => s * (w / 2) * 2,
                    _ => s,
                })
                .max()
                .unwrap_or(1),
            mask_norms: self.mask_norms,
        })
    }
}

impl TalHead {
    /// Sequence length the head pads `len` positions to.
    ///
    /// ActionFormer pads to `max_seq_len` (training, and inference up to it) or to a multiple of
    /// `max_div` (longer inputs). Valid outputs depend only on whether each level has a padded
    /// position after its last valid one (the norms' bias sits there), so the head pads to the
    /// shorter of that length and one whole top-level stride beyond `len`: the same outputs at
    /// a fraction of the length. With [`HeadConfig::mask_norms`], the next multiple of the
    /// largest stride.
    pub fn padded_len(&self, len: usize) -> usize {
        let s = self.max_stride;
        if self.mask_norms {
            return len.div_ceil(s) * s;
        }
        let reference = if len <= self.max_seq_len {
            self.max_seq_len
        } else {
            len.div_ceil(self.max_div) * self.max_div
        };
        (reference.div_ceil(s) * s).min((len.div_ceil(s) + 1) * s)
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
            x = relu(self::norm(norm, y, &m, self.mask_norms));
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
        self.predict(levels)
    }

    /// The neck and both prediction heads over all levels at once: the levels side by side
    /// along time, `kernel / 2` zero columns between them, so each level's convolutions see
    /// zeros past its ends exactly as they would alone (one call per layer instead of one per
    /// level).
    fn predict(&self, levels: Vec<(Tensor<3>, Tensor<2, Bool>)>) -> Result<HeadOutput> {
        let (b, c) = {
            let d = levels[0].0.dims();
            (d[0], d[1])
        };
        let device = levels[0].0.device();
        let gap = self.cls.out.conv.weight.dims()[2] / 2;
        let lens: Vec<usize> = levels.iter().map(|(x, _)| x.dims()[2]).collect();
        let (mut xs, mut ms, mut scale, mut inside) = (vec![], vec![], vec![], vec![]);
        let mut level_masks = Vec::with_capacity(lens.len());
        for (l, (feat, m)) in levels.into_iter().enumerate() {
            if l > 0 && gap > 0 {
                xs.push(Tensor::zeros([b, c, gap], &device));
                ms.push(Tensor::<2, Bool>::from_data(
                    TensorData::new(vec![false; b * gap], [b, gap]),
                    &device,
                ));
                scale.push(Tensor::zeros([gap], &device));
                inside.push(Tensor::<1>::zeros([gap], &device));
            }
            xs.push(norm(&self.neck[l], feat, &m, self.mask_norms));
            level_masks.push(m.clone());
            ms.push(m);
            scale.push(self.scales[l].val().expand([lens[l]]));
            inside.push(Tensor::<1>::ones([lens[l]], &device));
        }
        let (x, mask) = (Tensor::cat(xs, 2), Tensor::cat(ms, 1));
        let total = x.dims()[2];
        let inside = (gap > 0).then(|| Tensor::cat(inside, 0).reshape([1, 1, total]));
        let cls = self.cls.forward(x.clone(), mask.clone(), inside.as_ref());
        let scale = Tensor::cat(scale, 0).reshape([1, 1, total]);
        let off = relu(self.reg.forward(x, mask, inside.as_ref()) * scale);
        // Back to the levels, without the gaps.
        let (mut keep_cls, mut keep_off, mut at) = (vec![], vec![], 0);
        for len in &lens {
            keep_cls.push(cls.clone().narrow(2, at, *len));
            keep_off.push(off.clone().narrow(2, at, *len));
            at += len + gap;
        }
        Ok(HeadOutput {
            cls_logits: Tensor::cat(keep_cls, 2).swap_dims(1, 2),
            offsets: Tensor::cat(keep_off, 2).swap_dims(1, 2),
            mask: Tensor::cat(level_masks, 1),
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
        // 40 positions pad to 96 (a whole top-level stride past 64, where ActionFormer's 2304
        // also has padding at every level): points 96 + 48 + 24 + 12 + 6 + 3 = 189.
        assert_eq!(head.padded_len(40), 96);
        let x = Tensor::<3>::random([2, 40, 6], Distribution::Default, &device);
        let valid: Vec<bool> = (0..80).map(|i| i < 40 || i - 40 < 30).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(valid, [2, 40]), &device);
        let out = head.forward(x, mask).unwrap();
        assert_eq!(out.cls_logits.dims(), [2, 189, 3]);
        assert_eq!(out.offsets.dims(), [2, 189, 2]);
        let m: Vec<bool> = out.mask.clone().into_data().try_to_vec().unwrap();
        // Level 0 of video 1: 30 valid of 96; level 1: 15 of 48.
        assert_eq!(m[189..189 + 96].iter().filter(|&&v| v).count(), 30);
        assert_eq!(m[189 + 96..189 + 144].iter().filter(|&&v| v).count(), 15);
        assert_eq!(PyramidConfig::new().points(96).len(), 189);
        // At start, class probabilities sit at the prior: the classifier's bias is the prior's
        // logit, and the valid logits scatter around it (the final convolution's weights are
        // random, so one logit may lie more than 1 away; their mean does not).
        let prior = -((1.0f32 - 0.01) / 0.01).ln();
        let bias: Vec<f32> = head
            .cls
            .out
            .conv
            .bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        assert!(bias.iter().all(|&b| (b - prior).abs() < 1e-6), "{bias:?}");
        let logits: Vec<f32> = out
            .cls_logits
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        let valid0: Vec<f32> = (0..189)
            .filter(|&p| m[p])
            .flat_map(|p| logits[3 * p..3 * p + 3].to_vec())
            .collect();
        let mean = valid0.iter().sum::<f32>() / valid0.len() as f32;
        assert!(
            (mean - prior).abs() < 1.0,
            "mean logit {mean}, prior {prior}"
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
        // The loss covers valid points only (padded ones output 0 by construction).
        let valid = crate::tal::bool_values(head.forward(x.clone(), mask.clone()).unwrap().mask);
        let keep: Vec<i64> = (0..points.len() as i64)
            .filter(|&i| valid[i as usize])
            .collect();
        let nkeep = keep.len();
        let cls_t: Vec<f32> = keep
            .iter()
            .flat_map(|&i| tg.cls[i as usize * 3..i as usize * 3 + 3].to_vec())
            .collect();
        let cls_t = Tensor::<2>::from_data(TensorData::new(cls_t, [nkeep, 3]), device);
        let keep = Tensor::<1, Int>::from_data(TensorData::new(keep, [nkeep]), device);
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
            let logits = out
                .cls_logits
                .reshape([points.len(), 3])
                .select(0, keep.clone());
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
