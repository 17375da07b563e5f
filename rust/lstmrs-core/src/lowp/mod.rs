//! Reduced-precision inference, opt-in: the built-in LSTM and GRU forward pass with bf16 or int8
//! weights and products, f32 accumulation (exact i32 for int8) and f32 state.
//!
//! * bf16: weights and the product's activations rounded to bfloat16 (nearest even), products
//!   summed in f32 by `vdpbf16ps` (AVX512_BF16), or widened to f32 and FMA'd on AVX-512F, or
//!   plain loops elsewhere.
//! * int8: `torch.ao.quantization.quantize_dynamic`'s scheme with per-row weight scales: each
//!   weight row symmetric int8, each activation row (an input step, or a hidden state at a step)
//!   quantized to uint8 with its own scale and zero point when the product runs; `vpdpbusd`
//!   (AVX512_VNNI) or plain loops sum the products exactly.
//!
//! Biases, gate nonlinearities, the cell state and the outputs stay f32 ([`crate::gates`]'s
//! kernels, the same as the f32 path). [`reference`] is a plain implementation of the same
//! arithmetic that the fast path is tested against. Inference only: there is no tape.

mod kernels;
mod pack;
pub mod reference;

pub use kernels::Kernel;
pub use pack::{bf16_to_f32, f32_to_bf16, quantize_activation_row, quantize_weight_row, Precision};

use crate::config::{CellKind, RnnConfig};
use crate::error::{Error, Result};
use crate::gates::{self, Active};
use crate::network::{validate_forward, Batch, ForwardOptions, Layout};
use crate::params::{dir_offsets, RnnWeights};
use crate::threads;
use pack::{PackedActivations, PackedWeight};
use rayon::prelude::*;

impl Precision {
    /// `"bfloat16"` / `"bf16"` or `"qint8"` / `"int8"`.
    pub fn from_name(name: &str) -> Result<Precision> {
        match name {
            "bfloat16" | "bf16" => Ok(Precision::Bf16),
            "qint8" | "int8" => Ok(Precision::Int8),
            _ => Err(Error::Name {
                arg: "dtype",
                expected: "\"bfloat16\", \"qint8\"".into(),
                got: name.to_string(),
            }),
        }
    }
}

/// One layer-direction's weights in reduced precision and its f32 biases.
struct LowpDir {
    /// `[G*H, I_l]`.
    w_ih: PackedWeight,
    /// `[G*H, H]`.
    w_hh: PackedWeight,
    /// `[G*H]` added to the input projection: `b_ih + b_hh` (LSTM), `b_ih + (b_hr, b_hz, 0)`
    /// (GRU); zeros without biases.
    bias_x: Vec<f32>,
    /// GRU: `b_hn` `[H]`, which sits inside `r * (W_hn h + b_hn)`; empty for the LSTM.
    b_hn: Vec<f32>,
}

/// A built-in LSTM or GRU network with its weights in reduced precision, for inference.
pub struct LowpRnn {
    config: RnnConfig,
    precision: Precision,
    kernel: Kernel,
    dirs: Vec<LowpDir>,
}

/// The outputs of [`LowpRnn::forward`], shaped as [`crate::ForwardOutput`]'s.
#[derive(Debug, Clone)]
pub struct LowpOutput {
    /// `[B, T, D*H]` or `[T, B, D*H]`, the input's layout.
    pub output: Vec<f32>,
    /// `[L*D, B, H]`.
    pub h_n: Vec<f32>,
    /// `[L*D, B, H]`, LSTM only.
    pub c_n: Option<Vec<f32>>,
}

/// Whether the built-in kernels of `config` can run in reduced precision, else why not.
fn check_config(config: &RnnConfig) -> Result<()> {
    if !matches!(config.cell, CellKind::Lstm | CellKind::Gru) {
        return Err(Error::Value {
            arg: "cell",
            expected: "the built-in 'lstm' or 'gru' cell (reduced precision has no kernels \
                       for custom cells)"
                .into(),
            got: format!("{:?}", config.cell.name()),
        });
    }
    if config.proj_size > 0 {
        return Err(Error::Value {
            arg: "proj_size",
            expected: "0 (reduced precision has no projected LSTM)".into(),
            got: config.proj_size.to_string(),
        });
    }
    Ok(())
}

