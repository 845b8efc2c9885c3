//! Clip-classification probes on every layer of a frozen backbone: how much of the action
//! class each layer carries in a form a small trained readout can use, on the training videos
//! and on held-out ones. LoSA's adapters can only add what intermediate layers carry beyond
//! the last one, and only as far as it generalises from the training videos; this measures both.
//!
//! Each clip is labelled with the action covering its centre (or background). Probes, trained
//! with AdamW on the training videos' clips and scored on the validation videos':
//! - linear, on the last layer's features (what head-only sees) and on each block's tokens
//!   (layer-normalised, mean-pooled), and on all of them concatenated;
//! - `--token-mlp`: a per-token MLP before the mean (the shape of a short-range adapter), per
//!   block (slow: minutes per block).
//!
//! ```text
//! cargo run --release --example layer_probe -- [--data data/synth]
//!     [--weights runs/pretrain/backbone.safetensors] [--depth 4] [--steps 300] [--token-mlp]
//! ```
//! Defaults: the built-in benchmark and the pretrained synthetic backbone (made first when
//! missing: ~2.5 min on 2 cores); ~20 s after that.

use std::path::PathBuf;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use e2e_tal::backbone::LayerTaps;
use e2e_tal::data::{Subset, SynthConfig};
use e2e_tal::train::{BackboneConfig, TrainConfig};
use e2e_tal::train::{Extraction, extract_features};
use e2e_tal::weights::CheckpointFamily;
use e2e_tal::workspace::{load_dataset, pretrained_backbone};
use e2e_tal::{Error, Result};

#[derive(Parser)]
#[command(about = "Clip-classification probes on every layer of a frozen backbone")]
struct Args {
    /// Dataset folder (the synthetic benchmark is generated there when missing).
    #[arg(long, default_value = "data/synth")]
    data: PathBuf,
    /// Backbone weights (this crate's layout); default: the pretrained synthetic ViT.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Blocks of the synthetic ViT the weights are for.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Optimisation steps of each probe (full batch).
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Also train a per-token MLP probe on each block (slow).
    #[arg(long)]
    token_mlp: bool,
}

/// Per-token MLP, mean over tokens, linear classifier.
#[derive(Module, Debug)]
struct TokenMlp {
    norm: LayerNorm,
    inp: Linear,
    hidden: Linear,
    cls: Linear,
}

impl TokenMlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let h = self.inp.forward(self.norm.forward(x));
        let h = h.clone() + self.hidden.forward(gelu(h));
        let [n, _, c] = h.dims();
        self.cls.forward(h.mean_dim(1).reshape([n, c]))
    }
}

/// Layer norm over the last axis without learnt parameters.
fn normalise(x: Tensor<3>) -> Tensor<3> {
    let c = x.clone() - x.mean_dim(2);
    let v = c.clone().square().mean_dim(2);
    c / (v + 1e-6).sqrt()
}

/// Accuracy over all clips and over action clips only.
fn accuracy(pred: Tensor<2>, labels: &[i64], background: i64) -> Result<(f64, f64)> {
    let pred: Vec<i64> = pred
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| Error::Config(format!("probe predictions: {e:?}")))?;
    let hit = |keep: &dyn Fn(i64) -> bool| {
        let (mut n, mut ok) = (0usize, 0usize);
        for (p, y) in pred.iter().zip(labels) {
            if keep(*y) {
                n += 1;
                ok += usize::from(p == y);
            }
        }
        100.0 * ok as f64 / n.max(1) as f64
    };
    Ok((hit(&|_| true), hit(&|y| y != background)))
}

/// Train `model` (`forward` = logits) on `x`, `y` for `steps` full-batch AdamW steps.
fn fit<M, X>(
    mut model: M,
    forward: impl Fn(&M, X) -> Tensor<2>,
    x: X,
    y: &[i64],
    steps: usize,
    lr: f64,
    device: &Device,
) -> M
where
    M: Module,
    X: Clone,
{
    let y = Tensor::<1, Int>::from_data(TensorData::new(y.to_vec(), [y.len()]), device);
    let ce = CrossEntropyLossConfig::new().init(device);
    let mut opt = AdamWConfig::new().with_weight_decay(1e-2).init();
    for _ in 0..steps {
        let loss = ce.forward(forward(&model, x.clone()), y.clone());
        let g = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(lr, model, g);
    }
    model
}

/// The clips' labels (training, held-out) and how probes are fitted.
struct Probing<'a> {
    labels: &'a [Vec<i64>; 2],
    background: i64,
    steps: usize,
    device: &'a Device,
}

impl Probing<'_> {
    /// Fit `probe` on the training clips `x[0]` and print its accuracy (all clips / action
    /// clips) on them and on the held-out clips `x[1]`.
    fn report<M: Module, const D: usize>(
        &self,
        name: &str,
        probe: M,
        forward: impl Fn(&M, Tensor<D>) -> Tensor<2>,
        [tr, va]: [Tensor<D>; 2],
        lr: f64,
    ) -> Result<()> {
        let probe = fit(
            probe,
            &forward,
            tr.clone().autodiff(),
            &self.labels[0],
            self.steps,
            lr,
            self.device,
        );
        let p = probe.valid();
        let (t_all, t_act) = accuracy(forward(&p, tr), &self.labels[0], self.background)?;
        let (v_all, v_act) = accuracy(forward(&p, va), &self.labels[1], self.background)?;
        println!("| {name} | {t_all:.1} / {t_act:.1} | {v_all:.1} / {v_act:.1} |");
        Ok(())
    }
}

