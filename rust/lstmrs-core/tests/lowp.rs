//! Reduced-precision inference (`lstmrs_core::lowp`): every kernel this CPU runs, the portable one
//! forced, against the plain reference of the same arithmetic and against the f32 forward pass.

use lstmrs_core::lowp::{reference, Kernel, LowpOutput, LowpRnn, Precision};
use lstmrs_core::{forward, Batch, CellKind, ForwardOptions, Layout, RnnConfig, RnnParams};

fn data(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.61 + seed).sin()).collect()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

struct Case {
    cell: CellKind,
    layers: usize,
    bidir: bool,
    bias: bool,
    layout: Layout,
    lengths: bool,
    state: bool,
}

const CASES: [Case; 5] = [
    Case {
        cell: CellKind::Lstm,
        layers: 1,
        bidir: false,
        bias: true,
        layout: Layout::BatchFirst,
        lengths: false,
        state: false,
    },
    Case {
        cell: CellKind::Lstm,
        layers: 2,
        bidir: true,
        bias: true,
        layout: Layout::TimeMajor,
        lengths: true,
        state: true,
    },
    Case {
        cell: CellKind::Gru,
        layers: 1,
        bidir: false,
        bias: true,
        layout: Layout::BatchFirst,
        lengths: false,
        state: true,
    },
    Case {
        cell: CellKind::Gru,
        layers: 2,
        bidir: true,
        bias: false,
        layout: Layout::BatchFirst,
        lengths: true,
        state: false,
    },
    Case {
        cell: CellKind::Lstm,
        layers: 1,
        bidir: true,
        bias: false,
        layout: Layout::BatchFirst,
        lengths: true,
        state: false,
    },
];

fn check(output: &LowpOutput, want: &LowpOutput, tol: f32, what: &str) {
    let e = max_rel(&output.output, &want.output);
    assert!(
        e <= tol,
        "{what}: output differs by {e} (relative), tolerance {tol}"
    );
    let e = max_rel(&output.h_n, &want.h_n);
    assert!(e <= tol, "{what}: h_n differs by {e}");
    if let (Some(c), Some(w)) = (&output.c_n, &want.c_n) {
        let e = max_rel(c, w);
        assert!(e <= tol, "{what}: c_n differs by {e}");
    }
}

#[test]
fn every_kernel_matches_the_reference_and_stays_near_f32() {
    let (i, h, b, t) = (11, 40, 5, 7);
    for case in &CASES {
        let cfg = RnnConfig::new(case.cell, i, h, case.layers, case.bidir, case.bias).unwrap();
        let params = RnnParams::<f32>::init_uniform(cfg, 3);
        let x = data(b * t * i, 0.2);
        let states = case.layers * cfg.num_directions() * b * h;
        let (h0, c0) = (data(states, 1.3), data(states, 2.1));
        let lengths = [7usize, 3, 1, 7, 5];
        let batch = Batch {
            input: &x,
            layout: case.layout,
            seq_len: t,
            batch: b,
            h0: case.state.then_some(&h0[..]),
            c0: (case.state && case.cell == CellKind::Lstm).then_some(&c0[..]),
            lengths: case.lengths.then_some(&lengths[..]),
        };
        let f32_out = forward(&params, &batch, &ForwardOptions::default()).unwrap();
        let f32_out = LowpOutput {
            output: f32_out.output,
            h_n: f32_out.h_n,
            c_n: f32_out.c_n,
        };
        for precision in [Precision::Bf16, Precision::Int8] {
            let want = reference::forward(&params, precision, &batch).unwrap();
            // The quantization error itself: a loose budget against f32 (the accuracy budget on
            // trained models is measured by bench/lowp.py).
            check(
                &want,
                &f32_out,
                0.05,
                &format!("reference {precision:?} vs f32"),
            );
            let kernels = Kernel::available(precision);
            assert_eq!(kernels.last(), Some(&Kernel::Portable));
            let mut outputs = Vec::new();
            for kernel in kernels {
                let net = LowpRnn::new(&params, precision, Some(kernel)).unwrap();
                assert_eq!(net.kernel(), kernel);
                let out = net.forward(&batch).unwrap();
                let what = format!("{:?} {precision:?} {kernel:?}", case.cell);
                // Rounding a step's state to bf16 / uint8 can land one step apart when the
                // state differs in its last f32 bits (fast vs f64 nonlinearities).
                check(&out, &want, 5e-3, &what);
                // Padding: outputs past each sequence's length are exactly zero.
                if case.lengths {
                    let w = cfg.output_size();
                    for (r, &len) in lengths.iter().enumerate() {
                        for s in len..t {
                            let o = match case.layout {
                                Layout::BatchFirst => (r * t + s) * w,
                                Layout::TimeMajor => (s * b + r) * w,
                            };
                            assert!(out.output[o..o + w].iter().all(|&v| v == 0.0), "{what}");
                        }
                    }
                }
                outputs.push(out);
            }
            if precision == Precision::Int8 {
                // Exact integer products and one epilogue: every path gives the same bits.
                for o in &outputs[1..] {
                    assert_eq!(o.output, outputs[0].output);
                }
            }
        }
    }
}

