//! Property-based fuzzing (proptest, stable Rust) of everything that reads outside input: the
//! cell DSL parser, the cell compiler, network and model configurations, and loading weights.
//! Every target asserts "an `Error` or a sound result", never a panic, hang or abort; the case
//! counts are fixed so CI time is bounded, the RNG is deterministic so a failure reproduces,
//! and each target prints how many inputs it tried (`cargo test --test fuzz -- --nocapture`).
//! `LSTMRS_FUZZ_CASES` scales every count (e.g. 10 for a longer local run).

use lstmrs_core::cellexpr::register_cell;
use lstmrs_core::cellexpr::{is_name, CellSpec, MAX_NAME_LEN};
use lstmrs_core::memory;
use lstmrs_core::model::{
    Activation, InputKind, Model, ModelBatch, ModelConfig, ModelInput, Pooling,
};
use lstmrs_core::{forward, Batch, CellKind, Error, ForwardOptions, Layout, RnnConfig, RnnParams};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::sync::Once;

/// A memory ceiling low enough that a fuzzed size never allocates gigabytes.
const FUZZ_LIMIT: u64 = 256 << 20;

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| memory::set_limit(Some(FUZZ_LIMIT)).expect("a valid limit"));
}

/// Runs `check` on `cases` inputs drawn from `strategy` (deterministically); returns the count.
fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> usize {
    setup();
    let scale = std::env::var("LSTMRS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let config = Config {
        cases: cases * scale,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let tried = std::cell::Cell::new(0usize);
    let result = runner.run(&strategy, |v| {
        tried.set(tried.get() + 1);
        check(v)
    });
    if let Err(e) = result {
        panic!("fuzz target {name}: {e}");
    }
    eprintln!("fuzz target {name}: {} inputs", tried.get());
    tried.get()
}

/// A valid description to mutate (an Elman cell with a unit parameter).
const ELMAN: &str = r#"{"name": "elman", "states": ["h"], "x_gates": 1, "h_gates": 1, "unit_params": [{"name": "w", "init": {"constant": 0.5}}], "nodes": [{"op": "xg", "index": 0}, {"op": "hg", "index": 0}, {"op": "add", "args": [0, 1]}, {"op": "param", "name": "w"}, {"op": "mul", "args": [2, 3]}, {"op": "tanh", "args": [4]}], "outputs": {"h": 5}}"#;

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..300).prop_map(String::from_iter)
}

/// `ELMAN` with bytes replaced, removed and inserted, or wrapped in deep nesting.
fn mutated_description() -> impl Strategy<Value = String> {
    let edits = prop::collection::vec((0..ELMAN.len(), 0u8..4, any::<u8>()), 1..6);
    (edits, 0usize..400).prop_map(|(edits, depth)| {
        let mut b = ELMAN.as_bytes().to_vec();
        for (pos, kind, byte) in edits {
            if b.is_empty() {
                break;
            }
            let pos = pos.min(b.len() - 1);
            match kind {
                0 => b[pos] = byte,
                1 => {
                    b.remove(pos);
                }
                2 => {
                    let alphabet = b"{}[]\",:0-9e";
                    b.insert(pos, alphabet[byte as usize % alphabet.len()])
                }
                _ => b.truncate(pos),
            }
        }
        let s = String::from_utf8_lossy(&b).into_owned();
        if depth > 200 {
            format!("{}{s}{}", "[".repeat(depth * 20), "]".repeat(depth * 20))
        } else {
            s
        }
    })
}

#[test]
fn dsl_parser_never_panics_on_text() {
    let a = fuzz("dsl_parser/text", 2000, text(), |s| {
        let _ = CellSpec::from_json(&s);
        Ok(())
    });
    let b = fuzz("dsl_parser/mutated", 3000, mutated_description(), |s| {
        match CellSpec::from_json(&s) {
            Ok(spec) => prop_assert!(is_name(spec.name())),
            Err(e) => prop_assert!(matches!(e, Error::Value { .. } | Error::Name { .. }), "{e}"),
        }
        Ok(())
    });
    assert!(a + b >= 5000);
}

