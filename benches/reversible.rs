//! Re2TAL reference workload: one training step (forward + backward) through a chain of ViT-S
//! blocks (dim 384, 6 heads, MLP 1536, batch 1, f32) at depths 12 and 24, 392 and 1568 tokens,
//! for plain autodiff, Burn's gradient checkpointing and the reversible pass. Memory from a
//! counting global allocator (CPU backend). Then reconstruction drift against depth in f32, f16
//! and bf16.
//!
//! `cargo bench --bench reversible` (392 and 1568 tokens, depths 12 and 24, several minutes on 2
//! cores); `-- --quick`: 392 tokens (8x7x7) only; `-- --drift-only`: only the drift table;
//! `-- --no-drift`: skip the drift table; step times are the median of 3 steps;
//! `-- --tokens N`: only that token count; `-- --only plain|checkpointing|reversible`: one mode;
//! `-- --peer PYTHON`: also run the same workload in PyTorch (`scripts/peer_bench.py`: SDPA,
//! `torch.utils.checkpoint`, revlib) with that interpreter, each PyTorch row right after the
//! matching e2e-tal row (both sides of a ratio within seconds), and print the ratios;
//! `-- --precision bf16,f16`: also every mode with the blocks' branches in these precisions
//! (mixed precision: f32 parameters and residual streams, `e2e_tal::precision`), with their
//! memory and time relative to the same mode and depth in f32.
//!
//! Memory columns: *activations* is the step's peak minus the parameters' bytes (the PyTorch
//! peer's definition); *step peak* is everything the step allocated at its highest, the f32
//! gradients included; *held for the backward* is what stays allocated between the forward and
//! the backward (the saved graph of plain autodiff and checkpointing; the output and the
//! streams of the reversible pass). The gradients (as large as the parameters) are allocated
//! during the backward while the saved graph is released, so when the graph is smaller than
//! the gradients the peak comes at the end of the backward and *activations* shows only the
//! working set above them: compare precisions on *held for the backward* and *step peak*.

use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Distribution, Tensor};
use e2e_tal::backbone::vit::{VisionTransformer, VitBlock, VitConfig};
use e2e_tal::memory::{self, CountingAllocator, mib};
use e2e_tal::precision::{Precision, autocast};
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

/// What one step measured.
struct Step {
    seconds: f64,
    /// Gradient tensors.
    grads: usize,
    /// Bytes held between the forward and the backward (the saved graph; the output and
    /// stream state for the reversible pass), when the device reports usage.
    held: Option<usize>,
}

/// One step.
fn step(mode: Mode, blocks: &[VitBlock], x: &Tensor<3>, w: &Tensor<3>) -> Step {
    let t = Instant::now();
    let device = x.device();
    let before = memory::in_use_on(&device);
    let held = |before: Option<usize>| {
        let now = memory::in_use_on(&device);
        before.zip(now).map(|(b, n)| n.saturating_sub(b))
    };
    let (grads, held) = match mode {
        Mode::Plain | Mode::Checkpointing => {
            let mut h = x.clone().require_grad();
            for b in blocks {
                h = b.forward(h);
            }
            let held = held(before);
            let grads = (h * w.clone()).sum().backward();
            (
                GradientsParams::from_grads(grads, &blocks.to_vec()).len(),
                held,
            )
        }
        Mode::Reversible => {
            let rev = RevChain::new(blocks).with_drop_path_seed(1);
            let (out, state) = rev.forward_no_graph(x.clone());
            let held = held(before);
            let g = (out.clone() * w.clone()).sum().backward();
            let (gx, params, _) = rev.backward(state, out.grad(&g).unwrap());
            let _ = gx.into_data();
            (params.len(), held)
        }
    };
    Step {
        seconds: t.elapsed().as_secs_f64(),
        grads,
        held,
    }
}

/// One measured configuration.
struct Row {
    depth: usize,
    precision: Precision,
    mode: Mode,
    /// Median step time.
    secs: f64,
    /// Peak bytes of the step above what was allocated before it (gradients included).
    peak: usize,
    /// Bytes held between the forward and the backward.
    held: usize,
    param_bytes: usize,
    /// The PyTorch peer's matching row (f32 only), measured right after this one.
    theirs: Option<PeerRow>,
}

