//! ActionFormer's YAML configurations (`configs/thumos_i3d.yaml` and the defaults of its
//! `libs/core/config.py`) read into a [`FeatureTrainConfig`], so an ActionFormer user's file runs
//! unchanged. Every field is either mapped, checked to hold the one value this crate implements
//! (`backbone_type: convTransformer`, `fpn_type: identity`, no position encodings, ...), or
//! known to have no effect here (`devices`, `num_workers`, `output_folder`,
//! `max_buffer_len_factor`); anything else is refused by name.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

use super::config::FeatureTrainConfig;
use crate::data::Subset;
use crate::error::{Error, Result};
use crate::tal::postprocess::NmsMethod;

/// What an ActionFormer configuration says besides the training settings: where its
/// annotations and features are (relative to the working directory, as ActionFormer reads
/// them), and the sizes it expects the data to have.
#[derive(Debug, Clone)]
pub struct ActionFormerConfig {
    /// The training settings.
    pub train: FeatureTrainConfig,
    /// `dataset.json_file`.
    pub json_file: Option<PathBuf>,
    /// `dataset.feat_folder`.
    pub feat_folder: Option<PathBuf>,
    /// `dataset.num_classes`.
    pub num_classes: Option<usize>,
    /// `dataset.input_dim`.
    pub input_dim: Option<usize>,
}

/// The fields of one YAML mapping, taken one by one; what is left at the end is refused.
struct Fields<'a> {
    path: &'a Path,
    section: String,
    map: Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(path: &'a Path, section: &str, v: Option<Value>) -> Result<Self> {
        let map = match v {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(invalid(
                    path,
                    section,
                    format!("expected a mapping, found {other}"),
                ));
            }
        };
        Ok(Self {
            path,
            section: section.to_string(),
            map,
        })
    }

    fn name(&self, key: &str) -> String {
        if self.section.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.section)
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn err(&self, key: &str, reason: impl Into<String>) -> Error {
        invalid(self.path, &self.name(key), reason.into())
    }

    fn f64(&mut self, key: &str) -> Result<Option<f64>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }

    fn usize(&mut self, key: &str) -> Result<Option<usize>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(key, format!("expected a whole number, found {v}"))),
        }
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected true or false, found {v}"))),
        }
    }

    fn string(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, format!("expected a string, found {v}"))),
        }
    }

    /// A field this crate implements with one value only: absent or equal to it.
    fn only(&mut self, key: &str, allowed: &Value, what: &str) -> Result<()> {
        match self.take(key) {
            None => Ok(()),
            Some(v) if &v == allowed => Ok(()),
            Some(v) => Err(self.err(
                key,
                format!("{v} is not implemented (only {allowed}: {what})"),
            )),
        }
    }

    /// Fields that have no effect here.
    fn ignore(&mut self, keys: &[&str]) {
        for k in keys {
            self.map.remove(*k);
        }
    }

    fn finish(self) -> Result<()> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(self.err(k, "unknown field (not an ActionFormer configuration field)")),
        }
    }
}

fn invalid(path: &Path, field: &str, reason: String) -> Error {
    Error::InvalidValue {
        name: format!("{}: {field}", path.display()),
        reason,
    }
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or(Value::String(s.clone())),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Whether `path` is a YAML file (by extension).
pub fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("yaml" | "yml")
    )
}

