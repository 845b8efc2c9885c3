//! `e2e-tal`: command-line front end of the e2e-tal library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

/// Print a line of the command's output. A closed or full standard output (`| head -1`,
/// `> /dev/full`) is an error naming it, never a panic.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)
            .map_err(|e| e2e_tal::Error::io("standard output", e))
    }};
}

mod cli;
use e2e_tal::backbone::BackbonePreset;
use e2e_tal::baseline::{NoisyOracleConfig, noisy_oracle};
use e2e_tal::data::source::{locate, media_dir};
use e2e_tal::data::synth::{FrameFormat, load_or_generate};
use e2e_tal::data::{
    ClipSamplingConfig, GroundTruth, Predictions, Subset, SynthConfig, ThumosSource, load_thumos,
    open_source, sample_clips,
};
use e2e_tal::eval::{EvalOptions, EvalReport, ThresholdSet, evaluate};
use e2e_tal::tal::postprocess::PostProcessConfig;
use e2e_tal::weights::{self, CheckpointFamily};
use e2e_tal::{Error, Result, backend};

#[derive(Parser)]
#[command(
    name = "e2e-tal",
    version,
    about = "Memory-efficient end-to-end temporal action localization"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the synthetic untrimmed-video benchmark (frames + ActivityNet-format JSON).
    Synth {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Number of videos.
        #[arg(long, default_value_t = 40, value_parser = count_in(1, e2e_tal::data::synth::MAX_VIDEOS))]
        videos: usize,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Frame height and width in pixels (16-2048).
        #[arg(long, default_value_t = 64, value_parser = count_in(16, e2e_tal::data::synth::MAX_SIDE))]
        size: usize,
        /// Number of action classes (1-8).
        #[arg(long, default_value_t = 8, value_parser = count_in(1, 8))]
        classes: usize,
        /// Write PNG frames instead of JPEG.
        #[arg(long, conflicts_with = "video")]
        png: bool,
        /// Write each video as an H.264 mp4 file (`videos/<id>.mp4`, needs FFmpeg) instead of
        /// a folder of frames.
        #[arg(long)]
        video: bool,
    },
    /// Evaluate detections against ground truth (official ActivityNet mAP).
    Eval {
        /// Ground truth, ActivityNet JSON.
        #[arg(long)]
        gt: PathBuf,
        /// Detections, ActivityNet results JSON.
        #[arg(long)]
        pred: PathBuf,
        /// Subset to evaluate: training, validation, testing or all.
        #[arg(long, default_value = "validation", value_parser = subset_or_all)]
        subset: SubsetFilter,
        /// tIoU thresholds: anet (0.5:0.05:0.95), thumos (0.3:0.1:0.7) or a list like 0.3,0.5
        /// (each in (0, 1]).
        #[arg(long, default_value = "anet", allow_hyphen_values = true, value_parser = thresholds)]
        thresholds: ThresholdSet,
        /// Print a JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also print AP per class.
        #[arg(long)]
        per_class: bool,
    },
    /// Convert THUMOS-14 per-class annotation files to ActivityNet JSON.
    ConvertThumos {
        /// Folder holding `<Class>_<split>.txt` files.
        #[arg(long)]
        dir: PathBuf,
        /// File-name suffix to read (`val` or `test`).
        #[arg(long, default_value = "val")]
        split: String,
        /// Subset written for the videos: training, validation or testing.
        #[arg(long, default_value = "validation", value_parser = subset)]
        subset: Subset,
        /// Output JSON.
        #[arg(long)]
        out: PathBuf,
    },
    /// Inspect or convert PyTorch backbone checkpoints.
    Weights {
        #[command(subcommand)]
        action: WeightsAction,
    },
    /// The main job: train a detector end to end (or in another mode) and print its validation
    /// mAP. With no arguments: generate the synthetic benchmark into data/synth if missing,
    /// pretrain the default backbone by clip classification on a separate synthetic set (once,
    /// cached in runs/pretrain) and train backbone + head end to end on the CPU.
    Train(Box<TrainArgs>),
    /// Clip-classification pretraining of a backbone on trimmed action clips (the analogue of
    /// Kinetics pretraining): by default on a second synthetic benchmark (seed 1, generated
    /// into data/synth-pretrain if missing), so the backbone has not seen the TAL videos.
    Pretrain(PretrainArgs),
    /// Detect actions with a trained run's checkpoint: ActivityNet results JSON, optional PNG
    /// timelines (ground truth vs detections).
    Infer(InferArgs),
    /// Noisy-oracle baseline: generate the synthetic benchmark if missing, load every
    /// validation video through the clip pipeline, make detections from the ground truth plus
    /// noise and print their mAP (a check of the evaluation pipeline, not a model).
    Baseline {
        /// Dataset folder (generated with default settings if it has no annotations.json).
        #[arg(long, default_value = "data/synth")]
        data: PathBuf,
        /// Backend for the clip tensors (cpu, wgpu, cuda).
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Seed of the noisy oracle.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Dataset folder with annotations.json and frames/<video>/ or videos/<video>.mp4 (the
    /// synthetic benchmark is generated there with default settings when annotations.json is
    /// missing).
    #[arg(long, default_value = "data/synth")]
    data: PathBuf,
    /// Run folder (checkpoints, features, predictions, metrics); default runs/<mode>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training mode: full (default), head-only, reversible, adapter.
    #[arg(long)]
    mode: Option<e2e_tal::train::TrainMode>,
    /// Backbone: `synthetic` (the small ViT the defaults are tuned for; default) or a preset
    /// (vit-s, vit-b, swin-t, r3d-18, ...).
    #[arg(long)]
    backbone: Option<String>,
    /// Backbone checkpoint to start from (.safetensors or .pth). Without it (and without
    /// --from-scratch) the backbone starts from clip-classification pretraining on a separate
    /// synthetic set (`e2e-tal pretrain`, run first if runs/pretrain has no weights for it).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Start the backbone from random weights instead of the pretrained ones.
    #[arg(long, conflicts_with = "weights")]
    from_scratch: bool,
    /// Key map of --weights (default: the preset's family; `native` for e2e-tal's layout).
    #[arg(long)]
    family: Option<String>,
    /// Full configuration as JSON (a run's config.json); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate of the head / adapters.
    #[arg(long, allow_negative_numbers = true)]
    lr_head: Option<f64>,
    /// Peak learning rate of the backbone.
    #[arg(long, allow_negative_numbers = true)]
    lr_backbone: Option<f64>,
    /// At most this many clips per training step (random window); 0 for whole videos.
    #[arg(long)]
    max_train_clips: Option<usize>,
    /// Keep an EMA of the weights with this decay (e.g. 0.999 for long runs) and evaluate it.
    #[arg(long, allow_negative_numbers = true)]
    ema_decay: Option<f64>,
    /// Evaluate every N epochs (0: only at the end).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Low-fidelity sampling of the training steps (LoFi-E2E): full, s (r_s 2), t (r_t 4), st
    /// (r_t 2, r_s sqrt 2), short (cycle S -> T -> ST every 16 steps), long (every epoch).
    #[arg(long)]
    lofi: Option<String>,
    /// LoFi-E2E budget mode: measure one training step at r_t in {1,2,4} x r_s in {1, sqrt 2,
    /// 2} on the longest training video and train at the highest fidelity whose step fits this
    /// many bytes (e.g. 300MiB, 2GiB; a bare number is MiB). Prints the measurements.
    #[arg(long, conflicts_with = "lofi")]
    memory_budget: Option<String>,
    /// Head-only / adapter: run the frozen backbone at every step instead of extracting its
    /// outputs once (bounded memory for big datasets; head-only's memory-comparable baseline
    /// for LoSA; allows --augment and --lofi in these modes).
    #[arg(long)]
    no_feature_cache: bool,
    /// After training backbone + head (LoFi-E2E stage 2, in OUT/stage2), freeze the backbone and
    /// train a new head at full fidelity on its features (stage 3, in OUT/stage3).
    #[arg(long, conflicts_with = "resume")]
    retrain_head: bool,
    /// Augment each step's clips as the synthetic benchmark allows (random channel
    /// permutation, roll by up to 16 pixels; the same for all clips of a step).
    #[arg(long)]
    augment: bool,
    /// Run the ViT rewired into its reversible form also in modes full / head-only (mode
    /// reversible always does).
    #[arg(long)]
    rewired: bool,
    /// Continue the run in --out from its checkpoint. Flags that contradict the checkpoint's
    /// settings are an error; --epochs may change (the new length is recorded).
    #[arg(long)]
    resume: bool,
    /// Start a new run in an --out folder that holds one, removing that run's outputs
    /// (checkpoints, predictions, metrics, weights) first.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Stop after this many steps in total (a checkpoint is written; continue with --resume).
    #[arg(long)]
    stop_after_steps: Option<usize>,
    /// Backend (cpu, wgpu, cuda).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct PretrainArgs {
    /// Dataset folder (a synthetic benchmark with seed 1 is generated there when
    /// annotations.json is missing).
    #[arg(long, default_value = "data/synth-pretrain")]
    data: PathBuf,
    /// Videos of a generated pretraining set.
    #[arg(long, default_value_t = e2e_tal::train::workspace::PRETRAIN_VIDEOS,
          value_parser = count_in(1, e2e_tal::data::synth::MAX_VIDEOS))]
    videos: usize,
    /// Output backbone weights (safetensors, e2e-tal layout; `train --weights` loads them).
    #[arg(long, default_value = e2e_tal::train::workspace::PRETRAINED)]
    out: PathBuf,
    /// Full configuration as JSON; the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start from these backbone weights (e2e-tal layout) instead of random ones.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Train the ViT in its rewired, reversible form (Re2TAL's fine-tuning after rewiring;
    /// use with --weights of the ordinary pretrained backbone).
    #[arg(long)]
    rewired: bool,
    /// Optimisation steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Clips per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Backend (cpu, wgpu, cuda).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// No per-step lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct InferArgs {
    /// Run folder (or checkpoint folder) of a trained model.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Ground truth / video list (ActivityNet JSON); each video is a frame folder
    /// `<id>/` or a video file `<id>.mp4|mkv|webm|...` in --frames.
    #[arg(long, conflicts_with = "video")]
    dataset: Option<PathBuf>,
    /// Media folder for --dataset (default: frames/ next to the JSON, else videos/).
    #[arg(long)]
    frames: Option<PathBuf>,
    /// Subset of --dataset to run on: training, validation, testing or all.
    #[arg(long, default_value = "validation", value_parser = subset_or_all)]
    subset: SubsetFilter,
    /// A single video: a video file (mp4, mkv, webm, avi, mov; needs FFmpeg) or a folder of
    /// frames. Prints a table of detections and writes --out and a PNG timeline.
    #[arg(long)]
    video: Option<PathBuf>,
    /// Frame rate to sample at (positive). Default: the rate the run was trained at (a video
    /// file is resampled to it by timestamp); for --dataset, each video's own rate.
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    fps: Option<f64>,
    /// Output ActivityNet results JSON.
    #[arg(long)]
    out: PathBuf,
    /// Also write one PNG timeline per video into this folder (with --video, the timeline
    /// goes next to --out unless this is given).
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// With --video, the lowest score shown in the table (the JSON keeps every detection).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true, value_parser = unit_interval)]
    min_score: f64,
    /// Backend (cpu, wgpu, cuda).
    #[arg(long, default_value = "cpu")]
    backend: String,
}

