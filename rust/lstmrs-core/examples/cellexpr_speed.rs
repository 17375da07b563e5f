//! Times the compiled DSL cells against the built-in fused gate kernels, element-wise work only
//! (no matrix products): one forward step plus one backward step over `B = 64` rows of
//! `H = 256` units, single thread, median of several runs.
//!
//! Run: `cargo run --release -p lstmrs-core --example cellexpr_speed`

use lstmrs_core::bench::{builtin_gru_step, builtin_lstm_step, Active};
use lstmrs_core::cellexpr::CompiledCell;
use lstmrs_core::Scalar;
use std::hint::black_box;
use std::time::Instant;

const B: usize = 64;
const H: usize = 256;

const LSTM: &str = r#"{"name": "lstm", "states": ["h", "c"], "x_gates": 4, "h_gates": 4,
  "nodes": [
    {"op": "xg", "index": 0}, {"op": "hg", "index": 0}, {"op": "add", "args": [0, 1]}, {"op": "sigmoid", "args": [2]},
    {"op": "xg", "index": 1}, {"op": "hg", "index": 1}, {"op": "add", "args": [4, 5]}, {"op": "sigmoid", "args": [6]},
    {"op": "xg", "index": 2}, {"op": "hg", "index": 2}, {"op": "add", "args": [8, 9]}, {"op": "tanh", "args": [10]},
    {"op": "xg", "index": 3}, {"op": "hg", "index": 3}, {"op": "add", "args": [12, 13]}, {"op": "sigmoid", "args": [14]},
    {"op": "state", "name": "c"}, {"op": "mul", "args": [7, 16]}, {"op": "mul", "args": [3, 11]},
    {"op": "add", "args": [17, 18]}, {"op": "tanh", "args": [19]}, {"op": "mul", "args": [15, 20]}
  ],
  "outputs": {"h": 21, "c": 19}}"#;

const GRU: &str = r#"{"name": "gru", "states": ["h"], "x_gates": 3, "h_gates": 3,
  "nodes": [
    {"op": "xg", "index": 0}, {"op": "hg", "index": 0}, {"op": "add", "args": [0, 1]}, {"op": "sigmoid", "args": [2]},
    {"op": "xg", "index": 1}, {"op": "hg", "index": 1}, {"op": "add", "args": [4, 5]}, {"op": "sigmoid", "args": [6]},
    {"op": "xg", "index": 2}, {"op": "hg", "index": 2}, {"op": "mul", "args": [3, 9]}, {"op": "add", "args": [8, 10]},
    {"op": "tanh", "args": [11]}, {"op": "state", "name": "h"}, {"op": "one_minus", "args": [7]},
    {"op": "mul", "args": [14, 12]}, {"op": "mul", "args": [7, 13]}, {"op": "add", "args": [15, 16]}
  ],
  "outputs": {"h": 17}}"#;

/// Deterministic values in `[-2, 2)`.
fn data<T: Scalar>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f64((s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0)
        })
        .collect()
}

