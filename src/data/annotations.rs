//! Ground truth and detection results in the ActivityNet v1.3 JSON format, held in memory in an
//! order-preserving form (the official evaluation breaks score ties by file order).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use super::json::{Ctx, parse};
use crate::error::Result;
use crate::io::{read_to_string, write_json_atomic};
use crate::tal::postprocess::Segment;

/// A dataset split, as named in ActivityNet's `subset` field.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Subset {
    /// `"training"` (also read from `"train"`).
    #[value(alias = "train")]
    Training,
    /// `"validation"` (also read from `"val"`).
    #[value(alias = "val")]
    Validation,
    /// `"testing"` (also read from `"test"`).
    #[value(alias = "test")]
    Testing,
}

impl Subset {
    /// The ActivityNet spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Subset::Training => "training",
            Subset::Validation => "validation",
            Subset::Testing => "testing",
        }
    }
}

impl fmt::Display for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Subset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "training" | "train" => Ok(Subset::Training),
            "validation" | "val" => Ok(Subset::Validation),
            "testing" | "test" => Ok(Subset::Testing),
            other => Err(format!(
                "unknown subset `{other}` (expected training, validation or testing)"
            )),
        }
    }
}

/// One labelled action instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// `[start, end]` in seconds.
    pub segment: [f64; 2],
    /// Class name.
    pub label: String,
}

/// One video's metadata and action instances.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoAnnotations {
    /// Video identifier (the key in `database`).
    pub id: String,
    /// Split the video belongs to.
    pub subset: Subset,
    /// Duration in seconds.
    pub duration: f64,
    /// Frame rate of the extracted frames, when known.
    pub fps: Option<f64>,
    /// Number of extracted frames, when known.
    pub num_frames: Option<usize>,
    /// Action instances, in file order.
    pub annotations: Vec<Annotation>,
}

/// Frame rates a video may have (an annotation's `fps`, `infer --fps`, a training run's): a
/// rate outside is a unit mistake or a broken file.
pub const PLAUSIBLE_FPS: std::ops::RangeInclusive<f64> = 0.01..=10_000.0;

/// A ground-truth database: videos in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroundTruth {
    /// Videos, in file order.
    pub videos: Vec<VideoAnnotations>,
}

