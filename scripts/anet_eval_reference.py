#!/usr/bin/env python3
"""Reference fixtures for e2e-tal's mAP: the official ActivityNet detection evaluation.

The functions below are the official `Evaluation/eval_detection.py` of the ActivityNet
challenge (github.com/activitynet/ActivityNet, MIT licence), kept line for line where they
compute something, with these changes only:

* file I/O and the `taxonomy` / `version` / `external_data` presence checks are dropped (the
  inputs come from memory);
* joblib's `Parallel` is a plain loop (same results);
* score and tIoU ordering use `argsort(kind="stable")[::-1]` instead of `argsort()[::-1]`.
  numpy's default sort is not stable (introsort, or an AVX-512 sort on some CPUs), so the
  official order of *equal* scores depends on the machine; for arrays of up to 16 elements the
  default sort is an insertion sort, which is stable, and gives exactly this order. e2e-tal
  implements this order, so the fixtures pin it;
* predictions whose label is not a ground-truth class are dropped (the official code raises
  `KeyError`); e2e-tal ignores and counts them.

Usage (needs numpy and pandas):

    pip install numpy pandas
    python3 scripts/anet_eval_reference.py            # writes tests/fixtures/map/*.json

Each fixture holds `gt` (ActivityNet ground truth), `pred` (ActivityNet results), and
`expected[anet|thumos]` = {thresholds, map, average_map, per_class}. The Rust test
`tests/map_parity.rs` evaluates the same inputs and compares to 1e-9.
"""

import json
import os
import random

import numpy as np
import pandas as pd

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "map")


# ---------------------------------------------------------------- official code (see above)

def segment_iou(target_segment, candidate_segments):
    tt1 = np.maximum(target_segment[0], candidate_segments[:, 0])
    tt2 = np.minimum(target_segment[1], candidate_segments[:, 1])
    # Intersection including Non-negative overlap score.
    segments_intersection = (tt2 - tt1).clip(0)
    # Segment union.
    segments_union = (candidate_segments[:, 1] - candidate_segments[:, 0]) \
        + (target_segment[1] - target_segment[0]) - segments_intersection
    # Compute overlap as the ratio of the intersection
    # over union of two segments.
    tIoU = segments_intersection.astype(float) / segments_union
    return tIoU


def interpolated_prec_rec(prec, rec):
    mprec = np.hstack([[0], prec, [0]])
    mrec = np.hstack([[0], rec, [1]])
    for i in range(len(mprec) - 1)[::-1]:
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1::] != mrec[0:-1])[0] + 1
    ap = np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])
    return ap


def compute_average_precision_detection(ground_truth, prediction, tiou_thresholds):
    ap = np.zeros(len(tiou_thresholds))
    if prediction.empty:
        return ap

    npos = float(len(ground_truth))
    lock_gt = np.ones((len(tiou_thresholds), len(ground_truth))) * -1
    # Sort predictions by decreasing score order.
    sort_idx = prediction['score'].values.argsort(kind="stable")[::-1]
    prediction = prediction.loc[sort_idx].reset_index(drop=True)

    # Initialize true positive and false positive vectors.
    tp = np.zeros((len(tiou_thresholds), len(prediction)))
    fp = np.zeros((len(tiou_thresholds), len(prediction)))

    # Adaptation to query faster
    ground_truth_gbvn = ground_truth.groupby('video-id')

    # Assigning true positive to truly grount truth instances.
    for idx, this_pred in prediction.iterrows():

        try:
            # Check if there is at least one ground truth in the video associated.
            ground_truth_videoid = ground_truth_gbvn.get_group(this_pred['video-id'])
        except Exception:
            fp[:, idx] = 1
            continue

        this_gt = ground_truth_videoid.reset_index()
        tiou_arr = segment_iou(this_pred[['t-start', 't-end']].values.astype(float),
                               this_gt[['t-start', 't-end']].values.astype(float))
        # We would like to retrieve the predictions with highest tiou score.
        tiou_sorted_idx = tiou_arr.argsort(kind="stable")[::-1]
        for tidx, tiou_thr in enumerate(tiou_thresholds):
            for jdx in tiou_sorted_idx:
                if tiou_arr[jdx] < tiou_thr:
                    fp[tidx, idx] = 1
                    break
                if lock_gt[tidx, this_gt.loc[jdx]['index']] >= 0:
                    continue
                # Assign as true positive after the filters above.
                tp[tidx, idx] = 1
                lock_gt[tidx, this_gt.loc[jdx]['index']] = idx
                break

            if fp[tidx, idx] == 0 and tp[tidx, idx] == 0:
                fp[tidx, idx] = 1

    tp_cumsum = np.cumsum(tp, axis=1).astype(float)
    fp_cumsum = np.cumsum(fp, axis=1).astype(float)
    recall_cumsum = tp_cumsum / npos

    precision_cumsum = tp_cumsum / (tp_cumsum + fp_cumsum)

    for tidx in range(len(tiou_thresholds)):
        ap[tidx] = interpolated_prec_rec(precision_cumsum[tidx, :], recall_cumsum[tidx, :])

    return ap


