//! Gradient clipping over a flat gradient buffer (`torch.nn.utils.clip_grad_norm_`,
//! `clip_grad_value_`).
//!
//! Norms accumulate in f64 for both element types, over a summation tree fixed by the buffer
//! length, so the same gradients give the same norm at any thread count.

use super::{check_at_least, par};
use crate::error::{Error, Result};
use crate::scalar::Scalar;

/// The `norm_type`-norm of the whole buffer (`torch.nn.utils.get_total_norm`): any `p > 0` or
/// `f64::INFINITY` for the largest magnitude. An empty buffer has norm 0. NaN elements give NaN.
pub fn grad_norm<T: Scalar>(grads: &[T], norm_type: f64) -> Result<f64> {
    if norm_type.is_nan() || norm_type <= 0.0 {
        return Err(Error::Value {
            arg: "norm_type",
            expected: "a number > 0 or inf".into(),
            got: format!("{norm_type}"),
        });
    }
    if norm_type == f64::INFINITY {
        let leaf = |x: &[T]| {
            x.iter().fold(0.0f64, |m, &v| {
                let a = v.to_f64().abs();
                if a > m || a.is_nan() {
                    a
                } else {
                    m
                }
            })
        };
        let max = |a: f64, b: f64| if b > a || b.is_nan() { b } else { a };
        return Ok(par::reduce(grads, &leaf, &max));
    }
    let add = |a: f64, b: f64| a + b;
    if norm_type == 2.0 {
        Ok(par::reduce(grads, &sum_sq::<T>, &add).sqrt())
    } else if norm_type == 1.0 {
        Ok(par::reduce(grads, &sum_abs::<T>, &add))
    } else {
        let leaf = |x: &[T]| {
            x.iter()
                .map(|&v| v.to_f64().abs().powf(norm_type))
                .sum::<f64>()
        };
        Ok(par::reduce(grads, &leaf, &add).powf(1.0 / norm_type))
    }
}

/// Scales `grads` in place so that their `norm_type`-norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`): `grads *= min(max_norm / (norm + 1e-6), 1)`. Returns the
/// norm before clipping.
///
/// A non-finite norm is an error with `error_if_nonfinite` (the gradients stay untouched);
/// otherwise, as in PyTorch, the gradients are scaled by the resulting factor (0 for an infinite
/// norm, NaN for a NaN norm) and the norm is returned for the caller to see.
pub fn clip_grad_norm<T: Scalar>(
    grads: &mut [T],
    max_norm: f64,
    norm_type: f64,
    error_if_nonfinite: bool,
) -> Result<f64> {
    check_max_norm(max_norm)?;
    let norm = grad_norm(grads, norm_type)?;
    if error_if_nonfinite && !norm.is_finite() {
        return Err(Error::Value {
            arg: "grads",
            expected: format!("gradients with a finite total {norm_type}-norm"),
            got: format!("{norm}"),
        });
    }
    clip_grads_with_norm(grads, max_norm, norm)?;
    Ok(norm)
}

/// Scales `grads` by `min(max_norm / (total_norm + 1e-6), 1)` for a norm computed beforehand
/// (`torch.nn.utils.clip_grads_with_norm_`).
pub fn clip_grads_with_norm<T: Scalar>(
    grads: &mut [T],
    max_norm: f64,
    total_norm: f64,
) -> Result<()> {
    check_max_norm(max_norm)?;
    let coef = max_norm / (total_norm + 1e-6);
    // Multiplying by a clamped factor of exactly 1 changes nothing: skip the pass. NaN factors
    // (from a NaN norm) are applied, as PyTorch does.
    if coef < 1.0 || coef.is_nan() {
        let c = T::from_f64(coef);
        par::for_each(grads.len(), grads, &|g: &mut [T]| {
            for v in g {
                *v *= c;
            }
        });
    }
    Ok(())
}

/// Clamps every gradient to `[-clip_value, clip_value]` (`torch.nn.utils.clip_grad_value_`); NaN
/// entries stay NaN.
pub fn clip_grad_value<T: Scalar>(grads: &mut [T], clip_value: f64) -> Result<()> {
    if clip_value.is_nan() || clip_value < 0.0 {
        return Err(Error::Value {
            arg: "clip_value",
            expected: "a number >= 0".into(),
            got: format!("{clip_value}"),
        });
    }
    let hi = T::from_f64(clip_value);
    let lo = -hi;
    par::for_each(grads.len(), grads, &|g: &mut [T]| {
        for v in g {
            // Comparisons are false for NaN, which passes through as torch.clamp does.
            if *v < lo {
                *v = lo;
            } else if *v > hi {
                *v = hi;
            }
        }
    });
    Ok(())
}

fn check_max_norm(max_norm: f64) -> Result<()> {
    if max_norm == f64::INFINITY {
        return Ok(());
    }
    check_at_least("max_norm", max_norm, 0.0)
}

/// Sum of squares in f64 with eight independent accumulators, which the compiler can vectorise
/// (one running sum would serialise on the add latency).
fn sum_sq<T: Scalar>(x: &[T]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            let v = c[j].to_f64();
            acc[j] += v * v;
        }
    }
    let mut tail = 0.0;
    for &v in rest {
        let v = v.to_f64();
        tail += v * v;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// Sum of magnitudes in f64, accumulated like [`sum_sq`].
fn sum_abs<T: Scalar>(x: &[T]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            acc[j] += c[j].to_f64().abs();
        }
    }
    let tail: f64 = rest.iter().map(|&v| v.to_f64().abs()).sum();
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}
