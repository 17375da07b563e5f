//! The fast path: encoder, bridge, the decoder loop with attention and input feeding, the loss,
//! and backpropagation through all of it.
//!
//! Shapes as in the module docs; per-step buffers are `[T, B, ·]`, time-major, so the weight
//! gradients of the decoder, the combination and the output layer are each one product over all
//! `T*B` rows after the backward loop instead of `T` small ones inside it.

use super::attention::{self, AttnShape};
use super::{AttentionKind, Offsets, PairBatch, Seq2SeqConfig};
use crate::error::{Error, Result};
use crate::gates::{lstm_backward, lstm_forward, Active};
use crate::matmul::{a_b, a_bt, at_b, Mat};
use crate::network::{self, Batch, ForwardOptions, GradOutputs, Layout, Tape};
use crate::params::RnnWeights;
use crate::scalar::Scalar;
use crate::threads;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Options of one training (or evaluation) call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainOptions {
    /// Label smoothing `ε`: the target distribution is `(1-ε)·onehot + ε/V`.
    pub label_smoothing: f64,
    /// Probability that the decoder reads its own previous argmax instead of the reference token
    /// (scheduled sampling, Bengio et al., 2015); 0 is pure teacher forcing.
    pub sampling_rate: f64,
    /// Dropout between stacked encoder layers (training only).
    pub dropout: f64,
    /// Seed of the dropout masks and of the sampling draws.
    pub seed: u64,
    /// Compute gradients (false: the loss alone, for validation).
    pub grad: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            label_smoothing: 0.0,
            sampling_rate: 0.0,
            dropout: 0.0,
            seed: 0,
            grad: true,
        }
    }
}

/// Results of [`loss_and_grad`].
#[derive(Debug, Clone)]
pub struct StepOutput<T> {
    /// Mean token loss over the target tokens inside their lengths.
    pub loss: f64,
    /// Target tokens counted (the loss's denominator).
    pub tokens: usize,
    /// Tokens whose argmax is the target.
    pub correct: usize,
    /// Same layout as the flat parameters; empty when `grad` is false.
    pub grads: Vec<T>,
}

/// The encoder's results that the decoder reads.
pub(crate) struct Encoded<T> {
    /// `[B, S, De]`.
    pub enc: Vec<T>,
    /// `[B, S, K]`: the projected keys.
    pub keys: Vec<T>,
    /// `[B, De]`: the top layer's final states (both directions).
    pub fin_h: Vec<T>,
    pub fin_c: Option<Vec<T>>,
    /// `[B, H]`: the decoder's initial states after the bridge.
    pub h0: Vec<T>,
    pub c0: Vec<T>,
    pub tape: Option<Tape<T>>,
}

fn top_states<T: Scalar>(cfg: &Seq2SeqConfig, states: &[T], b: usize) -> Vec<T> {
    let e = &cfg.encoder;
    let (nd, he) = (e.num_directions(), e.hidden_size);
    let mut out = vec![T::zero(); b * nd * he];
    for d in 0..nd {
        let layer = &states[((e.num_layers - 1) * nd + d) * b * he..][..b * he];
        for r in 0..b {
            out[r * nd * he + d * he..][..he].copy_from_slice(&layer[r * he..][..he]);
        }
    }
    out
}

/// `dst [rows, n] = tanh(x [rows, k] · W [n, k]ᵀ + bias)`.
fn dense_tanh<T: Scalar>(x: &[T], rows: usize, k: usize, w: &[T], bias: &[T], n: usize) -> Vec<T> {
    let mut dst = vec![T::zero(); rows * n];
    a_bt(&mut dst, n, false, Mat::new(x, rows, k), Mat::new(w, n, k));
    add_bias_tanh(&mut dst, bias);
    dst
}

