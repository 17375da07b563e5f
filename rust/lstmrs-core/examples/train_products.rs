//! The matrix products of one LSTM layer's training step (forward with tape, backward) at one
//! case, each timed through the `gemm` crate with the strides `src/matmul.rs` passes, against
//! this core's f32 FMA peak timed in the same rounds (issue 16: how far the step is from the
//! hardware). Per product: its share of the step's FLOPs, and its rate per wall second and per
//! CPU second of the process (on a loaded machine the wall rate is the share of the cores this
//! process got; the CPU rate what the cores did while it ran), the latter as a fraction of the
//! FMA loop's CPU rate. Each round times every product and the FMA loop once, in turn.
//!
//!     cargo run --release -p lstmrs-core --example train_products [B T I H] [threads] [rounds]
//!
//! The sweep's recurrent products (`h·W_hhᵀ` forward, `dG·W_hh` backward) run per step in the
//! library through its packed kernels (`src/packed_gemm.rs`), not the crate; they are timed here
//! as T crate calls of one step each, and as T calls of the library's packed kernel on the whole
//! weight on one thread (`lstmrs_core::bench::PackedWeight`; the library splits the weight's
//! units between a team's members, so at 2 threads those two rows time one thread's work).
//! `CELL=gru` times the GRU's products instead: `G = 3H`, and its `dW_hh` as the library runs
//! it, in two products (rows r, z over the input side's gate gradients; rows n over the
//! recurrent n-gate gradients, which differ); its backward packed row over all three gates'
//! depth at once (the library's two parts, `K = 2H` and `K = H`, add up to the same work).
//! `FUSED=1` adds the weight gradient as one product over `[X | H_prev]`, the alternative to the
//! two weight-gradient rows, including what it costs in the library: building `[X | H_prev]`,
//! and copying the product's `[G, I+H]` rows out into the flat gradient's separate `dW_ih`
//! `[G, I]` and `dW_hh` `[G, H]` blocks (PyTorch's parameter layout).

mod common;

use common::Product;

use lstmrs_core::bench::PackedWeight;
use std::time::Instant;

/// One product, called `calls` times per timing (the per-step ones T times).
struct Shape {
    product: Product,
    calls: usize,
    /// Run through the library's packed step kernel rather than the crate.
    packed: bool,
}

impl std::ops::Deref for Shape {
    type Target = Product;
    fn deref(&self) -> &Product {
        &self.product
    }
}

