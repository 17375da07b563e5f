//! One direction of one layer: the forward sweep over time and its backpropagation.
//!
//! Shape legend: `T` time steps, `B` batch rows, `I` input features, `H` hidden units, `G` gates.
//! All sequences here are time-major (`[T, B, ...]`). The input projection of all steps is one
//! product before the loop, each step does one `[B,H]·[H,GH]` product and one fused gate pass, and
//! the weight and input gradients are large products over the `T*B` rows: after the reverse
//! sweep, or for small layers in chunks of steps as the sweep finishes them, on another thread
//! beside a sweep of one (`gradient_chunk`).

use crate::cellexpr::CompiledCell;
use crate::config::CellKind;
use crate::gates::{self, Active, Rows, RowsMut};
use crate::matmul::{a_b, a_bt, at_b, Mat};
use crate::pack_cache::{PackCache, PackKey, PackRole};
use crate::packed_gemm::{
    gate_vectors, probe_team, split_units, team_size, Isa, Packed, WeightRows, TEAM_MIN_SWEEP_WORK,
};
use crate::projection;
use crate::scalar::Scalar;
use crate::team_choice::{self, ShapeClass};
use crate::threads;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// One direction's weights (views into the flat parameter buffer).
#[derive(Clone, Copy)]
pub(crate) struct DirWeights<'a, T> {
    /// `[G*H, I]`
    pub w_ih: &'a [T],
    /// `[G*H, S]` (`S`: the hidden state's size, `P` with projections)
    pub w_hh: &'a [T],
    /// `([G*H], [G*H])` when the network has biases.
    pub bias: Option<(&'a [T], &'a [T])>,
    /// `[P, H]` projection of the LSTM's hidden state (empty without projections).
    pub w_hr: &'a [T],
    /// `[P*H]` unit parameters (custom cells; empty otherwise).
    pub units: &'a [T],
    /// The network's packed-weight cache with this sweep's layer and direction, when the
    /// weights have an owner that empties it on every change (see `pack_cache`).
    pub packed: Option<(&'a PackCache<T>, usize, usize)>,
}

/// The sizes and time direction of a sweep.
#[derive(Clone, Copy)]
pub(crate) struct Sweep<'a> {
    pub cell: CellKind,
    pub steps: usize,
    pub batch: usize,
    pub input: usize,
    pub hidden: usize,
    /// `proj_size` (0: no projection); see `projection`.
    pub proj: usize,
    pub lengths: Option<&'a [usize]>,
    pub reverse: bool,
    /// Threads this sweep may occupy (it uses fewer when its steps are small).
    pub team: usize,
    /// Whether the forward sweep writes its output batch-first (`[B, T, S]`, the caller's layout
    /// for the last layer: no transposing pass over the output afterwards) or time-major.
    pub out_batch_first: bool,
    /// Whether the input `x` is batch-first (`[B, T, I]`, the caller's array for the first layer
    /// in inference): the team's projection gathers each chunk's rows from it (reads a chunk
    /// of one step in place) and the fused product reads it in place; the other paths take a
    /// time-major copy first
    /// (`time_major_input`).
    pub x_batch_first: bool,
}

impl Sweep<'_> {
    fn gate_width(&self) -> usize {
        self.cell.gate_count() * self.hidden
    }
    /// Time step processed at position `s` of the sweep.
    pub(crate) fn time(&self, s: usize) -> usize {
        if self.reverse {
            self.steps - 1 - s
        } else {
            s
        }
    }
    /// State slot read by step `t` (the tape keeps `T+1` state slots; the initial state sits at
    /// slot 0 going forward and at slot `T` going backward in time).
    pub(crate) fn enter(&self, t: usize) -> usize {
        if self.reverse {
            t + 1
        } else {
            t
        }
    }
    pub(crate) fn exit(&self, t: usize) -> usize {
        if self.reverse {
            t
        } else {
            t + 1
        }
    }
    /// The rows of time step `t` in the forward output `out` (see `out_batch_first`).
    pub(crate) fn out_rows<'a, T>(&self, out: RowsMut<'a, T>, t: usize) -> RowsMut<'a, T> {
        if self.out_batch_first {
            out.strided(t * out.ld(), self.steps * out.ld())
        } else {
            out.skip(t * self.batch)
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

/// Blends `new` toward `prev` on the active rows and the units `units`:
/// `(1 - z) * new + z * prev`.
///
/// # Safety
/// No other thread touches those units of `new`, nor writes them in `prev`, meanwhile.
unsafe fn zone<T: Scalar>(
    active: Active,
    h: usize,
    units: Range<usize>,
    rows: usize,
    prev: Rows<T>,
    new: RowsMut<T>,
    z: impl Fn(usize) -> T,
) {
    let (u, n) = (units.start, units.len());
    for r in 0..rows {
        if active.row(r) {
            // SAFETY: this call's units (the contract).
            let (p, v) = unsafe { (prev.row(r, u, n), new.row_mut(r, u, n)) };
            for j in 0..n {
                // Written as a blend so that a 0/1 mask selects exactly.
                let zk = z(r * h + u + j);
                v[j] = (T::one() - zk) * v[j] + zk * p[j];
            }
        }
    }
}

/// Splits the gradient of a zoned-out state on the active rows (units `units`):
/// `direct = z * g` flows straight to the previous state, `g` keeps `(1 - z) * g` for the cell.
///
/// # Safety
/// As [`zone`], for `g` and `direct`.
unsafe fn split_zone<T: Scalar>(
    active: Active,
    h: usize,
    units: Range<usize>,
    rows: usize,
    g: RowsMut<T>,
    direct: RowsMut<T>,
    z: impl Fn(usize) -> T,
) {
    let (u, n) = (units.start, units.len());
    for r in 0..rows {
        // SAFETY: this call's units (the contract).
        let (v, d) = unsafe { (g.row_mut(r, u, n), direct.row_mut(r, u, n)) };
        if active.row(r) {
            for j in 0..n {
                let zk = z(r * h + u + j);
                d[j] = zk * v[j];
                v[j] -= d[j];
            }
        } else {
            d.fill(T::zero());
        }
    }
}

/// `dst[r, units] (op)= src[r, units]` for every row, `op` applied element-wise.
///
/// # Safety
/// No other thread touches those units of `dst`, nor writes them in `src`, meanwhile.
unsafe fn combine<T: Scalar>(
    units: Range<usize>,
    rows: usize,
    dst: RowsMut<T>,
    src: Rows<T>,
    op: impl Fn(&mut T, T, usize),
) {
    let (u, n) = (units.start, units.len());
    for r in 0..rows {
        // SAFETY: this call's units (the contract).
        let (d, s) = unsafe { (dst.row_mut(r, u, n), src.row(r, u, n)) };
        for j in 0..n {
            op(&mut d[j], s[j], r * dst.ld() + u + j);
        }
    }
}

/// Adds this direction's part of the output gradient at step `t` to `dh` (active rows, units).
///
/// # Safety
/// As [`combine`].
pub(crate) unsafe fn add_output_grad<T: Scalar>(
    g: OutputGrad<T>,
    active: Active,
    units: Range<usize>,
    rows: usize,
    dh: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    for r in 0..rows {
        if active.row(r) {
            let src = &g.data[g.row(active.t, r, rows) * g.ld + g.col + u..][..n];
            // SAFETY: this call's units (the contract).
            let d = unsafe { dh.row_mut(r, u, n) };
            for (d, &v) in d.iter_mut().zip(src) {
                *d += v;
            }
        }
    }
}

/// Threads for a sweep whose step product is `[B, H]·[H, hw]`; the team splits the hidden units
/// between the threads that join it (`split_units`).
fn plan(sw: &Sweep, hw: usize) -> usize {
    team_size(sw.team, sw.hidden, sw.batch * hw * sw.hidden, sw.steps)
}

/// A built-in sweep's team size and, when `team_choice` picked it, the shape class whose
/// measurements the sweep's time joins.
struct TeamPlan {
    members: usize,
    measured: Option<ShapeClass>,
    /// How long the team's first member waits for the others (`threads::team_waiting`).
    join_wait: std::time::Duration,
}

/// [`plan`], measured where the cost model cannot call it (see `team_choice`); `site` names the
/// sweep (forward or backward) in the shape class.
fn plan_measured(sw: &Sweep, hw: usize, site: &'static str) -> TeamPlan {
    let step_work = sw.batch * hw * sw.hidden;
    let team = probe_team(sw.team, sw.hidden, step_work, sw.steps);
    match team.filter(|_| team_choice::enabled()) {
        None => TeamPlan {
            members: plan(sw, hw),
            measured: None,
            join_wait: threads::JOIN_WAIT,
        },
        Some(team) => {
            let class = ShapeClass {
                site,
                gates: sw.cell.gate_count(),
                batch: sw.batch,
                input: sw.input,
                hidden: sw.hidden,
                steps_log2: sw.steps.max(1).ilog2(),
                team,
            };
            let pick = team_choice::pick(class);
            TeamPlan {
                members: pick.size,
                measured: pick.record.then_some(class),
                join_wait: team_choice::join_wait(step_work.saturating_mul(sw.steps)),
            }
        }
    }
}

impl TeamPlan {
    /// Runs the sweep's `steps` on its team (`threads::team`) and records the time if measured.
    fn run<F: Fn(usize, usize, &threads::Barrier) + Sync>(&self, steps: usize, f: F) {
        let start = Instant::now();
        threads::team_waiting(self.members, self.join_wait, f);
        if let Some(class) = self.measured {
            team_choice::record(class, self.members, start.elapsed(), steps);
        }
    }
}

/// What backpropagation needs of one sweep, indexed by time step.
#[derive(Debug, Clone)]
pub(crate) struct DirTape<T> {
    /// `[T, B, G*H]` gate activations (LSTM i, f, g, o; GRU r, z, n).
    pub(crate) act: Vec<T>,
    /// `[T, B, H]`: `tanh(c')` for the LSTM, `W_hn h + b_hn` for the GRU.
    pub(crate) aux: Vec<T>,
    /// `[T+1, B, S]` hidden states (see `Sweep::enter`).
    pub(crate) hs: Vec<T>,
    /// `[T+1, B, H]` cell states (LSTM only, else empty).
    pub(crate) cs: Vec<T>,
}

impl<T> Default for DirTape<T> {
    /// An empty tape: what a consumed one leaves behind.
    fn default() -> Self {
        DirTape {
            act: Vec::new(),
            aux: Vec::new(),
            hs: Vec::new(),
            cs: Vec::new(),
        }
    }
}

impl<T> DirTape<T> {
    /// `[T, B, G*H]` gate activations of a built-in cell (a custom cell's saved values).
    pub(crate) fn activations(&self) -> &[T] {
        &self.act
    }
    /// `[T+1, B, H]` hidden states; step `t` reads slot `t` and writes `t+1` going forward,
    /// reads `t+1` and writes `t` going backward.
    pub(crate) fn hidden_states(&self) -> &[T] {
        &self.hs
    }
    /// `[T+1, B, H]` second states (LSTM `c`), slots as for `hidden_states`; empty without.
    pub(crate) fn cell_states(&self) -> &[T] {
        &self.cs
    }
}

/// Result of a forward sweep.
pub(crate) struct DirOutput<T> {
    /// `[T, B, S]` (`[B, T, S]` with `Sweep::out_batch_first`); zero past each sequence's
    /// length.
    pub out: Vec<T>,
    /// `[B, H]` state after each sequence's last valid step.
    pub h_last: Vec<T>,
    /// `[B, H]` (LSTM only).
    pub c_last: Option<Vec<T>>,
    pub tape: Option<DirTape<T>>,
}

/// Writes into `row` `[G*H]` the bias row of a built-in cell's input-side pre-activations:
/// `b_ih`, plus `b_hh` on the columns where the recurrence only adds it (all four LSTM gates;
/// the GRU's r and z, since its `b_hn` sits inside `r * (...)` and stays on the recurrent side).
pub(crate) fn fold_bias<T: Scalar>(row: &mut [T], lstm: bool, h: usize, b_ih: &[T], b_hh: &[T]) {
    row.copy_from_slice(b_ih);
    let folded = if lstm { row.len() } else { 2 * h };
    for (r, &v) in row[..folded].iter_mut().zip(b_hh) {
        *r += v;
    }
}

/// `x[rows, I] · W_ihᵀ` with the row `bias` added to every row (written once, then accumulated
/// into, rather than zeroed first): the input side of every step's pre-activations at once.
pub(crate) fn input_projection<T: Scalar>(x: Mat<T>, w_ih: Mat<T>, bias: Option<&[T]>) -> Vec<T> {
    let mut pre = match bias {
        Some(row) => row.repeat(x.rows),
        None => vec![T::zero(); x.rows * w_ih.rows],
    };
    a_bt(&mut pre, w_ih.rows, bias.is_some(), x, w_ih);
    pre
}

/// `dst[c] += Σ_rows src[row, c]`.
pub(crate) fn add_column_sums<T: Scalar>(dst: &mut [T], src: &[T]) {
    let cols = dst.len();
    add_view_column_sums(dst, Mat::new(src, src.len() / cols.max(1), cols));
}

/// [`add_column_sums`] of a strided view (`src`'s columns: `dst.len()`).
fn add_view_column_sums<T: Scalar>(dst: &mut [T], src: Mat<T>) {
    assert_eq!(dst.len(), src.cols);
    for r in 0..src.rows {
        let row = &src.data[r * src.ld..][..src.cols];
        for (d, &s) in dst.iter_mut().zip(row) {
            *d += s;
        }
    }
}

/// The state slots step `s` (at time `t`) reads and writes: the tape's `T+1` slots
/// ([`Sweep::enter`], [`Sweep::exit`]), or two slots reused in turn without a tape.
pub(crate) fn state_slots(sw: &Sweep, keep_tape: bool, s: usize, t: usize) -> (usize, usize) {
    if keep_tape {
        (sw.enter(t), sw.exit(t))
    } else {
        (s % 2, (s + 1) % 2)
    }
}

/// The `h` and (with `two` states) `c` buffers of a forward sweep, `[slots, B, H]`, with the
/// initial states in the slot the first step reads.
fn initial_states<T: Scalar>(
    sw: &Sweep,
    keep_tape: bool,
    h0: &[T],
    c0: Option<&[T]>,
    two: bool,
) -> (Vec<T>, Vec<T>) {
    let bh = sw.batch * sw.hidden;
    let slots = if keep_tape { sw.steps + 1 } else { 2 };
    let mut hs = vec![T::zero(); slots * bh];
    let mut cs = vec![T::zero(); if two { slots * bh } else { 0 }];
    let first = state_slots(sw, keep_tape, 0, sw.time(0)).0;
    hs[first * bh..(first + 1) * bh].copy_from_slice(h0);
    if let (true, Some(c0)) = (two, c0) {
        cs[first * bh..(first + 1) * bh].copy_from_slice(c0);
    }
    (hs, cs)
}

/// The states the last step wrote: `h`, and `c` with `two` states.
fn final_states<T: Scalar>(
    sw: &Sweep,
    keep_tape: bool,
    hs: &[T],
    cs: &[T],
    two: bool,
) -> (Vec<T>, Option<Vec<T>>) {
    let bh = sw.batch * sw.hidden;
    let last = state_slots(sw, keep_tape, sw.steps - 1, sw.time(sw.steps - 1)).1;
    let h_last = hs[last * bh..(last + 1) * bh].to_vec();
    (h_last, two.then(|| cs[last * bh..(last + 1) * bh].to_vec()))
}

/// `dst = h0 * mask`: the masked state entering the first step's product.
fn mask_initial<T: Scalar>(dst: &mut [T], h0: &[T], mask: &[T]) {
    for ((d, &v), &k) in dst.iter_mut().zip(h0).zip(mask) {
        *d = v * k;
    }
}

/// The states entering steps `0..T`, in time order and masked as the recurrent product saw
/// them: the right-hand factor of `dW_hh`.
fn entering_states<'a, T: Scalar>(sw: &Sweep, hs: &'a [T], reg: DirReg<T>) -> Cow<'a, [T]> {
    let (rows, h) = (sw.steps * sw.batch, sw.hidden);
    // Slots 0..T going forward in time, 1..=T going backward.
    let first = sw.enter(0).min(sw.enter(sw.steps - 1));
    let h_enter = &hs[first * sw.batch * h..][..rows * h];
    match reg.state_mask {
        Some(m) => Cow::Owned(
            h_enter
                .iter()
                .zip(m.iter().cycle())
                .map(|(&v, &k)| v * k)
                .collect(),
        ),
        None => Cow::Borrowed(h_enter),
    }
}

