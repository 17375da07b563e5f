//! `Model::input_gradient` against central finite differences in f64 (every pooling, token
//! models through their embedded vectors, `lengths`), and `Model::trace` against the cell
//! equations and against the same cell written in the cell language.

use lstmrs_core::cellexpr::register_cell;
use lstmrs_core::model::{
    Activation, InputKind, Model, ModelBatch, ModelConfig, ModelInput, Pooling,
};
use lstmrs_core::{CellKind, RnnConfig};

fn config(input: InputKind, cell: CellKind, bidir: bool, pooling: Pooling) -> ModelConfig {
    let width = match input {
        InputKind::Dense { features } => features,
        InputKind::Embedding { dim, .. } => dim,
    };
    ModelConfig {
        input,
        rnn: RnnConfig::new(cell, width, 4, 2, bidir, true).unwrap(),
        dropout: 0.0,
        regularization: Default::default(),
        pooling,
        head_hidden: vec![5],
        activation: Activation::Tanh,
        outputs: 2,
    }
}

fn batch<'a>(input: ModelInput<'a, f64>, lengths: Option<&'a [usize]>) -> ModelBatch<'a, f64> {
    ModelBatch {
        input,
        batch: 3,
        seq_len: 5,
        lengths,
        h0: None,
        c0: None,
    }
}

/// `Σ d · output` for recurrent-layer input `v` (features, or embedded vectors).
fn objective(model: &Model<f64>, v: &[f64], lengths: Option<&[usize]>, d: &[f64]) -> f64 {
    let input = match model.config().input {
        InputKind::Dense { .. } => ModelInput::Dense(v),
        InputKind::Embedding { .. } => ModelInput::Embedded(v),
    };
    let out = model.predict(&batch(input, lengths)).unwrap().output;
    out.iter().zip(d).map(|(o, g)| o * g).sum()
}

fn check(cfg: ModelConfig, lengths: Option<&[usize]>) {
    let (b, t, w) = (3, 5, 3);
    let model = Model::<f64>::new(cfg.clone(), 11).unwrap();
    let tokens: Vec<i64> = (0..b * t).map(|i| (i * 7 % 6) as i64).collect();
    let v: Vec<f64> = match cfg.input {
        InputKind::Dense { .. } => (0..b * t * w).map(|i| (i as f64 * 0.37).sin()).collect(),
        InputKind::Embedding { .. } => model.embed(&tokens).unwrap(),
    };
    let rows = if cfg.pooling == Pooling::PerStep {
        b * t
    } else {
        b
    };
    let d: Vec<f64> = (0..rows * 2).map(|i| (i as f64 * 0.61).cos()).collect();
    let input = match cfg.input {
        InputKind::Dense { .. } => ModelInput::Dense(&v),
        InputKind::Embedding { .. } => ModelInput::Tokens(&tokens),
    };
    let g = model.input_gradient(&batch(input, lengths), &d).unwrap();
    assert_eq!(g.input_grad.len(), b * t * w);
    let pred = model.predict(&batch(input, lengths)).unwrap().output;
    assert_eq!(g.output, pred);
    if let InputKind::Embedding { .. } = cfg.input {
        // Starting from the looked-up vectors gives the same numbers as from the ids.
        let e = model
            .input_gradient(&batch(ModelInput::Embedded(&v), lengths), &d)
            .unwrap();
        assert_eq!(e.input_grad, g.input_grad);
        assert_eq!(e.output, g.output);
    }
    assert_eq!(
        g.attention.is_some(),
        matches!(cfg.pooling, Pooling::Attention { .. })
    );
    let mut x = v.clone();
    for k in 0..x.len() {
        let orig = x[k];
        x[k] = orig + 1e-6;
        let up = objective(&model, &x, lengths, &d);
        x[k] = orig - 1e-6;
        let down = objective(&model, &x, lengths, &d);
        x[k] = orig;
        let num = (up - down) / 2e-6;
        let (row, step) = (k / (t * w), k / w % t);
        if lengths.is_some_and(|l| step >= l[row]) {
            // Padding: the output does not depend on it, and the attribution is exactly zero.
            assert_eq!(
                num, 0.0,
                "{:?}: padded input {k} moves the output",
                cfg.pooling
            );
            assert_eq!(g.input_grad[k], 0.0, "{:?}: padded input {k}", cfg.pooling);
            continue;
        }
        assert!(
            (num - g.input_grad[k]).abs() < 1e-7 + 1e-5 * num.abs(),
            "{:?} {:?} input {k}: numeric {num} vs analytic {}",
            cfg.pooling,
            cfg.input,
            g.input_grad[k]
        );
    }
}

