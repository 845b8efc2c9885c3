//! Video backbones, each an explicit chain of residual modules (see [`residual`]):
//! VideoMAE ViT ([`vit`]), 3-D ResNets ([`resnet3d`]) and Video Swin ([`swin`]).

mod patches;
pub mod residual;
pub mod resnet3d;
pub mod swin;
pub mod vit;

use burn::tensor::Tensor;

use crate::error::{Error, Result};

/// How a backbone turns its last layer into the head's feature sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureLayout {
    /// One feature per clip: the mean over the clip's last-layer tokens, time and space.
    #[default]
    Clip,
    /// The backbone's temporal tokens (AdaTAD's layout): per clip, one feature per temporal
    /// position of the last layer, the mean over space only (ViT: `F / tubelet` positions;
    /// Swin: `F / temporal patch`; ResNet: `F` halved by each downsampling stage). Tapped
    /// layers are split the same way, each position keeping its own tokens.
    Temporal,
}

/// What a backbone returns for a batch of clips (or for a whole video, its clips in order along
/// the first axis).
#[derive(Debug, Clone)]
pub struct BackboneOutput {
    /// The feature sequence, `[N * P, C]`: `P` positions per clip ([`FeatureLayout`]), clip
    /// by clip.
    pub features: Tensor<2>,
    /// Outputs of the tapped layers ([`LayerTaps`]), as token sequences `[N * P, L_l, C_l]`
    /// (with temporal tokens, each position's own tokens).
    pub layers: Vec<Tensor<3>>,
    /// Feature positions per clip (`P`: 1 for [`FeatureLayout::Clip`]).
    pub positions: usize,
}

impl BackboneOutput {
    /// Clips `start..start + count` of every tensor.
    pub fn narrow(self, start: usize, count: usize) -> Self {
        let p = self.positions;
        Self {
            features: self.features.narrow(0, start * p, count * p),
            layers: self
                .layers
                .into_iter()
                .map(|t| t.narrow(0, start * p, count * p))
                .collect(),
            positions: p,
        }
    }

    /// Bytes held (the layers may be in a low precision).
    pub fn num_bytes(&self) -> usize {
        let bytes = |t: &Tensor<3>| t.shape().num_elements() * t.dtype().size();
        self.features.shape().num_elements() * self.features.dtype().size()
            + self.layers.iter().map(bytes).sum::<usize>()
    }
}

/// Check a clip batch is `[N, 3, F, H, W]` with `N > 0`.
/// Which network a backbone's blocks form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The backbone as loaded: residual blocks.
    #[default]
    Plain,
    /// Re2TAL's rewiring of the same parameters into a reversible network (ViT, Swin).
    Rewired,
}

impl Network {
    /// `Rewired` when `rewired`, else `Plain` (the configs' `rewired` flag).
    pub fn rewired_if(rewired: bool) -> Self {
        if rewired {
            Network::Rewired
        } else {
            Network::Plain
        }
    }
}

/// Which intermediate layers a forward keeps, and how many tokens per clip of each.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerTaps<'a> {
    /// Layer indices (blocks for ViT, stages otherwise); empty: none.
    pub layers: &'a [usize],
    /// Most tokens per clip kept of each (uniformly subsampled); `0`: all.
    pub max_tokens: usize,
}

/// At most `max_tokens` of the `L` tokens of `[N, L, C]`, uniformly spaced (`0`: all).
///
/// # Shapes
/// - tokens: `[N, L, C]` -> `[N, min(L, max_tokens), C]`
pub fn subsample_tokens(tokens: Tensor<3>, max_tokens: usize) -> Tensor<3> {
    let [_, l, _] = tokens.dims();
    if max_tokens == 0 || l <= max_tokens {
        return tokens;
    }
    let idx: Vec<i64> = (0..max_tokens)
        .map(|i| (i * l / max_tokens) as i64)
        .collect();
    let idx = Tensor::<1, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(idx, [max_tokens]),
        &tokens.device(),
    );
    tokens.select(1, idx)
}