fn main() -> Result<(), e2e_tal::Report> {
    e2e_tal::io::progress_to_stdout();
    let a = Args::parse();
    let device = e2e_tal::backend::cpu_device();
    let ad = device.clone().autodiff();
    let mut cfg = TrainConfig::new();
    if let BackboneConfig::Vit(v) = &mut cfg.backbone {
        v.depth = a.depth;
    }
    let data = load_dataset(&a.data, &SynthConfig::new(), cfg.clips.span())?;
    let weights = match a.weights {
        Some(w) => w,
        None => pretrained_backbone(&cfg, true, &device)?,
    };
    let mut backbone = cfg.backbone.init(&device);
    backbone.load(&weights, CheckpointFamily::Native)?;
    let blocks: Vec<usize> = (0..backbone.num_layers()).collect();
    let background = data.classes.len() as i64;
    // Per split (training, validation): last-layer features, each block's tokens, labels.
    let mut last: [Vec<Tensor<2>>; 2] = Default::default();
    let mut tokens: [Vec<Vec<Tensor<3>>>; 2] = [
        vec![Vec::new(); blocks.len()],
        vec![Vec::new(); blocks.len()],
    ];
    let mut labels: [Vec<i64>; 2] = Default::default();
    for v in &data.videos {
        let split = usize::from(v.subset != Subset::Training);
        let how = Extraction {
            taps: LayerTaps {
                layers: &blocks,
                max_tokens: 0,
            },
            ..Extraction::features(64)
        };
        let op = cfg.eval_op(v)?;
        let f = extract_features(&backbone, v.source.as_ref(), &op, &cfg.clips, how, &device)?;
        let segs = v.grid_segments(&cfg.clips);
        for i in 0..f.features.dims()[0] {
            let x = i as f64;
            let label = segs.iter().find(|g| g.start <= x && x <= g.end);
            labels[split].push(label.map_or(background, |g| g.label as i64));
        }
        last[split].push(f.features);
        for (acc, t) in tokens[split].iter_mut().zip(f.layers) {
            acc.push(t);
        }
    }
    let counts = [labels[0].len(), labels[1].len()];
    println!(
        "{} training / {} validation clips, {} classes + background; accuracy (%) all clips / action clips",
        counts[0], counts[1], background
    );
    println!("| probe | train | held-out |");
    println!("|---|---|---|");
    // Linear probes on pooled vectors, standardised with the training statistics.
    let pooled = |split: usize, b: usize| -> Tensor<2> {
        let t = Tensor::cat(tokens[split][b].clone(), 0);
        let [n, _, c] = t.dims();
        normalise(t).mean_dim(1).reshape([n, c])
    };
    let mut variants: Vec<(String, [Tensor<2>; 2])> = vec![(
        "linear, last layer (head-only's input)".into(),
        [
            Tensor::cat(last[0].clone(), 0),
            Tensor::cat(last[1].clone(), 0),
        ],
    )];
    for &b in &blocks {
        variants.push((
            format!("linear, block {b} tokens"),
            [pooled(0, b), pooled(1, b)],
        ));
    }
    let all = |split: usize| {
        let mut parts = vec![Tensor::cat(last[split].clone(), 0)];
        parts.extend(blocks.iter().map(|&b| pooled(split, b)));
        Tensor::cat(parts, 1)
    };
    variants.push(("linear, all of the above".into(), [all(0), all(1)]));
    let classes = data.classes.len() + 1;
    let probing = Probing {
        labels: &labels,
        background,
        steps: a.steps,
        device: &ad,
    };
    for (name, [tr, va]) in variants {
        let mu = tr.clone().mean_dim(0);
        let sd = (tr.clone() - mu.clone()).square().mean_dim(0).sqrt() + 1e-5;
        let (tr, va) = ((tr - mu.clone()) / sd.clone(), (va - mu) / sd);
        let probe: Linear = LinearConfig::new(tr.dims()[1], classes).init(&ad);
        probing.report(&name, probe, |m, x| m.forward(x), [tr, va], 1e-2)?;
    }
    if a.token_mlp {
        for &b in &blocks {
            let tr = Tensor::cat(tokens[0][b].clone(), 0);
            let va = Tensor::cat(tokens[1][b].clone(), 0);
            let c = tr.dims()[2];
            let probe = TokenMlp {
                norm: LayerNormConfig::new(c).init(&ad),
                inp: LinearConfig::new(c, 64).init(&ad),
                hidden: LinearConfig::new(64, 64).init(&ad),
                cls: LinearConfig::new(64, classes).init(&ad),
            };
            let name = format!("token MLP, block {b}");
            probing.report(&name, probe, |m, x| m.forward(x), [tr, va], 3e-3)?;
        }
    }
    Ok(())
}