impl GroundTruth {
    /// Read an ActivityNet-format ground-truth JSON file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        Self::from_json_str(&read_to_string(path)?, path)
    }

    /// Parse ActivityNet-format ground truth; `path` is only used to name the input in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let root = parse(path, text)?;
        let ctx = Ctx::new(path);
        let root = ctx.object(&root, "<root>")?;
        let db = ctx.object(ctx.get(root, "database", "database")?, "database")?;
        let mut videos = Vec::with_capacity(db.len());
        for (id, v) in db {
            videos.push(parse_video(ctx.video(id), id, v)?);
        }
        let gt = Self { videos };
        gt.warn_outside_durations(path);
        Ok(gt)
    }

    /// A named warning for segments that reach outside their video (before 0 or after its
    /// duration; some releases of ActivityNet's annotations have them): they are kept, as the
    /// official evaluation keeps them.
    fn warn_outside_durations(&self, path: &Path) {
        let outside: Vec<(&str, [f64; 2], f64)> = self
            .videos
            .iter()
            .filter(|v| v.duration > 0.0)
            .flat_map(|v| {
                v.annotations
                    .iter()
                    .filter(|a| a.segment[0] < 0.0 || a.segment[1] > v.duration + 1e-6)
                    .map(move |a| (v.id.as_str(), a.segment, v.duration))
            })
            .collect();
        if let Some((id, [s, e], d)) = outside.first() {
            crate::io::warning(format_args!(
                "warning: {}: {} segments reach outside their video (first: video `{id}`, \
                 [{s}, {e}] s in {d} s); they are kept",
                path.display(),
                outside.len()
            ));
        }
    }

    /// The video with identifier `id`.
    pub fn video(&self, id: &str) -> Option<&VideoAnnotations> {
        self.videos.iter().find(|v| v.id == id)
    }

    /// Videos of one subset (all videos for `None`), in file order.
    pub fn subset(&self, subset: Option<Subset>) -> impl Iterator<Item = &VideoAnnotations> {
        self.videos
            .iter()
            .filter(move |v| subset.is_none_or(|s| v.subset == s))
    }

    /// Class names in order of first appearance among the videos of `subset` (the official
    /// evaluation's class order).
    pub fn classes(&self, subset: Option<Subset>) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for v in self.subset(subset) {
            for a in &v.annotations {
                if seen.insert(a.label.as_str()) {
                    out.push(a.label.clone());
                }
            }
        }
        out
    }

    /// The document as ActivityNet JSON.
    pub fn to_json(&self) -> Value {
        let mut db = Map::new();
        for v in &self.videos {
            let mut o = Map::new();
            o.insert("subset".into(), json!(v.subset.as_str()));
            o.insert("duration".into(), json!(v.duration));
            if let Some(fps) = v.fps {
                o.insert("fps".into(), json!(fps));
            }
            if let Some(n) = v.num_frames {
                o.insert("num_frames".into(), json!(n));
            }
            let anns: Vec<Value> = v
                .annotations
                .iter()
                .map(|a| json!({"segment": a.segment, "label": a.label}))
                .collect();
            o.insert("annotations".into(), Value::Array(anns));
            db.insert(v.id.clone(), Value::Object(o));
        }
        json!({"version": "ActivityNet-1.3-format", "database": db})
    }

    /// Write as ActivityNet JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json_atomic(path, &self.to_json())
    }
}

fn parse_video(ctx: Ctx<'_>, id: &str, v: &Value) -> Result<VideoAnnotations> {
    let o = ctx.object(v, "<video>")?;
    let subset_s = ctx.string(ctx.get(o, "subset", "subset")?, "subset")?;
    let subset = subset_s.parse().map_err(|e| ctx.invalid("subset", e))?;
    let duration = ctx.number(ctx.get(o, "duration", "duration")?, "duration")?;
    if duration < 0.0 {
        return Err(ctx.invalid("duration", format!("negative duration {duration}")));
    }
    let fps = match o.get("fps") {
        Some(v) => {
            let fps = ctx.number(v, "fps")?;
            if !PLAUSIBLE_FPS.contains(&fps) {
                return Err(ctx.invalid(
                    "fps",
                    format!(
                        "must be a frame rate between {} and {} frames per second, found {fps}",
                        PLAUSIBLE_FPS.start(),
                        PLAUSIBLE_FPS.end()
                    ),
                ));
            }
            Some(fps)
        }
        None => None,
    };
    let num_frames = match o.get("num_frames") {
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| ctx.invalid("num_frames", "expected a non-negative integer"))?
                as usize,
        ),
        None => None,
    };
    // Test videos in ActivityNet carry no annotations at all.
    let anns = match o.get("annotations") {
        Some(a) => ctx.array(a, "annotations")?.as_slice(),
        None if subset == Subset::Testing => &[],
        None => return Err(ctx.missing("annotations")),
    };
    let mut annotations = Vec::with_capacity(anns.len());
    for (i, a) in anns.iter().enumerate() {
        let f = format!("annotations[{i}]");
        let ao = ctx.object(a, &f)?;
        let seg_f = format!("{f}.segment");
        let segment = ctx.segment(ctx.get(ao, "segment", &seg_f)?, &seg_f)?;
        let label_f = format!("{f}.label");
        let label = ctx.string(ctx.get(ao, "label", &label_f)?, &label_f)?;
        annotations.push(Annotation {
            segment,
            label: label.to_owned(),
        });
    }
    Ok(VideoAnnotations {
        id: id.to_owned(),
        subset,
        duration,
        fps,
        num_frames,
        annotations,
    })
}