/// `row = tanh(row + bias)` for every row of `x [R, n]` (`bias [n]`), compiled for FMA where the
/// CPU has it: the f32 tanh is a rational polynomial of FMAs, and without the feature every one
/// of them is a libm call (5% of a g2p training step went to `fmaf`). Same bits either way.
pub(crate) fn add_bias_tanh<T: Scalar>(x: &mut [T], bias: &[T]) {
    #[inline(always)]
    fn body<T: Scalar>(x: &mut [T], bias: &[T]) {
        for row in x.chunks_exact_mut(bias.len()) {
            row.iter_mut()
                .zip(bias)
                .for_each(|(v, &b)| *v = (*v + b).tanh_act());
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// Only on a CPU with AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fma<T: Scalar>(x: &mut [T], bias: &[T]) {
            body(x, bias)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the variant was compiled for.
            return unsafe { fma(x, bias) };
        }
    }
    body(x, bias)
}

/// Embeds the source, runs the encoder, bridges its final states and projects the keys.
pub(crate) fn encode<T: Scalar>(
    cfg: &Seq2SeqConfig,
    p: &[T],
    o: &Offsets,
    b: usize,
    s: usize,
    src: &[u32],
    src_lengths: &[usize],
    opts: &ForwardOptions,
) -> Result<Encoded<T>> {
    let e = cfg.embed_size;
    let (h, de, k) = (cfg.hidden_size, cfg.enc_size(), cfg.key_size());
    let mut x = vec![T::zero(); b * s * e];
    for (row, &tok) in x.chunks_exact_mut(e).zip(src) {
        row.copy_from_slice(&p[o.src_emb + tok as usize * e..][..e]);
    }
    let enc_n = crate::params::param_count(&cfg.encoder);
    let weights = RnnWeights::new(cfg.encoder, &p[o.encoder..o.encoder + enc_n])?;
    let batch = Batch {
        input: &x,
        layout: Layout::BatchFirst,
        seq_len: s,
        batch: b,
        h0: None,
        c0: None,
        lengths: Some(src_lengths),
    };
    let out = network::forward(weights, &batch, opts)?;
    let fin_h = top_states(cfg, &out.h_n, b);
    let fin_c = out.c_n.as_ref().map(|c| top_states(cfg, c, b));
    let h0 = dense_tanh(
        &fin_h,
        b,
        de,
        &p[o.bridge_h_w..],
        &p[o.bridge_h_b..][..h],
        h,
    );
    let c0 = match (&fin_c, o.bridge_c) {
        (Some(fc), Some((w, bias))) => dense_tanh(fc, b, de, &p[w..], &p[bias..][..h], h),
        _ => vec![T::zero(); b * h],
    };
    let key_w = match cfg.attention {
        AttentionKind::General => o.attn_a,
        AttentionKind::Additive => o.attn_k,
    };
    let mut keys = vec![T::zero(); b * s * k];
    a_bt(
        &mut keys,
        k,
        false,
        Mat::new(&out.output, b * s, de),
        Mat::new(&p[key_w..], k, de),
    );
    Ok(Encoded {
        enc: out.output,
        keys,
        fin_h,
        fin_c,
        h0,
        c0,
        tape: out.tape,
    })
}

/// Buffers of one decoder step over `R` rows (views into the `[T, B, ·]` tapes or scratch).
pub(crate) struct StepBufs<'a, T> {
    /// `[R, E+H]`: the step's input (embedding; previous attentional vector).
    pub x: &'a [T],
    pub h_prev: &'a [T],
    pub c_prev: &'a [T],
    /// `[R, 4H]` activations, `[R, H]` tanh(c'), new c and h.
    pub act: &'a mut [T],
    /// Scratch: `[R, 4H]` recurrent pre-activations `h_prev · W_hhᵀ`, `[R, De]` the context.
    pub h_pre: &'a mut [T],
    pub ctx: &'a mut [T],
    pub tanh_c: &'a mut [T],
    pub c: &'a mut [T],
    pub h: &'a mut [T],
    /// `[R, K]` (additive: `W_q h`; general: a copy of `h`).
    pub query: &'a mut [T],
    /// `[R, S]`, `[R, S, K]` (additive only, else empty).
    pub alpha: &'a mut [T],
    pub u: &'a mut [T],
    /// `[R, De+H]`: `[ctx; h]`.
    pub comb: &'a mut [T],
    /// `[R, H]`: the attentional vector.
    pub att: &'a mut [T],
    /// `[R, V]`.
    pub logits: &'a mut [T],
}