#[test]
fn input_gradient_matches_finite_differences() {
    let lengths: &[usize] = &[5, 2, 4];
    for pooling in [
        Pooling::PerStep,
        Pooling::Last,
        Pooling::Mean,
        Pooling::Attention { units: 3 },
    ] {
        for (cell, bidir) in [(CellKind::Lstm, false), (CellKind::Gru, true)] {
            for lens in [None, Some(lengths)] {
                check(
                    config(InputKind::Dense { features: 3 }, cell, bidir, pooling),
                    lens,
                );
                check(
                    config(
                        InputKind::Embedding { vocab: 6, dim: 3 },
                        cell,
                        bidir,
                        pooling,
                    ),
                    lens,
                );
            }
        }
    }
}

#[test]
fn input_gradient_of_a_custom_cell_matches_finite_differences() {
    let cell = register_cell(&peephole_json()).unwrap();
    check(
        config(
            InputKind::Dense { features: 3 },
            cell,
            true,
            Pooling::Attention { units: 3 },
        ),
        Some(&[5, 2, 4]),
    );
}

#[test]
fn attention_weights_are_a_distribution_over_the_valid_steps() {
    let cfg = config(
        InputKind::Dense { features: 3 },
        CellKind::Lstm,
        false,
        Pooling::Attention { units: 3 },
    );
    let model = Model::<f64>::new(cfg, 3).unwrap();
    let x: Vec<f64> = (0..45).map(|i| (i as f64 * 0.9).sin()).collect();
    let lengths = [5, 2, 4];
    let g = model
        .input_gradient(&batch(ModelInput::Dense(&x), Some(&lengths)), &[1.0; 6])
        .unwrap();
    let a = g.attention.unwrap();
    for (row, &len) in lengths.iter().enumerate() {
        let w = &a[row * 5..(row + 1) * 5];
        assert!((w[..len].iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(w[..len].iter().all(|&v| v > 0.0));
        assert!(w[len..].iter().all(|&v| v == 0.0));
    }
    let tr = model
        .trace(&batch(ModelInput::Dense(&x), Some(&lengths)))
        .unwrap();
    assert_eq!(tr.attention.unwrap(), a);
}

/// The rows are split over the thread pool for large batches: each row's gradient must be what
/// that row alone gives.
#[test]
fn batched_input_gradient_equals_row_by_row() {
    let mut cfg = config(
        InputKind::Dense { features: 3 },
        CellKind::Lstm,
        false,
        Pooling::Last,
    );
    cfg.rnn = RnnConfig::new(CellKind::Lstm, 3, 48, 1, false, true).unwrap();
    let model = Model::<f64>::new(cfg, 5).unwrap();
    let (b, t) = (64, 24);
    let x: Vec<f64> = (0..b * t * 3).map(|i| (i as f64 * 0.13).sin()).collect();
    let lengths: Vec<usize> = (0..b).map(|r| 1 + r % t).collect();
    let d: Vec<f64> = (0..b * 2).map(|i| (i as f64).cos()).collect();
    let all = model
        .input_gradient(
            &ModelBatch {
                input: ModelInput::Dense(&x),
                batch: b,
                seq_len: t,
                lengths: Some(&lengths),
                h0: None,
                c0: None,
            },
            &d,
        )
        .unwrap();
    for r in [0, 1, 31, 32, 63] {
        let one = model
            .input_gradient(
                &ModelBatch {
                    input: ModelInput::Dense(&x[r * t * 3..(r + 1) * t * 3]),
                    batch: 1,
                    seq_len: t,
                    lengths: Some(&lengths[r..r + 1]),
                    h0: None,
                    c0: None,
                },
                &d[r * 2..r * 2 + 2],
            )
            .unwrap();
        let part = &all.input_grad[r * t * 3..(r + 1) * t * 3];
        for (a, e) in part.iter().zip(&one.input_grad) {
            assert!(
                (a - e).abs() <= 1e-12 * (1.0 + e.abs()),
                "row {r}: {a} vs {e}"
            );
        }
        assert!((all.output[r * 2] - one.output[0]).abs() < 1e-12);
    }
}

#[test]
fn wrong_d_output_shape_is_a_typed_error() {
    let model = Model::<f64>::new(
        config(
            InputKind::Dense { features: 3 },
            CellKind::Gru,
            false,
            Pooling::PerStep,
        ),
        1,
    )
    .unwrap();
    let x = vec![0.1; 45];
    let err = model
        .input_gradient(&batch(ModelInput::Dense(&x), None), &[0.0; 6])
        .unwrap_err();
    assert!(err.to_string().contains("d_output"), "{err}");
    let err = model.embed(&[0]).unwrap_err();
    assert!(err.to_string().contains("embedding"), "{err}");
}

fn lstm_json() -> String {
    // i, f, g, o = act(xg[k] + hg[k]); c' = f*c + i*g; h' = o*tanh(c').
    let gate = |act: &str, k: usize, base: usize| {
        format!(
            r#"{{"op": "xg", "index": {k}}}, {{"op": "hg", "index": {k}}}, {{"op": "add", "args": [{base}, {}]}}, {{"op": "{act}", "args": [{}]}}"#,
            base + 1,
            base + 2
        )
    };
    let nodes = [
        gate("sigmoid", 0, 0),
        gate("sigmoid", 1, 4),
        gate("tanh", 2, 8),
        gate("sigmoid", 3, 12),
        r#"{"op": "state", "name": "c"}, {"op": "mul", "args": [7, 16]}, {"op": "mul", "args": [3, 11]}, {"op": "add", "args": [17, 18]}, {"op": "tanh", "args": [19]}, {"op": "mul", "args": [15, 20]}"#.into(),
    ];
    format!(
        r#"{{"name": "lstm_dsl", "states": ["h", "c"], "x_gates": 4, "h_gates": 4, "unit_params": [], "nodes": [{}], "outputs": {{"h": 21, "c": 19}}}}"#,
        nodes.join(", ")
    )
}

fn peephole_json() -> String {
    // i, f see c; o sees c'.
    r#"{"name": "peep_explain", "states": ["h", "c"], "x_gates": 4, "h_gates": 4,
        "unit_params": [{"name": "w_ci", "init": {"uniform": 1.0}}, {"name": "w_co", "init": {"constant": 0.5}}],
        "nodes": [
          {"op": "state", "name": "c"}, {"op": "param", "name": "w_ci"}, {"op": "param", "name": "w_co"},
          {"op": "xg", "index": 0}, {"op": "hg", "index": 0}, {"op": "add", "args": [3, 4]},
          {"op": "mul", "args": [1, 0]}, {"op": "add", "args": [5, 6]}, {"op": "sigmoid", "args": [7]},
          {"op": "xg", "index": 1}, {"op": "hg", "index": 1}, {"op": "add", "args": [9, 10]},
          {"op": "sigmoid", "args": [11]},
          {"op": "xg", "index": 2}, {"op": "hg", "index": 2}, {"op": "add", "args": [13, 14]},
          {"op": "tanh", "args": [15]},
          {"op": "mul", "args": [12, 0]}, {"op": "mul", "args": [8, 16]}, {"op": "add", "args": [17, 18]},
          {"op": "xg", "index": 3}, {"op": "hg", "index": 3}, {"op": "add", "args": [20, 21]},
          {"op": "mul", "args": [2, 19]}, {"op": "add", "args": [22, 23]}, {"op": "sigmoid", "args": [24]},
          {"op": "tanh", "args": [19]}, {"op": "mul", "args": [25, 26]}
        ],
        "outputs": {"h": 27, "c": 19}}"#
        .into()
}

#[test]
fn lstm_trace_satisfies_the_cell_equations() {
    let cfg = config(
        InputKind::Dense { features: 3 },
        CellKind::Lstm,
        true,
        Pooling::Mean,
    );
    let model = Model::<f64>::new(cfg, 2).unwrap();
    let x: Vec<f64> = (0..45).map(|i| (i as f64 * 0.7).cos()).collect();
    let lengths = [5, 2, 4];
    let tr = model
        .trace(&batch(ModelInput::Dense(&x), Some(&lengths)))
        .unwrap();
    assert_eq!(tr.layers.len(), 4);
    let h = 4;
    for d in &tr.layers {
        let names: Vec<&str> = d.gates.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["i", "f", "g", "o"]);
        let (i, f, g, o) = (&d.gates[0].1, &d.gates[1].1, &d.gates[2].1, &d.gates[3].1);
        let (hs, cs) = (&d.states[0].1, &d.states[1].1);
        assert_eq!((d.states[0].0.as_str(), d.states[1].0.as_str()), ("h", "c"));
        for (r, &len) in lengths.iter().enumerate() {
            for s in 0..5 {
                for u in 0..h {
                    let k = (r * 5 + s) * h + u;
                    if s >= len {
                        assert_eq!((i[k], hs[k], cs[k]), (0.0, 0.0, 0.0));
                        continue;
                    }
                    // The previous step in this direction's time order; zero state before it.
                    let prev = if d.direction == 0 {
                        s.checked_sub(1)
                    } else {
                        (s + 1 < len).then_some(s + 1)
                    };
                    let c_prev = prev.map_or(0.0, |p| cs[(r * 5 + p) * h + u]);
                    let c = f[k] * c_prev + i[k] * g[k];
                    assert!((c - cs[k]).abs() < 1e-12);
                    assert!((o[k] * c.tanh() - hs[k]).abs() < 1e-12);
                    assert!(i[k] > 0.0 && i[k] < 1.0 && g[k].abs() < 1.0);
                }
            }
        }
    }
}

