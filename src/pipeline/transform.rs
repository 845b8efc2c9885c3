//! The field's spatial video transforms, as OpenTAD / mmaction pipelines apply them, turned
//! into one [`SpatialOp`] per window that the decoder applies: training takes a random resized
//! crop (or the centre crop) and a random horizontal flip, the same for every frame of the
//! window; evaluation and inference resize the short side to the output size and take the
//! centre crop. Frames that already have the output size pass through unchanged.

use burn::config::Config;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::{CropRect, SpatialOp};
use crate::error::{Error, Result};

/// The crop a training window takes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainCrop {
    /// The centre crop evaluation takes (no random crop).
    Center,
    /// mmaction's `RandomResizedCrop`: a rectangle of a random share `area` of the frame's
    /// area and a random aspect ratio (width / height, log-uniform in `aspect`) at a random
    /// place, scaled to the output size; after 10 draws that do not fit, the centre crop.
    RandomResized {
        /// Range of the crop's share of the frame's area (mmaction: 0.08 to 1).
        area: [f64; 2],
        /// Range of the crop's aspect ratio (mmaction: 3/4 to 4/3).
        aspect: [f64; 2],
    },
}

impl TrainCrop {
    /// mmaction's defaults, which OpenTAD's end-to-end configurations use.
    pub const FIELD: TrainCrop = TrainCrop::RandomResized {
        area: [0.08, 1.0],
        aspect: [3.0 / 4.0, 4.0 / 3.0],
    };
}

/// How frames are brought to the backbone's input.
#[derive(Config, Debug)]
pub struct FrameTransformConfig {
    /// Side of the square frames the backbone reads; `None`: the backbone's input size (the
    /// ViT's `image_size`, 224 for Video Swin, 112 for the 3-D ResNets).
    #[config(default = "None")]
    pub size: Option<usize>,
    /// Crop of the training windows. Default: the centre crop, which leaves the synthetic
    /// benchmark's frames as they are; [`FrameTransformConfig::field`] is what real datasets
    /// train with.
    #[config(default = "TrainCrop::Center")]
    pub train_crop: TrainCrop,
    /// Probability that a training window is mirrored left to right (one draw per window).
    /// Default 0: the synthetic benchmark has classes that differ by direction; the field
    /// uses 0.5.
    #[config(default = 0.0)]
    pub flip: f64,
}

impl FrameTransformConfig {
    /// The field's training transforms (OpenTAD's end-to-end THUMOS / ActivityNet configs):
    /// random resized crop and a flip with probability 0.5.
    pub fn field() -> Self {
        Self::new().with_train_crop(TrainCrop::FIELD).with_flip(0.5)
    }

    /// Errors name the field: a zero or odd-sized output, a flip probability outside [0, 1],
    /// crop ranges that are empty or outside (0, 1] (area) or (0, inf) (aspect).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("transform.{m}")));
        if self.size == Some(0) {
            return bad("size must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.flip) {
            return bad(format!(
                "flip must be a probability in [0, 1], got {}",
                self.flip
            ));
        }
        if let TrainCrop::RandomResized { area, aspect } = self.train_crop {
            let ordered = |r: [f64; 2]| r[0].is_finite() && r[1].is_finite() && r[0] <= r[1];
            if !(ordered(area) && area[0] > 0.0 && area[1] <= 1.0) {
                return bad(format!(
                    "train_crop.area must be a range within (0, 1], got {area:?}"
                ));
            }
            if !(ordered(aspect) && aspect[0] > 0.0) {
                return bad(format!(
                    "train_crop.aspect must be a positive range, got {aspect:?}"
                ));
            }
        }
        Ok(())
    }

    /// Evaluation and inference: the short side resized to the output, the centre kept.
    pub fn eval_op(&self, source: (usize, usize), out: (usize, usize)) -> SpatialOp {
        SpatialOp {
            source,
            crop: center_crop(source, out),
            out,
            flip: false,
        }
    }

