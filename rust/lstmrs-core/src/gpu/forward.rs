//! The GPU forward pass: layers in order, both directions of a layer, every time step, recorded
//! into one command encoder.

use super::context::{gpu, GBuf, Gpu, Recorder};
use super::matmul::{matmul, Bias, Operand, Out};
use super::ops::{permute, scale};
use super::step::{forward_step, ForwardSweep, TapeLayout};
use crate::config::{CellKind, RnnConfig};
use crate::dropout::dropout_mask;
use crate::error::Result;
use crate::network::{validate_forward, Batch, ForwardOptions, ForwardOutput, Layout};
use crate::params::{dir_offsets, RnnWeights};
use crate::scalar::Scalar;
use bytemuck::Pod;

/// Everything the GPU backward pass needs from a forward call, kept on the device.
#[derive(Debug, Clone)]
pub struct GpuTape {
    pub(super) config: RnnConfig,
    pub(super) layout: Layout,
    pub(super) seq_len: usize,
    pub(super) batch: usize,
    /// `[B]` u32: each row's length (`T` when the batch has none).
    pub(super) lengths: GBuf,
    /// Time-major input of each layer, after dropout.
    pub(super) layer_inputs: Vec<GBuf>,
    /// Dropout mask applied to each layer's input.
    pub(super) masks: Vec<Option<GBuf>>,
    /// `[L*D]` direction tapes (see `TapeLayout`).
    pub(super) dirs: Vec<GBuf>,
}

impl GpuTape {
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
}

use super::GpuForward;

/// Runs the network over a batch on the GPU: [`crate::forward`]'s semantics, f32 only.
pub fn forward<'p, T: Scalar + Pod>(
    params: impl Into<RnnWeights<'p, T>>,
    x: &Batch<T>,
    opts: &ForwardOptions,
) -> Result<GpuForward<T>> {
    let params = params.into();
    let cfg = *params.config();
    validate_forward(&cfg, x, opts)?;
    super::check_supported::<T>(&cfg)?;
    // The host buffers of a GPU pass (inputs, outputs, the tape's downloads) are those of a CPU
    // pass: the same ceiling applies before anything is uploaded.
    crate::memory::check(
        "x",
        crate::network::forward_bytes(
            &cfg,
            x.seq_len,
            x.batch,
            std::mem::size_of::<T>(),
            opts.keep_tape,
        ),
    )?;
    let g = gpu()?;
    g.scoped(|| run(g, params.as_slice(), &cfg, x, opts))
}

/// State slots `(read, write)` of sweep position `s` at time `t` (see `TapeLayout`): with a tape,
/// slot `t` feeds step `t` going forward and slot `t+1` going backward in time, as on the CPU.
pub(super) fn slots(keep: bool, reverse: bool, s: usize, t: usize) -> (usize, usize) {
    match (keep, reverse) {
        (true, false) => (t, t + 1),
        (true, true) => (t + 1, t),
        (false, _) => (s % 2, (s + 1) % 2),
    }
}

