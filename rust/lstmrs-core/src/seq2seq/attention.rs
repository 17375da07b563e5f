//! Attention of one decoder step over the encoder outputs, batched over rows, forward and backward.
//!
//! Shapes (per step): `B` rows, `S` source steps, `De` encoder features, `K` key width (`H` for
//! general attention, `A` for additive). The keys are projected once per batch, before the
//! decoder loop: general `keys = enc · W_aᵀ` (`score_s = h · keys_s`), additive
//! `keys = enc · W_kᵀ` (`score_s = v · tanh(keys_s + q)`, `q = W_q h`). Positions at or beyond a
//! row's source length get weight exactly 0 and no gradient.
//!
//! The per-step work is `O(B·S·(De+K))`, two orders below the decoder's products at the usual
//! sizes, so the loops run on one thread: splitting them over rayon costs more than it saves.

use super::AttentionKind;
use crate::scalar::Scalar;

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape<'a> {
    pub kind: AttentionKind,
    pub batch: usize,
    pub src: usize,
    pub enc: usize,
    pub key: usize,
    /// `[B]` source lengths.
    pub lengths: &'a [usize],
}

/// Forward: `query [B, K]` (general: `h`; additive: `W_q h`), `keys [B, S, K]`, `enc [B, S, De]`,
/// `v [K]` (additive). Writes `alpha [B, S]`, `ctx [B, De]` and, additive only, the
/// `tanh(keys + q)` values `u [B, S, K]` that the backward pass needs.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Scalar>(
    sh: AttnShape,
    query: &[T],
    keys: &[T],
    enc: &[T],
    v: &[T],
    alpha: &mut [T],
    ctx: &mut [T],
    u: &mut [T],
) {
    let (s, de, k) = (sh.src, sh.enc, sh.key);
    for b in 0..sh.batch {
        let len = sh.lengths[b];
        let q = &query[b * k..][..k];
        let a = &mut alpha[b * s..][..s];
        for j in 0..len {
            let key = &keys[(b * s + j) * k..][..k];
            a[j] = match sh.kind {
                AttentionKind::General => dot(q, key),
                AttentionKind::Additive => {
                    let uj = &mut u[(b * s + j) * k..][..k];
                    let mut acc = T::zero();
                    for i in 0..k {
                        let t = (key[i] + q[i]).tanh_act();
                        uj[i] = t;
                        acc += v[i] * t;
                    }
                    acc
                }
            };
        }
        softmax_masked(a, len);
        let c = &mut ctx[b * de..][..de];
        c.fill(T::zero());
        for j in 0..len {
            let w = a[j];
            let e = &enc[(b * s + j) * de..][..de];
            c.iter_mut().zip(e).for_each(|(c, &e)| *c += w * e);
        }
    }
}

/// Backward of [`forward`] given `d_ctx [B, De]`: writes `d_query [B, K]`, accumulates
/// `d_keys [B, S, K]`, `d_enc [B, S, De]` and (additive) `d_v [K]`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Scalar>(
    sh: AttnShape,
    query: &[T],
    keys: &[T],
    enc: &[T],
    v: &[T],
    alpha: &[T],
    u: &[T],
    d_ctx: &[T],
    d_query: &mut [T],
    d_keys: &mut [T],
    d_enc: &mut [T],
    d_v: &mut [T],
) {
    let (s, de, k) = (sh.src, sh.enc, sh.key);
    let mut d_score = vec![T::zero(); s];
    for b in 0..sh.batch {
        let len = sh.lengths[b];
        let a = &alpha[b * s..][..s];
        let dc = &d_ctx[b * de..][..de];
        // d alpha_j = d_ctx · e_j; d_enc_j += alpha_j d_ctx.
        let mut weighted = T::zero();
        for j in 0..len {
            let e = &enc[(b * s + j) * de..][..de];
            let da = dot(dc, e);
            d_score[j] = da;
            weighted += a[j] * da;
            let w = a[j];
            d_enc[(b * s + j) * de..][..de]
                .iter_mut()
                .zip(dc)
                .for_each(|(g, &d)| *g += w * d);
        }
        // Softmax backward: d score_j = alpha_j (d alpha_j - sum_i alpha_i d alpha_i).
        for j in 0..len {
            d_score[j] = a[j] * (d_score[j] - weighted);
        }
        let q = &query[b * k..][..k];
        let dq = &mut d_query[b * k..][..k];
        dq.fill(T::zero());
        for j in 0..len {
            let ds = d_score[j];
            let dk = &mut d_keys[(b * s + j) * k..][..k];
            match sh.kind {
                AttentionKind::General => {
                    let key = &keys[(b * s + j) * k..][..k];
                    for i in 0..k {
                        dq[i] += ds * key[i];
                        dk[i] += ds * q[i];
                    }
                }
                AttentionKind::Additive => {
                    let uj = &u[(b * s + j) * k..][..k];
                    for i in 0..k {
                        d_v[i] += ds * uj[i];
                        let d_pre = ds * v[i] * (T::one() - uj[i] * uj[i]);
                        dq[i] += d_pre;
                        dk[i] += d_pre;
                    }
                }
            }
        }
    }
}

fn dot<T: Scalar>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::zero(), |acc, (&x, &y)| acc + x * y)
}

/// Softmax over `a[..len]` in place; `a[len..]` becomes 0 (padding gets no weight).
pub(crate) fn softmax_masked<T: Scalar>(a: &mut [T], len: usize) {
    let m = a[..len].iter().fold(T::neg_infinity(), |m, &x| m.max(x));
    let mut sum = T::zero();
    for x in &mut a[..len] {
        *x = (*x - m).exp();
        sum += *x;
    }
    for x in &mut a[..len] {
        *x = *x / sum;
    }
    a[len..].fill(T::zero());
}