/// Step `t`'s zoneout on the gradients of the states it wrote (units `units`): the part
/// `z * g` that flows straight to the previous states goes to `direct_h` / `direct_c`.
///
/// # Safety
/// As [`split_zone`], for each pair.
#[allow(clippy::too_many_arguments)]
unsafe fn split_zoneout<T: Scalar>(
    z: Zoneout<T>,
    active: Active,
    h: usize,
    units: Range<usize>,
    rows: usize,
    dh: RowsMut<T>,
    direct_h: RowsMut<T>,
    dc: Option<(RowsMut<T>, RowsMut<T>)>,
) {
    let (t, bh) = (active.t, rows * h);
    // SAFETY: forwarded (the contract).
    unsafe {
        split_zone(active, h, units.clone(), rows, dh, direct_h, |k| {
            z.hidden(t, bh, k)
        });
        if let Some((dc, direct_c)) = dc {
            split_zone(active, h, units, rows, dc, direct_c, |k| z.cell(t, bh, k));
        }
    }
}

/// The buffers a compiled cell's backward team shares; `dh`, `dc` and `dxs` hold two slots,
/// which steps read and write in turn (`i`: the position in the reverse sweep).
#[derive(Clone, Copy)]
struct CustomBackward<'a, T> {
    cell: &'a CompiledCell,
    sw: Sweep<'a>,
    w: DirWeights<'a, T>,
    tape: &'a DirTape<T>,
    reg: DirReg<'a, T>,
    d_out: Option<OutputGrad<'a, T>>,
    dh: RowsMut<'a, T>,
    dc: RowsMut<'a, T>,
    dxs: RowsMut<'a, T>,
    dgx: RowsMut<'a, T>,
    dgh: RowsMut<'a, T>,
    direct_h: RowsMut<'a, T>,
    direct_c: RowsMut<'a, T>,
    g_units: RowsMut<'a, T>,
    g_units_len: usize,
}

