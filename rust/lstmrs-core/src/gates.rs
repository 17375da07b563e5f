//! Fused element-wise gate kernels: one pass per time step computes every nonlinearity and the new
//! state of a batch, forward and backward.
//!
//! Shapes (per step): `B` rows, `H` hidden units, `G*H` gate columns in PyTorch's order.
//! The bodies are plain loops over equally long slices; `dispatch!` compiles each body again with
//! AVX2+FMA and AVX-512 enabled and picks one at run time, so LLVM vectorises them (including the
//! branch-free `activations`) without the crate being built for a specific CPU.

use crate::scalar::Scalar;

/// Rows of a step: which of them are inside their sequence at this time step.
#[derive(Clone, Copy)]
pub struct Active<'a> {
    pub lengths: Option<&'a [usize]>,
    pub t: usize,
}

impl Active<'_> {
    #[inline(always)]
    pub fn row(&self, b: usize) -> bool {
        self.lengths.is_none_or(|l| self.t < l[b])
    }
}

macro_rules! dispatch {
    ($name:ident, $body:ident, ($($arg:ident : $ty:ty),* $(,)?)) => {
        pub(crate) fn $name<T: Scalar>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512<T: Scalar>($($arg: $ty),*) { $body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: Scalar>($($arg: $ty),*) { $body($($arg),*) }
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

/// LSTM forward step.
/// `pre[B,4H]` holds `W_ih x + b_ih + b_hh` and gets `W_hh h` added here; `act[B,4H]` receives
/// i, f, g, o after their nonlinearities, `tanh_c[B,H]` receives `tanh(c')`. Inactive rows carry
/// `h`, `c` unchanged and write zero activations.
#[inline(always)]
fn lstm_forward_body<T: Scalar>(
    h: usize,
    active: Active,
    x_pre: &[T],
    h_pre: &[T],
    c_prev: &[T],
    h_prev: &[T],
    act: &mut [T],
    tanh_c: &mut [T],
    c_next: &mut [T],
    h_next: &mut [T],
) {
    let g = 4 * h;
    let rows = c_prev.len() / h;
    for b in 0..rows {
        let (hs, gs) = (b * h..(b + 1) * h, b * g..(b + 1) * g);
        let act = &mut act[gs.clone()];
        if !active.row(b) {
            act.fill(T::zero());
            tanh_c[hs.clone()].fill(T::zero());
            c_next[hs.clone()].copy_from_slice(&c_prev[hs.clone()]);
            h_next[hs.clone()].copy_from_slice(&h_prev[hs]);
            continue;
        }
        let (x, hp) = (&x_pre[gs.clone()], &h_pre[gs]);
        let (xi, xf, xg, xo) = (&x[..h], &x[h..2 * h], &x[2 * h..3 * h], &x[3 * h..4 * h]);
        let (pi, pf, pg, po) = (
            &hp[..h],
            &hp[h..2 * h],
            &hp[2 * h..3 * h],
            &hp[3 * h..4 * h],
        );
        let (ai, rest) = act.split_at_mut(h);
        let (af, rest) = rest.split_at_mut(h);
        let (ag, ao) = rest.split_at_mut(h);
        let ao = &mut ao[..h];
        let cp = &c_prev[hs.clone()];
        let tc = &mut tanh_c[hs.clone()];
        let cn = &mut c_next[hs.clone()];
        let hn = &mut h_next[hs];
        for j in 0..h {
            let i = (xi[j] + pi[j]).sigmoid();
            let f = (xf[j] + pf[j]).sigmoid();
            let gg = (xg[j] + pg[j]).tanh_act();
            let o = (xo[j] + po[j]).sigmoid();
            let c = f * cp[j] + i * gg;
            let t = c.tanh_act();
            ai[j] = i;
            af[j] = f;
            ag[j] = gg;
            ao[j] = o;
            cn[j] = c;
            tc[j] = t;
            hn[j] = o * t;
        }
    }
}
dispatch!(lstm_forward, lstm_forward_body, (
    h: usize, active: Active, x_pre: &[T], h_pre: &[T], c_prev: &[T], h_prev: &[T],
    act: &mut [T], tanh_c: &mut [T], c_next: &mut [T], h_next: &mut [T],
));

/// LSTM backward step for active rows.
/// In: `dh[B,H]` (gradient of the step's output state, output gradient included), `dc[B,H]`
/// (gradient of `c'`), the step's `act`, `tanh_c` and `c_prev`.
/// Out: `d_pre[B,4H]` (gradient of the gate pre-activations), `dc` becomes the gradient of `c_prev`
/// and `dh` is zeroed (the recurrent product adds `d_pre · W_hh` afterwards). Inactive rows write
/// zero `d_pre` and leave `dh`, `dc` to flow through unchanged.
#[inline(always)]
fn lstm_backward_body<T: Scalar>(
    h: usize,
    active: Active,
    act: &[T],
    tanh_c: &[T],
    c_prev: &[T],
    dh: &mut [T],
    dc: &mut [T],
    d_pre: &mut [T],
) {
    let g = 4 * h;
    let rows = dh.len() / h;
    let one = T::one();
    for b in 0..rows {
        let (hs, gs) = (b * h..(b + 1) * h, b * g..(b + 1) * g);
        let dp = &mut d_pre[gs.clone()];
        if !active.row(b) {
            dp.fill(T::zero());
            continue;
        }
        let a = &act[gs];
        let (ai, af, ag, ao) = (&a[..h], &a[h..2 * h], &a[2 * h..3 * h], &a[3 * h..4 * h]);
        let (di, rest) = dp.split_at_mut(h);
        let (df, rest) = rest.split_at_mut(h);
        let (dg, d_o) = rest.split_at_mut(h);
        let d_o = &mut d_o[..h];
        let tc = &tanh_c[hs.clone()];
        let cp = &c_prev[hs.clone()];
        let dhr = &mut dh[hs.clone()];
        let dcr = &mut dc[hs];
        for j in 0..h {
            let (i, f, gg, o) = (ai[j], af[j], ag[j], ao[j]);
            let dhj = dhr[j];
            let dct = dcr[j] + dhj * o * (one - tc[j] * tc[j]);
            di[j] = dct * gg * i * (one - i);
            df[j] = dct * cp[j] * f * (one - f);
            dg[j] = dct * i * (one - gg * gg);
            d_o[j] = dhj * tc[j] * o * (one - o);
            dcr[j] = dct * f;
            dhr[j] = T::zero();
        }
    }
}
dispatch!(lstm_backward, lstm_backward_body, (
    h: usize, active: Active, act: &[T], tanh_c: &[T], c_prev: &[T],
    dh: &mut [T], dc: &mut [T], d_pre: &mut [T],
));

/// GRU forward step.
/// `x_pre[B,3H]` holds `W_ih x + b_ih` plus `b_hr`, `b_hz` on the r and z columns; `h_pre[B,3H]`
/// holds `W_hh h` and `b_hn` is added to its n columns here (it sits inside `r * (...)`).
/// `act[B,3H]` receives r, z, n and `hn_lin[B,H]` receives `W_hn h + b_hn`.
#[inline(always)]
fn gru_forward_body<T: Scalar>(
    h: usize,
    active: Active,
    x_pre: &[T],
    h_pre: &[T],
    b_hn: &[T],
    h_prev: &[T],
    act: &mut [T],
    hn_lin: &mut [T],
    h_next: &mut [T],
) {
    let g = 3 * h;
    let rows = h_prev.len() / h;
    let b_hn = &b_hn[..h];
    for b in 0..rows {
        let (hs, gs) = (b * h..(b + 1) * h, b * g..(b + 1) * g);
        let act = &mut act[gs.clone()];
        if !active.row(b) {
            act.fill(T::zero());
            hn_lin[hs.clone()].fill(T::zero());
            h_next[hs.clone()].copy_from_slice(&h_prev[hs]);
            continue;
        }
        let (x, hp) = (&x_pre[gs.clone()], &h_pre[gs]);
        let (xr, xz, xn) = (&x[..h], &x[h..2 * h], &x[2 * h..3 * h]);
        let (pr, pz, pn) = (&hp[..h], &hp[h..2 * h], &hp[2 * h..3 * h]);
        let (ar, rest) = act.split_at_mut(h);
        let (az, an) = rest.split_at_mut(h);
        let an = &mut an[..h];
        let hl = &mut hn_lin[hs.clone()];
        let hprev = &h_prev[hs.clone()];
        let hn = &mut h_next[hs];
        for j in 0..h {
            let r = (xr[j] + pr[j]).sigmoid();
            let z = (xz[j] + pz[j]).sigmoid();
            let lin = pn[j] + b_hn[j];
            let n = (xn[j] + r * lin).tanh_act();
            ar[j] = r;
            az[j] = z;
            an[j] = n;
            hl[j] = lin;
            hn[j] = n + z * (hprev[j] - n);
        }
    }
}
dispatch!(gru_forward, gru_forward_body, (
    h: usize, active: Active, x_pre: &[T], h_pre: &[T], b_hn: &[T], h_prev: &[T],
    act: &mut [T], hn_lin: &mut [T], h_next: &mut [T],
));

/// GRU backward step for active rows.
/// Out: `dx_pre[B,3H]` (gradient of the input-side pre-activations), `dh_pre[B,3H]` (gradient of
/// the recurrent-side ones: equal on r, z; `da_n * r` on n) and `dh` becomes `dh * z`, the direct
/// path to `h_prev`; the recurrent product adds `dh_pre · W_hh` afterwards.
#[inline(always)]
fn gru_backward_body<T: Scalar>(
    h: usize,
    active: Active,
    act: &[T],
    hn_lin: &[T],
    h_prev: &[T],
    dh: &mut [T],
    dx_pre: &mut [T],
    dh_pre: &mut [T],
) {
    let g = 3 * h;
    let rows = dh.len() / h;
    let one = T::one();
    for b in 0..rows {
        let (hs, gs) = (b * h..(b + 1) * h, b * g..(b + 1) * g);
        let dx = &mut dx_pre[gs.clone()];
        let dhp = &mut dh_pre[gs.clone()];
        if !active.row(b) {
            dx.fill(T::zero());
            dhp.fill(T::zero());
            continue;
        }
        let a = &act[gs];
        let (ar, az, an) = (&a[..h], &a[h..2 * h], &a[2 * h..3 * h]);
        let (dxr, rest) = dx.split_at_mut(h);
        let (dxz, dxn) = rest.split_at_mut(h);
        let dxn = &mut dxn[..h];
        let (dpr, rest) = dhp.split_at_mut(h);
        let (dpz, dpn) = rest.split_at_mut(h);
        let dpn = &mut dpn[..h];
        let hl = &hn_lin[hs.clone()];
        let hp = &h_prev[hs.clone()];
        let dhr = &mut dh[hs];
        for j in 0..h {
            let (r, z, n) = (ar[j], az[j], an[j]);
            let d = dhr[j];
            let da_n = d * (one - z) * (one - n * n);
            let da_r = da_n * hl[j] * r * (one - r);
            let da_z = d * (hp[j] - n) * z * (one - z);
            dxr[j] = da_r;
            dxz[j] = da_z;
            dxn[j] = da_n;
            dpr[j] = da_r;
            dpz[j] = da_z;
            dpn[j] = da_n * r;
            dhr[j] = d * z;
        }
    }
}
dispatch!(gru_backward, gru_backward_body, (
    h: usize, active: Active, act: &[T], hn_lin: &[T], h_prev: &[T],
    dh: &mut [T], dx_pre: &mut [T], dh_pre: &mut [T],
));
