//! LoFi-E2E low-fidelity samplers (Hong et al.): lower the temporal and/or spatial resolution
//! of the clips of a video so end-to-end training fits a memory budget.
//!
//! - S-LoFi: frames resized by `1 / r_s` (antialiased: the `image` crate's triangle filter
//!   widens with the downscale factor), same snippets;
//! - T-LoFi: `L / r_t` snippets, i.e. the snippet stride multiplied by `r_t` (uniform
//!   resampling of snippet positions over the whole video);
//! - ST-LoFi: both;
//! - C-LoFi: cycle S -> T -> ST, switching every `c_s` batches (short cycle) or every epoch
//!   (long cycle).
//!
//! Ground truth stays in seconds; the head's grid follows the new snippet stride through
//! [`ClipSamplingConfig::grid`], so points, label assignment and decoding see the lower temporal
//! resolution without any other change.

use burn::config::Config;

use super::clips::ClipSamplingConfig;

/// One fidelity: temporal and spatial reduction factors (1 = full fidelity).
#[derive(Config, Debug, Copy, PartialEq)]
pub struct Fidelity {
    /// Temporal factor `r_t`: snippets per video divided by this (an integer >= 1).
    #[config(default = 1)]
    pub temporal: usize,
    /// Spatial factor `r_s`: frame height and width divided by this (>= 1).
    #[config(default = 1.0)]
    pub spatial: f64,
}

impl Fidelity {
    /// Full fidelity.
    pub fn full() -> Self {
        Self::new()
    }

    /// The paper's S-LoFi: `r_s = 2`.
    pub fn spatial_default() -> Self {
        Self::new().with_spatial(2.0)
    }

    /// The paper's T-LoFi: `r_t = 4`.
    pub fn temporal_default() -> Self {
        Self::new().with_temporal(4)
    }

    /// The paper's ST-LoFi: `r_t = 2`, `r_s = sqrt 2`.
    pub fn spatio_temporal_default() -> Self {
        Self::new()
            .with_temporal(2)
            .with_spatial(std::f64::consts::SQRT_2)
    }

    /// Clip sampling at this fidelity: the snippet stride times `r_t` (with a fixed number of
    /// clips per video, `r_t` times fewer clips). With temporal tokens (clips tiling the
    /// video) the frame stride is multiplied too: each clip then covers `r_t` times the time
    /// with the same frames, and the video has `r_t` times fewer positions.
    pub fn clips(&self, full: &ClipSamplingConfig) -> ClipSamplingConfig {
        let r = self.temporal.max(1);
        let frame_stride = match full.positions_per_clip {
            0 | 1 => full.frame_stride,
            _ => full.frame_stride * r,
        };
        full.clone()
            .with_snippet_stride(full.snippet_stride * r)
            .with_frame_stride(frame_stride)
            .with_fixed_clips(full.fixed_clips.div_ceil(r))
    }

    /// Frame size at this fidelity (rounded, at least 1 pixel).
    pub fn frame_size(&self, height: usize, width: usize) -> (usize, usize) {
        let s = |x: usize| ((x as f64 / self.spatial).round() as usize).max(1);
        (s(height), s(width))
    }

    /// [`Self::frame_size`] snapped to the nearest multiple of `multiple` (a backbone's patch
    /// size: ST-LoFi's r_s = sqrt 2 on 64 pixels gives 45 -> 48), within `multiple..=full`.
    pub fn frame_size_snapped(
        &self,
        height: usize,
        width: usize,
        multiple: usize,
    ) -> (usize, usize) {
        let (h, w) = self.frame_size(height, width);
        let m = multiple.max(1);
        let snap = |x: usize, full: usize| (((x + m / 2) / m) * m).clamp(m.min(full), full);
        (snap(h, height), snap(w, width))
    }

    /// Pixels the clips of a video of `frames` frames of `height x width` hold at this
    /// fidelity (the quantity that sets activation memory).
    pub fn pixels(
        &self,
        full: &ClipSamplingConfig,
        frames: usize,
        height: usize,
        width: usize,
    ) -> usize {
        self.pixels_snapped(full, frames, height, width, 1)
    }

