//! The LSTM forward gate pass written on AVX-512 registers, for the sweep's step after its
//! recurrent product has been added onto the input side (`act = x·W_ihᵀ + b + h·W_hhᵀ`).
//!
//! The plain gate loop ([`crate::gates`]) vectorises [`crate::activations`]' functions, and each
//! of an LSTM unit's five nonlinearities ends in a division: five `vdivps` per 16 units, which
//! bound the pass on their unpipelined unit (the gate pass was 26% of a (B,H) = (32,64) step,
//! `examples/profile_step`). Here the same Cephes `exp` and minimax `tanh` end in a reciprocal
//! estimate (`vrcp14ps`, 14 bits) refined by one Newton step instead (two FMAs, fully pipelined;
//! within about 2 ulp of the quotient), and the pass writes the activations and `tanh(c')` only
//! when a tape keeps them.
//!
//! Error bound (tests below, against f64 on a dense grid): `sigmoid` and `tanh` within 5e-7
//! relative plus 1e-7 absolute on [-30, 30], exactly ±1 / 0..1 beyond.

#![cfg(target_arch = "x86_64")]
// The polynomial coefficients are Cephes' as published (as in `activations`).
#![allow(clippy::excessive_precision)]

use std::arch::x86_64::*;

/// Lanes of one register.
pub(crate) const LANES: usize = 16;

/// Whether this CPU runs the pass (AVX-512F).
pub(crate) fn supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// `1 / d`: the 14-bit estimate and one Newton step, `r + r·(1 - d·r)`.
#[inline]
#[target_feature(enable = "avx512f")]
fn recip(d: __m512) -> __m512 {
    let r = _mm512_rcp14_ps(d);
    _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0)), r)
}

/// `e^x` as `activations::exp_f32`: clamped to [-87, 88], NaN kept.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp(x_in: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x_in, _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(88.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_fmadd_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
        _mm512_set1_ps(0.5),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let r2 = _mm512_mul_ps(r, r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5.000_000_1e-1,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    // 2^n through the exponent bits; n is in [-126, 127] after the clamp.
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    )));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x_in, x_in);
    _mm512_mask_mov_ps(_mm512_mul_ps(y, scale), nan, x_in)
}

/// `1 / (1 + e^-x)`.
#[inline]
#[target_feature(enable = "avx512f")]
fn sigmoid(x: __m512) -> __m512 {
    let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
    recip(_mm512_add_ps(e, _mm512_set1_ps(1.0)))
}

/// `tanh` as `activations::tanh_f32` (the 13/6 minimax rational on [-7.9988, 7.9988], the
/// identity below 4e-4), saturated exactly to ±1 beyond the clamp.
#[inline]
#[target_feature(enable = "avx512f")]
fn tanh(x_in: __m512) -> __m512 {
    const CLAMP: f32 = 7.998_811_7;
    let x = _mm512_min_ps(
        _mm512_max_ps(x_in, _mm512_set1_ps(-CLAMP)),
        _mm512_set1_ps(CLAMP),
    );
    let s = _mm512_mul_ps(x, x);
    let mut p = _mm512_set1_ps(-2.760_768_5e-16);
    for c in [
        2.000_187_9e-13,
        -8.604_671_5e-11,
        5.122_297e-8,
        1.485_722_4e-5,
        6.372_619_3e-4,
        4.893_524_6e-3,
    ] {
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(c));
    }
    let mut q = _mm512_set1_ps(1.198_258_4e-6);
    for c in [1.185_347e-4, 2.268_434_6e-3, 4.893_525e-3] {
        q = _mm512_fmadd_ps(q, s, _mm512_set1_ps(c));
    }
    let r = _mm512_mul_ps(_mm512_mul_ps(x, p), recip(q));
    let abs = _mm512_abs_ps(x_in);
    // ±1 carrying `x`'s sign where the clamp saturates (the estimate may round just inside).
    let sign = _mm512_and_epi32(_mm512_castps_si512(x_in), _mm512_set1_epi32(i32::MIN));
    let one = _mm512_castsi512_ps(_mm512_or_epi32(
        sign,
        _mm512_castps_si512(_mm512_set1_ps(1.0)),
    ));
    let r = _mm512_mask_mov_ps(
        r,
        _mm512_cmp_ps_mask::<_CMP_GE_OQ>(abs, _mm512_set1_ps(CLAMP)),
        one,
    );
    // Tiny inputs (and NaN) are returned as they are.
    _mm512_mask_mov_ps(
        r,
        _mm512_cmp_ps_mask::<_CMP_NGE_UQ>(abs, _mm512_set1_ps(4e-4)),
        x_in,
    )
}