/// Read ActionFormer configuration `path`.
pub fn read_actionformer_config(path: &Path) -> Result<ActionFormerConfig> {
    let text = crate::io::read_to_string(path)?;
    let docs = YamlLoader::load_from_str(&text)
        .map_err(|e| invalid(path, "<document>", format!("not valid YAML: {e}")))?;
    let root = docs.first().map(to_json).unwrap_or(Value::Null);
    let mut top = Fields::new(path, "", Some(root))?;
    let mut cfg = FeatureTrainConfig::new();
    let mut out = ActionFormerConfig {
        train: FeatureTrainConfig::new(),
        json_file: None,
        feat_folder: None,
        num_classes: None,
        input_dim: None,
    };
    match top.string("dataset_name")?.as_deref() {
        None | Some("thumos") => {}
        Some("anet") => cfg.thresholds = "anet".into(),
        Some("epic" | "ego4d") => cfg.thresholds = "0.1,0.2,0.3,0.4,0.5".into(),
        Some(other) => {
            return Err(top.err(
                "dataset_name",
                format!("unknown dataset `{other}` (thumos, anet, epic, ego4d)"),
            ));
        }
    }
    for (key, target) in [("train_split", 0), ("val_split", 1)] {
        if let Some(v) = top.take(key) {
            let subsets = split(&top, key, &v)?;
            if target == 0 {
                cfg.data.train_subsets = subsets;
            } else {
                cfg.data.val_subsets = subsets;
            }
        }
    }
    if let Some(seed) = top.usize("init_rand_seed")? {
        cfg.seed = seed as u64;
    }
    top.only(
        "model_name",
        &Value::from("LocPointTransformer"),
        "the point-based ActionFormer",
    )?;
    top.ignore(&["devices", "output_folder"]);
    dataset(&mut top, &mut cfg, &mut out)?;
    let loader = top.take("loader");
    let mut l = Fields::new(path, "loader", loader)?;
    if let Some(b) = l.usize("batch_size")? {
        cfg.batch_size = b;
    }
    l.ignore(&["num_workers"]);
    l.finish()?;
    model(&mut top, &mut cfg)?;
    train_cfg(&mut top, &mut cfg)?;
    test_cfg(&mut top, &mut cfg)?;
    opt(&mut top, &mut cfg)?;
    top.finish()?;
    out.train = cfg;
    Ok(out)
}

fn split(f: &Fields<'_>, key: &str, v: &Value) -> Result<Vec<Subset>> {
    let items = match v {
        Value::Array(a) => a.clone(),
        Value::String(_) => vec![v.clone()],
        other => return Err(f.err(key, format!("expected a list of subsets, found {other}"))),
    };
    items
        .iter()
        .map(|s| {
            s.as_str()
                .ok_or_else(|| f.err(key, format!("expected subset names, found {s}")))?
                .parse::<Subset>()
                .map_err(|e| f.err(key, e))
        })
        .collect()
}

fn dataset(
    top: &mut Fields<'_>,
    cfg: &mut FeatureTrainConfig,
    out: &mut ActionFormerConfig,
) -> Result<()> {
    let v = top.take("dataset");
    let mut d = Fields::new(top.path, "dataset", v)?;
    out.json_file = d.string("json_file")?.map(PathBuf::from);
    out.feat_folder = d.string("feat_folder")?.map(PathBuf::from);
    cfg.data.file_prefix = d.string("file_prefix")?.unwrap_or_default();
    if let Some(e) = d.string("file_ext")? {
        cfg.data.file_ext = e;
    }
    out.num_classes = d.usize("num_classes")?;
    out.input_dim = d.usize("input_dim")?;
    // ActionFormer's defaults where the file is silent.
    cfg.data.feat_stride = d.usize("feat_stride")?.unwrap_or(16);
    cfg.data.num_frames = d.usize("num_frames")?.unwrap_or(32);
    cfg.data.default_fps = d.f64("default_fps")?;
    d.only(
        "downsample_rate",
        &Value::from(1),
        "features at their stored rate",
    )?;
    if let Some(n) = d.usize("max_seq_len")? {
        cfg.head.max_seq_len = n;
    }
    if let Some(t) = d.f64("trunc_thresh")? {
        cfg.data.trunc_thresh = t;
    }
    cfg.data.crop_ratio = match d.take("crop_ratio") {
        None => None,
        Some(Value::Array(a)) if a.len() == 2 && a.iter().all(Value::is_number) => {
            Some((a[0].as_f64().unwrap_or(0.0), a[1].as_f64().unwrap_or(0.0)))
        }
        Some(v) => return Err(d.err("crop_ratio", format!("expected [lo, hi], found {v}"))),
    };
    d.only(
        "force_upsampling",
        &Value::Bool(false),
        "features at their stored length",
    )?;
    d.finish()
}

