//! Bad input returns the matching typed error, from the fast path and the reference alike, and
//! never panics.

mod common;

use common::*;
use lstmrs_core::{
    backward, forward, reference, Batch, CellKind, Error, ForwardOptions, GradOutputs, Layout,
    RnnConfig, RnnParams, RnnWeights,
};

fn lstm_case() -> Case {
    Case {
        cell: CellKind::Lstm,
        layers: 2,
        bidirectional: true,
        bias: true,
        ragged: true,
        init_state: true,
        layout: Layout::BatchFirst,
        shape: shape(3, 4, 3, 5),
    }
}

fn gru_case() -> Case {
    Case {
        cell: CellKind::Gru,
        ..lstm_case()
    }
}

/// Asserts `r` is `Error::Shape` (or `Error::Value` when `value`) for argument `arg`.
#[track_caller]
fn expect_err<T>(r: lstmrs_core::Result<T>, arg: &str, value: bool) {
    match r {
        Ok(_) => panic!("{arg}: expected an error, got Ok"),
        Err(Error::Shape { arg: a, .. }) if !value => assert_eq!(a, arg),
        Err(Error::Value { arg: a, .. }) if value => assert_eq!(a, arg),
        Err(e) => panic!("{arg}: wrong error {e:?}"),
    }
}

/// Both forward implementations reject `x` with the same error.
#[track_caller]
fn forward_rejects(d: &Data<f64>, x: &Batch<f64>, opts: &ForwardOptions, arg: &str, value: bool) {
    expect_err(forward(&d.params, x, opts), arg, value);
    expect_err(reference::forward(&d.params, x, opts), arg, value);
    expect_err(
        reference::backward(&d.params, x, opts, &d.grad_outputs()),
        arg,
        value,
    );
    // The same error comes as text too (the bindings show it to users).
    let msg = forward(&d.params, x, opts).unwrap_err().to_string();
    assert!(msg.starts_with(arg), "message {msg:?} does not name {arg}");
}

#[test]
fn forward_rejects_bad_batches() {
    let d = lstm_case().data::<f64>(1);
    let opts = eval_opts();
    let short = &d.input[..d.input.len() - 1];
    forward_rejects(
        &d,
        &Batch {
            input: short,
            ..d.batch()
        },
        &opts,
        "input",
        false,
    );
    forward_rejects(
        &d,
        &Batch {
            seq_len: 6,
            ..d.batch()
        },
        &opts,
        "input",
        false,
    );
    forward_rejects(
        &d,
        &Batch {
            seq_len: 0,
            ..d.batch()
        },
        &opts,
        "seq_len",
        true,
    );
    forward_rejects(
        &d,
        &Batch {
            batch: 0,
            ..d.batch()
        },
        &opts,
        "batch",
        true,
    );
    let h0 = d.h0.as_ref().expect("h0");
    forward_rejects(
        &d,
        &Batch {
            h0: Some(&h0[1..]),
            ..d.batch()
        },
        &opts,
        "h0",
        false,
    );
    let c0 = d.c0.as_ref().expect("c0");
    let long = [c0.clone(), vec![0.0]].concat();
    forward_rejects(
        &d,
        &Batch {
            c0: Some(&long),
            ..d.batch()
        },
        &opts,
        "c0",
        false,
    );
    for bad in [[0, 5, 1], [5, 6, 1]] {
        forward_rejects(
            &d,
            &Batch {
                lengths: Some(&bad),
                ..d.batch()
            },
            &opts,
            "lengths",
            true,
        );
    }
    let two = [5, 1];
    forward_rejects(
        &d,
        &Batch {
            lengths: Some(&two),
            ..d.batch()
        },
        &opts,
        "lengths",
        false,
    );
    for p in [-0.1, 1.0, 1.5, f64::NAN] {
        let o = ForwardOptions {
            training: true,
            dropout: p,
            ..opts
        };
        forward_rejects(&d, &d.batch(), &o, "dropout", true);
    }

    let g = gru_case().data::<f64>(2);
    let c0 = vec![0.0; gru_case().state_len()];
    forward_rejects(
        &g,
        &Batch {
            c0: Some(&c0),
            ..g.batch()
        },
        &opts,
        "c0",
        true,
    );
}

