//! One way in for video content: a [`FrameSource`] is either a folder of extracted frames or a
//! video file, and everything that reads videos (datasets for training and evaluation, feature
//! extraction, single-video inference, the baseline) opens it through [`open_source`].

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frames::{FrameFolder, Frames};
use super::spatial::SpatialOp;
use crate::error::{Error, Result};

/// File extensions recognised as video files (compared case-insensitively).
pub const VIDEO_EXTENSIONS: &[&str] = &["mp4", "mkv", "webm", "avi", "mov", "m4v", "mpg", "mpeg"];

/// File name of the ground truth inside a dataset folder.
pub const ANNOTATIONS_FILE: &str = "annotations.json";
/// Folder of per-video frame folders inside a dataset folder (`frames/<id>/img_00001.jpg`).
pub const FRAMES_DIR: &str = "frames";
/// Folder of video files inside a dataset folder (`videos/<id>.mp4`).
pub const VIDEOS_DIR: &str = "videos";

/// Whether `path` ends in one of [`VIDEO_EXTENSIONS`].
pub(crate) fn has_video_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The frames of one video, wherever they are stored: a frame folder, a video file, or frames
/// already in memory. Readers decode only the frames asked for, through a [`SpatialOp`], so
/// nothing holds a video at its stored size; sources are shared by the input pipeline's
/// worker threads.
pub trait FrameSource: Send + Sync {
    /// Video identifier.
    fn video(&self) -> &str;
    /// The folder or file the frames come from (named in errors).
    fn path(&self) -> &Path;
    /// Number of frames.
    fn len(&self) -> usize;
    /// True when there are no frames (never, for an opened source).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The source's own frame rate: a video file's sampling grid; `None` for frame folders,
    /// whose rate the annotations give.
    fn fps(&self) -> Option<f64>;
    /// Size of the stored frames (height, width).
    fn frame_size(&self) -> Result<(usize, usize)>;
    /// Error unless the source matches an annotation's `num_frames`. Frame folders must hold
    /// exactly that many frames (fewer means lost frames, more another copy mixed in); a video
    /// file's frames come from its own timestamps, so the count of another extraction does not
    /// bind it.
    fn check_count(&self, num_frames: usize) -> Result<()>;
    /// Decode frames `range` through `op` (crop, scale, mirror), applied while decoding.
    fn read_with(&self, range: Range<usize>, op: &SpatialOp) -> Result<Frames>;
    /// Decode the frames `indices` (ascending, each once) through `op`, in that order: each
    /// run of consecutive frames is one read.
    fn read_indices(&self, indices: &[usize], op: &SpatialOp) -> Result<Frames> {
        let mut out: Option<Frames> = None;
        for run in runs(indices, 1) {
            let part = self.read_with(run, op)?;
            match &mut out {
                None => out = Some(part),
                Some(o) => {
                    o.rgb.extend_from_slice(&part.rgb);
                    o.len += part.len;
                }
            }
        }
        out.ok_or_else(|| Error::Config(format!("video `{}`: no frames asked for", self.video())))
    }
    /// Decode frames `range`, optionally resized to `(height, width)` (triangle filter).
    fn read(&self, range: Range<usize>, resize: Option<(usize, usize)>) -> Result<Frames> {
        let source = self.frame_size()?;
        self.read_with(range, &SpatialOp::resize(source, resize.unwrap_or(source)))
    }
    /// Decode every frame.
    fn read_all(&self, resize: Option<(usize, usize)>) -> Result<Frames> {
        self.read(0..self.len(), resize)
    }
}

