//! Video backbones, each an explicit chain of residual modules (see [`residual`]):
//! VideoMAE ViT ([`vit`]), 3-D ResNets ([`resnet3d`]) and Video Swin ([`swin`]).

pub mod residual;
pub mod resnet3d;
pub mod swin;
pub mod vit;

use burn::tensor::Tensor;

use crate::error::{Error, Result};

/// What a backbone returns for a batch of clips.
#[derive(Debug, Clone)]
pub struct BackboneOutput {
    /// One feature vector per clip, `[N, C]`.
    pub features: Tensor<2>,
    /// Outputs of the requested layers, as token sequences `[N, L, C_l]`.
    pub intermediates: Vec<Tensor<3>>,
}

/// Check a clip batch is `[N, 3, F, H, W]` with `N > 0`.
pub(crate) fn check_input(name: &str, clips: &Tensor<5>) -> Result<[usize; 5]> {
    let dims = clips.dims();
    if dims[1] != 3 || dims[0] == 0 {
        return Err(Error::Config(format!(
            "{name}: expected clips [N, 3, F, H, W] with N > 0, got {dims:?}"
        )));
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
