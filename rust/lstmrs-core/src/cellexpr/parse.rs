//! The cell description: JSON (or the plain [`CellDesc`] mirror of it) to a validated DAG.
//!
//! Two stages: `from_json` only checks JSON types and turns the text into a [`CellDesc`];
//! [`CellSpec::from_desc`] checks everything else (ops, arities, references, names, values), so
//! a description built in Rust gets the same errors as one read from JSON.

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// Bounds that keep every size product (`G * H`, slot counts) far from overflow and reject
/// descriptions that can only be mistakes.
pub const MAX_GATES: usize = 256;
pub const MAX_STATES: usize = 64;
pub const MAX_PARAMS: usize = 256;
pub const MAX_NODES: usize = 65_536;

/// Parameter names that would collide with the layer's own tensors (`weight_ih_l0`, ...).
const RESERVED: [&str; 4] = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"];

/// The op names a node may carry, for error messages.
const OPS: &str = "xg, hg, state, param, const, neg, one_minus, sigmoid, tanh, relu, square, \
    exp, log, sqrt, softplus, sum, mean, add, sub, mul, div, max, min";

/// How a unit parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    /// Uniform in `[-a, a]` with `a = value / sqrt(H)`.
    Uniform(f64),
    /// Every unit set to the value.
    Constant(f64),
}

/// A per-unit parameter vector `[H]` of the cell.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitParam {
    pub name: String,
    pub init: ParamInit,
}

/// One node as written in the description; which fields matter depends on `op`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeDesc {
    pub op: String,
    /// Earlier node indices (unary and binary ops).
    pub args: Vec<usize>,
    /// Gate index (`xg`, `hg`).
    pub index: Option<usize>,
    /// State or parameter name (`state`, `param`).
    pub name: Option<String>,
    /// Constant value (`const`).
    pub value: Option<f64>,
}

/// The description exactly as written, before validation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CellDesc {
    pub name: String,
    pub states: Vec<String>,
    pub x_gates: usize,
    pub h_gates: usize,
    pub unit_params: Vec<UnitParam>,
    pub nodes: Vec<NodeDesc>,
    /// `(state name, node index)` for the new value of each state.
    pub outputs: Vec<(String, usize)>,
}

/// Unary element-wise ops of the description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    OneMinus,
    Sigmoid,
    Tanh,
    Relu,
    Square,
    /// `e^x` (f32: saturates at `e^88`).
    Exp,
    /// `ln(max(x, LOG_FLOOR))`: the domain is `x > 0`; smaller arguments are clamped (gradient 0).
    Log,
    /// `sqrt(max(x, 0))` (gradient 0 where `x <= 0`).
    Sqrt,
    /// `ln(1 + e^x)`, computed without overflow.
    Softplus,
    /// Sum over the `H` units of the row, broadcast back to every unit.
    Sum,
    /// Mean over the `H` units of the row, broadcast back to every unit.
    Mean,
}

/// Binary element-wise ops of the description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// Safe division `a / b̂`, `b̂ = b` when `|b| >= DIV_EPS`, else `±DIV_EPS` (sign of `b`, `+`
    /// at 0); the gradient with respect to `b` is 0 in the clamped band.
    Div,
    /// Element-wise maximum; at a tie the whole gradient goes to the first argument.
    Max,
    /// Element-wise minimum; at a tie the whole gradient goes to the first argument.
    Min,
}

/// A validated node: leaves name their source by index, ops reference earlier nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expr {
    Xg(usize),
    Hg(usize),
    State(usize),
    Param(usize),
    Const(f64),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
}

/// A parsed and validated cell description.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSpec {
    pub(crate) name: String,
    pub(crate) states: Vec<String>,
    pub(crate) x_gates: usize,
    pub(crate) h_gates: usize,
    pub(crate) unit_params: Vec<UnitParam>,
    pub(crate) nodes: Vec<Expr>,
    /// Node giving the new value of each state, in `states` order.
    pub(crate) outputs: Vec<usize>,
}

fn value_err(arg: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Error {
    Error::Value {
        arg,
        expected: expected.into(),
        got: got.into(),
    }
}

fn node_err(i: usize, expected: impl std::fmt::Display, got: impl Into<String>) -> Error {
    value_err("cell.nodes", format!("node {i}: {expected}"), got)
}

/// Short JSON rendering of a value for messages.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(57).map_or(s.len(), |(k, _)| k)]
        )
    } else {
        s
    }
}

