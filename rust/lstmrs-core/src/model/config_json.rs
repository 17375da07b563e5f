//! A model's configuration from its JSON text: the text `lstmrs.models` writes and a checkpoint
//! stores. Every error names the key (`config.<key>`) and what it must hold.

use super::{Activation, InputKind, ModelConfig, Pooling};
use crate::config::{CellKind, RnnConfig};
use crate::error::{Error, Result};
use crate::network::Regularization;
use serde_json::Value;

fn invalid(arg: &'static str, expected: impl Into<String>, got: impl ToString) -> Error {
    Error::Value {
        arg,
        expected: expected.into(),
        got: got.to_string(),
    }
}

/// The JSON object, read key by key.
struct Fields<'a>(&'a Value);

impl Fields<'_> {
    fn required(&self, key: &'static str) -> Result<&Value> {
        self.0
            .get(key)
            .ok_or_else(|| invalid("config", format!("the key {key:?}"), "none"))
    }

    fn uint_or(&self, arg: &'static str, key: &str, default: usize) -> Result<usize> {
        self.0.get(key).map_or(Ok(default), |v| uint(arg, v))
    }

    /// `arg` is `config.<key>`.
    fn num_or(&self, arg: &'static str, default: f64) -> Result<f64> {
        match self.0.get(arg.trim_start_matches("config.")) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x.as_f64().ok_or_else(|| invalid(arg, "a number", x)),
        }
    }

    fn bool_or(&self, arg: &'static str, default: bool) -> Result<bool> {
        match self.0.get(arg.trim_start_matches("config.")) {
            None => Ok(default),
            Some(x) => x.as_bool().ok_or_else(|| invalid(arg, "true or false", x)),
        }
    }

    fn str_or<'s>(&'s self, key: &str, default: &'s str) -> &'s str {
        self.0.get(key).and_then(Value::as_str).unwrap_or(default)
    }
}

fn uint(arg: &'static str, v: &Value) -> Result<usize> {
    v.as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| invalid(arg, "a non-negative integer", v))
}

fn input_kind(input: &Value) -> Result<InputKind> {
    let size = |arg, key| uint(arg, input.get(key).unwrap_or(&Value::Null));
    match input.get("kind").and_then(Value::as_str).unwrap_or("") {
        "dense" => Ok(InputKind::Dense {
            features: size("config.input.features", "features")?,
        }),
        "embedding" => Ok(InputKind::Embedding {
            vocab: size("config.input.vocab", "vocab")?,
            dim: size("config.input.dim", "dim")?,
        }),
        other => Err(invalid(
            "config.input.kind",
            "'dense' or 'embedding'",
            format!("{other:?}"),
        )),
    }
}

fn pooling(f: &Fields<'_>) -> Result<Pooling> {
    Ok(match f.str_or("pooling", "last") {
        "per_step" => Pooling::PerStep,
        "last" => Pooling::Last,
        "mean" => Pooling::Mean,
        "attention" => Pooling::Attention {
            units: uint(
                "config.attention_units",
                f.0.get("attention_units").unwrap_or(&Value::Null),
            )?,
        },
        other => {
            return Err(invalid(
                "config.pooling",
                "'per_step', 'last', 'mean' or 'attention'",
                format!("{other:?}"),
            ))
        }
    })
}

fn head_hidden(f: &Fields<'_>) -> Result<Vec<usize>> {
    match f.0.get("head_hidden") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(|x| uint("config.head_hidden", x)).collect(),
        Some(x) => Err(invalid("config.head_hidden", "a list of sizes", x)),
    }
}

fn activation(f: &Fields<'_>) -> Result<Activation> {
    match f.str_or("activation", "tanh") {
        "tanh" => Ok(Activation::Tanh),
        "relu" => Ok(Activation::Relu),
        other => Err(invalid(
            "config.activation",
            "'tanh' or 'relu'",
            format!("{other:?}"),
        )),
    }
}

impl ModelConfig {
    /// Reads and validates a configuration: `input` (`{"kind": "dense", "features"}` or
    /// `{"kind": "embedding", "vocab", "dim"}`), `cell` (a built-in name or a custom cell's
    /// description, as an object or its JSON text), `hidden_size` and `outputs` are required;
    /// `num_layers`, `bidirectional`, `bias`, `proj_size`, `dropout`, `input_dropout`,
    /// `state_dropout`, `zoneout`, `pooling`, `attention_units`, `head_hidden` and `activation`
    /// have PyTorch's or the Python API's defaults.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| invalid("config", "JSON text", format!("invalid JSON ({e})")))?;
        let f = Fields(&v);
        let input = input_kind(f.required("input")?)?;
        let width = match input {
            InputKind::Dense { features } => features,
            InputKind::Embedding { dim, .. } => dim,
        };
        let cell = match f.required("cell")? {
            c @ Value::Object(_) => CellKind::parse(&c.to_string()),
            other => CellKind::parse(other.as_str().unwrap_or("")),
        }?;
        let rnn = RnnConfig::new(
            cell,
            width,
            uint("config.hidden_size", f.required("hidden_size")?)?,
            f.uint_or("config.num_layers", "num_layers", 1)?,
            f.bool_or("config.bidirectional", false)?,
            f.bool_or("config.bias", true)?,
        )?
        .with_proj_size(f.uint_or("config.proj_size", "proj_size", 0)?)?;
        let cfg = ModelConfig {
            input,
            rnn,
            dropout: f.num_or("config.dropout", 0.0)?,
            regularization: Regularization {
                input_dropout: f.num_or("config.input_dropout", 0.0)?,
                state_dropout: f.num_or("config.state_dropout", 0.0)?,
                zoneout: f.num_or("config.zoneout", 0.0)?,
            },
            pooling: pooling(&f)?,
            head_hidden: head_hidden(&f)?,
            activation: activation(&f)?,
            outputs: uint("config.outputs", f.required("outputs")?)?,
        };
        cfg.validate()?;
        for (arg, p) in [
            ("config.input_dropout", cfg.regularization.input_dropout),
            ("config.state_dropout", cfg.regularization.state_dropout),
            ("config.zoneout", cfg.regularization.zoneout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(invalid(arg, "a probability in [0, 1)", p));
            }
        }
        Ok(cfg)
    }
}