    /// [`Self::pixels`] with frame sizes snapped as [`Self::frame_size_snapped`] (what the
    /// trainer feeds a backbone of that patch size).
    pub fn pixels_snapped(
        &self,
        full: &ClipSamplingConfig,
        frames: usize,
        height: usize,
        width: usize,
        multiple: usize,
    ) -> usize {
        let cfg = self.clips(full);
        let span = cfg.span();
        let clips = if frames < span {
            0
        } else {
            (frames - span).div_ceil(cfg.snippet_stride) + 1
        };
        let (h, w) = self.frame_size_snapped(height, width, multiple);
        clips * cfg.clip_frames * h * w
    }
}

/// A low-fidelity sampler.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum LoFiMode {
    /// Always full fidelity (ordinary end-to-end training).
    Full,
    /// S-LoFi.
    Spatial,
    /// T-LoFi.
    Temporal,
    /// ST-LoFi.
    SpatioTemporal,
    /// C-LoFi, switching S -> T -> ST every `batches` batches.
    ShortCycle {
        /// Batches per phase (`c_s`, paper: 16).
        batches: usize,
    },
    /// C-LoFi, switching S -> T -> ST every epoch.
    LongCycle,
    /// One fidelity for every batch, e.g. the one budget mode chose
    /// ([`crate::train::choose_fidelity`]).
    Fixed {
        /// Its factors.
        fidelity: Fidelity,
    },
}

impl LoFiMode {
    /// The sampler called `name` (a [`LoFiSampler`] name, case-insensitive), as the CLI's
    /// `--lofi` takes it.
    pub fn from_name(name: &str) -> crate::error::Result<Self> {
        crate::choice::parse::<LoFiSampler>("LoFi sampler", name).map(LoFiSampler::mode)
    }
}

/// The samplers by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoFiSampler {
    /// Full fidelity.
    Full,
    /// S-LoFi: frames at 1/r_s the side (r_s 2).
    S,
    /// T-LoFi: snippets r_t times sparser (r_t 4).
    T,
    /// ST-LoFi: both (r_t 2, r_s sqrt 2).
    St,
    /// Short cycle S -> T -> ST every 16 steps (the paper's c_s = 16 batches).
    Short,
    /// Long cycle: one fidelity per epoch.
    Long,
}

impl LoFiSampler {
    /// The sampling mode this name stands for.
    pub fn mode(self) -> LoFiMode {
        match self {
            Self::Full => LoFiMode::Full,
            Self::S => LoFiMode::Spatial,
            Self::T => LoFiMode::Temporal,
            Self::St => LoFiMode::SpatioTemporal,
            Self::Short => LoFiMode::ShortCycle { batches: 16 },
            Self::Long => LoFiMode::LongCycle,
        }
    }
}

/// Samplers with their factors (defaults: the paper's).
#[derive(Config, Debug)]
pub struct LoFiConfig {
    /// Which sampler.
    #[config(default = "LoFiMode::Full")]
    pub mode: LoFiMode,
    /// S-LoFi fidelity.
    #[config(default = "Fidelity::spatial_default()")]
    pub spatial: Fidelity,
    /// T-LoFi fidelity.
    #[config(default = "Fidelity::temporal_default()")]
    pub temporal: Fidelity,
    /// ST-LoFi fidelity.
    #[config(default = "Fidelity::spatio_temporal_default()")]
    pub spatio_temporal: Fidelity,
}

