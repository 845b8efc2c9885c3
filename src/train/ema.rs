//! Exponential moving average of a model's weights (ActionFormer evaluates an EMA of its
//! model): after every optimiser step `ema = decay * ema + (1 - decay) * model`, matched
//! parameter by parameter through their ids.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// Flattened, detached parameter values by id.
struct Collect(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        self.0.insert(p.id, p.val().flatten::<1>(0, D - 1));
    }
}

struct Blend {
    current: HashMap<ParamId, Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.current.remove(&p.id) {
            Some(cur) => {
                let decay = self.decay;
                p.map(|e| {
                    let shape = e.shape();
                    e * decay + cur.reshape(shape) * (1.0 - decay)
                })
            }
            None => p,
        }
    }
}

/// One EMA update of `ema` (an inference copy of `model`, made by `model.valid()` so the ids
/// match) towards `model`'s current weights. Only parameters are averaged: running statistics
/// (BatchNorm) are not, which is why the trainer refuses EMA for ResNet backbones that train.
pub(crate) fn ema_update<M: Module>(ema: M, model: &M, decay: f64) -> M {
    let mut c = Collect(HashMap::new());
    model.valid().visit(&mut c);
    ema.map(&mut Blend {
        current: c.0,
        decay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;

    #[test]
    fn blends_every_parameter_by_id() {
        let device = crate::backend::cpu_device();
        let a = LinearConfig::new(3, 2).init(&device);
        let ema = a.valid();
        // The "trained" model: same ids, every value + 1.
        let b = a.clone().map(&mut AddOne);
        let out = ema_update(ema, &b, 0.75);
        let get = |m: &burn::nn::Linear| -> (Vec<f32>, Vec<f32>) {
            (
                m.weight.val().into_data().try_to_vec().unwrap(),
                m.bias
                    .as_ref()
                    .unwrap()
                    .val()
                    .into_data()
                    .try_to_vec()
                    .unwrap(),
            )
        };
        let ((w0, b0), (w1, b1)) = (get(&a), get(&out));
        for (x, y) in w0.iter().zip(&w1) {
            assert!((y - (x + 0.25)).abs() < 1e-6, "{x} -> {y}");
        }
        for (x, y) in b0.iter().zip(&b1) {
            assert!((y - (x + 0.25)).abs() < 1e-6, "{x} -> {y}");
        }
    }

    struct AddOne;
    impl ModuleMapper for AddOne {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| t + 1.0)
        }
    }
}
