//! The GPU backward pass (BPTT): layers in reverse order; per direction the reverse sweep of step
//! kernels, then the weight, bias and input gradients over all steps as tiled products. Recorded
//! into one command encoder, like the forward pass.

use super::context::{gpu, Gpu, Recorder};
use super::forward::GpuTape;
use super::matmul::{matmul, Operand, Out};
use super::ops::{column_sums, permute, scale};
use super::step::{backward_step, BackwardAt, BackwardSweep, ProjSweep, TapeLayout};
use crate::config::CellKind;
use crate::error::Result;
use crate::network::{validate_backward, GradOutputs, Gradients, Layout};
use crate::params::{dir_offsets, RnnWeights};
use crate::scalar::Scalar;
use bytemuck::Pod;

/// Backpropagation through time on the GPU for the forward call that made `tape`:
/// [`crate::backward`]'s semantics. `params` must be the parameters that call used.
pub fn backward<'p, T: Scalar + Pod>(
    params: impl Into<RnnWeights<'p, T>>,
    tape: &GpuTape,
    grads: &GradOutputs<T>,
) -> Result<Gradients<T>> {
    let params = params.into();
    let cfg = *params.config();
    validate_backward(
        &cfg,
        &tape.config,
        tape.layout,
        tape.seq_len,
        tape.batch,
        grads,
    )?;
    super::check_supported::<T>(&cfg)?;
    let g = gpu()?;
    g.scoped(|| run(g, params.as_slice(), tape, grads))
}

