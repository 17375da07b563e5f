//! Launchers of the per-time-step kernels: the forward step (recurrent product fused with the
//! gate nonlinearities) and the reverse BPTT step, for the LSTM and the GRU
//! (`shaders/step_*.wgsl` with `shaders/{lstm,gru}_*.wgsl` appended).
//!
//! The projected LSTM (`proj_size = P`) takes two dispatches a step each way, both the same
//! tiled step kernels with another cell part (`shaders/proj_*.wgsl`): forward, the gate kernel
//! (product depth P) writes `m = o*tanh(c')` and the projection kernel `h' = m·W_hrᵀ`; backward,
//! the projection's kernel gathers the gradient reaching `h` (`d_proj`, over P features) and
//! the LSTM's gate kernel takes `dm = d_proj·W_hr` as its `dh`.

use super::context::{count, Access, GBuf, Kernel, Recorder, Shader};
use crate::config::{CellKind, RnnConfig};
use crate::error::Result;

/// Where one direction's tape lives in its buffer: `[act | aux | m | h slots | c slots]` (`m`
/// only with projections). With a tape every step keeps its activations and state slot `T+1`;
/// without one a single step of scratch and two ping-pong slots suffice. `h` has `S` features
/// (`P` with projections, else `H`), `c`, `aux` and `m` have `H`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TapeLayout {
    pub bh: usize,
    /// `B*S`: one `h` slot.
    pub bs: usize,
    pub gates: usize,
    pub kept_steps: usize,
    pub slots: usize,
    pub lstm: bool,
    pub projected: bool,
}

impl TapeLayout {
    pub fn new(cfg: &RnnConfig, batch: usize, steps: usize, keep: bool) -> Self {
        TapeLayout {
            bh: batch * cfg.hidden_size,
            bs: batch * cfg.state_size(),
            gates: cfg.cell.gate_count(),
            kept_steps: if keep { steps } else { 1 },
            slots: if keep { steps + 1 } else { 2 },
            lstm: cfg.cell == CellKind::Lstm,
            projected: cfg.proj_size > 0,
        }
    }
    /// Activations `[B, G*H]` of kept step `t`.
    pub fn act(&self, t: usize) -> usize {
        t * self.bh * self.gates
    }
    /// `tanh(c')` (LSTM) or `W_hn h + b_hn` (GRU), `[B, H]`, of kept step `t`.
    pub fn aux(&self, t: usize) -> usize {
        self.kept_steps * self.bh * self.gates + t * self.bh
    }
    /// `m = o*tanh(c')`, `[B, H]`, of kept step `t` (projected LSTM).
    pub fn m(&self, t: usize) -> usize {
        self.kept_steps * self.bh * (self.gates + 1) + t * self.bh
    }
    pub fn h(&self, slot: usize) -> usize {
        let m_steps = if self.projected { self.kept_steps } else { 0 };
        self.kept_steps * self.bh * (self.gates + 1) + m_steps * self.bh + slot * self.bs
    }
    pub fn c(&self, slot: usize) -> usize {
        self.h(self.slots) + slot * self.bh
    }
    pub fn len(&self) -> usize {
        self.h(self.slots) + if self.lstm { self.slots * self.bh } else { 0 }
    }
}

/// Threads per workgroup of a step kernel: `wg_j` units by `wg_b` thread rows, each thread
/// covering 4 batch rows. Small layers get small workgroups so that more of them run at once.
fn tile(hidden: usize, batch: usize) -> (u32, u32) {
    let wg_j = match hidden {
        h if h >= 256 => 32,
        h if h >= 32 => 16,
        _ => 8,
    };
    let wg_b = match batch {
        b if b >= 16 => 4,
        b if b >= 8 => 2,
        _ => 1,
    };
    (wg_j, wg_b)
}

fn kernel(shader: Shader, storage: &'static [Access], hidden: usize, batch: usize) -> Kernel {
    let (wg_j, wg_b) = tile(hidden, batch);
    Kernel {
        shader,
        entry: "main",
        storage,
        constants: vec![("WG_J", wg_j), ("WG_B", wg_b), ("BK", 16)],
    }
}

fn groups(hidden: usize, batch: usize) -> [u32; 3] {
    let (wg_j, wg_b) = tile(hidden, batch);
    [
        count(hidden, wg_j as usize),
        count(batch, 4 * wg_b as usize),
        1,
    ]
}

