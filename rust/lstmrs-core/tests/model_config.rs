//! What the bindings used to compute themselves, now the core's: a model configuration read from
//! its JSON text, gradient clipping (`Clip::apply`) and the inference-mode loss (`Model::loss`).

use lstmrs_core::model::{
    Activation, Clip, InputKind, Loss, Model, ModelBatch, ModelConfig, ModelInput, Pooling, Targets,
};
use lstmrs_core::{CellKind, Error, Regularization, RnnConfig};

#[test]
fn a_full_configuration_reads_every_key() {
    let cfg = ModelConfig::from_json(
        r#"{"input": {"kind": "embedding", "vocab": 11, "dim": 4}, "cell": "gru",
            "hidden_size": 6, "num_layers": 2, "bidirectional": true, "bias": false,
            "dropout": 0.25, "input_dropout": 0.1, "state_dropout": 0.2, "zoneout": 0.3,
            "pooling": "attention", "attention_units": 5, "head_hidden": [7, 3],
            "activation": "relu", "outputs": 2}"#,
    )
    .unwrap();
    let want = ModelConfig {
        input: InputKind::Embedding { vocab: 11, dim: 4 },
        rnn: RnnConfig::new(CellKind::Gru, 4, 6, 2, true, false).unwrap(),
        dropout: 0.25,
        regularization: Regularization {
            input_dropout: 0.1,
            state_dropout: 0.2,
            zoneout: 0.3,
        },
        pooling: Pooling::Attention { units: 5 },
        head_hidden: vec![7, 3],
        activation: Activation::Relu,
        outputs: 2,
    };
    assert_eq!(cfg, want);
}

#[test]
fn defaults_fill_the_optional_keys() {
    let cfg = ModelConfig::from_json(
        r#"{"input": {"kind": "dense", "features": 3}, "cell": "lstm", "hidden_size": 5,
            "proj_size": 2, "outputs": 1, "dropout": null}"#,
    )
    .unwrap();
    let rnn = RnnConfig::new(CellKind::Lstm, 3, 5, 1, false, true)
        .and_then(|c| c.with_proj_size(2))
        .unwrap();
    assert_eq!(cfg.rnn, rnn);
    assert_eq!(cfg.pooling, Pooling::Last);
    assert_eq!(cfg.activation, Activation::Tanh);
    assert_eq!(cfg.dropout, 0.0);
    assert_eq!(cfg.regularization, Regularization::default());
    assert!(cfg.head_hidden.is_empty());
}

/// The error of `text`, which must name `arg`.
fn refused(text: &str, arg: &str) -> String {
    let e = ModelConfig::from_json(text).expect_err(text);
    assert!(matches!(e, Error::Value { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{arg}: ")), "{msg}");
    msg
}

#[test]
fn errors_name_the_key() {
    let base = r#""input": {"kind": "dense", "features": 3}, "cell": "lstm", "outputs": 1"#;
    let msg = refused(&format!("{{{base}}}"), "config");
    assert!(msg.contains("hidden_size"), "{msg}");
    refused("{not json", "config");
    let with = |extra: &str| format!(r#"{{{base}, "hidden_size": 4, {extra}}}"#);
    refused(&with(r#""pooling": "max""#), "config.pooling");
    refused(&with(r#""activation": "gelu""#), "config.activation");
    refused(&with(r#""num_layers": -1"#), "config.num_layers");
    refused(&with(r#""bias": 1"#), "config.bias");
    refused(&with(r#""zoneout": 1.0"#), "config.zoneout");
    refused(&with(r#""input_dropout": "a""#), "config.input_dropout");
    refused(&with(r#""head_hidden": 3"#), "config.head_hidden");
    refused(&with(r#""pooling": "attention""#), "config.attention_units");
    let msg = refused(
        r#"{"input": {"kind": "sparse"}, "cell": "lstm", "hidden_size": 2, "outputs": 1}"#,
        "config.input.kind",
    );
    assert!(msg.contains("\"sparse\""), "{msg}");
    // The core's own checks still run: the dropout between layers.
    refused(&with(r#""dropout": 1.5"#), "dropout");
}

#[test]
fn clip_returns_the_norm_before_clipping() {
    let mut g = vec![3.0f64, -4.0];
    let clip = Clip {
        max_norm: Some(1.0),
        max_value: None,
    };
    assert_eq!(clip.apply(&mut g).unwrap(), 5.0);
    assert!(
        (g[0] - 0.6).abs() < 1e-6 && (g[1] + 0.8).abs() < 1e-6,
        "{g:?}"
    );
    // The norm first, then the values.
    let mut g = vec![3.0f64, -4.0];
    let clip = Clip {
        max_norm: Some(2.5),
        max_value: Some(1.0),
    };
    assert_eq!(clip.apply(&mut g).unwrap(), 5.0);
    assert_eq!(g, vec![1.0, -1.0]);
    let mut g = vec![0.5f64, 2.0];
    assert_eq!(Clip::default().apply(&mut g).unwrap(), 4.25f64.sqrt());
    assert_eq!(g, vec![0.5, 2.0]);
}

#[test]
fn inference_loss_masks_the_steps_past_each_length() {
    let cfg = ModelConfig::from_json(
        r#"{"input": {"kind": "dense", "features": 2}, "cell": "lstm", "hidden_size": 3,
            "pooling": "per_step", "outputs": 2, "dropout": 0.5}"#,
    )
    .unwrap();
    let model = Model::<f64>::new(cfg, 7).unwrap();
    let (b, t) = (2, 3);
    let x: Vec<f64> = (0..b * t * 2).map(|k| (k as f64 * 0.7).sin()).collect();
    let y: Vec<f64> = (0..b * t * 2).map(|k| (k as f64 * 0.3).cos()).collect();
    let lengths = [3, 1];
    let batch = ModelBatch {
        input: ModelInput::Dense(&x),
        batch: b,
        seq_len: t,
        lengths: Some(&lengths),
        h0: None,
        c0: None,
    };
    let r = model.loss(&batch, Targets::Values(&y), &Loss::Mse).unwrap();
    // The same loss as the gradient's evaluation with dropout off.
    let mut grad = vec![0.0; model.num_params()];
    let full = model
        .loss_and_grad(&batch, Targets::Values(&y), &Loss::Mse, false, 0, &mut grad)
        .unwrap();
    assert!(
        (r.loss - full.loss).abs() < 1e-12,
        "{} vs {}",
        r.loss,
        full.loss
    );
    // And by hand: the mean squared error over the 4 steps that count.
    let out = &r.output.output;
    let mut sum = 0.0;
    for i in 0..b {
        for s in 0..lengths[i] {
            for o in 0..2 {
                let k = (i * t + s) * 2 + o;
                sum += (out[k] - y[k]).powi(2);
            }
        }
    }
    assert!(
        (r.loss - sum / 8.0).abs() < 1e-12,
        "{} vs {}",
        r.loss,
        sum / 8.0
    );
}
