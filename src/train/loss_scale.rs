//! Dynamic loss scaling for f16 training (the policy of PyTorch's `GradScaler`): the loss is
//! multiplied by a scale before the backward pass so small gradients survive f16's narrow
//! range, the gradients are divided by it before clipping, and a step whose gradients are not
//! finite is skipped with the scale halved; after `growth_interval` finite steps in a row the
//! scale doubles. The state is part of the checkpoint, so a resumed run scales as the
//! uninterrupted one would. bf16 has f32's exponent range and needs none.

use burn::config::Config;
use serde::{Deserialize, Serialize};

/// Loss-scaling settings (used when `precision` is f16).
#[derive(Config, Debug, PartialEq)]
pub struct LossScaleConfig {
    /// Scale of the first step.
    #[config(default = 65536.0)]
    pub init: f64,
    /// Finite steps in a row after which the scale doubles.
    #[config(default = 2000)]
    pub growth_interval: usize,
}

/// The scaler's state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// Current scale.
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub clean_steps: usize,
    /// Steps skipped so far (non-finite gradients).
    pub skipped: usize,
}

impl LossScale {
    /// A scaler at `cfg.init`.
    pub fn new(cfg: &LossScaleConfig) -> Self {
        Self {
            scale: cfg.init,
            clean_steps: 0,
            skipped: 0,
        }
    }

    /// Record a step whose unscaled gradients were `finite` or not; returns whether the step
    /// applies (false: skip it).
    pub fn update(&mut self, finite: bool, cfg: &LossScaleConfig) -> bool {
        if !finite {
            self.scale /= 2.0;
            self.clean_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.clean_steps += 1;
        if self.clean_steps >= cfg.growth_interval {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_and_grows_after_clean_steps() {
        let cfg = LossScaleConfig::new()
            .with_init(8.0)
            .with_growth_interval(3);
        let mut s = LossScale::new(&cfg);
        assert!(!s.update(false, &cfg));
        assert_eq!((s.scale, s.skipped), (4.0, 1));
        assert!(s.update(true, &cfg) && s.update(true, &cfg));
        assert_eq!(s.scale, 4.0);
        assert!(s.update(true, &cfg));
        assert_eq!((s.scale, s.clean_steps), (8.0, 0));
    }
}
