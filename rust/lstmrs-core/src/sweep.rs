//! One direction of one layer: the forward sweep over time and its backpropagation.
//!
//! Shape legend: `T` time steps, `B` batch rows, `I` input features, `H` hidden units, `G` gates.
//! All sequences here are time-major (`[T, B, ...]`). The input projection of all steps is one
//! product before the loop, each step does one `[B,H]·[H,GH]` product and one fused gate pass, and
//! after the reverse sweep the weight gradients are three large products over all `T*B` rows.

use crate::cellexpr::CompiledCell;
use crate::config::CellKind;
use crate::gates::{self, Active};
use crate::matmul::{a_b, a_bt, at_b, Mat};
use crate::scalar::Scalar;

/// One direction's weights (views into the flat parameter buffer).
#[derive(Clone, Copy)]
pub(crate) struct DirWeights<'a, T> {
    /// `[G*H, I]`
    pub w_ih: &'a [T],
    /// `[G*H, H]`
    pub w_hh: &'a [T],
    /// `([G*H], [G*H])` when the network has biases.
    pub bias: Option<(&'a [T], &'a [T])>,
    /// `[P*H]` unit parameters (custom cells; empty otherwise).
    pub units: &'a [T],
}

/// The sizes and time direction of a sweep.
#[derive(Clone, Copy)]
pub(crate) struct Sweep<'a> {
    pub cell: CellKind,
    pub steps: usize,
    pub batch: usize,
    pub input: usize,
    pub hidden: usize,
    pub lengths: Option<&'a [usize]>,
    pub reverse: bool,
}

impl Sweep<'_> {
    fn gate_width(&self) -> usize {
        self.cell.gate_count() * self.hidden
    }
    /// Time step processed at position `s` of the sweep.
    fn time(&self, s: usize) -> usize {
        if self.reverse {
            self.steps - 1 - s
        } else {
            s
        }
    }
    /// State slot read by step `t` (the tape keeps `T+1` state slots; the initial state sits at
    /// slot 0 going forward and at slot `T` going backward in time).
    fn enter(&self, t: usize) -> usize {
        if self.reverse {
            t + 1
        } else {
            t
        }
    }
    fn exit(&self, t: usize) -> usize {
        if self.reverse {
            t
        } else {
            t + 1
        }
    }
}

/// Zoneout of one sweep (Krueger et al., 2017): each unit keeps its previous value with
/// probability `p`, `h_t = h_new + z * (h_{t-1} - h_new)`.
#[derive(Clone, Copy)]
pub(crate) enum Zoneout<'a, T> {
    /// Training: `[T, B, H]` masks of 0/1 for `h` and (LSTM) `c`.
    Masks { h: &'a [T], c: &'a [T] },
    /// Inference: the expectation, `z = p` everywhere.
    Expected(T),
}

impl<T: Scalar> Zoneout<'_, T> {
    /// `z` of element `k` (of the `[B, H]` block) at time step `t`, `bh = B*H`.
    #[inline(always)]
    fn hidden(&self, t: usize, bh: usize, k: usize) -> T {
        match self {
            Zoneout::Masks { h, .. } => h[t * bh + k],
            Zoneout::Expected(p) => *p,
        }
    }
    #[inline(always)]
    fn cell(&self, t: usize, bh: usize, k: usize) -> T {
        match self {
            Zoneout::Masks { c, .. } => c[t * bh + k],
            Zoneout::Expected(p) => *p,
        }
    }
}

/// Regularisation of one sweep.
#[derive(Clone, Copy)]
pub(crate) struct DirReg<'a, T> {
    /// `[B, H]` variational dropout mask (0 or `1/(1-p)`) on the state entering `W_hh`, the same
    /// at every step (Gal & Ghahramani, 2016).
    pub state_mask: Option<&'a [T]>,
    pub zoneout: Option<Zoneout<'a, T>>,
}

impl<T> Default for DirReg<'_, T> {
    fn default() -> Self {
        DirReg {
            state_mask: None,
            zoneout: None,
        }
    }
}

