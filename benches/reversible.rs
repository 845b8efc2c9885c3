//! Re2TAL reference workload: one training step (forward + backward) through a chain of ViT-S
//! blocks (dim 384, 6 heads, MLP 1536, 1568 tokens = 8x14x14, batch 1, f32) at depths 6, 12, 24,
//! for plain autodiff, Burn's gradient checkpointing and the reversible pass. Memory from a
//! counting global allocator (CPU backend). Then reconstruction drift against depth in f32, f16
//! and bf16.
//!
//! `cargo bench --bench reversible` (full size, a few minutes on 2 cores);
//! `-- --quick`: 392 tokens (8x7x7); `-- --drift-only`: only the drift table.

use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Distribution, Tensor};
use e2e_tal::backbone::vit::{VisionTransformer, VitBlock, VitConfig};
use e2e_tal::memory::{self, CountingAllocator, mib};
use e2e_tal::reversible::{Drift, RevChain};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Checkpointing,
    Reversible,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain autodiff",
            Mode::Checkpointing => "gradient checkpointing",
            Mode::Reversible => "reversible",
        }
    }
}

fn vit_s(depth: usize, device: &Device) -> VisionTransformer {
    VitConfig::new()
        .with_embed_dim(384)
        .with_depth(depth)
        .with_num_heads(6)
        .with_mlp_dim(1536)
        .with_drop_path_rate(0.1)
        .init(device)
}

/// One step; returns (seconds, gradient tensors).
fn step(mode: Mode, blocks: &[VitBlock], x: &Tensor<3>, w: &Tensor<3>) -> (f64, usize) {
    let t = Instant::now();
    let n = match mode {
        Mode::Plain | Mode::Checkpointing => {
            let mut h = x.clone().require_grad();
            for b in blocks {
                h = b.forward(h);
            }
            let grads = (h * w.clone()).sum().backward();
            GradientsParams::from_grads(grads, &blocks.to_vec()).len()
        }
        Mode::Reversible => {
            let rev = RevChain::new(blocks).with_drop_path_seed(1);
            let (out, state) = rev.forward_no_graph(x.clone());
            let g = (out.clone() * w.clone()).sum().backward();
            let (gx, params, _) = rev.backward(state, out.grad(&g).unwrap());
            let _ = gx.into_data();
            params.len()
        }
    };
    (t.elapsed().as_secs_f64(), n)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let tokens = if quick { 8 * 7 * 7 } else { 8 * 14 * 14 };
    println!(
        "\nOne training step through ViT-S blocks, {tokens} tokens, batch 1, f32, {}\n",
        e2e_tal::backend::kind_from_args().map_or("?".into(), |k| k.to_string())
    );
    println!(
        "| depth | mode | step (s) | params (MiB) | peak during step (MiB) | activations = peak - grads (MiB) |"
    );
    println!("|---|---|---|---|---|---|");
    let depths: &[usize] = if std::env::args().any(|a| a == "--drift-only") {
        &[]
    } else {
        &[6, 12, 24]
    };
    for &depth in depths {
        for mode in [Mode::Plain, Mode::Checkpointing, Mode::Reversible] {
            let device = match mode {
                Mode::Checkpointing => e2e_tal::backend::device_from_args()
                    .expect("--backend")
                    .autodiff()
                    .gradient_checkpointing(),
                _ => e2e_tal::backend::device_from_args()
                    .expect("--backend")
                    .autodiff(),
            };
            let model = vit_s(depth, &device);
            let param_bytes = model.blocks.num_params() * 4;
            let x = Tensor::<3>::random([1, tokens, 384], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<3>::random([1, tokens, 384], Distribution::Normal(0.0, 1.0), &device);
            // Burn initialises parameters lazily: materialise them outside the measurement.
            let _ = model.blocks.valid();
            // Warm-up (thread pools, caches), untimed.
            let _ = step(mode, &model.blocks[..1], &x, &w);
            let ((secs, n), peak) =
                memory::measure_on(&device, || step(mode, &model.blocks, &x, &w));
            assert_eq!(n, 15 * depth, "one gradient per block parameter tensor");
            let peak = peak.unwrap_or(0);
            println!(
                "| {depth} | {} | {secs:.2} | {} | {} | {} |",
                mode.name(),
                mib(param_bytes),
                mib(peak),
                mib(peak.saturating_sub(param_bytes))
            );
        }
    }

    println!(
        "\nReconstruction drift of the reversible inverse ({tokens} tokens, random init), \
         relative to the stage input in the same precision\n"
    );
    println!("| precision | depth (blocks) | max abs | max rel |");
    println!("|---|---|---|---|");
    let device = e2e_tal::backend::device_from_args()
        .expect("--backend")
        .autodiff();
    let deep = vit_s(48, &device);
    let x = Tensor::<3>::random(
        [1, tokens, 384],
        Distribution::Normal(0.0, 1.0),
        &e2e_tal::backend::device_from_args().expect("--backend"),
    );
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Parameters and input in `dtype` (fresh leaves, so each depth's backward has its own
        // graph); the backend runs every op in that precision.
        let blocks: Vec<VitBlock> = deep
            .blocks
            .iter()
            .map(|b| b.clone().map(&mut Cast(dtype)))
            .collect();
        let xd = x.clone().cast(dtype);
        for depth in [3, 6, 12, 24, 48] {
            let rev = RevChain::new(&blocks[..depth]).with_drop_path_seed(3);
            let (out, state) = rev.forward_no_graph(xd.clone());
            let g = out.clone().sum().backward();
            let (_, _, rec) = rev.backward(state, out.grad(&g).unwrap());
            let d = Drift::measure(rec.cast(DType::F32), xd.clone().cast(DType::F32));
            println!(
                "| {dtype:?} | {depth} | {:.2e} | {:.2e} |",
                d.max_abs, d.max_rel
            );
        }
    }
}

/// Casts every float parameter to one precision.
struct Cast(DType);

impl ModuleMapper for Cast {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        p.map(|t| t.cast(dtype).detach().require_grad())
    }
}