/// Process CPU time (all threads) in seconds.
fn process_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    assert!(is_x86_feature_detected!("avx512f"), "needs AVX-512F");
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("integer"))
        .collect();
    let (b, t, i, h) = if a.len() >= 4 {
        (a[0], a[1], a[2], a[3])
    } else {
        (64, 64, 512, 1024)
    };
    let threads = a.get(4).copied().unwrap_or(2);
    let rounds = a.get(5).copied().unwrap_or(5);
    let (pool, par) = common::pool(threads);
    let gru = std::env::var("CELL").is_ok_and(|v| v == "gru");
    let (cell, gates) = if gru { ("GRU", 3) } else { ("LSTM", 4) };
    let (g, rows) = (gates * h, t * b);
    let s = |role, m, n, k, trans_a, trans_b, calls| Shape {
        product: Product {
            role,
            m,
            n,
            k,
            trans_a,
            trans_b,
        },
        calls,
        packed: false,
    };
    let packed = |role, m, n, k, calls| Shape {
        packed: true,
        ..s(role, m, n, k, false, false, calls)
    };
    let mut shapes = vec![
        s("fwd input projection X·W_ihT", rows, g, i, false, true, 1),
        s("fwd recurrent h·W_hhT (per step)", b, g, h, false, true, t),
        s("bwd recurrent dG·W_hh (per step)", b, h, g, false, false, t),
        s("bwd input gradient dG·W_ih", rows, i, g, false, false, 1),
        s("bwd weight gradient dGT·X", g, i, rows, true, false, 1),
    ];
    if gru {
        shapes.push(s(
            "bwd weight gradient dG_rzT·H",
            2 * h,
            h,
            rows,
            true,
            false,
            1,
        ));
        shapes.push(s("bwd weight gradient dG_nT·H", h, h, rows, true, false, 1));
    } else {
        shapes.push(s("bwd weight gradient dGT·H", g, h, rows, true, false, 1));
    }
    let step_products = shapes.len();
    // `ALT=1`: other shapes of the same weight-gradient sums, none in the library: transposed
    // (`dWᵀ = Xᵀ·dG`, a small `[I, G]` result to transpose back); for the GRU, `dW_hh` as one
    // product (what a `[dr, dz, dn_h]` layout of its gate gradients would allow) and split along
    // `n` into halves or quarters of `H` (here on contiguous operands; in the library the column
    // blocks of `H` would be strided).
    if std::env::var("ALT").is_ok_and(|v| v == "1") {
        shapes.push(s("alt dW_ihT = XT·dG", i, g, rows, true, false, 1));
        if gru {
            shapes.push(s(
                "alt dW_hh_rzT = HT·dG_rz",
                h,
                2 * h,
                rows,
                true,
                false,
                1,
            ));
            shapes.push(s("alt dW_hh_nT = HT·dG_n", h, h, rows, true, false, 1));
            shapes.push(s("alt dW_hh one product dGT·H", g, h, rows, true, false, 1));
            shapes.push(s(
                "alt dG_rzT·H half n (x2)",
                2 * h,
                h / 2,
                rows,
                true,
                false,
                2,
            ));
            shapes.push(s("alt dG_nT·H half n (x2)", h, h / 2, rows, true, false, 2));
            shapes.push(s(
                "alt dG_rzT·H quarter n (x4)",
                2 * h,
                h / 4,
                rows,
                true,
                false,
                4,
            ));
        } else {
            shapes.push(s("alt dW_hhT = HT·dG", h, g, rows, true, false, 1));
        }
    }
    let fused = std::env::var("FUSED").is_ok_and(|v| v == "1");
    if fused {
        shapes.push(s(
            "bwd fused dGT·[X|H] (+copies)",
            g,
            i + h,
            rows,
            true,
            false,
            1,
        ));
    }
    shapes.push(packed("fwd recurrent, packed kernel", b, g, h, t));
    shapes.push(packed("bwd recurrent, packed kernel", b, h, g, t));
    let flops = |sh: &Shape| 2.0 * (sh.m * sh.n * sh.k * sh.calls) as f64;
    // The step: the products before the alternatives.
    let step_flops: f64 = shapes.iter().take(step_products).map(flops).sum();
    // Operands, reused by every product (sized for the largest).
    let big = shapes.iter().map(|sh| sh.m.max(sh.n) * sh.k).max().unwrap();
    let opa: Vec<f32> = (0..big).map(|v| (v as f32 * 0.37).sin()).collect();
    let opb: Vec<f32> = (0..big).map(|v| (v as f32 * 0.11).cos()).collect();
    // The library's packing of `W_hh` (`[G, H]`) for each direction, once (as a sweep does).
    let w_hh = &opb[..g * h];
    let pack_fwd = PackedWeight::forward(w_hh, gates, h, b);
    let pack_bwd = PackedWeight::backward(w_hh, gates, h, b);
    let mut out = vec![0.0f32; shapes.iter().map(|sh| sh.m * sh.n).max().unwrap()];
    // The fused product's right-hand side `[X | H]`, rebuilt in every call.
    let (x, hp) = (&opb[..rows * i], &opb[rows * i..rows * (i + h)]);
    let mut xh = vec![0.0f32; if fused { rows * (i + h) } else { 0 }];
    // The flat gradient's `dW_ih` then `dW_hh`, which the fused product's rows are copied into.
    let mut flat = vec![0.0f32; if fused { g * (i + h) } else { 0 }];

    // Per product (and the FMA loop, last): wall and CPU seconds per round.
    let mut wall = vec![Vec::new(); shapes.len() + 1];
    let mut cpu = vec![Vec::new(); shapes.len() + 1];
    let fma_iters = 50_000_000u64;
    for _ in 0..rounds {
        for (p, sh) in shapes.iter().enumerate() {
            let (t0, c0) = (Instant::now(), process_cpu());
            if sh.packed {
                // On this thread, as one member of a sweep runs its share.
                let pw = if sh.k == h { &pack_fwd } else { &pack_bwd };
                for _ in 0..sh.calls {
                    pw.product(&opa[..sh.m * sh.k], sh.m, &mut out[..sh.m * sh.n]);
                }
            } else {
                pool.install(|| {
                    if sh.role.starts_with("bwd fused") {
                        for ((dst, xr), hr) in xh
                            .chunks_exact_mut(i + h)
                            .zip(x.chunks_exact(i))
                            .zip(hp.chunks_exact(h))
                        {
                            dst[..i].copy_from_slice(xr);
                            dst[i..].copy_from_slice(hr);
                        }
                        sh.gemm_crate(&opa, &xh, &mut out, par);
                        let (d_ih, d_hh) = flat.split_at_mut(g * i);
                        for ((row, a), b) in out
                            .chunks_exact(i + h)
                            .zip(d_ih.chunks_exact_mut(i))
                            .zip(d_hh.chunks_exact_mut(h))
                        {
                            a.copy_from_slice(&row[..i]);
                            b.copy_from_slice(&row[i..]);
                        }
                    } else {
                        for _ in 0..sh.calls {
                            sh.gemm_crate(&opa, &opb, &mut out, par);
                        }
                    }
                });
            }
            wall[p].push(t0.elapsed().as_secs_f64());
            cpu[p].push(process_cpu() - c0);
        }
        let (t0, c0) = (Instant::now(), process_cpu());
        std::thread::scope(|s| {
            for _ in 0..threads {
                // SAFETY: main asserted AVX-512F.
                s.spawn(|| std::hint::black_box(unsafe { common::fma_chains(fma_iters) }));
            }
        });
        wall[shapes.len()].push(t0.elapsed().as_secs_f64());
        cpu[shapes.len()].push(process_cpu() - c0);
    }
    let fma_flops = (fma_iters * 12 * 16 * 2 * threads as u64) as f64;
    let fma_cpu_rate = fma_flops / median(cpu[shapes.len()].clone()) / 1e9;
    println!(
        "{cell} B={b} T={t} I={i} H={h}, threads={threads}, medians of {rounds} rounds; step \
         {:.1} GFLOP in its products",
        step_flops / 1e9
    );
    println!(
        "FMA loop: {:.1} GFLOP/s per wall s, {fma_cpu_rate:.1} per CPU s",
        fma_flops / median(wall[shapes.len()].clone()) / 1e9,
    );
    println!(
        "{:36} {:>6} {:>6} {:>6} {:>6} {:>7} {:>9} {:>9} {:>9} {:>7}",
        "product", "m", "n", "k", "calls", "%flops", "wall ms", "GF/s wall", "GF/s cpu", "%peak"
    );
    for (p, sh) in shapes.iter().enumerate() {
        let f = flops(sh);
        let (w, c) = (median(wall[p].clone()), median(cpu[p].clone()));
        let cpu_rate = f / c / 1e9;
        println!(
            "{:36} {:>6} {:>6} {:>6} {:>6} {:>6.1}% {:>9.1} {:>9.1} {:>9.1} {:>6.0}%",
            sh.role,
            sh.m,
            sh.n,
            sh.k,
            sh.calls,
            100.0 * f / step_flops,
            w * 1e3,
            f / w / 1e9,
            cpu_rate,
            100.0 * cpu_rate / fma_cpu_rate
        );
    }
}
