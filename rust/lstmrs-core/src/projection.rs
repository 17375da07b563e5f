//! The LSTM with a projected hidden state (PyTorch's `proj_size`): one direction of one layer,
//! forward and backward.
//!
//! Shape legend: `T` steps, `B` rows, `H` hidden units (the gates and the cell state `c`), `P`
//! projected features (the hidden state `h`: what `W_hh` reads and what the layer outputs).
//! Each step: `pre[B,4H] = x_pre[t] + h[B,P]·W_hhᵀ`, the fused LSTM gate pass gives `c'[B,H]` and
//! `m = o*tanh(c')` `[B,H]`, and `h'[B,P] = m·W_hrᵀ`. Rows past their length carry `h` and `c`
//! and give zero output, as in the other sweeps.
//!
//! The team splits a step twice: by hidden units for the gate product and the gate pass, then by
//! projected features for `m·W_hrᵀ`, which needs every unit of `m` (hence a second barrier per
//! step). The backward step mirrors it: `dm = dh·W_hr` and the gate pass by hidden units, then
//! `dh_prev = d_pre·W_hh` by projected features. Each member packs its part of both weights once.

use crate::gates::{self, Active, Rows, RowsMut};
use crate::matmul::{a_b, at_b, Mat};
use crate::packed_gemm::{gate_vectors, split_units, team_size, Packed};
use crate::scalar::Scalar;
use crate::sweep::{
    add_column_sums, add_output_grad, emit, fold_bias, input_projection, state_slots, DirOutput,
    DirTape, DirWeights, OutputGrad, Sweep,
};
use crate::threads;
use std::ops::Range;

/// Threads for a projected sweep: its step products are `[B,P]·[P,4H]` and `[B,H]·[H,P]`.
fn plan(sw: &Sweep) -> usize {
    let (b, h, p) = (sw.batch, sw.hidden, sw.proj);
    team_size(sw.team, h, b * (4 * h * p + h * p), sw.steps)
}

/// The projected features of member `member` (none when `P` has fewer blocks than the team).
fn proj_units(p: usize, size: usize, member: usize) -> Range<usize> {
    split_units(p, size).get(member).cloned().unwrap_or(0..0)
}

/// On the rows past their length, `dst[r, units] = src[r, units]` (a state carried unchanged).
///
/// # Safety
/// No other thread touches those units of `dst`, nor writes them in `src`, meanwhile.
unsafe fn carry<T: Scalar>(
    active: Active,
    units: Range<usize>,
    rows: usize,
    src: Rows<T>,
    dst: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    for r in 0..rows {
        if !active.row(r) {
            // SAFETY: this call's units (the contract).
            unsafe { dst.row_mut(r, u, n).copy_from_slice(src.row(r, u, n)) };
        }
    }
}

/// `dst[r, units] = src[r, units]` on the active rows, zero on the others.
///
/// # Safety
/// As [`carry`].
unsafe fn keep_active<T: Scalar>(
    active: Active,
    units: Range<usize>,
    rows: usize,
    src: Rows<T>,
    dst: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    for r in 0..rows {
        // SAFETY: this call's units (the contract).
        let d = unsafe { dst.row_mut(r, u, n) };
        if active.row(r) {
            d.copy_from_slice(unsafe { src.row(r, u, n) });
        } else {
            d.fill(T::zero());
        }
    }
}

