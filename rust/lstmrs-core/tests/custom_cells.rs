//! Custom cells (compiled cell descriptions) run through the same network as the built-in ones:
//! the DSL forms of the LSTM and GRU equal the fused kernels everywhere, other cells pass
//! finite-difference checks through the whole network, and streaming equals the sequence pass.

mod common;

use common::Rng;
use lstmrs_core::cellexpr::register_cell;
use lstmrs_core::stepper::Stepper;
use lstmrs_core::{
    backward, forward, forward_regularized, Batch, CellKind, ForwardOptions, GradOutputs, Layout,
    Regularization, RnnConfig, RnnParams, Scalar,
};

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

/// Worst `|a - e| / (1 + |e|)`, failing when it exceeds `tol`.
fn assert_close<T: Scalar>(what: &str, a: &[T], e: &[T], tol: f64) {
    assert_eq!(a.len(), e.len(), "{what}: lengths");
    let mut worst = (0.0, 0);
    for (k, (&x, &y)) in a.iter().zip(e).enumerate() {
        let (x, y) = (x.to_f64(), y.to_f64());
        let err = (x - y).abs() / (1.0 + y.abs());
        assert!(err.is_finite(), "{what}[{k}]: {x} vs {y}");
        if err > worst.0 {
            worst = (err, k);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: worst relative error {:.3e} at [{}] ({} vs {})",
        worst.0,
        worst.1,
        a[worst.1].to_f64(),
        e[worst.1].to_f64()
    );
}

struct Problem<T> {
    x: Vec<T>,
    h0: Vec<T>,
    c0: Vec<T>,
    lengths: Vec<usize>,
    g_out: Vec<T>,
    g_h: Vec<T>,
    g_c: Vec<T>,
}

fn problem<T: Scalar>(cfg: &RnnConfig, b: usize, t: usize, seed: u64) -> Problem<T> {
    let mut rng = Rng::new(seed);
    let state = cfg.num_layers * cfg.num_directions() * b * cfg.hidden_size;
    Problem {
        x: rng.vec(b * t * cfg.input_size, -1.0, 1.0),
        h0: rng.vec(state, -0.5, 0.5),
        c0: rng.vec(state, -0.5, 0.5),
        lengths: (0..b)
            .map(|r| if r == 0 { t } else { 1 + rng.below(t) })
            .collect(),
        g_out: rng.vec(b * t * cfg.output_size(), -1.0, 1.0),
        g_h: rng.vec(state, -1.0, 1.0),
        g_c: rng.vec(state, -1.0, 1.0),
    }
}

fn batch<'a, T>(
    p: &'a Problem<T>,
    b: usize,
    t: usize,
    with_lengths: bool,
    with_init: bool,
    two: bool,
) -> Batch<'a, T> {
    Batch {
        input: &p.x,
        layout: Layout::BatchFirst,
        seq_len: t,
        batch: b,
        h0: with_init.then_some(&p.h0[..]),
        c0: (with_init && two).then_some(&p.c0[..]),
        lengths: with_lengths.then_some(&p.lengths[..]),
    }
}

