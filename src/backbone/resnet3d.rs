//! 3-D ResNets for video: r3d-18 (full 3x3x3 convolutions) and R(2+1)D-18 (each 3-D
//! convolution factorised into a spatial 1x3x3 and a temporal 3x1x1 one), as in
//! `torchvision.models.video` (Tran et al. 2018). BatchNorm keeps running statistics; with
//! `norm_eval` they stay frozen during fine-tuning.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig3d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::residual::{ResidualBranch, drop_path, drop_path_schedule};
use super::{
    BackboneOutput, FeatureLayout, LayerTaps, VideoBackbone, check_input, check_layers, tap_tokens,
};
use crate::error::Result;

/// Which convolution the residual blocks use.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ResNetKind {
    /// 3x3x3 convolutions (torchvision `r3d_18`).
    R3d,
    /// (2+1)-D factorised convolutions (torchvision `r2plus1d_18`).
    R2Plus1d,
}

/// 3-D ResNet settings (defaults: r3d-18).
#[derive(Config, Debug)]
pub struct ResNet3dConfig {
    /// Convolution type.
    #[config(default = "ResNetKind::R3d")]
    pub kind: ResNetKind,
    /// Blocks per stage (18 layers: `[2, 2, 2, 2]`).
    #[config(default = "vec![2, 2, 2, 2]")]
    pub layers: Vec<usize>,
    /// Channels per stage.
    #[config(default = "vec![64, 128, 256, 512]")]
    pub widths: Vec<usize>,
    /// Channels between the spatial and temporal stem convolutions of R(2+1)D (torchvision: 45).
    #[config(default = 45)]
    pub stem_mid: usize,
    /// Keep BatchNorm in inference mode (running statistics frozen) even while training.
    #[config(default = false)]
    pub norm_eval: bool,
    /// Stochastic depth of the last block (linearly increasing from 0).
    #[config(default = 0.0)]
    pub drop_path_rate: f64,
}

/// A convolution followed by BatchNorm (and optionally ReLU).
#[derive(Module, Debug)]
pub struct ConvBn {
    /// Convolution (no bias).
    pub conv: Conv3d,
    /// BatchNorm.
    pub bn: BatchNorm,
}

/// A BatchNorm over `channels` (PyTorch's eps and momentum); `norm_eval` freezes it (running
/// statistics, no update), as detection fine-tuning of these backbones does.
fn batch_norm(channels: usize, norm_eval: bool, device: &Device) -> BatchNorm {
    let mut bn = BatchNormConfig::new(channels)
        .with_epsilon(1e-5)
        .with_momentum(0.1)
        .init(device);
    if norm_eval {
        bn.training = bn.training.with_value(false);
    }
    bn
}

/// [`ConvBn`]: a bias-free 3-D convolution and its BatchNorm.
#[derive(Config, Debug)]
pub struct ConvBnConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Kernel, `[t, h, w]`.
    pub kernel: [usize; 3],
    /// Stride. Default 1.
    #[config(default = "[1, 1, 1]")]
    pub stride: [usize; 3],
    /// Zero padding on each side. Default none.
    #[config(default = "[0, 0, 0]")]
    pub padding: [usize; 3],
    /// Frozen BatchNorm. Default false.
    #[config(default = false)]
    pub norm_eval: bool,
}

impl ConvBnConfig {
    /// Build the layer.
    pub fn init(&self, device: &Device) -> ConvBn {
        let [t, h, w] = self.padding;
        ConvBn {
            conv: Conv3dConfig::new(self.channels, self.kernel)
                .with_stride(self.stride)
                .with_padding(PaddingConfig3d::Explicit(t, h, w))
                .with_bias(false)
                .init(device),
            bn: batch_norm(self.channels[1], self.norm_eval, device),
        }
    }
}

impl ConvBn {
    /// # Shapes
    /// - x: `[N, C_in, T, H, W]` -> `[N, C_out, T', H', W']`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        self.bn.forward(self.conv.forward(x))
    }
}