/// Pools a last layer given as `[N, T, S, C]` (temporal positions, spatial tokens) into the
/// feature sequence of `layout`; returns it with its positions per clip.
///
/// # Shapes
/// - x: `[N, T, S, C]` -> `[N, C]` (clip) or `[N * T, C]` (temporal)
pub(crate) fn pool_layout(x: Tensor<4>, layout: FeatureLayout) -> (Tensor<2>, usize) {
    let [n, t, s, c] = x.dims();
    match layout {
        FeatureLayout::Clip => (x.reshape([n, t * s, c]).mean_dim(1).reshape([n, c]), 1),
        FeatureLayout::Temporal => (x.mean_dim(2).reshape([n * t, c]), t),
    }
}

/// A tapped layer's tokens (`[N, L, C]`, time-major: `L = T_l x S`) as `layout` keeps them:
/// the clip's tokens, or with temporal tokens each of the `positions` positions' own tokens,
/// then at most `max_tokens` of them ([`subsample_tokens`]).
///
/// # Shapes
/// - tokens: `[N, L, C]` -> `[N, min(L, max), C]` or `[N * P, min(L / P, max), C]`
pub(crate) fn tap_tokens(
    name: &str,
    tokens: Tensor<3>,
    layout: FeatureLayout,
    positions: usize,
    max_tokens: usize,
) -> Result<Tensor<3>> {
    let [n, l, c] = tokens.dims();
    let tokens = match layout {
        FeatureLayout::Clip => tokens,
        FeatureLayout::Temporal => {
            if positions == 0 || l % positions != 0 {
                return Err(Error::Config(format!(
                    "{name}: a tapped layer of {l} tokens cannot be split into {positions} \
                     temporal positions"
                )));
            }
            tokens.reshape([n * positions, l / positions, c])
        }
    };
    Ok(subsample_tokens(tokens, max_tokens))
}

pub(crate) fn check_input(name: &str, clips: &Tensor<5>) -> Result<[usize; 5]> {
    let dims = clips.dims();
    if dims[1] != 3 || dims[0] == 0 {
        return Err(Error::Shape {
            what: format!("{name} clips"),
            expected: "[N, 3, F, H, W] with N > 0".into(),
            got: dims.to_vec(),
        });
    }
    Ok(dims)
}

/// Check requested intermediate layers exist.
pub(crate) fn check_layers(name: &str, layers: &[usize], n: usize) -> Result<()> {
    if let Some(l) = layers.iter().find(|&&l| l >= n) {
        return Err(Error::Config(format!(
            "{name}: layer {l} requested, the backbone has {n} (0-based)"
        )));
    }
    Ok(())
}

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;

use crate::weights::{CheckpointFamily, LoadReport};

/// Named backbone configurations (published sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackbonePreset {
    /// VideoMAE ViT-S/16.
    VitS,
    /// VideoMAE ViT-B/16.
    VitB,
    /// VideoMAE ViT-L/16.
    VitL,
    /// VideoMAE ViT-H/16.
    VitH,
    /// VideoMAEv2 ViT-g/14.
    VitG,
    /// Video Swin-T.
    SwinT,
    /// Video Swin-S.
    SwinS,
    /// Video Swin-B.
    SwinB,
    /// r3d-18.
    #[value(name = "r3d-18")]
    R3d18,
    /// R(2+1)D-18.
    #[value(name = "r2plus1d-18")]
    R2Plus1d18,
}

impl BackbonePreset {
    /// Every preset.
    pub const ALL: [BackbonePreset; 10] = [
        Self::VitS,
        Self::VitB,
        Self::VitL,
        Self::VitH,
        Self::VitG,
        Self::SwinT,
        Self::SwinS,
        Self::SwinB,
        Self::R3d18,
        Self::R2Plus1d18,
    ];