def import_ground_truth(data, subset):
    activity_index, cidx = {}, 0
    video_lst, t_start_lst, t_end_lst, label_lst = [], [], [], []
    for videoid, v in data['database'].items():
        if subset != v['subset']:
            continue
        for ann in v['annotations']:
            if ann['label'] not in activity_index:
                activity_index[ann['label']] = cidx
                cidx += 1
            video_lst.append(videoid)
            t_start_lst.append(float(ann['segment'][0]))
            t_end_lst.append(float(ann['segment'][1]))
            label_lst.append(activity_index[ann['label']])
    ground_truth = pd.DataFrame({'video-id': video_lst, 't-start': t_start_lst,
                                 't-end': t_end_lst, 'label': label_lst})
    return ground_truth, activity_index


def import_prediction(data, activity_index):
    video_lst, t_start_lst, t_end_lst = [], [], []
    label_lst, score_lst = [], []
    for videoid, v in data['results'].items():
        for result in v:
            if result['label'] not in activity_index:
                continue  # official: KeyError
            label = activity_index[result['label']]
            video_lst.append(videoid)
            t_start_lst.append(float(result['segment'][0]))
            t_end_lst.append(float(result['segment'][1]))
            label_lst.append(label)
            score_lst.append(result['score'])
    return pd.DataFrame({'video-id': video_lst, 't-start': t_start_lst, 't-end': t_end_lst,
                         'label': label_lst, 'score': score_lst})


def evaluate(gt, pred, subset, tiou_thresholds):
    ground_truth, activity_index = import_ground_truth(gt, subset)
    prediction = import_prediction(pred, activity_index)
    ap = np.zeros((len(tiou_thresholds), len(activity_index)))
    ground_truth_by_label = ground_truth.groupby('label')
    prediction_by_label = prediction.groupby('label')
    for label_name, cidx in activity_index.items():
        try:
            p = prediction_by_label.get_group(cidx).reset_index(drop=True)
        except KeyError:
            p = pd.DataFrame()
        ap[:, cidx] = compute_average_precision_detection(
            ground_truth_by_label.get_group(cidx).reset_index(drop=True), p, tiou_thresholds)
    m_ap = ap.mean(axis=1)
    return {
        "thresholds": [float(t) for t in tiou_thresholds],
        "map": [float(x) for x in m_ap],
        "average_map": float(m_ap.mean()),
        "per_class": {name: [float(x) for x in ap[:, c]] for name, c in activity_index.items()},
    }


# ---------------------------------------------------------------- fixture cases

def r2(x):
    return round(x, 2)