#[derive(Subcommand)]
enum WeightsAction {
    /// List a checkpoint's tensors (and, with --family, where each one lands).
    Inspect {
        /// Checkpoint (.safetensors, or a PyTorch .pth / .pt).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Key map to show: hf-videomae, videomae-v2, swin3d, r3d, r2plus1d, native.
        #[arg(long)]
        family: Option<String>,
    },
    /// Load a checkpoint into a backbone preset through its key map and write it in e2e-tal's
    /// layout (load it later with family `native`).
    Convert {
        /// Backbone preset: vit-s, vit-b, vit-l, vit-h, vit-g, swin-t, swin-s, swin-b, r3d-18,
        /// r2plus1d-18.
        #[arg(long)]
        model: String,
        /// Checkpoint to read (.safetensors, or .pth/.pt).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Key map (default: the preset's usual family).
        #[arg(long)]
        family: Option<String>,
        /// Output .safetensors.
        #[arg(long)]
        out: PathBuf,
    },
}

fn run_weights(action: WeightsAction) -> Result<()> {
    match action {
        WeightsAction::Inspect { checkpoint, family } => {
            let map = family
                .map(|f| f.parse::<CheckpointFamily>())
                .transpose()?
                .map(|f| f.key_map());
            let tensors = weights::inspect(&checkpoint)?;
            for (key, dtype, shape) in &tensors {
                match &map {
                    Some(m) => outln!("{key} {dtype} {shape:?} -> {}", m.rename(key))?,
                    None => outln!("{key} {dtype} {shape:?}")?,
                }
            }
            let n: usize = tensors
                .iter()
                .map(|(_, _, s)| s.iter().product::<usize>())
                .sum();
            outln!("{} tensors, {n} values", tensors.len())?;
        }
        WeightsAction::Convert {
            model,
            checkpoint,
            family,
            out,
        } => {
            let preset: BackbonePreset = model.parse()?;
            let family = match family {
                Some(f) => f.parse()?,
                None => preset.default_family(),
            };
            e2e_tal::io::check_output(&out, &[&checkpoint])?;
            let mut backbone = preset.init(&backend::cpu_device());
            let report = backbone.load(&checkpoint, family)?;
            outln!(
                "loaded {} tensors into {} ({} ignored, {} unused)",
                report.applied.len(),
                preset.name(),
                report.ignored.len(),
                report.unused.len()
            )?;
            for k in &report.unused {
                outln!("  unused: {k}")?;
            }
            backbone.save(&out)?;
            outln!("wrote {}", out.display())?;
        }
    }
    Ok(())
}

