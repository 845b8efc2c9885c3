//! Patch embedding (a `Conv3d` whose kernel equals its stride) as one matrix product: the clip
//! cut into non-overlapping patches, `[patches, C kt kh kw]`, times the kernel as a
//! `[C kt kh kw, D]` matrix. The values are the convolution's (the same sums in another order);
//! the product runs on every core through the linear layers' path (`precision::affine`), where
//! the CPU backend's convolution runs on one thread (it was a fifth of the main thread's time in
//! the main job).

use burn::nn::PaddingConfig3d;
use burn::nn::conv::Conv3d;
use burn::tensor::Tensor;

use crate::precision::affine;

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
    let patches = x
        .reshape([n, c, to, kt, ho, kh, wo, kw])
        .permute([0, 2, 4, 6, 1, 3, 5, 7])
        .reshape([n * to * ho * wo, c * kt * kh * kw]);
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
}
