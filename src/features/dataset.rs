//! A dataset of pre-extracted features as ActionFormer and OpenTAD ship them: annotations in
//! ActivityNet JSON (ActionFormer's THUMOS file loads as it is: `Validation` / `Test` subsets,
//! `label_id`, `segment(frames)` and other fields) and one `<prefix><id><ext>` `.npy` file of
//! shape `[T, C]` per video, a feature every `feat_stride` frames, each covering `num_frames`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::config::Config;

use crate::data::{FeatureSequence, GroundTruth, Subset};
use crate::error::{Error, Result};
use crate::tal::assign::GtSegment;
use crate::tal::postprocess::GridToTime;

/// Where the features are and how they sit on the time axis (defaults: ActionFormer's THUMOS
/// I3D features).
#[derive(Config, Debug, PartialEq)]
pub struct FeatureDataConfig {
    /// Frames between consecutive features (ActionFormer's `feat_stride`).
    #[config(default = 4)]
    pub feat_stride: usize,
    /// Frames each feature covers (`num_frames`).
    #[config(default = 16)]
    pub num_frames: usize,
    /// Frame rate of videos whose annotation has no `fps` (`default_fps`); without it such a
    /// video is an error.
    #[config(default = "None")]
    pub default_fps: Option<f64>,
    /// Feature files are `<file_prefix><id><file_ext>` in the feature folder.
    #[config(default = "String::new()")]
    pub file_prefix: String,
    /// See `file_prefix`.
    #[config(default = "\".npy\".to_string()")]
    pub file_ext: String,
    /// Subsets trained on (ActionFormer's `train_split`; THUMOS: `validation`).
    #[config(default = "vec![Subset::Training]")]
    pub train_subsets: Vec<Subset>,
    /// Subsets evaluated (`val_split`; THUMOS: `testing`).
    #[config(default = "vec![Subset::Validation]")]
    pub val_subsets: Vec<Subset>,
    /// A segment cut by the training crop is kept (clipped) when at least this share of it
    /// lies inside (`trunc_thresh`).
    #[config(default = 0.5)]
    pub trunc_thresh: f64,
    /// Training crop of a sequence no longer than `max_seq_len`: a random length in
    /// `[lo, hi] x T` (`crop_ratio`; `None`: no crop).
    #[config(default = "Some((0.9, 1.0))")]
    pub crop_ratio: Option<(f64, f64)>,
}

/// One video with features.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureVideo {
    /// Video id.
    pub id: String,
    /// Its feature file.
    pub path: PathBuf,
    /// Subset.
    pub subset: Subset,
    /// Feature rows.
    pub len: usize,
    /// Frame rate.
    pub fps: f64,
    /// Duration in seconds.
    pub duration: f64,
    /// Ground truth in seconds: `(start, end, class index)`.
    pub segments: Vec<(f64, f64, usize)>,
}

impl FeatureVideo {
    /// How grid positions map to seconds.
    pub fn grid(&self, cfg: &FeatureDataConfig) -> GridToTime {
        GridToTime {
            stride_frames: cfg.feat_stride as f64,
            span_frames: cfg.num_frames as f64,
            fps: self.fps,
        }
    }

    /// The ground truth on the feature grid (ActionFormer's `t * fps / feat_stride - 0.5 *
    /// num_frames / feat_stride`).
    pub fn grid_segments(&self, cfg: &FeatureDataConfig) -> Vec<GtSegment> {
        let g = self.grid(cfg);
        let to = |t: f64| (t * g.fps - 0.5 * g.span_frames) / g.stride_frames;
        self.segments
            .iter()
            .map(|&(s, e, label)| GtSegment {
                start: to(s),
                end: to(e),
                label,
            })
            .collect()
    }

    /// Read its features.
    pub fn read(&self) -> Result<FeatureSequence> {
        FeatureSequence::read(&self.path)
    }
}

