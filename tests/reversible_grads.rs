//! Re2TAL acceptance: the reversible backward's gradients equal ordinary autodiff through the
//! same rewired network (ViT, Swin and ResNet chains, depth 24, drop path active), and the
//! inverse reconstructs the chain's input.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};
use e2e_tal::backbone::Backbone;
use e2e_tal::backbone::resnet3d::{BasicBlock, ResNet3dConfig};
use e2e_tal::backbone::swin::{SwinBlock, SwinConfig};
use e2e_tal::backbone::vit::{VitBlock, VitConfig};
use e2e_tal::reversible::{ResidualChain, RevChain, ReversibleTape, RewiredBackbone};

const GRAD_TOL: f64 = 1e-4;

/// The CPU backend, or the one `E2E_TAL_BACKEND` names (`docs/backends.md`: the same checks on
/// wgpu through lavapipe).
fn test_device() -> burn::tensor::Device {
    e2e_tal::backend::device_from_env().expect("E2E_TAL_BACKEND names a compiled-in backend")
}
const INVERSE_TOL: f64 = 1e-5;
const SEED: u64 = 42;

/// max |a - b| / max |b|.
fn rel_err<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f64 {
    let scale = b.clone().abs().max().into_scalar::<f32>() as f64;
    let diff = (a - b).abs().max().into_scalar::<f32>() as f64;
    diff / scale.max(1e-30)
}

/// Compares every parameter gradient of a module between two gradient sets.
struct Compare<'a> {
    reference: &'a GradientsParams,
    reversible: &'a GradientsParams,
    worst: f64,
    count: usize,
    without_grad: usize,
}

impl ModuleVisitor for Compare<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let r = self.reference.get::<D>(param.id);
        let v = self.reversible.get::<D>(param.id);
        match (r, v) {
            (Some(r), Some(v)) => {
                self.worst = self.worst.max(rel_err(v, r));
                self.count += 1;
            }
            // Tensors without gradient (BatchNorm running statistics) must have none in both.
            (None, None) => self.without_grad += 1,
            (r, v) => panic!(
                "gradient present in reference: {}, in reversible: {}",
                r.is_some(),
                v.is_some()
            ),
        }
    }
}

/// Runs both passes on `chain` with input `x0` and returns (worst parameter-gradient error,
/// input-gradient error, inverse error, parameters compared).
fn check<const D: usize, C, M>(chain: &C, module: &M, x0: Tensor<D>) -> (f64, f64, f64, usize)
where
    C: ResidualChain<D> + ?Sized,
    M: Module,
{
    let device = x0.device();
    let w = Tensor::<D>::random(
        x0.dims(),
        Distribution::Normal(0.0, 1.0),
        &device.clone().without_autodiff(),
    );
    let rev = RevChain::new(chain).with_drop_path_seed(SEED);

    // Reference: ordinary autodiff through the rewired chain.
    let x = x0.clone().autodiff().require_grad();
    let y = rev.forward(x.clone());
    let mut grads = (y * w.clone().autodiff()).sum().backward();
    let gx_ref = x.grad(&grads).unwrap();
    let reference = GradientsParams::from_module(&mut grads, module);

    // Reversible: forward without graph, loss on the output leaf, manual backward.
    let (out, state) = rev.forward_no_graph(x0.clone());
    let g = (out.clone() * w.autodiff()).sum().backward();
    let gout = out.grad(&g).unwrap();
    let (gx, reversible, x_rec) = rev.backward(state, gout);

    let mut cmp = Compare {
        reference: &reference,
        reversible: &reversible,
        worst: 0.0,
        count: 0,
        without_grad: 0,
    };
    module.visit(&mut cmp);
    let inv = rel_err(x_rec, x0.without_autodiff());
    println!(
        "({} tensors without gradient in either pass)",
        cmp.without_grad
    );
    (cmp.worst, rel_err(gx, gx_ref), inv, cmp.count)
}

fn report(name: &str, (pg, ig, inv, n): (f64, f64, f64, usize)) {
    println!(
        "{name}: {n} parameters, max rel grad err {pg:.2e}, input grad {ig:.2e}, inverse {inv:.2e}"
    );
    assert!(n > 0, "{name}: no parameter compared");
    assert!(
        pg <= GRAD_TOL,
        "{name}: parameter gradients differ by {pg:e}"
    );
    assert!(ig <= GRAD_TOL, "{name}: input gradient differs by {ig:e}");
    assert!(
        inv <= INVERSE_TOL,
        "{name}: inverse reconstruction error {inv:e}"
    );
}

