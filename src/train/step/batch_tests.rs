//! Several videos per step give the update of one batch, in every mode: head-only's padded
//! batch through the head equals each video alone (padding masked), and the micro-batches
//! of full, reversible and adapter training add up to the gradients of one autodiff graph
//! over both videos.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use super::{Computed, ModeStep, Objective, Window, for_plan};
use crate::backbone::vit::VitConfig;
use crate::backbone::{BackboneOutput, LayerTaps, Network, VideoBackbone};
use crate::data::{ClipFrames, Frames};
use crate::reversible::RewiredBackbone;
use crate::tal::assign::{GtSegment, assign};
use crate::tal::head::HeadConfig;
use crate::train::config::{BackboneConfig, TrainConfig, TrainMode};
use crate::train::model::{Extraction, TalModel, adapter_layers, head_input, materialize};
use crate::train::plan::TrainPlan;

/// The tiny detector these tests train (a 2-block ViT on 8-frame 16x16 clips).
pub(super) fn config(mode: TrainMode) -> TrainConfig {
    TrainConfig::new()
        .with_mode(mode)
        .with_backbone(BackboneConfig::Vit(
            VitConfig::new()
                .with_embed_dim(32)
                .with_depth(2)
                .with_num_heads(2)
                .with_mlp_dim(64)
                .with_patch_size(8)
                .with_num_frames(8)
                .with_image_size(16),
        ))
        .with_head(
            HeadConfig::new(0, 0)
                .with_embed_dim(32)
                .with_num_heads(2)
                .with_window_size(9)
                .with_drop_path(0.0),
        )
        .with_cache_features(false)
}

/// A video of `len` 16x16 frames of a pattern that moves with `seed`.
fn frames(len: usize, seed: usize) -> ClipFrames {
    let rgb = (0..len * 16 * 16 * 3)
        .map(|i| ((i * (7 + seed) + i / 768 * 13 * (seed + 1)) % 251) as u8)
        .collect();
    let f = Frames {
        video: format!("v{seed}"),
        len,
        height: 16,
        width: 16,
        rgb,
    };
    ClipFrames {
        indices: (0..len).collect(),
        frames: f,
        total: len,
    }
}

/// Every gradient of `module` in `grads`, flattened in the module's order.
fn flat<M: Module>(module: &M, grads: &GradientsParams) -> Vec<f32> {
    struct Flat<'a>(&'a GradientsParams, Vec<f32>);
    impl ModuleVisitor for Flat<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(p.id) {
                self.1.extend(g.into_data().iter::<f32>());
            }
        }
    }
    let mut v = Flat(grads, Vec::new());
    module.visit(&mut v);
    v.1
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    assert!(!want.is_empty(), "{what}: no gradients");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0, "{what}: zero gradients");
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max diff {diff}, scale {scale}"
    );
}

struct Setup {
    cfg: TrainConfig,
    model: TalModel,
    device: Device,
    videos: Vec<ClipFrames>,
    gts: Vec<Vec<GtSegment>>,
}

impl Setup {
    fn new(mode: TrainMode) -> Self {
        let cfg = config(mode);
        let device = crate::backend::cpu_device().autodiff();
        device.seed(5);
        let backbone = cfg.backbone.init(&device);
        materialize(&backbone);
        let model = TalModel::new(&cfg, backbone, 2, (16, 16), &device).unwrap();
        materialize(&model);
        let gt = |start, end, label| GtSegment { start, end, label };
        Setup {
            cfg,
            model,
            device,
            // 8 and 13 clips of 15 frames every 4.
            videos: vec![frames(40, 0), frames(60, 1)],
            gts: vec![
                vec![gt(1.0, 4.0, 0)],
                vec![gt(2.0, 9.0, 1), gt(10.0, 12.0, 0)],
            ],
        }
    }

    fn count(&self, i: usize) -> usize {
        self.cfg.clips.num_clips("v", self.videos[i].total).unwrap()
    }

