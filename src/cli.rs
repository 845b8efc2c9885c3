//! The `train` and `infer` subcommands: thin layers over `e2e_tal::train`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use e2e_tal::backbone::BackbonePreset;
use e2e_tal::data::lofi::LoFiMode;
use e2e_tal::data::source::media_dir;
use e2e_tal::data::{GroundTruth, Predictions, Subset, SynthConfig, VideoDetections};
use e2e_tal::eval::timeline::write_timeline;
use e2e_tal::eval::{EvalOptions, ThresholdSet, evaluate};
use e2e_tal::train::{
    BackboneConfig, Checkpoint, Detector, PretrainConfig, RunOptions, TalDataset, TrainConfig,
    TrainMode, detect_video,
};
use e2e_tal::weights::CheckpointFamily;
use e2e_tal::{Error, Result, backend};

use e2e_tal::train::workspace::{PretrainJob, load_dataset, pretrain_to, pretrained_backbone};

use super::{InferArgs, PretrainArgs, TrainArgs, print_report};

/// Apply the configuration flags of `a` to `cfg` (a new run's starting configuration, or a
/// checkpoint's when resuming, to see what the flags would change).
fn apply_flags(a: &TrainArgs, cfg: &mut TrainConfig) -> Result<()> {
    if let Some(m) = a.mode {
        cfg.mode = m;
    }
    match a.backbone.as_deref() {
        None => {}
        Some("synthetic") => cfg.backbone = BackboneConfig::synthetic_vit(),
        Some(p) => cfg.backbone = BackboneConfig::preset(p.parse::<BackbonePreset>()?),
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
    if a.rewired {
        cfg.rewired = true;
    }
    Ok(())
}

/// The flags of `a` that contradict the checkpoint configuration `ck` of a resumed run (all
/// but --epochs, which may change), each with both values.
fn resume_conflicts(a: &TrainArgs, ck: &TrainConfig) -> Result<Vec<String>> {
    let mut wanted = ck.clone();
    apply_flags(a, &mut wanted)?;
    let (Ok(serde_json::Value::Object(w)), Ok(serde_json::Value::Object(c))) =
        (serde_json::to_value(&wanted), serde_json::to_value(ck))
    else {
        return Ok(vec!["the configuration cannot be compared".into()]);
    };
    let mut out: Vec<String> = w
        .iter()
        .filter(|(k, v)| k.as_str() != "epochs" && c.get(k.as_str()) != Some(v))
        .map(|(k, v)| {
            let flag = match k.as_str() {
                "cache_features" => "--no-feature-cache".to_string(),
                "lofi" => "--lofi".into(),
                other => format!("--{}", other.replace('_', "-")),
            };
            let short = |x: &serde_json::Value| {
                let t = x.to_string();
                if t.len() > 60 {
                    format!("{}...", &t[..57])
                } else {
                    t
                }
            };
            format!(
                "{flag} asks for {} where the run has {}",
                short(v),
                c.get(k.as_str()).map_or("nothing".into(), short)
            )
        })
        .collect();
    for (given, flag) in [
        (a.weights.is_some(), "--weights"),
        (a.from_scratch, "--from-scratch"),
        (a.family.is_some(), "--family"),
        (a.config.is_some(), "--config"),
        (a.memory_budget.is_some(), "--memory-budget"),
    ] {
        if given {
            out.push(format!(
                "{flag} only applies when a run starts (the checkpoint holds the weights and \
                 settings)"
            ));
        }
    }
    Ok(out)
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    let start = Instant::now();
    let default_out = |mode: TrainMode| PathBuf::from("runs").join(mode.to_string());
    let device = backend::device(a.backend.parse()?)?;
    if a.resume {
        let mut out = a
            .out
            .clone()
            .unwrap_or_else(|| default_out(a.mode.unwrap_or_default()));
        let ck = Checkpoint::load(&out)?;
        let conflicts = resume_conflicts(&a, &ck.meta.config)?;
        if !conflicts.is_empty() {
            return Err(Error::ResumeConflict {
                path: out,
                conflicts: conflicts.join("; "),
            });
        }
        let data = load_dataset(&a.data, &SynthConfig::new(), ck.meta.config.clips.span())?;
        outln!(
            "resuming {} at epoch {}, step {}",
            out.display(),
            ck.meta.state.epoch + 1,
            ck.meta.state.global_step
        )?;
        let opts = RunOptions {
            out_dir: out.clone(),
            quiet: a.quiet,
            stop_after_steps: a.stop_after_steps,
            overwrite: false,
        };
        let changes = e2e_tal::train::ResumeChanges { epochs: a.epochs };
        let mut cfg = ck.meta.config.clone();
        let outcome = e2e_tal::train::resume_with(ck, &data, &opts, &changes, &device)?;
        cfg.epochs = a.epochs.unwrap_or(cfg.epochs);
        out.clone_from(&opts.out_dir);
        return report_outcome(&outcome, &data, &cfg, &out, start);
    }
    let mut cfg = match &a.config {
        Some(p) => e2e_tal::train::config::read_config(p, &TrainConfig::new())?,
        None => TrainConfig::new(),
    };
    apply_flags(&a, &mut cfg)?;
    cfg.validate()?;
    let mode = cfg.mode;
    let backbone_name = a.backbone.clone().unwrap_or_else(|| "synthetic".into());
    let mut out = a.out.clone().unwrap_or_else(|| default_out(mode));
    // Refuse an existing run before any work; with --overwrite its outputs are removed only
    // once the data and weights have loaded (below, or in `train`).
    if !a.overwrite {
        e2e_tal::train::prepare_run_folder(&out, false)?;
    }
    let opts = RunOptions {
        out_dir: out.clone(),
        quiet: a.quiet,
        stop_after_steps: a.stop_after_steps,
        overwrite: a.overwrite,
    };
    let (outcome, data, cfg) = {
        let t = Instant::now();
        let data = load_dataset(&a.data, &SynthConfig::new(), cfg.clips.span())?;
        let n_train = data.indices(Subset::Training).len();
        outln!(
            "dataset: {} ({} training, {} validation videos, {} classes) loaded in {:.1}s",
            a.data.display(),
            n_train,
            data.indices(Subset::Validation).len(),
            data.classes.len(),
            t.elapsed().as_secs_f64()
        )?;
        let weights = match (&a.weights, a.from_scratch) {
            (Some(w), _) => Some(w.clone()),
            (None, false) => Some(pretrained_backbone(&cfg, a.quiet, &device)?),
            (None, true) => None,
        };
        device.seed(cfg.seed);
        let mut backbone = cfg.backbone.init(&device);
        if let Some(w) = &weights {
            let family = match (&a.family, backbone_name.parse::<BackbonePreset>()) {
                (Some(f), _) => f.parse()?,
                (None, Ok(p)) => p.default_family(),
                (None, Err(_)) => CheckpointFamily::Native,
            };
            let r = backbone.load(w, family)?;
            outln!("backbone: {} tensors from {}", r.applied.len(), w.display())?;
        }
        if let Some(b) = &a.memory_budget {
            e2e_tal::train::prepare_run_folder(&out, a.overwrite)?;
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
            outln!("{choice}")?;
            cfg.lofi.mode = choice.mode();
        }
        outln!(
            "training: mode {mode}, {} epochs, backbone {}, run folder {}",
            cfg.epochs,
            backbone_name,
            out.display()
        )?;
        if a.retrain_head {
            e2e_tal::train::prepare_run_folder(&out, a.overwrite)?;
            // LoFi-E2E stages 2 and 3: report stage 2, then continue with stage 3's run.
            let st = e2e_tal::train::stages::end_to_end_then_head(
                cfg.clone(),
                cfg.epochs,
                &data,
                backbone,
                &opts,
                &device,
            )?;
            if let Some((_, r)) = &st.end_to_end.evaluation {
                outln!(
                    "stage 2 ({mode}, end to end) validation avg mAP {:.2}% -> {}",
                    100.0 * r.average_map,
                    out.join("stage2").display()
                )?;
            }
            out = out.join("stage3");
            let c = cfg.clone().with_mode(TrainMode::HeadOnly);
            outln!("stage 3: head retrained at full fidelity on the frozen stage-2 backbone")?;
            (st.head, data, c)
        } else {
            let outcome = e2e_tal::train::train(cfg.clone(), &data, backbone, &opts, &device)?;
            (outcome, data, cfg)
        }
    };
    report_outcome(&outcome, &data, &cfg, &out, start)
}

/// Print what a finished (or stopped) run produced and save a trained backbone's weights.
fn report_outcome(
    outcome: &e2e_tal::train::TrainOutcome,
    data: &TalDataset,
    cfg: &TrainConfig,
    out: &Path,
    start: Instant,
) -> Result<()> {
    if let Some(b) = outcome.peak_step_bytes {
        outln!(
            "peak memory of a training step: {} MiB",
            e2e_tal::memory::mib(b)
        )?;
    }
    // Files first: a closed standard output below must not cost the trained weights.
    let weights = match &outcome.evaluation {
        Some(_) if cfg.mode.trains_backbone() => {
            // The adapted backbone, for `--mode head-only --weights` (LoFi stage 3).
            let path = out.join("backbone.safetensors");
            let trained = outcome.ema.as_ref().unwrap_or(&outcome.model);
            trained.backbone.save(&path)?;
            Some(path)
        }
        _ => None,
    };
    match &outcome.evaluation {
        None if outcome.state.epoch >= cfg.epochs => outln!(
            "finished after {} steps; the dataset has no validation videos to evaluate",
            outcome.state.global_step
        )?,
        None => outln!(
            "stopped after {} steps; continue with --resume",
            outcome.state.global_step
        )?,
        Some((preds, report)) => {
            outln!("\nvalidation mAP, THUMOS thresholds:")?;
            print_report(report, false)?;
            let anet = evaluate(
                &data.ground_truth,
                preds,
                &EvalOptions {
                    subset: Some(Subset::Validation),
                    thresholds: ThresholdSet::ActivityNet.values(),
                },
            )?;
            outln!(
                "(ActivityNet thresholds 0.5:0.95: average {:.2}%; mode {}, {} epochs)",
                100.0 * anet.average_map,
                cfg.mode,
                cfg.epochs
            )?;
            outln!("predictions: {}", out.join("predictions.json").display())?;
            if let Some(path) = &weights {
                outln!("backbone weights: {}", path.display())?;
            }
        }
    }
    outln!("total {:.1}s", start.elapsed().as_secs_f64())?;
    Ok(())
}

pub fn run_infer(a: InferArgs) -> Result<()> {
    let device = backend::device(a.backend.parse()?)?;
    match (&a.dataset, &a.video) {
        (Some(json), None) => infer_dataset(&a, json, &device),
        (None, Some(video)) => infer_video(&a, video, &device),
        _ => Err(Error::Config(
            "give exactly one of --dataset JSON or --video FILE|DIR".into(),
        )),
    }
}

/// Files of a checkpoint that an output must not replace.
fn checkpoint_inputs(dir: &Path) -> Vec<PathBuf> {
    ["state.json", "model.bpk", "ema.bpk"]
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

/// `infer --video`: one call into the library, then a table, the results JSON and a timeline.
fn infer_video(a: &InferArgs, input: &Path, device: &burn::tensor::Device) -> Result<()> {
    let ck_dir = e2e_tal::train::checkpoint::find(&a.checkpoint).unwrap_or(a.checkpoint.clone());
    let mut inputs = checkpoint_inputs(&ck_dir);
    inputs.push(input.to_path_buf());
    let timeline = match &a.timeline {
        Some(dir) => dir.join(format!("{}.png", e2e_tal::train::infer::video_id(input))),
        None => a.out.with_extension("png"),
    };
    let check = |out: &Path, also: &[&Path]| {
        let mut all: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        all.extend(also);
        e2e_tal::io::check_output(out, &all)
    };
    check(&a.out, &[&timeline])?;
    check(&timeline, &[&a.out])?;
    let t = Instant::now();
    let r = detect_video(&a.checkpoint, input, a.fps, device)?;
    Predictions {
        videos: vec![r.to_results()],
    }
    .write_json(&a.out)?;
    write_timeline(
        &timeline,
        &[],
        &r.detections,
        r.duration,
        r.classes.len(),
        0.1,
    )?;
    outln!(
        "{}: {} frames at {:.3} fps ({:.1} s), {} detections in {:.1}s",
        r.source.display(),
        r.frames,
        r.fps,
        r.duration,
        r.detections.len(),
        t.elapsed().as_secs_f64()
    )?;
    outln!("\n| start (s) | end (s) | class | score |\n|---:|---:|---|---:|")?;
    for d in r.detections.iter().filter(|d| d.score >= a.min_score) {
        outln!(
            "| {:.2} | {:.2} | {} | {:.3} |",
            d.start,
            d.end,
            r.classes[d.label],
            d.score
        )?;
    }
    outln!(
        "\nresults (all {} detections) -> {}\ntimeline -> {}",
        r.detections.len(),
        a.out.display(),
        timeline.display()
    )?;
    Ok(())
}

fn infer_dataset(a: &InferArgs, json: &Path, device: &burn::tensor::Device) -> Result<()> {
    let ck = Checkpoint::load(&a.checkpoint)?;
    let mut inputs = checkpoint_inputs(&ck.dir);
    inputs.push(json.to_path_buf());
    e2e_tal::io::check_output(
        &a.out,
        &inputs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )?;
    let cfg = ck.meta.config.clone();
    let (model, layers) = e2e_tal::train::infer::trained_model(&ck, device)?;
    let gt = GroundTruth::from_json_file(json)?;
    let media = a
        .frames
        .clone()
        .unwrap_or_else(|| media_dir(json.parent().unwrap_or(Path::new("."))));
    let subsets: Vec<Subset> = a.subset.0.into_iter().collect();
    let videos = TalDataset::load(&gt, &media, &subsets, a.fps, cfg.clips.span())?.videos;
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
    outln!(
        "{} videos, {} detections in {:.1}s -> {}",
        videos.len(),
        preds.len(),
        t.elapsed().as_secs_f64(),
        a.out.display()
    )?;
    Ok(())
}

pub fn run_pretrain(a: PretrainArgs) -> Result<()> {
    let mut cfg = match &a.config {
        Some(p) => e2e_tal::train::config::read_config(p, &PretrainConfig::new())?,
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
    let inputs: Vec<&Path> = a
        .weights
        .iter()
        .chain(&a.config)
        .map(PathBuf::as_path)
        .collect();
    e2e_tal::io::check_output(&a.out, &inputs)?;
    let job = PretrainJob {
        data: &a.data,
        videos: a.videos,
        out: &a.out,
        init: a.weights.as_deref(),
        quiet: a.quiet,
    };
    pretrain_to(&cfg, &job, &device)
}
