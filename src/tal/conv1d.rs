//! The head's 1-D convolutions on the CPU backend as shifted views: a dense convolution as one
//! matrix product over its `K` shifted copies of the input stacked along the channels, a
//! depthwise one as `K` broadcast multiply-adds. The backend's own `conv1d` computes the same
//! sums, but on the CPU its weight gradient runs as a convolution whose output has `K` rows
//! (the kernel taps): a product one row high, half the head's backward pass in a profile of the
//! main job. As views and products, autodiff differentiates through operations the CPU backend
//! runs at full rate. Other backends, dilations and layouts keep the backend's convolution.

use burn::nn::PaddingConfig1d;
use burn::nn::conv::Conv1d;
use burn::tensor::Tensor;

/// `conv` on `x`, as [`Conv1d::forward`] computes it.
///
/// # Shapes
/// - x: `[B, C_in, T]` -> `[B, C_out, T_out]`
pub fn conv1d(conv: &Conv1d, x: Tensor<3>) -> Tensor<3> {
    match Shifted::of(conv, &x) {
        Some(s) => s.forward(conv, x),
        None => conv.forward(x),
    }
}

/// `w x` for each of the batch's `[K, T]` matrices: with one (a step of one video) through the
/// crate's threaded product (`precision::affine`, both gradients included), which the head's
/// small products (a few million multiply-adds) leave on one thread otherwise; else Burn's
/// batched product.
///
/// # Shapes
/// - w: `[O, K]`, x: `[B, K, T]` -> `[B, O, T]`
pub(crate) fn product(w: Tensor<2>, x: Tensor<3>) -> Tensor<3> {
    let [b, k, t] = x.dims();
    let o = w.dims()[0];
    if b == 1 && crate::backend::is_cpu(&x.device()) {
        return crate::precision::affine(w, x.reshape([k, t]), None).reshape([1, o, t]);
    }
    w.unsqueeze_dim::<3>(0).matmul(x)
}

/// A convolution the shifted form covers: odd kernel, symmetric `kernel / 2` padding, no
/// dilation, dense or depthwise, a stride dividing the length, on the CPU backend.
struct Shifted {
    kernel: usize,
    stride: usize,
    depthwise: bool,
}

impl Shifted {
    fn of(conv: &Conv1d, x: &Tensor<3>) -> Option<Shifted> {
        let k = conv.kernel_size;
        let [_, cin, t] = x.dims();
        let [cout, per_group, _] = conv.weight.dims();
        let padded = matches!(conv.padding, PaddingConfig1d::Explicit(l, r) if l == k / 2 && r == k / 2)
            || (k == 1 && matches!(conv.padding, PaddingConfig1d::Valid));
        let depthwise = conv.groups == cin && cout == cin && per_group == 1;
        let covered = k % 2 == 1
            && padded
            && conv.dilation == 1
            && (conv.groups == 1 || depthwise)
            && conv.stride >= 1
            && t % conv.stride == 0
            && crate::backend::is_cpu(&x.device());
        covered.then_some(Shifted {
            kernel: k,
            stride: conv.stride,
            depthwise: depthwise && conv.groups > 1,
        })
    }

