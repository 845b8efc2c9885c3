//! Every number of a training configuration checked against its range, naming the field
//! (`backbone.Vit.num_heads`), before anything is built or written: a zero, a width that
//! heads do not divide or a probability above one would otherwise panic or fail deep inside a
//! layer with the field unnamed, or train a model that never updates.

use super::config::{BackboneConfig, TrainConfig};
use super::pretrain::PretrainConfig;
use crate::data::ClipSamplingConfig;
use crate::error::{Error, Result};
use crate::tal::{
    assign::AssignConfig, head::HeadConfig, loss::LossConfig, postprocess::PostProcessConfig,
};

/// Collects the first broken range.
struct Check(Option<Error>);

impl Check {
    fn fail(&mut self, field: &str, reason: String) {
        if self.0.is_none() {
            self.0 = Some(Error::Config(format!("{field}: {reason}")));
        }
    }

    fn positive(&mut self, field: &str, v: usize) {
        if v == 0 {
            self.fail(field, "must be at least 1, got 0".into());
        }
    }

    fn divides(&mut self, field: &str, width: usize, parts: usize, what: &str) {
        if parts > 0 && !width.is_multiple_of(parts) {
            self.fail(field, format!("{parts} does not divide the {what} {width}"));
        }
    }

    /// A rate in `[0, 1)`: drop path, dropout.
    fn rate(&mut self, field: &str, v: f64) {
        if !(0.0..1.0).contains(&v) {
            self.fail(field, format!("must be in [0, 1), got {v}"));
        }
    }

    fn positive_f(&mut self, field: &str, v: f64) {
        if !(v > 0.0 && v.is_finite()) {
            self.fail(field, format!("must be a positive finite number, got {v}"));
        }
    }

    fn non_negative(&mut self, field: &str, v: f64) {
        if !(v >= 0.0 && v.is_finite()) {
            self.fail(field, format!("must be a finite number >= 0, got {v}"));
        }
    }

    /// A probability or threshold in `[0, 1]`.
    fn unit(&mut self, field: &str, v: f64) {
        if !(0.0..=1.0).contains(&v) {
            self.fail(field, format!("must be in [0, 1], got {v}"));
        }
    }
}

/// The numbers of `cfg` that `check_ranges` does not cover: the backbone, the head, the
/// adapters, the clip sampling and the f16 loss scale.
pub(crate) fn check_numbers(cfg: &TrainConfig) -> Result<()> {
    let mut c = Check(None);
    backbone(&mut c, &cfg.backbone);
    head(&mut c, &cfg.head);
    assign_loss_post(&mut c, &cfg.assign, &cfg.loss, &cfg.post);
    c.non_negative("weight_decay", cfg.weight_decay);
    // Adapter width 0 means a quarter of the backbone's (checked when the adapters are built);
    // an MLP ratio of 0 means no MLP branch.
    let a = &cfg.adapter;
    c.positive("adapter.num_heads", a.num_heads);
    c.divides(
        "adapter.num_heads",
        a.adapter_dim,
        a.num_heads,
        "adapter.adapter_dim",
    );
    c.rate("adapter.dropout", a.dropout);
    clips(&mut c, &cfg.clips);
    temporal_tokens(&mut c, cfg);
    c.positive("inference_chunk", cfg.inference_chunk);
    c.positive_f("loss_scale.init", cfg.loss_scale.init);
    c.positive("loss_scale.growth_interval", cfg.loss_scale.growth_interval);
    c.0.map_or(Ok(()), Err)
}

/// The numbers of a pretraining configuration, checked before any data is read.
pub(crate) fn check_pretrain(cfg: &PretrainConfig) -> Result<()> {
    let mut c = Check(None);
    backbone(&mut c, &cfg.backbone);
    clips(&mut c, &cfg.clips);
    c.unit("min_overlap", cfg.min_overlap);
    c.positive("batch_size", cfg.batch_size);
    c.positive("steps", cfg.steps);
    c.non_negative("lr", cfg.lr);
    c.non_negative("weight_decay", cfg.weight_decay);
    c.0.map_or(Ok(()), Err)
}

fn clips(c: &mut Check, k: &ClipSamplingConfig) {
    c.positive("clips.clip_frames", k.clip_frames);
    c.positive("clips.frame_stride", k.frame_stride);
    c.positive("clips.snippet_stride", k.snippet_stride);
    if k.fixed_clips == 1 {
        c.fail("clips.fixed_clips", "must be 0 or at least 2, got 1".into());
    }
    c.positive("clips.positions_per_clip", k.positions_per_clip);
    if k.clip_frames > 0
        && k.positions_per_clip > 1
        && let Err(Error::Config(m)) = k.validate()
    {
        c.fail("clips.positions_per_clip", m);
    }
}

