//! The `train` and `infer` subcommands: thin layers over `e2e_tal::train`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use e2e_tal::backbone::BackbonePreset;
use e2e_tal::data::lofi::LoFiMode;
use e2e_tal::data::synth::FRAMES_DIR;
use e2e_tal::data::{FrameFolder, GroundTruth, Predictions, Subset, SynthConfig, VideoDetections};
use e2e_tal::eval::timeline::write_timeline;
use e2e_tal::eval::{EvalOptions, ThresholdSet, evaluate};
use e2e_tal::train::{
    BackboneConfig, Checkpoint, Detector, PretrainConfig, RunOptions, TalDataset, TalVideo,
    TrainConfig, TrainMode, load_model,
};
use e2e_tal::weights::CheckpointFamily;
use e2e_tal::{Error, Result, backend};

use e2e_tal::train::workspace::{PretrainJob, load_dataset, pretrain_to, pretrained_backbone};

use super::{InferArgs, PretrainArgs, TrainArgs, print_report};

pub fn run_train(a: TrainArgs) -> Result<()> {
    let start = Instant::now();
    let mode: TrainMode = a.mode.parse()?;
    let mut out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(mode.to_string()));
    let device = backend::device(a.backend.parse()?)?;
    let opts = RunOptions {
        out_dir: out.clone(),
        quiet: a.quiet,
        stop_after_steps: a.stop_after_steps,
    };
    let (outcome, data, cfg) = if a.resume {
        let ck = Checkpoint::load(&out)?;
        let data = load_dataset(&a.data, &SynthConfig::new(), ck.meta.config.clips.span())?;
        println!(
            "resuming {} at epoch {}, step {}",
            out.display(),
            ck.meta.state.epoch + 1,
            ck.meta.state.global_step
        );
        let outcome = e2e_tal::train::resume(&data, &opts, &device)?;
        (outcome, data, ck.meta.config)
    } else {
        let mut cfg = match &a.config {
            Some(p) => TrainConfig::from_json(&e2e_tal::io::read_to_string(p)?)
                .map_err(|e| e2e_tal::io::json_error(p, e))?,
            None => TrainConfig::new(),
        };
        cfg.mode = mode;
        if a.backbone != "synthetic" {
            cfg.backbone = BackboneConfig::preset(a.backbone.parse::<BackbonePreset>()?);
        } else if a.config.is_none() {
            cfg.backbone = BackboneConfig::synthetic_vit();
        }
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = a.$f { cfg.$f = v; })* };
        }
        set!(
            epochs,
            lr_head,
            lr_backbone,
            max_train_clips,
            eval_every,
            ema_decay,
            seed
        );
        if let Some(l) = &a.lofi {
            cfg.lofi.mode = LoFiMode::from_name(l)?;
        }
        if a.no_feature_cache {
            cfg.cache_features = false;
        }
        if a.augment {
            cfg.augment = e2e_tal::data::augment::AugmentConfig::synthetic();
        }
        cfg.validate()?;
        let t = Instant::now();
        let data = load_dataset(&a.data, &SynthConfig::new(), cfg.clips.span())?;
        let n_train = data.indices(Subset::Training).len();
        println!(
            "dataset: {} ({} training, {} validation videos, {} classes) loaded in {:.1}s",
            a.data.display(),
            n_train,
            data.indices(Subset::Validation).len(),
            data.classes.len(),
            t.elapsed().as_secs_f64()
        );
        let weights = match (&a.weights, a.from_scratch) {
            (Some(w), _) => Some(w.clone()),
            (None, false) => Some(pretrained_backbone(&cfg, a.quiet, &device)?),
            (None, true) => None,
        };
        device.seed(cfg.seed);
        let mut backbone = cfg.backbone.init(&device);
        if let Some(w) = &weights {
            let family = match (&a.family, a.backbone.parse::<BackbonePreset>()) {
                (Some(f), _) => f.parse()?,
                (None, Ok(p)) => p.default_family(),
                (None, Err(_)) => CheckpointFamily::Native,
            };
            let r = backbone.load(w, family)?;
            println!("backbone: {} tensors from {}", r.applied.len(), w.display());
        }
        if let Some(b) = &a.memory_budget {
            let budget = e2e_tal::train::budget::parse_bytes(b)?;
            let choice = e2e_tal::train::budget::choose_fidelity(
                &cfg,
                &data,
                &backbone,
                budget,
                &e2e_tal::train::budget::candidate_fidelities(),
                &out.join("budget-probes"),
                &device,
            )?;
            println!("{choice}");
            cfg.lofi.mode = choice.mode();
        }
        println!(
            "training: mode {mode}, {} epochs, backbone {}, run folder {}",
            cfg.epochs,
            a.backbone,
            out.display()
        );
        if a.retrain_head {
            // LoFi-E2E stages 2 and 3: report stage 2, then continue with stage 3's run.
            let st = e2e_tal::train::stages::end_to_end_then_head(
                cfg.clone(),
                cfg.epochs,
                &data,
                backbone,
                &out,
                a.quiet,
                &device,
            )?;
            if let Some((_, r)) = &st.end_to_end.evaluation {
                println!(
                    "stage 2 ({mode}, end to end) validation avg mAP {:.2}% -> {}",
                    100.0 * r.average_map,
                    out.join("stage2").display()
                );
            }
            out = out.join("stage3");
            let c = cfg.clone().with_mode(TrainMode::HeadOnly);
            println!("stage 3: head retrained at full fidelity on the frozen stage-2 backbone");
            (st.head, data, c)
        } else {
            let outcome = e2e_tal::train::train(cfg.clone(), &data, backbone, &opts, &device)?;
            (outcome, data, cfg)
        }
    };
    if let Some(b) = outcome.peak_step_bytes {
        println!(
            "peak memory of a training step: {} MiB",
            e2e_tal::memory::mib(b)
        );
    }
    match &outcome.evaluation {
        None => println!(
            "stopped after {} steps; continue with --resume",
            outcome.state.global_step
        ),
        Some((preds, report)) => {
            println!("\nvalidation mAP, THUMOS thresholds:");
            print_report(report, false);
            let anet = evaluate(
                &data.ground_truth,
                preds,
                &EvalOptions {
                    subset: Some(Subset::Validation),
                    thresholds: ThresholdSet::ActivityNet.values(),
                },
            )?;
            println!(
                "(ActivityNet thresholds 0.5:0.95: average {:.2}%; mode {}, {} epochs)",
                100.0 * anet.average_map,
                cfg.mode,
                cfg.epochs
            );
            println!("predictions: {}", out.join("predictions.json").display());
            if cfg.mode.trains_backbone() {
                // The adapted backbone, for `--mode head-only --weights` (LoFi stage 3).
                let path = out.join("backbone.safetensors");
                let trained = outcome.ema.as_ref().unwrap_or(&outcome.model);
                trained.backbone.save(&path)?;
                println!("backbone weights: {}", path.display());
            }
        }
    }
    println!("total {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

pub fn run_infer(a: InferArgs) -> Result<()> {
    let device = backend::device(a.backend.parse()?)?;
    let ck = Checkpoint::load(&a.checkpoint)?;
    let cfg = ck.meta.config.clone();
    let mut model = load_model(&ck, &device)?;
    ck.load_inference_weights(&mut model)?;
    let layers = match model.adapter {
        Some(_) => e2e_tal::train::model::adapter_layers(&cfg, &model.backbone)?,
        None => Vec::new(),
    };
    let videos: Vec<TalVideo> = match (&a.dataset, &a.video) {
        (Some(json), None) => {
            let gt = GroundTruth::from_json_file(json)?;
            let frames = a
                .frames
                .clone()
                .unwrap_or_else(|| json.parent().unwrap_or(Path::new(".")).join(FRAMES_DIR));
            let subsets = if a.subset.eq_ignore_ascii_case("all") {
                Vec::new()
            } else {
                vec![a.subset.parse::<Subset>().map_err(Error::Config)?]
            };
            TalDataset::load(&gt, &frames, &subsets, None, cfg.clips.span())?.videos
        }
        (None, Some(dir)) => {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "video".into());
            let frames = FrameFolder::open(dir, &id)?.read_all(None)?;
            vec![TalVideo {
                duration: frames.len as f64 / a.fps,
                id,
                subset: Subset::Testing,
                fps: a.fps,
                frames,
                segments: Vec::new(),
            }]
        }
        _ => {
            return Err(Error::Config(
                "give exactly one of --dataset JSON or --video DIR".into(),
            ));
        }
    };
    let det = Detector {
        model: &model,
        cfg: &cfg,
        layers,
        device: device.clone(),
    };
    let t = Instant::now();
    let mut out = Vec::new();
    for v in &videos {
        let segs = det.detect(v)?;
        if let Some(dir) = &a.timeline {
            write_timeline(
                &dir.join(format!("{}.png", v.id)),
                &v.segments,
                &segs,
                v.duration,
                ck.meta.classes.len(),
                0.1,
            )?;
        }
        out.push(VideoDetections::from_segments(
            &v.id,
            segs,
            &ck.meta.classes,
        ));
    }
    let preds = Predictions { videos: out };
    preds.write_json(&a.out)?;
    println!(
        "{} videos, {} detections in {:.1}s -> {}",
        videos.len(),
        preds.len(),
        t.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

pub fn run_pretrain(a: PretrainArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => e2e_tal::io::read_json(p)?,
        None => PretrainConfig::new(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = a.$f { cfg.$f = v; })* };
    }
    set!(steps, batch_size, lr, seed);
    if a.rewired {
        cfg.rewired = true;
    }
    let device = backend::device(a.backend.parse()?)?;
    let job = PretrainJob {
        data: &a.data,
        videos: a.videos,
        out: &a.out,
        init: a.weights.as_deref(),
        quiet: a.quiet,
    };
    pretrain_to(&cfg, &job, &device)
}
