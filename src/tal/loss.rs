//! TAL losses (ActionFormer): sigmoid focal loss for classification, centre-DIoU loss for the
//! 1-D boundary offsets, both summed and divided by an EMA of the number of positive points.

use burn::config::Config;
use burn::tensor::{Int, Tensor, TensorData};

use super::assign::Targets;
use super::head::HeadOutput;
use crate::error::{Error, Result};
use burn::tensor::activation::{log_sigmoid, sigmoid};

/// Loss settings (defaults: ActionFormer).
#[derive(Config, Debug)]
pub struct LossConfig {
    /// Focal loss alpha.
    #[config(default = 0.25)]
    pub focal_alpha: f64,
    /// Focal loss gamma.
    #[config(default = 2.0)]
    pub focal_gamma: f64,
    /// Weight of the regression loss.
    #[config(default = 1.0)]
    pub reg_weight: f64,
    /// Momentum of the positive-count normaliser.
    #[config(default = 0.9)]
    pub normalizer_momentum: f64,
    /// Initial value of the normaliser.
    #[config(default = 100.0)]
    pub normalizer_init: f64,
}

/// Sigmoid focal loss (Lin et al. 2017), summed: `logits` and `targets` of the same shape.
///
/// # Shapes
/// - logits, targets: `[P, C]` -> `[1]`
pub fn sigmoid_focal_loss(
    logits: Tensor<2>,
    targets: Tensor<2>,
    alpha: f64,
    gamma: f64,
) -> Tensor<1> {
    let p = sigmoid(logits.clone());
    // Binary cross-entropy with logits, stable form: -(t log p + (1 - t) log(1 - p)).
    let ce = -(targets.clone() * log_sigmoid(logits.clone())
        + (targets.clone().neg() + 1.0) * log_sigmoid(logits.neg()));
    let p_t = p.clone() * targets.clone() + (p.neg() + 1.0) * (targets.clone().neg() + 1.0);
    let mut loss = ce * (p_t.neg() + 1.0).powf_scalar(gamma);
    if alpha >= 0.0 {
        let alpha_t = targets.clone() * alpha + (targets.neg() + 1.0) * (1.0 - alpha);
        loss = loss * alpha_t;
    }
    loss.sum()
}

/// Centre-DIoU loss on 1-D offsets (distances to start and end), summed.
///
/// # Shapes
/// - pred, target: `[P, 2]` -> `[1]`
pub fn diou_loss_1d(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    let eps = 1e-8;
    let n = pred.dims()[0];
    let lp = pred.clone().narrow(1, 0, 1).reshape([n]);
    let rp = pred.narrow(1, 1, 1).reshape([n]);
    let lg = target.clone().narrow(1, 0, 1).reshape([n]);
    let rg = target.narrow(1, 1, 1).reshape([n]);
    let inter = rp.clone().min_pair(rg.clone()) + lp.clone().min_pair(lg.clone());
    let union = (lp.clone() + rp.clone()) + (lg.clone() + rg.clone()) - inter.clone();
    let iou = inter / union.clamp_min(eps);
    let len_c = lp.clone().max_pair(lg.clone()) + rp.clone().max_pair(rg.clone());
    let rho = (rp - lp - rg + lg) * 0.5;
    let dist = (rho / len_c.clamp_min(eps)).powf_scalar(2.0);
    (iou.neg() + 1.0 + dist).sum()
}

/// The EMA of the number of positive points that both losses are divided by.
#[derive(Debug, Clone, PartialEq)]
pub struct LossNormalizer {
    /// Current value.
    pub value: f64,
    momentum: f64,
}

impl LossNormalizer {
    /// Start at `cfg.normalizer_init`.
    pub fn new(cfg: &LossConfig) -> Self {
        Self {
            value: cfg.normalizer_init,
            momentum: cfg.normalizer_momentum,
        }
    }

    /// Fold in this batch's positive count (at least 1) and return the new value.
    pub fn update(&mut self, positives: usize) -> f64 {
        self.value = self.momentum * self.value + (1.0 - self.momentum) * positives.max(1) as f64;
        self.value
    }
}

/// The TAL loss of one video (batch index 0 of `out`): focal loss over every valid point plus
/// `reg_weight` x DIoU over the positive points, divided by `normalizer` (the EMA of positives,
/// see [`LossNormalizer::update`]).
///
/// # Shapes
/// - `out.cls_logits`: `[1, P, C]`, `out.offsets`: `[1, P, 2]`; `targets` for the same `P`
///   points -> `[1]`
pub fn video_loss(
    out: &HeadOutput,
    targets: &Targets,
    normalizer: f64,
    cfg: &LossConfig,
) -> Result<Tensor<1>> {
    batch_loss(out, std::slice::from_ref(targets), normalizer, cfg)
}

