//! PyTorch's semantics that hold exactly, checked on the fast path (and where cheap on the
//! reference): packed-sequence lengths, the reverse direction, the concatenation of directions,
//! stacking, layouts and dropout.

mod common;

use common::*;
use lstmrs_core::{
    backward, dropout::dropout_mask, forward, reference, Batch, CellKind, ForwardOptions,
    GradOutputs, Layout, RnnConfig, RnnParams, Scalar,
};

const TOL: f64 = 1e-12;

fn ragged_cases(layers: &[usize], s: Shape) -> Vec<Case> {
    grid(&[s])
        .into_iter()
        .filter(|c| c.ragged && layers.contains(&c.layers))
        .collect()
}

fn check_padding_zero<T: Scalar>(case: &Case, seed: u64) {
    let d = case.data::<T>(seed);
    let s = case.shape;
    let lengths = d.lengths.as_ref().expect("ragged");
    let f = case.config().output_size();
    let fast = forward(&d.params, &d.batch(), &eval_opts()).expect("forward");
    let want = reference::forward(&d.params, &d.batch(), &eval_opts()).expect("reference");
    for out in [&fast.output, &want.output] {
        for b in 0..s.batch {
            for t in 0..s.steps {
                let row = &out[at(case.layout, s.steps, s.batch, f, t, b)..][..f];
                if t >= lengths[b] {
                    assert!(
                        row.iter().all(|&v| v == T::zero()),
                        "output[t={t}, b={b}] past length {} is {row:?} in {case:?}",
                        lengths[b]
                    );
                } else {
                    assert!(
                        row.iter().any(|&v| v != T::zero()),
                        "valid output[t={t}, b={b}] is all zero in {case:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn outputs_past_length_are_exactly_zero() {
    for (k, case) in ragged_cases(&[1, 2, 3], shape(3, 5, 4, 6))
        .iter()
        .enumerate()
    {
        check_padding_zero::<f64>(case, k as u64);
        check_padding_zero::<f32>(case, k as u64);
    }
}

/// Each row of a ragged batch, forward and backward, equals that row's sequence truncated to its
/// length and run alone: the final state is the state at the last valid step, the reverse
/// direction starts at that step, and the parameter gradients are the sum over rows.
#[test]
fn rows_equal_their_truncated_sequences_run_alone() {
    for (k, case) in ragged_cases(&[1, 2, 3], shape(3, 4, 4, 6))
        .iter()
        .filter(|c| c.init_state)
        .enumerate()
    {
        let d = case.data::<f64>(200 + k as u64);
        let (s, cfg) = (case.shape, case.config());
        let (f_in, f_out) = (s.input, cfg.output_size());
        let lengths = d.lengths.clone().expect("ragged");
        let full = forward(&d.params, &d.batch(), &tape_opts()).expect("forward");
        let gfull = backward(
            &d.params,
            full.tape.as_ref().expect("tape"),
            &d.grad_outputs(),
        )
        .expect("backward");
        let mut param_sum = vec![0.0; d.params.len()];
        for b in 0..s.batch {
            let len = lengths[b];
            let take = |buf: &[f64], feat: usize| -> Vec<f64> {
                (0..len)
                    .flat_map(|t| {
                        buf[at(case.layout, s.steps, s.batch, feat, t, b)..][..feat].to_vec()
                    })
                    .collect()
            };
            let input = take(&d.input, f_in);
            let h0 = state_row(d.h0.as_ref().expect("h0"), s.batch, s.hidden, b);
            let c0 = d.c0.as_ref().map(|c| state_row(c, s.batch, s.hidden, b));
            let x = Batch {
                input: &input,
                layout: case.layout,
                seq_len: len,
                batch: 1,
                h0: Some(&h0),
                c0: c0.as_deref(),
                lengths: None,
            };
            let alone = forward(&d.params, &x, &tape_opts()).expect("forward alone");
            assert_close(
                "output",
                &take(&full.output, f_out),
                &alone.output,
                TOL,
                TOL,
                case,
            );
            let h_n = state_row(&full.h_n, s.batch, s.hidden, b);
            assert_close("h_n", &h_n, &alone.h_n, TOL, TOL, case);
            if let (Some(c), Some(a)) = (&full.c_n, &alone.c_n) {
                assert_close(
                    "c_n",
                    &state_row(c, s.batch, s.hidden, b),
                    a,
                    TOL,
                    TOL,
                    case,
                );
            }

            let d_out = take(&d.d_output, f_out);
            let d_h = state_row(&d.d_h_n, s.batch, s.hidden, b);
            let d_c = d.d_c_n.as_ref().map(|c| state_row(c, s.batch, s.hidden, b));
            let g = backward(
                &d.params,
                alone.tape.as_ref().expect("tape"),
                &GradOutputs {
                    output: Some(&d_out),
                    h_n: Some(&d_h),
                    c_n: d_c.as_deref(),
                },
            )
            .expect("backward alone");
            assert_close(
                "d_input",
                &take(&gfull.input, f_in),
                &g.input,
                TOL,
                TOL,
                case,
            );
            let dh0 = state_row(&gfull.h0, s.batch, s.hidden, b);
            assert_close("d_h0", &dh0, &g.h0, TOL, TOL, case);
            if let (Some(c), Some(a)) = (&gfull.c0, &g.c0) {
                assert_close(
                    "d_c0",
                    &state_row(c, s.batch, s.hidden, b),
                    a,
                    TOL,
                    TOL,
                    case,
                );
            }
            param_sum
                .iter_mut()
                .zip(&g.params)
                .for_each(|(a, &v)| *a += v);
        }
        assert_close("d_params", &gfull.params, &param_sum, 1e-11, 1e-11, case);
    }
}

/// A bidirectional layer is a forward network over the sequence and a second network (the
/// `_reverse` weights) over each row's valid steps in reverse order, concatenated forward-first.
#[test]
fn bidirectional_is_forward_and_reversed_runs_concatenated() {
    for &cell in &CELLS {
        let case = Case {
            cell,
            layers: 1,
            bidirectional: true,
            bias: true,
            ragged: true,
            init_state: true,
            layout: Layout::BatchFirst,
            shape: shape(3, 5, 4, 7),
        };
        let d = case.data::<f64>(31);
        let s = case.shape;
        let h = s.hidden;
        let lengths = d.lengths.clone().expect("ragged");
        let bi = forward(&d.params, &d.batch(), &eval_opts()).expect("forward");
        let uni_cfg = RnnConfig::new(cell, s.input, h, 1, false, true).expect("config");
        let mut rev_params = RnnParams::zeros(uni_cfg);
        for name in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] {
            let src = d
                .params
                .get(&format!("{name}_l0_reverse"))
                .expect("reverse");
            rev_params.set(&format!("{name}_l0"), src).expect("set");
        }
        let fwd_params = copy_layer(&d.params, 0, uni_cfg);
        for b in 0..s.batch {
            let len = lengths[b];
            let row =
                |t: usize| &d.input[at(case.layout, s.steps, s.batch, s.input, t, b)..][..s.input];
            let h0 = state_row(d.h0.as_ref().expect("h0"), s.batch, h, b);
            let c0 = d.c0.as_ref().map(|c| state_row(c, s.batch, h, b));
            for (dir, params, times) in [
                (0, &fwd_params, (0..len).collect::<Vec<_>>()),
                (1, &rev_params, (0..len).rev().collect()),
            ] {
                let input: Vec<f64> = times.iter().flat_map(|&t| row(t).to_vec()).collect();
                let x = Batch {
                    input: &input,
                    layout: Layout::BatchFirst,
                    seq_len: len,
                    batch: 1,
                    h0: Some(&h0[dir * h..(dir + 1) * h]),
                    c0: c0.as_ref().map(|c| &c[dir * h..(dir + 1) * h]),
                    lengths: None,
                };
                let one = forward(params, &x, &eval_opts()).expect("one direction");
                for (k, &t) in times.iter().enumerate() {
                    let got =
                        &bi.output[at(case.layout, s.steps, s.batch, 2 * h, t, b) + dir * h..][..h];
                    assert_close(
                        "output half",
                        got,
                        &one.output[k * h..(k + 1) * h],
                        TOL,
                        TOL,
                        &(cell, b, dir, t),
                    );
                }
                let h_n = &state_row(&bi.h_n, s.batch, h, b)[dir * h..(dir + 1) * h];
                assert_close("h_n", h_n, &one.h_n, TOL, TOL, &(cell, b, dir));
            }
        }
    }
}

/// A stacked network is its layers run one after the other, each from its own slice of `h0`,
/// forward and backward.
#[test]
fn stacked_layers_equal_chained_single_layers() {
    for case in ragged_cases(&[2], shape(3, 4, 3, 5)).into_iter().chain(
        grid(&[shape(2, 3, 2, 4)])
            .into_iter()
            .filter(|c| c.layers == 2 && !c.ragged),
    ) {
        let d = case.data::<f64>(77);
        let (s, cfg) = (case.shape, case.config());
        let nd = cfg.num_directions();
        let half = nd * s.batch * s.hidden;
        let cfg0 = RnnConfig {
            num_layers: 1,
            ..cfg
        };
        let cfg1 = RnnConfig {
            num_layers: 1,
            input_size: cfg.output_size(),
            ..cfg
        };
        let (p0, p1) = (
            copy_layer(&d.params, 0, cfg0),
            copy_layer(&d.params, 1, cfg1),
        );
        let split = |v: &Option<Vec<f64>>| -> (Option<Vec<f64>>, Option<Vec<f64>>) {
            match v {
                Some(v) => (Some(v[..half].to_vec()), Some(v[half..].to_vec())),
                None => (None, None),
            }
        };
        let ((h00, h01), (c00, c01)) = (split(&d.h0), split(&d.c0));
        let x0 = Batch {
            h0: h00.as_deref(),
            c0: c00.as_deref(),
            ..d.batch()
        };
        let o0 = forward(&p0, &x0, &tape_opts()).expect("layer 0");
        let x1 = Batch {
            input: &o0.output,
            h0: h01.as_deref(),
            c0: c01.as_deref(),
            ..d.batch()
        };
        let o1 = forward(&p1, &x1, &tape_opts()).expect("layer 1");
        let full = forward(&d.params, &d.batch(), &tape_opts()).expect("stacked");
        assert_close("output", &full.output, &o1.output, TOL, TOL, &case);
        assert_close(
            "h_n",
            &full.h_n,
            &[o0.h_n.clone(), o1.h_n.clone()].concat(),
            TOL,
            TOL,
            &case,
        );

        let (dh0, dh1) = (&d.d_h_n[..half], &d.d_h_n[half..]);
        let (dc0, dc1) = match &d.d_c_n {
            Some(c) => (Some(&c[..half]), Some(&c[half..])),
            None => (None, None),
        };
        let g1 = backward(
            &p1,
            o1.tape.as_ref().expect("tape"),
            &GradOutputs {
                output: Some(&d.d_output),
                h_n: Some(dh1),
                c_n: dc1,
            },
        )
        .expect("layer 1 backward");
        let g0 = backward(
            &p0,
            o0.tape.as_ref().expect("tape"),
            &GradOutputs {
                output: Some(&g1.input),
                h_n: Some(dh0),
                c_n: dc0,
            },
        )
        .expect("layer 0 backward");
        let g = backward(
            &d.params,
            full.tape.as_ref().expect("tape"),
            &d.grad_outputs(),
        )
        .expect("backward");
        assert_close("d_input", &g.input, &g0.input, TOL, TOL, &case);
        assert_close(
            "d_h0",
            &g.h0,
            &[g0.h0.clone(), g1.h0.clone()].concat(),
            TOL,
            TOL,
            &case,
        );
        if let (Some(c), Some(c0), Some(c1)) = (&g.c0, &g0.c0, &g1.c0) {
            assert_close(
                "d_c0",
                c,
                &[c0.clone(), c1.clone()].concat(),
                TOL,
                TOL,
                &case,
            );
        }
        // Layer 0's tensors come first in the flat buffer, layer 1's after them.
        let n0 = p0.len();
        assert_close(
            "d_params layer 0",
            &g.params[..n0],
            &g0.params,
            TOL,
            TOL,
            &case,
        );
        assert_close(
            "d_params layer 1",
            &g.params[n0..],
            &g1.params,
            TOL,
            TOL,
            &case,
        );
    }
}

/// Gradients never reach padded input positions, and upstream gradients at padded output
/// positions are ignored (those outputs are constant zeros).
#[test]
fn padding_gets_and_gives_no_gradient() {
    for (k, case) in ragged_cases(&[1, 2, 3], shape(3, 4, 4, 6))
        .iter()
        .enumerate()
    {
        let mut d = case.data::<f64>(400 + k as u64);
        let s = case.shape;
        let lengths = d.lengths.clone().expect("ragged");
        let f_out = case.config().output_size();
        let out = forward(&d.params, &d.batch(), &tape_opts()).expect("forward");
        let tape = out.tape.as_ref().expect("tape");
        let g = backward(&d.params, tape, &d.grad_outputs()).expect("backward");
        let gref = reference::backward(&d.params, &d.batch(), &eval_opts(), &d.grad_outputs())
            .expect("reference backward");
        for b in 0..s.batch {
            for t in lengths[b]..s.steps {
                let i = at(case.layout, s.steps, s.batch, s.input, t, b);
                for gi in [&g.input, &gref.input] {
                    assert!(
                        gi[i..i + s.input].iter().all(|&v| v == 0.0),
                        "d_input[t={t}, b={b}] past length is nonzero in {case:?}"
                    );
                }
            }
        }
        // Zero the upstream gradient at padded positions: nothing may change, bit for bit.
        for b in 0..s.batch {
            for t in lengths[b]..s.steps {
                let i = at(case.layout, s.steps, s.batch, f_out, t, b);
                d.d_output[i..i + f_out].fill(0.0);
            }
        }
        let g2 = backward(&d.params, tape, &d.grad_outputs()).expect("backward");
        assert_bitwise("d_params", &g.params, &g2.params);
        assert_bitwise("d_input", &g.input, &g2.input);
        assert_bitwise("d_h0", &g.h0, &g2.h0);
    }
}

/// Lengths that are all `T` change nothing, bit for bit.
#[test]
fn full_lengths_equal_no_lengths() {
    for (k, case) in grid(&[shape(3, 5, 3, 4)])
        .iter()
        .filter(|c| !c.ragged)
        .enumerate()
    {
        let d = case.data::<f32>(500 + k as u64);
        let full = vec![case.shape.steps; case.shape.batch];
        let with = Batch {
            lengths: Some(&full),
            ..d.batch()
        };
        let a = forward(&d.params, &d.batch(), &tape_opts()).expect("forward");
        let b = forward(&d.params, &with, &tape_opts()).expect("forward");
        assert_bitwise("output", &a.output, &b.output);
        assert_bitwise("h_n", &a.h_n, &b.h_n);
        let ga = backward(&d.params, a.tape.as_ref().expect("tape"), &d.grad_outputs())
            .expect("backward");
        let gb = backward(&d.params, b.tape.as_ref().expect("tape"), &d.grad_outputs())
            .expect("backward");
        assert_bitwise("d_params", &ga.params, &gb.params);
        assert_bitwise("d_input", &ga.input, &gb.input);
    }
}

/// `[B,T,F]` and `[T,B,F]` hold the same sequences: results agree after transposing.
#[test]
fn layouts_agree() {
    let transpose = |v: &[f64], outer: usize, inner: usize, f: usize| -> Vec<f64> {
        (0..inner)
            .flat_map(|j| (0..outer).flat_map(move |i| v[(i * inner + j) * f..][..f].to_vec()))
            .collect()
    };
    for (k, case) in grid(&[shape(3, 5, 4, 6)])
        .iter()
        .filter(|c| c.layout == Layout::BatchFirst)
        .enumerate()
    {
        let d = case.data::<f64>(600 + k as u64);
        let s = case.shape;
        let f_out = case.config().output_size();
        let input_tm = transpose(&d.input, s.batch, s.steps, s.input);
        let d_out_tm = transpose(&d.d_output, s.batch, s.steps, f_out);
        let x_tm = Batch {
            input: &input_tm,
            layout: Layout::TimeMajor,
            ..d.batch()
        };
        let a = forward(&d.params, &d.batch(), &tape_opts()).expect("forward");
        let b = forward(&d.params, &x_tm, &tape_opts()).expect("forward");
        assert_close(
            "output",
            &transpose(&b.output, s.steps, s.batch, f_out),
            &a.output,
            TOL,
            TOL,
            case,
        );
        assert_close("h_n", &b.h_n, &a.h_n, TOL, TOL, case);
        let ga = backward(&d.params, a.tape.as_ref().expect("tape"), &d.grad_outputs())
            .expect("backward");
        let gb = backward(
            &d.params,
            b.tape.as_ref().expect("tape"),
            &GradOutputs {
                output: Some(&d_out_tm),
                ..d.grad_outputs()
            },
        )
        .expect("backward");
        assert_close(
            "d_input",
            &transpose(&gb.input, s.steps, s.batch, s.input),
            &ga.input,
            TOL,
            TOL,
            case,
        );
        assert_close("d_params", &gb.params, &ga.params, 1e-11, 1e-11, case);
        assert_close("d_h0", &gb.h0, &ga.h0, TOL, TOL, case);
    }
}

/// Dropout acts only between layers, only in training mode, and is a function of the seed.
#[test]
fn dropout_semantics() {
    let train = |seed| ForwardOptions {
        training: true,
        dropout: 0.5,
        seed,
        keep_tape: false,
    };
    for &cell in &CELLS {
        for layers in [1, 2] {
            let case = Case {
                cell,
                layers,
                bidirectional: true,
                bias: true,
                ragged: true,
                init_state: true,
                layout: Layout::TimeMajor,
                shape: shape(3, 6, 3, 5),
            };
            let d = case.data::<f64>(9);
            let run = |o: &ForwardOptions| forward(&d.params, &d.batch(), o).expect("forward");
            let plain = run(&eval_opts());
            // Evaluation mode ignores the probability.
            let eval_p = ForwardOptions {
                dropout: 0.5,
                ..eval_opts()
            };
            assert_bitwise("eval output", &run(&eval_p).output, &plain.output);
            let a = run(&train(1));
            assert_bitwise("same seed", &run(&train(1)).output, &a.output);
            if layers == 1 {
                // Nothing sits between layers: no dropout at all.
                assert_bitwise("one layer", &a.output, &plain.output);
            } else {
                assert!(
                    a.output != plain.output,
                    "dropout changed nothing ({cell:?})"
                );
                assert!(
                    run(&train(2)).output != a.output,
                    "the seed changed nothing ({cell:?})"
                );
                // Layer 0 sees no dropout: its final states are unchanged.
                let first = 2 * case.shape.batch * case.shape.hidden;
                assert_bitwise("layer 0 h_n", &a.h_n[..first], &plain.h_n[..first]);
            }
        }
    }
}

#[test]
fn dropout_mask_values_and_rate() {
    for p in [0.1, 0.5, 0.9] {
        let m = dropout_mask::<f64>(3, 1, 20_000, p);
        let keep = 1.0 / (1.0 - p);
        assert!(
            m.iter().all(|&v| v == 0.0 || v == keep),
            "mask values for p={p}"
        );
        let zeros = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        // 20k Bernoulli draws: the rate is within 0.02 of p with overwhelming probability.
        assert!((zeros - p).abs() < 0.02, "p={p}: zero fraction {zeros}");
        assert_eq!(
            m,
            dropout_mask::<f64>(3, 1, 20_000, p),
            "same (seed, layer)"
        );
        assert_ne!(
            m,
            dropout_mask::<f64>(3, 2, 20_000, p),
            "layers draw different masks"
        );
    }
}

/// Reference sanity on its own: the GRU's `b_hn` sits inside `r * (...)`, so with `W_hh = 0`,
/// `h0 = 0` and `b_hn != 0` the first step's `n` is `tanh(W_in x + b_in + r * b_hn)` — different
/// from adding `b_hn` outside the reset gate.
#[test]
fn gru_hidden_bias_is_inside_the_reset_gate() {
    let cfg = RnnConfig::new(CellKind::Gru, 1, 1, 1, false, true).expect("config");
    let mut p = RnnParams::<f64>::zeros(cfg);
    // Rows r, z, n of each tensor.
    p.set("weight_ih_l0", &[0.3, -0.2, 0.7]).expect("set");
    p.set("bias_ih_l0", &[0.1, 0.2, -0.1]).expect("set");
    p.set("bias_hh_l0", &[-0.4, 0.05, 0.9]).expect("set");
    let x = [0.8];
    let batch = Batch {
        input: &x,
        layout: Layout::TimeMajor,
        seq_len: 1,
        batch: 1,
        h0: None,
        c0: None,
        lengths: None,
    };
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let r = sig(0.3 * 0.8 + 0.1 - 0.4);
    let z = sig(-0.2 * 0.8 + 0.2 + 0.05);
    let n = (0.7 * 0.8 - 0.1 + r * 0.9).tanh();
    let want = (1.0 - z) * n;
    // The test discriminates: b_hn outside the reset gate gives a clearly different state.
    let outside = (1.0 - z) * (0.7 * 0.8 - 0.1 + 0.9f64).tanh();
    assert!((outside - want).abs() > 1e-2);
    for got in [
        forward(&p, &batch, &eval_opts()).expect("fast").h_n[0],
        reference::forward(&p, &batch, &eval_opts())
            .expect("reference")
            .h_n[0],
    ] {
        assert!((got - want).abs() < 1e-15, "h1 = {got}, want {want}");
    }
}
