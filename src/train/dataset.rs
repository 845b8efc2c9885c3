//! A dataset as an index for training and evaluation: per video its id, subset, rate, ground
//! truth (converted to the feature grid the head predicts on) and an opened frame source that
//! steps read from on demand ([`crate::pipeline`]); no frame is decoded when a dataset loads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::data::annotations::{GroundTruth, Subset, VideoAnnotations};
use crate::data::clips::ClipFrames;
use crate::data::clips::ClipSamplingConfig;
use crate::data::source::{FrameSource, locate_video, open_source};
use crate::data::spatial::SpatialOp;
use crate::error::{Error, Result};
use crate::tal::assign::GtSegment;
use crate::tal::postprocess::GridToTime;

/// One annotated video and where its frames are.
#[derive(Clone)]
pub struct TalVideo {
    /// Video identifier.
    pub id: String,
    /// Subset the annotations put it in.
    pub subset: Subset,
    /// Duration in seconds.
    pub duration: f64,
    /// Frame rate.
    pub fps: f64,
    /// The video's frames, read on demand (a frame folder, a video file, or frames in memory).
    pub source: Arc<dyn FrameSource>,
    /// Ground-truth segments in seconds with class indices.
    pub segments: Vec<([f64; 2], usize)>,
}

impl std::fmt::Debug for TalVideo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TalVideo")
            .field("id", &self.id)
            .field("subset", &self.subset)
            .field("duration", &self.duration)
            .field("fps", &self.fps)
            .field("source", &self.source.path())
            .field("frames", &self.source.len())
            .field("segments", &self.segments)
            .finish()
    }
}

impl TalVideo {
    /// Frames of the video on its sampling grid.
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// True when the video has no frame (never, for a loaded one).
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Size of the stored frames (height, width).
    pub fn frame_size(&self) -> Result<(usize, usize)> {
        self.source.frame_size()
    }

    /// Decode the frames clips `start..start + count` (cut by `clips`) need, through `op`.
    pub fn read_clips(
        &self,
        clips: &ClipSamplingConfig,
        start: usize,
        count: usize,
        op: &SpatialOp,
    ) -> Result<ClipFrames> {
        ClipFrames::read(self.source.as_ref(), clips, start, count, op)
    }

    /// Ground truth on the feature grid of `clips` (grid position `x` is the centre of clip
    /// `x`), as the head's label assignment wants it.
    pub fn grid_segments(&self, clips: &ClipSamplingConfig) -> Vec<GtSegment> {
        let grid = clips.grid_of(self.fps, self.len());
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
    let plausible = crate::data::annotations::PLAUSIBLE_FPS;
    if plausible.contains(&fps) {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            name: format!("fps of video `{video}`"),
            reason: format!(
                "must be a frame rate between {} and {} frames per second, got {fps}",
                plausible.start(),
                plausible.end()
            ),
        })
    }
}

impl TalVideo {
    /// An unannotated video read from `source` at `fps` frames per second (single-video
    /// inference); its id is the source's video name.
    pub fn unannotated(source: Arc<dyn FrameSource>, fps: f64) -> Result<Self> {
        check_fps(fps, source.video())?;
        Ok(Self {
            duration: source.len() as f64 / fps,
            id: source.video().to_owned(),
            subset: Subset::Testing,
            fps,
            source,
            segments: Vec::new(),
        })
    }
}

impl TalDataset {
    /// Index every video of `gt` (the subsets in `subsets`, all when empty) in `media`: the
    /// frame folder `media/<id>/` or the video file `media/<id>.<ext>` ([`locate_video`]),
    /// opened (a folder listed, a file probed; several at once) but not decoded. `fps`
    /// overrides the frame rate (video files are resampled to it by timestamp); otherwise a
    /// video file's own rate is used, and a frame folder's comes from the annotations, or is
    /// the frame count over the duration. Every video must have at least `min_frames` frames
    /// (one clip's span).
    pub fn load(
        gt: &GroundTruth,
        media: &Path,
        subsets: &[Subset],
        fps: Option<f64>,
        min_frames: usize,
    ) -> Result<Self> {
        let classes = gt.classes(None);
        let wanted: Vec<&VideoAnnotations> = gt
            .videos
            .iter()
            .filter(|v| subsets.is_empty() || subsets.contains(&v.subset))
            .collect();
        let sources = open_all(&wanted, media, fps)?;
        let mut videos = Vec::new();
        for (v, src) in wanted.into_iter().zip(sources) {
            if src.len() < min_frames {
                return Err(Error::VideoTooShort {
                    video: v.id.clone(),
                    frames: src.len(),
                    clip_span: min_frames,
                });
            }
            let own = src.fps();
            videos.push(Self::video(v, src, fps.or(own), &classes)?);
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
        source: Arc<dyn FrameSource>,
        fps: Option<f64>,
        classes: &[String],
    ) -> Result<TalVideo> {
        let fps = match fps.or(v.fps) {
            Some(f) => f,
            None if v.duration > 0.0 => source.len() as f64 / v.duration,
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
            source,
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

/// Threads that open (list or probe) a dataset's videos at once: probing is mostly waiting
/// on `ffprobe` and the disk.
const OPENERS: usize = 4;

/// Open the source of every video of `videos` in `media` (checking a frame folder's count
/// against the annotation's `num_frames`), [`OPENERS`] at a time; the first error in
/// annotation order is returned.
fn open_all(
    videos: &[&VideoAnnotations],
    media: &Path,
    fps: Option<f64>,
) -> Result<Vec<Arc<dyn FrameSource>>> {
    let open = |v: &VideoAnnotations| -> Result<Arc<dyn FrameSource>> {
        let src = open_source(&locate_video(media, &v.id)?, &v.id, fps)?;
        if let Some(n) = v.num_frames {
            src.check_count(n)?;
        }
        Ok(src)
    };
    let chunk = videos.len().div_ceil(OPENERS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = videos
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|v| open(v)).collect::<Vec<_>>()))
            .collect();
        let mut out = Vec::with_capacity(videos.len());
        for h in handles {
            for r in h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                out.push(r?);
            }
        }
        Ok(out)
    })
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
