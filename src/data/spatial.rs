//! One spatial operation on decoded frames: crop a rectangle of the source, scale it to the
//! output size, optionally mirror it. Every frame reader applies it while decoding (FFmpeg's
//! `crop`, `scale` and `hflip` filters for video files; the `image` crate for frame folders and
//! frames in memory), so a step never holds frames at their stored size. The policies that
//! choose an operation per step (random resized crop, flip, centre crop) live in
//! [`crate::pipeline`].

use serde::{Deserialize, Serialize};

/// A rectangle of the source frame, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropRect {
    /// First row.
    pub y: usize,
    /// First column.
    pub x: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// Crop `crop` out of a `source` frame, scale it to `out` (height, width) with an antialiased
/// triangle (bilinear) filter, and mirror it left to right when `flip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpatialOp {
    /// Size of the frames the operation reads (height, width).
    pub source: (usize, usize),
    /// The rectangle kept.
    pub crop: CropRect,
    /// Size of the frames it returns (height, width).
    pub out: (usize, usize),
    /// Mirror left to right.
    pub flip: bool,
}

impl SpatialOp {
    /// Frames of `source` size returned as they are.
    pub fn identity(source: (usize, usize)) -> Self {
        Self::resize(source, source)
    }

    /// The whole frame scaled to `out`.
    pub fn resize(source: (usize, usize), out: (usize, usize)) -> Self {
        SpatialOp {
            source,
            crop: CropRect {
                y: 0,
                x: 0,
                height: source.0,
                width: source.1,
            },
            out,
            flip: false,
        }
    }

    /// True when the operation returns its input unchanged.
    pub fn is_identity(&self) -> bool {
        *self == Self::identity(self.source)
    }

    /// True when the crop keeps the whole frame.
    pub fn crops(&self) -> bool {
        (self.crop.y, self.crop.x, self.crop.height, self.crop.width)
            != (0, 0, self.source.0, self.source.1)
    }

    /// The crop lies inside the source and every size is positive: operations made by the
    /// pipeline always are; this guards hand-made ones.
    pub fn is_valid(&self) -> bool {
        let c = &self.crop;
        c.height > 0
            && c.width > 0
            && c.y + c.height <= self.source.0
            && c.x + c.width <= self.source.1
            && self.out.0 > 0
            && self.out.1 > 0
    }

    /// FFmpeg's filter chain for the operation (empty for the identity): `crop` with exact
    /// offsets (odd ones on subsampled chroma too), the scaler the frame folders' triangle
    /// filter matches, then `hflip`.
    pub fn ffmpeg_filter(&self) -> String {
        let mut parts = Vec::new();
        if self.crops() {
            let c = &self.crop;
            parts.push(format!(
                "crop={}:{}:{}:{}:exact=1",
                c.width, c.height, c.x, c.y
            ));
        }
        if self.out != (self.crop.height, self.crop.width) {
            parts.push(format!(
                "scale={}:{}:flags=bilinear",
                self.out.1, self.out.0
            ));
        }
        if self.flip {
            parts.push("hflip".into());
        }
        parts.join(",")
    }

    /// Apply the operation to one RGB8 image of [`SpatialOp::source`] size.
    pub fn apply_rgb(&self, img: image::RgbImage) -> image::RgbImage {
        if self.is_identity() {
            return img;
        }
        let c = &self.crop;
        let img = if self.crops() {
            image::imageops::crop_imm(
                &img,
                c.x as u32,
                c.y as u32,
                c.width as u32,
                c.height as u32,
            )
            .to_image()
        } else {
            img
        };
        let img = if self.out != (c.height, c.width) {
            image::imageops::resize(
                &img,
                self.out.1 as u32,
                self.out.0 as u32,
                image::imageops::FilterType::Triangle,
            )
        } else {
            img
        };
        if self.flip {
            image::imageops::flip_horizontal(&img)
        } else {
            img
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: u32, w: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]))
    }

    #[test]
    fn identity_crop_and_flip() {
        let img = ramp(4, 6);
        let id = SpatialOp::identity((4, 6));
        assert!(id.is_identity() && id.is_valid() && id.ffmpeg_filter().is_empty());
        assert_eq!(id.apply_rgb(img.clone()), img);
        let op = SpatialOp {
            source: (4, 6),
            crop: CropRect {
                y: 1,
                x: 2,
                height: 2,
                width: 3,
            },
            out: (2, 3),
            flip: true,
        };
        assert_eq!(op.ffmpeg_filter(), "crop=3:2:2:1:exact=1,hflip");
        let out = op.apply_rgb(img);
        assert_eq!(out.dimensions(), (3, 2));
        // Mirrored: the first column of the output is column 4 of the source, row 1.
        assert_eq!(out.get_pixel(0, 0).0, [4, 1, 7]);
        assert_eq!(out.get_pixel(2, 1).0, [2, 2, 7]);
        let bad = SpatialOp { out: (0, 3), ..op };
        assert!(!bad.is_valid());
    }

    #[test]
    fn resize_only_scales() {
        let op = SpatialOp::resize((180, 320), (90, 160));
        assert_eq!(op.ffmpeg_filter(), "scale=160:90:flags=bilinear");
        assert_eq!(op.apply_rgb(ramp(180, 320)).dimensions(), (160, 90));
    }
}
