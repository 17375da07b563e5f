//! Launchers of the per-time-step kernels: the forward step (recurrent product fused with the
//! gate nonlinearities) and the reverse BPTT step, for the LSTM and the GRU
//! (`shaders/step_*.wgsl` with `shaders/{lstm,gru}_*.wgsl` appended).

use super::context::{count, Access, GBuf, Kernel, Recorder, Shader};
use crate::config::CellKind;
use crate::error::Result;

/// Where one direction's tape lives in its buffer: `[act | aux | h slots | c slots]`.
/// With a tape every step keeps its activations and state slot `T+1`; without one a single step
/// of scratch and two ping-pong slots suffice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TapeLayout {
    pub bh: usize,
    pub gates: usize,
    pub kept_steps: usize,
    pub slots: usize,
    pub lstm: bool,
}

impl TapeLayout {
    pub fn new(cell: CellKind, batch: usize, hidden: usize, steps: usize, keep: bool) -> Self {
        TapeLayout {
            bh: batch * hidden,
            gates: cell.gate_count(),
            kept_steps: if keep { steps } else { 1 },
            slots: if keep { steps + 1 } else { 2 },
            lstm: cell == CellKind::Lstm,
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
    pub fn h(&self, slot: usize) -> usize {
        self.kept_steps * self.bh * (self.gates + 1) + slot * self.bh
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
    let flags = u32::from(s.b_hn.is_some()) | if s.keep_tape { 2 } else { 0 };
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
        (t * b * s.out_ld + s.out_col) as u32,
        s.out_ld as u32,
        0,
    ];
    rec.dispatch(
        &kernel(shader, STORAGE, h, b),
        &[s.weights, s.x_pre, s.lengths, s.tape, s.out],
        params,
        groups(h, b),
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
    /// `[dh | dc]`, `[B, H]` each.
    pub carry: &'a GBuf,
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
        (prev.unwrap_or(0) * b * gh) as u32,
        rec_base as u32,
        rec_base as u32,
        (b * h) as u32,
        0,
    ];
    rec.dispatch(
        &kernel(shader, STORAGE, h, b),
        &[s.weights, s.lengths, s.tape, d_out, s.dg, s.carry],
        params,
        groups(h, b),
    )
}
