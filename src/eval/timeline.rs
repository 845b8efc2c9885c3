//! PNG timelines: per class, a row of ground-truth segments above a row of detections whose
//! opacity is their score, on a common time axis. For looking at what a model does.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::tal::postprocess::Segment;

/// Pixel sizes of a timeline.
const WIDTH: u32 = 960;
const ROW: u32 = 10;
const GAP: u32 = 6;

/// One labelled interval of ground truth: `([start, end]` seconds, class index).
pub type GtInterval = ([f64; 2], usize);

/// Draw `gt` and `detections` (seconds) of one video lasting `duration` seconds over
/// `num_classes` classes; detections scoring below `min_score` are left out. Classes without
/// either are skipped. Written atomically to `path`.
pub fn write_timeline(
    path: &Path,
    gt: &[GtInterval],
    detections: &[Segment],
    duration: f64,
    num_classes: usize,
    min_score: f64,
) -> Result<()> {
    let used: Vec<usize> = (0..num_classes)
        .filter(|&c| {
            gt.iter().any(|g| g.1 == c)
                || detections
                    .iter()
                    .any(|d| d.label == c && d.score >= min_score)
        })
        .collect();
    let rows = used.len().max(1) as u32;
    let height = rows * (2 * ROW + GAP) + GAP;
    let mut img = RgbImage::from_pixel(WIDTH, height, Rgb([255, 255, 255]));
    let x_of = |t: f64| ((t / duration.max(1e-9)).clamp(0.0, 1.0) * (WIDTH - 1) as f64) as u32;
    let mut fill = |x0: u32, x1: u32, y0: u32, color: [u8; 3], alpha: f64| {
        for x in x0..=x1.max(x0) {
            for y in y0..y0 + ROW {
                let p = img.get_pixel_mut(x, y);
                for (c, &want) in p.0.iter_mut().zip(&color) {
                    *c = (alpha * want as f64 + (1.0 - alpha) * *c as f64) as u8;
                }
            }
        }
    };
    for (r, &c) in used.iter().enumerate() {
        let y = GAP + r as u32 * (2 * ROW + GAP);
        fill(0, WIDTH - 1, y, [235, 235, 235], 1.0);
        fill(0, WIDTH - 1, y + ROW, [245, 245, 245], 1.0);
        for g in gt.iter().filter(|g| g.1 == c) {
            fill(x_of(g.0[0]), x_of(g.0[1]), y, [30, 110, 30], 1.0);
        }
        for d in detections
            .iter()
            .filter(|d| d.label == c && d.score >= min_score)
        {
            fill(
                x_of(d.start),
                x_of(d.end),
                y + ROW,
                [200, 40, 40],
                d.score.min(1.0),
            );
        }
    }
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::Config(format!("cannot encode {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_ground_truth_and_detections_in_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.png");
        let det = Segment {
            start: 5.0,
            end: 10.0,
            score: 1.0,
            label: 1,
        };
        write_timeline(&p, &[([0.0, 5.0], 1)], &[det], 10.0, 3, 0.1).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        // One class used: one pair of rows.
        assert_eq!(img.height(), 2 * ROW + 2 * GAP);
        // Ground truth in the first half of the top row, detection in the second half below.
        assert_eq!(img.get_pixel(100, GAP + 1).0, [30, 110, 30]);
        assert_eq!(img.get_pixel(800, GAP + 1).0, [235, 235, 235]);
        assert_eq!(img.get_pixel(800, GAP + ROW + 1).0, [200, 40, 40]);
        assert_eq!(img.get_pixel(100, GAP + ROW + 1).0, [245, 245, 245]);
    }
}
