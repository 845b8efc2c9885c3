//! The shapes a training step works on: how many clips of which size reach the backbone, the
//! tokens each stage of it holds, the positions the head sees, and the parameters of every
//! part, all from the configuration (no model is built, so any size can be planned).

use crate::backbone::resnet3d::{ResNet3dConfig, ResNetKind};
use crate::backbone::swin::SwinConfig;
use crate::backbone::vit::VitConfig;
use crate::data::ClipSamplingConfig;
use crate::error::{Error, Result};
use crate::train::BackboneConfig;

/// One stage of residual blocks of equal shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stage {
    /// Blocks in the stage.
    pub blocks: usize,
    /// Tokens of the whole step (clips x tokens per clip) entering each block.
    pub tokens: usize,
    /// Tokens the attention runs on (windows padded whole; = `tokens` for a ViT).
    pub attended: usize,
    /// Token width.
    pub width: usize,
    /// MLP hidden width.
    pub mlp: usize,
    /// Attention heads.
    pub heads: usize,
    /// Elements of the attention bias a shifted-window block keeps (`[1, windows x heads,
    /// vol, vol]`, f32), 0 for global attention.
    pub shifted_bias: usize,
    /// The same for an unshifted window block (`[1, heads, vol, vol]`).
    pub window_bias: usize,
    /// Scores in one query tile of the attention's tiled passes (unshifted, shifted block):
    /// `batch x heads x tile x keys`, the tile at least 64 query rows.
    pub tile: [usize; 2],
    /// Scores the fused CPU attention keeps at once (f32 on Flex): one `tile x keys` scratch
    /// per thread of the pool (unshifted, shifted block).
    pub fused_tile: [usize; 2],
    /// Parameters of one block.
    pub block_params: usize,
    /// Elements of the merging layer's input after the stage (0 when none).
    pub merge_in: usize,
    /// Parameters of that merging layer.
    pub merge_params: usize,
}

/// A backbone at one input size, as the account needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BackboneShape {
    /// Family name, for messages.
    pub family: &'static str,
    /// Transformer stages (empty for a ResNet).
    pub stages: Vec<Stage>,
    /// Convolutional stages of a ResNet: per block, (elements of its output, channels).
    pub conv_blocks: Vec<(usize, usize)>,
    /// Elements of the stem's output (the first block's input).
    pub stem_out: usize,
    /// Parameters outside the stages (stem, norms).
    pub other_params: usize,
    /// Width of the features the head reads.
    pub feature_dim: usize,
    /// Parameters of a ResNet's convolutions and norms (0 otherwise).
    pub conv_params: usize,
}

impl BackboneShape {
    /// Every parameter.
    pub fn params(&self) -> usize {
        self.other_params
            + self
                .stages
                .iter()
                .map(|s| s.blocks * s.block_params + s.merge_params)
                .sum::<usize>()
            + self.conv_params
    }
}

/// Scores of one query tile of `crate::attention`'s tiled passes for `batch x heads` queries
/// of `keys` keys (its `default_tile` rule).
fn tile(batch: usize, heads: usize, keys: usize) -> usize {
    batch * heads * keys * crate::attention::default_tile(batch, heads, keys, keys)
}

/// Scores of the fused CPU attention's per-thread scratch for the same call.
fn fused_tile(batch: usize, heads: usize, keys: usize) -> usize {
    rayon::current_num_threads() * keys * crate::attention::default_tile(batch, heads, keys, keys)
}

/// Linear layer parameters.
fn lin(i: usize, o: usize, bias: bool) -> usize {
    i * o + if bias { o } else { 0 }
}

/// `clips` clips of `frames x height x width` through `backbone`.
pub(crate) fn backbone_shape(
    backbone: &BackboneConfig,
    clips: usize,
    frames: usize,
    height: usize,
    width: usize,
) -> Result<BackboneShape> {
    match backbone {
        BackboneConfig::Vit(c) => vit(c, clips, frames, height, width),
        BackboneConfig::Swin(c) => Ok(swin(c, clips, frames, height, width)),
        BackboneConfig::ResNet(c) => Ok(resnet(c, clips, frames, height, width)),
    }
}

