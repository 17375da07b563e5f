//! Custom recurrent cells described as data and compiled to fused element-wise step programs.
//!
//! A cell description (JSON, format in `notes/cell_dsl.md`) is a DAG over the step's inputs:
//! the gate pre-activations of the input and recurrent projections (`xg[k]`, `hg[k]`, biases
//! included), the previous states and per-unit parameters. [`CellSpec`] parses and validates it;
//! [`CompiledCell::compile`] turns it, once, into
//! - a forward program (new states, plus the values the backward pass needs on the tape),
//! - an inference program (no tape), and
//! - a backward program derived by symbolic reverse-mode differentiation of the DAG.
//!
//! The matrix products stay in the sweep; these programs replace the fused gate kernels of
//! `gates`. Each program is a list of row-wide ops (see `program` and `eval`): per row of the
//! batch, each op is one vectorised loop over the `H` units, so no per-element interpretation.
//!
//! Row reductions (`sum`, `mean` over the `H` units, from which the DSL builds variance and layer
//! normalisation) are the one kind of op that couples units: a reduction op sums its row once
//! and fills the result back, one pass; the derivative of a reduction is the same reduction of
//! the adjoint, so the backward couples the row's units with one pass too. Reductions are taped
//! rather than recomputed. Domains are fixed so that no op gives inf or NaN from finite input:
//! `log` clamps its argument at [`LOG_FLOOR`], division keeps `|denominator| >= DIV_EPS`, `sqrt`
//! clamps at 0 (the gradient is 0 where an argument is clamped).
//!
//! Tape layout: `[B, K*H]` per step (`K = tape_width()`): row `b` holds `K` consecutive blocks
//! of `H`; block `k` is the `k`-th saved forward value in the order of the (simplified) DAG.
//! Saved are the activation outputs the derivative uses and the gate pre-activations it reads
//! directly (e.g. the GRU's `hg[2] = W_hn h + b_hn`); cheap values such as the LSTM's `c'` are
//! recomputed instead. Rows past their sequence's end hold zeros.
//!
//! Scratch: the step functions keep a per-thread scratch buffer (`scratch_rows() * H` elements
//! plus a slot table of a few pointers) that grows on a thread's first call and is reused after,
//! so a sweep's steps do not allocate. Nothing needs to be passed in.
//!
//! Shapes are the caller's contract: a slice of the wrong length panics (like an out-of-bounds
//! index) before anything is read; descriptions, the user's input, only ever give typed errors.

mod autodiff;
mod eval;
mod graph;
mod parse;
mod program;
mod reference;
pub mod registry;

pub use crate::gates::Active;
pub use graph::{DIV_EPS, LOG_FLOOR};
pub use parse::{
    is_name, BinaryOp, CellDesc, CellSpec, Expr, NodeDesc, ParamInit, UnaryOp, UnitParam,
    MAX_GATES, MAX_NAME_LEN, MAX_NODES, MAX_PARAMS, MAX_STATES,
};
pub use registry::{register_cell, CellId};

use crate::error::Result;
use crate::scalar::Scalar;
use graph::{Graph, Leaf, Node, NodeId, Un};
use program::{Access, Buf, Kind, Layout, Loc, Op, Program};
use std::collections::HashMap;

impl CellSpec {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// State names; `states()[0]` is the hidden state (output, recurrent input).
    pub fn states(&self) -> &[String] {
        &self.states
    }
    /// `Gx`: gate blocks of the input projection.
    pub fn x_gates(&self) -> usize {
        self.x_gates
    }
    /// `Gh`: gate blocks of the recurrent projection (0: the cell has no `W_hh`).
    pub fn h_gates(&self) -> usize {
        self.h_gates
    }
    pub fn unit_params(&self) -> &[UnitParam] {
        &self.unit_params
    }
    /// The validated DAG, in the description's order.
    pub fn nodes(&self) -> &[Expr] {
        &self.nodes
    }
    /// Node giving the new value of each state, in `states()` order.
    pub fn outputs(&self) -> &[usize] {
        &self.outputs
    }
}

