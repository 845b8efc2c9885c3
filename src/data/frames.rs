//! Frame folders: one folder of JPEG/PNG images per video, decoded with the `image` crate.

use std::path::{Path, PathBuf};

use super::spatial::SpatialOp;
use crate::error::{Error, Result};

/// Decoded frames of one video, RGB8, stored `[N, H, W, 3]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Frames {
    /// Video identifier.
    pub video: String,
    /// Number of frames.
    pub len: usize,
    /// Frame height.
    pub height: usize,
    /// Frame width.
    pub width: usize,
    /// Pixel data, `len * height * width * 3` bytes.
    pub rgb: Vec<u8>,
}

impl Frames {
    /// RGB8 pixels of frame `i`.
    pub fn frame(&self, i: usize) -> &[u8] {
        let n = self.height * self.width * 3;
        &self.rgb[i * n..(i + 1) * n]
    }

    /// Every frame resized to `height x width` with the `image` crate's triangle filter, whose
    /// support widens with the downscale factor (antialiased, as S-LoFi wants).
    pub fn resized(&self, height: usize, width: usize) -> Frames {
        if (height, width) == (self.height, self.width) {
            return self.clone();
        }
        let mut rgb = Vec::with_capacity(self.len * height * width * 3);
        for i in 0..self.len {
            let img = image::RgbImage::from_raw(
                self.width as u32,
                self.height as u32,
                self.frame(i).to_vec(),
            )
            .expect("frames hold height * width * 3 bytes each");
            let small = image::imageops::resize(
                &img,
                width as u32,
                height as u32,
                image::imageops::FilterType::Triangle,
            );
            rgb.extend_from_slice(small.as_raw());
        }
        Frames {
            video: self.video.clone(),
            len: self.len,
            height,
            width,
            rgb,
        }
    }
}

impl Frames {
    /// Frames `range` through `op` (crop, scale, flip): frames held in memory read the way a
    /// frame folder or a video file is read.
    pub fn read_with(&self, range: std::ops::Range<usize>, op: &SpatialOp) -> Result<Frames> {
        if range.start >= range.end || range.end > self.len {
            return Err(Error::MissingFrames {
                path: PathBuf::from("<memory>"),
                video: self.video.clone(),
                reason: format!("frames {range:?} asked for; the video has {}", self.len),
            });
        }
        if op.source != (self.height, self.width) || !op.is_valid() {
            return Err(Error::Config(format!(
                "video `{}`: a crop of {:?} from {}x{} frames asked for frames of {}x{}",
                self.video, op.crop, op.source.1, op.source.0, self.width, self.height
            )));
        }
        let n = self.height * self.width * 3;
        let rgb = if op.is_identity() {
            self.rgb[range.start * n..range.end * n].to_vec()
        } else {
            let mut rgb = Vec::with_capacity(range.len() * op.out.0 * op.out.1 * 3);
            for i in range.clone() {
                let img = image::RgbImage::from_raw(
                    self.width as u32,
                    self.height as u32,
                    self.frame(i).to_vec(),
                )
                .expect("frames hold height * width * 3 bytes each");
                rgb.extend_from_slice(op.apply_rgb(img).as_raw());
            }
            rgb
        };
        Ok(Frames {
            video: self.video.clone(),
            len: range.len(),
            height: op.out.0,
            width: op.out.1,
            rgb,
        })
    }
}

/// A video's frame folder: numbered image files (`img_00001.jpg`, ...) in frame order.
#[derive(Debug, Clone)]
pub struct FrameFolder {
    /// Video identifier.
    pub video: String,
    /// The folder.
    pub dir: PathBuf,
    /// Image files, in frame order.
    pub files: Vec<PathBuf>,
}

/// The two image kinds a frame folder may hold (one per folder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jpeg,
    Png,
}

fn image_kind(p: &Path) -> Option<Kind> {
    match p
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("jpg" | "jpeg") => Some(Kind::Jpeg),
        Some("png") => Some(Kind::Png),
        _ => None,
    }
}