def random_case(rng, n_videos, n_classes, preds_per_gt, fp_per_video, score_levels=None,
                grid=False, dup_rate=0.0, other_subset=0.2, ghost_videos=0, unknown_labels=0,
                empty_classes=0):
    classes = ["class_%02d" % i for i in range(n_classes + empty_classes)]
    db, results = {}, {}
    for i in range(n_videos):
        vid = "v_%04d" % i
        subset = "training" if rng.random() < other_subset else "validation"
        duration = r2(rng.uniform(30, 200))
        anns = []
        for _ in range(rng.randint(0, 5)):
            if grid:  # integer grid: many equal tIoUs
                a = rng.randint(0, int(duration) - 10)
                b = a + rng.randint(1, 10)
            else:
                a = r2(rng.uniform(0, duration * 0.9))
                b = r2(min(duration, a + rng.uniform(0.5, duration / 3)))
            anns.append({"segment": [a, b], "label": rng.choice(classes[:n_classes])})
            if rng.random() < dup_rate:
                anns.append(dict(anns[-1]))
        db[vid] = {"subset": subset, "duration": duration, "annotations": anns}
        dets = []
        for ann in anns:
            for _ in range(preds_per_gt):
                a, b = ann["segment"]
                ln = b - a
                if grid:
                    s, e = a + rng.randint(-2, 2), b + rng.randint(-2, 2)
                else:
                    s, e = r2(a + rng.gauss(0, 0.2) * ln), r2(b + rng.gauss(0, 0.2) * ln)
                s, e = min(s, e), max(s, e)
                label = ann["label"] if rng.random() < 0.8 else rng.choice(classes[:n_classes])
                score = rng.random() if score_levels is None else rng.randint(1, score_levels) / score_levels
                dets.append({"label": label, "score": round(score, 4), "segment": [s, e]})
                if rng.random() < dup_rate:
                    dets.append(dict(dets[-1]))
        for _ in range(fp_per_video):
            a, b = sorted([r2(rng.uniform(0, duration)), r2(rng.uniform(0, duration))])
            score = rng.random() * 0.7 if score_levels is None else rng.randint(1, score_levels) / score_levels
            dets.append({"label": rng.choice(classes[:n_classes]), "score": round(score, 4),
                         "segment": [a, b]})
        for _ in range(unknown_labels):
            dets.append({"label": "not_a_class", "score": 0.99, "segment": [0, 5]})
        rng.shuffle(dets)
        if rng.random() < 0.9:  # some videos have no predictions at all
            results[vid] = dets
    for g in range(ghost_videos):
        results["ghost_%d" % g] = [{"label": classes[0], "score": 0.95, "segment": [0.0, 10.0]}]
    return {"database": db}, {"results": results}


CASES = {
    "basic": dict(n_videos=24, n_classes=5, preds_per_gt=2, fp_per_video=3),
    "duplicates": dict(n_videos=16, n_classes=4, preds_per_gt=2, fp_per_video=2, dup_rate=0.4),
    "score_ties": dict(n_videos=24, n_classes=4, preds_per_gt=3, fp_per_video=3, score_levels=5),
    "tiou_ties": dict(n_videos=20, n_classes=3, preds_per_gt=3, fp_per_video=2, grid=True,
                      score_levels=4, dup_rate=0.2),
    "unknown_videos_and_labels": dict(n_videos=16, n_classes=4, preds_per_gt=1, fp_per_video=2,
                                      ghost_videos=3, unknown_labels=1),
    "empty_classes": dict(n_videos=12, n_classes=6, preds_per_gt=1, fp_per_video=0,
                          other_subset=0.0),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    thresholds = {"anet": np.linspace(0.5, 0.95, 10), "thumos": np.linspace(0.3, 0.7, 5)}
    for i, (name, kw) in enumerate(sorted(CASES.items())):
        rng = random.Random(1000 + i)
        gt, pred = random_case(rng, **kw)
        if name == "empty_classes":
            # Drop every prediction of two classes that have ground truth: AP 0 for them.
            present = sorted({a["label"] for v in gt["database"].values() for a in v["annotations"]})
            gone = set(present[:2])
            pred["results"] = {k: [d for d in v if d["label"] not in gone]
                               for k, v in pred["results"].items()}
        expected = {k: evaluate(gt, pred, "validation", t) for k, t in thresholds.items()}
        path = os.path.join(OUT, name + ".json")
        with open(path, "w") as f:
            json.dump({"subset": "validation", "gt": gt, "pred": pred, "expected": expected}, f,
                      separators=(",", ":"))
        print("%-28s anet avg %.4f thumos avg %.4f (%d bytes)" % (
            name, expected["anet"]["average_map"], expected["thumos"]["average_map"],
            os.path.getsize(path)))


if __name__ == "__main__":
    main()
