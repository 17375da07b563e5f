//! The GPU backend against the CPU path: outputs, final states and every gradient, across cells,
//! depths, directions, lengths and layouts.
//!
//! Runs on whatever Vulkan adapter is present (Mesa's lavapipe in CI: shapes stay small, it runs
//! about 1 GFLOP/s). Without an adapter the tests skip, unless `LSTMRS_REQUIRE_GPU=1`, which
//! turns a missing adapter into a failure so that a green run proves the GPU path ran:
//!     LSTMRS_REQUIRE_GPU=1 cargo test -p lstmrs-core --features gpu --test gpu_parity
#![cfg(feature = "gpu")]

use lstmrs_core::error::GpuFailure;
use lstmrs_core::gpu::{self, GpuInfo};
use lstmrs_core::{
    backward, forward, param_specs, Batch, CellKind, Error, ForwardOptions, GradOutputs, Layout,
    RnnConfig, RnnParams,
};

/// The adapter, or `None` to skip. Asserts the backend is Vulkan, the only one compiled in.
fn adapter() -> Option<GpuInfo> {
    let required = std::env::var("LSTMRS_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match gpu::gpu_available() {
        Ok(info) => {
            assert_eq!(info.backend, "vulkan", "adapter {info:?}");
            Some(info)
        }
        Err(e) if required => panic!("LSTMRS_REQUIRE_GPU=1 but no usable GPU: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// A reproducible stream of uniforms in [-1, 1) (SplitMix64).
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// Largest error of `got` against `want`, relative to `1e-4 * |want| + floor`, where the floor
/// is `1e-5` of the tensor's largest magnitude (sums over many steps round differently on the
/// two paths, so elements near zero are judged on the tensor's scale). Returns the worst ratio
/// (<= 1 passes) and the worst absolute error.
fn compare(name: &str, got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let floor = 1e-5 * scale.max(1e-3);
    let (mut worst, mut abs) = (0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (f64::from(g), f64::from(w));
        assert!(g.is_finite(), "{name}[{i}] = {g}");
        let err = (g - w).abs();
        let ratio = err / (1e-4 * w.abs() + floor);
        if ratio > worst {
            worst = ratio;
        }
        abs = abs.max(err);
        assert!(
            ratio <= 1.0,
            "{name}[{i}]: gpu {g} vs cpu {w} (error {err:.3e}, allowed {:.3e})",
            1e-4 * w.abs() + floor
        );
    }
    (worst, abs)
}

#[derive(Debug, Clone, Copy)]
struct Case {
    cell: CellKind,
    layers: usize,
    bidirectional: bool,
    lengths: bool,
    layout: Layout,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    bias: bool,
    /// Dropout between layers in training mode.
    dropout: f64,
}

/// Runs one case on both paths and compares everything; returns the worst error ratio and the
/// worst absolute error.
fn check(case: Case, seed: u64) -> (f64, f64) {
    check_projected(case, 0, seed)
}

/// [`check`] with the LSTM's hidden state projected to `proj` features (0: none).
fn check_projected(case: Case, proj: usize, seed: u64) -> (f64, f64) {
    let Case { t, b, i, h, .. } = case;
    let cfg = RnnConfig::new(case.cell, i, h, case.layers, case.bidirectional, case.bias)
        .and_then(|c| c.with_proj_size(proj))
        .unwrap();
    let params = RnnParams::<f32>::init_uniform(cfg, seed);
    let mut s = Stream(seed);
    // h has `proj` features with projections, c always `h`.
    let states = case.layers * cfg.num_directions() * b * cfg.state_size();
    let c_states = case.layers * cfg.num_directions() * b * h;
    let input = s.vec(t * b * i, 1.0);
    let h0 = s.vec(states, 0.5);
    let c0 = s.vec(c_states, 0.5);
    // Mixed lengths including the full one and 1, sorted neither way.
    let lengths: Vec<usize> = (0..b)
        .map(|r| [t, 1, t / 2 + 1, t - 1][r % 4].max(1))
        .collect();
    let lstm = case.cell == CellKind::Lstm;
    let batch = Batch {
        input: &input,
        layout: case.layout,
        seq_len: t,
        batch: b,
        h0: Some(&h0),
        c0: lstm.then_some(&c0[..]),
        lengths: case.lengths.then_some(&lengths[..]),
    };
    let opts = ForwardOptions {
        training: case.dropout > 0.0,
        dropout: case.dropout,
        seed: seed ^ 0xD0,
        keep_tape: true,
    };
    let cpu = forward(&params, &batch, &opts).unwrap();
    let gpu_out = gpu::forward(&params, &batch, &opts).unwrap();
    let tag = format!("{case:?} proj_size={proj}");
    let (mut worst, mut worst_abs) = (0f64, 0f64);
    let mut cmp = |name: &str, g: &[f32], w: &[f32]| {
        let (r, a) = compare(&format!("{tag}: {name}"), g, w);
        worst = worst.max(r);
        worst_abs = worst_abs.max(a);
    };
    cmp("output", &gpu_out.output.output, &cpu.output);
    cmp("h_n", &gpu_out.output.h_n, &cpu.h_n);
    assert_eq!(gpu_out.output.c_n.is_some(), lstm);
    if let (Some(g), Some(c)) = (&gpu_out.output.c_n, &cpu.c_n) {
        cmp("c_n", g, c);
    }

    let d_out = s.vec(cpu.output.len(), 1.0);
    let d_h = s.vec(states, 1.0);
    let d_c = s.vec(c_states, 1.0);
    let grads = GradOutputs {
        output: Some(&d_out),
        h_n: Some(&d_h),
        c_n: lstm.then_some(&d_c[..]),
    };
    let want = backward(&params, cpu.tape.as_ref().unwrap(), &grads).unwrap();
    let got = gpu::backward(&params, gpu_out.tape.as_ref().unwrap(), &grads).unwrap();
    for spec in param_specs(&cfg) {
        let r = spec.offset..spec.offset + spec.len;
        cmp(
            &format!("d {}", spec.name),
            &got.params[r.clone()],
            &want.params[r],
        );
    }
    cmp("d input", &got.input, &want.input);
    cmp("d h0", &got.h0, &want.h0);
    assert_eq!(got.c0.is_some(), lstm);
    if let (Some(g), Some(w)) = (&got.c0, &want.c0) {
        cmp("d c0", g, w);
    }
    (worst, worst_abs)
}

/// Every combination of cell, depth, direction, lengths and layout, on shapes alternating
/// between multiples of 4 (the vectorised loads) and odd sizes (the bounds checks).
#[test]
fn matches_cpu_across_configurations() {
    let Some(info) = adapter() else { return };
    let (mut worst, mut worst_abs) = (0f64, 0f64);
    let mut n = 0;
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for layers in [1, 2] {
            for bidirectional in [false, true] {
                for lengths in [false, true] {
                    for layout in [Layout::BatchFirst, Layout::TimeMajor] {
                        let odd = n % 2 == 1;
                        let case = Case {
                            cell,
                            layers,
                            bidirectional,
                            lengths,
                            layout,
                            t: if odd { 5 } else { 4 },
                            b: if odd { 3 } else { 4 },
                            i: if odd { 5 } else { 8 },
                            h: if odd { 7 } else { 8 },
                            bias: n % 8 != 3,
                            dropout: 0.0,
                        };
                        let (r, a) = check(case, 100 + n);
                        worst = worst.max(r);
                        worst_abs = worst_abs.max(a);
                        n += 1;
                    }
                }
            }
        }
    }
    eprintln!(
        "{n} configurations on {} ({}): worst error {worst:.3} of the tolerance, \
         largest absolute error {worst_abs:.2e}",
        info.name, info.device_type
    );
}

/// Several workgroups along every axis: more units than a step workgroup holds, more rows than
/// its batch tile, K loops past one tile, products taller than one matmul tile.
#[test]
fn matches_cpu_on_multi_tile_shapes() {
    if adapter().is_none() {
        return;
    }
    for (k, cell) in [CellKind::Lstm, CellKind::Gru].into_iter().enumerate() {
        let case = Case {
            cell,
            layers: 2,
            bidirectional: true,
            lengths: true,
            layout: Layout::BatchFirst,
            t: 9,
            b: 21,
            i: 36,
            h: 41,
            bias: true,
            dropout: 0.0,
        };
        let (worst, abs) = check(case, 7 + k as u64);
        eprintln!(
            "{cell:?} multi-tile: worst error {worst:.3} of the tolerance, largest absolute \
             error {abs:.2e}"
        );
    }
}

/// Dropout between layers draws the CPU path's masks and applies them forward and backward.
#[test]
fn dropout_between_layers_matches_cpu() {
    if adapter().is_none() {
        return;
    }
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let case = Case {
            cell,
            layers: 3,
            bidirectional: true,
            lengths: false,
            layout: Layout::TimeMajor,
            t: 4,
            b: 3,
            i: 6,
            h: 5,
            bias: true,
            dropout: 0.4,
        };
        check(case, 31);
    }
}

/// Inference without a tape (two ping-pong state slots) gives the same outputs and no tape.
#[test]
fn inference_without_tape_matches() {
    if adapter().is_none() {
        return;
    }
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let cfg = RnnConfig::new(cell, 3, 6, 2, true, true).unwrap();
        let params = RnnParams::<f32>::init_uniform(cfg, 5);
        let input = Stream(9).vec(7 * 2 * 3, 1.0);
        let lengths = [7, 3];
        let batch = Batch {
            input: &input,
            layout: Layout::BatchFirst,
            seq_len: 7,
            batch: 2,
            h0: None,
            c0: None,
            lengths: Some(&lengths),
        };
        let opts = ForwardOptions::default();
        let cpu = forward(&params, &batch, &opts).unwrap();
        let got = gpu::forward(&params, &batch, &opts).unwrap();
        assert!(got.tape.is_none());
        compare("output", &got.output.output, &cpu.output);
        compare("h_n", &got.output.h_n, &cpu.h_n);
        // Past each row's length the output is exactly zero.
        let row1 = &got.output.output[7 * 12..];
        assert!(row1[3 * 12..].iter().all(|&v| v == 0.0));
        assert!(row1[..3 * 12].iter().any(|&v| v != 0.0));
    }
}