/// The built-in cells' traces come from the tape, a custom cell's from evaluating its
/// description: the same cell written both ways must give the same trace.
#[test]
fn custom_cell_trace_equals_the_builtin_trace() {
    let custom = register_cell(&lstm_json()).unwrap();
    let x: Vec<f64> = (0..45).map(|i| (i as f64 * 0.3).sin()).collect();
    let lengths = [4, 5, 1];
    let builtin = Model::<f64>::new(
        config(
            InputKind::Dense { features: 3 },
            CellKind::Lstm,
            true,
            Pooling::Last,
        ),
        9,
    )
    .unwrap();
    let mut dsl = Model::<f64>::new(
        config(
            InputKind::Dense { features: 3 },
            custom,
            true,
            Pooling::Last,
        ),
        1,
    )
    .unwrap();
    assert_eq!(dsl.num_params(), builtin.num_params());
    dsl.params_mut().copy_from_slice(builtin.params());
    let b = batch(ModelInput::Dense(&x), Some(&lengths));
    let (a, c) = (builtin.trace(&b).unwrap(), dsl.trace(&b).unwrap());
    for (l, m) in a.layers.iter().zip(&c.layers) {
        let names: Vec<&str> = m.gates.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["sigmoid_3", "sigmoid_7", "tanh_11", "sigmoid_15", "tanh_20"]
        );
        for k in 0..4 {
            for (p, q) in l.gates[k].1.iter().zip(&m.gates[k].1) {
                assert!((p - q).abs() < 1e-12, "gate {k}: {p} vs {q}");
            }
        }
        // tanh(c') is the fifth activation node.
        for (p, q) in l.states[1].1.iter().zip(&m.gates[4].1) {
            assert!((p.tanh() - q).abs() < 1e-12);
        }
        for s in 0..2 {
            assert_eq!(l.states[s].0, m.states[s].0);
            for (p, q) in l.states[s].1.iter().zip(&m.states[s].1) {
                assert!((p - q).abs() < 1e-12, "state {s}: {p} vs {q}");
            }
        }
    }
    for (p, q) in a.output.iter().zip(&c.output) {
        assert!((p - q).abs() < 1e-12);
    }
}