/// A 3x3x3 convolution, or its (2+1)-D factorisation `conv(1x3x3) -> BN -> ReLU -> conv(3x1x1)`.
/// In both cases BatchNorm follows (`bn`).
#[derive(Module, Debug)]
pub struct ConvUnit {
    /// Spatial 1x3x3 convolution + BN (R(2+1)D only).
    pub spatial: Option<ConvBn>,
    /// The (temporal, for R(2+1)D) convolution.
    pub conv: Conv3d,
    /// BatchNorm after `conv`.
    pub bn: BatchNorm,
}

/// [`ConvUnit`]: a 3x3x3 convolution (R3D) or its (2+1)-D factorisation with `mid` channels in
/// between (R(2+1)D), stride on every axis, BatchNorm after.
#[derive(Config, Debug)]
pub struct ConvUnitConfig {
    /// Which factorisation.
    pub kind: ResNetKind,
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Channels between the spatial and temporal convolutions (R(2+1)D only).
    pub mid: usize,
    /// Stride on every axis. Default 1.
    #[config(default = 1)]
    pub stride: usize,
    /// Frozen BatchNorm. Default false.
    #[config(default = false)]
    pub norm_eval: bool,
}

impl ConvUnitConfig {
    /// Build the layer.
    pub fn init(&self, device: &Device) -> ConvUnit {
        let ([cin, cout], mid, stride) = (self.channels, self.mid, self.stride);
        let pad = |a, b, c| PaddingConfig3d::Explicit(a, b, c);
        let (spatial, conv) = match self.kind {
            ResNetKind::R3d => (
                None,
                Conv3dConfig::new([cin, cout], [3, 3, 3])
                    .with_stride([stride; 3])
                    .with_padding(pad(1, 1, 1))
                    .with_bias(false)
                    .init(device),
            ),
            ResNetKind::R2Plus1d => (
                Some(
                    ConvBnConfig::new([cin, mid], [1, 3, 3])
                        .with_stride([1, stride, stride])
                        .with_padding([0, 1, 1])
                        .with_norm_eval(self.norm_eval)
                        .init(device),
                ),
                Conv3dConfig::new([mid, cout], [3, 1, 1])
                    .with_stride([stride, 1, 1])
                    .with_padding(pad(1, 0, 0))
                    .with_bias(false)
                    .init(device),
            ),
        };
        ConvUnit {
            spatial,
            conv,
            bn: batch_norm(cout, self.norm_eval, device),
        }
    }
}

impl ConvUnit {
    /// # Shapes
    /// - x: `[N, C_in, T, H, W]` -> `[N, C_out, T', H', W']`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = match &self.spatial {
            Some(s) => relu(s.forward(x)),
            None => x,
        };
        self.bn.forward(self.conv.forward(x))
    }
}

/// The residual branch of a basic block: `conv2(relu(conv1(x)))`.
#[derive(Module, Debug)]
pub struct BasicBranch {
    /// First convolution unit (carries the stage's stride).
    pub conv1: ConvUnit,
    /// Second convolution unit.
    pub conv2: ConvUnit,
    /// Stochastic depth probability.
    pub drop_path: f64,
}

impl ResidualBranch<5> for BasicBranch {
    /// # Shapes
    /// - x: `[N, C, T, H, W]` -> same (for blocks that keep the shape)
    fn branch(&self, x: Tensor<5>) -> Tensor<5> {
        drop_path(
            self.conv2.forward(relu(self.conv1.forward(x))),
            self.drop_path,
        )
    }
}

/// A basic residual block: `relu(shortcut(x) + F(x))`. The first block of a stage that
/// changes shape has a 1x1x1 convolution + BN shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// `F`.
    pub branch: BasicBranch,
    /// Projection shortcut, when the block changes shape.
    pub downsample: Option<ConvBn>,
}