impl LoFiConfig {
    /// The fidelity of batch `batch` (counted from 0 within `epoch`, epochs from 0).
    pub fn fidelity(&self, epoch: usize, batch: usize) -> Fidelity {
        let cycle = [self.spatial, self.temporal, self.spatio_temporal];
        match self.mode {
            LoFiMode::Full => Fidelity::full(),
            LoFiMode::Spatial => self.spatial,
            LoFiMode::Temporal => self.temporal,
            LoFiMode::SpatioTemporal => self.spatio_temporal,
            LoFiMode::ShortCycle { batches } => cycle[(batch / batches.max(1)) % 3],
            LoFiMode::LongCycle => cycle[epoch % 3],
            LoFiMode::Fixed { fidelity } => fidelity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapped_sizes_are_patch_multiples_within_the_frame() {
        let st = Fidelity::spatio_temporal_default();
        assert_eq!(st.frame_size(64, 64), (45, 45));
        assert_eq!(st.frame_size_snapped(64, 64, 16), (48, 48));
        assert_eq!(
            Fidelity::spatial_default().frame_size_snapped(64, 40, 16),
            (32, 16)
        );
        // Never below one patch, never above the full frame.
        let tiny = Fidelity::new().with_spatial(8.0);
        assert_eq!(tiny.frame_size_snapped(64, 64, 16), (16, 16));
        assert_eq!(Fidelity::full().frame_size_snapped(64, 48, 16), (64, 48));
        let clips = ClipSamplingConfig::new();
        let frames = clips.span() + 9 * clips.snippet_stride;
        assert_eq!(
            st.pixels_snapped(&clips, frames, 64, 64, 16),
            st.pixels(&clips, frames, 64, 64) / (45 * 45) * (48 * 48)
        );
    }

    #[test]
    fn short_and_long_cycles_are_exact() {
        let s = Fidelity::spatial_default();
        let t = Fidelity::temporal_default();
        let st = Fidelity::spatio_temporal_default();
        let short = LoFiConfig::new().with_mode(LoFiMode::ShortCycle { batches: 16 });
        let seq: Vec<Fidelity> = (0..96).map(|b| short.fidelity(0, b)).collect();
        for (b, f) in seq.iter().enumerate() {
            let want = [s, t, st][(b / 16) % 3];
            assert_eq!(*f, want, "batch {b}");
        }
        // Batches 15 -> 16 switch S -> T, 31 -> 32 T -> ST, 47 -> 48 back to S.
        assert_eq!((seq[15], seq[16], seq[32], seq[48]), (s, t, st, s));
        let long = LoFiConfig::new().with_mode(LoFiMode::LongCycle);
        for epoch in 0..7 {
            for batch in [0, 5, 1000] {
                assert_eq!(long.fidelity(epoch, batch), [s, t, st][epoch % 3]);
            }
        }
        assert_eq!(LoFiConfig::new().fidelity(3, 3), Fidelity::full());
    }

    #[test]
    fn pixels_per_video_stay_within_ten_percent_across_the_cycle() {
        // 100 snippets of 16 frames (stride 4) at 224x224, the paper's full fidelity.
        let full = ClipSamplingConfig::new();
        let frames = 99 * 4 + 16;
        let cfg = LoFiConfig::new();
        let px: Vec<f64> = [cfg.spatial, cfg.temporal, cfg.spatio_temporal]
            .iter()
            .map(|f| f.pixels(&full, frames, 224, 224) as f64)
            .collect();
        let (lo, hi) = px
            .iter()
            .fold((f64::MAX, 0f64), |(a, b), &p| (a.min(p), b.max(p)));
        assert!(hi / lo <= 1.10, "pixels across S/T/ST: {px:?}");
        // Each is about a quarter of full fidelity.
        let full_px = Fidelity::full().pixels(&full, frames, 224, 224) as f64;
        assert_eq!(full_px, 100.0 * 16.0 * 224.0 * 224.0);
        for p in px {
            assert!((p / full_px - 0.25).abs() < 0.02, "{}", p / full_px);
        }
    }

    #[test]
    fn temporal_fidelity_moves_the_grid_with_the_snippets() {
        let full = ClipSamplingConfig::new(); // stride 4, 16 frames
        let t = Fidelity::temporal_default().clips(&full);
        assert_eq!(t.snippet_stride, 16);
        // 100 snippets at full fidelity; L / r_t = 25, plus the clip that covers the end.
        assert_eq!(full.num_clips("v", 412).unwrap(), 100);
        assert_eq!(t.num_clips("v", 412).unwrap(), 26);
        // Grid position 2 at T-LoFi is frame 32 + 8 = 40 -> 4 s at 10 fps; at full fidelity
        // the same instant is position 8.
        assert_eq!(t.grid(10.0).seconds(2.0), 4.0);
        assert_eq!(full.grid(10.0).seconds(8.0), 4.0);
        // A segment of 4 s to 8 s spans grid 2..6 at T-LoFi (ground truth stays in seconds).
        let g = t.grid(10.0);
        let to_grid = |sec: f64| (sec * 10.0 - 8.0) / 16.0;
        assert_eq!(
            (g.seconds(to_grid(4.0)), g.seconds(to_grid(8.0))),
            (4.0, 8.0)
        );
        assert_eq!(Fidelity::spatial_default().frame_size(224, 224), (112, 112));
        assert_eq!(
            Fidelity::spatio_temporal_default().frame_size(224, 224),
            (158, 158)
        );
    }
}