/// The DSL LSTM and GRU through the sweep equal the built-in kernels: outputs, final states and
/// every gradient, across layers, directions, lengths, initial states and regularisation.
fn dsl_equals_builtin<T: Scalar>(tol: f64) {
    let (b, t, i, h) = (3, 5, 4, 6);
    for (json, builtin) in [(lstm_json(), CellKind::Lstm), (gru_json(), CellKind::Gru)] {
        let custom = register_cell(&json).unwrap();
        assert!(matches!(custom, CellKind::Custom(_)));
        let two = builtin.has_cell_state();
        assert_eq!(custom.has_cell_state(), two);
        for layers in [1, 2] {
            for bidir in [false, true] {
                let cfg_b = RnnConfig::new(builtin, i, h, layers, bidir, true).unwrap();
                let cfg_c = RnnConfig {
                    cell: custom,
                    ..cfg_b
                };
                let pb = RnnParams::<T>::init_uniform(cfg_b, 11);
                // Identical layouts: the same seed gives the same weights.
                let pc = RnnParams::<T>::init_uniform(cfg_c, 11);
                assert_eq!(pb.specs(), pc.specs());
                assert_eq!(pb.as_slice(), pc.as_slice());
                let prob = problem::<T>(&cfg_b, b, t, 5 + layers as u64);
                for (with_lengths, with_init, reg) in [
                    (false, false, false),
                    (true, false, false),
                    (false, true, false),
                    (true, true, false),
                    (true, true, true),
                ] {
                    let what = format!(
                        "{builtin:?} L={layers} bidir={bidir} lengths={with_lengths} \
                         init={with_init} reg={reg}"
                    );
                    let x = batch(&prob, b, t, with_lengths, with_init, two);
                    let opts = ForwardOptions {
                        training: true,
                        dropout: if reg { 0.3 } else { 0.0 },
                        seed: 9,
                        keep_tape: true,
                    };
                    let regu = if reg {
                        Regularization {
                            input_dropout: 0.2,
                            state_dropout: 0.25,
                            zoneout: 0.3,
                        }
                    } else {
                        Regularization::default()
                    };
                    let fb = forward_regularized(&pb, &x, &opts, &regu).unwrap();
                    let fc = forward_regularized(&pc, &x, &opts, &regu).unwrap();
                    assert_close(&format!("{what} output"), &fc.output, &fb.output, tol);
                    assert_close(&format!("{what} h_n"), &fc.h_n, &fb.h_n, tol);
                    assert_eq!(fc.c_n.is_some(), two);
                    if let (Some(a), Some(e)) = (&fc.c_n, &fb.c_n) {
                        assert_close(&format!("{what} c_n"), a, e, tol);
                    }
                    let g = GradOutputs {
                        output: Some(&prob.g_out[..]),
                        h_n: Some(&prob.g_h[..]),
                        c_n: two.then_some(&prob.g_c[..]),
                    };
                    let gb = backward(&pb, fb.tape.as_ref().unwrap(), &g).unwrap();
                    let gc = backward(&pc, fc.tape.as_ref().unwrap(), &g).unwrap();
                    for s in pb.specs() {
                        let r = s.offset..s.offset + s.len;
                        assert_close(
                            &format!("{what} d{}", s.name),
                            &gc.params[r.clone()],
                            &gb.params[r],
                            tol,
                        );
                    }
                    assert_close(&format!("{what} d_input"), &gc.input, &gb.input, tol);
                    assert_close(&format!("{what} d_h0"), &gc.h0, &gb.h0, tol);
                    if let (Some(a), Some(e)) = (&gc.c0, &gb.c0) {
                        assert_close(&format!("{what} d_c0"), a, e, tol);
                    }
                    // Inference (no tape) gives the same outputs.
                    let inf = ForwardOptions {
                        keep_tape: false,
                        ..opts
                    };
                    let fi = forward_regularized(&pc, &x, &inf, &regu).unwrap();
                    assert_close(&format!("{what} untaped"), &fi.output, &fc.output, 0.0);
                }
            }
        }
    }
}

#[test]
fn dsl_lstm_and_gru_equal_builtin_f64() {
    dsl_equals_builtin::<f64>(1e-12);
}

#[test]
fn dsl_lstm_and_gru_equal_builtin_f32() {
    dsl_equals_builtin::<f32>(1e-6);
}

