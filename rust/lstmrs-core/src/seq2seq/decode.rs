//! Decoding new inputs: greedy and beam search, batched over sources (and beams), on the same
//! decoder step as training.

use super::attention::AttnShape;
use super::train::{argmax, cell_forward, encode, head_forward, log_softmax, CellBufs, HeadBufs};
use super::{check_source, Offsets, Seq2SeqConfig};
use crate::error::{Error, Result};
use crate::network::ForwardOptions;
use crate::scalar::Scalar;
use crate::threads;

/// How to decode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeOptions {
    /// 1: greedy (argmax at each step); more: beam search with this many hypotheses per source.
    pub beam: usize,
    /// Length normalisation of beam scores: `log p / len^alpha` (0 ranks raw log-probabilities).
    pub alpha: f64,
    /// Most tokens emitted per source, end token included.
    pub max_len: usize,
    pub bos: u32,
    pub eos: u32,
    /// Return the attention weights of every emitted token.
    pub attention: bool,
}

/// One decoded sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis<T> {
    /// The emitted tokens, the end token excluded.
    pub tokens: Vec<u32>,
    /// Sum of the log-probabilities of the emitted tokens (end token included when emitted).
    pub log_prob: f64,
    /// Whether the end token was emitted within `max_len`.
    pub finished: bool,
    /// `[steps, S]` attention weights, one row per decoding step (empty unless asked for).
    pub attention: Vec<T>,
}