/// One row's units: from the summed pre-activations `a{i,f,g,o}[j]` and `cp[j]`, writes
/// `c' = f·c + i·g` to `cn`, `o·tanh(c')` to `hn` and, when `keep`, the activations back into
/// `a*` and `tanh(c')` into `tc`.
///
/// # Safety
/// Each pointer holds `n` f32 (`tc` only when `keep`); the written ones overlap nothing else
/// read or written; the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn lstm_row(
    n: usize,
    ai: *mut f32,
    af: *mut f32,
    ag: *mut f32,
    ao: *mut f32,
    cp: *const f32,
    tc: *mut f32,
    cn: *mut f32,
    hn: *mut f32,
    keep: bool,
) {
    let mut j = 0;
    while j < n {
        let m: __mmask16 = if n - j >= LANES {
            0xffff
        } else {
            (1u16 << (n - j)) - 1
        };
        // SAFETY (loads and stores): lanes `j..min(j+16, n)` of each row, per the contract.
        unsafe {
            let i = sigmoid(_mm512_maskz_loadu_ps(m, ai.add(j)));
            let f = sigmoid(_mm512_maskz_loadu_ps(m, af.add(j)));
            let g = tanh(_mm512_maskz_loadu_ps(m, ag.add(j)));
            let o = sigmoid(_mm512_maskz_loadu_ps(m, ao.add(j)));
            let c = _mm512_add_ps(
                _mm512_mul_ps(f, _mm512_maskz_loadu_ps(m, cp.add(j))),
                _mm512_mul_ps(i, g),
            );
            let t = tanh(c);
            _mm512_mask_storeu_ps(cn.add(j), m, c);
            _mm512_mask_storeu_ps(hn.add(j), m, _mm512_mul_ps(o, t));
            if keep {
                _mm512_mask_storeu_ps(ai.add(j), m, i);
                _mm512_mask_storeu_ps(af.add(j), m, f);
                _mm512_mask_storeu_ps(ag.add(j), m, g);
                _mm512_mask_storeu_ps(ao.add(j), m, o);
                _mm512_mask_storeu_ps(tc.add(j), m, t);
            }
        }
        j += LANES;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f` over `xs` a register at a time.
    fn on_lanes(xs: &[f32], f: unsafe fn(__m512) -> __m512) -> Vec<f32> {
        xs.chunks(LANES)
            .flat_map(|c| {
                let mut buf = [0f32; LANES];
                buf[..c.len()].copy_from_slice(c);
                // SAFETY: the tests run only where `supported()`.
                let y = unsafe {
                    let y = f(_mm512_loadu_ps(buf.as_ptr()));
                    _mm512_storeu_ps(buf.as_mut_ptr(), y);
                    buf
                };
                y[..c.len()].to_vec()
            })
            .collect()
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn sigmoid_lanes(x: __m512) -> __m512 {
        sigmoid(x)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tanh_lanes(x: __m512) -> __m512 {
        tanh(x)
    }

    #[test]
    fn sigmoid_and_tanh_match_f64_within_bound() {
        if !supported() {
            return;
        }
        let xs: Vec<f32> = (0..=300_001)
            .map(|k| (-30.0 + 60.0 * k as f64 / 300_001.0) as f32)
            .chain((0..=20_001).map(|k| (-1e-3 + 2e-3 * k as f64 / 20_001.0) as f32))
            .collect();
        let (s, t) = (on_lanes(&xs, sigmoid_lanes), on_lanes(&xs, tanh_lanes));
        for (k, &x) in xs.iter().enumerate() {
            let xd = x as f64;
            let (ws, wt) = (1.0 / (1.0 + (-xd).exp()), xd.tanh());
            let (gs, gt) = (s[k] as f64, t[k] as f64);
            assert!(
                (gs - ws).abs() <= 5e-7 * ws.abs() + 1e-7,
                "sigmoid({x}) = {gs}, want {ws}"
            );
            assert!(
                (gt - wt).abs() <= 5e-7 * wt.abs() + 1e-7,
                "tanh({x}) = {gt}, want {wt}"
            );
            assert!(gt.abs() <= 1.0 && (0.0..=1.0).contains(&gs));
        }
    }

    #[test]
    fn saturation_and_nan_are_kept() {
        if !supported() {
            return;
        }
        let xs = [
            -1e30f32,
            -100.0,
            -50.0,
            -8.0,
            8.0,
            50.0,
            100.0,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            f32::NAN,
        ];
        let (s, t) = (on_lanes(&xs, sigmoid_lanes), on_lanes(&xs, tanh_lanes));
        for k in 0..10 {
            assert!(
                s[k].is_finite() && (0.0..=1.0).contains(&s[k]),
                "sigmoid({}) = {}",
                xs[k],
                s[k]
            );
            assert_eq!(t[k], xs[k].signum(), "tanh({})", xs[k]);
        }
        assert_eq!((s[10], t[10]), (0.5, 0.0));
        assert!(s[11].is_nan() && t[11].is_nan());
    }

    /// The row against the plain f64 cell at odd lengths (a masked tail, one lane, several
    /// registers), with and without keeping the activations.
    #[test]
    fn row_matches_the_plain_cell() {
        if !supported() {
            return;
        }
        for n in [1, 7, 16, 33, 64, 100] {
            for keep in [false, true] {
                let v = |s: f64| -> Vec<f32> {
                    (0..n)
                        .map(|j| (3.0 * (j as f64 * 0.37 + s).sin()) as f32)
                        .collect()
                };
                let (mut ai, mut af, mut ag, mut ao, cp) = (v(0.1), v(0.7), v(1.3), v(2.9), v(4.1));
                let (want_i, want_f, want_g, want_o) =
                    (ai.clone(), af.clone(), ag.clone(), ao.clone());
                let (mut tc, mut cn, mut hn) = (vec![9f32; n], vec![0f32; n], vec![0f32; n]);
                // SAFETY: every buffer holds `n` values; AVX-512F checked above.
                unsafe {
                    lstm_row(
                        n,
                        ai.as_mut_ptr(),
                        af.as_mut_ptr(),
                        ag.as_mut_ptr(),
                        ao.as_mut_ptr(),
                        cp.as_ptr(),
                        tc.as_mut_ptr(),
                        cn.as_mut_ptr(),
                        hn.as_mut_ptr(),
                        keep,
                    )
                };
                let sig = |x: f32| 1.0 / (1.0 + (-(x as f64)).exp());
                for j in 0..n {
                    let (i, f, g, o) = (
                        sig(want_i[j]),
                        sig(want_f[j]),
                        (want_g[j] as f64).tanh(),
                        sig(want_o[j]),
                    );
                    let c = f * cp[j] as f64 + i * g;
                    let close = |got: f32, want: f64| {
                        (got as f64 - want).abs() <= 2e-6 * (1.0 + want.abs())
                    };
                    assert!(close(cn[j], c), "n={n} c[{j}] = {}, want {c}", cn[j]);
                    assert!(close(hn[j], o * c.tanh()), "n={n} h[{j}]");
                    if keep {
                        assert!(
                            close(ai[j], i)
                                && close(af[j], f)
                                && close(ag[j], g)
                                && close(ao[j], o)
                        );
                        assert!(close(tc[j], c.tanh()));
                    } else {
                        assert_eq!((ai[j], tc[j]), (want_i[j], 9.0), "written without a tape");
                    }
                }
            }
        }
    }
}
