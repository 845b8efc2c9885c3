//! `e2e-tal infer`: detections from a trained run's checkpoint, for a dataset or one video.

use std::path::{Path, PathBuf};
use std::time::Instant;

use e2e_tal::backend::{self, BackendKind};
use e2e_tal::data::media_dir;
use e2e_tal::data::{GroundTruth, Predictions, Subset, VideoDetections};
use e2e_tal::eval::write_timeline;
use e2e_tal::precision::Precision;
use e2e_tal::train::{
    Checkpoint, Detector, InferOptions, TalDataset, detect_video, with_precision,
};
use e2e_tal::{Error, Result};

use super::SubsetFilter;

#[derive(clap::Args)]
pub struct InferArgs {
    /// Run folder (or checkpoint folder) of a trained model.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Ground truth / video list (ActivityNet JSON); each video is a frame folder `<id>/` or a
    /// video file `<id>.mp4|mkv|webm|...` in --frames.
    #[arg(long, conflicts_with = "video")]
    dataset: Option<PathBuf>,
    /// Media folder for --dataset (default: frames/ next to the JSON, else videos/).
    #[arg(long)]
    frames: Option<PathBuf>,
    /// Pre-extracted features of --dataset's videos (`<prefix><id>.npy`), for a run of
    /// `train --features` or `weights import-actionformer`.
    #[arg(long, requires = "dataset", conflicts_with_all = ["frames", "video"])]
    features: Option<PathBuf>,
    /// Subset of --dataset to run on.
    #[arg(long, value_enum, default_value_t = SubsetFilter::VALIDATION)]
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
    /// Also write one PNG timeline per video into this folder (with --video, the timeline goes
    /// next to --out unless this is given).
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// With --video, the lowest score shown in the table (the JSON keeps every detection).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true, value_parser = unit_interval)]
    min_score: f64,
    /// Precision of the backbone's branches and the adapters (default: the run's; f32 master
    /// weights either way).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
}

/// A positive finite number as a flag value (a frame rate).
fn positive(s: &str) -> std::result::Result<f64, String> {
    let plausible = e2e_tal::data::PLAUSIBLE_FPS;
    match s.trim().parse::<f64>() {
        Ok(v) if plausible.contains(&v) => Ok(v),
        _ => Err(format!(
            "expected a frame rate between {} and {}",
            plausible.start(),
            plausible.end()
        )),
    }
}

/// A number in `[0, 1]` as a flag value (a score).
fn unit_interval(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("expected a number in [0, 1]".into()),
    }
}

pub fn run(a: InferArgs) -> Result<()> {
    let device = backend::device(a.backend)?;
    if let Some(f) = &a.features {
        let dataset = a
            .dataset
            .as_ref()
            .expect("clap requires --dataset with --features");
        if a.timeline.is_some() || a.fps.is_some() || a.precision.is_some() {
            return Err(Error::Config(
                "--timeline, --fps and --precision apply to videos, not to --features".into(),
            ));
        }
        return super::features::infer(&a.checkpoint, dataset, f, a.subset.0, &a.out, &device);
    }
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
    let ck_dir = e2e_tal::train::find_checkpoint(&a.checkpoint).unwrap_or(a.checkpoint.clone());
    let mut inputs = checkpoint_inputs(&ck_dir);
    inputs.push(input.to_path_buf());
    let timeline = match &a.timeline {
        Some(dir) => dir.join(format!(
            "{}.png",
            e2e_tal::io::file_stem_for(&e2e_tal::train::video_id(input))
        )),
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
    let opts = InferOptions {
        fps: a.fps,
        precision: a.precision,
    };
    let r = detect_video(&a.checkpoint, input, &opts, device)?;
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
    if let Some(dir) = &a.timeline {
        e2e_tal::io::check_output_dir(dir)?;
    }
    let cfg = with_precision(&ck.meta.config, a.precision, device)?;
    let model = e2e_tal::train::trained_model(&ck, device)?;
    let gt = GroundTruth::from_json_file(json)?;
    let media = a
        .frames
        .clone()
        .unwrap_or_else(|| media_dir(json.parent().unwrap_or(Path::new("."))));
    let subsets: Vec<Subset> = a.subset.0.into_iter().collect();
    let videos = TalDataset::load(&gt, &media, &subsets, a.fps, cfg.clips.span())?.videos;
    let det = Detector::new(&model, &cfg, device)?;
    let t = Instant::now();
    let mut out = Vec::new();
    for v in &videos {
        let segs = det.detect(v)?;
        if let Some(dir) = &a.timeline {
            write_timeline(
                &dir.join(format!("{}.png", e2e_tal::io::file_stem_for(&v.id))),
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