/// Random well-formed-ish cells: ops over earlier nodes, leaves with in- or out-of-range indices.
fn random_cell() -> impl Strategy<Value = String> {
    let node = (0u8..14, 0usize..12, 0usize..12, -3.0f64..3.0);
    (
        prop::collection::vec(node, 1..24),
        1usize..3,
        1usize..4,
        0usize..3,
        any::<bool>(),
    )
        .prop_map(|(nodes, states, xg, hg, with_param)| {
            let names = ["h", "c", "m"];
            let mut out = Vec::new();
            for (k, (op, a, b, v)) in nodes.iter().enumerate() {
                let prev = k.max(1);
                let (a, b) = (a % prev, b % prev);
                out.push(match op {
                    0 => format!(r#"{{"op": "xg", "index": {}}}"#, a % (xg + 1)),
                    1 => format!(r#"{{"op": "hg", "index": {}}}"#, a % (hg + 1)),
                    2 => format!(r#"{{"op": "state", "name": "{}"}}"#, names[a % 3]),
                    3 => r#"{"op": "param", "name": "w"}"#.to_string(),
                    4 => format!(r#"{{"op": "const", "value": {v:?}}}"#),
                    5..=10 => format!(
                        r#"{{"op": "{}", "args": [{a}]}}"#,
                        ["neg", "one_minus", "sigmoid", "tanh", "relu", "square"][*op as usize - 5]
                    ),
                    _ => format!(
                        r#"{{"op": "{}", "args": [{a}, {b}]}}"#,
                        ["add", "sub", "mul"][*op as usize - 11]
                    ),
                });
            }
            let last = out.len() - 1;
            let states_json: Vec<String> =
                names[..states].iter().map(|s| format!("{s:?}")).collect();
            let outputs: Vec<String> = names[..states]
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{s:?}: {}", last.saturating_sub(i)))
                .collect();
            let params = if with_param {
                r#"[{"name": "w", "init": {"uniform": 0.5}}]"#
            } else {
                "[]"
            };
            format!(
                r#"{{"name": "fz", "states": [{}], "x_gates": {xg}, "h_gates": {hg}, "unit_params": {params}, "nodes": [{}], "outputs": {{{}}}}}"#,
                states_json.join(", "),
                out.join(", "),
                outputs.join(", ")
            )
        })
}

#[test]
fn cell_compiler_gives_errors_or_cells_that_run() {
    let n = fuzz("cell_compiler", 600, random_cell(), |json| {
        let Ok(kind) = register_cell(&json) else {
            return Ok(());
        };
        // A compiled cell runs: finite inputs and weights give finite or error-free outputs.
        let cfg = RnnConfig::new(kind, 3, 4, 1, false, true).expect("valid sizes");
        let params = RnnParams::<f32>::try_init_uniform(cfg, 1).expect("small");
        let x = vec![0.25f32; 2 * 5 * 3];
        let batch = Batch {
            input: &x,
            layout: Layout::BatchFirst,
            seq_len: 5,
            batch: 2,
            h0: None,
            c0: None,
            lengths: None,
        };
        let out = forward(&params, &batch, &ForwardOptions::default());
        prop_assert!(out.is_ok(), "{json}: {out:?}");
        Ok(())
    });
    assert!(n >= 600);
}

#[test]
fn cell_names_follow_one_rule() {
    let n = fuzz("cell_names", 2000, text(), |name| {
        let json = ELMAN.replacen("\"elman\"", &serde_json_string(&name), 1);
        let compiled = CellSpec::from_json(&json).is_ok();
        let rule = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        prop_assert_eq!(compiled, rule, "name {:?}", name);
        Ok(())
    });
    assert!(n >= 2000);
}

fn serde_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Sizes from every range that matters: zero, small, around the ceiling, near `usize::MAX`.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..6,
        1 => Just(1usize << 20),
        1 => Just(1usize << 31),
        1 => Just(usize::MAX / 3),
        1 => Just(usize::MAX),
    ]
}

#[test]
fn network_configs_error_or_allocate_within_the_limit() {
    let n = fuzz(
        "config/network",
        3000,
        (
            size(),
            size(),
            size(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        |(i, h, l, bidi, bias, gru)| {
            let cell = if gru { CellKind::Gru } else { CellKind::Lstm };
            let Ok(cfg) = RnnConfig::new(cell, i, h, l.min(8), bidi, bias) else {
                return Ok(());
            };
            match RnnParams::<f32>::try_zeros(cfg) {
                Ok(p) => prop_assert!((p.len() as u64) * 4 <= FUZZ_LIMIT),
                Err(e) => prop_assert!(matches!(e, Error::Memory { .. }), "{e}"),
            }
            Ok(())
        },
    );
    assert!(n >= 3000);
}

#[test]
fn model_configs_error_or_build() {
    let strategy = (
        (size(), size(), size(), any::<bool>()),
        (size(), prop::collection::vec(size(), 0..3), size(), 0u8..4),
    );
    let n = fuzz(
        "config/model",
        1500,
        strategy,
        |((features, vocab, hidden, tokens), (outputs, head_hidden, units, pooling))| {
            let input = if tokens {
                InputKind::Embedding {
                    vocab,
                    dim: features,
                }
            } else {
                InputKind::Dense { features }
            };
            let Ok(rnn) = RnnConfig::new(CellKind::Lstm, features, hidden, 1, false, true) else {
                return Ok(());
            };
            let config = ModelConfig {
                input,
                rnn,
                dropout: 0.0,
                regularization: Default::default(),
                pooling: match pooling {
                    0 => Pooling::Last,
                    1 => Pooling::Mean,
                    2 => Pooling::PerStep,
                    _ => Pooling::Attention { units },
                },
                head_hidden,
                activation: Activation::Tanh,
                outputs,
            };
            match Model::<f32>::new(config, 0) {
                Ok(m) => {
                    prop_assert!((m.num_params() as u64) * 4 <= FUZZ_LIMIT);
                    // One small prediction must run.
                    if let InputKind::Dense { features } = m.config().input {
                        let x = vec![0.5f32; 2 * 3 * features];
                        let batch = ModelBatch {
                            input: ModelInput::Dense(&x),
                            batch: 2,
                            seq_len: 3,
                            lengths: None,
                            h0: None,
                            c0: None,
                        };
                        match m.predict(&batch) {
                            Ok(out) => prop_assert!(out.output.iter().all(|v| v.is_finite())),
                            Err(e) => prop_assert!(matches!(e, Error::Memory { .. }), "{e}"),
                        }
                    }
                }
                Err(e) => prop_assert!(
                    matches!(e, Error::Memory { .. } | Error::Value { .. }),
                    "{e}"
                ),
            }
            Ok(())
        },
    );
    assert!(n >= 1500);
}

/// Loading weights: arbitrary flat buffers and named tensors of arbitrary lengths and values.
#[test]
fn loading_weights_checks_every_length() {
    let strategy = (
        0usize..400,
        prop::sample::select(vec![
            "weight_ih_l0",
            "weight_hh_l0",
            "bias_ih_l0",
            "bias_hh_l0",
            "weight_ih_l1",
            "weight_ih_l0_reverse",
            "",
            "weight_ih_l99",
            "bias\u{0}",
        ]),
        0usize..200,
        prop::collection::vec(any::<f32>(), 0..8),
    );
    let n = fuzz(
        "checkpoint/weights",
        3000,
        strategy,
        |(flat_len, name, len, fill)| {
            let cfg = RnnConfig::new(CellKind::Gru, 3, 4, 2, false, true).expect("valid");
            let fill = if fill.is_empty() { vec![0.1] } else { fill };
            let data: Vec<f32> = (0..flat_len).map(|k| fill[k % fill.len()]).collect();
            match RnnParams::from_flat(cfg, data) {
                Ok(p) => prop_assert_eq!(p.len(), flat_len),
                Err(e) => prop_assert!(matches!(e, Error::Shape { .. }), "{e}"),
            }
            let mut p = RnnParams::<f32>::zeros(cfg);
            let values: Vec<f32> = (0..len).map(|k| fill[k % fill.len()]).collect();
            match p.set(name, &values) {
                Ok(()) => prop_assert_eq!(p.get(name).unwrap(), &values[..]),
                Err(e) => {
                    prop_assert!(matches!(e, Error::Shape { .. } | Error::Name { .. }), "{e}")
                }
            }
            Ok(())
        },
    );
    assert!(n >= 3000);
}

/// Forward calls with arbitrary shapes, lengths and states: an error or outputs of the right size.
#[test]
fn forward_checks_shapes_lengths_and_states() {
    let strategy = (
        0usize..5,
        0usize..5,
        0usize..70,
        prop::option::of(prop::collection::vec(0usize..7, 0..6)),
        prop::option::of(0usize..40),
        any::<bool>(),
    );
    let n = fuzz(
        "api/forward",
        3000,
        strategy,
        |(t, b, len, lengths, h0_len, time_major)| {
            let cfg = RnnConfig::new(CellKind::Lstm, 3, 2, 2, true, true).expect("valid");
            let p = RnnParams::<f64>::init_uniform(cfg, 0);
            let x = vec![0.5; len];
            let h0 = h0_len.map(|n| vec![0.1; n]);
            let batch = Batch {
                input: &x,
                layout: if time_major {
                    Layout::TimeMajor
                } else {
                    Layout::BatchFirst
                },
                seq_len: t,
                batch: b,
                h0: h0.as_deref(),
                c0: None,
                lengths: lengths.as_deref(),
            };
            match forward(&p, &batch, &ForwardOptions::default()) {
                Ok(out) => {
                    prop_assert_eq!(out.output.len(), t * b * 4);
                    prop_assert!(out.output.iter().all(|v| v.is_finite()));
                }
                Err(e) => prop_assert!(
                    matches!(e, Error::Shape { .. } | Error::Value { .. }),
                    "{e}"
                ),
            }
            Ok(())
        },
    );
    assert!(n >= 3000);
}
