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
use crate::gates::{self, Active, RowsMut};
use crate::network::{validate_forward, Batch, ForwardOptions, Layout};
use crate::packed_gemm::team_size;
use crate::params::{dir_offsets, RnnWeights};
use crate::threads;
use kernels::{matmul_panels, Out};
use pack::{PackedActivations, PackedWeight, NR};
use std::ops::Range;

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
                    w_ih: PackedWeight::gate_blocked(precision, w_ih, g, h, in_size),
                    w_hh: PackedWeight::gate_blocked(precision, w_hh, g, h, h),
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
        let nd = cfg.num_directions();
        let lstm = cfg.cell == CellKind::Lstm;
        // The first layer reads the caller's input where it lies and the last writes the output
        // in the caller's layout: no transposed copies. Between layers, time-major [T, B, D*H].
        let batch_first = x.layout == Layout::BatchFirst;
        let mut prev: Option<Vec<f32>> = None;
        let states = cfg.num_layers * nd * b * h;
        let mut h_n = vec![0.0f32; states];
        let mut c_n = vec![0.0f32; if lstm { states } else { 0 }];
        for layer in 0..cfg.num_layers {
            let input = match &prev {
                Some(p) => Rows::new(&p[..], t_len, b, false),
                None => Rows::new(x.input, t_len, b, batch_first),
            };
            let last = layer + 1 == cfg.num_layers;
            let mut out = vec![0.0f32; t_len * b * nd * h];
            for dir in 0..nd {
                let ld = layer * nd + dir;
                let s = ld * b * h..(ld + 1) * b * h;
                let sweep = LowpSweep {
                    precision: self.precision,
                    kernel: self.kernel,
                    cell: cfg.cell,
                    w: &self.dirs[ld],
                    steps: t_len,
                    batch: b,
                    input: cfg.layer_input_size(layer),
                    hidden: h,
                    reverse: dir == 1,
                    lengths: x.lengths,
                };
                let h0 = x.h0.map(|h0| &h0[s.clone()]);
                let c0 = x.c0.filter(|_| lstm).map(|c0| &c0[s.clone()]);
                let (h_last, c_last) = sweep.run(
                    input,
                    h0,
                    c0,
                    Rows::new(&mut out[..], t_len, b, last && batch_first),
                    dir * h,
                    nd * h,
                );
                h_n[s.clone()].copy_from_slice(&h_last);
                if lstm {
                    c_n[s].copy_from_slice(&c_last);
                }
            }
            prev = Some(out);
        }
        let output = prev.expect("at least one layer");
        LowpOutput {
            output,
            h_n,
            c_n: lstm.then_some(c_n),
        }
    }
}

/// Rows of the input side that a sweep's team projects at once, just ahead of the recurrence:
/// enough to reuse each panel of `W_ih` from L1 across many row tiles, few enough that the
/// chunk's pre-activations stay in L2 until their steps read them (no `[T, B, G*H]` buffer).
const PROJECTION_ROWS: usize = 256;

/// One direction of one layer over the whole sequence, run by a team of threads
/// ([`threads::team`]) that split the hidden units in blocks of [`NR`]: each member owns the
/// panels of its units (every gate's columns, [`PackedWeight::gate_blocked`]), projects their
/// input side chunk by chunk, and at every step converts the whole entering state itself (the
/// int8 scale and zero point of a row need all of it), multiplies it by its panels of `W_hh`,
/// runs the gate pass on its units and writes its units of the next state. The state has two
/// slots, so one barrier per step orders every write before the next step's reads.
struct LowpSweep<'a> {
    precision: Precision,
    kernel: Kernel,
    cell: CellKind,
    w: &'a LowpDir,
    steps: usize,
    batch: usize,
    input: usize,
    hidden: usize,
    reverse: bool,
    lengths: Option<&'a [usize]>,
}

