//! LoSA (Gupta et al. 2024): long-short range adapters on a frozen, graph-free backbone.
//!
//! For every chosen backbone layer `l`:
//! - the *short-range* adapter cross-attends from layer `l`'s spatio-temporal tokens of a clip
//!   (queries) to the last layer's per-clip features of the whole video (keys/values), and
//!   pools the result to one vector per clip;
//! - the *long-range* adapter cross-attends from layer `l`'s per-clip pooled features over the
//!   whole video (queries) to the same last-layer features.
//!
//! A gated fusion adds each adapter output, mapped back to the backbone width and scaled by a
//! learnable gate, to the last layer's features, then projects to the head's input width. The
//! gates start at zero, so training starts exactly at the head-only model.
//!
//! Memory: the intermediate features kept are `clips x layers x tokens x width` floats, without
//! any graph; `max_tokens` bounds the tokens per clip (uniform subsampling), so at most
//! `clips x layers x max_tokens x width` are held.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Tensor};

use crate::error::{Error, Result};

/// LoSA settings (the paper leaves widths and heads open; these defaults follow DESIGN §3).
#[derive(Config, Debug)]
pub struct LosaConfig {
    /// Width of the last layer's per-clip features (the backbone width).
    pub feature_dim: usize,
    /// Width of each adapted layer's tokens, in layer order.
    pub layer_dims: Vec<usize>,
    /// Adapter width; `0` means `feature_dim / 4`.
    #[config(default = 0)]
    pub adapter_dim: usize,
    /// Cross-attention heads.
    #[config(default = 8)]
    pub num_heads: usize,
    /// Most tokens per clip the short-range adapters read (uniformly subsampled beyond).
    #[config(default = 64)]
    pub max_tokens: usize,
    /// Initial value of every gate (0: start at the head-only model).
    #[config(default = 0.0)]
    pub gate_init: f64,
    /// Start each adapter's output projection at zero (LoRA / ControlNet style) instead of at
    /// zero gates: the fused features still equal the last layer's at the start, but the
    /// adapters get gradients from the first step (with zero gates they get none until the
    /// gates move). Use with a non-zero `gate_init` (e.g. 1).
    #[config(default = false)]
    pub zero_init_output: bool,
    /// Width of the fused output; `None` keeps `feature_dim` with no projection, so fused
    /// features equal the last layer's while the gates are zero.
    #[config(default = "None")]
    pub output_dim: Option<usize>,
    /// Attention dropout.
    #[config(default = 0.0)]
    pub dropout: f64,
}

/// One range (short or long) of adapters for one layer.
#[derive(Module, Debug)]
pub struct RangeAdapter {
    /// Layer tokens to adapter width.
    pub query_in: Linear,
    /// Last-layer features to adapter width.
    pub memory_in: Linear,
    /// Cross-attention.
    pub attn: MultiHeadAttention,
    /// Back to the backbone width.
    pub out: Linear,
    /// Fusion gate.
    pub gate: Param<Tensor<1>>,
}

impl RangeAdapter {
    fn new(cfg: &LosaConfig, layer_dim: usize, device: &Device) -> Self {
        let a = cfg.adapter_dim_resolved();
        Self {
            query_in: LinearConfig::new(layer_dim, a).init(device),
            memory_in: LinearConfig::new(cfg.feature_dim, a).init(device),
            attn: MultiHeadAttentionConfig::new(a, cfg.num_heads)
                .with_dropout(cfg.dropout)
                .init(device),
            out: if cfg.zero_init_output {
                LinearConfig::new(a, cfg.feature_dim)
                    .with_initializer(Initializer::Zeros)
                    .init(device)
            } else {
                LinearConfig::new(a, cfg.feature_dim).init(device)
            },
            gate: Param::from_tensor(Tensor::full([1], cfg.gate_init, device)),
        }
    }

    /// Cross-attend `query` `[B, Q, C_l]` to `memory` `[B, M, C]` (padding mask `[B, M]`, true =
    /// padded); returns `[B, Q, C]`.
    fn attend(&self, query: Tensor<3>, memory: Tensor<3>, pad: Tensor<2, Bool>) -> Tensor<3> {
        let q = self.query_in.forward(query);
        let m = self.memory_in.forward(memory);
        let ctx = self
            .attn
            .forward(MhaInput::new(q, m.clone(), m).mask_pad(pad))
            .context;
        self.out.forward(ctx)
    }
}

