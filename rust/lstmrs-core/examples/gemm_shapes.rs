//! The GEMM chosen by measurement (issue 16): the `gemm` crate, as `src/matmul.rs` calls it,
//! against OpenBLAS (feature `blas`) at the exact shapes the LSTM layers of the benchmark cases
//! call, at 1 and 2 threads, taking turns inside every repeat.
//!
//!     cargo run --release -p lstmrs-core --features blas --example gemm_shapes [repeats]

mod common;

use common::Product;

use lstmrs_core::blas;
use std::time::Instant;

/// `(B, T, I, H)` of bench/cases.py (one layer, LSTM: G = 4).
const CASES: [(usize, usize, usize, usize); 4] = [
    (32, 100, 8, 64),
    (64, 128, 128, 256),
    (64, 64, 512, 1024),
    (8, 2000, 16, 128),
];

fn shapes(b: usize, t: usize, i: usize, h: usize) -> Vec<Product> {
    let (g, rows) = (4 * h, t * b);
    let s = |role, m, n, k, trans_a, trans_b| Product {
        role,
        m,
        n,
        k,
        trans_a,
        trans_b,
    };
    vec![
        s("input projection X·W_ihT", rows, g, i, false, true),
        s("recurrent h·W_hhT", b, g, h, false, true),
        s("input gradient dG·W_ih", rows, i, g, false, false),
        s("recurrent gradient dG·W_hh", b, h, g, false, false),
        s("weight gradient dGT·X", g, i, rows, true, false),
        s("weight gradient dGT·H", g, h, rows, true, false),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let repeats: usize = std::env::args()
        .nth(1)
        .map_or(5, |s| s.parse().expect("repeats"));
    println!(
        "{:>3} {:22} {:30} {:>6} {:>6} {:>6} {:>10} {:>10} {:>8} {:>8}",
        "thr",
        "case (B,T,I,H)",
        "product",
        "m",
        "n",
        "k",
        "gemm ms",
        "blas ms",
        "blas/gm",
        "winner"
    );
    for threads in [1usize, 2] {
        blas::set_num_threads(threads);
        let (pool, par) = common::pool(threads);
        for &(b, t, i, h) in &CASES {
            for sh in shapes(b, t, i, h) {
                let a: Vec<f32> = (0..sh.m * sh.k).map(|v| (v as f32 * 0.37).sin()).collect();
                let bb: Vec<f32> = (0..sh.k * sh.n).map(|v| (v as f32 * 0.11).cos()).collect();
                let (mut c1, mut c2) = (vec![0.0f32; sh.m * sh.n], vec![0.0f32; sh.m * sh.n]);
                // Agreement first: both compute the same product.
                pool.install(|| sh.gemm_crate(&a, &bb, &mut c1, par));
                blas::sgemm(sh.trans_a, sh.trans_b, sh.m, sh.n, sh.k, &a, &bb, &mut c2);
                let scale = c2.iter().fold(1e-6f32, |s, v| s.max(v.abs()));
                let err = c1
                    .iter()
                    .zip(&c2)
                    .fold(0.0f32, |e, (x, y)| e.max((x - y).abs()))
                    / scale;
                assert!(err < 1e-4, "{}: gemm and OpenBLAS differ by {err}", sh.role);
                // Enough calls per sample for ~20 ms.
                let flops = 2.0 * (sh.m * sh.n * sh.k) as f64;
                let calls = ((2e-2 * 5e10 / flops) as usize).clamp(1, 2000);
                let (mut tg, mut tb) = (Vec::new(), Vec::new());
                for _ in 0..repeats {
                    let t0 = Instant::now();
                    pool.install(|| {
                        for _ in 0..calls {
                            sh.gemm_crate(&a, &bb, &mut c1, par);
                        }
                    });
                    tg.push(t0.elapsed().as_secs_f64() * 1e3 / calls as f64);
                    let t0 = Instant::now();
                    for _ in 0..calls {
                        blas::sgemm(sh.trans_a, sh.trans_b, sh.m, sh.n, sh.k, &a, &bb, &mut c2);
                    }
                    tb.push(t0.elapsed().as_secs_f64() * 1e3 / calls as f64);
                }
                let (g, bl) = (median(tg), median(tb));
                println!(
                    "{:>3} {:22} {:30} {:>6} {:>6} {:>6} {:>10.4} {:>10.4} {:>8.2} {:>8}",
                    threads,
                    format!("({b},{t},{i},{h})"),
                    sh.role,
                    sh.m,
                    sh.n,
                    sh.k,
                    g,
                    bl,
                    bl / g,
                    if bl < g { "openblas" } else { "gemm" }
                );
            }
        }
    }
}
