//! Lowering of the expression graph to straight-line row programs.
//!
//! A program is a list of element-wise ops, each a loop over one row of `H` units. Values live
//! in *slots*: a gate column block of `x_pre`/`h_pre`, a state row, a unit-param vector, a tape
//! slot, an output row, or a scratch register of `H` elements. Lowering
//! - schedules only the nodes the roots need (dead nodes are skipped; available inputs stop the
//!   search, so taped values are read, not recomputed),
//! - fuses single-use intermediates into superinstructions (`sigmoid(a + b)`, `a*b + c`,
//!   `a*b + c*d`, `a*b*y*(1-y)`, `k*a*b + o`, ...) to save passes over the row,
//! - writes each result straight into its first destination (tape slot, new state, gradient
//!   output) and a second destination in the same loop, and
//! - allocates scratch registers by liveness, never giving an op's destination the slot of one of
//!   its sources.
//!
//! [`Program::validate`] re-checks the invariants the evaluator's raw-pointer accesses rely on.

use super::autodiff::internal;
use super::graph::{Bin, Graph, Leaf, Node, NodeId, Un};
use crate::error::Result;
use std::collections::{HashMap, HashSet};

/// The buffers a step reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Buf {
    /// `x_pre` gate block `k` of the row.
    X,
    /// `h_pre` gate block `k` of the row.
    Hp,
    /// Previous value of state `s`.
    Prev,
    /// Unit parameter `p` (the same for every row).
    Param,
    /// Tape slot `k` of the row.
    Tape,
    /// Gradient of the new value of state `s`.
    DNext,
    /// New value of state `s`.
    Next,
    DX,
    DH,
    DPrev,
    /// Unit-param gradient `p`, accumulated over rows (only [`Kind::Acc`] touches it).
    DParam,
}

/// Where an op reads or writes: a scratch register, or entry `i` of the direction's slot table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Loc {
    Reg(u32),
    Tab(u32),
}

/// The slot table of one direction: buffer blocks in a fixed order, `index(buf, k)` numbering
/// every `(buffer, slot)` pair. The step functions fill the table with row pointers in the same
/// order.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    blocks: Vec<(Buf, usize)>,
}

impl Layout {
    pub fn new(blocks: Vec<(Buf, usize)>) -> Self {
        Layout { blocks }
    }
    pub fn len(&self) -> usize {
        self.blocks.iter().map(|b| b.1).sum()
    }
    pub fn blocks(&self) -> &[(Buf, usize)] {
        &self.blocks
    }
    pub fn index(&self, buf: Buf, k: usize) -> Option<u32> {
        let mut base = 0;
        for &(b, n) in &self.blocks {
            if b == buf {
                return (k < n).then_some((base + k) as u32);
            }
            base += n;
        }
        None
    }
    fn buf_of(&self, i: u32) -> Option<Buf> {
        let mut i = i as usize;
        for &(b, n) in &self.blocks {
            if i < n {
                return Some(b);
            }
            i -= n;
        }
        None
    }
}

