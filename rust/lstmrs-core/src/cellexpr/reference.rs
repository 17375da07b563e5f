//! The cell language's reference semantics: a description's nodes evaluated plainly in f64, one
//! node after another. The compiled programs (`program`, `eval`) are the fast path; this is what
//! `trace` reads a custom cell's gates with.

use super::graph::{safe_denominator_f64, sigmoid_f64, softplus_f64, LOG_FLOOR};
use super::{BinaryOp, CellSpec, Expr, UnaryOp};

impl CellSpec {
    /// Every node of the description over `H` units, in f64, written to be read: the reference
    /// semantics of the cell language, beside the compiled programs (`eval`). `xg[k]`, `hg[k]`,
    /// `prev[k]` and `units[k]` are the `H` values of input gate `k`, recurrent gate `k`, state `k`
    /// before the step and unit parameter `k`; the result holds every node's `H` values.
    pub fn eval_f64(
        &self,
        h: usize,
        xg: &[Vec<f64>],
        hg: &[Vec<f64>],
        prev: &[Vec<f64>],
        units: &[Vec<f64>],
    ) -> Vec<Vec<f64>> {
        let mut v: Vec<Vec<f64>> = Vec::with_capacity(self.nodes().len());
        for e in self.nodes() {
            let node = match *e {
                Expr::Xg(k) => xg[k].clone(),
                Expr::Hg(k) => hg[k].clone(),
                Expr::State(k) => prev[k].clone(),
                Expr::Param(k) => units[k].clone(),
                Expr::Const(c) => vec![c; h],
                Expr::Unary(op, a) => v[a]
                    .iter()
                    .map(|&x| match op {
                        UnaryOp::Neg => -x,
                        UnaryOp::OneMinus => 1.0 - x,
                        UnaryOp::Sigmoid => sigmoid_f64(x),
                        UnaryOp::Tanh => x.tanh(),
                        UnaryOp::Relu => x.max(0.0),
                        UnaryOp::Square => x * x,
                        UnaryOp::Exp => x.exp(),
                        UnaryOp::Log => x.max(LOG_FLOOR).ln(),
                        UnaryOp::Sqrt => x.max(0.0).sqrt(),
                        UnaryOp::Softplus => softplus_f64(x),
                        // Row reductions: handled below, over the whole row.
                        UnaryOp::Sum | UnaryOp::Mean => x,
                    })
                    .collect(),
                Expr::Binary(op, a, c) => v[a]
                    .iter()
                    .zip(&v[c])
                    .map(|(&x, &y)| match op {
                        BinaryOp::Add => x + y,
                        BinaryOp::Sub => x - y,
                        BinaryOp::Mul => x * y,
                        BinaryOp::Div => x / safe_denominator_f64(y),
                        BinaryOp::Max => x.max(y),
                        BinaryOp::Min => x.min(y),
                    })
                    .collect(),
            };
            let node = match *e {
                Expr::Unary(UnaryOp::Sum, _) => vec![node.iter().sum::<f64>(); h],
                Expr::Unary(UnaryOp::Mean, _) => vec![node.iter().sum::<f64>() / h as f64; h],
                _ => node,
            };
            v.push(node);
        }
        v
    }
}
