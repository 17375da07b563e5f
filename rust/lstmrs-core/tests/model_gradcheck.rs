//! Whole-model gradients (embedding or dense input, recurrent stack, every pooling, dense head,
//! every loss) against central finite differences in f64.

use lstmrs_core::model::{
    Activation, InputKind, Loss, Model, ModelBatch, ModelConfig, ModelInput, Pooling, Targets,
};
use lstmrs_core::{CellKind, RnnConfig};

fn config(
    input: InputKind,
    cell: CellKind,
    bidir: bool,
    pooling: Pooling,
    outputs: usize,
) -> ModelConfig {
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
        outputs,
    }
}

fn check(cfg: ModelConfig, loss: Loss, lengths: Option<&[usize]>) {
    let (b, t) = (3, 5);
    let mut model = Model::<f64>::new(cfg.clone(), 7).unwrap();
    let dense: Vec<f64> = (0..b * t * 3).map(|i| (i as f64 * 0.37).sin()).collect();
    let tokens: Vec<i64> = (0..b * t).map(|i| (i * 7 % 6) as i64).collect();
    let input = match cfg.input {
        InputKind::Dense { .. } => ModelInput::Dense(&dense),
        InputKind::Embedding { .. } => ModelInput::Tokens(&tokens),
    };
    let batch = ModelBatch {
        input,
        batch: b,
        seq_len: t,
        lengths,
        h0: None,
        c0: None,
    };
    let rows = if cfg.pooling == Pooling::PerStep {
        b * t
    } else {
        b
    };
    let classes: Vec<i64> = (0..rows).map(|r| (r % cfg.outputs) as i64).collect();
    let values: Vec<f64> = (0..rows * cfg.outputs)
        .map(|i| (i as f64 * 0.21).cos())
        .collect();
    let targets = match loss {
        Loss::CrossEntropy { .. } => Targets::Classes(&classes),
        _ => Targets::Values(&values),
    };
    let mut grad = vec![0.0; model.num_params()];
    model
        .loss_and_grad(&batch, targets, &loss, false, 0, &mut grad)
        .unwrap();
    let mut scratch = vec![0.0; grad.len()];
    let n = grad.len();
    // Every parameter of small tensors and a stride through the big ones.
    for k in (0..n).step_by(n / 97 + 1).chain(n.saturating_sub(12)..n) {
        let orig = model.params()[k];
        model.params_mut()[k] = orig + 1e-6;
        let up = model
            .loss_and_grad(&batch, targets, &loss, false, 0, &mut scratch)
            .unwrap()
            .loss;
        model.params_mut()[k] = orig - 1e-6;
        let down = model
            .loss_and_grad(&batch, targets, &loss, false, 0, &mut scratch)
            .unwrap()
            .loss;
        model.params_mut()[k] = orig;
        let num = (up - down) / 2e-6;
        assert!(
            (num - grad[k]).abs() < 1e-7 + 1e-5 * num.abs(),
            "{:?} {:?} param {} ({}): numeric {num} vs analytic {}",
            cfg.pooling,
            loss,
            k,
            model
                .specs()
                .iter()
                .find(|s| s.offset <= k && k < s.offset + s.len)
                .unwrap()
                .name,
            grad[k]
        );
    }
}

#[test]
fn every_pooling_and_input_kind() {
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
                    config(InputKind::Dense { features: 3 }, cell, bidir, pooling, 2),
                    Loss::Mse,
                    lens,
                );
                check(
                    config(
                        InputKind::Embedding { vocab: 6, dim: 3 },
                        cell,
                        bidir,
                        pooling,
                        3,
                    ),
                    Loss::CrossEntropy {
                        ignore_index: -100,
                        class_weights: Some(vec![1.0, 0.5, 2.0]),
                    },
                    lens,
                );
            }
        }
    }
}

#[test]
fn every_loss() {
    for loss in [Loss::Mae, Loss::Huber { delta: 0.3 }, Loss::BceWithLogits] {
        check(
            config(
                InputKind::Dense { features: 3 },
                CellKind::Lstm,
                true,
                Pooling::Mean,
                2,
            ),
            loss,
            None,
        );
    }
}

#[test]
fn relu_head_and_errors() {
    let mut cfg = config(
        InputKind::Dense { features: 3 },
        CellKind::Gru,
        false,
        Pooling::Last,
        2,
    );
    cfg.activation = Activation::Relu;
    check(cfg.clone(), Loss::Mse, Some(&[1, 5, 3]));
    let model = Model::<f32>::new(cfg.clone(), 1).unwrap();
    let x = vec![0.0f32; 2 * 4 * 3];
    let bad = ModelBatch {
        input: ModelInput::Dense(&x),
        batch: 2,
        seq_len: 5,
        lengths: None,
        h0: None,
        c0: None,
    };
    assert!(model.predict(&bad).is_err());
    let tokens = vec![0i64; 8];
    let wrong_kind = ModelBatch {
        input: ModelInput::Tokens(&tokens),
        batch: 2,
        seq_len: 4,
        lengths: None,
        h0: None,
        c0: None,
    };
    assert!(model.predict(&wrong_kind).is_err());
    cfg.rnn.input_size = 4;
    assert!(Model::<f32>::new(cfg, 1).is_err());
}

/// The projected LSTM (`proj_size`) inside a model: the pooling and head read `P` features per
/// direction, and every pooling's gradient flows back through the projection.
#[test]
fn projected_lstm_every_pooling() {
    let lengths: &[usize] = &[5, 2, 4];
    for pooling in [
        Pooling::PerStep,
        Pooling::Last,
        Pooling::Mean,
        Pooling::Attention { units: 3 },
    ] {
        for bidir in [false, true] {
            let mut cfg = config(
                InputKind::Dense { features: 3 },
                CellKind::Lstm,
                bidir,
                pooling,
                2,
            );
            cfg.rnn = cfg.rnn.with_proj_size(3).unwrap();
            check(cfg, Loss::Mse, Some(lengths));
        }
    }
}
