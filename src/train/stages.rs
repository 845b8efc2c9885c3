//! LoFi-E2E's procedure after pretraining (stage 1, [`super::pretrain`]): stage 2 trains
//! backbone and head end to end (at low fidelity when `cfg.lofi` says so); stage 3 freezes the
//! adapted backbone and trains a new head at full fidelity on its features.

use burn::module::Module;
use burn::tensor::Device;

use super::config::TrainMode;
use super::trainer::{RunOptions, TrainOutcome, train};
use super::{TalDataset, TrainConfig};
use crate::backbone::Backbone;
use crate::data::lofi::LoFiMode;
use crate::error::{Error, Result};

/// What the two stages produced.
pub struct StagesOutcome {
    /// Stage 2: the end-to-end run (in `out/stage2`).
    pub end_to_end: TrainOutcome,
    /// Stage 3: the head retrained on the frozen stage-2 backbone (in `out/stage3`).
    pub head: TrainOutcome,
}

/// Run stages 2 and 3 from `backbone` (the stage-1 result) in `opts.out_dir/stage2` and
/// `opts.out_dir/stage3` (the other options apply to both). Stage 3 uses `cfg` with mode
/// `head-only`, full fidelity and `head_epochs` epochs; the stage-2 backbone it freezes is the
/// EMA when the run keeps one.
pub fn end_to_end_then_head(
    cfg: TrainConfig,
    head_epochs: usize,
    data: &TalDataset,
    backbone: Backbone,
    opts: &RunOptions,
    device: &Device,
) -> Result<StagesOutcome> {
    if !cfg.mode.trains_backbone() {
        return Err(Error::Config(format!(
            "stage 2 must train the backbone (mode full or reversible), got {}",
            cfg.mode
        )));
    }
    let opts = |dir: &str| RunOptions {
        out_dir: opts.out_dir.join(dir),
        ..opts.clone()
    };
    let mut head_cfg = cfg
        .clone()
        .with_mode(TrainMode::HeadOnly)
        .with_epochs(head_epochs);
    // Stage 3 trains on features extracted once, at full fidelity, without augmentation.
    head_cfg.lofi.mode = LoFiMode::Full;
    head_cfg.augment = crate::data::augment::AugmentConfig::new();
    head_cfg.cache_features = true;
    // A backbone trained in rewired form is used in rewired form.
    head_cfg.rewired = cfg.uses_rewired_backbone();
    head_cfg.validate()?;
    let end_to_end = train(cfg, data, backbone, &opts("stage2"), device)?;
    let adapted = end_to_end
        .ema
        .as_ref()
        .unwrap_or(&end_to_end.model)
        .backbone
        .valid();
    let head = train(head_cfg, data, adapted, &opts("stage3"), device)?;
    Ok(StagesOutcome { end_to_end, head })
}