fn vit(c: &VitConfig, n: usize, f: usize, h: usize, w: usize) -> Result<BackboneShape> {
    let p = c.patch_size.max(1);
    let t = c.tubelet_size.max(1);
    if !f.is_multiple_of(t) || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
        return Err(Error::Config(format!(
            "vit: clips of {f} frames of {h}x{w} do not fit its {t}x{p}x{p} tubelet (frame \
             sides must be multiples of {p})"
        )));
    }
    let d = c.embed_dim;
    let tokens = n * (f / t) * (h / p) * (w / p);
    let block_params = 4 * d
        + lin(d, d, c.qkv_bias) * 2
        + lin(d, d, false)
        + lin(d, d, true)
        + lin(d, c.mlp_dim, true)
        + lin(c.mlp_dim, d, true);
    let norms = 2 * d * (usize::from(!c.use_mean_pooling) + usize::from(c.use_fc_norm));
    Ok(BackboneShape {
        family: "vit",
        stages: vec![Stage {
            blocks: c.depth,
            tokens,
            attended: tokens,
            width: d,
            mlp: c.mlp_dim,
            heads: c.num_heads,
            shifted_bias: 0,
            window_bias: 0,
            tile: [tile(n, c.num_heads, tokens / n.max(1)); 2],
            fused_tile: [fused_tile(n, c.num_heads, tokens / n.max(1)); 2],
            block_params,
            merge_in: 0,
            merge_params: 0,
        }],
        conv_blocks: Vec::new(),
        stem_out: tokens * d,
        other_params: 3 * t * p * p * d + d + norms,
        feature_dim: d,
        conv_params: 0,
    })
}

fn swin(c: &SwinConfig, n: usize, f: usize, h: usize, w: usize) -> BackboneShape {
    let [pt, ph, pw] = c.patch_size.map(|x| x.max(1));
    let mut grid = [f.div_ceil(pt), h.div_ceil(ph), w.div_ceil(pw)];
    let mut dim = c.embed_dim;
    let table: usize = c.window_size.iter().map(|&x| 2 * x - 1).product();
    let mut stages = Vec::new();
    for (i, (&depth, &heads)) in c.depths.iter().zip(&c.num_heads).enumerate() {
        // The window shrinks to the grid where the grid is smaller (and then does not shift).
        let win: Vec<usize> = (0..3).map(|a| c.window_size[a].min(grid[a])).collect();
        let shifts = (0..3).any(|a| grid[a] > c.window_size[a]);
        let padded: Vec<usize> = (0..3).map(|a| grid[a].div_ceil(win[a]) * win[a]).collect();
        let vol: usize = win.iter().product();
        let windows: usize = (0..3).map(|a| padded[a] / win[a]).product();
        let tokens = n * grid.iter().product::<usize>();
        let attended = n * padded.iter().product::<usize>();
        let mlp = (dim as f64 * c.mlp_ratio) as usize;
        let block_params = 4 * dim
            + lin(dim, 3 * dim, true)
            + lin(dim, dim, true)
            + table * heads
            + lin(dim, mlp, true)
            + lin(mlp, dim, true);
        let last = i + 1 == c.depths.len();
        let (merge_in, merge_params) = if last {
            (0, 0)
        } else {
            (tokens * dim, 2 * 4 * dim + 4 * dim * 2 * dim)
        };
        stages.push(Stage {
            blocks: depth,
            tokens,
            attended,
            width: dim,
            mlp,
            heads,
            shifted_bias: if shifts {
                windows * heads * vol * vol
            } else {
                0
            },
            window_bias: heads * vol * vol,
            // Unshifted: windows fold into the batch; shifted: into the heads.
            tile: [tile(n * windows, heads, vol), tile(n, windows * heads, vol)],
            fused_tile: [
                fused_tile(n * windows, heads, vol),
                fused_tile(n, windows * heads, vol),
            ],
            block_params,
            merge_in,
            merge_params,
        });
        if !last {
            grid = [grid[0], grid[1].div_ceil(2), grid[2].div_ceil(2)];
            dim *= 2;
        }
    }
    let stem_out = n
        * [f.div_ceil(pt), h.div_ceil(ph), w.div_ceil(pw)]
            .iter()
            .product::<usize>()
        * c.embed_dim;
    BackboneShape {
        family: "swin",
        stages,
        conv_blocks: Vec::new(),
        stem_out,
        other_params: 3 * pt * ph * pw * c.embed_dim + c.embed_dim + 2 * c.embed_dim + 2 * dim,
        feature_dim: dim,
        conv_params: 0,
    }
}