fn run<T: Scalar + Pod>(
    g: &Gpu,
    params: &[T],
    tape: &GpuTape,
    grads: &GradOutputs<T>,
) -> Result<Gradients<T>> {
    let cfg = tape.config;
    let (t, b, h, nd) = (
        tape.seq_len,
        tape.batch,
        cfg.hidden_size,
        cfg.num_directions(),
    );
    // `S`: features of h (`P` with projections), `P`: 0 without.
    let (ss, p) = (cfg.state_size(), cfg.proj_size);
    let (bh, bs, gh, rows) = (b * h, b * ss, cfg.x_gate_width(), t * b);
    let lstm = cfg.cell == CellKind::Lstm;
    let (h_states, c_states) = (cfg.num_layers * nd * bs, cfg.num_layers * nd * bh);

    let weights = g.upload(params, "params")?;
    let g_params = g.zeros(params.len(), "parameter gradients")?;
    let dh0 = g.zeros(h_states, "dh0")?;
    let dc0 = if lstm {
        Some(g.zeros(c_states, "dc0")?)
    } else {
        None
    };
    let dh_n = grads.h_n.map(|v| g.upload(v, "d_h_n")).transpose()?;
    let dc_n = grads.c_n.map(|v| g.upload(v, "d_c_n")).transpose()?;

    let mut rec = Recorder::new(g);
    let mut d_out = match grads.output {
        None => None,
        Some(v) => {
            let up = g.upload(v, "d_output")?;
            Some(match tape.layout {
                Layout::TimeMajor => up,
                Layout::BatchFirst => {
                    let tm = g.zeros(up.len(), "d_output (time-major)")?;
                    permute(&mut rec, &up, &tm, (b, t, cfg.output_size()))?;
                    tm
                }
            })
        }
    };

    for layer in (0..cfg.num_layers).rev() {
        let inp = cfg.layer_input_size(layer);
        let x = &tape.layer_inputs[layer];
        let dx = g.zeros(rows * inp, "d_input")?;
        for dir in 0..nd {
            let o = dir_offsets(&cfg, layer, dir);
            let tl = TapeLayout::new(&cfg, b, t, true);
            let dtape = &tape.dirs[layer * nd + dir];
            // Gate gradients, then (GRU) the recurrent-side ones, or (projected) d_proj.
            let gates_len = rows * gh * if lstm { 1 } else { 2 };
            let dg = g.zeros(gates_len + rows * p, "gate gradients")?;
            let carry = g.zeros(2 * bh, "state gradients")?;
            let carry_h = if p > 0 {
                g.zeros(bs, "projected state gradient")?
            } else {
                carry.clone()
            };
            let (st_h, st_c) = ((layer * nd + dir) * bs, (layer * nd + dir) * bh);
            if let Some(d) = &dh_n {
                rec.copy(d, st_h, &carry_h, 0, bs);
            }
            if let (true, Some(d)) = (lstm, &dc_n) {
                rec.copy(d, st_c, &carry, bh, bh);
            }
            let sweep = BackwardSweep {
                cell: cfg.cell,
                steps: t,
                batch: b,
                hidden: h,
                weights: &weights,
                w_hh: o.w_hh,
                lengths: &tape.lengths,
                tape: dtape,
                layout: tl,
                d_out: d_out.as_ref().map(|d| (d, nd * ss, dir * ss)),
                dg: &dg,
                carry: &carry,
                proj: (p > 0).then_some(ProjSweep {
                    proj: p,
                    w_hr: o.w_hr,
                    d_proj: gates_len,
                    carry_h: &carry_h,
                }),
            };
            let reverse = dir == 1;
            let mut prev = None;
            for s in (0..t).rev() {
                let step = if reverse { t - 1 - s } else { s };
                let enter = if reverse { step + 1 } else { step };
                backward_step(
                    &mut rec,
                    &sweep,
                    BackwardAt::Step {
                        t: step,
                        enter,
                        prev,
                    },
                )?;
                prev = Some(step);
            }
            // t >= 1, so the sweep processed at least one step.
            let last = prev.unwrap_or(0);
            backward_step(&mut rec, &sweep, BackwardAt::Final { prev: last })?;
            rec.copy(&carry_h, 0, &dh0, st_h, bs);
            if let Some(dc0) = &dc0 {
                rec.copy(&carry, bh, dc0, st_c, bh);
            }

            // Gradients gathered over all T*B rows. The GRU's recurrent side differs from the
            // input side on the n gate, so W_hh and b_hh read the second half of `dg`.
            let rec_base = sweep.rec_base();
            let dg_t = |off| Operand {
                buf: &dg,
                off,
                ld: gh,
                trans: true,
            };
            matmul(
                &mut rec,
                (gh, inp, rows),
                dg_t(0),
                Operand {
                    buf: x,
                    off: 0,
                    ld: inp,
                    trans: false,
                },
                Out {
                    buf: &g_params,
                    off: o.w_ih,
                    ld: inp,
                },
                None,
                false,
            )?;
            // States entering steps 0..T in time order: slots 0..T going forward, 1..=T back.
            let h_enter = tl.h(usize::from(reverse));
            matmul(
                &mut rec,
                (gh, ss, rows),
                dg_t(rec_base),
                Operand {
                    buf: dtape,
                    off: h_enter,
                    ld: ss,
                    trans: false,
                },
                Out {
                    buf: &g_params,
                    off: o.w_hh,
                    ld: ss,
                },
                None,
                false,
            )?;
            if p > 0 {
                // dW_hr[P,H] = d_projᵀ · m over all steps (both zero on rows past their length).
                matmul(
                    &mut rec,
                    (p, h, rows),
                    Operand {
                        buf: &dg,
                        off: gates_len,
                        ld: p,
                        trans: true,
                    },
                    Operand {
                        buf: dtape,
                        off: tl.m(0),
                        ld: h,
                        trans: false,
                    },
                    Out {
                        buf: &g_params,
                        off: o.w_hr,
                        ld: h,
                    },
                    None,
                    false,
                )?;
            }
            if let Some((b_ih, b_hh)) = o.bias {
                column_sums(&mut rec, &dg, 0, (rows, gh), &g_params, b_ih)?;
                column_sums(&mut rec, &dg, rec_base, (rows, gh), &g_params, b_hh)?;
            }
            matmul(
                &mut rec,
                (rows, inp, gh),
                Operand {
                    buf: &dg,
                    off: 0,
                    ld: gh,
                    trans: false,
                },
                Operand {
                    buf: &weights,
                    off: o.w_ih,
                    ld: inp,
                    trans: false,
                },
                Out {
                    buf: &dx,
                    off: 0,
                    ld: inp,
                },
                None,
                dir == 1,
            )?;
        }
        if let Some(m) = &tape.masks[layer] {
            scale(&mut rec, &dx, m, rows * inp)?;
        }
        d_out = Some(dx);
    }

    let d_input = d_out.expect("at least one layer");
    let d_input = match tape.layout {
        Layout::TimeMajor => d_input,
        Layout::BatchFirst => {
            let bf = g.zeros(d_input.len(), "d_input (batch-first)")?;
            permute(&mut rec, &d_input, &bf, (t, b, cfg.input_size))?;
            bf
        }
    };
    let mut reads = vec![
        (&g_params, 0, params.len()),
        (&d_input, 0, d_input.len()),
        (&dh0, 0, h_states),
    ];
    if let Some(dc0) = &dc0 {
        reads.push((dc0, 0, c_states));
    }
    let mut res = rec.submit::<T>(&reads)?.into_iter();
    let mut next = || res.next().unwrap_or_default();
    let (params, input, h0) = (next(), next(), next());
    Ok(Gradients {
        params,
        input,
        h0,
        c0: lstm.then(next),
    })
}