/// A cell compiled to its step programs. Immutable and `Send + Sync`: build once per spec and
/// share it between threads.
#[derive(Debug, Clone)]
pub struct CompiledCell {
    spec: CellSpec,
    tape_width: usize,
    fwd_layout: Layout,
    bwd_layout: Layout,
    fwd: Program,
    fwd_idle: Program,
    infer: Program,
    infer_idle: Program,
    bwd: Program,
    bwd_idle: Program,
    /// Registers of the largest program: the per-thread scratch holds `regs * H` elements.
    regs: usize,
}

const FWD_READ: [Buf; 4] = [Buf::X, Buf::Hp, Buf::Prev, Buf::Param];
const BWD_READ: [Buf; 4] = [Buf::Prev, Buf::Param, Buf::Tape, Buf::DNext];

fn op(kind: Kind, dst: Loc, src: Loc) -> Op {
    Op {
        kind,
        dst,
        dst2: None,
        src: [src; 4],
    }
}

/// Program for rows past their sequence's end: slots `0..count` of `copy.0` copied to those of
/// `copy.1`, every `zero` slot cleared.
fn idle_program(layout: &Layout, copy: (Buf, Buf), count: usize, zero: &[(Buf, usize)]) -> Program {
    let mut p = Program::default();
    let at = |b: Buf, k: usize| Loc::Tab(layout.index(b, k).unwrap_or(u32::MAX));
    for s in 0..count {
        p.ops.push(op(Kind::Copy, at(copy.1, s), at(copy.0, s)));
    }
    for &(b, n) in zero {
        for k in 0..n {
            let l = at(b, k);
            p.ops.push(op(Kind::Fill(0.0), l, l));
        }
    }
    p
}

fn build_graph(spec: &CellSpec) -> (Graph, Vec<NodeId>) {
    let mut g = Graph::default();
    let mut ids: Vec<NodeId> = Vec::with_capacity(spec.nodes.len());
    for e in &spec.nodes {
        let id = match *e {
            Expr::Xg(k) => g.leaf(Leaf::Xg(k as u32)),
            Expr::Hg(k) => g.leaf(Leaf::Hg(k as u32)),
            Expr::State(k) => g.leaf(Leaf::State(k as u32)),
            Expr::Param(k) => g.leaf(Leaf::Param(k as u32)),
            Expr::Const(v) => g.constant(v),
            Expr::Unary(op, a) => {
                let a = ids[a];
                match op {
                    UnaryOp::Neg => g.affine(-1.0, 0.0, a),
                    UnaryOp::OneMinus => g.affine(-1.0, 1.0, a),
                    UnaryOp::Sigmoid => g.unary(Un::Sigmoid, a),
                    UnaryOp::Tanh => g.unary(Un::Tanh, a),
                    UnaryOp::Relu => g.unary(Un::Relu, a),
                    UnaryOp::Square => g.unary(Un::Square, a),
                    UnaryOp::Exp => g.unary(Un::Exp, a),
                    UnaryOp::Log => g.unary(Un::Log, a),
                    UnaryOp::Sqrt => g.unary(Un::Sqrt, a),
                    UnaryOp::Softplus => g.unary(Un::Softplus, a),
                    UnaryOp::Sum => g.unary(Un::Sum, a),
                    UnaryOp::Mean => g.unary(Un::Mean, a),
                }
            }
            Expr::Binary(op, a, b) => {
                let (a, b) = (ids[a], ids[b]);
                match op {
                    BinaryOp::Add => g.add(a, b),
                    BinaryOp::Sub => g.binary(graph::Bin::Sub, a, b),
                    BinaryOp::Mul => g.mul(a, b),
                    BinaryOp::Div => g.binary(graph::Bin::Div, a, b),
                    BinaryOp::Max => g.binary(graph::Bin::Max, a, b),
                    BinaryOp::Min => g.binary(graph::Bin::Min, a, b),
                }
            }
        };
        ids.push(id);
    }
    let outs = spec.outputs.iter().map(|&i| ids[i]).collect();
    (g, outs)
}

