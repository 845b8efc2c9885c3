//! Multi-head cross-attention of the adapters: the parameters of `burn::nn`'s
//! `MultiHeadAttention` (`query`, `key`, `value`, `output`, so records load unchanged), computed
//! by the crate's memory-efficient [`attention`](crate::attention::attention).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor};

use crate::attention::attention;
use crate::precision::{cast, linear, up};

/// Added to the scores of padded keys: their softmax weight underflows to exactly 0 in f32
/// whenever a row has one valid key.
const PAD_BIAS: f64 = -1e4;

/// Configuration of a [`CrossAttention`].
#[derive(Config, Debug)]
pub struct CrossAttentionConfig {
    /// Model width (queries, keys, values and output).
    pub d_model: usize,
    /// Heads (`d_model` must be a multiple).
    pub num_heads: usize,
    /// Dropout on the attention weights, in training. With a positive rate the weights are
    /// materialised (dropout needs them); at 0 (default) attention never keeps a score matrix.
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl CrossAttentionConfig {
    /// A module with Burn's default `Linear` initialisation.
    pub fn init(&self, device: &Device) -> CrossAttention {
        let linear = || LinearConfig::new(self.d_model, self.d_model).init(device);
        CrossAttention {
            query: linear(),
            key: linear(),
            value: linear(),
            output: linear(),
            dropout: DropoutConfig::new(self.dropout).init(),
            num_heads: self.num_heads,
        }
    }
}

/// Multi-head attention of queries over a (padded) memory.
#[derive(Module, Debug)]
pub struct CrossAttention {
    /// Query projection.
    pub query: Linear,
    /// Key projection.
    pub key: Linear,
    /// Value projection.
    pub value: Linear,
    /// Output projection.
    pub output: Linear,
    /// Dropout on the attention weights.
    pub dropout: Dropout,
    /// Heads.
    pub num_heads: usize,
}

impl CrossAttention {
    /// # Shapes
    /// - query `[B, Q, D]`, memory `[B, M, D]`, pad `[B | 1, M]` (true = padded) -> `[B, Q, D]`
    pub fn forward(&self, query: Tensor<3>, memory: Tensor<3>, pad: Tensor<2, Bool>) -> Tensor<3> {
        let [b, nq, d] = query.dims();
        let m = memory.dims()[1];
        let h = self.num_heads;
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, n, h, d / h]).swap_dims(1, 2);
        // Projections in the inputs' precision (the autocast one in mixed precision).
        let q = heads(linear(&self.query, query), nq);
        let k = heads(linear(&self.key, memory.clone()), m);
        let v = heads(linear(&self.value, memory), m);
        let bias = (pad.float() * PAD_BIAS)
            .unsqueeze_dim::<3>(1)
            .unsqueeze_dim::<4>(1);
        let scale = ((d / h) as f64).powf(-0.5);
        let ctx = if self.dropout.prob > 0.0 && q.is_require_grad() {
            // Scores, bias and softmax in f32 (as the memory-efficient attention does).
            let scores = up((q * scale).matmul(k.swap_dims(2, 3))) + bias;
            let dtype = v.dtype();
            cast(self.dropout.forward(softmax(scores, 3)), dtype).matmul(v)
        } else {
            attention(q, k, v, Some(bias), scale)
        };
        linear(&self.output, ctx.swap_dims(1, 2).reshape([b, nq, d]))
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::attention::{MhaInput, MultiHeadAttentionConfig};
    use burn::tensor::{Distribution, TensorData};

    use super::*;

    /// Same parameters, same output as `burn::nn::attention::MultiHeadAttention` with a padding
    /// mask (which the record layout lets checkpoints rely on).
    #[test]
    fn equals_burn_multi_head_attention() {
        let device = crate::backend::cpu_device();
        let mha = MultiHeadAttentionConfig::new(16, 4)
            .with_dropout(0.0)
            .init(&device);
        let ours = CrossAttention {
            query: mha.query.clone(),
            key: mha.key.clone(),
            value: mha.value.clone(),
            output: mha.output.clone(),
            dropout: DropoutConfig::new(0.0).init(),
            num_heads: 4,
        };
        let q = Tensor::<3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        let m = Tensor::<3>::random([2, 7, 16], Distribution::Normal(0.0, 1.0), &device);
        let pad = Tensor::<2, Bool>::from_data(
            TensorData::new(
                vec![
                    false, false, false, false, true, true, true, false, false, false, false,
                    false, false, false,
                ],
                [2, 7],
            ),
            &device,
        );
        let want = mha
            .forward(MhaInput::new(q.clone(), m.clone(), m.clone()).mask_pad(pad.clone()))
            .context;
        let got = ours.forward(q, m, pad);
        let diff = (got - want).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "max |diff| {diff}");
    }
}