/// One decoder step: LSTM cell, attention, combination and output projection.
pub(crate) fn step_forward<T: Scalar>(
    cfg: &Seq2SeqConfig,
    p: &[T],
    o: &Offsets,
    sh: AttnShape,
    keys: &[T],
    enc: &[T],
    buf: StepBufs<T>,
) {
    let (e, h, de, k, v) = (
        cfg.embed_size,
        cfg.hidden_size,
        cfg.enc_size(),
        cfg.key_size(),
        cfg.tgt_vocab,
    );
    let r = sh.batch;
    let g = 4 * h;
    a_bt(
        buf.act,
        g,
        false,
        Mat::new(buf.x, r, e + h),
        Mat::new(&p[o.w_ih..], g, e + h),
    );
    let (b_ih, b_hh) = (&p[o.b_ih..][..g], &p[o.b_hh..][..g]);
    for row in buf.act.chunks_exact_mut(g) {
        for j in 0..g {
            row[j] += b_ih[j] + b_hh[j];
        }
    }
    a_bt(
        buf.h_pre,
        g,
        false,
        Mat::new(buf.h_prev, r, h),
        Mat::new(&p[o.w_hh..], g, h),
    );
    lstm_forward(
        h,
        Active::ALL,
        buf.act,
        buf.h_pre,
        buf.c_prev,
        buf.h_prev,
        buf.tanh_c,
        buf.c,
        buf.h,
    );
    match cfg.attention {
        AttentionKind::General => buf.query.copy_from_slice(buf.h),
        AttentionKind::Additive => a_bt(
            buf.query,
            k,
            false,
            Mat::new(buf.h, r, h),
            Mat::new(&p[o.attn_a..], k, h),
        ),
    }
    let vvec = match cfg.attention {
        AttentionKind::General => &[][..],
        AttentionKind::Additive => &p[o.attn_v..][..k],
    };
    attention::forward(sh, buf.query, keys, enc, vvec, buf.alpha, buf.ctx, buf.u);
    for ((row, c), hh) in buf
        .comb
        .chunks_exact_mut(de + h)
        .zip(buf.ctx.chunks_exact(de))
        .zip(buf.h.chunks_exact(h))
    {
        row[..de].copy_from_slice(c);
        row[de..].copy_from_slice(hh);
    }
    a_bt(
        buf.att,
        h,
        false,
        Mat::new(buf.comb, r, de + h),
        Mat::new(&p[o.comb_w..], h, de + h),
    );
    add_bias_tanh(buf.att, &p[o.comb_b..][..h]);
    a_bt(
        buf.logits,
        v,
        false,
        Mat::new(buf.att, r, h),
        Mat::new(&p[o.out_w..], v, h),
    );
    let ob = &p[o.out_b..][..v];
    for row in buf.logits.chunks_exact_mut(v) {
        row.iter_mut().zip(ob).for_each(|(l, &b)| *l += b);
    }
}

