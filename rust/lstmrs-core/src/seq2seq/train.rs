//! The fast path: encoder, bridge, the decoder loop with attention and input feeding, the loss,
//! and backpropagation through all of it.
//!
//! Shapes as in the module docs; per-step buffers are `[T, B, ·]`, time-major, so the weight
//! gradients of the decoder, the combination and the output layer are each one product over all
//! `T*B` rows after the backward loop instead of `T` small ones inside it.

use super::attention::{self, AttnShape};
use super::{AttentionKind, LayerOffsets, Offsets, PairBatch, Seq2SeqConfig};
use crate::dropout::{bernoulli_mask, MaskKind};
use crate::error::{Error, Result};
use crate::gates::{gru_backward, gru_forward, lstm_backward, lstm_forward, Active};
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
    /// Dropout between stacked encoder layers and between stacked decoder layers (training
    /// only).
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
    /// `[B, L*H]`: every decoder layer's initial states after the bridge (layer `l` in columns
    /// `l*H..(l+1)*H`); `c0` is empty for a GRU decoder.
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
    let (de, k) = (cfg.enc_size(), cfg.key_size());
    let nh = cfg.decoder_layers * cfg.hidden_size;
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
        &p[o.bridge_h_b..][..nh],
        nh,
    );
    let c0 = match (&fin_c, o.bridge_c) {
        _ if !cfg.dec_has_c() => Vec::new(),
        (Some(fc), Some((w, bias))) => dense_tanh(fc, b, de, &p[w..], &p[bias..][..nh], nh),
        _ => vec![T::zero(); b * nh],
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

/// Buffers of one decoder layer's step over `R` rows (views into the tapes or scratch).
pub(crate) struct CellBufs<'a, T> {
    /// `[R, in]`: the layer's input (bottom: embedding and previous attentional vector; above:
    /// the new `h` of the layer below).
    pub x: &'a [T],
    /// `[R, H]`: the previous states (`c_prev` and `c` empty for a GRU).
    pub h_prev: &'a [T],
    pub c_prev: &'a [T],
    /// `[R, G*H]`: the activations.
    pub act: &'a mut [T],
    /// Scratch `[R, G*H]`: the recurrent pre-activations `h_prev · W_hhᵀ`.
    pub h_pre: &'a mut [T],
    /// `[R, H]`: LSTM `tanh(c')`; GRU the n gate's recurrent part `W_hn h_prev + b_hn`.
    pub aux: &'a mut [T],
    /// `[R, H]`: the new states.
    pub c: &'a mut [T],
    pub h: &'a mut [T],
}

/// One step of one decoder layer (LSTM or GRU, PyTorch's gate order and biases).
pub(crate) fn cell_forward<T: Scalar>(
    cfg: &Seq2SeqConfig,
    p: &[T],
    lo: &LayerOffsets,
    buf: CellBufs<T>,
) {
    let h = cfg.hidden_size;
    let g = cfg.dec_gates() * h;
    let r = buf.h_prev.len() / h;
    a_bt(
        buf.act,
        g,
        false,
        Mat::new(buf.x, r, lo.input),
        Mat::new(&p[lo.w_ih..], g, lo.input),
    );
    let (b_ih, b_hh) = (&p[lo.b_ih..][..g], &p[lo.b_hh..][..g]);
    // LSTM: both biases on every gate. GRU: `b_hh` on r and z only; its n part `b_hn` stays
    // inside `r * (W_hn h + b_hn)`.
    let both = if cfg.dec_has_c() { g } else { 2 * h };
    for row in buf.act.chunks_exact_mut(g) {
        for j in 0..both {
            row[j] += b_ih[j] + b_hh[j];
        }
        for j in both..g {
            row[j] += b_ih[j];
        }
    }
    a_bt(
        buf.h_pre,
        g,
        false,
        Mat::new(buf.h_prev, r, h),
        Mat::new(&p[lo.w_hh..], g, h),
    );
    if cfg.dec_has_c() {
        lstm_forward(
            h,
            Active::ALL,
            buf.act,
            buf.h_pre,
            buf.c_prev,
            buf.h_prev,
            buf.aux,
            buf.c,
            buf.h,
        );
    } else {
        gru_forward(
            h,
            Active::ALL,
            buf.act,
            buf.h_pre,
            &b_hh[2 * h..],
            buf.h_prev,
            buf.aux,
            buf.h,
        );
    }
}

