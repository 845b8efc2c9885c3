//! Clip (snippet) sampling: cut a video's frames into overlapping clips for the backbone.

use burn::config::Config;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use rayon::prelude::*;

use super::frames::Frames;
use crate::error::{Error, Result};
use crate::tal::postprocess::GridToTime;

/// How clips are cut from a video.
#[derive(Config, Debug)]
pub struct ClipSamplingConfig {
    /// Frames per clip (`F`).
    #[config(default = 16)]
    pub clip_frames: usize,
    /// Step between the frames of one clip.
    #[config(default = 1)]
    pub frame_stride: usize,
    /// Step, in frames, between the starts of consecutive clips (the feature grid's stride).
    #[config(default = 4)]
    pub snippet_stride: usize,
    /// 0: a clip every `snippet_stride` frames, so a video has as many clips as its length
    /// gives (THUMOS practice). N > 0: every video is N clips spread evenly over its whole
    /// length, first frame to last (ActivityNet practice, OpenTAD's `resize`: a fixed-length
    /// feature sequence whatever the video's duration).
    #[config(default = 0)]
    pub fixed_clips: usize,
    /// Feature positions per clip. 1: one feature per clip, pooled over time and space. P > 1:
    /// the backbone's temporal tokens (`FeatureLayout::Temporal`, AdaTAD's layout), P
    /// positions of `clip_frames * frame_stride / P` frames each; the clips then tile the
    /// video (`snippet_stride = clip_frames * frame_stride`, `fixed_clips` 0) so the positions
    /// form one even grid. P must be the backbone's temporal positions for `clip_frames`
    /// (`Backbone::temporal_positions`; `--temporal-tokens` sets it).
    #[config(default = 1)]
    pub positions_per_clip: usize,
    /// Per-channel mean subtracted from pixels scaled to [0, 1] (ImageNet / VideoMAE).
    #[config(default = "[0.485, 0.456, 0.406]")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation pixels are divided by.
    #[config(default = "[0.229, 0.224, 0.225]")]
    pub std: [f32; 3],
}

impl ClipSamplingConfig {
    /// Frames one clip spans: `(clip_frames - 1) * frame_stride + 1`.
    pub fn span(&self) -> usize {
        (self.clip_frames.max(1) - 1) * self.frame_stride + 1
    }