/// The index of the largest value (the first of equals).
pub(crate) fn argmax<T: Scalar>(row: &[T]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// Log-softmax of `row` in place.
pub(crate) fn log_softmax<T: Scalar>(row: &mut [T]) {
    let m = row.iter().fold(T::neg_infinity(), |m, &x| m.max(x));
    let lse = row.iter().map(|&x| (x - m).exp()).sum::<T>().ln() + m;
    row.iter_mut().for_each(|x| *x -= lse);
}

fn check_probability(arg: &'static str, v: f64, hi_inclusive: bool) -> Result<()> {
    let ok = v >= 0.0 && if hi_inclusive { v <= 1.0 } else { v < 1.0 };
    if ok {
        Ok(())
    } else {
        Err(Error::Value {
            arg,
            expected: format!(
                "a probability in [0, 1{}",
                if hi_inclusive { "]" } else { ")" }
            ),
            got: v.to_string(),
        })
    }
}

/// Loss of a batch of pairs under teacher forcing and, with `opts.grad`, its gradient with
/// respect to every parameter (same layout as `params`).
pub fn loss_and_grad<T: Scalar>(
    cfg: &Seq2SeqConfig,
    params: &[T],
    batch: &PairBatch,
    opts: &TrainOptions,
) -> Result<StepOutput<T>> {
    batch.validate(cfg, params.len())?;
    check_probability("label_smoothing", opts.label_smoothing, false)?;
    check_probability("sampling_rate", opts.sampling_rate, true)?;
    check_probability("dropout", opts.dropout, false)?;
    let h = cfg.hidden_size;
    let work = batch.batch * batch.tgt_len_max * 4 * h * (cfg.embed_size + 2 * h);
    threads::install_for(work, || run(cfg, params, batch, opts))
}

#[allow(clippy::needless_range_loop)]
fn run<T: Scalar>(
    cfg: &Seq2SeqConfig,
    p: &[T],
    pb: &PairBatch,
    opts: &TrainOptions,
) -> Result<StepOutput<T>> {
    let o = cfg.offsets();
    let (b, s, tn) = (pb.batch, pb.src_len_max, pb.tgt_len_max);
    let (e, h, de, k, v) = (
        cfg.embed_size,
        cfg.hidden_size,
        cfg.enc_size(),
        cfg.key_size(),
        cfg.tgt_vocab,
    );
    let xw = e + h;
    let additive = cfg.attention == AttentionKind::Additive;
    let fopts = ForwardOptions {
        training: opts.grad,
        dropout: opts.dropout,
        seed: opts.seed,
        keep_tape: opts.grad,
    };
    let encd = encode(cfg, p, &o, b, s, pb.src, pb.src_lengths, &fopts)?;
    let sh = AttnShape {
        kind: cfg.attention,
        batch: b,
        src: s,
        enc: de,
        key: k,
        lengths: pb.src_lengths,
    };

    // Tapes, `[T, B, ·]`; hs/cs hold T+1 states (index 0 is the bridged initial state).
    let mut xs = vec![T::zero(); tn * b * xw];
    let mut hs = vec![T::zero(); (tn + 1) * b * h];
    let mut cs = vec![T::zero(); (tn + 1) * b * h];
    hs[..b * h].copy_from_slice(&encd.h0);
    cs[..b * h].copy_from_slice(&encd.c0);
    let mut acts = vec![T::zero(); tn * b * 4 * h];
    let mut tcs = vec![T::zero(); tn * b * h];
    let mut queries = vec![T::zero(); tn * b * k];
    let mut alphas = vec![T::zero(); tn * b * s];
    let mut us = vec![T::zero(); if additive { tn * b * s * k } else { 0 }];
    let mut combs = vec![T::zero(); tn * b * (de + h)];
    let mut atts = vec![T::zero(); tn * b * h];
    let mut dlogits = vec![T::zero(); tn * b * v];
    let mut inputs = vec![0u32; tn * b];

    let n_tok: usize = pb.tgt_lengths.iter().sum();
    let scale = 1.0 / n_tok as f64;
    let eps = opts.label_smoothing;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5ca1_ab1e);
    let mut loss = 0.0f64;
    let mut correct = 0usize;
    let mut logits = vec![T::zero(); b * v];
    let mut h_pre = vec![T::zero(); b * 4 * h];
    let mut ctx = vec![T::zero(); b * de];
    for t in 0..tn {
        // Inputs: the previous reference token, or (scheduled sampling) the previous argmax.
        for r in 0..b {
            let tok = if t == 0 {
                pb.bos
            } else {
                let sample = opts.sampling_rate > 0.0
                    && ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < opts.sampling_rate;
                if sample {
                    inputs[t * b + r] // filled with the argmax below
                } else {
                    pb.tgt[r * tn + t - 1]
                }
            };
            inputs[t * b + r] = tok;
            let row = &mut xs[(t * b + r) * xw..][..xw];
            row[..e].copy_from_slice(&p[o.tgt_emb + tok as usize * e..][..e]);
            if t > 0 {
                row[e..].copy_from_slice(&atts[((t - 1) * b + r) * h..][..h]);
            }
        }
        let (h_done, h_rest) = hs.split_at_mut((t + 1) * b * h);
        let (c_done, c_rest) = cs.split_at_mut((t + 1) * b * h);
        step_forward(
            cfg,
            p,
            &o,
            sh,
            &encd.keys,
            &encd.enc,
            StepBufs {
                x: &xs[t * b * xw..][..b * xw],
                h_prev: &h_done[t * b * h..],
                c_prev: &c_done[t * b * h..],
                act: &mut acts[t * b * 4 * h..][..b * 4 * h],
                h_pre: &mut h_pre,
                ctx: &mut ctx,
                tanh_c: &mut tcs[t * b * h..][..b * h],
                c: &mut c_rest[..b * h],
                h: &mut h_rest[..b * h],
                query: &mut queries[t * b * k..][..b * k],
                alpha: &mut alphas[t * b * s..][..b * s],
                u: if additive {
                    &mut us[t * b * s * k..][..b * s * k]
                } else {
                    &mut []
                },
                comb: &mut combs[t * b * (de + h)..][..b * (de + h)],
                att: &mut atts[t * b * h..][..b * h],
                logits: &mut logits,
            },
        );
        // Loss and its gradient with respect to the logits (already divided by the token count).
        for r in 0..b {
            let row = &mut logits[r * v..][..v];
            let pred = argmax(row);
            if t + 1 < tn && opts.sampling_rate > 0.0 {
                // Remembered for the next step's sampled input; overwritten when not sampled.
                inputs[(t + 1) * b + r] = pred as u32;
            }
            if t >= pb.tgt_lengths[r] {
                continue;
            }
            let y = pb.tgt[r * tn + t] as usize;
            correct += usize::from(pred == y);
            log_softmax(row);
            let mean_lp: f64 = row.iter().map(|x| Scalar::to_f64(*x)).sum::<f64>() / v as f64;
            loss -= (1.0 - eps) * row[y].to_f64() + eps * mean_lp;
            let d = &mut dlogits[(t * b + r) * v..][..v];
            for j in 0..v {
                let target = eps / v as f64 + if j == y { 1.0 - eps } else { 0.0 };
                d[j] = T::from_f64((row[j].to_f64().exp() - target) * scale);
            }
        }
    }
    let loss = loss * scale;
    if !opts.grad {
        return Ok(StepOutput {
            loss,
            tokens: n_tok,
            correct,
            grads: Vec::new(),
        });
    }

    // ---- backward ----
    let mut g = vec![T::zero(); p.len()];
    let rows = tn * b;
    at_b(
        &mut g[o.out_w..],
        h,
        false,
        Mat::new(&dlogits, rows, v),
        Mat::new(&atts, rows, h),
    );
    col_sums(&mut g[o.out_b..][..v], &dlogits, v);
    let mut d_atts = vec![T::zero(); rows * h];
    a_b(
        &mut d_atts,
        h,
        false,
        Mat::new(&dlogits, rows, v),
        Mat::new(&p[o.out_w..], v, h),
    );
    let mut d_att_pre = vec![T::zero(); rows * h];
    let mut d_pres = vec![T::zero(); rows * 4 * h];
    let mut d_queries = vec![T::zero(); if additive { rows * k } else { 0 }];
    let mut d_keys = vec![T::zero(); b * s * k];
    let mut d_enc = vec![T::zero(); b * s * de];
    let mut d_v = vec![T::zero(); if additive { k } else { 0 }];
    let mut dh = vec![T::zero(); b * h];
    let mut dc = vec![T::zero(); b * h];
    let mut d_feed = vec![T::zero(); b * h];
    let mut d_comb = vec![T::zero(); b * (de + h)];
    let mut d_ctx = vec![T::zero(); b * de];
    let mut d_query = vec![T::zero(); b * k];
    let mut dx = vec![T::zero(); b * xw];
    let vvec = if additive {
        &p[o.attn_v..][..k]
    } else {
        &[][..]
    };
    for t in (0..tn).rev() {
        // d att = from the logits + from the next step's input feeding.
        let (o_h, n_h) = (t * b * h, b * h);
        let dap = &mut d_att_pre[o_h..][..n_h];
        for j in 0..n_h {
            let a = atts[o_h + j];
            dap[j] = (d_atts[o_h + j] + d_feed[j]) * (T::one() - a * a);
        }
        a_b(
            &mut d_comb,
            de + h,
            false,
            Mat::new(dap, b, h),
            Mat::new(&p[o.comb_w..], h, de + h),
        );
        for r in 0..b {
            let row = &d_comb[r * (de + h)..][..de + h];
            d_ctx[r * de..][..de].copy_from_slice(&row[..de]);
            dh[r * h..][..h]
                .iter_mut()
                .zip(&row[de..])
                .for_each(|(a, &x)| *a += x);
        }
        attention::backward(
            sh,
            &queries[t * b * k..][..b * k],
            &encd.keys,
            &encd.enc,
            vvec,
            &alphas[t * b * s..][..b * s],
            if additive {
                &us[t * b * s * k..][..b * s * k]
            } else {
                &[]
            },
            &d_ctx,
            &mut d_query,
            &mut d_keys,
            &mut d_enc,
            &mut d_v,
        );
        match cfg.attention {
            AttentionKind::General => dh.iter_mut().zip(&d_query).for_each(|(a, &x)| *a += x),
            AttentionKind::Additive => {
                d_queries[t * b * k..][..b * k].copy_from_slice(&d_query);
                a_b(
                    &mut dh,
                    h,
                    true,
                    Mat::new(&d_query, b, k),
                    Mat::new(&p[o.attn_a..], k, h),
                );
            }
        }
        let d_pre = &mut d_pres[t * b * 4 * h..][..b * 4 * h];
        lstm_backward(
            h,
            Active::ALL,
            &acts[t * b * 4 * h..][..b * 4 * h],
            &tcs[t * b * h..][..b * h],
            &cs[t * b * h..][..b * h],
            &mut dh,
            &mut dc,
            d_pre,
        );
        // dh was zeroed: the recurrent product refills it with the gradient of h_{t-1}.
        a_b(
            &mut dh,
            h,
            true,
            Mat::new(d_pre, b, 4 * h),
            Mat::new(&p[o.w_hh..], 4 * h, h),
        );
        a_b(
            &mut dx,
            xw,
            false,
            Mat::new(d_pre, b, 4 * h),
            Mat::new(&p[o.w_ih..], 4 * h, xw),
        );
        for r in 0..b {
            let row = &dx[r * xw..][..xw];
            let tok = inputs[t * b + r] as usize;
            g[o.tgt_emb + tok * e..][..e]
                .iter_mut()
                .zip(&row[..e])
                .for_each(|(a, &x)| *a += x);
            d_feed[r * h..][..h].copy_from_slice(&row[e..]);
        }
    }
    // Weight gradients over all T*B rows at once.
    at_b(
        &mut g[o.w_ih..],
        xw,
        false,
        Mat::new(&d_pres, rows, 4 * h),
        Mat::new(&xs, rows, xw),
    );
    at_b(
        &mut g[o.w_hh..],
        h,
        false,
        Mat::new(&d_pres, rows, 4 * h),
        Mat::new(&hs[..rows * h], rows, h),
    );
    col_sums(&mut g[o.b_ih..][..4 * h], &d_pres, 4 * h);
    g.copy_within(o.b_ih..o.b_ih + 4 * h, o.b_hh);
    at_b(
        &mut g[o.comb_w..],
        de + h,
        false,
        Mat::new(&d_att_pre, rows, h),
        Mat::new(&combs, rows, de + h),
    );
    col_sums(&mut g[o.comb_b..][..h], &d_att_pre, h);
    if additive {
        at_b(
            &mut g[o.attn_a..],
            h,
            false,
            Mat::new(&d_queries, rows, k),
            Mat::new(&hs[b * h..], rows, h),
        );
        g[o.attn_v..][..k].copy_from_slice(&d_v);
    }
    // Keys = enc · W_keyᵀ.
    let key_w = if additive { o.attn_k } else { o.attn_a };
    at_b(
        &mut g[key_w..],
        de,
        false,
        Mat::new(&d_keys, b * s, k),
        Mat::new(&encd.enc, b * s, de),
    );
    a_b(
        &mut d_enc,
        de,
        true,
        Mat::new(&d_keys, b * s, k),
        Mat::new(&p[key_w..], k, de),
    );
    // Bridge: h0 = tanh(W fin + b).
    let d_fin_h = bridge_backward(
        &mut g,
        &o.bridge_h(),
        &encd.h0,
        &dh,
        &encd.fin_h,
        p,
        b,
        h,
        de,
    );
    let d_fin_c = match (&encd.fin_c, o.bridge_c) {
        (Some(fc), Some((w, bias))) => Some(bridge_backward(
            &mut g,
            &(w, bias),
            &encd.c0,
            &dc,
            fc,
            p,
            b,
            h,
            de,
        )),
        _ => None,
    };
    // Into the encoder.
    let enc_cfg = cfg.encoder;
    let (nl, nd, he) = (
        enc_cfg.num_layers,
        enc_cfg.num_directions(),
        enc_cfg.hidden_size,
    );
    let spread = |d_fin: &[T]| {
        let mut st = vec![T::zero(); nl * nd * b * he];
        for d in 0..nd {
            let layer = &mut st[((nl - 1) * nd + d) * b * he..][..b * he];
            for r in 0..b {
                layer[r * he..][..he].copy_from_slice(&d_fin[r * nd * he + d * he..][..he]);
            }
        }
        st
    };
    let d_hn = spread(&d_fin_h);
    let d_cn = d_fin_c.as_deref().map(spread);
    let enc_n = crate::params::param_count(&enc_cfg);
    let weights = RnnWeights::new(enc_cfg, &p[..enc_n])?;
    let tape = encd.tape.as_ref().expect("tape kept in training");
    let eg = network::backward(
        weights,
        tape,
        &GradOutputs {
            output: Some(&d_enc),
            h_n: Some(&d_hn),
            c_n: d_cn.as_deref(),
        },
    )?;
    g[..enc_n].copy_from_slice(&eg.params);
    for (row, &tok) in eg.input.chunks_exact(e).zip(pb.src) {
        g[o.src_emb + tok as usize * e..][..e]
            .iter_mut()
            .zip(row)
            .for_each(|(a, &x)| *a += x);
    }
    Ok(StepOutput {
        loss,
        tokens: n_tok,
        correct,
        grads: g,
    })
}