/// One row of the PyTorch peer (`scripts/peer_bench.py`).
#[derive(Clone, Debug)]
struct PeerRow {
    step_s: Option<f64>,
    activations_mib: Option<f64>,
    error: Option<String>,
}

/// Runs the PyTorch row of the same workload (one mode and depth) through
/// `scripts/peer_bench.py` with the given interpreter, right after e2e-tal's row, so that both
/// sides of a ratio are measured within seconds of each other (the VM's speed drifts by 10-20%
/// over minutes). `None` (with the reason printed) when it cannot run; the peer's version line
/// is printed once (`announced`).
fn run_peer(
    python: &str,
    (tokens, depth, mode): (usize, usize, Mode),
    announced: &mut bool,
) -> Option<PeerRow> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peer_bench.py");
    let out = std::process::Command::new(python)
        .args([
            "-W",
            "ignore",
            script,
            "--tokens",
            &tokens.to_string(),
            "--depths",
            &depth.to_string(),
            "--variants",
            peer_variant(mode),
        ])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            println!(
                "PyTorch peer failed ({}): {}",
                o.status,
                err.lines().last().unwrap_or("")
            );
            return None;
        }
        Err(e) => {
            println!("PyTorch peer: cannot run `{python}`: {e}");
            return None;
        }
    };
    let mut row = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(json) = line.strip_prefix("PEER ")
            && !std::mem::replace(announced, true)
        {
            println!("PyTorch peer: {json}");
        }
        let Some(json) = line.strip_prefix("ROW ") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        row = Some(PeerRow {
            step_s: v["step_s"].as_f64(),
            activations_mib: v["activations_mib"].as_f64(),
            error: v["error"].as_str().map(str::to_string),
        });
    }
    row
}

/// What the peer calls the same mode.
fn peer_variant(mode: Mode) -> &'static str {
    match mode {
        Mode::Plain => "plain",
        Mode::Checkpointing => "checkpoint",
        Mode::Reversible => "reversible",
    }
}

fn main() {
    // Freed activations stay with the process for the next step (no page faults per step).
    e2e_tal::memory::retain_freed_memory();
    // On a worker of the kernels' thread pool, as the CLI runs its commands (and as PyTorch's
    // calling thread is one of its OpenMP threads): a parallel kernel splits its work with the
    // caller instead of waking the pool and waiting.
    rayon::scope(|_| run());
}