    /// A training window's operation, drawn from `rng`: the crop, then the flip.
    pub fn train_op(
        &self,
        source: (usize, usize),
        out: (usize, usize),
        rng: &mut impl Rng,
    ) -> SpatialOp {
        let crop = match self.train_crop {
            TrainCrop::Center => center_crop(source, out),
            TrainCrop::RandomResized { area, aspect } => {
                random_resized(source, area, aspect, rng).unwrap_or(center_crop(source, out))
            }
        };
        let flip = self.flip > 0.0 && rng.random::<f64>() < self.flip;
        SpatialOp {
            source,
            crop,
            out,
            flip,
        }
    }
}

/// The largest rectangle of `out`'s aspect ratio at the centre of `source` (the short side
/// resized to the output, then the centre crop).
fn center_crop((h, w): (usize, usize), (oh, ow): (usize, usize)) -> CropRect {
    // Compare h / w with oh / ow in integers.
    let (ch, cw) = if h * ow <= w * oh {
        (h, ((h * ow) as f64 / oh as f64).round() as usize)
    } else {
        (((w * oh) as f64 / ow as f64).round() as usize, w)
    };
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    CropRect {
        y: (h - ch) / 2,
        x: (w - cw) / 2,
        height: ch,
        width: cw,
    }
}

/// mmaction's random resized crop of a `source` frame: `None` when 10 draws did not fit.
fn random_resized(
    (h, w): (usize, usize),
    area: [f64; 2],
    aspect: [f64; 2],
    rng: &mut impl Rng,
) -> Option<CropRect> {
    let (la, lb) = (aspect[0].ln(), aspect[1].ln());
    for _ in 0..10 {
        let share = area[0] + (area[1] - area[0]) * rng.random::<f64>();
        let ratio = (la + (lb - la) * rng.random::<f64>()).exp();
        let target = share * (h * w) as f64;
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if (1..=w).contains(&cw) && (1..=h).contains(&ch) {
            return Some(CropRect {
                y: rng.random_range(0..=h - ch),
                x: rng.random_range(0..=w - cw),
                height: ch,
                width: cw,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn eval_is_short_side_then_centre_crop() {
        let t = FrameTransformConfig::new();
        let op = t.eval_op((180, 320), (160, 160));
        assert_eq!(
            op.crop,
            CropRect {
                y: 0,
                x: 70,
                height: 180,
                width: 180
            }
        );
        let odd = t.eval_op((181, 321), (64, 64));
        assert_eq!(
            (odd.crop.height, odd.crop.width, odd.crop.x),
            (181, 181, 70)
        );
        assert!(t.eval_op((64, 64), (64, 64)).is_identity());
        // A portrait video keeps its centre rows.
        let p = t.eval_op((640, 360), (224, 224)).crop;
        assert_eq!((p.y, p.height, p.width), (140, 360, 360));
    }

    #[test]
    fn training_crops_fit_vary_and_replay() {
        let t = FrameTransformConfig::field();
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..50)
                .map(|_| t.train_op((181, 321), (160, 160), &mut rng))
                .collect::<Vec<_>>()
        };
        let ops = draw(3);
        assert_eq!(ops, draw(3));
        assert!(ops.iter().all(SpatialOp::is_valid));
        let flips = ops.iter().filter(|o| o.flip).count();
        assert!((10..=40).contains(&flips), "{flips}");
        let areas: Vec<usize> = ops.iter().map(|o| o.crop.height * o.crop.width).collect();
        assert!(areas.iter().min() < Some(&(181 * 321 / 3)), "{areas:?}");
        // The default (synthetic) training transform is the evaluation one.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let d = FrameTransformConfig::new();
        assert!(d.train_op((64, 64), (64, 64), &mut rng).is_identity());
    }

    #[test]
    fn validation_names_the_field() {
        let e = FrameTransformConfig::new().with_flip(1.5).validate();
        assert!(e.unwrap_err().to_string().contains("transform.flip"));
        let e = FrameTransformConfig::new()
            .with_train_crop(TrainCrop::RandomResized {
                area: [0.5, 0.1],
                aspect: [1.0, 1.0],
            })
            .validate();
        assert!(e.unwrap_err().to_string().contains("train_crop.area"));
        assert!(FrameTransformConfig::field().validate().is_ok());
    }
}