/// `img_00012.jpg` -> (`img_`, 12): the name's stem split before its trailing digits.
fn frame_number(p: &Path) -> Option<(String, u64)> {
    let stem = p.file_stem()?.to_str()?;
    let digits = stem.len() - stem.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits > 18 {
        return None;
    }
    let (prefix, number) = stem.split_at(stem.len() - digits);
    Some((prefix.to_owned(), number.parse().ok()?))
}

impl FrameFolder {
    /// List the frames of `video` in `dir`. Errors name the folder: a missing or empty folder,
    /// JPEG and PNG frames side by side (two copies of the video), and, for numbered names
    /// (`<prefix><number>.<ext>`, the layout every extraction tool writes), a gap or a repeated
    /// number in the sequence. Numbered frames are ordered by number (`img_2` before `img_10`);
    /// names without a common numbered pattern are ordered by name.
    pub fn open(dir: &Path, video: &str) -> Result<Self> {
        let missing = |reason: String| Error::MissingFrames {
            path: dir.to_path_buf(),
            video: video.to_owned(),
            reason,
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| missing(format!("cannot read frame folder: {e}")))?;
        let mut files: Vec<(PathBuf, Kind)> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| image_kind(&p).map(|k| (p, k)))
            .collect();
        if files.is_empty() {
            return Err(missing("no JPEG or PNG frames".into()));
        }
        let jpeg = files.iter().filter(|(_, k)| *k == Kind::Jpeg).count();
        if jpeg != 0 && jpeg != files.len() {
            return Err(missing(format!(
                "holds {jpeg} JPEG and {} PNG frames; a video's frames must be of one format \
                 (remove the extra copy)",
                files.len() - jpeg
            )));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut files: Vec<PathBuf> = files.into_iter().map(|(p, _)| p).collect();
        let numbered: Option<Vec<(String, u64)>> = files.iter().map(|p| frame_number(p)).collect();
        if let Some(nums) = numbered.filter(|n| n.iter().all(|(pre, _)| *pre == n[0].0)) {
            let mut order: Vec<(u64, PathBuf)> =
                nums.into_iter().map(|(_, n)| n).zip(files).collect();
            order.sort();
            for w in order.windows(2) {
                let ((a, pa), (b, pb)) = (&w[0], &w[1]);
                let name = |p: &PathBuf| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                };
                if a == b {
                    return Err(missing(format!(
                        "frames {} and {} have the same number {a}",
                        name(pa),
                        name(pb)
                    )));
                }
                if b - a > 1 {
                    let gap = if b - a == 2 {
                        format!("frame number {} is missing", a + 1)
                    } else {
                        format!("frame numbers {}..={} are missing", a + 1, b - 1)
                    };
                    return Err(missing(format!(
                        "{gap} ({} is followed by {})",
                        name(pa),
                        name(pb)
                    )));
                }
            }
            files = order.into_iter().map(|(_, p)| p).collect();
        }
        Ok(Self {
            video: video.to_owned(),
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when the folder holds no frame (never, for an opened folder).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Error unless the folder holds exactly `expected` frames (the annotation's
    /// `num_frames`): fewer means frames were lost, more that another copy or other images
    /// are mixed in; either would shift every frame's time.
    pub fn expect_count(&self, expected: usize) -> Result<()> {
        if self.len() != expected {
            return Err(Error::MissingFrames {
                path: self.dir.clone(),
                video: self.video.clone(),
                reason: format!(
                    "{} frames found, the annotation's num_frames says {expected}",
                    self.len()
                ),
            });
        }
        Ok(())
    }

    /// Decode frames `range`, optionally resizing to `(height, width)` (triangle filter). All
    /// frames must share the first one's size. [`FrameSource::read_all`](super::source::FrameSource::read_all)
    /// decodes every frame.
    pub fn read_range(
        &self,
        range: std::ops::Range<usize>,
        resize: Option<(usize, usize)>,
    ) -> Result<Frames> {
        let source = self.frame_size()?;
        let op = SpatialOp::resize(source, resize.unwrap_or(source));
        self.read_with(range, &op)
    }

    /// Size of the first frame (height, width), read from its header.
    pub fn frame_size(&self) -> Result<(usize, usize)> {
        let path = self.files.first().ok_or_else(|| Error::MissingFrames {
            path: self.dir.clone(),
            video: self.video.clone(),
            reason: "no frames".into(),
        })?;
        let (w, h) = image::image_dimensions(path).map_err(|e| Error::BadFrame {
            path: path.clone(),
            reason: format!("cannot read the frame's size: {e}"),
        })?;
        Ok((h as usize, w as usize))
    }

    /// Decode frames `range` through `op` (crop, scale, flip). Every frame must have the size
    /// `op` reads (the first frame's).
    pub fn read_with(&self, range: std::ops::Range<usize>, op: &SpatialOp) -> Result<Frames> {
        let Some(files) = self.files.get(range.clone()).filter(|f| !f.is_empty()) else {
            return Err(Error::MissingFrames {
                path: self.dir.clone(),
                video: self.video.clone(),
                reason: format!("frames {range:?} asked for; the folder has {}", self.len()),
            });
        };
        let mut rgb = Vec::with_capacity(files.len() * op.out.0 * op.out.1 * 3);
        for path in files {
            let img = decode_frame(path)?;
            let (w, h) = (img.width() as usize, img.height() as usize);
            if (h, w) != op.source {
                return Err(Error::BadFrame {
                    path: path.clone(),
                    reason: format!(
                        "frame is {w}x{h}, the video's first frame is {}x{}",
                        op.source.1, op.source.0
                    ),
                });
            }
            rgb.extend_from_slice(op.apply_rgb(img).as_raw());
        }
        Ok(Frames {
            video: self.video.clone(),
            len: files.len(),
            height: op.out.0,
            width: op.out.1,
            rgb,
        })
    }
}

/// Decode one frame to RGB8. A JPEG must end with its end-of-image marker: the decoder fills
/// the missing part of a truncated file with grey instead of failing, which would train on a
/// broken frame without a word.
fn decode_frame(path: &Path) -> Result<image::RgbImage> {
    let bad = |reason: String| Error::BadFrame {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let format = image::guess_format(&bytes)
        .map_err(|_| bad("not a JPEG or PNG image (unknown file signature)".into()))?;
    if format == image::ImageFormat::Jpeg {
        // Writers may pad after the marker; look for it near the end.
        let tail = &bytes[bytes.len().saturating_sub(1024)..];
        if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
            return Err(bad(
                "truncated JPEG (no end-of-image marker): the file was cut short".into(),
            ));
        }
    }
    Ok(image::load_from_memory_with_format(&bytes, format)
        .map_err(|e| bad(format!("cannot decode frame: {e}")))?
        .to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::source::FrameSource;

    /// Downscaling by 2 averages: a 1-pixel checkerboard becomes flat grey, a flat colour
    /// stays; sizes and frame count follow.
    #[test]
    fn resized_frames_are_antialiased() {
        let (h, w) = (8, 8);
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let v = if (x + y) % 2 == 0 { 0 } else { 200 };
                rgb.extend_from_slice(&[v, 50, v]);
            }
        }
        let f = Frames {
            video: "v".into(),
            len: 1,
            height: h,
            width: w,
            rgb,
        };
        let r = f.resized(4, 4);
        assert_eq!((r.len, r.height, r.width, r.rgb.len()), (1, 4, 4, 48));
        for px in r.rgb.chunks(3) {
            assert!((px[0] as i32 - 100).abs() <= 2, "{px:?}");
            assert_eq!(px[1], 50);
        }
        assert_eq!(f.resized(8, 8), f);
    }

    fn save(dir: &Path, name: &str, w: u32, h: u32, v: u8) {
        image::RgbImage::from_pixel(w, h, image::Rgb([v, v, v]))
            .save(dir.join(name))
            .unwrap();
    }

    #[test]
    fn reads_sorted_frames_and_resizes() {
        let d = tempfile::tempdir().unwrap();
        save(d.path(), "img_00002.png", 8, 6, 20);
        save(d.path(), "img_00001.png", 8, 6, 10);
        std::fs::write(d.path().join("notes.txt"), "x").unwrap();
        let f = FrameFolder::open(d.path(), "v").unwrap();
        assert_eq!(f.len(), 2);
        let frames = f.read_all(None).unwrap();
        assert_eq!((frames.len, frames.height, frames.width), (2, 6, 8));
        assert_eq!(frames.frame(0)[0], 10);
        assert_eq!(frames.frame(1)[0], 20);
        let small = f.read_all(Some((3, 4))).unwrap();
        assert_eq!(small.rgb.len(), 2 * 3 * 4 * 3);
        assert!(f.expect_count(2).is_ok());
        let e = f.expect_count(5).unwrap_err().to_string();
        assert!(e.contains("`v`") && e.contains("5"), "{e}");
        assert!(f.expect_count(1).is_err());
    }

    #[test]
    fn bad_folders_and_frames() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            FrameFolder::open(&d.path().join("nope"), "v1"),
            Err(Error::MissingFrames { video, .. }) if video == "v1"
        ));
        assert!(matches!(
            FrameFolder::open(d.path(), "v1"),
            Err(Error::MissingFrames { .. })
        ));
        save(d.path(), "img_00001.png", 8, 6, 0);
        save(d.path(), "img_00002.png", 4, 4, 0);
        let e = FrameFolder::open(d.path(), "v1")
            .unwrap()
            .read_all(None)
            .unwrap_err();
        assert!(matches!(&e, Error::BadFrame { path, .. } if path.ends_with("img_00002.png")));
        std::fs::write(d.path().join("img_00002.png"), b"not a png").unwrap();
        let e = FrameFolder::open(d.path(), "v1")
            .unwrap()
            .read_all(None)
            .unwrap_err();
        assert!(e.to_string().contains("img_00002.png"), "{e}");
    }

    /// A gap, a repeated number and two formats side by side are errors naming the folder;
    /// numbered frames are ordered by number, not by name.
    #[test]
    fn frame_sequences_are_checked() {
        let d = tempfile::tempdir().unwrap();
        for (i, v) in [(1, 10), (2, 20), (10, 100)] {
            save(d.path(), &format!("f_{i}.png"), 4, 4, v);
        }
        let e = FrameFolder::open(d.path(), "v").unwrap_err().to_string();
        assert!(
            e.contains("3..=9 are missing") && e.contains("f_2.png"),
            "{e}"
        );
        for i in 3..10 {
            save(d.path(), &format!("f_{i}.png"), 4, 4, i as u8 * 10);
        }
        let f = FrameFolder::open(d.path(), "v")
            .unwrap()
            .read_all(None)
            .unwrap();
        let firsts: Vec<u8> = (0..f.len).map(|i| f.frame(i)[0]).collect();
        assert_eq!(firsts, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        save(d.path(), "f_03.png", 4, 4, 0);
        let e = FrameFolder::open(d.path(), "v").unwrap_err().to_string();
        assert!(e.contains("same number 3"), "{e}");
        std::fs::remove_file(d.path().join("f_03.png")).unwrap();
        save(d.path(), "f_11.jpg", 4, 4, 0);
        let e = FrameFolder::open(d.path(), "v").unwrap_err().to_string();
        assert!(e.contains("1 JPEG and 10 PNG"), "{e}");
    }

    #[test]
    fn truncated_jpeg_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let img =
            image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 0]));
        img.save(d.path().join("img_1.jpg")).unwrap();
        let bytes = std::fs::read(d.path().join("img_1.jpg")).unwrap();
        std::fs::write(d.path().join("img_2.jpg"), &bytes[..bytes.len() / 2]).unwrap();
        let e = FrameFolder::open(d.path(), "v")
            .unwrap()
            .read_all(None)
            .unwrap_err();
        assert!(
            matches!(&e, Error::BadFrame { path, reason }
            if path.ends_with("img_2.jpg") && reason.contains("truncated")),
            "{e}"
        );
    }
}
