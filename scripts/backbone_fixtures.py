#!/usr/bin/env python3
"""Parity fixtures for e2e-tal's backbones, from the PyTorch reference implementations.

Builds each reference model at a tiny configuration with a fixed seed, gives every parameter
and BatchNorm statistic a random (non-default) value, runs it on a fixed input in eval mode,
and writes, for each model NAME:

* tests/fixtures/backbones/NAME.safetensors     the reference state_dict, reference key names
  (plus vit.pth, the ViT's state_dict saved with torch.save, and vit_f16.pth / vit_bf16.pth,
  the same in half precision)
* tests/fixtures/backbones/NAME_io.safetensors  `input` ([N, 3, F, H, W]), `output` (final
  tokens / map), `features` (per clip), `intermediate` (ViT block 0, Swin stage 0, ResNet stage 1
  output, as tokens [N, L, C])

References: Hugging Face transformers `VideoMAEModel` (ViT, eager attention), torchvision
`SwinTransformer3d` (the class behind `swin3d_t/s/b`), torchvision `VideoResNet` built from its
own `BasicBlock`, `Conv3DSimple` (r3d) and `Conv2Plus1D` (R(2+1)D) with small widths (torchvision
hard-codes 64..512 channels, too large for committed fixtures). `vit_v2.safetensors` holds the
same ViT weights under the original VideoMAEv2 key names (fused `qkv.weight`), to test that key
map against `vit_io.safetensors`.

    pip install torch torchvision transformers safetensors
    python3 scripts/backbone_fixtures.py

The Rust tests in tests/backbone_parity.rs load these files; CI only reads them.
"""

import os

import torch
from safetensors.torch import save_file
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "backbones")


