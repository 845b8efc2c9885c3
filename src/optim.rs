//! AdamW with one fused pass per parameter tensor.
//!
//! Burn's AdamW updates a parameter through a dozen element-wise tensor operations (moments,
//! bias corrections, the square root, the decay, the step), each a pass over memory and a new
//! tensor; on the CPU backend those operations with a scalar run on one thread, so with many
//! small parameters the optimizer step kept the other core idle (the main job's profile).
//! [`FusedAdamW`] is the same optimizer, the same arithmetic in the same order and the same
//! state (Burn's `AdamWState`, so checkpoints written with either load with both), computed in
//! one parallel SIMD pass per parameter on the CPU backend and by the same tensor operations as
//! Burn elsewhere.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch};
use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

/// The scalars of one AdamW update of one parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Added to the corrected second moment's square root.
    pub epsilon: f32,
    /// The learning rate.
    pub lr: f64,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f32,
    /// The step's index, from 1 (bias corrections).
    pub time: i32,
}

impl AdamWStep {
    /// `1 - beta_1^t`, `1 - beta_2^t`: the moments' bias corrections.
    pub fn corrections(&self) -> (f32, f32) {
        (
            1.0 - self.beta_1.powi(self.time),
            1.0 - self.beta_2.powi(self.time),
        )
    }

    /// The factor the parameter is multiplied by before the step (`None`: no decay).
    pub fn keep(&self) -> Option<f32> {
        let rate = self.lr * self.weight_decay as f64;
        (rate != 0.0).then_some((1.0 - rate) as f32)
    }
}

backend_extension! {
    /// AdamW's update as a backend extension: fused on the CPU backend, Burn's tensor
    /// operations (in Burn's order) elsewhere.
    pub trait AdamWBackend: Backend {
        /// The updated parameter and moments from the parameter, its gradient and the
        /// moments before the step (zeros before the first).
        ///
        /// # Shapes
        /// - all four operands and the three results the same shape
        fn adamw_update(
            param: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            moment_1: FloatTensor<Self>,
            moment_2: FloatTensor<Self>,
            step: AdamWStep,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            update_with_ops::<Self>(param, grad, moment_1, moment_2, step)
        }
    }
}

/// The update written with backend operations, in the order of Burn's AdamW.
fn update_with_ops<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    s: AdamWStep,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let scalar = |x: f32| (x as f64).into();
    let m = B::float_add(
        B::float_mul_scalar(m, scalar(s.beta_1)),
        B::float_mul_scalar(grad.clone(), scalar(1.0 - s.beta_1)),
    );
    let squared = B::float_mul(grad.clone(), grad);
    let v = B::float_add(
        B::float_mul_scalar(v, scalar(s.beta_2)),
        B::float_mul_scalar(squared, scalar(1.0 - s.beta_2)),
    );
    let (c1, c2) = s.corrections();
    let m_hat = B::float_div_scalar(m.clone(), scalar(c1));
    let v_hat = B::float_div_scalar(v.clone(), scalar(c2));
    let denom = B::float_add_scalar(B::float_sqrt(v_hat), scalar(s.epsilon));
    let delta = B::float_div(m_hat, denom);
    let param = match s.keep() {
        Some(keep) => B::float_mul_scalar(param, scalar(keep)),
        None => param,
    };
    let param = B::float_sub(
        param,
        B::float_mul_scalar(delta, (s.lr as f32 as f64).into()),
    );
    (param, m, v)
}

#[cfg(feature = "flex")]
impl AdamWBackend for burn::backend::Flex {
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        match crate::cpu::flex::adamw(param, grad, moment_1, moment_2, step) {
            Ok(updated) => updated,
            Err(operands) => {
                let (p, g, m, v) = *operands;
                update_with_ops::<Self>(p, g, m, v, step)
            }
        }
    }
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl AdamWBackend for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl AdamWBackend for burn::backend::Cube {}

impl<B: Backend, C: CheckpointStrategy> AdamWBackend for Autodiff<B, C> {}