/// What the GPU path cannot run comes back as a typed error before any device work.
#[test]
fn unsupported_requests_are_typed_errors() {
    let cfg = RnnConfig::new(CellKind::Lstm, 2, 3, 1, false, true).unwrap();
    let p64 = RnnParams::<f64>::init_uniform(cfg, 1);
    let x = vec![0.5f64; 2 * 4 * 2];
    let batch = Batch {
        input: &x,
        layout: Layout::BatchFirst,
        seq_len: 4,
        batch: 2,
        h0: None,
        c0: None,
        lengths: None,
    };
    match gpu::forward(&p64, &batch, &ForwardOptions::default()) {
        Err(Error::Gpu {
            failure: GpuFailure::Unsupported,
            detail,
        }) => assert!(detail.contains("f64"), "{detail}"),
        other => panic!("expected an Unsupported error, got {other:?}"),
    }

    // An Elman cell in the cell description format (notes/cell_dsl.md).
    let elman = CellKind::parse(
        r#"{"name": "elman", "states": ["h"], "x_gates": 1, "h_gates": 1, "unit_params": [],
            "nodes": [{"op": "xg", "index": 0}, {"op": "hg", "index": 0},
                      {"op": "add", "args": [0, 1]}, {"op": "tanh", "args": [2]}],
            "outputs": {"h": 3}}"#,
    )
    .unwrap();
    {
        let cfg = RnnConfig::new(elman, 2, 3, 1, false, true).unwrap();
        let p = RnnParams::<f32>::init_uniform(cfg, 1);
        let x = vec![0.5f32; 2 * 4 * 2];
        let batch = Batch {
            input: &x,
            layout: Layout::BatchFirst,
            seq_len: 4,
            batch: 2,
            h0: None,
            c0: None,
            lengths: None,
        };
        let e = gpu::forward(&p, &batch, &ForwardOptions::default()).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Gpu {
                    failure: GpuFailure::Unsupported,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    // A cell with row reductions (layer normalisation): the error names them.
    let normed = CellKind::parse(
        r#"{"name": "normed", "states": ["h"], "x_gates": 1, "h_gates": 0, "unit_params": [],
            "nodes": [{"op": "xg", "index": 0}, {"op": "mean", "args": [0]},
                      {"op": "sub", "args": [0, 1]}, {"op": "sum", "args": [2]},
                      {"op": "add", "args": [2, 3]}],
            "outputs": {"h": 4}}"#,
    )
    .unwrap();
    {
        let cfg = RnnConfig::new(normed, 2, 3, 1, false, true).unwrap();
        let p = RnnParams::<f32>::init_uniform(cfg, 1);
        let x = vec![0.5f32; 2 * 4 * 2];
        let batch = Batch {
            input: &x,
            layout: Layout::BatchFirst,
            seq_len: 4,
            batch: 2,
            h0: None,
            c0: None,
            lengths: None,
        };
        match gpu::forward(&p, &batch, &ForwardOptions::default()) {
            Err(Error::Gpu {
                failure: GpuFailure::Unsupported,
                detail,
            }) => assert!(
                detail.contains("normed") && detail.contains("row reductions mean, sum"),
                "{detail}"
            ),
            other => panic!("expected an Unsupported error, got {other:?}"),
        }
    }

    // Bad shapes are the CPU path's errors, also without a device.
    let p = RnnParams::<f32>::init_uniform(cfg, 1);
    let short = vec![0f32; 5];
    let bad = Batch {
        input: &short,
        layout: Layout::BatchFirst,
        seq_len: 4,
        batch: 2,
        h0: None,
        c0: None,
        lengths: None,
    };
    let e = gpu::forward(&p, &bad, &ForwardOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "input", .. }), "{e:?}");
}

