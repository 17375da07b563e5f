//! The same loss as [`super::train::loss_and_grad`] (teacher forcing, no dropout or sampling),
//! written as plain per-row loops over named weights with no shared kernels: the encoder comes
//! from [`crate::reference`], every product is an explicit sum. The fast path is tested against
//! it, and its loss is what the finite-difference checks differentiate.

use super::{AttentionKind, PairBatch, Seq2SeqConfig};
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

/// Mean token loss of `batch` with label smoothing `eps` (the teacher-forced decoder).
pub fn loss<T: Scalar>(
    cfg: &Seq2SeqConfig,
    params: &[T],
    batch: &PairBatch,
    eps: f64,
) -> Result<f64> {
    batch.validate(cfg, params.len())?;
    let p: Vec<f64> = params.iter().map(|x| Scalar::to_f64(*x)).collect();
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
        let mut hh = tanh_all(affine(
            named("bridge_h.weight"),
            Some(named("bridge_h.bias")),
            &top(&enc_out.h_n, r),
            h,
        ));
        let mut cc = match &enc_out.c_n {
            Some(c) => tanh_all(affine(
                named("bridge_c.weight"),
                Some(named("bridge_c.bias")),
                &top(c, r),
                h,
            )),
            None => vec![0.0; h],
        };
        let mut att = vec![0.0; h];
        for t in 0..batch.tgt_lengths[r] {
            let prev = if t == 0 {
                batch.bos
            } else {
                batch.tgt[r * tn + t - 1]
            } as usize;
            let mut input = tgt_emb[prev * e..][..e].to_vec();
            input.extend_from_slice(&att);
            let gi = affine(
                named("decoder.weight_ih"),
                Some(named("decoder.bias_ih")),
                &input,
                4 * h,
            );
            let gh = affine(
                named("decoder.weight_hh"),
                Some(named("decoder.bias_hh")),
                &hh,
                4 * h,
            );
            let gate = |q: usize, j: usize| gi[q * h + j] + gh[q * h + j];
            for j in 0..h {
                let (i, f) = (sigmoid(gate(0, j)), sigmoid(gate(1, j)));
                let (gg, o) = (gate(2, j).tanh(), sigmoid(gate(3, j)));
                cc[j] = f * cc[j] + i * gg;
                hh[j] = o * cc[j].tanh();
            }
            let scores: Vec<f64> = (0..len)
                .map(|j| match cfg.attention {
                    AttentionKind::General => {
                        let we = affine(named("attention.weight"), None, enc(j), h);
                        (0..h).map(|i| hh[i] * we[i]).sum()
                    }
                    AttentionKind::Additive => {
                        let a = cfg.attention_size;
                        let q = affine(named("attention.query"), None, &hh, a);
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
            comb.extend_from_slice(&hh);
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