/// Temporal tokens: as many positions per clip as the backbone's last layer has.
fn temporal_tokens(c: &mut Check, cfg: &TrainConfig) {
    let (p, f) = (cfg.clips.positions_per_clip, cfg.clips.clip_frames);
    if p <= 1 || f == 0 {
        return;
    }
    match cfg.backbone.temporal_positions(f) {
        Ok(have) if have == p => {}
        Ok(have) => c.fail(
            "clips.positions_per_clip",
            format!(
                "{p}, but the backbone gives {have} temporal positions for clips of {f} frames \
                 (--temporal-tokens sets it from the backbone)"
            ),
        ),
        Err(Error::Config(m)) => c.fail("clips.positions_per_clip", m),
        Err(e) => c.fail("clips.positions_per_clip", e.to_string()),
    }
}

fn head(c: &mut Check, h: &HeadConfig) {
    c.positive("head.embed_dim", h.embed_dim);
    c.positive("head.embed_convs", h.embed_convs);
    c.positive("head.num_heads", h.num_heads);
    c.divides("head.num_heads", h.embed_dim, h.num_heads, "head.embed_dim");
    c.positive("head.window_size", h.window_size);
    c.positive("head.head_kernel", h.head_kernel);
    c.rate("head.drop_path", h.drop_path);
    c.positive("head.max_seq_len", h.max_seq_len);
    if !h.layer_scale_init.is_finite() {
        c.fail(
            "head.layer_scale_init",
            format!("must be finite, got {}", h.layer_scale_init),
        );
    }
    if !(h.prior_prob > 0.0 && h.prior_prob < 1.0) {
        c.fail(
            "head.prior_prob",
            format!("must be in (0, 1), got {}", h.prior_prob),
        );
    }
    if let Err((field, reason)) = h.pyramid.check() {
        c.fail(&format!("head.pyramid.{field}"), reason);
    }
}

fn assign_loss_post(c: &mut Check, a: &AssignConfig, l: &LossConfig, p: &PostProcessConfig) {
    if !a.center_radius.is_finite() {
        c.fail(
            "assign.center_radius",
            format!("must be finite, got {}", a.center_radius),
        );
    }
    c.unit("loss.focal_alpha", l.focal_alpha);
    c.non_negative("loss.focal_gamma", l.focal_gamma);
    c.non_negative("loss.reg_weight", l.reg_weight);
    c.rate("loss.normalizer_momentum", l.normalizer_momentum);
    c.positive_f("loss.normalizer_init", l.normalizer_init);
    c.unit("post.score_threshold", p.score_threshold);
    c.positive("post.pre_nms_topk", p.pre_nms_topk);
    c.unit("post.iou_threshold", p.iou_threshold);
    c.positive_f("post.sigma", p.sigma);
    c.unit("post.min_score", p.min_score);
    c.positive("post.max_detections", p.max_detections);
}

