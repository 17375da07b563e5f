//! The ConvLSTM's element-wise cell, forward and backward, over the `K·P` units of one step.
//! The gates of a layer sit channel-major over the whole sequence (`[G, T·P]`, see
//! [`StepView`]), which is how the sequence-wide GEMMs of `network` read and write them.
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
    step: StepView,
    c_prev: &[T],
    c: &mut [T],
    h: &mut [T],
));

dispatch!(cell_backward, cell_backward_body, (
    gates: &[T],
    step: StepView,
    c_prev: &[T],
    c: &[T],
    dh: &[T],
    dc: &mut [T],
    d_gates: &mut [T],
));

/// Where one step's gates sit in a layer's `[G, T·P]` gate buffer (`G = 4K` rows, blocks i, f,
/// g, o; the steps side by side along each row): channel `ch` of gate `q` at
/// `(q·K + ch)·ld + at`, `P` values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepView {
    /// `K`.
    pub channels: usize,
    /// `P`.
    pub pixels: usize,
    /// The row stride, `T·P`.
    pub ld: usize,
    /// The step's first column, `t·P`.
    pub at: usize,
}

impl StepView {
    /// The gate buffer's four blocks, `[K, ld]` each.
    fn blocks<'a, S>(&self, gates: &'a mut [S]) -> [&'a mut [S]; 4] {
        let block = self.channels * self.ld;
        let (i, rest) = gates[..4 * block].split_at_mut(block);
        let (f, rest) = rest.split_at_mut(block);
        let (g, o) = rest.split_at_mut(block);
        [i, f, g, o]
    }

    /// Channel `ch`'s `P` values within a block.
    fn range(&self, ch: usize) -> std::ops::Range<usize> {
        let at = ch * self.ld + self.at;
        at..at + self.pixels
    }
}

/// The element-wise cell of one step: activates the gate pre-activations in place and writes
/// `c = f c_prev + i g`, `h = o tanh(c)` (`c_prev`, `c`, `h`: `[K, P]`).
#[inline(always)]
fn cell_forward_body<T: Scalar>(
    gates: &mut [T],
    step: StepView,
    c_prev: &[T],
    c: &mut [T],
    h: &mut [T],
) {
    let p = step.pixels;
    let [gi, gf, gg, go] = step.blocks(gates);
    for ch in 0..step.channels {
        let r = step.range(ch);
        let s = ch * p..(ch + 1) * p;
        // Equal lengths up front, so the loop runs without bounds checks and vectorises.
        let (i, f, g, o) = (
            &mut gi[r.clone()],
            &mut gf[r.clone()],
            &mut gg[r.clone()],
            &mut go[r],
        );
        let (c_prev, c, h) = (&c_prev[s.clone()], &mut c[s.clone()], &mut h[s]);
        for u in 0..p {
            i[u] = i[u].sigmoid();
            f[u] = f[u].sigmoid();
            g[u] = g[u].tanh_act();
            o[u] = o[u].sigmoid();
            c[u] = f[u] * c_prev[u] + i[u] * g[u];
            h[u] = o[u] * c[u].tanh_act();
        }
    }
}

/// The element-wise cell backward of one step. In: the activated gates, `c_prev`, `c`, the
/// gradient `dh` of `h_t` and `dc` of `c_t` (from step t+1), each `[K, P]`. Out: the step's
/// gradients of the pre-activations in `d_gates` (laid out as `gates`), and `dc` becomes the
/// gradient of `c_{t-1}`.
#[inline(always)]
fn cell_backward_body<T: Scalar>(
    gates: &[T],
    step: StepView,
    c_prev: &[T],
    c: &[T],
    dh: &[T],
    dc: &mut [T],
    d_gates: &mut [T],
) {
    let one = T::one();
    let p = step.pixels;
    let block = step.channels * step.ld;
    let [gdi, gdf, gdg, gdo] = step.blocks(d_gates);
    for ch in 0..step.channels {
        let r = step.range(ch);
        let s = ch * p..(ch + 1) * p;
        let (i, f, g, o) = (
            &gates[r.start..r.end],
            &gates[block + r.start..block + r.end],
            &gates[2 * block + r.start..2 * block + r.end],
            &gates[3 * block + r.start..3 * block + r.end],
        );
        let (di, df, dg, d_o) = (
            &mut gdi[r.clone()],
            &mut gdf[r.clone()],
            &mut gdg[r.clone()],
            &mut gdo[r],
        );
        let (c_prev, c, dh, dc) = (
            &c_prev[s.clone()],
            &c[s.clone()],
            &dh[s.clone()],
            &mut dc[s],
        );
        for u in 0..p {
            let tc = c[u].tanh_act();
            let dct = dc[u] + dh[u] * o[u] * (one - tc * tc);
            d_o[u] = dh[u] * tc * o[u] * (one - o[u]);
            di[u] = dct * g[u] * i[u] * (one - i[u]);
            df[u] = dct * c_prev[u] * f[u] * (one - f[u]);
            dg[u] = dct * i[u] * (one - g[u] * g[u]);
            dc[u] = dct * f[u];
        }
    }
}
