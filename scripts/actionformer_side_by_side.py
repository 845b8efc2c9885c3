#!/usr/bin/env python3
"""ActionFormer's own training and evaluation (the official code's train.py / eval.py steps, on
the CPU) on a feature set, for the side-by-side table in docs/results.md.

For each seed: ActionFormer's dataset and loader (drop_last, shuffled), model, optimizer
(AdamW, decay on conv weights), per-step warm-up + cosine scheduler, EMA, `train_one_epoch` for
every epoch (timed), then `valid_one_epoch` of the EMA model with ActionFormer's ANETdetection
at the dataset's tIoU thresholds. Prints one JSON line per seed.

    python3 scripts/synth_features.py --out /tmp/synth_features
    $HOME/.cache/e2etal-peer/venv/bin/python scripts/actionformer_side_by_side.py \
        --official /tmp/af --data /tmp/synth_features --seeds 0,1,2 --threads 2
"""

import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="checkout of actionformer_release")
    ap.add_argument("--data", required=True, help="folder with config.yaml, annotations.json, features/")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, args.official)
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    # The official evaluation uses `np.float`, removed in NumPy 1.24 (its requirements pin an
    # older NumPy): the alias it meant.
    np.float = float
    import nms_1d_cpu  # noqa: F401  (from the `actionformer` package)
    from torch import nn
    from libs.core import load_config
    from libs.datasets import make_dataset, make_data_loader
    from libs.modeling import make_meta_arch
    from libs.utils import (train_one_epoch, valid_one_epoch, ANETdetection, make_optimizer,
                            make_scheduler, fix_random_seed, ModelEma)

    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = load_config(os.path.join(args.data, "config.yaml"))
        cfg["init_rand_seed"] = seed
        cfg["dataset"]["json_file"] = os.path.join(args.data, "annotations.json")
        cfg["dataset"]["feat_folder"] = os.path.join(args.data, "features")
        rng = fix_random_seed(seed, include_cuda=False)
        train_dataset = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
        cfg["model"]["train_cfg"]["head_empty_cls"] = train_dataset.get_attributes()["empty_label_ids"]
        train_loader = make_data_loader(train_dataset, True, rng, cfg["loader"]["batch_size"], 1)
        model = nn.DataParallel(make_meta_arch(cfg["model_name"], **cfg["model"]))
        optimizer = make_optimizer(model, cfg["opt"])
        scheduler = make_scheduler(optimizer, cfg["opt"], len(train_loader))
        model_ema = ModelEma(model)
        epochs = cfg["opt"]["epochs"] + cfg["opt"]["warmup_epochs"]
        seconds = []
        for epoch in range(epochs):
            t0 = time.time()
            train_one_epoch(train_loader, model, optimizer, scheduler, epoch, model_ema=model_ema,
                            clip_grad_l2norm=cfg["train_cfg"]["clip_grad_l2norm"], print_freq=10**9)
            seconds.append(time.time() - t0)
        val_dataset = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
        val_loader = make_data_loader(val_dataset, False, None, 1, 1)
        det_eval = ANETdetection(val_dataset.json_file, val_dataset.split[0],
                                 tiou_thresholds=val_dataset.get_attributes()["tiou_thresholds"],
                                 num_workers=1)
        t0 = time.time()
        mAP = valid_one_epoch(val_loader, model_ema.module, -1, evaluator=det_eval, print_freq=10**9)
        print(json.dumps({"seed": seed, "average_map": float(mAP), "epochs": epochs,
                          "seconds_per_epoch": sum(seconds) / len(seconds),
                          "eval_seconds": time.time() - t0}), flush=True)


if __name__ == "__main__":
    main()
