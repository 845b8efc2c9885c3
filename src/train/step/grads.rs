//! The gradients of one step, per optimised part, and the global-norm clipping over them.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::train::model::TalModel;

/// The gradients of one step, per optimised part (each part has its own optimizer and
/// schedule: the backbone's, and the head's that the adapters share).
pub(crate) struct StepGrads {
    /// Backbone (modes that fine-tune it).
    pub backbone: Option<GradientsParams>,
    /// LoSA adapters (mode `adapter`).
    pub adapter: Option<GradientsParams>,
    /// Head (every mode).
    pub head: GradientsParams,
}

/// Squared L2 norm of `module`'s gradients in `grads`, as a tensor sum.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

fn squared_norm<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut v = SquaredNorm { grads, sum: None };
    module.visit(&mut v);
    v.sum
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// Moves every gradient of `from` into `into`, adding where both have one.
struct Add<'a> {
    into: &'a mut GradientsParams,
    from: &'a mut GradientsParams,
}

impl ModuleVisitor for Add<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            let sum = match self.into.remove::<D>(param.id) {
                Some(acc) => acc + g,
                None => g,
            };
            self.into.register(param.id, sum);
        }
    }
}

/// Add every gradient of `from` (of `module`'s parameters) into `into`.
pub(crate) fn add_into<M: Module>(
    module: &M,
    into: &mut GradientsParams,
    mut from: GradientsParams,
) {
    add_from(module, into, &mut from);
}

/// Move the gradients of `module`'s parameters out of `from`, adding them into `into`.
pub(crate) fn add_from<M: Module>(
    module: &M,
    into: &mut GradientsParams,
    from: &mut GradientsParams,
) {
    module.visit(&mut Add { into, from });
}

/// Clip `module`'s gradients in `grads` to the global L2 norm `max` as PyTorch's
/// `clip_grad_norm_` does (0: no clipping); returns the norm before clipping.
pub(crate) fn clip_grads<M: Module>(module: &M, grads: &mut GradientsParams, max: f64) -> f64 {
    let norm = squared_norm(module, grads).map_or(0.0, |t| t.into_scalar::<f64>().sqrt());
    if max > 0.0 && norm > max {
        module.visit(&mut Scale {
            grads,
            factor: max / (norm + 1e-6),
        });
    }
    norm
}

impl StepGrads {
    /// Add `other`'s gradients (another micro-batch of the same step) to these.
    pub fn add(&mut self, other: StepGrads, model: &TalModel) {
        add_into(&model.head, &mut self.head, other.head);
        if let (Some(a), Some(g)) = (&model.adapter, other.adapter) {
            match &mut self.adapter {
                Some(into) => add_into(a, into, g),
                None => self.adapter = Some(g),
            }
        }
        if let Some(g) = other.backbone {
            match &mut self.backbone {
                Some(into) => add_into(&model.backbone, into, g),
                None => self.backbone = Some(g),
            }
        }
    }

    /// The global L2 norm over all parts (the backbone's part on a thread of its own: each
    /// part is a sequence of small operations).
    /// (`&mut`: gradients are not `Sync`, so each thread borrows its part exclusively.)
    pub fn norm(&mut self, model: &TalModel) -> f64 {
        let StepGrads {
            backbone,
            adapter,
            head,
        } = self;
        let (head, backbone) = rayon::join(
            move || {
                let adapter = adapter
                    .as_mut()
                    .zip(model.adapter.as_ref())
                    .and_then(|(g, a)| squared_norm(a, g));
                [squared_norm(&model.head, head), adapter]
            },
            move || {
                backbone
                    .as_mut()
                    .and_then(|g| squared_norm(&model.backbone, g))
            },
        );
        let total = head
            .into_iter()
            .chain([backbone])
            .flatten()
            .reduce(|a, b| a + b);
        total.map_or(0.0, |t| t.into_scalar::<f64>().sqrt())
    }

    /// Multiply every gradient by `factor` (the backbone's on a thread of its own).
    pub fn scale(&mut self, model: &TalModel, factor: f64) {
        let StepGrads {
            backbone,
            adapter,
            head,
        } = self;
        rayon::join(
            move || {
                model.head.visit(&mut Scale {
                    grads: head,
                    factor,
                });
                if let (Some(g), Some(a)) = (adapter, &model.adapter) {
                    a.visit(&mut Scale { grads: g, factor });
                }
            },
            move || {
                if let Some(g) = backbone {
                    model.backbone.visit(&mut Scale { grads: g, factor });
                }
            },
        );
    }

    /// Clip the global norm over all parts to `max` (ActionFormer's `clip_grad_l2norm`; 0: no
    /// clipping); returns the norm before clipping.
    pub fn clip(&mut self, model: &TalModel, max: f64) -> f64 {
        let norm = self.norm(model);
        if max > 0.0 && norm > max {
            self.scale(model, max / (norm + 1e-6));
        }
        norm
    }
}
