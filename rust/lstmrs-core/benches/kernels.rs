//! Kernel benchmarks: `cargo bench -p lstmrs-core --bench kernels [-- FILTER]`.
//!
//! - `gates/*`: one fused gate pass (LSTM forward and backward, GRU forward) over `[B, G*H]`.
//! - `step_product/*`: the per-step recurrent product, forward `h·W_hhᵀ` and backward
//!   `dg·W_hh`, through the general GEMM (which packs `W_hh` at every call: the old path) and
//!   through the weight packed once (`packed_gemm.rs`), one thread each.
//! - `sweep/*`: a whole inference forward pass and a whole training step (forward with tape +
//!   backward) of a one-layer LSTM and GRU, at the pool's thread count (`LSTMRS_NUM_THREADS`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lstmrs_core::bench::{self as kernels, Active, PackedWeight};
use lstmrs_core::{
    backward, forward, threads, Batch, CellKind, ForwardOptions, GradOutputs, Layout, RnnConfig,
    RnnParams,
};
use std::hint::black_box;
use std::time::Duration;

fn data(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + 1.0) * seed).sin() * 0.5)
        .collect()
}

fn gate_pass(c: &mut Criterion) {
    let mut g = c.benchmark_group("gates");
    for (b, h) in [(8, 128), (64, 256)] {
        g.throughput(Throughput::Elements((b * h) as u64));
        // The forward passes turn pre-activations into activations in place, so from the second
        // iteration on they read activations as pre-activations: the same work (no branches
        // depend on the values), without a copy inside the timed loop.
        let (mut pre_act, p) = (data(b * 4 * h, 0.3), data(b * 4 * h, 0.7));
        let (cp, hp) = (data(b * h, 0.11), data(b * h, 0.13));
        let (mut tc, mut cn, mut hn) = (vec![0f32; b * h], vec![0f32; b * h], vec![0f32; b * h]);
        g.bench_function(
            BenchmarkId::new("lstm_forward", format!("B{b}_H{h}")),
            |bn| {
                bn.iter(|| {
                    kernels::lstm_forward(
                        h,
                        Active::ALL,
                        &mut pre_act,
                        &p,
                        &cp,
                        &hp,
                        &mut tc,
                        &mut cn,
                        &mut hn,
                    );
                    black_box(&hn);
                })
            },
        );
        let act = pre_act;
        let (mut dh, mut dc, mut dp) =
            (data(b * h, 0.17), data(b * h, 0.19), vec![0f32; b * 4 * h]);
        g.bench_function(
            BenchmarkId::new("lstm_backward", format!("B{b}_H{h}")),
            |bn| {
                bn.iter(|| {
                    kernels::lstm_backward(
                        h,
                        Active::ALL,
                        &act,
                        &tc,
                        &cp,
                        &mut dh,
                        &mut dc,
                        &mut dp,
                    );
                    black_box(&dp);
                })
            },
        );
        let (mut pre_act3, p3, bhn) = (data(b * 3 * h, 0.3), data(b * 3 * h, 0.7), data(h, 0.5));
        let mut lin = vec![0f32; b * h];
        g.bench_function(
            BenchmarkId::new("gru_forward", format!("B{b}_H{h}")),
            |bn| {
                bn.iter(|| {
                    kernels::gru_forward(
                        h,
                        Active::ALL,
                        &mut pre_act3,
                        &p3,
                        &bhn,
                        &hp,
                        &mut lin,
                        &mut hn,
                    );
                    black_box(&hn);
                })
            },
        );
    }
    g.finish();
}

fn step_product(c: &mut Criterion) {
    let mut g = c.benchmark_group("step_product");
    // (B, H) of the benchmark cases; LSTM gates (G = 4).
    for (b, h) in [(1, 128), (8, 128), (32, 64), (64, 256), (64, 1024)] {
        let gates = 4;
        let gw = gates * h;
        let w = data(gw * h, 0.37);
        g.throughput(Throughput::Elements((2 * b * gw * h) as u64));
        if h >= 1024 {
            g.sample_size(20);
        }
        let a = data(b * h, 0.71);
        let mut out = vec![0f32; b * gw];
        let id = format!("B{b}_H{h}");
        // One thread for both: this compares the kernels, not the splitting.
        g.bench_function(BenchmarkId::new("forward_gemm", &id), |bn| {
            bn.iter(|| {
                threads::install_for(0, || kernels::gemm_forward(&w, gates, h, &a, b, &mut out));
                black_box(&out);
            })
        });
        let packed = PackedWeight::forward(&w, gates, h, b);
        g.bench_function(BenchmarkId::new("forward_packed", &id), |bn| {
            bn.iter(|| {
                packed.product(&a, b, &mut out);
                black_box(&out);
            })
        });
        let dg = data(b * gw, 0.29);
        let mut dh = vec![0f32; b * h];
        g.bench_function(BenchmarkId::new("backward_gemm", &id), |bn| {
            bn.iter(|| {
                threads::install_for(0, || kernels::gemm_backward(&w, gates, h, &dg, b, &mut dh));
                black_box(&dh);
            })
        });
        let packed = PackedWeight::backward(&w, gates, h, b);
        g.bench_function(BenchmarkId::new("backward_packed", &id), |bn| {
            bn.iter(|| {
                packed.product(&dg, b, &mut dh);
                black_box(&dh);
            })
        });
    }
    g.finish();
}

fn sweeps(c: &mut Criterion) {
    let mut g = c.benchmark_group("sweep");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let (b, t, i, h) = (64, 32, 128, 256);
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let cfg = RnnConfig::new(cell, i, h, 1, false, true).expect("config");
        let p = RnnParams::<f32>::init_uniform(cfg, 0);
        let x = data(b * t * i, 0.01);
        let batch = Batch {
            input: &x,
            layout: Layout::BatchFirst,
            seq_len: t,
            batch: b,
            h0: None,
            c0: None,
            lengths: None,
        };
        let flops = 2 * b * t * cfg.gate_width() * (i + h);
        let id = format!("{}_B{b}_T{t}_I{i}_H{h}", cell.name());
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(BenchmarkId::new("inference", &id), |bn| {
            bn.iter(|| black_box(forward(&p, &batch, &ForwardOptions::default()).expect("fwd")))
        });
        let d_out = vec![1f32; b * t * h];
        let opts = ForwardOptions {
            keep_tape: true,
            ..Default::default()
        };
        g.throughput(Throughput::Elements(3 * flops as u64));
        g.bench_function(BenchmarkId::new("training_step", &id), |bn| {
            bn.iter(|| {
                let o = forward(&p, &batch, &opts).expect("fwd");
                let grads = GradOutputs {
                    output: Some(&d_out),
                    h_n: None,
                    c_n: None,
                };
                black_box(backward(&p, o.tape.as_ref().expect("tape"), &grads).expect("bwd"))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, gate_pass, step_product, sweeps);
criterion_main!(benches);