/// Blends `new` toward `prev` on the active rows: `(1 - z) * new + z * prev`.
fn zone<T: Scalar>(active: Active, h: usize, prev: &[T], new: &mut [T], z: impl Fn(usize) -> T) {
    for (r, row) in new.chunks_exact_mut(h).enumerate() {
        if active.row(r) {
            for (j, v) in row.iter_mut().enumerate() {
                let k = r * h + j;
                // Written as a blend so that a 0/1 mask selects exactly.
                let zk = z(k);
                *v = (T::one() - zk) * *v + zk * prev[k];
            }
        }
    }
}

/// Splits the gradient of a zoned-out state on the active rows: `direct = z * g` flows straight
/// to the previous state, `g` keeps `(1 - z) * g` for the cell.
fn split_zone<T: Scalar>(
    active: Active,
    h: usize,
    g: &mut [T],
    direct: &mut [T],
    z: impl Fn(usize) -> T,
) {
    for (r, (row, drow)) in g
        .chunks_exact_mut(h)
        .zip(direct.chunks_exact_mut(h))
        .enumerate()
    {
        if active.row(r) {
            for (j, (v, d)) in row.iter_mut().zip(drow.iter_mut()).enumerate() {
                let zk = z(r * h + j);
                *d = zk * *v;
                *v -= *d;
            }
        } else {
            drow.fill(T::zero());
        }
    }
}

/// What backpropagation needs of one sweep, indexed by time step.
#[derive(Debug, Clone)]
pub(crate) struct DirTape<T> {
    /// `[T, B, G*H]` gate activations (LSTM i, f, g, o; GRU r, z, n).
    act: Vec<T>,
    /// `[T, B, H]`: `tanh(c')` for the LSTM, `W_hn h + b_hn` for the GRU.
    aux: Vec<T>,
    /// `[T+1, B, H]` hidden states (see `Sweep::enter`).
    hs: Vec<T>,
    /// `[T+1, B, H]` cell states (LSTM only, else empty).
    cs: Vec<T>,
}

/// Result of a forward sweep.
pub(crate) struct DirOutput<T> {
    /// `[T, B, H]`; zero past each sequence's length.
    pub out: Vec<T>,
    /// `[B, H]` state after each sequence's last valid step.
    pub h_last: Vec<T>,
    /// `[B, H]` (LSTM only).
    pub c_last: Option<Vec<T>>,
    pub tape: Option<DirTape<T>>,
}

/// Splits `v` into the read-only slot `read` and the writable slot `write` (distinct) of size `len`.
fn read_write<T>(v: &mut [T], read: usize, write: usize, len: usize) -> (&[T], &mut [T]) {
    debug_assert_ne!(read, write);
    if read < write {
        let (a, b) = v.split_at_mut(write * len);
        (&a[read * len..(read + 1) * len], &mut b[..len])
    } else {
        let (a, b) = v.split_at_mut(read * len);
        (&b[..len], &mut a[write * len..(write + 1) * len])
    }
}

/// `dst[c] += Σ_rows src[row, c]`.
fn add_column_sums<T: Scalar>(dst: &mut [T], src: &[T]) {
    let cols = dst.len();
    for row in src.chunks_exact(cols) {
        for (d, &s) in dst.iter_mut().zip(row) {
            *d += s;
        }
    }
}

