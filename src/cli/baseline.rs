//! `e2e-tal baseline`: the noisy-oracle check of the data and evaluation pipeline.

use std::path::PathBuf;
use std::time::Instant;

use e2e_tal::backend::{self, BackendKind};
use e2e_tal::baseline::{NoisyOracleConfig, noisy_oracle};
use e2e_tal::data::{ClipFrames, ClipSamplingConfig, SpatialOp, Subset, SynthConfig, open_source};
use e2e_tal::data::{locate_video, media_dir};
use e2e_tal::eval::{EvalOptions, ThresholdSet, evaluate};
use e2e_tal::tal::postprocess::PostProcessConfig;
use e2e_tal::{Error, Result};

use super::print_report;

#[derive(clap::Args)]
pub struct BaselineArgs {
    /// Dataset folder (generated with default settings if it has no annotations.json).
    #[arg(long, default_value = "data/synth")]
    data: PathBuf,
    /// Backend for the clip tensors.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// Seed of the noisy oracle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: BaselineArgs) -> Result<()> {
    let start = Instant::now();
    let device = backend::device(a.backend)?;
    let data = &a.data;
    let ds = SynthConfig::new().load_or_generate(data)?;
    outln!(
        "dataset: {} ({} videos, {} classes) ready in {:.1}s",
        data.display(),
        ds.ground_truth.videos.len(),
        ds.classes.len(),
        start.elapsed().as_secs_f64()
    )?;
    let validation = Some(Subset::Validation);
    if ds.ground_truth.subset(validation).next().is_none() {
        return Err(Error::EmptyInput {
            path: data.join(e2e_tal::data::ANNOTATIONS_FILE),
            reason: "no video in subset `validation` to run the baseline on".into(),
        });
    }
    // Push every validation video through frame decoding and clip sampling, so the job fails
    // loudly on a broken dataset: 64 clips at a time, as evaluation streams them.
    let clip_cfg = ClipSamplingConfig::new();
    let t = Instant::now();
    let (mut videos, mut clips) = (0, 0);
    for v in ds.ground_truth.subset(validation) {
        let src = open_source(&locate_video(&media_dir(data), &v.id)?, &v.id, None)?;
        if let Some(n) = v.num_frames {
            src.check_count(n)?;
        }
        let n = clip_cfg.num_clips(&v.id, src.len())?;
        let op = SpatialOp::identity(src.frame_size()?);
        let mut start_clip = 0;
        while start_clip < n {
            let count = 64.min(n - start_clip);
            let read = ClipFrames::read(src.as_ref(), &clip_cfg, start_clip, count, &op)?;
            let batch = read.clips(&clip_cfg, start_clip, count, &device)?;
            clips += batch.dims()[0];
            start_clip += count;
        }
        videos += 1;
    }
    outln!(
        "clip pipeline: {videos} validation videos -> {clips} clips of {} frames in {:.1}s",
        clip_cfg.clip_frames,
        t.elapsed().as_secs_f64()
    )?;
    let oracle = NoisyOracleConfig::new().with_seed(a.seed);
    let pred = noisy_oracle(
        &ds.ground_truth,
        validation,
        &ds.classes,
        &oracle,
        &PostProcessConfig::new(),
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
            subset: validation,
            thresholds: set.values(),
        };
        outln!("\nmAP, {name} thresholds:")?;
        print_report(&evaluate(&ds.ground_truth, &pred, &opts)?, false)?;
    }
    outln!("\ntotal {:.1}s", start.elapsed().as_secs_f64())
}