/// `indices` (ascending) as ranges, a new range wherever the next index is more than `gap`
/// past the previous one.
pub(crate) fn runs(indices: &[usize], gap: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for &i in indices {
        match out.last_mut() {
            Some(r) if i >= r.end && i - (r.end - 1) <= gap => r.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

impl FrameSource for FrameFolder {
    fn video(&self) -> &str {
        &self.video
    }
    fn path(&self) -> &Path {
        &self.dir
    }
    fn len(&self) -> usize {
        self.files.len()
    }
    fn fps(&self) -> Option<f64> {
        None
    }
    fn frame_size(&self) -> Result<(usize, usize)> {
        FrameFolder::frame_size(self)
    }
    fn check_count(&self, num_frames: usize) -> Result<()> {
        self.expect_count(num_frames)
    }
    fn read_with(&self, range: Range<usize>, op: &SpatialOp) -> Result<Frames> {
        FrameFolder::read_with(self, range, op)
    }
}

impl FrameSource for Frames {
    fn video(&self) -> &str {
        &self.video
    }
    fn path(&self) -> &Path {
        Path::new("<memory>")
    }
    fn len(&self) -> usize {
        self.len
    }
    fn fps(&self) -> Option<f64> {
        None
    }
    fn frame_size(&self) -> Result<(usize, usize)> {
        Ok((self.height, self.width))
    }
    fn check_count(&self, _num_frames: usize) -> Result<()> {
        Ok(())
    }
    fn read_with(&self, range: Range<usize>, op: &SpatialOp) -> Result<Frames> {
        Frames::read_with(self, range, op)
    }
}

#[cfg(feature = "video")]
impl FrameSource for super::video::VideoFile {
    fn video(&self) -> &str {
        &self.video
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn len(&self) -> usize {
        VideoFile::len(self)
    }
    fn fps(&self) -> Option<f64> {
        Some(self.fps)
    }
    fn frame_size(&self) -> Result<(usize, usize)> {
        Ok((self.info.height, self.info.width))
    }
    fn check_count(&self, _num_frames: usize) -> Result<()> {
        Ok(())
    }
    fn read_with(&self, range: Range<usize>, op: &SpatialOp) -> Result<Frames> {
        VideoFile::read_with(self, range, op)
    }
    fn read_indices(&self, indices: &[usize], op: &SpatialOp) -> Result<Frames> {
        VideoFile::read_indices(self, indices, op)
    }
}

#[cfg(feature = "video")]
use super::video::VideoFile;

/// Open `path` as video `video`: a folder is a frame folder, a file a video file (decoded on a
/// grid of `fps` frames per second, the file's own rate when `None`; frame folders ignore it).
/// A video file in a build without the `video` feature is an error saying so.
pub fn open_source(path: &Path, video: &str, fps: Option<f64>) -> Result<Arc<dyn FrameSource>> {
    if path.is_dir() {
        return Ok(Arc::new(FrameFolder::open(path, video)?));
    }
    if !path.exists() && has_video_extension(path) {
        return Err(Error::Video {
            path: path.to_path_buf(),
            reason: "no such file".into(),
        });
    }
    if !path.exists() {
        return Err(Error::MissingFrames {
            path: path.to_path_buf(),
            video: video.to_owned(),
            reason: "no such frame folder or video file".into(),
        });
    }
    open_video_file(path, video, fps)
}

#[cfg(feature = "video")]
fn open_video_file(path: &Path, video: &str, fps: Option<f64>) -> Result<Arc<dyn FrameSource>> {
    let v = VideoFile::open(path, video, fps)?;
    if v.info.variable_frame_rate {
        crate::io::warning(format_args!(
            "warning: {}: variable frame rate; frames are picked by timestamp onto a constant \
             {:.3} fps grid",
            path.display(),
            v.fps
        ));
    }
    Ok(Arc::new(v))
}

#[cfg(not(feature = "video"))]
fn open_video_file(path: &Path, _video: &str, _fps: Option<f64>) -> Result<Arc<dyn FrameSource>> {
    Err(Error::Video {
        path: path.to_path_buf(),
        reason: "this build reads frame folders only; video files need the `video` cargo \
                 feature (build with `--features video`)"
            .into(),
    })
}

/// Where video `id`'s frames are in `media`: the frame folder `media/<id>/`, else a video file
/// `media/<id>.<ext>` with one of [`VIDEO_EXTENSIONS`]. An error names both places looked at,
/// or the two files when one video has several.
pub fn locate_video(media: &Path, id: &str) -> Result<PathBuf> {
    if crate::io::path_like_id(id) {
        return Err(Error::MissingFrames {
            path: media.to_path_buf(),
            video: id.to_owned(),
            reason: "this video id cannot name a frame folder or video file inside the media \
                     folder (it is empty, `.` or `..`, absolute, or holds a path separator)"
                .into(),
        });
    }
    let folder = media.join(id);
    if folder.is_dir() {
        return Ok(folder);
    }
    let named: Vec<PathBuf> = VIDEO_EXTENSIONS
        .iter()
        .flat_map(|e| [e.to_string(), e.to_ascii_uppercase()])
        .map(|e| media.join(format!("{id}.{e}")))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    let found: Vec<PathBuf> = named.iter().filter(|p| p.is_file()).cloned().collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] if !named.is_empty() => Err(not_a_file(&named[0], id)),
        [] => Err(Error::MissingFrames {
            path: folder,
            video: id.to_owned(),
            reason: format!(
                "neither a frame folder `{id}/` nor a video file `{id}.<{}>` in {}",
                VIDEO_EXTENSIONS.join("|"),
                media.display()
            ),
        }),
        many => Err(Error::MissingFrames {
            path: folder,
            video: id.to_owned(),
            reason: format!(
                "several video files: {} (keep one)",
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// The error for `path`, named like video `id`'s file but not a readable file: a folder, a
/// symbolic link that leads nowhere (broken, or a loop), or something else.
fn not_a_file(path: &Path, id: &str) -> Error {
    let reason = match path.metadata() {
        Ok(m) if m.is_dir() => "is a folder, not a video file (a frame folder is named `<id>/`)",
        Ok(_) => "is not a regular file (a device, a pipe or a socket)",
        Err(_) => "is a symbolic link that leads nowhere (broken, or a loop)",
    };
    Error::Video {
        path: path.to_path_buf(),
        reason: format!("video `{id}`: {reason}"),
    }
}

/// The media folder of a dataset folder: `root/frames` when it exists, else `root/videos` when
/// that exists, else `root/frames` (so the error names where frames were expected).
pub fn media_dir(root: &Path) -> PathBuf {
    let videos = root.join(VIDEOS_DIR);
    if !root.join(FRAMES_DIR).is_dir() && videos.is_dir() {
        videos
    } else {
        root.join(FRAMES_DIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps() {
        assert_eq!(runs(&[0, 1, 2, 5, 6, 9], 1), vec![0..3, 5..7, 9..10]);
        assert_eq!(runs(&[0, 2, 4, 40, 42], 2), vec![0..5, 40..43]);
        assert!(runs(&[], 1).is_empty());
    }

    #[test]
    fn extensions() {
        assert!(has_video_extension(Path::new("a/b.MP4")));
        assert!(has_video_extension(Path::new("c.webm")));
        assert!(!has_video_extension(Path::new("c.json")));
        assert!(!has_video_extension(Path::new("frames/v1")));
    }

    #[test]
    fn locate_prefers_folders_and_names_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let e = locate_video(d.path(), "v1").unwrap_err().to_string();
        assert!(e.contains("`v1/`") && e.contains("v1.<mp4"), "{e}");
        std::fs::write(d.path().join("v1.mkv"), b"x").unwrap();
        assert_eq!(
            locate_video(d.path(), "v1").unwrap(),
            d.path().join("v1.mkv")
        );
        std::fs::write(d.path().join("v1.mp4"), b"x").unwrap();
        let e = locate_video(d.path(), "v1").unwrap_err().to_string();
        assert!(e.contains("several video files"), "{e}");
        std::fs::create_dir(d.path().join("v1")).unwrap();
        assert_eq!(locate_video(d.path(), "v1").unwrap(), d.path().join("v1"));
        assert_eq!(media_dir(d.path()), d.path().join(FRAMES_DIR));
        std::fs::create_dir(d.path().join(VIDEOS_DIR)).unwrap();
        assert_eq!(media_dir(d.path()), d.path().join(VIDEOS_DIR));
        std::fs::create_dir(d.path().join(FRAMES_DIR)).unwrap();
        assert_eq!(media_dir(d.path()), d.path().join(FRAMES_DIR));
    }

    #[test]
    fn missing_path_is_an_error_naming_it() {
        let e = open_source(Path::new("/nonexistent/v.mp4"), "v", None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/v.mp4"), "{e}");
    }

    #[cfg(not(feature = "video"))]
    #[test]
    fn video_files_need_the_feature() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.mp4");
        std::fs::write(&p, b"x").unwrap();
        let e = open_source(&p, "v", None).err().unwrap().to_string();
        assert!(e.contains("--features video") && e.contains("v.mp4"), "{e}");
    }
}
