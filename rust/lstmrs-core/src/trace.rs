//! What the recurrent layers computed at every step, read from a forward pass's tape: each
//! layer's and direction's gate activations and states, for inspection (`lstmrs explain`).
//!
//! Shape legend: `B` sequences, `T` steps, `H` hidden units, `I` a layer's input width. Every
//! array a trace returns is batch-first `[B, T, H]` whatever the tape's layout, and holds zeros
//! on the steps past a sequence's length (those steps are not computed).
//!
//! Built-in cells: the gates come straight from the tape (the sweep keeps the activations for
//! the backward pass): LSTM `i, f, g, o`, GRU `r, z, n`. A custom cell's tape holds whatever its
//! compiled backward program needs, not its gates, so its activation nodes (`sigmoid`, `tanh`,
//! `relu`) are evaluated again here by the cell language's plain f64 evaluator
//! (`CellSpec::eval_f64`), from the taped states and the layer's input; each is named `<op>_<node>` after its index in the cell's description (`sigmoid_7`).

use crate::cellexpr::{CellSpec, Expr, UnaryOp};
use crate::config::CellKind;
use crate::error::{Error, Result};
use crate::matmul::{a_bt, Mat};
use crate::network::{dir_weights, Tape};
use crate::params::RnnWeights;
use crate::scalar::Scalar;
use crate::sweep::DirTape;

/// One layer-direction's trace.
#[derive(Debug, Clone)]
pub struct DirTrace<T> {
    pub layer: usize,
    /// 0 forward in time, 1 backward.
    pub direction: usize,
    /// `(name, [B, T, H])` activations of each gate, in the cell's order.
    pub gates: Vec<(String, Vec<T>)>,
    /// `(name, [B, T, H])` states after each step: `h` (and `c`), or a custom cell's own names.
    pub states: Vec<(String, Vec<T>)>,
}

/// Gate names of a cell, in the order [`trace`] returns them.
pub fn gate_names(cell: CellKind) -> Vec<String> {
    match cell {
        CellKind::Lstm => ["i", "f", "g", "o"].map(String::from).to_vec(),
        CellKind::Gru => ["r", "z", "n"].map(String::from).to_vec(),
        CellKind::Custom(_) => {
            let spec = cell.compiled().expect("custom cell").spec();
            activation_nodes(spec).into_iter().map(|(_, n)| n).collect()
        }
    }
}

/// State names of a cell: `h` (and `c`) for the built-in ones.
pub fn state_names(cell: CellKind) -> Vec<String> {
    match cell {
        CellKind::Lstm => vec!["h".into(), "c".into()],
        CellKind::Gru => vec!["h".into()],
        CellKind::Custom(_) => cell
            .compiled()
            .expect("custom cell")
            .spec()
            .states()
            .to_vec(),
    }
}

/// The activation nodes of a description with their names.
fn activation_nodes(spec: &CellSpec) -> Vec<(usize, String)> {
    spec.nodes()
        .iter()
        .enumerate()
        .filter_map(|(k, e)| match e {
            Expr::Unary(UnaryOp::Sigmoid, _) => Some((k, format!("sigmoid_{k}"))),
            Expr::Unary(UnaryOp::Tanh, _) => Some((k, format!("tanh_{k}"))),
            Expr::Unary(UnaryOp::Relu, _) => Some((k, format!("relu_{k}"))),
            _ => None,
        })
        .collect()
}

/// Slots of the tape's `[T+1, B, H]` states that step `t` reads and writes.
fn slots(reverse: bool, t: usize) -> (usize, usize) {
    if reverse {
        (t + 1, t)
    } else {
        (t, t + 1)
    }
}

/// The trace of every layer and direction of the forward call that recorded `tape`; `params`
/// must be the weights that call used.
pub fn trace<T: Scalar>(params: RnnWeights<'_, T>, tape: &Tape<T>) -> Result<Vec<DirTrace<T>>> {
    let cfg = *params.config();
    if cfg != *tape.config() {
        return Err(Error::Value {
            arg: "tape",
            expected: format!("a tape recorded by a network with {cfg:?}"),
            got: format!("{:?}", tape.config()),
        });
    }
    if let Some(cell) = cfg.cell.compiled() {
        // States past `h` and `c` live only inside the sweep (its tape's scratch), so the
        // gates that read them cannot be recomputed here.
        let states = cell.spec().states();
        if states.len() > 2 {
            return Err(Error::Value {
                arg: "cell",
                expected: "a cell with at most two states (h, c) to trace".into(),
                got: format!(
                    "{:?} with internal states {:?}",
                    cell.spec().name(),
                    &states[2..]
                ),
            });
        }
    }
    let nd = cfg.num_directions();
    let mut out = Vec::with_capacity(cfg.num_layers * nd);
    for layer in 0..cfg.num_layers {
        for dir in 0..nd {
            out.push(dir_trace(params, tape, layer, dir));
        }
    }
    Ok(out)
}

