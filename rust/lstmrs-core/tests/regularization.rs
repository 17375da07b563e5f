//! Variational dropout and zoneout: semantics and finite-difference gradients.

mod common;

use common::plain_batch;
use lstmrs_core::{
    backward, forward, forward_regularized, Batch, CellKind, ForwardOptions, GradOutputs, Layout,
    Regularization, RnnConfig, RnnParams,
};

fn wave(n: usize, f: f64) -> Vec<f64> {
    (0..n).map(|k| (k as f64 * f).sin()).collect()
}

fn opts(training: bool) -> ForwardOptions {
    ForwardOptions {
        training,
        dropout: 0.0,
        seed: 11,
        keep_tape: true,
    }
}

#[test]
fn zero_probabilities_change_nothing() {
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 4, 2, true, true).unwrap();
    let p = RnnParams::<f64>::init_uniform(cfg, 1);
    let x = wave(5 * 2 * 3, 0.3);
    let batch = plain_batch(&x, Layout::BatchFirst, 5, 2);
    let plain = forward(&p, &batch, &opts(true)).unwrap();
    let reg = forward_regularized(&p, &batch, &opts(true), &Regularization::default()).unwrap();
    assert_eq!(plain.output, reg.output);
    assert_eq!(plain.h_n, reg.h_n);
}

#[test]
fn gradients_match_finite_differences_with_all_regularizers() {
    let reg = Regularization {
        input_dropout: 0.3,
        state_dropout: 0.4,
        zoneout: 0.35,
    };
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for training in [true, false] {
            let (b, t) = (3, 6);
            let cfg = RnnConfig::new(cell, 3, 4, 2, true, true).unwrap();
            let mut p = RnnParams::<f64>::init_uniform(cfg, 2);
            let x = wave(b * t * 3, 0.41);
            let lengths = [6, 3, 1];
            let state = 2 * 2 * b * 4;
            let h0 = wave(state, 0.17);
            let c0 = wave(state, 0.23);
            let lstm = cell == CellKind::Lstm;
            let batch = Batch {
                h0: Some(&h0),
                c0: lstm.then_some(&c0[..]),
                lengths: Some(&lengths),
                ..plain_batch(&x, Layout::BatchFirst, t, b)
            };
            let d_out = wave(b * t * 8, 0.29);
            let d_h = wave(state, 0.31);
            let loss = |p: &RnnParams<f64>| {
                let o = forward_regularized(p, &batch, &opts(training), &reg).unwrap();
                o.output.iter().zip(&d_out).map(|(a, b)| a * b).sum::<f64>()
                    + o.h_n.iter().zip(&d_h).map(|(a, b)| a * b).sum::<f64>()
            };
            let fwd = forward_regularized(&p, &batch, &opts(training), &reg).unwrap();
            let g = backward(
                &p,
                fwd.tape.as_ref().unwrap(),
                &GradOutputs {
                    output: Some(&d_out),
                    h_n: Some(&d_h),
                    c_n: None,
                },
            )
            .unwrap();
            let n = p.len();
            for k in (0..n).step_by(7) {
                let orig = p.as_slice()[k];
                p.as_mut_slice()[k] = orig + 1e-6;
                let up = loss(&p);
                p.as_mut_slice()[k] = orig - 1e-6;
                let down = loss(&p);
                p.as_mut_slice()[k] = orig;
                let num = (up - down) / 2e-6;
                assert!(
                    (num - g.params[k]).abs() < 1e-7 + 1e-6 * num.abs(),
                    "{cell:?} training={training} param {k}: numeric {num} vs analytic {}",
                    g.params[k]
                );
            }
        }
    }
}

#[test]
fn variational_input_mask_is_the_same_at_every_step() {
    let (b, t, i) = (4, 7, 6);
    let cfg = RnnConfig::new(CellKind::Gru, i, 5, 1, false, true).unwrap();
    let p = RnnParams::<f64>::init_uniform(cfg, 3);
    let x = wave(b * t * i, 0.37);
    let batch = plain_batch(&x, Layout::TimeMajor, t, b);
    let reg = Regularization {
        input_dropout: 0.5,
        ..Default::default()
    };
    let fwd = forward_regularized(&p, &batch, &opts(true), &reg).unwrap();
    let d_out = vec![1.0; t * b * 5];
    let g = backward(
        &p,
        fwd.tape.as_ref().unwrap(),
        &GradOutputs {
            output: Some(&d_out),
            h_n: None,
            c_n: None,
        },
    )
    .unwrap();
    let dropped = |step: usize| -> Vec<bool> {
        g.input[step * b * i..(step + 1) * b * i]
            .iter()
            .map(|&v| v == 0.0)
            .collect()
    };
    let first = dropped(0);
    let count = first.iter().filter(|&&d| d).count();
    assert!(
        count > 0 && count < b * i,
        "{count} of {} features dropped",
        b * i
    );
    for step in 1..t {
        assert_eq!(dropped(step), first, "step {step}");
    }
}

#[test]
fn zoneout_keeps_or_updates_each_unit() {
    let (b, h) = (64, 32);
    let cfg = RnnConfig::new(CellKind::Lstm, 2, h, 1, false, true).unwrap();
    let p = RnnParams::<f64>::init_uniform(cfg, 4);
    let x = wave(b * 2, 0.53);
    let h0 = wave(b * h, 0.19);
    let c0 = wave(b * h, 0.07);
    let batch = Batch {
        h0: Some(&h0),
        c0: Some(&c0),
        ..plain_batch(&x, Layout::TimeMajor, 1, b)
    };
    let plain = forward(&p, &batch, &opts(false)).unwrap();
    let reg = Regularization {
        zoneout: 0.25,
        ..Default::default()
    };
    // Training: each unit is either its previous value or the cell's new one.
    let zoned = forward_regularized(&p, &batch, &opts(true), &reg).unwrap();
    let mut kept = 0;
    for k in 0..b * h {
        let (z, prev, new) = (zoned.output[k], h0[k], plain.output[k]);
        assert!(
            z == prev || z == new,
            "unit {k}: {z} is neither {prev} nor {new}"
        );
        kept += (z == prev && prev != new) as usize;
    }
    let frac = kept as f64 / (b * h) as f64;
    assert!((frac - 0.25).abs() < 0.05, "kept fraction {frac}");
    // Inference: the expectation.
    let expected = forward_regularized(&p, &batch, &opts(false), &reg).unwrap();
    for k in 0..b * h {
        let want = 0.25 * h0[k] + 0.75 * plain.output[k];
        assert!((expected.output[k] - want).abs() < 1e-14);
    }
}

#[test]
fn bad_probabilities_are_errors() {
    let cfg = RnnConfig::new(CellKind::Gru, 1, 1, 1, false, true).unwrap();
    let p = RnnParams::<f32>::zeros(cfg);
    let x = [0.0f32];
    let batch = plain_batch(&x, Layout::TimeMajor, 1, 1);
    for reg in [
        Regularization {
            zoneout: 1.0,
            ..Default::default()
        },
        Regularization {
            state_dropout: -0.1,
            ..Default::default()
        },
        Regularization {
            input_dropout: f64::NAN,
            ..Default::default()
        },
    ] {
        assert!(
            forward_regularized(&p, &batch, &opts(true), &reg).is_err(),
            "{reg:?}"
        );
    }
}
