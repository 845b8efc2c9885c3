//! The reversible pass as a user of the crate meets it: a residual chain defined outside the
//! crate (`examples/shared/mixer.rs`, an MLP-Mixer) implements `ResidualBlock`, its blocks go on a
//! `ReversibleTape`, and one `backward(loss)` gives every parameter's gradient, equal to ordinary
//! autodiff through the same rewired network; trained step by step with AdamW it follows the
//! autodiff run. A branch that breaks the randomness contract is caught by the drift monitor.

#[path = "../examples/shared/mixer.rs"]
mod mixer;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use e2e_tal::reversible::{ResidualBlock, RevChain, ReversibleTape};
use mixer::Mixer;
use std::sync::Mutex;

const GRAD_TOL: f64 = 1e-5;

fn device() -> Device {
    e2e_tal::backend::device_from_env()
        .expect("E2E_TAL_BACKEND names a compiled-in backend")
        .autodiff()
}

fn data(device: &Device, seed: u64) -> (Tensor<3>, Tensor<1, Int>) {
    device.seed(seed);
    let x = Tensor::<3>::random([4, 16, 12], Distribution::Normal(0.0, 1.0), device);
    let y = Tensor::<1, Int>::from_ints([0, 3, 1, 4], device);
    (x, y)
}

/// Burn's initialisers and `Tensor::random` draw from one generator per device, and the tests of
/// this file run on parallel threads: each takes this lock so its draws, and so its model and data,
/// are the same in every run.
static RNG: Mutex<()> = Mutex::new(());

/// A mixer whose parameters are drawn now, from `seed` (Burn initialises lazily, at first use).
fn mixer(depth: usize, seed: u64, device: &Device) -> Mixer {
    device.seed(seed);
    let model = Mixer::new(12, 16, 24, depth, 5, device);
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let _ = p.val();
        }
    }
    model.visit(&mut Touch);
    model
}

/// Largest absolute gradient over every parameter of `module` in `g`.
struct Largest<'a> {
    g: &'a GradientsParams,
    max: f64,
}

impl ModuleVisitor for Largest<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if let Some(g) = self.g.get::<D>(p.id) {
            self.max = self.max.max(g.abs().max().into_scalar::<f64>());
        }
    }
}

/// Worst relative difference over every parameter gradient of a module. Each tensor's error is
/// taken against its own largest gradient, but never against less than `FLOOR` of the model's
/// largest: a gradient that is nearly 0 (the token-mixing output bias sits right before a
/// LayerNorm that removes most of it) is float noise on both sides, and its own scale would turn
/// 5e-9 of noise into a 5e-4 "relative" error. Over 60 initialisations the floored error stayed
/// below 3.8e-6 (unfloored it reached 5.3e-4 on that bias alone).
struct Compare<'a> {
    a: &'a GradientsParams,
    b: &'a GradientsParams,
    floor: f64,
    worst: f64,
    count: usize,
}

const FLOOR: f64 = 1e-2;

impl ModuleVisitor for Compare<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        let (a, b) = (self.a.get::<D>(p.id), self.b.get::<D>(p.id));
        let (a, b) = (a.expect("gradient in a"), b.expect("gradient in b"));
        let scale = b.clone().abs().max().into_scalar::<f64>().max(self.floor);
        let diff = (a - b).abs().max().into_scalar::<f64>();
        self.worst = self.worst.max(diff / scale);
        self.count += 1;
    }
}

fn compare<M: Module>(m: &M, a: &GradientsParams, b: &GradientsParams, floor: f64) -> (usize, f64) {
    let mut c = Compare {
        a,
        b,
        floor,
        worst: 0.0,
        count: 0,
    };
    m.visit(&mut c);
    (c.count, c.worst)
}

