//! Symbolic reverse-mode differentiation of the cell graph.
//!
//! The seeds are the gradients of the new states (`DNext` leaves); adjoints flow from users to
//! arguments in descending id order (reverse topological), summed where a value has several
//! users. Each rule is written with the forward values it needs, preferring activation outputs
//! (`sigmoid' = y(1-y)`, `tanh' = 1-y^2`), so the backward pass can read them from the tape
//! instead of recomputing transcendental functions. The result is more nodes in the same graph.

use super::graph::{Bin, Graph, Leaf, Node, NodeId, Un};
use crate::error::{Error, Result};

/// Adjoint of every input of a step; `None` where the input does not influence any new state.
#[derive(Debug, Clone)]
pub(crate) struct Derivative {
    pub d_xg: Vec<Option<NodeId>>,
    pub d_hg: Vec<Option<NodeId>>,
    pub d_state: Vec<Option<NodeId>>,
    pub d_param: Vec<Option<NodeId>>,
}

/// Differentiates `outputs[s]` (the new value of state `s`) with respect to every leaf.
pub(crate) fn differentiate(
    g: &mut Graph,
    outputs: &[NodeId],
    sizes: (usize, usize, usize, usize),
) -> Result<Derivative> {
    let (gx, gh, states, params) = sizes;
    let n = g.len();
    let mut parts: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    for (s, &o) in outputs.iter().enumerate() {
        let seed = g.leaf(Leaf::DNext(s as u32));
        parts[o as usize].push(seed);
    }
    let mut d = Derivative {
        d_xg: vec![None; gx],
        d_hg: vec![None; gh],
        d_state: vec![None; states],
        d_param: vec![None; params],
    };
    for id in (0..n).rev() {
        let contributions = std::mem::take(&mut parts[id]);
        let Some((&first, rest)) = contributions.split_first() else {
            continue;
        };
        let adj = rest.iter().fold(first, |acc, &p| g.add(acc, p));
        let mut push = |arg: NodeId, v: NodeId| parts[arg as usize].push(v);
        let node = g.node(id as NodeId);
        match node {
            Node::Leaf(l) => {
                let slot = match l {
                    Leaf::Xg(k) => d.d_xg.get_mut(k as usize),
                    Leaf::Hg(k) => d.d_hg.get_mut(k as usize),
                    Leaf::State(k) => d.d_state.get_mut(k as usize),
                    Leaf::Param(k) => d.d_param.get_mut(k as usize),
                    Leaf::DNext(_) => None,
                };
                let slot =
                    slot.ok_or_else(|| internal(format!("leaf {l:?} in the forward graph")))?;
                *slot = Some(adj);
            }
            Node::Const(_) => {}
            Node::Affine(a, _, x) => push(x, g.affine(f64::from_bits(a), 0.0, adj)),
            Node::Un(op, x) => {
                let v = match op {
                    Un::Sigmoid => g.binary(Bin::DSig, adj, id as NodeId),
                    Un::Tanh => g.binary(Bin::DTanh, adj, id as NodeId),
                    Un::Relu => g.binary(Bin::Mask, adj, id as NodeId),
                    Un::Square => {
                        let p = g.mul(adj, x);
                        g.affine(2.0, 0.0, p)
                    }
                    Un::Exp => g.mul(adj, id as NodeId),
                    Un::Log => g.binary(Bin::DLog, adj, x),
                    Un::Sqrt => g.binary(Bin::DSqrt, adj, id as NodeId),
                    Un::Softplus => g.binary(Bin::DSoftplus, adj, id as NodeId),
                    // d(sum_k x_k)/dx_j = 1 for every j: each unit gets the row's summed
                    // gradient (1/H of it for the mean). This is where units couple.
                    Un::Sum | Un::Mean => g.unary(op, adj),
                };
                push(x, v);
            }
            Node::Bin(op, x, y) => match op {
                Bin::Add => {
                    push(x, adj);
                    push(y, adj);
                }
                Bin::Sub => {
                    push(x, adj);
                    push(y, g.affine(-1.0, 0.0, adj));
                }
                Bin::Mul => {
                    push(x, g.mul(adj, y));
                    push(y, g.mul(adj, x));
                }
                Bin::Div => {
                    // a / b: d/da = 1/b (b clamped as in the forward), d/db = -(a/b)/b.
                    push(x, g.binary(Bin::Div, adj, y));
                    let gy = g.mul(adj, id as NodeId);
                    let gy = g.binary(Bin::DivMask, gy, y);
                    push(y, g.affine(-1.0, 0.0, gy));
                }
                Bin::Max | Bin::Min => {
                    // Subgradient: at a tie the first argument takes the whole gradient.
                    let d = if op == Bin::Max {
                        g.binary(Bin::Sub, x, y)
                    } else {
                        g.binary(Bin::Sub, y, x)
                    };
                    let gx = g.binary(Bin::MaskGe, adj, d);
                    push(x, gx);
                    push(y, g.binary(Bin::Sub, adj, gx));
                }
                _ => {
                    return Err(internal(format!(
                        "derivative op {op:?} in the forward graph"
                    )))
                }
            },
        }
    }
    Ok(d)
}

pub(crate) fn internal(what: String) -> Error {
    Error::Value {
        arg: "cell",
        expected: "a cell the compiler handles (internal error, please report)".into(),
        got: what,
    }
}