impl LowpRnn {
    /// Converts f32 weights to `precision`; `kernel` None picks the fastest this CPU runs.
    pub fn new<'p>(
        weights: impl Into<RnnWeights<'p, f32>>,
        precision: Precision,
        kernel: Option<Kernel>,
    ) -> Result<LowpRnn> {
        let weights = weights.into();
        let cfg = *weights.config();
        check_config(&cfg)?;
        let kernel = match kernel {
            Some(k) => k.check(precision)?,
            None => Kernel::best(precision),
        };
        let flat = weights.as_slice();
        let (h, g) = (cfg.hidden_size, cfg.cell.gate_count());
        let mut dirs = Vec::new();
        for layer in 0..cfg.num_layers {
            let in_size = cfg.layer_input_size(layer);
            for dir in 0..cfg.num_directions() {
                let o = dir_offsets(&cfg, layer, dir);
                let w_ih = &flat[o.w_ih..o.w_ih + g * h * in_size];
                let w_hh = &flat[o.w_hh..o.w_hh + g * h * h];
                let mut bias_x = vec![0.0f32; g * h];
                let mut b_hn = Vec::new();
                if let Some((bi, bh)) = o.bias {
                    let (b_ih, b_hh) = (&flat[bi..bi + g * h], &flat[bh..bh + g * h]);
                    // The GRU's b_hn stays out of the input side: it is multiplied by r.
                    let summed = if cfg.cell == CellKind::Gru {
                        2 * h
                    } else {
                        g * h
                    };
                    for j in 0..g * h {
                        bias_x[j] = b_ih[j] + if j < summed { b_hh[j] } else { 0.0 };
                    }
                    if cfg.cell == CellKind::Gru {
                        b_hn = b_hh[2 * h..].to_vec();
                    }
                } else if cfg.cell == CellKind::Gru {
                    b_hn = vec![0.0; h];
                }
                dirs.push(LowpDir {
                    w_ih: PackedWeight::new(precision, w_ih, g * h, in_size),
                    w_hh: PackedWeight::new(precision, w_hh, g * h, h),
                    bias_x,
                    b_hn,
                });
            }
        }
        Ok(LowpRnn {
            config: cfg,
            precision,
            kernel,
            dirs,
        })
    }

    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The tile kernel the products run on.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Bytes of the packed weights (and their scales).
    pub fn weight_bytes(&self) -> usize {
        self.dirs
            .iter()
            .map(|d| d.w_ih.bytes() + d.w_hh.bytes() + 4 * (d.bias_x.len() + d.b_hn.len()))
            .sum()
    }

    /// Each layer-direction's `(W_ih, W_hh)` as the kernels see them, back in f32.
    pub fn dequantized_weights(&self) -> Vec<(Vec<f32>, Vec<f32>)> {
        self.dirs
            .iter()
            .map(|d| (d.w_ih.dequantized(), d.w_hh.dequantized()))
            .collect()
    }

    /// The forward pass (no dropout, no tape): the f32 API's shapes and `lengths` semantics.
    pub fn forward(&self, x: &Batch<f32>) -> Result<LowpOutput> {
        let cfg = &self.config;
        validate_forward(cfg, x, &ForwardOptions::default())?;
        let (t, b, h) = (x.seq_len, x.batch, cfg.hidden_size);
        let g = cfg.cell.gate_count();
        let work = (0..cfg.num_layers)
            .map(|l| t * b * g * h * (cfg.layer_input_size(l) + h) * cfg.num_directions())
            .sum::<usize>();
        Ok(threads::install_for(work, || self.run(x)))
    }

    fn run(&self, x: &Batch<f32>) -> LowpOutput {
        let cfg = &self.config;
        let (t_len, b, h) = (x.seq_len, x.batch, cfg.hidden_size);
        let (nd, gh) = (cfg.num_directions(), cfg.cell.gate_count() * h);
        let lstm = cfg.cell == CellKind::Lstm;
        // Layer inputs time-major: [T, B, I_l].
        let mut input = match x.layout {
            Layout::TimeMajor => x.input.to_vec(),
            Layout::BatchFirst => transpose_bt(x.input, b, t_len, cfg.input_size),
        };
        let states = cfg.num_layers * nd * b * h;
        let mut h_n = vec![0.0f32; states];
        let mut c_n = vec![0.0f32; if lstm { states } else { 0 }];
        let mut acts = PackedActivations::default();
        let mut pre = vec![0.0f32; t_len * b * gh];
        let mut h_pre = vec![0.0f32; b * gh];
        let (mut hs, mut h_next) = (vec![0.0f32; b * h], vec![0.0f32; b * h]);
        let (mut cs, mut c_next) = (vec![0.0f32; b * h], vec![0.0f32; b * h]);
        let mut scratch = vec![0.0f32; b * h];
        for layer in 0..cfg.num_layers {
            let in_size = cfg.layer_input_size(layer);
            let out_w = nd * h;
            let mut out = vec![0.0f32; t_len * b * out_w];
            for dir in 0..nd {
                let ld = layer * nd + dir;
                let w = &self.dirs[ld];
                // Input projection of every step at once: [T*B, G*H].
                acts.fill(self.precision, &input, t_len * b, in_size, in_size);
                kernels::matmul(
                    self.kernel,
                    &w.w_ih,
                    &acts,
                    &mut pre,
                    gh,
                    false,
                    Some(&w.bias_x),
                );
                let s = ld * b * h..(ld + 1) * b * h;
                match x.h0 {
                    Some(h0) => hs.copy_from_slice(&h0[s.clone()]),
                    None => hs.fill(0.0),
                }
                match x.c0 {
                    Some(c0) if lstm => cs.copy_from_slice(&c0[s.clone()]),
                    _ => cs.fill(0.0),
                }
                for step in 0..t_len {
                    let t = if dir == 0 { step } else { t_len - 1 - step };
                    let active = Active {
                        lengths: x.lengths,
                        t,
                    };
                    acts.fill(self.precision, &hs, b, h, h);
                    kernels::matmul(self.kernel, &w.w_hh, &acts, &mut h_pre, gh, false, None);
                    let pre_t = &mut pre[t * b * gh..(t + 1) * b * gh];
                    let step = GateStep {
                        h,
                        lstm,
                        lengths: x.lengths,
                        t,
                        b_hn: &w.b_hn,
                    };
                    step.run(
                        pre_t,
                        &h_pre,
                        &cs,
                        &hs,
                        &mut scratch,
                        &mut c_next,
                        &mut h_next,
                    );
                    if lstm {
                        std::mem::swap(&mut cs, &mut c_next);
                    }
                    std::mem::swap(&mut hs, &mut h_next);
                    for r in 0..b {
                        // Steps past a sequence's end output zeros (the buffer's initial value).
                        if active.row(r) {
                            let o = (t * b + r) * out_w + dir * h;
                            out[o..o + h].copy_from_slice(&hs[r * h..(r + 1) * h]);
                        }
                    }
                }
                h_n[s.clone()].copy_from_slice(&hs);
                if lstm {
                    c_n[s].copy_from_slice(&cs);
                }
            }
            input = out;
        }
        let output = match x.layout {
            Layout::TimeMajor => input,
            Layout::BatchFirst => transpose_bt(&input, t_len, b, nd * h),
        };
        LowpOutput {
            output,
            h_n,
            c_n: lstm.then_some(c_n),
        }
    }
}

