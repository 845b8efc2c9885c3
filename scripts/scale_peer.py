#!/usr/bin/env python3
"""PyTorch rows for the paper-scale table (`cargo bench --bench plan -- --paper`, docs/scale.md).

The same workload as the crate's row: VideoMAE-B (transformers' `VideoMAEModel`, 12 blocks of
width 768, tubelet 2, patch 16, randomly initialised: memory and time do not depend on the
weights) over one video of 768 frames at 160x160 cut into 48 clips of 16 frames, all clips in one
batch; its tokens pooled over space only (AdaTAD's temporal tokens: 8 per clip, 384 for the
video); ActionFormer's official model (LocPointTransformer, THUMOS configuration: embedding 512,
window 19, max_seq_len 2304, 20 classes) on those 384 positions, its batch padding run with
autograd (the official code pads under `no_grad`, as it trains on fixed features); its training
losses; backward (checked to reach every backbone parameter); one AdamW update of every
parameter. One training step, the first, as the crate's row.

Variants, each what a PyTorch user would run:

  plain       ordinary autograd (SDPA attention)
  checkpoint  `torch.utils.checkpoint` (use_reentrant=False) around every block, through
              transformers' `gradient_checkpointing_enable`
  reversible  revlib.ReversibleSequential over the blocks' attention and MLP branches with the
              same parameters (y1 = x1 + F(x2), y2 = x2 + G(y1), the input in both streams, the
              streams averaged at the end, as the crate rewires), memory_mode=autograd_function

Precisions: f32, and bf16 through `torch.autocast("cpu", torch.bfloat16)` (f32 master weights).

Each (variant, precision) runs in a fresh subprocess under a small glibc mmap threshold (freed
tensors go back to the OS, so the resident set follows live memory); it prints the step's
seconds and the process's peak resident memory during the step (VmHWM, reset through
/proc/self/clear_refs just before it): weights, optimizer state, input, activations and the
interpreter all counted, like the crate's peak RSS column. One JSON object per row ("ROW {...}").

    bash ../shared/peer/setup_peer.sh     # torch, transformers, revlib
    git clone https://github.com/happyharrycn/actionformer_release /tmp/af
    $HOME/.cache/e2etal-peer/venv/bin/python scripts/scale_peer.py --official /tmp/af \\
        --variants checkpoint,reversible --precisions f32 --threads 2

`plain` at f32 needs tens of GB at this size (the crate's planner: about 25 GiB): the script runs
what it is asked, so leave it out where it cannot fit.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types

FRAMES, SIZE, CLIP = 768, 160, 16
YAML = """dataset_name: thumos
dataset: {num_classes: 20, input_dim: 768, feat_stride: 2, num_frames: 16, max_seq_len: 2304}
model: {fpn_type: identity, max_buffer_len_factor: 6.0, n_mha_win_size: 19}
train_cfg: {init_loss_norm: 100, clip_grad_l2norm: 1.0, cls_prior_prob: 0.01,
            center_sample: radius, center_sample_radius: 1.5}
