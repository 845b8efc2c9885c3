//! What the training loop does differently with several ranks (`crate::distributed`): the
//! start and the parameters checked equal on every rank, a step's gradients, loss and drift
//! summed over them, validation detections split across them. With one rank each is a no-op.

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use sha2::{Digest, Sha256};

use super::checkpoint::CheckpointMeta;
use super::config::{TrainConfig, TrainMode};
use super::dataset::TalDataset;
use super::model::{Detector, TalModel};
use super::step::{Computed, StepGrads};
use crate::backbone::BackboneOutput;
use crate::data::annotations::VideoDetections;
use crate::distributed::{GradSum, Ranks, share};
use crate::error::{Error, Result};
use crate::reversible::{Drift, SegmentDrift};
use crate::tal::postprocess::Segment;

/// Collective: refuse a run whose ranks would not train one model: fewer videos per step than
/// ranks, or a rank whose configuration, dataset, starting point or parameters differ from
/// rank 0's (started with other arguments, another data folder or other weights).
pub(crate) fn check_start(
    ranks: &Ranks,
    meta: &CheckpointMeta,
    data: &TalDataset,
    model: &TalModel,
) -> Result<()> {
    if !ranks.is_distributed() {
        return Ok(());
    }
    let cfg = &meta.config;
    let config = serde_json::to_vec(cfg).map_err(|e| Error::Config(e.to_string()))?;
    ranks.check_same("configuration", &config)?;
    let videos: Vec<(&str, usize, String)> = data
        .videos
        .iter()
        .map(|v| (v.id.as_str(), v.len(), format!("{:?}", v.subset)))
        .collect();
    let dataset = format!("{:?} {videos:?}", data.classes);
    ranks.check_same(
        "dataset (classes, video ids, lengths, subsets)",
        dataset.as_bytes(),
    )?;
    let s = &meta.state;
    let at = format!("{} {} {}", s.epoch, s.global_step, s.normalizer);
    ranks.check_same("starting step", at.as_bytes())?;
    check_params(ranks, model, None).map(drop)
}

/// Refuse a global batch (`videos_per_step`) smaller than the number of ranks: a rank would
/// never have a video to train on.
pub(crate) fn check_batch(ranks: &Ranks, cfg: &TrainConfig) -> Result<()> {
    if cfg.videos_per_step >= ranks.size() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "videos_per_step (--videos-per-step) is {}, fewer than the {} ranks: each step's videos \
         are split across the ranks, one video or more each",
        cfg.videos_per_step,
        ranks.size()
    )))
}

/// Collective: the SHA-256 of the parameters (and EMA) every rank holds, in hex (`None` with one
/// rank: nothing to compare, nothing hashed); an error naming the first rank whose parameters
/// are not bit for bit rank 0's.
pub(crate) fn check_params(
    ranks: &Ranks,
    model: &TalModel,
    ema: Option<&TalModel>,
) -> Result<Option<String>> {
    if !ranks.is_distributed() {
        return Ok(None);
    }
    let mut d = ValueDigest(Sha256::new());
    model.visit(&mut d);
    if let Some(e) = ema {
        e.visit(&mut d);
    }
    let digest = d.0.finalize();
    ranks.check_same("parameters", &digest)?;
    Ok(Some(digest.iter().map(|b| format!("{b:02x}")).collect()))
}

/// SHA-256 of the float parameters' values (f32, little-endian) in visiting order. A module
/// record would not do: it also holds the parameters' ids, which each process draws at random.
struct ValueDigest(Sha256);

impl ModuleVisitor for ValueDigest {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let data = param.val().into_data().convert::<f32>();
        let values = data.as_slice::<f32>().expect("f32 after convert");
        if cfg!(target_endian = "little") {
            self.0.update(data.as_bytes());
        } else {
            values.iter().for_each(|x| self.0.update(x.to_le_bytes()));
        }
    }
}

/// Seconds a step's gradient sum took, split into waiting for the slowest rank to finish its
/// backward and the sum itself (moving the gradients to host memory, the transfers and the
/// additions, back into tensors).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SumTime {
    pub wait: f64,
    pub sum: f64,
}

/// Collective: the step's gradients, loss and drift reading summed (drift: the worst) over the
/// ranks, and how long that took. A rank with no video in the step passes `None`.
pub(crate) fn sum_step(
    ranks: &Ranks,
    model: &TalModel,
    mode: TrainMode,
    mine: Option<Computed>,
) -> (Computed, SumTime) {
    let t0 = Instant::now();
    ranks.barrier();
    let t1 = Instant::now();
    let c = sum_computed(ranks, model, mode, mine);
    let time = SumTime {
        wait: (t1 - t0).as_secs_f64(),
        sum: t1.elapsed().as_secs_f64(),
    };
    (c, time)
}