/// Decodes a batch of sources `src [B, S]`: greedy when `opts.beam == 1` (its own loop, so beam
/// search of width 1 can be checked against it), beam search otherwise.
pub fn decode<T: Scalar>(
    cfg: &Seq2SeqConfig,
    params: &[T],
    batch: usize,
    src_len_max: usize,
    src: &[u32],
    src_lengths: &[usize],
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis<T>>> {
    run(
        cfg,
        params,
        batch,
        src_len_max,
        src,
        src_lengths,
        opts,
        opts.beam > 1,
    )
}

/// Beam search whatever the width (width 1 must reproduce [`decode`]'s greedy loop exactly).
pub fn beam_search<T: Scalar>(
    cfg: &Seq2SeqConfig,
    params: &[T],
    batch: usize,
    src_len_max: usize,
    src: &[u32],
    src_lengths: &[usize],
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis<T>>> {
    run(
        cfg,
        params,
        batch,
        src_len_max,
        src,
        src_lengths,
        opts,
        true,
    )
}

#[allow(clippy::too_many_arguments)]
fn run<T: Scalar>(
    cfg: &Seq2SeqConfig,
    params: &[T],
    batch: usize,
    src_len_max: usize,
    src: &[u32],
    src_lengths: &[usize],
    opts: &DecodeOptions,
    beam: bool,
) -> Result<Vec<Hypothesis<T>>> {
    check_source(cfg, params.len(), batch, src_len_max, src, src_lengths)?;
    for (arg, v) in [("beam", opts.beam), ("max_len", opts.max_len)] {
        if v == 0 {
            return Err(Error::Value {
                arg,
                expected: "an integer >= 1".into(),
                got: "0".into(),
            });
        }
    }
    if !(opts.alpha.is_finite() && opts.alpha >= 0.0) {
        return Err(Error::Value {
            arg: "alpha",
            expected: "a finite number >= 0".into(),
            got: opts.alpha.to_string(),
        });
    }
    super::check_tokens("bos", &[opts.bos], cfg.tgt_vocab)?;
    super::check_tokens("eos", &[opts.eos], cfg.tgt_vocab)?;
    let h = cfg.hidden_size;
    let work = batch
        * opts.beam
        * opts.max_len
        * cfg.dec_gates()
        * h
        * (cfg.embed_size + 2 * h * cfg.decoder_layers);
    threads::install_for(work, || {
        let o = cfg.offsets();
        let d = Decoder::new(cfg, params, &o, batch, src_len_max, src, src_lengths)?;
        Ok(if beam { d.beam(opts) } else { d.greedy(opts) })
    })
}

/// The encoded batch and the decoder's running state over `R` rows.
struct Decoder<'a, T> {
    cfg: &'a Seq2SeqConfig,
    p: &'a [T],
    o: &'a Offsets,
    b: usize,
    s: usize,
    src_lengths: &'a [usize],
    /// `[B, S, De]`, `[B, S, K]`, `[B, L*H]` (`c0` empty for a GRU decoder).
    enc: Vec<T>,
    keys: Vec<T>,
    h0: Vec<T>,
    c0: Vec<T>,
}

/// Decoder state of `R` rows: every layer's `h` and `c` (`[L, R, H]`, `c` empty for a GRU) and
/// the previous attentional vector (`[R, H]`).
#[derive(Clone)]
struct State<T> {
    h: Vec<T>,
    c: Vec<T>,
    att: Vec<T>,
}

/// The decoder's `R` rows: row `r` decodes source `item[r]` (the beams of one source are
/// neighbours), with that source's encoder outputs `[R, S, De]`, keys `[R, S, K]` and length,
/// gathered once for the whole search.
struct Rows<T> {
    item: Vec<usize>,
    enc: Vec<T>,
    keys: Vec<T>,
    lengths: Vec<usize>,
}

impl<T: Scalar> Hypothesis<T> {
    /// Nothing emitted yet, with a starting score (`-inf` marks an empty beam slot).
    fn empty(log_prob: f64) -> Self {
        Hypothesis {
            tokens: Vec::new(),
            log_prob,
            finished: false,
            attention: Vec::new(),
        }
    }
}

impl<'a, T: Scalar> Decoder<'a, T> {
    fn new(
        cfg: &'a Seq2SeqConfig,
        p: &'a [T],
        o: &'a Offsets,
        b: usize,
        s: usize,
        src: &[u32],
        src_lengths: &'a [usize],
    ) -> Result<Self> {
        let encd = encode(
            cfg,
            p,
            o,
            b,
            s,
            src,
            src_lengths,
            &ForwardOptions::default(),
        )?;
        Ok(Decoder {
            cfg,
            p,
            o,
            b,
            s,
            src_lengths,
            enc: encd.enc,
            keys: encd.keys,
            h0: encd.h0,
            c0: encd.c0,
        })
    }

    /// The rows and their starting state for `width` hypotheses per source (greedy: 1): every
    /// row starts from its source's bridged states and a zero attentional vector.
    fn start(&self, width: usize) -> (Rows<T>, State<T>) {
        let (s, h, nl) = (self.s, self.cfg.hidden_size, self.cfg.decoder_layers);
        let item: Vec<usize> = (0..self.b * width).map(|r| r / width).collect();
        let gather = |x: &[T], w: usize| -> Vec<T> {
            item.iter()
                .flat_map(|&i| x[i * w..][..w].iter().copied())
                .collect()
        };
        let rows = Rows {
            enc: gather(&self.enc, s * self.cfg.enc_size()),
            keys: gather(&self.keys, s * self.cfg.key_size()),
            lengths: item.iter().map(|&i| self.src_lengths[i]).collect(),
            item: item.clone(),
        };
        // `[B, L*H]` to `[L, R, H]`.
        let layers = |x: &[T]| -> Vec<T> {
            let mut out = Vec::with_capacity(x.len() / self.b * item.len());
            if x.is_empty() {
                return out; // a GRU decoder's cell state
            }
            for l in 0..nl {
                for &i in &item {
                    out.extend_from_slice(&x[(i * nl + l) * h..][..h]);
                }
            }
            out
        };
        let st = State {
            h: layers(&self.h0),
            c: layers(&self.c0),
            att: vec![T::zero(); item.len() * h],
        };
        (rows, st)
    }

    /// One step over `rows`: returns log-probabilities `[R, V]` and the attention weights
    /// `[R, S]`, and advances `st`.
    fn step(&self, rows: &Rows<T>, tokens: &[u32], st: &mut State<T>) -> (Vec<T>, Vec<T>) {
        let cfg = self.cfg;
        let (e, h, de, k, v, s) = (
            cfg.embed_size,
            cfg.hidden_size,
            cfg.enc_size(),
            cfg.key_size(),
            cfg.tgt_vocab,
            self.s,
        );
        let (nl, gw, has_c) = (cfg.decoder_layers, cfg.dec_gates() * h, cfg.dec_has_c());
        let r = rows.item.len();
        let rh = r * h;
        let mut x = vec![T::zero(); r * (e + h)];
        for (row, (&tok, a)) in x
            .chunks_exact_mut(e + h)
            .zip(tokens.iter().zip(st.att.chunks_exact(h)))
        {
            row[..e].copy_from_slice(&self.p[self.o.tgt_emb + tok as usize * e..][..e]);
            row[e..].copy_from_slice(a);
        }
        let mut next = State {
            h: vec![T::zero(); nl * rh],
            c: vec![T::zero(); if has_c { nl * rh } else { 0 }],
            att: vec![T::zero(); rh],
        };
        let mut act = vec![T::zero(); r * gw];
        let mut h_pre = vec![T::zero(); r * gw];
        let mut aux = vec![T::zero(); rh];
        for l in 0..nl {
            let (below, this) = next.h.split_at_mut(l * rh);
            let (c_prev, c_next): (&[T], &mut [T]) = if has_c {
                (&st.c[l * rh..][..rh], &mut next.c[l * rh..][..rh])
            } else {
                (&[], &mut [])
            };
            cell_forward(
                cfg,
                self.p,
                &self.o.dec[l],
                CellBufs {
                    x: if l == 0 {
                        &x[..]
                    } else {
                        &below[(l - 1) * rh..]
                    },
                    h_prev: &st.h[l * rh..][..rh],
                    c_prev,
                    act: &mut act,
                    h_pre: &mut h_pre,
                    aux: &mut aux,
                    c: c_next,
                    h: &mut this[..rh],
                },
            );
        }
        let mut ctx = vec![T::zero(); r * de];
        let mut query = vec![T::zero(); r * k];
        let mut alpha = vec![T::zero(); r * s];
        let additive = cfg.attention == super::AttentionKind::Additive;
        let mut u = vec![T::zero(); if additive { r * s * k } else { 0 }];
        let mut comb = vec![T::zero(); r * (de + h)];
        let mut logits = vec![T::zero(); r * v];
        head_forward(
            cfg,
            self.p,
            self.o,
            AttnShape {
                kind: cfg.attention,
                batch: r,
                src: s,
                enc: de,
                key: k,
                lengths: &rows.lengths,
            },
            &rows.keys,
            &rows.enc,
            HeadBufs {
                h: &next.h[(nl - 1) * rh..],
                ctx: &mut ctx,
                query: &mut query,
                alpha: &mut alpha,
                u: &mut u,
                comb: &mut comb,
                att: &mut next.att,
                logits: &mut logits,
            },
        );
        logits.chunks_exact_mut(v).for_each(log_softmax);
        *st = next;
        (logits, alpha)
    }

    fn greedy(&self, opts: &DecodeOptions) -> Vec<Hypothesis<T>> {
        let (b, v, s) = (self.b, self.cfg.tgt_vocab, self.s);
        let (rows, mut st) = self.start(1);
        let mut out: Vec<Hypothesis<T>> = (0..b).map(|_| Hypothesis::empty(0.0)).collect();
        let mut tokens = vec![opts.bos; b];
        for _ in 0..opts.max_len {
            let (lp, alpha) = self.step(&rows, &tokens, &mut st);
            for (r, hyp) in out.iter_mut().enumerate() {
                if hyp.finished {
                    continue;
                }
                let row = &lp[r * v..][..v];
                let y = argmax(row);
                hyp.log_prob += row[y].to_f64();
                if opts.attention {
                    hyp.attention.extend_from_slice(&alpha[r * s..][..s]);
                }
                if y as u32 == opts.eos {
                    hyp.finished = true;
                } else {
                    hyp.tokens.push(y as u32);
                }
                tokens[r] = y as u32;
            }
            if out.iter().all(|hyp| hyp.finished) {
                break;
            }
        }
        out
    }

    fn beam(&self, opts: &DecodeOptions) -> Vec<Hypothesis<T>> {
        let (b, h, v, s, kw) = (
            self.b,
            self.cfg.hidden_size,
            self.cfg.tgt_vocab,
            self.s,
            opts.beam,
        );
        let norm = |lp: f64, len: usize| lp / (len.max(1) as f64).powf(opts.alpha);
        // Row b*K + j holds beam j of source b; a beam with score -inf is empty.
        let (rows, mut st) = self.start(kw);
        let mut live: Vec<Hypothesis<T>> = (0..b * kw)
            .map(|r| Hypothesis::empty(if r % kw == 0 { 0.0 } else { f64::NEG_INFINITY }))
            .collect();
        let mut done: Vec<Vec<Hypothesis<T>>> = vec![Vec::new(); b];
        let mut closed = vec![false; b];
        let mut tokens = vec![opts.bos; b * kw];
        for _ in 0..opts.max_len {
            let (lp, alpha) = self.step(&rows, &tokens, &mut st);
            let mut src_row = (0..b * kw).collect::<Vec<usize>>();
            let mut next_live = live.clone();
            for bi in 0..b {
                if closed[bi] {
                    continue;
                }
                // Every extension of every live beam, best first (ties: lower beam, lower token).
                let mut cand: Vec<(f64, usize, usize)> = Vec::with_capacity(kw * v);
                for j in 0..kw {
                    let base = live[bi * kw + j].log_prob;
                    if base == f64::NEG_INFINITY {
                        continue;
                    }
                    let row = &lp[(bi * kw + j) * v..][..v];
                    cand.extend(
                        row.iter()
                            .enumerate()
                            .map(|(y, &l)| (base + l.to_f64(), j, y)),
                    );
                }
                cand.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
                let mut filled = 0;
                for (rank, &(score, j, y)) in cand.iter().take(2 * kw).enumerate() {
                    let parent = &live[bi * kw + j];
                    let extend = |finished: bool| {
                        let mut hyp = parent.clone();
                        hyp.log_prob = score;
                        hyp.finished = finished;
                        if !finished {
                            hyp.tokens.push(y as u32);
                        }
                        if opts.attention {
                            hyp.attention
                                .extend_from_slice(&alpha[(bi * kw + j) * s..][..s]);
                        }
                        hyp
                    };
                    if y as u32 == opts.eos {
                        // An end among the top K closes a hypothesis (as greedy would).
                        if rank < kw {
                            done[bi].push(extend(true));
                        }
                    } else if filled < kw {
                        let r = bi * kw + filled;
                        next_live[r] = extend(false);
                        src_row[r] = bi * kw + j;
                        tokens[r] = y as u32;
                        filled += 1;
                    }
                }
                for r in bi * kw + filled..(bi + 1) * kw {
                    next_live[r].log_prob = f64::NEG_INFINITY;
                }
                if done[bi].len() >= kw || filled == 0 {
                    closed[bi] = true;
                }
            }
            live = next_live;
            // Reorder the decoder states (`[L, R, H]` and `[R, H]`) to follow their beams.
            let pick = |x: &[T]| -> Vec<T> {
                let mut out = Vec::with_capacity(x.len());
                for layer in x.chunks_exact(src_row.len() * h) {
                    for &r in &src_row {
                        out.extend_from_slice(&layer[r * h..][..h]);
                    }
                }
                out
            };
            st = State {
                h: pick(&st.h),
                c: pick(&st.c),
                att: pick(&st.att),
            };
            if closed.iter().all(|&c| c) {
                break;
            }
        }
        (0..b)
            .map(|bi| {
                let mut pool = std::mem::take(&mut done[bi]);
                if !closed[bi] {
                    pool.extend(
                        live[bi * kw..(bi + 1) * kw]
                            .iter()
                            .filter(|hyp| hyp.log_prob > f64::NEG_INFINITY)
                            .cloned(),
                    );
                }
                let len = |hyp: &Hypothesis<T>| hyp.tokens.len() + usize::from(hyp.finished);
                let mut best = 0;
                for (i, hyp) in pool.iter().enumerate() {
                    if norm(hyp.log_prob, len(hyp)) > norm(pool[best].log_prob, len(&pool[best])) {
                        best = i;
                    }
                }
                pool.swap_remove(best)
            })
            .collect()
    }
}