impl<T: Scalar> CustomBackward<'_, T> {
    /// Step `t` (the `i`-th of the reverse sweep) on whole rows: the output gradient, zoneout's
    /// split, and the cell's backward program from the slot `i % 2` into the other one.
    ///
    /// # Safety
    /// No other thread touches the buffers meanwhile.
    unsafe fn cell_step(&self, i: usize, t: usize) {
        let (sw, tape, cell) = (&self.sw, self.tape, self.cell);
        let (b, h) = (sw.batch, sw.hidden);
        let (xw, hw) = (sw.cell.gate_count() * h, sw.cell.h_gate_count() * h);
        let extra = sw.cell.num_states().saturating_sub(2);
        let (bh, kw) = (b * h, cell.tape_width() * h);
        let (cur, nxt) = ((i % 2) * b, ((i + 1) % 2) * b);
        let active = Active {
            lengths: sw.lengths,
            t,
        };
        let all = 0..h;
        let two = sw.cell.num_states() >= 2;
        // SAFETY: the contract.
        unsafe {
            let (dh_cur, dc_cur) = (self.dh.skip(cur), self.dc.skip(cur));
            if let Some(g) = self.d_out {
                add_output_grad(g, active, all.clone(), b, dh_cur);
            }
            if let Some(z) = self.reg.zoneout {
                let dc = two.then_some((dc_cur, self.direct_c));
                split_zoneout(z, active, h, all, b, dh_cur, self.direct_h, dc);
            }
            let enter = sw.enter(t);
            let h_prev = &tape.hs[enter * bh..][..bh];
            let tape_t = &tape.act[t * b * kw..][..b * kw];
            let dgx_t = self.dgx.row_mut(t * b, 0, b * xw);
            let dgh_t: &mut [T] = if hw > 0 {
                self.dgh.row_mut(t * b, 0, b * hw)
            } else {
                &mut []
            };
            let g_units = self.g_units.row_mut(0, 0, self.g_units_len);
            let dh_next = self.dh.skip(nxt).row_mut(0, 0, bh);
            let units = self.w.units;
            if two {
                let c_prev = &tape.cs[enter * bh..][..bh];
                let mut prev = vec![h_prev, c_prev];
                let mut d_next = vec![dh_cur.read().row(0, 0, bh), dc_cur.read().row(0, 0, bh)];
                let mut d_prev = vec![dh_next, self.dc.skip(nxt).row_mut(0, 0, bh)];
                for e in 0..extra {
                    prev.push(&tape.aux[(enter * extra + e) * bh..][..bh]);
                    d_next.push(self.dxs.read().row((i % 2 * extra + e) * b, 0, bh));
                    d_prev.push(self.dxs.row_mut(((i + 1) % 2 * extra + e) * b, 0, bh));
                }
                cell.backward_step(
                    h,
                    active,
                    units,
                    &prev,
                    tape_t,
                    &d_next,
                    &mut d_prev,
                    dgx_t,
                    dgh_t,
                    g_units,
                );
            } else {
                let d_next = [dh_cur.read().row(0, 0, bh)];
                cell.backward_step(
                    h,
                    active,
                    units,
                    &[h_prev],
                    tape_t,
                    &d_next,
                    &mut [dh_next],
                    dgx_t,
                    dgh_t,
                    g_units,
                );
            }
        }
    }
}

/// Adds the recurrent product's gradient `a · W_hh` (`a`: step `t`'s recurrent gate gradients,
/// `[B, gates*H]`) to this member's units of `dh`, through the state mask when there is one
/// (`rec`: a `[B, H]` scratch). `parts` splits the product along `k`: each pairs the packed rows
/// of `W_hh` for some gates with the `[B, depth]` view of `a` that multiplies them (the GRU's r, z
/// gradients live in the input side's buffer, its n gradient in its own).
///
/// # Safety
/// Every member may read the parts' `a`, which nobody writes meanwhile; each writes only its own
/// units of `dh` and `rec`.
unsafe fn add_recurrent_grad<T: Scalar>(
    parts: &[(&Packed<T>, Rows<T>)],
    rows: usize,
    units: Range<usize>,
    mask: Option<&[T]>,
    rec: RowsMut<T>,
    dh: RowsMut<T>,
) {
    let h = dh.ld();
    // SAFETY: the contract; the asserts keep the raw products inside their buffers.
    unsafe {
        // Adds to what the gate pass left: zero (LSTM) or `dh * z` (GRU) on active rows, the
        // untouched gradient on rows past their length.
        let (dst, first_accumulates) = match mask {
            None => (dh, true),
            Some(_) => (rec, false),
        };
        for (i, (packed, a)) in parts.iter().enumerate() {
            assert!(a.holds(rows, packed.depth()));
            assert!(dst.holds(rows, packed.col_end()));
            let acc = i > 0 || first_accumulates;
            packed.product_raw(a.ptr(), a.ld(), rows, dst.ptr(), h, acc);
        }
        if let Some(m) = mask {
            combine(units, rows, dh, rec.read(), |d, r, k| *d += r * m[k]);
        }
    }
}

/// Adds zoneout's direct paths to this member's units of the previous states' gradients:
/// `direct_h` (dh's) and, for a cell state, `(dc, dc's)`.
///
/// # Safety
/// As [`combine`].
unsafe fn add_direct_paths<T: Scalar>(
    units: Range<usize>,
    rows: usize,
    dh: RowsMut<T>,
    direct_h: Rows<T>,
    dc: Option<(RowsMut<T>, Rows<T>)>,
) {
    // SAFETY: the contract.
    unsafe {
        combine(units.clone(), rows, dh, direct_h, |d, v, _| *d += v);
        if let Some((dc, direct_c)) = dc {
            combine(units, rows, dc, direct_c, |d, v, _| *d += v);
        }
    }
}

/// `x` time-major: as it is, or a transposed copy when `sw.x_batch_first` (which it then clears).
fn time_major_input<'a, T: Copy>(sw: &mut Sweep, x: &'a [T]) -> Cow<'a, [T]> {
    if std::mem::take(&mut sw.x_batch_first) {
        Cow::Owned(crate::network::swap_outer(x, sw.batch, sw.steps, sw.input))
    } else {
        Cow::Borrowed(x)
    }
}

/// Runs one direction over the whole sequence `x` (`[T*B, I]`, or `[B*T, I]` with
/// `sw.x_batch_first`) from `h0[B,H]` (and `c0`).
pub(crate) fn forward<T: Scalar>(
    mut sw: Sweep,
    x: &[T],
    w: DirWeights<T>,
    h0: &[T],
    c0: Option<&[T]>,
    reg: DirReg<T>,
    keep_tape: bool,
) -> DirOutput<T> {
    if let Some(cell) = sw.cell.compiled() {
        let x = time_major_input(&mut sw, x);
        return forward_custom(cell, sw, &x, w, h0, c0, reg, keep_tape);
    }
    if sw.proj > 0 {
        let c0 = c0.expect("an LSTM sweep has a cell state");
        let x = time_major_input(&mut sw, x);
        return projection::forward(sw, &x, w, h0, c0, keep_tape);
    }
    let (steps, b, h, gw) = (sw.steps, sw.batch, sw.hidden, sw.gate_width());
    let gates = sw.cell.gate_count();
    let lstm = sw.cell == CellKind::Lstm;
    let bh = b * h;

    // The input side of the pre-activations, `x · W_ihᵀ + b_ih` (+ the parts of `b_hh` that sit
    // outside the recurrence): with a small `W_ih` the team projects it itself, `chunk` steps at
    // a time just ahead of the recurrence, each member its own units' columns with its slice of
    // `W_ih` packed once (no separate parallel phase and, without a tape, a buffer of one chunk
    // instead of all steps); else one product over all steps first (see `team_projects`). An
    // LSTM with a narrow input instead adds it, and the bias, inside each step's recurrent
    // product (`fuses_input`). An LSTM step's product adds onto these rows in place, and the
    // gate pass of step t turns them into the activations, so with a tape the buffer (all
    // steps) becomes the tape's `act`.
    let row_bias = w.bias.map(|(b_ih, b_hh)| {
        let mut row = vec![T::zero(); gw];
        fold_bias(&mut row, lstm, h, b_ih, b_hh);
        row
    });
    // A tape's writes make a step slower: the two are measured apart.
    let site = if keep_tape {
        "forward, taped"
    } else {
        "forward"
    };
    let team = plan_measured(&sw, gw, site);
    let members = team.members;
    // A team of one projecting alone would give up the `gemm` crate's split of a product big
    // enough to pay for one (the cost model's threshold): e.g. I = 256, H = 64. With one thread
    // to run on there is no split to give up, and one product over all steps is slower: its
    // `[T*B, G*H]` result lands in a 32 MiB buffer that the steps then read back cold (an
    // LSTM's product adds onto it in place); under glibc's allocator (the Rust examples) it is
    // also mapped and faulted in again at every call, the extension's mimalloc keeps it. (64,128,128,256) inference, one thread,
    // `bench/infer_alone.py`, builds alternating on the shared VM under load 5, CPU medians of
    // 15 calls: LSTM 46-53 -> 39-41 ms, GRU 33-39 -> 29-30; two layers LSTM 101-109 -> 86-93,
    // GRU 72-75 -> 61-65.
    let projection_work = (steps * b).saturating_mul(sw.input).saturating_mul(gw);
    let projection_alone =
        members == 1 && threads::team_capacity() > 1 && projection_work >= TEAM_MIN_SWEEP_WORK;
    // A narrow input rides in each step's recurrent product instead (see `fuses_input`).
    let fused = lstm && fuses_input::<T>(gw, sw.input);
    let in_team = !fused && team_projects::<T>(gw, sw.input) && !projection_alone;
    // Only those two read a batch-first input in place, one step's rows at a time.
    let x = if in_team || fused {
        Cow::Borrowed(x)
    } else {
        time_major_input(&mut sw, x)
    };
    let chunk = if in_team {
        projection_chunk(b, steps)
    } else if fused {
        1
    } else {
        steps
    };
    let mut x_pre = if in_team || fused {
        vec![T::zero(); if keep_tape { steps } else { chunk } * b * gw]
    } else {
        input_projection(
            Mat::new(&x, steps * b, sw.input),
            Mat::new(w.w_ih, gw, sw.input),
            row_bias.as_deref(),
        )
    };
    let b_hn = match w.bias {
        Some((_, b_hh)) if !lstm => b_hh[2 * h..].to_vec(),
        _ => vec![T::zero(); h],
    };

    // Without a tape, two state slots and one step of `aux` are reused.
    let aux_steps = if keep_tape { steps } else { 1 };
    let (mut hs, mut cs) = initial_states(&sw, keep_tape, h0, c0, lstm);
    let mut aux = vec![T::zero(); aux_steps * bh];
    // The recurrent product of a step (GRU; an LSTM's adds onto `x_pre` in place).
    let mut h_pre = vec![T::zero(); if lstm { 0 } else { b * gw }];
    // The masked state entering the product, two slots: each member writes its units of the
    // next one while the others may still read the current one.
    let mut h_masked = vec![T::zero(); if reg.state_mask.is_some() { 2 * bh } else { 0 }];
    if let Some(m) = reg.state_mask {
        mask_initial(&mut h_masked, h0, m);
    }
    let mut out = vec![T::zero(); steps * bh];
    // A batch-first input's rows of one chunk, copied time-major by the team (each member its
    // share of the batch rows) for the chunk's product: one product over the chunk, as with a
    // time-major input, rather than one per step (4x the passes over the member's `W_ih`).
    // One step's rows of a batch-first input are equally spaced: the product reads them in
    // place, with no copy and no barrier to wait at for it.
    let gathers = in_team && sw.x_batch_first && chunk > 1;
    let mut x_chunk = vec![T::zero(); if gathers { chunk * b * sw.input } else { 0 }];

    let views = BuiltinForward {
        sw,
        reg,
        keep_tape,
        b_hn: &b_hn,
        hs: RowsMut::new(&mut hs, h),
        cs: RowsMut::new(&mut cs, h),
        aux: RowsMut::new(&mut aux, h),
        pre: RowsMut::new(&mut h_pre, gw),
        masked: RowsMut::new(&mut h_masked, h),
        out: RowsMut::new(&mut out, h),
        act: RowsMut::new(&mut x_pre, gw),
        x: Rows::new(&x, sw.input),
        x_chunk: RowsMut::new(&mut x_chunk, sw.input),
        gathered: gathers,
        row_bias: row_bias.as_deref(),
    };
    // Short inference calls keep their packed weights for the next call (a training step
    // changes the weights before its next forward, and would only hold a copy through its
    // backward pass; a long call packs in a negligible share of its time, see `KEEP_MAX_STEPS`).
    let cache = w.packed.filter(|_| !keep_tape && steps <= KEEP_MAX_STEPS);
    team.run(steps, |member, size, barrier| {
        let units = split_units(h, size)[member].clone();
        let key = |role, rows| {
            cache.map(|(_, layer, dir)| PackKey {
                layer,
                dir,
                role,
                units: (units.start, units.end),
                rows,
            })
        };
        let (step_key, ih_key) = (
            key(
                if fused {
                    PackRole::Fused
                } else {
                    PackRole::Recurrent
                },
                b,
            ),
            key(PackRole::Input, chunk * b),
        );
        // Packed here, on the thread that uses them, so they start out in that core's cache.
        let pack_step = || {
            if fused {
                let parts = fused_weight_rows(h, sw.input, w, row_bias.as_deref());
                Packed::stacked(&parts, &gate_vectors(gates, h, units.clone()), b)
            } else {
                Packed::rows_of(w.w_hh, gates, h, units.clone(), b)
            }
        };
        let packed = match (cache, step_key) {
            (Some((c, _, _)), Some(k)) => c.take(k, pack_step),
            _ => pack_step(),
        };
        // The member's `[B, depth]` lhs `[h | x_t | 1]` of the fused product.
        let mut lhs = vec![T::zero(); if fused { b * packed.depth() } else { 0 }];
        // `W_ih` as `W(k, n) = w_ih[k + n * I]`.
        let pack_ih = || {
            let cols = gate_vectors(gates, h, units.clone());
            Packed::new(w.w_ih, 1, sw.input, sw.input, &cols, chunk * b)
        };
        let packed_ih = in_team.then(|| match (cache, ih_key) {
            (Some((c, _, _)), Some(k)) => c.take(k, pack_ih),
            _ => pack_ih(),
        });
        // The time step of `x_pre`'s first row.
        let mut first = 0;
        for s in 0..steps {
            if let (Some(p), 0) = (&packed_ih, s % chunk) {
                let times = chunk_times(&sw, s, chunk);
                first = if keep_tape { 0 } else { times.start };
                if gathers {
                    // SAFETY: each member writes only its own rows of the chunk's copy; the
                    // barrier orders those writes before every member's product reads them,
                    // and the step barriers order the last chunk's reads before these writes.
                    unsafe { views.gather_x(times.clone(), member, size) };
                    barrier.wait();
                }
                // SAFETY: each member writes only its own units' columns of the chunk, which
                // only its own gate passes read.
                unsafe { views.project(p, times, first) };
            }
            if fused && !keep_tape {
                // One step of `act`, reused.
                first = sw.time(s);
            }
            // SAFETY: within a step every member reads the whole entering state and writes only
            // its own units of everything else; the barrier orders the writes before the next
            // step's reads.
            unsafe {
                views.step(
                    &packed,
                    units.clone(),
                    s,
                    first,
                    fused.then_some(&mut lhs[..]),
                )
            };
            barrier.wait();
        }
        if let (Some((c, _, _)), Some(k), Some(k_ih)) = (cache, step_key, ih_key) {
            c.put(k, packed);
            if let Some(p) = packed_ih {
                c.put(k_ih, p);
            }
        }
    });

    let (h_last, c_last) = final_states(&sw, keep_tape, &hs, &cs, lstm);
    DirOutput {
        out,
        h_last,
        c_last,
        tape: keep_tape.then_some(DirTape {
            act: x_pre,
            aux,
            hs,
            cs,
        }),
    }
}

