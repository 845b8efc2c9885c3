//! Reversible training as a user meets it: record the rewired segments during the forward,
//! then one `backward(loss)` for the whole model.
//!
//! ```text
//! let mut tape = ReversibleTape::new();
//! let x = stem.forward(input);                                   // ordinary autodiff
//! let y = tape.forward(RevChain::new(blocks.as_slice()), x);     // no activations kept
//! let loss = loss_fn(head.forward(y));                           // ordinary autodiff
//! let mut grads = tape.backward(loss)?;                          // loss, chains, stem
//! let (g_stem, g_blocks, g_head) = (grads.params(&stem), grads.params(&blocks), grads.params(&head));
//! ```
//!
//! A model may hold several segments (a Swin has one per stage, with patch merging between them):
//! they are walked back in reverse order, each segment's input gradient sent through the small
//! graph that produced its input (a stem, a merging layer, the previous segment's output leaf).

use burn::config::Config;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Tensor};

use super::chain::{Drift, ResidualChain, RevChain, RevState};
use super::checkpoint::CheckpointChain;
use super::grads::merge_grads;
use crate::error::{Error, Result};

/// When and how strictly reversible training checks its reconstruction. On a checked step the
/// stage input (which the stem's graph holds anyway) is compared with the one the inverse
/// recomputes; when the relative drift reaches `tolerance`, that step's gradients are recomputed
/// with ordinary autodiff from the true input (one step at full activation memory) and the
/// fallback is reported. A check costs one subtraction and one reduction per segment (and a
/// device synchronisation); a fallback costs a cached forward and backward of the chain.
#[derive(Config, Debug, PartialEq)]
pub struct DriftMonitor {
    /// Check every `every`-th step, starting with the first (0: never).
    #[config(default = 10)]
    pub every: usize,
    /// Relative drift (`max |x_rec - x| / max |x|`) at which a step falls back. f32 drifts by
    /// ~1e-7 at depth 24 on this crate's ViT-S; 0 forces every checked step to fall back.
    #[config(default = 1e-4)]
    pub tolerance: f64,
}

impl DriftMonitor {
    /// A tape for training step `step`: checked or not, as this monitor says.
    pub fn tape<'a>(&self, step: usize) -> ReversibleTape<'a> {
        if self.every > 0 && step.is_multiple_of(self.every) {
            ReversibleTape::checked(self.tolerance)
        } else {
            ReversibleTape::new()
        }
    }
}

/// One segment's drift reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentDrift {
    /// The measured drift.
    pub drift: Drift,
    /// True when it reached the tolerance and the segment's gradients come from the cached
    /// recompute.
    pub fell_back: bool,
}

/// A rewired segment between the forward and the backward.
trait PendingSegment {
    /// Walk the segment back. `graphs` hold the gradients computed so far (the loss's, then
    /// later segments' input products); returns the segment's input product and parameter
    /// gradients, or `None` when the loss does not depend on the segment.
    fn backward(
        self: Box<Self>,
        graphs: &mut [Gradients],
        tolerance: Option<f64>,
    ) -> Option<SegmentGrads>;
}

struct SegmentGrads {
    input_product: Option<Gradients>,
    params: GradientsParams,
    drift: Option<SegmentDrift>,
}

struct Segment<'a, C: ?Sized, const D: usize> {
    chain: RevChain<'a, C>,
    /// The segment's input with the graph that produced it.
    input: Tensor<D>,
    /// The output leaf handed to the rest of the model.
    output: Tensor<D>,
    state: RevState<D>,
}

impl<C: ResidualChain<D> + ?Sized, const D: usize> PendingSegment for Segment<'_, C, D> {
    fn backward(
        self: Box<Self>,
        graphs: &mut [Gradients],
        tolerance: Option<f64>,
    ) -> Option<SegmentGrads> {
        let Segment {
            chain,
            input,
            output,
            state,
        } = *self;
        let grad_out = graphs
            .iter_mut()
            .filter_map(|g| output.grad_remove(g))
            .reduce(|a, b| a + b)?;
        let (grad_in, params, drift) = match tolerance {
            Some(tol) => {
                let c = chain.backward_checked(state, grad_out, Some(input.clone()), tol);
                let drift = c.drift.map(|drift| SegmentDrift {
                    drift,
                    fell_back: c.fell_back,
                });
                (c.input_grad, c.params, drift)
            }
            None => {
                let (g, p, _) = chain.backward(state, grad_out);
                (g, p, None)
            }
        };
        // Vector-Jacobian product through whatever produced the input.
        let input_product = input
            .is_tracked()
            .then(|| (input * grad_in.autodiff()).sum().backward());
        Some(SegmentGrads {
            input_product,
            params,
            drift,
        })
    }
}

/// A checkpointed plain chain between the forward and the backward: its blocks' inputs.
struct CheckpointSegment<'a, C: ?Sized, const D: usize> {
    chain: CheckpointChain<'a, C>,
    input: Tensor<D>,
    output: Tensor<D>,
    inputs: Vec<Tensor<D>>,
}

