//! The trainable detector: backbone, optional LoSA adapters, TAL head; plus graph-free feature
//! extraction and per-video detection for evaluation and inference.

use burn::module::Module;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::config::{TrainConfig, TrainMode};
use crate::adapter::{Losa, LosaInput};
use crate::backbone::{Backbone, BackboneOutput, FeatureLayout, LayerTaps, Network, VideoBackbone};
use crate::data::clips::{ClipFrames, ClipSamplingConfig};
use crate::data::source::FrameSource;
use crate::data::spatial::SpatialOp;
use crate::error::{Error, Result};
use crate::reversible::RewiredBackbone;
use crate::tal::decode::decode_video;
use crate::tal::head::{HeadOutput, TalHead};
use crate::tal::postprocess::Segment;

use super::dataset::{TalDataset, TalVideo};
use crate::data::{Predictions, Subset, VideoDetections};
use crate::eval::{EvalOptions, EvalReport, ThresholdSet, evaluate};

/// Backbone + (adapters) + head.
#[derive(Module, Debug)]
pub struct TalModel {
    /// Video backbone.
    pub backbone: Backbone,
    /// LoSA adapters (mode `adapter` only).
    pub adapter: Option<Losa>,
    /// TAL head.
    pub head: TalHead,
}

impl Backbone {
    /// Frame height and width must be multiples of this (the ViT's patch size; the Swin's
    /// patch size; 1 for ResNets).
    pub fn spatial_multiple(&self) -> usize {
        match self {
            Backbone::Vit(m) => m.patch_size,
            Backbone::Swin(m) => m.patch_embed.patch_size[1].max(m.patch_embed.patch_size[2]),
            Backbone::ResNet(_) => 1,
        }
    }

    /// Number of layers [`Backbone::forward`] can return (blocks for ViT, stages otherwise).
    pub fn num_layers(&self) -> usize {
        match self {
            Backbone::Vit(m) => m.blocks.len(),
            Backbone::Swin(m) => m.stages.len(),
            Backbone::ResNet(m) => m.stages.len(),
        }
    }
}

/// Layers the adapters read: `cfg.adapter_layers`, or every layer but the last.
pub(crate) fn adapter_layers(cfg: &TrainConfig, backbone: &Backbone) -> Result<Vec<usize>> {
    let n = backbone.num_layers();
    if cfg.adapter_layers.is_empty() {
        if n < 2 {
            return Err(Error::Config(
                "adapter mode needs a backbone with at least two layers".into(),
            ));
        }
        return Ok((0..n - 1).collect());
    }
    if let Some(&bad) = cfg.adapter_layers.iter().find(|&&l| l >= n) {
        return Err(Error::Config(format!(
            "adapter layer {bad} out of range: the backbone has {n} layers"
        )));
    }
    Ok(cfg.adapter_layers.clone())
}

impl TalModel {
    /// Build the model for `cfg` and `num_classes` around `backbone` (fresh or loaded);
    /// clips of `frame_size` (height, width) probe the backbone's output widths.
    pub fn new(
        cfg: &TrainConfig,
        backbone: Backbone,
        num_classes: usize,
        frame_size: (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let layers = if cfg.mode == TrainMode::Adapter {
            adapter_layers(cfg, &backbone)?
        } else {
            Vec::new()
        };
        let layout = feature_layout(cfg, &backbone)?;
        let backbone = backbone.with_layout(layout);
        let probe = Tensor::<5>::zeros(
            [1, 3, cfg.clips.clip_frames, frame_size.0, frame_size.1],
            &device.clone().without_autodiff(),
        );
        let out = backbone.valid().forward(probe, &layers)?;
        let dim = out.features.dims()[1];
        let mut hc = cfg.head.clone();
        hc.input_dim = match cfg.mode {
            TrainMode::Adapter => cfg.adapter.output_dim.unwrap_or(dim),
            _ => dim,
        };
        hc.num_classes = num_classes;
        // The head draws its initial values first (Burn initialises lazily), so a seed gives
        // the same head with or without adapters: LoSA and head-only runs differ only by them.
        let head = hc.init(device)?;
        materialize(&head);
        let adapter = if cfg.mode == TrainMode::Adapter {
            let mut a = cfg.adapter.clone();
            a.feature_dim = dim;
            a.layer_dims = out.layers.iter().map(|t| t.dims()[2]).collect();
            Some(a.init(device)?)
        } else {
            None
        };
        Ok(Self {
            backbone,
            adapter,
            head,
        })
    }
}

/// The backbone's feature layout for `cfg`: temporal tokens when `cfg.clips` asks for more
/// than one position per clip, which must be the backbone's temporal positions.
pub(crate) fn feature_layout(cfg: &TrainConfig, backbone: &Backbone) -> Result<FeatureLayout> {
    let p = cfg.clips.positions_per_clip;
    if p <= 1 {
        return Ok(FeatureLayout::Clip);
    }
    let f = cfg.clips.clip_frames;
    let have = backbone.temporal_positions(f)?;
    if have != p {
        return Err(Error::Config(format!(
            "clips.positions_per_clip is {p}, but the backbone gives {have} temporal positions \
             for clips of {f} frames (--temporal-tokens sets it from the backbone)"
        )));
    }
    Ok(FeatureLayout::Temporal)
}

/// How a frozen backbone runs: which network, which layers it also returns, how many clips per
/// call.
#[derive(Debug, Clone, Copy)]
pub struct Extraction<'a> {
    /// The backbone's network (rewired: as trained in mode `reversible`; no layer taps).
    pub network: Network,
    /// Intermediate layers kept (LoSA's inputs).
    pub taps: LayerTaps<'a>,
    /// Clips per backbone call.
    pub chunk: usize,
}

