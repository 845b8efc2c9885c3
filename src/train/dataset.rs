//! Videos in memory for training and evaluation: decoded frames plus ground truth converted to
//! the feature grid the head predicts on.

use std::path::{Path, PathBuf};

use crate::data::annotations::{GroundTruth, Subset, VideoAnnotations};
use crate::data::clips::ClipSamplingConfig;
use crate::data::frames::Frames;
use crate::data::source::{locate_video, open_source};
use crate::error::{Error, Result};
use crate::tal::assign::GtSegment;
use crate::tal::postprocess::GridToTime;

/// One annotated video, frames decoded.
#[derive(Debug, Clone)]
pub struct TalVideo {
    /// Video identifier.
    pub id: String,
    /// Subset the annotations put it in.
    pub subset: Subset,
    /// Duration in seconds.
    pub duration: f64,
    /// Frame rate.
    pub fps: f64,
    /// Decoded RGB frames.
    pub frames: Frames,
    /// Ground-truth segments in seconds with class indices.
    pub segments: Vec<([f64; 2], usize)>,
}

impl TalVideo {
    /// Ground truth on the feature grid of `clips` (grid position `x` is the centre of clip
    /// `x`), as the head's label assignment wants it.
    pub fn grid_segments(&self, clips: &ClipSamplingConfig) -> Vec<GtSegment> {
        let grid = clips.grid(self.fps);
        self.segments
            .iter()
            .map(|&([s, e], label)| GtSegment {
                start: seconds_to_grid(&grid, s),
                end: seconds_to_grid(&grid, e),
                label,
            })
            .collect()
    }
}

/// Inverse of [`GridToTime::seconds`].
pub(crate) fn seconds_to_grid(grid: &GridToTime, t: f64) -> f64 {
    (t * grid.fps - 0.5 * grid.span_frames) / grid.stride_frames
}

/// The videos of a dataset, decoded from frame folders `<media>/<video id>/` or video files
/// `<media>/<video id>.mp4` (any of [`crate::data::source::VIDEO_EXTENSIONS`]).
#[derive(Debug, Clone)]
pub struct TalDataset {
    /// Class names in class-index order.
    pub classes: Vec<String>,
    /// The ground truth the videos came from (evaluation uses it).
    pub ground_truth: GroundTruth,
    /// The videos, in annotation order.
    pub videos: Vec<TalVideo>,
    /// Where the videos were read from (the media folder), named in errors about the data.
    pub source: PathBuf,
}

/// A frame rate must be positive and finite: every time in seconds is a frame index over it.
fn check_fps(fps: f64, video: &str) -> Result<()> {
    if fps > 0.0 && fps.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            name: format!("fps of video `{video}`"),
            reason: format!("must be a positive finite number of frames per second, got {fps}"),
        })
    }
}

impl TalVideo {
    /// An unannotated video of `frames` at `fps` frames per second (single-video inference);
    /// its id is the frames' video name.
    pub fn unannotated(frames: Frames, fps: f64) -> Result<Self> {
        check_fps(fps, &frames.video)?;
        Ok(Self {
            duration: frames.len as f64 / fps,
            id: frames.video.clone(),
            subset: Subset::Testing,
            fps,
            frames,
            segments: Vec::new(),
        })
    }
}

impl TalDataset {
    /// Decode every video of `gt` (the subsets in `subsets`, all when empty) from `media`:
    /// the frame folder `media/<id>/` or the video file `media/<id>.<ext>`
    /// ([`locate_video`]). `fps` overrides the frame rate (video files are resampled to it by
    /// timestamp); otherwise a video file's own rate is used, and a frame folder's comes from
    /// the annotations, or is the frame count over the duration. Every video must have at
    /// least `min_frames` frames (one clip's span).
    pub fn load(
        gt: &GroundTruth,
        media: &Path,
        subsets: &[Subset],
        fps: Option<f64>,
        min_frames: usize,
    ) -> Result<Self> {
        let classes = gt.classes(None);
        let mut videos = Vec::new();
        for v in gt.videos.iter() {
            if !subsets.is_empty() && !subsets.contains(&v.subset) {
                continue;
            }
            let src = open_source(&locate_video(media, &v.id)?, &v.id, fps)?;
            if let Some(n) = v.num_frames {
                src.check_count(n)?;
            }
            let frames = src.read_all(None)?;
            let fps = fps.or(src.fps());
            if frames.len < min_frames {
                return Err(Error::VideoTooShort {
                    video: v.id.clone(),
                    frames: frames.len,
                    clip_span: min_frames,
                });
            }
            videos.push(Self::video(v, frames, fps, &classes)?);
        }
        if videos.is_empty() {
            return Err(Error::EmptyInput {
                path: media.to_path_buf(),
                reason: format!("no annotated videos of the subsets {subsets:?}"),
            });
        }
        Ok(Self {
            classes,
            ground_truth: gt.clone(),
            videos,
            source: media.to_path_buf(),
        })
    }

    fn video(
        v: &VideoAnnotations,
        frames: Frames,
        fps: Option<f64>,
        classes: &[String],
    ) -> Result<TalVideo> {
        let fps = match fps.or(v.fps) {
            Some(f) => f,
            None if v.duration > 0.0 => frames.len as f64 / v.duration,
            None => {
                return Err(Error::InvalidField {
                    path: "annotations".into(),
                    video: Some(v.id.clone()),
                    field: "duration".into(),
                    reason: format!(
                        "must be positive to derive the frame rate, got {}",
                        v.duration
                    ),
                });
            }
        };
        check_fps(fps, &v.id)?;
        let segments = v
            .annotations
            .iter()
            .map(|a| {
                let label = classes
                    .iter()
                    .position(|c| *c == a.label)
                    .expect("classes come from the same ground truth");
                (a.segment, label)
            })
            .collect();
        Ok(TalVideo {
            id: v.id.clone(),
            subset: v.subset,
            duration: v.duration,
            fps,
            frames,
            segments,
        })
    }

    /// Indices of the videos in `subset`.
    pub fn indices(&self, subset: Subset) -> Vec<usize> {
        (0..self.videos.len())
            .filter(|&i| self.videos[i].subset == subset)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_grid_are_inverse() {
        let clips = ClipSamplingConfig::new()
            .with_clip_frames(8)
            .with_frame_stride(2)
            .with_snippet_stride(4);
        let grid = clips.grid(15.0);
        for x in [0.0, 1.5, 10.0, 71.25] {
            assert!((seconds_to_grid(&grid, grid.seconds(x)) - x).abs() < 1e-12);
        }
        // Clip 0 spans frames 0..=14; its centre (7.5 frames = 0.5 s) is grid position 0.
        assert!(seconds_to_grid(&grid, 0.5).abs() < 1e-12);
    }
}
