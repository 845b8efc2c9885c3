//! Where a ViT-S block's training step spends its time: each component (forward + backward
//! under autodiff, 1 x N x 384 tokens) timed alone, median of 5 after a warm-up.
//! `cargo bench --bench block_ops [-- --tokens N] [--peer PYTHON]` (1568 tokens by default;
//! `--peer`: the same components in PyTorch, `scripts/peer_bench.py --ops`, and the ratios;
//! `--profile N [COMPONENT]`: only the whole block (or one component), N times, for a profiler).

use std::time::Instant;

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Distribution, Tensor};
use e2e_tal::attention::{attention, attention_tiled};
use e2e_tal::backbone::vit::VitConfig;
use e2e_tal::fastmath::gelu;
use e2e_tal::norm::LayerNormConfig;
use e2e_tal::precision::linear;

/// One component's forward + backward.
type Step<'a> = Box<dyn FnMut() + 'a>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn rand<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
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
    let n = args
        .iter()
        .position(|a| a == "--tokens")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1568);
    let device = e2e_tal::backend::device_from_args()
        .expect("--backend")
        .autodiff();
    let x = rand([1, n, 384], &device);
    let xh = rand([1, n, 1536], &device);
    let ln = LayerNormConfig::new(384).init(&device);
    let fc1 = LinearConfig::new(384, 1536).init(&device);
    let fc2 = LinearConfig::new(1536, 384).init(&device);
    let qkv = rand([1, 6, n, 64], &device);
    let block = VitConfig::new()
        .with_embed_dim(384)
        .with_depth(1)
        .with_num_heads(6)
        .with_mlp_dim(1536)
        .init(&device)
        .blocks
        .remove(0);
    let _ = (
        ln.clone().valid(),
        fc1.clone().valid(),
        fc2.clone().valid(),
        block.clone().valid(),
    );
    let sync = |t: Tensor<3>| {
        let _ = t.sum().backward();
    };
    let attention_step = || {
        let (q, k, v) = (
            qkv.clone().require_grad(),
            qkv.clone().require_grad(),
            qkv.clone().require_grad(),
        );
        let _ = attention(q, k, v, None, 0.125).sum().backward();
    };
    let mut steps: Vec<(&str, Step)> = vec![
        (
            "layer norm",
            Box::new(|| sync(ln.forward(x.clone().require_grad()))),
        ),
        (
            "linear 384 -> 1536",
            Box::new(|| sync(linear(&fc1, x.clone().require_grad()))),
        ),
        (
            "linear 1536 -> 384",
            Box::new(|| sync(linear(&fc2, xh.clone().require_grad()))),
        ),
        ("gelu", Box::new(|| sync(gelu(xh.clone().require_grad())))),
        ("attention (memory-efficient)", Box::new(attention_step)),
        (
            "attention (naive)",
            Box::new(|| {
                let (q, k, v) = (
                    qkv.clone().require_grad(),
                    qkv.clone().require_grad(),
                    qkv.clone().require_grad(),
                );
                let _ = softmax((q * 0.125).matmul(k.swap_dims(2, 3)), 3)
                    .matmul(v)
                    .sum()
                    .backward();
            }),
        ),
        (
            "whole ViT-S block",
            Box::new(|| sync(block.forward(x.clone().require_grad()))),
        ),
    ];
    // `--profile N [COMPONENT]`: only the whole block (or the component whose name starts with
    // COMPONENT: `attention`, `layer`, `gelu`, ...), N times (a workload for `perf record`).
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        let times: usize = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .expect("--profile N");
        let name = args.get(i + 2).map_or("whole", String::as_str);
        let (_, step) = steps
            .iter_mut()
            .find(|(s, _)| s.starts_with(name))
            .expect("--profile N COMPONENT: a component's name (or its start)");
        (0..times).for_each(|_| step());
        return;
    }
    let rows: Vec<(&str, f64)> = steps
        .into_iter()
        .map(|(name, step)| (name, time(step)))
        .collect();
    // The query tile trades memory (one tile's scores) against per-tile overhead.
    let tiles: Vec<(String, f64)> = [32, 64, 128, 256]
        .into_iter()
        .filter(|&t| t < n)
        .map(|t| {
            let secs = time(|| {
                let (q, k, v) = (
                    qkv.clone().require_grad(),
                    qkv.clone().require_grad(),
                    qkv.clone().require_grad(),
                );
                let _ = attention_tiled(q, k, v, None, 0.125, t).sum().backward();
            });
            (format!("attention, query tile {t}"), secs)
        })
        .collect();
    let peer = peer_ops(&args, n);
    println!(
        "\n{n} tokens x 384, one forward + backward per row (median of 5), {} threads\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| component | e2e-tal (ms) | PyTorch (ms) | ratio |\n|---|---|---|---|");
    for (name, secs) in rows {
        let theirs = peer.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        let (pt, ratio) = match theirs {
            Some(t) => (format!("{:.1}", t * 1e3), format!("{:.2}x", secs / t)),
            None => ("-".into(), "-".into()),
        };
        println!("| {name} | {:.1} | {pt} | {ratio} |", secs * 1e3);
    }
    for (name, secs) in tiles {
        println!("| {name} | {:.1} | | |", secs * 1e3);
    }
}

/// The PyTorch side (`scripts/peer_bench.py --ops`) with the interpreter after `--peer`.
fn peer_ops(args: &[String], tokens: usize) -> Vec<(String, f64)> {
    let Some(python) = args
        .iter()
        .position(|a| a == "--peer")
        .and_then(|i| args.get(i + 1))
    else {
        println!("(no PyTorch column: pass `-- --peer PYTHON`)");
        return Vec::new();
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peer_bench.py");
    let out = match std::process::Command::new(python)
        .args([
            "-W",
            "ignore",
            script,
            "--ops",
            "--tokens",
            &tokens.to_string(),
        ])
        .output()
    {
        Ok(out) if out.status.success() => out,
        other => {
            println!("PyTorch peer failed: {other:?}");
            return Vec::new();
        }
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("OP "))
        .filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .filter_map(|v| Some((v["name"].as_str()?.to_string(), v["step_s"].as_f64()?)))
        .collect()
}
