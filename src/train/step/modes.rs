//! The four training modes' steps.

use super::fine_tune::{BackboneRun, LeftGrads};
use super::{Computed, ModeStep, Objective, StepGrads, Window, batch_objective};
use crate::backbone::{BackboneOutput, LayerTaps, Network};
use crate::error::Result;
use crate::train::model::{Extraction, TalModel, head_input};
use crate::train::plan::TrainPlan;

/// The step of `plan`; `layers`: the backbone layers the adapters read (mode `adapter`).
pub(crate) fn for_plan(plan: &TrainPlan, layers: Vec<usize>) -> Box<dyn ModeStep> {
    match plan {
        TrainPlan::HeadOnly { network, .. } => Box::new(HeadOnly { network: *network }),
        TrainPlan::Full {
            checkpointing: true,
            ..
        } => Box::new(FineTune {
            run: BackboneRun::Checkpointed,
        }),
        TrainPlan::Full { network, .. } => Box::new(FineTune {
            run: BackboneRun::Autodiff(*network),
        }),
        TrainPlan::Reversible { drift, .. } => Box::new(FineTune {
            run: BackboneRun::Reversible(drift.clone()),
        }),
        TrainPlan::Adapter { .. } => Box::new(Adapter { layers }),
    }
}

/// Head-only: the frozen backbone's last-layer features (cached or run now without a graph)
/// into the head; only the head learns. Several videos per step are one padded batch (the
/// head holds little per video).
struct HeadOnly {
    network: Network,
}

impl HeadOnly {
    fn features(&self, model: &TalModel, w: &Window<'_>) -> Result<burn::tensor::Tensor<2>> {
        let how = Extraction {
            network: self.network,
            ..Extraction::features(w.count)
        };
        Ok(w.frozen(model, how)?.features.autodiff())
    }
}

impl ModeStep for HeadOnly {
    fn compute(&self, model: &TalModel, w: &Window<'_>, obj: &Objective<'_>) -> Result<Computed> {
        self.batch(model, vec![self.features(model, w)?], &[obj])
    }

    fn compute_step(
        &self,
        model: &TalModel,
        videos: &[(Window<'_>, Objective<'_>)],
    ) -> Result<Computed> {
        let features = videos
            .iter()
            .map(|(w, _)| self.features(model, w))
            .collect::<Result<Vec<_>>>()?;
        let objectives: Vec<&Objective<'_>> = videos.iter().map(|(_, o)| o).collect();
        self.batch(model, features, &objectives)
    }
}

impl HeadOnly {
    /// The head on the padded batch of `features`, and its gradients.
    fn batch(
        &self,
        model: &TalModel,
        features: Vec<burn::tensor::Tensor<2>>,
        objectives: &[&Objective<'_>],
    ) -> Result<Computed> {
        let (loss, value) = batch_objective(&model.head, features, objectives)?;
        Ok(computed(
            value,
            LeftGrads::Autodiff(loss.backward()),
            model,
            Trains::Head,
        ))
    }
}

/// Full fine-tuning (`full`, ordinary autodiff) or Re2TAL (`reversible`): the backbone learns
/// with the head.
struct FineTune {
    run: BackboneRun,
}

impl ModeStep for FineTune {
    fn compute(&self, model: &TalModel, w: &Window<'_>, obj: &Objective<'_>) -> Result<Computed> {
        let (value, g) =
            self.run
                .step(&model.backbone, w.clip_source(), w.seed, obj.step, |f| {
                    obj.loss(&model.head, f)
                })?;
        Ok(computed(value, g, model, Trains::Backbone))
    }
}

/// LoSA: the frozen backbone's tapped layers (cached or run now without a graph) through the
/// adapters into the head; adapters and head learn, no gradient enters the backbone.
struct Adapter {
    layers: Vec<usize>,
}

impl ModeStep for Adapter {
    fn compute(&self, model: &TalModel, w: &Window<'_>, obj: &Objective<'_>) -> Result<Computed> {
        let adapter = model
            .adapter
            .as_ref()
            .expect("adapter mode builds adapters");
        let how = Extraction {
            network: Network::Plain,
            // LoSA's token budget applies as each layer is produced (bounded memory).
            taps: LayerTaps {
                layers: &self.layers,
                max_tokens: adapter.max_tokens,
            },
            chunk: w.count,
        };
        let f = w.frozen(model, how)?;
        let f = BackboneOutput {
            features: f.features.autodiff(),
            layers: f.layers.into_iter().map(|t| t.autodiff()).collect(),
            positions: f.positions,
        };
        let (loss, value) = obj.loss(&model.head, head_input(Some(adapter), f)?)?;
        Ok(computed(
            value,
            LeftGrads::Autodiff(loss.backward()),
            model,
            Trains::Adapter,
        ))
    }
}

/// What an autodiff step trains besides the head.
enum Trains {
    Head,
    Backbone,
    Adapter,
}

/// The step's result from the gradients it left: the head's and those of the part `trains`
/// names.
fn computed(value: f64, mut g: LeftGrads, model: &TalModel, trains: Trains) -> Computed {
    let backbone = matches!(trains, Trains::Backbone).then(|| g.params(&model.backbone));
    let adapter = match (trains, &model.adapter) {
        (Trains::Adapter, Some(a)) => Some(g.params(a)),
        _ => None,
    };
    Computed {
        loss: value,
        drift: g.drift(),
        grads: StepGrads {
            backbone,
            adapter,
            head: g.params(&model.head),
        },
    }
}
