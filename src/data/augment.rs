//! Clip augmentations that keep an action's class: random RGB channel permutation and random
//! spatial roll. Drawn once per video step in TAL training (every clip of the step gets the
//! same transform, so motion stays continuous) or once per clip in clip classification.

use burn::config::Config;
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;
use rand::seq::SliceRandom;

/// Which augmentations to apply. The default applies none.
#[derive(Config, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Permute the RGB channels at random. Right where colour carries no class information
    /// (the synthetic benchmark); wrong for most real video.
    #[config(default = false)]
    pub permute_channels: bool,
    /// Roll the frames by up to this many pixels in x and y, wrapping around (the synthetic
    /// benchmark's objects wrap around the frame edges too); 0 for none.
    #[config(default = 0)]
    pub max_shift: usize,
}

impl AugmentConfig {
    /// The augmentations that suit the synthetic benchmark: channel permutation, roll by up
    /// to 16 pixels.
    pub fn synthetic() -> Self {
        Self::new().with_permute_channels(true).with_max_shift(16)
    }

    /// Whether anything is applied.
    pub fn is_identity(&self) -> bool {
        !self.permute_channels && self.max_shift == 0
    }

    /// One transform drawn from `rng`, applied to every clip of `x`.
    ///
    /// # Shapes
    /// - x: `[N, 3, F, H, W]` -> same
    pub fn apply<R: Rng>(&self, mut x: Tensor<5>, rng: &mut R) -> Tensor<5> {
        if self.permute_channels {
            let mut perm = [0i64, 1, 2];
            perm.shuffle(rng);
            let idx = Tensor::<1, Int>::from_data(TensorData::new(perm.to_vec(), [3]), &x.device());
            x = x.select(1, idx);
        }
        if self.max_shift > 0 {
            let m = self.max_shift as i64;
            let (dy, dx) = (rng.random_range(-m..=m), rng.random_range(-m..=m));
            x = x.roll(&[dy, dx], &[3, 4]);
        }
        x
    }

    /// An independent transform per clip.
    ///
    /// # Shapes
    /// - x: `[N, 3, F, H, W]` -> same
    pub fn apply_per_clip<R: Rng>(&self, x: Tensor<5>, rng: &mut R) -> Tensor<5> {
        if self.is_identity() {
            return x;
        }
        let clips: Vec<Tensor<5>> = x
            .split(1, 0)
            .into_iter()
            .map(|c| self.apply(c, rng))
            .collect();
        Tensor::cat(clips, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn permutes_channels_and_rolls_with_wrap_around() {
        let device = crate::backend::cpu_device();
        // [1, 3, 1, 2, 3]: channel c, pixel (y, x) holds 100c + 10y + x.
        let v: Vec<f32> = (0..3)
            .flat_map(|c| {
                (0..2).flat_map(move |y| (0..3).map(move |x| (100 * c + 10 * y + x) as f32))
            })
            .collect();
        let x = Tensor::<5>::from_data(TensorData::new(v.clone(), [1, 3, 1, 2, 3]), &device);
        let aug = AugmentConfig::new()
            .with_permute_channels(true)
            .with_max_shift(2);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let out: Vec<f32> = aug
            .apply(x.clone(), &mut rng)
            .into_data()
            .try_to_vec()
            .unwrap();
        // Every output channel is one input channel, rolled: the same multiset of (y, x)
        // digits per channel, and each input channel used once.
        let mut used = Vec::new();
        for c in 0..3 {
            let ch = &out[c * 6..(c + 1) * 6];
            let src = (ch[0] / 100.0).floor() as usize;
            used.push(src);
            let mut got: Vec<i32> = ch.iter().map(|&p| p as i32 - 100 * src as i32).collect();
            got.sort();
            assert_eq!(got, vec![0, 1, 2, 10, 11, 12]);
            // Rows and columns move together (a roll, not a shuffle).
            // Pixel (0, 0) came from row dy, column dx.
            let x0 = ch[0] as i32 % 100;
            let (dy, dx) = ((x0 / 10) as usize, (x0 % 10) as usize);
            for y in 0..2 {
                for xx in 0..3 {
                    let want =
                        100 * src as i32 + 10 * ((y + dy) % 2) as i32 + ((xx + dx) % 3) as i32;
                    assert_eq!(ch[y * 3 + xx] as i32, want);
                }
            }
        }
        used.sort();
        assert_eq!(used, vec![0, 1, 2]);
        // The identity configuration changes nothing.
        let same: Vec<f32> = AugmentConfig::new()
            .apply_per_clip(x, &mut rng)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(same, v);
    }
}
