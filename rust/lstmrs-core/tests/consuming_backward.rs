//! `backward_consuming` (the tape used up, gate gradients over its activations in place) gives
//! the gradients of `backward` bit for bit on every path, refuses a second call, and leaves the
//! tape intact when it refuses a call up front.

use lstmrs_core::{
    backward, backward_consuming, forward_regularized, Batch, CellKind, Error, ForwardOptions,
    GradOutputs, Layout, Regularization, RnnConfig, RnnParams,
};

fn wave(n: usize, f: f64) -> Vec<f32> {
    (0..n).map(|k| (k as f64 * f).sin() as f32).collect()
}

struct Case {
    cell: CellKind,
    layers: usize,
    bidirectional: bool,
    layout: Layout,
    lengths: bool,
    dropout: f64,
    reg: Regularization,
}

fn check(case: &Case) {
    let (b, t, i, h) = (3, 6, 3, 5);
    let cfg = RnnConfig::new(case.cell, i, h, case.layers, true, case.bidirectional).unwrap();
    let p = RnnParams::<f32>::init_uniform(cfg, 7);
    let x = wave(b * t * i, 0.37);
    let lengths = [6, 2, 4];
    let batch = Batch {
        input: &x,
        layout: case.layout,
        seq_len: t,
        batch: b,
        h0: None,
        c0: None,
        lengths: case.lengths.then_some(&lengths[..]),
    };
    let opts = ForwardOptions {
        training: true,
        dropout: case.dropout,
        seed: 5,
        keep_tape: true,
    };
    let fwd = forward_regularized(&p, &batch, &opts, &case.reg).unwrap();
    let d_out = wave(fwd.output.len(), 0.23);
    let d_h = wave(fwd.h_n.len(), 0.41);
    let grads = GradOutputs {
        output: Some(&d_out),
        h_n: Some(&d_h),
        c_n: None,
    };
    let mut tape = fwd.tape.unwrap();
    let kept = backward(&p, &tape, &grads).unwrap();
    assert!(!tape.is_consumed());
    let used = backward_consuming(&p, &mut tape, &grads).unwrap();
    assert!(tape.is_consumed());
    let what = format!(
        "{:?} layers={} bidir={}",
        case.cell, case.layers, case.bidirectional
    );
    assert_eq!(kept.params, used.params, "{what}: parameter gradients");
    assert_eq!(kept.input, used.input, "{what}: input gradient");
    assert_eq!(kept.h0, used.h0, "{what}: h0 gradient");
    assert_eq!(kept.c0, used.c0, "{what}: c0 gradient");
    for err in [
        backward(&p, &tape, &grads).unwrap_err(),
        backward_consuming(&p, &mut tape, &grads).unwrap_err(),
    ] {
        assert!(matches!(err, Error::Value { arg: "tape", .. }), "{err}");
    }
}

#[test]
fn consuming_equals_kept_on_every_path() {
    let none = Regularization::default();
    let all = Regularization {
        input_dropout: 0.2,
        state_dropout: 0.3,
        zoneout: 0.25,
    };
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for (layers, bidirectional) in [(1, false), (2, true), (3, false)] {
            for layout in [Layout::BatchFirst, Layout::TimeMajor] {
                for (lengths, dropout, reg) in [(false, 0.0, none), (true, 0.4, all)] {
                    check(&Case {
                        cell,
                        layers,
                        bidirectional,
                        layout,
                        lengths,
                        dropout,
                        reg,
                    });
                }
            }
        }
    }
}

#[test]
fn a_refused_call_leaves_the_tape_intact() {
    let cfg = RnnConfig::new(CellKind::Lstm, 2, 3, 1, true, false).unwrap();
    let p = RnnParams::<f32>::init_uniform(cfg, 1);
    let x = wave(2 * 4 * 2, 0.5);
    let batch = Batch {
        input: &x,
        layout: Layout::BatchFirst,
        seq_len: 4,
        batch: 2,
        h0: None,
        c0: None,
        lengths: None,
    };
    let opts = ForwardOptions {
        keep_tape: true,
        ..ForwardOptions::default()
    };
    let fwd = forward_regularized(&p, &batch, &opts, &Regularization::default()).unwrap();
    let mut tape = fwd.tape.unwrap();
    let short = vec![1.0f32; 3];
    let bad = GradOutputs {
        output: Some(&short),
        ..GradOutputs::default()
    };
    let err = backward_consuming(&p, &mut tape, &bad).unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. } | Error::Value { .. }),
        "{err}"
    );
    assert!(!tape.is_consumed());
    let ones = vec![1.0f32; fwd.output.len()];
    let good = GradOutputs {
        output: Some(&ones),
        ..GradOutputs::default()
    };
    let kept = backward(&p, &tape, &good).unwrap();
    assert_eq!(
        kept.params,
        backward_consuming(&p, &mut tape, &good).unwrap().params
    );
}
