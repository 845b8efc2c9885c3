//! Which clips a training step reads, and the ground truth inside them: a random window of at
//! most `max_clips` consecutive clips (ActionFormer's `max_seq_len` crop, OpenTAD's
//! `random_trunc`), with the segments clipped to it and those mostly outside dropped
//! (ActionFormer's `trunc_thresh`).

use rand::Rng;

use crate::tal::assign::GtSegment;

/// `count` consecutive clips of a video from clip `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipWindow {
    /// First clip.
    pub start: usize,
    /// Number of clips.
    pub count: usize,
}

impl ClipWindow {
    /// The window of a step over a video of `clips` clips: all of them when `max_clips` is 0
    /// or the video is no longer; else `max_clips` clips at a position drawn from `rng`
    /// (nothing is drawn otherwise).
    pub fn choose(clips: usize, max_clips: usize, rng: &mut impl Rng) -> Self {
        if max_clips == 0 || clips <= max_clips {
            ClipWindow {
                start: 0,
                count: clips,
            }
        } else {
            ClipWindow {
                start: rng.random_range(0..=clips - max_clips),
                count: max_clips,
            }
        }
    }

    /// `segments` (on the video's feature grid) on the window's grid: shifted to its first
    /// clip; when the window is shorter than the video's `clips`, clipped to the span its
    /// clips own (half a grid step beyond the first and last centres), and dropped unless at
    /// least `keep` of their length lies inside.
    pub fn segments(&self, segments: &[GtSegment], clips: usize, keep: f64) -> Vec<GtSegment> {
        let shift = self.start as f64;
        let whole = self.start == 0 && self.count >= clips;
        let (lo, hi) = (-0.5, self.count as f64 - 0.5);
        segments
            .iter()
            .filter_map(|g| {
                let (s, e) = (g.start - shift, g.end - shift);
                if whole {
                    return Some(GtSegment {
                        start: s,
                        end: e,
                        ..*g
                    });
                }
                let (cs, ce) = (s.max(lo), e.min(hi));
                let len = e - s;
                let inside = (ce - cs).max(0.0);
                let kept = if len > 0.0 {
                    inside >= keep * len
                } else {
                    (lo..=hi).contains(&s)
                };
                (kept && ce >= cs).then_some(GtSegment {
                    start: cs,
                    end: ce,
                    ..*g
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn seg(start: f64, end: f64) -> GtSegment {
        GtSegment {
            start,
            end,
            label: 1,
        }
    }

    #[test]
    fn windows_fit_the_video() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            ClipWindow::choose(10, 0, &mut rng),
            ClipWindow {
                start: 0,
                count: 10
            }
        );
        assert_eq!(
            ClipWindow::choose(10, 12, &mut rng),
            ClipWindow {
                start: 0,
                count: 10
            }
        );
        for _ in 0..100 {
            let w = ClipWindow::choose(100, 48, &mut rng);
            assert!(w.count == 48 && w.start + w.count <= 100);
        }
    }

    #[test]
    fn segments_are_clipped_and_mostly_outside_ones_dropped() {
        let w = ClipWindow {
            start: 10,
            count: 20,
        };
        let gts = [
            seg(12.0, 20.0), // inside: shifted
            seg(5.0, 14.0),  // 4.5 of 9 inside: kept at 0.5, clipped
            seg(0.0, 11.0),  // 1.5 of 11 inside: dropped
            seg(28.0, 40.0), // 1.5 of 12 inside: dropped
            seg(50.0, 60.0), // outside
        ];
        let got = w.segments(&gts, 100, 0.5);
        assert_eq!(got, vec![seg(2.0, 10.0), seg(-0.5, 4.0)]);
        // The whole video: shifted only, nothing clipped (segments may reach past the grid).
        let all = ClipWindow {
            start: 0,
            count: 30,
        };
        assert_eq!(
            all.segments(&[seg(-1.0, 31.0)], 30, 0.5),
            vec![seg(-1.0, 31.0)]
        );
    }
}