impl Extraction<'_> {
    /// The plain network's last-layer features, `chunk` clips per call.
    pub fn features(chunk: usize) -> Self {
        Extraction {
            network: Network::Plain,
            taps: LayerTaps::default(),
            chunk,
        }
    }

    /// `backbone`'s outputs for one batch of clips (no graph when `clips` has none).
    pub(crate) fn outputs(&self, backbone: &Backbone, clips: Tensor<5>) -> Result<BackboneOutput> {
        match self.network {
            Network::Rewired => {
                let n = clips.dims()[0];
                let features = backbone.forward_rewired_inference(clips)?;
                let positions = features.dims()[0] / n.max(1);
                Ok(BackboneOutput {
                    features,
                    layers: Vec::new(),
                    positions,
                })
            }
            Network::Plain => backbone.forward_tapped(clips, self.taps),
        }
    }
}

/// Run `backbone` without a graph over every clip of `video`, `how.chunk` clips at a time,
/// reading each chunk's frames through `op` as it goes (memory: one chunk's frames, not the
/// video's).
///
/// # Shapes
/// - output `features`: `[T, C]`, `layers[i]`: `[T, L_i, C_i]`
pub fn extract_features(
    backbone: &Backbone,
    video: &dyn FrameSource,
    op: &SpatialOp,
    clips: &ClipSamplingConfig,
    how: Extraction<'_>,
    device: &Device,
) -> Result<BackboneOutput> {
    let device = device.clone().without_autodiff();
    let n = clips.num_clips(video.video(), video.len())?;
    let (mut feats, mut inter) = (Vec::new(), vec![Vec::new(); how.taps.layers.len()]);
    let (mut start, mut positions) = (0, 1);
    while start < n {
        let count = how.chunk.max(1).min(n - start);
        let frames = ClipFrames::read(video, clips, start, count, op)?;
        let out = how.outputs(backbone, frames.clips(clips, start, count, &device)?)?;
        positions = out.positions;
        feats.push(out.features);
        for (acc, t) in inter.iter_mut().zip(out.layers) {
            acc.push(t);
        }
        start += count;
    }
    Ok(BackboneOutput {
        features: Tensor::cat(feats, 0),
        layers: inter.into_iter().map(|v| Tensor::cat(v, 0)).collect(),
        positions,
    })
}

/// Head input for one video: the backbone's features, fused by the adapters when present.
///
/// # Shapes
/// - output: `[T, C_head]`
pub fn head_input(adapter: Option<&Losa>, f: BackboneOutput) -> Result<Tensor<2>> {
    match adapter {
        None => Ok(f.features),
        Some(a) => {
            let n = f.features.dims()[0];
            let device = f.features.device();
            let valid = Tensor::<1, Bool>::from_data(TensorData::new(vec![true; n], [n]), &device);
            a.forward(LosaInput {
                features: f.features,
                layers: f.layers,
                valid,
            })
        }
    }
}

/// Run the head on one video's `[T, C]` features (batch of one, all positions valid).
pub fn run_head(head: &TalHead, features: Tensor<2>) -> Result<HeadOutput> {
    let t = features.dims()[0];
    run_head_batch(head, vec![features], t)
}

/// Run the head on a padded batch: each video's `[T_i, C]` features zero-padded to `len`
/// positions, the padding masked (so each video's valid outputs are those it gets alone).
///
/// # Shapes
/// - features: `B` x `[T_i, C]`, `T_i <= len` -> see [`TalHead::forward`] with `T = len`
pub fn run_head_batch(head: &TalHead, features: Vec<Tensor<2>>, len: usize) -> Result<HeadOutput> {
    let b = features.len();
    let Some(first) = features.first() else {
        return Err(Error::Config("the head needs at least one video".into()));
    };
    let (c, device) = (first.dims()[1], first.device());
    let mut valid = Vec::with_capacity(b * len);
    let mut rows = Vec::with_capacity(b);
    for f in features {
        let [t, fc] = f.dims();
        if t > len || fc != c {
            return Err(Error::Shape {
                what: "head batch features".into(),
                expected: format!("[T <= {len}, {c}]"),
                got: vec![t, fc],
            });
        }
        valid.extend((0..len).map(|i| i < t));
        let row = if t < len {
            Tensor::cat(vec![f, Tensor::zeros([len - t, c], &device)], 0)
        } else {
            f
        };
        rows.push(row.unsqueeze_dim::<3>(0));
    }
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(valid, [b, len]), &device);
    head.forward(Tensor::cat(rows, 0), mask)
}

