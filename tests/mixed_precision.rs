//! Mixed precision (bf16 / f16 residual branches, exact streams, f32 master weights): gradients
//! against f32, the reversible pass against autodiff in the same precision, and reconstruction.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Distribution, Tensor};
use e2e_tal::backbone::swin::SwinConfig;
use e2e_tal::backbone::vit::{VisionTransformer, VitConfig};
use e2e_tal::precision::{Precision, autocast};
use e2e_tal::reversible::{ResidualBlock, RevChain};

const SEEDS: u64 = 6;

// Counts live bytes, for the saved-graph test below.
#[global_allocator]
static ALLOC: e2e_tal::memory::CountingAllocator = e2e_tal::memory::CountingAllocator;

fn device() -> burn::tensor::Device {
    e2e_tal::backend::cpu_device()
}

/// Global relative L2 error of `got` against `want`, over every parameter of `module`.
struct L2<'a> {
    want: &'a GradientsParams,
    got: &'a GradientsParams,
    diff: f64,
    norm: f64,
    count: usize,
}

impl ModuleVisitor for L2<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let (Some(w), Some(g)) = (self.want.get::<D>(param.id), self.got.get::<D>(param.id)) {
            assert_eq!(g.dtype(), DType::F32, "master-weight gradients are f32");
            self.diff += (g - w.clone()).square().sum().into_scalar::<f64>();
            self.norm += w.square().sum().into_scalar::<f64>();
            self.count += 1;
        }
    }
}

fn rel_l2<M: Module>(module: &M, want: &GradientsParams, got: &GradientsParams) -> f64 {
    let mut v = L2 {
        want,
        got,
        diff: 0.0,
        norm: 0.0,
        count: 0,
    };
    module.visit(&mut v);
    assert!(v.count > 0);
    (v.diff / v.norm.max(1e-30)).sqrt()
}

fn rel_max<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f64 {
    let scale = b.clone().abs().max().into_scalar::<f64>();
    (a - b).abs().max().into_scalar::<f64>() / scale.max(1e-30)
}

fn vit(depth: usize) -> VisionTransformer {
    VitConfig::new()
        .with_embed_dim(64)
        .with_depth(depth)
        .with_num_heads(4)
        .with_mlp_dim(128)
        .with_drop_path_rate(0.2)
        .init(&device().autodiff())
}

/// Gradients of `sum(chain(x) * w)` through the rewired chain: ordinary autodiff, then the
/// reversible backward; returns them with the reconstructed input.
fn rewired_grads<const D: usize, M>(
    blocks: &Vec<M>,
    x0: Tensor<D>,
    w: Tensor<D>,
) -> (GradientsParams, GradientsParams, Tensor<D>)
where
    M: ResidualBlock<D> + Module,
{
    let rev = RevChain::new(blocks.as_slice()).with_drop_path_seed(7);
    let y = rev.forward(x0.clone().autodiff().require_grad());
    let mut g = (y * w.clone().autodiff()).sum().backward();
    let autodiff = GradientsParams::from_module(&mut g, blocks);
    let (out, state) = rev.forward_no_graph(x0);
    let g = (out.clone() * w.autodiff()).sum().backward();
    let (_, reversible, x_rec) = rev.backward(state, out.grad(&g).unwrap());
    (autodiff, reversible, x_rec)
}

/// Unit roundoff of the branches' precision.
fn unit(p: Precision) -> f64 {
    match p {
        Precision::F32 => f64::from(f32::EPSILON) / 2.0,
        Precision::Bf16 => 2f64.powi(-8),
        Precision::F16 => 2f64.powi(-11),
    }
}

/// One test at a time: the parameters come from the device's shared generator.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn reversible_mixed_precision_equals_its_autodiff_and_reconstructs_exactly() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for seed in 0..SEEDS {
        device().seed(seed);
        // 24 blocks (48 branches), drop path on.
        let m = vit(24);
        let x = Tensor::<3>::random([2, 49, 64], Distribution::Normal(0.0, 1.0), &device());
        let w = Tensor::<3>::random([2, 49, 64], Distribution::Normal(0.0, 1.0), &device());
        let (f32_ref, _, _) = rewired_grads(&m.blocks, x.clone(), w.clone());
        for p in [Precision::Bf16, Precision::F16] {
            let (autodiff, reversible, x_rec) =
                autocast(p, || rewired_grads(&m.blocks, x.clone(), w.clone()));
            let grads = rel_l2(&m.blocks, &autodiff, &reversible);
            let drift = rel_max(x_rec, x.clone());
            let vs_f32 = rel_l2(&m.blocks, &f32_ref, &autodiff);
            let u = unit(p);
            println!(
                "seed {seed} {p}: reversible vs autodiff {:.2}u, drift {drift:.1e}, autodiff vs \
                 f32 {:.2}u",
                grads / u,
                vs_f32 / u
            );
            // The reversible pass recomputes each branch bit for bit from an exactly
            // reconstructed input; what differs from autodiff is the order and width in which
            // the streams' gradients add up (f32 here, f64 there), which the low-precision
            // branches round to their own unit u: measured 0.3-0.8u over 6 seeds.
            assert!(grads <= 2.0 * u, "{p}: reversible vs autodiff {grads:e}");
            // Exact streams: reconstruction is bit for bit (pure bf16 drifts by ~2e-2 here).
            assert!(drift <= 1e-5, "{p}: drift {drift:e}");
            // Against f32: every branch rounds its input, weights and products to u; measured
            // 1.5-1.7u (relative L2 over all 24 blocks' gradients).
            assert!(vs_f32 <= 3.0 * u, "{p}: mixed precision vs f32 {vs_f32:e}");
        }
    }
}

