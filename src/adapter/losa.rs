//! LoSA (Gupta et al. 2024): long-short range adapters on a frozen, graph-free backbone.
//!
//! For every chosen backbone layer `l`:
//! - the *short-range* adapter cross-attends from layer `l`'s spatio-temporal tokens of a clip
//!   (queries) to the last layer's per-clip features of the whole video (keys/values), and
//!   pools the result to one vector per clip;
//! - the *long-range* adapter cross-attends from layer `l`'s per-clip pooled features over the
//!   whole video (queries) to the same last-layer features.
//!
//! Each adapter is a pre-norm cross-attention block: the layer's (normalised, projected)
//! features plus the attention output, then an MLP branch, so what layer `l` carries reaches
//! the output and the last layer's context modulates it (attention alone would only return
//! mixtures of last-layer features, which the head already sees).
//!
//! A gated fusion adds each adapter output, mapped back to the backbone width and scaled by a
//! learnable gate, to the last layer's features, then projects to the head's input width. The
//! fused features equal the last layer's at the start (by default the output projections start
//! at zero with the gates at 1; closed gates with random projections are the alternative), so
//! training starts exactly at the head-only model.
//!
//! Memory: the intermediate features kept are `clips x layers x tokens x width` floats, without
//! any graph; `max_tokens` bounds the tokens per clip (uniform subsampling), so at most
//! `clips x layers x max_tokens x width` are held. A training step adds, per tapped layer, the
//! adapters' graph, about `clips x max_tokens x (width + (4 + 2 x mlp_ratio) x adapter_dim)`
//! floats plus `clips x max_tokens x clips x heads` attention weights for the short range
//! (every token of every clip attends to every clip; `clips x clips x heads` for the long
//! range), and their gradients and AdamW moments, three times their parameters (two adapters of
//! ~`3 x width x adapter_dim + (4 + 2 x mlp_ratio) x adapter_dim^2`): linear in layers and
//! tokens, quadratic in clips; with a small adapter width the optimizer state dominates
//! (measured sizes: `docs/results.md`).

use crate::fastmath::gelu;
use crate::norm::{LayerNorm, LayerNormConfig, normalise};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Tensor};

use super::cross_attention::{CrossAttention, CrossAttentionConfig};
use crate::backbone::residual::MlpBranch;
use crate::error::{Error, Result};
use crate::precision::{affine, compute, up};

/// LoSA settings. The paper leaves widths and heads open: the defaults are a quarter of the
/// backbone width for the adapters and 8 heads.
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
    /// Hidden width of each adapter's MLP branch, in multiples of the adapter width (0: no
    /// MLP branch). Default 2, half the transformer's usual 4: less step memory at the same
    /// accuracy on the synthetic benchmark (`docs/results.md`).
    #[config(default = 2)]
    pub mlp_ratio: usize,
    /// Most tokens per clip the short-range adapters read (uniformly subsampled beyond).
    #[config(default = 64)]
    pub max_tokens: usize,
    /// Initial value of every gate. Default 1, with `zero_init_output`: the output projections
    /// start at zero, so training starts at the head-only model and every adapter parameter
    /// learns from the first steps.
    #[config(default = 1.0)]
    pub gate_init: f64,
    /// Start each adapter's output projection at zero (LoRA / ControlNet style; default). With
    /// `false`, use `gate_init` 0 to start at the head-only model (Flamingo-style closed
    /// gates): then no adapter parameter gets a gradient until a gate moves, and in practice
    /// the gates barely move, so the adapters never start (`docs/results.md`).
    #[config(default = true)]
    pub zero_init_output: bool,
    /// Width of the fused output; `None` keeps `feature_dim` with no projection, so fused
    /// features equal the last layer's while the gates are zero.
    #[config(default = "None")]
    pub output_dim: Option<usize>,
    /// Dropout on the attention weights and on each adapter's output (before its projection),
    /// in training.
    #[config(default = 0.0)]
    pub dropout: f64,
}