/// Loss `<g_out, out> + <g_h, h_n> + <g_c, c_n>` and its gradient from `backward`, checked by
/// central differences on every parameter, input and initial-state element.
fn finite_differences(json: &str, layers: usize, bidir: bool, bias: bool) {
    let cell = register_cell(json).unwrap();
    let two = cell.has_cell_state();
    let (b, t, i, h) = (2, 4, 3, 3);
    let cfg = RnnConfig::new(cell, i, h, layers, bidir, bias).unwrap();
    let mut params = RnnParams::<f64>::init_uniform(cfg, 4);
    // Larger weights than the default init make the check more sensitive.
    params.as_mut_slice().iter_mut().for_each(|v| *v *= 2.0);
    let prob = problem::<f64>(&cfg, b, t, 21);
    let loss = |p: &RnnParams<f64>, x: &[f64], h0: &[f64], c0: &[f64]| {
        let batch = Batch {
            input: x,
            layout: Layout::BatchFirst,
            seq_len: t,
            batch: b,
            h0: Some(h0),
            c0: two.then_some(c0),
            lengths: Some(&prob.lengths),
        };
        let o = forward(p, &batch, &ForwardOptions::default()).unwrap();
        let dot = |a: &[f64], g: &[f64]| a.iter().zip(g).map(|(x, y)| x * y).sum::<f64>();
        dot(&o.output, &prob.g_out)
            + dot(&o.h_n, &prob.g_h)
            + o.c_n.map_or(0.0, |c| dot(&c, &prob.g_c))
    };
    let x = batch(&prob, b, t, true, true, two);
    let opts = ForwardOptions {
        keep_tape: true,
        ..Default::default()
    };
    let f = forward(&params, &x, &opts).unwrap();
    let g = backward(
        &params,
        f.tape.as_ref().unwrap(),
        &GradOutputs {
            output: Some(&prob.g_out),
            h_n: Some(&prob.g_h),
            c_n: two.then_some(&prob.g_c[..]),
        },
    )
    .unwrap();
    let eps = 1e-6;
    let check = |what: String, analytic: f64, plus: f64, minus: f64| {
        let num = (plus - minus) / (2.0 * eps);
        assert!(
            (analytic - num).abs() <= 1e-6 * (1.0 + num.abs()),
            "{what}: analytic {analytic} vs numeric {num}"
        );
    };
    for s in params.specs().to_vec() {
        for k in 0..s.len {
            let mut p = params.clone();
            p.as_mut_slice()[s.offset + k] += eps;
            let plus = loss(&p, &prob.x, &prob.h0, &prob.c0);
            p.as_mut_slice()[s.offset + k] -= 2.0 * eps;
            let minus = loss(&p, &prob.x, &prob.h0, &prob.c0);
            check(
                format!("{} {}[{k}]", cell.name(), s.name),
                g.params[s.offset + k],
                plus,
                minus,
            );
        }
    }
    let bump = |v: &[f64], k: usize, d: f64| {
        let mut v = v.to_vec();
        v[k] += d;
        v
    };
    for k in 0..prob.x.len() {
        let plus = loss(&params, &bump(&prob.x, k, eps), &prob.h0, &prob.c0);
        let minus = loss(&params, &bump(&prob.x, k, -eps), &prob.h0, &prob.c0);
        check(format!("{} x[{k}]", cell.name()), g.input[k], plus, minus);
    }
    for k in 0..prob.h0.len() {
        let plus = loss(&params, &prob.x, &bump(&prob.h0, k, eps), &prob.c0);
        let minus = loss(&params, &prob.x, &bump(&prob.h0, k, -eps), &prob.c0);
        check(format!("{} h0[{k}]", cell.name()), g.h0[k], plus, minus);
        if two {
            let plus = loss(&params, &prob.x, &prob.h0, &bump(&prob.c0, k, eps));
            let minus = loss(&params, &prob.x, &prob.h0, &bump(&prob.c0, k, -eps));
            check(
                format!("{} c0[{k}]", cell.name()),
                g.c0.as_ref().unwrap()[k],
                plus,
                minus,
            );
        }
    }
}

#[test]
fn peephole_gradients_match_finite_differences() {
    finite_differences(&peephole_json(), 2, true, true);
    finite_differences(&peephole_json(), 1, false, false);
}

#[test]
fn indrnn_gradients_match_finite_differences() {
    finite_differences(&indrnn_json(), 2, true, true);
    finite_differences(&indrnn_json(), 1, false, false);
}

