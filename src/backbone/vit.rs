//! VideoMAE / VideoMAEv2 vision transformer (Tong et al. 2022; Wang et al. 2023): tubelet
//! embedding, fixed sinusoidal positions, pre-norm blocks whose attention and MLP are separate
//! residual branches. Numerics follow Hugging Face `transformers`' `VideoMAEModel`.

use crate::attention::attention;
use crate::norm::{LayerNorm, LayerNormConfig};
use crate::precision::{compute, linear, up};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};

use super::residual::MlpBranch;
use super::residual::{ResidualBranch, TransformerBlock, drop_path, drop_path_schedule};
use super::{BackboneOutput, FeatureLayout, LayerTaps, VideoBackbone, check_input};
use crate::error::Result;

/// Published VideoMAE / VideoMAEv2 sizes.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum VitPreset {
    /// ViT-S: 384 wide, 12 blocks, 6 heads.
    Small,
    /// ViT-B: 768 wide, 12 blocks, 12 heads.
    Base,
    /// ViT-L: 1024 wide, 24 blocks, 16 heads.
    Large,
    /// ViT-H: 1280 wide, 32 blocks, 16 heads.
    Huge,
    /// ViT-g (VideoMAEv2): 1408 wide, 40 blocks, 16 heads, MLP 6144, 14-pixel patches.
    Giant,
}

/// Vision transformer settings (defaults: ViT-B, 16 frames of 224x224, as in VideoMAE).
#[derive(Config, Debug)]
pub struct VitConfig {
    /// Token width.
    #[config(default = 768)]
    pub embed_dim: usize,
    /// Number of blocks.
    #[config(default = 12)]
    pub depth: usize,
    /// Attention heads.
    #[config(default = 12)]
    pub num_heads: usize,
    /// MLP hidden width.
    #[config(default = 3072)]
    pub mlp_dim: usize,
    /// Spatial patch size.
    #[config(default = 16)]
    pub patch_size: usize,
    /// Frames per tubelet.
    #[config(default = 2)]
    pub tubelet_size: usize,
    /// Frames per clip the position table is made for.
    #[config(default = 16)]
    pub num_frames: usize,
    /// Frame size the position table is made for.
    #[config(default = 224)]
    pub image_size: usize,
    /// Bias on queries and values (none on keys), VideoMAE's layout.
    #[config(default = true)]
    pub qkv_bias: bool,
    /// LayerNorm epsilon (`transformers` uses 1e-12; the original VideoMAE code 1e-6).
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// VideoMAE's mean-pooling layout: no final LayerNorm on the tokens (`transformers`
    /// `VideoMAEModel` with `use_mean_pooling`). Otherwise a final `norm` is applied.
    #[config(default = true)]
    pub use_mean_pooling: bool,
    /// LayerNorm on the mean-pooled feature (`fc_norm`, present in classification checkpoints).
    #[config(default = false)]
    pub use_fc_norm: bool,
    /// Stochastic depth of the last block (linearly increasing from 0).
    #[config(default = 0.0)]
    pub drop_path_rate: f64,
}

impl VitConfig {
    /// The configuration of a published size.
    pub fn preset(p: VitPreset) -> Self {
        let (d, depth, heads, mlp) = match p {
            VitPreset::Small => (384, 12, 6, 1536),
            VitPreset::Base => (768, 12, 12, 3072),
            VitPreset::Large => (1024, 24, 16, 4096),
            VitPreset::Huge => (1280, 32, 16, 5120),
            VitPreset::Giant => (1408, 40, 16, 6144),
        };
        // VideoMAEv2's ViT-g uses 14-pixel patches (a 16x16 grid at 224).
        let patch = if p == VitPreset::Giant { 14 } else { 16 };
        Self::new()
            .with_embed_dim(d)
            .with_depth(depth)
            .with_num_heads(heads)
            .with_mlp_dim(mlp)
            .with_patch_size(patch)
    }

