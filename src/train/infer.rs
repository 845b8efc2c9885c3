//! Single-video inference: a trained run's detector on one video file or frame folder, in one
//! call ([`detect_video`]).

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::checkpoint::Checkpoint;
use super::config::TrainConfig;
use super::dataset::TalVideo;
use super::model::{Detector, TalModel};
use super::trainer::load_model;
use crate::data::annotations::VideoDetections;
use crate::data::source::open_source;
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::tal::postprocess::Segment;

/// How [`detect_video`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct InferOptions {
    /// Frame rate to sample at (default: the rate the run was trained at; a video file's own
    /// rate when the run records none).
    pub fps: Option<f64>,
    /// Precision of the backbone's branches and the adapters (default: the run's).
    pub precision: Option<Precision>,
}

/// The run's configuration with `precision` (when given) in place of its own, checked against
/// the backbone and `device`.
pub fn with_precision(
    cfg: &TrainConfig,
    precision: Option<Precision>,
    device: &Device,
) -> Result<TrainConfig> {
    let mut cfg = cfg.clone();
    if let Some(p) = precision {
        cfg.check_precision(p)?;
        cfg.precision = p;
    }
    cfg.precision.check(device)?;
    Ok(cfg)
}

/// What [`detect_video`] found in one video.
#[derive(Debug, Clone)]
pub struct VideoInference {
    /// Video identifier (the file's or folder's name without extension).
    pub id: String,
    /// The file or folder read.
    pub source: PathBuf,
    /// Rate the video was sampled at, frames per second.
    pub fps: f64,
    /// Frames decoded.
    pub frames: usize,
    /// Seconds covered by those frames.
    pub duration: f64,
    /// Detections in seconds, post-processed, best first.
    pub detections: Vec<Segment>,
    /// Class names in class-index order (the checkpoint's).
    pub classes: Vec<String>,
}

impl VideoInference {
    /// The detections as an ActivityNet results entry.
    pub fn to_results(&self) -> VideoDetections {
        VideoDetections::from_segments(&self.id, self.detections.clone(), &self.classes)
    }
}

/// Identifier of a video at `path`: its file name without the extension.
pub fn video_id(path: &Path) -> String {
    let name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .unwrap_or_else(|| "video".into())
}

/// The model of checkpoint `ck` with its inference weights (the EMA where the run keeps one):
/// what a [`Detector`] runs.
pub fn trained_model(ck: &Checkpoint, device: &Device) -> Result<TalModel> {
    let mut model = load_model(ck, device)?;
    ck.load_inference_weights(&mut model)?;
    Ok(model)
}

/// Run the detector of the run (or checkpoint folder) `checkpoint` on the video at `input`: a
/// video file (`video` feature) or a frame folder. Frames are sampled at `opts.fps` (default:
/// the rate the run was trained at, so clips span the time they spanned in training; a video
/// file's own rate when the run does not record one) and brought to the run's frame size
/// (short side resized, centre crop), chunk by chunk as the backbone reads them.
/// A frame folder carries no rate: without `fps` the run's is used, and a run without one is
/// an error asking for it.
pub fn detect_video(
    checkpoint: &Path,
    input: &Path,
    opts: &InferOptions,
    device: &Device,
) -> Result<VideoInference> {
    let ck = Checkpoint::load(checkpoint)?;
    let cfg = &with_precision(&ck.meta.config, opts.precision, device)?;
    let fps = opts.fps;
    let id = video_id(input);
    let src = open_source(input, &id, fps.or(ck.meta.fps))?;
    let fps = match fps.or(src.fps()).or(ck.meta.fps) {
        Some(f) => f,
        None => {
            return Err(Error::InvalidValue {
                name: "fps".into(),
                reason: format!(
                    "{} is a frame folder and run {} records no training frame rate: give the \
                     frames' rate",
                    input.display(),
                    ck.dir.display()
                ),
            });
        }
    };
    let span = cfg.clips.span();
    if src.len() < span {
        return Err(Error::VideoTooShort {
            video: id,
            frames: src.len(),
            clip_span: span,
        });
    }
    let video = TalVideo::unannotated(src, fps)?;
    let model = trained_model(&ck, device)?;
    let det = Detector::new(&model, cfg, device)?;
    let detections = det.detect(&video)?;
    Ok(VideoInference {
        id: video.id.clone(),
        source: input.to_path_buf(),
        fps,
        frames: video.len(),
        duration: video.duration,
        detections,
        classes: ck.meta.classes.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_precision_override_is_checked_against_the_backbone() {
        let device = crate::backend::cpu_device();
        let vit = TrainConfig::new();
        let got = with_precision(&vit, Some(Precision::Bf16), &device).unwrap();
        assert_eq!(got.precision, Precision::Bf16);
        assert_eq!(
            with_precision(&vit, None, &device).unwrap().precision,
            vit.precision
        );
        let resnet = TrainConfig::new().with_backbone(crate::train::BackboneConfig::ResNet(
            crate::backbone::resnet3d::ResNet3dConfig::new(),
        ));
        let err = with_precision(&resnet, Some(Precision::F16), &device).unwrap_err();
        assert!(err.to_string().contains("ResNet"), "{err}");
    }

    #[test]
    fn ids_drop_the_extension_of_files_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v.1");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(video_id(&dir), "v.1");
        assert_eq!(video_id(Path::new("a/clip.mp4")), "clip");
        assert_eq!(video_id(Path::new("/")), "video");
    }
}
