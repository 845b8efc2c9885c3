//! `e2e-tal synth`: generate the synthetic benchmark.

use std::path::PathBuf;
use std::time::Instant;

use e2e_tal::Result;
use e2e_tal::data::FrameFormat;
use e2e_tal::data::SynthConfig;

use super::count_in;

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Number of videos.
    #[arg(long, default_value_t = 40, value_parser = count_in(1, SynthConfig::MAX_VIDEOS))]
    videos: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Frame height and width in pixels (16-2048).
    #[arg(long, default_value_t = 64, value_parser = count_in(16, SynthConfig::MAX_SIDE))]
    size: usize,
    /// Number of action classes (1-8).
    #[arg(long, default_value_t = 8, value_parser = count_in(1, 8))]
    classes: usize,
    /// Write PNG frames instead of JPEG.
    #[arg(long, conflicts_with = "video")]
    png: bool,
    /// Write each video as an H.264 mp4 file (`videos/<id>.mp4`, needs FFmpeg) instead of a
    /// folder of frames.
    #[arg(long)]
    video: bool,
}

pub fn run(a: SynthArgs) -> Result<()> {
    let cfg = SynthConfig::new()
        .with_videos(a.videos)
        .with_seed(a.seed)
        .with_height(a.size)
        .with_width(a.size)
        .with_num_classes(a.classes)
        .with_format(match (a.png, a.video) {
            (_, true) => FrameFormat::Mp4,
            (true, _) => FrameFormat::Png,
            _ => FrameFormat::Jpeg,
        });
    let t = Instant::now();
    let ds = cfg.generate(&a.out)?;
    let videos = &ds.ground_truth.videos;
    let n_ann: usize = videos.iter().map(|v| v.annotations.len()).sum();
    let n_frames: usize = videos.iter().filter_map(|v| v.num_frames).sum();
    outln!(
        "wrote {} videos ({n_frames} frames, {n_ann} actions, {} classes) to {} in {:.1}s",
        videos.len(),
        ds.classes.len(),
        a.out.display(),
        t.elapsed().as_secs_f64()
    )
}