    /// Build the model.
    pub fn init(&self, device: &Device) -> VisionTransformer {
        let d = self.embed_dim;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let blocks = drop_path_schedule(self.drop_path_rate, self.depth)
            .into_iter()
            .map(|dp| VitBlock {
                attn: AttentionBranch {
                    norm: ln(),
                    query: lin(d, d, self.qkv_bias),
                    key: lin(d, d, false),
                    value: lin(d, d, self.qkv_bias),
                    proj: lin(d, d, true),
                    num_heads: self.num_heads,
                    drop_path: dp,
                },
                mlp: MlpBranch {
                    norm: ln(),
                    fc1: lin(d, self.mlp_dim, true),
                    fc2: lin(self.mlp_dim, d, true),
                    drop_path: dp,
                },
            })
            .collect();
        VisionTransformer {
            patch_embed: Conv3dConfig::new(
                [3, d],
                [self.tubelet_size, self.patch_size, self.patch_size],
            )
            .with_stride([self.tubelet_size, self.patch_size, self.patch_size])
            .init(device),
            blocks,
            norm: (!self.use_mean_pooling).then(ln),
            fc_norm: self.use_fc_norm.then(ln),
            embed_dim: d,
            patch_size: self.patch_size,
            tubelet_size: self.tubelet_size,
            pos_grid: [
                self.num_frames / self.tubelet_size,
                self.image_size / self.patch_size,
                self.image_size / self.patch_size,
            ],
            layout: FeatureLayout::Clip,
        }
    }
}

/// Attention branch: `proj(attn(norm(x)))`.
#[derive(Module, Debug)]
pub struct AttentionBranch {
    /// Pre-norm (`layernorm_before`).
    pub norm: LayerNorm,
    /// Query projection (biased when `qkv_bias`; older checkpoints call the bias `q_bias`).
    pub query: Linear,
    /// Key projection (never biased).
    pub key: Linear,
    /// Value projection (biased when `qkv_bias`; `v_bias` in older checkpoints).
    pub value: Linear,
    /// Output projection.
    pub proj: Linear,
    /// Attention heads.
    pub num_heads: usize,
    /// Stochastic depth probability.
    pub drop_path: f64,
}

impl ResidualBranch<3> for AttentionBranch {
    /// # Shapes
    /// - x: `[B, L, D]` -> `[B, L, D]`
    fn branch(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, d] = x.dims();
        let h = self.num_heads;
        // Norm in f32, the rest in the autocast precision, the output back in f32.
        let x = self.norm.forward_as(x, compute().dtype());
        let heads = |t: Tensor<3>| t.reshape([b, l, h, d / h]).swap_dims(1, 2);
        let q = heads(linear(&self.query, x.clone()));
        let k = heads(linear(&self.key, x.clone()));
        let v = heads(linear(&self.value, x));
        let scale = ((d / h) as f64).powf(-0.5);
        let out = attention(q, k, v, None, scale)
            .swap_dims(1, 2)
            .reshape([b, l, d]);
        up(drop_path(linear(&self.proj, out), self.drop_path))
    }
}

/// One ViT block: global attention, then the MLP, each residual.
pub type VitBlock = TransformerBlock<AttentionBranch>;

/// The VideoMAE vision transformer.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// Tubelet embedding (`Conv3d`, kernel = stride = tubelet x patch x patch).
    pub patch_embed: Conv3d,
    /// The residual chain.
    pub blocks: Vec<VitBlock>,
    /// Final token norm (only without mean pooling).
    pub norm: Option<LayerNorm>,
    /// Norm of the mean-pooled feature (when configured).
    pub fc_norm: Option<LayerNorm>,
    /// Token width.
    pub embed_dim: usize,
    /// Spatial patch size.
    pub patch_size: usize,
    /// Frames per tubelet.
    pub tubelet_size: usize,
    /// Token grid `[T', H', W']` the sinusoid table is defined on.
    pub pos_grid: [usize; 3],
    /// How the last layer is pooled into features (not a parameter: set by the run).
    #[module(skip)]
    pub layout: FeatureLayout,
}

/// VideoMAE's sinusoid table for `n` positions (`[n, d]`, row-major, f64).
fn sinusoid_table(n: usize, d: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * d];
    for p in 0..n {
        for j in 0..d {
            let angle = p as f64 / 10000f64.powf(2.0 * (j / 2) as f64 / d as f64);
            t[p * d + j] = if j % 2 == 0 { angle.sin() } else { angle.cos() };
        }
    }
    t
}