impl LowpSweep<'_> {
    fn time(&self, s: usize) -> usize {
        if self.reverse {
            self.steps - 1 - s
        } else {
            s
        }
    }

    /// The time steps of the chunk that starts at sweep position `s` (ascending).
    fn chunk_times(&self, s: usize, chunk: usize) -> Range<usize> {
        let end = (s + chunk).min(self.steps);
        if self.reverse {
            self.steps - end..self.steps - s
        } else {
            s..end
        }
    }

    /// Threads for the sweep: the f32 sweeps' cost model ([`team_size`]) on the work in f32
    /// terms (a 32-bit lane of the product does `group` multiply-adds), at most one member per
    /// unit block.
    fn members(&self) -> usize {
        let (b, h) = (self.batch, self.hidden);
        let gw = self.cell.gate_count() * h;
        let step_work = b * gw * (h + self.input) / self.precision.group();
        team_size(threads::team_capacity(), h, step_work, self.steps).min(h.div_ceil(NR))
    }

    /// Runs the sweep on the input `x` (`I` features a row) from `h0`, `c0` (zeros when None),
    /// writing each active row's state into columns `col..col+H` of `out` (`ld_out` a row);
    /// returns the last states.
    fn run(
        &self,
        x: Rows<&[f32]>,
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
        out: Rows<&mut [f32]>,
        col: usize,
        ld_out: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let (b, h, i) = (self.batch, self.hidden, self.input);
        let gates = self.cell.gate_count();
        let gw = gates * h;
        let lstm = self.cell == CellKind::Lstm;
        let chunk = (PROJECTION_ROWS / b.max(1)).clamp(1, self.steps.max(1));
        // Two state slots: step s reads slot s % 2 and writes the other.
        let mut hs = vec![0.0f32; 2 * b * h];
        let mut cs = vec![0.0f32; if lstm { 2 * b * h } else { 0 }];
        if let Some(h0) = h0 {
            hs[..b * h].copy_from_slice(h0);
        }
        if let Some(c0) = c0 {
            cs[..b * h].copy_from_slice(c0);
        }
        let mut act = vec![0.0f32; chunk * b * gw];
        let mut h_pre = vec![0.0f32; b * gw];
        let mut aux = vec![0.0f32; b * h];
        let views = SweepViews {
            hs: RowsMut::new(&mut hs, h),
            cs: RowsMut::new(&mut cs, h),
            act: RowsMut::new(&mut act, gw),
            h_pre: RowsMut::new(&mut h_pre, gw),
            aux: RowsMut::new(&mut aux, h),
            out: RowsMut::new(out.data, ld_out),
        };
        let out_order = Rows::new((), out.steps, out.batch, out.batch_first);
        let out_row = |t: usize, r: usize| out_order.index(t, r);
        let blocks = h.div_ceil(NR);
        threads::team(self.members(), |member, size, barrier| {
            let (b0, b1) = (blocks * member / size, blocks * (member + 1) / size);
            let units = (b0 * NR).min(h)..(b1 * NR).min(h);
            let panels = b0 * gates..b1 * gates;
            let (mut ax, mut ah) = (PackedActivations::default(), PackedActivations::default());
            // The time step of `act`'s first row.
            let mut first = 0;
            for s in 0..self.steps {
                let t = self.time(s);
                let (rd, wr) = (s % 2, (s + 1) % 2);
                // SAFETY (the whole step): every member reads all of the entering state (slot
                // rd) and writes only its own units' columns of everything else; slot rd is
                // written again only after the barrier that ends the next step.
                unsafe {
                    if s % chunk == 0 {
                        let times = self.chunk_times(s, chunk);
                        first = times.start;
                        let rows = times.len() * b;
                        ax.fill_rows(self.precision, rows, i, |q| {
                            let row = x.index(first + q / b, q % b) * i;
                            &x.data[row..row + i]
                        });
                        let dst = Out {
                            ptr: views.act.ptr(),
                            len: rows * gw,
                            ld: gw,
                        };
                        let bias = Some(&self.w.bias_x[..]);
                        let w_ih = &self.w.w_ih;
                        matmul_panels(self.kernel, w_ih, &ax, dst, false, bias, panels.clone());
                    }
                    let h_prev = views.hs.read().skip(rd * b);
                    ah.fill(self.precision, h_prev.row(0, 0, b * h), b, h, h);
                    let pre = Out {
                        ptr: views.h_pre.ptr(),
                        len: b * gw,
                        ld: gw,
                    };
                    let w_hh = &self.w.w_hh;
                    matmul_panels(self.kernel, w_hh, &ah, pre, false, None, panels.clone());
                    let active = Active {
                        lengths: self.lengths,
                        t,
                    };
                    let act = views.act.skip((t - first) * b);
                    let h_next = views.hs.skip(wr * b);
                    if lstm {
                        let c_prev = views.cs.read().skip(rd * b);
                        let c_next = views.cs.skip(wr * b);
                        gates::lstm_forward_units(
                            h,
                            units.clone(),
                            b,
                            active,
                            act,
                            views.h_pre.read(),
                            c_prev,
                            h_prev,
                            views.aux,
                            c_next,
                            h_next,
                        );
                    } else {
                        gates::gru_forward_units(
                            h,
                            units.clone(),
                            b,
                            active,
                            act,
                            views.h_pre.read(),
                            &self.w.b_hn,
                            h_prev,
                            views.aux,
                            h_next,
                        );
                    }
                    // Steps past a sequence's end output zeros (the buffer's initial value).
                    let next = h_next.read();
                    for r in 0..b {
                        if active.row(r) {
                            views
                                .out
                                .row_mut(out_row(t, r), col + units.start, units.len())
                                .copy_from_slice(next.row(r, units.start, units.len()));
                        }
                    }
                }
                barrier.wait();
            }
        });
        let last = self.steps % 2;
        let h_last = hs[last * b * h..(last + 1) * b * h].to_vec();
        let c_last = if lstm {
            cs[last * b * h..(last + 1) * b * h].to_vec()
        } else {
            Vec::new()
        };
        (h_last, c_last)
    }
}

/// A sequence of `T` steps of `B` rows, stored time-major (`[T, B, ·]`) or batch-first
/// (`[B, T, ·]`).
#[derive(Clone, Copy)]
struct Rows<D> {
    data: D,
    steps: usize,
    batch: usize,
    batch_first: bool,
}

impl<D> Rows<D> {
    fn new(data: D, steps: usize, batch: usize, batch_first: bool) -> Self {
        Rows {
            data,
            steps,
            batch,
            batch_first,
        }
    }

    /// The row index of step `t`, batch row `r`.
    fn index(&self, t: usize, r: usize) -> usize {
        if self.batch_first {
            r * self.steps + t
        } else {
            t * self.batch + r
        }
    }
}

/// The buffers a sweep's team shares (see [`LowpSweep`]).
#[derive(Clone, Copy)]
struct SweepViews<'a> {
    /// `[2, B, H]` the state slots.
    hs: RowsMut<'a, f32>,
    /// `[2, B, H]` the LSTM's cell state slots (empty for the GRU).
    cs: RowsMut<'a, f32>,
    /// `[chunk, B, G*H]` the input side of the chunk's steps, turned into activations in place.
    act: RowsMut<'a, f32>,
    /// `[B, G*H]` the step's recurrent product.
    h_pre: RowsMut<'a, f32>,
    /// `[B, H]` the gate pass's scratch (`tanh(c')`, or the GRU's `W_hn h + b_hn`).
    aux: RowsMut<'a, f32>,
    /// `[T*B, D*H]` the layer's output.
    out: RowsMut<'a, f32>,
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