fn backbone(c: &mut Check, b: &BackboneConfig) {
    match b {
        BackboneConfig::Vit(v) => {
            c.positive("backbone.Vit.embed_dim", v.embed_dim);
            c.positive("backbone.Vit.depth", v.depth);
            c.positive("backbone.Vit.num_heads", v.num_heads);
            c.divides(
                "backbone.Vit.num_heads",
                v.embed_dim,
                v.num_heads,
                "embed_dim",
            );
            c.positive("backbone.Vit.mlp_dim", v.mlp_dim);
            c.positive("backbone.Vit.patch_size", v.patch_size);
            c.positive("backbone.Vit.tubelet_size", v.tubelet_size);
            c.positive("backbone.Vit.num_frames", v.num_frames);
            c.divides(
                "backbone.Vit.tubelet_size",
                v.num_frames,
                v.tubelet_size,
                "num_frames",
            );
            c.positive("backbone.Vit.image_size", v.image_size);
            c.divides(
                "backbone.Vit.patch_size",
                v.image_size,
                v.patch_size,
                "image_size",
            );
            c.positive_f("backbone.Vit.layer_norm_eps", v.layer_norm_eps);
            c.rate("backbone.Vit.drop_path_rate", v.drop_path_rate);
        }
        BackboneConfig::Swin(s) => {
            c.positive("backbone.Swin.embed_dim", s.embed_dim);
            if s.depths.is_empty() || s.depths.contains(&0) {
                c.fail(
                    "backbone.Swin.depths",
                    format!("must be positive, got {:?}", s.depths),
                );
            }
            if s.num_heads.len() != s.depths.len() {
                c.fail(
                    "backbone.Swin.num_heads",
                    format!(
                        "needs one entry per stage ({}), got {:?}",
                        s.depths.len(),
                        s.num_heads
                    ),
                );
            }
            for (i, &h) in s.num_heads.iter().enumerate() {
                let width = s.embed_dim << i;
                c.positive("backbone.Swin.num_heads", h);
                c.divides("backbone.Swin.num_heads", width, h, "stage width");
            }
            for (name, v) in [("patch_size", s.patch_size), ("window_size", s.window_size)] {
                if v.contains(&0) {
                    c.fail(
                        &format!("backbone.Swin.{name}"),
                        format!("must be positive, got {v:?}"),
                    );
                }
            }
            c.positive_f("backbone.Swin.mlp_ratio", s.mlp_ratio);
            c.positive_f("backbone.Swin.layer_norm_eps", s.layer_norm_eps);
            c.rate("backbone.Swin.drop_path_rate", s.drop_path_rate);
        }
        BackboneConfig::ResNet(r) => {
            if r.layers.is_empty() || r.layers.contains(&0) {
                c.fail(
                    "backbone.ResNet.layers",
                    format!("must be positive, got {:?}", r.layers),
                );
            }
            if r.widths.len() != r.layers.len() || r.widths.contains(&0) {
                c.fail(
                    "backbone.ResNet.widths",
                    format!("needs one positive width per stage, got {:?}", r.widths),
                );
            }
            c.positive("backbone.ResNet.stem_mid", r.stem_mid);
            c.rate("backbone.ResNet.drop_path_rate", r.drop_path_rate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::vit::VitConfig;

    #[test]
    fn broken_numbers_are_refused_naming_the_field() {
        let vit = |v: VitConfig| TrainConfig::new().with_backbone(BackboneConfig::Vit(v));
        let base = VitConfig::new().with_image_size(64);
        for (cfg, field) in [
            (
                vit(base.clone().with_num_heads(0)),
                "backbone.Vit.num_heads",
            ),
            (
                vit(base.clone().with_num_heads(5)),
                "backbone.Vit.num_heads",
            ),
            (
                vit(base.clone().with_drop_path_rate(7.0)),
                "backbone.Vit.drop_path_rate",
            ),
            (
                vit(base.clone().with_patch_size(0)),
                "backbone.Vit.patch_size",
            ),
            (
                TrainConfig::new().with_head(TrainConfig::new().head.with_num_heads(3)),
                "head.num_heads",
            ),
        ] {
            let e = check_numbers(&cfg).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let mut c = TrainConfig::new();
        c.loss_scale.init = 0.0;
        let e = check_numbers(&c).unwrap_err().to_string();
        assert!(e.contains("loss_scale.init"), "{e}");
        let mut c = TrainConfig::new();
        c.adapter.dropout = 5.0;
        assert!(
            check_numbers(&c)
                .unwrap_err()
                .to_string()
                .contains("adapter.dropout")
        );
        for (f, field) in [
            (
                (|c: &mut TrainConfig| c.head.pyramid.strides = vec![1, 3]) as fn(&mut TrainConfig),
                "head.pyramid.strides",
            ),
            (
                |c| c.head.pyramid.regression_ranges[2] = (9.0, 1.0),
                "head.pyramid.regression_ranges",
            ),
            (|c| c.head.embed_convs = 0, "head.embed_convs"),
            (|c| c.post.iou_threshold = 2.0, "post.iou_threshold"),
            (|c| c.post.pre_nms_topk = 0, "post.pre_nms_topk"),
            (|c| c.post.sigma = 0.0, "post.sigma"),
            (|c| c.loss.focal_alpha = -1.0, "loss.focal_alpha"),
            (
                |c| c.loss.normalizer_init = f64::NAN,
                "loss.normalizer_init",
            ),
            (
                |c| c.assign.center_radius = f64::INFINITY,
                "assign.center_radius",
            ),
            (|c| c.weight_decay = -0.1, "weight_decay"),
        ] {
            let mut c = TrainConfig::new();
            f(&mut c);
            let e = check_numbers(&c).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let mut p = PretrainConfig::new();
        p.min_overlap = 1.5;
        assert!(
            check_pretrain(&p)
                .unwrap_err()
                .to_string()
                .contains("min_overlap")
        );
        assert!(check_pretrain(&PretrainConfig::new()).is_ok());
        assert!(check_numbers(&TrainConfig::new()).is_ok());
        for p in crate::backbone::BackbonePreset::ALL {
            let cfg = TrainConfig::new().with_backbone(BackboneConfig::preset(p));
            assert!(check_numbers(&cfg).is_ok(), "{p:?}");
        }
    }
}
