//! The same loss as [`super::train::loss_and_grad`] (teacher forcing, no dropout or sampling),
//! written as plain per-row loops over named weights with no shared kernels: the encoder comes
//! from [`crate::reference`], every product is an explicit sum, each decoder layer (LSTM or GRU)
//! is PyTorch's cell written out. The fast path is tested against
//! it, and its loss is what the finite-difference checks differentiate.

use super::{AttentionKind, PairBatch, Seq2SeqConfig};
use crate::config::CellKind;
use crate::error::Result;
use crate::network::{Batch, ForwardOptions, Layout};
use crate::params::RnnWeights;
use crate::scalar::Scalar;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `W [n, k] · x + b` with plain loops.
fn affine(w: &[f64], b: Option<&[f64]>, x: &[f64], n: usize) -> Vec<f64> {
    let k = x.len();
    (0..n)
        .map(|i| {
            let s: f64 = (0..k).map(|j| w[i * k + j] * x[j]).sum();
            s + b.map_or(0.0, |b| b[i])
        })
        .collect()
}

/// One step of an LSTM or GRU layer: updates `h` (and `c` for an LSTM) from `x`. `w` holds the
/// layer's `(weight_ih, weight_hh, bias_ih, bias_hh)`.
fn cell_step(
    cell: CellKind,
    w: (&[f64], &[f64], &[f64], &[f64]),
    x: &[f64],
    h: &mut [f64],
    c: &mut [f64],
) {
    let n = h.len();
    let g = if cell == CellKind::Lstm { 4 * n } else { 3 * n };
    let gi = affine(w.0, Some(w.2), x, g);
    let gh = affine(w.1, Some(w.3), h, g);
    for j in 0..n {
        if cell == CellKind::Lstm {
            let gate = |q: usize| gi[q * n + j] + gh[q * n + j];
            let (i, f) = (sigmoid(gate(0)), sigmoid(gate(1)));
            let (gg, o) = (gate(2).tanh(), sigmoid(gate(3)));
            c[j] = f * c[j] + i * gg;
            h[j] = o * c[j].tanh();
        } else {
            // r, z, n; n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1-z) n + z h.
            let r = sigmoid(gi[j] + gh[j]);
            let z = sigmoid(gi[n + j] + gh[n + j]);
            let nn = (gi[2 * n + j] + r * gh[2 * n + j]).tanh();
            h[j] = (1.0 - z) * nn + z * h[j];
        }
    }
}

