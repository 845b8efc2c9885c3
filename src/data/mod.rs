//! Data: annotation formats, frame folders and video files, clip sampling, feature files and the built-in
//! synthetic benchmark. See `docs/data.md` for the on-disk layout.
//!
//! The submodules are private to the crate: every item has one public path, `e2e_tal::data::Item`.

pub(crate) mod annotations;
pub(crate) mod augment;
pub(crate) mod clips;
pub(crate) mod frames;
mod json;
pub(crate) mod lofi;
pub(crate) mod npy;
pub(crate) mod source;
pub(crate) mod spatial;
pub(crate) mod synth;
pub(crate) mod thumos;
#[cfg(feature = "video")]
pub(crate) mod video;

pub use annotations::{
    Annotation, Detection, GroundTruth, PLAUSIBLE_FPS, Predictions, Subset, VideoAnnotations,
    VideoDetections,
};
pub use augment::AugmentConfig;
pub use clips::{ClipBatch, ClipFrames, ClipSamplingConfig, clip_range, sample_clips};
pub use frames::{FrameFolder, Frames};
pub use lofi::{Fidelity, LoFiConfig, LoFiMode, LoFiSampler};
pub use npy::FeatureSequence;
pub use source::{
    ANNOTATIONS_FILE, FRAMES_DIR, FrameSource, VIDEO_EXTENSIONS, VIDEOS_DIR, locate_video,
    media_dir, open_source,
};
pub use spatial::{CropRect, SpatialOp};
pub use synth::{FrameFormat, SynthClass, SynthConfig, SynthDataset};
pub use thumos::{ThumosSource, load_thumos, thumos_annotation_files};
#[cfg(feature = "video")]
pub use video::{VideoFile, VideoInfo, encode_mp4};
