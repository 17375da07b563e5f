//! Streaming one step at a time gives the full-sequence forward pass.

mod common;

use common::plain_batch;
use lstmrs_core::stepper::{Stepper, SMALL_BATCH_MAX};
use lstmrs_core::{
    forward, reference, Batch, CellKind, ForwardOptions, Layout, RnnConfig, RnnParams,
};

#[test]
fn stepping_equals_the_sequence_forward() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for (layers, bias) in [(1, true), (3, false)] {
            let (b, t, i, h) = (3, 7, 4, 6);
            let cfg = RnnConfig::new(cell, i, h, layers, false, bias).unwrap();
            let p = RnnParams::<f64>::init_uniform(cfg, 3);
            let x: Vec<f64> = (0..t * b * i).map(|k| (k as f64 * 0.3).sin()).collect();
            let full = forward(
                &p,
                &plain_batch(&x, Layout::TimeMajor, t, b),
                &ForwardOptions::default(),
            )
            .unwrap();
            let mut s = Stepper::new(p.view(), b).unwrap();
            let mut out = vec![0.0; b * h];
            for step in 0..t {
                s.step(p.view(), &x[step * b * i..(step + 1) * b * i], &mut out)
                    .unwrap();
                for (k, (&a, &e)) in out
                    .iter()
                    .zip(&full.output[step * b * h..(step + 1) * b * h])
                    .enumerate()
                {
                    assert!(
                        (a - e).abs() < 1e-12,
                        "{cell:?} step {step} [{k}]: {a} vs {e}"
                    );
                }
            }
            let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
            assert!(close(s.h(), &full.h_n));
            if let Some(c_n) = &full.c_n {
                assert!(close(s.c(), c_n));
            }
            // Restarting from saved state continues identically.
            let (h_saved, c_saved) = (s.h().to_vec(), s.c().to_vec());
            s.reset();
            assert!(s.h().iter().all(|&v| v == 0.0));
            s.set_state(&h_saved, (cell == CellKind::Lstm).then_some(&c_saved[..]))
                .unwrap();
            assert_eq!(s.h(), &h_saved[..]);
        }
    }
}

#[test]
fn bad_stepper_input_is_an_error() {
    let cfg = RnnConfig::new(CellKind::Lstm, 2, 3, 1, true, true).unwrap();
    let p = RnnParams::<f32>::init_uniform(cfg, 0);
    assert!(
        Stepper::new(p.view(), 1).is_err(),
        "bidirectional cannot stream"
    );
    let cfg = RnnConfig::new(CellKind::Gru, 2, 3, 1, false, true).unwrap();
    let p = RnnParams::<f32>::init_uniform(cfg, 0);
    assert!(Stepper::new(p.view(), 0).is_err());
    let mut s = Stepper::new(p.view(), 2).unwrap();
    let mut out = vec![0.0; 6];
    assert!(s.step(p.view(), &[0.0; 3], &mut out).is_err());
    assert!(
        s.set_state(&[0.0; 6], Some(&[0.0; 6])).is_err(),
        "GRU has no cell state"
    );
}

#[test]
fn the_stepper_reads_the_current_weights() {
    // The small-batch kernel reads the weights in place: changing them between steps changes
    // the next step, exactly as a fresh forward pass from the saved state would.
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for b in [1, SMALL_BATCH_MAX + 1] {
            let cfg = RnnConfig::new(cell, 3, 9, 2, false, true).unwrap();
            let mut p = RnnParams::<f64>::init_uniform(cfg, 4);
            let x: Vec<f64> = (0..2 * b * 3).map(|k| (k as f64 * 0.61).sin()).collect();
            let mut s = Stepper::new(p.view(), b).unwrap();
            let mut out = vec![0.0; b * 9];
            s.step(p.view(), &x[..b * 3], &mut out).unwrap();
            let (h1, c1) = (s.h().to_vec(), s.c().to_vec());
            for (k, v) in p.as_mut_slice().iter_mut().enumerate() {
                *v = -0.5 * *v + 0.01 * (k % 7) as f64;
            }
            s.step(p.view(), &x[b * 3..], &mut out).unwrap();
            let lstm = cell == CellKind::Lstm;
            let want = reference::forward(
                &p,
                &Batch {
                    h0: Some(&h1),
                    c0: lstm.then_some(&c1[..]),
                    ..plain_batch(&x[b * 3..], Layout::TimeMajor, 1, b)
                },
                &ForwardOptions::default(),
            )
            .unwrap();
            for (a, e) in out.iter().zip(&want.output) {
                assert!((a - e).abs() < 1e-12, "{cell:?} b={b}: {a} vs {e}");
            }
        }
    }
}

mod model_streaming {
    use lstmrs_core::model::{
        Activation, InputKind, Model, ModelBatch, ModelConfig, ModelInput, Pooling,
    };
    use lstmrs_core::stepper::SMALL_BATCH_MAX;
    use lstmrs_core::{CellKind, RnnConfig};

    #[test]
    fn model_steps_equal_predict() {
        // Batch 1 and 2 step through the small-batch kernel (recurrence and head), 17 through GEMM.
        for b in [1, 2, SMALL_BATCH_MAX + 1] {
            model_steps_equal_predict_at(b);
        }
    }

    fn model_steps_equal_predict_at(b: usize) {
        let t = 6;
        for (pooling, input) in [
            (Pooling::PerStep, InputKind::Embedding { vocab: 9, dim: 4 }),
            (Pooling::Last, InputKind::Dense { features: 4 }),
        ] {
            let cfg = ModelConfig {
                input,
                rnn: RnnConfig::new(CellKind::Gru, 4, 5, 2, false, true).unwrap(),
                dropout: 0.0,
                regularization: Default::default(),
                pooling,
                head_hidden: vec![3],
                activation: Activation::Relu,
                outputs: 2,
            };
            let model = Model::<f64>::new(cfg, 5).unwrap();
            let ids: Vec<i64> = (0..b * t).map(|k| (k * 5 % 9) as i64).collect();
            let feats: Vec<f64> = (0..b * t * 4).map(|k| (k as f64 * 0.7).cos()).collect();
            let x = match input {
                InputKind::Embedding { .. } => ModelInput::Tokens(&ids),
                InputKind::Dense { .. } => ModelInput::Dense(&feats),
            };
            let full = model
                .predict(&ModelBatch {
                    input: x,
                    batch: b,
                    seq_len: t,
                    lengths: None,
                    h0: None,
                    c0: None,
                })
                .unwrap();
            let mut s = model.stepper(b).unwrap();
            let mut out = vec![0.0; b * 2];
            for step in 0..t {
                let (ids_t, feats_t): (Vec<i64>, Vec<f64>) = (
                    (0..b).map(|i| ids[i * t + step]).collect(),
                    (0..b)
                        .flat_map(|i| feats[(i * t + step) * 4..][..4].to_vec())
                        .collect(),
                );
                let x_t = match input {
                    InputKind::Embedding { .. } => ModelInput::Tokens(&ids_t),
                    InputKind::Dense { .. } => ModelInput::Dense(&feats_t),
                };
                model.step(&mut s, x_t, &mut out).unwrap();
                if pooling == Pooling::PerStep {
                    for i in 0..b {
                        for o in 0..2 {
                            let want = full.output[(i * t + step) * 2 + o];
                            assert!((out[i * 2 + o] - want).abs() < 1e-12);
                        }
                    }
                }
            }
            if pooling == Pooling::Last {
                out.iter()
                    .zip(&full.output)
                    .for_each(|(a, e)| assert!((a - e).abs() < 1e-12));
            }
        }
    }
}
