//! A hash-consed expression graph with algebraic simplification, shared by the forward cell and
//! its symbolic derivative.
//!
//! Every node is interned, so equal sub-expressions (`1 - z` written twice, or rebuilt by the
//! derivative) exist once; `add`/`mul` order their arguments so `a + b` and `b + a` meet too.
//! Builders fold constants and normalise: additions, subtractions and multiplications by a
//! constant become one `Affine` node (`a * x + b`), chains of them merge, and pure scalings are
//! pulled out of products and out of derivative ops (which are linear in their first argument).
//! Node ids grow with creation, so arguments always precede their users: ascending id order is a
//! topological order.

use std::collections::HashMap;

pub(crate) type NodeId = u32;

/// Inputs of a step: gate pre-activations, previous states, unit params and (backward only) the
/// gradient of each new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Leaf {
    Xg(u32),
    Hg(u32),
    State(u32),
    Param(u32),
    DNext(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Un {
    Sigmoid,
    Tanh,
    Relu,
    Square,
    Exp,
    Log,
    Sqrt,
    Softplus,
    /// Sum over the row's `H` units, broadcast back (the only ops that couple units).
    Sum,
    Mean,
}

impl Un {
    /// Whether the op reduces over the row (its value is the same for every unit of a row).
    pub fn is_reduction(self) -> bool {
        matches!(self, Un::Sum | Un::Mean)
    }
}

/// Smallest argument `log` takes: below it the argument is clamped (value `ln(LOG_FLOOR)`,
/// gradient 0). A normal number in f32 too.
pub const LOG_FLOOR: f64 = 1e-30;
/// Smallest magnitude of a denominator: `a / b` divides by `b` moved out to `±DIV_EPS` when
/// `|b| < DIV_EPS` (gradient with respect to `b` 0 there).
pub const DIV_EPS: f64 = 1e-12;

/// The denominator safe division uses.
#[inline(always)]
pub(crate) fn safe_denominator_f64(b: f64) -> f64 {
    if b.abs() >= DIV_EPS {
        b
    } else if b < 0.0 {
        -DIV_EPS
    } else {
        DIV_EPS
    }
}

/// `ln(1 + e^x)` without overflow: `max(x, 0) + ln(1 + e^-|x|)`.
pub(crate) fn softplus_f64(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Binary ops. `DSig(g, y) = g*y*(1-y)`, `DTanh(g, y) = g*(1-y^2)` and `Mask(g, x) = x > 0 ? g : 0`
/// are the derivatives of sigmoid, tanh and relu expressed through the forward values they need;
/// likewise `DLog(g, x) = x > LOG_FLOOR ? g/x : 0`, `DSqrt(g, y) = y > 0 ? g/(2y) : 0`,
/// `DSoftplus(g, y) = g*(1 - e^-y)` (that is `g * sigmoid(x)` from the output `y`),
/// `MaskGe(g, d) = d >= 0 ? g : 0` (max/min) and `DivMask(g, b) = |b| >= DIV_EPS ? g/b : 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    DSig,
    DTanh,
    Mask,
    DLog,
    DSqrt,
    DSoftplus,
    MaskGe,
    DivMask,
}

/// Constants are kept as bits so nodes can be hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Node {
    Leaf(Leaf),
    Const(u64),
    /// `a * x + b`
    Affine(u64, u64, NodeId),
    Un(Un, NodeId),
    Bin(Bin, NodeId, NodeId),
}

impl Node {
    pub fn args(&self) -> ([NodeId; 2], usize) {
        match *self {
            Node::Leaf(_) | Node::Const(_) => ([0, 0], 0),
            Node::Affine(_, _, x) | Node::Un(_, x) => ([x, 0], 1),
            Node::Bin(_, x, y) => ([x, y], 2),
        }
    }
}

pub(crate) fn sigmoid_f64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Graph {
    nodes: Vec<Node>,
    index: HashMap<Node, NodeId>,
}