impl Offsets {
    fn bridge_h(&self) -> (usize, usize) {
        (self.bridge_h_w, self.bridge_h_b)
    }
}

/// Backward of `y = tanh(W x + b)` (`x [B, De]`, `y [B, H]`): accumulates `dW`, `db` into `g` and
/// returns `dx`.
#[allow(clippy::too_many_arguments)]
fn bridge_backward<T: Scalar>(
    g: &mut [T],
    &(w, bias): &(usize, usize),
    y: &[T],
    dy: &[T],
    x: &[T],
    p: &[T],
    b: usize,
    h: usize,
    de: usize,
) -> Vec<T> {
    let d_pre: Vec<T> = y
        .iter()
        .zip(dy)
        .map(|(&y, &d)| d * (T::one() - y * y))
        .collect();
    at_b(
        &mut g[w..],
        de,
        false,
        Mat::new(&d_pre, b, h),
        Mat::new(x, b, de),
    );
    col_sums(&mut g[bias..][..h], &d_pre, h);
    let mut dx = vec![T::zero(); b * de];
    a_b(
        &mut dx,
        de,
        false,
        Mat::new(&d_pre, b, h),
        Mat::new(&p[w..], h, de),
    );
    dx
}

/// `dst[j] = Σ_rows src[row, j]`.
fn col_sums<T: Scalar>(dst: &mut [T], src: &[T], w: usize) {
    dst.fill(T::zero());
    for row in src.chunks_exact(w) {
        dst.iter_mut().zip(row).for_each(|(a, &x)| *a += x);
    }
}
