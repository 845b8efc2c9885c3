//! The per-layer memory account of one training step, for each strategy.
//!
//! Every figure is a count of the tensors this crate's layers keep or create, times their
//! shapes and element sizes. Per token of a transformer block of width `d`, MLP width `m`,
//! `h` heads, branch precision of `p` bytes (4 in f32, 2 in bf16/f16; norms, residual stream
//! and attention statistics stay f32):
//!
//! - **held for the backward** (ordinary autodiff): the block input and the mid-block residual
//!   (f32, `8d`), the two norm outputs, query, key, value, attention output and output
//!   projection input (`7d` in `p`), the MLP hidden before and after GELU (`2m` in `p`), the
//!   attention's row log-sum-exp (`4h`); a shifted-window block also keeps its `[1, windows x
//!   heads, vol, vol]` f32 bias;
//! - **transient of the backward** of one block above what it holds: the gradients flowing
//!   through it (the MLP's two `m`-wide and a few `d`-wide, in f32);
//! - **transient of a forward without graph** (frozen backbones, the checkpointed and
//!   reversible forwards): the stream, the mid-block residual and the MLP hidden pair;
//!   low precision adds the casts between them.
//!
//! These counts were read off the layers and checked, layer by layer, against the counting
//! allocator (`cargo bench --bench plan -- --probe`); the whole step is checked against the
//! training loop's measured peak (`cargo bench --bench plan`, the `planner` tests).

use super::shapes::{BackboneShape, Stage};

/// Bytes of the branches' compute precision: 4 (f32) or 2 (bf16, f16).
pub(crate) type Bytes = usize;

/// What one residual block costs, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BlockCost {
    /// Kept for the backward under ordinary autodiff.
    pub held: usize,
    /// Above `held` while its backward runs (its parameter gradients counted apart).
    pub backward: usize,
    /// Peak above its input during a forward without graph.
    pub forward: usize,
    /// Its input (f32): what checkpointing keeps of it.
    pub input: usize,
    /// Its output as a reversible stream pair (f32, or f64 under mixed precision).
    pub stream_pair: usize,
    /// The larger of its branches' held bytes (the reversible backward's local graph).
    pub branch_held: usize,
    /// Parameter gradients (f32).
    pub grads: usize,
}

/// Transformer block `i` (0-based, within its stage) of `s` at `p` bytes per branch value.
pub(crate) fn transformer_block(s: &Stage, i: usize, p: Bytes) -> BlockCost {
    let (t, d, m, h) = (s.tokens, s.width, s.mlp, s.heads);
    let ta = s.attended;
    // Shifted-window blocks are the odd ones (torchvision's alternation).
    let bias = 4 * if i % 2 == 1 && s.shifted_bias > 0 {
        s.shifted_bias
    } else {
        s.window_bias
    };
    let attn_held = 4 * t * d + ta * (p * 6 * d + 4 * h) + bias;
    let low = p < 4;
    let mlp_held = 4 * t * d + t * p * (d + 2 * m);
    // The attention's query tile: scores and probabilities in the forward, four such tensors
    // (scores, probabilities, their gradient, the bias gradient's share) in the backward; the
    // fused CPU kernel (f32 on Flex) keeps two per-thread scratch tiles instead.
    let shifted = usize::from(i % 2 == 1 && s.shifted_bias > 0);
    let fused = cfg!(feature = "flex") && !low;
    // Window attention in f32 on the CPU: the partition and shift copies of the stream (the
    // tiled passes' larger tiles covered them).
    let window_copies = if fused && s.window_bias > 0 {
        4 * t * 2 * d
    } else {
        0
    };
    let tile = if fused {
        2 * s.fused_tile[shifted]
    } else {
        4 * s.tile[shifted]
    };
    BlockCost {
        held: attn_held + mlp_held,
        // The MLP's hidden gradients (and in low precision their casts), or the attention's
        // tile gradients beside the bias gradient. With the fused CPU kernels (f32) the hidden
        // gradients replace the tensors the backward frees as it goes: two `d`-wide
        // gradients remain (measured, `cargo bench --bench plan -- --probe`).
        backward: (4
            * t
            * if fused {
                2 * d
            } else {
                (if low { d } else { 0 }) + 2 * m
            })
        .max(2 * tile + bias),
        // With its input stream: the mid-block residual and the MLP hidden pair (low
        // precision: and their casts), or the attention's inputs, bias and tile.
        // Low precision adds the casts and, in window attention, the partition, shift and
        // reverse copies.
        // In f32 on the CPU backend the linear layers add their bias inside the product, so
        // `fc1` leaves one hidden tensor (GELU then runs in place) instead of two.
        forward: (4
            * t
            * (if low && s.window_bias > 0 {
                7 * d / 2
            } else {
                d
            } + if fused { m } else { 2 * m }))
        .max(4 * t * 5 * d + window_copies + bias + tile),
        input: 4 * t * d,
        stream_pair: 2 * t * d * if low { 8 } else { 4 },
        branch_held: attn_held.max(mlp_held),
        grads: 4 * s.block_params,
    }
}

/// A ResNet basic block whose output has `elems` elements of `c` channels: its convolutions'
/// and norms' inputs, the ReLU outputs (f32; ResNets run in f32).
pub(crate) fn conv_block(elems: usize, params: usize) -> BlockCost {
    BlockCost {
        held: 4 * 6 * elems,
        backward: 4 * 3 * elems,
        forward: 4 * 3 * elems,
        input: 4 * elems,
        stream_pair: 8 * elems,
        branch_held: 4 * 6 * elems,
        grads: 4 * params,
    }
}

/// The backbone's blocks in forward order, with what sits between stages.
pub(crate) struct Blocks {
    /// Every block.
    pub blocks: Vec<BlockCost>,
    /// Held outside the blocks under autodiff (stem norm, patch merging, final norm).
    pub between: usize,
    /// Transient of the stem (its im2col, a copy of the input per patch).
    pub stem: usize,
    /// Parameter gradients outside the blocks.
    pub other_grads: usize,
    /// Reversible segments' stream pairs (one per stage).
    pub segments: usize,
}

/// The blocks of `shape` at `p` bytes per branch value.
pub(crate) fn blocks(shape: &BackboneShape, p: Bytes, input: usize) -> Blocks {
    let mut out = Vec::new();
    let mut between = 0;
    let mut segments = 0;
    for s in &shape.stages {
        for i in 0..s.blocks {
            out.push(transformer_block(s, i, p));
        }
        // Patch merging keeps its norm's input and output (f32 and the branch precision).
        between += s.merge_in * (4 + p);
        if let Some(last) = out.last() {
            segments += last.stream_pair;
        }
    }
    let n_conv = shape.conv_blocks.len().max(1);
    for &(elems, _) in &shape.conv_blocks {
        out.push(conv_block(elems, shape.conv_params / n_conv));
    }
    if shape.family == "swin" {
        // The patch embedding's norm (input and output) and the final norm's input.
        let last = shape.stages.last().map_or(0, |s| s.tokens * s.width);
        between += 8 * shape.stem_out + 4 * last;
    }
    let block_grads: usize = out.iter().map(|b| b.grads).sum();
    Blocks {
        blocks: out,
        between,
        // The stem's patches (a copy of the clips, the patch embedding's product operand)
        // beside its output.
        stem: input + 4 * shape.stem_out,
        other_grads: (4 * shape.params()).saturating_sub(block_grads),
        segments,
    }
}
