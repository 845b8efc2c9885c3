//! A learning backbone's step on the CPU backend in two groups of clips side by side. The
//! backbone sees every clip on its own (no operation mixes clips), so the step's clips split
//! into groups whose forward and backward passes are independent: each group runs a replica of
//! the backbone (the same parameter values as fresh graph leaves, no copy) as a task of the
//! rayon pool, its features join the head on the calling thread, and each group's backward
//! starts from its share of the features' gradient. The gradients are the single graph's up to
//! the order of their sums.
//!
//! Why: on two cores the small tensors of a training step leave a core idle between and
//! inside the backend's threaded operations (a step kept the cores 166% busy); two independent
//! halves of the work keep both busy without a synchronisation per operation.
//!
//! The number of groups is fixed ([`GROUPS`]) whatever the machine's thread count, so a run's
//! numbers do not depend on it: with one thread the groups run one after the other. Stochastic
//! depth in the plain network draws each group's masks from a generator of its own, seeded
//! from the step's seed; the rewired network keeps each group's rows of the masks the whole
//! step draws (keyed by step and block), so `full --rewired` stays the reference the reversible
//! pass matches.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Gradients, Tensor};
use rayon::prelude::*;

use super::add_from;
use super::fine_tune::Clips;
use crate::backbone::residual::{with_drop_path_rows, with_drop_path_stream};
use crate::backbone::{Backbone, Network, VideoBackbone};
use crate::error::Result;
use crate::precision;
use crate::reversible::RewiredBackbone;
use crate::seed::mix;

/// How many groups a step's clips run in.
pub(crate) const GROUPS: usize = 2;

/// Whether a step on `device` over `clips` clips runs in groups: on the CPU backends, with a
/// clip or more for every group.
pub(crate) fn applies(device: &Device, clips: usize) -> bool {
    clips >= GROUPS && crate::backend::is_cpu(device)
}

/// The backward pass's gradients in two parts: the head's graph (the loss back to the
/// backbone's features) and the backbone's parameter gradients summed over the groups.
pub(crate) struct GroupGrads {
    /// The graph from the loss to the features (head, classifier).
    pub graph: Gradients,
    /// The backbone's parameters, by id.
    pub backbone: GradientsParams,
}

impl GroupGrads {
    /// Move `module`'s parameter gradients out (the head's, the backbone's, or a module holding
    /// both).
    pub fn params<M: Module>(&mut self, module: &M) -> GradientsParams {
        let mut out = GradientsParams::from_module(&mut self.graph, module);
        add_from(module, &mut out, &mut self.backbone);
        out
    }
}

/// The step of `backbone` (run as `network`) on `clips` in [`GROUPS`] groups: the forward of
/// each group, `loss_of` on their features in clip order, then each group's backward. `seed`
/// seeds each group's stochastic depth (and the rewired network's).
///
/// # Shapes
/// - clips: `N >= GROUPS` of `[3, F, H, W]` (each group makes its own); `loss_of` receives
///   `[N * P, C]`
pub(crate) fn step(
    backbone: &Backbone,
    network: Network,
    clips: Clips<'_>,
    seed: u64,
    loss_of: impl FnOnce(Tensor<2>) -> Result<(Tensor<1>, f64)>,
) -> Result<(f64, GroupGrads)> {
    let n = clips.count();
    let forward = |g: usize| -> Result<(Backbone, Tensor<2>)> {
        let (start, len) = group_range(n, g);
        let replica = backbone.clone().map(&mut Leaves);
        let x = clips.range(start, len)?;
        let features = match network {
            Network::Plain => {
                with_drop_path_stream(mix(seed, g as u64), || replica.forward(x, &[]))?.features
            }
            // The rewired chain keys its masks by step and block: each group keeps its rows of
            // the whole step's masks, as the reversible pass draws them.
            Network::Rewired => with_drop_path_rows(start, n, || replica.forward_rewired(x, seed))?,
        };
        Ok((replica, features))
    };
    let groups = each_group(forward)
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let leaves: Vec<Tensor<2>> = groups
        .iter()
        .map(|(_, f)| f.clone().detach().require_grad())
        .collect();
    let (loss, value) = loss_of(Tensor::cat(leaves.clone(), 0))?;
    let graph = loss.backward();
    let upstream: Vec<Option<Tensor<2>>> = leaves.iter().map(|l| l.grad(&graph)).collect();
    let backward = |g: usize| -> GradientsParams {
        let (replica, features) = &groups[g];
        match &upstream[g] {
            Some(d) => {
                let mut grads = (features.clone() * d.clone().autodiff()).sum().backward();
                GradientsParams::from_module(&mut grads, replica)
            }
            None => GradientsParams::new(),
        }
    };
    let mut summed = GradientsParams::new();
    for mut g in each_group(backward) {
        add_from(backbone, &mut summed, &mut g);
    }
    Ok((
        value,
        GroupGrads {
            graph,
            backbone: summed,
        },
    ))
}

/// Group `g`'s first clip and count among `n`: the first groups take one more when `n` does
/// not divide.
fn group_range(n: usize, g: usize) -> (usize, usize) {
    let (base, extra) = (n / GROUPS, n % GROUPS);
    (g * base + g.min(extra), base + usize::from(g < extra))
}

/// The parameters as fresh graph leaves (same values and ids, no copy): a replica whose graph
/// joins no other thread's.
struct Leaves;