impl BasicBlock {
    /// # Shapes
    /// - x: `[N, C_in, T, H, W]` -> `[N, C_out, T', H', W']`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x.clone()),
            None => x.clone(),
        };
        relu(shortcut + self.branch.branch(x))
    }
}

/// A 3-D ResNet: stem, four stages of basic blocks, global average pooling.
#[derive(Module, Debug)]
pub struct ResNet3d {
    /// Stem convolutions (one for r3d, spatial + temporal for R(2+1)D), each followed by ReLU.
    pub stem: Vec<ConvBn>,
    /// Stages of residual blocks.
    pub stages: Vec<Vec<BasicBlock>>,
    /// How the last layer is pooled into features (not a parameter: set by the run).
    #[module(skip)]
    pub layout: FeatureLayout,
}

impl ResNet3dConfig {
    /// Build the model.
    pub fn init(&self, device: &Device) -> ResNet3d {
        let ne = self.norm_eval;
        let w0 = self.widths[0];
        let stem = match self.kind {
            ResNetKind::R3d => vec![
                ConvBnConfig::new([3, w0], [3, 7, 7])
                    .with_stride([1, 2, 2])
                    .with_padding([1, 3, 3])
                    .with_norm_eval(ne)
                    .init(device),
            ],
            ResNetKind::R2Plus1d => {
                let mid = self.stem_mid;
                vec![
                    ConvBnConfig::new([3, mid], [1, 7, 7])
                        .with_stride([1, 2, 2])
                        .with_padding([0, 3, 3])
                        .with_norm_eval(ne)
                        .init(device),
                    ConvBnConfig::new([mid, w0], [3, 1, 1])
                        .with_padding([1, 0, 0])
                        .with_norm_eval(ne)
                        .init(device),
                ]
            }
        };
        let mut dps = drop_path_schedule(self.drop_path_rate, self.layers.iter().sum()).into_iter();
        let mut cin = w0;
        let stages = self
            .layers
            .iter()
            .zip(&self.widths)
            .enumerate()
            .map(|(s, (&n, &w))| {
                let blocks = (0..n)
                    .map(|i| {
                        let stride = if s > 0 && i == 0 { 2 } else { 1 };
                        let (bin, bout) = (if i == 0 { cin } else { w }, w);
                        // torchvision: both convolutions of a block share one mid width.
                        let mid = (bin * bout * 27) / (bin * 9 + 3 * bout);
                        let dp = dps.next().expect("one probability per block");
                        let downsample = (stride != 1 || bin != bout).then(|| {
                            ConvBnConfig::new([bin, bout], [1, 1, 1])
                                .with_stride([stride; 3])
                                .with_norm_eval(ne)
                                .init(device)
                        });
                        BasicBlock {
                            branch: BasicBranch {
                                conv1: ConvUnitConfig::new(self.kind, [bin, bout], mid)
                                    .with_stride(stride)
                                    .with_norm_eval(ne)
                                    .init(device),
                                conv2: ConvUnitConfig::new(self.kind, [bout, bout], mid)
                                    .with_norm_eval(ne)
                                    .init(device),
                                drop_path: dp,
                            },
                            downsample,
                        }
                    })
                    .collect::<Vec<_>>();
                cin = w;
                blocks
            })
            .collect::<Vec<_>>();
        ResNet3d {
            stem,
            stages,
            layout: FeatureLayout::Clip,
        }
    }
}

impl ResNet3d {
    /// The last layer before pooling: the feature map after the last stage.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, C, F', H', W']`
    pub fn forward_unpooled(&self, clips: Tensor<5>) -> Result<Tensor<5>> {
        Ok(self.run(clips, LayerTaps::default())?.0)
    }

    /// Temporal positions of the last stage for clips of `frames` frames: every stage after
    /// the first halves time (stride 2, rounded up).
    pub fn temporal_positions(&self, frames: usize) -> usize {
        (1..self.stages.len()).fold(frames, |t, _| t.div_ceil(2))
    }