fn model(top: &mut Fields<'_>, cfg: &mut FeatureTrainConfig) -> Result<()> {
    let v = top.take("model");
    let mut m = Fields::new(top.path, "model", v)?;
    let h = &mut cfg.head;
    m.only(
        "backbone_type",
        &Value::from("convTransformer"),
        "the transformer backbone",
    )?;
    m.only(
        "fpn_type",
        &Value::from("identity"),
        "the identity FPN with LayerNorm",
    )?;
    m.only(
        "scale_factor",
        &Value::from(2),
        "levels that halve the length",
    )?;
    m.only(
        "embd_kernel_size",
        &Value::from(3),
        "embedding convolutions of kernel 3",
    )?;
    m.only(
        "embd_with_ln",
        &Value::Bool(true),
        "LayerNorm in the embedding",
    )?;
    m.only("fpn_with_ln", &Value::Bool(true), "LayerNorm after the FPN")?;
    m.only("fpn_start_level", &Value::from(0), "every level")?;
    m.only("head_with_ln", &Value::Bool(true), "LayerNorm in the heads")?;
    m.only(
        "use_abs_pe",
        &Value::Bool(false),
        "no absolute position encoding",
    )?;
    m.only(
        "use_rel_pe",
        &Value::Bool(false),
        "no relative position encoding",
    )?;
    m.ignore(&["max_buffer_len_factor"]);
    let mut levels = 6;
    if let Some(v) = m.take("backbone_arch") {
        let arch: Vec<usize> = v
            .as_array()
            .filter(|a| a.len() == 3)
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect())
            .ok_or_else(|| {
                m.err(
                    "backbone_arch",
                    format!("expected [embed convs, stem blocks, branch blocks], found {v}"),
                )
            })?;
        h.embed_convs = arch[0];
        h.stem_blocks = arch[1];
        levels = arch[2] + 1;
    }
    h.pyramid.strides = (0..levels).map(|l| 1 << l).collect();
    if let Some(v) = m.take("regression_range") {
        h.pyramid.regression_ranges = v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|r| {
                        let r = r.as_array().filter(|r| r.len() == 2)?;
                        Some((r[0].as_f64()?, r[1].as_f64()?))
                    })
                    .collect()
            })
            .ok_or_else(|| {
                m.err(
                    "regression_range",
                    format!("expected [[lo, hi], ...], found {v}"),
                )
            })?;
    }
    if h.pyramid.regression_ranges.len() != levels {
        return Err(m.err(
            "regression_range",
            format!(
                "{} ranges for {levels} pyramid levels",
                h.pyramid.regression_ranges.len()
            ),
        ));
    }
    if let Some(n) = m.usize("n_head")? {
        h.num_heads = n;
    }
    match m.take("n_mha_win_size") {
        None => h.window_size = 0,
        Some(v) => {
            let w = match &v {
                Value::Array(a) => {
                    let ws: Vec<i64> = a.iter().filter_map(Value::as_i64).collect();
                    if ws.len() != a.len() || ws.windows(2).any(|p| p[0] != p[1]) {
                        return Err(m.err("n_mha_win_size", format!("per-level windows {v} are not implemented (one window for every level)")));
                    }
                    ws.first().copied().unwrap_or(-1)
                }
                v => v.as_i64().ok_or_else(|| {
                    m.err(
                        "n_mha_win_size",
                        format!("expected a whole number, found {v}"),
                    )
                })?,
            };
            h.window_size = if w <= 1 { 0 } else { w as usize };
        }
    }
    let dims: Vec<(&str, Option<usize>)> = ["embd_dim", "fpn_dim", "head_dim"]
        .into_iter()
        .map(|k| Ok((k, m.usize(k)?)))
        .collect::<Result<_>>()?;
    let dim = dims.iter().find_map(|(_, v)| *v).unwrap_or(512);
    if let Some((k, v)) = dims.iter().find(|(_, v)| v.is_some_and(|v| v != dim)) {
        return Err(m.err(
            k,
            format!(
                "{} differs from {dim}: the identity FPN and the heads keep the embedding width",
                v.unwrap_or(0)
            ),
        ));
    }
    h.embed_dim = dim;
    if let Some(k) = m.usize("head_kernel_size")? {
        h.head_kernel = k;
    }
    if let Some(n) = m.usize("head_num_layers")? {
        if n == 0 {
            return Err(m.err(
                "head_num_layers",
                "must be at least 1 (it counts the output layer)",
            ));
        }
        h.head_layers = n - 1;
    }
    // Derived by ActionFormer from the other sections.
    m.ignore(&[
        "input_dim",
        "num_classes",
        "max_seq_len",
        "train_cfg",
        "test_cfg",
    ]);
    m.finish()
}