/// The buffers a built-in cell's forward team shares, and one member's part of a step.
#[derive(Clone, Copy)]
struct BuiltinForward<'a, T> {
    sw: Sweep<'a>,
    reg: DirReg<'a, T>,
    keep_tape: bool,
    b_hn: &'a [T],
    hs: RowsMut<'a, T>,
    cs: RowsMut<'a, T>,
    aux: RowsMut<'a, T>,
    pre: RowsMut<'a, T>,
    masked: RowsMut<'a, T>,
    out: RowsMut<'a, T>,
    /// The input pre-activations `[steps, B, G*H]` of the current chunk (of all steps with a
    /// tape), turned into the activations in place.
    act: RowsMut<'a, T>,
    /// `[T*B, I]` the input (`[B*T, I]` with `sw.x_batch_first`; see `x_rows`).
    x: Rows<'a, T>,
    /// `[chunk*B, I]` the current chunk's rows of a batch-first input (see `gather_x`).
    x_chunk: RowsMut<'a, T>,
    /// Whether the team gathers each chunk of a batch-first input into `x_chunk`.
    gathered: bool,
    /// `[G*H]` the bias row of the input side (see [`fold_bias`]).
    row_bias: Option<&'a [T]>,
}

/// Steps whose input side a sweep's team projects at once: rows enough to reuse each packed
/// panel of `W_ih` from L1 across several row tiles, few enough that a member's share of the
/// chunk's pre-activations stays in its L2 beside its slices of `W_ih` and `W_hh` until its
/// steps read them. At (B, I, H) = (64, 128, 256) with two members that is 768 KiB of weights
/// per member in a 1 MiB L2, so one step (128 KiB of the chunk per member), not four: LSTM
/// inference 2 threads, fresh processes alternating on the loaded 2-core Zen 4 VM (load 6-8),
/// CPU per call, median of 15 processes: one layer 70.3 -> 68.6 ms, two layers (12) 169.2 ->
/// 164.8; GRU equal (51.4 -> 51.0).
const PROJECTION_ROWS: usize = 64;

/// The longest inference sweep whose packed weights the network keeps for the next call. Packing
/// reads and writes the weight once, about the cost of one step's product, so beyond this many
/// steps it is under 2% of the call, and a network called only with long sequences holds no
/// packed copy between calls. At T = 1 it was 10 of 33 µs (LSTM B=32, I=8, H=64).
pub(crate) const KEEP_MAX_STEPS: usize = 64;

/// Bytes of `W_ih` up to which a sweep's team projects the input itself. A larger one no longer
/// stays in the members' L2 between chunks: streamed in again for every chunk it lost to one
/// product over all steps in inference, measured in one process on the shared 2-core AVX-512
/// VM, 2 threads, load 6, fastest-median of 20 calls (overlapping ranges: weak evidence):
/// (64,64,512,1024) LSTM (8 MiB) 528-649 ms against 479-625 ms, GRU (6 MiB) 556-646 against
/// 488-577; an LSTM with I = H = 256 (1 MiB) within noise.
const TEAM_PROJECTION_MAX_BYTES: usize = 1 << 20;

/// Whether a sweep's team projects the input itself (`gw` gate columns, `input` features): a
/// small `W_ih`, and a SIMD kernel for the packed product (the portable one, and so f64, is
/// slower than the `gemm` crate's).
fn team_projects<T: Scalar>(gw: usize, input: usize) -> bool {
    let bytes = gw
        .saturating_mul(input)
        .saturating_mul(std::mem::size_of::<T>());
    bytes <= TEAM_PROJECTION_MAX_BYTES && Isa::default_for::<T>() != Isa::Portable
}

/// Input features up to which an LSTM sweep adds the input side inside each step's recurrent
/// product (`[h | x_t | 1] · [W_hh; W_ih; bias]ᵀ`) instead of projecting it apart. A product of
/// depth `I` this small moves as much as it sums: at (B,T,I,H) = (32,100,8,64) the projection in
/// the team and the copies of its bias row were 16% of the step (`perf record` of
/// `examples/profile_step`, `ONLY=inference`), against the 9/64 more depth it costs here.
const FUSED_INPUT_MAX: usize = 32;

/// Whether an LSTM sweep with `gw` gate columns and `input` features fuses its input side into
/// the step product: a narrow input, on a SIMD kernel (as [`team_projects`]).
fn fuses_input<T: Scalar>(gw: usize, input: usize) -> bool {
    input <= FUSED_INPUT_MAX && team_projects::<T>(gw, input)
}

/// The fused step product's weight, packed straight from its sources: rows `0..H` are `W_hhᵀ`,
/// rows `H..H+I` are `W_ihᵀ`, and a last row the bias (when there is one). Stacking them in one
/// matrix first cost a transposed copy and its allocation at every call: a (32,1,8,64) LSTM
/// inference call took 47 instead of 36 us (`bench/infer_alone.py`, builds alternating, load 9).
fn fused_weight_rows<'a, T: Scalar>(
    h: usize,
    input: usize,
    w: DirWeights<'a, T>,
    row_bias: Option<&'a [T]>,
) -> Vec<WeightRows<'a, T>> {
    let mut parts = vec![
        WeightRows {
            w: w.w_hh,
            rs: 1,
            cs: h,
            k_len: h,
        },
        WeightRows {
            w: w.w_ih,
            rs: 1,
            cs: input,
            k_len: input,
        },
    ];
    if let Some(bias) = row_bias {
        parts.push(WeightRows {
            w: bias,
            rs: 0,
            cs: 1,
            k_len: 1,
        });
    }
    parts
}