fn run<T: Scalar + Pod>(
    g: &Gpu,
    params: &[T],
    cfg: &RnnConfig,
    x: &Batch<T>,
    opts: &ForwardOptions,
) -> Result<GpuForward<T>> {
    let (t, b, h, nd) = (x.seq_len, x.batch, cfg.hidden_size, cfg.num_directions());
    // `S`: features of h and of each direction's output (`P` with projections).
    let ss = cfg.state_size();
    let (bh, bs, gh) = (b * h, b * ss, cfg.x_gate_width());
    let lstm = cfg.cell == CellKind::Lstm;
    let keep = opts.keep_tape;
    let (h_states, c_states) = (cfg.num_layers * nd * bs, cfg.num_layers * nd * bh);

    let weights = g.upload(params, "params")?;
    let lengths: Vec<u32> = match x.lengths {
        Some(l) => l.iter().map(|&v| v as u32).collect(),
        None => vec![t as u32; b],
    };
    let lengths = g.upload(&lengths, "lengths")?;
    let h0 = x.h0.map(|v| g.upload(v, "h0")).transpose()?;
    let c0 = x.c0.map(|v| g.upload(v, "c0")).transpose()?;
    let h_n = g.zeros(h_states, "h_n")?;
    let c_n = if lstm {
        Some(g.zeros(c_states, "c_n")?)
    } else {
        None
    };

    let mut rec = Recorder::new(g);
    let input = g.upload(x.input, "input")?;
    let mut layer_in = match x.layout {
        Layout::TimeMajor => input,
        Layout::BatchFirst => {
            let tm = g.zeros(input.len(), "input (time-major)")?;
            permute(&mut rec, &input, &tm, (b, t, cfg.input_size))?;
            tm
        }
    };
    let mut layer_inputs = Vec::new();
    let mut masks = Vec::new();
    let mut dirs = Vec::new();

    for layer in 0..cfg.num_layers {
        let inp = cfg.layer_input_size(layer);
        let mask = if opts.training && opts.dropout > 0.0 && layer > 0 {
            // The same mask as the CPU path; the unmasked output below is not needed again.
            let m = dropout_mask::<T>(opts.seed, layer, t * b * inp, opts.dropout);
            let m = g.upload(&m, "dropout mask")?;
            scale(&mut rec, &layer_in, &m, t * b * inp)?;
            Some(m)
        } else {
            None
        };
        let layer_out = g.zeros(t * b * nd * ss, "layer output")?;
        for dir in 0..nd {
            let o = dir_offsets(cfg, layer, dir);
            // x_pre = x · W_ihᵀ + b_ih + the parts of b_hh outside the recurrence (all of it for
            // the LSTM, b_hr and b_hz for the GRU).
            let x_pre = g.zeros(t * b * gh, "x_pre")?;
            let folded = if lstm { gh } else { 2 * h };
            matmul(
                &mut rec,
                (t * b, gh, inp),
                Operand {
                    buf: &layer_in,
                    off: 0,
                    ld: inp,
                    trans: false,
                },
                Operand {
                    buf: &weights,
                    off: o.w_ih,
                    ld: inp,
                    trans: true,
                },
                Out {
                    buf: &x_pre,
                    off: 0,
                    ld: gh,
                },
                o.bias.map(|(b_ih, b_hh)| Bias {
                    buf: &weights,
                    first: b_ih,
                    second: Some((b_hh, folded)),
                }),
                false,
            )?;

            let tl = TapeLayout::new(cfg, b, t, keep);
            let tape = g.zeros(tl.len(), "tape")?;
            let reverse = dir == 1;
            let time = |s: usize| if reverse { t - 1 - s } else { s };
            let first = slots(keep, reverse, 0, time(0)).0;
            let (st_h, st_c) = ((layer * nd + dir) * bs, (layer * nd + dir) * bh);
            if let Some(h0) = &h0 {
                rec.copy(h0, st_h, &tape, tl.h(first), bs);
            }
            if let (true, Some(c0)) = (lstm, &c0) {
                rec.copy(c0, st_c, &tape, tl.c(first), bh);
            }
            let sweep = ForwardSweep {
                cell: cfg.cell,
                batch: b,
                hidden: h,
                weights: &weights,
                w_hh: o.w_hh,
                b_hn: o.bias.filter(|_| !lstm).map(|(_, b_hh)| b_hh + 2 * h),
                x_pre: &x_pre,
                lengths: &lengths,
                tape: &tape,
                layout: tl,
                state: ss,
                w_hr: (cfg.proj_size > 0).then_some(o.w_hr),
                out: &layer_out,
                out_ld: nd * ss,
                out_col: dir * ss,
                keep_tape: keep,
            };
            let mut last = first;
            for s in 0..t {
                let step = time(s);
                let (read, write) = slots(keep, reverse, s, step);
                forward_step(
                    &mut rec,
                    &sweep,
                    step,
                    (read, write),
                    if keep { step } else { 0 },
                )?;
                last = write;
            }
            rec.copy(&tape, tl.h(last), &h_n, st_h, bs);
            if let Some(c_n) = &c_n {
                rec.copy(&tape, tl.c(last), c_n, st_c, bh);
            }
            if keep {
                dirs.push(tape);
            }
        }
        let prev = std::mem::replace(&mut layer_in, layer_out);
        if keep {
            layer_inputs.push(prev);
            masks.push(mask);
        }
    }

    let out_len = t * b * nd * ss;
    let output = match x.layout {
        Layout::TimeMajor => layer_in,
        Layout::BatchFirst => {
            let bf = g.zeros(out_len, "output")?;
            permute(&mut rec, &layer_in, &bf, (t, b, nd * ss))?;
            bf
        }
    };
    let mut reads = vec![(&output, 0, out_len), (&h_n, 0, h_states)];
    if let Some(c_n) = &c_n {
        reads.push((c_n, 0, c_states));
    }
    let mut res = rec.submit::<T>(&reads)?.into_iter();
    let (output, h_n) = (
        res.next().unwrap_or_default(),
        res.next().unwrap_or_default(),
    );
    let c_n = res.next();
    Ok(GpuForward {
        output: ForwardOutput {
            output,
            h_n,
            c_n,
            tape: None,
        },
        tape: keep.then(|| GpuTape {
            config: *cfg,
            layout: x.layout,
            seq_len: t,
            batch: b,
            lengths,
            layer_inputs,
            masks,
            dirs,
        }),
    })
}
