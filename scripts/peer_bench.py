#!/usr/bin/env python3
"""PyTorch rows for `cargo bench --bench reversible -- --peer PYTHON`.

The same workload as the Rust bench: a chain of ViT-S blocks (dim 384, 6 heads, MLP 1536,
pre-norm, GELU), batch 1, f32, one training step = forward, `(out * w).sum()`, backward. Three
variants, each the thing a PyTorch user would run:

  plain       ordinary autograd, attention through F.scaled_dot_product_attention (SDPA)
  checkpoint  torch.utils.checkpoint (use_reentrant=False) around every block
  reversible  revlib.ReversibleSequential over the blocks' two branches (y1 = x1 + F(x2),
              y2 = x2 + G(y1), the input in both streams), memory_mode=autograd_function

Each (variant, depth) runs in a fresh subprocess, twice: once for time (median of --reps steps
after a warm-up) and once for memory: the peak resident-set increase over one step (VmHWM reset
through /proc/self/clear_refs) with the parameter gradients already allocated, so it counts
activations and workspace only, under a fixed glibc mmap threshold so freed tensors return to
the OS and RSS follows live memory. Prints one JSON object per row on stdout ("ROW {...}").

Needs torch and (for the reversible rows) revlib in the interpreter that runs it; a
reversible row without revlib is reported as an error row, not skipped silently.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DIM, HEADS, MLP = 384, 6, 1536


def model(variant, depth):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(DIM)
            self.q, self.k, self.v = (nn.Linear(DIM, DIM) for _ in range(3))
            self.proj = nn.Linear(DIM, DIM)

        def forward(self, x):
            b, n, c = x.shape
            heads = lambda t: t.view(b, n, HEADS, c // HEADS).transpose(1, 2)
            h = self.norm(x)
            o = F.scaled_dot_product_attention(heads(self.q(h)), heads(self.k(h)), heads(self.v(h)))
            return self.proj(o.transpose(1, 2).reshape(b, n, c))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(DIM)
            self.fc1, self.fc2 = nn.Linear(DIM, MLP), nn.Linear(MLP, DIM)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(self.norm(x))))

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.ModuleList(Attention() for _ in range(depth))
            self.mlp = nn.ModuleList(Mlp() for _ in range(depth))
            if variant == "reversible":
                import revlib

                branches = [m for pair in zip(self.attn, self.mlp) for m in pair]
                self.rev = revlib.ReversibleSequential(
                    *branches, split_dim=-1, memory_mode=revlib.MemoryModes.autograd_function)

        def block(self, i, x):
            x = x + self.attn[i](x)
            return x + self.mlp[i](x)

        def forward(self, x):
            if variant == "reversible":
                y = self.rev(torch.cat([x, x], -1))
                return (y[..., :DIM] + y[..., DIM:]) / 2  # the streams averaged, as the crate does
            for i in range(depth):
                if variant == "checkpoint":
                    x = torch.utils.checkpoint.checkpoint(self.block, i, x, use_reentrant=False)
                else:
                    x = self.block(i, x)
            return x

    torch.manual_seed(0)
    return Chain()


def rss():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024.0
    return out


def worker(variant, depth, tokens, what, reps, threads):
    import gc

    import torch

    torch.set_num_threads(threads)
    m = model(variant, depth)
    torch.manual_seed(1)
    x = torch.randn(1, tokens, DIM, requires_grad=True)
    w = torch.randn(1, tokens, DIM)

    def step():
        t = time.perf_counter()
        (m(x) * w).sum().backward()
        return time.perf_counter() - t

    step()  # warm-up: first touch, thread pool, allocator; allocates the gradients
    if what == "time":
        secs = [step() for _ in range(reps)]
        row = {"step_s": statistics.median(secs), "min_s": min(secs)}
    else:
        m.zero_grad(set_to_none=False)
        x.grad.zero_()
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = rss()["VmRSS"]
        step()
        row = {"activations_mib": rss()["VmHWM"] - before}
    print("RESULT " + json.dumps(row), flush=True)


def measure(variant, depth, tokens, what, reps, threads):
    env = dict(os.environ)
    if what == "mem":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--depth", str(depth),
           "--tokens", str(tokens), "--what", what, "--reps", str(reps), "--threads", str(threads)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    err = (p.stderr.strip().splitlines() or ["exited with status %d" % p.returncode])[-1]
    return {"error": err}


def ops(tokens, threads):
    """The components of one block, each forward + backward alone (median of 5 after a warm-up):
    the PyTorch side of `cargo bench --bench block_ops`."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n = tokens
    x, xh, qkv = torch.randn(1, n, DIM), torch.randn(1, n, MLP), torch.randn(1, HEADS, n, DIM // HEADS)
    ln, fc1, fc2 = nn.LayerNorm(DIM), nn.Linear(DIM, MLP), nn.Linear(MLP, DIM)
    block = model("plain", 1)

    def attention(sdpa):
        q, k, v = (qkv.clone().requires_grad_() for _ in range(3))
        if sdpa:
            return F.scaled_dot_product_attention(q, k, v)
        return ((q * (DIM // HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v

    leaf = lambda t: t.clone().requires_grad_()
    rows = {
        "layer norm": lambda: ln(leaf(x)),
        "linear 384 -> 1536": lambda: fc1(leaf(x)),
        "linear 1536 -> 384": lambda: fc2(leaf(xh)),
        "gelu": lambda: F.gelu(leaf(xh)),
        "attention (memory-efficient)": lambda: attention(True),
        "attention (naive)": lambda: attention(False),
        "whole ViT-S block": lambda: block(leaf(x)),
    }
    for name, f in rows.items():
        def step():
            t = time.perf_counter()
            f().sum().backward()
            return time.perf_counter() - t

        step()
        print("OP " + json.dumps({"name": name, "step_s": statistics.median(step() for _ in range(5))}),
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", action="store_true", help="per-component times of one block instead")
    ap.add_argument("--tokens", type=int, default=1568)
    ap.add_argument("--depths", default="12,24")
    ap.add_argument("--variants", default="plain,checkpoint,reversible")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker")
    ap.add_argument("--depth", type=int)
    ap.add_argument("--what", choices=["time", "mem"])
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.depth, a.tokens, a.what, a.reps, a.threads)
    if a.ops:
        return ops(a.tokens, a.threads)
    import torch

    print("PEER " + json.dumps({"torch": torch.__version__, "threads": a.threads}), flush=True)
    for depth in [int(d) for d in a.depths.split(",")]:
        for variant in a.variants.split(","):
            row = {"variant": variant, "depth": depth, "tokens": a.tokens}
            for what in ("time", "mem"):
                row.update(measure(variant, depth, a.tokens, what, a.reps, a.threads))
                if "error" in row:
                    break
            print("ROW " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
