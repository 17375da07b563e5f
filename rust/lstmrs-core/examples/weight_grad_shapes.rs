//! The LSTM backward pass's weight-gradient products, `dW_ih = dGᵀ·X` and `dW_hh = dGᵀ·H_prev`
//! (`dG`: all steps' gate gradients `[T*B, 4H]`), computed in ways that give the same numbers,
//! through the `gemm` crate as `src/matmul.rs` calls it, taking turns inside every repeat:
//!
//! - `two`: two products, each `[4H, T*B]·[T*B, n]` (what the sweep does);
//! - `fused`: one product over `[X | H_prev]` (`[T*B, I+H]`), including the cost of building it;
//! - `fused, no copy`: the same product with the concatenation already built (the bound of a tape
//!   that stores it);
//! - `two, transposed`: each as `dWᵀ = Yᵀ·dG` into a column-major destination;
//! - `blocks, 1 thread each`: the two products cut into blocks of output rows of about 2^31
//!   multiply-adds, each a one-thread product, the pool's threads taking them in turn (rayon's
//!   work stealing): whether a thread that keeps its core while the other is taken by another
//!   process finishes the products sooner than the crate's even split (issue 16, big18: not
//!   measurably on the loaded VM, and 10% slower on one thread, so the library does not do it).
//!
//!     cargo run --release -p lstmrs-core --example weight_grad_shapes [repeats] [threads]
//!
//! `CASE=B,T,I,H` times that one case only (and skips the narrow products).

mod common;

use gemm::Parallelism;
use std::time::Instant;

/// `(B, T, I, H)` of bench/cases.py (one layer, LSTM: G = 4).
const CASES: [(usize, usize, usize, usize); 4] = [
    (32, 100, 8, 64),
    (64, 128, 128, 256),
    (64, 64, 512, 1024),
    (8, 2000, 16, 128),
];

