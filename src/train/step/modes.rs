//! The four training modes' steps.

use super::fine_tune::{BackboneRun, LeftGrads};
use super::{Computed, ModeStep, Objective, StepGrads, Window};
use crate::backbone::{BackboneOutput, LayerTaps, Network};
use crate::error::Result;
use crate::train::model::{Extraction, TalModel, head_input};
use crate::train::plan::TrainPlan;

/// The step of `plan`; `layers`: the backbone layers the adapters read (mode `adapter`).
pub(crate) fn for_plan(plan: &TrainPlan, layers: Vec<usize>) -> Box<dyn ModeStep> {
    match plan {
        TrainPlan::HeadOnly { network, .. } => Box::new(HeadOnly { network: *network }),
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
/// into the head; only the head learns.
struct HeadOnly {
    network: Network,
}

impl ModeStep for HeadOnly {
    fn compute(&self, model: &TalModel, w: &Window<'_>, obj: &Objective<'_>) -> Result<Computed> {
        let how = Extraction {
            network: self.network,
            ..Extraction::features(w.count)
        };
        let f = w.frozen(model, how)?.features.autodiff();
        let (loss, value) = obj.loss(&model.head, f)?;
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
        let (value, g) = self
            .run
            .step(&model.backbone, w.clips()?, w.seed, obj.step, |f| {
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