fn get_usize(v: &Value, arg: &'static str, what: &str) -> Result<usize> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| value_err(arg, format!("{what} as a non-negative integer"), show(v)))
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str, arg: &'static str) -> Result<&'a Value> {
    obj.get(key)
        .ok_or_else(|| value_err(arg, format!("a field {key:?}"), "none"))
}

fn parse_init(v: &Value, k: usize) -> Result<ParamInit> {
    let bad = || {
        value_err(
            "cell.unit_params",
            format!("unit param {k}: init {{\"uniform\": a}} or {{\"constant\": v}}"),
            show(v),
        )
    };
    let obj = v.as_object().ok_or_else(bad)?;
    if obj.len() != 1 {
        return Err(bad());
    }
    let (kind, val) = obj.iter().next().ok_or_else(bad)?;
    let x = val.as_f64().ok_or_else(bad)?;
    match kind.as_str() {
        "uniform" => Ok(ParamInit::Uniform(x)),
        "constant" => Ok(ParamInit::Constant(x)),
        _ => Err(bad()),
    }
}

fn parse_node(v: &Value, i: usize) -> Result<NodeDesc> {
    let obj = v
        .as_object()
        .ok_or_else(|| node_err(i, "a JSON object", show(v)))?;
    let op = obj
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| node_err(i, "a string field \"op\"", show(v)))?
        .to_string();
    let args = match obj.get("args") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| node_err(i, "args as node indices", show(x)))
            })
            .collect::<Result<_>>()?,
        Some(other) => return Err(node_err(i, "args as an array", show(other))),
    };
    let index = match obj.get("index") {
        None => None,
        Some(x) => Some(
            x.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| node_err(i, "index as a non-negative integer", show(x)))?,
        ),
    };
    let name = match obj.get("name") {
        None => None,
        Some(x) => Some(
            x.as_str()
                .ok_or_else(|| node_err(i, "name as a string", show(x)))?
                .to_string(),
        ),
    };
    let value = match obj.get("value") {
        None => None,
        Some(x) => Some(
            x.as_f64()
                .ok_or_else(|| node_err(i, "value as a number", show(x)))?,
        ),
    };
    Ok(NodeDesc {
        op,
        args,
        index,
        name,
        value,
    })
}

impl CellDesc {
    /// Reads the JSON form. Only JSON types are checked here; see [`CellSpec::from_desc`].
    /// Unknown fields are ignored, so writers may add metadata.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| value_err("cell", "a JSON cell description", format!("{e}")))?;
        let top = v
            .as_object()
            .ok_or_else(|| value_err("cell", "a JSON object", show(&v)))?;
        let name = field(top, "name", "cell.name")?;
        let name = name
            .as_str()
            .ok_or_else(|| value_err("cell.name", "a string", show(name)))?
            .to_string();

        let states = field(top, "states", "cell.states")?;
        let states = states
            .as_array()
            .ok_or_else(|| value_err("cell.states", "an array of names", show(states)))?
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| value_err("cell.states", "state names as strings", show(s)))
            })
            .collect::<Result<_>>()?;
        let x_gates = get_usize(
            field(top, "x_gates", "cell.x_gates")?,
            "cell.x_gates",
            "x_gates",
        )?;
        let h_gates = get_usize(
            field(top, "h_gates", "cell.h_gates")?,
            "cell.h_gates",
            "h_gates",
        )?;
        let unit_params = match top.get("unit_params") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let bad = || {
                        value_err(
                            "cell.unit_params",
                            format!("unit param {k}: an object with \"name\" and \"init\""),
                            show(p),
                        )
                    };
                    let obj = p.as_object().ok_or_else(bad)?;
                    let name = obj.get("name").and_then(Value::as_str).ok_or_else(bad)?;
                    let init = parse_init(obj.get("init").ok_or_else(bad)?, k)?;
                    Ok(UnitParam {
                        name: name.to_string(),
                        init,
                    })
                })
                .collect::<Result<_>>()?,
            Some(other) => return Err(value_err("cell.unit_params", "an array", show(other))),
        };
        let nodes = field(top, "nodes", "cell.nodes")?;
        let nodes = nodes
            .as_array()
            .ok_or_else(|| value_err("cell.nodes", "an array of nodes", show(nodes)))?
            .iter()
            .enumerate()
            .map(|(i, n)| parse_node(n, i))
            .collect::<Result<_>>()?;
        let outputs = field(top, "outputs", "cell.outputs")?;
        let outputs = outputs
            .as_object()
            .ok_or_else(|| value_err("cell.outputs", "an object {state: node}", show(outputs)))?
            .iter()
            .map(|(k, n)| {
                let i = n
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        value_err(
                            "cell.outputs",
                            format!("a node index for state {k:?}"),
                            show(n),
                        )
                    })?;
                Ok((k.clone(), i))
            })
            .collect::<Result<_>>()?;
        Ok(CellDesc {
            name,
            states,
            x_gates,
            h_gates,
            unit_params,
            nodes,
            outputs,
        })
    }
}