/// `c[m, n] = a[k, m]ᵀ · b[k, n]` (`a` with row stride `lda`, `b` with `ldb`), `c` with
/// strides `(c_rs, c_cs)`.
#[allow(clippy::too_many_arguments)]
fn at_b(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    c_rs: usize,
    c_cs: usize,
    par: Parallelism,
) {
    assert!((k - 1) * lda + m <= a.len() && (k - 1) * ldb + n <= b.len());
    assert!((m - 1) * c_rs + (n - 1) * c_cs < c.len());
    // SAFETY: the asserts keep every view inside its slice; `c` is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs as isize,
            c_rs as isize,
            false,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            1,
            ldb as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

/// Rows per block of a product with `extent` destination rows of `macs_per_row` multiply-adds
/// each: about 2^31 multiply-adds (about 20 ms on one AVX-512 core), a multiple of 64 rows.
fn rows_per_block(extent: usize, macs_per_row: usize) -> usize {
    let blocks = (extent * macs_per_row / (1 << 31)).max(1);
    extent.div_ceil(blocks).next_multiple_of(64).min(extent)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let repeats: usize = args.next().map_or(7, |s| s.parse().expect("repeats"));
    let threads: usize = args.next().map_or(2, |s| s.parse().expect("threads"));
    let (pool, par) = common::pool(threads);
    println!("threads={threads}, median of {repeats} (ms per call, GFLOP/s)");
    let only: Option<Vec<usize>> = std::env::var("CASE").ok().map(|c| {
        c.split(',')
            .map(|v| v.parse().expect("CASE=B,T,I,H"))
            .collect()
    });
    for &(b, t, i, h) in &CASES {
        if only.as_ref().is_some_and(|o| o[..] != [b, t, i, h]) {
            continue;
        }
        let (g, rows, n) = (4 * h, t * b, i + h);
        let dg: Vec<f32> = (0..rows * g).map(|v| (v as f32 * 0.37).sin()).collect();
        let x: Vec<f32> = (0..rows * i).map(|v| (v as f32 * 0.11).cos()).collect();
        let hp: Vec<f32> = (0..rows * h).map(|v| (v as f32 * 0.23).cos()).collect();
        let mut xh = vec![0.0f32; rows * n];
        let concat = |xh: &mut [f32]| {
            for ((dst, xr), hr) in xh
                .chunks_exact_mut(n)
                .zip(x.chunks_exact(i))
                .zip(hp.chunks_exact(h))
            {
                dst[..i].copy_from_slice(xr);
                dst[i..].copy_from_slice(hr);
            }
        };
        concat(&mut xh);
        // `[dW_ih | dW_hh]` side by side (the fused product's layout) and apart.
        let mut w_fused = vec![0.0f32; g * n];
        let (mut w_ih, mut w_hh) = (vec![0.0f32; g * i], vec![0.0f32; g * h]);
        let two = |w_ih: &mut [f32], w_hh: &mut [f32]| {
            at_b(g, i, rows, &dg, g, &x, i, w_ih, i, 1, par);
            at_b(g, h, rows, &dg, g, &hp, h, w_hh, h, 1, par);
        };
        let two_t = |w_ih: &mut [f32], w_hh: &mut [f32]| {
            // dWᵀ[n, 4H] = Yᵀ·dG, written column-major: the same row-major dW.
            at_b(i, g, rows, &x, i, &dg, g, w_ih, 1, i, par);
            at_b(h, g, rows, &hp, h, &dg, g, w_hh, 1, h, par);
        };
        let blocks = |w_ih: &mut [f32], w_hh: &mut [f32]| {
            use rayon::prelude::*;
            let (r_ih, r_hh) = (rows_per_block(g, rows * i), rows_per_block(g, rows * h));
            let ih = w_ih.chunks_mut(r_ih * i).enumerate();
            let hh = w_hh.chunks_mut(r_hh * h).enumerate();
            let jobs: Vec<(usize, &mut [f32], usize, &[f32])> = ih
                .map(|(c, dst)| (c * r_ih, dst, i, &x[..]))
                .chain(hh.map(|(c, dst)| (c * r_hh, dst, h, &hp[..])))
                .collect();
            jobs.into_par_iter()
                .with_max_len(1)
                .for_each(|(c0, dst, nn, y)| {
                    let m = dst.len() / nn;
                    at_b(
                        m,
                        nn,
                        rows,
                        &dg[c0..],
                        g,
                        y,
                        nn,
                        dst,
                        nn,
                        1,
                        Parallelism::None,
                    )
                });
        };
        // Agreement: every variant gives the same dW.
        let (mut b_ih, mut b_hh) = (w_ih.clone(), w_hh.clone());
        pool.install(|| blocks(&mut b_ih, &mut b_hh));
        pool.install(|| two(&mut w_ih, &mut w_hh));
        pool.install(|| at_b(g, n, rows, &dg, g, &xh, n, &mut w_fused, n, 1, par));
        let scale = w_hh.iter().fold(1e-6f32, |s, v| s.max(v.abs()));
        let mut err = 0.0f32;
        for r in 0..g {
            for c in 0..i {
                err = err.max((w_fused[r * n + c] - w_ih[r * i + c]).abs());
            }
            for c in 0..h {
                err = err.max((w_fused[r * n + i + c] - w_hh[r * h + c]).abs());
            }
        }
        let (mut t_ih, mut t_hh) = (w_ih.clone(), w_hh.clone());
        pool.install(|| two_t(&mut t_ih, &mut t_hh));
        for (p, q) in t_ih.iter().chain(&t_hh).zip(w_ih.iter().chain(&w_hh)) {
            err = err.max((p - q).abs());
        }
        for (p, q) in b_ih.iter().chain(&b_hh).zip(w_ih.iter().chain(&w_hh)) {
            err = err.max((p - q).abs());
        }
        assert!(err / scale < 1e-4, "variants differ by {}", err / scale);

        let flops = 2.0 * (g * n * rows) as f64;
        let calls = ((2e-2 * 5e10 / flops) as usize).clamp(1, 2000);
        let mut times: [Vec<f64>; 5] = Default::default();
        for _ in 0..repeats {
            let mut time = |slot: usize, f: &mut (dyn FnMut() + Send)| {
                let t0 = Instant::now();
                pool.install(|| {
                    for _ in 0..calls {
                        f();
                    }
                });
                times[slot].push(t0.elapsed().as_secs_f64() * 1e3 / calls as f64);
            };
            time(0, &mut || two(&mut w_ih, &mut w_hh));
            time(1, &mut || {
                concat(&mut xh);
                at_b(g, n, rows, &dg, g, &xh, n, &mut w_fused, n, 1, par);
            });
            time(2, &mut || {
                at_b(g, n, rows, &dg, g, &xh, n, &mut w_fused, n, 1, par)
            });
            time(3, &mut || two_t(&mut w_ih, &mut w_hh));
            time(4, &mut || blocks(&mut w_ih, &mut w_hh));
        }
        let names = [
            "two",
            "fused",
            "fused, no copy",
            "two, transposed",
            "blocks, 1 thread each",
        ];
        for (name, ts) in names.iter().zip(times) {
            let ms = median(ts);
            println!(
                "({b},{t},{i},{h}) {name:21} {ms:9.3} ms {:7.1} GFLOP/s",
                flops / ms / 1e6
            );
        }
    }
    if only.is_none() {
        narrow(repeats, &pool, par);
    }
}

/// The products whose row-major destination is narrow (`n = I` columns): `dx = dG·W_ih`
/// (`[T*B, I]`) and `dW_ih = dGᵀ·X` (`[4H, I]`). The `gemm` crate turns a row-major destination
/// into a column-major one by transposing the product, which makes `I` its micro-kernel's row
/// extent: with `I < 16` a one-vector kernel on half-empty vectors. Against: the same product
/// into a column-major scratch buffer, then transposed into place.
fn narrow(repeats: usize, pool: &rayon::ThreadPool, par: Parallelism) {
    for &(b, t, i, h) in &CASES {
        let (g, rows) = (4 * h, t * b);
        let dg: Vec<f32> = (0..rows * g).map(|v| (v as f32 * 0.37).sin()).collect();
        let x: Vec<f32> = (0..rows * i).map(|v| (v as f32 * 0.11).cos()).collect();
        let w: Vec<f32> = (0..g * i).map(|v| (v as f32 * 0.23).cos()).collect();
        // (name, m, n, k, lhs, lhs strides (rs, cs), rhs, rhs strides (rs, cs))
        type Prod<'a> = (
            &'static str,
            usize,
            usize,
            usize,
            &'a [f32],
            (isize, isize),
            &'a [f32],
            (isize, isize),
        );
        let prods: [Prod; 2] = [
            (
                "dx = dG·W_ih",
                rows,
                i,
                g,
                &dg,
                (g as isize, 1),
                &w,
                (i as isize, 1),
            ),
            (
                "dW_ih = dGᵀ·X",
                g,
                i,
                rows,
                &dg,
                (1, g as isize),
                &x,
                (i as isize, 1),
            ),
        ];
        for (name, m, n, k, lhs, (lrs, lcs), rhs, (rrs, rcs)) in prods {
            let mut c = vec![0.0f32; m * n];
            let mut scratch = vec![0.0f32; m * n];
            let run = |c: &mut [f32], col_major: bool| unsafe {
                let (cs, rs) = if col_major {
                    (m as isize, 1)
                } else {
                    (1, n as isize)
                };
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    cs,
                    rs,
                    false,
                    lhs.as_ptr(),
                    lcs,
                    lrs,
                    rhs.as_ptr(),
                    rcs,
                    rrs,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                )
            };
            let via = |c: &mut [f32], scratch: &mut [f32]| {
                run(scratch, true);
                for r in 0..m {
                    for j in 0..n {
                        c[r * n + j] = scratch[j * m + r];
                    }
                }
            };
            let mut c2 = vec![0.0f32; m * n];
            pool.install(|| run(&mut c, false));
            pool.install(|| via(&mut c2, &mut scratch));
            let scale = c.iter().fold(1e-6f32, |s, v| s.max(v.abs()));
            let err = c
                .iter()
                .zip(&c2)
                .fold(0.0f32, |e, (p, q)| e.max((p - q).abs()));
            assert!(err / scale < 1e-4, "{name}: differ by {}", err / scale);
            let flops = 2.0 * (m * n * k) as f64;
            let calls = ((2e-2 * 5e10 / flops) as usize).clamp(1, 2000);
            let (mut t_row, mut t_via) = (Vec::new(), Vec::new());
            for _ in 0..repeats {
                let t0 = Instant::now();
                pool.install(|| (0..calls).for_each(|_| run(&mut c, false)));
                t_row.push(t0.elapsed().as_secs_f64() * 1e3 / calls as f64);
                let t0 = Instant::now();
                pool.install(|| (0..calls).for_each(|_| via(&mut c2, &mut scratch)));
                t_via.push(t0.elapsed().as_secs_f64() * 1e3 / calls as f64);
            }
            let (a, v) = (median(t_row), median(t_via));
            println!(
                "({b},{t},{i},{h}) {name:15} m={m:6} n={n:4} k={k:6}: row-major dst {a:9.4} ms ({:6.1} GFLOP/s), via column-major {v:9.4} ms ({:6.1} GFLOP/s)",
                flops / a / 1e6,
                flops / v / 1e6
            );
        }
    }
}