def randomize(model, gen):
    """Random values for every parameter and BN statistic (the defaults hide layout bugs)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() == 1 else 0.2))
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm_before.weight",
                              "layernorm_after.weight", "fc_norm.weight", "layernorm.weight")):
                p.add_(1.0)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.weight.data.abs_().add_(0.5)


def save(name, model, inp, output, features, state=None, inter=None):
    """Weights as NAME.safetensors; input/output as NAME_io.safetensors unless `state` is given
    (another key layout of a model whose outputs were already saved)."""
    files = [name + ".safetensors"]
    if state is None:
        state = model.state_dict()
        save_file({"input": inp.contiguous(), "output": output.contiguous(),
                   "features": features.contiguous(), "intermediate": inter.contiguous()},
                  os.path.join(OUT, name + "_io.safetensors"))
        files.append(name + "_io.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(OUT, name + ".safetensors"))
    size = sum(os.path.getsize(os.path.join(OUT, f)) for f in files)
    print(f"{name:12s} output {tuple(output.shape)} features {tuple(features.shape)} ({size} bytes)")


def half_pth(path):
    sd = torch.load(path)
    for dtype, suffix in [(torch.float16, "f16"), (torch.bfloat16, "bf16")]:
        torch.save({k: v.to(dtype) for k, v in sd.items()}, path.replace(".pth", f"_{suffix}.pth"))


def vit(gen):
    from transformers import VideoMAEConfig, VideoMAEModel
    cfg = VideoMAEConfig(image_size=16, patch_size=8, num_channels=3, num_frames=4, tubelet_size=2,
                         hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         qkv_bias=True, use_mean_pooling=True, attn_implementation="eager")
    model = VideoMAEModel(cfg).eval()
    randomize(model, gen)
    x = torch.randn(1, 3, 4, 16, 16, generator=gen)  # ours: [N, C, F, H, W]
    with torch.no_grad():
        out = model(pixel_values=x.permute(0, 2, 1, 3, 4), output_hidden_states=True)
    tokens = out.last_hidden_state
    save("vit", model, x, tokens, tokens.mean(1), inter=out.hidden_states[1])  # block 0
    # The same state_dict as a PyTorch pickle, for the `.pth` loading path.
    torch.save(model.state_dict(), os.path.join(OUT, "vit.pth"))
    # ... and as `model.half()` / `model.bfloat16()` would save it (loaded converted to f32).
    half_pth(os.path.join(OUT, "vit.pth"))
    # The same weights under the original VideoMAEv2 names, qkv fused.
    sd = model.state_dict()
    v2 = {"patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
          "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"]}
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        a = p + "attention.attention."
        b = f"blocks.{i}."
        v2[b + "attn.qkv.weight"] = torch.cat([sd[a + "query.weight"], sd[a + "key.weight"], sd[a + "value.weight"]])
        v2[b + "attn.q_bias"] = sd[a + "query.bias"]
        v2[b + "attn.v_bias"] = sd[a + "value.bias"]
        v2[b + "attn.proj.weight"] = sd[p + "attention.output.dense.weight"]
        v2[b + "attn.proj.bias"] = sd[p + "attention.output.dense.bias"]
        for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
            v2[b + ours + ".weight"] = sd[p + theirs + ".weight"]
            v2[b + ours + ".bias"] = sd[p + theirs + ".bias"]
        v2[b + "mlp.fc1.weight"] = sd[p + "intermediate.dense.weight"]
        v2[b + "mlp.fc1.bias"] = sd[p + "intermediate.dense.bias"]
        v2[b + "mlp.fc2.weight"] = sd[p + "output.dense.weight"]
        v2[b + "mlp.fc2.bias"] = sd[p + "output.dense.bias"]
    save("vit_v2", model, x, tokens, tokens.mean(1), state=v2)


def swin(gen):
    from torchvision.models.video.swin_transformer import SwinTransformer3d
    model = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=8, depths=[2, 2], num_heads=[1, 2],
                              window_size=[2, 2, 2], stochastic_depth_prob=0.0, num_classes=5).eval()
    randomize(model, gen)
    # 8 frames of 16x20: stage 0 tokens 4x4x5 (padded to 6 wide in attention); stage 1 4x2x3,
    # where the window shrinks in H (no shift there) and keeps its shift in T and W.
    x = torch.randn(1, 3, 8, 16, 20, generator=gen)
    with torch.no_grad():
        stage0 = model.features[0](model.pos_drop(model.patch_embed(x)))
        y = model.norm(model.features[1:](stage0))
    save("swin", model, x, y, y.mean(dim=(1, 2, 3)), inter=stage0.flatten(1, 3))


def resnet(gen, kind):
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, Conv3DSimple, VideoResNet
    widths, layers = [4, 8, 8, 16], [2, 1, 1, 1]

    class TinyVideoResNet(VideoResNet):
        def __init__(self, conv_maker, stem):
            nn.Module.__init__(self)
            self.inplanes = widths[0]
            self.stem = stem
            self.layer1 = self._make_layer(BasicBlock, conv_maker, widths[0], layers[0], stride=1)
            self.layer2 = self._make_layer(BasicBlock, conv_maker, widths[1], layers[1], stride=2)
            self.layer3 = self._make_layer(BasicBlock, conv_maker, widths[2], layers[2], stride=2)
            self.layer4 = self._make_layer(BasicBlock, conv_maker, widths[3], layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
            self.fc = nn.Linear(widths[3], 5)

    w0 = widths[0]
    if kind == "r3d":
        stem = nn.Sequential(nn.Conv3d(3, w0, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                             nn.BatchNorm3d(w0), nn.ReLU(inplace=True))
        model = TinyVideoResNet(Conv3DSimple, stem)
    else:  # torchvision's R2Plus1dStem with 6 instead of 45 middle channels
        stem = nn.Sequential(nn.Conv3d(3, 6, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
                             nn.BatchNorm3d(6), nn.ReLU(inplace=True),
                             nn.Conv3d(6, w0, (3, 1, 1), (1, 1, 1), (1, 0, 0), bias=False),
                             nn.BatchNorm3d(w0), nn.ReLU(inplace=True))
        model = TinyVideoResNet(Conv2Plus1D, stem)
    model.eval()
    randomize(model, gen)
    x = torch.randn(1, 3, 8, 16, 16, generator=gen)
    with torch.no_grad():
        l2 = model.layer2(model.layer1(model.stem(x)))
        y = model.layer4(model.layer3(l2))
    save(kind, model, x, y, y.mean(dim=(2, 3, 4)), inter=l2.flatten(2).transpose(1, 2))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    vit(torch.Generator().manual_seed(1))
    swin(torch.Generator().manual_seed(2))
    resnet(torch.Generator().manual_seed(3), "r3d")
    resnet(torch.Generator().manual_seed(4), "r2plus1d")


if __name__ == "__main__":
    main()
