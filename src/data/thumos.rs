//! THUMOS-14 per-class annotation text files (`<Class>_val.txt`, lines `video t0 t1`), converted
//! to the same in-memory [`GroundTruth`] as ActivityNet JSON.

use std::collections::HashMap;
use std::path::Path;

use super::annotations::{Annotation, GroundTruth, Subset, VideoAnnotations};
use crate::error::{Error, Result};
use crate::io::read_to_string;

/// Which THUMOS-14 annotation files to read.
#[derive(Debug, Clone)]
pub struct ThumosSource<'a> {
    /// Folder holding the `<Class>_<split>.txt` files.
    pub dir: &'a Path,
    /// File-name suffix: `"val"` (the usual training split) or `"test"`.
    pub split: &'a str,
    /// Subset the videos are given in memory.
    pub subset: Subset,
    /// Video durations in seconds. The text files carry none: videos missing here get the end
    /// of their last annotation as duration.
    pub durations: Option<&'a HashMap<String, f64>>,
}

/// Class files that do not describe an action class. THUMOS marks hard-to-label segments as
/// `Ambiguous`; like most TAL code bases we leave them out.
const SKIPPED_CLASSES: &[&str] = &["Ambiguous"];

/// The `<Class>_<split>.txt` files of `dir` as `(class, path)`, sorted by class (the skipped
/// classes left out). No such file is an error naming the folder.
pub fn thumos_annotation_files(
    dir: &Path,
    split: &str,
) -> Result<Vec<(String, std::path::PathBuf)>> {
    let suffix = format!("_{split}.txt");
    let mut files: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let class = name.strip_suffix(&suffix)?.to_owned();
            Some((class, e.path()))
        })
        .filter(|(c, _)| !SKIPPED_CLASSES.contains(&c.as_str()))
        .collect();
    if files.is_empty() {
        return Err(Error::EmptyInput {
            path: dir.to_path_buf(),
            reason: format!("no THUMOS annotation files matching `<Class>{suffix}`"),
        });
    }
    files.sort();
    Ok(files)
}

/// Read all `<Class>_<split>.txt` files of `src.dir` (classes sorted by file name, videos in order
/// of first appearance).
pub fn load_thumos(src: &ThumosSource<'_>) -> Result<GroundTruth> {
    let files = thumos_annotation_files(src.dir, src.split)?;
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut videos: Vec<VideoAnnotations> = Vec::new();
    for (class, path) in &files {
        let text = read_to_string(path)?;
        for (i, line) in text.lines().enumerate() {
            let line_err = |reason: String| Error::AnnotationLine {
                path: path.clone(),
                line: i + 1,
                reason,
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.is_empty() {
                continue;
            }
            if parts.len() != 3 {
                return Err(line_err(format!(
                    "expected `video start end`, found {} fields",
                    parts.len()
                )));
            }
            let num = |s: &str, what: &str| -> Result<f64> {
                s.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| line_err(format!("{what} `{s}` is not a number")))
            };
            let t0 = num(parts[1], "start")?;
            let t1 = num(parts[2], "end")?;
            if t1 < t0 {
                return Err(line_err(format!("end {t1} is before start {t0}")));
            }
            let id = parts[0];
            let vi = *index.entry(id.to_owned()).or_insert_with(|| {
                videos.push(VideoAnnotations {
                    id: id.to_owned(),
                    subset: src.subset,
                    duration: 0.0,
                    fps: None,
                    num_frames: None,
                    annotations: Vec::new(),
                });
                videos.len() - 1
            });
            videos[vi].annotations.push(Annotation {
                segment: [t0, t1],
                label: class.clone(),
            });
        }
    }
    for v in &mut videos {
        let last_end = v
            .annotations
            .iter()
            .map(|a| a.segment[1])
            .fold(0.0, f64::max);
        v.duration = src
            .durations
            .and_then(|d| d.get(&v.id).copied())
            .unwrap_or(last_end);
    }
    Ok(GroundTruth { videos })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn converts_class_files() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "BaseballPitch_val.txt",
            "video_validation_0000051 67.5 75.9\nvideo_validation_0000052 1 2\n\n",
        );
        write(
            d.path(),
            "Billiards_val.txt",
            "video_validation_0000052 3.0 4.5\n",
        );
        write(
            d.path(),
            "Ambiguous_val.txt",
            "video_validation_0000051 1 2\n",
        );
        write(
            d.path(),
            "Billiards_test.txt",
            "video_test_0000001 3.0 4.5\n",
        );
        let mut durations = HashMap::new();
        durations.insert("video_validation_0000052".to_string(), 100.0);
        let gt = load_thumos(&ThumosSource {
            dir: d.path(),
            split: "val",
            subset: Subset::Validation,
            durations: Some(&durations),
        })
        .unwrap();
        assert_eq!(gt.videos.len(), 2);
        assert_eq!(gt.videos[0].id, "video_validation_0000051");
        assert_eq!(gt.videos[0].annotations.len(), 1, "Ambiguous is skipped");
        assert_eq!(gt.videos[0].duration, 75.9);
        assert_eq!(gt.videos[1].duration, 100.0);
        assert_eq!(gt.videos[1].annotations[1].label, "Billiards");
        assert_eq!(gt.classes(None), vec!["BaseballPitch", "Billiards"]);
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Diving_val.txt", "v1 1 2\nv2 1.5\n");
        let src = ThumosSource {
            dir: d.path(),
            split: "val",
            subset: Subset::Validation,
            durations: None,
        };
        match load_thumos(&src) {
            Err(Error::AnnotationLine { path, line, .. }) => {
                assert!(path.ends_with("Diving_val.txt"));
                assert_eq!(line, 2);
            }
            other => panic!("{other:?}"),
        }
        write(d.path(), "Diving_val.txt", "v1 1 abc\n");
        let e = load_thumos(&src).unwrap_err().to_string();
        assert!(e.contains("Diving_val.txt:1") && e.contains("abc"), "{e}");
        write(d.path(), "Diving_val.txt", "v1 5 2\n");
        assert!(matches!(
            load_thumos(&src),
            Err(Error::AnnotationLine { line: 1, .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        let src = ThumosSource {
            dir: empty.path(),
            ..src
        };
        assert!(
            load_thumos(&src)
                .unwrap_err()
                .to_string()
                .contains("_val.txt")
        );
    }
}