impl CompiledCell {
    /// Parses, validates and compiles a JSON description.
    pub fn from_json(text: &str) -> Result<Self> {
        Self::compile(CellSpec::from_json(text)?)
    }

    /// Compiles a validated description: simplifies the DAG (constant folding, shared
    /// sub-expressions, dead nodes dropped), differentiates it, chooses the tape and lowers the
    /// forward, inference and backward programs.
    pub fn compile(spec: CellSpec) -> Result<Self> {
        let (gx, gh, ns, np) = (
            spec.x_gates,
            spec.h_gates,
            spec.states.len(),
            spec.unit_params.len(),
        );
        let (mut g, outs) = build_graph(&spec);
        let d = autodiff::differentiate(&mut g, &outs, (gx, gh, ns, np))?;
        let zero = g.constant(0.0);
        let mut bwd_roots = Vec::new();
        for (buf, adj) in [
            (Buf::DX, &d.d_xg),
            (Buf::DH, &d.d_hg),
            (Buf::DPrev, &d.d_state),
        ] {
            for (k, a) in adj.iter().enumerate() {
                bwd_roots.push((a.unwrap_or(zero), buf, k));
            }
        }
        for (k, a) in d.d_param.iter().enumerate() {
            if let Some(a) = *a {
                if g.as_const(a) != Some(0.0) {
                    bwd_roots.push((a, Buf::DParam, k));
                }
            }
        }
        let root_nodes: Vec<NodeId> = bwd_roots.iter().map(|r| r.0).collect();
        let taped = program::choose_tape(&g, &root_nodes);
        let nk = taped.len();

        let fwd_layout = Layout::new(vec![
            (Buf::X, gx),
            (Buf::Hp, gh),
            (Buf::Prev, ns),
            (Buf::Param, np),
            (Buf::Tape, nk),
            (Buf::Next, ns),
        ]);
        let bwd_layout = Layout::new(vec![
            (Buf::Prev, ns),
            (Buf::Param, np),
            (Buf::Tape, nk),
            (Buf::DNext, ns),
            (Buf::DX, gx),
            (Buf::DH, gh),
            (Buf::DPrev, ns),
            (Buf::DParam, np),
        ]);
        let mut fwd_inputs = HashMap::new();
        let mut bwd_inputs = HashMap::new();
        for id in 0..g.len() as NodeId {
            if let Node::Leaf(l) = g.node(id) {
                let (buf, k) = match l {
                    Leaf::Xg(k) => (Buf::X, k),
                    Leaf::Hg(k) => (Buf::Hp, k),
                    Leaf::State(k) => (Buf::Prev, k),
                    Leaf::Param(k) => (Buf::Param, k),
                    Leaf::DNext(k) => (Buf::DNext, k),
                };
                if buf != Buf::DNext {
                    fwd_inputs.insert(id, (buf, k as usize));
                }
                // The backward step reads gate pre-activations only from the tape.
                if !matches!(buf, Buf::X | Buf::Hp) {
                    bwd_inputs.insert(id, (buf, k as usize));
                }
            }
        }
        for (k, &id) in taped.iter().enumerate() {
            bwd_inputs.insert(id, (Buf::Tape, k));
        }
        let out_roots: Vec<_> = outs
            .iter()
            .enumerate()
            .map(|(s, &id)| (id, Buf::Next, s))
            .collect();
        let mut fwd_roots = out_roots.clone();
        fwd_roots.extend(taped.iter().enumerate().map(|(k, &id)| (id, Buf::Tape, k)));

        let fwd = program::lower(&g, &fwd_layout, &fwd_inputs, &fwd_roots)?;
        let infer = program::lower(&g, &fwd_layout, &fwd_inputs, &out_roots)?;
        let bwd = program::lower(&g, &bwd_layout, &bwd_inputs, &bwd_roots)?;
        let fwd_idle = idle_program(&fwd_layout, (Buf::Prev, Buf::Next), ns, &[(Buf::Tape, nk)]);
        let infer_idle = idle_program(&fwd_layout, (Buf::Prev, Buf::Next), ns, &[]);
        let bwd_idle = idle_program(
            &bwd_layout,
            (Buf::DNext, Buf::DPrev),
            ns,
            &[(Buf::DX, gx), (Buf::DH, gh)],
        );

        let fwd_access = Access {
            read: &FWD_READ,
            write: &[Buf::Tape, Buf::Next],
        };
        let infer_access = Access {
            read: &FWD_READ,
            write: &[Buf::Next],
        };
        let bwd_access = Access {
            read: &BWD_READ,
            write: &[Buf::DX, Buf::DH, Buf::DPrev, Buf::DParam],
        };
        fwd.validate(&fwd_layout, &fwd_access)?;
        fwd_idle.validate(&fwd_layout, &fwd_access)?;
        infer.validate(&fwd_layout, &infer_access)?;
        infer_idle.validate(&fwd_layout, &infer_access)?;
        bwd.validate(&bwd_layout, &bwd_access)?;
        bwd_idle.validate(&bwd_layout, &bwd_access)?;
        let regs = [&fwd, &infer, &bwd]
            .iter()
            .map(|p| p.regs)
            .max()
            .unwrap_or(0);
        Ok(CompiledCell {
            spec,
            tape_width: nk,
            fwd_layout,
            bwd_layout,
            fwd,
            fwd_idle,
            infer,
            infer_idle,
            bwd,
            bwd_idle,
            regs,
        })
    }