/// The longest name a cell, state or unit parameter may have.
pub const MAX_NAME_LEN: usize = 64;

/// The one rule for the names of cells, states and unit parameters: a lowercase identifier
/// (`[a-z][a-z0-9_]*`) of at most [`MAX_NAME_LEN`] characters. Names become parts of parameter
/// names, Python attributes and registry keys. The Python DSL (`lstmrs.cells`) mirrors it, and a
/// test asserts the two agree.
pub fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    s.len() <= MAX_NAME_LEN
        && matches!(c.next(), Some(f) if f.is_ascii_lowercase())
        && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '_')
}

fn name_rule() -> String {
    format!("a lowercase identifier ([a-z][a-z0-9_]*, at most {MAX_NAME_LEN} characters)")
}

/// A name for a message: quoted, at most 80 characters of it.
fn show_name(n: &str) -> String {
    if n.chars().count() > 80 {
        format!(
            "{:?}... ({} characters)",
            n.chars().take(80).collect::<String>(),
            n.chars().count()
        )
    } else {
        format!("{n:?}")
    }
}

fn check_names(arg: &'static str, what: &str, names: &[&str]) -> Result<()> {
    for (k, n) in names.iter().enumerate() {
        if !is_name(n) {
            return Err(value_err(
                arg,
                format!("{what} {k}: {}", name_rule()),
                show_name(n),
            ));
        }
        if names[..k].contains(n) {
            return Err(value_err(
                arg,
                format!("distinct {what} names"),
                format!("{n:?} twice"),
            ));
        }
    }
    Ok(())
}

fn lookup(names: &[String], name: &str) -> Option<usize> {
    names.iter().position(|n| n == name)
}

impl CellSpec {
    /// Parses and validates the JSON description (format: `notes/cell_dsl.md`).
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_desc(CellDesc::from_json(text)?)
    }

    /// Validates a description. Every error names the offending node, state or parameter.
    pub fn from_desc(d: CellDesc) -> Result<Self> {
        if !is_name(&d.name) {
            return Err(value_err("cell.name", name_rule(), show_name(&d.name)));
        }
        if d.states.is_empty() {
            return Err(value_err("cell.states", "at least one state", "[]"));
        }
        if d.states.len() > MAX_STATES {
            return Err(value_err(
                "cell.states",
                format!("at most {MAX_STATES} states"),
                d.states.len().to_string(),
            ));
        }
        let states: Vec<&str> = d.states.iter().map(String::as_str).collect();
        check_names("cell.states", "state", &states)?;
        if !(1..=MAX_GATES).contains(&d.x_gates) {
            return Err(value_err(
                "cell.x_gates",
                format!("1 to {MAX_GATES} input gates"),
                d.x_gates.to_string(),
            ));
        }
        if d.h_gates > MAX_GATES {
            return Err(value_err(
                "cell.h_gates",
                format!("0 to {MAX_GATES} recurrent gates"),
                d.h_gates.to_string(),
            ));
        }
        if d.unit_params.len() > MAX_PARAMS {
            return Err(value_err(
                "cell.unit_params",
                format!("at most {MAX_PARAMS} unit params"),
                d.unit_params.len().to_string(),
            ));
        }
        let params: Vec<&str> = d.unit_params.iter().map(|p| p.name.as_str()).collect();
        check_names("cell.unit_params", "unit param", &params)?;
        for (k, p) in d.unit_params.iter().enumerate() {
            if let Some(r) = RESERVED.iter().find(|r| p.name.starts_with(**r)) {
                return Err(value_err(
                    "cell.unit_params",
                    format!(
                        "unit param {k}: a name not starting with {r:?} (the layer's own tensors)"
                    ),
                    format!("{:?}", p.name),
                ));
            }
            let (v, ok) = match p.init {
                ParamInit::Uniform(a) => (a, a.is_finite() && a >= 0.0),
                ParamInit::Constant(c) => (c, c.is_finite()),
            };
            if !ok {
                return Err(value_err(
                    "cell.unit_params",
                    format!(
                        "unit param {k} ({}): a finite init value (uniform: >= 0)",
                        p.name
                    ),
                    v.to_string(),
                ));
            }
        }
        if d.nodes.is_empty() {
            return Err(value_err("cell.nodes", "at least one node", "[]"));
        }
        if d.nodes.len() > MAX_NODES {
            return Err(value_err(
                "cell.nodes",
                format!("at most {MAX_NODES} nodes"),
                d.nodes.len().to_string(),
            ));
        }
        let mut nodes = Vec::with_capacity(d.nodes.len());
        for (i, n) in d.nodes.iter().enumerate() {
            nodes.push(validate_node(&d, i, n)?);
        }
        let mut outputs = vec![None; d.states.len()];
        for (name, node) in &d.outputs {
            let s = lookup(&d.states, name).ok_or_else(|| Error::Name {
                arg: "cell.outputs",
                expected: format!("{:?}", d.states),
                got: name.clone(),
            })?;
            if *node >= nodes.len() {
                return Err(value_err(
                    "cell.outputs",
                    format!("state {name:?}: a node index below {}", nodes.len()),
                    node.to_string(),
                ));
            }
            if outputs[s].replace(*node).is_some() {
                return Err(value_err(
                    "cell.outputs",
                    "one output per state",
                    format!("{name:?} twice"),
                ));
            }
        }
        let outputs = outputs
            .iter()
            .zip(&d.states)
            .map(|(o, name)| {
                o.ok_or_else(|| {
                    value_err(
                        "cell.outputs",
                        "a node for every state",
                        format!("no output for state {name:?}"),
                    )
                })
            })
            .collect::<Result<_>>()?;
        Ok(CellSpec {
            name: d.name,
            states: d.states,
            x_gates: d.x_gates,
            h_gates: d.h_gates,
            unit_params: d.unit_params,
            nodes,
            outputs,
        })
    }
}