/// `training`, `validation`, `testing` (or their short forms) as a flag value.
fn subset(s: &str) -> std::result::Result<Subset, String> {
    s.parse()
}

/// A subset, or every video (`all`): the subset filter of `eval` and `infer`.
#[derive(Debug, Clone, Copy)]
struct SubsetFilter(Option<Subset>);

/// [`subset`], or `all`.
fn subset_or_all(s: &str) -> std::result::Result<SubsetFilter, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(SubsetFilter(None));
    }
    s.parse()
        .map(|s| SubsetFilter(Some(s)))
        .map_err(|_: String| {
            format!("unknown subset `{s}` (expected training, validation, testing or all)")
        })
}

fn thresholds(s: &str) -> std::result::Result<ThresholdSet, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// A whole number in `lo..=hi` as a flag value.
fn count_in(lo: usize, hi: usize) -> impl Fn(&str) -> std::result::Result<usize, String> + Clone {
    move |s| match s.trim().parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number in {lo}..={hi}")),
    }
}

/// A positive finite number as a flag value (a frame rate).
fn positive(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err("expected a positive finite number".into()),
    }
}

/// A number in `[0, 1]` as a flag value (a score).
fn unit_interval(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("expected a number in [0, 1]".into()),
    }
}

fn print_report(r: &EvalReport, per_class: bool) -> Result<()> {
    outln!("{r}")?;
    if per_class {
        outln!("\n| class | AP per threshold (%) |\n|---|---|")?;
        for (c, ap) in &r.per_class {
            let v: Vec<String> = ap.iter().map(|x| format!("{:.2}", x * 100.0)).collect();
            outln!("| {c} | {} |", v.join(" "))?;
        }
    }
    if r.ignored_predictions > 0 {
        e2e_tal::io::warning(format_args!(
            "note: {} predictions have labels absent from the ground truth and were ignored",
            r.ignored_predictions
        ));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth {
            out,
            videos,
            seed,
            size,
            classes,
            png,
            video,
        } => {
            let cfg = SynthConfig::new()
                .with_videos(videos)
                .with_seed(seed)
                .with_height(size)
                .with_width(size)
                .with_num_classes(classes)
                .with_format(match (png, video) {
                    (_, true) => FrameFormat::Mp4,
                    (true, _) => FrameFormat::Png,
                    _ => FrameFormat::Jpeg,
                });
            let t = Instant::now();
            let ds = cfg.generate(&out)?;
            let n_ann: usize = ds
                .ground_truth
                .videos
                .iter()
                .map(|v| v.annotations.len())
                .sum();
            let n_frames: usize = ds
                .ground_truth
                .videos
                .iter()
                .filter_map(|v| v.num_frames)
                .sum();
            outln!(
                "wrote {} videos ({n_frames} frames, {n_ann} actions, {} classes) to {} in {:.1}s",
                ds.ground_truth.videos.len(),
                ds.classes.len(),
                out.display(),
                t.elapsed().as_secs_f64()
            )?;
        }
        Command::Eval {
            gt,
            pred,
            subset,
            thresholds,
            json,
            per_class,
        } => {
            let opts = EvalOptions {
                subset: subset.0,
                thresholds: thresholds.values(),
            };
            let gt = GroundTruth::from_json_file(&gt)?;
            let pred = Predictions::from_json_file(&pred)?;
            let report = evaluate(&gt, &pred, &opts)?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serialises")
                )?;
            } else {
                print_report(&report, per_class)?;
            }
        }
        Command::ConvertThumos {
            dir,
            split,
            subset,
            out,
        } => {
            let gt = load_thumos(&ThumosSource {
                dir: &dir,
                split: &split,
                subset,
                durations: None,
            })?;
            let inputs = e2e_tal::data::thumos::annotation_files(&dir, &split)?;
            let inputs: Vec<&Path> = inputs.iter().map(|(_, p)| p.as_path()).collect();
            e2e_tal::io::check_output(&out, &inputs)?;
            gt.write_json(&out)?;
            outln!("wrote {} videos to {}", gt.videos.len(), out.display())?;
        }
        Command::Weights { action } => run_weights(action)?,
        Command::Train(args) => cli::run_train(*args)?,
        Command::Pretrain(args) => cli::run_pretrain(args)?,
        Command::Infer(args) => cli::run_infer(args)?,
        Command::Baseline {
            data,
            backend: b,
            seed,
        } => {
            let start = Instant::now();
            let device = backend::device(b.parse()?)?;
            let ds = load_or_generate(&data, &SynthConfig::new())?;
            outln!(
                "dataset: {} ({} videos, {} classes) ready in {:.1}s",
                data.display(),
                ds.ground_truth.videos.len(),
                ds.classes.len(),
                start.elapsed().as_secs_f64()
            )?;
            if ds
                .ground_truth
                .subset(Some(Subset::Validation))
                .next()
                .is_none()
            {
                return Err(Error::EmptyInput {
                    path: data.join(e2e_tal::data::synth::ANNOTATIONS_FILE),
                    reason: "no video in subset `validation` to run the baseline on".into(),
                });
            }
            // Push every validation video through frame decoding and clip sampling, so the job
            // fails loudly on a broken dataset.
            let clip_cfg = ClipSamplingConfig::new();
            let t = Instant::now();
            let (mut videos, mut clips) = (0, 0);
            for v in ds.ground_truth.subset(Some(Subset::Validation)) {
                let src = open_source(&locate(&media_dir(&data), &v.id)?, &v.id, None)?;
                if let Some(n) = v.num_frames {
                    src.check_count(n)?;
                }
                let frames = src.read_all(None)?;
                let fps = src
                    .fps()
                    .or(v.fps)
                    .unwrap_or(frames.len as f64 / v.duration);
                let batch = sample_clips(&frames, fps, &clip_cfg, None, &device)?;
                videos += 1;
                clips += batch.num_valid;
            }
            outln!(
                "clip pipeline: {videos} validation videos -> {clips} clips of {} frames in {:.1}s",
                clip_cfg.clip_frames,
                t.elapsed().as_secs_f64()
            )?;
            let post = PostProcessConfig::new();
            let pred = noisy_oracle(
                &ds.ground_truth,
                Some(Subset::Validation),
                &ds.classes,
                &NoisyOracleConfig::new().with_seed(seed),
                &post,
            );
            let pred_path = data.join("baseline_predictions.json");
            pred.write_json(&pred_path)?;
            outln!(
                "noisy-oracle baseline (ground truth + noise, no learning): {} detections -> {}",
                pred.len(),
                pred_path.display()
            )?;
            for (name, set) in [
                ("THUMOS", ThresholdSet::Thumos),
                ("ActivityNet", ThresholdSet::ActivityNet),
            ] {
                let opts = EvalOptions {
                    subset: Some(Subset::Validation),
                    thresholds: set.values(),
                };
                outln!("\nmAP, {name} thresholds:")?;
                print_report(&evaluate(&ds.ground_truth, &pred, &opts)?, false)?;
            }
            outln!("\ntotal {:.1}s", start.elapsed().as_secs_f64())?;
        }
    }
    Ok(())
}

#[global_allocator]
static ALLOC: e2e_tal::memory::CountingAllocator = e2e_tal::memory::CountingAllocator;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e2e_tal::io::warning(format_args!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}