    fn run(&self, clips: Tensor<5>, taps: LayerTaps<'_>) -> Result<(Tensor<5>, Vec<Tensor<3>>)> {
        let LayerTaps { layers, max_tokens } = taps;
        check_input("resnet3d", &clips)?;
        let positions = self.temporal_positions(clips.dims()[2]);
        check_layers("resnet3d", layers, self.stages.len())?;
        let mut x = clips;
        for s in &self.stem {
            x = relu(s.forward(x));
        }
        let mut inter = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            for b in stage {
                x = b.forward(x);
            }
            if layers.contains(&i) {
                let [n, c, t, h, w] = x.dims();
                let tokens = x.clone().reshape([n, c, t * h * w]).swap_dims(1, 2);
                inter.push(tap_tokens(
                    "resnet3d",
                    tokens,
                    self.layout,
                    positions,
                    max_tokens,
                )?);
            }
        }
        Ok((x, inter))
    }
}

impl VideoBackbone for ResNet3d {
    /// Per-clip features (global average pool) and the tapped stages' outputs as tokens.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> features `[N * P, C]`, layers `[N * P, T'H'W' / P, C_i]`
    ///   (`P` = the last stage's temporal positions with temporal tokens, else 1)
    fn forward_tapped(&self, clips: Tensor<5>, taps: LayerTaps<'_>) -> Result<BackboneOutput> {
        let (x, kept) = self.run(clips, taps)?;
        let [n, c, t, h, w] = x.dims();
        let (features, positions) = match self.layout {
            FeatureLayout::Clip => (x.reshape([n, c, t * h * w]).mean_dim(2).reshape([n, c]), 1),
            FeatureLayout::Temporal => {
                let x = x.reshape([n, c, t, h * w]).mean_dim(3).reshape([n, c, t]);
                (x.swap_dims(1, 2).reshape([n * t, c]), t)
            }
        };
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

    fn stem_mean(m: &ResNet3d) -> Vec<f32> {
        m.stem[0]
            .bn
            .running_mean
            .value_sync()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap()
    }

    #[test]
    fn norm_eval_freezes_running_statistics() {
        let device = crate::backend::cpu_device().autodiff();
        let cfg = ResNet3dConfig::new()
            .with_widths(vec![4, 4, 4, 4])
            .with_layers(vec![1, 1, 1, 1]);
        let x = || {
            Tensor::<5>::random(
                [2, 3, 4, 16, 16],
                burn::tensor::Distribution::Default,
                &device,
            )
        };
        let frozen = cfg.clone().with_norm_eval(true).init(&device);
        let before = stem_mean(&frozen);
        frozen.forward(x(), &[]).unwrap();
        assert_eq!(stem_mean(&frozen), before);
        let trained = cfg.init(&device);
        let before = stem_mean(&trained);
        trained.forward(x(), &[]).unwrap();
        assert_ne!(
            stem_mean(&trained),
            before,
            "training BN updates its statistics"
        );
    }

    #[test]
    fn shapes_of_both_kinds() {
        let device = crate::backend::cpu_device();
        for kind in [ResNetKind::R3d, ResNetKind::R2Plus1d] {
            let m = ResNet3dConfig::new()
                .with_kind(kind)
                .with_widths(vec![4, 8, 8, 16])
                .with_layers(vec![2, 1, 1, 1])
                .with_stem_mid(6)
                .init(&device);
            let out = m
                .forward(Tensor::zeros([2, 3, 8, 32, 32], &device), &[0, 3])
                .unwrap();
            assert_eq!(out.features.dims(), [2, 16]);
            assert_eq!(out.layers[0].dims(), [2, 8 * 16 * 16, 4]);
            assert_eq!(out.layers[1].dims(), [2, 4, 16]);
        }
    }
}