    fn window(&self, i: usize) -> Window<'_> {
        Window {
            frames: Some(&self.videos[i]),
            clips: self.cfg.clips.clone(),
            start: 0,
            count: self.count(i),
            cached: None,
            augment: None,
            seed: 11 + i as u64,
            device: &self.device,
        }
    }

    /// Video `i`'s objective with its features padded to `len` clips.
    fn objective(&self, i: usize, len: usize) -> Objective<'_> {
        let points = self
            .cfg
            .head
            .pyramid
            .points(self.model.head.padded_len(len));
        Objective {
            targets: assign(&points, &self.gts[i], 2, &self.cfg.assign),
            len,
            norm: 3.0,
            cfg: &self.cfg.loss,
            video: "v",
            step: 0,
            scale: 1.0,
        }
    }

    /// The mode's step over both videos as one step.
    fn batched(&self) -> Computed {
        let step = self.step();
        let len = self.count(1);
        let items: Vec<_> = (0..2)
            .map(|i| (self.window(i), self.objective(i, len)))
            .collect();
        step.compute_step(&self.model, &items).unwrap()
    }

    fn step(&self) -> Box<dyn ModeStep> {
        let plan = TrainPlan::from_config(&self.cfg).unwrap();
        let layers = match self.model.adapter {
            Some(_) => adapter_layers(&self.cfg, &self.model.backbone).unwrap(),
            None => Vec::new(),
        };
        for_plan(&plan, layers)
    }

    /// One autodiff graph over both videos: `features(i, clips)` gives video `i`'s head
    /// input.
    fn joint(&self, features: impl Fn(usize, Tensor<5>) -> Tensor<2>) -> burn::tensor::Gradients {
        let len = self.count(1);
        let mut total: Option<Tensor<1>> = None;
        for i in 0..2 {
            let w = self.window(i);
            let f = features(i, w.clips_on(w.device).unwrap());
            let (l, _) = self.objective(i, len).loss(&self.model.head, f).unwrap();
            total = Some(match total {
                None => l,
                Some(t) => t + l,
            });
        }
        total.unwrap().backward()
    }
}

#[test]
fn head_only_padded_batch_equals_each_video_alone() {
    let s = Setup::new(TrainMode::HeadOnly);
    let got = s.batched();
    // By hand: each video with its own length (no padding), gradients added.
    let step = s.step();
    let want = (0..2)
        .map(|i| step.compute(&s.model, &s.window(i), &s.objective(i, s.count(i))))
        .map(Result::unwrap)
        .reduce(|a, b| a.add(b, &s.model))
        .unwrap();
    assert!(
        (got.loss - want.loss).abs() < 1e-4 * want.loss.abs(),
        "loss"
    );
    let head = |c: &Computed| flat(&s.model.head, &c.grads.head);
    assert_close("head", &head(&got), &head(&want));
}

#[test]
fn full_and_reversible_micro_batches_equal_one_graph_over_both_videos() {
    for (mode, network) in [
        (TrainMode::Full, Network::Plain),
        (TrainMode::Reversible, Network::Rewired),
    ] {
        let mut s = Setup::new(mode);
        s.cfg.drift.every = 0;
        let got = s.batched();
        let b = &s.model.backbone;
        let mut g = s.joint(|i, clips| match network {
            Network::Plain => b.forward(clips, &[]).unwrap().features,
            Network::Rewired => b.forward_rewired(clips, 11 + i as u64).unwrap(),
        });
        let (bb, hd) = (
            GradientsParams::from_module(&mut g, b),
            GradientsParams::from_module(&mut g, &s.model.head),
        );
        let what = format!("{mode} backbone");
        assert_close(
            &what,
            &flat(b, got.grads.backbone.as_ref().unwrap()),
            &flat(b, &bb),
        );
        let what = format!("{mode} head");
        assert_close(
            &what,
            &flat(&s.model.head, &got.grads.head),
            &flat(&s.model.head, &hd),
        );
    }
}

#[test]
fn adapter_micro_batches_equal_one_graph_over_both_videos() {
    let s = Setup::new(TrainMode::Adapter);
    let got = s.batched();
    let adapter = s.model.adapter.as_ref().unwrap();
    let layers = adapter_layers(&s.cfg, &s.model.backbone).unwrap();
    let how = Extraction {
        network: Network::Plain,
        taps: LayerTaps {
            layers: &layers,
            max_tokens: adapter.max_tokens,
        },
        chunk: 64,
    };
    let mut g = s.joint(|_, clips| {
        let f = how
            .outputs(&s.model.backbone.valid(), clips.without_autodiff())
            .unwrap();
        let f = BackboneOutput {
            features: f.features.autodiff(),
            layers: f.layers.into_iter().map(|t| t.autodiff()).collect(),
            positions: f.positions,
        };
        head_input(Some(adapter), f).unwrap()
    });
    let (ad, hd) = (
        GradientsParams::from_module(&mut g, adapter),
        GradientsParams::from_module(&mut g, &s.model.head),
    );
    assert_close(
        "adapter",
        &flat(adapter, got.grads.adapter.as_ref().unwrap()),
        &flat(adapter, &ad),
    );
    assert_close(
        "adapter head",
        &flat(&s.model.head, &got.grads.head),
        &flat(&s.model.head, &hd),
    );
}
