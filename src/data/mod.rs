//! Data: annotation formats, frame folders and video files, clip sampling, feature files and the built-in
//! synthetic benchmark. See `docs/data.md` for the on-disk layout.

pub mod annotations;
pub mod augment;
pub mod clips;
pub mod frames;
mod json;
pub mod lofi;
pub mod npy;
pub mod source;
pub mod synth;
pub mod thumos;
#[cfg(feature = "video")]
pub mod video;

pub use annotations::{
    Annotation, Detection, GroundTruth, Predictions, Subset, VideoAnnotations, VideoDetections,
};
pub use clips::{ClipBatch, ClipSamplingConfig, sample_clips};
pub use frames::{FrameFolder, Frames};
pub use npy::FeatureSequence;
pub use source::{FrameSource, open_source};
pub use synth::{SynthConfig, SynthDataset};
pub use thumos::{ThumosSource, load_thumos};