/// Runs one direction over `x[T*B, I]` from `h0[B,P]` and `c0[B,H]`. The tape holds the gate
/// activations, `tanh(c')`, the `[T+1, B, P]` hidden and `[T+1, B, H]` cell states.
pub(crate) fn forward<T: Scalar>(
    sw: Sweep,
    x: &[T],
    w: DirWeights<T>,
    h0: &[T],
    c0: &[T],
    keep_tape: bool,
) -> DirOutput<T> {
    let (steps, b, h, p) = (sw.steps, sw.batch, sw.hidden, sw.proj);
    let gw = 4 * h;
    let (bh, bp) = (b * h, b * p);

    // act[T*B, 4H] = x · W_ihᵀ + b_ih + b_hh, turned into the activations step by step.
    let row_bias = w.bias.map(|(b_ih, b_hh)| {
        let mut row = vec![T::zero(); gw];
        fold_bias(&mut row, true, h, b_ih, b_hh);
        row
    });
    let mut act = input_projection(
        Mat::new(x, steps * b, sw.input),
        Mat::new(w.w_ih, gw, sw.input),
        row_bias.as_deref(),
    );
    // Without a tape, two state slots and one step of `aux` are reused.
    let (slots, aux_steps) = if keep_tape {
        (steps + 1, steps)
    } else {
        (2, 1)
    };
    let mut hs = vec![T::zero(); slots * bp];
    let mut cs = vec![T::zero(); slots * bh];
    let mut aux = vec![T::zero(); aux_steps * bh];
    // [B, H] `o * tanh(c')` of the current step, before the projection.
    let mut m = vec![T::zero(); bh];
    // What the gate pass copies into `m` on rows past their length (they are not projected).
    let zeros = vec![T::zero(); bh];
    let mut h_pre = vec![T::zero(); b * gw];
    let mut out = vec![T::zero(); steps * bp];
    let slot = |s: usize, t: usize| state_slots(&sw, keep_tape, s, t);
    let first = slot(0, sw.time(0)).0;
    hs[first * bp..(first + 1) * bp].copy_from_slice(h0);
    cs[first * bh..(first + 1) * bh].copy_from_slice(c0);

    let members = plan(&sw);
    {
        let hs_v = RowsMut::new(&mut hs, p);
        let cs_v = RowsMut::new(&mut cs, h);
        let aux_v = RowsMut::new(&mut aux, h);
        let m_v = RowsMut::new(&mut m, h);
        let zeros_v = Rows::new(&zeros, h);
        let pre_v = RowsMut::new(&mut h_pre, gw);
        let act_v = RowsMut::new(&mut act, gw);
        let out_v = RowsMut::new(&mut out, p);
        threads::team(members, |member, size, barrier| {
            let units = split_units(h, size)[member].clone();
            let p_units = proj_units(p, size, member);
            // W(k, n) = W_hh[n, k]: the four gate columns of this member's units, K = P.
            let packed_hh = Packed::new(w.w_hh, 1, p, p, &gate_vectors(4, h, units.clone()), b);
            // W(k, n) = W_hr[n, k]: this member's projected features, K = H.
            let packed_hr = Packed::new(w.w_hr, 1, h, h, &gate_vectors(1, p, p_units.clone()), b);
            for s in 0..steps {
                let t = sw.time(s);
                let (rd, wr) = slot(s, t);
                let a = if keep_tape { t } else { 0 };
                let active = Active {
                    lengths: sw.lengths,
                    t,
                };
                // SAFETY: before the first barrier every member reads the whole entering `h`
                // and writes only its own units of `pre`, `act`, `aux`, `c'` and `m`; after it,
                // every member reads all of `m` and writes only its own features of `h'` and of
                // the output. The barriers order each phase's writes before the next one's reads.
                unsafe {
                    let h_in = hs_v.read().skip(rd * b);
                    assert!(h_in.holds(b, p) && pre_v.holds(b, packed_hh.col_end()));
                    packed_hh.product_raw(h_in.ptr(), p, b, pre_v.ptr(), gw, false);
                    gates::lstm_forward_units(
                        h,
                        units.clone(),
                        b,
                        active,
                        act_v.skip(t * b),
                        pre_v.read(),
                        cs_v.read().skip(rd * b),
                        zeros_v,
                        aux_v.skip(a * b),
                        cs_v.skip(wr * b),
                        m_v,
                    );
                }
                barrier.wait();
                if !p_units.is_empty() {
                    unsafe {
                        let (m_in, h_next) = (m_v.read(), hs_v.skip(wr * b));
                        assert!(m_in.holds(b, h) && h_next.holds(b, packed_hr.col_end()));
                        packed_hr.product_raw(m_in.ptr(), h, b, h_next.ptr(), p, false);
                        carry(active, p_units.clone(), b, hs_v.read().skip(rd * b), h_next);
                        emit(
                            active,
                            p_units.clone(),
                            b,
                            h_next.read(),
                            sw.out_rows(out_v, t),
                        );
                    }
                }
                barrier.wait();
            }
        });
    }

    let last = slot(steps - 1, sw.time(steps - 1)).1;
    DirOutput {
        out,
        h_last: hs[last * bp..(last + 1) * bp].to_vec(),
        c_last: Some(cs[last * bh..(last + 1) * bh].to_vec()),
        tape: keep_tape.then_some(DirTape { act, aux, hs, cs }),
    }
}