/// The buffers and sizes shared by every forward step of one direction.
pub(crate) struct ForwardSweep<'a> {
    pub cell: CellKind,
    pub batch: usize,
    pub hidden: usize,
    pub weights: &'a GBuf,
    /// Offset of `W_hh` in `weights`.
    pub w_hh: usize,
    /// Offset of `b_hn` (GRU with biases).
    pub b_hn: Option<usize>,
    pub x_pre: &'a GBuf,
    pub lengths: &'a GBuf,
    pub tape: &'a GBuf,
    pub layout: TapeLayout,
    /// Features of `h`: the recurrent product's depth (`P` with projections, else `H`).
    pub state: usize,
    /// Offset of `W_hr` in `weights` (projected LSTM).
    pub w_hr: Option<usize>,
    /// The layer's `[T, B, ld]` output and this direction's first column.
    pub out: &'a GBuf,
    pub out_ld: usize,
    pub out_col: usize,
    pub keep_tape: bool,
}

/// Queues forward step `t`, reading state slot `read` and writing slot `write`; `kept` is the
/// activation slot (`t` with a tape).
pub(crate) fn forward_step(
    rec: &mut Recorder,
    s: &ForwardSweep,
    t: usize,
    (read, write): (usize, usize),
    kept: usize,
) -> Result<()> {
    const STORAGE: &[Access] = &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
    ];
    let shader = match s.cell {
        CellKind::Gru => Shader::GruForward,
        _ => Shader::LstmForward,
    };
    let (b, h, l) = (s.batch, s.hidden, &s.layout);
    let mut flags = u32::from(s.b_hn.is_some()) | if s.keep_tape { 2 } else { 0 };
    if s.w_hr.is_some() {
        flags |= 4;
    }
    let out_off = t * b * s.out_ld + s.out_col;
    let params = [
        b as u32,
        h as u32,
        t as u32,
        flags,
        s.w_hh as u32,
        s.b_hn.unwrap_or(0) as u32,
        (t * b * l.gates * h) as u32,
        l.act(kept) as u32,
        l.aux(kept) as u32,
        l.h(read) as u32,
        l.h(write) as u32,
        l.c(read) as u32,
        l.c(write) as u32,
        out_off as u32,
        s.out_ld as u32,
        s.state as u32,
        l.m(kept) as u32,
    ];
    let buffers = [s.weights, s.x_pre, s.lengths, s.tape, s.out];
    rec.dispatch(
        &kernel(shader, STORAGE, h, b),
        &buffers,
        &params,
        groups(h, b),
    )?;
    let Some(w_hr) = s.w_hr else {
        return Ok(());
    };
    // h'[B,P] = m·W_hrᵀ: the step kernel with G = 1 over the P features, depth H.
    let p = s.state;
    let params = [
        b as u32,
        p as u32,
        t as u32,
        0,
        w_hr as u32,
        0,
        0,
        0,
        0,
        l.m(kept) as u32,
        l.h(write) as u32,
        0,
        0,
        out_off as u32,
        s.out_ld as u32,
        h as u32,
        0,
        l.h(read) as u32,
    ];
    rec.dispatch(
        &kernel(Shader::ProjForward, STORAGE, p, b),
        &buffers,
        &params,
        groups(p, b),
    )
}

/// The buffers and sizes shared by every backward step of one direction.
pub(crate) struct BackwardSweep<'a> {
    pub cell: CellKind,
    pub steps: usize,
    pub batch: usize,
    pub hidden: usize,
    pub weights: &'a GBuf,
    pub w_hh: usize,
    pub lengths: &'a GBuf,
    pub tape: &'a GBuf,
    pub layout: TapeLayout,
    /// Gradient of the layer's `[T, B, ld]` output and this direction's first column.
    pub d_out: Option<(&'a GBuf, usize, usize)>,
    /// `[T, B, G*H]` input-side gate gradients, then (GRU) the recurrent-side ones.
    pub dg: &'a GBuf,
    /// `[dh | dc]`, `[B, H]` each (projected: `dh` is a scratch row that stays zero).
    pub carry: &'a GBuf,
    pub proj: Option<ProjSweep<'a>>,
}