#[test]
fn stepper_equals_forward_for_custom_cells() {
    // The sLSTM's internal states `n`, `m` start at zero in both and are carried by the stepper.
    for json in [peephole_json(), indrnn_json(), gru_json(), slstm_json()] {
        let cell = register_cell(&json).unwrap();
        for bias in [true, false] {
            let (b, t, i, h) = (3, 6, 4, 5);
            let cfg = RnnConfig::new(cell, i, h, 2, false, bias).unwrap();
            let p = RnnParams::<f64>::init_uniform(cfg, 8);
            let prob = problem::<f64>(&cfg, b, t, 2);
            let two = cell.has_cell_state();
            let mut x = batch(&prob, b, t, false, true, two);
            x.layout = Layout::TimeMajor;
            let full = forward(&p, &x, &ForwardOptions::default()).unwrap();
            let mut s = Stepper::new(p.view(), b).unwrap();
            s.set_state(&prob.h0, two.then_some(&prob.c0[..])).unwrap();
            let mut out = vec![0.0; b * h];
            for step in 0..t {
                s.step(p.view(), &prob.x[step * b * i..][..b * i], &mut out)
                    .unwrap();
                assert_close(
                    &format!("{} step {step}", cell.name()),
                    &out,
                    &full.output[step * b * h..][..b * h],
                    1e-13,
                );
            }
            assert_close("stepper h", s.h(), &full.h_n, 1e-13);
            if let Some(c) = &full.c_n {
                assert_close("stepper c", s.c(), c, 1e-13);
            }
        }
    }
}

#[test]
fn custom_parameter_names_shapes_and_init() {
    let cell = register_cell(&indrnn_json()).unwrap();
    // Registering the same description again gives the same cell without recompiling.
    assert_eq!(register_cell(&indrnn_json()).unwrap(), cell);
    assert_eq!(CellKind::parse(&indrnn_json()).unwrap(), cell);
    assert_eq!(cell.name(), "indrnn");
    assert_eq!(cell.description(), Some(indrnn_json().as_str()));
    let cfg = RnnConfig::new(cell, 3, 4, 2, true, true).unwrap();
    let p = RnnParams::<f64>::init_uniform(cfg, 1);
    let names: Vec<(String, Vec<usize>)> = p
        .specs()
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone()))
        .collect();
    let want = |l: usize, sfx: &str, inp: usize| {
        vec![
            (format!("weight_ih_l{l}{sfx}"), vec![4, inp]),
            (format!("bias_ih_l{l}{sfx}"), vec![4]),
            (format!("u_l{l}{sfx}"), vec![4]),
        ]
    };
    let mut expected = want(0, "", 3);
    expected.extend(want(0, "_reverse", 3));
    expected.extend(want(1, "", 8));
    expected.extend(want(1, "_reverse", 8));
    assert_eq!(names, expected);
    // `u` is uniform(1.0/sqrt(H)) = ±0.5, never all equal.
    let u = p.get("u_l1_reverse").unwrap();
    assert!(u.iter().all(|v| v.abs() <= 0.5) && u.iter().any(|&v| v != u[0]));

    let peep = register_cell(&peephole_json()).unwrap();
    let cfg = RnnConfig::new(peep, 2, 4, 1, false, true).unwrap();
    let p = RnnParams::<f32>::init_uniform(cfg, 1);
    // `w_co` is the constant 0.5.
    assert!(p.get("w_co_l0").unwrap().iter().all(|&v| v == 0.5));
    assert_eq!(p.get("weight_hh_l0").unwrap().len(), 16 * 4);
}