/// Backpropagation through one projected sweep. `grad` is this direction's region of the flat
/// gradient (`dW_ih`, `dW_hh`, then `db_ih`, `db_hh` when present, then `dW_hr`); writes
/// `dx[T*B, I]` and returns the gradients of `h0[B,P]` and `c0[B,H]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Scalar>(
    sw: Sweep,
    x: &[T],
    w: DirWeights<T>,
    tape: &DirTape<T>,
    d_out: Option<OutputGrad<T>>,
    dh_n: Option<&[T]>,
    dc_n: Option<&[T]>,
    grad: &mut [T],
    dx: &mut [T],
) -> (Vec<T>, Vec<T>) {
    let (steps, b, h, p, inp) = (sw.steps, sw.batch, sw.hidden, sw.proj, sw.input);
    let gw = 4 * h;
    let (bh, bp) = (b * h, b * p);
    // The gradient of `h` in two slots: a step reads one and writes the other.
    let mut dh = vec![T::zero(); 2 * bp];
    if let Some(g) = dh_n {
        dh[..bp].copy_from_slice(g);
    }
    let mut dc = dc_n.map_or_else(|| vec![T::zero(); bh], <[T]>::to_vec);
    let mut dm = vec![T::zero(); bh];
    // [T*B, 4H] gradients of the gate pre-activations.
    let mut d_pre = vec![T::zero(); steps * b * gw];
    // [T*B, P] the gradient reaching each step's projection (zero on rows past their length).
    let mut d_proj = vec![T::zero(); steps * bp];

    let members = plan(&sw);
    {
        let dh_v = RowsMut::new(&mut dh, p);
        let dc_v = RowsMut::new(&mut dc, h);
        let dm_v = RowsMut::new(&mut dm, h);
        let d_pre_v = RowsMut::new(&mut d_pre, gw);
        let d_proj_v = RowsMut::new(&mut d_proj, p);
        let act_v = Rows::new(&tape.act, gw);
        let aux_v = Rows::new(&tape.aux, h);
        let cs_v = Rows::new(&tape.cs, h);
        threads::team(members, |member, size, barrier| {
            let units = split_units(h, size)[member].clone();
            let p_units = proj_units(p, size, member);
            // W(k, n) = W_hr[k, n]: the columns `units` of `dm`, K = P.
            let packed_hr = Packed::new(w.w_hr, h, 1, p, &gate_vectors(1, h, units.clone()), b);
            // W(k, n) = W_hh[k, n]: this member's features of `dh_prev`, K = 4H.
            let packed_hh = Packed::new(w.w_hh, p, 1, gw, &gate_vectors(1, p, p_units.clone()), b);
            for (i, s) in (0..steps).rev().enumerate() {
                let t = sw.time(s);
                let (cur, nxt) = ((i % 2) * b, ((i + 1) % 2) * b);
                let active = Active {
                    lengths: sw.lengths,
                    t,
                };
                // SAFETY: the first and third phases touch only the member's own features of
                // `dh` and `d_proj`; the second reads all of step `t`'s `d_proj` (complete after
                // the first barrier) and writes the member's own units of `dm`, `dc` and
                // `d_pre`; the third reads all of step `t`'s `d_pre` (complete after the second).
                unsafe {
                    let dh_cur = dh_v.skip(cur);
                    if let Some(g) = d_out {
                        add_output_grad(g, active, p_units.clone(), b, dh_cur);
                    }
                    let d_proj_t = d_proj_v.skip(t * b);
                    keep_active(active, p_units.clone(), b, dh_cur.read(), d_proj_t);
                }
                barrier.wait();
                unsafe {
                    let a = d_proj_v.read().skip(t * b);
                    assert!(a.holds(b, p) && dm_v.holds(b, packed_hr.col_end()));
                    packed_hr.product_raw(a.ptr(), p, b, dm_v.ptr(), h, false);
                    gates::lstm_backward_units(
                        h,
                        units.clone(),
                        b,
                        active,
                        act_v.skip(t * b),
                        aux_v.skip(t * b),
                        cs_v.skip(sw.enter(t) * b),
                        dm_v,
                        dc_v,
                        d_pre_v.skip(t * b),
                    );
                }
                barrier.wait();
                if !p_units.is_empty() {
                    unsafe {
                        let (a, dh_next) = (d_pre_v.read().skip(t * b), dh_v.skip(nxt));
                        assert!(a.holds(b, gw) && dh_next.holds(b, packed_hh.col_end()));
                        packed_hh.product_raw(a.ptr(), gw, b, dh_next.ptr(), p, false);
                        // Rows past their length pass their gradient on to the previous state.
                        carry(active, p_units.clone(), b, dh_v.read().skip(cur), dh_next);
                    }
                }
            }
        });
    }
    let fin = (steps % 2) * bp;
    let dh_0 = dh[fin..fin + bp].to_vec();

    let rows = steps * b;
    // An empty region: the caller wants the input gradient only (attributions), so the
    // weight products are skipped, as the unprojected sweep does.
    if !grad.is_empty() {
        let (g_wih, rest) = grad.split_at_mut(gw * inp);
        let (g_whh, rest) = rest.split_at_mut(gw * p);
        let (g_bias, g_whr) = rest.split_at_mut(if w.bias.is_some() { 2 * gw } else { 0 });
        at_b(
            g_wih,
            inp,
            false,
            Mat::new(&d_pre, rows, gw),
            Mat::new(x, rows, inp),
        );
        // States entering steps 0..T, in time order: slots 0..T forward, 1..=T backward in time.
        let h_enter = &tape.hs[sw.enter(0).min(sw.enter(steps - 1)) * bp..][..rows * p];
        at_b(
            g_whh,
            p,
            false,
            Mat::new(&d_pre, rows, gw),
            Mat::new(h_enter, rows, p),
        );
        if w.bias.is_some() {
            let (g_bih, g_bhh) = g_bias.split_at_mut(gw);
            add_column_sums(g_bih, &d_pre);
            add_column_sums(g_bhh, &d_pre);
        }
        // m = o * tanh(c') of every step (zero on rows past their length, whose gates are zero).
        let m_all: Vec<T> = tape
            .act
            .chunks_exact(gw)
            .zip(tape.aux.chunks_exact(h))
            .flat_map(|(a, tc)| a[3 * h..].iter().zip(tc).map(|(&o, &t)| o * t))
            .collect();
        at_b(
            g_whr,
            h,
            false,
            Mat::new(&d_proj, rows, p),
            Mat::new(&m_all, rows, h),
        );
    }
    a_b(
        dx,
        inp,
        false,
        Mat::new(&d_pre, rows, gw),
        Mat::new(w.w_ih, gw, inp),
    );
    (dh_0, dc)
}