"""


def backbone(variant):
    import torch
    from torch import nn
    from transformers import VideoMAEConfig, VideoMAEModel

    cfg = VideoMAEConfig(image_size=SIZE, num_frames=CLIP, tubelet_size=2, patch_size=16,
                         hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, use_mean_pooling=False, attn_implementation="sdpa")
    m = VideoMAEModel(cfg)
    m.train()
    if variant == "checkpoint":
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if variant != "reversible":
        return lambda x: m(pixel_values=x).last_hidden_state, m

    import revlib

    class Attn(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.norm, self.attn = layer.layernorm_before, layer.attention

        def forward(self, x):
            out = self.attn(self.norm(x))
            return out[0] if isinstance(out, tuple) else out

    class Mlp(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.norm, self.fc1, self.fc2 = layer.layernorm_after, layer.intermediate, layer.output.dense

        def forward(self, x):
            return self.fc2(self.fc1(self.norm(x)))

    branches = [b for layer in m.encoder.layer for b in (Attn(layer), Mlp(layer))]
    rev = revlib.ReversibleSequential(*branches, split_dim=-1,
                                      memory_mode=revlib.MemoryModes.autograd_function)

    def forward(x):
        h = m.embeddings(x, None)
        y = rev(torch.cat([h, h], -1))
        h = (y[..., :768] + y[..., 768:]) / 2
        return m.layernorm(h) if m.layernorm is not None else h

    holder = nn.ModuleList([m, rev])
    return forward, holder


def head(official):
    sys.path.insert(0, official)
    from libs.core import load_config
    from libs.modeling import make_meta_arch

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(YAML)
    cfg = load_config(f.name)
    os.unlink(f.name)
    cfg["model"]["train_cfg"]["head_empty_cls"] = []
    m = make_meta_arch(cfg["model_name"], **cfg["model"])
    m.train()
    # ActionFormer pads its batch under `torch.no_grad()` (it trains on pre-extracted
    # features); end to end the gradient must reach the backbone, so the same padding runs
    # with autograd.
    m.preprocessing = types.MethodType(preprocessing, m)
    return m


def preprocessing(self, video_list, padding_val=0.0):
    """ActionFormer's training-time batching (every video padded to max_seq_len), out of place
    so that autograd sees it."""
    import torch
    import torch.nn.functional as F

    feats = [x["feats"] for x in video_list]
    lens = torch.as_tensor([f.shape[-1] for f in feats])
    assert int(lens.max()) <= self.max_seq_len
    batched = torch.stack([F.pad(f, (0, self.max_seq_len - f.shape[-1]), value=padding_val)
                           for f in feats])
    masks = torch.arange(self.max_seq_len)[None, :] < lens[:, None]
    return batched.to(self.device), masks.unsqueeze(1).to(self.device)


def rss():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) * 1024
    return out


def worker(args):
    import gc
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    forward, bb = backbone(args.variant)
    af = head(args.official)
    params = [p for p in list(bb.parameters()) + list(af.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    clips = args.frames // CLIP
    x = torch.randn(clips, CLIP, 3, SIZE, SIZE)
    video = {"video_id": "v", "fps": 30.0, "duration": args.frames / 30.0, "feat_stride": 2,
             "feat_num_frames": CLIP, "segments": torch.tensor([[4.0, 9.0], [20.0, 26.0]]),
             "labels": torch.tensor([3, 11])}
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        tokens = forward(x)                                   # [48, 8 * 100, 768]
        feats = tokens.view(clips, CLIP // 2, -1, 768).mean(2)  # space pooled: [48, 8, 768]
        video["feats"] = feats.reshape(-1, 768).t().float()   # [768, 384]
        losses = af([video])
    losses["final_loss"].backward()
    opt.step()
    secs = time.perf_counter() - t
    missing = [n for n, p in bb.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise SystemExit(f"no gradient reached the backbone's {missing[:3]}")
    print("RESULT " + json.dumps({"step_s": secs, "peak_rss": rss()["VmHWM"],
                                  "params": sum(p.numel() for p in params)}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", help="checkout of actionformer_release")
    ap.add_argument("--variants", default="checkpoint,reversible")
    ap.add_argument("--precisions", default="f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=FRAMES, help="frames of the video (768)")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--variant")
    ap.add_argument("--precision")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.official or not os.path.isdir(os.path.join(args.official, "libs")):
        sys.exit(f"--official {args.official!r}: not a checkout of actionformer_release (no libs/)")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for precision in args.precisions.split(","):
        for variant in args.variants.split(","):
            cmd = [sys.executable, "-W", "ignore", os.path.abspath(__file__), "--worker",
                   "--official", args.official, "--variant", variant, "--precision", precision,
                   "--threads", str(args.threads), "--frames", str(args.frames)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            row = {"variant": variant, "precision": precision}
            lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
            if p.returncode == 0 and lines:
                row.update(json.loads(lines[-1][7:]))
            else:
                row["error"] = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            print("ROW " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
