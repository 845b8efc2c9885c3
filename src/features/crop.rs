//! ActionFormer's training crop of a feature sequence (`truncate_feats`): a sequence longer
//! than `max_seq_len` is cut to a random window of it (a shorter one, with `crop_ratio`, to a
//! random share of its length), tried up to 200 times until a segment keeps at least
//! `trunc_thresh` of itself inside; the kept segments are clipped to the window (widened by
//! the features' half span, ActionFormer's `offset`) and shifted to its start.

use rand::Rng;

use crate::tal::assign::GtSegment;

/// A crop: rows `start..end` of the sequence and the ground truth inside it, in the crop's
/// grid positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Crop {
    /// First row.
    pub start: usize,
    /// One past the last row.
    pub end: usize,
    /// Ground truth kept, clipped and shifted.
    pub segments: Vec<GtSegment>,
}

/// The training crop of a sequence of `len` rows with ground truth `segments` (grid units).
/// `offset` is half a feature's span in grid units (`0.5 * num_frames / feat_stride`).
pub fn truncate<R: Rng>(
    len: usize,
    segments: &[GtSegment],
    max_seq_len: usize,
    trunc_thresh: f64,
    offset: f64,
    crop_ratio: Option<(f64, f64)>,
    rng: &mut R,
) -> Crop {
    let whole = || Crop {
        start: 0,
        end: len,
        segments: segments.to_vec(),
    };
    let mut window = max_seq_len;
    if len <= max_seq_len {
        let Some((lo, hi)) = crop_ratio else {
            return whole();
        };
        // Python's round: halves to even.
        let lo = ((lo * len as f64).round_ties_even() as usize).max(1);
        let hi = ((hi * len as f64).round_ties_even() as usize).min(len);
        window = if lo <= hi {
            rng.random_range(lo..=hi)
        } else {
            hi
        };
        if window == len {
            return whole();
        }
    }
    let mut kept = Vec::new();
    let mut start = 0;
    for _ in 0..200 {
        start = rng.random_range(0..=len - window);
        let (ws, we) = (start as f64 - offset, (start + window) as f64 + offset);
        kept = segments
            .iter()
            .filter_map(|g| {
                let (l, r) = (ws.max(g.start), we.min(g.end));
                let inter = (r - l).max(0.0);
                let ratio = inter / (g.end - g.start).abs();
                (ratio >= trunc_thresh).then_some(GtSegment {
                    start: l - start as f64,
                    end: r - start as f64,
                    label: g.label,
                })
            })
            .collect();
        if !kept.is_empty() {
            break;
        }
    }
    Crop {
        start,
        end: start + window,
        segments: kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn seg(start: f64, end: f64) -> GtSegment {
        GtSegment {
            start,
            end,
            label: 0,
        }
    }

    #[test]
    fn long_sequences_are_cut_and_segments_clipped() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let gts = [seg(10.0, 30.0), seg(500.0, 520.0), seg(95.0, 140.0)];
        for _ in 0..50 {
            let c = truncate(1000, &gts, 100, 0.5, 2.0, Some((0.9, 1.0)), &mut rng);
            assert_eq!(c.end - c.start, 100);
            assert!(!c.segments.is_empty(), "a crop with an action is found");
            for g in &c.segments {
                assert!(g.start >= -2.0 && g.end <= 102.0, "{g:?} in window {c:?}");
            }
        }
    }

    #[test]
    fn short_sequences_keep_90_to_100_percent() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let gts = [seg(0.0, 200.0)];
        let mut lens = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let c = truncate(200, &gts, 2304, 0.5, 2.0, Some((0.9, 1.0)), &mut rng);
            lens.insert(c.end - c.start);
        }
        assert_eq!(*lens.first().unwrap(), 180);
        assert_eq!(*lens.last().unwrap(), 200);
        let c = truncate(200, &gts, 2304, 0.5, 2.0, None, &mut rng);
        assert_eq!((c.start, c.end, c.segments.len()), (0, 200, 1));
    }

    #[test]
    fn a_segment_mostly_outside_is_dropped() {
        // A window of 10 (widened by 1 each side) holds at most 12 of the 40-long segment.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let long = GtSegment {
            start: 0.0,
            end: 40.0,
            label: 1,
        };
        for _ in 0..50 {
            let c = truncate(100, &[long, seg(50.0, 55.0)], 10, 0.5, 1.0, None, &mut rng);
            assert!(c.segments.iter().all(|g| g.label == 0), "{c:?}");
        }
    }
}