    pub fn spec(&self) -> &CellSpec {
        &self.spec
    }

    /// Names of the row reductions the cell's description uses (`"mean"`, `"sum"`), each once:
    /// the ops that couple the units of a row.
    pub fn reductions(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for e in &self.spec.nodes {
            let name = match e {
                Expr::Unary(UnaryOp::Mean, _) => "mean",
                Expr::Unary(UnaryOp::Sum, _) => "sum",
                _ => continue,
            };
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// Floats saved per unit per step for the backward pass (the tape width `K`): a step's tape
    /// is `[B, K*H]`.
    pub fn tape_width(&self) -> usize {
        self.tape_width
    }

    /// Scratch registers of `H` elements the step functions use (per thread, allocated once).
    pub fn scratch_rows(&self) -> usize {
        self.regs
    }

    /// The compiled programs as text (forward, inference, backward), for inspection.
    #[doc(hidden)]
    pub fn listing(&self) -> String {
        format!(
            "forward:\n{}inference:\n{}backward:\n{}",
            program::listing(&self.fwd, &self.fwd_layout),
            program::listing(&self.infer, &self.fwd_layout),
            program::listing(&self.bwd, &self.bwd_layout),
        )
    }

    /// Rows of a step from the state slices, after checking every shape the programs rely on.
    fn check_states<T>(
        &self,
        h: usize,
        prev: &[&[T]],
        other: impl Iterator<Item = usize>,
    ) -> usize {
        let ns = self.spec.states.len();
        assert!(h > 0, "cellexpr: hidden size must be positive");
        assert_eq!(
            prev.len(),
            ns,
            "cellexpr: one previous-state slice per state"
        );
        let bh = prev[0].len();
        assert_eq!(
            bh % h,
            0,
            "cellexpr: state length {bh} is not a multiple of H = {h}"
        );
        for p in prev {
            assert_eq!(p.len(), bh, "cellexpr: previous states differ in length");
        }
        for o in other {
            assert_eq!(o, bh, "cellexpr: state slices differ in length");
        }
        bh / h
    }

    /// One forward step over `B` rows.
    ///
    /// `x_pre [B, Gx*H]` and `h_pre [B, Gh*H]` are the projections with their biases, `params
    /// [P*H]` the unit params back to back, `prev` one `[B, H]` slice per state and `next` one
    /// `[B, H]` slice per state for the new values. `tape [B, K*H]` receives what
    /// [`backward_step`](Self::backward_step) needs; pass an empty slice at inference (then
    /// nothing is saved). Rows with `active.row(b) == false` copy `prev` to `next` and write zeros
    /// to the tape.
    ///
    /// # Panics
    /// When a slice length does not match these shapes (`B` is taken from `prev[0]`) or `h == 0`.
    pub fn forward_step<T: Scalar>(
        &self,
        h: usize,
        active: Active,
        x_pre: &[T],
        h_pre: &[T],
        params: &[T],
        prev: &[&[T]],
        next: &mut [&mut [T]],
        tape: &mut [T],
    ) {
        let (gx, gh, np, nk) = self.sizes();
        assert_eq!(
            next.len(),
            self.spec.states.len(),
            "cellexpr: one next slice per state"
        );
        let rows = self.check_states(h, prev, next.iter().map(|n| n.len()));
        assert_eq!(
            x_pre.len(),
            rows * gx * h,
            "cellexpr: x_pre must be [B, Gx*H]"
        );
        assert_eq!(
            h_pre.len(),
            rows * gh * h,
            "cellexpr: h_pre must be [B, Gh*H]"
        );
        assert_eq!(params.len(), np * h, "cellexpr: params must be [P*H]");
        check_lengths(active, rows);
        let keep = !tape.is_empty();
        if keep {
            assert_eq!(tape.len(), rows * nk * h, "cellexpr: tape must be [B, K*H]");
        }
        if rows == 0 {
            return;
        }
        let (busy, idle) = if keep || nk == 0 {
            (&self.fwd, &self.fwd_idle)
        } else {
            (&self.infer, &self.infer_idle)
        };
        eval::with_scratch::<T, _>(|scr| {
            let t = &mut scr.table;
            t.clear();
            push_block(t, x_pre.as_ptr().cast_mut(), gx, h, gx * h);
            push_block(t, h_pre.as_ptr().cast_mut(), gh, h, gh * h);
            t.extend(prev.iter().map(|p| (p.as_ptr().cast_mut(), h)));
            push_block(t, params.as_ptr().cast_mut(), np, h, 0);
            // At inference the tape entries are never used (the inference programs were
            // validated without access to the tape).
            push_block(t, tape.as_mut_ptr(), nk, h, nk * h);
            t.extend(next.iter_mut().map(|n| (n.as_mut_ptr(), h)));
            debug_assert_eq!(t.len(), self.fwd_layout.len());
            self.run(scr, h, busy, idle, active, rows);
        });
    }

    /// One backward step over `B` rows, from the matching forward step's `params`, previous
    /// states and tape. The gate pre-activations are not needed: whatever the derivative uses of
    /// them is on the tape, so the sweep may drop `x_pre` and `h_pre` after the forward step.
    ///
    /// `d_next` holds the gradient of each new state `[B, H]` (output gradient included). On
    /// return `d_prev` holds the *direct* gradient of each previous state (the path through the
    /// recurrent product, `d_h_pre · W_hh`, is the sweep's to add to `d_prev[0]`), `d_x_pre
    /// [B, Gx*H]` and `d_h_pre [B, Gh*H]` the gradients of the pre-activations (which are also
    /// the bias gradients), and `d_params [P*H]` has the unit-param gradients *added*. Inactive
    /// rows pass `d_next` through to `d_prev` and get zero gate gradients.
    ///
    /// # Panics
    /// When a slice length does not match these shapes or `h == 0`.
    pub fn backward_step<T: Scalar>(
        &self,
        h: usize,
        active: Active,
        params: &[T],
        prev: &[&[T]],
        tape: &[T],
        d_next: &[&[T]],
        d_prev: &mut [&mut [T]],
        d_x_pre: &mut [T],
        d_h_pre: &mut [T],
        d_params: &mut [T],
    ) {
        let (gx, gh, np, nk) = self.sizes();
        let ns = self.spec.states.len();
        assert_eq!(d_next.len(), ns, "cellexpr: one d_next slice per state");
        assert_eq!(d_prev.len(), ns, "cellexpr: one d_prev slice per state");
        let lens = d_next.iter().map(|n| n.len());
        let rows = self.check_states(h, prev, lens.chain(d_prev.iter().map(|n| n.len())));
        assert_eq!(params.len(), np * h, "cellexpr: params must be [P*H]");
        assert_eq!(tape.len(), rows * nk * h, "cellexpr: tape must be [B, K*H]");
        assert_eq!(
            d_x_pre.len(),
            rows * gx * h,
            "cellexpr: d_x_pre must be [B, Gx*H]"
        );
        assert_eq!(
            d_h_pre.len(),
            rows * gh * h,
            "cellexpr: d_h_pre must be [B, Gh*H]"
        );
        assert_eq!(d_params.len(), np * h, "cellexpr: d_params must be [P*H]");
        check_lengths(active, rows);
        if rows == 0 {
            return;
        }
        eval::with_scratch::<T, _>(|scr| {
            let t = &mut scr.table;
            t.clear();
            t.extend(prev.iter().map(|p| (p.as_ptr().cast_mut(), h)));
            push_block(t, params.as_ptr().cast_mut(), np, h, 0);
            push_block(t, tape.as_ptr().cast_mut(), nk, h, nk * h);
            t.extend(d_next.iter().map(|p| (p.as_ptr().cast_mut(), h)));
            push_block(t, d_x_pre.as_mut_ptr(), gx, h, gx * h);
            push_block(t, d_h_pre.as_mut_ptr(), gh, h, gh * h);
            t.extend(d_prev.iter_mut().map(|n| (n.as_mut_ptr(), h)));
            push_block(t, d_params.as_mut_ptr(), np, h, 0);
            debug_assert_eq!(t.len(), self.bwd_layout.len());
            self.run(scr, h, &self.bwd, &self.bwd_idle, active, rows);
        });
    }

    fn sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.spec.x_gates,
            self.spec.h_gates,
            self.spec.unit_params.len(),
            self.tape_width,
        )
    }