/// Linear interpolation of a `[T, H, W, D]` table to another grid (align_corners = false),
/// separably along each axis, as VideoMAEv2 / AdaTAD resize position tables.
fn resize_table(table: &[f64], from: [usize; 3], to: [usize; 3], d: usize) -> Vec<f64> {
    let mut cur = table.to_vec();
    let mut shape = from;
    for axis in 0..3 {
        if shape[axis] == to[axis] {
            continue;
        }
        let mut next_shape = shape;
        next_shape[axis] = to[axis];
        let n_out: usize = next_shape.iter().product::<usize>() * d;
        let mut out = vec![0.0; n_out];
        let strides = |s: [usize; 3]| [s[1] * s[2] * d, s[2] * d, d];
        let (si, so) = (strides(shape), strides(next_shape));
        let scale = shape[axis] as f64 / to[axis] as f64;
        for t in 0..next_shape[0] {
            for h in 0..next_shape[1] {
                for w in 0..next_shape[2] {
                    let idx = [t, h, w];
                    let src = ((idx[axis] as f64 + 0.5) * scale - 0.5).max(0.0);
                    let i0 = (src.floor() as usize).min(shape[axis] - 1);
                    let i1 = (i0 + 1).min(shape[axis] - 1);
                    let frac = src - i0 as f64;
                    let (mut a, mut b) = (idx, idx);
                    a[axis] = i0;
                    b[axis] = i1;
                    let oa = a[0] * si[0] + a[1] * si[1] + a[2] * si[2];
                    let ob = b[0] * si[0] + b[1] * si[1] + b[2] * si[2];
                    let o = t * so[0] + h * so[1] + w * so[2];
                    for c in 0..d {
                        out[o + c] = cur[oa + c] * (1.0 - frac) + cur[ob + c] * frac;
                    }
                }
            }
        }
        cur = out;
        shape = next_shape;
    }
    cur
}

impl VisionTransformer {
    /// Position embedding for a token grid (`[1, L, D]`): the sinusoid table on the configured
    /// grid, resized when the input's grid differs.
    fn position_embedding(&self, grid: [usize; 3], device: &Device) -> Tensor<3> {
        let d = self.embed_dim;
        let n0: usize = self.pos_grid.iter().product();
        let mut table = sinusoid_table(n0, d);
        if grid != self.pos_grid {
            table = resize_table(&table, self.pos_grid, grid, d);
        }
        let n: usize = grid.iter().product();
        let data: Vec<f32> = table.into_iter().map(|x| x as f32).collect();
        Tensor::from_data(TensorData::new(data, [1, n, d]), device)
    }

    /// Tokens after the patch embedding and positions.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, L, D]`, `L = F/tubelet * H/patch * W/patch`
    pub fn embed(&self, clips: Tensor<5>) -> Tensor<3> {
        let x = super::patches::patch_embedding(&self.patch_embed, clips);
        let [n, t, h, w, d] = x.dims();
        let x = x.reshape([n, t * h * w, d]);
        x + self.position_embedding([t, h, w], &self.device_of())
    }

    fn device_of(&self) -> Device {
        self.patch_embed.weight.val().device()
    }

    /// The last layer before pooling: the tokens after the last block (and the final norm when
    /// configured).
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> `[N, L, D]`
    pub fn forward_unpooled(&self, clips: Tensor<5>) -> Result<Tensor<3>> {
        Ok(self.forward_with(clips, &[], 0)?.tokens)
    }

    /// Final norm (if any), mean over tokens (over all of a clip's, or per temporal position
    /// with [`FeatureLayout::Temporal`]), `fc_norm` (if any): block output to features, for
    /// clips of `frames` frames.
    ///
    /// # Shapes
    /// - tokens: `[N, L, D]` (output of the last block) -> `[N * P, D]`
    pub fn pool(&self, tokens: Tensor<3>, frames: usize) -> Tensor<2> {
        let tokens = match &self.norm {
            Some(n) => n.forward(tokens),
            None => tokens,
        };
        self.pool_tokens(tokens, frames / self.tubelet_size)
    }

    fn pool_tokens(&self, tokens: Tensor<3>, t: usize) -> Tensor<2> {
        let [n, l, d] = tokens.dims();
        let (pooled, _) = super::pool_layout(tokens.reshape([n, t, l / t, d]), self.layout);
        match &self.fc_norm {
            Some(n) => n.forward(pooled),
            None => pooled,
        }
    }

    /// Check a clip batch fits the tubelet grid.
    pub(crate) fn check_clips(&self, clips: &Tensor<5>) -> Result<()> {
        let [_, _, f, h, w] = check_input("vit", clips)?;
        let p = self.patch_size;
        if f % self.tubelet_size != 0 || h % p != 0 || w % p != 0 || f == 0 || h == 0 {
            return Err(crate::Error::Shape {
                what: "vit clips".into(),
                expected: format!(
                    "[N, 3, F, H, W] with F, H, W positive multiples of the {}x{p}x{p} tubelet",
                    self.tubelet_size
                ),
                got: clips.dims().to_vec(),
            });
        }
        Ok(())
    }