/// Rows of a step below which the gate pass stays on one thread.
const PARALLEL_GATE_MIN: usize = 1 << 14;

/// One part of a step's rows, as the zipped chunks arrive: its index and `(pre, h_pre, c,
/// h_prev, scratch, c_next, h_next)`.
#[rustfmt::skip]
type GateChunk<'a> = (
    usize,
    ((((((&'a mut [f32], &'a [f32]), &'a [f32]), &'a [f32]), &'a mut [f32]), &'a mut [f32]), &'a mut [f32]),
);

/// One time step's element-wise gate pass ([`crate::gates`]), split over the batch rows.
struct GateStep<'a> {
    h: usize,
    lstm: bool,
    lengths: Option<&'a [usize]>,
    t: usize,
    b_hn: &'a [f32],
}

impl GateStep<'_> {
    /// `pre[B, G*H]` (input projection + biases, overwritten with activations), `h_pre[B, G*H]`
    /// (`W_hh h`), the state `c`, `h` `[B, H]` → `c_next`, `h_next`; `scratch` `[B, H]`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        pre: &mut [f32],
        h_pre: &[f32],
        c: &[f32],
        h_prev: &[f32],
        scratch: &mut [f32],
        c_next: &mut [f32],
        h_next: &mut [f32],
    ) {
        let h = self.h;
        let b = h_prev.len() / h;
        let gh = pre.len() / b;
        let threads = rayon::current_num_threads();
        let parts = if b * h >= PARALLEL_GATE_MIN && threads > 1 && threads::parallel_allowed() {
            threads.min(b)
        } else {
            1
        };
        let rows = b.div_ceil(parts);
        let chunks: Vec<_> = pre
            .chunks_mut(rows * gh)
            .zip(h_pre.chunks(rows * gh))
            .zip(c.chunks(rows * h))
            .zip(h_prev.chunks(rows * h))
            .zip(scratch.chunks_mut(rows * h))
            .zip(c_next.chunks_mut(rows * h))
            .zip(h_next.chunks_mut(rows * h))
            .enumerate()
            .collect();
        let one = |(i, ((((((p, hp), c), hh), sc), cn), hn)): GateChunk<'_>| {
            let r0 = i * rows;
            let active = Active {
                lengths: self.lengths.map(|l| &l[r0..r0 + hh.len() / h]),
                t: self.t,
            };
            if self.lstm {
                gates::lstm_forward(h, active, p, hp, c, hh, sc, cn, hn);
            } else {
                gates::gru_forward(h, active, p, hp, self.b_hn, hh, sc, hn);
            }
        };
        if parts > 1 {
            chunks.into_par_iter().for_each(one);
        } else {
            chunks.into_iter().for_each(one);
        }
    }
}