/// Short- and long-range adapters of every chosen layer, and the fusion.
#[derive(Module, Debug)]
pub struct Losa {
    /// Short-range adapters, one per layer.
    pub short: Vec<RangeAdapter>,
    /// Long-range adapters, one per layer.
    pub long: Vec<RangeAdapter>,
    /// Projection to the head's width (absent: identity).
    pub output: Option<Linear>,
    /// Token budget per clip.
    pub max_tokens: usize,
}

impl LosaConfig {
    fn adapter_dim_resolved(&self) -> usize {
        if self.adapter_dim == 0 {
            (self.feature_dim / 4).max(1)
        } else {
            self.adapter_dim
        }
    }

    /// Build the adapters.
    pub fn init(&self, device: &Device) -> Result<Losa> {
        let a = self.adapter_dim_resolved();
        if !a.is_multiple_of(self.num_heads) {
            return Err(Error::Config(format!(
                "LoSA adapter width {a} is not divisible by {} heads",
                self.num_heads
            )));
        }
        Ok(Losa {
            short: self
                .layer_dims
                .iter()
                .map(|&d| RangeAdapter::new(self, d, device))
                .collect(),
            long: self
                .layer_dims
                .iter()
                .map(|&d| RangeAdapter::new(self, d, device))
                .collect(),
            output: self
                .output_dim
                .map(|o| LinearConfig::new(self.feature_dim, o).init(device)),
            max_tokens: self.max_tokens,
        })
    }
}

/// The backbone's (detached) outputs for all clips of one video.
#[derive(Debug, Clone)]
pub struct LosaInput {
    /// Last layer's per-clip features, `[N, C]`.
    pub features: Tensor<2>,
    /// Chosen layers' tokens, `[N, L_l, C_l]` each.
    pub layers: Vec<Tensor<3>>,
    /// `[N]`, true for real clips (false for padding).
    pub valid: Tensor<1, Bool>,
}

impl Losa {
    /// Keep at most `max_tokens` tokens per clip, uniformly spaced.
    fn subsample(&self, tokens: Tensor<3>) -> Tensor<3> {
        crate::backbone::subsample_tokens(tokens, self.max_tokens)
    }

    /// Fused per-clip features for the head. Inputs must carry no graph into the backbone
    /// (they are detached here in any case).
    ///
    /// # Shapes
    /// - `input.features`: `[N, C]`, `input.layers[l]`: `[N, L_l, C_l]`, `input.valid`: `[N]`
    /// - output: `[N, C]` or `[N, output_dim]`
    pub fn forward(&self, input: LosaInput) -> Result<Tensor<2>> {
        let [n, c] = input.features.dims();
        if input.layers.len() != self.short.len() || input.valid.dims() != [n] {
            return Err(Error::Config(format!(
                "LoSA: {} layers and a mask of {:?} given, {} layers and [{n}] expected",
                input.layers.len(),
                input.valid.dims(),
                self.short.len()
            )));
        }
        // No gradient may enter the backbone.
        let last = input.features.detach();
        let memory = last.clone().unsqueeze_dim::<3>(0); // [1, N, C]
        let pad = input.valid.clone().bool_not().unsqueeze_dim::<2>(0); // [1, N]
        let mut fused = last;
        for ((short, long), layer) in self.short.iter().zip(&self.long).zip(input.layers) {
            let [ln, _, _] = layer.dims();
            if ln != n {
                return Err(Error::Config(format!(
                    "LoSA: layer has {ln} clips, features {n}"
                )));
            }
            let tokens = self.subsample(layer.detach());
            // Short range: each clip's tokens attend to the whole video's last-layer features.
            let mem = memory.clone().expand([n as i64, n as i64, c as i64]);
            let pad_n = pad.clone().expand([n as i64, n as i64]);
            let s = short
                .attend(tokens.clone(), mem, pad_n)
                .mean_dim(1)
                .reshape([n, c]);
            // Long range: the video's pooled layer features attend to the same memory.
            let pooled = tokens.mean_dim(1).swap_dims(0, 1); // [1, N, C_l]
            let g = long
                .attend(pooled, memory.clone(), pad.clone())
                .reshape([n, c]);
            fused =
                fused + s * short.gate.val().reshape([1, 1]) + g * long.gate.val().reshape([1, 1]);
        }
        Ok(match &self.output {
            Some(p) => p.forward(fused),
            None => fused,
        })
    }
}

