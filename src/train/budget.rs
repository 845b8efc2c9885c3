//! LoFi-E2E budget mode: given a memory budget for a training step, pick the highest fidelity
//! (r_t, r_s) whose *measured* step memory fits it.
//!
//! Each candidate fidelity runs one real training step ([`super::train`], the configured mode,
//! optimiser state included) on the longest training video, the step with the most clips, and
//! its peak is read with [`crate::memory::measure_on`]: the counting allocator on CPU backends
//! (it must be the process's global allocator, as in the `e2e-tal` binary), the device's memory
//! pools on wgpu/cuda. Candidates run from the fewest pixels to the most, so pool high-water
//! readings grow with them. Model weights and decoded frames are outside the measurement.

use std::fmt;
use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;

use super::config::TrainConfig;
use super::dataset::TalDataset;
use super::model::materialize;
use super::trainer::{RunOptions, train};
use crate::backbone::Backbone;
use crate::data::Subset;
use crate::data::lofi::{Fidelity, LoFiMode};
use crate::error::{Error, Result};
use crate::memory::mib;
use crate::pipeline::LoaderConfig;

/// The default candidates: r_t in {1, 2, 4} x r_s in {1, sqrt 2, 2} (the paper's S, T and ST
/// factors and full fidelity among them).
pub fn candidate_fidelities() -> Vec<Fidelity> {
    let mut out = Vec::new();
    for temporal in [1, 2, 4] {
        for spatial in [1.0, std::f64::consts::SQRT_2, 2.0] {
            out.push(
                Fidelity::new()
                    .with_temporal(temporal)
                    .with_spatial(spatial),
            );
        }
    }
    out
}

/// One candidate, predicted and/or measured.
#[derive(Debug, Clone)]
pub struct BudgetProbe {
    /// Its factors.
    pub fidelity: Fidelity,
    /// Pixels of the probed video's clips at this fidelity, frame sizes snapped to the
    /// backbone's patch as the trainer does (the cost before measuring).
    pub pixels: usize,
    /// Peak bytes of the training step: measured when `measured`, else the planner's.
    pub peak_bytes: usize,
    /// Whether `peak_bytes` was measured by a trial step.
    pub measured: bool,
    /// The planner's prediction of the first step's peak (its optimizer state included), when
    /// the planner covers the configuration.
    pub predicted_bytes: Option<usize>,
    /// Wall time of the probe (model set-up included; 0 when only predicted).
    pub seconds: f64,
}

/// The measurements and the choice.
#[derive(Debug, Clone)]
pub struct BudgetChoice {
    /// The budget, bytes.
    pub budget_bytes: usize,
    /// The video probed (the longest training video).
    pub video: String,
    /// Every candidate, fewest pixels first.
    pub probes: Vec<BudgetProbe>,
    /// The chosen fidelity: the most pixels among those that fit (lower memory on ties).
    pub chosen: Fidelity,
}

impl BudgetChoice {
    /// The LoFi sampler to train with.
    pub fn mode(&self) -> LoFiMode {
        LoFiMode::Fixed {
            fidelity: self.chosen,
        }
    }
}

impl fmt::Display for BudgetChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Memory budget {} MiB per training step; the longest training video `{}`:",
            mib(self.budget_bytes),
            self.video
        )?;
        writeln!(
            f,
            "| r_t | r_s | pixels | predicted (MiB) | measured (MiB) | fits | |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|")?;
        for p in &self.probes {
            writeln!(
                f,
                "| {} | {:.3} | {} | {} | {} | {} | {} |",
                p.fidelity.temporal,
                p.fidelity.spatial,
                p.pixels,
                p.predicted_bytes.map_or("-".into(), mib),
                if p.measured {
                    mib(p.peak_bytes)
                } else {
                    "-".into()
                },
                if p.peak_bytes <= self.budget_bytes {
                    "yes"
                } else {
                    "no"
                },
                if p.fidelity == self.chosen {
                    "chosen"
                } else {
                    ""
                }
            )?;
        }
        write!(
            f,
            "chosen: r_t {}, r_s {:.3}",
            self.chosen.temporal, self.chosen.spatial
        )
    }
}

