// Activations of the step kernels (appended to each cell's shader).
// tanh is written out rather than taken from the builtin: drivers may evaluate the builtin as
// (e^2x - 1) / (e^2x + 1), which is NaN once e^2x overflows and loses relative accuracy near 0.
// The odd polynomial near 0 is the CPU path's (Cephes), so both paths round alike there.

fn sigmoid(x: f32) -> f32 {
    // Clamped so that exp never overflows (an overflow is undefined in WGSL).
    return 1.0 / (1.0 + exp(-clamp(x, -88.0, 88.0)));
}

fn tanh_act(x: f32) -> f32 {
    let a = abs(x);
    let s = x * x;
    var p = -5.7049887e-3;
    p = fma(p, s, 2.0639089e-2);
    p = fma(p, s, -5.3739716e-2);
    p = fma(p, s, 1.3331442e-1);
    p = fma(p, s, -3.3333282e-1);
    let small = fma(p * s, x, x);
    let e = exp(2.0 * min(a, 20.0));
    let large = sign(x) * (1.0 - 2.0 / (e + 1.0));
    return select(large, small, a < 0.625);
}