/// Buffers of the attention and output of one decoder step over `R` rows.
pub(crate) struct HeadBufs<'a, T> {
    /// `[R, H]`: the top decoder layer's new `h`.
    pub h: &'a [T],
    /// Scratch `[R, De]`: the context.
    pub ctx: &'a mut [T],
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

/// Attention of the top layer's `h`, the combination and the output projection.
pub(crate) fn head_forward<T: Scalar>(
    cfg: &Seq2SeqConfig,
    p: &[T],
    o: &Offsets,
    sh: AttnShape,
    keys: &[T],
    enc: &[T],
    buf: HeadBufs<T>,
) {
    let (h, de, k, v) = (
        cfg.hidden_size,
        cfg.enc_size(),
        cfg.key_size(),
        cfg.tgt_vocab,
    );
    let r = sh.batch;
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
    let work = batch.batch
        * batch.tgt_len_max
        * cfg.dec_gates()
        * h
        * (cfg.embed_size + 2 * h * cfg.decoder_layers);
    threads::install_for(work, || run(cfg, params, batch, opts))
}

/// One decoder layer's tapes over the target steps, time-major `[T, B, ·]` (the states hold
/// `T+1` steps, index 0 the bridged initial state).
struct LayerTape<T> {
    /// `[T, B, in]`: the layer's inputs (above the bottom: after dropout).
    xs: Vec<T>,
    /// `[T+1, B, H]`; `cs` empty for a GRU.
    hs: Vec<T>,
    cs: Vec<T>,
    /// `[T, B, G*H]` activations, `[T, B, H]` the cell's second buffer (see [`CellBufs`]).
    acts: Vec<T>,
    aux: Vec<T>,
    /// `[T, B, H]`: the inverted-dropout mask of the input (layers above the bottom, in
    /// training with dropout), else empty.
    mask: Vec<T>,
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
    let (nl, gw, has_c) = (cfg.decoder_layers, cfg.dec_gates() * h, cfg.dec_has_c());
    let nh = nl * h;
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

