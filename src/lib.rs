//! # e2e-tal
//!
//! Memory-efficient end-to-end temporal action localization (TAL) on
//! [Burn](https://burn.dev): find when actions start and end in long untrimmed videos while
//! training the video backbone together with the localization head.
//!
//! This crate is organised by concept:
//! - [`adapter`]: LoSA long-short range adapters on a frozen backbone;
//! - [`backbone`]: video backbones (VideoMAE ViT, Video Swin, 3-D ResNets) as explicit chains of
//!   residual modules;
//! - [`weights`]: PyTorch checkpoints into the backbones through documented key maps;
//! - [`data`]: ActivityNet / THUMOS annotations, frame folders, clip sampling, `.npy` feature
//!   files and the built-in synthetic benchmark;
//! - [`eval`]: the official ActivityNet detection mAP;
//! - [`tal`]: the ActionFormer-style head, label assignment, losses, decoding and
//!   post-processing of detections (NMS, soft-NMS, grid-to-seconds);
//! - [`baseline`]: a noisy-oracle detector that exercises the whole evaluation pipeline;
//! - [`reversible`]: Re2TAL reversible rewiring and the reconstructing backward pass;
//! - [`train`]: the training loop (head-only, full, reversible, adapter), checkpoints and
//!   resume, evaluation and inference of the whole detector;
//! - [`backend`]: device selection (Flex CPU by default, wgpu and CUDA as features);
//! - [`memory`]: peak-memory measurement for benches;
//! - [`workspace`]: the built-in benchmark's folders (`data/`, `runs/`): datasets generated
//!   when missing, pretrained backbones cached and reused.
#![warn(missing_docs)]

/// A progress line to the installed sink ([`io::progress`]; none by default, the CLI prints them).
macro_rules! say {
    ($($t:tt)*) => { $crate::io::progress(format_args!($($t)*)) };
}

/// A backend extension trait over every backend this crate builds for (Flex, NdArray, CubeCL
/// for wgpu and CUDA) plus autodiff: one list for every extension in the crate.
macro_rules! backend_extension {
    ($item:item) => {
        #[burn::backend::backend_extension(
                                            Flex: cfg(feature = "flex"),
                                            NdArray: cfg(feature = "ndarray"),
                                            Cube: cfg(any(feature = "wgpu", feature = "cuda")),
                                            Autodiff
                                        )]
        $item
    };
}

pub mod adapter;
pub mod attention;
pub mod backbone;
pub mod backend;
pub mod baseline;
pub mod choice;
#[cfg(feature = "flex")]
pub(crate) mod cpu;
pub mod data;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod extension;
pub mod fastmath;
pub mod features;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod gpu;
pub mod io;
pub mod memory;
pub mod norm;
pub mod optim;
pub mod pipeline;
pub mod planner;
pub mod precision;
pub mod reversible;
mod seed;
pub mod tal;
pub mod train;
pub mod weights;
pub mod workspace;

pub use error::{Error, Report, Result};