#[test]
fn swin_windows_reconstruct_exactly_in_mixed_precision() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    device().seed(1);
    let m = SwinConfig::new()
        .with_embed_dim(16)
        .with_depths(vec![8])
        .with_num_heads(vec![2])
        .with_window_size([2, 2, 2])
        .with_drop_path_rate(0.2)
        .init(&device().autodiff());
    // [B, T, H, W, C] with padding (W = 3) and shifted windows (relative-position bias and
    // shift masks in f32, added to the f32 scores).
    let shape = [2, 2, 4, 3, 16];
    let x = Tensor::<5>::random(shape, Distribution::Normal(0.0, 1.0), &device());
    let w = Tensor::<5>::random(shape, Distribution::Normal(0.0, 1.0), &device());
    let blocks = &m.stages[0].blocks;
    let (f32_ref, _, _) = rewired_grads(blocks, x.clone(), w.clone());
    for p in [Precision::Bf16, Precision::F16] {
        let (autodiff, reversible, x_rec) =
            autocast(p, || rewired_grads(blocks, x.clone(), w.clone()));
        let u = unit(p);
        let grads = rel_l2(blocks, &autodiff, &reversible);
        let vs_f32 = rel_l2(blocks, &f32_ref, &autodiff);
        let drift = rel_max(x_rec, x.clone());
        println!(
            "swin {p}: reversible vs autodiff {:.2}u, drift {drift:.1e}, vs f32 {:.2}u",
            grads / u,
            vs_f32 / u
        );
        assert!(grads <= 2.0 * u && vs_f32 <= 3.0 * u && drift <= 1e-5);
    }
}

#[test]
fn losa_adapters_in_mixed_precision_follow_f32() {
    use e2e_tal::adapter::{LosaConfig, LosaInput};
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let ad = device().autodiff();
    device().seed(3);
    // Random output projections and open gates, so every adapter parameter has a gradient.
    let losa = LosaConfig::new(32, vec![16, 24])
        .with_num_heads(4)
        .with_max_tokens(24)
        .with_zero_init_output(false)
        .init(&ad)
        .unwrap();
    let n = 6;
    let x = LosaInput {
        features: Tensor::random([n, 32], Distribution::Normal(0.0, 1.0), &ad),
        layers: [16, 24]
            .map(|c| Tensor::random([n, 30, c], Distribution::Normal(1.0, 2.0), &ad))
            .to_vec(),
        // The last clip is padding.
        valid: Tensor::from_data(
            burn::tensor::TensorData::new((0..n).map(|i| i < n - 1).collect::<Vec<_>>(), [n]),
            &ad,
        ),
    };
    let w = Tensor::<2>::random([n, 32], Distribution::Normal(0.0, 1.0), &ad);
    let grads = |x: LosaInput| {
        let y = losa.forward(x).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        let mut g = (y * w.clone()).sum().backward();
        GradientsParams::from_module(&mut g, &losa)
    };
    let f32_ref = grads(x.clone());
    for p in [Precision::Bf16, Precision::F16] {
        // Layers as the training run caches them: in the low precision.
        let low = LosaInput {
            layers: x.layers.iter().map(|t| t.clone().cast(p.dtype())).collect(),
            ..x.clone()
        };
        let got = autocast(p, || grads(low));
        let err = rel_l2(&losa, &f32_ref, &got);
        println!("losa {p}: vs f32 {:.2}u", err / unit(p));
        // Inputs, weights and products rounded to u, the norms' statistics and the softmax in
        // f32, as for the backbone's branches.
        assert!(err <= 3.0 * unit(p), "{p}: adapters vs f32 {err:e}");
        // And they do compute in it (all in f32 would agree to ~1e-7).
        assert!(
            err >= 0.1 * unit(p),
            "{p}: adapters computed in f32? {err:e}"
        );
    }
}

#[test]
fn mixed_precision_halves_the_saved_graph() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let ad = device().autodiff();
    device().seed(5);
    let m = VitConfig::new()
        .with_embed_dim(128)
        .with_depth(4)
        .with_num_heads(4)
        .with_mlp_dim(512)
        .init(&ad);
    let _ = m.blocks.clone().valid(); // parameters materialised outside the measurement
    let x = Tensor::<3>::random([1, 196, 128], Distribution::Normal(0.0, 1.0), &ad);
    // Bytes the graph holds between the forward through the blocks and its backward.
    let held = |p: Precision| {
        autocast(p, || {
            let x = x.clone().require_grad();
            let before = e2e_tal::memory::in_use_on(&ad).expect("counting allocator");
            let y = m.blocks.iter().fold(x, |h, b| b.forward(h));
            let held = e2e_tal::memory::in_use_on(&ad).unwrap() - before;
            let _ = y.sum().backward();
            held as f64
        })
    };
    // Each measured after a warm-up run (thread pools and scratch buffers allocated once).
    let warm = |p: Precision| {
        held(p);
        held(p)
    };
    let f32_bytes = warm(Precision::F32);
    for p in [Precision::Bf16, Precision::F16] {
        let ratio = warm(p) / f32_bytes;
        println!(
            "{p}: saved graph {ratio:.3}x f32 ({:.1} KiB in f32)",
            f32_bytes / 1024.0
        );
        // Every saved tensor is in the 2-byte precision except the softmax's row log-sum-exp
        // and the norms' row statistics (f32, one value per row): no f32 input copies, no
        // low-precision weight copies.
        assert!(ratio <= 0.55, "{p}: saved graph {ratio:.3}x f32");
    }
}
