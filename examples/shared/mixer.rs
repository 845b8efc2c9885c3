//! A small MLP-Mixer defined outside the crate, made reversible through `ResidualBlock`: what a
//! user writes to apply Re2TAL to their own residual chain. Used by `examples/reversible_mixer.rs`
//! and `tests/reversible_api.rs`.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use e2e_tal::reversible::{ResidualBlock, RevChain, ReversibleTape};

/// One mixer block: token mixing across the sequence, then channel mixing, each residual.
#[derive(Module, Debug)]
pub struct MixerBlock {
    token_norm: LayerNorm,
    token_fc1: Linear,
    token_fc2: Linear,
    channel_norm: LayerNorm,
    channel_fc1: Linear,
    channel_fc2: Linear,
}

impl ResidualBlock<3> for MixerBlock {
    fn num_branches(&self) -> usize {
        2
    }

    /// # Shapes
    /// - x: `[B, T, C]` -> same
    fn branch(&self, k: usize, x: Tensor<3>) -> Tensor<3> {
        match k {
            0 => {
                let y = self.token_norm.forward(x).swap_dims(1, 2);
                let y = self.token_fc2.forward(gelu(self.token_fc1.forward(y)));
                y.swap_dims(1, 2)
            }
            _ => {
                let y = self.channel_norm.forward(x);
                self.channel_fc2.forward(gelu(self.channel_fc1.forward(y)))
            }
        }
    }
}

/// Stem (a per-token linear embedding), the mixer blocks, mean pooling and a linear classifier.
#[derive(Module, Debug)]
pub struct Mixer {
    /// Per-token embedding.
    pub stem: Linear,
    /// The residual chain.
    pub blocks: Vec<MixerBlock>,
    /// Classifier on the mean token.
    pub head: Linear,
}

impl Mixer {
    /// A mixer over `tokens` tokens of `input` features, `dim` wide, `depth` blocks deep.
    pub fn new(
        input: usize,
        tokens: usize,
        dim: usize,
        depth: usize,
        classes: usize,
        device: &Device,
    ) -> Self {
        let block = || MixerBlock {
            token_norm: LayerNormConfig::new(dim).init(device),
            token_fc1: LinearConfig::new(tokens, 2 * tokens).init(device),
            token_fc2: LinearConfig::new(2 * tokens, tokens).init(device),
            channel_norm: LayerNormConfig::new(dim).init(device),
            channel_fc1: LinearConfig::new(dim, 2 * dim).init(device),
            channel_fc2: LinearConfig::new(2 * dim, dim).init(device),
        };
        Self {
            stem: LinearConfig::new(input, dim).init(device),
            blocks: (0..depth).map(|_| block()).collect(),
            head: LinearConfig::new(dim, classes).init(device),
        }
    }

    /// The rewired network with ordinary autodiff (every activation cached): the reference.
    ///
    /// # Shapes
    /// - x: `[B, T, input]` -> `[B, classes]`
    pub fn forward_rewired(&self, x: Tensor<3>) -> Tensor<2> {
        let y = RevChain::new(self.blocks.as_slice()).forward(self.stem.forward(x));
        self.head.forward(y.mean_dim(1).squeeze_dim(1))
    }

    /// The same network with its blocks on `tape`: no block activation is kept.
    ///
    /// # Shapes
    /// - x: `[B, T, input]` -> `[B, classes]`
    pub fn forward_reversible<'a>(
        &'a self,
        x: Tensor<3>,
        tape: &mut ReversibleTape<'a>,
    ) -> Tensor<2> {
        let y = tape.forward(RevChain::new(self.blocks.as_slice()), self.stem.forward(x));
        self.head.forward(y.mean_dim(1).squeeze_dim(1))
    }
}