#[test]
fn vit_chain_depth_24() {
    let device = test_device().autodiff();
    // 12 blocks = 24 residual branches.
    let m = VitConfig::new()
        .with_embed_dim(16)
        .with_depth(12)
        .with_num_heads(2)
        .with_mlp_dim(32)
        .with_drop_path_rate(0.3)
        .init(&device);
    let blocks: &[VitBlock] = &m.blocks;
    let x = Tensor::<3>::random([4, 10, 16], Distribution::Normal(0.0, 1.0), &test_device());
    report("vit", check(blocks, &m.blocks, x));
}

#[test]
fn swin_chain_depth_24() {
    let device = test_device().autodiff();
    let m = SwinConfig::new()
        .with_embed_dim(8)
        .with_depths(vec![12])
        .with_num_heads(vec![2])
        .with_window_size([2, 2, 2])
        .with_drop_path_rate(0.3)
        .init(&device);
    let blocks: &[SwinBlock] = &m.stages[0].blocks;
    // [B, T, H, W, C] with padding (W = 3) and shifted windows.
    let x = Tensor::<5>::random(
        [3, 2, 4, 3, 8],
        Distribution::Normal(0.0, 1.0),
        &test_device(),
    );
    report("swin", check(blocks, &m.stages[0].blocks, x));
}

#[test]
fn resnet_chain_depth_24() {
    let device = test_device().autodiff();
    // One stage of 25 blocks; its first block changes shape and stays ordinary, leaving 24.
    // Frozen BatchNorm (norm_eval): see docs/reversible.md.
    let m = ResNet3dConfig::new()
        .with_widths(vec![4])
        .with_layers(vec![25])
        .with_norm_eval(true)
        .with_drop_path_rate(0.3)
        .init(&device);
    let chain: Vec<BasicBlock> = m.stages[0][1..].to_vec();
    let x = Tensor::<5>::random(
        [3, 4, 2, 4, 4],
        Distribution::Normal(0.0, 1.0),
        &test_device(),
    );
    report("resnet", check(chain.as_slice(), &chain, x));
}

#[test]
fn drift_monitor_falls_back_to_cached_gradients() {
    let device = test_device().autodiff();
    let m = VitConfig::new()
        .with_embed_dim(16)
        .with_depth(6)
        .with_num_heads(2)
        .with_mlp_dim(32)
        .with_drop_path_rate(0.2)
        .init(&device);
    let blocks: &[VitBlock] = &m.blocks;
    let rev = RevChain::new(blocks).with_drop_path_seed(7);
    let x = Tensor::<3>::random([2, 6, 16], Distribution::Normal(0.0, 1.0), &test_device());
    let w = Tensor::<3>::random([2, 6, 16], Distribution::Normal(0.0, 1.0), &test_device());
    let run = |tol: f64| {
        let (out, state) = rev.forward_no_graph(x.clone());
        let g = (out.clone() * w.clone().autodiff()).sum().backward();
        rev.backward_checked(state, out.grad(&g).unwrap(), Some(x.clone()), tol)
    };
    // Generous tolerance: reversible gradients, drift reported.
    let ok = run(1e-3);
    let drift = ok.drift.unwrap();
    assert!(!ok.fell_back);
    assert!(drift.max_rel < 1e-5, "{drift:?}");
    // A tolerance below the measured drift forces the cached recompute; its gradients agree.
    let forced = run(-1.0);
    assert!(forced.fell_back);
    assert!(rel_err(forced.input_grad, ok.input_grad) <= GRAD_TOL);
    let mut cmp = Compare {
        reference: &forced.params,
        reversible: &ok.params,
        worst: 0.0,
        count: 0,
        without_grad: 0,
    };
    m.blocks.visit(&mut cmp);
    assert!(cmp.count > 0 && cmp.worst <= GRAD_TOL, "{}", cmp.worst);
}

/// Every float parameter as (id, values).
struct Snapshot(Vec<(burn::module::ParamId, Vec<f32>)>);

impl ModuleVisitor for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let v = param
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        self.0.push((param.id, v));
    }
}

