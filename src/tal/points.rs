//! Anchor points of the feature pyramid (ActionFormer's `PointGenerator`).

use burn::config::Config;

/// One point of the pyramid: a position on the base feature grid, the range of regression
/// distances it is responsible for, and its level's stride.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Position in base-grid units (`t * stride`).
    pub t: f64,
    /// Smallest regression distance (base-grid units) this level handles, inclusive.
    pub range_lo: f64,
    /// Largest regression distance, inclusive.
    pub range_hi: f64,
    /// The level's stride.
    pub stride: f64,
    /// Pyramid level.
    pub level: usize,
}

/// Pyramid layout (defaults: ActionFormer, 6 levels).
#[derive(Config, Debug)]
pub struct PyramidConfig {
    /// Stride of each level on the base grid.
    #[config(default = "vec![1, 2, 4, 8, 16, 32]")]
    pub strides: Vec<usize>,
    /// Regression range `[lo, hi]` of each level, in base-grid units (the last is open).
    #[config(
        default = "vec![(0.0, 4.0), (4.0, 8.0), (8.0, 16.0), (16.0, 32.0), (32.0, 64.0), (64.0, 10000.0)]"
    )]
    pub regression_ranges: Vec<(f64, f64)>,
}

impl PyramidConfig {
    /// The layout's first problem as `(field, reason)`: strides other than 1, 2, 4, ... (1 to
    /// 16 levels), not one regression range per level, or a range without `0 <= lo < hi`.
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        let doubling = self.strides.iter().enumerate().all(|(i, &s)| s == 1 << i);
        if self.strides.is_empty() || self.strides.len() > 16 || !doubling {
            return Err((
                "strides",
                format!(
                    "must be 1, 2, 4, ... (1 to 16 levels), got {:?}",
                    self.strides
                ),
            ));
        }
        if self.regression_ranges.len() != self.strides.len() {
            return Err((
                "regression_ranges",
                format!(
                    "needs one range per level ({}), got {}",
                    self.strides.len(),
                    self.regression_ranges.len()
                ),
            ));
        }
        match self
            .regression_ranges
            .iter()
            .find(|&&(lo, hi)| !(lo >= 0.0 && hi > lo && !hi.is_nan()))
        {
            Some((lo, hi)) => Err((
                "regression_ranges",
                format!("each range needs 0 <= lo < hi, got ({lo}, {hi})"),
            )),
            None => Ok(()),
        }
    }

    /// Number of positions of each level for a base sequence of `len` positions.
    pub fn level_lengths(&self, len: usize) -> Vec<usize> {
        self.strides.iter().map(|s| len.div_ceil(*s)).collect()
    }

    /// All points for a base sequence of `len` positions, level by level.
    pub fn points(&self, len: usize) -> Vec<Point> {
        assert_eq!(
            self.strides.len(),
            self.regression_ranges.len(),
            "one regression range per level"
        );
        self.strides
            .iter()
            .zip(&self.regression_ranges)
            .enumerate()
            .flat_map(|(level, (&s, &(lo, hi)))| {
                (0..len.div_ceil(s)).map(move |i| Point {
                    t: (i * s) as f64,
                    range_lo: lo,
                    range_hi: hi,
                    stride: s as f64,
                    level,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_per_level() {
        let p = PyramidConfig::new().points(10);
        // 10 + 5 + 3 + 2 + 1 + 1 points.
        assert_eq!(p.len(), 22);
        assert_eq!(
            PyramidConfig::new().level_lengths(10),
            vec![10, 5, 3, 2, 1, 1]
        );
        assert_eq!((p[10].t, p[10].stride, p[10].level), (0.0, 2.0, 1));
        assert_eq!((p[11].t, p[11].range_lo, p[11].range_hi), (2.0, 4.0, 8.0));
        assert_eq!(p[21].t, 0.0);
    }
}
