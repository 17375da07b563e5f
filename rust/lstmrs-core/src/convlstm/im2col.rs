//! Convolutions as matrix products: `im2col` lays out every receptive field of a frame as one
//! column, so a stride-1 2-D convolution with `[O, C, kh, kw]` weights is the GEMM
//! `out[O, P] = W[O, C·kh·kw] · cols[C·kh·kw, P]`; `col2im` is its adjoint, used for the
//! gradient of the frame.
//!
//! The column matrix has a row stride `ld >= P`, so the columns of several frames can sit side
//! by side (`[C·kh·kw, T·P]`, frame `t` at column `t·P`): one GEMM then convolves every frame.

/// The geometry of one stride-1 convolution: a `[C, H, W]` frame, zero-padded by `pad`, read by a
/// `kernel` into an output frame of `out` pixels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub channels: usize,
    pub input: [usize; 2],
    pub kernel: [usize; 2],
    pub pad: [usize; 2],
    pub out: [usize; 2],
}

impl Geometry {
    /// Rows of the column matrix, `C·kh·kw`.
    pub fn rows(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// Output pixels, the columns of the column matrix.
    pub fn pixels(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// For kernel column `j`: the output columns `x` whose input column `x + j - pw` lies inside
    /// the frame.
    fn x_range(&self, j: usize) -> (usize, usize) {
        let (w, pw, wo) = (self.input[1], self.pad[1], self.out[1]);
        let lo = pw.saturating_sub(j).min(wo);
        let hi = (w + pw).saturating_sub(j).min(wo).max(lo);
        (lo, hi)
    }
}

/// `cols[(c, i, j), (y, x)] = frame[c, y + i - ph, x + j - pw]`, zero outside the frame.
/// `frame`: `[C, H, W]`; `cols`: `C·kh·kw` rows of `Ho·Wo`, row `r` at `cols[r·ld..]`.
pub(crate) fn im2col<T: Copy + Default>(g: &Geometry, frame: &[T], cols: &mut [T], ld: usize) {
    let [h, w] = g.input;
    let [kh, kw] = g.kernel;
    let [ph, pw] = g.pad;
    let [ho, wo] = g.out;
    assert_eq!(frame.len(), g.channels * h * w);
    assert!(ld >= g.pixels() && cols.len() >= (g.rows() - 1) * ld + g.pixels());
    let mut r = 0;
    for c in 0..g.channels {
        let plane = &frame[c * h * w..(c + 1) * h * w];
        for i in 0..kh {
            for j in 0..kw {
                let row = &mut cols[r * ld..r * ld + ho * wo];
                r += 1;
                let (lo, hi) = g.x_range(j);
                for y in 0..ho {
                    let dst = &mut row[y * wo..(y + 1) * wo];
                    let sy = (y + i).wrapping_sub(ph);
                    if sy >= h {
                        dst.fill(T::default());
                        continue;
                    }
                    dst[..lo].fill(T::default());
                    dst[hi..].fill(T::default());
                    if lo < hi {
                        let src = &plane[sy * w..(sy + 1) * w];
                        dst[lo..hi].copy_from_slice(&src[lo + j - pw..hi + j - pw]);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `frame[c, y + i - ph, x + j - pw] += cols[(c, i, j), (y, x)]`,
/// with the same row stride `ld`.
pub(crate) fn col2im_add<T: Copy + std::ops::AddAssign>(
    g: &Geometry,
    cols: &[T],
    ld: usize,
    frame: &mut [T],
) {
    let [h, w] = g.input;
    let [kh, kw] = g.kernel;
    let [ph, pw] = g.pad;
    let [ho, wo] = g.out;
    assert_eq!(frame.len(), g.channels * h * w);
    assert!(ld >= g.pixels() && cols.len() >= (g.rows() - 1) * ld + g.pixels());
    let mut r = 0;
    for c in 0..g.channels {
        let plane = &mut frame[c * h * w..(c + 1) * h * w];
        for i in 0..kh {
            for j in 0..kw {
                let row = &cols[r * ld..r * ld + ho * wo];
                r += 1;
                let (lo, hi) = g.x_range(j);
                for y in 0..ho {
                    let sy = (y + i).wrapping_sub(ph);
                    if sy >= h || lo == hi {
                        continue;
                    }
                    let src = &row[y * wo + lo..y * wo + hi];
                    let dst = &mut plane[sy * w + lo + j - pw..sy * w + hi + j - pw];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometries() -> Vec<Geometry> {
        vec![
            Geometry {
                channels: 2,
                input: [5, 4],
                kernel: [3, 3],
                pad: [1, 1],
                out: [5, 4],
            },
            Geometry {
                channels: 3,
                input: [6, 7],
                kernel: [3, 5],
                pad: [0, 1],
                out: [4, 5],
            },
            Geometry {
                channels: 2,
                input: [1, 1],
                kernel: [5, 5],
                pad: [2, 2],
                out: [1, 1],
            },
            Geometry {
                channels: 1,
                input: [2, 2],
                kernel: [5, 5],
                pad: [2, 2],
                out: [2, 2],
            },
        ]
    }

    fn frame(g: &Geometry) -> Vec<f64> {
        (0..g.channels * g.input[0] * g.input[1])
            .map(|v| (v as f64 * 0.7).sin())
            .collect()
    }

    /// Every entry as the definition says, with rows packed (`ld = P`) and with rows of a wider
    /// matrix (`ld > P`), whose other columns stay untouched.
    #[test]
    fn im2col_matches_the_definition() {
        for g in geometries() {
            for ld in [g.pixels(), g.pixels() + 3] {
                let f = frame(&g);
                let mut cols = vec![f64::NAN; g.rows() * ld];
                im2col(&g, &f, &mut cols, ld);
                let [h, w] = g.input;
                for c in 0..g.channels {
                    for i in 0..g.kernel[0] {
                        for j in 0..g.kernel[1] {
                            let r = (c * g.kernel[0] + i) * g.kernel[1] + j;
                            for y in 0..g.out[0] {
                                for x in 0..g.out[1] {
                                    let sy = y as isize + i as isize - g.pad[0] as isize;
                                    let sx = x as isize + j as isize - g.pad[1] as isize;
                                    let inside = sy >= 0
                                        && sx >= 0
                                        && (sy as usize) < h
                                        && (sx as usize) < w;
                                    let want = if inside {
                                        f[(c * h + sy as usize) * w + sx as usize]
                                    } else {
                                        0.0
                                    };
                                    assert_eq!(cols[r * ld + y * g.out[1] + x], want);
                                }
                            }
                            assert!(cols[r * ld + g.pixels()..(r + 1) * ld]
                                .iter()
                                .all(|v| v.is_nan()));
                        }
                    }
                }
            }
        }
    }

    /// `<im2col(f), u> == <f, col2im(u)>` for any `f`, `u`: col2im is the adjoint.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for g in geometries() {
            for ld in [g.pixels(), g.pixels() + 2] {
                let f = frame(&g);
                // Zero outside each row's `P` columns, so the sums see only the matrix.
                let u: Vec<f64> = (0..g.rows() * ld)
                    .map(|v| {
                        if v % ld < g.pixels() {
                            (v as f64 * 0.3).cos()
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mut cols = vec![0.0; u.len()];
                im2col(&g, &f, &mut cols, ld);
                let lhs: f64 = cols.iter().zip(&u).map(|(a, b)| a * b).sum();
                let mut back = vec![0.0; f.len()];
                col2im_add(&g, &u, ld, &mut back);
                let rhs: f64 = f.iter().zip(&back).map(|(a, b)| a * b).sum();
                assert!((lhs - rhs).abs() < 1e-10, "{lhs} vs {rhs}");
            }
        }
    }
}