impl<C: ResidualChain<D> + ?Sized, const D: usize> PendingSegment for CheckpointSegment<'_, C, D> {
    fn backward(
        self: Box<Self>,
        graphs: &mut [Gradients],
        _tolerance: Option<f64>,
    ) -> Option<SegmentGrads> {
        let CheckpointSegment {
            chain,
            input,
            output,
            inputs,
        } = *self;
        let grad_out = graphs
            .iter_mut()
            .filter_map(|g| output.grad_remove(g))
            .reduce(|a, b| a + b)?;
        let (grad_in, params) = chain.backward(inputs, grad_out);
        let input_product = input
            .is_tracked()
            .then(|| (input * grad_in.autodiff()).sum().backward());
        Some(SegmentGrads {
            input_product,
            params,
            drift: None,
        })
    }
}

/// Records rewired segments in a forward pass and runs the whole model's backward. Build one per
/// training step (it borrows the chains' modules).
pub struct ReversibleTape<'a> {
    segments: Vec<Box<dyn PendingSegment + 'a>>,
    tolerance: Option<f64>,
    seed: u64,
}

impl Default for ReversibleTape<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> ReversibleTape<'a> {
    /// A tape whose backward trusts the reconstruction (no drift check).
    pub fn new() -> Self {
        Self {
            segments: Vec::new(),
            tolerance: None,
            seed: 0,
        }
    }

    /// A tape whose backward measures every segment's drift and falls back to the cached
    /// recompute for a segment whose relative drift reaches `tolerance`.
    pub fn checked(tolerance: f64) -> Self {
        Self {
            segments: Vec::new(),
            tolerance: Some(tolerance),
            seed: 0,
        }
    }

    /// This step's seed (default 0): whole-backbone reversible passes key their chains'
    /// stochastic depth by it ([`RevChain::with_drop_path_seed`]), as the rewired autodiff pass
    /// does with the same seed. Use a new one every step.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// This step's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Run `chain` on `x` without recording its activations and return its output, an autodiff
    /// leaf for the rest of the model. `x` keeps whatever graph produced it (a stem, a merging
    /// layer); that graph must feed only this segment (the backward consumes it once).
    ///
    /// # Shapes
    /// - x: any -> same
    pub fn forward<C, const D: usize>(&mut self, chain: RevChain<'a, C>, x: Tensor<D>) -> Tensor<D>
    where
        C: ResidualChain<D> + ?Sized + 'a,
    {
        let (output, state) = chain.forward_no_graph(x.clone());
        self.segments.push(Box::new(Segment {
            chain,
            input: x,
            output: output.clone(),
            state,
        }));
        output
    }

    /// Run the plain `chain` on `x` with activation checkpointing: no activations recorded
    /// but each block's input, the output an autodiff leaf for the rest of the model; the
    /// backward recomputes one block at a time ([`CheckpointChain`]). `x` keeps its graph, as
    /// in [`ReversibleTape::forward`].
    ///
    /// # Shapes
    /// - x: any -> same
    pub fn checkpoint<C, const D: usize>(
        &mut self,
        chain: CheckpointChain<'a, C>,
        x: Tensor<D>,
    ) -> Tensor<D>
    where
        C: ResidualChain<D> + ?Sized + 'a,
    {
        let (output, inputs) = chain.forward_no_graph(x.clone());
        self.segments.push(Box::new(CheckpointSegment {
            chain,
            input: x,
            output: output.clone(),
            inputs,
        }));
        output
    }

    /// Number of segments recorded.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True when no segment was recorded.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Back-propagate `loss` through the whole model: the ordinary graph after the segments,
    /// each segment's reversible walk (last first), and the graphs that made their inputs.
    /// Peak memory holds one branch's local graph on top of what the ordinary parts keep.
    pub fn backward(self, loss: Tensor<1>) -> Result<ReversibleGrads> {
        if !loss.is_tracked() {
            return Err(Error::Config(
                "the loss is not on an autodiff graph (was the model run on an autodiff device?)"
                    .into(),
            ));
        }
        let mut grads = ReversibleGrads {
            graphs: vec![loss.backward()],
            chains: Vec::with_capacity(self.segments.len()),
            drift: Vec::new(),
        };
        for seg in self.segments.into_iter().rev() {
            let Some(s) = seg.backward(&mut grads.graphs, self.tolerance) else {
                continue;
            };
            grads.chains.push(s.params);
            grads.drift.extend(s.drift);
            grads.graphs.extend(s.input_product);
        }
        Ok(grads)
    }
}

/// The gradients of a reversible step, taken out per module.
pub struct ReversibleGrads {
    graphs: Vec<Gradients>,
    chains: Vec<GradientsParams>,
    drift: Vec<SegmentDrift>,
}

impl ReversibleGrads {
    /// Move `module`'s parameter gradients out (summed over every part of the backward that
    /// produced one), ready for an optimizer.
    pub fn params<M: Module>(&mut self, module: &M) -> GradientsParams {
        let mut out = GradientsParams::new();
        for g in &mut self.graphs {
            let mut p = GradientsParams::from_module(g, module);
            merge_grads(module, &mut p, &mut out);
        }
        for c in &mut self.chains {
            merge_grads(module, c, &mut out);
        }
        out
    }

    /// Drift readings of the checked segments (empty on unchecked steps), last segment first.
    pub fn drift(&self) -> &[SegmentDrift] {
        &self.drift
    }

    /// The worst reading of this step, and whether any segment fell back.
    pub fn worst_drift(&self) -> Option<SegmentDrift> {
        self.drift.iter().copied().reduce(|a, b| SegmentDrift {
            drift: if b.drift.max_rel > a.drift.max_rel {
                b.drift
            } else {
                a.drift
            },
            fell_back: a.fell_back || b.fell_back,
        })
    }
}