/// Measure one training step of `cfg` at each of `candidates` on the longest training video of
/// `data` and choose the highest fidelity that fits `budget_bytes`. `scratch` holds the probes'
/// throw-away run folders (removed afterwards).
///
/// Errors: a mode that does not train the backbone, no training video, a backend/allocator that
/// cannot measure, or no candidate within the budget (the message names the cheapest).
pub fn choose_fidelity(
    cfg: &TrainConfig,
    data: &TalDataset,
    backbone: &Backbone,
    budget_bytes: usize,
    candidates: &[Fidelity],
    scratch: &Path,
    device: &Device,
) -> Result<BudgetChoice> {
    if !cfg.mode.trains_backbone() {
        return Err(Error::Config(format!(
            "budget mode chooses a LoFi fidelity for end-to-end training; mode {} does not run \
             the backbone under a graph",
            cfg.mode
        )));
    }
    if candidates.is_empty() {
        return Err(Error::Config(
            "budget mode needs candidate fidelities".into(),
        ));
    }
    let video = data
        .indices(Subset::Training)
        .into_iter()
        .map(|i| &data.videos[i])
        .max_by_key(|v| v.len())
        .ok_or_else(|| Error::Config("budget mode: the dataset has no training video".into()))?;
    let full_clips = &cfg.clips;
    let multiple = backbone.spatial_multiple();
    let (h, w) = cfg.frame_size();
    let mut order: Vec<(Fidelity, usize)> = candidates
        .iter()
        .map(|f| {
            let px = f.pixels_snapped(full_clips, video.len(), h, w, multiple);
            (*f, px)
        })
        .collect();
    order.sort_by_key(|&(_, px)| px);
    let probe_data = TalDataset {
        classes: data.classes.clone(),
        ground_truth: data.ground_truth.clone(),
        videos: vec![video.clone()],
        source: data.source.clone(),
    };
    materialize(backbone);
    let mut probes = Vec::new();
    for (i, (fidelity, pixels)) in order.into_iter().enumerate() {
        let scratch = scratch.join(format!("probe-{i}"));
        let (peak_bytes, seconds) =
            measure_step(cfg, &probe_data, backbone, fidelity, &scratch, device)?;
        probes.push(BudgetProbe {
            fidelity,
            pixels,
            peak_bytes,
            measured: true,
            predicted_bytes: None,
            seconds,
        });
    }
    let _ = std::fs::remove_dir(scratch);
    let Some(chosen) = select_fidelity(&probes, budget_bytes) else {
        let cheapest = probes
            .iter()
            .min_by_key(|p| p.peak_bytes)
            .expect("at least one probe");
        return Err(Error::Config(format!(
            "no fidelity fits the memory budget of {} MiB per step: the cheapest measured, \
             r_t {} r_s {:.3}, needs {} MiB on video `{}`",
            mib(budget_bytes),
            cheapest.fidelity.temporal,
            cheapest.fidelity.spatial,
            mib(cheapest.peak_bytes),
            video.id
        )));
    };
    Ok(BudgetChoice {
        budget_bytes,
        video: video.id.clone(),
        probes,
        chosen,
    })
}

/// One training step of `cfg` at `fidelity` on `data` (one video), in the run folder
/// `scratch` (removed afterwards): its peak bytes and the probe's seconds.
fn measure_step(
    cfg: &TrainConfig,
    data: &TalDataset,
    backbone: &Backbone,
    fidelity: Fidelity,
    scratch: &Path,
    device: &Device,
) -> Result<(usize, f64)> {
    let mut probe_cfg = cfg.clone().with_epochs(2).with_ema_decay(0.0);
    probe_cfg.lofi.mode = LoFiMode::Fixed { fidelity };
    let opts = RunOptions {
        out_dir: scratch.to_path_buf(),
        quiet: true,
        stop_after_steps: Some(1),
        overwrite: true,
        // Decoding on the training thread, outside the measured step: the probe measures
        // the step's own memory.
        loader: LoaderConfig::new().with_workers(0),
        ranks: Default::default(),
    };
    let t0 = Instant::now();
    let outcome = train(probe_cfg, data, backbone.clone(), &opts, device);
    let _ = std::fs::remove_dir_all(&opts.out_dir);
    let peak_bytes = outcome?.peak_step_bytes.ok_or_else(|| {
        Error::Config(
            "budget mode cannot measure memory here: on CPU backends install \
             e2e_tal::memory::CountingAllocator as the #[global_allocator]"
                .into(),
        )
    })?;
    Ok((peak_bytes, t0.elapsed().as_secs_f64()))
}

