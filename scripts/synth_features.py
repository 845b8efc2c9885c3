#!/usr/bin/env python3
"""A synthetic pre-extracted feature set in ActionFormer's THUMOS layout, for training
ActionFormer and `e2e-tal train --features` side by side on the same data.

Each video has 150-400 feature rows of width 32 (a feature every 4 frames at 30 fps, each
covering 16 frames) holding Gaussian noise; inside an action of class k a class prototype is
added, and the first and last rows of each action carry start / end markers, so classes and
boundaries can be learned but not read off one row. Subsets `Validation` (training, 64 videos)
and `Test` (evaluation, 32 videos) as ActionFormer's THUMOS file names them; `label_id` gives the
class order.

    python3 scripts/synth_features.py --out /tmp/synth_features [--seed 0]

writes OUT/annotations.json, OUT/features/<id>.npy and OUT/config.yaml (ActionFormer's THUMOS
I3D configuration at this data's sizes: input 32, 4 classes, embedding 128, window 9,
max_seq_len 512, 20 epochs after the 5 warm-up ones).
"""

import argparse
import json
import os

import numpy as np

CLASSES = ["Jump", "Throw", "Swing", "Dive"]
FPS, STRIDE, NFRAMES, WIDTH = 30.0, 4, 16, 32

CONFIG = """dataset_name: thumos
train_split: ['validation']
val_split: ['test']
dataset: {
  json_file: annotations.json,
  feat_folder: features,
  file_prefix: ~,
  file_ext: .npy,
  num_classes: 4,
  input_dim: 32,
  feat_stride: 4,
  num_frames: 16,
  trunc_thresh: 0.5,
  crop_ratio: [0.9, 1.0],
  max_seq_len: 512,
}
model: {
  fpn_type: identity,
  max_buffer_len_factor: 6.0,
  n_mha_win_size: 9,
  embd_dim: 128,
  fpn_dim: 128,
  head_dim: 128,
}
opt: {
  learning_rate: 0.0001,
  epochs: 20,
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


def video(rng, protos, markers):
    t = int(rng.integers(150, 401))
    x = rng.normal(0.0, 1.0, (t, WIDTH)).astype(np.float32)
    acts, pos = [], int(rng.integers(5, 30))
    while True:
        length = int(rng.integers(10, 61))
        if pos + length >= t - 5:
            break
        k = int(rng.integers(0, len(CLASSES)))
        x[pos:pos + length] += protos[k]
        x[pos:pos + 2] += markers[0]
        x[pos + length - 2:pos + length] += markers[1]
        # Row i is centred at frame 4 i + 8.
        start = (pos * STRIDE + 0.5 * NFRAMES) / FPS
        end = ((pos + length) * STRIDE + 0.5 * NFRAMES) / FPS
        acts.append({"label": CLASSES[k], "label_id": k,
                     "segment": [round(start, 2), round(end, 2)],
                     "segment(frames)": [round(start * FPS, 1), round(end * FPS, 1)]})
        pos += length + int(rng.integers(10, 80))
    duration = round((t * STRIDE + NFRAMES) / FPS, 3)
    return x, acts, duration


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    protos = rng.normal(0.0, 0.8, (len(CLASSES), WIDTH)).astype(np.float32)
    markers = rng.normal(0.0, 1.0, (2, WIDTH)).astype(np.float32)
    os.makedirs(os.path.join(args.out, "features"), exist_ok=True)
    db = {}
    for subset, n in [("Validation", 64), ("Test", 32)]:
        for i in range(n):
            vid = f"video_{subset.lower()}_{i:04d}"
            x, acts, duration = video(rng, protos, markers)
            np.save(os.path.join(args.out, "features", vid + ".npy"), x)
            db[vid] = {"subset": subset, "duration": duration, "fps": FPS, "annotations": acts}
    with open(os.path.join(args.out, "annotations.json"), "w") as f:
        json.dump({"database": db}, f)
    with open(os.path.join(args.out, "config.yaml"), "w") as f:
        f.write(CONFIG)
    print(f"{len(db)} videos -> {args.out}")


if __name__ == "__main__":
    main()