/// One range (short or long) of adapters for one layer: a pre-norm cross-attention block.
#[derive(Module, Debug)]
pub struct RangeAdapter {
    /// Norm of the layer's tokens (intermediate tokens are the un-normalised residual stream).
    pub query_norm: LayerNorm,
    /// Layer tokens to adapter width.
    pub query_in: Linear,
    /// Norm of the last layer's features.
    pub memory_norm: LayerNorm,
    /// Last-layer features to adapter width.
    pub memory_in: Linear,
    /// Cross-attention.
    pub attn: CrossAttention,
    /// MLP residual branch after the attention (absent with `mlp_ratio` 0).
    pub mlp: Option<MlpBranch>,
    /// Dropout before the output projection.
    pub drop: Dropout,
    /// Back to the backbone width.
    pub out: Linear,
    /// Fusion gate.
    pub gate: Param<Tensor<1>>,
}

/// Epsilon of the adapters' norms (burn-nn's default, spelled out because [`norm_linear`]
/// applies the norms itself).
const NORM_EPS: f64 = 1e-5;

/// `lin(norm(x))` on the last dimension, computed as `x_hat (gamma W) + (beta W + b)` with
/// `x_hat` the plain normalisation of `x`: the same function, but autodiff keeps only `x_hat`
/// for the weights' gradients, not also `x_hat gamma + beta`, and for inputs without a graph
/// (the backbone's tokens) `x_hat` is computed without one.
///
/// Mixed precision: the normalisation runs in f32 (whatever `x`'s precision), `x_hat` and the
/// projection in the autocast precision, so the output is in it too.
fn norm_linear(norm: &LayerNorm, lin: &Linear, x: Tensor<3>) -> Tensor<3> {
    let x_hat = normalise(up(x), norm.epsilon, compute().dtype());
    let w = lin.weight.val(); // [C_in, C_out]
    let mut bias = lin.bias.as_ref().map(|b| b.val());
    if let Some(beta) = &norm.beta {
        let shift = beta
            .val()
            .unsqueeze_dim::<2>(0)
            .matmul(w.clone())
            .reshape([-1]);
        bias = Some(bias.map_or(shift.clone(), |b| b + shift));
    }
    affine(x_hat, w * norm.gamma.val().unsqueeze_dim::<2>(1), bias)
}

/// One adapter block's per-query state before its MLP's output projection: the residual stream
/// `h = q + attention` `[B, Q, A]` and the MLP's hidden activation
/// `gelu(fc1(LN(h)))` `[B, Q, A * mlp_ratio]`. What follows (`h + fc2(hidden)`, dropout, `out`)
/// is affine per query, so pooling over queries may come first.
struct BlockState {
    h: Tensor<3>,
    hidden: Option<Tensor<3>>,
}

impl BlockState {
    /// Mean over each group of `per` consecutive queries: `[1, G * per, W]` -> `[G, 1, W]`,
    /// in f32.
    fn mean_groups(self, groups: usize, per: usize) -> Self {
        let pool = |t: Tensor<3>| {
            let w = t.dims()[2];
            up(t).reshape([groups, per, w]).mean_dim(1)
        };
        Self {
            h: pool(self.h),
            hidden: self.hidden.map(pool),
        }
    }
}

