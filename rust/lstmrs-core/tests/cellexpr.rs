//! Custom cells compiled from descriptions: forward steps against direct formulas, backward steps
//! against central differences, and every validation error.

mod common;

use common::Rng;
use lstmrs_core::cellexpr::{
    Active, CellDesc, CellSpec, CompiledCell, NodeDesc, ParamInit, UnitParam,
};
use lstmrs_core::{Error, Scalar};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts allocations per thread, to show that steps after the first do not allocate.
struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count_alloc() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator; the counter is a const thread-local without a
// destructor, so touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Writes cell descriptions in the JSON format, one node at a time.
#[derive(Default)]
struct Dsl {
    nodes: Vec<String>,
}

impl Dsl {
    fn push(&mut self, node: String) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }
    fn xg(&mut self, k: usize) -> usize {
        self.push(format!(r#"{{"op": "xg", "index": {k}}}"#))
    }
    fn hg(&mut self, k: usize) -> usize {
        self.push(format!(r#"{{"op": "hg", "index": {k}}}"#))
    }
    fn state(&mut self, name: &str) -> usize {
        self.push(format!(r#"{{"op": "state", "name": "{name}"}}"#))
    }
    fn param(&mut self, name: &str) -> usize {
        self.push(format!(r#"{{"op": "param", "name": "{name}"}}"#))
    }
    fn constant(&mut self, v: f64) -> usize {
        self.push(format!(r#"{{"op": "const", "value": {v:?}}}"#))
    }
    fn un(&mut self, op: &str, a: usize) -> usize {
        self.push(format!(r#"{{"op": "{op}", "args": [{a}]}}"#))
    }
    fn bin(&mut self, op: &str, a: usize, b: usize) -> usize {
        self.push(format!(r#"{{"op": "{op}", "args": [{a}, {b}]}}"#))
    }
    /// `act(xg[k] + hg[k])`
    fn gate(&mut self, act: &str, k: usize) -> usize {
        let (x, h) = (self.xg(k), self.hg(k));
        let s = self.bin("add", x, h);
        self.un(act, s)
    }
    fn json(
        &self,
        name: &str,
        states: &[&str],
        gates: (usize, usize),
        params: &[(&str, &str)],
        outputs: &[(&str, usize)],
    ) -> String {
        let states: Vec<String> = states.iter().map(|s| format!("{s:?}")).collect();
        let params: Vec<String> = params
            .iter()
            .map(|(n, init)| format!(r#"{{"name": "{n}", "init": {init}}}"#))
            .collect();
        let outputs: Vec<String> = outputs.iter().map(|(s, n)| format!("{s:?}: {n}")).collect();
        format!(
            r#"{{"name": "{name}", "states": [{}], "x_gates": {}, "h_gates": {}, "unit_params": [{}], "nodes": [{}], "outputs": {{{}}}}}"#,
            states.join(", "),
            gates.0,
            gates.1,
            params.join(", "),
            self.nodes.join(", "),
            outputs.join(", ")
        )
    }
}

fn lstm_json() -> String {
    let mut d = Dsl::default();
    let i = d.gate("sigmoid", 0);
    let f = d.gate("sigmoid", 1);
    let g = d.gate("tanh", 2);
    let o = d.gate("sigmoid", 3);
    let c = d.state("c");
    let fc = d.bin("mul", f, c);
    let ig = d.bin("mul", i, g);
    let c2 = d.bin("add", fc, ig);
    let tc = d.un("tanh", c2);
    let h2 = d.bin("mul", o, tc);
    d.json("lstm", &["h", "c"], (4, 4), &[], &[("h", h2), ("c", c2)])
}

fn gru_json() -> String {
    let mut d = Dsl::default();
    let r = d.gate("sigmoid", 0);
    let z = d.gate("sigmoid", 1);
    let (x2, h2) = (d.xg(2), d.hg(2));
    let rh = d.bin("mul", r, h2);
    let a = d.bin("add", x2, rh);
    let n = d.un("tanh", a);
    let h = d.state("h");
    let omz = d.un("one_minus", z);
    let left = d.bin("mul", omz, n);
    let right = d.bin("mul", z, h);
    let out = d.bin("add", left, right);
    d.json("gru", &["h"], (3, 3), &[], &[("h", out)])
}

/// Peephole LSTM (Gers & Schmidhuber): i and f see `c`, o sees `c'`.
fn peephole_json() -> String {
    let mut d = Dsl::default();
    let c = d.state("c");
    let peep = |d: &mut Dsl, k: usize, w: &str, on: usize| {
        let (x, h, p) = (d.xg(k), d.hg(k), d.param(w));
        let s = d.bin("add", x, h);
        let pc = d.bin("mul", p, on);
        let s = d.bin("add", s, pc);
        d.un("sigmoid", s)
    };
    let i = peep(&mut d, 0, "w_ci", c);
    let f = peep(&mut d, 1, "w_cf", c);
    let g = d.gate("tanh", 2);
    let fc = d.bin("mul", f, c);
    let ig = d.bin("mul", i, g);
    let c2 = d.bin("add", fc, ig);
    let o = peep(&mut d, 3, "w_co", c2);
    let tc = d.un("tanh", c2);
    let h2 = d.bin("mul", o, tc);
    d.json(
        "peephole_lstm",
        &["h", "c"],
        (4, 4),
        &[
            ("w_ci", r#"{"uniform": 1.0}"#),
            ("w_cf", r#"{"uniform": 1.0}"#),
            ("w_co", r#"{"constant": 0.5}"#),
        ],
        &[("h", h2), ("c", c2)],
    )
}

/// Coupled input and forget gates: `i = 1 - f`.
fn cifg_json() -> String {
    let mut d = Dsl::default();
    let f = d.gate("sigmoid", 0);
    let g = d.gate("tanh", 1);
    let o = d.gate("sigmoid", 2);
    let c = d.state("c");
    let i = d.un("one_minus", f);
    let fc = d.bin("mul", f, c);
    let ig = d.bin("mul", i, g);
    let c2 = d.bin("add", fc, ig);
    let tc = d.un("tanh", c2);
    let h2 = d.bin("mul", o, tc);
    d.json("cifg", &["h", "c"], (3, 3), &[], &[("h", h2), ("c", c2)])
}

/// Minimal gated unit: `f = σ(xg0+hg0); n = tanh(xg1 + f*hg1); h' = (1-f)*h + f*n`.
fn mgu_json() -> String {
    let mut d = Dsl::default();
    let f = d.gate("sigmoid", 0);
    let (x1, h1) = (d.xg(1), d.hg(1));
    let fh = d.bin("mul", f, h1);
    let a = d.bin("add", x1, fh);
    let n = d.un("tanh", a);
    let h = d.state("h");
    let omf = d.un("one_minus", f);
    let keep = d.bin("mul", omf, h);
    let new = d.bin("mul", f, n);
    let out = d.bin("add", keep, new);
    d.json("mgu", &["h"], (2, 2), &[], &[("h", out)])
}

/// IndRNN: `h' = relu(xg0 + u*h)`, no recurrent matrix.
fn indrnn_json() -> String {
    let mut d = Dsl::default();
    let (x, u, h) = (d.xg(0), d.param("u"), d.state("h"));
    let uh = d.bin("mul", u, h);
    let a = d.bin("add", x, uh);
    let out = d.un("relu", a);
    d.json(
        "indrnn",
        &["h"],
        (1, 0),
        &[("u", r#"{"uniform": 1.0}"#)],
        &[("h", out)],
    )
}

fn elman_json() -> String {
    let mut d = Dsl::default();
    let out = d.gate("tanh", 0);
    d.json("elman", &["h"], (1, 1), &[], &[("h", out)])
}

/// Exercises the remaining ops: `neg`, `sub`, `square`, constants, a state computed from
/// another state, and a gate used twice.
fn mixed_json() -> String {
    let mut d = Dsl::default();
    let (x0, x1, h0) = (d.xg(0), d.xg(1), d.hg(0));
    let (s, m, w) = (d.state("s"), d.state("m"), d.param("w"));
    let sq = d.un("square", x1);
    let half = d.constant(0.5);
    let a = d.bin("mul", half, sq);
    let b = d.bin("sub", x0, a);
    let ng = d.un("neg", h0);
    let c = d.bin("mul", ng, s);
    let e = d.bin("add", b, c);
    let t = d.un("tanh", e);
    let wm = d.bin("mul", w, m);
    let mm = d.bin("sub", wm, t);
    let two = d.constant(2.0);
    let r = d.bin("mul", x0, two);
    let r = d.bin("add", r, m);
    let r = d.un("relu", r);
    let news = d.bin("add", t, r);
    d.json(
        "mixed",
        &["s", "m"],
        (2, 1),
        &[("w", r#"{"constant": 1.0}"#)],
        &[("s", news), ("m", mm)],
    )
}

/// Plumbing: one value feeding three gate gradients, a carried state, a constant state, one node
/// giving two states, an unused gate.
fn plumbing_json() -> String {
    let mut d = Dsl::default();
    let (x0, h0, x1) = (d.xg(0), d.hg(0), d.xg(1));
    let a = d.bin("add", x0, h0);
    let a = d.bin("add", a, x1);
    let s = d.un("sigmoid", a);
    let k = d.state("k");
    let c = d.constant(1.5);
    d.json(
        "plumbing",
        &["h", "k", "z", "w"],
        (3, 1),
        &[],
        &[("h", s), ("k", k), ("z", c), ("w", s)],
    )
}

fn plumbing_direct<T: Scalar>(h: usize, act: Active, inp: &Inputs<T>) -> Vec<Vec<T>> {
    let b = inp.prev[0].len() / h;
    let mut out = inp.prev.clone();
    for r in (0..b).filter(|&r| act.row(r)) {
        for j in 0..h {
            let x = |k: usize| inp.x[r * 3 * h + k * h + j];
            let s = (x(0) + inp.hp[r * h + j] + x(1)).sigmoid();
            out[0][r * h + j] = s;
            out[2][r * h + j] = T::from_f64(1.5);
            out[3][r * h + j] = s;
        }
    }
    out
}

fn compile(json: &str) -> CompiledCell {
    CompiledCell::from_json(json).expect("compiles")
}

/// One step's inputs.
struct Inputs<T> {
    x: Vec<T>,
    hp: Vec<T>,
    params: Vec<T>,
    prev: Vec<Vec<T>>,
}

fn inputs<T: Scalar>(rng: &mut Rng, cell: &CompiledCell, b: usize, h: usize) -> Inputs<T> {
    let spec = cell.spec();
    Inputs {
        x: rng.vec(b * spec.x_gates() * h, -2.0, 2.0),
        hp: rng.vec(b * spec.h_gates() * h, -2.0, 2.0),
        params: rng.vec(spec.unit_params().len() * h, -1.0, 1.0),
        prev: (0..spec.states().len())
            .map(|_| rng.vec(b * h, -1.5, 1.5))
            .collect(),
    }
}

/// Lengths with rows 1 and 3 past their end at time step `STEP`.
const LENGTHS: [usize; 5] = [5, 2, 3, 1, 4];
const STEP: usize = 2;

fn active(lengths: &[usize]) -> Active<'_> {
    Active {
        lengths: Some(lengths),
        t: STEP,
    }
}

/// Runs a forward step; returns the new states and the tape.
fn forward<T: Scalar>(
    cell: &CompiledCell,
    h: usize,
    act: Active,
    inp: &Inputs<T>,
    keep_tape: bool,
) -> (Vec<Vec<T>>, Vec<T>) {
    let bh = inp.prev[0].len();
    let mut next = vec![vec![T::from_f64(f64::NAN); bh]; inp.prev.len()];
    let mut tape = if keep_tape {
        vec![T::from_f64(f64::NAN); bh * cell.tape_width()]
    } else {
        Vec::new()
    };
    let prev: Vec<&[T]> = inp.prev.iter().map(Vec::as_slice).collect();
    let mut nx: Vec<&mut [T]> = next.iter_mut().map(Vec::as_mut_slice).collect();
    cell.forward_step(
        h,
        act,
        &inp.x,
        &inp.hp,
        &inp.params,
        &prev,
        &mut nx,
        &mut tape,
    );
    (next, tape)
}

fn assert_close<T: Scalar>(what: &str, got: &[T], want: &[T], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f64(), w.to_f64());
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{k}]: got {g}, want {w}"
        );
    }
}

fn lstm_direct<T: Scalar>(h: usize, act: Active, inp: &Inputs<T>) -> Vec<Vec<T>> {
    let b = inp.prev[0].len() / h;
    let (hp, cp) = (&inp.prev[0], &inp.prev[1]);
    let (mut hn, mut cn) = (hp.clone(), cp.clone());
    for r in (0..b).filter(|&r| act.row(r)) {
        for j in 0..h {
            let pre = |k: usize| inp.x[r * 4 * h + k * h + j] + inp.hp[r * 4 * h + k * h + j];
            let (i, f, g, o) = (
                pre(0).sigmoid(),
                pre(1).sigmoid(),
                pre(2).tanh_act(),
                pre(3).sigmoid(),
            );
            let c = f * cp[r * h + j] + i * g;
            cn[r * h + j] = c;
            hn[r * h + j] = o * c.tanh_act();
        }
    }
    vec![hn, cn]
}

fn gru_direct<T: Scalar>(h: usize, act: Active, inp: &Inputs<T>) -> Vec<Vec<T>> {
    let b = inp.prev[0].len() / h;
    let hp = &inp.prev[0];
    let mut hn = hp.clone();
    for r in (0..b).filter(|&r| act.row(r)) {
        for j in 0..h {
            let x = |k: usize| inp.x[r * 3 * h + k * h + j];
            let g = |k: usize| inp.hp[r * 3 * h + k * h + j];
            let rr = (x(0) + g(0)).sigmoid();
            let z = (x(1) + g(1)).sigmoid();
            let n = (x(2) + rr * g(2)).tanh_act();
            hn[r * h + j] = (T::one() - z) * n + z * hp[r * h + j];
        }
    }
    vec![hn]
}

fn check_direct<T: Scalar>(
    json: &str,
    direct: fn(usize, Active, &Inputs<T>) -> Vec<Vec<T>>,
    tol: f64,
) {
    let cell = compile(json);
    let mut rng = Rng::new(7);
    for &(b, h) in &[(5usize, 1usize), (5, 7), (5, 33), (5, 64)] {
        let inp = inputs::<T>(&mut rng, &cell, b, h);
        for lengths in [None, Some(&LENGTHS[..b])] {
            let act = Active { lengths, t: STEP };
            let want = direct(h, act, &inp);
            for keep in [true, false] {
                let (got, tape) = forward(&cell, h, act, &inp, keep);
                for (s, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_close(&format!("H={h} state {s} keep={keep}"), g, w, tol);
                }
                // Rows past their end leave zeros on the tape.
                let kh = cell.tape_width() * h;
                for r in (0..b).filter(|&r| keep && !act.row(r)) {
                    assert!(tape[r * kh..(r + 1) * kh].iter().all(|&v| v == T::zero()));
                }
            }
        }
    }
}

#[test]
fn lstm_in_the_dsl_matches_the_formulas() {
    check_direct::<f32>(&lstm_json(), lstm_direct, 1e-6);
    check_direct::<f64>(&lstm_json(), lstm_direct, 1e-12);
}

#[test]
fn gru_in_the_dsl_matches_the_formulas() {
    check_direct::<f32>(&gru_json(), gru_direct, 1e-6);
    check_direct::<f64>(&gru_json(), gru_direct, 1e-12);
}

#[test]
fn plumbing_cell_matches_the_formulas() {
    check_direct::<f32>(&plumbing_json(), plumbing_direct, 1e-6);
    check_direct::<f64>(&plumbing_json(), plumbing_direct, 1e-12);
}

#[test]
fn tape_keeps_only_what_backward_needs() {
    // LSTM: i, f, g, o, tanh(c') (the built-in kernel saves the same); GRU: r, z, n and
    // `hg[2] = W_hn h + b_hn` (the built-in saves the same four); MGU: f, n, `hg[1]`; the
    // relu cell: its pre-activation. The cell state `c'` of the LSTM is not needed.
    for (json, k) in [
        (lstm_json(), 5),
        (gru_json(), 4),
        (mgu_json(), 3),
        (cifg_json(), 4),
        (elman_json(), 1),
        (indrnn_json(), 1),
    ] {
        let cell = compile(&json);
        assert_eq!(
            cell.tape_width(),
            k,
            "{}\n{}",
            cell.spec().name(),
            cell.listing()
        );
    }
}

/// Ops per section of a listing (forward, inference, backward).
fn op_counts(cell: &CompiledCell) -> Vec<usize> {
    cell.listing()
        .split(':')
        .skip(1)
        .map(|sec| sec.lines().filter(|l| l.contains(" = ")).count())
        .collect()
}

#[test]
fn fusion_keeps_the_lstm_to_few_row_passes() {
    // Forward: four `act(xg + hg)`, `c' = f*c + i*g`, `tanh(c')`, `h' = o*tanh(c')`.
    // Backward: two for the gradient reaching `c'`, one for `dc`, one per gate (writing
    // `d_x_pre` and `d_h_pre` in the same loop), one clearing the direct `dh_prev`.
    let cell = compile(&lstm_json());
    assert_eq!(op_counts(&cell), [7, 7, 8], "{}", cell.listing());
    // GRU: r, z, `r*hg2 + xg2`, tanh, `1 - z`, `(1-z)*n + z*h`, and in training a copy of
    // `hg2` to the tape.
    let cell = compile(&gru_json());
    assert_eq!(op_counts(&cell)[..2], [7, 6], "{}", cell.listing());
}

#[test]
fn constants_fold_and_dead_nodes_vanish() {
    let mut d = Dsl::default();
    let x = d.xg(0);
    let (a, b) = (d.constant(0.25), d.constant(0.75));
    let one = d.bin("add", a, b);
    let scaled = d.bin("mul", x, one);
    let h = d.state("h");
    let _dead = d.gate("sigmoid", 0);
    let _dead2 = d.bin("mul", h, h);
    let out = d.un("tanh", scaled);
    let cell = compile(&d.json("fold", &["h"], (1, 1), &[], &[("h", out)]));
    let listing = cell.listing();
    let fwd_ops = listing
        .split("inference:")
        .next()
        .expect("listing has sections");
    assert_eq!(
        fwd_ops.lines().count(),
        2,
        "one op plus the header:\n{listing}"
    );
    let mut rng = Rng::new(3);
    let inp = inputs::<f64>(&mut rng, &cell, 2, 5);
    let act = Active {
        lengths: None,
        t: 0,
    };
    let (next, _) = forward(&cell, 5, act, &inp, true);
    let want: Vec<f64> = inp.x.iter().map(|v| v.tanh()).collect();
    assert_close("tanh(xg0)", &next[0], &want, 1e-15);
}

/// Backward gradients of one cell against central differences of
/// `L = Σ_s Σ w_s ⊙ next_s` over every coordinate of every input.
fn check_gradients(json: &str, seed: u64) {
    check_gradients_within(json, seed, 1e-7, 1e-6);
}

fn check_gradients_within(json: &str, seed: u64, atol: f64, rtol: f64) {
    let cell = compile(json);
    let spec = cell.spec().clone();
    let (b, h) = (5, 3);
    let ns = spec.states().len();
    let mut rng = Rng::new(seed);
    let inp = inputs::<f64>(&mut rng, &cell, b, h);
    let w: Vec<Vec<f64>> = (0..ns).map(|_| rng.vec(b * h, -1.0, 1.0)).collect();
    let lengths = &LENGTHS[..b];
    let act = active(lengths);
    let loss = |inp: &Inputs<f64>| -> f64 {
        let (next, _) = forward(&cell, h, act, inp, false);
        next.iter()
            .zip(&w)
            .map(|(n, w)| n.iter().zip(w).map(|(a, b)| a * b).sum::<f64>())
            .sum()
    };

    let (_, tape) = forward(&cell, h, act, &inp, true);
    let prev: Vec<&[f64]> = inp.prev.iter().map(Vec::as_slice).collect();
    let d_next: Vec<&[f64]> = w.iter().map(Vec::as_slice).collect();
    let mut d_prev = vec![vec![f64::NAN; b * h]; ns];
    let mut d_x = vec![f64::NAN; inp.x.len()];
    let mut d_h = vec![f64::NAN; inp.hp.len()];
    // Unit-param gradients are accumulated onto what is there.
    let base: Vec<f64> = rng.vec(inp.params.len(), -1.0, 1.0);
    let mut d_p = base.clone();
    {
        let mut dp: Vec<&mut [f64]> = d_prev.iter_mut().map(Vec::as_mut_slice).collect();
        cell.backward_step(
            h,
            act,
            &inp.params,
            &prev,
            &tape,
            &d_next,
            &mut dp,
            &mut d_x,
            &mut d_h,
            &mut d_p,
        );
    }
    let d_p: Vec<f64> = d_p.iter().zip(&base).map(|(a, b)| a - b).collect();

    const EPS: f64 = 1e-6;
    let check =
        |what: &str, analytic: &[f64], field: &dyn Fn(&mut Inputs<f64>) -> &mut Vec<f64>| {
            let mut probe = Inputs {
                x: inp.x.clone(),
                hp: inp.hp.clone(),
                params: inp.params.clone(),
                prev: inp.prev.clone(),
            };
            for k in 0..analytic.len() {
                let v = field(&mut probe)[k];
                field(&mut probe)[k] = v + EPS;
                let up = loss(&probe);
                field(&mut probe)[k] = v - EPS;
                let down = loss(&probe);
                field(&mut probe)[k] = v;
                let numeric = (up - down) / (2.0 * EPS);
                assert!(
                    (analytic[k] - numeric).abs() <= atol + rtol * numeric.abs(),
                    "{}: d{what}[{k}] = {}, numeric {numeric}\n{}",
                    spec.name(),
                    analytic[k],
                    cell.listing()
                );
            }
        };
    check("x_pre", &d_x, &|p| &mut p.x);
    check("h_pre", &d_h, &|p| &mut p.hp);
    check("params", &d_p, &|p| &mut p.params);
    for s in 0..ns {
        check(&format!("prev[{s}]"), &d_prev[s], &|p| &mut p.prev[s]);
    }
    // Rows past their end: the state gradient passes through, gate gradients are zero.
    let (gx, gh) = (spec.x_gates(), spec.h_gates());
    for r in (0..b).filter(|&r| !act.row(r)) {
        for s in 0..ns {
            assert_eq!(d_prev[s][r * h..(r + 1) * h], w[s][r * h..(r + 1) * h]);
        }
        assert!(d_x[r * gx * h..(r + 1) * gx * h].iter().all(|&v| v == 0.0));
        assert!(d_h[r * gh * h..(r + 1) * gh * h].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn lstm_gradients() {
    check_gradients(&lstm_json(), 11);
}

#[test]
fn gru_gradients() {
    check_gradients(&gru_json(), 12);
}

#[test]
fn peephole_lstm_gradients() {
    check_gradients(&peephole_json(), 13);
}

#[test]
fn cifg_lstm_gradients() {
    check_gradients(&cifg_json(), 14);
}

#[test]
fn mgu_gradients() {
    check_gradients(&mgu_json(), 15);
}

#[test]
fn indrnn_gradients() {
    check_gradients(&indrnn_json(), 16);
}

#[test]
fn elman_gradients() {
    check_gradients(&elman_json(), 17);
}

#[test]
fn remaining_ops_gradients() {
    check_gradients(&mixed_json(), 18);
}

#[test]
fn plumbing_gradients() {
    check_gradients(&plumbing_json(), 19);
}

/// A random cell over 3 x gates, 2 h gates, states `a`, `b` and param `u`, with the same DAG
/// kept for a plain f64 evaluation.
#[derive(Clone, Copy)]
enum N {
    Xg(usize),
    Hg(usize),
    State(usize),
    Param,
    Const(f64),
    Un(&'static str, usize),
    Bin(&'static str, usize, usize),
}

fn random_cell(rng: &mut Rng) -> (String, Vec<N>, [usize; 2]) {
    let mut d = Dsl::default();
    let mut dag = Vec::new();
    for k in 0..3 {
        d.xg(k);
        dag.push(N::Xg(k));
    }
    for k in 0..2 {
        d.hg(k);
        dag.push(N::Hg(k));
    }
    d.state("a");
    d.state("b");
    d.param("u");
    dag.extend([N::State(0), N::State(1), N::Param]);
    let c = (rng.uniform(-1.0, 1.0) * 8.0).round() / 8.0;
    d.constant(c);
    dag.push(N::Const(c));
    const UN: [&str; 6] = ["neg", "one_minus", "sigmoid", "tanh", "relu", "square"];
    const BIN: [&str; 3] = ["add", "sub", "mul"];
    for _ in 0..14 {
        // Prefer recent nodes, so the DAG is deep as well as wide.
        let pick = |rng: &mut Rng, n: usize| n - 1 - rng.below(n.min(6)).min(rng.below(n));
        let n = dag.len();
        if rng.below(3) == 0 {
            let (op, a) = (UN[rng.below(UN.len())], pick(rng, n));
            d.un(op, a);
            dag.push(N::Un(op, a));
        } else {
            let (op, a, b) = (BIN[rng.below(BIN.len())], pick(rng, n), pick(rng, n));
            d.bin(op, a, b);
            dag.push(N::Bin(op, a, b));
        }
    }
    let n = dag.len();
    let outs = [n - 1, n - 2 - rng.below(4)];
    let json = d.json(
        "random",
        &["a", "b"],
        (3, 2),
        &[("u", r#"{"uniform": 1.0}"#)],
        &[("a", outs[0]), ("b", outs[1])],
    );
    (json, dag, outs)
}

fn eval_dag(dag: &[N], x: &[f64], hg: &[f64], s: &[f64], u: f64) -> Vec<f64> {
    let mut v: Vec<f64> = Vec::with_capacity(dag.len());
    for n in dag {
        let y = match *n {
            N::Xg(k) => x[k],
            N::Hg(k) => hg[k],
            N::State(k) => s[k],
            N::Param => u,
            N::Const(c) => c,
            N::Un(op, a) => {
                let a = v[a];
                match op {
                    "neg" => -a,
                    "one_minus" => 1.0 - a,
                    "sigmoid" => 1.0 / (1.0 + (-a).exp()),
                    "tanh" => a.tanh(),
                    "relu" => a.max(0.0),
                    _ => a * a,
                }
            }
            N::Bin(op, a, b) => {
                let (a, b) = (v[a], v[b]);
                match op {
                    "add" => a + b,
                    "sub" => a - b,
                    _ => a * b,
                }
            }
        };
        v.push(y);
    }
    v
}

#[test]
fn random_cells_match_a_plain_evaluation_and_differences() {
    let mut rng = Rng::new(2024);
    for case in 0..60 {
        let (json, dag, outs) = random_cell(&mut rng);
        let cell = compile(&json);
        let (b, h) = (5, 3);
        let inp = inputs::<f64>(&mut rng, &cell, b, h);
        let act = active(&LENGTHS);
        let (next, _) = forward(&cell, h, act, &inp, true);
        for r in 0..b {
            for j in 0..h {
                let x: Vec<f64> = (0..3).map(|k| inp.x[r * 3 * h + k * h + j]).collect();
                let hg: Vec<f64> = (0..2).map(|k| inp.hp[r * 2 * h + k * h + j]).collect();
                let s = [inp.prev[0][r * h + j], inp.prev[1][r * h + j]];
                let v = eval_dag(&dag, &x, &hg, &s, inp.params[j]);
                for (st, &o) in outs.iter().enumerate() {
                    let want = if act.row(r) { v[o] } else { s[st] };
                    let got = next[st][r * h + j];
                    assert!(
                        (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
                        "case {case} state {st} row {r}: {got} vs {want}\n{json}\n{}",
                        cell.listing()
                    );
                }
            }
        }
        // Products of squares can make the loss large; differences lose digits in proportion.
        check_gradients_within(&json, 100 + case, 1e-6, 1e-5);
    }
}

#[test]
fn f32_steps_agree_with_f64() {
    // The f32 path (fast activations, vectorised kernels) against the f64 path of the same cell.
    for json in [peephole_json(), indrnn_json(), mixed_json()] {
        let cell = compile(&json);
        let (b, h) = (5, 37);
        let mut rng = Rng::new(5);
        let i64s = inputs::<f64>(&mut rng, &cell, b, h);
        let to32 = |v: &Vec<f64>| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let i32s = Inputs {
            x: to32(&i64s.x),
            hp: to32(&i64s.hp),
            params: to32(&i64s.params),
            prev: i64s.prev.iter().map(to32).collect(),
        };
        let act = active(&LENGTHS);
        let (n64, _) = forward(&cell, h, act, &i64s, true);
        let (n32, _) = forward(&cell, h, act, &i32s, true);
        for (a, b) in n32.iter().zip(&n64) {
            let b32 = to32(b);
            assert_close(cell.spec().name(), a, &b32, 1e-5);
        }
    }
}

#[test]
fn steps_do_not_allocate_after_the_first() {
    let cell = compile(&peephole_json());
    let (b, h) = (5, 16);
    let mut rng = Rng::new(9);
    let inp = inputs::<f32>(&mut rng, &cell, b, h);
    let prev: Vec<&[f32]> = inp.prev.iter().map(Vec::as_slice).collect();
    let (mut n0, mut n1) = (vec![0.0f32; b * h], vec![0.0f32; b * h]);
    let mut next: Vec<&mut [f32]> = vec![&mut n0, &mut n1];
    let mut tape = vec![0.0f32; b * h * cell.tape_width()];
    let dn: Vec<Vec<f32>> = (0..2).map(|_| rng.vec(b * h, -1.0, 1.0)).collect();
    let d_next: Vec<&[f32]> = dn.iter().map(Vec::as_slice).collect();
    let (mut p0, mut p1) = (vec![0.0f32; b * h], vec![0.0f32; b * h]);
    let mut d_prev: Vec<&mut [f32]> = vec![&mut p0, &mut p1];
    let (mut dx, mut dh) = (vec![0.0f32; inp.x.len()], vec![0.0f32; inp.hp.len()]);
    let mut dp = vec![0.0f32; inp.params.len()];
    let act = active(&LENGTHS);
    let mut step = |next: &mut Vec<&mut [f32]>, tape: &mut Vec<f32>| {
        cell.forward_step(h, act, &inp.x, &inp.hp, &inp.params, &prev, next, tape);
        cell.forward_step(h, act, &inp.x, &inp.hp, &inp.params, &prev, next, &mut []);
        cell.backward_step(
            h,
            act,
            &inp.params,
            &prev,
            tape,
            &d_next,
            &mut d_prev,
            &mut dx,
            &mut dh,
            &mut dp,
        );
    };
    step(&mut next, &mut tape);
    let before = ALLOCS.with(Cell::get);
    step(&mut next, &mut tape);
    assert_eq!(ALLOCS.with(Cell::get), before, "a warm step allocated");
    assert!(dp.iter().all(|v| v.is_finite()) && dp.iter().any(|&v| v != 0.0));
}

#[test]
fn compiled_cells_are_shareable() {
    fn check<T: Send + Sync>() {}
    check::<CompiledCell>();
    check::<CellSpec>();
}

#[test]
#[should_panic(expected = "tape must be [B, K*H]")]
fn wrong_tape_length_panics() {
    let cell = compile(&lstm_json());
    let mut rng = Rng::new(1);
    let inp = inputs::<f64>(&mut rng, &cell, 2, 3);
    let prev: Vec<&[f64]> = inp.prev.iter().map(Vec::as_slice).collect();
    let (mut n0, mut n1) = (vec![0.0; 6], vec![0.0; 6]);
    let mut next: Vec<&mut [f64]> = vec![&mut n0, &mut n1];
    let mut tape = vec![0.0; 7];
    let act = Active {
        lengths: None,
        t: 0,
    };
    cell.forward_step(
        3,
        act,
        &inp.x,
        &inp.hp,
        &inp.params,
        &prev,
        &mut next,
        &mut tape,
    );
}

#[test]
fn spec_accessors() {
    let spec = CellSpec::from_json(&peephole_json()).expect("valid");
    assert_eq!(spec.name(), "peephole_lstm");
    assert_eq!(spec.states(), ["h", "c"]);
    assert_eq!((spec.x_gates(), spec.h_gates()), (4, 4));
    let names: Vec<&str> = spec.unit_params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["w_ci", "w_cf", "w_co"]);
    assert_eq!(spec.unit_params()[0].init, ParamInit::Uniform(1.0));
    assert_eq!(spec.unit_params()[2].init, ParamInit::Constant(0.5));
}

// ---- validation ----

fn base_desc() -> CellDesc {
    let n = |op: &str| NodeDesc {
        op: op.into(),
        ..NodeDesc::default()
    };
    CellDesc {
        name: "t".into(),
        states: vec!["h".into(), "c".into()],
        x_gates: 2,
        h_gates: 1,
        unit_params: vec![UnitParam {
            name: "u".into(),
            init: ParamInit::Uniform(1.0),
        }],
        nodes: vec![
            NodeDesc {
                index: Some(0),
                ..n("xg")
            },
            NodeDesc {
                name: Some("c".into()),
                ..n("state")
            },
            NodeDesc {
                args: vec![0, 1],
                ..n("add")
            },
            NodeDesc {
                args: vec![2],
                ..n("tanh")
            },
        ],
        outputs: vec![("h".into(), 3), ("c".into(), 2)],
    }
}

/// The error of a description changed by `edit`, which must be a `Value` or `Name` error whose
/// message contains every one of `needles`.
fn error_of(edit: impl FnOnce(&mut CellDesc), needles: &[&str]) -> Error {
    let mut d = base_desc();
    CellSpec::from_desc(d.clone()).expect("the base description is valid");
    edit(&mut d);
    let err = CellSpec::from_desc(d).expect_err("must be rejected");
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "{msg:?} lacks {n:?}");
    }
    err
}

#[test]
fn unknown_op() {
    let e = error_of(|d| d.nodes[2].op = "pow".into(), &["pow", "node 2"]);
    assert!(
        matches!(
            e,
            Error::Name {
                arg: "cell.nodes",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn bad_arity() {
    let e = error_of(
        |d| d.nodes[2].args = vec![0],
        &["node 2", "2 args", "1 args"],
    );
    assert!(matches!(
        e,
        Error::Value {
            arg: "cell.nodes",
            ..
        }
    ));
    error_of(|d| d.nodes[3].args = vec![1, 2], &["node 3", "1 args"]);
    error_of(|d| d.nodes[0].args = vec![0], &["node 0", "0 args"]);
}

#[test]
fn forward_reference() {
    error_of(
        |d| d.nodes[2].args = vec![0, 3],
        &["node 2", "forward reference to node 3"],
    );
    error_of(
        |d| d.nodes[3].args = vec![3],
        &["node 3", "forward reference"],
    );
}

#[test]
fn gate_index_out_of_range() {
    error_of(
        |d| d.nodes[0].index = Some(2),
        &["node 0", "x_gates = 2", "gate index 2"],
    );
    error_of(
        |d| {
            d.nodes[0].op = "hg".into();
            d.h_gates = 0;
        },
        &["node 0", "h_gates = 0"],
    );
    error_of(|d| d.nodes[0].index = None, &["node 0", "index"]);
}

#[test]
fn unknown_state_or_param() {
    let e = error_of(|d| d.nodes[1].name = Some("q".into()), &["node 1", "\"q\""]);
    assert!(matches!(e, Error::Name { .. }));
    let e = error_of(
        |d| {
            d.nodes[1].op = "param".into();
            d.nodes[1].name = Some("v".into());
        },
        &["node 1", "\"v\"", "\"u\""],
    );
    assert!(matches!(e, Error::Name { .. }));
    let e = error_of(|d| d.outputs[1].0 = "q".into(), &["cell.outputs", "\"q\""]);
    assert!(matches!(e, Error::Name { .. }));
}

#[test]
fn missing_or_bad_outputs() {
    error_of(
        |d| {
            d.outputs.pop();
        },
        &["cell.outputs", "no output for state \"c\""],
    );
    error_of(|d| d.outputs[0].1 = 4, &["cell.outputs", "below 4"]);
    error_of(
        |d| d.outputs.push(("h".into(), 2)),
        &["cell.outputs", "\"h\" twice"],
    );
}

#[test]
fn duplicate_names() {
    error_of(
        |d| d.states[1] = "h".into(),
        &["cell.states", "distinct", "\"h\" twice"],
    );
    error_of(
        |d| d.unit_params.push(d.unit_params[0].clone()),
        &["cell.unit_params", "\"u\" twice"],
    );
}

#[test]
fn non_finite_values() {
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        error_of(
            |d| {
                d.nodes[1] = NodeDesc {
                    op: "const".into(),
                    value: Some(v),
                    ..NodeDesc::default()
                }
            },
            &["node 1", "finite const"],
        );
        error_of(
            |d| d.unit_params[0].init = ParamInit::Constant(v),
            &["unit param 0", "finite"],
        );
    }
    error_of(
        |d| d.unit_params[0].init = ParamInit::Uniform(-1.0),
        &["unit param 0", "-1"],
    );
    error_of(
        |d| {
            d.nodes[1] = NodeDesc {
                op: "const".into(),
                ..NodeDesc::default()
            }
        },
        &["node 1", "value"],
    );
    // JSON has no non-finite numbers; an overflowing literal is a parse error, not a panic.
    let json = r#"{"name":"t","states":["h"],"x_gates":1,"h_gates":0,
        "nodes":[{"op":"const","value":1e999}],"outputs":{"h":0}}"#;
    assert!(matches!(
        CellSpec::from_json(json),
        Err(Error::Value { arg: "cell", .. })
    ));
}

#[test]
fn empty_or_bad_structure() {
    error_of(|d| d.states.clear(), &["cell.states", "at least one state"]);
    error_of(|d| d.nodes.clear(), &["cell.nodes", "at least one node"]);
    error_of(|d| d.x_gates = 0, &["cell.x_gates", "1 to 256"]);
    error_of(|d| d.h_gates = 1000, &["cell.h_gates"]);
    error_of(|d| d.name.clear(), &["cell.name"]);
    error_of(
        |d| d.states[0] = "9h".into(),
        &["cell.states", "lowercase identifier"],
    );
    error_of(
        |d| d.unit_params[0].name = "weight_ih".into(),
        &["cell.unit_params", "weight_ih"],
    );
}

#[test]
fn json_type_errors_name_the_field() {
    let cases: [(&str, &str); 8] = [
        ("[1, 2]", "a JSON object"),
        ("{\"name\": \"t\"", "a JSON cell description"),
        (
            r#"{"name":"t","states":"h","x_gates":1,"h_gates":0,"nodes":[],"outputs":{}}"#,
            "cell.states",
        ),
        (
            r#"{"name":"t","states":["h"],"x_gates":-1,"h_gates":0,"nodes":[],"outputs":{}}"#,
            "cell.x_gates",
        ),
        (
            r#"{"name":"t","states":["h"],"x_gates":1,"h_gates":0,"nodes":[{"op":"add","args":[0,"a"]}],"outputs":{}}"#,
            "node 0",
        ),
        (
            r#"{"name":"t","states":["h"],"x_gates":1,"h_gates":0,"nodes":[{"args":[]}],"outputs":{}}"#,
            "node 0",
        ),
        (
            r#"{"name":"t","states":["h"],"x_gates":1,"h_gates":0,"unit_params":[{"name":"u","init":{"normal":1}}],"nodes":[],"outputs":{}}"#,
            "unit param 0",
        ),
        (
            r#"{"name":"t","states":["h"],"x_gates":1,"h_gates":0,"nodes":[{"op":"xg","index":0}]}"#,
            "outputs",
        ),
    ];
    for (json, needle) in cases {
        let err = CellSpec::from_json(json).expect_err(json);
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    }
}

// ---- The second version of the language: exp, log, sqrt, softplus, safe division, max/min and
// the row reductions.

/// Every new element-wise op on arguments kept inside their smooth domains (positive logs and
/// denominators, no ties), so central differences apply everywhere.
fn v2_ops_json() -> String {
    let mut d = Dsl::default();
    let (x0, x1, h0) = (d.xg(0), d.xg(1), d.hg(0));
    let (s, m, w) = (d.state("s"), d.state("m"), d.param("w"));
    let half = d.constant(0.5);
    let a = d.bin("mul", x0, half);
    let e = d.un("exp", a); // exp(x0 / 2)
    let sp = d.un("softplus", h0);
    let tenth = d.constant(0.1);
    let la = d.bin("add", sp, tenth);
    let l = d.un("log", la); // log(softplus(h0) + 0.1)
    let sq = d.un("square", x1);
    let sa = d.bin("add", sq, half);
    let q = d.un("sqrt", sa); // sqrt(x1^2 + 0.5)
    let num = d.bin("mul", x1, s);
    let quarter = d.constant(0.25);
    let den = d.bin("add", e, quarter);
    let dv = d.bin("div", num, den); // x1 s / (exp(x0/2) + 0.25)
    let mx = d.bin("max", x0, h0);
    let mn = d.bin("min", s, w);
    let el = d.bin("mul", e, l);
    let t = d.bin("add", el, q);
    let t = d.bin("sub", t, dv);
    let news = d.bin("add", t, mx);
    let spm = d.un("softplus", m);
    let mq = d.bin("mul", mn, q);
    let newm = d.bin("add", mq, spm);
    d.json(
        "ops_v2",
        &["s", "m"],
        (2, 1),
        &[("w", r#"{"uniform": 1.0}"#)],
        &[("s", news), ("m", newm)],
    )
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn v2_ops_direct<T: Scalar>(h: usize, act: Active, inp: &Inputs<T>) -> Vec<Vec<T>> {
    let f = |v: T| v.to_f64();
    let b = inp.prev[0].len() / h;
    let mut out = vec![vec![T::zero(); b * h]; 2];
    for r in 0..b {
        for j in 0..h {
            let (x0, x1) = (f(inp.x[r * 2 * h + j]), f(inp.x[r * 2 * h + h + j]));
            let h0 = f(inp.hp[r * h + j]);
            let (s, m, w) = (
                f(inp.prev[0][r * h + j]),
                f(inp.prev[1][r * h + j]),
                f(inp.params[j]),
            );
            let (ns, nm) = if act.row(r) {
                let e = (0.5 * x0).exp();
                let q = (x1 * x1 + 0.5).sqrt();
                let ns = e * (softplus(h0) + 0.1).ln() + q - x1 * s / (e + 0.25) + x0.max(h0);
                (ns, s.min(w) * q + softplus(m))
            } else {
                (s, m)
            };
            out[0][r * h + j] = T::from_f64(ns);
            out[1][r * h + j] = T::from_f64(nm);
        }
    }
    out
}

#[test]
fn v2_ops_match_the_formulas() {
    check_direct::<f32>(&v2_ops_json(), v2_ops_direct, 1e-5);
    check_direct::<f64>(&v2_ops_json(), v2_ops_direct, 1e-12);
}

#[test]
fn v2_ops_gradients() {
    check_gradients(&v2_ops_json(), 31);
}

/// Layer normalisation of a gate pre-activation with learned gain and bias (Ba et al. 2016),
/// plus a row sum feeding the second state: the units of a row are coupled both ways.
fn layer_norm_json() -> String {
    let mut d = Dsl::default();
    let (x0, h0, x1) = (d.xg(0), d.hg(0), d.xg(1));
    let (s, c) = (d.state("s"), d.state("c"));
    let (gain, bias) = (d.param("gain"), d.param("bias"));
    let a = d.bin("add", x0, h0);
    let mu = d.un("mean", a);
    let cen = d.bin("sub", a, mu);
    let sq = d.un("square", cen);
    let var = d.un("mean", sq);
    let eps = d.constant(1e-5);
    let ve = d.bin("add", var, eps);
    let sd = d.un("sqrt", ve);
    let y = d.bin("div", cen, sd);
    let y = d.bin("mul", y, gain);
    let y = d.bin("add", y, bias);
    let t = d.un("tanh", y);
    let xs = d.bin("mul", x1, s);
    let tot = d.un("sum", xs);
    let k = d.constant(0.1);
    let tot = d.bin("mul", tot, k);
    let newc = d.bin("add", c, tot);
    let news = d.bin("mul", t, newc);
    d.json(
        "layer_norm_test",
        &["s", "c"],
        (2, 1),
        &[
            ("gain", r#"{"constant": 1.0}"#),
            ("bias", r#"{"constant": 0.0}"#),
        ],
        &[("s", news), ("c", newc)],
    )
}

fn layer_norm_direct<T: Scalar>(h: usize, act: Active, inp: &Inputs<T>) -> Vec<Vec<T>> {
    let f = |v: T| v.to_f64();
    let b = inp.prev[0].len() / h;
    let mut out = vec![vec![T::zero(); b * h]; 2];
    for r in 0..b {
        let a: Vec<f64> = (0..h)
            .map(|j| f(inp.x[r * 2 * h + j]) + f(inp.hp[r * h + j]))
            .collect();
        let mu = a.iter().sum::<f64>() / h as f64;
        let var = a.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / h as f64;
        let tot: f64 = (0..h)
            .map(|j| f(inp.x[r * 2 * h + h + j]) * f(inp.prev[0][r * h + j]))
            .sum();
        for j in 0..h {
            let (s, c) = (f(inp.prev[0][r * h + j]), f(inp.prev[1][r * h + j]));
            let (ns, nc) = if act.row(r) {
                let y = (a[j] - mu) / (var + 1e-5).sqrt() * f(inp.params[j]) + f(inp.params[h + j]);
                let nc = c + 0.1 * tot;
                (y.tanh() * nc, nc)
            } else {
                (s, c)
            };
            out[0][r * h + j] = T::from_f64(ns);
            out[1][r * h + j] = T::from_f64(nc);
        }
    }
    out
}

#[test]
fn layer_norm_matches_the_formulas() {
    check_direct::<f32>(&layer_norm_json(), layer_norm_direct, 1e-5);
    check_direct::<f64>(&layer_norm_json(), layer_norm_direct, 1e-12);
}

#[test]
fn layer_norm_gradients_couple_the_units_of_a_row() {
    // The backward of mean and variance couples every unit of a row: the differences probe
    // each input coordinate against every output of its row.
    check_gradients(&layer_norm_json(), 32);
}

#[test]
fn reductions_run_once_per_row_and_step() {
    // The forward computes the mean, the variance and the sum once each (one row pass per
    // reduction), however many units use them; no reduction is recomputed from the tape.
    let cell = compile(&layer_norm_json());
    let listing = cell.listing();
    let forward = listing.split("inference:").next().unwrap();
    assert_eq!(forward.matches("RowMean").count(), 2, "{listing}");
    assert_eq!(forward.matches("RowSum").count(), 1, "{listing}");
}

/// `log` and division at the edges of their domains: clamped values, zero gradients where the
/// argument is clamped, finite everywhere; max/min give a tie's gradient to the first argument.
#[test]
fn domain_edges_are_finite_and_documented() {
    use lstmrs_core::cellexpr::{DIV_EPS, LOG_FLOOR};
    let mut d = Dsl::default();
    let (x0, x1) = (d.xg(0), d.xg(1));
    let l = d.un("log", x0);
    let q = d.bin("div", x1, x0);
    let r = d.un("sqrt", x0);
    let mx = d.bin("max", x0, x1);
    let mn = d.bin("min", x1, x0);
    let json = d.json(
        "edges",
        &["a", "b", "c", "d", "e"],
        (2, 0),
        &[],
        &[("a", l), ("b", q), ("c", r), ("d", mx), ("e", mn)],
    );
    let cell = compile(&json);
    // Row 0: x0 = 0 (log and sqrt clamped, division by +eps), ties for max/min;
    // row 1: x0 = -1 (log clamped, sqrt 0), row 2: x0 = -1e-13 (division by -eps).
    let h = 1;
    let x = vec![0.0, 0.0, -1.0, 2.0, -1e-13, 1.0];
    let mut prev = vec![vec![0.0f64; 3]; 5];
    prev[0][0] = 0.0;
    let inp = Inputs {
        x: x.clone(),
        hp: vec![],
        params: vec![],
        prev,
    };
    let all = Active {
        lengths: None,
        t: 0,
    };
    let (next, tape) = forward(&cell, h, all, &inp, true);
    let floor = LOG_FLOOR.ln();
    assert_eq!(next[0], vec![floor, floor, floor]);
    assert_eq!(next[1], vec![0.0, 2.0 / -1.0, 1.0 / -DIV_EPS]);
    assert_eq!(next[2], vec![0.0, 0.0, 0.0]);
    assert_eq!(next[3], vec![0.0, 2.0, 1.0]);
    assert_eq!(next[4], vec![0.0, -1.0, -1e-13]);
    assert!(next.iter().flatten().all(|v| v.is_finite()));
    // Backward with unit gradients on every output.
    let ones = vec![1.0f64; 3];
    let d_next: Vec<&[f64]> = (0..5).map(|_| ones.as_slice()).collect();
    let prevs: Vec<&[f64]> = inp.prev.iter().map(Vec::as_slice).collect();
    let mut d_prev = vec![vec![0.0; 3]; 5];
    let mut d_x = vec![f64::NAN; 6];
    let mut dp: Vec<&mut [f64]> = d_prev.iter_mut().map(Vec::as_mut_slice).collect();
    cell.backward_step(
        h,
        all,
        &[],
        &prevs,
        &tape,
        &d_next,
        &mut dp,
        &mut d_x,
        &mut [],
        &mut [],
    );
    // Row 0: log, sqrt and the division's denominator clamped (0); the division's numerator
    // 1/eps; max(x0, x1) and min(x1, x0) tie: 1 to the first argument of each.
    assert_eq!(d_x[0], 1.0, "x0 of row 0: max's tie only");
    assert_eq!(
        d_x[1],
        1.0 / DIV_EPS + 1.0,
        "x1 of row 0: division numerator + min's tie"
    );
    // Row 1: x0 = -1 < x1 = 2: log and sqrt clamped; d(x1/x0)/dx0 = -x1/x0^2 = -2; max -> x1,
    // min -> x0.
    assert_eq!(d_x[2], -2.0 + 1.0);
    assert_eq!(d_x[3], 1.0 / -1.0 + 1.0);
    // Row 2: the denominator inside the band: no gradient to it, 1/(-eps) to the numerator.
    assert_eq!(d_x[4], 1.0);
    assert_eq!(d_x[5], 1.0 / -DIV_EPS + 1.0);
}

#[test]
fn v2_errors_name_the_op() {
    let err = CompiledCell::from_json(
        r#"{"name": "bad", "states": ["h"], "x_gates": 1, "h_gates": 0, "nodes": [{"op": "xg", "index": 0}, {"op": "div", "args": [0]}], "outputs": {"h": 1}}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("2 args for \"div\""), "{err}");
    let err = CompiledCell::from_json(
        r#"{"name": "bad", "states": ["h"], "x_gates": 1, "h_gates": 0, "nodes": [{"op": "xg", "index": 0}, {"op": "logsumexp", "args": [0]}], "outputs": {"h": 1}}"#,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("logsumexp") && msg.contains("softplus") && msg.contains("mean"),
        "{msg}"
    );
}