/// xLSTM's sLSTM (Beck et al. 2024) with its stabiliser: four states, two of them (`n`, `m`)
/// internal to the sweep, and every new op of the language's second version on the path.
fn slstm_json() -> String {
    let mut d = Dsl::default();
    let (xi, xf, xz, xo) = (d.xg(0), d.xg(1), d.xg(2), d.xg(3));
    let (hi, hf, hz, ho) = (d.hg(0), d.hg(1), d.hg(2), d.hg(3));
    let (c, n, m) = (d.state("c"), d.state("n"), d.state("m"));
    let it = d.bin("add", xi, hi);
    let ft = d.bin("add", xf, hf);
    let nft = d.un("neg", ft);
    let sp = d.un("softplus", nft);
    let log_f = d.un("neg", sp);
    let lfm = d.bin("add", log_f, m);
    let m_new = d.bin("max", lfm, it);
    let ia = d.bin("sub", it, m_new);
    let ig = d.un("exp", ia);
    let fa = d.bin("sub", lfm, m_new);
    let fg = d.un("exp", fa);
    let za = d.bin("add", xz, hz);
    let z = d.un("tanh", za);
    let fc = d.bin("mul", fg, c);
    let iz = d.bin("mul", ig, z);
    let c_new = d.bin("add", fc, iz);
    let fnn = d.bin("mul", fg, n);
    let n_new = d.bin("add", fnn, ig);
    let oa = d.bin("add", xo, ho);
    let o = d.un("sigmoid", oa);
    let ratio = d.bin("div", c_new, n_new);
    let h_new = d.bin("mul", o, ratio);
    d.json(
        "slstm_test",
        &["h", "c", "n", "m"],
        (4, 4),
        &[],
        &[("h", h_new), ("c", c_new), ("n", n_new), ("m", m_new)],
    )
}

#[test]
fn slstm_with_internal_states_passes_finite_differences() {
    // Through time, layers and both directions: the internal states' gradients flow across
    // steps inside the sweep.
    finite_differences(&slstm_json(), 2, true, true);
    finite_differences(&slstm_json(), 1, false, false);
}

#[test]
fn internal_states_start_at_zero() {
    let cell = register_cell(&slstm_json()).unwrap();
    assert_eq!(cell.num_states(), 4);
    assert!(cell.has_cell_state());
    let (b, t, i, h) = (2, 3, 3, 4);
    let cfg = RnnConfig::new(cell, i, h, 1, false, true).unwrap();
    let p = RnnParams::<f64>::init_uniform(cfg, 3);
    let prob = problem::<f64>(&cfg, b, t, 5);
    let x = batch(&prob, b, t, false, true, true);
    let o = forward(&p, &x, &ForwardOptions::default()).unwrap();
    // Step 1 from n = m = 0 by hand for unit 0 of row 0: with m0 = 0 and n0 = 0,
    // m1 = max(log f, i~), h1 = o * (f' c0 + i' z) / i'.
    let specs = p.specs().to_vec();
    let get = |name: &str| {
        let s = specs.iter().find(|s| s.name == name).unwrap();
        &p.as_slice()[s.offset..s.offset + s.len]
    };
    let (w_ih, w_hh, b_ih, b_hh) = (
        get("weight_ih_l0"),
        get("weight_hh_l0"),
        get("bias_ih_l0"),
        get("bias_hh_l0"),
    );
    let pre = |g: usize| {
        let row = g * h;
        let mut v = b_ih[row] + b_hh[row];
        for k in 0..i {
            v += w_ih[row * i + k] * prob.x[k];
        }
        for k in 0..h {
            v += w_hh[row * h + k] * prob.h0[k];
        }
        v
    };
    let (it, ft, zt, ot) = (pre(0), pre(1), pre(2), pre(3));
    let log_f = -((-ft).exp().ln_1p());
    let m1 = log_f.max(it);
    let (ig, fg) = ((it - m1).exp(), (log_f - m1).exp());
    let c1 = fg * prob.c0[0] + ig * zt.tanh();
    let h1 = 1.0 / (1.0 + (-ot).exp()) * c1 / ig;
    assert!((o.output[0] - h1).abs() < 1e-12, "{} vs {h1}", o.output[0]);
}

#[test]
fn bad_descriptions_are_errors() {
    assert!(register_cell("{\"name\": \"x\"}").is_err());
    assert!(CellKind::parse("rnn_tanh").is_err());
}