    let drop = opts.grad && opts.dropout > 0.0;
    let mut tapes: Vec<LayerTape<T>> = (0..nl)
        .map(|l| {
            let mut hs = vec![T::zero(); (tn + 1) * b * h];
            let mut cs = vec![T::zero(); if has_c { (tn + 1) * b * h } else { 0 }];
            for r in 0..b {
                hs[r * h..][..h].copy_from_slice(&encd.h0[r * nh + l * h..][..h]);
                if has_c {
                    cs[r * h..][..h].copy_from_slice(&encd.c0[r * nh + l * h..][..h]);
                }
            }
            let keep = T::from_f64(1.0 / (1.0 - opts.dropout));
            // Stream key (Dropout, layer l, "direction" 2): apart from the encoder's masks.
            let mask = if drop && l > 0 {
                let n = tn * b * h;
                bernoulli_mask(
                    opts.seed,
                    MaskKind::Dropout,
                    l,
                    2,
                    n,
                    opts.dropout,
                    T::zero(),
                    keep,
                )
            } else {
                Vec::new()
            };
            LayerTape {
                xs: vec![T::zero(); tn * b * o.dec[l].input],
                hs,
                cs,
                acts: vec![T::zero(); tn * b * gw],
                aux: vec![T::zero(); tn * b * h],
                mask,
            }
        })
        .collect();
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
    let mut h_pre = vec![T::zero(); b * gw];
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
            let row = &mut tapes[0].xs[(t * b + r) * xw..][..xw];
            row[..e].copy_from_slice(&p[o.tgt_emb + tok as usize * e..][..e]);
            if t > 0 {
                row[e..].copy_from_slice(&atts[((t - 1) * b + r) * h..][..h]);
            }
        }
        for l in 0..nl {
            let (below, rest) = tapes.split_at_mut(l);
            let tp = &mut rest[0];
            let iw = o.dec[l].input;
            if l > 0 {
                let from = &below[l - 1].hs[(t + 1) * b * h..][..b * h];
                let x = &mut tp.xs[t * b * h..][..b * h];
                if tp.mask.is_empty() {
                    x.copy_from_slice(from);
                } else {
                    let m = &tp.mask[t * b * h..][..b * h];
                    for j in 0..b * h {
                        x[j] = from[j] * m[j];
                    }
                }
            }
            let (h_done, h_rest) = tp.hs.split_at_mut((t + 1) * b * h);
            let (c_prev, c_next): (&[T], &mut [T]) = if has_c {
                let (done, rest) = tp.cs.split_at_mut((t + 1) * b * h);
                (&done[t * b * h..], &mut rest[..b * h])
            } else {
                (&[], &mut [])
            };
            cell_forward(
                cfg,
                p,
                &o.dec[l],
                CellBufs {
                    x: &tp.xs[t * b * iw..][..b * iw],
                    h_prev: &h_done[t * b * h..],
                    c_prev,
                    act: &mut tp.acts[t * b * gw..][..b * gw],
                    h_pre: &mut h_pre,
                    aux: &mut tp.aux[t * b * h..][..b * h],
                    c: c_next,
                    h: &mut h_rest[..b * h],
                },
            );
        }
        head_forward(
            cfg,
            p,
            &o,
            sh,
            &encd.keys,
            &encd.enc,
            HeadBufs {
                h: &tapes[nl - 1].hs[(t + 1) * b * h..][..b * h],
                ctx: &mut ctx,
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
    // Per layer, `[T, B, G*H]`: the gradients of the input-side pre-activations and (GRU only;
    // the LSTM's are the same) of the recurrent-side ones.
    let mut d_x_pres: Vec<Vec<T>> = (0..nl).map(|_| vec![T::zero(); rows * gw]).collect();
    let mut d_h_pres: Vec<Vec<T>> = (0..nl)
        .map(|_| vec![T::zero(); if has_c { 0 } else { rows * gw }])
        .collect();
    let mut d_queries = vec![T::zero(); if additive { rows * k } else { 0 }];
    let mut d_keys = vec![T::zero(); b * s * k];
    let mut d_enc = vec![T::zero(); b * s * de];
    let mut d_v = vec![T::zero(); if additive { k } else { 0 }];
    // Per layer `[B, H]`: the gradients of the layer's states at the step being undone.
    let mut dh: Vec<Vec<T>> = (0..nl).map(|_| vec![T::zero(); b * h]).collect();
    let mut dc: Vec<Vec<T>> = (0..nl)
        .map(|_| vec![T::zero(); if has_c { b * h } else { 0 }])
        .collect();
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
    let top = nl - 1;
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
            dh[top][r * h..][..h]
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
            AttentionKind::General => dh[top].iter_mut().zip(&d_query).for_each(|(a, &x)| *a += x),
            AttentionKind::Additive => {
                d_queries[t * b * k..][..b * k].copy_from_slice(&d_query);
                a_b(
                    &mut dh[top],
                    h,
                    true,
                    Mat::new(&d_query, b, k),
                    Mat::new(&p[o.attn_a..], k, h),
                );
            }
        }
        // Down the stack: each layer's input gradient joins the layer below's state gradient.
        for l in (0..nl).rev() {
            let (tp, lo) = (&tapes[l], &o.dec[l]);
            let d_pre = &mut d_x_pres[l][t * b * gw..][..b * gw];
            let (act, aux) = (
                &tp.acts[t * b * gw..][..b * gw],
                &tp.aux[t * b * h..][..b * h],
            );
            if has_c {
                lstm_backward(
                    h,
                    Active::ALL,
                    act,
                    aux,
                    &tp.cs[t * b * h..][..b * h],
                    &mut dh[l],
                    &mut dc[l],
                    d_pre,
                );
                // dh was zeroed: the recurrent product refills it with the gradient of h_{t-1}.
                a_b(
                    &mut dh[l],
                    h,
                    true,
                    Mat::new(d_pre, b, gw),
                    Mat::new(&p[lo.w_hh..], gw, h),
                );
            } else {
                let d_hp = &mut d_h_pres[l][t * b * gw..][..b * gw];
                // dh becomes its direct path `dh * z`; the recurrent product adds the rest.
                gru_backward(
                    h,
                    Active::ALL,
                    act,
                    aux,
                    &tp.hs[t * b * h..][..b * h],
                    &mut dh[l],
                    d_pre,
                    d_hp,
                );
                a_b(
                    &mut dh[l],
                    h,
                    true,
                    Mat::new(d_hp, b, gw),
                    Mat::new(&p[lo.w_hh..], gw, h),
                );
            }
            let iw = lo.input;
            a_b(
                &mut dx[..b * iw],
                iw,
                false,
                Mat::new(d_pre, b, gw),
                Mat::new(&p[lo.w_ih..], gw, iw),
            );
            if l > 0 {
                let below = &mut dh[l - 1];
                if tp.mask.is_empty() {
                    below.iter_mut().zip(&dx).for_each(|(a, &x)| *a += x);
                } else {
                    let m = &tp.mask[t * b * h..][..b * h];
                    for j in 0..b * h {
                        below[j] += dx[j] * m[j];
                    }
                }
                continue;
            }
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
    }
    // Weight gradients over all T*B rows at once, layer by layer.
    for (l, (tp, lo)) in tapes.iter().zip(&o.dec).enumerate() {
        let d_xp = &d_x_pres[l];
        let d_hp = if has_c { d_xp } else { &d_h_pres[l] };
        at_b(
            &mut g[lo.w_ih..],
            lo.input,
            false,
            Mat::new(d_xp, rows, gw),
            Mat::new(&tp.xs, rows, lo.input),
        );
        at_b(
            &mut g[lo.w_hh..],
            h,
            false,
            Mat::new(d_hp, rows, gw),
            Mat::new(&tp.hs[..rows * h], rows, h),
        );
        col_sums(&mut g[lo.b_ih..][..gw], d_xp, gw);
        col_sums(&mut g[lo.b_hh..][..gw], d_hp, gw);
    }
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
            Mat::new(&tapes[top].hs[b * h..], rows, h),
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
    // Bridge: every layer's initial state = tanh(W fin + b), layer l in columns l*H..(l+1)*H.
    let join = |per_layer: &[Vec<T>]| -> Vec<T> {
        let mut out = vec![T::zero(); b * nh];
        for (l, d) in per_layer.iter().enumerate() {
            for r in 0..b {
                out[r * nh + l * h..][..h].copy_from_slice(&d[r * h..][..h]);
            }
        }
        out
    };
    let d_fin_h = bridge_backward(
        &mut g,
        &o.bridge_h(),
        &encd.h0,
        &join(&dh),
        &encd.fin_h,
        p,
        b,
        nh,
        de,
    );
    let d_fin_c = match (&encd.fin_c, o.bridge_c) {
        (Some(fc), Some((w, bias))) => Some(bridge_backward(
            &mut g,
            &(w, bias),
            &encd.c0,
            &join(&dc),
            fc,
            p,
            b,
            nh,
            de,
        )),
        _ => None,
    };
    // Into the encoder.
    let enc_cfg = cfg.encoder;
    let (enl, nd, he) = (
        enc_cfg.num_layers,
        enc_cfg.num_directions(),
        enc_cfg.hidden_size,
    );
    let spread = |d_fin: &[T]| {
        let mut st = vec![T::zero(); enl * nd * b * he];
        for d in 0..nd {
            let layer = &mut st[((enl - 1) * nd + d) * b * he..][..b * he];
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