    /// Command-line name (`vit-s`, `swin-t`, `r3d-18`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::VitS => "vit-s",
            Self::VitB => "vit-b",
            Self::VitL => "vit-l",
            Self::VitH => "vit-h",
            Self::VitG => "vit-g",
            Self::SwinT => "swin-t",
            Self::SwinS => "swin-s",
            Self::SwinB => "swin-b",
            Self::R3d18 => "r3d-18",
            Self::R2Plus1d18 => "r2plus1d-18",
        }
    }

    /// The checkpoint family a preset's official weights come in.
    pub fn default_family(self) -> CheckpointFamily {
        match self {
            Self::VitS | Self::VitB | Self::VitL | Self::VitH => CheckpointFamily::HfVideoMae,
            Self::VitG => CheckpointFamily::VideoMaeV2,
            Self::SwinT | Self::SwinS | Self::SwinB => {
                CheckpointFamily::TorchvisionSwin3d { stages: 4 }
            }
            Self::R3d18 => CheckpointFamily::TorchvisionR3d,
            Self::R2Plus1d18 => CheckpointFamily::TorchvisionR2Plus1d,
        }
    }

    /// A freshly initialised model.
    pub fn init(self, device: &Device) -> Backbone {
        use resnet3d::{ResNet3dConfig, ResNetKind};
        use swin::{SwinConfig, SwinPreset};
        use vit::{VitConfig, VitPreset};
        match self {
            Self::VitS => Backbone::Vit(VitConfig::preset(VitPreset::Small).init(device)),
            Self::VitB => Backbone::Vit(VitConfig::preset(VitPreset::Base).init(device)),
            Self::VitL => Backbone::Vit(VitConfig::preset(VitPreset::Large).init(device)),
            Self::VitH => Backbone::Vit(VitConfig::preset(VitPreset::Huge).init(device)),
            Self::VitG => Backbone::Vit(VitConfig::preset(VitPreset::Giant).init(device)),
            Self::SwinT => Backbone::Swin(SwinConfig::preset(SwinPreset::Tiny).init(device)),
            Self::SwinS => Backbone::Swin(SwinConfig::preset(SwinPreset::Small).init(device)),
            Self::SwinB => Backbone::Swin(SwinConfig::preset(SwinPreset::Base).init(device)),
            Self::R3d18 => Backbone::ResNet(ResNet3dConfig::new().init(device)),
            Self::R2Plus1d18 => Backbone::ResNet(
                ResNet3dConfig::new()
                    .with_kind(ResNetKind::R2Plus1d)
                    .init(device),
            ),
        }
    }
}

impl std::str::FromStr for BackbonePreset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::choice::parse("backbone", s)
    }
}

/// Any of the backbones.
#[derive(Module, Debug)]
pub enum Backbone {
    /// VideoMAE ViT.
    Vit(vit::VisionTransformer),
    /// Video Swin.
    Swin(swin::VideoSwin),
    /// 3-D ResNet.
    ResNet(resnet3d::ResNet3d),
}

/// What every video backbone computes: one feature vector per clip and, for the tapped layers,
/// their tokens. A new backbone implements [`VideoBackbone::forward_tapped`]; `forward` and
/// the [`Backbone`] enum's dispatch come with it.
pub trait VideoBackbone {
    /// Per-clip features and, for each index in `taps.layers` (blocks for ViT, stages for Swin
    /// and ResNets), that layer's output as tokens, keeping at most `taps.max_tokens` per clip
    /// (uniformly subsampled as the layer is produced, [`subsample_tokens`]; `0` keeps all), so
    /// the layers kept for LoSA cost `clips x layers x max_tokens x width`, not every token.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> features `[N, C]`,
    ///   layers `[N, min(L_i, max_tokens), C_i]`
    fn forward_tapped(&self, clips: Tensor<5>, taps: LayerTaps<'_>) -> Result<BackboneOutput>;

    /// [`VideoBackbone::forward_tapped`] keeping every token of `layers`.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> features `[N, C]`, layers `[N, L_i, C_i]`
    fn forward(&self, clips: Tensor<5>, layers: &[usize]) -> Result<BackboneOutput> {
        self.forward_tapped(
            clips,
            LayerTaps {
                layers,
                max_tokens: 0,
            },
        )
    }
}

impl VideoBackbone for Backbone {
    fn forward_tapped(&self, clips: Tensor<5>, taps: LayerTaps<'_>) -> Result<BackboneOutput> {
        match self {
            Backbone::Vit(m) => m.forward_tapped(clips, taps),
            Backbone::Swin(m) => m.forward_tapped(clips, taps),
            Backbone::ResNet(m) => m.forward_tapped(clips, taps),
        }
    }
}

impl Backbone {
    /// The feature layout its forwards produce.
    pub fn layout(&self) -> FeatureLayout {
        match self {
            Backbone::Vit(m) => m.layout,
            Backbone::Swin(m) => m.layout,
            Backbone::ResNet(m) => m.layout,
        }
    }