fn projection_chunk(batch: usize, steps: usize) -> usize {
    (PROJECTION_ROWS / batch.max(1)).clamp(1, steps.max(1))
}

/// The time steps of the chunk that starts at sweep position `s` (ascending, whichever the
/// direction).
fn chunk_times(sw: &Sweep, s: usize, chunk: usize) -> Range<usize> {
    let end = (s + chunk).min(sw.steps);
    if sw.reverse {
        sw.steps - end..sw.steps - s
    } else {
        s..end
    }
}

impl<T: Scalar> BuiltinForward<'_, T> {
    /// Copies this member's share of the batch rows of the steps `times` of a batch-first input
    /// into `x_chunk`, time-major.
    ///
    /// # Safety
    /// No other thread reads those rows of `x_chunk` meanwhile, nor writes them.
    unsafe fn gather_x(&self, times: Range<usize>, member: usize, size: usize) {
        let (b, i) = (self.sw.batch, self.sw.input);
        let rows = b * member / size..b * (member + 1) / size;
        for (k, t) in times.enumerate() {
            let x_t = self.x_rows(t);
            for r in rows.clone() {
                // SAFETY: this member's rows (the contract); `x` is only read.
                unsafe {
                    self.x_chunk
                        .row_mut(k * b + r, 0, i)
                        .copy_from_slice(x_t.row(r, 0, i))
                };
            }
        }
    }

    /// The `B` input rows of time step `t`.
    fn x_rows(&self, t: usize) -> Rows<'_, T> {
        let (steps, b, i) = (self.sw.steps, self.sw.batch, self.sw.input);
        if self.sw.x_batch_first {
            self.x.strided(t * i, steps * i)
        } else {
            self.x.skip(t * b)
        }
    }

    /// The input side of the pre-activations of the steps `times` for the member's units (its
    /// packed slice of `W_ih`): the bias row `+ x_t · W_ihᵀ`, into `act` from row
    /// `(times.start - first) * B`.
    ///
    /// # Safety
    /// No other thread reads or writes the units' columns of those rows of `act` meanwhile.
    unsafe fn project(&self, packed: &Packed<T>, times: Range<usize>, first: usize) {
        let (b, i) = (self.sw.batch, self.sw.input);
        let rows = times.len() * b;
        let dst = self.act.skip((times.start - first) * b);
        assert!(dst.holds(rows, packed.col_end()));
        let x = if self.gathered {
            // A batch-first input's rows of the chunk were gathered (`gather_x`).
            // SAFETY: the gather is finished and no member writes `x_chunk` until the next chunk
            // (the contract of `gather_x`'s caller).
            unsafe { self.x_chunk.read() }
        } else if self.sw.x_batch_first {
            // Chunks of one step (see `gathers`).
            assert_eq!(times.len(), 1);
            self.x_rows(times.start)
        } else {
            self.x.skip(times.start * b)
        };
        assert!(x.holds(rows, i));
        // The product starts from the bias row rather than from copies of it in `act`: copying
        // it into every row of the chunk was the largest memory pass of the forward (`perf
        // record`, issue 16), and the same additions in the same order keep the bits.
        // SAFETY: bounds checked above (the bias row is `G*H` wide); the written columns are the
        // member's (the contract).
        unsafe {
            packed.product_raw_from(x.ptr(), x.ld(), rows, dst.ptr(), dst.ld(), self.row_bias)
        };
    }

    /// Step `s` for the units `units`: their columns of the recurrent product, the fused gate
    /// pass, zoneout, the next masked state and the output rows.
    ///
    /// # Safety
    /// Every member of the team calls it for the same `s` with its own `units`, and the team
    /// waits at a barrier between steps: each member reads the whole entering state (slot `rd`,
    /// or the masked slot `s % 2`) and writes only its own units of everything else.
    /// `first` is the time step of `act`'s first row.
    unsafe fn step(
        &self,
        packed: &Packed<T>,
        units: Range<usize>,
        s: usize,
        first: usize,
        fused_lhs: Option<&mut [T]>,
    ) {
        let (sw, reg) = (&self.sw, self.reg);
        let (b, h, gw) = (sw.batch, sw.hidden, sw.gate_width());
        let bh = b * h;
        let t = sw.time(s);
        let (rd, wr) = state_slots(sw, self.keep_tape, s, t);
        let a = if self.keep_tape { t } else { 0 };
        let active = Active {
            lengths: sw.lengths,
            t,
        };
        // SAFETY: the contract.
        unsafe {
            let h_in = match reg.state_mask {
                Some(_) => self.masked.read().skip((s % 2) * b),
                None => self.hs.read().skip(rd * b),
            };
            let act = self.act.skip((t - first) * b);
            let h_prev = self.hs.read().skip(rd * b);
            let h_next = self.hs.skip(wr * b);
            if sw.cell == CellKind::Lstm {
                // The recurrent product adds onto the input side in place: no second buffer
                // to write, read back and add in the gate pass.
                assert!(h_in.holds(b, h) && act.holds(b, packed.col_end()));
                match fused_lhs {
                    Some(lhs) => {
                        // `[h | x_t | 1]`: the input side and the bias come with the product.
                        let (i, depth) = (sw.input, packed.depth());
                        let x_t = self.x_rows(t);
                        assert!(lhs.len() == b * depth && x_t.holds(b, i));
                        for (r, row) in lhs.chunks_exact_mut(depth).enumerate() {
                            row[..h].copy_from_slice(h_in.row(r, 0, h));
                            row[h..h + i].copy_from_slice(x_t.row(r, 0, i));
                            row[h + i..].fill(T::one());
                        }
                        packed.product_raw(lhs.as_ptr(), depth, b, act.ptr(), gw, false);
                    }
                    None => packed.product_raw(h_in.ptr(), h, b, act.ptr(), gw, true),
                }
                let c_prev = self.cs.read().skip(rd * b);
                let c_next = self.cs.skip(wr * b);
                gates::lstm_forward_summed_units(
                    h,
                    units.clone(),
                    b,
                    active,
                    act,
                    c_prev,
                    h_prev,
                    self.aux.skip(a * b),
                    c_next,
                    h_next,
                    self.keep_tape,
                );
                if let Some(z) = reg.zoneout {
                    zone(active, h, units.clone(), b, c_prev, c_next, |k| {
                        z.cell(t, bh, k)
                    });
                }
            } else {
                assert!(h_in.holds(b, h) && self.pre.holds(b, packed.col_end()));
                packed.product_raw(h_in.ptr(), h, b, self.pre.ptr(), gw, false);
                gates::gru_forward_units(
                    h,
                    units.clone(),
                    b,
                    active,
                    act,
                    self.pre.read(),
                    self.b_hn,
                    h_prev,
                    self.aux.skip(a * b),
                    h_next,
                );
            }
            if let Some(z) = reg.zoneout {
                zone(active, h, units.clone(), b, h_prev, h_next, |k| {
                    z.hidden(t, bh, k)
                });
            }
            if let Some(m) = reg.state_mask {
                let next = self.masked.skip(((s + 1) % 2) * b);
                combine(units.clone(), b, next, h_next.read(), |d, v, k| {
                    *d = v * m[k]
                });
            }
            emit(active, units, b, h_next.read(), sw.out_rows(self.out, t));
        }
    }
}

/// Gradient of the output sequence of one direction: `[T, B, ld]` (or `[B, T, ld]` with
/// `batch_first`, read where the caller's array has it rather than copied to time-major) with
/// this direction's `H` columns starting at `col`.
#[derive(Clone, Copy)]
pub(crate) struct OutputGrad<'a, T> {
    pub data: &'a [T],
    pub ld: usize,
    pub col: usize,
    /// `Some(T)`: the rows are batch-major, `T` steps per sequence.
    pub batch_first: Option<usize>,
}

impl<T> OutputGrad<'_, T> {
    /// The row of batch row `r` (of `rows`) at time `t`.
    #[inline(always)]
    pub(crate) fn row(&self, t: usize, r: usize, rows: usize) -> usize {
        match self.batch_first {
            Some(steps) => r * steps + t,
            None => t * rows + r,
        }
    }
}

/// The tape a backward sweep reads: borrowed (`Kept`, for another backward pass) or owned
/// (`Consumed`, PyTorch's `retain_graph=False`): then the gate gradients overwrite its
/// activations and each buffer is freed once read for the last time.
pub(crate) enum SweepTape<'a, T> {
    Kept(&'a DirTape<T>),
    Consumed(DirTape<T>),
}

impl<T> SweepTape<'_, T> {
    fn get(&self) -> &DirTape<T> {
        match self {
            SweepTape::Kept(t) => t,
            SweepTape::Consumed(t) => t,
        }
    }
}