/// Mean token loss of `batch` with label smoothing `eps` (the teacher-forced decoder).
pub fn loss<T: Scalar>(
    cfg: &Seq2SeqConfig,
    params: &[T],
    batch: &PairBatch,
    eps: f64,
) -> Result<f64> {
    batch.validate(cfg, params.len())?;
    let p: Vec<f64> = params.iter().map(|x| Scalar::to_f64(*x)).collect();
    let has = |name: &str| cfg.param_specs().iter().any(|s| s.name == name);
    let named = |name: &str| -> &[f64] {
        let s = cfg
            .param_specs()
            .into_iter()
            .find(|s| s.name == name)
            .expect("a parameter of this config");
        &p[s.offset..s.offset + s.len]
    };
    let (b, s, tn) = (batch.batch, batch.src_len_max, batch.tgt_len_max);
    let (e, h, de, v) = (
        cfg.embed_size,
        cfg.hidden_size,
        cfg.enc_size(),
        cfg.tgt_vocab,
    );
    // Encoder, through the reference recurrent network.
    let src_emb = named("src_embedding");
    let x: Vec<f64> = batch
        .src
        .iter()
        .flat_map(|&t| src_emb[t as usize * e..][..e].to_vec())
        .collect();
    let enc_n = crate::params::param_count(&cfg.encoder);
    let enc_out = crate::reference::forward(
        RnnWeights::new(cfg.encoder, &p[..enc_n])?,
        &Batch {
            input: &x,
            layout: Layout::BatchFirst,
            seq_len: s,
            batch: b,
            h0: None,
            c0: None,
            lengths: Some(batch.src_lengths),
        },
        &ForwardOptions::default(),
    )?;
    let ec = &cfg.encoder;
    let (nl, nd, he) = (ec.num_layers, ec.num_directions(), ec.hidden_size);
    let top = |states: &[f64], r: usize| -> Vec<f64> {
        (0..nd)
            .flat_map(|d| states[(((nl - 1) * nd + d) * b + r) * he..][..he].to_vec())
            .collect()
    };
    let tgt_emb = named("tgt_embedding");
    let mut total = 0.0;
    let mut count = 0usize;
    for r in 0..b {
        let len = batch.src_lengths[r];
        let enc = |j: usize| &enc_out.output[(r * s + j) * de..][..de];
        let tanh_all = |v: Vec<f64>| v.into_iter().map(f64::tanh).collect::<Vec<f64>>();
        // The bridge gives every layer's initial state (layer l: values l*H..(l+1)*H).
        let dl = cfg.decoder_layers;
        let h0 = tanh_all(affine(
            named("bridge_h.weight"),
            Some(named("bridge_h.bias")),
            &top(&enc_out.h_n, r),
            dl * h,
        ));
        let c0 = match (&enc_out.c_n, has("bridge_c.weight")) {
            (Some(c), true) => tanh_all(affine(
                named("bridge_c.weight"),
                Some(named("bridge_c.bias")),
                &top(c, r),
                dl * h,
            )),
            _ => vec![0.0; dl * h],
        };
        let mut hs: Vec<Vec<f64>> = h0.chunks(h).map(<[f64]>::to_vec).collect();
        let mut cs: Vec<Vec<f64>> = c0.chunks(h).map(<[f64]>::to_vec).collect();
        let mut att = vec![0.0; h];
        for t in 0..batch.tgt_lengths[r] {
            let prev = if t == 0 {
                batch.bos
            } else {
                batch.tgt[r * tn + t - 1]
            } as usize;
            let mut input = tgt_emb[prev * e..][..e].to_vec();
            input.extend_from_slice(&att);
            for l in 0..dl {
                let name = |base: &str| cfg.dec_name(base, l);
                let w = (
                    named(&name("weight_ih")),
                    named(&name("weight_hh")),
                    named(&name("bias_ih")),
                    named(&name("bias_hh")),
                );
                cell_step(cfg.decoder_cell, w, &input, &mut hs[l], &mut cs[l]);
                input = hs[l].clone();
            }
            let hh = &hs[dl - 1];
            let scores: Vec<f64> = (0..len)
                .map(|j| match cfg.attention {
                    AttentionKind::General => {
                        let we = affine(named("attention.weight"), None, enc(j), h);
                        (0..h).map(|i| hh[i] * we[i]).sum()
                    }
                    AttentionKind::Additive => {
                        let a = cfg.attention_size;
                        let q = affine(named("attention.query"), None, hh, a);
                        let kk = affine(named("attention.key"), None, enc(j), a);
                        let vv = named("attention.v");
                        (0..a).map(|i| vv[i] * (q[i] + kk[i]).tanh()).sum()
                    }
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
            let mut comb = vec![0.0; de];
            for (j, sc) in scores.iter().enumerate() {
                let w = (sc - m).exp() / z;
                for (c, x) in comb.iter_mut().zip(enc(j)) {
                    *c += w * x;
                }
            }
            comb.extend_from_slice(hh);
            att = tanh_all(affine(
                named("combine.weight"),
                Some(named("combine.bias")),
                &comb,
                h,
            ));
            let logits = affine(named("out.weight"), Some(named("out.bias")), &att, v);
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
            let y = batch.tgt[r * tn + t] as usize;
            let mean_lp = logits.iter().map(|x| x - lse).sum::<f64>() / v as f64;
            total -= (1.0 - eps) * (logits[y] - lse) + eps * mean_lp;
            count += 1;
        }
    }
    Ok(total / count as f64)
}