    /// The same backbone producing `layout` (no parameter changes).
    pub fn with_layout(mut self, layout: FeatureLayout) -> Self {
        match &mut self {
            Backbone::Vit(m) => m.layout = layout,
            Backbone::Swin(m) => m.layout = layout,
            Backbone::ResNet(m) => m.layout = layout,
        }
        self
    }

    /// Temporal positions of the last layer for clips of `frames` frames (the positions per
    /// clip of [`FeatureLayout::Temporal`]); an error when `frames` does not fit the
    /// backbone's temporal patch.
    pub fn temporal_positions(&self, frames: usize) -> Result<usize> {
        let (name, p) = match self {
            Backbone::Vit(m) => (
                "vit",
                frames
                    .is_multiple_of(m.tubelet_size)
                    .then(|| frames / m.tubelet_size),
            ),
            Backbone::Swin(m) => {
                let pt = m.patch_embed.patch_size[0];
                ("swin", Some(frames.div_ceil(pt)))
            }
            Backbone::ResNet(m) => ("resnet3d", Some(m.temporal_positions(frames))),
        };
        match p {
            Some(p) if p > 0 && frames > 0 => Ok(p),
            _ => Err(Error::Config(format!(
                "{name}: clips of {frames} frames do not fit the backbone's temporal patch"
            ))),
        }
    }

    /// Load a checkpoint into the backbone.
    pub fn load(&mut self, path: &Path, family: CheckpointFamily) -> Result<LoadReport> {
        match self {
            Backbone::Vit(m) => crate::weights::load(m, path, family),
            Backbone::Swin(m) => crate::weights::load(m, path, family),
            Backbone::ResNet(m) => crate::weights::load(m, path, family),
        }
    }