/// Nanoseconds per call of `f`, averaged over `iters` calls.
fn once(f: &mut dyn FnMut(), iters: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times the closures in turn, `reps` rounds of `iters` calls each after a warm-up, so that
/// load from other processes hits all of them alike; returns the median per closure.
fn interleaved(fs: &mut [&mut dyn FnMut()], iters: usize, reps: usize) -> Vec<f64> {
    for f in fs.iter_mut() {
        once(*f, iters);
    }
    let mut t = vec![Vec::new(); fs.len()];
    for _ in 0..reps {
        for (k, f) in fs.iter_mut().enumerate() {
            t[k].push(once(*f, iters));
        }
    }
    t.into_iter().map(median).collect()
}

/// Buffers of one DSL step, forward and backward.
struct DslStep<T> {
    x: Vec<T>,
    hp: Vec<T>,
    prev: Vec<Vec<T>>,
    next: Vec<Vec<T>>,
    tape: Vec<T>,
    dn: Vec<Vec<T>>,
    dp: Vec<Vec<T>>,
    dx: Vec<T>,
    dh: Vec<T>,
}

impl<T: Scalar> DslStep<T> {
    fn new(cell: &CompiledCell) -> Self {
        let spec = cell.spec();
        let (gx, gh, ns, k) = (
            spec.x_gates(),
            spec.h_gates(),
            spec.states().len(),
            cell.tape_width(),
        );
        DslStep {
            x: data(B * gx * H, 1),
            hp: data(B * gh * H, 2),
            prev: (0..ns).map(|s| data(B * H, 3 + s as u64)).collect(),
            next: vec![vec![T::zero(); B * H]; ns],
            tape: vec![T::zero(); B * k * H],
            dn: (0..ns).map(|s| data(B * H, 9 + s as u64)).collect(),
            dp: vec![vec![T::zero(); B * H]; ns],
            dx: vec![T::zero(); B * gx * H],
            dh: vec![T::zero(); B * gh * H],
        }
    }
    fn forward(&mut self, cell: &CompiledCell, act: Active) {
        let prev: Vec<&[T]> = self.prev.iter().map(Vec::as_slice).collect();
        let mut n: Vec<&mut [T]> = self.next.iter_mut().map(Vec::as_mut_slice).collect();
        cell.forward_step(
            H,
            act,
            &self.x,
            &self.hp,
            &[],
            &prev,
            &mut n,
            &mut self.tape,
        );
        black_box(&mut n);
    }
    fn backward(&mut self, cell: &CompiledCell, act: Active) {
        let prev: Vec<&[T]> = self.prev.iter().map(Vec::as_slice).collect();
        let dn: Vec<&[T]> = self.dn.iter().map(Vec::as_slice).collect();
        let mut d: Vec<&mut [T]> = self.dp.iter_mut().map(Vec::as_mut_slice).collect();
        cell.backward_step(
            H,
            act,
            &[],
            &prev,
            &self.tape,
            &dn,
            &mut d,
            &mut self.dx,
            &mut self.dh,
            &mut [],
        );
        black_box(&mut d);
    }
}

/// Built-in LSTM forward + backward step.
fn builtin_lstm<T: Scalar>(act: Active) -> impl FnMut() {
    let x = data::<T>(B * 4 * H, 1);
    let hp = data::<T>(B * 4 * H, 2);
    let (hprev, cprev) = (data::<T>(B * H, 3), data::<T>(B * H, 4));
    let (mut a, mut tc) = (vec![T::zero(); B * 4 * H], vec![T::zero(); B * H]);
    let (mut cn, mut hn) = (vec![T::zero(); B * H], vec![T::zero(); B * H]);
    let (dh0, dc0) = (data::<T>(B * H, 9), data::<T>(B * H, 10));
    let (mut dh, mut dc) = (dh0.clone(), dc0.clone());
    let mut dpre = vec![T::zero(); B * 4 * H];
    let lengths = act.lengths.map(<[usize]>::to_vec);
    move || {
        let act = Active {
            lengths: lengths.as_deref(),
            t: act.t,
        };
        // The built-in forward turns the pre-activations into activations in place and the
        // backward consumes dh/dc in place; refreshing them (three row copies) is the price of
        // measuring them repeatedly.
        a.copy_from_slice(&x);
        dh.copy_from_slice(&dh0);
        dc.copy_from_slice(&dc0);
        builtin_lstm_step(
            H, act, &mut a, &hp, &cprev, &hprev, &mut tc, &mut cn, &mut hn, &mut dh, &mut dc,
            &mut dpre,
        );
        black_box(&mut dpre);
    }
}

/// Built-in GRU forward + backward step.
fn builtin_gru<T: Scalar>(act: Active) -> impl FnMut() {
    let x = data::<T>(B * 3 * H, 1);
    let hp = data::<T>(B * 3 * H, 2);
    let bhn = data::<T>(H, 5);
    let hprev = data::<T>(B * H, 3);
    let (mut a, mut lin, mut hn) = (
        vec![T::zero(); B * 3 * H],
        vec![T::zero(); B * H],
        vec![T::zero(); B * H],
    );
    let dh0 = data::<T>(B * H, 9);
    let mut dh = dh0.clone();
    let (mut dx, mut dhp) = (vec![T::zero(); B * 3 * H], vec![T::zero(); B * 3 * H]);
    let lengths = act.lengths.map(<[usize]>::to_vec);
    move || {
        let act = Active {
            lengths: lengths.as_deref(),
            t: act.t,
        };
        a.copy_from_slice(&x);
        dh.copy_from_slice(&dh0);
        builtin_gru_step(
            H, act, &mut a, &hp, &bhn, &hprev, &mut lin, &mut hn, &mut dh, &mut dx, &mut dhp,
        );
        black_box(&mut dx);
    }
}

fn compare<T: Scalar>(
    ty: &str,
    name: &str,
    label: &str,
    cell: &CompiledCell,
    act: Active,
    mut builtin: impl FnMut(),
) {
    let mut st = DslStep::<T>::new(cell);
    st.forward(cell, act);
    let st = std::cell::RefCell::new(st);
    let mut fwd = || st.borrow_mut().forward(cell, act);
    let mut bwd = || st.borrow_mut().backward(cell, act);
    let t = interleaved(&mut [&mut fwd, &mut bwd, &mut builtin], 100, 31);
    let (f, b, base) = (t[0], t[1], t[2]);
    println!(
        "{ty} {name:4} ({label}): dsl fwd {:6.1} us + bwd {:6.1} us = {:6.1} us | built-in fwd+bwd {:6.1} us | ratio {:.2}",
        f / 1e3,
        b / 1e3,
        (f + b) / 1e3,
        base / 1e3,
        (f + b) / base
    );
}

fn report<T: Scalar>(ty: &str, lstm: &CompiledCell, gru: &CompiledCell) {
    let lengths: Vec<usize> = (0..B).map(|b| usize::from(b % 4 != 3)).collect();
    for (label, act) in [
        (
            "all rows active",
            Active {
                lengths: None,
                t: 0,
            },
        ),
        (
            "1/4 rows ended ",
            Active {
                lengths: Some(&lengths),
                t: 0,
            },
        ),
    ] {
        compare::<T>(ty, "LSTM", label, lstm, act, builtin_lstm::<T>(act));
        compare::<T>(ty, "GRU", label, gru, act, builtin_gru::<T>(act));
    }
}

fn main() {
    let lstm = CompiledCell::from_json(LSTM).expect("LSTM compiles");
    let gru = CompiledCell::from_json(GRU).expect("GRU compiles");
    println!(
        "B = {B}, H = {H}, one thread; LSTM tape K = {}, GRU tape K = {}",
        lstm.tape_width(),
        gru.tape_width()
    );
    report::<f32>("f32", &lstm, &gru);
    report::<f64>("f64", &lstm, &gru);
}