#[test]
fn rewiring_a_loaded_checkpoint_keeps_every_parameter() {
    use e2e_tal::weights::{CheckpointFamily, load};
    let device = test_device().autodiff();
    let mut m = VitConfig::new()
        .with_embed_dim(16)
        .with_depth(2)
        .with_num_heads(2)
        .with_mlp_dim(32)
        .with_patch_size(8)
        .with_num_frames(4)
        .with_image_size(16)
        .init(&device);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backbones/vit.safetensors");
    load(&mut m, &path, CheckpointFamily::HfVideoMae).unwrap();
    let mut before = Snapshot(Vec::new());
    m.blocks.visit(&mut before);

    // A reversible step over the loaded blocks.
    let blocks: &[VitBlock] = &m.blocks;
    let rev = RevChain::new(blocks);
    let x = Tensor::<3>::random([1, 8, 16], Distribution::Normal(0.0, 1.0), &test_device());
    let (out, state) = rev.forward_no_graph(x);
    let g = out.clone().sum().backward();
    let (_, grads, _) = rev.backward(state, out.grad(&g).unwrap());

    let mut after = Snapshot(Vec::new());
    m.blocks.visit(&mut after);
    assert_eq!(before.0.len(), 30, "2 blocks x 15 parameter tensors");
    assert_eq!(before.0, after.0, "same ids, same values");
    assert_eq!(grads.len(), before.0.len(), "one gradient per parameter");
    // Every gradient is registered under the loaded parameter's own id, with its shape.
    struct HasGrad<'a>(&'a GradientsParams);
    impl ModuleVisitor for HasGrad<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = self
                .0
                .get::<D>(param.id)
                .expect("gradient under the parameter's id");
            assert_eq!(g.dims(), param.val().dims());
        }
    }
    m.blocks.visit(&mut HasGrad(&grads));
}

/// One whole-backbone training step (features -> linear head -> squared error): the reversible
/// step's gradients for every backbone and head parameter against ordinary autodiff through the
/// same rewired backbone. Returns (parameters compared, worst relative error).
fn whole_model_step(backbone: &Backbone, width: usize, clips: Tensor<5>) -> (usize, f64) {
    compare_step(
        backbone,
        width,
        clips,
        |b, x| b.forward_rewired(x, 9).unwrap(),
        |b, x, tape| b.forward_reversible(x, tape).unwrap(),
    )
}

/// One whole-backbone step (features -> linear head -> squared error) two ways: `reference`
/// with ordinary autodiff, `taped` through a tape seeded 9. Returns (parameters compared,
/// worst relative error).
fn compare_step(
    backbone: &Backbone,
    width: usize,
    clips: Tensor<5>,
    reference: impl Fn(&Backbone, Tensor<5>) -> Tensor<2>,
    taped: impl for<'a> Fn(&'a Backbone, Tensor<5>, &mut ReversibleTape<'a>) -> Tensor<2>,
) -> (usize, f64) {
    use burn::nn::LinearConfig;
    let device = clips.device();
    let head = LinearConfig::new(width, 3).init(&device);
    let n = clips.dims()[0];
    let target = Tensor::<2>::random([n, 3], Distribution::Normal(0.0, 1.0), &device);
    let loss_of = |features: Tensor<2>| {
        (head.forward(features) - target.clone())
            .powf_scalar(2.0)
            .mean()
    };

    // Reference: ordinary autodiff through the rewired backbone.
    let mut grads = loss_of(reference(backbone, clips.clone())).backward();
    let mut reference = GradientsParams::from_module(&mut grads, backbone);
    let mut head_ref = GradientsParams::from_module(&mut grads, &head);
    e2e_tal::reversible::merge_grads(&head, &mut head_ref, &mut reference);

    // Reversible step: the blocks on a tape, one backward for the whole model.
    let mut tape = ReversibleTape::new().with_seed(9);
    let loss = loss_of(taped(backbone, clips, &mut tape));
    let mut grads = tape.backward(loss).unwrap();
    let mut reversible = grads.params(backbone);
    let mut head_rev = grads.params(&head);
    e2e_tal::reversible::merge_grads(&head, &mut head_rev, &mut reversible);

    assert_eq!(reversible.len(), reference.len(), "same set of parameters");
    let mut cmp = Compare {
        reference: &reference,
        reversible: &reversible,
        worst: 0.0,
        count: 0,
        without_grad: 0,
    };
    backbone.visit(&mut cmp);
    head.visit(&mut cmp);
    (cmp.count, cmp.worst)
}

