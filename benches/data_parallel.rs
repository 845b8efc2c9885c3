//! Data-parallel training on this machine: one process with all its threads against MPI ranks
//! with one thread each, the same model trained on the same videos (ViT-S and ViT-B, mode
//! `full`, 2 videos per step), and the share of a step spent summing gradients over the ranks.
//!
//! `cargo bench --features mpi --bench data_parallel` (needs Open MPI's `mpirun`), options:
//! `-- --quick` (ViT-S only, shorter videos), `-- --ranks N` (default 2), `-- --frames F` (per
//! video, default 64), `-- --size S` (pixels, default 112). The bench starts itself once as one
//! process and once under `mpirun`; each run writes what it measured to a JSON file the first
//! one reads.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `mpirun` on this machine, as the tests start it.
#[path = "../tests/common/mod.rs"]
mod common;

use burn::module::Module;
use e2e_tal::backbone::BackbonePreset;
use e2e_tal::data::{FRAMES_DIR, SynthConfig};
use e2e_tal::distributed::{Mpi, Ranks};
use e2e_tal::train::{BackboneConfig, RunOptions, TalDataset, TrainConfig, TrainMode, train};

/// What one run measured, written by its rank 0.
#[derive(serde::Serialize, serde::Deserialize)]
struct Measured {
    ranks: usize,
    threads: usize,
    /// Seconds per step over the second epoch.
    step: f64,
    /// Of those, seconds summing gradients.
    sum: f64,
    /// And seconds waiting for the other ranks before the sum.
    wait: f64,
    parameters: usize,
}

struct Args {
    quick: bool,
    ranks: usize,
    frames: usize,
    size: usize,
}

fn args() -> (Args, Option<(String, PathBuf)>) {
    let mut a = Args {
        quick: false,
        ranks: 2,
        frames: 64,
        size: 112,
    };
    let mut worker = None;
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut num = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match x.as_str() {
            "--quick" => a.quick = true,
            "--ranks" => a.ranks = num(),
            "--frames" => a.frames = num(),
            "--size" => a.size = num(),
            "--worker" => {
                let preset = it.next().expect("preset");
                worker = Some((preset, PathBuf::from(it.next().expect("output"))));
            }
            _ => {}
        }
    }
    if a.quick {
        a.frames = a.frames.min(32);
    }
    (a, worker)
}

fn preset(name: &str) -> BackbonePreset {
    match name {
        "vit-s" => BackbonePreset::VitS,
        "vit-b" => BackbonePreset::VitB,
        other => panic!("unknown preset {other}"),
    }
}

/// Mode `full`, 16-frame clips with temporal tokens at `size`, two videos per step, two epochs.
fn config(p: BackbonePreset, size: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new()
        .with_backbone(BackboneConfig::preset(p))
        .with_mode(TrainMode::Full)
        .with_epochs(2)
        .with_warmup_epochs(0.0)
        .with_videos_per_step(2)
        .with_cache_features(false)
        .with_eval_every(0)
        .with_ema_decay(0.0);
    cfg.transform.size = Some(size);
    cfg.clips = cfg.clips.clone().with_clip_frames(16).with_frame_stride(1);
    cfg.clips = cfg
        .backbone
        .temporal_tokens(&cfg.clips)
        .expect("temporal tokens");
    cfg
}

/// One run (as a rank of an MPI job when started by one): rank 0 writes what it measured.
fn worker(a: &Args, name: &str, out: &Path) {
    let ranks = match e2e_tal::distributed::launched_by_mpi() {
        true => Ranks::new(Mpi::init().expect("MPI")),
        false => Ranks::default(),
    };
    let cfg = config(preset(name), a.size);
    let dir = out.with_extension("data");
    let data = ranks
        .root_first(|| {
            let synth = SynthConfig::new()
                .with_videos(4)
                .with_height(a.size)
                .with_width(a.size)
                .with_min_frames(a.frames)
                .with_max_frames(a.frames)
                .with_validation_fraction(0.0);
            let ds = synth.load_or_generate(&dir)?;
            TalDataset::load(&ds.ground_truth, &dir.join(FRAMES_DIR), &[], None, 16)
        })
        .expect("synthetic videos");
    let device = e2e_tal::backend::cpu_device();
    device.seed(0);
    let backbone = cfg.backbone.init(&device);
    let opts = RunOptions {
        out_dir: out.with_extension("run"),
        quiet: true,
        stop_after_steps: None,
        overwrite: true,
        loader: Default::default(),
        ranks: ranks.clone(),
    };
    let o = train(cfg, &data, backbone, &opts, &device).expect("training");
    if ranks.is_root() {
        let last = o.state.history.last().expect("an epoch");
        let steps = 2.0;
        let m = Measured {
            ranks: ranks.size(),
            threads: rayon::current_num_threads(),
            step: last.seconds / steps,
            sum: last.ranks.as_ref().map_or(0.0, |r| r.sum_seconds) / steps,
            wait: last.ranks.as_ref().map_or(0.0, |r| r.wait_seconds) / steps,
            parameters: o.model.backbone.num_params() + o.model.head.num_params(),
        };
        std::fs::write(out, serde_json::to_vec(&m).unwrap()).unwrap();
    }
}

fn main() {
    // Freed activations stay with the process for the next step (no page faults per step).
    e2e_tal::memory::retain_freed_memory();
    let (a, w) = args();
    if let Some((name, out)) = w {
        return worker(&a, &name, &out);
    }
    let exe = std::env::current_exe().expect("this bench");
    let tmp = tempfile::tempdir().expect("temporary folder");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let presets: &[&str] = if a.quick {
        &["vit-s"]
    } else {
        &["vit-s", "vit-b"]
    };
    let pass = |cmd: &mut Command| {
        cmd.args([
            "--frames",
            &a.frames.to_string(),
            "--size",
            &a.size.to_string(),
        ]);
    };
    println!(
        "data parallel, mode full, {} frames per video at {}px, 2 videos per step; CPU: {} ({} \
         cores)\n",
        a.frames,
        a.size,
        e2e_tal::memory::cpu_model(),
        cores
    );
    println!(
        "| backbone | parameters | processes x threads | step (s) | waiting for ranks (s) | \
         gradient sum (s) | sum share | speed-up |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for name in presets {
        let one = tmp.path().join(format!("{name}-1.json"));
        let mut c = Command::new(&exe);
        c.args(["--worker", name, one.to_str().unwrap()])
            .env("RAYON_NUM_THREADS", cores.to_string());
        pass(&mut c);
        assert!(
            c.status().expect("bench runs").success(),
            "one process failed"
        );
        let many = tmp.path().join(format!("{name}-{}.json", a.ranks));
        let mut c = common::mpirun(a.ranks);
        c.env("RAYON_NUM_THREADS", (cores / a.ranks).max(1).to_string())
            .arg(&exe)
            .args(["--worker", name, many.to_str().unwrap()]);
        pass(&mut c);
        assert!(
            c.status().expect("mpirun runs").success(),
            "the MPI job failed"
        );
        let read = |p: &Path| -> Measured {
            serde_json::from_slice(&std::fs::read(p).expect("measured")).expect("json")
        };
        let (m1, mn) = (read(&one), read(&many));
        for m in [&m1, &mn] {
            println!(
                "| {name} | {:.1} M | {} x {} | {:.2} | {:.3} | {:.3} | {:.1}% | {:.2}x |",
                m.parameters as f64 / 1e6,
                m.ranks,
                m.threads,
                m.step,
                m.wait,
                m.sum,
                100.0 * m.sum / m.step,
                m1.step / m.step
            );
        }
    }
}