#[test]
fn mixer_gradients_equal_autodiff_through_the_rewired_network() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = device();
    let model = mixer(8, 0, &device);
    let ce = CrossEntropyLossConfig::new().init(&device);
    let (x, y) = data(&device, 1);

    let reference = {
        let loss = ce.forward(model.forward_rewired(x.clone()), y.clone());
        GradientsParams::from_grads(loss.backward(), &model)
    };
    let mut tape = ReversibleTape::new();
    let logits = model.forward_reversible(x, &mut tape);
    assert_eq!(tape.len(), 1, "one segment per tape.forward");
    let mut grads = tape.backward(ce.forward(logits, y)).unwrap();
    // Per module, as an optimizer per part would want them.
    let stem = grads.params(&model.stem);
    let head = grads.params(&model.head);
    let blocks = grads.params(&model.blocks);
    assert!(grads.params(&model).is_empty(), "gradients move out once");
    let mut largest = Largest {
        g: &reference,
        max: 0.0,
    };
    model.visit(&mut largest);
    let floor = FLOOR * largest.max;
    for (name, n, worst, expected) in [
        ("stem", compare(&model.stem, &stem, &reference, floor), 2),
        ("head", compare(&model.head, &head, &reference, floor), 2),
        (
            "blocks",
            compare(&model.blocks, &blocks, &reference, floor),
            8 * 12,
        ),
    ]
    .map(|(name, (n, w), e)| (name, n, w, e))
    {
        println!("mixer {name}: {n} tensors, worst relative gradient error {worst:.2e}");
        assert_eq!(n, expected, "{name}: every parameter has a gradient");
        assert!(worst <= GRAD_TOL, "{name}: {worst:e}");
    }
}

#[test]
fn mixer_trained_reversibly_follows_the_autodiff_run() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = device();
    let init = mixer(6, 0, &device);
    let ce = CrossEntropyLossConfig::new().init(&device);
    let (x, y) = data(&device, 3);
    let steps = 6;
    let lr = 3e-3;

    let mut reference = init.clone();
    let mut opt = AdamWConfig::new().init();
    let mut ref_losses = Vec::new();
    for _ in 0..steps {
        let loss = ce.forward(reference.forward_rewired(x.clone()), y.clone());
        ref_losses.push(loss.clone().into_scalar::<f64>());
        let g = GradientsParams::from_grads(loss.backward(), &reference);
        reference = opt.step(lr, reference, g);
    }

    let mut model = init;
    let mut opt = AdamWConfig::new().init();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let mut tape = ReversibleTape::checked(1e-4);
        let loss = ce.forward(model.forward_reversible(x.clone(), &mut tape), y.clone());
        losses.push(loss.clone().into_scalar::<f64>());
        let mut grads = tape.backward(loss).unwrap();
        let reading = grads.worst_drift().expect("checked tape reports drift");
        assert!(
            !reading.fell_back && reading.drift.max_rel < 1e-5,
            "{reading:?}"
        );
        let g = grads.params(&model);
        model = opt.step(lr, model, g);
    }
    println!("losses: reversible {losses:?}\n        autodiff   {ref_losses:?}");
    assert!(losses[steps - 1] < losses[0] - 0.1, "the loss goes down");
    for (a, b) in losses.iter().zip(&ref_losses) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
}

/// A residual branch that breaks the contract: Burn's dropout draws a new mask on every call.
#[derive(Module, Debug)]
struct NoisyBlock {
    fc: Linear,
    dropout: Dropout,
}

impl ResidualBlock<2> for NoisyBlock {
    fn branch(&self, _k: usize, x: Tensor<2>) -> Tensor<2> {
        self.dropout.forward(self.fc.forward(x))
    }
}

#[test]
fn a_branch_with_fresh_randomness_is_caught_by_the_drift_monitor() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = device();
    device.seed(0);
    let blocks: Vec<NoisyBlock> = (0..4)
        .map(|_| NoisyBlock {
            fc: LinearConfig::new(16, 16).init(&device),
            dropout: DropoutConfig::new(0.5).init(),
        })
        .collect();
    let x = Tensor::<2>::random([8, 16], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let mut tape = ReversibleTape::checked(1e-4);
    let y = tape.forward(RevChain::new(blocks.as_slice()), x.clone());
    let mut grads = tape.backward(y.powf_scalar(2.0).sum()).unwrap();
    let reading = grads.worst_drift().unwrap();
    println!("dropout branch: {reading:?}");
    assert!(reading.drift.max_rel > 1e-2, "{reading:?}");
    assert!(reading.fell_back, "the step falls back to autodiff");
    assert_eq!(grads.params(&blocks).len(), 8, "gradients still produced");
}
