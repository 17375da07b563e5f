//! From the recurrent output sequence to the rows the head sees.
//!
//! Shapes: `B` sequences, `T` steps, `DH = D*H` recurrent features, `A` attention units.
//! Per-step heads see all `B*T` rows; the others one row per sequence.

use crate::matmul::{a_b, a_bt, at_b, Mat};
use crate::scalar::Scalar;

/// How a sequence becomes the head's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Every time step (sequence labelling, language models, many-to-many forecasting).
    PerStep,
    /// The final states of the top layer: the last valid step going forward, step 0 going
    /// backward (PyTorch's `h_n`).
    Last,
    /// Mean of the outputs over the valid steps.
    Mean,
    /// Additive attention: `α = softmax_t(v · tanh(W o_t + b))` over the valid steps,
    /// pooled `= Σ α_t o_t`.
    Attention { units: usize },
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::PerStep => "per_step",
            Pooling::Last => "last",
            Pooling::Mean => "mean",
            Pooling::Attention { .. } => "attention",
        }
    }
}

/// Attention parameters: `w[A, DH]`, `b[A]`, `v[A]`.
pub(crate) struct AttentionParams<'a, T> {
    pub w: &'a [T],
    pub b: &'a [T],
    pub v: &'a [T],
}

/// What the attention backward pass needs: `u = tanh(W o + b)` `[B*T, A]`, weights `α` `[B*T]`.
#[derive(Debug, Clone)]
pub(crate) struct AttentionCache<T> {
    u: Vec<T>,
    alpha: Vec<T>,
}

impl<T> AttentionCache<T> {
    /// `[B, T]` attention weights, zero past each length.
    pub(crate) fn weights(&self) -> &[T] {
        &self.alpha
    }
}

fn valid(lengths: Option<&[usize]>, b: usize, t: usize) -> usize {
    lengths.map_or(t, |l| l[b])
}

/// Mean over valid steps: `rows[b] = Σ_{t < len_b} out[b, t] / len_b`.
pub(crate) fn mean_forward<T: Scalar>(
    out: &[T],
    b: usize,
    t: usize,
    f: usize,
    lengths: Option<&[usize]>,
) -> Vec<T> {
    let mut rows = vec![T::zero(); b * f];
    for i in 0..b {
        let n = valid(lengths, i, t);
        let row = &mut rows[i * f..(i + 1) * f];
        for s in 0..n {
            row.iter_mut()
                .zip(&out[(i * t + s) * f..][..f])
                .for_each(|(r, &o)| *r += o);
        }
        let inv = T::from_f64(1.0 / n as f64);
        row.iter_mut().for_each(|r| *r *= inv);
    }
    rows
}

pub(crate) fn mean_backward<T: Scalar>(
    d_rows: &[T],
    b: usize,
    t: usize,
    f: usize,
    lengths: Option<&[usize]>,
) -> Vec<T> {
    let mut d_out = vec![T::zero(); b * t * f];
    for i in 0..b {
        let n = valid(lengths, i, t);
        let inv = T::from_f64(1.0 / n as f64);
        for s in 0..n {
            d_out[(i * t + s) * f..][..f]
                .iter_mut()
                .zip(&d_rows[i * f..(i + 1) * f])
                .for_each(|(d, &g)| *d = g * inv);
        }
    }
    d_out
}

/// Attention pooling over `out[B, T, F]`.
pub(crate) fn attention_forward<T: Scalar>(
    p: &AttentionParams<T>,
    out: &[T],
    b: usize,
    t: usize,
    f: usize,
    lengths: Option<&[usize]>,
) -> (Vec<T>, AttentionCache<T>) {
    let a = p.v.len();
    let mut u: Vec<T> = Vec::with_capacity(b * t * a);
    for _ in 0..b * t {
        u.extend_from_slice(p.b);
    }
    a_bt(
        &mut u,
        a,
        true,
        Mat::new(out, b * t, f),
        Mat::new(p.w, a, f),
    );
    u.iter_mut().for_each(|x| *x = x.tanh_act());
    let mut alpha = vec![T::zero(); b * t];
    let mut rows = vec![T::zero(); b * f];
    for i in 0..b {
        let n = valid(lengths, i, t);
        let scores: Vec<f64> = (0..n)
            .map(|s| {
                let us = &u[(i * t + s) * a..][..a];
                us.iter()
                    .zip(p.v)
                    .map(|(&x, &v)| Scalar::to_f64(x * v))
                    .sum()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = scores.iter().map(|e| (e - max).exp()).sum();
        for (s, e) in scores.iter().enumerate() {
            let w = T::from_f64((e - max).exp() / z);
            alpha[i * t + s] = w;
            rows[i * f..(i + 1) * f]
                .iter_mut()
                .zip(&out[(i * t + s) * f..][..f])
                .for_each(|(r, &o)| *r += w * o);
        }
    }
    (rows, AttentionCache { u, alpha })
}

/// Backward of attention pooling: returns `d_out[B, T, F]` and accumulates `dW`, `db`, `dv`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward<T: Scalar>(
    p: &AttentionParams<T>,
    cache: &AttentionCache<T>,
    out: &[T],
    d_rows: &[T],
    b: usize,
    t: usize,
    f: usize,
    lengths: Option<&[usize]>,
    dw: &mut [T],
    db: &mut [T],
    dv: &mut [T],
) -> Vec<T> {
    let a = p.v.len();
    let mut d_out = vec![T::zero(); b * t * f];
    // Gradient of the pre-activation W o + b, [B*T, A]; zero on padded steps.
    let mut d_pre = vec![T::zero(); b * t * a];
    for i in 0..b {
        let n = valid(lengths, i, t);
        let dr = &d_rows[i * f..(i + 1) * f];
        let d_alpha: Vec<T> = (0..n)
            .map(|s| {
                out[(i * t + s) * f..][..f]
                    .iter()
                    .zip(dr)
                    .map(|(&o, &g)| o * g)
                    .sum()
            })
            .collect();
        let mean: T = (0..n).map(|s| cache.alpha[i * t + s] * d_alpha[s]).sum();
        for s in 0..n {
            let k = i * t + s;
            let al = cache.alpha[k];
            d_out[k * f..(k + 1) * f]
                .iter_mut()
                .zip(dr)
                .for_each(|(d, &g)| *d = al * g);
            let de = al * (d_alpha[s] - mean);
            let u = &cache.u[k * a..(k + 1) * a];
            for j in 0..a {
                dv[j] += de * u[j];
                d_pre[k * a + j] = de * p.v[j] * (T::one() - u[j] * u[j]);
            }
        }
    }
    at_b(
        dw,
        f,
        true,
        Mat::new(&d_pre, b * t, a),
        Mat::new(out, b * t, f),
    );
    for row in d_pre.chunks_exact(a) {
        db.iter_mut().zip(row).for_each(|(d, &g)| *d += g);
    }
    a_b(
        &mut d_out,
        f,
        true,
        Mat::new(&d_pre, b * t, a),
        Mat::new(p.w, a, f),
    );
    d_out
}