    /// Write the backbone's weights as safetensors in this crate's layout (atomically);
    /// [`CheckpointFamily::Native`] loads them back.
    pub fn save(&self, path: &Path) -> Result<()> {
        match self {
            Backbone::Vit(m) => crate::weights::save(m, path),
            Backbone::Swin(m) => crate::weights::save(m, path),
            Backbone::ResNet(m) => crate::weights::save(m, path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn wrong_clip_shapes_are_shape_errors() {
        let device = crate::backend::cpu_device();
        let m = vit::VitConfig::new()
            .with_embed_dim(8)
            .with_depth(1)
            .with_num_heads(2)
            .with_mlp_dim(16)
            .with_patch_size(8)
            .with_num_frames(4)
            .with_image_size(16)
            .init(&device);
        for dims in [[1, 1, 4, 16, 16], [1, 3, 3, 16, 16]] {
            let clips = Tensor::<5>::zeros(dims, &device);
            match m.forward(clips, &[]) {
                Err(Error::Shape { what, got, .. }) => {
                    assert_eq!((what.as_str(), got.as_slice()), ("vit clips", &dims[..]))
                }
                other => panic!("expected a shape error, got {other:?}"),
            }
        }
    }

    /// Parameter counts equal the references' (torchvision without the classifier head,
    /// `transformers` `VideoMAEModel`), as counted with torch.
    #[test]
    fn presets_have_the_reference_parameter_counts() {
        let device = crate::backend::cpu_device();
        for (preset, want) in [
            (BackbonePreset::VitS, 21_879_168),
            (BackbonePreset::VitB, 86_225_664),
            (BackbonePreset::SwinT, 27_850_470),
            (BackbonePreset::SwinS, 49_509_078),
            (BackbonePreset::SwinB, 87_638_984),
            // Burn counts BatchNorm running statistics: torchvision parameters (33,166,272 and
            // 31,300,125) plus running_mean/var (9,600 and 25,350).
            (BackbonePreset::R3d18, 33_175_872),
            (BackbonePreset::R2Plus1d18, 31_325_475),
        ] {
            assert_eq!(preset.init(&device).num_params(), want, "{}", preset.name());
        }
        for p in BackbonePreset::ALL {
            let v = clap::ValueEnum::to_possible_value(&p).unwrap();
            assert_eq!(v.get_name(), p.name(), "one name per preset");
        }
        assert!("vit-x".parse::<BackbonePreset>().is_err());
        assert_eq!(
            "SWIN-T".parse::<BackbonePreset>().unwrap(),
            BackbonePreset::SwinT
        );
    }

    /// A token budget keeps exactly the uniformly subsampled tokens of each tapped layer, for
    /// every family, and leaves the features alone.
    #[test]
    fn tapped_layers_are_the_subsampled_layers() {
        let device = crate::backend::cpu_device();
        let vit = Backbone::Vit(
            vit::VitConfig::new()
                .with_embed_dim(16)
                .with_depth(3)
                .with_num_heads(2)
                .with_mlp_dim(32)
                .with_patch_size(8)
                .with_num_frames(4)
                .with_image_size(16)
                .init(&device),
        );
        let resnet = Backbone::ResNet(
            resnet3d::ResNet3dConfig::new()
                .with_widths(vec![4, 8])
                .with_layers(vec![1, 1])
                .init(&device),
        );
        for (name, m, layers) in [("vit", vit, vec![0, 1]), ("resnet", resnet, vec![0])] {
            let x = Tensor::<5>::random(
                [2, 3, 4, 16, 16],
                burn::tensor::Distribution::Default,
                &device,
            );
            let all = m.forward(x.clone(), &layers).unwrap();
            let taps = LayerTaps {
                layers: &layers,
                max_tokens: 5,
            };
            let kept = m.forward_tapped(x, taps).unwrap();
            let d: f32 = (kept.features - all.features).abs().max().into_scalar();
            assert_eq!(d, 0.0, "{name}: features");
            for (k, a) in kept.layers.into_iter().zip(all.layers) {
                assert!(a.dims()[1] > 5, "{name}: layer has few tokens");
                assert_eq!(k.dims()[1], 5, "{name}");
                let d: f32 = (k - subsample_tokens(a, 5)).abs().max().into_scalar();
                assert_eq!(d, 0.0, "{name}: kept tokens");
            }
        }
    }

    /// Temporal tokens: `P` features per clip, whose mean is the clip's pooled feature (every
    /// family pools a norm-free mean), tapped layers split per position, for every family.
    #[test]
    fn temporal_tokens_have_the_documented_shapes_and_average_to_the_clip_feature() {
        let device = crate::backend::cpu_device();
        let vit = Backbone::Vit(
            vit::VitConfig::new()
                .with_embed_dim(16)
                .with_depth(2)
                .with_num_heads(2)
                .with_mlp_dim(32)
                .with_patch_size(8)
                .with_num_frames(8)
                .with_image_size(16)
                .init(&device),
        );
        let swin = Backbone::Swin(
            swin::SwinConfig::new()
                .with_embed_dim(8)
                .with_depths(vec![1, 1])
                .with_num_heads(vec![1, 2])
                .with_window_size([2, 3, 3])
                .init(&device),
        );
        let resnet = Backbone::ResNet(
            resnet3d::ResNet3dConfig::new()
                .with_widths(vec![4, 8])
                .with_layers(vec![1, 1])
                .init(&device),
        );
        // (name, model, positions for 8 frames, tapped layer, its tokens per clip)
        for (name, m, p, tokens) in [
            ("vit", vit, 4, 4 * 2 * 2),
            ("swin", swin, 4, 4 * 4 * 4),
            ("resnet", resnet, 4, 8 * 8 * 8),
        ] {
            assert_eq!(m.temporal_positions(8).unwrap(), p, "{name}");
            let x = Tensor::<5>::random([3, 3, 8, 16, 16], Distribution::Default, &device);
            let clip = m.forward(x.clone(), &[0]).unwrap();
            assert_eq!(clip.positions, 1);
            let m = m.with_layout(FeatureLayout::Temporal);
            let t = m.forward(x, &[0]).unwrap();
            let c = clip.features.dims()[1];
            assert_eq!(t.positions, p, "{name}");
            assert_eq!(t.features.dims(), [3 * p, c], "{name}");
            assert_eq!(t.layers[0].dims()[..2], [3 * p, tokens / p], "{name}");
            let mean = t
                .features
                .clone()
                .reshape([3, p, c])
                .mean_dim(1)
                .reshape([3, c]);
            let d: f32 = (mean - clip.features).abs().max().into_scalar();
            assert!(d < 1e-5, "{name}: mean of positions vs clip feature {d}");
            // Narrowing counts clips.
            let one = t.clone().narrow(1, 1);
            assert_eq!(one.features.dims(), [p, c]);
            let d: f32 = (one.features - t.features.narrow(0, p, p))
                .abs()
                .max()
                .into_scalar();
            assert_eq!(d, 0.0);
        }
    }
}