#[test]
fn bad_configurations_and_kernels_are_refused() {
    let cfg = RnnConfig::new(CellKind::Lstm, 4, 6, 1, false, true)
        .unwrap()
        .with_proj_size(3)
        .unwrap();
    let params = RnnParams::<f32>::init_uniform(cfg, 0);
    let e = LowpRnn::new(&params, Precision::Bf16, None).err().unwrap();
    assert!(e.to_string().contains("proj_size"), "{e}");

    let cfg = RnnConfig::new(CellKind::Gru, 4, 6, 1, false, true).unwrap();
    let params = RnnParams::<f32>::init_uniform(cfg, 0);
    let e = LowpRnn::new(&params, Precision::Int8, Some(Kernel::Avx512Bf16))
        .err()
        .unwrap();
    assert!(e.to_string().contains("kernel"), "{e}");
    assert!(Kernel::from_name("avx9").is_err());
    assert!(Precision::from_name("float16").is_err());

    let net = LowpRnn::new(&params, Precision::Int8, None).unwrap();
    let x = vec![0.0f32; 2 * 3 * 5];
    let batch = Batch {
        input: &x,
        layout: Layout::BatchFirst,
        seq_len: 3,
        batch: 2,
        h0: None,
        c0: None,
        lengths: None,
    };
    let e = net.forward(&batch).err().unwrap();
    assert!(e.to_string().contains("input"), "{e}");
}

/// Teams of two threads (forced: the cost model keeps such small sweeps on one), hidden sizes
/// that do not fill the last unit block, both directions, two layers and ragged lengths: the same
/// bits as one thread (each output column's sums run the same way whoever owns it), and near
/// the reference.
#[test]
fn teams_match_one_thread_bit_for_bit() {
    lstmrs_core::threads::set_num_threads(2).unwrap();
    let (i, b, t) = (24, 11, 5);
    for (cell, h) in [
        (CellKind::Lstm, 72),
        (CellKind::Gru, 40),
        (CellKind::Lstm, 256),
    ] {
        let cfg = RnnConfig::new(cell, i, h, 2, true, true).unwrap();
        let params = RnnParams::<f32>::init_uniform(cfg, 5);
        let x = data(b * t * i, 0.7);
        let lengths: Vec<usize> = (0..b).map(|r| 1 + r % t).collect();
        let h0 = data(4 * b * h, 0.2);
        let batch = Batch {
            input: &x,
            layout: Layout::BatchFirst,
            seq_len: t,
            batch: b,
            h0: Some(&h0),
            c0: (cell == CellKind::Lstm).then_some(&h0[..]),
            lengths: Some(&lengths),
        };
        for precision in [Precision::Bf16, Precision::Int8] {
            let net = LowpRnn::new(&params, precision, None).unwrap();
            lstmrs_core::bench::set_team_override(1);
            let one = net.forward(&batch).unwrap();
            lstmrs_core::bench::set_team_override(2);
            let two = net.forward(&batch).unwrap();
            lstmrs_core::bench::set_team_override(0);
            let what = format!("team {cell:?} H={h} {precision:?}");
            assert_eq!(one.output, two.output, "{what}");
            assert_eq!(one.h_n, two.h_n, "{what}");
            assert_eq!(one.c_n, two.c_n, "{what}");
            let want = reference::forward(&params, precision, &batch).unwrap();
            check(&two, &want, 5e-3, &what);
        }
    }
}

/// A batch large enough that the products, the conversions and the gate pass split over the
/// pool's threads (the small cases above stay on one thread): still the reference's numbers.
#[test]
fn threaded_paths_match_the_reference() {
    lstmrs_core::threads::set_num_threads(2).unwrap();
    let (i, h, b, t) = (32, 256, 64, 2);
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let cfg = RnnConfig::new(cell, i, h, 1, false, true).unwrap();
        let params = RnnParams::<f32>::init_uniform(cfg, 5);
        let x = data(b * t * i, 0.7);
        let lengths: Vec<usize> = (0..b).map(|r| 1 + r % t).collect();
        let batch = Batch {
            input: &x,
            layout: Layout::BatchFirst,
            seq_len: t,
            batch: b,
            h0: None,
            c0: None,
            lengths: Some(&lengths),
        };
        for precision in [Precision::Bf16, Precision::Int8] {
            let want = reference::forward(&params, precision, &batch).unwrap();
            let net = LowpRnn::new(&params, precision, None).unwrap();
            let out = net.forward(&batch).unwrap();
            check(
                &out,
                &want,
                5e-3,
                &format!("threaded {cell:?} {precision:?}"),
            );
        }
    }
}
