//! Launcher of the tiled matrix product (`shaders/matmul.wgsl`): the input projection of all
//! steps, and the weight and input gradients gathered over all steps.

use super::context::{count, Access, GBuf, Kernel, Recorder, Shader};
use crate::error::Result;

/// One operand of a product: `buf` from element `off`, rows `ld` elements apart. `trans` means
/// the matrix is stored transposed (A as `[K, M]`, B as `[N, K]`).
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub buf: &'a GBuf,
    pub off: usize,
    pub ld: usize,
    pub trans: bool,
}

/// The output `C[M, N]` at `off` with rows `ld` apart.
#[derive(Clone, Copy)]
pub(crate) struct Out<'a> {
    pub buf: &'a GBuf,
    pub off: usize,
    pub ld: usize,
}

/// Row bias added to every row of C: `first` (N long) plus `second` on the first `cols`
/// columns, both in `buf` (the parameter buffer).
#[derive(Clone, Copy)]
pub(crate) struct Bias<'a> {
    pub buf: &'a GBuf,
    pub first: usize,
    pub second: Option<(usize, usize)>,
}

const STORAGE: &[Access] = &[
    Access::Read,
    Access::Read,
    Access::ReadWrite,
    Access::Read,
    Access::Read,
    Access::Read,
];

/// Threads along a dimension of `extent` elements (four per thread): a power of two in 4..=16,
/// so narrow products do not idle most of a 64-wide tile.
fn threads_for(extent: usize) -> u32 {
    (extent.div_ceil(4).next_power_of_two()).clamp(4, 16) as u32
}

/// `C (+)= op(A)[M,K] · op(B)[K,N] (+ bias)`.
pub(crate) fn matmul(
    rec: &mut Recorder,
    (m, n, k): (usize, usize, usize),
    a: Operand,
    b: Operand,
    c: Out,
    bias: Option<Bias>,
    accumulate: bool,
) -> Result<()> {
    // A vec4 load is safe when the operand's offset and stride are multiples of 4 and so is its
    // contiguous extent (M for a stored-transposed A, K otherwise; likewise N or K for B).
    let aligned = |o: &Operand, contiguous: usize| {
        o.off.is_multiple_of(4) && o.ld.is_multiple_of(4) && contiguous.is_multiple_of(4)
    };
    let vec_a = aligned(&a, if a.trans { m } else { k });
    let vec_b = aligned(&b, if b.trans { k } else { n });
    let (wg_x, wg_y) = (threads_for(n), threads_for(m));
    let kernel = Kernel {
        shader: Shader::Matmul,
        entry: "main",
        storage: STORAGE,
        constants: vec![
            ("TRANS_A", a.trans.into()),
            ("TRANS_B", b.trans.into()),
            ("VEC_A", vec_a.into()),
            ("VEC_B", vec_b.into()),
            ("WG_X", wg_x),
            ("WG_Y", wg_y),
            ("BK", 16),
        ],
    };
    let mut flags = u32::from(accumulate);
    let (mut bias1, mut bias2, mut bias2_cols) = (0, 0, 0);
    if let Some(bs) = &bias {
        flags |= 2;
        bias1 = bs.first;
        if let Some((off, cols)) = bs.second {
            flags |= 4;
            (bias2, bias2_cols) = (off, cols);
        }
    }
    let params = [
        m as u32,
        n as u32,
        k as u32,
        flags,
        a.off as u32,
        a.ld as u32,
        b.off as u32,
        b.ld as u32,
        c.off as u32,
        c.ld as u32,
        bias1 as u32,
        bias2 as u32,
        bias2_cols as u32,
        0,
        0,
        0,
    ];
    let bias_buf = bias.map_or(a.buf, |b| b.buf);
    let groups = [count(n, 4 * wg_x as usize), count(m, 4 * wg_y as usize), 1];
    rec.dispatch(
        &kernel,
        &[a.buf, b.buf, c.buf, bias_buf, a.buf, b.buf],
        &params,
        groups,
    )
}