/// A tape only serves the network that recorded it.
#[test]
fn backward_rejects_a_foreign_tape() {
    if adapter().is_none() {
        return;
    }
    let cfg = RnnConfig::new(CellKind::Gru, 2, 3, 1, false, true).unwrap();
    let other = RnnConfig::new(CellKind::Gru, 2, 4, 1, false, true).unwrap();
    let p = RnnParams::<f32>::init_uniform(cfg, 1);
    let q = RnnParams::<f32>::init_uniform(other, 1);
    let x = vec![0.1f32; 3 * 2 * 2];
    let batch = Batch {
        input: &x,
        layout: Layout::TimeMajor,
        seq_len: 3,
        batch: 2,
        h0: None,
        c0: None,
        lengths: None,
    };
    let opts = ForwardOptions {
        keep_tape: true,
        ..Default::default()
    };
    let out = gpu::forward(&p, &batch, &opts).unwrap();
    let e = gpu::backward(&q, out.tape.as_ref().unwrap(), &GradOutputs::default()).unwrap_err();
    assert!(matches!(e, Error::Value { arg: "tape", .. }), "{e:?}");
    let d = vec![0f32; 7];
    let e = gpu::backward(
        &p,
        out.tape.as_ref().unwrap(),
        &GradOutputs {
            output: Some(&d),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                arg: "d_output",
                ..
            }
        ),
        "{e:?}"
    );
}

