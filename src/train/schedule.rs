//! Learning-rate schedule: linear warm-up from zero, then cosine decay to zero (ActionFormer's
//! schedule). A pure function of the step, so a resumed run continues on exactly the same curve.

/// Warm-up + cosine schedule over `total` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WarmupCosine {
    /// Peak learning rate.
    pub peak: f64,
    /// Warm-up steps (linear from `peak / warmup` at step 0 to `peak`).
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
}

impl WarmupCosine {
    /// Learning rate of 0-based `step`.
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        0.5 * self.peak * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_cosine() {
        let s = WarmupCosine {
            peak: 1.0,
            warmup: 4,
            total: 14,
        };
        assert_eq!(s.at(0), 0.25);
        assert_eq!(s.at(3), 1.0);
        assert_eq!(s.at(4), 1.0);
        assert!((s.at(9) - 0.5).abs() < 1e-12);
        assert!(s.at(13) < 0.03 && s.at(13) > 0.0);
        let flat = WarmupCosine {
            peak: 2.0,
            warmup: 0,
            total: 1,
        };
        assert_eq!(flat.at(0), 2.0);
    }
}