impl ModuleMapper for Leaves {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        p.map(|t| match t.is_require_grad() {
            true => t.detach().require_grad(),
            false => t,
        })
    }
}

/// `f` of every group on the rayon pool, in the caller's autocast precision: the groups run
/// side by side and a thread whose group finishes first helps with the other's threaded
/// operations (work stealing), where a pool per group would leave it idle. With one thread
/// they run one after the other.
fn each_group<T: Send>(f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    (0..GROUPS)
        .into_par_iter()
        .with_max_len(1)
        .map(precision::carried(&f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::{BackboneConfig, TrainMode};
    use crate::train::model::materialize;
    use burn::tensor::Distribution;

    /// The batch tests' 2-block ViT on 8-frame 16x16 clips, `drop_path` its stochastic depth.
    fn backbone(drop_path: f64, device: &Device) -> Backbone {
        let BackboneConfig::Vit(vit) = super::super::batch_tests::config(TrainMode::Full).backbone
        else {
            unreachable!("the batch tests train a ViT")
        };
        let b = BackboneConfig::Vit(vit.with_drop_path_rate(drop_path)).init(device);
        materialize(&b);
        b
    }

    /// Every gradient of `b` in `g`, flattened in the module's order.
    fn flat(b: &Backbone, g: &GradientsParams) -> Vec<f32> {
        struct Flat<'a>(&'a GradientsParams, Vec<f32>);
        impl burn::module::ModuleVisitor for Flat<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                let t = self
                    .0
                    .get::<D>(p.id)
                    .expect("every parameter has a gradient");
                self.1.extend(t.into_data().try_to_vec::<f32>().unwrap());
            }
        }
        let mut f = Flat(g, Vec::new());
        b.visit(&mut f);
        f.1
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// The loss the tests put on the features: a fixed projection, summed.
    fn loss_on(w: &Tensor<2>) -> impl FnOnce(Tensor<2>) -> Result<(Tensor<1>, f64)> + '_ {
        move |f| {
            let l = (f * w.clone()).sum();
            let v = l.clone().into_scalar::<f64>();
            Ok((l, v))
        }
    }

    /// The grouped step's loss and backbone gradients equal one graph over every clip (an odd
    /// count: groups of 3 and 2), for the plain network and for the rewired one with its
    /// stochastic depth (the same samples dropped).
    #[test]
    fn groups_equal_one_graph_over_every_clip() {
        let device = crate::backend::cpu_device().autodiff();
        device.seed(3);
        let x = Tensor::<5>::random([5, 3, 8, 16, 16], Distribution::Default, &device);
        let w = Tensor::<2>::random([5, 32], Distribution::Default, &device);
        for (network, drop_path) in [
            (Network::Plain, 0.0),
            (Network::Rewired, 0.0),
            (Network::Rewired, 0.5),
        ] {
            let b = backbone(drop_path, &device);
            let features = match network {
                Network::Plain => b.forward(x.clone(), &[]).unwrap().features,
                Network::Rewired => b.forward_rewired(x.clone(), 9).unwrap(),
            };
            let (loss, want_value) = loss_on(&w)(features).unwrap();
            let want = GradientsParams::from_module(&mut loss.backward(), &b);
            let (value, mut got) = step(&b, network, Clips::of(x.clone()), 9, loss_on(&w)).unwrap();
            let what = format!("{network:?}, stochastic depth {drop_path}");
            assert!(
                (value - want_value).abs() <= 1e-5 * want_value.abs(),
                "{what}: loss"
            );
            let rel = max_rel(&flat(&b, &got.params(&b)), &flat(&b, &want));
            assert!(rel < 1e-5, "{what}: gradients {rel}");
        }
    }

    /// With stochastic depth each group draws its own masks from the step's seed: the same
    /// step twice, and on one thread instead of two, gives the same loss and gradients (no
    /// dependence on which thread runs a group first); another seed drops other clips.
    #[test]
    fn stochastic_depth_in_groups_replays_whatever_the_threads() {
        let device = crate::backend::cpu_device().autodiff();
        device.seed(4);
        let b = backbone(0.5, &device);
        let x = Tensor::<5>::random([6, 3, 8, 16, 16], Distribution::Default, &device);
        let w = Tensor::<2>::random([6, 32], Distribution::Default, &device);
        let run = |seed: u64| {
            let (v, mut g) =
                step(&b, Network::Plain, Clips::of(x.clone()), seed, loss_on(&w)).unwrap();
            (v, flat(&b, &g.params(&b)))
        };
        let (v1, g1) = run(21);
        let (v2, g2) = run(21);
        assert_eq!((v1, &g1), (v2, &g2), "the same step twice");
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (v3, g3) = one.install(|| run(21));
        assert!((v3 - v1).abs() <= 1e-6 * v1.abs(), "one thread: loss");
        assert!(max_rel(&g3, &g1) < 1e-6, "one thread: gradients");
        let (v4, _) = run(22);
        assert_ne!(v4, v1, "another seed, other masks");
    }

    #[test]
    fn groups_cover_the_clips_in_order() {
        for n in GROUPS..20 {
            let mut next = 0;
            for g in 0..GROUPS {
                let (start, len) = group_range(n, g);
                assert_eq!(start, next);
                assert!(len >= 1 && len <= n.div_ceil(GROUPS));
                next += len;
            }
            assert_eq!(next, n);
        }
    }
}
