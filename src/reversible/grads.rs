//! Merging parameter gradients of several backward passes into one `GradientsParams`.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

struct Merge<'a> {
    src: &'a mut GradientsParams,
    dst: &'a mut GradientsParams,
}

impl ModuleVisitor for Merge<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let id = param.id;
        if let Some(g) = self.src.remove::<D>(id) {
            let g = match self.dst.remove::<D>(id) {
                Some(prev) => prev + g,
                None => g,
            };
            self.dst.register(id, g);
        }
    }
}

/// Move the gradients of `module`'s parameters from `src` into `dst`, adding to any gradient
/// `dst` already holds for the same parameter.
pub fn merge_grads<M: Module>(module: &M, src: &mut GradientsParams, dst: &mut GradientsParams) {
    module.visit(&mut Merge { src, dst });
}