/// A whole model with its recurrent stack on the GPU (embedding, attention pooling and head on the
/// host) gives the CPU model's loss and gradients, with dropout between layers in training mode;
/// what the GPU cannot run is refused when the device is set, not mid-training.
#[test]
fn model_on_the_gpu_matches_the_cpu_model() {
    use lstmrs_core::model::{
        Activation, Device, InputKind, Loss, Model, ModelBatch, ModelConfig, ModelInput, Pooling,
        Targets,
    };
    if adapter().is_none() {
        return;
    }
    // The projected LSTM too: its h (and the pooling's input) has proj_size features.
    for (cell, proj) in [(CellKind::Lstm, 0), (CellKind::Gru, 0), (CellKind::Lstm, 4)] {
        let cfg = ModelConfig {
            input: InputKind::Embedding { vocab: 11, dim: 6 },
            rnn: RnnConfig::new(cell, 6, 9, 2, true, true)
                .and_then(|c| c.with_proj_size(proj))
                .unwrap(),
            dropout: 0.3,
            regularization: Default::default(),
            pooling: Pooling::Attention { units: 5 },
            head_hidden: vec![7],
            activation: Activation::Tanh,
            outputs: 3,
        };
        let cpu = Model::<f32>::new(cfg.clone(), 3).unwrap();
        let mut on_gpu = cpu.clone();
        on_gpu.set_device(Device::Gpu).unwrap();
        assert_eq!(on_gpu.device(), Device::Gpu);
        let (b, t) = (4, 7);
        let tokens: Vec<i64> = (0..b * t).map(|i| (i * 5 % 11) as i64).collect();
        let lengths = [7, 3, 5, 1];
        let batch = ModelBatch {
            input: ModelInput::Tokens(&tokens),
            batch: b,
            seq_len: t,
            lengths: Some(&lengths),
            h0: None,
            c0: None,
        };
        let classes = [0i64, 2, 1, 2];
        let loss = Loss::CrossEntropy {
            ignore_index: -100,
            class_weights: None,
        };
        let mut g_cpu = vec![0.0f32; cpu.num_params()];
        let mut g_gpu = g_cpu.clone();
        let a = cpu
            .loss_and_grad(
                &batch,
                Targets::Classes(&classes),
                &loss,
                true,
                9,
                &mut g_cpu,
            )
            .unwrap();
        let b2 = on_gpu
            .loss_and_grad(
                &batch,
                Targets::Classes(&classes),
                &loss,
                true,
                9,
                &mut g_gpu,
            )
            .unwrap();
        assert!(
            (a.loss - b2.loss).abs() <= 1e-5 * a.loss.abs(),
            "{cell:?} proj_size={proj}: loss {} vs {}",
            a.loss,
            b2.loss
        );
        let scale = g_cpu.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (k, (x, y)) in g_cpu.iter().zip(&g_gpu).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * x.abs() + 1e-5 * scale,
                "{cell:?} proj_size={proj}: grad {k}: cpu {x} vs gpu {y}"
            );
        }
    }
    // Refused up front: zoneout has no GPU kernel; f64 neither.
    let mut cfg = ModelConfig {
        input: InputKind::Dense { features: 2 },
        rnn: RnnConfig::new(CellKind::Lstm, 2, 3, 1, false, true).unwrap(),
        dropout: 0.0,
        regularization: Default::default(),
        pooling: Pooling::Last,
        head_hidden: vec![],
        activation: Activation::Tanh,
        outputs: 1,
    };
    Model::<f64>::new(cfg.clone(), 0)
        .unwrap()
        .set_device(Device::Gpu)
        .expect_err("f64 on the GPU");
    cfg.regularization.zoneout = 0.1;
    let mut m = Model::<f32>::new(cfg, 0).unwrap();
    let err = m.set_device(Device::Gpu).expect_err("zoneout on the GPU");
    assert!(
        matches!(
            err,
            Error::Gpu {
                failure: GpuFailure::Unsupported,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(m.device(), Device::Cpu);
}

/// The projected LSTM (`proj_size`): one and two layers, one and two directions, with and
/// without lengths and biases, both layouts; then a shape past one tile everywhere (P and H not
/// multiples of a tile, several batch tiles).
#[test]
fn projections_match_cpu() {
    if adapter().is_none() {
        return;
    }
    let base = Case {
        cell: CellKind::Lstm,
        layers: 1,
        bidirectional: false,
        lengths: false,
        layout: Layout::BatchFirst,
        t: 5,
        b: 3,
        i: 4,
        h: 7,
        bias: true,
        dropout: 0.0,
    };
    let cases = [
        (base, 3),
        (
            Case {
                layers: 2,
                bidirectional: true,
                lengths: true,
                layout: Layout::TimeMajor,
                b: 4,
                h: 8,
                ..base
            },
            4,
        ),
        (
            Case {
                layers: 2,
                lengths: true,
                bias: false,
                ..base
            },
            2,
        ),
        (
            Case {
                bidirectional: true,
                lengths: true,
                h: 6,
                ..base
            },
            5,
        ),
        (
            Case {
                layers: 3,
                bidirectional: true,
                layout: Layout::TimeMajor,
                dropout: 0.4,
                ..base
            },
            3,
        ),
    ];
    for (k, (case, proj)) in cases.into_iter().enumerate() {
        check_projected(case, proj, 200 + k as u64);
    }
    let wide = Case {
        layers: 2,
        bidirectional: true,
        lengths: true,
        t: 6,
        b: 21,
        i: 36,
        h: 41,
        ..base
    };
    let (worst, abs) = check_projected(wide, 19, 7);
    eprintln!(
        "projected multi-tile: worst error {worst:.3} of the tolerance, largest absolute error \
         {abs:.2e}"
    );
}

/// Projected inference without a tape (ping-pong slots, one step of `m`) matches, and rows past
/// their length output exactly zero.
#[test]
fn projected_inference_without_tape_matches() {
    if adapter().is_none() {
        return;
    }
    let cfg = RnnConfig::new(CellKind::Lstm, 3, 6, 2, true, true)
        .and_then(|c| c.with_proj_size(4))
        .unwrap();
    let params = RnnParams::<f32>::init_uniform(cfg, 5);
    let input = Stream(9).vec(7 * 2 * 3, 1.0);
    let lengths = [7, 3];
    let batch = Batch {
        input: &input,
        layout: Layout::BatchFirst,
        seq_len: 7,
        batch: 2,
        h0: None,
        c0: None,
        lengths: Some(&lengths),
    };
    let opts = ForwardOptions::default();
    let cpu = forward(&params, &batch, &opts).unwrap();
    let got = gpu::forward(&params, &batch, &opts).unwrap();
    assert!(got.tape.is_none());
    compare("output", &got.output.output, &cpu.output);
    compare("h_n", &got.output.h_n, &cpu.h_n);
    compare(
        "c_n",
        got.output.c_n.as_ref().unwrap(),
        cpu.c_n.as_ref().unwrap(),
    );
    assert_eq!(
        (got.output.h_n.len(), cpu.c_n.unwrap().len()),
        (2 * 2 * 2 * 4, 2 * 2 * 2 * 6)
    );
    // Output rows hold 2*P = 8 features; past row 1's length (3) they are exactly zero.
    let row1 = &got.output.output[7 * 8..];
    assert!(row1[3 * 8..].iter().all(|&v| v == 0.0));
    assert!(row1[..3 * 8].iter().any(|&v| v != 0.0));
}