fn run() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let peer = args
        .iter()
        .position(|a| a == "--peer")
        .map(|i| args.get(i + 1).cloned().expect("--peer PYTHON"));
    let precisions: Vec<Precision> = std::iter::once(Precision::F32)
        .chain(
            args.iter()
                .position(|a| a == "--precision")
                .map(|i| args.get(i + 1).expect("--precision bf16,f16"))
                .into_iter()
                .flat_map(|v| v.split(','))
                .map(|p| p.parse::<Precision>().expect("--precision bf16,f16"))
                .filter(|p| *p != Precision::F32),
        )
        .collect();
    let one_count: Option<usize> = args.iter().position(|a| a == "--tokens").map(|i| {
        args.get(i + 1)
            .and_then(|v| v.parse().ok())
            .expect("--tokens N")
    });
    let token_counts: Vec<usize> = match one_count {
        Some(n) => vec![n],
        None if quick => vec![8 * 7 * 7],
        None => vec![8 * 7 * 7, 8 * 14 * 14],
    };
    let only: Option<Mode> = args.iter().position(|a| a == "--only").map(|i| {
        match args.get(i + 1).map(String::as_str) {
            Some("plain") => Mode::Plain,
            Some("checkpointing") => Mode::Checkpointing,
            Some("reversible") => Mode::Reversible,
            _ => panic!("--only plain|checkpointing|reversible"),
        }
    });
    let depths: &[usize] = if args.iter().any(|a| a == "--drift-only") {
        &[]
    } else {
        &[12, 24]
    };
    let backend = e2e_tal::backend::kind_from_args().map_or("?".into(), |k| k.to_string());
    if peer.is_none() && !depths.is_empty() {
        println!(
            "(no PyTorch rows: pass `-- --peer PYTHON` with an interpreter that has torch and revlib, \
             e.g. the venv of docs/performance.md)"
        );
    }
    for &tokens in &token_counts {
        if depths.is_empty() {
            break;
        }
        println!(
            "\nOne training step through ViT-S blocks, {tokens} tokens, batch 1, f32 parameters, \
             {backend}, {} threads\n",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        let mut rows = Vec::new();
        let mut announced = false;
        for &depth in depths {
            for (precision, mode) in precisions
                .iter()
                .flat_map(|&p| [Mode::Plain, Mode::Checkpointing, Mode::Reversible].map(|m| (p, m)))
                .filter(|(_, m)| only.is_none_or(|o| o == *m))
            {
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
                let x =
                    Tensor::<3>::random([1, tokens, 384], Distribution::Normal(0.0, 1.0), &device);
                let w =
                    Tensor::<3>::random([1, tokens, 384], Distribution::Normal(0.0, 1.0), &device);
                // Burn initialises parameters lazily: materialise them outside the measurement.
                let _ = model.blocks.valid();
                // The branches in `precision`; parameters and streams stay f32.
                let run = |blocks: &[VitBlock]| autocast(precision, || step(mode, blocks, &x, &w));
                // Warm-up (thread pools, caches, the first touch of the step's memory), untimed,
                // and the memory of one step; then the time: median of 3 steps, as the peer does.
                let _ = run(&model.blocks);
                let (first, peak) = memory::measure_on(&device, || run(&model.blocks));
                assert_eq!(
                    first.grads,
                    15 * depth,
                    "one gradient per block parameter tensor"
                );
                let mut times: Vec<f64> = (0..3).map(|_| run(&model.blocks).seconds).collect();
                times.sort_by(f64::total_cmp);
                // The PyTorch row now, while the machine runs at the speed ours saw.
                let theirs = peer
                    .as_deref()
                    .filter(|_| precision == Precision::F32)
                    .and_then(|p| run_peer(p, (tokens, depth, mode), &mut announced));
                rows.push(Row {
                    depth,
                    precision,
                    mode,
                    secs: times[1],
                    peak: peak.unwrap_or(0),
                    held: first.held.unwrap_or(0),
                    param_bytes,
                    theirs,
                });
            }
        }
        println!(
            "| depth | mode | precision | step (s) | PyTorch step (s) | ratio | x f32 | \
             activations (MiB) | PyTorch activations (MiB) | ratio | step peak (MiB) | x f32 | \
             held for the backward (MiB) | x f32 |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            let Row {
                depth,
                precision,
                mode,
                secs,
                peak,
                held,
                param_bytes,
                ref theirs,
            } = *r;
            let act = peak.saturating_sub(param_bytes);
            // The same depth and mode in f32, for the mixed-precision rows' ratios.
            let f32_row = rows
                .iter()
                .find(|b| b.depth == depth && b.precision == Precision::F32 && b.mode == mode)
                .filter(|_| precision != Precision::F32);
            let x = |a: f64, b: f64| format!("{:.2}x", a / b.max(1e-30));
            let (time_x, peak_x, held_x) = match f32_row {
                Some(b) => (
                    x(secs, b.secs),
                    x(peak as f64, b.peak as f64),
                    x(held as f64, b.held as f64),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let act_mib = act as f64 / (1024.0 * 1024.0);
            let (pt_step, pt_act, r_step, r_act) = match &theirs {
                Some(PeerRow {
                    step_s: Some(s),
                    activations_mib: Some(a),
                    ..
                }) => (
                    format!("{s:.2}"),
                    format!("{a:.1}"),
                    format!("{:.2}x", secs / s),
                    format!("{:.2}x", act_mib / a),
                ),
                Some(PeerRow { error: Some(e), .. }) => {
                    (format!("error: {e}"), "-".into(), "-".into(), "-".into())
                }
                _ => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            println!(
                "| {depth} | {} | {precision} | {secs:.2} | {pt_step} | {r_step} | {time_x} | {} | \
                 {pt_act} | {r_act} | {} | {peak_x} | {} | {held_x} |",
                mode.name(),
                mib(act),
                mib(peak),
                mib(held),
            );
        }
    }
    if args.iter().any(|a| a == "--no-drift") {
        return;
    }
    let tokens = *token_counts.last().unwrap();
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