/// Backpropagation through one sweep. Writes this direction's parameter gradients into `grad`
/// (its contiguous region of the flat gradient: `dW_ih`, `dW_hh`, then `db_ih`, `db_hh`), writes
/// `dx[T*B, I]`, and returns the gradients of the initial states.
pub(crate) fn backward<T: Scalar>(
    sw: Sweep,
    x: &[T],
    w: DirWeights<T>,
    tape: SweepTape<T>,
    d_out: Option<OutputGrad<T>>,
    dh_n: Option<&[T]>,
    dc_n: Option<&[T]>,
    reg: DirReg<T>,
    grad: &mut [T],
    dx: &mut [T],
) -> (Vec<T>, Option<Vec<T>>) {
    if let Some(cell) = sw.cell.compiled() {
        let tape = tape.get();
        return backward_custom(cell, sw, x, w, tape, d_out, dh_n, dc_n, reg, grad, dx);
    }
    if sw.proj > 0 {
        let tape = tape.get();
        let (dh, dc) = projection::backward(sw, x, w, tape, d_out, dh_n, dc_n, grad, dx);
        return (dh, Some(dc));
    }
    let (steps, b, h, gw, inp) = (sw.steps, sw.batch, sw.hidden, sw.gate_width(), sw.input);
    let gates = sw.cell.gate_count();
    let lstm = sw.cell == CellKind::Lstm;
    let bh = b * h;
    let mut dh = dh_n.map_or_else(|| vec![T::zero(); bh], <[T]>::to_vec);
    let mut dc = if lstm {
        dc_n.map_or_else(|| vec![T::zero(); bh], <[T]>::to_vec)
    } else {
        Vec::new()
    };
    // Gradients of the gate pre-activations, input side and recurrent side; the LSTM's are the
    // same, the GRU's differ on the n gate only. The input side's (`[T*B, GH]`) are computed over
    // the activations, the GRU's recurrent n-gate ones (`[T*B, H]`) over `W_hn h + b_hn`: in the
    // tape's own buffers when it is consumed, else in copies.
    let (mut dgx, aux, hs, cs) = match tape {
        SweepTape::Kept(t) => (
            t.act.clone(),
            Cow::Borrowed(&t.aux[..]),
            Cow::Borrowed(&t.hs[..]),
            Cow::Borrowed(&t.cs[..]),
        ),
        SweepTape::Consumed(t) => (t.act, Cow::Owned(t.aux), Cow::Owned(t.hs), Cow::Owned(t.cs)),
    };
    let (aux, mut dgn) = if lstm {
        (aux, Vec::new())
    } else {
        (Cow::Borrowed(&[][..]), aux.into_owned())
    };
    // The bias gradients, summed step by step while the gate gradients are in cache (a pass
    // over the `[T*B, GH]` buffer less): the input side's `[GH]`, the GRU's recurrent n gate's.
    let sum_bias = !grad.is_empty() && w.bias.is_some();
    let mut sums_x = vec![T::zero(); if sum_bias { gw } else { 0 }];
    let mut sums_n = vec![T::zero(); if sum_bias && !lstm { h } else { 0 }];
    // Zoneout's direct paths to the previous states, and the recurrent product before the
    // variational mask; allocated only when used.
    let zoned = reg.zoneout.is_some();
    let mut direct_h = vec![T::zero(); if zoned { bh } else { 0 }];
    let mut direct_c = vec![T::zero(); if zoned && lstm { bh } else { 0 }];
    let mut rec = vec![T::zero(); if reg.state_mask.is_some() { bh } else { 0 }];

    let team = plan_measured(&sw, gw, "backward");
    let views = BuiltinBackward {
        sw,
        reg,
        d_out,
        dh: RowsMut::new(&mut dh, h),
        dc: RowsMut::new(&mut dc, h),
        dgx: RowsMut::new(&mut dgx, gw),
        dgn: RowsMut::new(&mut dgn, h),
        sum_bias,
        sums_x: RowsMut::new(&mut sums_x, gw),
        sums_n: RowsMut::new(&mut sums_n, h),
        direct_h: RowsMut::new(&mut direct_h, h),
        direct_c: RowsMut::new(&mut direct_c, h),
        aux: Rows::new(&aux, h),
        hs: Rows::new(&hs, h),
        cs: Rows::new(&cs, h),
    };
    // The weight and input gradients go chunk by chunk of steps, in the order the sweep finishes
    // them (`gradient_chunk`); `done` counts the sweep positions finished so far.
    let chunk = gradient_chunk::<T>(&sw, gw);
    let done = &AtomicUsize::new(0);
    let want_grad = !grad.is_empty();
    let h_enter_buf = if want_grad {
        entering_states(&sw, &hs, reg)
    } else {
        Cow::Borrowed(&[][..])
    };
    let h_enter = &h_enter_buf[..];
    let dx_all = &mut *dx;
    let (g_weights, g_bias) = grad.split_at_mut(if want_grad { gw * (inp + h) } else { 0 });
    // SAFETY (both): the chunk products read only rows of steps the sweep has finished, which
    // nobody writes any more (see `consume`).
    let (dgx_done, dgn_done) = unsafe {
        (
            Finished(views.dgx.read().ptr()),
            Finished(views.dgn.read().ptr()),
        )
    };
    let consume = move |serial: bool| {
        let mut run = move || {
            for c in 0..steps.div_ceil(chunk) {
                // Sweep positions `lo..hi`, finished when `done` reaches `steps - lo`.
                let hi = steps - c * chunk;
                let lo = hi.saturating_sub(chunk);
                wait_for(done, steps - lo);
                let times = if sw.reverse {
                    steps - hi..steps - lo
                } else {
                    lo..hi
                };
                let (r0, n) = (times.start * b, times.len() * b);
                // SAFETY: rows of finished steps (the loop above waited for them), in bounds:
                // `dgx` holds `T*B` rows of `gw`, `dgn` (the GRU's) of `h`.
                let dgx_c = unsafe { dgx_done.slice(r0 * gw, n * gw) };
                if want_grad {
                    let dgn_c;
                    let rec = if lstm {
                        vec![Mat::new(dgx_c, n, gw)]
                    } else {
                        // SAFETY: as above.
                        dgn_c = unsafe { dgn_done.slice(r0 * h, n * h) };
                        let rz = Mat {
                            data: dgx_c,
                            rows: n,
                            cols: 2 * h,
                            ld: gw,
                        };
                        vec![rz, Mat::new(dgn_c, n, h)]
                    };
                    let x_c = &x[r0 * inp..(r0 + n) * inp];
                    let h_c = &h_enter[r0 * h..(r0 + n) * h];
                    weight_grads_rows(sw, x_c, h_c, (dgx_c, gw), &rec, c > 0, g_weights);
                }
                a_b(
                    &mut dx_all[r0 * inp..(r0 + n) * inp],
                    inp,
                    false,
                    Mat::new(dgx_c, n, gw),
                    Mat::new(w.w_ih, gw, inp),
                );
            }
        };
        if serial {
            // Beside the sweep's thread: one thread, no split of the products.
            threads::install_for(0, run);
        } else {
            run();
        }
    };
    let rec_v = RowsMut::new(&mut rec, h);
    let sweep = || {
        team.run(steps, |member, size, barrier| {
            let units = split_units(h, size)[member].clone();
            // The LSTM's product in one piece; the GRU's in two along `k`: rows r, z of `W_hh`
            // times the input side's gradients, rows n times the recurrent n-gate gradients.
            let rz = if lstm { gates } else { 2 };
            let packed = Packed::cols_of(&w.w_hh[..rz * h * h], rz, h, units.clone(), b);
            let packed_n =
                (!lstm).then(|| Packed::cols_of(&w.w_hh[rz * h * h..], 1, h, units.clone(), b));
            for s in (0..steps).rev() {
                let t = sw.time(s);
                // SAFETY: before the barrier each member touches only its own units (of `dh`,
                // `dc`, the direct paths and step `t`'s gate gradients); after it, every member
                // reads all of step `t`'s recurrent gate gradients, which nobody writes any
                // more, and again writes only its own units.
                unsafe { views.gate_step(units.clone(), t) };
                barrier.wait();
                if member == 0 {
                    // Step `t`'s gate gradients are final: the chunk products may read them.
                    done.store(steps - s, Ordering::Release);
                }
                unsafe {
                    let (a, mask) = (views.dgx.read().skip(t * b), reg.state_mask);
                    let (u, dh) = (units.clone(), views.dh);
                    match &packed_n {
                        None => add_recurrent_grad(&[(&packed, a)], b, u, mask, rec_v, dh),
                        Some(pn) => {
                            let a_n = views.dgn.read().skip(t * b);
                            add_recurrent_grad(&[(&packed, a), (pn, a_n)], b, u, mask, rec_v, dh)
                        }
                    }
                    if zoned {
                        let dc = lstm.then(|| (views.dc, views.direct_c.read()));
                        add_direct_paths(units.clone(), b, views.dh, views.direct_h.read(), dc);
                    }
                }
            }
        })
    };
    // With chunks and a sweep of one thread, the chunk products run on another thread beside the
    // sweep; else after it (the same products in the same order: the same numbers either way).
    if chunk < steps
        && team.members == 1
        && threads::parallel_allowed()
        && threads::num_threads() > 1
    {
        threads::join(sweep, || consume(true));
        drop((aux, cs));
    } else {
        sweep();
        // A consumed tape's tanh(c') and cell states are dead now, before the products.
        drop((aux, cs));
        consume(false);
    }
    // Its hidden states (and the GRU's n-gate gradients) after them.
    drop(h_enter_buf);
    drop((hs, dgn));
    if want_grad && sum_bias {
        let (g_bih, g_bhh) = g_bias.split_at_mut(gw);
        let rec_sums = if lstm { &sums_x[..] } else { &sums_x[..2 * h] };
        let adds = [(&mut g_bih[..], &sums_x[..]), (&mut g_bhh[..], rec_sums)];
        for (g, v) in adds {
            g.iter_mut().zip(v).for_each(|(g, &v)| *g += v);
        }
        g_bhh[2 * h..]
            .iter_mut()
            .zip(&sums_n)
            .for_each(|(g, &v)| *g += v);
    }
    (dh, lstm.then_some(dc))
}

/// The buffers a built-in cell's backward team shares.
#[derive(Clone, Copy)]
struct BuiltinBackward<'a, T> {
    sw: Sweep<'a>,
    reg: DirReg<'a, T>,
    d_out: Option<OutputGrad<'a, T>>,
    dh: RowsMut<'a, T>,
    dc: RowsMut<'a, T>,
    /// The step's activations in, its input-side gate gradients out.
    dgx: RowsMut<'a, T>,
    /// The GRU's `W_hn h + b_hn` in, its recurrent n-gate gradients out.
    dgn: RowsMut<'a, T>,
    /// Whether the steps add their column sums of `dgx` and `dgn` to `sums_x`, `sums_n`.
    sum_bias: bool,
    sums_x: RowsMut<'a, T>,
    sums_n: RowsMut<'a, T>,
    direct_h: RowsMut<'a, T>,
    direct_c: RowsMut<'a, T>,
    aux: Rows<'a, T>,
    hs: Rows<'a, T>,
    cs: Rows<'a, T>,
}