    /// Check the settings agree with each other (positive sizes; temporal tokens on clips
    /// that tile the video).
    pub fn validate(&self) -> Result<()> {
        if self.clip_frames == 0 || self.frame_stride == 0 || self.snippet_stride == 0 {
            return Err(Error::Config(format!(
                "clip_frames, frame_stride and snippet_stride must be positive, got {}, {}, {}",
                self.clip_frames, self.frame_stride, self.snippet_stride
            )));
        }
        let p = self.positions_per_clip;
        let tile = self.clip_frames * self.frame_stride;
        if p == 0 {
            return Err(Error::Config(
                "positions_per_clip must be at least 1 (1: one feature per clip)".into(),
            ));
        }
        if p > 1
            && (self.fixed_clips != 0 || self.snippet_stride != tile || !tile.is_multiple_of(p))
        {
            return Err(Error::Config(format!(
                "temporal tokens ({p} positions per clip) need clips that tile the video: \
                 snippet_stride = clip_frames x frame_stride = {tile} (got {}), no \
                 fixed_clips (got {}), and {tile} frames divisible by {p}",
                self.snippet_stride, self.fixed_clips
            )));
        }
        if self.fixed_clips == 1 {
            return Err(Error::Config(
                "fixed_clips must be 0 (a clip every snippet_stride frames) or at least 2 \
                 (--clips-per-video)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Number of clips covering a video of `frames` frames: clips start every `snippet_stride`
    /// frames and the last one may run past the end (its missing frames repeat the last frame),
    /// so that the whole video is covered.
    pub fn num_clips(&self, video: &str, frames: usize) -> Result<usize> {
        self.validate()?;
        let span = self.span();
        if frames < span {
            return Err(Error::VideoTooShort {
                video: video.to_owned(),
                frames,
                clip_span: span,
            });
        }
        Ok(match self.fixed_clips {
            0 => (frames - span).div_ceil(self.snippet_stride) + 1,
            n => n,
        })
    }

    /// Frames between the starts of consecutive clips of a video of `frames` frames:
    /// `snippet_stride`, or with `fixed_clips` the spacing that puts the last clip's last
    /// frame on the video's last frame (fractional; 0 for a single clip).
    pub fn stride_in(&self, frames: usize) -> f64 {
        match self.fixed_clips {
            0 => self.snippet_stride as f64,
            1 => 0.0,
            n => frames.saturating_sub(self.span()) as f64 / (n - 1) as f64,
        }
    }

    /// First frame of clip `k` in a video of `frames` frames.
    pub fn clip_start(&self, k: usize, frames: usize) -> usize {
        match self.fixed_clips {
            0 => k * self.snippet_stride,
            _ => (k as f64 * self.stride_in(frames)).round() as usize,
        }
    }

    /// Frame indices of clip `k` in a video of `frames` frames.
    pub fn clip_frame_indices(&self, k: usize, frames: usize) -> impl Iterator<Item = usize> + '_ {
        let start = self.clip_start(k, frames);
        (0..self.clip_frames).map(move |j| (start + j * self.frame_stride).min(frames - 1))
    }

    /// The frames clips `start..start + count` of a video of `frames` frames read, ascending,
    /// each once (a clip's frames every `frame_stride`, so not every frame of the span).
    pub fn frames_of(&self, start: usize, count: usize, frames: usize) -> Vec<usize> {
        let mut out: Vec<usize> = (start..start + count)
            .flat_map(|k| self.clip_frame_indices(k, frames))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Mapping from feature-grid position (a clip, or with temporal tokens a clip's temporal
    /// position) to seconds, for a stride grid (`fixed_clips` 0);
    /// [`ClipSamplingConfig::grid_of`] for any grid.
    pub fn grid(&self, fps: f64) -> GridToTime {
        match self.positions_per_clip {
            0 | 1 => GridToTime {
                stride_frames: self.snippet_stride as f64,
                span_frames: self.span() as f64,
                fps,
            },
            p => {
                let step = self.snippet_stride as f64 / p as f64;
                GridToTime {
                    stride_frames: step,
                    span_frames: step,
                    fps,
                }
            }
        }
    }

    /// Mapping from feature-grid position to seconds in a video of `frames` frames.
    pub fn grid_of(&self, fps: f64, frames: usize) -> GridToTime {
        match self.positions_per_clip {
            0 | 1 => GridToTime {
                stride_frames: self.stride_in(frames),
                ..self.grid(fps)
            },
            _ => self.grid(fps),
        }
    }

    /// Feature positions of a video of `clips` clips (`clips x positions_per_clip`).
    pub fn positions(&self, clips: usize) -> usize {
        clips * self.positions_per_clip.max(1)
    }
}

/// The clips of one video, ready for a backbone.
#[derive(Debug, Clone)]
pub struct ClipBatch {
    /// Video identifier.
    pub video: String,
    /// Normalised pixels, `[T, C, F, H, W]` (`T` includes padding clips).
    pub clips: Tensor<5>,
    /// `[T]`, true for real clips, false for padding.
    pub mask: Tensor<1, Bool>,
    /// Number of real clips (the first `num_valid` of `T`).
    pub num_valid: usize,
    /// Clip index to seconds.
    pub grid: GridToTime,
}

/// Cut `frames` into clips. With `pad_to = Some(t)` the batch is padded with zero clips to `t`
/// clips (an error if the video needs more).
///
/// # Shapes
/// - output `clips`: `[T, 3, clip_frames, H, W]`, `mask`: `[T]`
pub fn sample_clips(
    frames: &Frames,
    fps: f64,
    cfg: &ClipSamplingConfig,
    pad_to: Option<usize>,
    device: &Device,
) -> Result<ClipBatch> {
    let n = cfg.num_clips(&frames.video, frames.len)?;
    let t = pad_to.unwrap_or(n);
    if t < n {
        return Err(Error::Config(format!(
            "video `{}` has {n} clips, more than the padded length {t}",
            frames.video
        )));
    }
    let (h, w, f) = (frames.height, frames.width, cfg.clip_frames);
    let plane = h * w;
    // Normalise every frame once, channel-planar: [N, C, H*W].
    let tables = channel_tables(cfg);
    let mut norm = vec![0f32; frames.len * 3 * plane];
    for i in 0..frames.len {
        let src = frames.frame(i);
        for c in 0..3 {
            let dst = &mut norm[(i * 3 + c) * plane..(i * 3 + c + 1) * plane];
            for (d, v) in dst.iter_mut().zip(normalised(src, c, &tables[c])) {
                *d = v;
            }
        }
    }
    let mut data = vec![0f32; t * 3 * f * plane];
    for k in 0..n {
        for (j, fi) in cfg.clip_frame_indices(k, frames.len).enumerate() {
            for c in 0..3 {
                let dst = ((k * 3 + c) * f + j) * plane;
                let src = (fi * 3 + c) * plane;
                data[dst..dst + plane].copy_from_slice(&norm[src..src + plane]);
            }
        }
    }
    let mask: Vec<bool> = (0..t).map(|i| i < n).collect();
    Ok(ClipBatch {
        video: frames.video.clone(),
        clips: Tensor::from_data(TensorData::new(data, [t, 3, f, h, w]), device),
        mask: Tensor::from_data(TensorData::new(mask, [t]), device),
        num_valid: n,
        grid: cfg.grid(fps),
    })
}

/// Clips `start..start + count` of a video (no padding), normalising only the frames they use:
/// what training crops and chunked feature extraction need on long videos.
///
/// # Shapes
/// - output: `[count, 3, clip_frames, H, W]`
pub fn clip_range(
    frames: &Frames,
    cfg: &ClipSamplingConfig,
    start: usize,
    count: usize,
    device: &Device,
) -> Result<Tensor<5>> {
    let n = cfg.num_clips(&frames.video, frames.len)?;
    if count == 0 || start + count > n {
        return Err(Error::Config(format!(
            "video `{}` has {n} clips; clips {start}..{} requested",
            frames.video,
            start + count
        )));
    }
    let read = ClipFrames::of(frames, cfg, start, count);
    clips_from(&read, cfg, start, count, device)
}

/// The frames a run of clips reads from its video (of `total` frames), decoded and
/// transformed: only those the clips use, so memory is that of the clips' frames whatever the
/// grid's spacing.
#[derive(Debug, Clone)]
pub struct ClipFrames {
    /// The decoded frames, in the order of `indices`.
    pub frames: Frames,
    /// Index in the video of each decoded frame, ascending.
    pub indices: Vec<usize>,
    /// Frames of the whole video.
    pub total: usize,
}

impl ClipFrames {
    /// Read the frames clips `start..start + count` of `source` need, through `op`.
    pub fn read(
        source: &dyn super::source::FrameSource,
        cfg: &ClipSamplingConfig,
        start: usize,
        count: usize,
        op: &super::spatial::SpatialOp,
    ) -> Result<Self> {
        let total = source.len();
        let n = cfg.num_clips(source.video(), total)?;
        if count == 0 || start + count > n {
            return Err(Error::Config(format!(
                "video `{}` has {n} clips; clips {start}..{} requested",
                source.video(),
                start + count
            )));
        }
        let indices = cfg.frames_of(start, count, total);
        Ok(ClipFrames {
            frames: source.read_indices(&indices, op)?,
            indices,
            total,
        })
    }

    /// The frames of clips `start..start + count` of `frames` (all of a video, in memory).
    pub fn of(frames: &Frames, cfg: &ClipSamplingConfig, start: usize, count: usize) -> Self {
        let indices = cfg.frames_of(start, count, frames.len);
        let rgb = indices
            .iter()
            .flat_map(|&i| frames.frame(i).iter().copied())
            .collect::<Vec<u8>>();
        ClipFrames {
            frames: Frames {
                video: frames.video.clone(),
                len: indices.len(),
                height: frames.height,
                width: frames.width,
                rgb,
            },
            indices,
            total: frames.len,
        }
    }

    /// Clips `start..start + count` (of the whole video) from these frames, normalised.
    ///
    /// # Shapes
    /// - output: `[count, 3, clip_frames, H, W]`
    pub fn clips(
        &self,
        cfg: &ClipSamplingConfig,
        start: usize,
        count: usize,
        device: &Device,
    ) -> Result<Tensor<5>> {
        clips_from(self, cfg, start, count, device)
    }
}

/// Each channel's 256 normalised values, `(u / 255 - mean) / std`, computed once: a frame's
/// plane is then a table lookup per pixel instead of two divisions (the same values, bit for
/// bit; the divisions were most of the time it took to build a step's clips).
fn channel_tables(cfg: &ClipSamplingConfig) -> [[f32; 256]; 3] {
    std::array::from_fn(|c| {
        let (m, s) = (cfg.mean[c], cfg.std[c]);
        std::array::from_fn(|u| (u as f32 / 255.0 - m) / s)
    })
}

/// Channel `c` of an interleaved RGB frame, normalised through its `table`, pixel by pixel.
fn normalised<'a>(
    rgb: &'a [u8],
    c: usize,
    table: &'a [f32; 256],
) -> impl Iterator<Item = f32> + 'a {
    rgb[c..].iter().step_by(3).map(|&u| table[u as usize])
}

/// Clips `start..start + count` of a video from the frames `read` holds.
fn clips_from(
    read: &ClipFrames,
    cfg: &ClipSamplingConfig,
    start: usize,
    count: usize,
    device: &Device,
) -> Result<Tensor<5>> {
    let (frames, total) = (&read.frames, read.total);
    let n = cfg.num_clips(&frames.video, total)?;
    if count == 0 || start + count > n {
        return Err(Error::Config(format!(
            "video `{}` has {n} clips; clips {start}..{} requested",
            frames.video,
            start + count
        )));
    }
    let (h, w, f) = (frames.height, frames.width, cfg.clip_frames);
    let plane = h * w;
    // Where each clip's frames are among those read (checked first: an error names them).
    let mut at = vec![None; count * f];
    for k in 0..count {
        for (j, fi) in cfg.clip_frame_indices(start + k, total).enumerate().take(f) {
            let Ok(i) = read.indices.binary_search(&fi) else {
                return Err(Error::Config(format!(
                    "video `{}`: clip {} needs frame {fi}, which was not read",
                    frames.video,
                    start + k,
                )));
            };
            at[k * f + j] = Some(i);
        }
    }
    let tables = channel_tables(cfg);
    // One plane `[k, c, j]` per task, on every core; every element written once (not zeroed
    // first: a step's clips are tens of MiB).
    let len = count * 3 * f * plane;
    let mut data: Vec<f32> = Vec::with_capacity(len);
    data.spare_capacity_mut()[..len]
        .par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(i, plane)| {
            let (k, c, j) = (i / (3 * f), (i / f) % 3, i % f);
            let Some(frame) = at[k * f + j] else {
                plane.fill(std::mem::MaybeUninit::new(0.0));
                return;
            };
            let values = normalised(frames.frame(frame), c, &tables[c]);
            for (d, v) in plane.iter_mut().zip(values) {
                d.write(v);
            }
        });
    // SAFETY: the chunks cover the first `len` elements and each task wrote every element of
    // its chunk.
    unsafe { data.set_len(len) };
    Ok(Tensor::from_data(
        TensorData::new(data, [count, 3, f, h, w]),
        device,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize) -> Frames {
        // Frame i is uniformly grey level i (2x2 pixels).
        Frames {
            video: "v".into(),
            len: n,
            height: 2,
            width: 2,
            rgb: (0..n)
                .flat_map(|i| std::iter::repeat_n(i as u8, 12))
                .collect(),
        }
    }

    fn identity_norm(cfg: ClipSamplingConfig) -> ClipSamplingConfig {
        cfg.with_mean([0.0; 3]).with_std([1.0 / 255.0; 3])
    }

    #[test]
    fn clip_count_and_indices() {
        let cfg = ClipSamplingConfig::new()
            .with_clip_frames(4)
            .with_frame_stride(2)
            .with_snippet_stride(3);
        assert_eq!(cfg.span(), 7);
        // 20 frames: starts 0,3,...; last start 12 covers 12..18; 15 would cover 15..21 -> padded.
        assert_eq!(cfg.num_clips("v", 20).unwrap(), 6);
        assert_eq!(cfg.num_clips("v", 7).unwrap(), 1);
        let idx: Vec<_> = cfg.clip_frame_indices(5, 20).collect();
        assert_eq!(idx, vec![15, 17, 19, 19]);
        match cfg.num_clips("short", 6) {
            Err(Error::VideoTooShort {
                video,
                frames,
                clip_span,
            }) => {
                assert_eq!((video.as_str(), frames, clip_span), ("short", 6, 7));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clips_tensor_layout_and_padding_mask() {
        let device = crate::backend::cpu_device();
        let cfg = identity_norm(
            ClipSamplingConfig::new()
                .with_clip_frames(2)
                .with_snippet_stride(2),
        );
        let b = sample_clips(&frames(5), 10.0, &cfg, Some(4), &device).unwrap();
        assert_eq!(b.clips.dims(), [4, 3, 2, 2, 2]);
        assert_eq!(b.num_valid, 3);
        let mask: Vec<bool> = b.mask.into_data().try_to_vec().unwrap();
        assert_eq!(mask, vec![true, true, true, false]);
        let v: Vec<f32> = b.clips.into_data().try_to_vec().unwrap();
        let at = |t: usize, c: usize, f: usize| v[(((t * 3 + c) * 2 + f) * 2) * 2];
        // Clip 1 holds frames 2 and 3; clip 2 frames 4 and 4 (clamped); clip 3 is padding.
        assert_eq!((at(1, 0, 0), at(1, 2, 1)), (2.0, 3.0));
        assert_eq!((at(2, 1, 0), at(2, 1, 1)), (4.0, 4.0));
        assert_eq!(at(3, 0, 0), 0.0);
        // Clip centre times: (k * 2 + 1) / 10 s.
        assert_eq!(b.grid.seconds(1.0), 0.3);
        assert!(sample_clips(&frames(5), 10.0, &cfg, Some(2), &device).is_err());
    }

    #[test]
    fn clip_range_equals_the_same_clips_of_sample_clips() {
        let device = crate::backend::cpu_device();
        let cfg = ClipSamplingConfig::new()
            .with_clip_frames(3)
            .with_frame_stride(2)
            .with_snippet_stride(2);
        let fr = frames(12);
        let all = sample_clips(&fr, 10.0, &cfg, None, &device).unwrap();
        let n = all.num_valid;
        let part = clip_range(&fr, &cfg, 2, n - 2, &device).unwrap();
        let want: Vec<f32> = all
            .clips
            .narrow(0, 2, n - 2)
            .into_data()
            .try_to_vec()
            .unwrap();
        let got: Vec<f32> = part.into_data().try_to_vec().unwrap();
        assert_eq!(got, want);
        assert!(clip_range(&fr, &cfg, n - 1, 2, &device).is_err());
    }

    /// The lookup tables hold the normalisation formula's values, bit for bit, for every byte
    /// and channel, and a frame's channel reads its own bytes.
    #[test]
    fn normalised_pixels_are_the_formulas() {
        let cfg = ClipSamplingConfig::new()
            .with_mean([0.485, 0.456, 0.406])
            .with_std([0.229, 0.224, 0.225]);
        let tables = channel_tables(&cfg);
        let rgb: Vec<u8> = (0..=255u8).flat_map(|u| [u, 255 - u, u / 2]).collect();
        for c in 0..3 {
            let got: Vec<f32> = normalised(&rgb, c, &tables[c]).collect();
            let want: Vec<f32> = (0..256)
                .map(|p| (rgb[p * 3 + c] as f32 / 255.0 - cfg.mean[c]) / cfg.std[c])
                .collect();
            assert_eq!(got, want, "channel {c}");
        }
    }

    #[test]
    fn clips_from_a_window_of_frames_equal_clips_of_the_whole_video() {
        let device = crate::backend::cpu_device();
        let cfg = ClipSamplingConfig::new()
            .with_clip_frames(3)
            .with_frame_stride(2)
            .with_snippet_stride(2);
        let fr = frames(12);
        let n = cfg.num_clips("v", 12).unwrap();
        let op = crate::data::SpatialOp::identity((2, 2));
        for (start, count) in [(0, 1), (1, 2), (2, n - 2), (n - 1, 1)] {
            let part = ClipFrames::read(&fr, &cfg, start, count, &op).unwrap();
            assert_eq!(part.frames.len, cfg.frames_of(start, count, 12).len());
            let got: Vec<f32> = part
                .clips(&cfg, start, count, &device)
                .unwrap()
                .into_data()
                .try_to_vec()
                .unwrap();
            let want: Vec<f32> = clip_range(&fr, &cfg, start, count, &device)
                .unwrap()
                .into_data()
                .try_to_vec()
                .unwrap();
            assert_eq!(got, want, "{start} {count}");
        }
        assert!(ClipFrames::read(&fr, &cfg, n - 1, 2, &op).is_err());
    }

    #[test]
    fn fixed_clips_spread_over_the_whole_video_and_read_only_their_frames() {
        let cfg = ClipSamplingConfig::new()
            .with_clip_frames(8)
            .with_frame_stride(2)
            .with_fixed_clips(5);
        // 100 frames, clips of 15: starts every 85 / 4 = 21.25 frames, the last ends on 99.
        assert_eq!(cfg.num_clips("v", 100).unwrap(), 5);
        let starts: Vec<usize> = (0..5).map(|k| cfg.clip_start(k, 100)).collect();
        assert_eq!(starts, vec![0, 21, 43, 64, 85]);
        assert_eq!(cfg.clip_frame_indices(4, 100).last(), Some(99));
        // Only the 8 frames of each clip are read, not the 100 between them.
        assert_eq!(cfg.frames_of(0, 5, 100).len(), 40);
        let g = cfg.grid_of(10.0, 100);
        assert!((g.seconds(4.0) - (85.0 + 7.5) / 10.0).abs() < 1e-12);
        // A longer video: the same number of clips, spaced wider.
        assert_eq!(cfg.num_clips("v", 1000).unwrap(), 5);
        assert_eq!(cfg.clip_start(4, 1000), 985);
        let device = crate::backend::cpu_device();
        let fr = frames(100);
        let op = crate::data::SpatialOp::identity((2, 2));
        let read = ClipFrames::read(&fr, &cfg, 1, 3, &op).unwrap();
        assert_eq!(read.frames.len, 24);
        let got: Vec<f32> = read
            .clips(&cfg, 1, 3, &device)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        let want: Vec<f32> = clip_range(&fr, &cfg, 1, 3, &device)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(got, want);
        assert!(cfg.clone().with_fixed_clips(1).num_clips("v", 100).is_err());
    }

    #[test]
    fn temporal_token_grid_puts_each_position_at_its_frames_centre() {
        let c = ClipSamplingConfig::new()
            .with_clip_frames(16)
            .with_snippet_stride(16)
            .with_positions_per_clip(8);
        c.validate().unwrap();
        let g = c.grid(10.0);
        // Position 0 covers frames 0-1 (centre 1.0), position 9 is clip 1's second: frames
        // 18-19 (centre 19.0).
        assert!((g.seconds(0.0) - 0.1).abs() < 1e-12);
        assert!((g.seconds(9.0) - 1.9).abs() < 1e-12);
        assert_eq!(c.positions(48), 384);
        assert_eq!(c.num_clips("v", 768).unwrap(), 48);
        // Overlapping clips, a fixed clip count or an uneven split are refused.
        for bad in [
            c.clone().with_snippet_stride(4),
            c.clone().with_fixed_clips(10),
            c.clone().with_positions_per_clip(5),
            c.clone().with_positions_per_clip(0),
        ] {
            assert!(bad.validate().is_err());
        }
    }
}