impl RangeAdapter {
    fn new(cfg: &LosaConfig, layer_dim: usize, device: &Device) -> Self {
        let a = cfg.adapter_dim_resolved();
        Self {
            query_norm: LayerNormConfig::new(layer_dim)
                .with_epsilon(NORM_EPS)
                .init(device),
            query_in: LinearConfig::new(layer_dim, a).init(device),
            memory_norm: LayerNormConfig::new(cfg.feature_dim)
                .with_epsilon(NORM_EPS)
                .init(device),
            memory_in: LinearConfig::new(cfg.feature_dim, a).init(device),
            attn: CrossAttentionConfig::new(a, cfg.num_heads)
                .with_dropout(cfg.dropout)
                .init(device),
            mlp: (cfg.mlp_ratio > 0).then(|| MlpBranch {
                norm: LayerNormConfig::new(a).with_epsilon(NORM_EPS).init(device),
                fc1: LinearConfig::new(a, a * cfg.mlp_ratio).init(device),
                fc2: LinearConfig::new(a * cfg.mlp_ratio, a).init(device),
                drop_path: 0.0,
            }),
            drop: DropoutConfig::new(cfg.dropout).init(),
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
    /// padded) with a residual on the query, then the MLP's hidden activation.
    fn attend(&self, query: Tensor<3>, memory: Tensor<3>, pad: Tensor<2, Bool>) -> BlockState {
        let q = norm_linear(&self.query_norm, &self.query_in, query);
        let m = norm_linear(&self.memory_norm, &self.memory_in, memory);
        let ctx = self.attn.forward(q.clone(), m, pad);
        let h = q + ctx;
        let hidden = self
            .mlp
            .as_ref()
            .map(|mlp| gelu(norm_linear(&mlp.norm, &mlp.fc1, h.clone())));
        BlockState { h, hidden }
    }

    /// The block's output `h + fc2(hidden)`, through dropout and the output projection:
    /// `[B, Q, C]`.
    /// In f32 (few queries remain here in mixed precision).
    fn output(&self, state: BlockState) -> Tensor<3> {
        let y = match (&self.mlp, state.hidden) {
            (Some(mlp), Some(hidden)) => up(state.h) + mlp.fc2.forward(up(hidden)),
            _ => up(state.h),
        };
        self.out.forward(self.drop.forward(y))
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
        if input.layers.len() != self.short.len() {
            return Err(Error::Config(format!(
                "LoSA: {} layers given, {} expected (one per adapter)",
                input.layers.len(),
                self.short.len()
            )));
        }
        if input.valid.dims() != [n] {
            return Err(Error::Shape {
                what: "LoSA clip mask".into(),
                expected: format!("[{n}] (one flag per clip)"),
                got: input.valid.dims().to_vec(),
            });
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
            let [_, l, cl] = tokens.dims();
            // Short range: each clip's tokens attend to the whole video's last-layer features.
            // Every clip reads the same memory, so all clips' tokens are one batch of queries
            // (no copy of the memory per clip). The mean over a clip's tokens is taken before
            // the MLP's output projection (the rest is affine per token): the same output,
            // without keeping every token's hidden activation for that projection's backward.
            let s = short
                .attend(
                    tokens.clone().reshape([1, n * l, cl]),
                    memory.clone(),
                    pad.clone(),
                )
                .mean_groups(n, l); // [N, 1, ...]
            let s = short.output(s).reshape([n, c]);
            // Long range: the video's pooled layer features attend to the same memory.
            let pooled = up(tokens).mean_dim(1).swap_dims(0, 1); // [1, N, C_l]
            let g = long.attend(pooled, memory.clone(), pad.clone());
            let g = long.output(g).reshape([n, c]);
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
    use crate::backbone::residual::ResidualBranch;
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
    fn initial_adapters_reproduce_head_only_features_and_odd_padded_shapes_work() {
        let device = crate::backend::cpu_device();
        // The default (zero output projections, gates at 1) and closed gates with random
        // output projections both start at the head-only model.
        let default = cfg().init(&device).unwrap();
        let closed = cfg()
            .with_zero_init_output(false)
            .with_gate_init(0.0)
            .init(&device)
            .unwrap();
        assert!(default.gates().iter().all(|&g| g == (1.0, 1.0)));
        for losa in [&default, &closed] {
            for (n, valid) in [(7, 7), (5, 3), (1, 1)] {
                let x = input(n, valid, &device);
                let fused = losa.forward(x.clone()).unwrap();
                assert_eq!(fused.dims(), [n, 16]);
                let d: f32 = (fused - x.features).abs().max().into_scalar();
                assert_eq!(d, 0.0, "initial adapters: fused == last-layer features");
            }
        }
        // Once the output projections are non-zero the adapters change the features.
        let open = cfg().with_zero_init_output(false).init(&device).unwrap();
        let x = input(5, 3, &device);
        let d: f32 = (open.forward(x.clone()).unwrap() - x.features)
            .abs()
            .max()
            .into_scalar();
        assert!(d > 1e-3, "open adapters changed nothing");
        let proj = cfg().with_output_dim(Some(24)).init(&device).unwrap();
        assert_eq!(proj.forward(input(3, 3, &device)).unwrap().dims(), [3, 24]);
        let bad = LosaInput {
            layers: vec![],
            ..input(3, 3, &device)
        };
        assert!(default.forward(bad).is_err());
    }

    /// The adapter block as written in the docs: `h = W_q LN(x) + MHA(W_q LN(x), W_m LN(m))`,
    /// `y = h + MLP(h)`, then the mean over queries and `W_o`; `[B, Q, C_l]` -> `[B, C]`.
    fn textbook_block(
        a: &RangeAdapter,
        x: Tensor<3>,
        memory: Tensor<3>,
        pad: Tensor<2, Bool>,
    ) -> Tensor<2> {
        let q = a.query_in.forward(a.query_norm.forward(x));
        let m = a.memory_in.forward(a.memory_norm.forward(memory));
        let h = q.clone() + a.attn.forward(q, m, pad);
        let y = h.clone() + a.mlp.as_ref().unwrap().branch(h);
        a.out.forward(y.mean_dim(1)).squeeze_dim(1)
    }

    /// The short range runs all clips' tokens as one batch of queries against the shared
    /// memory and pools them before the MLP's output projection, with the query norm folded
    /// into the query projection: equal to the textbook block clip by clip; padded clips change
    /// no valid clip's output.
    #[test]
    fn short_range_batching_equals_per_clip_attention_and_padding_is_ignored() {
        let device = crate::backend::cpu_device();
        let mut losa = LosaConfig::new(16, vec![12])
            .with_num_heads(2)
            .with_max_tokens(32)
            .with_zero_init_output(false)
            .init(&device)
            .unwrap();
        // Trained-looking norms, so that folding them into the projections is tested.
        let a = &mut losa.short[0];
        let mlp = a.mlp.as_mut().unwrap();
        for norm in [&mut a.query_norm, &mut a.memory_norm, &mut mlp.norm] {
            let [c] = norm.gamma.dims();
            let random = |mean| Tensor::random([c], Distribution::Normal(mean, 0.5), &device);
            norm.gamma = Param::from_tensor(random(1.0));
            norm.beta = Some(Param::from_tensor(random(0.0)));
        }
        let (n, valid) = (5, 3);
        let x = input(n, valid, &device);
        let x = LosaInput {
            layers: vec![x.layers[1].clone()],
            ..x
        };
        // Short range alone: close the long-range gate.
        let mut short_only = losa.clone();
        short_only.long[0].gate = Param::from_tensor(Tensor::zeros([1], &device));
        let fused = short_only.forward(x.clone()).unwrap();
        let tokens = short_only.subsample(x.layers[0].clone());
        let memory = x.features.clone().unsqueeze_dim::<3>(0);
        let pad = x.valid.clone().bool_not().unsqueeze_dim::<2>(0);
        let a = &short_only.short[0];
        for i in 0..n {
            let s = textbook_block(
                a,
                tokens.clone().narrow(0, i, 1),
                memory.clone(),
                pad.clone(),
            );
            let want = x.features.clone().narrow(0, i, 1) + s;
            let d: f32 = (fused.clone().narrow(0, i, 1) - want)
                .abs()
                .max()
                .into_scalar();
            assert!(d < 1e-5, "clip {i}: batched short range differs by {d}");
        }
        // Whatever sits in padded clips, valid clips' fused features stay the same.
        let mut noisy = x.clone();
        noisy.features = Tensor::cat(
            vec![
                x.features.clone().narrow(0, 0, valid),
                Tensor::random([n - valid, 16], Distribution::Normal(5.0, 3.0), &device),
            ],
            0,
        );
        let a = losa.forward(x).unwrap().narrow(0, 0, valid);
        let b = losa.forward(noisy).unwrap().narrow(0, 0, valid);
        let d: f32 = (a - b).abs().max().into_scalar();
        assert!(d < 1e-5, "padded clips leaked into valid ones by {d}");
    }

    #[test]
    fn adapters_train_and_no_gradient_reaches_the_backbone() {
        let device = crate::backend::cpu_device().autodiff();
        // Random output projections and small open gates: every parameter is on the path.
        let losa = cfg()
            .with_zero_init_output(false)
            .with_gate_init(0.1)
            .init(&device)
            .unwrap();
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