    fn forward_with(
        &self,
        clips: Tensor<5>,
        layers: &[usize],
        max_tokens: usize,
    ) -> Result<TokenOutput> {
        self.check_clips(&clips)?;
        super::check_layers("vit", layers, self.blocks.len())?;
        let t = clips.dims()[2] / self.tubelet_size;
        let mut x = self.embed(clips);
        let mut kept = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(x);
            if layers.contains(&i) {
                kept.push(super::tap_tokens(
                    "vit",
                    x.clone(),
                    self.layout,
                    t,
                    max_tokens,
                )?);
            }
        }
        if let Some(n) = &self.norm {
            x = n.forward(x);
        }
        Ok(TokenOutput {
            tokens: x,
            layers: kept,
            t,
        })
    }
}

struct TokenOutput {
    tokens: Tensor<3>,
    layers: Vec<Tensor<3>>,
    /// Temporal positions.
    t: usize,
}

impl VideoBackbone for VisionTransformer {
    /// Per-clip features and the tapped blocks' output tokens.
    ///
    /// # Shapes
    /// - clips: `[N, 3, F, H, W]` -> features `[N * P, D]`, layers `[N * P, L / P, D]`
    ///   (`P = F / tubelet` with temporal tokens, else 1)
    fn forward_tapped(&self, clips: Tensor<5>, taps: LayerTaps<'_>) -> Result<BackboneOutput> {
        let out = self.forward_with(clips, taps.layers, taps.max_tokens)?;
        Ok(BackboneOutput {
            features: self.pool_tokens(out.tokens, out.t),
            layers: out.layers,
            positions: match self.layout {
                FeatureLayout::Clip => 1,
                FeatureLayout::Temporal => out.t,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_table_matches_videomae_formula() {
        let t = sinusoid_table(3, 4);
        // position 2, dim 1: cos(2 / 10000^(0/4)) ; dim 2: sin(2 / 10000^(2/4)).
        assert!((t[2 * 4 + 1] - 2f64.cos()).abs() < 1e-15);
        assert!((t[2 * 4 + 2] - (2.0 / 100.0f64).sin()).abs() < 1e-15);
    }

    #[test]
    fn resize_is_identity_on_same_grid_and_exact_on_constant_tables() {
        let table: Vec<f64> = (0..2 * 3 * 3 * 2).map(|i| i as f64).collect();
        assert_eq!(resize_table(&table, [2, 3, 3], [2, 3, 3], 2), table);
        let ones = vec![1.0; 2 * 2 * 2 * 3];
        let r = resize_table(&ones, [2, 2, 2], [4, 3, 5], 3);
        assert_eq!(r.len(), 4 * 3 * 5 * 3);
        assert!(r.iter().all(|&x| (x - 1.0).abs() < 1e-12));
    }

    #[test]
    fn shapes_and_other_resolutions() {
        let device = crate::backend::cpu_device();
        let cfg = VitConfig::new()
            .with_embed_dim(16)
            .with_depth(3)
            .with_num_heads(2)
            .with_mlp_dim(32)
            .with_patch_size(8)
            .with_num_frames(4)
            .with_image_size(32);
        let m = cfg.init(&device);
        let x = Tensor::<5>::random(
            [3, 3, 4, 32, 32],
            burn::tensor::Distribution::Default,
            &device,
        );
        let out = m.forward(x, &[0, 1]).unwrap();
        assert_eq!(out.features.dims(), [3, 16]);
        assert_eq!(out.layers.len(), 2);
        assert_eq!(out.layers[0].dims(), [3, 2 * 4 * 4, 16]);
        // Another frame count and resolution: the position table is resized.
        let x = Tensor::<5>::zeros([1, 3, 8, 48, 48], &device);
        assert_eq!(m.forward(x, &[]).unwrap().features.dims(), [1, 16]);
        let bad = Tensor::<5>::zeros([1, 3, 3, 32, 32], &device);
        assert!(m.forward(bad, &[]).is_err());
        assert!(
            m.forward(Tensor::<5>::zeros([1, 3, 4, 32, 32], &device), &[7])
                .is_err()
        );
    }
}
