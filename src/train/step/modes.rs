//! The four training modes' steps.

use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::{Computed, ModeStep, Objective, StepGrads, Window};
use crate::backbone::{BackboneOutput, LayerTaps, Network, VideoBackbone};
use crate::error::Result;
use crate::reversible::{DriftMonitor, RewiredBackbone};
use crate::train::model::{Extraction, TalModel, head_input};
use crate::train::plan::TrainPlan;

/// The step of `plan`; `layers`: the backbone layers the adapters read (mode `adapter`).
pub(crate) fn for_plan(plan: &TrainPlan, layers: Vec<usize>) -> Box<dyn ModeStep> {
    match plan {
        TrainPlan::HeadOnly { network, .. } => Box::new(HeadOnly { network: *network }),
        TrainPlan::Full { network, .. } => Box::new(Full { network: *network }),
        TrainPlan::Reversible { drift, .. } => Box::new(Reversible {
            drift: drift.clone(),
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
        Ok(backward(loss, value, model, Trains::Head))
    }
}

/// Full fine-tuning with ordinary autodiff (every activation kept); on the rewired network,
/// the reference the reversible pass must match.
struct Full {
    network: Network,
}

impl ModeStep for Full {
    fn compute(&self, model: &TalModel, w: &Window<'_>, obj: &Objective<'_>) -> Result<Computed> {
        let f = match self.network {
            Network::Rewired => model.backbone.forward_rewired(w.clips()?, w.seed)?,
            Network::Plain => model.backbone.forward(w.clips()?, &[])?.features,
        };
        let (loss, value) = obj.loss(&model.head, f)?;
        Ok(backward(loss, value, model, Trains::Backbone))
    }
}

/// Re2TAL: the rewired backbone on a reversible tape (no block activations kept; the backward
/// pass reconstructs them), checked by the drift monitor on its steps.
struct Reversible {
    drift: DriftMonitor,
}

impl ModeStep for Reversible {
    fn compute(&self, model: &TalModel, w: &Window<'_>, obj: &Objective<'_>) -> Result<Computed> {
        let mut tape = self.drift.tape(obj.step).with_seed(w.seed);
        let f = model.backbone.forward_reversible(w.clips()?, &mut tape)?;
        let (loss, value) = obj.loss(&model.head, f)?;
        let mut g = tape.backward(loss)?;
        Ok(Computed {
            loss: value,
            drift: g.worst_drift(),
            grads: StepGrads {
                backbone: Some(g.params(&model.backbone)),
                adapter: None,
                head: g.params(&model.head),
            },
        })
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
        Ok(backward(loss, value, model, Trains::Adapter))
    }
}

/// What an autodiff step trains besides the head.
enum Trains {
    Head,
    Backbone,
    Adapter,
}

/// Ordinary autodiff from `loss` (of value `value`), collecting the gradients of the head and
/// of the part `trains` names.
fn backward(loss: Tensor<1>, value: f64, model: &TalModel, trains: Trains) -> Computed {
    let mut g = loss.backward();
    let backbone = matches!(trains, Trains::Backbone)
        .then(|| GradientsParams::from_module(&mut g, &model.backbone));
    let adapter = match (trains, &model.adapter) {
        (Trains::Adapter, Some(a)) => Some(GradientsParams::from_module(&mut g, a)),
        _ => None,
    };
    Computed {
        loss: value,
        grads: StepGrads {
            backbone,
            adapter,
            head: GradientsParams::from_module(&mut g, &model.head),
        },
        drift: None,
    }
}