/// Runs one direction over the whole sequence `x[T*B, I]` from `h0[B,H]` (and `c0`).
pub(crate) fn forward<T: Scalar>(
    sw: Sweep,
    x: &[T],
    w: DirWeights<T>,
    h0: &[T],
    c0: Option<&[T]>,
    reg: DirReg<T>,
    keep_tape: bool,
) -> DirOutput<T> {
    if let Some(cell) = sw.cell.compiled() {
        return forward_custom(cell, sw, x, w, h0, c0, reg, keep_tape);
    }
    let (steps, b, h, gw) = (sw.steps, sw.batch, sw.hidden, sw.gate_width());
    let lstm = sw.cell == CellKind::Lstm;
    let bh = b * h;

    // x_pre[T*B, GH] = x · W_ihᵀ + b_ih (+ the parts of b_hh that sit outside the recurrence).
    let mut x_pre = vec![T::zero(); steps * b * gw];
    let mut b_hn = vec![T::zero(); h];
    if let Some((b_ih, b_hh)) = w.bias {
        let mut row_bias = b_ih.to_vec();
        let folded = if lstm { gw } else { 2 * h };
        for (r, &v) in row_bias[..folded].iter_mut().zip(b_hh) {
            *r += v;
        }
        if !lstm {
            b_hn.copy_from_slice(&b_hh[2 * h..]);
        }
        for row in x_pre.chunks_exact_mut(gw) {
            row.copy_from_slice(&row_bias);
        }
    }
    a_bt(
        &mut x_pre,
        gw,
        w.bias.is_some(),
        Mat::new(x, steps * b, sw.input),
        Mat::new(w.w_ih, gw, sw.input),
    );

    // Without a tape, two state slots and one step of activations are reused.
    let (slots, act_steps) = if keep_tape {
        (steps + 1, steps)
    } else {
        (2, 1)
    };
    let mut hs = vec![T::zero(); slots * bh];
    let mut cs = vec![T::zero(); if lstm { slots * bh } else { 0 }];
    let mut act = vec![T::zero(); act_steps * b * gw];
    let mut aux = vec![T::zero(); act_steps * bh];
    let mut h_pre = vec![T::zero(); b * gw];
    let mut h_masked = vec![T::zero(); if reg.state_mask.is_some() { bh } else { 0 }];
    let mut out = vec![T::zero(); steps * bh];
    let slot = |s: usize, t: usize| -> (usize, usize) {
        if keep_tape {
            (sw.enter(t), sw.exit(t))
        } else {
            (s % 2, (s + 1) % 2)
        }
    };
    let first = slot(0, sw.time(0)).0;
    hs[first * bh..(first + 1) * bh].copy_from_slice(h0);
    if let Some(c0) = c0 {
        cs[first * bh..(first + 1) * bh].copy_from_slice(c0);
    }

    let mut last = first;
    for s in 0..steps {
        let t = sw.time(s);
        let (rd, wr) = slot(s, t);
        let a = if keep_tape { t } else { 0 };
        let active = Active {
            lengths: sw.lengths,
            t,
        };
        let (h_prev, h_next) = read_write(&mut hs, rd, wr, bh);
        let h_in: &[T] = match reg.state_mask {
            Some(m) => {
                h_masked
                    .iter_mut()
                    .zip(h_prev)
                    .zip(m)
                    .for_each(|((d, &v), &k)| *d = v * k);
                &h_masked
            }
            None => h_prev,
        };
        a_bt(
            &mut h_pre,
            gw,
            false,
            Mat::new(h_in, b, h),
            Mat::new(w.w_hh, gw, h),
        );
        let x_t = &x_pre[t * b * gw..(t + 1) * b * gw];
        let act_t = &mut act[a * b * gw..(a + 1) * b * gw];
        let aux_t = &mut aux[a * bh..(a + 1) * bh];
        if lstm {
            let (c_prev, c_next) = read_write(&mut cs, rd, wr, bh);
            gates::lstm_forward(
                h, active, x_t, &h_pre, c_prev, h_prev, act_t, aux_t, c_next, h_next,
            );
            if let Some(z) = reg.zoneout {
                zone(active, h, c_prev, c_next, |k| z.cell(t, bh, k));
            }
        } else {
            gates::gru_forward(h, active, x_t, &h_pre, &b_hn, h_prev, act_t, aux_t, h_next);
        }
        if let Some(z) = reg.zoneout {
            zone(active, h, h_prev, h_next, |k| z.hidden(t, bh, k));
        }
        let out_t = &mut out[t * bh..(t + 1) * bh];
        for (r, (o, hn)) in out_t
            .chunks_exact_mut(h)
            .zip(h_next.chunks_exact(h))
            .enumerate()
        {
            if active.row(r) {
                o.copy_from_slice(hn);
            }
        }
        last = wr;
    }

    let h_last = hs[last * bh..(last + 1) * bh].to_vec();
    let c_last = lstm.then(|| cs[last * bh..(last + 1) * bh].to_vec());
    DirOutput {
        out,
        h_last,
        c_last,
        tape: keep_tape.then_some(DirTape { act, aux, hs, cs }),
    }
}

/// Gradient of the output sequence of one direction: `[T, B, ld]` with this direction's `H`
/// columns starting at `col`.
#[derive(Clone, Copy)]
pub(crate) struct OutputGrad<'a, T> {
    pub data: &'a [T],
    pub ld: usize,
    pub col: usize,
}

