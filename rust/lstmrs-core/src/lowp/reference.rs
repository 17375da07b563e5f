//! A plain implementation of the reduced-precision forward pass: the same rounding of weights and
//! activations as [`super::LowpRnn`], everything else in f64 with PyTorch's equations written
//! out, one sequence and one step at a time. The fast path is tested against it.

use super::pack::{bf16_to_f32, f32_to_bf16, quantize_activation_row, quantize_weight_row};
use super::{LowpOutput, Precision};
use crate::config::CellKind;
use crate::error::Result;
use crate::network::{validate_forward, Batch, ForwardOptions, Layout};
use crate::params::{dir_offsets, RnnWeights};

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `W x` with the product's reduced precision: `w[N, K]` and the activation row `x[K]`.
fn product(precision: Precision, w: &[f32], n: usize, x: &[f32]) -> Vec<f64> {
    let k = x.len();
    match precision {
        Precision::Bf16 => {
            let r = |v: f32| bf16_to_f32(f32_to_bf16(v)) as f64;
            (0..n)
                .map(|j| (0..k).map(|p| r(w[j * k + p]) * r(x[p])).sum())
                .collect()
        }
        Precision::Int8 => {
            let mut qx = vec![0u8; k];
            let (sx, zx) = quantize_activation_row(x, &mut qx);
            let mut qw = vec![0i8; k];
            (0..n)
                .map(|j| {
                    let sw = quantize_weight_row(&w[j * k..(j + 1) * k], &mut qw);
                    let dot: i64 = (0..k)
                        .map(|p| (qx[p] as i64 - zx as i64) * qw[p] as i64)
                        .sum();
                    sx as f64 * sw as f64 * dot as f64
                })
                .collect()
        }
    }
}

/// The forward pass of `weights` on `x` in `precision`, as [`super::LowpRnn::forward`] computes it.
pub fn forward<'p>(
    weights: impl Into<RnnWeights<'p, f32>>,
    precision: Precision,
    x: &Batch<f32>,
) -> Result<LowpOutput> {
    let weights = weights.into();
    let cfg = *weights.config();
    super::check_config(&cfg)?;
    validate_forward(&cfg, x, &ForwardOptions::default())?;
    let flat = weights.as_slice();
    let (t_len, b, h, nd) = (x.seq_len, x.batch, cfg.hidden_size, cfg.num_directions());
    let g = cfg.cell.gate_count();
    let lstm = cfg.cell == CellKind::Lstm;
    let at = |t: usize, r: usize, f: usize| match x.layout {
        Layout::BatchFirst => (r * t_len + t) * f,
        Layout::TimeMajor => (t * b + r) * f,
    };
    // seq[r][t]: the current layer's input at step t of sequence r.
    let mut seq: Vec<Vec<Vec<f32>>> = (0..b)
        .map(|r| {
            (0..t_len)
                .map(|t| x.input[at(t, r, cfg.input_size)..][..cfg.input_size].to_vec())
                .collect()
        })
        .collect();
    let states = cfg.num_layers * nd * b * h;
    let mut h_n = vec![0.0f32; states];
    let mut c_n = vec![0.0f32; states];
    for layer in 0..cfg.num_layers {
        let in_size = cfg.layer_input_size(layer);
        let mut next = vec![vec![vec![0.0f32; nd * h]; t_len]; b];
        for dir in 0..nd {
            let ld = layer * nd + dir;
            let o = dir_offsets(&cfg, layer, dir);
            let w_ih = &flat[o.w_ih..o.w_ih + g * h * in_size];
            let w_hh = &flat[o.w_hh..o.w_hh + g * h * h];
            let zeros = vec![0.0f32; g * h];
            let (b_ih, b_hh) = match o.bias {
                Some((bi, bh)) => (&flat[bi..bi + g * h], &flat[bh..bh + g * h]),
                None => (&zeros[..], &zeros[..]),
            };
            for r in 0..b {
                let len = x.lengths.map_or(t_len, |l| l[r]);
                let s = (ld * b + r) * h;
                let mut hs: Vec<f32> = x.h0.map_or(vec![0.0; h], |h0| h0[s..s + h].to_vec());
                let mut cs: Vec<f64> = match x.c0 {
                    Some(c0) if lstm => c0[s..s + h].iter().map(|&v| v as f64).collect(),
                    _ => vec![0.0; h],
                };
                let steps: Vec<usize> = if dir == 0 {
                    (0..len).collect()
                } else {
                    (0..len).rev().collect()
                };
                for t in steps {
                    let gx = product(precision, w_ih, g * h, &seq[r][t]);
                    let gh = product(precision, w_hh, g * h, &hs);
                    let xb = |j: usize| gx[j] + b_ih[j] as f64;
                    let hb = |j: usize| gh[j] + b_hh[j] as f64;
                    for u in 0..h {
                        let new_h = if lstm {
                            let i = sigmoid(xb(u) + hb(u));
                            let f = sigmoid(xb(h + u) + hb(h + u));
                            let gg = (xb(2 * h + u) + hb(2 * h + u)).tanh();
                            let og = sigmoid(xb(3 * h + u) + hb(3 * h + u));
                            cs[u] = f * cs[u] + i * gg;
                            og * cs[u].tanh()
                        } else {
                            let rg = sigmoid(xb(u) + hb(u));
                            let z = sigmoid(xb(h + u) + hb(h + u));
                            let n = (xb(2 * h + u) + rg * hb(2 * h + u)).tanh();
                            (1.0 - z) * n + z * hs[u] as f64
                        };
                        next[r][t][dir * h + u] = new_h as f32;
                    }
                    hs.copy_from_slice(&next[r][t][dir * h..(dir + 1) * h]);
                }
                h_n[s..s + h].copy_from_slice(&hs);
                for u in 0..h {
                    c_n[s + u] = cs[u] as f32;
                }
            }
        }
        seq = next;
    }
    let out_w = nd * h;
    let mut output = vec![0.0f32; t_len * b * out_w];
    for r in 0..b {
        for t in 0..t_len {
            output[at(t, r, out_w)..][..out_w].copy_from_slice(&seq[r][t]);
        }
    }
    Ok(LowpOutput {
        output,
        h_n,
        c_n: lstm.then_some(c_n),
    })
}
