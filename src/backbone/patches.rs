//! Patch embedding (a `Conv3d` whose kernel equals its stride) as one matrix product: the clip
//! cut into non-overlapping patches, `[patches, C kt kh kw]`, times the kernel as a
//! `[C kt kh kw, D]` matrix. The values are the convolution's (the same sums in another order);
//! the product runs on every core through the linear layers' path (`precision::affine`), where
//! the CPU backend's convolution runs on one thread (it was a fifth of the main thread's time in
//! the main job).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, ExtensionType, Shape, TensorMetadata};
use burn::nn::PaddingConfig3d;
use burn::nn::conv::Conv3d;
use burn::tensor::Tensor;

use crate::precision::affine;

backend_extension! {
    /// Clips cut into patch rows as a backend extension: one gather pass on the CPU backend
    /// (`crate::cpu::patches`), the backend's reshape, permute and reshape elsewhere; under
    /// autodiff one operation whose backward puts the rows' gradients back in place.
    pub trait PatchBackend: Backend {
        /// The patches of `x` for the kernel (= stride) of `i`, one row per patch.
        ///
        /// # Shapes
        /// - x `[N, C, T, H, W]`, each of `T, H, W` a multiple of the kernel's ->
        ///   `[N T' H' W', C kt kh kw]`, rows in `(n, t', h', w')` order, columns in
        ///   `(c, kt, kh, kw)` order (a `Conv3d` weight's flattening)
        fn patchify(#[extension_type] i: PatchInputs<Self>) -> FloatTensor<Self> {
            let k = i.kernel();
            patchify_ops::<Self>(i.x, k)
        }
    }
}

/// One [`PatchBackend::patchify`] call's operands.
#[derive(ExtensionType, Clone, Debug)]
pub struct PatchInputs<B: Backend> {
    /// Clips, `[N, C, T, H, W]`.
    pub x: FloatTensor<B>,
    /// Kernel (= stride) along time.
    pub kt: usize,
    /// Kernel along height.
    pub kh: usize,
    /// Kernel along width.
    pub kw: usize,
}

impl<B: Backend> PatchInputs<B> {
    fn kernel(&self) -> [usize; 3] {
        [self.kt, self.kh, self.kw]
    }
}

/// `x` (`[N, C, T, H, W]`) seen as `[N, C, T', kt, H', kh, W', kw]`.
fn split_shape(x: &Shape, [kt, kh, kw]: [usize; 3]) -> [usize; 8] {
    let [n, c, t, h, w] = std::array::from_fn(|i| x[i]);
    [n, c, t / kt, kt, h / kh, kh, w / kw, kw]
}

/// [`PatchBackend::patchify`] from the backend's reshape and permute.
fn patchify_ops<B: Backend>(x: FloatTensor<B>, k: [usize; 3]) -> FloatTensor<B> {
    let s = split_shape(&x.shape(), k);
    let x = B::float_reshape(x, Shape::from(s));
    let x = B::float_permute(x, &[0, 2, 4, 6, 1, 3, 5, 7]);
    B::float_reshape(
        x,
        Shape::from([s[0] * s[2] * s[4] * s[6], s[1] * s[3] * s[5] * s[7]]),
    )
}

/// The inverse of [`patchify_ops`]: patch rows of a `split`-shaped clip batch back to
/// `[N, C, T, H, W]`.
fn unpatchify<B: Backend>(rows: FloatTensor<B>, split: [usize; 8]) -> FloatTensor<B> {
    let [n, c, to, kt, ho, kh, wo, kw] = split;
    let x = B::float_reshape(rows, Shape::from([n, to, ho, wo, c, kt, kh, kw]));
    let x = B::float_permute(x, &[0, 4, 1, 5, 2, 6, 3, 7]);
    B::float_reshape(x, Shape::from([n, c, to * kt, ho * kh, wo * kw]))
}

#[cfg(feature = "flex")]
impl PatchBackend for burn::backend::Flex {
    fn patchify(i: PatchInputs<Self>) -> FloatTensor<Self> {
        let k = i.kernel();
        crate::cpu::flex::patchify(&i.x, k).unwrap_or_else(|| patchify_ops::<Self>(i.x, k))
    }
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl PatchBackend for burn::backend::NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl PatchBackend for burn::backend::Cube {}

#[derive(Debug)]
struct PatchOp;

impl<B: Backend> Backward<B, 1> for PatchOp {
    /// The input seen as `[N, C, T', kt, H', kh, W', kw]`.
    type State = [usize; 8];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let split = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| unpatchify::<B>(g, split));
    }
}

impl<B: Backend + PatchBackend, C: CheckpointStrategy> PatchBackend for Autodiff<B, C> {
    fn patchify(i: PatchInputs<Self>) -> FloatTensor<Self> {
        let k = i.kernel();
        let prep = PatchOp
            .prepare::<C>([i.x.node()])
            .compute_bound()
            .stateful();
        let split = split_shape(&i.x.shape(), k);
        let x = i.x.into_primitive();
        let inner = |x| {
            let [kt, kh, kw] = k;
            B::patchify(PatchInputs { x, kt, kh, kw })
        };
        match prep {
            OpsKind::Tracked(prep) => prep.finish(split, inner(x)),
            OpsKind::UnTracked(prep) => prep.finish(inner(x)),
        }
    }
}