/// Element-wise op kinds. Operand letters refer to `src[0..arity]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// `d = c`
    Fill(f64),
    /// `d = a`
    Copy,
    /// `d = s * a + o`
    Affine(f64, f64),
    Sigmoid,
    Tanh,
    Relu,
    /// `d = a * a`
    Square,
    Exp,
    /// `d = ln(max(a, LOG_FLOOR))`
    Log,
    /// `d = sqrt(max(a, 0))`
    Sqrt,
    Softplus,
    /// `d[j] = sum_k a[k]` for every unit `j` of the row (a reduction, not element-wise)
    RowSum,
    /// `d[j] = mean_k a[k]`
    RowMean,
    Add,
    Sub,
    Mul,
    /// `d = a / b̂` (safe division, see `DIV_EPS`)
    Div,
    Max,
    Min,
    /// `d = b > LOG_FLOOR ? a / b : 0`
    DLog,
    /// `d = b > 0 ? a / (2b) : 0`
    DSqrt,
    /// `d = a * (1 - e^-b)`
    DSoftplus,
    /// `d = b >= 0 ? a : 0`
    MaskGe,
    /// `d = |b| >= DIV_EPS ? a / b : 0`
    DivMask,
    /// `d = a * b * (1 - b)`
    DSig,
    /// `d = a * (1 - b * b)`
    DTanh,
    /// `d = b > 0 ? a : 0`
    Mask,
    /// `d = sigmoid(a + b)`
    SigmoidAdd,
    TanhAdd,
    ReluAdd,
    /// `d = s * (a * b) + o`
    AffineMul(f64, f64),
    /// `d = a * b + c`
    Fma,
    /// `d = a * b * c * (1 - c)`
    DSigMul,
    /// `d = a * b * (1 - c * c)`
    DTanhMul,
    /// `d = a * b + c * e`
    Fma2,
    /// `d += a` (unit-param gradients)
    Acc,
}

impl Kind {
    pub fn arity(self) -> usize {
        match self {
            Kind::Fill(_) => 0,
            Kind::Copy
            | Kind::Affine(..)
            | Kind::Sigmoid
            | Kind::Tanh
            | Kind::Relu
            | Kind::Square
            | Kind::Exp
            | Kind::Log
            | Kind::Sqrt
            | Kind::Softplus
            | Kind::RowSum
            | Kind::RowMean
            | Kind::Acc => 1,
            Kind::Add
            | Kind::Sub
            | Kind::Mul
            | Kind::Div
            | Kind::Max
            | Kind::Min
            | Kind::DLog
            | Kind::DSqrt
            | Kind::DSoftplus
            | Kind::MaskGe
            | Kind::DivMask
            | Kind::DSig
            | Kind::DTanh
            | Kind::Mask
            | Kind::SigmoidAdd
            | Kind::TanhAdd
            | Kind::ReluAdd
            | Kind::AffineMul(..) => 2,
            Kind::Fma | Kind::DSigMul | Kind::DTanhMul => 3,
            Kind::Fma2 => 4,
        }
    }
}

/// One op: `dst` (and `dst2`, written in the same loop) from `src[..arity]`; unused source
/// entries repeat `src[0]` so every entry is a valid location.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Op {
    pub kind: Kind,
    pub dst: Loc,
    pub dst2: Option<Loc>,
    pub src: [Loc; 4],
}

/// A row program and the number of scratch registers it uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct Program {
    pub ops: Vec<Op>,
    pub regs: usize,
}

/// The buffers a program may read (besides its own outputs and registers) and write.
pub(crate) struct Access<'a> {
    pub read: &'a [Buf],
    pub write: &'a [Buf],
}