/// One detected action instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Class name.
    pub label: String,
    /// Confidence score.
    pub score: f64,
    /// `[start, end]` in seconds.
    pub segment: [f64; 2],
}

/// The detections of one video.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoDetections {
    /// Video identifier.
    pub id: String,
    /// Detections, in file order.
    pub detections: Vec<Detection>,
}

impl VideoDetections {
    /// Detections of video `id` from post-processed segments (seconds), labelled by index
    /// into `classes`.
    pub fn from_segments(id: &str, segments: Vec<Segment>, classes: &[String]) -> Self {
        Self {
            id: id.to_owned(),
            detections: segments
                .into_iter()
                .map(|d| Detection {
                    label: classes[d.label].clone(),
                    score: d.score,
                    segment: [d.start, d.end],
                })
                .collect(),
        }
    }
}

/// A detection results file (`{"results": {video: [detection, ...]}}`), in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    /// Videos, in file order.
    pub videos: Vec<VideoDetections>,
}

impl Predictions {
    /// Read an ActivityNet-format results JSON file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        Self::from_json_str(&read_to_string(path)?, path)
    }

    /// Parse ActivityNet-format results; `path` only names the input in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        // Results files run to tens of MB: a typed parse is several times faster than walking
        // a `Value`. Anything it rejects goes through the walk, which names the bad field.
        if let Ok(fast) = serde_json::from_str::<FastResults>(text)
            && let Some(p) = fast.into_checked()
        {
            return Ok(p);
        }
        Self::from_json_str_checked(text, path)
    }

    fn from_json_str_checked(text: &str, path: &Path) -> Result<Self> {
        let root = parse(path, text)?;
        let ctx = Ctx::new(path);
        let root = ctx.object(&root, "<root>")?;
        let results = ctx.object(ctx.get(root, "results", "results")?, "results")?;
        let mut videos = Vec::with_capacity(results.len());
        for (id, dets) in results {
            let vctx = ctx.video(id);
            let arr = vctx.array(dets, "results")?;
            let mut detections = Vec::with_capacity(arr.len());
            for (i, d) in arr.iter().enumerate() {
                let f = format!("results[{i}]");
                let o = vctx.object(d, &f)?;
                let lf = format!("{f}.label");
                let label = vctx.string(vctx.get(o, "label", &lf)?, &lf)?.to_owned();
                let sf = format!("{f}.score");
                let score = vctx.number(vctx.get(o, "score", &sf)?, &sf)?;
                let gf = format!("{f}.segment");
                let segment = vctx.segment(vctx.get(o, "segment", &gf)?, &gf)?;
                detections.push(Detection {
                    label,
                    score,
                    segment,
                });
            }
            videos.push(VideoDetections {
                id: id.clone(),
                detections,
            });
        }
        Ok(Self { videos })
    }

    /// Total number of detections.
    pub fn len(&self) -> usize {
        self.videos.iter().map(|v| v.detections.len()).sum()
    }

    /// True when there is no detection at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The document as ActivityNet results JSON.
    pub fn to_json(&self) -> Value {
        let mut results = Map::new();
        for v in &self.videos {
            let dets: Vec<Value> = v
                .detections
                .iter()
                .map(|d| json!({"label": d.label, "score": d.score, "segment": d.segment}))
                .collect();
            results.insert(v.id.clone(), Value::Array(dets));
        }
        json!({"version": "VERSION 1.3", "results": results, "external_data": {"used": false}})
    }

    /// Write as ActivityNet results JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json_atomic(path, &self.to_json())
    }
}

/// Typed image of a results file, for the fast path of [`Predictions::from_json_str`].
#[derive(serde::Deserialize)]
struct FastResults {
    results: OrderedResults,
}

#[derive(serde::Deserialize)]
struct FastDetection {
    label: String,
    score: f64,
    segment: [f64; 2],
}

