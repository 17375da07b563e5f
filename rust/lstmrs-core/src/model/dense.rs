//! Fully connected layers of a model's head: `y[N, out] = x[N, in] · Wᵀ + b`, and their gradients.

use crate::matmul::{a_b, a_bt, at_b, Mat};
use crate::scalar::Scalar;

/// Nonlinearity after a hidden head layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Tanh,
    Relu,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
        }
    }

    pub(crate) fn apply<T: Scalar>(self, v: &mut [T]) {
        match self {
            Activation::Tanh => v.iter_mut().for_each(|x| *x = x.tanh_act()),
            Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(T::zero())),
        }
    }

    /// Multiplies `grad` by the derivative, given the activation's outputs `y`.
    pub(crate) fn backprop<T: Scalar>(self, y: &[T], grad: &mut [T]) {
        match self {
            Activation::Tanh => grad
                .iter_mut()
                .zip(y)
                .for_each(|(g, &y)| *g *= T::one() - y * y),
            Activation::Relu => grad.iter_mut().zip(y).for_each(|(g, &y)| {
                if y <= T::zero() {
                    *g = T::zero()
                }
            }),
        }
    }
}

/// `y[N, out] = x[N, in] · w[out, in]ᵀ + b[out]`.
pub(crate) fn forward<T: Scalar>(x: &[T], rows: usize, w: &[T], b: &[T], out: usize) -> Vec<T> {
    let mut y = vec![T::zero(); rows * out];
    forward_into(x, rows, w, b, &mut y);
    y
}

/// [`forward`] into a caller's buffer `y[N, out]` (streaming reuses it every step).
pub(crate) fn forward_into<T: Scalar>(x: &[T], rows: usize, w: &[T], b: &[T], y: &mut [T]) {
    let out = b.len();
    let inp = w.len() / out;
    for row in y.chunks_exact_mut(out) {
        row.copy_from_slice(b);
    }
    a_bt(y, out, true, Mat::new(x, rows, inp), Mat::new(w, out, inp));
}

/// Gradients of a dense layer: accumulates `dW += dyᵀ x` and `db += Σ dy` into `dw`, `db`, and
/// returns `dx = dy · w` when `want_dx`.
pub(crate) fn backward<T: Scalar>(
    x: &[T],
    rows: usize,
    w: &[T],
    dy: &[T],
    out: usize,
    dw: &mut [T],
    db: &mut [T],
    want_dx: bool,
) -> Option<Vec<T>> {
    let inp = w.len() / out;
    at_b(
        dw,
        inp,
        true,
        Mat::new(dy, rows, out),
        Mat::new(x, rows, inp),
    );
    for row in dy.chunks_exact(out) {
        db.iter_mut().zip(row).for_each(|(d, &g)| *d += g);
    }
    want_dx.then(|| {
        let mut dx = vec![T::zero(); rows * inp];
        a_b(
            &mut dx,
            inp,
            false,
            Mat::new(dy, rows, out),
            Mat::new(w, out, inp),
        );
        dx
    })
}
