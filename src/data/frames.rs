//! Frame folders: one folder of JPEG/PNG images per video, decoded with the `image` crate.

use std::path::{Path, PathBuf};

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

/// A video's frame folder: image files sorted by name (`img_00001.jpg`, ...).
#[derive(Debug, Clone)]
pub struct FrameFolder {
    /// Video identifier.
    pub video: String,
    /// The folder.
    pub dir: PathBuf,
    /// Image files, in frame order.
    pub files: Vec<PathBuf>,
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

impl FrameFolder {
    /// List the frames of `video` in `dir`. A missing or empty folder is an error.
    pub fn open(dir: &Path, video: &str) -> Result<Self> {
        let missing = |reason: String| Error::MissingFrames {
            path: dir.to_path_buf(),
            video: video.to_owned(),
            reason,
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| missing(format!("cannot read frame folder: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        if files.is_empty() {
            return Err(missing("no JPEG or PNG frames".into()));
        }
        files.sort();
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

    /// Error if the folder holds fewer frames than `expected` (e.g. the annotation's
    /// `num_frames`).
    pub fn expect_at_least(&self, expected: usize) -> Result<()> {
        if self.len() < expected {
            return Err(Error::MissingFrames {
                path: self.dir.clone(),
                video: self.video.clone(),
                reason: format!(
                    "{} frames found, the annotation says {expected}",
                    self.len()
                ),
            });
        }
        Ok(())
    }

    /// Decode every frame, optionally resizing to `(height, width)` (triangle filter). All
    /// frames must share the first frame's size.
    pub fn read_all(&self, resize: Option<(usize, usize)>) -> Result<Frames> {
        let mut rgb = Vec::new();
        let mut size = None;
        for path in &self.files {
            let img = image::open(path)
                .map_err(|e| Error::BadFrame {
                    path: path.clone(),
                    reason: format!("cannot decode frame: {e}"),
                })?
                .to_rgb8();
            let (w, h) = (img.width() as usize, img.height() as usize);
            match size {
                None => size = Some((h, w)),
                Some(s) if s != (h, w) => {
                    return Err(Error::BadFrame {
                        path: path.clone(),
                        reason: format!(
                            "frame is {w}x{h}, the video's first frame is {}x{}",
                            s.1, s.0
                        ),
                    });
                }
                Some(_) => {}
            }
            let img = match resize {
                Some((rh, rw)) if (rh, rw) != (h, w) => image::imageops::resize(
                    &img,
                    rw as u32,
                    rh as u32,
                    image::imageops::FilterType::Triangle,
                ),
                _ => img,
            };
            rgb.extend_from_slice(img.as_raw());
        }
        let (height, width) = resize.or(size).expect("at least one frame");
        Ok(Frames {
            video: self.video.clone(),
            len: self.files.len(),
            height,
            width,
            rgb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(f.expect_at_least(2).is_ok());
        let e = f.expect_at_least(5).unwrap_err().to_string();
        assert!(e.contains("`v`") && e.contains("5"), "{e}");
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
}
