#!/usr/bin/env python3
"""Parity fixtures for e2e-tal's ActionFormer head, made with the official ActionFormer code.

Builds ActionFormer (happyharrycn/actionformer_release, commit 61ea7eb) from its THUMOS-14 I3D
configuration at reduced widths (input 8, embedding / FPN / head 8, 4 heads, 4 classes,
window 9, max_seq_len 256), gives every parameter a random value away from its initial one
(residual scales, norm weights and biases, conv biases, level scales, output biases), saves it
as ActionFormer's train.py saves checkpoints, and writes, under tests/fixtures/actionformer/:

* epoch_003.pth.tar   {'epoch', 'state_dict', 'scheduler', 'state_dict_ema'} as train.py
                      saves it, keys prefixed `module.`, without 'optimizer' (its moments
                      would triple the file; `--full PATH` writes the checkpoint with it
                      too, which `cargo test --test actionformer_parity -- --ignored` reads
                      from $E2E_TAL_AF_FULL_CHECKPOINT); `state_dict_ema` holds the weights
                      the outputs below come from, `state_dict` other ones (the EMA is what
                      ActionFormer evaluates with)
* thumos_tiny.yaml    the configuration (ActionFormer's YAML layout)
* annotations.json    three test videos (200, 256 = max_seq_len and 600 feature rows) in
                      ActionFormer's THUMOS JSON layout (fps, duration, label_id, ...)
* features/<id>.npy   their [T, 8] float32 features
* outputs.safetensors for each video: valid per-level classification logits and offsets
                      (eval mode, `<id>.cls.<level>` [T_l, 4], `<id>.off.<level>` [T_l, 2]),
                      the detections after ActionFormer's post-processing (`<id>.dets`
                      [N, 4]: start s, end s, score, label); for the training batch of the
                      two shorter videos: label-assignment targets at valid points
                      (`<id>.gt_cls` [P, 4], `<id>.gt_off` [P, 2]) and the losses
                      (`losses`: cls, reg, final, with the normaliser after one update) and the
                      gradients of the final loss (`grad_norms`, one per parameter, names in
                      the `grad_names` metadata; `grad.<name>` whole for six tensors)

    bash ../shared/peer/setup_peer.sh   # torch + the `actionformer` package (its nms_1d_cpu)
    git clone https://github.com/happyharrycn/actionformer_release /tmp/af  # 61ea7eb
    $HOME/.cache/e2etal-peer/venv/bin/python scripts/actionformer_fixtures.py --official /tmp/af

The Rust tests in tests/actionformer_parity.rs read these files; CI only reads them.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "actionformer")
VIDEOS = [("video_test_a", 200), ("video_test_b", 256), ("video_test_c", 600)]
CLASSES = ["BaseballPitch", "CliffDiving", "Diving", "JavelinThrow"]
FPS, STRIDE, NFRAMES = 30.0, 4, 16

YAML = """dataset_name: thumos
train_split: ['validation']
val_split: ['test']
dataset: {
  json_file: annotations.json,
  feat_folder: features,
  file_prefix: ~,
  file_ext: .npy,
  num_classes: 4,
  input_dim: 8,
  feat_stride: 4,
  num_frames: 16,
  trunc_thresh: 0.5,
  crop_ratio: [0.9, 1.0],
  max_seq_len: 256,
}
model: {
  fpn_type: identity,
  max_buffer_len_factor: 6.0,
  n_mha_win_size: 9,
  embd_dim: 8,
  fpn_dim: 8,
  head_dim: 8,
}
opt: {
  learning_rate: 0.0001,
  epochs: 30,
  weight_decay: 0.05,
}
loader: {
  batch_size: 2,
}
train_cfg: {
  init_loss_norm: 100,
  clip_grad_l2norm: 1.0,
  cls_prior_prob: 0.01,
  center_sample: radius,
  center_sample_radius: 1.5,
}
test_cfg: {
  voting_thresh: 0.7,
  pre_nms_topk: 2000,
  max_seg_num: 200,
  min_score: 0.001,
  multiclass_nms: True,
}
output_folder: ./ckpt/
"""


def randomize(model, gen):
    """Every parameter away from its initial value, at a scale that keeps activations O(1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if name.endswith("drop_path_attn.scale") or name.endswith("drop_path_mlp.scale"):
                p.copy_(0.3 + 0.4 * torch.rand(p.shape, generator=gen))
            elif ".scale." in name or name.endswith(".scale"):
                p.copy_(0.7 + 0.6 * torch.rand(p.shape, generator=gen))
            elif "norm" in name or name.endswith("ln1.weight") or name.endswith("ln2.weight") \
                    or name.endswith("ln1.bias") or name.endswith("ln2.bias"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * r)
            elif name.endswith("bias"):
                base = p.clone() if "cls_head.cls_head" in name else 0.0
                p.copy_(base + 0.3 * r)
            else:
                fan_in = p[0].numel()
                p.copy_(r / fan_in ** 0.5)


def annotations(gen):
    db = {}
    for vid, t in VIDEOS:
        duration = (t * STRIDE + NFRAMES) / FPS
        acts = []
        for _ in range(4):
            start = float(torch.rand(1, generator=gen)) * duration * 0.8
            length = 0.5 + float(torch.rand(1, generator=gen)) * duration * 0.2
            end = min(start + length, duration)
            k = int(torch.randint(0, len(CLASSES), (1,), generator=gen))
            acts.append({"label": CLASSES[k], "segment": [round(start, 2), round(end, 2)],
                         "segment(frames)": [round(start * FPS, 1), round(end * FPS, 1)],
                         "label_id": k})
        db[vid] = {"subset": "Test", "duration": round(duration, 3), "fps": FPS,
                   "annotations": acts}
    # ActionFormer's class order comes from label_id; list the first class first to be sure.
    return {"database": db}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="checkout of actionformer_release")
    ap.add_argument("--full", help="also write the checkpoint with its optimizer state here")
    args = ap.parse_args()
    sys.path.insert(0, args.official)
    import nms_1d_cpu  # noqa: F401  (from the `actionformer` package; the official code needs it)
    from libs.core.config import _merge, DEFAULTS, _update_config
    from libs.modeling import make_meta_arch
    from libs.utils import make_optimizer, make_scheduler, ModelEma
    import yaml
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    os.makedirs(os.path.join(OUT, "features"), exist_ok=True)
    with open(os.path.join(OUT, "thumos_tiny.yaml"), "w") as f:
        f.write(YAML)
    cfg = yaml.load(YAML, Loader=yaml.FullLoader)
    _merge(DEFAULTS, cfg)
    cfg = _update_config(cfg)

    gen = torch.Generator().manual_seed(20261205)
    torch.manual_seed(0)
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    # Deterministic training-mode outputs: no stochastic depth (the scales stay).
    for m in model.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    model = torch.nn.DataParallel(model)
    randomize(model, gen)
    ema = ModelEma(model)
    # The non-EMA weights differ, so the import must take `state_dict_ema`.
    optimizer = make_optimizer(model, cfg["opt"])
    scheduler = make_scheduler(optimizer, cfg["opt"], 10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    optimizer.zero_grad()
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    scheduler.step()
    state = {"epoch": 3, "state_dict": model.state_dict(), "scheduler": scheduler.state_dict(),
             "optimizer": optimizer.state_dict(), "state_dict_ema": ema.module.state_dict()}
    if args.full:
        torch.save(state, args.full)
    state.pop("optimizer")
    torch.save(state, os.path.join(OUT, "epoch_003.pth.tar"))
    net = ema.module.module

    ann = annotations(gen)
    with open(os.path.join(OUT, "annotations.json"), "w") as f:
        json.dump(ann, f, indent=1)
    out = {}
    items = []
    for vid, t in VIDEOS:
        feats = torch.randn(t, cfg["dataset"]["input_dim"], generator=gen)
        np.save(os.path.join(OUT, "features", vid + ".npy"), feats.numpy().astype(np.float32))
        v = ann["database"][vid]
        segs = np.asarray([a["segment"] for a in v["annotations"]], dtype=np.float32)
        labels = np.asarray([a["label_id"] for a in v["annotations"]], dtype=np.int64)
        offset = 0.5 * NFRAMES / STRIDE
        items.append({"video_id": vid, "feats": feats.t().contiguous(),
                      "segments": torch.from_numpy(segs * FPS / STRIDE - offset),
                      "labels": torch.from_numpy(labels), "fps": FPS,
                      "duration": v["duration"], "feat_stride": STRIDE,
                      "feat_num_frames": NFRAMES})

    net.eval()
    with torch.no_grad():
        for it in items:
            vid = it["video_id"]
            x, mask = net.preprocessing([it])
            feats, masks = net.backbone(x, mask)
            fpn_feats, fpn_masks = net.neck(feats, masks)
            cls = net.cls_head(fpn_feats, fpn_masks)
            off = net.reg_head(fpn_feats, fpn_masks)
            for lvl, (c, o, m) in enumerate(zip(cls, off, fpn_masks)):
                n = int(m.sum())
                out[f"{vid}.cls.{lvl}"] = c[0, :, :n].t().contiguous()
                out[f"{vid}.off.{lvl}"] = o[0, :, :n].t().contiguous()
            res = net([it])[0]
            out[f"{vid}.dets"] = torch.cat([res["segments"], res["scores"][:, None],
                                            res["labels"][:, None].float()], 1).contiguous()
            print(f"{vid}: {x.shape[-1]} padded, {res['segments'].shape[0]} detections")

    # Training mode on the batch of the two videos up to max_seq_len: targets and losses.
    net.train()
    batch = items[:2]
    x, mask = net.preprocessing(batch)
    feats, masks = net.backbone(x, mask)
    fpn_feats, fpn_masks = net.neck(feats, masks)
    points = net.point_generator(fpn_feats)
    gt_cls, gt_off = net.label_points(points, [b["segments"] for b in batch],
                                      [b["labels"] for b in batch])
    valid = torch.cat([m.squeeze(1) for m in fpn_masks], 1)
    for b, it in enumerate(batch):
        out[f"{it['video_id']}.gt_cls"] = gt_cls[b][valid[b]].contiguous()
        out[f"{it['video_id']}.gt_off"] = gt_off[b][valid[b]].contiguous()
    losses = net(batch)
    out["losses"] = torch.tensor([float(losses["cls_loss"]), float(losses["reg_loss"]),
                                  float(losses["final_loss"]), float(net.loss_normalizer)])
    print("losses", out["losses"].tolist())
    # The gradients of the final loss: every parameter's norm, and a few tensors whole.
    net.zero_grad()
    losses["final_loss"].backward()
    names = [n for n, p in net.named_parameters() if p.grad is not None]
    out["grad_norms"] = torch.stack([net.get_parameter(n).grad.norm() for n in names])
    for n in ["backbone.embd.0.conv.weight", "backbone.branch.4.drop_path_attn.scale",
              "backbone.stem.1.attn.key.weight", "cls_head.cls_head.conv.bias",
              "reg_head.scale.2.scale", "neck.fpn_norms.5.weight"]:
        out["grad." + n] = net.get_parameter(n).grad.reshape(-1).contiguous()
    save_file({k: v.float().contiguous() for k, v in out.items()},
              os.path.join(OUT, "outputs.safetensors"), metadata={"grad_names": ",".join(names)})
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"fixtures: {size} bytes")


if __name__ == "__main__":
    main()
