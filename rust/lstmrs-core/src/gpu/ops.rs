//! Launchers of the small data-movement kernels (`shaders/ops.wgsl`).

use super::context::{count, Access, GBuf, Kernel, Recorder, Shader};
use crate::error::Result;

const STORAGE: &[Access] = &[Access::Read, Access::Read, Access::ReadWrite];

fn kernel(entry: &'static str) -> Kernel {
    Kernel {
        shader: Shader::Ops,
        entry,
        storage: STORAGE,
        constants: Vec::new(),
    }
}

/// Workgroups of an element-wise kernel: enough for `n`, capped (the kernels loop with a grid
/// stride beyond that).
fn elementwise_groups(rec: &Recorder, n: usize) -> [u32; 3] {
    [
        count(n, 256).min(rec.gpu().max_workgroups().min(4096)),
        1,
        1,
    ]
}

/// `dst = src` with the two outer axes swapped: `[a, b, f] -> [b, a, f]`.
pub(crate) fn permute(
    rec: &mut Recorder,
    src: &GBuf,
    dst: &GBuf,
    (a, b, f): (usize, usize, usize),
) -> Result<()> {
    let params = [
        a as u32, b as u32, f as u32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let groups = elementwise_groups(rec, a * b * f);
    rec.dispatch(&kernel("permute"), &[src, src, dst], &params, groups)
}

/// `dst[..n] *= mask[..n]`, in place.
pub(crate) fn scale(rec: &mut Recorder, dst: &GBuf, mask: &GBuf, n: usize) -> Result<()> {
    let params = [n as u32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let groups = elementwise_groups(rec, n);
    rec.dispatch(&kernel("scale"), &[mask, mask, dst], &params, groups)
}

/// `dst[dst_off + c] = Σ_r src[src_off + r*cols + c]` for `rows x cols`: a bias gradient.
pub(crate) fn column_sums(
    rec: &mut Recorder,
    src: &GBuf,
    src_off: usize,
    (rows, cols): (usize, usize),
    dst: &GBuf,
    dst_off: usize,
) -> Result<()> {
    let params = [
        rows as u32,
        cols as u32,
        cols as u32,
        0,
        src_off as u32,
        dst_off as u32,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    rec.dispatch(
        &kernel("colsum"),
        &[src, src, dst],
        &params,
        [count(cols, 64), 1, 1],
    )
}