fn train_cfg(top: &mut Fields<'_>, cfg: &mut FeatureTrainConfig) -> Result<()> {
    let v = top.take("train_cfg");
    let mut t = Fields::new(top.path, "train_cfg", v)?;
    let radius = t.f64("center_sample_radius")?.unwrap_or(1.5);
    cfg.assign.center_radius = match t.string("center_sample")?.as_deref() {
        None | Some("radius") => radius,
        Some("none") => 0.0,
        Some(other) => return Err(t.err("center_sample", format!("`{other}` (radius or none)"))),
    };
    match t.f64("loss_weight")? {
        Some(w) if w <= 0.0 => {
            return Err(t.err(
                "loss_weight",
                format!("{w}: automatic loss balancing (<= 0) is not implemented"),
            ));
        }
        Some(w) => cfg.loss.reg_weight = w,
        None => {}
    }
    if let Some(p) = t.f64("cls_prior_prob")? {
        cfg.head.prior_prob = p;
    }
    cfg.loss.normalizer_init = t.f64("init_loss_norm")?.unwrap_or(2000.0);
    cfg.clip_grad_norm = t.f64("clip_grad_l2norm")?.map_or(0.0, |c| c.max(0.0));
    t.only(
        "head_empty_cls",
        &Value::Array(vec![]),
        "every class has training data",
    )?;
    t.only(
        "dropout",
        &Value::from(0.0),
        "no dropout in the transformer",
    )?;
    t.only("label_smoothing", &Value::from(0.0), "no label smoothing")?;
    if let Some(p) = t.f64("droppath")? {
        cfg.head.drop_path = p;
    } else {
        cfg.head.drop_path = 0.1;
    }
    t.finish()
}

fn test_cfg(top: &mut Fields<'_>, cfg: &mut FeatureTrainConfig) -> Result<()> {
    let v = top.take("test_cfg");
    let mut t = Fields::new(top.path, "test_cfg", v)?;
    let p = &mut cfg.post;
    // ActionFormer's defaults where the file is silent.
    p.score_threshold = t.f64("pre_nms_thresh")?.unwrap_or(0.001);
    p.pre_nms_topk = t.usize("pre_nms_topk")?.unwrap_or(5000);
    p.iou_threshold = t.f64("iou_threshold")?.unwrap_or(0.1);
    p.min_score = t.f64("min_score")?.unwrap_or(0.01);
    p.max_detections = t.usize("max_seg_num")?.unwrap_or(1000);
    p.method = match t.string("nms_method")?.as_deref() {
        None | Some("soft") => NmsMethod::Gaussian,
        Some("hard") => NmsMethod::Hard,
        Some(other) => {
            return Err(t.err(
                "nms_method",
                format!("`{other}` is not implemented (soft or hard)"),
            ));
        }
    };
    p.sigma = t.f64("nms_sigma")?.unwrap_or(0.5);
    p.duration_threshold = t.f64("duration_thresh")?.unwrap_or(0.05);
    p.per_class = t.bool("multiclass_nms")?.unwrap_or(true);
    let voting = t.f64("voting_thresh")?.unwrap_or(0.75);
    if !p.per_class && voting > 0.0 {
        return Err(t.err(
            "voting_thresh",
            format!(
                "{voting}: segment voting after class-agnostic NMS is not implemented (set it to 0)"
            ),
        ));
    }
    t.only(
        "ext_score_file",
        &Value::Null,
        "scores from the model itself",
    )?;
    t.finish()
}

