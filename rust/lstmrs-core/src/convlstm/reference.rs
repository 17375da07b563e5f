//! The ConvLSTM written as plainly as possible: direct convolution loops, one pixel at a time,
//! no im2col, no GEMM, no threads. The fast path ([`super::forward`]) is tested against it.
//!
//! For every layer and step: `z = conv(x_t, W_ih, pad) + conv(h_{t-1}, W_hh, k // 2) + b`,
//! `i, f, o = σ(z_i, z_f, z_o)`, `g = tanh(z_g)`, `c_t = f c_{t-1} + i g`, `h_t = o tanh(c_t)`.

use super::network::{ConvBatch, ConvForward};
use super::params::ConvLstmParams;
use crate::error::Result;
use crate::scalar::Scalar;

/// `out[o, y, x] += Σ_{c,i,j} w[o, c, i, j] · frame[c, y + i - ph, x + j - pw]` (zero outside).
fn conv_add<T: Scalar>(
    w: &[T],
    frame: &[T],
    (channels, h, wd): (usize, usize, usize),
    (kh, kw): (usize, usize),
    (ph, pw): (usize, usize),
    (outs, ho, wo): (usize, usize, usize),
    out: &mut [T],
) {
    for oc in 0..outs {
        for y in 0..ho {
            for x in 0..wo {
                let mut acc = T::zero();
                for c in 0..channels {
                    for i in 0..kh {
                        for j in 0..kw {
                            let sy = y as isize + i as isize - ph as isize;
                            let sx = x as isize + j as isize - pw as isize;
                            if sy < 0 || sx < 0 || sy as usize >= h || sx as usize >= wd {
                                continue;
                            }
                            let wv = w[((oc * channels + c) * kh + i) * kw + j];
                            acc += wv * frame[(c * h + sy as usize) * wd + sx as usize];
                        }
                    }
                }
                out[(oc * ho + y) * wo + x] += acc;
            }
        }
    }
}

/// The forward pass, without a tape.
pub fn forward<T: Scalar>(
    params: &ConvLstmParams<T>,
    batch: &ConvBatch<T>,
) -> Result<ConvForward<T>> {
    let cfg = *params.config();
    let (ho, wo) = cfg.state_size(batch.height, batch.width)?;
    let (k, g, p) = (cfg.hidden_channels, cfg.gate_channels(), ho * wo);
    let (kh, kw) = (cfg.kernel[0], cfg.kernel[1]);
    let (bsz, t_len, nl) = (batch.batch, batch.seq_len, cfg.num_layers);
    let frame = cfg.in_channels * batch.height * batch.width;
    let mut output = vec![T::zero(); bsz * t_len * k * p];
    let mut h_n = vec![T::zero(); nl * bsz * k * p];
    let mut c_n = vec![T::zero(); nl * bsz * k * p];
    for b in 0..bsz {
        // The current layer's input sequence, `[T, C_l, H_l, W_l]`.
        let mut seq: Vec<T> = batch.input[b * t_len * frame..(b + 1) * t_len * frame].to_vec();
        let (mut cin, mut hin, mut win) = (cfg.in_channels, batch.height, batch.width);
        for layer in 0..nl {
            let name = |s: &str| format!("{s}_l{layer}");
            let w_ih = params.get(&name("weight_ih"))?;
            let w_hh = params.get(&name("weight_hh"))?;
            let bias = if cfg.bias {
                Some(params.get(&name("bias"))?)
            } else {
                None
            };
            let at = (layer * bsz + b) * k * p;
            let mut h = batch
                .h0
                .map_or(vec![T::zero(); k * p], |s| s[at..at + k * p].to_vec());
            let mut c = batch
                .c0
                .map_or(vec![T::zero(); k * p], |s| s[at..at + k * p].to_vec());
            let mut outs = vec![T::zero(); t_len * k * p];
            for t in 0..t_len {
                let mut z = vec![T::zero(); g * p];
                if let Some(bias) = bias {
                    for gc in 0..g {
                        z[gc * p..(gc + 1) * p].fill(bias[gc]);
                    }
                }
                let x_t = &seq[t * cin * hin * win..(t + 1) * cin * hin * win];
                let pad = (cfg.padding[0], cfg.padding[1]);
                conv_add(
                    w_ih,
                    x_t,
                    (cin, hin, win),
                    (kh, kw),
                    pad,
                    (g, ho, wo),
                    &mut z,
                );
                let same = (kh / 2, kw / 2);
                conv_add(w_hh, &h, (k, ho, wo), (kh, kw), same, (g, ho, wo), &mut z);
                let sigmoid = |v: T| T::one() / (T::one() + (-v).exp());
                for u in 0..k * p {
                    let i = sigmoid(z[u]);
                    let f = sigmoid(z[k * p + u]);
                    let gg = z[2 * k * p + u].tanh();
                    let o = sigmoid(z[3 * k * p + u]);
                    c[u] = f * c[u] + i * gg;
                    h[u] = o * c[u].tanh();
                }
                outs[t * k * p..(t + 1) * k * p].copy_from_slice(&h);
            }
            h_n[at..at + k * p].copy_from_slice(&h);
            c_n[at..at + k * p].copy_from_slice(&c);
            seq = outs;
            (cin, hin, win) = (k, ho, wo);
        }
        output[b * t_len * k * p..(b + 1) * t_len * k * p].copy_from_slice(&seq);
    }
    Ok(ConvForward {
        output,
        h_n,
        c_n,
        tape: None,
    })
}