/// `[P, Q, F]` → `[Q, P, F]`.
pub(crate) fn transpose_bt(x: &[f32], p: usize, q: usize, f: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    for i in 0..p {
        for j in 0..q {
            let (src, dst) = ((i * q + j) * f, (j * p + i) * f);
            y[dst..dst + f].copy_from_slice(&x[src..src + f]);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::pack::*;
    use super::*;

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.37 + seed).sin()) * 0.8)
            .collect()
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties go to the even mantissa.
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        assert_eq!(
            bf16_to_f32(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn activation_quantization_keeps_zero_exact_and_the_range() {
        let row = [-1.0f32, 0.0, 0.5, 3.0];
        let mut q = [0u8; 4];
        let (s, z) = quantize_activation_row(&row, &mut q);
        assert_eq!(q[1] as i32, z);
        for (&v, &qv) in row.iter().zip(&q) {
            assert!((s * (qv as i32 - z) as f32 - v).abs() <= s / 2.0 + 1e-6);
        }
    }

    /// Every kernel this CPU has against plain f64 loops over the dequantized operands, on
    /// shapes with ragged edges (rows past MR, columns past NR, K not a multiple of the group).
    #[test]
    fn every_kernel_matches_plain_loops() {
        for precision in [Precision::Bf16, Precision::Int8] {
            for (m, n, k) in [(1, 5, 3), (9, 33, 7), (17, 64, 130), (3, 100, 64)] {
                let w = data(n * k, 0.3);
                let a = data(m * k, 1.1);
                let pw = PackedWeight::new(precision, &w, n, k);
                let wq = pw.dequantized();
                let mut pa = PackedActivations::default();
                pa.fill(precision, &a, m, k, k);
                let mut results = Vec::new();
                for kernel in Kernel::available(precision) {
                    let mut c = vec![1.0f32; m * n];
                    let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
                    kernels::matmul(kernel, &pw, &pa, &mut c, n, true, Some(&bias));
                    for r in 0..m {
                        for j in 0..n {
                            let want: f64 = 1.0
                                + (j as f32 * 0.01) as f64
                                + (0..k)
                                    .map(|p| {
                                        let av = match precision {
                                            Precision::Bf16 => {
                                                bf16_to_f32(f32_to_bf16(a[r * k + p])) as f64
                                            }
                                            Precision::Int8 => {
                                                let g = pa.words[r * pa.kg + p / 4];
                                                let q = (g >> (8 * (p % 4))) as u8 as i32;
                                                pa.scale[r] as f64 * (q - pa.zero[r]) as f64
                                            }
                                        };
                                        av * wq[j * k + p] as f64
                                    })
                                    .sum::<f64>();
                            let got = c[r * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{kernel:?} {precision:?} ({m},{n},{k}) [{r},{j}]: {got} vs {want}"
                            );
                        }
                    }
                    results.push((kernel, c));
                }
                if precision == Precision::Int8 {
                    // Exact integer sums and one shared epilogue: the same bits on every path.
                    for (kernel, c) in &results[1..] {
                        assert_eq!(c, &results[0].1, "{kernel:?}");
                    }
                }
            }
        }
    }
}
