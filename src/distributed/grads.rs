//! Gradients summed over the ranks: packed into one host buffer in the modules' parameter order
//! (the same on every rank), summed in large buckets by the [`Collective`](super::Collective),
//! unpacked. Gradients move through host memory, so any backend works.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

use super::Ranks;

/// Gradients of several modules, packed for one sum over the ranks.
///
/// Each float parameter of a packed module takes its element count in the buffer (zeros where
/// this rank has no gradient for it) and one presence count, so a parameter that no rank's
/// videos reached stays without a gradient, as in one process (the optimizer then leaves it
/// alone), and a rank with no video in a step contributes nothing.
#[derive(Default)]
pub struct GradSum {
    values: Vec<f32>,
    present: Vec<f32>,
    /// Entries handed out by [`GradSum::unpack`] so far.
    taken: usize,
    entries: Vec<Entry>,
}

struct Entry {
    offset: usize,
    len: usize,
}

impl GradSum {
    /// An empty pack.
    pub fn new() -> GradSum {
        GradSum::default()
    }

    /// Append the gradients in `grads` of `module`'s float parameters, in its visiting order
    /// (`None`: this rank has none, every parameter counts as absent).
    pub fn pack<M: Module>(&mut self, module: &M, grads: Option<&GradientsParams>) {
        self.values.reserve(module.num_params());
        module.visit(&mut Pack { sum: self, grads });
    }

    /// Number of floats one sum moves.
    pub fn len(&self) -> usize {
        self.values.len() + self.present.len()
    }

    /// Nothing packed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Collective: sum the packed gradients over `ranks` (every rank packs the same modules).
    pub fn sum(&mut self, ranks: &Ranks) {
        if !ranks.is_distributed() {
            return;
        }
        ranks.collective().sum_f32(&mut self.values);
        ranks.collective().sum_f32(&mut self.present);
    }

    /// The summed gradients of `module`, which must be the next module in packing order.
    pub fn unpack<M: Module>(&mut self, module: &M) -> GradientsParams {
        let mut u = Unpack {
            sum: self,
            out: GradientsParams::new(),
        };
        module.visit(&mut u);
        u.out
    }
}

struct Pack<'a> {
    sum: &'a mut GradSum,
    grads: Option<&'a GradientsParams>,
}

impl ModuleVisitor for Pack<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let len = param.val().shape().num_elements();
        let offset = self.sum.values.len();
        match self.grads.and_then(|g| g.get::<D>(param.id)) {
            Some(g) => {
                let data = g.into_data().convert::<f32>();
                let v = data.as_slice::<f32>().expect("f32 after convert");
                debug_assert_eq!(v.len(), len);
                self.sum.values.extend_from_slice(v);
                self.sum.present.push(1.0);
            }
            None => {
                self.sum.values.resize(offset + len, 0.0);
                self.sum.present.push(0.0);
            }
        }
        self.sum.entries.push(Entry { offset, len });
    }
}

struct Unpack<'a> {
    sum: &'a mut GradSum,
    out: GradientsParams,
}

impl ModuleVisitor for Unpack<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let i = self.sum.taken;
        self.sum.taken += 1;
        if self.sum.present[i] > 0.0 {
            let e = &self.sum.entries[i];
            let value = param.val();
            let device = value.device().without_autodiff();
            let data = TensorData::new(
                self.sum.values[e.offset..e.offset + e.len].to_vec(),
                value.shape(),
            );
            register(
                &mut self.out,
                param.id,
                Tensor::<D>::from_data(data, &device),
            );
        }
    }
}

fn register<const D: usize>(out: &mut GradientsParams, id: ParamId, g: Tensor<D>) {
    out.register(id, g);
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Tensor};

    use super::super::{Ranks, test_ranks::Mirror};
    use super::GradSum;

    #[derive(Module, Debug)]
    struct Two {
        a: Linear,
        b: Linear,
    }

    #[test]
    fn packed_gradients_come_back_summed_and_absent_ones_stay_absent() {
        let device = Device::default().autodiff();
        let m = Two {
            a: LinearConfig::new(3, 2).init(&device),
            b: LinearConfig::new(2, 4).init(&device),
        };
        let x = Tensor::<2>::ones([5, 3], &device);
        let loss = m.a.forward(x).sum();
        let g = GradientsParams::from_grads(loss.backward(), &m);
        let mut pack = GradSum::new();
        pack.pack(&m, Some(&g));
        // a: 3x2 + 2, b: 2x4 + 4 floats; four presence counts.
        assert_eq!(pack.len(), 8 + 12 + 4);
        pack.sum(&Ranks::new(Mirror {
            rank: 1,
            size: 3,
            others: None,
        }));
        let summed = pack.unpack(&m);
        let w = summed
            .get::<2>(m.a.weight.id)
            .expect("a's weight has a gradient");
        let expected = g.get::<2>(m.a.weight.id).unwrap() * 3.0;
        w.into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
        assert!(
            summed.get::<2>(m.b.weight.id).is_none(),
            "b had no gradient"
        );
        assert_eq!(summed.len(), 2);
    }
}