/// Annotations and the videos that have feature files.
#[derive(Debug, Clone)]
pub struct FeatureDataset {
    /// Class names, in class-index order (`label_id` when the annotations have it).
    pub classes: Vec<String>,
    /// Videos with features, in annotation order.
    pub videos: Vec<FeatureVideo>,
    /// Feature width.
    pub channels: usize,
    /// The annotation file's ground truth (for evaluation).
    pub ground_truth: GroundTruth,
    /// The annotation file.
    pub annotations: PathBuf,
}

impl FeatureDataset {
    /// Read `annotations` and find each video's features in `features`. Videos without a
    /// feature file are left out with a warning naming how many and the first ones; a feature
    /// file that is not a 2-D float `.npy`, or of another width than the others, is an error
    /// naming it.
    pub fn load(annotations: &Path, features: &Path, cfg: &FeatureDataConfig) -> Result<Self> {
        if !features.is_dir() {
            return Err(Error::EmptyInput {
                path: features.to_path_buf(),
                reason: "not a folder of feature files (--features)".into(),
            });
        }
        let ground_truth = GroundTruth::from_json_file(annotations)?;
        let classes = class_order(annotations, &ground_truth)?;
        let index: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let mut videos = Vec::new();
        let mut missing = Vec::new();
        let mut width: Option<(usize, PathBuf)> = None;
        for v in &ground_truth.videos {
            check_id(annotations, &v.id)?;
            let path = features.join(format!("{}{}{}", cfg.file_prefix, v.id, cfg.file_ext));
            if !path.exists() {
                missing.push(v.id.clone());
                continue;
            }
            let (len, c) = FeatureSequence::shape(&path)?;
            match &width {
                Some((w, first)) if *w != c => {
                    return Err(Error::Npy {
                        path,
                        reason: format!(
                            "{c} channels, but {} has {w}: every video's features must have \
                             the same width",
                            first.display()
                        ),
                    });
                }
                None => width = Some((c, path.clone())),
                _ => {}
            }
            if len == 0 {
                return Err(Error::Npy {
                    path,
                    reason: "no feature rows".into(),
                });
            }
            let fps = v
                .fps
                .or(cfg.default_fps)
                .ok_or_else(|| Error::InvalidValue {
                    name: format!("{}: video `{}` fps", annotations.display(), v.id),
                    reason: "the annotation has no `fps` and no default_fps is configured".into(),
                })?;
            let segments = v
                .annotations
                .iter()
                .map(|a| (a.segment[0], a.segment[1], index[a.label.as_str()]))
                .collect();
            videos.push(FeatureVideo {
                id: v.id.clone(),
                path,
                subset: v.subset,
                len,
                fps,
                duration: v.duration,
                segments,
            });
        }
        warn_short(annotations, cfg, &videos);
        if !missing.is_empty() {
            crate::io::warning(format_args!(
                "warning: {} of {} videos of {} have no feature file in {} (first: {}); they \
                 are left out",
                missing.len(),
                ground_truth.videos.len(),
                annotations.display(),
                features.display(),
                missing
                    .iter()
                    .take(3)
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let channels = width.map(|(w, _)| w).ok_or_else(|| Error::EmptyInput {
            path: features.to_path_buf(),
            reason: format!(
                "no video of {} has a feature file here (looked for `{}<id>{}`)",
                annotations.display(),
                cfg.file_prefix,
                cfg.file_ext
            ),
        })?;
        Ok(Self {
            classes,
            videos,
            channels,
            ground_truth,
            annotations: annotations.to_path_buf(),
        })
    }

    /// The ground truth of `videos` only (what their detections are evaluated against).
    pub fn ground_truth_of(&self, videos: &[&FeatureVideo]) -> GroundTruth {
        let ids: std::collections::HashSet<&str> = videos.iter().map(|v| v.id.as_str()).collect();
        GroundTruth {
            videos: self
                .ground_truth
                .videos
                .iter()
                .filter(|v| ids.contains(v.id.as_str()))
                .cloned()
                .collect(),
        }
    }

    /// The videos of `subsets`.
    pub fn subset(&self, subsets: &[Subset]) -> Vec<&FeatureVideo> {
        self.videos
            .iter()
            .filter(|v| subsets.contains(&v.subset))
            .collect()
    }
}

/// A named warning for videos whose features end well before their annotated duration (a
/// feature every `feat_stride` frames, the last covering `num_frames`): they are used as they
/// are, and detections cover only the rows there are.
fn warn_short(annotations: &Path, cfg: &FeatureDataConfig, videos: &[FeatureVideo]) {
    let expected = |v: &FeatureVideo| {
        let frames = v.duration * v.fps - cfg.num_frames as f64;
        (frames / cfg.feat_stride as f64).floor().max(0.0) as usize + 1
    };
    let short: Vec<(&FeatureVideo, usize)> = videos
        .iter()
        .map(|v| (v, expected(v)))
        .filter(|(v, e)| v.len + 2 < *e)
        .collect();
    if let Some((v, e)) = short.first() {
        crate::io::warning(format_args!(
            "warning: {}: {} videos have fewer feature rows than their duration implies (first: \
             `{}`, {} rows where {:.0} s at {} fps implies about {e}); they are used as they \
             are, and their detections cover only the rows there are",
            annotations.display(),
            short.len(),
            v.id,
            v.len,
            v.duration,
            v.fps
        ));
    }
}

/// A video id that would name a file outside the feature folder is an error.
fn check_id(annotations: &Path, id: &str) -> Result<()> {
    if crate::io::path_like_id(id) {
        return Err(Error::InvalidValue {
            name: format!("{}: video id `{id}`", annotations.display()),
            reason: "cannot name a feature file inside the feature folder (empty, `.` or `..`, \
                     absolute, or holding a path separator)"
                .into(),
        });
    }
    Ok(())
}

/// The class order: by `label_id` when the annotations carry it (ActionFormer's files), each
/// label with one id and the ids `0..n`; otherwise labels in order of first appearance.
pub fn class_order(path: &Path, gt: &GroundTruth) -> Result<Vec<String>> {
    let text = crate::io::read_to_string(path)?;
    // Already read as ground truth, so valid JSON.
    let root: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let bad = |reason: String| Error::InvalidValue {
        name: format!("{}: label_id", path.display()),
        reason,
    };
    let mut ids: BTreeMap<String, u64> = BTreeMap::new();
    let (mut with, mut without) = (0usize, 0usize);
    for v in root["database"]
        .as_object()
        .into_iter()
        .flat_map(|d| d.values())
    {
        for a in v["annotations"].as_array().into_iter().flatten() {
            let label = a["label"].as_str().unwrap_or_default().to_string();
            match a.get("label_id") {
                Some(id) => {
                    with += 1;
                    let id = id.as_u64().ok_or_else(|| {
                        bad(format!("`{label}` has label_id {id}, not a whole number"))
                    })?;
                    if let Some(&other) = ids.get(&label).filter(|&&o| o != id) {
                        return Err(bad(format!("`{label}` has label_id {other} and {id}")));
                    }
                    ids.insert(label, id);
                }
                None => without += 1,
            }
        }
    }
    if with == 0 {
        return Ok(gt.classes(None));
    }
    if without > 0 {
        return Err(bad(format!(
            "{without} annotations have no label_id while {with} have one"
        )));
    }
    let mut order: Vec<(u64, String)> = ids.into_iter().map(|(l, i)| (i, l)).collect();
    order.sort();
    for (k, (id, label)) in order.iter().enumerate() {
        if *id != k as u64 {
            return Err(bad(format!(
                "the ids must be 0..{} with one label each; `{label}` has {id}",
                order.len()
            )));
        }
    }
    Ok(order.into_iter().map(|(_, l)| l).collect())
}
