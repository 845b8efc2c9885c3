//! The input pipeline: how frames get from a dataset's videos to a step. A dataset is an
//! index (`train::TalDataset`: ids, frame counts, rates, annotations, an opened source per
//! video); each step reads only the frames of its [`ClipWindow`], through a [`SpatialOp`]
//! drawn by the [`FrameTransformConfig`] and applied while decoding, on worker threads that
//! prefetch the next steps into a bounded queue ([`Prefetcher`]; inputs drawn in sequence from
//! one generator, as pretraining's batches are, are read ahead in order by [`InSequence`]).
//! Peak memory is bounded by the queue and one step's frames, never by a dataset's or a
//! video's length; the samples of a seed do not depend on the worker count. `docs/data.md`
//! has the design and the measurements.
//!
//! The submodules are private: every item has one public path, `e2e_tal::pipeline::Item`.

mod prefetch;
mod sequence;
mod transform;
mod window;

pub use prefetch::{Job, LoaderConfig, Prefetcher};
pub use sequence::InSequence;
pub use transform::{FrameTransformConfig, TrainCrop};
pub use window::ClipWindow;

pub use crate::data::SpatialOp;