fn validate_node(d: &CellDesc, i: usize, n: &NodeDesc) -> Result<Expr> {
    let arity = |want: usize| -> Result<()> {
        if n.args.len() != want {
            return Err(node_err(
                i,
                format!("{want} args for {:?}", n.op),
                format!("{} args", n.args.len()),
            ));
        }
        if let Some(&a) = n.args.iter().find(|&&a| a >= i) {
            return Err(node_err(
                i,
                format!("args below {i} (nodes are in topological order)"),
                format!("forward reference to node {a}"),
            ));
        }
        Ok(())
    };
    let gate = |count: usize, what: &str| -> Result<usize> {
        arity(0)?;
        let k = n
            .index
            .ok_or_else(|| node_err(i, format!("an \"index\" for {what}"), "none"))?;
        if k >= count {
            return Err(node_err(
                i,
                format!("{what} index below {what}s = {count}"),
                format!("gate index {k} out of range"),
            ));
        }
        Ok(k)
    };
    let named = |names: &[String], what: &str| -> Result<usize> {
        arity(0)?;
        let name = n
            .name
            .as_deref()
            .ok_or_else(|| node_err(i, format!("a \"name\" of a {what}"), "none"))?;
        lookup(names, name).ok_or_else(|| Error::Name {
            arg: "cell.nodes",
            expected: format!("{what}s {names:?} (node {i})"),
            got: name.to_string(),
        })
    };
    let unary = |op| -> Result<Expr> {
        arity(1)?;
        Ok(Expr::Unary(op, n.args[0]))
    };
    let binary = |op| -> Result<Expr> {
        arity(2)?;
        Ok(Expr::Binary(op, n.args[0], n.args[1]))
    };
    match n.op.as_str() {
        "xg" => Ok(Expr::Xg(gate(d.x_gates, "x_gate")?)),
        "hg" => Ok(Expr::Hg(gate(d.h_gates, "h_gate")?)),
        "state" => Ok(Expr::State(named(&d.states, "state")?)),
        "param" => {
            let names: Vec<String> = d.unit_params.iter().map(|p| p.name.clone()).collect();
            Ok(Expr::Param(named(&names, "unit param")?))
        }
        "const" => {
            arity(0)?;
            let v = n
                .value
                .ok_or_else(|| node_err(i, "a \"value\" for const", "none"))?;
            if !v.is_finite() {
                return Err(node_err(i, "a finite const value", v.to_string()));
            }
            Ok(Expr::Const(v))
        }
        "neg" => unary(UnaryOp::Neg),
        "one_minus" => unary(UnaryOp::OneMinus),
        "sigmoid" => unary(UnaryOp::Sigmoid),
        "tanh" => unary(UnaryOp::Tanh),
        "relu" => unary(UnaryOp::Relu),
        "square" => unary(UnaryOp::Square),
        "exp" => unary(UnaryOp::Exp),
        "log" => unary(UnaryOp::Log),
        "sqrt" => unary(UnaryOp::Sqrt),
        "softplus" => unary(UnaryOp::Softplus),
        "sum" => unary(UnaryOp::Sum),
        "mean" => unary(UnaryOp::Mean),
        "add" => binary(BinaryOp::Add),
        "sub" => binary(BinaryOp::Sub),
        "mul" => binary(BinaryOp::Mul),
        "div" => binary(BinaryOp::Div),
        "max" => binary(BinaryOp::Max),
        "min" => binary(BinaryOp::Min),
        other => Err(Error::Name {
            arg: "cell.nodes",
            expected: format!("{OPS} (node {i})"),
            got: other.to_string(),
        }),
    }
}