/// The budget choice from the memory planner (`crate::planner`), confirmed by measurement:
/// every candidate's first step is predicted from the model's shapes (no trial steps), the
/// candidate of the most pixels whose prediction fits `budget_bytes` is run for one step, and
/// kept when its measured peak fits too (otherwise the next one is tried). Configurations the
/// planner does not cover fall back to [`choose_fidelity`]'s trial step per candidate.
pub fn plan_fidelity(
    cfg: &TrainConfig,
    data: &TalDataset,
    backbone: &Backbone,
    budget_bytes: usize,
    candidates: &[Fidelity],
    scratch: &Path,
    device: &Device,
) -> Result<BudgetChoice> {
    let video = data
        .indices(Subset::Training)
        .into_iter()
        .map(|i| &data.videos[i])
        .max_by_key(|v| v.len())
        .ok_or_else(|| Error::Config("budget mode: the dataset has no training video".into()))?;
    let (height, width) = cfg.frame_size();
    let shape = crate::planner::VideoShape {
        frames: video.len(),
        height,
        width,
    };
    let predicted: Result<Vec<(Fidelity, usize, usize)>> = candidates
        .iter()
        .map(|&f| {
            let r = crate::planner::predict(cfg, f, shape)?;
            Ok((f, r.pixels, r.memory.step + r.memory.optimizer))
        })
        .collect();
    let Ok(mut predicted) = predicted else {
        return choose_fidelity(
            cfg,
            data,
            backbone,
            budget_bytes,
            candidates,
            scratch,
            device,
        );
    };
    if !cfg.mode.trains_backbone() {
        return choose_fidelity(
            cfg,
            data,
            backbone,
            budget_bytes,
            candidates,
            scratch,
            device,
        );
    }
    predicted.sort_by_key(|&(_, px, bytes)| (px, bytes));
    let probe_data = TalDataset {
        classes: data.classes.clone(),
        ground_truth: data.ground_truth.clone(),
        videos: vec![video.clone()],
        source: data.source.clone(),
    };
    materialize(backbone);
    let mut probes: Vec<BudgetProbe> = predicted
        .iter()
        .map(|&(fidelity, pixels, bytes)| BudgetProbe {
            fidelity,
            pixels,
            peak_bytes: bytes,
            measured: false,
            predicted_bytes: Some(bytes),
            seconds: 0.0,
        })
        .collect();
    let mut chosen = None;
    // From the most pixels down: the first whose prediction, then measurement, fits.
    for i in (0..probes.len()).rev() {
        if probes[i].peak_bytes > budget_bytes {
            continue;
        }
        let dir = scratch.join(format!("probe-{i}"));
        let (bytes, secs) =
            measure_step(cfg, &probe_data, backbone, probes[i].fidelity, &dir, device)?;
        probes[i].peak_bytes = bytes;
        probes[i].measured = true;
        probes[i].seconds = secs;
        if bytes <= budget_bytes {
            chosen = Some(probes[i].fidelity);
            break;
        }
    }
    let _ = std::fs::remove_dir(scratch);
    let Some(chosen) = chosen else {
        let cheapest = probes
            .iter()
            .min_by_key(|p| p.peak_bytes)
            .expect("at least one candidate");
        return Err(Error::Config(format!(
            "no fidelity fits the memory budget of {} MiB per step: the cheapest, r_t {} r_s \
             {:.3}, needs {} MiB ({}) on video `{}`",
            mib(budget_bytes),
            cheapest.fidelity.temporal,
            cheapest.fidelity.spatial,
            mib(cheapest.peak_bytes),
            if cheapest.measured {
                "measured"
            } else {
                "predicted"
            },
            video.id
        )));
    };
    Ok(BudgetChoice {
        budget_bytes,
        video: video.id.clone(),
        probes,
        chosen,
    })
}

/// The probe with the most pixels among those within `budget_bytes` (lower memory on ties).
pub fn select_fidelity(probes: &[BudgetProbe], budget_bytes: usize) -> Option<Fidelity> {
    probes
        .iter()
        .filter(|p| p.peak_bytes <= budget_bytes)
        .max_by(|a, b| {
            a.pixels
                .cmp(&b.pixels)
                .then(b.peak_bytes.cmp(&a.peak_bytes))
        })
        .map(|p| p.fidelity)
}

/// Parse a memory size: a number with an optional unit `B`, `KiB`, `MiB` (the default),
/// `GiB` (also `K`/`M`/`G`, `KB`/`MB`/`GB` read as binary units), e.g. `800`, `1.5GiB`.
pub fn parse_bytes(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| Error::Config(format!("memory size `{s}`: expected e.g. 800MiB or 2GiB")))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "" | "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(Error::Config(format!(
                "memory size `{s}`: unknown unit `{other}` (B, KiB, MiB, GiB)"
            )));
        }
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::Config(format!("memory size `{s}` must be positive")));
    }
    Ok((value * scale).round() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("800").unwrap(), 800 << 20);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("64 KiB").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("100b").unwrap(), 100);
        for bad in ["", "abc", "12 parsecs", "0", "-3MiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selection_takes_the_most_pixels_that_fit() {
        let probe = |temporal, spatial, pixels, peak_bytes| BudgetProbe {
            fidelity: Fidelity::new()
                .with_temporal(temporal)
                .with_spatial(spatial),
            pixels,
            peak_bytes,
            measured: true,
            predicted_bytes: None,
            seconds: 0.0,
        };
        let probes = [
            probe(4, 2.0, 100, 10),
            probe(4, 1.0, 400, 30),
            probe(1, 2.0, 400, 25),
            probe(2, 1.0, 800, 50),
            probe(1, 1.0, 1600, 90),
        ];
        let pick = |b| select_fidelity(&probes, b).map(|f| (f.temporal, f.spatial));
        assert_eq!(pick(1000), Some((1, 1.0)));
        assert_eq!(pick(89), Some((2, 1.0)));
        // Equal pixels: the one with less memory.
        assert_eq!(pick(30), Some((1, 2.0)));
        assert_eq!(pick(25), Some((1, 2.0)));
        assert_eq!(pick(24), Some((4, 2.0)));
        assert_eq!(pick(9), None);
    }

    #[test]
    fn candidates_span_the_papers_factors() {
        let c = candidate_fidelities();
        assert_eq!(c.len(), 9);
        for f in [
            Fidelity::full(),
            Fidelity::spatial_default(),
            Fidelity::temporal_default(),
            Fidelity::spatio_temporal_default(),
        ] {
            assert!(c.contains(&f), "{f:?}");
        }
    }
}