#[test]
fn backward_rejects_bad_gradients_and_tapes() {
    let d = lstm_case().data::<f64>(3);
    let out = forward(&d.params, &d.batch(), &tape_opts()).expect("forward");
    let tape = out.tape.as_ref().expect("tape");
    let ok = d.grad_outputs();
    let both = |g: &GradOutputs<f64>, arg: &str, value: bool| {
        expect_err(backward(&d.params, tape, g), arg, value);
        expect_err(
            reference::backward(&d.params, &d.batch(), &eval_opts(), g),
            arg,
            value,
        );
    };
    let short = &d.d_output[1..];
    both(
        &GradOutputs {
            output: Some(short),
            ..ok
        },
        "d_output",
        false,
    );
    both(
        &GradOutputs {
            h_n: Some(&d.d_h_n[1..]),
            ..ok
        },
        "d_h_n",
        false,
    );
    let c = d.d_c_n.as_ref().expect("d_c_n");
    both(
        &GradOutputs {
            c_n: Some(&c[1..]),
            ..ok
        },
        "d_c_n",
        false,
    );
    // No gradients at all is valid and gives zeros.
    let none = backward(&d.params, tape, &GradOutputs::default()).expect("no gradients");
    assert!(none.params.iter().chain(&none.input).all(|&v| v == 0.0));

    // A tape recorded by another network.
    let other = RnnParams::<f64>::zeros(RnnConfig {
        hidden_size: 5,
        ..lstm_case().config()
    });
    expect_err(
        backward(&other, tape, &GradOutputs::default()),
        "tape",
        true,
    );
    let uni = RnnParams::<f64>::zeros(RnnConfig {
        bidirectional: false,
        ..lstm_case().config()
    });
    expect_err(backward(&uni, tape, &GradOutputs::default()), "tape", true);

    // A cell-state gradient for a GRU.
    let g = gru_case().data::<f64>(4);
    let gout = forward(&g.params, &g.batch(), &tape_opts()).expect("forward");
    let dc = vec![0.0; gru_case().state_len()];
    let with_c = GradOutputs {
        c_n: Some(&dc),
        ..g.grad_outputs()
    };
    expect_err(
        backward(&g.params, gout.tape.as_ref().expect("tape"), &with_c),
        "d_c_n",
        true,
    );
    expect_err(
        reference::backward(&g.params, &g.batch(), &eval_opts(), &with_c),
        "d_c_n",
        true,
    );
}

#[test]
fn configs_and_parameter_buffers_are_checked() {
    for (arg, (i, h, l)) in [
        ("input_size", (0, 1, 1)),
        ("hidden_size", (1, 0, 1)),
        ("num_layers", (1, 1, 0)),
    ] {
        expect_err(
            RnnConfig::new(CellKind::Lstm, i, h, l, false, true),
            arg,
            true,
        );
    }
    let cfg = lstm_case().config();
    let n = RnnParams::<f32>::zeros(cfg).len();
    expect_err(
        RnnParams::<f32>::from_flat(cfg, vec![0.0; n + 1]),
        "params",
        false,
    );
    expect_err(
        RnnWeights::<f32>::new(cfg, &vec![0.0; n - 1]),
        "params",
        false,
    );
    let mut p = RnnParams::<f32>::zeros(cfg);
    assert!(matches!(p.get("weight_ih_l2"), Err(Error::Name { .. })));
    expect_err(p.set("weight_hh_l0", &[0.0; 3]), "values", false);
    assert!(matches!(
        CellKind::from_name("rnn"),
        Err(Error::Name { .. })
    ));
}

/// `proj_size`: torch's rules as typed errors, the projected shapes, and the sweep's
/// regularisation (which has no projected kernel) refusing projections.
#[test]
fn projections_are_checked_and_refused_where_unsupported() {
    let lstm = RnnConfig::new(CellKind::Lstm, 3, 5, 2, false, true).unwrap();
    for bad in [5, 9] {
        expect_err(lstm.with_proj_size(bad), "proj_size", true);
    }
    let gru = RnnConfig::new(CellKind::Gru, 3, 5, 1, false, true).unwrap();
    expect_err(gru.with_proj_size(2), "proj_size", true);
    assert_eq!(lstm.with_proj_size(0).unwrap(), lstm);

    let cfg = lstm.with_proj_size(2).unwrap();
    let params = RnnParams::<f64>::init_uniform(cfg, 1);
    let x = vec![0.5; 2 * 4 * 3];
    let batch = Batch {
        input: &x,
        layout: Layout::BatchFirst,
        seq_len: 4,
        batch: 2,
        h0: None,
        c0: None,
        lengths: None,
    };
    // `h0` has proj_size features, `c0` hidden_size.
    let h_wrong = vec![0.0; 2 * 2 * 5];
    let opts = ForwardOptions::default();
    expect_err(
        forward(
            &params,
            &Batch {
                h0: Some(&h_wrong),
                ..batch
            },
            &opts,
        ),
        "h0",
        false,
    );
    let c_wrong = vec![0.0; 2 * 2 * 2];
    expect_err(
        forward(
            &params,
            &Batch {
                c0: Some(&c_wrong),
                ..batch
            },
            &opts,
        ),
        "c0",
        false,
    );
    // Regularisation inside the sweep has no projected kernel.
    for reg in [
        lstmrs_core::Regularization {
            zoneout: 0.1,
            ..Default::default()
        },
        lstmrs_core::Regularization {
            state_dropout: 0.1,
            ..Default::default()
        },
    ] {
        expect_err(
            lstmrs_core::forward_regularized(&params, &batch, &opts, &reg),
            "proj_size",
            true,
        );
    }
    // The streaming stepper's state is `[L, B, P]`.
    let mut stepper = lstmrs_core::stepper::Stepper::new(params.view(), 2).unwrap();
    expect_err(stepper.set_state(&h_wrong, None), "h", false);
    expect_err(
        stepper.step(params.view(), &x[..6], &mut [0.0; 10]),
        "out",
        false,
    );
}