fn resnet(c: &ResNet3dConfig, n: usize, f: usize, h: usize, w: usize) -> BackboneShape {
    let conv_out = |s: usize, k: usize, stride: usize, pad: usize| (s + 2 * pad - k) / stride + 1;
    let (mut t, mut y, mut x) = (f, conv_out(h, 7, 2, 3), conv_out(w, 7, 2, 3));
    let w0 = c.widths[0];
    let mut params = match c.kind {
        ResNetKind::R3d => 3 * w0 * 3 * 49 + 4 * w0,
        ResNetKind::R2Plus1d => 3 * c.stem_mid * 49 + 4 * c.stem_mid + c.stem_mid * w0 * 3 + 4 * w0,
    };
    let stem_out = n * w0 * t * y * x;
    let mut blocks = Vec::new();
    let mut cin = w0;
    for (s, (&layers, &width)) in c.layers.iter().zip(&c.widths).enumerate() {
        for i in 0..layers {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            if stride == 2 {
                (t, y, x) = (t.div_ceil(2), y.div_ceil(2), x.div_ceil(2));
            }
            let bin = if i == 0 { cin } else { width };
            let mid = (bin * width * 27) / (bin * 9 + 3 * width);
            params += match c.kind {
                ResNetKind::R3d => bin * width * 27 + width * width * 27 + 8 * width,
                // torchvision: both factorised convolutions of a block share one mid width.
                ResNetKind::R2Plus1d => {
                    bin * mid * 9
                        + mid * width * 3
                        + width * mid * 9
                        + mid * width * 3
                        + 8 * mid
                        + 8 * width
                }
            };
            if stride != 1 || bin != width {
                params += bin * width + 4 * width;
            }
            blocks.push((n * width * t * y * x, width));
        }
        cin = width;
    }
    BackboneShape {
        family: "resnet3d",
        stages: Vec::new(),
        conv_blocks: blocks,
        stem_out,
        other_params: 0,
        feature_dim: cin,
        conv_params: params,
    }
}

/// Clips a step reads from a video of `frames` frames under `clips`, capped at `max_clips`
/// (0: no cap).
pub(crate) fn step_clips(
    clips: &ClipSamplingConfig,
    frames: usize,
    max_clips: usize,
) -> Result<usize> {
    let n = clips.num_clips("the planned video", frames)?;
    Ok(if max_clips > 0 { n.min(max_clips) } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::BackbonePreset;
    use burn::module::Module;

    /// The analytic parameter count of each family equals the built model's, at the real
    /// preset sizes (the planner's weights, gradients and optimizer state rest on it).
    #[test]
    fn parameter_counts_equal_the_built_models() {
        let device = crate::backend::cpu_device();
        for preset in [
            BackbonePreset::VitS,
            BackbonePreset::VitB,
            BackbonePreset::SwinT,
            BackbonePreset::R3d18,
            BackbonePreset::R2Plus1d18,
        ] {
            let cfg = BackboneConfig::preset(preset);
            let shape = backbone_shape(&cfg, 1, 16, 112, 112).unwrap();
            let built = cfg.init(&device).num_params();
            assert_eq!(shape.params(), built, "{}", preset.name());
        }
    }

    /// Token counts per stage: a ViT's tubelets; Swin's windows padded whole and halved sides.
    #[test]
    fn stage_tokens_follow_the_patching() {
        let vit = backbone_shape(
            &BackboneConfig::preset(BackbonePreset::VitB),
            48,
            16,
            160,
            160,
        )
        .unwrap();
        assert_eq!(vit.stages.len(), 1);
        assert_eq!(vit.stages[0].tokens, 48 * 8 * 10 * 10);
        assert_eq!(vit.stages[0].blocks, 12);
        let swin = backbone_shape(
            &BackboneConfig::preset(BackbonePreset::SwinT),
            2,
            16,
            224,
            224,
        )
        .unwrap();
        let tokens: Vec<usize> = swin.stages.iter().map(|s| s.tokens).collect();
        assert_eq!(
            tokens,
            vec![
                2 * 8 * 56 * 56,
                2 * 8 * 28 * 28,
                2 * 8 * 14 * 14,
                2 * 8 * 7 * 7
            ]
        );
        assert!(swin.stages.iter().all(|s| s.attended >= s.tokens));
        assert!(
            backbone_shape(
                &BackboneConfig::preset(BackbonePreset::VitB),
                1,
                16,
                150,
                160
            )
            .is_err()
        );
    }
}
