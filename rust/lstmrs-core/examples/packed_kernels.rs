//! The packed step product (`src/packed_gemm.rs`) on each instruction set this CPU has, one
//! thread, at the step shapes of the benchmark cases: `h[B,H] · W_hhᵀ` (forward) and
//! `dg[B,4H] · W_hh` (backward) of an LSTM. The kernels take turns inside every repeat; the
//! fastest repeat is printed (on a shared machine, the one least disturbed), the median beside it.
//! A second table times the default kernel with its lhs copied tile by tile first, read in place,
//! and as its rule decides (`bench::set_lhs_copy`), taking turns the same way, on the whole weight
//! and on the half of its columns one member of a team of two owns (forward, into rows `4H`
//! wide, as the LSTM step adds onto its input side).
//!
//!     cargo run --release -p lstmrs-core --example packed_kernels [repeats]

use lstmrs_core::bench::{set_lhs_copy, Isa, PackedWeight};
use std::time::Instant;

/// `(B, H)` of the steps of bench/cases.py, and the small batches of streaming.
const SHAPES: [(usize, usize); 9] = [
    (32, 512),
    (32, 64),
    (64, 256),
    (64, 1024),
    (8, 128),
    (1, 128),
    (4, 256),
    (16, 512),
    (32, 1024),
];
const GATES: usize = 4;

fn data(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|k| ((k as f32 + 1.0) * seed).sin()).collect()
}

/// `(fastest, median)` of `v`.
fn fastest_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    let repeats: usize = std::env::args()
        .nth(1)
        .map_or(9, |s| s.parse().expect("repeats: an integer"));
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.supported()).collect();
    println!(
        "step products, one thread, GFLOP/s of the fastest of {repeats} (us; median us); \
         kernels: {isas:?}"
    );
    for (b, h) in SHAPES {
        let w = data(GATES * h * h, 0.37);
        let flops = 2.0 * (b * GATES * h * h) as f64;
        // Enough calls per timing for about 2 ms at 100 GFLOP/s.
        let calls = ((2e8 / flops) as usize).clamp(1, 100_000);
        for forward in [true, false] {
            let (k, n) = if forward {
                (h, GATES * h)
            } else {
                (GATES * h, h)
            };
            let a = data(b * k, 0.71);
            let mut c = vec![0f32; b * n];
            let packs: Vec<PackedWeight<f32>> = isas
                .iter()
                .map(|&isa| {
                    if forward {
                        PackedWeight::forward_on(isa, &w, GATES, h, b)
                    } else {
                        PackedWeight::backward_on(isa, &w, GATES, h, b)
                    }
                })
                .collect();
            let mut times = vec![Vec::new(); isas.len()];
            for _ in 0..repeats + 1 {
                for (p, t) in packs.iter().zip(&mut times) {
                    let s = Instant::now();
                    for _ in 0..calls {
                        p.product(&a, b, &mut c);
                    }
                    t.push(s.elapsed().as_secs_f64() / calls as f64);
                    std::hint::black_box(&mut c);
                }
            }
            let cols: Vec<String> = isas
                .iter()
                .zip(times)
                .map(|(i, mut t)| {
                    t.remove(0); // warm-up
                    let (f, m) = fastest_median(t);
                    format!(
                        "{} {:6.1} ({:8.2}; {:8.2})",
                        i.name(),
                        flops / f / 1e9,
                        f * 1e6,
                        m * 1e6
                    )
                })
                .collect();
            let dir = if forward { "forward " } else { "backward" };
            println!("B={b:3} H={h:5} {dir}  {}", cols.join("  "));
        }
    }
    lhs_copy(repeats);
}

/// The default kernel with the lhs copied first, read in place, and as its rule decides.
fn lhs_copy(repeats: usize) {
    let isa = Isa::default_for::<f32>();
    let choices = [
        (Some(true), "copied"),
        (Some(false), "in place"),
        (None, "rule"),
    ];
    println!(
        "\n{} kernel, lhs copied / read in place / by the rule: GFLOP/s of the fastest of \
         {repeats} (us; median us)",
        isa.name()
    );
    for (b, h) in SHAPES {
        let w = data(GATES * h * h, 0.37);
        // (label, packed weight, depth, output row width, output columns, accumulate)
        let cases = [
            (
                "forward ",
                PackedWeight::forward_on(isa, &w, GATES, h, b),
                h,
                GATES * h,
                GATES * h,
                false,
            ),
            (
                "fwd half",
                PackedWeight::forward_units_on(isa, &w, GATES, h, 0..h / 2, b),
                h,
                GATES * h,
                GATES * h / 2,
                true,
            ),
            (
                "backward",
                PackedWeight::backward_on(isa, &w, GATES, h, b),
                GATES * h,
                h,
                h,
                false,
            ),
        ];
        for (label, packed, k, ldc, cols, accumulate) in cases {
            if h / 2 < 16 && label == "fwd half" {
                continue;
            }
            let flops = 2.0 * (b * k * cols) as f64;
            let calls = ((2e8 / flops) as usize).clamp(1, 100_000);
            let a = data(b * k, 0.71);
            let mut c = vec![0f32; b * ldc];
            let mut times = vec![Vec::new(); choices.len()];
            for _ in 0..repeats + 1 {
                for (&(copy, _), t) in choices.iter().zip(&mut times) {
                    set_lhs_copy(copy);
                    let s = Instant::now();
                    for _ in 0..calls {
                        packed.product_into(&a, b, &mut c, ldc, accumulate);
                    }
                    t.push(s.elapsed().as_secs_f64() / calls as f64);
                    std::hint::black_box(&mut c);
                }
            }
            set_lhs_copy(None);
            let cols: Vec<String> = choices
                .iter()
                .zip(times)
                .map(|(&(_, name), mut t)| {
                    t.remove(0); // warm-up
                    let (f, m) = fastest_median(t);
                    format!(
                        "{name} {:6.1} ({:8.2}; {:8.2})",
                        flops / f / 1e9,
                        f * 1e6,
                        m * 1e6
                    )
                })
                .collect();
            println!("B={b:3} H={h:5} {label}  {}", cols.join("  "));
        }
    }
}