impl Losa {
    /// Gate values `(short, long)` per adapted layer, in layer order.
    pub fn gates(&self) -> Vec<(f32, f32)> {
        let v = |g: &Param<Tensor<1>>| g.val().into_scalar::<f32>();
        self.short
            .iter()
            .zip(&self.long)
            .map(|(s, l)| (v(&s.gate), v(&l.gate)))
            .collect()
    }

    /// The same adapters with every gate set to `value` (0: the fused features are the last
    /// layer's again, an ablation of what the adapters add to a trained model).
    pub fn with_gates(mut self, value: f64) -> Self {
        for a in self.short.iter_mut().chain(self.long.iter_mut()) {
            let g = a.gate.val();
            a.gate = Param::from_tensor(g.zeros_like().add_scalar(value));
        }
        self
    }

    /// Number of parameter tensors (for tests and reports).
    pub fn num_params_tensors(&self) -> usize {
        struct Count(usize);
        impl burn::module::ModuleVisitor for Count {
            fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
                self.0 += 1;
            }
        }
        let mut c = Count(0);
        self.visit(&mut c);
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn input(n: usize, valid: usize, device: &Device) -> LosaInput {
        LosaInput {
            features: Tensor::random([n, 16], Distribution::Normal(0.0, 1.0), device),
            layers: vec![
                Tensor::random([n, 10, 8], Distribution::Normal(0.0, 1.0), device),
                Tensor::random([n, 100, 12], Distribution::Normal(0.0, 1.0), device),
            ],
            valid: Tensor::from_data(
                burn::tensor::TensorData::new((0..n).map(|i| i < valid).collect::<Vec<_>>(), [n]),
                device,
            ),
        }
    }

    fn cfg() -> LosaConfig {
        LosaConfig::new(16, vec![8, 12])
            .with_num_heads(2)
            .with_max_tokens(32)
    }

    #[test]
    fn zero_gates_reproduce_head_only_features_and_odd_padded_shapes_work() {
        let device = crate::backend::cpu_device();
        let losa = cfg().init(&device).unwrap();
        for (n, valid) in [(7, 7), (5, 3), (1, 1)] {
            let x = input(n, valid, &device);
            let fused = losa.forward(x.clone()).unwrap();
            assert_eq!(fused.dims(), [n, 16]);
            let d: f32 = (fused - x.features).abs().max().into_scalar();
            assert_eq!(d, 0.0, "gates at zero: fused == last-layer features");
        }
        // Zero output projections with open gates start at the head-only model too.
        let zero_out = cfg()
            .with_zero_init_output(true)
            .with_gate_init(1.0)
            .init(&device)
            .unwrap();
        let x = input(5, 3, &device);
        let d: f32 = (zero_out.forward(x.clone()).unwrap() - x.features)
            .abs()
            .max()
            .into_scalar();
        assert_eq!(
            d, 0.0,
            "zero output projections: fused == last-layer features"
        );
        let proj = cfg().with_output_dim(Some(24)).init(&device).unwrap();
        assert_eq!(proj.forward(input(3, 3, &device)).unwrap().dims(), [3, 24]);
        let bad = LosaInput {
            layers: vec![],
            ..input(3, 3, &device)
        };
        assert!(losa.forward(bad).is_err());
    }

    #[test]
    fn adapters_train_and_no_gradient_reaches_the_backbone() {
        let device = crate::backend::cpu_device().autodiff();
        let losa = cfg().with_gate_init(0.1).init(&device).unwrap();
        // Backbone outputs: made on the autodiff device with a graph, as a careless caller
        // might pass them; LoSA must cut it.
        let src =
            Tensor::<2>::random([4, 16], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let mut x = input(4, 4, &device);
        x.features = src.clone() * 2.0;
        let loss = losa.forward(x).unwrap().powf_scalar(2.0).mean();
        let grads = loss.backward();
        assert!(
            src.grad(&grads).is_none(),
            "a gradient reached the backbone side"
        );
        let g = burn::optim::GradientsParams::from_grads(grads, &losa);
        // Every adapter parameter gets a gradient (gates non-zero).
        assert_eq!(g.len(), losa.num_params_tensors());
    }
}