#[test]
fn whole_vit_training_step_matches_autodiff() {
    let device = test_device().autodiff();
    let vit = VitConfig::new()
        .with_embed_dim(16)
        .with_depth(12)
        .with_num_heads(2)
        .with_mlp_dim(32)
        .with_patch_size(8)
        .with_num_frames(4)
        .with_image_size(16)
        .with_use_fc_norm(true)
        .with_drop_path_rate(0.3)
        .init(&device);
    let clips = Tensor::<5>::random([4, 3, 4, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let (count, worst) = whole_model_step(&Backbone::Vit(vit), 16, clips);
    println!("whole ViT + head: {count} parameters, max rel grad err {worst:.2e}");
    // 12 blocks x 15 + patch embed 2 + fc_norm 2 + head 2.
    assert_eq!(count, 186);
    assert!(worst <= GRAD_TOL, "{worst}");
}

/// Video Swin: two stages of 6 blocks (24 branches) with patch merging between them, shifted
/// windows with padding, drop path: the stage-by-stage reversible walk (merging and patch
/// embedding by vector-Jacobian products) equals autodiff.
#[test]
fn whole_swin_training_step_matches_autodiff() {
    let device = test_device().autodiff();
    let swin = SwinConfig::new()
        .with_embed_dim(8)
        .with_depths(vec![6, 6])
        .with_num_heads(vec![2, 2])
        .with_window_size([2, 2, 2])
        .with_drop_path_rate(0.3)
        .init(&device);
    let clips = Tensor::<5>::random([2, 3, 4, 20, 12], Distribution::Normal(0.0, 1.0), &device);
    let (count, worst) = whole_model_step(&Backbone::Swin(swin), 16, clips);
    println!("whole Swin + head: {count} parameters, max rel grad err {worst:.2e}");
    assert!(count > 12 * 13, "{count}");
    assert!(worst <= GRAD_TOL, "{worst}");
}

/// Activation checkpointing per block (the plain network, each block recomputed from its kept
/// input in the backward) gives ordinary autodiff's gradients: whole ViT and Swin steps
/// without stochastic depth against the plain forward, and a depth-24 chain with drop path
/// against autodiff under the same keyed draws.
#[test]
fn checkpointed_training_steps_match_autodiff() {
    use e2e_tal::backbone::VideoBackbone;
    use e2e_tal::reversible::CheckpointChain;
    let device = test_device().autodiff();
    let vit = VitConfig::new()
        .with_embed_dim(16)
        .with_depth(6)
        .with_num_heads(2)
        .with_mlp_dim(32)
        .with_patch_size(8)
        .with_num_frames(4)
        .with_image_size(16)
        .init(&device);
    let swin = SwinConfig::new()
        .with_embed_dim(8)
        .with_depths(vec![2, 2])
        .with_num_heads(vec![2, 2])
        .with_window_size([2, 2, 2])
        .init(&device);
    for (name, b, clips) in [
        (
            "vit",
            Backbone::Vit(vit),
            Tensor::<5>::random([3, 3, 4, 16, 16], Distribution::Normal(0.0, 1.0), &device),
        ),
        (
            "swin",
            Backbone::Swin(swin),
            Tensor::<5>::random([2, 3, 4, 20, 12], Distribution::Normal(0.0, 1.0), &device),
        ),
    ] {
        let (count, worst) = compare_step(
            &b,
            16,
            clips,
            |b, x| b.forward(x, &[]).unwrap().features,
            |b, x, tape| b.forward_checkpointed(x, tape).unwrap(),
        );
        println!("checkpointed {name}: {count} parameters, max rel grad err {worst:.2e}");
        assert!(count > 20 && worst <= 1e-5, "{name}: {worst}");
    }
    // A chain with stochastic depth: the recompute replays the forward's draws.
    let m = VitConfig::new()
        .with_embed_dim(16)
        .with_depth(24)
        .with_num_heads(2)
        .with_mlp_dim(32)
        .with_drop_path_rate(0.3)
        .init(&device);
    let blocks: &[VitBlock] = &m.blocks;
    let ck = CheckpointChain::new(blocks, 2, 5);
    let x = Tensor::<3>::random([2, 6, 16], Distribution::Normal(0.0, 1.0), &test_device());
    let w = Tensor::<3>::random([2, 6, 16], Distribution::Normal(0.0, 1.0), &test_device());
    let x_ref = x.clone().autodiff().require_grad();
    let mut g = (ck.forward(x_ref.clone()) * w.clone().autodiff())
        .sum()
        .backward();
    let gx_ref = x_ref.grad(&g).unwrap();
    let reference = GradientsParams::from_module(&mut g, &m.blocks.to_vec());
    let (out, inputs) = ck.forward_no_graph(x);
    let g = (out.clone() * w.autodiff()).sum().backward();
    let (gx, params) = ck.backward(inputs, out.grad(&g).unwrap());
    assert!(rel_err(gx, gx_ref) <= 1e-5);
    let mut cmp = Compare {
        reference: &reference,
        reversible: &params,
        worst: 0.0,
        count: 0,
        without_grad: 0,
    };
    m.blocks.visit(&mut cmp);
    assert!(cmp.count == 24 * 15 && cmp.worst <= 1e-5, "{}", cmp.worst);
}