/// `{video: [detection]}` read in file order.
struct OrderedResults(Vec<(String, Vec<FastDetection>)>);

impl<'de> serde::Deserialize<'de> for OrderedResults {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedResults;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of video ids to detection lists")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedResults, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, Vec<FastDetection>>()? {
                    out.push(entry);
                }
                Ok(OrderedResults(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl FastResults {
    /// The predictions, or `None` if a value needs the checked path (non-finite numbers,
    /// inverted segments, duplicate video keys).
    fn into_checked(self) -> Option<Predictions> {
        let mut seen = std::collections::HashSet::new();
        let mut videos = Vec::with_capacity(self.results.0.len());
        for (id, dets) in self.results.0 {
            if !seen.insert(id.clone()) {
                return None;
            }
            let mut detections = Vec::with_capacity(dets.len());
            for d in dets {
                let [t0, t1] = d.segment;
                if !(d.score.is_finite() && t0.is_finite() && t1.is_finite() && t0 <= t1) {
                    return None;
                }
                detections.push(Detection {
                    label: d.label,
                    score: d.score,
                    segment: d.segment,
                });
            }
            videos.push(VideoDetections { id, detections });
        }
        Some(Predictions { videos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    const P: &str = "gt.json";

    fn gt(text: &str) -> Result<GroundTruth> {
        GroundTruth::from_json_str(text, Path::new(P))
    }

    #[test]
    fn round_trip_keeps_order_and_fields() {
        let text = r#"{"database": {
            "b": {"subset": "validation", "duration": 10.5, "fps": 15, "num_frames": 157,
                  "annotations": [{"segment": [1.0, 2.5], "label": "Jump"},
                                  {"segment": [3, 4], "label": "Run"}]},
            "a": {"subset": "training", "duration": 3, "annotations": []}}}"#;
        let g = gt(text).unwrap();
        assert_eq!(g.videos[0].id, "b");
        assert_eq!(g.videos[0].fps, Some(15.0));
        assert_eq!(g.videos[0].num_frames, Some(157));
        assert_eq!(g.classes(None), vec!["Jump", "Run"]);
        assert_eq!(g.classes(Some(Subset::Training)), Vec::<String>::new());
        let again = gt(&g.to_json().to_string()).unwrap();
        assert_eq!(g, again);
    }

    fn expect_field_error(text: &str, want_video: Option<&str>, want_field: &str) {
        match gt(text) {
            Err(Error::InvalidField {
                path, video, field, ..
            })
            | Err(Error::MissingField { path, video, field }) => {
                assert_eq!(path, Path::new(P));
                assert_eq!(video.as_deref(), want_video);
                assert_eq!(field, want_field);
            }
            other => panic!("expected a field error for {want_field}, got {other:?}"),
        }
    }

    #[test]
    fn bad_ground_truth_names_video_and_field() {
        expect_field_error(r#"{"db": {}}"#, None, "database");
        expect_field_error(r#"{"database": []}"#, None, "database");
        expect_field_error(
            r#"{"database": {"v1": {"subset": "training", "annotations": []}}}"#,
            Some("v1"),
            "duration",
        );
        expect_field_error(
            r#"{"database": {"v1": {"subset": "train", "duration": "x", "annotations": []}}}"#,
            Some("v1"),
            "duration",
        );
        expect_field_error(
            r#"{"database": {"v1": {"subset": "holdout", "duration": 1, "annotations": []}}}"#,
            Some("v1"),
            "subset",
        );
        expect_field_error(
            r#"{"database": {"v1": {"subset": "training", "duration": 5,
                "annotations": [{"segment": [1, 2], "label": "a"}, {"segment": [1], "label": "a"}]}}}"#,
            Some("v1"),
            "annotations[1].segment",
        );
        expect_field_error(
            r#"{"database": {"v1": {"subset": "training", "duration": 5,
                "annotations": [{"segment": [3, 2], "label": "a"}]}}}"#,
            Some("v1"),
            "annotations[0].segment",
        );
        expect_field_error(
            r#"{"database": {"v1": {"subset": "training", "duration": 5,
                "annotations": [{"segment": [1, 2]}]}}}"#,
            Some("v1"),
            "annotations[0].label",
        );
        expect_field_error(
            r#"{"database": {"v1": {"subset": "training", "duration": 5}}}"#,
            Some("v1"),
            "annotations",
        );
        expect_field_error(
            r#"{"database": {"v1": {"subset": "training", "duration": 5, "fps": 0, "annotations": []}}}"#,
            Some("v1"),
            "fps",
        );
    }

    #[test]
    fn malformed_json_reports_position() {
        match gt("{\"database\": {\n  \"v\": }") {
            Err(Error::Json { path, line, .. }) => {
                assert_eq!(path, Path::new(P));
                assert_eq!(line, 2);
            }
            other => panic!("expected Json error, got {other:?}"),
        }
    }

    #[test]
    fn testing_videos_may_omit_annotations() {
        let g = gt(r#"{"database": {"t": {"subset": "testing", "duration": 2}}}"#).unwrap();
        assert!(g.videos[0].annotations.is_empty());
    }

    #[test]
    fn fast_and_checked_result_parsing_agree() {
        let p = Path::new("pred.json");
        let texts = [
            r#"{"results": {"b": [{"label": "x", "score": 0.5, "segment": [1, 2]}],
                "a": [{"label": "y", "score": 1, "segment": [0.5, 0.5]}], "c": []}}"#,
            // Scores as strings go through the checked path.
            r#"{"results": {"a": [{"label": "x", "score": "0.25", "segment": [1, 2]}],
                "b": []}}"#,
        ];
        for t in texts {
            let fast = Predictions::from_json_str(t, p).unwrap();
            let checked = Predictions::from_json_str_checked(t, p).unwrap();
            assert_eq!(fast, checked);
        }
        // A repeated video key is an error naming it (a plain parse would keep the last list
        // silently, and `eval` would score the wrong detections).
        let dup = r#"{"results": {"a": [{"label": "x", "score": 0.5, "segment": [1, 2]}],
                "b": [], "a": [{"label": "z", "score": 0.1, "segment": [3, 4]}]}}"#;
        let e = Predictions::from_json_str(dup, p).unwrap_err().to_string();
        assert!(
            e.contains("`a` appears twice") && e.contains("pred.json"),
            "{e}"
        );
    }

    #[test]
    fn predictions_parse_and_errors() {
        let p = Path::new("pred.json");
        let ok = Predictions::from_json_str(
            r#"{"results": {"v1": [{"label": "a", "score": 0.5, "segment": [1, 2]}], "v2": []}}"#,
            p,
        )
        .unwrap();
        assert_eq!(ok.len(), 1);
        let again = Predictions::from_json_str(&ok.to_json().to_string(), p).unwrap();
        assert_eq!(ok, again);
        let err = Predictions::from_json_str(
            r#"{"results": {"v1": [{"label": "a", "score": null, "segment": [1, 2]}]}}"#,
            p,
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidField { video: Some(v), field, .. } if v == "v1" && field == "results[0].score"),
            "{err:?}"
        );
        let err = Predictions::from_json_str(r#"{"result": {}}"#, p).unwrap_err();
        assert!(matches!(&err, Error::MissingField { field, .. } if field == "results"));
        let err = Predictions::from_json_str(
            r#"{"results": {"v9": [{"label": 3, "score": 1, "segment": [1, 2]}]}}"#,
            p,
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidField { video: Some(v), field, .. } if v == "v9" && field == "results[0].label")
        );
        let msg = err.to_string();
        assert!(
            msg.contains("pred.json") && msg.contains("v9") && msg.contains("label"),
            "{msg}"
        );
    }
}