/// `backward_input` skips the weight products and must give the same input and initial-state
/// gradients as the full `backward`, bit for bit (the same products in the same order).
#[test]
fn backward_input_equals_backward_without_the_parameters() {
    use lstmrs_core::{
        backward, forward, network::backward_input, Batch, ForwardOptions, GradOutputs, Layout,
        RnnParams,
    };
    let custom = register_cell(&peephole_json()).unwrap();
    let plain = |cell| RnnConfig::new(cell, 3, 4, 2, true, true).unwrap();
    let projected = plain(CellKind::Lstm).with_proj_size(2).unwrap();
    for cfg in [
        plain(CellKind::Lstm),
        plain(CellKind::Gru),
        plain(custom),
        projected,
    ] {
        let cell = cfg.cell;
        let p = RnnParams::<f64>::init_uniform(cfg, 3);
        let (b, t) = (3, 5);
        let x: Vec<f64> = (0..b * t * 3).map(|i| (i as f64 * 0.4).sin()).collect();
        let lengths = [5, 3, 1];
        let batch = Batch {
            input: &x,
            layout: Layout::BatchFirst,
            seq_len: t,
            batch: b,
            h0: None,
            c0: None,
            lengths: Some(&lengths),
        };
        let opts = ForwardOptions {
            keep_tape: true,
            ..Default::default()
        };
        let out = forward(&p, &batch, &opts).unwrap();
        let tape = out.tape.unwrap();
        let d: Vec<f64> = (0..out.output.len()).map(|i| (i as f64).cos()).collect();
        let grads = GradOutputs {
            output: Some(&d),
            h_n: None,
            c_n: None,
        };
        let full = backward(&p, &tape, &grads).unwrap();
        let only = backward_input(&p, &tape, &grads).unwrap();
        assert!(only.params.is_empty() && !full.params.is_empty());
        assert_eq!(only.input, full.input, "{}", cell.name());
        assert_eq!(only.h0, full.h0);
        assert_eq!(only.c0, full.c0);
    }
}