/// `x`'s patches for the kernel (= stride) `k`, one row each ([`PatchBackend::patchify`]).
///
/// # Shapes
/// - x `[N, C, T, H, W]`, each of `T, H, W` a multiple of `k`'s -> `[N T' H' W', C kt kh kw]`
fn patchify(x: Tensor<5>, [kt, kh, kw]: [usize; 3]) -> Tensor<2> {
    let inputs = PatchInputs {
        x: x.into_dispatch(),
        kt,
        kh,
        kw,
    };
    Tensor::from_dispatch(<Dispatch as PatchBackend>::patchify(inputs))
}

/// Whether the convolution is a patch embedding: kernel = stride, no padding or dilation, one
/// group.
fn is_patchify(conv: &Conv3d) -> bool {
    let unpadded = match &conv.padding {
        PaddingConfig3d::Valid => true,
        PaddingConfig3d::Explicit(a, b, c) => [*a, *b, *c] == [0, 0, 0],
        _ => false,
    };
    unpadded && conv.stride == conv.kernel_size && conv.dilation == [1, 1, 1] && conv.groups == 1
}

/// `conv(x)` channels-last; a patch embedding runs as one product (module docs), any other
/// convolution as itself.
///
/// # Shapes
/// - x: `[N, C, T, H, W]` -> `[N, T', H', W', D]` (`T' = T / kt` rounded down, and so on)
pub fn patch_embedding(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    if !is_patchify(conv) {
        return conv.forward(x).permute([0, 2, 3, 4, 1]);
    }
    let [n, c, t, h, w] = x.dims();
    let [kt, kh, kw] = conv.kernel_size;
    let (to, ho, wo) = (t / kt, h / kh, w / kw);
    let x = if (to * kt, ho * kh, wo * kw) != (t, h, w) {
        x.slice([0..n, 0..c, 0..to * kt, 0..ho * kh, 0..wo * kw])
    } else {
        x
    };
    let patches = patchify(x, [kt, kh, kw]);
    let weight = conv.weight.val();
    let d = weight.dims()[0];
    let kernel = weight.reshape([d, c * kt * kh * kw]).transpose();
    let bias = conv.bias.as_ref().map(|b| b.val());
    affine(patches, kernel, bias).reshape([n, to, ho, wo, d])
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv3dConfig;
    use burn::tensor::Distribution;

    use super::*;

    /// Values and every gradient equal the convolution's, with sizes that leave a remainder.
    #[test]
    fn equals_the_convolution_with_its_gradients() {
        let device = crate::backend::device_from_env()
            .expect("E2E_TAL_BACKEND names a compiled-in backend")
            .autodiff();
        for (bias, size) in [(true, [5, 17, 18]), (false, [4, 16, 16])] {
            let conv = Conv3dConfig::new([3, 24], [2, 4, 4])
                .with_stride([2, 4, 4])
                .with_bias(bias)
                .init(&device);
            let [t, h, w] = size;
            let x = Tensor::<5>::random([2, 3, t, h, w], Distribution::Default, &device);
            let (xa, xb) = (x.clone().require_grad(), x.require_grad());
            let ya = patch_embedding(&conv, xa.clone());
            let yb = conv.forward(xb.clone()).permute([0, 2, 3, 4, 1]);
            assert_eq!(ya.dims(), yb.dims());
            let wts = Tensor::<5>::random(ya.dims(), Distribution::Default, &device);
            let rel = |a: Tensor<5>, b: Tensor<5>| {
                let s = b.clone().abs().max().into_scalar::<f32>();
                (a - b).abs().max().into_scalar::<f32>() / s
            };
            assert!(rel(ya.clone(), yb.clone()) < 1e-5, "forward");
            let (ga, gb) = (
                (ya * wts.clone()).sum().backward(),
                (yb * wts).sum().backward(),
            );
            assert!(
                rel(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap()) < 1e-5,
                "input"
            );
            let gw = |g| conv.weight.val().grad(g).unwrap();
            assert!(rel(gw(&ga), gw(&gb)) < 1e-5, "weight");
            if let Some(b) = &conv.bias {
                let gbias = |g| b.val().grad(g).unwrap().reshape([1, 1, 1, 1, 24]);
                assert!(rel(gbias(&ga), gbias(&gb)) < 1e-5, "bias");
            }
        }
    }

    /// The patch rows are the clip's elements moved, exactly: the same as the tensor
    /// operations' reshape and permute, for an input with and without a graph, contiguous and
    /// a cropped view.
    #[test]
    fn patch_rows_equal_the_reshape_and_permute() {
        let device = crate::backend::device_from_env()
            .expect("E2E_TAL_BACKEND names a compiled-in backend")
            .autodiff();
        let x = Tensor::<5>::random([2, 3, 7, 12, 18], Distribution::Default, &device);
        for (crop, k) in [
            ([2, 3, 6, 12, 18], [2, 4, 6]),
            ([2, 3, 4, 8, 15], [2, 8, 5]),
        ] {
            let [n, c, t, h, w] = crop;
            let view = x.clone().slice([0..n, 0..c, 0..t, 0..h, 0..w]);
            let [kt, kh, kw] = k;
            let want = view
                .clone()
                .reshape([n, c, t / kt, kt, h / kh, kh, w / kw, kw])
                .permute([0, 2, 4, 6, 1, 3, 5, 7])
                .reshape([n * (t / kt) * (h / kh) * (w / kw), c * kt * kh * kw])
                .into_data();
            for input in [view.clone(), view.clone().require_grad()] {
                let tracked = input.is_tracked();
                let got = patchify(input, k);
                assert_eq!(got.is_tracked(), tracked);
                assert_eq!(got.into_data(), want, "{crop:?} tracked {tracked}");
            }
        }
    }
}