/// Turns videos into detections with a trained model, without a graph.
pub struct Detector<'a> {
    model: &'a TalModel,
    cfg: &'a TrainConfig,
    /// Backbone layers the adapters read (empty without adapters).
    layers: Vec<usize>,
    device: Device,
}

impl<'a> Detector<'a> {
    /// A detector of `model` trained with `cfg` (clips, head pyramid, post-processing, the
    /// layers its adapters read), building clips on `device`; the model may sit on any device
    /// and runs on its inner, non-autodiff backend.
    pub fn new(model: &'a TalModel, cfg: &'a TrainConfig, device: &Device) -> Result<Self> {
        let layers = match model.adapter {
            Some(_) => adapter_layers(cfg, &model.backbone)?,
            None => Vec::new(),
        };
        Ok(Detector {
            model,
            cfg,
            layers,
            device: device.clone(),
        })
    }

    /// The backbone layers the adapters read (empty without adapters).
    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    /// How this detector runs the backbone.
    pub fn extraction(&self) -> Extraction<'_> {
        Extraction {
            network: network_of(self.cfg),
            taps: LayerTaps {
                layers: &self.layers,
                max_tokens: self.model.adapter.as_ref().map_or(0, |a| a.max_tokens),
            },
            chunk: self.cfg.inference_chunk,
        }
    }

    /// Backbone outputs of one video, the branches in the run's precision, its frames read
    /// chunk by chunk through the evaluation transform.
    pub fn features(&self, video: &TalVideo) -> Result<BackboneOutput> {
        let op = self.cfg.eval_op(video)?;
        crate::precision::autocast(self.cfg.precision, || {
            extract_features(
                &self.model.backbone,
                video.source.as_ref(),
                &op,
                &self.cfg.clips,
                self.extraction(),
                &self.device,
            )
        })
    }

    /// Detections of one video, in seconds, post-processed.
    pub fn detect(&self, video: &TalVideo) -> Result<Vec<Segment>> {
        let f = self.features(video)?;
        self.detect_from_features(video, f)
    }

    /// Detections of every validation video of `data` and their mAP at THUMOS thresholds.
    pub fn evaluate(&self, data: &TalDataset) -> Result<(Predictions, EvalReport)> {
        let mut videos = Vec::new();
        for i in data.indices(Subset::Validation) {
            let v = &data.videos[i];
            let segs = self.detect(v)?;
            videos.push(VideoDetections::from_segments(&v.id, segs, &data.classes));
        }
        validation_report(data, videos)
    }

    /// [`Detector::detect`] from already extracted backbone outputs.
    pub fn detect_from_features(
        &self,
        video: &TalVideo,
        f: BackboneOutput,
    ) -> Result<Vec<Segment>> {
        // The adapters compute in the run's precision (the head in f32).
        let adapter = self.model.adapter.as_ref();
        let x = crate::precision::autocast(self.cfg.precision, || head_input(adapter, f))?;
        let t = x.dims()[0];
        let out = run_head(&self.model.head, x)?;
        let points = self.cfg.head.pyramid.points(self.model.head.padded_len(t));
        decode_video(
            &out,
            0,
            &points,
            &self.cfg.clips.grid_of(video.fps, video.len()),
            video.duration,
            &self.cfg.post,
        )
    }
}

/// The network a run with `cfg` trains and infers with (mode `reversible`, or `rewired` set).
pub(crate) fn network_of(cfg: &TrainConfig) -> Network {
    Network::rewired_if(cfg.uses_rewired_backbone())
}

/// `videos` as predictions and their mAP on `data`'s validation subset at THUMOS thresholds.
pub(crate) fn validation_report(
    data: &TalDataset,
    videos: Vec<VideoDetections>,
) -> Result<(Predictions, EvalReport)> {
    let preds = Predictions { videos };
    let report = evaluate(
        &data.ground_truth,
        &preds,
        &EvalOptions {
            subset: Some(Subset::Validation),
            thresholds: ThresholdSet::Thumos.values(),
        },
    )?;
    Ok((preds, report))
}

/// Initialise every lazily initialised parameter of `m` now.
pub(crate) fn materialize<M: Module>(m: &M) {
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let _ = p.val();
        }
    }
    m.visit(&mut Touch);
}
