//! Re2TAL on a residual chain this crate has never seen: a small MLP-Mixer
//! (`examples/shared/mixer.rs`) implements `ResidualBlock` (its two branches), and its training
//! step puts the blocks on a `ReversibleTape`. The example trains it on a synthetic sequence task
//! with AdamW, the drift monitor checking every few steps, then measures one step's peak memory
//! against ordinary autodiff through the same network at several depths.
//!
//! ```text
//! cargo run --release --example reversible_mixer -- [--steps 100] [--depth 12] [--dim 64]
//!     [--tokens 64] [--check-every 10] [--depths 8,16,32] [--backend cpu|wgpu|cuda]
//! ```
//! Defaults take ~20 s on 2 cores.

#[path = "shared/mixer.rs"]
mod mixer;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use clap::Parser;
use e2e_tal::backend::{self, BackendKind};
use e2e_tal::memory::{CountingAllocator, measure_on, mib};
use e2e_tal::reversible::DriftMonitor;
use mixer::Mixer;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

const FEATURES: usize = 8;
const CLASSES: usize = 4;

#[derive(Parser)]
#[command(about = "Train a user-defined MLP-Mixer through the reversible pass")]
struct Args {
    /// Training steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Mixer blocks while training.
    #[arg(long, default_value_t = 12)]
    depth: usize,
    /// Channels.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Check the reconstruction every this many steps (0: never).
    #[arg(long, default_value_t = 10)]
    check_every: usize,
    /// Depths of the memory table.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    depths: Vec<usize>,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
}

/// A batch of the task: which quarter of the sequence holds a bump in feature 0.
fn batch(tokens: usize, device: &Device) -> (Tensor<3>, Tensor<1, Int>) {
    let n = 16;
    let noise = Tensor::<3>::random(
        [n, tokens, FEATURES],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let labels: Vec<i64> = (0..n as i64).map(|i| i % CLASSES as i64).collect();
    let mut bump = vec![0f32; n * tokens * FEATURES];
    for (i, &c) in labels.iter().enumerate() {
        let q = tokens / CLASSES;
        for t in c as usize * q..(c as usize + 1) * q {
            bump[(i * tokens + t) * FEATURES] = 1.0;
        }
    }
    let bump = Tensor::<3>::from_data(
        burn::tensor::TensorData::new(bump, [n, tokens, FEATURES]),
        device,
    );
    (noise + bump, Tensor::from_ints(labels.as_slice(), device))
}

fn main() -> e2e_tal::Result<()> {
    // Freed activations stay with the process for the next step (no page faults per step).
    e2e_tal::memory::retain_freed_memory();
    let a = Args::parse();
    let device = backend::device(a.backend)?.autodiff();
    device.seed(0);
    let ce = CrossEntropyLossConfig::new().init(&device);
    let monitor = DriftMonitor::new().with_every(a.check_every);

    let mut model = Mixer::new(FEATURES, a.tokens, a.dim, a.depth, CLASSES, &device);
    let mut opt = AdamWConfig::new().init();
    let (mut checks, mut fallbacks, mut worst) = (0, 0, 0f64);
    let t0 = std::time::Instant::now();
    for step in 0..a.steps {
        let (x, y) = batch(a.tokens, &device);
        let mut tape = monitor.tape(step);
        let logits = model.forward_reversible(x, &mut tape);
        let correct = logits
            .clone()
            .argmax(1)
            .squeeze_dim::<1>(1)
            .equal(y.clone())
            .int()
            .sum()
            .into_scalar::<i64>();
        let loss = ce.forward(logits, y);
        let value = loss.clone().into_scalar::<f64>();
        let mut grads = tape.backward(loss)?;
        if let Some(r) = grads.worst_drift() {
            checks += 1;
            fallbacks += usize::from(r.fell_back);
            worst = worst.max(r.drift.max_rel);
        }
        let g = grads.params(&model);
        model = opt.step(1e-3, model, g);
        if step % 20 == 0 || step + 1 == a.steps {
            println!("step {step:>4}: loss {value:.4}, batch accuracy {correct}/16");
        }
    }
    println!(
        "{} steps in {:.1}s; drift monitor: {checks} checks, max relative drift {worst:.1e}, \
         {fallbacks} fallbacks",
        a.steps,
        t0.elapsed().as_secs_f64()
    );

    println!(
        "\npeak memory of one training step (batch 16, {} tokens, dim {}):",
        a.tokens, a.dim
    );
    println!("| depth | autodiff (rewired) | reversible tape |");
    println!("|---|---|---|");
    for &depth in &a.depths {
        let m = Mixer::new(FEATURES, a.tokens, a.dim, depth, CLASSES, &device);
        let _ = m.valid(); // create the lazy parameters outside the measurement
        let (x, y) = batch(a.tokens, &device);
        let ((), plain) = measure_on(&device, || {
            let loss = ce.forward(m.forward_rewired(x.clone()), y.clone());
            let _ = GradientsParams::from_grads(loss.backward(), &m);
        });
        let (r, rev) = measure_on(&device, || -> e2e_tal::Result<()> {
            let mut tape = e2e_tal::reversible::ReversibleTape::new();
            let loss = ce.forward(m.forward_reversible(x.clone(), &mut tape), y.clone());
            let _ = tape.backward(loss)?.params(&m);
            Ok(())
        });
        r?;
        let show = |b: Option<usize>| b.map_or("n/a".into(), |b| format!("{} MiB", mib(b)));
        println!("| {depth} | {} | {} |", show(plain), show(rev));
    }
    Ok(())
}