impl Program {
    /// Checks what the evaluator's unchecked slot accesses rely on: every location exists,
    /// destinations are writable buffers or registers, a destination is never also a source
    /// (so an op's mutable and shared row slices never overlap), and only `Acc` touches `DParam`
    /// (which is never read).
    pub fn validate(&self, layout: &Layout, access: &Access) -> Result<()> {
        let bad = |i: usize, what: &str| Err(internal(format!("op {i}: {what}")));
        let buf = |l: Loc| match l {
            Loc::Reg(_) => None,
            Loc::Tab(t) => layout.buf_of(t),
        };
        let exists = |l: Loc| match l {
            Loc::Reg(r) => (r as usize) < self.regs,
            Loc::Tab(t) => (t as usize) < layout.len(),
        };
        for (i, op) in self.ops.iter().enumerate() {
            let n = op.kind.arity();
            let dsts = std::iter::once(op.dst).chain(op.dst2);
            for (j, d) in dsts.enumerate() {
                if !exists(d) {
                    return bad(i, "destination out of range");
                }
                match buf(d) {
                    None => {}
                    Some(Buf::DParam) if op.kind == Kind::Acc && j == 0 => {}
                    Some(b) if b != Buf::DParam && access.write.contains(&b) => {}
                    Some(_) => return bad(i, "destination not writable"),
                }
                if op.kind == Kind::Acc && buf(d) != Some(Buf::DParam) {
                    return bad(i, "accumulation outside the parameter gradient");
                }
                if n > 0 && op.src.contains(&d) {
                    return bad(i, "destination is also a source");
                }
            }
            if op.dst2 == Some(op.dst) {
                return bad(i, "two equal destinations");
            }
            if op.kind == Kind::Acc && op.dst2.is_some() {
                return bad(i, "accumulation with a second destination");
            }
            if n > 0 {
                for &s in &op.src {
                    if !exists(s) {
                        return bad(i, "source out of range");
                    }
                    match buf(s) {
                        None => {}
                        Some(Buf::DParam) => return bad(i, "reads the parameter gradient"),
                        Some(b) if access.read.contains(&b) || access.write.contains(&b) => {}
                        Some(_) => return bad(i, "source not readable"),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Largest number of cheap ops the backward pass recomputes to avoid taping one value.
const RECOMPUTE_LIMIT: usize = 4;

/// Chooses the forward values the backward program reads from the tape, in ascending id order.
///
/// The backward step gets the previous states, the unit params and the state gradients, but not
/// the gate pre-activations `x_pre`/`h_pre` (so the sweep need not keep them per step); every
/// other forward value it needs comes from the tape or is recomputed. The backward roots depend
/// on forward values at a boundary: forward values used by nodes that depend on the state
/// gradients. At the boundary, activation outputs are taped (recomputing `exp` costs far more
/// than a load) and so are gate pre-activations read directly. A cheap value (sums, products,
/// affine maps, relu) is recomputed from states, params and taped values when that takes at most
/// `RECOMPUTE_LIMIT` ops and needs no untaped activation or gate; otherwise it is taped itself.
pub(crate) fn choose_tape(g: &Graph, bwd_roots: &[NodeId]) -> Vec<NodeId> {
    let n = g.len();
    let mut dep = vec![false; n];
    for id in 0..n {
        let node = g.node(id as NodeId);
        let (args, k) = node.args();
        dep[id] = matches!(node, Node::Leaf(Leaf::DNext(_)))
            || args[..k].iter().any(|&a| dep[a as usize]);
    }
    // Available to the backward step without the tape.
    let free = |id: NodeId| {
        matches!(
            g.node(id),
            Node::Const(_) | Node::Leaf(Leaf::State(_) | Leaf::Param(_) | Leaf::DNext(_))
        )
    };
    let must_tape = |id: NodeId| {
        matches!(
            g.node(id),
            Node::Un(
                Un::Sigmoid
                    | Un::Tanh
                    | Un::Exp
                    | Un::Log
                    | Un::Sqrt
                    | Un::Softplus
                    | Un::Sum
                    | Un::Mean,
                _
            ) | Node::Leaf(Leaf::Xg(_) | Leaf::Hg(_))
        )
    };
    // Boundary: non-dependent, non-free values that dependent nodes reachable from the roots use.
    let mut boundary = HashSet::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<NodeId> = bwd_roots.to_vec();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        if !dep[id as usize] {
            if !free(id) {
                boundary.insert(id);
            }
            continue;
        }
        let (args, k) = g.node(id).args();
        stack.extend_from_slice(&args[..k]);
    }
    let mut boundary: Vec<NodeId> = boundary.into_iter().collect();
    boundary.sort_unstable();
    let mut taped: HashSet<NodeId> = boundary
        .iter()
        .copied()
        .filter(|&id| must_tape(id))
        .collect();
    for &m in &boundary {
        if taped.contains(&m) {
            continue;
        }
        // The ops recomputing `m` would need, stopping at free and taped values.
        let mut cone = HashSet::new();
        let mut stack = vec![m];
        let mut ok = true;
        while let Some(id) = stack.pop() {
            if free(id) || taped.contains(&id) || !cone.insert(id) {
                continue;
            }
            if must_tape(id) || cone.len() > RECOMPUTE_LIMIT {
                ok = false;
                break;
            }
            let (args, k) = g.node(id).args();
            stack.extend_from_slice(&args[..k]);
        }
        if !ok {
            taped.insert(m);
        }
    }
    let mut taped: Vec<NodeId> = taped.into_iter().collect();
    taped.sort_unstable();
    taped
}

/// What a node becomes: an op kind over source nodes.
#[derive(Debug, Clone)]
struct Plan {
    kind: Kind,
    srcs: Vec<NodeId>,
}

fn plain(g: &Graph, id: NodeId) -> Plan {
    let node = g.node(id);
    let (args, k) = node.args();
    let kind = match node {
        Node::Const(b) => Kind::Fill(f64::from_bits(b)),
        Node::Affine(a, b, _) => Kind::Affine(f64::from_bits(a), f64::from_bits(b)),
        Node::Un(Un::Sigmoid, _) => Kind::Sigmoid,
        Node::Un(Un::Tanh, _) => Kind::Tanh,
        Node::Un(Un::Relu, _) => Kind::Relu,
        Node::Un(Un::Square, _) => Kind::Square,
        Node::Un(Un::Exp, _) => Kind::Exp,
        Node::Un(Un::Log, _) => Kind::Log,
        Node::Un(Un::Sqrt, _) => Kind::Sqrt,
        Node::Un(Un::Softplus, _) => Kind::Softplus,
        Node::Un(Un::Sum, _) => Kind::RowSum,
        Node::Un(Un::Mean, _) => Kind::RowMean,
        Node::Bin(Bin::Add, ..) => Kind::Add,
        Node::Bin(Bin::Sub, ..) => Kind::Sub,
        Node::Bin(Bin::Mul, ..) => Kind::Mul,
        Node::Bin(Bin::Div, ..) => Kind::Div,
        Node::Bin(Bin::Max, ..) => Kind::Max,
        Node::Bin(Bin::Min, ..) => Kind::Min,
        Node::Bin(Bin::DLog, ..) => Kind::DLog,
        Node::Bin(Bin::DSqrt, ..) => Kind::DSqrt,
        Node::Bin(Bin::DSoftplus, ..) => Kind::DSoftplus,
        Node::Bin(Bin::MaskGe, ..) => Kind::MaskGe,
        Node::Bin(Bin::DivMask, ..) => Kind::DivMask,
        Node::Bin(Bin::DSig, ..) => Kind::DSig,
        Node::Bin(Bin::DTanh, ..) => Kind::DTanh,
        Node::Bin(Bin::Mask, ..) => Kind::Mask,
        // Leaves are inputs; `lower` rejects an unavailable one before planning.
        Node::Leaf(_) => Kind::Copy,
    };
    Plan {
        kind,
        srcs: args[..k].to_vec(),
    }
}

/// Lowers the nodes `roots` need into a program. `inputs` maps available values (leaves, taped
/// values) to their slots; each root `(node, buf, k)` is written to slot `k` of `buf`
/// (accumulated for `Buf::DParam`).
pub(crate) fn lower(
    g: &Graph,
    layout: &Layout,
    inputs: &HashMap<NodeId, (Buf, usize)>,
    roots: &[(NodeId, Buf, usize)],
) -> Result<Program> {
    let slot = |buf: Buf, k: usize| -> Result<Loc> {
        layout
            .index(buf, k)
            .map(Loc::Tab)
            .ok_or_else(|| internal(format!("no slot {k} of {buf:?}")))
    };
    // Nodes to compute: everything the roots reach without passing through an input.
    let mut compute = HashSet::new();
    let mut stack: Vec<NodeId> = roots.iter().map(|r| r.0).collect();
    while let Some(id) = stack.pop() {
        if inputs.contains_key(&id) || !compute.insert(id) {
            continue;
        }
        let node = g.node(id);
        if let Node::Leaf(l) = node {
            return Err(internal(format!("leaf {l:?} is not an input here")));
        }
        let (args, k) = node.args();
        stack.extend_from_slice(&args[..k]);
    }
    let mut order: Vec<NodeId> = compute.iter().copied().collect();
    order.sort_unstable();
    let pinned: HashSet<NodeId> = roots.iter().map(|r| r.0).collect();
    let mut uses: HashMap<NodeId, usize> = HashMap::new();
    for &id in &order {
        let (args, k) = g.node(id).args();
        for &a in &args[..k] {
            *uses.entry(a).or_default() += 1;
        }
    }

    // Fusion: a consumer absorbs a single-use, unpinned, plainly planned argument.
    let mut plans: HashMap<NodeId, Plan> = HashMap::new();
    let mut absorbed = HashSet::new();
    for &id in &order {
        let absorbable = |m: NodeId, kind: Kind, plans: &HashMap<NodeId, Plan>| {
            compute.contains(&m)
                && !pinned.contains(&m)
                && uses.get(&m) == Some(&1)
                && plans.get(&m).is_some_and(|p| p.kind == kind)
        };
        let mut plan = plain(g, id);
        let s = plan.srcs.clone();
        let fused = match plan.kind {
            Kind::Sigmoid | Kind::Tanh | Kind::Relu if absorbable(s[0], Kind::Add, &plans) => {
                let kind = match plan.kind {
                    Kind::Sigmoid => Kind::SigmoidAdd,
                    Kind::Tanh => Kind::TanhAdd,
                    _ => Kind::ReluAdd,
                };
                Some((kind, vec![s[0]]))
            }
            Kind::Add => {
                let mx = absorbable(s[0], Kind::Mul, &plans);
                let my = s[0] != s[1] && absorbable(s[1], Kind::Mul, &plans);
                match (mx, my) {
                    (true, true) => Some((Kind::Fma2, vec![s[0], s[1]])),
                    (true, false) => Some((Kind::Fma, vec![s[0]])),
                    (false, true) => Some((Kind::Fma, vec![s[1]])),
                    _ => None,
                }
            }
            Kind::Affine(k, o) if absorbable(s[0], Kind::Mul, &plans) => {
                Some((Kind::AffineMul(k, o), vec![s[0]]))
            }
            Kind::DSig | Kind::DTanh if absorbable(s[0], Kind::Mul, &plans) => {
                let kind = if plan.kind == Kind::DSig {
                    Kind::DSigMul
                } else {
                    Kind::DTanhMul
                };
                Some((kind, vec![s[0]]))
            }
            _ => None,
        };
        if let Some((kind, inner)) = fused {
            let mut srcs = Vec::new();
            for &m in &inner {
                srcs.extend_from_slice(&plans[&m].srcs);
                absorbed.insert(m);
            }
            // The operand not absorbed keeps its place after the absorbed ones.
            srcs.extend(s.iter().copied().filter(|x| !inner.contains(x)));
            plan = Plan { kind, srcs };
        }
        plans.insert(id, plan);
    }
    let emitted: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|id| !absorbed.contains(id))
        .collect();
    let mut last_use: HashMap<NodeId, usize> = HashMap::new();
    for (p, id) in emitted.iter().enumerate() {
        for &s in &plans[id].srcs {
            last_use.insert(s, p);
        }
    }
    let mut dests: HashMap<NodeId, Vec<(Buf, usize)>> = HashMap::new();
    for &(id, buf, k) in roots {
        dests.entry(id).or_default().push((buf, k));
    }

    let mut prog = Program::default();
    let mut loc: HashMap<NodeId, Loc> = HashMap::new();
    for (&id, &(buf, k)) in inputs {
        loc.insert(id, slot(buf, k)?);
    }
    // Roots that are inputs themselves are copies.
    for &(id, buf, k) in roots {
        if let Some(&src) = inputs.get(&id) {
            let (src, dst) = (slot(src.0, src.1)?, slot(buf, k)?);
            let kind = if buf == Buf::DParam {
                Kind::Acc
            } else {
                Kind::Copy
            };
            prog.ops.push(Op {
                kind,
                dst,
                dst2: None,
                src: [src; 4],
            });
        }
    }
    let mut free: Vec<u32> = Vec::new();
    let alloc = |free: &mut Vec<u32>, regs: &mut usize| {
        free.pop().unwrap_or_else(|| {
            *regs += 1;
            (*regs - 1) as u32
        })
    };
    for (p, &id) in emitted.iter().enumerate() {
        let plan = &plans[&id];
        let my = dests.get(&id).map_or(&[][..], Vec::as_slice);
        let sets: Vec<Loc> = my
            .iter()
            .filter(|d| d.0 != Buf::DParam)
            .map(|&(b, k)| slot(b, k))
            .collect::<Result<_>>()?;
        let accs: Vec<Loc> = my
            .iter()
            .filter(|d| d.0 == Buf::DParam)
            .map(|&(b, k)| slot(b, k))
            .collect::<Result<_>>()?;
        let home = match sets.first() {
            Some(&l) => l,
            None => Loc::Reg(alloc(&mut free, &mut prog.regs)),
        };
        let mut src = [home; 4];
        for (j, s) in plan.srcs.iter().enumerate() {
            src[j] = *loc
                .get(s)
                .ok_or_else(|| internal(format!("node {s} used before it is computed")))?;
        }
        if !plan.srcs.is_empty() {
            for j in plan.srcs.len()..4 {
                src[j] = src[0];
            }
        }
        prog.ops.push(Op {
            kind: plan.kind,
            dst: home,
            dst2: sets.get(1).copied(),
            src,
        });
        for &extra in sets.iter().skip(2) {
            // A constant is filled again rather than copied.
            let kind = match plan.kind {
                Kind::Fill(c) => Kind::Fill(c),
                _ => Kind::Copy,
            };
            prog.ops.push(Op {
                kind,
                dst: extra,
                dst2: None,
                src: [if kind == Kind::Copy { home } else { extra }; 4],
            });
        }
        for &acc in &accs {
            prog.ops.push(Op {
                kind: Kind::Acc,
                dst: acc,
                dst2: None,
                src: [home; 4],
            });
        }
        loc.insert(id, home);
        // Registers die after their last reader; the destination was taken first, so it never
        // shares a register with a source of the same op.
        let mut dying: Vec<NodeId> = plan
            .srcs
            .iter()
            .copied()
            .filter(|s| last_use.get(s) == Some(&p))
            .collect();
        if !last_use.contains_key(&id) {
            dying.push(id);
        }
        dying.sort_unstable();
        dying.dedup();
        for d in dying {
            if let Some(&Loc::Reg(r)) = loc.get(&d) {
                if compute.contains(&d) {
                    free.push(r);
                }
            }
        }
    }
    Ok(prog)
}

/// Human-readable listing of a program, for tests and debugging.
pub(crate) fn listing(p: &Program, layout: &Layout) -> String {
    let name = |l: Loc| match l {
        Loc::Reg(r) => format!("r{r}"),
        Loc::Tab(t) => {
            let mut i = t as usize;
            for &(b, n) in layout.blocks() {
                if i < n {
                    return format!("{b:?}[{i}]");
                }
                i -= n;
            }
            format!("?{t}")
        }
    };
    let mut out = String::new();
    for op in &p.ops {
        let srcs: Vec<String> = op.src[..op.kind.arity()].iter().map(|&l| name(l)).collect();
        let d2 = op
            .dst2
            .map(|l| format!(", {}", name(l)))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}{} = {:?}({})\n",
            name(op.dst),
            d2,
            op.kind,
            srcs.join(", ")
        ));
    }
    out
}