/// Backpropagation through one sweep. Writes this direction's parameter gradients into `grad`
/// (its contiguous region of the flat gradient: `dW_ih`, `dW_hh`, then `db_ih`, `db_hh`), writes
/// `dx[T*B, I]`, and returns the gradients of the initial states.
pub(crate) fn backward<T: Scalar>(
    sw: Sweep,
    x: &[T],
    w: DirWeights<T>,
    tape: &DirTape<T>,
    d_out: Option<OutputGrad<T>>,
    dh_n: Option<&[T]>,
    dc_n: Option<&[T]>,
    reg: DirReg<T>,
    grad: &mut [T],
    dx: &mut [T],
) -> (Vec<T>, Option<Vec<T>>) {
    if let Some(cell) = sw.cell.compiled() {
        return backward_custom(cell, sw, x, w, tape, d_out, dh_n, dc_n, reg, grad, dx);
    }
    let (steps, b, h, gw, inp) = (sw.steps, sw.batch, sw.hidden, sw.gate_width(), sw.input);
    let lstm = sw.cell == CellKind::Lstm;
    let bh = b * h;
    let mut dh = dh_n.map_or_else(|| vec![T::zero(); bh], <[T]>::to_vec);
    let mut dc = if lstm {
        dc_n.map_or_else(|| vec![T::zero(); bh], <[T]>::to_vec)
    } else {
        Vec::new()
    };
    // Gradients of the gate pre-activations, input side and recurrent side ([T*B, GH] each); the
    // LSTM's are the same, the GRU's differ on the n gate.
    let mut dgx = vec![T::zero(); steps * b * gw];
    let mut dgh = vec![T::zero(); if lstm { 0 } else { steps * b * gw }];
    // Zoneout's direct paths to the previous states, and the recurrent product before the
    // variational mask; allocated only when used.
    let zoned = reg.zoneout.is_some();
    let mut direct_h = vec![T::zero(); if zoned { bh } else { 0 }];
    let mut direct_c = vec![T::zero(); if zoned && lstm { bh } else { 0 }];
    let mut rec = vec![T::zero(); if reg.state_mask.is_some() { bh } else { 0 }];

    for s in (0..steps).rev() {
        let t = sw.time(s);
        let active = Active {
            lengths: sw.lengths,
            t,
        };
        if let Some(g) = d_out {
            for r in 0..b {
                if active.row(r) {
                    let src = &g.data[(t * b + r) * g.ld + g.col..][..h];
                    for (d, &v) in dh[r * h..(r + 1) * h].iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        }
        if let Some(z) = reg.zoneout {
            split_zone(active, h, &mut dh, &mut direct_h, |k| z.hidden(t, bh, k));
            if lstm {
                split_zone(active, h, &mut dc, &mut direct_c, |k| z.cell(t, bh, k));
            }
        }
        let enter = sw.enter(t);
        let (act, aux) = (&tape.act[t * b * gw..][..b * gw], &tape.aux[t * bh..][..bh]);
        let dgx_t = &mut dgx[t * b * gw..(t + 1) * b * gw];
        let dg_rec: &[T] = if lstm {
            gates::lstm_backward(
                h,
                active,
                act,
                aux,
                &tape.cs[enter * bh..][..bh],
                &mut dh,
                &mut dc,
                dgx_t,
            );
            dgx_t
        } else {
            let dgh_t = &mut dgh[t * b * gw..(t + 1) * b * gw];
            gates::gru_backward(
                h,
                active,
                act,
                aux,
                &tape.hs[enter * bh..][..bh],
                &mut dh,
                dgx_t,
                dgh_t,
            );
            dgh_t
        };
        match reg.state_mask {
            None => a_b(
                &mut dh,
                h,
                true,
                Mat::new(dg_rec, b, gw),
                Mat::new(w.w_hh, gw, h),
            ),
            Some(m) => {
                a_b(
                    &mut rec,
                    h,
                    false,
                    Mat::new(dg_rec, b, gw),
                    Mat::new(w.w_hh, gw, h),
                );
                dh.iter_mut()
                    .zip(&rec)
                    .zip(m)
                    .for_each(|((d, &r), &k)| *d += r * k);
            }
        }
        if zoned {
            dh.iter_mut().zip(&direct_h).for_each(|(d, &v)| *d += v);
            dc.iter_mut().zip(&direct_c).for_each(|(d, &v)| *d += v);
        }
    }

    let dg_rec_all: &[T] = if lstm { &dgx } else { &dgh };
    let rows = steps * b;
    let (g_wih, rest) = grad.split_at_mut(gw * inp);
    let (g_whh, g_bias) = rest.split_at_mut(gw * h);
    at_b(
        g_wih,
        inp,
        false,
        Mat::new(&dgx, rows, gw),
        Mat::new(x, rows, inp),
    );
    // States entering steps 0..T, in time order: slots 0..T forward, 1..=T backward in time.
    let h_enter = &tape.hs[sw.enter(0).min(sw.enter(steps - 1)) * bh..][..rows * h];
    let masked;
    let h_enter: &[T] = match reg.state_mask {
        Some(m) => {
            masked = h_enter
                .iter()
                .zip(m.iter().cycle())
                .map(|(&v, &k)| v * k)
                .collect::<Vec<_>>();
            &masked
        }
        None => h_enter,
    };
    at_b(
        g_whh,
        h,
        false,
        Mat::new(dg_rec_all, rows, gw),
        Mat::new(h_enter, rows, h),
    );
    if w.bias.is_some() {
        let (g_bih, g_bhh) = g_bias.split_at_mut(gw);
        add_column_sums(g_bih, &dgx);
        add_column_sums(&mut g_bhh[..gw], dg_rec_all);
    }
    a_b(
        dx,
        inp,
        false,
        Mat::new(&dgx, rows, gw),
        Mat::new(w.w_ih, gw, inp),
    );
    (dh, lstm.then_some(dc))
}

/// Copies the state `h_next` to the output rows still inside their sequence.
fn emit<T: Scalar>(active: Active, h: usize, h_next: &[T], out_t: &mut [T]) {
    for (r, (o, hn)) in out_t
        .chunks_exact_mut(h)
        .zip(h_next.chunks_exact(h))
        .enumerate()
    {
        if active.row(r) {
            o.copy_from_slice(hn);
        }
    }
}

/// [`forward`] for a compiled cell: the products as for the built-in cells (`b_hh` stays on the
/// recurrent side, where the cell's `hg` leaves expect it), the element-wise step from the
/// cell's program. State 0 is `h`, state 1 (when present) `c`.
#[allow(clippy::too_many_arguments)]
fn forward_custom<T: Scalar>(
    cell: &CompiledCell,
    sw: Sweep,
    x: &[T],
    w: DirWeights<T>,
    h0: &[T],
    c0: Option<&[T]>,
    reg: DirReg<T>,
    keep_tape: bool,
) -> DirOutput<T> {
    let (steps, b, h) = (sw.steps, sw.batch, sw.hidden);
    let (xw, hw) = (sw.cell.gate_count() * h, sw.cell.h_gate_count() * h);
    let two = sw.cell.num_states() == 2;
    let bh = b * h;
    let kw = cell.tape_width() * h;

    let mut x_pre = vec![T::zero(); steps * b * xw];
    if let Some((b_ih, _)) = w.bias {
        for row in x_pre.chunks_exact_mut(xw) {
            row.copy_from_slice(b_ih);
        }
    }
    a_bt(
        &mut x_pre,
        xw,
        w.bias.is_some(),
        Mat::new(x, steps * b, sw.input),
        Mat::new(w.w_ih, xw, sw.input),
    );

    let (slots, tape_steps) = if keep_tape {
        (steps + 1, steps)
    } else {
        (2, 0)
    };
    let mut hs = vec![T::zero(); slots * bh];
    let mut cs = vec![T::zero(); if two { slots * bh } else { 0 }];
    let mut act = vec![T::zero(); tape_steps * b * kw];
    let mut h_pre = vec![T::zero(); b * hw];
    let mut h_masked = vec![T::zero(); if reg.state_mask.is_some() { bh } else { 0 }];
    let mut out = vec![T::zero(); steps * bh];
    let slot = |s: usize, t: usize| -> (usize, usize) {
        if keep_tape {
            (sw.enter(t), sw.exit(t))
        } else {
            (s % 2, (s + 1) % 2)
        }
    };
    let first = slot(0, sw.time(0)).0;
    hs[first * bh..(first + 1) * bh].copy_from_slice(h0);
    if let (true, Some(c0)) = (two, c0) {
        cs[first * bh..(first + 1) * bh].copy_from_slice(c0);
    }

    let mut last = first;
    for s in 0..steps {
        let t = sw.time(s);
        let (rd, wr) = slot(s, t);
        let active = Active {
            lengths: sw.lengths,
            t,
        };
        let (h_prev, h_next) = read_write(&mut hs, rd, wr, bh);
        if hw > 0 {
            let h_in: &[T] = match reg.state_mask {
                Some(m) => {
                    h_masked
                        .iter_mut()
                        .zip(h_prev)
                        .zip(m)
                        .for_each(|((d, &v), &k)| *d = v * k);
                    &h_masked
                }
                None => h_prev,
            };
            if let Some((_, b_hh)) = w.bias {
                for row in h_pre.chunks_exact_mut(hw) {
                    row.copy_from_slice(b_hh);
                }
            }
            a_bt(
                &mut h_pre,
                hw,
                w.bias.is_some(),
                Mat::new(h_in, b, h),
                Mat::new(w.w_hh, hw, h),
            );
        }
        let x_t = &x_pre[t * b * xw..(t + 1) * b * xw];
        let tape_t: &mut [T] = if keep_tape {
            &mut act[t * b * kw..(t + 1) * b * kw]
        } else {
            &mut []
        };
        if two {
            let (c_prev, c_next) = read_write(&mut cs, rd, wr, bh);
            cell.forward_step(
                h,
                active,
                x_t,
                &h_pre,
                w.units,
                &[h_prev, c_prev],
                &mut [&mut *h_next, &mut *c_next],
                tape_t,
            );
            if let Some(z) = reg.zoneout {
                zone(active, h, c_prev, c_next, |k| z.cell(t, bh, k));
            }
        } else {
            cell.forward_step(
                h,
                active,
                x_t,
                &h_pre,
                w.units,
                &[h_prev],
                &mut [&mut *h_next],
                tape_t,
            );
        }
        if let Some(z) = reg.zoneout {
            zone(active, h, h_prev, h_next, |k| z.hidden(t, bh, k));
        }
        emit(active, h, h_next, &mut out[t * bh..(t + 1) * bh]);
        last = wr;
    }

    let h_last = hs[last * bh..(last + 1) * bh].to_vec();
    let c_last = two.then(|| cs[last * bh..(last + 1) * bh].to_vec());
    DirOutput {
        out,
        h_last,
        c_last,
        tape: keep_tape.then_some(DirTape {
            act,
            aux: Vec::new(),
            hs,
            cs,
        }),
    }
}

/// [`backward`] for a compiled cell. `grad` is laid out `dW_ih, dW_hh, db_ih, db_hh, d_units`
/// (absent parts skipped as in `param_specs`).
#[allow(clippy::too_many_arguments)]
fn backward_custom<T: Scalar>(
    cell: &CompiledCell,
    sw: Sweep,
    x: &[T],
    w: DirWeights<T>,
    tape: &DirTape<T>,
    d_out: Option<OutputGrad<T>>,
    dh_n: Option<&[T]>,
    dc_n: Option<&[T]>,
    reg: DirReg<T>,
    grad: &mut [T],
    dx: &mut [T],
) -> (Vec<T>, Option<Vec<T>>) {
    let (steps, b, h, inp) = (sw.steps, sw.batch, sw.hidden, sw.input);
    let (xw, hw) = (sw.cell.gate_count() * h, sw.cell.h_gate_count() * h);
    let two = sw.cell.num_states() == 2;
    let bh = b * h;
    let kw = cell.tape_width() * h;
    let (g_wih, rest) = grad.split_at_mut(xw * inp);
    let (g_whh, rest) = rest.split_at_mut(hw * h);
    let (g_bias, g_units) = rest.split_at_mut(if w.bias.is_some() { xw + hw } else { 0 });

    let mut dh = dh_n.map_or_else(|| vec![T::zero(); bh], <[T]>::to_vec);
    let mut dc = if two {
        dc_n.map_or_else(|| vec![T::zero(); bh], <[T]>::to_vec)
    } else {
        Vec::new()
    };
    let mut dh_prev = vec![T::zero(); bh];
    let mut dc_prev = vec![T::zero(); if two { bh } else { 0 }];
    let mut dgx = vec![T::zero(); steps * b * xw];
    let mut dgh = vec![T::zero(); steps * b * hw];
    let zoned = reg.zoneout.is_some();
    let mut direct_h = vec![T::zero(); if zoned { bh } else { 0 }];
    let mut direct_c = vec![T::zero(); if zoned && two { bh } else { 0 }];
    let mut rec = vec![T::zero(); if reg.state_mask.is_some() { bh } else { 0 }];

    for s in (0..steps).rev() {
        let t = sw.time(s);
        let active = Active {
            lengths: sw.lengths,
            t,
        };
        if let Some(g) = d_out {
            for r in 0..b {
                if active.row(r) {
                    let src = &g.data[(t * b + r) * g.ld + g.col..][..h];
                    for (d, &v) in dh[r * h..(r + 1) * h].iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        }
        if let Some(z) = reg.zoneout {
            split_zone(active, h, &mut dh, &mut direct_h, |k| z.hidden(t, bh, k));
            if two {
                split_zone(active, h, &mut dc, &mut direct_c, |k| z.cell(t, bh, k));
            }
        }
        let enter = sw.enter(t);
        let h_prev = &tape.hs[enter * bh..][..bh];
        let tape_t = &tape.act[t * b * kw..][..b * kw];
        let dgx_t = &mut dgx[t * b * xw..(t + 1) * b * xw];
        let dgh_t = &mut dgh[t * b * hw..(t + 1) * b * hw];
        if two {
            let c_prev = &tape.cs[enter * bh..][..bh];
            cell.backward_step(
                h,
                active,
                w.units,
                &[h_prev, c_prev],
                tape_t,
                &[&dh, &dc],
                &mut [&mut dh_prev, &mut dc_prev],
                dgx_t,
                dgh_t,
                g_units,
            );
        } else {
            cell.backward_step(
                h,
                active,
                w.units,
                &[h_prev],
                tape_t,
                &[&dh],
                &mut [&mut dh_prev],
                dgx_t,
                dgh_t,
                g_units,
            );
        }
        std::mem::swap(&mut dh, &mut dh_prev);
        std::mem::swap(&mut dc, &mut dc_prev);
        if hw > 0 {
            match reg.state_mask {
                None => a_b(
                    &mut dh,
                    h,
                    true,
                    Mat::new(dgh_t, b, hw),
                    Mat::new(w.w_hh, hw, h),
                ),
                Some(m) => {
                    a_b(
                        &mut rec,
                        h,
                        false,
                        Mat::new(dgh_t, b, hw),
                        Mat::new(w.w_hh, hw, h),
                    );
                    dh.iter_mut()
                        .zip(&rec)
                        .zip(m)
                        .for_each(|((d, &r), &k)| *d += r * k);
                }
            }
        }
        if zoned {
            dh.iter_mut().zip(&direct_h).for_each(|(d, &v)| *d += v);
            dc.iter_mut().zip(&direct_c).for_each(|(d, &v)| *d += v);
        }
    }

    let rows = steps * b;
    at_b(
        g_wih,
        inp,
        false,
        Mat::new(&dgx, rows, xw),
        Mat::new(x, rows, inp),
    );
    if hw > 0 {
        let h_enter = &tape.hs[sw.enter(0).min(sw.enter(steps - 1)) * bh..][..rows * h];
        let masked;
        let h_enter: &[T] = match reg.state_mask {
            Some(m) => {
                masked = h_enter
                    .iter()
                    .zip(m.iter().cycle())
                    .map(|(&v, &k)| v * k)
                    .collect::<Vec<_>>();
                &masked
            }
            None => h_enter,
        };
        at_b(
            g_whh,
            h,
            false,
            Mat::new(&dgh, rows, hw),
            Mat::new(h_enter, rows, h),
        );
    }
    if w.bias.is_some() {
        let (g_bih, g_bhh) = g_bias.split_at_mut(xw);
        add_column_sums(g_bih, &dgx);
        if hw > 0 {
            add_column_sums(g_bhh, &dgh);
        }
    }
    a_b(
        dx,
        inp,
        false,
        Mat::new(&dgx, rows, xw),
        Mat::new(w.w_ih, xw, inp),
    );
    (dh, two.then_some(dc))
}
