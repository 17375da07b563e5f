//! The ConvLSTM's element-wise cell, forward and backward, over the `K·P` units of one step.
//!
//! The loops call the branch-free activations of `activations`, whose `mul_add`s are a libm
//! call unless the code is compiled with FMA: each body is compiled again for AVX2+FMA and
//! AVX-512 and picked at run time (as the LSTM's gate kernels are), which vectorises it.

use crate::scalar::Scalar;

/// `$name(args)` runs `$body(args)` compiled for the best instruction set the CPU has.
macro_rules! dispatch {
    ($name:ident, $body:ident, ($($arg:ident : $ty:ty),* $(,)?)) => {
        pub(crate) fn $name<T: Scalar>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512<T: Scalar>($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: Scalar>($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has the features the variant was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

dispatch!(cell_forward, cell_forward_body, (
    gates: &mut [T],
    c_prev: &[T],
    c: &mut [T],
    h: &mut [T],
    n: usize,
));

dispatch!(cell_backward, cell_backward_body, (
    gates: &[T],
    c_prev: &[T],
    c: &[T],
    dh: &[T],
    dc: &mut [T],
    d_gates: &mut [T],
    n: usize,
));

/// The element-wise cell over `n = K·P` units: activates the gate pre-activations in place
/// (`gates` `[4, n]`, blocks i, f, g, o) and writes `c = f c_prev + i g`, `h = o tanh(c)`.
#[inline(always)]
fn cell_forward_body<T: Scalar>(gates: &mut [T], c_prev: &[T], c: &mut [T], h: &mut [T], n: usize) {
    let (i, rest) = gates.split_at_mut(n);
    let (f, rest) = rest.split_at_mut(n);
    let (g, o) = rest.split_at_mut(n);
    // Equal lengths up front, so the loop runs without bounds checks and vectorises.
    let (o, c_prev, c, h) = (&mut o[..n], &c_prev[..n], &mut c[..n], &mut h[..n]);
    for u in 0..n {
        i[u] = i[u].sigmoid();
        f[u] = f[u].sigmoid();
        g[u] = g[u].tanh_act();
        o[u] = o[u].sigmoid();
        c[u] = f[u] * c_prev[u] + i[u] * g[u];
        h[u] = o[u] * c[u].tanh_act();
    }
}

/// The element-wise cell backward over `n = K·P` units. In: the activated gates `[4, n]`,
/// `c_prev`, `c`, the gradient `dh` of `h_t` and `dc` of `c_t` (from step t+1). Out: `d_gates`
/// `[4, n]` (of the pre-activations) and `dc` becomes the gradient of `c_{t-1}`.
#[inline(always)]
fn cell_backward_body<T: Scalar>(
    gates: &[T],
    c_prev: &[T],
    c: &[T],
    dh: &[T],
    dc: &mut [T],
    d_gates: &mut [T],
    n: usize,
) {
    let one = T::one();
    let (i, f, g, o) = (
        &gates[..n],
        &gates[n..2 * n],
        &gates[2 * n..3 * n],
        &gates[3 * n..4 * n],
    );
    let (di, rest) = d_gates.split_at_mut(n);
    let (df, rest) = rest.split_at_mut(n);
    let (dg, d_o) = rest.split_at_mut(n);
    let (d_o, c_prev, c, dh, dc) = (&mut d_o[..n], &c_prev[..n], &c[..n], &dh[..n], &mut dc[..n]);
    for u in 0..n {
        let tc = c[u].tanh_act();
        let dct = dc[u] + dh[u] * o[u] * (one - tc * tc);
        d_o[u] = dh[u] * tc * o[u] * (one - o[u]);
        di[u] = dct * g[u] * i[u] * (one - i[u]);
        df[u] = dct * c_prev[u] * f[u] * (one - f[u]);
        dg[u] = dct * i[u] * (one - g[u] * g[u]);
        dc[u] = dct * f[u];
    }
}
