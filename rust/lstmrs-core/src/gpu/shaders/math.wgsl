// Activations of the step kernels (appended to each cell's shader).
// tanh is written out rather than taken from the builtin: drivers may evaluate the builtin as
// (e^2x - 1) / (e^2x + 1), which is NaN once e^2x overflows and loses relative accuracy near 0.
// It is the CPU path's rational function (activations.rs: x·P(x²)/Q(x²) on the clamped range),
// so both paths stay close; the CPU evaluates it as x·(P/Q), which keeps tiny and subnormal x
// without a select, while here x itself is returned below 4e-4 (GPUs may flush subnormals).

fn sigmoid(x: f32) -> f32 {
    // Clamped so that exp never overflows (an overflow is undefined in WGSL).
    return 1.0 / (1.0 + exp(-clamp(x, -88.0, 88.0)));
}

fn tanh_act(x: f32) -> f32 {
    let c = clamp(x, -7.9988117, 7.9988117);
    let s = c * c;
    var p = -2.7607685e-16;
    p = fma(p, s, 2.0001879e-13);
    p = fma(p, s, -8.6046715e-11);
    p = fma(p, s, 5.122297e-8);
    p = fma(p, s, 1.4857224e-5);
    p = fma(p, s, 6.3726193e-4);
    p = fma(p, s, 4.8935246e-3);
    var q = 1.1982584e-6;
    q = fma(q, s, 1.185347e-4);
    q = fma(q, s, 2.2684346e-3);
    q = fma(q, s, 4.893525e-3);
    return select(c * p / q, x, abs(x) < 4e-4);
}