fn dir_trace<T: Scalar>(
    params: RnnWeights<'_, T>,
    tape: &Tape<T>,
    layer: usize,
    dir: usize,
) -> DirTrace<T> {
    let cfg = *params.config();
    let (t, b, h) = (tape.seq_len(), tape.batch(), cfg.hidden_size);
    let lengths = tape.lengths();
    let valid = |row: usize, step: usize| lengths.is_none_or(|l| step < l[row]);
    let dt = tape.dir_tape(layer, dir);
    let reverse = dir == 1;
    // [T, B, H] time-major block `k` of a `[T, B, W*H]` buffer -> [B, T, H], zeros on padding.
    let gather = |src: &[T], width: usize, k: usize| -> Vec<T> {
        let mut dst = vec![T::zero(); b * t * h];
        for s in 0..t {
            for r in (0..b).filter(|&r| valid(r, s)) {
                dst[(r * t + s) * h..][..h]
                    .copy_from_slice(&src[(s * b + r) * width * h + k * h..][..h]);
            }
        }
        dst
    };
    // States written by each step: slot `exit(t)` of `[T+1, B, H]`.
    let states_of = |src: &[T]| -> Vec<T> {
        let mut dst = vec![T::zero(); b * t * h];
        for s in 0..t {
            let slot = slots(reverse, s).1;
            for r in (0..b).filter(|&r| valid(r, s)) {
                dst[(r * t + s) * h..][..h].copy_from_slice(&src[(slot * b + r) * h..][..h]);
            }
        }
        dst
    };
    let names = state_names(cfg.cell);
    let mut states = vec![(names[0].clone(), states_of(dt.hidden_states()))];
    if cfg.cell.has_cell_state() {
        states.push((names[1].clone(), states_of(dt.cell_states())));
    }
    let gates = match cfg.cell {
        CellKind::Lstm | CellKind::Gru => {
            let g = cfg.cell.gate_count();
            gate_names(cfg.cell)
                .into_iter()
                .enumerate()
                .map(|(k, name)| (name, gather(dt.activations(), g, k)))
                .collect()
        }
        CellKind::Custom(_) => custom_gates(params, tape, dt, layer, dir, &valid),
    };
    DirTrace {
        layer,
        direction: dir,
        gates,
        states,
    }
}

/// A custom cell's activation nodes at every valid step, evaluated from the description.
fn custom_gates<T: Scalar>(
    params: RnnWeights<'_, T>,
    tape: &Tape<T>,
    dt: &DirTape<T>,
    layer: usize,
    dir: usize,
    valid: &dyn Fn(usize, usize) -> bool,
) -> Vec<(String, Vec<T>)> {
    let cfg = *params.config();
    let spec = cfg.cell.compiled().expect("custom cell").spec();
    let (t, b, h) = (tape.seq_len(), tape.batch(), cfg.hidden_size);
    let (gx, gh) = (spec.x_gates(), spec.h_gates());
    let inp = cfg.layer_input_size(layer);
    let w = dir_weights(params, layer, dir);
    let reverse = dir == 1;
    let rows = t * b;
    // xg[T*B, Gx*H] = x · W_ihᵀ + b_ih, hg[T*B, Gh*H] = h_prev · W_hhᵀ + b_hh (time-major rows).
    let mut xg = match w.bias {
        Some((b_ih, _)) => b_ih.repeat(rows),
        None => vec![T::zero(); rows * gx * h],
    };
    a_bt(
        &mut xg,
        gx * h,
        true,
        Mat::new(tape.layer_input(layer), rows, inp),
        Mat::new(w.w_ih, gx * h, inp),
    );
    let hs = dt.hidden_states();
    let cs = dt.cell_states();
    let prev_slot = |s: usize, r: usize| (slots(reverse, s).0 * b + r) * h;
    let mut hg = match w.bias {
        Some((_, b_hh)) if gh > 0 => b_hh.repeat(rows),
        _ => vec![T::zero(); rows * gh * h],
    };
    if gh > 0 {
        let mut h_prev = vec![T::zero(); rows * h];
        for s in 0..t {
            for r in 0..b {
                h_prev[(s * b + r) * h..][..h].copy_from_slice(&hs[prev_slot(s, r)..][..h]);
            }
        }
        a_bt(
            &mut hg,
            gh * h,
            true,
            Mat::new(&h_prev, rows, h),
            Mat::new(w.w_hh, gh * h, h),
        );
    }
    let acts = activation_nodes(spec);
    let mut gates: Vec<(String, Vec<T>)> = acts
        .iter()
        .map(|(_, name)| (name.clone(), vec![T::zero(); b * t * h]))
        .collect();
    let to64 = |v: &[T]| v.iter().map(|&x| Scalar::to_f64(x)).collect::<Vec<f64>>();
    let units: Vec<Vec<f64>> = w.units.chunks_exact(h.max(1)).map(to64).collect();
    for s in 0..t {
        for r in (0..b).filter(|&r| valid(r, s)) {
            let row = s * b + r;
            let x: Vec<Vec<f64>> = xg[row * gx * h..][..gx * h]
                .chunks_exact(h)
                .map(to64)
                .collect();
            let hh: Vec<Vec<f64>> = hg[row * gh * h..][..gh * h]
                .chunks_exact(h)
                .map(to64)
                .collect();
            let mut prev = vec![to64(&hs[prev_slot(s, r)..][..h])];
            if spec.states().len() > 1 {
                prev.push(to64(&cs[prev_slot(s, r)..][..h]));
            }
            let values = spec.eval_f64(h, &x, &hh, &prev, &units);
            for ((node, _), (_, dst)) in acts.iter().zip(gates.iter_mut()) {
                for (d, &v) in dst[(r * t + s) * h..][..h].iter_mut().zip(&values[*node]) {
                    *d = T::from_f64(v);
                }
            }
        }
    }
    gates
}
