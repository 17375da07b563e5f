//! Losses over a batch of predictions: the value and its gradient in one pass.
//!
//! Shapes: `N` rows (sequences, or sequence steps for per-step heads), `O` outputs per row.
//! Reductions follow PyTorch's `reduction="mean"`: over all elements for regression losses, over
//! the rows that count (mask, `ignore_index`) and weighted by `weight[y]` for cross-entropy.

use crate::error::{check_len, Error, Result};
use crate::scalar::Scalar;

/// `Scalar::to_f64`, named apart from `num_traits::ToPrimitive::to_f64`.
trait AsF64 {
    fn to_f64_(self) -> f64;
}

impl<T: Scalar> AsF64 for T {
    #[inline(always)]
    fn to_f64_(self) -> f64 {
        Scalar::to_f64(self)
    }
}

/// Which loss a model trains with.
#[derive(Debug, Clone, PartialEq)]
pub enum Loss {
    /// Softmax cross-entropy over `O` classes; targets are class ids.
    CrossEntropy {
        /// Targets equal to this id do not count (PyTorch's `ignore_index`, default -100).
        ignore_index: i64,
        /// Per-class weights, `[O]`.
        class_weights: Option<Vec<f64>>,
    },
    Mse,
    Mae,
    /// Smooth L1 with threshold `delta` (PyTorch's `HuberLoss`).
    Huber {
        delta: f64,
    },
    /// Sigmoid + binary cross-entropy, numerically stable (`BCEWithLogitsLoss`).
    BceWithLogits,
}