/// What a projected LSTM's backward sweep adds.
pub(crate) struct ProjSweep<'a> {
    /// `P`.
    pub proj: usize,
    /// Offset of `W_hr` in `weights`.
    pub w_hr: usize,
    /// Where `d_proj` `[T, B, P]` (the gradient reaching each step's `h`) starts in `dg`.
    pub d_proj: usize,
    /// `[B, P]`: the gradient of `h` carried from step to step.
    pub carry_h: &'a GBuf,
}

impl BackwardSweep<'_> {
    /// Where the recurrent-side gate gradients start in `dg`.
    pub fn rec_base(&self) -> usize {
        match self.cell {
            CellKind::Gru => self.steps * self.batch * self.cell.gate_count() * self.hidden,
            _ => 0,
        }
    }
}

/// What one backward dispatch does.
pub(crate) enum BackwardAt {
    /// Step `t`, entering state slot `enter`; `prev` is the time step processed just before
    /// (whose gate gradients feed the recurrent product).
    Step {
        t: usize,
        enter: usize,
        prev: Option<usize>,
    },
    /// After the last step: only the recurrent product of step `prev`, leaving dh in the carry.
    Final { prev: usize },
}

pub(crate) fn backward_step(rec: &mut Recorder, s: &BackwardSweep, at: BackwardAt) -> Result<()> {
    const STORAGE: &[Access] = &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
    ];
    let shader = match s.cell {
        CellKind::Gru => Shader::GruBackward,
        _ => Shader::LstmBackward,
    };
    let (b, h, l) = (s.batch, s.hidden, &s.layout);
    let gh = l.gates * h;
    let (t, enter, prev, fin) = match at {
        BackwardAt::Step { t, enter, prev } => (t, enter, prev, false),
        BackwardAt::Final { prev } => (0, 0, Some(prev), true),
    };
    let mut flags = u32::from(prev.is_some());
    let (d_out, dout_off, dout_ld) = match s.d_out {
        Some((buf, ld, col)) => {
            flags |= 2;
            (buf, t * b * ld + col, ld)
        }
        None => (s.lengths, 0, 0),
    };
    if fin {
        flags |= 4;
    }
    let state = if l.lstm { l.c(enter) } else { l.h(enter) };
    let dg_prev = prev.unwrap_or(0) * b * gh;
    let Some(pj) = &s.proj else {
        let rec_base = s.rec_base();
        let params = [
            b as u32,
            h as u32,
            t as u32,
            flags,
            s.w_hh as u32,
            l.act(t) as u32,
            l.aux(t) as u32,
            state as u32,
            dout_off as u32,
            dout_ld as u32,
            (t * b * gh) as u32,
            dg_prev as u32,
            rec_base as u32,
            rec_base as u32,
            (b * h) as u32,
            gh as u32,
        ];
        return rec.dispatch(
            &kernel(shader, STORAGE, h, b),
            &[s.weights, s.lengths, s.tape, d_out, s.dg, s.carry],
            &params,
            groups(h, b),
        );
    };
    // Projected: dh[B,P] = carry_h + dg(prev)·W_hh[4H,P] + d_out, which becomes d_proj[t].
    let p = pj.proj;
    let d_proj = pj.d_proj + t * b * p;
    let params = [
        b as u32,
        p as u32,
        t as u32,
        flags,
        s.w_hh as u32,
        0,
        0,
        0,
        dout_off as u32,
        dout_ld as u32,
        d_proj as u32,
        dg_prev as u32,
        0,
        0,
        0,
        gh as u32,
    ];
    rec.dispatch(
        &kernel(Shader::ProjBackward, STORAGE, p, b),
        &[s.weights, s.lengths, s.tape, d_out, s.dg, pj.carry_h],
        &params,
        groups(p, b),
    )?;
    if fin {
        return Ok(());
    }
    // Then the LSTM's gate backward with dh = dm = d_proj[t]·W_hr[P,H] (depth P).
    let params = [
        b as u32,
        h as u32,
        t as u32,
        1,
        pj.w_hr as u32,
        l.act(t) as u32,
        l.aux(t) as u32,
        state as u32,
        0,
        0,
        (t * b * gh) as u32,
        d_proj as u32,
        0,
        0,
        (b * h) as u32,
        p as u32,
    ];
    rec.dispatch(
        &kernel(shader, STORAGE, h, b),
        &[s.weights, s.lengths, s.tape, s.lengths, s.dg, s.carry],
        &params,
        groups(h, b),
    )
}