/// AdamW (Loshchilov & Hutter) as Burn's `AdamWConfig` builds it without AMSGrad, cautious
/// decay or gradient clipping, the update fused per parameter (module docs).
#[derive(Clone, Debug)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl FusedAdamW {
    /// Burn's AdamW defaults (`beta_1` 0.9, `beta_2` 0.999, `epsilon` 1e-5) with this weight
    /// decay.
    pub fn new(weight_decay: f32) -> Self {
        FusedAdamW {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay,
        }
    }

    /// The same with another `epsilon`.
    pub fn with_epsilon(self, epsilon: f32) -> Self {
        FusedAdamW { epsilon, ..self }
    }

    /// As a module optimizer (what the training loops step).
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (time, m, v) = match state {
            Some(s) => (
                s.momentum.time + 1,
                s.momentum.moment_1,
                s.momentum.moment_2,
            ),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let step = AdamWStep {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            lr,
            weight_decay: self.weight_decay,
            time: time as i32,
        };
        let (p, m, v) = <Dispatch as AdamWBackend>::adamw_update(
            tensor.into_dispatch(),
            grad.into_dispatch(),
            m.into_dispatch(),
            v.into_dispatch(),
            step,
        );
        let momentum =
            AdaptiveMomentumState::new(time, Tensor::from_dispatch(m), Tensor::from_dispatch(v));
        (Tensor::from_dispatch(p), Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::Distribution;

    /// A few steps of `optim` on a linear layer (a weight large enough for the parallel pass,
    /// and a small bias) with fixed data.
    fn train(mut optim: ModuleOptimizer, model: Linear, x: &Tensor<2>, steps: usize) -> Linear {
        train_with(&mut optim, model, x, steps)
    }

    fn train_with(
        optim: &mut ModuleOptimizer,
        mut model: Linear,
        x: &Tensor<2>,
        steps: usize,
    ) -> Linear {
        for _ in 0..steps {
            let loss = model.forward(x.clone()).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        model
    }

    fn max_diff(a: &Linear, b: &Linear) -> f32 {
        let w = (a.weight.val() - b.weight.val())
            .abs()
            .max()
            .into_scalar::<f32>();
        let bias = (a.bias.as_ref().unwrap().val() - b.bias.as_ref().unwrap().val())
            .abs()
            .max()
            .into_scalar::<f32>();
        w.max(bias)
    }

    #[test]
    fn equals_burns_adamw() {
        let device = crate::backend::cpu_device().autodiff();
        let model = LinearConfig::new(96, 200).init(&device);
        let x = Tensor::<2>::random([8, 96], Distribution::Normal(0.0, 1.0), &device);
        for decay in [0.0, 0.05] {
            let ours = train(FusedAdamW::new(decay).init(), model.clone(), &x, 4);
            let burns = AdamWConfig::new().with_weight_decay(decay).init();
            let burns = train(burns, model.clone(), &x, 4);
            assert!(
                max_diff(&ours, &model) > 1e-3,
                "the steps moved the weights"
            );
            assert!(max_diff(&ours, &burns) <= 1e-6, "weight decay {decay}");
        }
    }

    /// The state is Burn's: a checkpoint of Burn's AdamW resumes under the fused one.
    #[test]
    fn resumes_from_burns_adamw_state() {
        let device = crate::backend::cpu_device().autodiff();
        let model = LinearConfig::new(32, 40).init(&device);
        let x = Tensor::<2>::random([4, 32], Distribution::Normal(0.0, 1.0), &device);
        let burns = || AdamWConfig::new().with_weight_decay(0.05).init();
        let mut first = burns();
        let halfway = train_with(&mut first, model.clone(), &x, 2);
        let mut fused = FusedAdamW::new(0.05).init();
        fused = fused.load_record(first.to_record());
        let resumed = train_with(&mut fused, halfway, &x, 2);
        let straight = train(burns(), model, &x, 4);
        assert!(max_diff(&resumed, &straight) <= 1e-6);
    }

    #[cfg(feature = "flex")]
    #[test]
    fn generic_ops_equal_the_fused_pass() {
        use burn::backend::Flex;
        use burn::backend::flex::FlexTensor;
        let device = crate::backend::cpu_device();
        let t = |mean: f64, abs: bool| {
            let t = Tensor::<1>::random([50_000], Distribution::Normal(mean, 1.0), &device);
            FlexTensor::from_data(if abs { t.abs() } else { t }.into_data())
        };
        let step = AdamWStep {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            lr: 3e-3,
            weight_decay: 0.05,
            time: 3,
        };
        let (p, g, m, v) = (t(0.5, false), t(-0.2, false), t(0.1, false), t(0.0, true));
        let fused =
            <Flex as AdamWBackend>::adamw_update(p.clone(), g.clone(), m.clone(), v.clone(), step);
        let ops = update_with_ops::<Flex>(p, g, m, v, step);
        for (a, b) in [(fused.0, ops.0), (fused.1, ops.1), (fused.2, ops.2)] {
            a.into_data().assert_eq(&b.into_data(), true);
        }
    }
}