/// The TAL loss of a padded batch of videos (ActionFormer's): focal loss over the valid points
/// of every video plus `reg_weight` x DIoU over their positive points, summed over the batch
/// and divided by `normalizer` (the EMA of the batch's positives). The sum of the videos'
/// [`video_loss`]es with the same normaliser.
///
/// # Shapes
/// - `out.cls_logits`: `[B, P, C]`, `out.offsets`: `[B, P, 2]`; `targets[b]` for the same `P`
///   points -> `[1]`
pub fn batch_loss(
    out: &HeadOutput,
    targets: &[Targets],
    normalizer: f64,
    cfg: &LossConfig,
) -> Result<Tensor<1>> {
    let [b, p, c] = out.cls_logits.dims();
    if b != targets.len()
        || targets
            .iter()
            .any(|t| t.positive.len() != p || t.cls.len() != p * c)
    {
        return Err(Error::Shape {
            what: "loss head output".into(),
            expected: format!(
                "[{}, P, C] matching targets for {:?} points and {:?} class scores",
                targets.len(),
                targets.iter().map(|t| t.positive.len()).collect::<Vec<_>>(),
                targets.iter().map(|t| t.cls.len()).collect::<Vec<_>>()
            ),
            got: vec![b, p, c],
        });
    }
    let device = out.cls_logits.device();
    let mask = super::bool_values(out.mask.clone().reshape([b * p]));
    let valid: Vec<i64> = (0..(b * p) as i64).filter(|&i| mask[i as usize]).collect();
    let at = |i: i64| (&targets[i as usize / p], i as usize % p);
    let pos: Vec<i64> = valid
        .iter()
        .copied()
        .filter(|&i| {
            let (t, k) = at(i);
            t.positive[k]
        })
        .collect();
    let index =
        |v: &[i64]| Tensor::<1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
    let cls_t: Vec<f32> = valid
        .iter()
        .flat_map(|&i| {
            let (t, k) = at(i);
            t.cls[k * c..(k + 1) * c].iter().copied()
        })
        .collect();
    let cls_t = Tensor::<2>::from_data(TensorData::new(cls_t, [valid.len(), c]), &device);
    let logits = out
        .cls_logits
        .clone()
        .reshape([b * p, c])
        .select(0, index(&valid));
    let mut loss = sigmoid_focal_loss(logits, cls_t, cfg.focal_alpha, cfg.focal_gamma);
    if !pos.is_empty() {
        let reg_t: Vec<f32> = pos
            .iter()
            .flat_map(|&i| {
                let (t, k) = at(i);
                [t.reg[k * 2], t.reg[k * 2 + 1]]
            })
            .collect();
        let reg_t = Tensor::<2>::from_data(TensorData::new(reg_t, [pos.len(), 2]), &device);
        let off = out
            .offsets
            .clone()
            .reshape([b * p, 2])
            .select(0, index(&pos));
        loss = loss + diou_loss_1d(off, reg_t) * cfg.reg_weight;
    }
    Ok(loss / normalizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn t2(v: Vec<f32>, rows: usize) -> Tensor<2> {
        let cols = v.len() / rows;
        Tensor::from_data(
            TensorData::new(v, [rows, cols]),
            &crate::backend::cpu_device(),
        )
    }

    #[test]
    fn focal_loss_hand_computed() {
        // logit 0 (p = 0.5), target 1: ce = ln 2, (1 - p_t)^2 = 0.25, alpha 0.25.
        let l = sigmoid_focal_loss(t2(vec![0.0], 1), t2(vec![1.0], 1), 0.25, 2.0);
        let want = 2f64.ln() * 0.25 * 0.25;
        assert!((l.into_scalar::<f32>() as f64 - want).abs() < 1e-6);
        // logit 2, target 0: p = sigmoid(2), ce = -ln(1 - p), weight p^2 * 0.75.
        let p = 1.0 / (1.0 + (-2f64).exp());
        let want = -(1.0 - p).ln() * p * p * 0.75;
        let l = sigmoid_focal_loss(t2(vec![2.0], 1), t2(vec![0.0], 1), 0.25, 2.0);
        assert!((l.into_scalar::<f32>() as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn diou_hand_computed() {
        // Perfect prediction: 0.
        let l = diou_loss_1d(t2(vec![2.0, 3.0], 1), t2(vec![2.0, 3.0], 1));
        assert!(l.into_scalar::<f32>().abs() < 1e-6);
        // pred (1, 1) = segment [-1, 1]; target (2, 2) = [-2, 2]: iou 2/4, same centre -> 0.5.
        let l = diou_loss_1d(t2(vec![1.0, 1.0], 1), t2(vec![2.0, 2.0], 1));
        assert!((l.into_scalar::<f32>() - 0.5).abs() < 1e-6);
        // pred (0, 2) = [0, 2]; target (1, 1) = [-1, 1]: inter 1, union 3, enclosing 3,
        // centres 1 and 0 -> rho = 0.5 (rp - lp - rg + lg) = 1; loss = 1 - 1/3 + (1/3)^2.
        let l = diou_loss_1d(t2(vec![0.0, 2.0], 1), t2(vec![1.0, 1.0], 1));
        let want = 1.0 - 1.0 / 3.0 + 1.0 / 9.0;
        assert!((l.into_scalar::<f32>() as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn normalizer_ema() {
        let mut n = LossNormalizer::new(&LossConfig::new());
        assert!((n.update(10) - 91.0).abs() < 1e-12);
        assert!((n.update(0) - (0.9 * 91.0 + 0.1)).abs() < 1e-12);
    }
}