/// Targets of a batch: class ids for cross-entropy, values otherwise.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a, T> {
    /// `[N]`
    Classes(&'a [i64]),
    /// `[N, O]`
    Values(&'a [T]),
}

impl Loss {
    pub fn name(&self) -> &'static str {
        match self {
            Loss::CrossEntropy { .. } => "cross_entropy",
            Loss::Mse => "mse",
            Loss::Mae => "mae",
            Loss::Huber { .. } => "huber",
            Loss::BceWithLogits => "bce_with_logits",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "cross_entropy" | "ce" => Loss::CrossEntropy {
                ignore_index: -100,
                class_weights: None,
            },
            "mse" => Loss::Mse,
            "mae" | "l1" => Loss::Mae,
            "huber" => Loss::Huber { delta: 1.0 },
            "bce_with_logits" | "bce" => Loss::BceWithLogits,
            _ => {
                return Err(Error::Name {
                    arg: "loss",
                    expected: "'cross_entropy', 'mse', 'mae', 'huber', 'bce_with_logits'".into(),
                    got: name.into(),
                })
            }
        })
    }

    /// The loss `name` with its options: `ignore_index` and `class_weights` for cross-entropy
    /// (`class_weights` is refused for any other loss), `delta` (positive) for Huber; the other
    /// losses ignore them.
    pub fn with_options(
        name: &str,
        ignore_index: i64,
        class_weights: Option<Vec<f64>>,
        delta: f64,
    ) -> Result<Self> {
        let mut loss = Loss::from_name(name)?;
        match &mut loss {
            Loss::CrossEntropy {
                ignore_index: i,
                class_weights: w,
            } => {
                *i = ignore_index;
                *w = class_weights;
            }
            Loss::Huber { delta: d } => {
                if !(delta > 0.0 && delta.is_finite()) {
                    return Err(Error::Value {
                        arg: "delta",
                        expected: "a positive number".into(),
                        got: delta.to_string(),
                    });
                }
                *d = delta;
            }
            _ if class_weights.is_some() => {
                return Err(Error::Value {
                    arg: "class_weights",
                    expected: format!(
                        "None for the {} loss (they are for cross_entropy)",
                        loss.name()
                    ),
                    got: "a list of weights".into(),
                });
            }
            _ => {}
        }
        Ok(loss)
    }

    /// Mean loss over the rows with `mask[r]` set (all rows when `mask` is `None`), and its
    /// gradient with respect to `pred[N, O]` written into `grad` (zero on rows that do not count).
    pub fn value_and_grad<T: Scalar>(
        &self,
        pred: &[T],
        outputs: usize,
        targets: Targets<T>,
        mask: Option<&[bool]>,
        grad: &mut [T],
    ) -> Result<f64> {
        let rows = pred.len() / outputs.max(1);
        check_len("predictions", pred.len(), &[rows, outputs])?;
        check_len("grad", grad.len(), &[rows, outputs])?;
        if let Some(m) = mask {
            check_len("mask", m.len(), &[rows])?;
        }
        grad.fill(T::zero());
        let counts = |r: usize| mask.is_none_or(|m| m[r]);
        match (self, targets) {
            (
                Loss::CrossEntropy {
                    ignore_index,
                    class_weights,
                },
                Targets::Classes(y),
            ) => {
                check_len("targets", y.len(), &[rows])?;
                if let Some(w) = class_weights {
                    check_len("class_weights", w.len(), &[outputs])?;
                }
                let mut total = 0.0;
                let mut norm = 0.0;
                for r in 0..rows {
                    if !counts(r) || y[r] == *ignore_index {
                        continue;
                    }
                    let class = usize::try_from(y[r])
                        .ok()
                        .filter(|&c| c < outputs)
                        .ok_or_else(|| Error::Value {
                            arg: "targets",
                            expected: format!(
                                "class ids in 0..{outputs} (or ignore_index {ignore_index})"
                            ),
                            got: y[r].to_string(),
                        })?;
                    let w = class_weights.as_ref().map_or(1.0, |w| w[class]);
                    let z = &pred[r * outputs..(r + 1) * outputs];
                    let max = z.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64_()));
                    let sum: f64 = z.iter().map(|v| (v.to_f64_() - max).exp()).sum();
                    let log_sum = max + sum.ln();
                    total += w * (log_sum - z[class].to_f64_());
                    norm += w;
                    let g = &mut grad[r * outputs..(r + 1) * outputs];
                    for (k, gk) in g.iter_mut().enumerate() {
                        let p = (z[k].to_f64_() - log_sum).exp();
                        *gk = T::from_f64(w * (p - if k == class { 1.0 } else { 0.0 }));
                    }
                }
                if norm == 0.0 {
                    return Ok(0.0);
                }
                let scale = T::from_f64(1.0 / norm);
                grad.iter_mut().for_each(|g| *g *= scale);
                Ok(total / norm)
            }
            (Loss::CrossEntropy { .. }, Targets::Values(_)) => Err(Error::Value {
                arg: "targets",
                expected: "integer class ids for cross_entropy".into(),
                got: "float values".into(),
            }),
            (_, Targets::Classes(_)) => Err(Error::Value {
                arg: "targets",
                expected: format!("float values for {}", self.name()),
                got: "integer class ids".into(),
            }),
            (loss, Targets::Values(y)) => {
                check_len("targets", y.len(), &[rows, outputs])?;
                let counted = (0..rows).filter(|&r| counts(r)).count() * outputs;
                if counted == 0 {
                    return Ok(0.0);
                }
                let inv = 1.0 / counted as f64;
                let mut total = 0.0;
                for r in (0..rows).filter(|&r| counts(r)) {
                    for k in r * outputs..(r + 1) * outputs {
                        let (p, t) = (pred[k].to_f64_(), y[k].to_f64_());
                        let d = p - t;
                        let (value, slope) = match loss {
                            Loss::Mse => (d * d, 2.0 * d),
                            Loss::Mae => (d.abs(), d.signum() * (d != 0.0) as u8 as f64),
                            Loss::Huber { delta } => {
                                if d.abs() <= *delta {
                                    (0.5 * d * d, d)
                                } else {
                                    (delta * (d.abs() - 0.5 * delta), delta * d.signum())
                                }
                            }
                            Loss::BceWithLogits => {
                                // max(p,0) - p*t + log(1 + e^-|p|): stable for any logit.
                                let v = p.max(0.0) - p * t + (-p.abs()).exp().ln_1p();
                                let s = 1.0 / (1.0 + (-p).exp());
                                (v, s - t)
                            }
                            Loss::CrossEntropy { .. } => unreachable!("handled above"),
                        };
                        total += value;
                        grad[k] = T::from_f64(slope * inv);
                    }
                }
                Ok(total * inv)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_check(
        loss: &Loss,
        pred: &[f64],
        outputs: usize,
        targets: Targets<f64>,
        mask: Option<&[bool]>,
    ) {
        let mut g = vec![0.0; pred.len()];
        loss.value_and_grad(pred, outputs, targets, mask, &mut g)
            .unwrap();
        let mut scratch = vec![0.0; pred.len()];
        for k in 0..pred.len() {
            let (mut up, mut down) = (pred.to_vec(), pred.to_vec());
            up[k] += 1e-6;
            down[k] -= 1e-6;
            let fu = loss
                .value_and_grad(&up, outputs, targets, mask, &mut scratch)
                .unwrap();
            let fd = loss
                .value_and_grad(&down, outputs, targets, mask, &mut scratch)
                .unwrap();
            let num = (fu - fd) / 2e-6;
            assert!(
                (num - g[k]).abs() < 1e-6,
                "{loss:?} d/dpred[{k}]: {num} vs {}",
                g[k]
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let pred: Vec<f64> = (0..12).map(|i| (i as f64 * 0.7).sin() * 2.0).collect();
        let vals: Vec<f64> = (0..12).map(|i| (i as f64 * 0.3).cos()).collect();
        let probs: Vec<f64> = (0..12).map(|i| (i % 3) as f64 / 2.0).collect();
        let mask = [true, false, true, true];
        for loss in [Loss::Mse, Loss::Mae, Loss::Huber { delta: 0.5 }] {
            fd_check(&loss, &pred, 3, Targets::Values(&vals), Some(&mask));
        }
        fd_check(
            &Loss::BceWithLogits,
            &pred,
            3,
            Targets::Values(&probs),
            None,
        );
        let ce = Loss::CrossEntropy {
            ignore_index: -100,
            class_weights: Some(vec![0.5, 2.0, 1.0]),
        };
        fd_check(
            &ce,
            &pred,
            3,
            Targets::Classes(&[2, -100, 0, 1]),
            Some(&mask),
        );
    }

    #[test]
    fn matches_pytorch_golden_values() {
        // import torch; F = torch.nn.functional
        // p = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]], dtype=torch.float64)
        // F.cross_entropy(p, torch.tensor([2, 0]), weight=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        //   -> 0.9479770177912326
        // F.huber_loss(p, torch.zeros_like(p), delta=1.0) -> 0.4483333333333333
        // F.binary_cross_entropy_with_logits(p, torch.full_like(p, 0.25)) -> 0.7716704140182741
        let p = [1.0, -2.0, 0.5, 0.3, 0.2, -1.0];
        let mut g = [0.0; 6];
        let ce = Loss::CrossEntropy {
            ignore_index: -100,
            class_weights: Some(vec![1.0, 2.0, 3.0]),
        };
        let got = ce
            .value_and_grad(&p, 3, Targets::Classes(&[2, 0]), None, &mut g)
            .unwrap();
        assert!((got - 0.947_977_017_791_232_6).abs() < 1e-14, "{got}");
        let huber = Loss::Huber { delta: 1.0 };
        let got = huber
            .value_and_grad(&p, 3, Targets::Values(&[0.0; 6]), None, &mut g)
            .unwrap();
        assert!((got - 0.448_333_333_333_333_3).abs() < 1e-14, "{got}");
        let bce = Loss::BceWithLogits;
        let got = bce
            .value_and_grad(&p, 3, Targets::Values(&[0.25; 6]), None, &mut g)
            .unwrap();
        assert!((got - 0.771_670_414_018_274_1).abs() < 1e-14, "{got}");
    }

    #[test]
    fn bad_targets_are_errors() {
        let mut g = [0.0f32; 6];
        let ce = Loss::from_name("cross_entropy").unwrap();
        assert!(ce
            .value_and_grad(&[0.0f32; 6], 3, Targets::Classes(&[3, 0]), None, &mut g)
            .is_err());
        assert!(ce
            .value_and_grad(&[0.0f32; 6], 3, Targets::Values(&[0.0; 6]), None, &mut g)
            .is_err());
        assert!(Loss::Mse
            .value_and_grad(&[0.0f32; 6], 3, Targets::Values(&[0.0; 5]), None, &mut g)
            .is_err());
        assert!(Loss::from_name("hinge").is_err());
    }
}