    fn run<T: Scalar>(
        &self,
        scr: &mut eval::Scratch<T>,
        h: usize,
        busy: &Program,
        idle: &Program,
        active: Active,
        rows: usize,
    ) {
        let need = self.regs * h;
        if scr.regs.len() < need {
            scr.regs.resize(need, T::zero());
        }
        let frame = eval::Frame {
            table: &scr.table,
            regs: scr.regs.as_mut_ptr(),
            h,
        };
        // SAFETY: both programs passed `validate` against the layout the table was filled in
        // (`compile`); the callers checked every slice against `rows` and `h`, so each entry's
        // rows `0..rows` (stride included) and each register lie inside their buffers; the
        // mutable buffers are exclusively borrowed by the caller for this call and the read-only
        // ones are never written.
        unsafe { eval::run(&busy.ops, &idle.ops, active, rows, &frame) };
        scr.table.clear();
    }
}

fn check_lengths(active: Active, rows: usize) {
    if let Some(l) = active.lengths {
        assert!(l.len() >= rows, "cellexpr: one length per row");
    }
}

/// Pushes `count` slot-table entries `k*h` apart in row 0, `stride` apart between rows.
fn push_block<T>(
    t: &mut Vec<(*mut T, usize)>,
    base: *mut T,
    count: usize,
    h: usize,
    stride: usize,
) {
    t.extend((0..count).map(|k| (base.wrapping_add(k * h), stride)));
}