fn opt(top: &mut Fields<'_>, cfg: &mut FeatureTrainConfig) -> Result<()> {
    let v = top.take("opt");
    let mut o = Fields::new(top.path, "opt", v)?;
    o.only("type", &Value::from("AdamW"), "the AdamW optimiser")?;
    o.ignore(&["momentum"]);
    cfg.weight_decay = o.f64("weight_decay")?.unwrap_or(0.0);
    cfg.lr = o.f64("learning_rate")?.unwrap_or(1e-3);
    if let Some(e) = o.usize("epochs")? {
        cfg.epochs = e;
    }
    let warmup = o.bool("warmup")?.unwrap_or(true);
    cfg.warmup_epochs = if warmup {
        o.usize("warmup_epochs")?.unwrap_or(5)
    } else {
        0
    };
    o.map.remove("warmup_epochs");
    o.only(
        "schedule_type",
        &Value::from("cosine"),
        "the cosine schedule",
    )?;
    o.ignore(&["schedule_steps", "schedule_gamma"]);
    o.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<ActionFormerConfig> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        read_actionformer_config(&p)
    }

    const THUMOS: &str = "dataset_name: thumos
train_split: ['validation']
val_split: ['test']
dataset: {
  json_file: ./data/thumos/annotations/thumos14.json,
  feat_folder: ./data/thumos/i3d_features,
  file_prefix: ~,
  file_ext: .npy,
  num_classes: 20,
  input_dim: 2048,
  feat_stride: 4,
  num_frames: 16,
  # serve as data augmentation
  trunc_thresh: 0.5,
  crop_ratio: [0.9, 1.0],
  max_seq_len: 2304,
}
model: {
  fpn_type: identity,
  max_buffer_len_factor: 6.0,
  n_mha_win_size: 19,
}
opt: {
  learning_rate: 0.0001,
  epochs: 30,
  weight_decay: 0.05,
}
loader: {
  batch_size: 2,
}
train_cfg: {
  init_loss_norm: 100,
  clip_grad_l2norm: 1.0,
  cls_prior_prob: 0.01,
  center_sample: radius,
  center_sample_radius: 1.5,
}
test_cfg: {
  voting_thresh: 0.7,
  pre_nms_topk: 2000,
  max_seg_num: 200,
  min_score: 0.001,
  multiclass_nms: True,
}
output_folder: ./ckpt/
";

    /// ActionFormer's own THUMOS file is this crate's default recipe.
    #[test]
    fn thumos_i3d_yaml_is_the_default_recipe() {
        let c = read(THUMOS).unwrap();
        assert_eq!(c.num_classes, Some(20));
        assert_eq!(c.input_dim, Some(2048));
        assert_eq!(
            c.json_file,
            Some(PathBuf::from("./data/thumos/annotations/thumos14.json"))
        );
        let mut want = FeatureTrainConfig::new();
        want.data.train_subsets = vec![Subset::Validation];
        want.data.val_subsets = vec![Subset::Testing];
        assert_eq!(format!("{:?}", c.train), format!("{want:?}"));
    }

    #[test]
    fn unsupported_and_unknown_fields_are_refused_by_name() {
        for (edit, field) in [
            (("fpn_type: identity", "fpn_type: fpn"), "model.fpn_type"),
            (
                (
                    "n_mha_win_size: 19,",
                    "n_mha_win_size: 19, use_abs_pe: True,",
                ),
                "model.use_abs_pe",
            ),
            (
                (
                    "n_mha_win_size: 19,",
                    "n_mha_win_size: 19, backbone_type: conv,",
                ),
                "model.backbone_type",
            ),
            (("epochs: 30,", "epochs: 30, type: SGD,"), "opt.type"),
            (("epochs: 30,", "epoch: 30,"), "opt.epoch"),
            (
                (
                    "multiclass_nms: True,",
                    "multiclass_nms: True, ext_score_file: x.pkl,",
                ),
                "test_cfg.ext_score_file",
            ),
            (("batch_size: 2,", "batch_size: two,"), "loader.batch_size"),
            (
                ("dataset_name: thumos", "dataset_name: thumos\nextra: 1"),
                "extra",
            ),
        ] {
            let e = read(&THUMOS.replace(edit.0, edit.1))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