impl<T: Scalar> BuiltinBackward<'_, T> {
    /// This member's units of step `t`: the output gradient into `dh`, zoneout's split, and the
    /// gate pass that turns `dh`, `dc` into the step's gate gradients.
    ///
    /// # Safety
    /// Every member calls it for the same `t` with its own `units`, touching only those.
    unsafe fn gate_step(&self, units: Range<usize>, t: usize) {
        let (sw, b, h) = (&self.sw, self.sw.batch, self.sw.hidden);
        let lstm = sw.cell == CellKind::Lstm;
        let active = Active {
            lengths: sw.lengths,
            t,
        };
        let enter = sw.enter(t);
        // SAFETY: the contract.
        unsafe {
            if let Some(g) = self.d_out {
                add_output_grad(g, active, units.clone(), b, self.dh);
            }
            if let Some(z) = self.reg.zoneout {
                let dc = lstm.then_some((self.dc, self.direct_c));
                split_zoneout(z, active, h, units.clone(), b, self.dh, self.direct_h, dc);
            }
            if lstm {
                gates::lstm_backward_in_place_units(
                    h,
                    units.clone(),
                    b,
                    active,
                    self.dgx.skip(t * b),
                    self.aux.skip(t * b),
                    self.cs.skip(enter * b),
                    self.dh,
                    self.dc,
                );
            } else {
                gates::gru_backward_in_place_units(
                    h,
                    units.clone(),
                    b,
                    active,
                    self.dgx.skip(t * b),
                    self.dgn.skip(t * b),
                    self.hs.skip(enter * b),
                    self.dh,
                );
            }
            if self.sum_bias {
                let gates = sw.cell.gate_count();
                let dgx = self.dgx.read().skip(t * b);
                gates::add_gate_column_sums_units(h, units.clone(), gates, b, dgx, self.sums_x);
                if !lstm {
                    let dgn = self.dgn.read().skip(t * b);
                    gates::add_gate_column_sums_units(h, units, 1, b, dgn, self.sums_n);
                }
            }
        }
    }
}

/// Rows of gate gradients per chunk of [`backward`]'s weight and input gradients, where they are
/// chunked: enough that each chunk's products run at the `gemm` crate's speed.
const GRADIENT_CHUNK_ROWS: usize = 512;

/// Largest weights (`[G*H, I+H]`, bytes) whose gradients [`backward`] computes in chunks of
/// steps, beside a sweep of one thread: small enough that a chunk's `dW` stays in cache between
/// chunks. Larger layers get one product over all steps after the sweep (their sweep has a team).
const GRADIENT_CHUNK_MAX_WEIGHT_BYTES: usize = 512 << 10;

/// Steps per chunk of a built-in sweep's weight and input gradients ([`backward`]): from the
/// shapes only, never the thread count, so the sums run in the same order on any number of
/// threads. `sw.steps` means one chunk.
fn gradient_chunk<T>(sw: &Sweep, gw: usize) -> usize {
    let bytes = gw * (sw.input + sw.hidden) * std::mem::size_of::<T>();
    if bytes <= GRADIENT_CHUNK_MAX_WEIGHT_BYTES {
        GRADIENT_CHUNK_ROWS.div_ceil(sw.batch).clamp(1, sw.steps)
    } else {
        sw.steps
    }
}

/// A buffer whose rows a sweep finishes one step after another, read by the chunk products on
/// another thread while the sweep still writes later steps' rows (so no slice covers it whole).
#[derive(Clone, Copy)]
struct Finished<T>(*const T);

impl<T> Finished<T> {
    /// Elements `start..start + len`.
    ///
    /// # Safety
    /// They lie inside the buffer and nobody writes them while the slice lives.
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a [T] {
        // SAFETY: the contract.
        unsafe { std::slice::from_raw_parts(self.0.add(start), len) }
    }
}

// SAFETY: only rows nobody writes any more are read through it (see `backward`'s `consume`).
unsafe impl<T: Sync> Send for Finished<T> {}
unsafe impl<T: Sync> Sync for Finished<T> {}

/// Waits until `done` reaches `want`: spins a little, then yields the core (the sweep it waits
/// for may need it on a busy machine).
fn wait_for(done: &AtomicUsize, want: usize) {
    let mut spins = 0u32;
    while done.load(Ordering::Acquire) < want {
        if spins < 1 << 10 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

/// The weight gradients of a sweep from its pre-activation gradients: `dgx` `[T*B, xw]` of the
/// input side, and the recurrent side's `[T*B, ·]` column blocks `rec`, in gate order (none: a
/// cell without recurrent gates; strided views where a block lies inside `dgx`). Large products
/// over all `T*B` rows into `grad`: `dW_ih`, `dW_hh` (a block's rows each), then `db_ih`, `db_hh`
/// when the sweep has biases.
#[allow(clippy::too_many_arguments)]
fn weight_grads<T: Scalar>(
    sw: Sweep,
    x: &[T],
    hs: &[T],
    reg: DirReg<T>,
    (dgx, xw): (&[T], usize),
    rec: &[Mat<T>],
    bias: bool,
    grad: &mut [T],
) {
    let (h, inp) = (sw.hidden, sw.input);
    let hw: usize = rec.iter().map(|m| m.cols).sum();
    let (g_weights, g_bias) = grad.split_at_mut(xw * inp + hw * h);
    let h_enter = if hw > 0 {
        entering_states(&sw, hs, reg)
    } else {
        Cow::Borrowed(&[][..])
    };
    weight_grads_rows(sw, x, &h_enter, (dgx, xw), rec, false, g_weights);
    if bias {
        let (g_bih, g_bhh) = g_bias.split_at_mut(xw);
        add_column_sums(g_bih, dgx);
        let mut g_block = &mut g_bhh[..hw];
        for &block in rec {
            let (g, tail) = g_block.split_at_mut(block.cols);
            add_view_column_sums(g, block);
            g_block = tail;
        }
    }
}

/// `dW_ih (+)= dgxᵀ · x` and `dW_hh (+)= recᵀ · h_enter` (a block's rows each) over the rows the
/// views hold (all of a sweep's, or a chunk of them), into `grad` (`dW_ih`, then `dW_hh`):
/// overwriting, or adding with `accumulate`. `h_enter`: the states entering those rows' steps,
/// masked as the recurrent product saw them ([`entering_states`]).
fn weight_grads_rows<T: Scalar>(
    sw: Sweep,
    x: &[T],
    h_enter: &[T],
    (dgx, xw): (&[T], usize),
    rec: &[Mat<T>],
    accumulate: bool,
    grad: &mut [T],
) {
    let (h, inp) = (sw.hidden, sw.input);
    let rows = dgx.len() / xw.max(1);
    let hw: usize = rec.iter().map(|m| m.cols).sum();
    let (g_wih, g_whh) = grad.split_at_mut(xw * inp);
    at_b(
        g_wih,
        inp,
        accumulate,
        Mat::new(dgx, rows, xw),
        Mat::new(x, rows, inp),
    );
    let mut g_block = &mut g_whh[..hw * h];
    for &block in rec.iter().filter(|m| m.cols > 0) {
        let (g, tail) = g_block.split_at_mut(block.cols * h);
        at_b(g, h, accumulate, block, Mat::new(h_enter, rows, h));
        g_block = tail;
    }
}

/// Copies the units `units` of `h_next` to the output rows still inside their sequence.
///
/// # Safety
/// As [`combine`].
pub(crate) unsafe fn emit<T: Scalar>(
    active: Active,
    units: Range<usize>,
    rows: usize,
    h_next: Rows<T>,
    out_t: RowsMut<T>,
) {
    let (u, n) = (units.start, units.len());
    for r in 0..rows {
        if active.row(r) {
            // SAFETY: this call's units (the contract).
            unsafe { out_t.row_mut(r, u, n).copy_from_slice(h_next.row(r, u, n)) };
        }
    }
}

/// [`forward`] for a compiled cell: the products as for the built-in cells (`b_hh` stays on the
/// recurrent side, where the cell's `hg` leaves expect it), the element-wise step from the
/// cell's program. State 0 is `h`, state 1 (when present) `c`; further states (an sLSTM's
/// normaliser and stabiliser) are internal to the sweep: they start at zero, are kept on the
/// tape (`DirTape::aux`, which compiled cells do not otherwise use) and are not returned.
///
/// The team splits each step's product by units; the cell's program runs on member 0 between two
/// barriers, since it works on whole rows.
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
    let h_gates = sw.cell.h_gate_count();
    let two = sw.cell.num_states() >= 2;
    let extra = sw.cell.num_states().saturating_sub(2);
    let bh = b * h;
    let kw = cell.tape_width() * h;

    let x_pre = input_projection(
        Mat::new(x, steps * b, sw.input),
        Mat::new(w.w_ih, xw, sw.input),
        w.bias.map(|(b_ih, _)| b_ih),
    );

    let (slots, tape_steps) = if keep_tape {
        (steps + 1, steps)
    } else {
        (2, 0)
    };
    let (mut hs, mut cs) = initial_states(&sw, keep_tape, h0, c0, two);
    // States past `c`, slot-major: slot `k` holds `extra` blocks of `[B, H]`.
    let mut xs = vec![T::zero(); slots * extra * bh];
    let mut act = vec![T::zero(); tape_steps * b * kw];
    let mut h_pre = vec![T::zero(); b * hw];
    let mut h_masked = vec![T::zero(); if reg.state_mask.is_some() { bh } else { 0 }];
    if let Some(m) = reg.state_mask {
        mask_initial(&mut h_masked, h0, m);
    }
    let mut out = vec![T::zero(); steps * bh];

    let members = if hw > 0 { plan(&sw, hw) } else { 1 };
    let views = CustomForward {
        cell,
        sw,
        w,
        reg,
        keep_tape,
        x_pre: &x_pre,
        hs: RowsMut::new(&mut hs, h),
        cs: RowsMut::new(&mut cs, h),
        xs: RowsMut::new(&mut xs, h),
        act: RowsMut::new(&mut act, kw),
        pre: RowsMut::new(&mut h_pre, hw.max(1)),
        masked: RowsMut::new(&mut h_masked, h),
        out: RowsMut::new(&mut out, h),
    };
    threads::team(members, |member, size, barrier| {
        let units = split_units(h, size)[member].clone();
        let packed = (hw > 0).then(|| Packed::rows_of(w.w_hh, h_gates, h, units.clone(), b));
        for s in 0..steps {
            // SAFETY: the products write only their member's units of `h_pre` and read the
            // entering state, which nobody writes until the next barrier; between the two
            // barriers member 0 alone touches the buffers.
            if let Some(packed) = &packed {
                unsafe { views.product(packed, s) };
            }
            barrier.wait();
            if member == 0 {
                // SAFETY: the other members wait at the barrier below.
                unsafe { views.cell_step(s) };
            }
            barrier.wait();
        }
    });

    let (h_last, c_last) = final_states(&sw, keep_tape, &hs, &cs, two);
    DirOutput {
        out,
        h_last,
        c_last,
        tape: keep_tape.then_some(DirTape {
            act,
            aux: xs,
            hs,
            cs,
        }),
    }
}

/// The buffers a compiled cell's forward team shares: the members split each step's product
/// by units, member 0 runs the cell's program on whole rows.
#[derive(Clone, Copy)]
struct CustomForward<'a, T> {
    cell: &'a CompiledCell,
    sw: Sweep<'a>,
    w: DirWeights<'a, T>,
    reg: DirReg<'a, T>,
    keep_tape: bool,
    x_pre: &'a [T],
    hs: RowsMut<'a, T>,
    cs: RowsMut<'a, T>,
    xs: RowsMut<'a, T>,
    act: RowsMut<'a, T>,
    pre: RowsMut<'a, T>,
    masked: RowsMut<'a, T>,
    out: RowsMut<'a, T>,
}