fn sum_computed(
    ranks: &Ranks,
    model: &TalModel,
    mode: TrainMode,
    mine: Option<Computed>,
) -> Computed {
    let (loss, grads, drift) = match mine {
        Some(c) => (c.loss, Some(c.grads), c.drift),
        None => (0.0, None, None),
    };
    let trains_backbone = mode.trains_backbone();
    let adapter = model
        .adapter
        .as_ref()
        .filter(|_| mode == TrainMode::Adapter);
    let mut pack = GradSum::new();
    pack.pack(&model.head, grads.as_ref().map(|g| &g.head));
    if let Some(a) = adapter {
        pack.pack(a, grads.as_ref().and_then(|g| g.adapter.as_ref()));
    }
    if trains_backbone {
        pack.pack(
            &model.backbone,
            grads.as_ref().and_then(|g| g.backbone.as_ref()),
        );
    }
    drop(grads);
    pack.sum(ranks);
    let head = pack.unpack(&model.head);
    let adapter = adapter.map(|a| pack.unpack(a));
    let backbone = trains_backbone.then(|| pack.unpack(&model.backbone));
    let d = drift.map_or([0.0; 4], |d| {
        [
            1.0,
            d.drift.max_abs,
            d.drift.max_rel,
            f64::from(u8::from(d.fell_back)),
        ]
    });
    let all = ranks.gather_f64(&[loss, d[0], d[1], d[2], d[3]]);
    let drift = all
        .iter()
        .filter(|v| v[1] > 0.0)
        .map(|v| SegmentDrift {
            drift: Drift {
                max_abs: v[2],
                max_rel: v[3],
            },
            fell_back: v[4] > 0.0,
        })
        .reduce(super::step::worse_drift);
    Computed {
        loss: all.iter().map(|v| v[0]).sum(),
        grads: StepGrads {
            backbone,
            adapter,
            head,
        },
        drift,
    }
}

/// Collective: detections on the validation videos `val` (indices into `data`), each rank
/// detecting its share; every rank returns all of them, in `val`'s order.
pub(crate) fn detect_shared(
    ranks: &Ranks,
    det: &Detector<'_>,
    data: &TalDataset,
    val: &[usize],
    cached: &[Option<BackboneOutput>],
) -> Result<Vec<VideoDetections>> {
    let (rank, size) = (ranks.rank(), ranks.size());
    let mine = share(val.len(), rank, size);
    let mut found = Vec::with_capacity(mine.len());
    for &i in &val[mine] {
        let v = &data.videos[i];
        found.push(match &cached[i] {
            Some(f) => det.detect_from_features(v, f.clone())?,
            None => det.detect(v)?,
        });
    }
    let segments = if ranks.is_distributed() {
        let all = ranks.gather_f64(&encode(&found));
        (0..size)
            .flat_map(|r| decode(&all[r], share(val.len(), r, size).len()))
            .collect()
    } else {
        found
    };
    Ok(val
        .iter()
        .zip(segments)
        .map(|(&i, segs)| VideoDetections::from_segments(&data.videos[i].id, segs, &data.classes))
        .collect())
}

/// Per video: its count of segments, then start, end, score, label of each.
fn encode(videos: &[Vec<Segment>]) -> Vec<f64> {
    let mut out = Vec::new();
    for segs in videos {
        out.push(segs.len() as f64);
        for s in segs {
            out.extend_from_slice(&[s.start, s.end, s.score, s.label as f64]);
        }
    }
    out
}

fn decode(values: &[f64], videos: usize) -> Vec<Vec<Segment>> {
    let mut at = 0;
    (0..videos)
        .map(|_| {
            let n = values[at] as usize;
            let segs = values[at + 1..at + 1 + 4 * n]
                .chunks_exact(4)
                .map(|c| Segment {
                    start: c[0],
                    end: c[1],
                    score: c[2],
                    label: c[3] as usize,
                })
                .collect();
            at += 1 + 4 * n;
            segs
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};
    use crate::tal::postprocess::Segment;

    #[test]
    fn detections_survive_the_exchange() {
        let s = |a: f64, l| Segment {
            start: a,
            end: a + 1.5,
            score: 0.25,
            label: l,
        };
        let videos = vec![vec![s(0.0, 1), s(2.0, 0)], vec![], vec![s(7.25, 3)]];
        let back = decode(&encode(&videos), 3);
        assert_eq!(back.len(), 3);
        assert_eq!(back[0][1].start, 2.0);
        assert_eq!(back[0][1].label, 0);
        assert!(back[1].is_empty());
        assert_eq!(back[2][0].end, 8.75);
    }
}