    fn forward(&self, conv: &Conv1d, x: Tensor<3>) -> Tensor<3> {
        let [b, c, t] = x.dims();
        let k = self.kernel;
        let x = match k / 2 {
            0 => x,
            p => {
                let zeros = Tensor::<3>::zeros([b, c, p], &x.device());
                Tensor::cat(vec![zeros.clone(), x, zeros], 2)
            }
        };
        let taps = (0..k).map(|j| x.clone().narrow(2, j, t));
        let w = conv.weight.val();
        let cout = w.dims()[0];
        let y = if self.depthwise {
            // y[c, t] = sum_j w[c, 0, j] x[c, t + j - k / 2]
            taps.enumerate()
                .map(|(j, tap)| tap * w.clone().narrow(2, j, 1).reshape([1, c, 1]))
                .reduce(|a, b| a + b)
                .expect("an odd kernel has a tap")
        } else {
            // Stacked taps [B, K C, T] against the weight as [C_out, K C] (tap-major columns).
            let cols = Tensor::cat(taps.collect(), 1);
            product(w.swap_dims(1, 2).reshape([cout, k * c]), cols)
        };
        let y = match &conv.bias {
            Some(bias) => y + bias.val().reshape([1, cout, 1]),
            None => y,
        };
        match self.stride {
            1 => y,
            s => y
                .reshape([b, cout, t / s, s])
                .narrow(3, 0, 1)
                .reshape([b, cout, t / s]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv1dConfig;
    use burn::tensor::Distribution;

    fn rel(a: Tensor<3>, b: Tensor<3>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-12);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// Outputs and the gradients of input, weight and bias against the backend's convolution,
    /// dense and depthwise, strides 1 and 2, kernels 1, 3 and 5, with and without bias.
    #[test]
    fn shifted_convolutions_equal_the_backend_convolution_with_gradients() {
        let device = crate::backend::cpu_device().autodiff();
        for (cin, cout, groups) in [(6, 10, 1), (8, 8, 8), (5, 5, 1)] {
            for k in [1, 3, 5] {
                for stride in [1, 2] {
                    for bias in [true, false] {
                        let conv = Conv1dConfig::new(cin, cout, k)
                            .with_stride(stride)
                            .with_padding(PaddingConfig1d::Explicit(k / 2, k / 2))
                            .with_groups(groups)
                            .with_bias(bias)
                            .init(&device);
                        let x0 = Tensor::<3>::random([2, cin, 12], Distribution::Default, &device);
                        let w = Tensor::<3>::random(
                            [2, cout, 12 / stride],
                            Distribution::Default,
                            &device,
                        );
                        let run = |fast: bool| {
                            let x = x0.clone().detach().require_grad();
                            let y = match fast {
                                true => conv1d(&conv, x.clone()),
                                false => conv.forward(x.clone()),
                            };
                            let g = (y.clone() * w.clone()).sum().backward();
                            let dw = conv.weight.val().grad(&g).unwrap();
                            let db = conv.bias.as_ref().map(|b| b.val().grad(&g).unwrap());
                            (y, x.grad(&g).unwrap(), dw, db)
                        };
                        assert!(Shifted::of(&conv, &x0).is_some());
                        let (ya, dxa, dwa, dba) = run(true);
                        let (yb, dxb, dwb, dbb) = run(false);
                        let what = format!(
                            "cin {cin} cout {cout} groups {groups} k {k} stride {stride} bias {bias}"
                        );
                        assert!(rel(ya, yb) < 1e-6, "output, {what}");
                        assert!(rel(dxa, dxb) < 1e-6, "input gradient, {what}");
                        assert!(rel(dwa, dwb) < 1e-6, "weight gradient, {what}");
                        if let (Some(a), Some(b)) = (dba, dbb) {
                            let (a, b) = (a.reshape([1, 1, cout]), b.reshape([1, 1, cout]));
                            assert!(rel(a, b) < 1e-6, "bias gradient, {what}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn products_equal_the_batched_product_with_gradients() {
        let device = crate::backend::cpu_device().autodiff();
        for (b, o, k, t) in [(1, 128, 384, 90), (1, 3, 5, 7), (3, 4, 6, 5)] {
            let w0 = Tensor::<2>::random([o, k], Distribution::Default, &device);
            let x0 = Tensor::<3>::random([b, k, t], Distribution::Default, &device);
            let up = Tensor::<3>::random([b, o, t], Distribution::Default, &device);
            let run = |fast: bool| {
                let (w, x) = (w0.clone().require_grad(), x0.clone().require_grad());
                let y = match fast {
                    true => product(w.clone(), x.clone()),
                    false => w.clone().unsqueeze_dim::<3>(0).matmul(x.clone()),
                };
                let g = (y.clone() * up.clone()).sum().backward();
                let dw = w.grad(&g).unwrap().unsqueeze_dim::<3>(0);
                (y, x.grad(&g).unwrap(), dw)
            };
            let (ya, dxa, dwa) = run(true);
            let (yb, dxb, dwb) = run(false);
            assert!(rel(ya, yb) < 1e-6, "output {b} {o} {k} {t}");
            assert!(rel(dxa, dxb) < 1e-6, "x gradient {b} {o} {k} {t}");
            assert!(rel(dwa, dwb) < 1e-6, "w gradient {b} {o} {k} {t}");
        }
    }

    #[test]
    fn uncovered_convolutions_keep_the_backend_convolution() {
        let device = crate::backend::cpu_device();
        let x = Tensor::<3>::zeros([1, 4, 9], &device);
        let dilated = Conv1dConfig::new(4, 4, 3)
            .with_dilation(2)
            .with_padding(PaddingConfig1d::Explicit(2, 2))
            .init(&device);
        let odd_stride = Conv1dConfig::new(4, 4, 3)
            .with_stride(2)
            .with_padding(PaddingConfig1d::Explicit(1, 1))
            .init(&device);
        let grouped = Conv1dConfig::new(4, 4, 3)
            .with_groups(2)
            .with_padding(PaddingConfig1d::Explicit(1, 1))
            .init(&device);
        for c in [&dilated, &odd_stride, &grouped] {
            assert!(Shifted::of(c, &x).is_none());
            assert_eq!(conv1d(c, x.clone()).dims(), c.forward(x.clone()).dims());
        }
    }
}
