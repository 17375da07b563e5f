//! Branch-free f32 `exp`, `sigmoid` and `tanh` that LLVM vectorises inside the gate loops.
//!
//! libm's `expf`/`tanhf` are opaque calls, which keeps a gate loop scalar. `exp` uses the Cephes
//! polynomial (Moshier) and `tanh` a minimax rational function, both written with selects
//! instead of branches.
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

/// Beyond this `|x|` the rational form below, evaluated with FMAs, rounds to ±1 in f32, so
/// clamping there saturates exactly.
const TANH_CLAMP: f32 = 7.998_811_7;
/// Below this `|x|`, `tanh(x)` is `x` to f32 precision, and returning `x` keeps tiny inputs from
/// losing their digits to the underflow of `x²`.
const TANH_IDENTITY: f32 = 4e-4;

/// Hyperbolic tangent as the odd minimax rational `x·P(x²)/Q(x²)` of degrees 13/6 on the clamped
/// range (the published coefficients Eigen and XLA use for f32): one division and ten FMAs, no
/// `exp`, so the gate loops that call it five times per LSTM unit stay short.
#[inline(always)]
pub fn tanh_f32(x_in: f32) -> f32 {
    // max/min rather than clamp, as in `exp_f32`.
    #[allow(clippy::manual_clamp)]
    let x = x_in.max(-TANH_CLAMP).min(TANH_CLAMP);
    let s = x * x;
    let p = -2.760_768_5e-16_f32;
    let p = p.mul_add(s, 2.000_187_9e-13);
    let p = p.mul_add(s, -8.604_671_5e-11);
    let p = p.mul_add(s, 5.122_297e-8);
    let p = p.mul_add(s, 1.485_722_4e-5);
    let p = p.mul_add(s, 6.372_619_3e-4);
    let p = p.mul_add(s, 4.893_524_6e-3);
    let q = 1.198_258_4e-6_f32;
    let q = q.mul_add(s, 1.185_347e-4);
    let q = q.mul_add(s, 2.268_434_6e-3);
    let q = q.mul_add(s, 4.893_525e-3);
    let r = x * p / q;
    // NaN in, NaN out (max/min above would have replaced it).
    if x_in.abs() < TANH_IDENTITY || x_in.is_nan() {
        x_in
    } else {
        r
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
    fn tanh_keeps_tiny_inputs_and_never_leaves_the_unit_interval() {
        for x in grid(-1e-3, 1e-3, 20_001).chain([1e-20, -1e-30, 1e-40, f32::MIN_POSITIVE]) {
            let want = (x as f64).tanh();
            let got = tanh_f32(x) as f64;
            assert!(
                (got - want).abs() <= 4e-7 * want.abs(),
                "tanh({x}) = {got}, want {want}"
            );
        }
        for x in grid(-12.0, 12.0, 240_001) {
            assert!(tanh_f32(x).abs() <= 1.0, "tanh({x}) = {}", tanh_f32(x));
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