impl Graph {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, id: NodeId) -> Node {
        self.nodes[id as usize]
    }

    fn intern(&mut self, n: Node) -> NodeId {
        if let Some(&id) = self.index.get(&n) {
            return id;
        }
        // The node count is bounded by the description's size times a small factor (parse caps
        // nodes at 65 536), far below u32::MAX.
        let id = self.nodes.len() as NodeId;
        self.nodes.push(n);
        self.index.insert(n, id);
        id
    }

    pub fn as_const(&self, id: NodeId) -> Option<f64> {
        match self.node(id) {
            Node::Const(b) => Some(f64::from_bits(b)),
            _ => None,
        }
    }

    /// `x` as `a * y` with a constant `a` when it is a pure scaling (`Affine(a, 0, y)`).
    fn as_scaled(&self, id: NodeId) -> Option<(f64, NodeId)> {
        match self.node(id) {
            Node::Affine(a, b, y) if f64::from_bits(b) == 0.0 => Some((f64::from_bits(a), y)),
            _ => None,
        }
    }

    pub fn leaf(&mut self, l: Leaf) -> NodeId {
        self.intern(Node::Leaf(l))
    }

    pub fn constant(&mut self, v: f64) -> NodeId {
        // One zero: -0.0 and 0.0 behave the same everywhere this graph is used.
        let v = if v == 0.0 { 0.0 } else { v };
        self.intern(Node::Const(v.to_bits()))
    }

    pub fn affine(&mut self, a: f64, b: f64, x: NodeId) -> NodeId {
        if let Some(c) = self.as_const(x) {
            return self.constant(a * c + b);
        }
        if a == 0.0 {
            return self.constant(b);
        }
        if let Node::Affine(c, d, y) = self.node(x) {
            let (c, d) = (f64::from_bits(c), f64::from_bits(d));
            return self.affine(a * c, a * d + b, y);
        }
        if a == 1.0 && b == 0.0 {
            return x;
        }
        let b = if b == 0.0 { 0.0 } else { b };
        self.intern(Node::Affine(a.to_bits(), b.to_bits(), x))
    }

    pub fn unary(&mut self, op: Un, x: NodeId) -> NodeId {
        if let Some(c) = self.as_const(x) {
            let v = match op {
                Un::Sigmoid => sigmoid_f64(c),
                Un::Tanh => c.tanh(),
                Un::Relu => c.max(0.0),
                Un::Square => c * c,
                Un::Exp => c.exp(),
                Un::Log => c.max(LOG_FLOOR).ln(),
                Un::Sqrt => c.max(0.0).sqrt(),
                Un::Softplus => softplus_f64(c),
                Un::Mean => c,
                // `H` is not known at compile time.
                Un::Sum => return self.intern(Node::Un(op, x)),
            };
            return self.constant(v);
        }
        // A reduction of a reduction is the first one's value times 1 (mean) or H (sum).
        if op == Un::Mean {
            if let Node::Un(inner, _) = self.node(x) {
                if inner.is_reduction() {
                    return x;
                }
            }
        }
        if op == Un::Relu {
            if let Node::Un(Un::Relu, _) = self.node(x) {
                return x;
            }
        }
        self.intern(Node::Un(op, x))
    }

    pub fn add(&mut self, x: NodeId, y: NodeId) -> NodeId {
        self.binary(Bin::Add, x, y)
    }
    pub fn mul(&mut self, x: NodeId, y: NodeId) -> NodeId {
        self.binary(Bin::Mul, x, y)
    }

    pub fn binary(&mut self, op: Bin, x: NodeId, y: NodeId) -> NodeId {
        let (cx, cy) = (self.as_const(x), self.as_const(y));
        match op {
            Bin::Add => {
                if let (Some(a), Some(b)) = (cx, cy) {
                    return self.constant(a + b);
                }
                if let Some(a) = cx {
                    return self.affine(1.0, a, y);
                }
                if let Some(b) = cy {
                    return self.affine(1.0, b, x);
                }
                if x == y {
                    return self.affine(2.0, 0.0, x);
                }
                if let Some((-1.0, z)) = self.as_scaled(y) {
                    return self.binary(Bin::Sub, x, z);
                }
                if let Some((-1.0, z)) = self.as_scaled(x) {
                    return self.binary(Bin::Sub, y, z);
                }
                self.intern(Node::Bin(Bin::Add, x.min(y), x.max(y)))
            }
            Bin::Sub => {
                if let (Some(a), Some(b)) = (cx, cy) {
                    return self.constant(a - b);
                }
                if let Some(a) = cx {
                    return self.affine(-1.0, a, y);
                }
                if let Some(b) = cy {
                    return self.affine(1.0, -b, x);
                }
                if x == y {
                    return self.constant(0.0);
                }
                if let Some((-1.0, z)) = self.as_scaled(y) {
                    return self.add(x, z);
                }
                self.intern(Node::Bin(Bin::Sub, x, y))
            }
            Bin::Mul => {
                if let (Some(a), Some(b)) = (cx, cy) {
                    return self.constant(a * b);
                }
                if let Some(a) = cx {
                    return self.affine(a, 0.0, y);
                }
                if let Some(b) = cy {
                    return self.affine(b, 0.0, x);
                }
                if let Some((a, x1)) = self.as_scaled(x) {
                    let p = self.mul(x1, y);
                    return self.affine(a, 0.0, p);
                }
                if let Some((a, y1)) = self.as_scaled(y) {
                    let p = self.mul(x, y1);
                    return self.affine(a, 0.0, p);
                }
                self.intern(Node::Bin(Bin::Mul, x.min(y), x.max(y)))
            }
            Bin::Div => {
                if cx == Some(0.0) {
                    return self.constant(0.0);
                }
                if let Some(b) = cy {
                    return self.affine(1.0 / safe_denominator_f64(b), 0.0, x);
                }
                self.intern(Node::Bin(Bin::Div, x, y))
            }
            Bin::Max | Bin::Min => {
                if let (Some(a), Some(b)) = (cx, cy) {
                    let v = if op == Bin::Max { a.max(b) } else { a.min(b) };
                    return self.constant(v);
                }
                if x == y {
                    return x;
                }
                // Not commutative at ties (the gradient goes to the first argument).
                self.intern(Node::Bin(op, x, y))
            }
            _ => {
                // Linear in the gradient `x`: zero stays zero, scalings move outside.
                if cx == Some(0.0) {
                    return self.constant(0.0);
                }
                if let Some(v) = cy {
                    let k = match op {
                        Bin::DSig => v * (1.0 - v),
                        Bin::DTanh => 1.0 - v * v,
                        Bin::DLog if v > LOG_FLOOR => 1.0 / v,
                        Bin::DSqrt if v > 0.0 => 0.5 / v,
                        Bin::DSoftplus => -(-v).exp_m1(),
                        Bin::MaskGe => f64::from(u8::from(v >= 0.0)),
                        Bin::DivMask if v.abs() >= DIV_EPS => 1.0 / v,
                        Bin::Mask => f64::from(u8::from(v > 0.0)),
                        _ => 0.0,
                    };
                    return self.affine(k, 0.0, x);
                }
                if let Some((a, g)) = self.as_scaled(x) {
                    let d = self.binary(op, g, y);
                    return self.affine(a, 0.0, d);
                }
                // relu(z) > 0 exactly when z > 0: test the pre-activation, one op less to keep.
                let y = match (op, self.node(y)) {
                    (Bin::Mask, Node::Un(Un::Relu, z)) => z,
                    _ => y,
                };
                self.intern(Node::Bin(op, x, y))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_and_shares() {
        let mut g = Graph::default();
        let x = g.leaf(Leaf::Xg(0));
        let h = g.leaf(Leaf::Hg(0));
        assert_eq!(g.add(x, h), g.add(h, x));
        let one = g.constant(1.0);
        let two = g.constant(2.0);
        let prod = g.binary(Bin::Mul, one, two);
        assert_eq!(g.as_const(prod), Some(2.0));
        // 1 - (1 - x) == x
        let om = g.binary(Bin::Sub, one, x);
        assert_eq!(g.binary(Bin::Sub, one, om), x);
        // (-x) * h == -(x * h)
        let nx = g.affine(-1.0, 0.0, x);
        let p = g.mul(nx, h);
        let xh = g.mul(x, h);
        assert_eq!(g.node(p), Node::Affine((-1.0f64).to_bits(), 0, xh));
        // x + (-y) == x - y
        let nh = g.affine(-1.0, 0.0, h);
        assert_eq!(g.add(x, nh), g.binary(Bin::Sub, x, h));
        let zero = g.constant(0.0);
        assert_eq!(g.binary(Bin::DSig, zero, x), zero);
    }
}
