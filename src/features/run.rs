//! A run folder of a head trained on (or imported for) features: `feature_run.json` (the
//! configuration, the class names, where the weights came from) and `head.safetensors` (the
//! weights inference uses: the EMA when training kept one), plus `metrics.json` and
//! `predictions.json` after training. `infer --features` reads it.

use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::config::FeatureTrainConfig;
use super::dataset::{FeatureDataset, FeatureVideo};
use crate::data::{FeatureSequence, Predictions, VideoDetections};
use crate::error::{Error, Result};
use crate::tal::decode::decode_video;
use crate::tal::head::TalHead;
use crate::weights::CheckpointFamily;

/// The run's description file.
pub const FEATURE_RUN: &str = "feature_run.json";
/// The run's weights.
pub const HEAD_WEIGHTS: &str = "head.safetensors";
/// What a feature run writes (the only files `--overwrite` removes).
pub const FEATURE_RUN_OUTPUTS: &[&str] = &[
    FEATURE_RUN,
    HEAD_WEIGHTS,
    "metrics.json",
    "predictions.json",
];

/// What `feature_run.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureRun {
    /// The configuration (`head.input_dim` and `head.num_classes` set).
    pub config: FeatureTrainConfig,
    /// Class names in class-index order.
    pub classes: Vec<String>,
    /// Where the weights came from (`trained on ...`, `imported from ...`).
    pub origin: String,
}

impl FeatureRun {
    /// Read the run in folder `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<(Self, TalHead)> {
        let file = dir.join(FEATURE_RUN);
        if !file.is_file() {
            return Err(Error::EmptyInput {
                path: dir.to_path_buf(),
                reason: format!(
                    "not a feature run: no {FEATURE_RUN} (made by `train --features` or `weights import-actionformer`)"
                ),
            });
        }
        let run: FeatureRun = crate::io::read_json(&file)?;
        run.config.validate()?;
        let h = &run.config.head;
        if h.num_classes != run.classes.len() || h.num_classes == 0 || h.input_dim == 0 {
            return Err(Error::Config(format!(
                "{}: head.num_classes {} and input_dim {} do not fit its {} classes",
                file.display(),
                h.num_classes,
                h.input_dim,
                run.classes.len()
            )));
        }
        let mut head = h.init(device)?;
        crate::weights::load(&mut head, &dir.join(HEAD_WEIGHTS), CheckpointFamily::Native)?;
        Ok((run, head))
    }

    /// Write the run into `dir` (made when missing): the weights, then the description.
    pub fn save(&self, dir: &Path, head: &TalHead) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::weights::save(head, &dir.join(HEAD_WEIGHTS))?;
        crate::io::write_json_atomic(&dir.join(FEATURE_RUN), self)
    }
}

/// Whether a feature run may start in `dir`: refused when `dir` holds a feature run (unless
/// `overwrite`), files named like a run's without being one, another kind of run, or lies
/// inside a run or a dataset.
pub fn check_feature_run(dir: &Path, overwrite: bool) -> Result<()> {
    let present = FEATURE_RUN_OUTPUTS
        .iter()
        .any(|n| dir.join(n).symlink_metadata().is_ok());
    let trainer_run = dir.join("config.json").exists() || dir.join("checkpoint").exists();
    if !present && !trainer_run {
        return crate::io::check_output_dir(dir);
    }
    let is_run = dir.join(FEATURE_RUN).is_file() && !trainer_run;
    if overwrite && is_run {
        return Ok(());
    }
    Err(Error::WouldOverwrite {
        path: dir.to_path_buf(),
        reason: if is_run {
            "it holds a feature run; start over with --overwrite or choose another --out".into()
        } else {
            "it holds another run's or the user's files (--overwrite removes only a feature \
             run's); choose another --out"
                .into()
        },
    })
}

/// [`check_feature_run`], then remove the files of the feature run in `dir` (with
/// `overwrite`); nothing else is touched.
pub fn prepare_feature_run(dir: &Path, overwrite: bool) -> Result<()> {
    check_feature_run(dir, overwrite)?;
    for n in FEATURE_RUN_OUTPUTS {
        let p = dir.join(n);
        if p.symlink_metadata().is_ok() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// The `[B, T, C]` batch of `seqs` (rows `range` of each) padded to the longest, and its mask.
pub(crate) fn batch(
    seqs: &[(&FeatureSequence, std::ops::Range<usize>)],
    device: &Device,
) -> (Tensor<3>, Tensor<2, Bool>) {
    let t = seqs.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
    let c = seqs.first().map_or(0, |(s, _)| s.channels);
    let b = seqs.len();
    let mut x = vec![0f32; b * t * c];
    let mut m = vec![false; b * t];
    for (i, (s, r)) in seqs.iter().enumerate() {
        let n = r.len();
        x[i * t * c..i * t * c + n * c].copy_from_slice(&s.data[r.start * c..r.end * c]);
        m[i * t..i * t + n].iter_mut().for_each(|v| *v = true);
    }
    (
        Tensor::from_data(TensorData::new(x, [b, t, c]), device),
        Tensor::from_data(TensorData::new(m, [b, t]), device),
    )
}

/// Detections of `video` by `head` (one video per forward, as ActionFormer infers).
pub fn detect(
    head: &TalHead,
    cfg: &FeatureTrainConfig,
    classes: &[String],
    video: &FeatureVideo,
    device: &Device,
) -> Result<VideoDetections> {
    let seq = video.read()?;
    if seq.channels != cfg.head.input_dim {
        return Err(Error::Npy {
            path: video.path.clone(),
            reason: format!(
                "{} channels, but the head reads {}",
                seq.channels, cfg.head.input_dim
            ),
        });
    }
    let (x, mask) = batch(&[(&seq, 0..seq.len)], device);
    let out = head.forward(x, mask)?;
    let points = cfg.head.pyramid.points(head.padded_len(seq.len));
    let grid = video.grid(&cfg.data);
    let dets = decode_video(&out, 0, &points, &grid, video.duration, &cfg.post)?;
    Ok(VideoDetections::from_segments(&video.id, dets, classes))
}

/// Detections for every video of `videos`, in order, the videos shared out over the cores.
pub fn predict(
    head: &TalHead,
    cfg: &FeatureTrainConfig,
    classes: &[String],
    videos: &[&FeatureVideo],
    device: &Device,
) -> Result<Predictions> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(videos.len())
        .max(1);
    let per = videos.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<VideoDetections>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = videos
            .chunks(per)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|v| detect(head, cfg, classes, v, device))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Config("an inference thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(videos.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(Predictions { videos: out })
}

/// The class names of `data` must be the run's, in the same order.
pub fn check_classes(run: &FeatureRun, data: &FeatureDataset, dir: &Path) -> Result<()> {
    let unknown: Vec<&String> = data
        .classes
        .iter()
        .filter(|c| !run.classes.contains(c))
        .collect();
    if let Some(c) = unknown.first() {
        return Err(Error::Config(format!(
            "{}: class `{c}` is not among the {} classes of run {} ({} unknown)",
            data.annotations.display(),
            run.classes.len(),
            PathBuf::from(dir).display(),
            unknown.len()
        )));
    }
    Ok(())
}