impl<T: Scalar> CustomForward<'_, T> {
    /// This member's units (those of its `packed` slice) of step `s`'s recurrent
    /// pre-activations, `b_hh` included.
    ///
    /// # Safety
    /// Every member calls it for the same `s` with its own units; nobody writes the entering
    /// state meanwhile.
    unsafe fn product(&self, packed: &Packed<T>, s: usize) {
        let (sw, w) = (&self.sw, self.w);
        let (b, h) = (sw.batch, sw.hidden);
        let hw = sw.cell.h_gate_count() * h;
        let rd = state_slots(sw, self.keep_tape, s, sw.time(s)).0;
        // SAFETY: the contract.
        unsafe {
            let h_in = match self.reg.state_mask {
                Some(_) => self.masked.read(),
                None => self.hs.read().skip(rd * b),
            };
            assert!(h_in.holds(b, h) && self.pre.holds(b, packed.col_end()));
            // Onto `b_hh` directly, not onto copies of it in `pre` (same bits, see `project`).
            let b_hh = w.bias.map(|(_, b_hh)| b_hh);
            packed.product_raw_from(h_in.ptr(), h, b, self.pre.ptr(), hw, b_hh)
        }
    }

    /// Step `s`'s cell program on whole rows, then zoneout, the next masked state and the
    /// output rows.
    ///
    /// # Safety
    /// No other thread touches the buffers meanwhile.
    unsafe fn cell_step(&self, s: usize) {
        let (sw, reg, cell) = (&self.sw, self.reg, self.cell);
        let (b, h) = (sw.batch, sw.hidden);
        let (xw, hw) = (sw.cell.gate_count() * h, sw.cell.h_gate_count() * h);
        let extra = sw.cell.num_states().saturating_sub(2);
        let (bh, kw) = (b * h, cell.tape_width() * h);
        let t = sw.time(s);
        let (rd, wr) = state_slots(sw, self.keep_tape, s, t);
        let active = Active {
            lengths: sw.lengths,
            t,
        };
        let all = 0..h;
        // SAFETY: the contract.
        unsafe {
            let (h_prev, h_next) = (self.hs.read().skip(rd * b), self.hs.skip(wr * b));
            let x_t = Rows::new(self.x_pre, xw).row(t * b, 0, b * xw);
            let pre = self.pre.read().row(0, 0, b * hw);
            let tape_t: &mut [T] = if self.keep_tape {
                self.act.row_mut(t * b, 0, b * kw)
            } else {
                &mut []
            };
            let hp = h_prev.row(0, 0, bh);
            let hn = h_next.row_mut(0, 0, bh);
            if sw.cell.num_states() >= 2 {
                let (c_prev, c_next) = (self.cs.read().skip(rd * b), self.cs.skip(wr * b));
                let mut prev = vec![hp, c_prev.row(0, 0, bh)];
                let mut next = vec![hn, c_next.row_mut(0, 0, bh)];
                for e in 0..extra {
                    prev.push(self.xs.read().row((rd * extra + e) * b, 0, bh));
                    next.push(self.xs.row_mut((wr * extra + e) * b, 0, bh));
                }
                cell.forward_step(h, active, x_t, pre, self.w.units, &prev, &mut next, tape_t);
                if let Some(z) = reg.zoneout {
                    zone(active, h, all.clone(), b, c_prev, c_next, |k| {
                        z.cell(t, bh, k)
                    });
                }
            } else {
                cell.forward_step(h, active, x_t, pre, self.w.units, &[hp], &mut [hn], tape_t);
            }
            if let Some(z) = reg.zoneout {
                zone(active, h, all.clone(), b, h_prev, h_next, |k| {
                    z.hidden(t, bh, k)
                });
            }
            if let Some(m) = reg.state_mask {
                combine(all.clone(), b, self.masked, h_next.read(), |d, v, k| {
                    *d = v * m[k]
                });
            }
            emit(active, all, b, h_next.read(), sw.out_rows(self.out, t));
        }
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
    let h_gates = sw.cell.h_gate_count();
    let two = sw.cell.num_states() >= 2;
    let extra = sw.cell.num_states().saturating_sub(2);
    let bh = b * h;
    let bias_len = if w.bias.is_some() { xw + hw } else { 0 };
    let (g_weights, g_units) = grad.split_at_mut(xw * inp + hw * h + bias_len);

    // State gradients in two slots each: the step reads one and writes the other, and the
    // product then adds into the one written (no swap: the team holds views of both).
    let mut dh = vec![T::zero(); 2 * bh];
    let mut dc = vec![T::zero(); if two { 2 * bh } else { 0 }];
    // The internal states' gradients, two slots of `extra` blocks; their final values get none.
    let mut dxs = vec![T::zero(); 2 * extra * bh];
    if let Some(g) = dh_n {
        dh[..bh].copy_from_slice(g);
    }
    if let (true, Some(g)) = (two, dc_n) {
        dc[..bh].copy_from_slice(g);
    }
    let mut dgx = vec![T::zero(); steps * b * xw];
    let mut dgh = vec![T::zero(); steps * b * hw];
    let zoned = reg.zoneout.is_some();
    let mut direct_h = vec![T::zero(); if zoned { bh } else { 0 }];
    let mut direct_c = vec![T::zero(); if zoned && two { bh } else { 0 }];
    let mut rec = vec![T::zero(); if reg.state_mask.is_some() { bh } else { 0 }];

    let members = if hw > 0 { plan(&sw, hw) } else { 1 };
    let g_units_len = g_units.len();
    let views = CustomBackward {
        cell,
        sw,
        w,
        tape,
        reg,
        d_out,
        dh: RowsMut::new(&mut dh, h),
        dc: RowsMut::new(&mut dc, h),
        dxs: RowsMut::new(&mut dxs, h),
        dgx: RowsMut::new(&mut dgx, xw),
        dgh: RowsMut::new(&mut dgh, hw.max(1)),
        direct_h: RowsMut::new(&mut direct_h, h),
        direct_c: RowsMut::new(&mut direct_c, h),
        g_units: RowsMut::new(g_units, 1),
        g_units_len,
    };
    let rec_v = RowsMut::new(&mut rec, h);
    threads::team(members, |member, size, barrier| {
        let units = split_units(h, size)[member].clone();
        let packed = (hw > 0).then(|| Packed::cols_of(w.w_hh, h_gates, h, units.clone(), b));
        for (i, s) in (0..steps).rev().enumerate() {
            let t = sw.time(s);
            if member == 0 {
                // SAFETY: the other members wait at the barrier below.
                unsafe { views.cell_step(i, t) };
            }
            barrier.wait();
            // SAFETY: every member reads all of step `t`'s recurrent gate gradients, which
            // nobody writes now, and writes only its own units of the state gradients.
            unsafe {
                let nxt = ((i + 1) % 2) * b;
                let (dh_next, dc_next) = (views.dh.skip(nxt), views.dc.skip(nxt));
                if let Some(packed) = &packed {
                    let (a, mask) = (views.dgh.read().skip(t * b), reg.state_mask);
                    add_recurrent_grad(&[(packed, a)], b, units.clone(), mask, rec_v, dh_next);
                }
                if zoned {
                    let dc = two.then(|| (dc_next, views.direct_c.read()));
                    add_direct_paths(units.clone(), b, dh_next, views.direct_h.read(), dc);
                }
            }
            barrier.wait();
        }
    });
    let fin = (steps % 2) * bh;
    let dh_0 = dh[fin..fin + bh].to_vec();
    let dc_0 = two.then(|| dc[fin..fin + bh].to_vec());

    let rows = steps * b;
    let bias = w.bias.is_some();
    weight_grads(
        sw,
        x,
        &tape.hs,
        reg,
        (&dgx, xw),
        &[Mat::new(&dgh, rows, hw)],
        bias,
        g_weights,
    );
    a_b(
        dx,
        inp,
        false,
        Mat::new(&dgx, rows, xw),
        Mat::new(w.w_ih, xw, inp),
    );
    (dh_0, dc_0)
}
