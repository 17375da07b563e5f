//! Dynamic time warping and the 1-nearest-neighbour DTW classifier: the classic baseline of
//! time-series classification (the UCR archive's tables), reported beside every numeric
//! classification run.
//!
//! Shapes: a set of `N` series is one flat `[N, T, F]` buffer (row-major, padded to `T` steps)
//! with each series' valid length in `lens`; `F` features per step. The point cost is the squared
//! Euclidean distance between two steps' feature vectors (dependent, multivariate DTW); a path's
//! cost is the sum of its point costs (the archive's convention: no square root, which does not
//! change the nearest neighbour).
//!
//! The Sakoe-Chiba band is given as a fraction `r` of the longer series: a cell `(i, j)` is on
//! the band when `j` is within `r * max(n, m)` steps of the diagonal point `i * (m - 1) / (n - 1)`,
//! so unequal lengths are compared along their own diagonal. The band never gets narrower than
//! the diagonal's slope, so a path always exists.
//!
//! Speed: the 1-NN search visits candidates in order of a lower bound (LB_Keogh, and for
//! leave-one-out the unconstrained distance, computed once for all windows) and stops when
//! the bound exceeds the best distance so far; it abandons a candidate as soon as a whole row of
//! its cost matrix exceeds that distance; and the leave-one-out window search starts each query
//! at the neighbour the previous (narrower) window found. Queries run in parallel on the rayon
//! pool.
//! [`reference_distance`] is the plain full-matrix version the fast one is tested against.

use crate::error::{Error, Result};
use crate::memory;
use crate::threads;
use rayon::prelude::*;

/// A set of padded series: `values` `[n, t, f]`, `lens` `[n]` (each in `1..=t`).
#[derive(Clone, Copy, Debug)]
pub struct SeriesSet<'a> {
    pub values: &'a [f64],
    pub lens: &'a [usize],
    pub t: usize,
    pub f: usize,
}

impl<'a> SeriesSet<'a> {
    /// Checks the buffer against the shape and every length against `t`.
    pub fn new(
        arg: &'static str,
        values: &'a [f64],
        lens: &'a [usize],
        t: usize,
        f: usize,
    ) -> Result<Self> {
        let n = lens.len();
        if t == 0 || f == 0 || values.len() != n * t * f {
            return Err(Error::Shape {
                arg,
                expected: format!("[{n}, T >= 1, F >= 1] with T * F = {}", t * f),
                got: format!("{} values", values.len()),
            });
        }
        if let Some((i, &l)) = lens.iter().enumerate().find(|(_, &l)| l == 0 || l > t) {
            return Err(Error::Value {
                arg,
                expected: format!("every length in 1..={t}"),
                got: format!("length {l} at index {i}"),
            });
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::Value {
                arg,
                expected: "finite values".into(),
                got: format!("{v}"),
            });
        }
        Ok(SeriesSet { values, lens, t, f })
    }

    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Series `i` as `[len, f]`.
    pub fn series(&self, i: usize) -> &'a [f64] {
        let start = i * self.t * self.f;
        &self.values[start..start + self.lens[i] * self.f]
    }
}

/// The band's columns `[lo, hi]` of row `i` for series of `n` and `m` steps and a window of
/// `w` steps around the diagonal.
#[inline]
fn band(i: usize, n: usize, m: usize, w: usize) -> (usize, usize) {
    let center = if n > 1 {
        i as f64 * (m - 1) as f64 / (n - 1) as f64
    } else {
        0.0
    };
    let lo = (center - w as f64).ceil().max(0.0) as usize;
    let hi = ((center + w as f64).floor() as usize).min(m - 1);
    (lo, hi)
}

/// The window in steps for fraction `r` of series of `n` and `m` steps, widened where needed so
/// that every row's band is non-empty and touches the next row's (a path always exists).
fn window_steps(r: f64, n: usize, m: usize) -> usize {
    let least = if n == m || m == 1 {
        0
    } else if n == 1 {
        m - 1
    } else {
        // Columns the diagonal advances per row.
        let slope = (m - 1) as f64 / (n - 1) as f64;
        (slope.ceil() as usize).max(1)
    };
    ((r * n.max(m) as f64).round() as usize).max(least)
}

#[inline]
fn point_cost(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The DTW distance of `a` `[n, f]` and `b` `[m, f]` with band fraction `r`, or `f64::INFINITY`
/// as soon as it is certain to exceed `cutoff` (pass `f64::INFINITY` for the exact distance).
pub fn distance(a: &[f64], b: &[f64], f: usize, r: f64, cutoff: f64) -> f64 {
    bounded_distance(a, b, f, r, cutoff, None)
}

/// [`distance`], abandoning earlier with `tail[i]`: a lower bound of what rows `i + 1..n` of
/// `a` still add to any path (the suffix sums of LB_Keogh's per-step terms).
fn bounded_distance(
    a: &[f64],
    b: &[f64],
    f: usize,
    r: f64,
    cutoff: f64,
    tail: Option<&[f64]>,
) -> f64 {
    let (n, m) = (a.len() / f, b.len() / f);
    let w = window_steps(r, n, m);
    // Two rows of the cost matrix, with one extra leading cell standing for column -1.
    let mut prev = vec![f64::INFINITY; m + 1];
    let mut cur = vec![f64::INFINITY; m + 1];
    for i in 0..n {
        let (lo, hi) = band(i, n, m, w);
        // Column lo - 1 of this row. The bands' edges never move left from one row to the next,
        // so every other cell this row or the next reads was written in this row or is still
        // infinite from the start.
        cur[lo] = f64::INFINITY;
        if i == 0 {
            prev[lo] = 0.0; // the path's start: (0, 0) adds its cost to nothing
        }
        let row_min = if f == 1 {
            // The univariate case, the common one, without the feature loop.
            let ai = a[i];
            let mut row_min = f64::INFINITY;
            for j in lo..=hi {
                let d = ai - b[j];
                let v = d * d + prev[j + 1].min(prev[j]).min(cur[j]);
                cur[j + 1] = v;
                row_min = row_min.min(v);
            }
            row_min
        } else {
            let ai = &a[i * f..(i + 1) * f];
            let mut row_min = f64::INFINITY;
            for j in lo..=hi {
                let c = point_cost(ai, &b[j * f..(j + 1) * f]);
                // prev[j + 1] = (i-1, j), prev[j] = (i-1, j-1), cur[j] = (i, j-1).
                let v = c + prev[j + 1].min(prev[j]).min(cur[j]);
                cur[j + 1] = v;
                row_min = row_min.min(v);
            }
            row_min
        };
        if i == 0 {
            prev[lo] = f64::INFINITY;
        }
        if row_min + tail.map_or(0.0, |t| t[i]) > cutoff {
            return f64::INFINITY;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[m]
}

/// Lanes of [`distance_lanes`]: candidates compared with one query in one pass.
const LANES: usize = 4;

/// [`bounded_distance`] of one query `a` `[n, f]` against `LANES` candidates of the same length
/// at once. The recurrence is a chain of dependent additions and minima along each row; four
/// independent chains side by side keep the floating-point units busy (and vectorise) where one
/// chain would wait on each result. A lane is abandoned once its row minimum plus its `tails`
/// bound exceeds `cutoff`; the pass ends when every lane is.
fn distance_lanes(
    a: &[f64],
    b: [&[f64]; LANES],
    f: usize,
    r: f64,
    cutoff: f64,
    tails: [&[f64]; LANES],
) -> [f64; LANES] {
    let n = a.len() / f;
    let w = window_steps(r, n, n);
    let inf = [f64::INFINITY; LANES];
    let mut prev = vec![inf; n + 1];
    let mut cur = vec![inf; n + 1];
    let mut alive = [true; LANES];
    for i in 0..n {
        let (lo, hi) = band(i, n, n, w);
        cur[lo] = inf;
        if i == 0 {
            prev[lo] = [0.0; LANES];
        }
        let ai = &a[i * f..(i + 1) * f];
        let mut row_min = inf;
        for j in lo..=hi {
            let mut c = [0.0; LANES];
            for k in 0..f {
                for l in 0..LANES {
                    let d = ai[k] - b[l][j * f + k];
                    c[l] += d * d;
                }
            }
            let (up, diag, left) = (prev[j + 1], prev[j], cur[j]);
            let mut v = [0.0; LANES];
            for l in 0..LANES {
                v[l] = c[l] + up[l].min(diag[l]).min(left[l]);
                row_min[l] = row_min[l].min(v[l]);
            }
            cur[j + 1] = v;
        }
        if i == 0 {
            prev[lo] = inf;
        }
        for l in 0..LANES {
            alive[l] &= row_min[l] + tails[l][i] <= cutoff;
        }
        if !alive.iter().any(|&x| x) {
            return inf;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let mut out = prev[n];
    for l in 0..LANES {
        if !alive[l] {
            out[l] = f64::INFINITY;
        }
    }
    out
}

/// The plain DTW of the definition over the whole `n x m` matrix (cells off the band are
/// infinite): the reference [`distance`] is tested against.
pub fn reference_distance(a: &[f64], b: &[f64], f: usize, r: f64) -> f64 {
    let (n, m) = (a.len() / f, b.len() / f);
    let w = window_steps(r, n, m);
    let mut d = vec![vec![f64::INFINITY; m]; n];
    for i in 0..n {
        let (lo, hi) = band(i, n, m, w);
        for j in 0..m {
            if j < lo || j > hi {
                continue;
            }
            let c = point_cost(&a[i * f..(i + 1) * f], &b[j * f..(j + 1) * f]);
            let best = match (i, j) {
                (0, 0) => 0.0,
                (0, _) => d[0][j - 1],
                (_, 0) => d[i - 1][0],
                _ => d[i - 1][j].min(d[i - 1][j - 1]).min(d[i][j - 1]),
            };
            d[i][j] = c + best;
        }
    }
    d[n - 1][m - 1]
}

/// Upper and lower envelopes `[n, f]` of series `s` `[n, f]` under a window of `w` steps
/// (equal lengths): the bounds LB_Keogh compares a query against.
fn envelope(s: &[f64], f: usize, w: usize) -> (Vec<f64>, Vec<f64>) {
    let n = s.len() / f;
    let mut upper = vec![f64::NEG_INFINITY; n * f];
    let mut lower = vec![f64::INFINITY; n * f];
    for i in 0..n {
        let (lo, hi) = (i.saturating_sub(w), (i + w).min(n - 1));
        for j in lo..=hi {
            for k in 0..f {
                upper[i * f + k] = upper[i * f + k].max(s[j * f + k]);
                lower[i * f + k] = lower[i * f + k].min(s[j * f + k]);
            }
        }
    }
    (upper, lower)
}

/// LB_Keogh (Keogh & Ratanamahatana 2005): a lower bound of the DTW distance of `query` and a
/// series of the same length with envelopes `upper`/`lower`. Every warping path visits each query
/// step at a candidate step inside that step's window, which is at least this far away.
fn lb_keogh(query: &[f64], upper: &[f64], lower: &[f64]) -> f64 {
    query
        .iter()
        .zip(upper.iter().zip(lower))
        .map(|(&q, (&u, &l))| keogh_term(q, u, l))
        .sum()
}

#[inline]
fn keogh_term(q: f64, u: f64, l: f64) -> f64 {
    let d = if q > u {
        q - u
    } else if q < l {
        l - q
    } else {
        0.0
    };
    d * d
}

/// `tail[i]`: LB_Keogh's terms of query steps `i + 1..n`, for abandoning inside the distance.
fn keogh_tail(query: &[f64], f: usize, upper: &[f64], lower: &[f64]) -> Vec<f64> {
    let n = query.len() / f;
    let mut tail = vec![0.0; n];
    let mut acc = 0.0;
    for i in (0..n).rev() {
        tail[i] = acc;
        for k in i * f..(i + 1) * f {
            acc += keogh_term(query[k], upper[k], lower[k]);
        }
    }
    tail
}

/// The reference set prepared for one window: its envelopes where the lower bound applies.
struct Indexed<'a, 'b> {
    refs: &'b SeriesSet<'a>,
    r: f64,
    /// Per reference series: (upper, lower) envelopes under the window its length gives.
    envelopes: Vec<(Vec<f64>, Vec<f64>)>,
}

impl<'a, 'b> Indexed<'a, 'b> {
    fn new(refs: &'b SeriesSet<'a>, r: f64) -> Self {
        let envelopes = threads::install(|| {
            (0..refs.len())
                .into_par_iter()
                .map(|j| {
                    let len = refs.lens[j];
                    envelope(refs.series(j), refs.f, window_steps(r, len, len))
                })
                .collect()
        });
        Indexed { refs, r, envelopes }
    }

    /// The nearest reference to `query` (skipping `skip`, for leave-one-out), trying `start`
    /// first when given: `(index, distance)`. Candidates of the query's length are visited in
    /// order of their lower bound, and the search stops once that bound exceeds the best
    /// distance; the others are visited after, each abandoned once it exceeds the best.
    /// `floor[j]`, when given, is a lower bound of the distance to reference `j` (the
    /// unconstrained distance, for leave-one-out); it prunes like LB_Keogh does.
    fn nearest(
        &self,
        query: &[f64],
        skip: Option<usize>,
        start: Option<usize>,
        floor: Option<&[f64]>,
    ) -> (usize, f64) {
        let refs = self.refs;
        let f = refs.f;
        let n = query.len() / f;
        let mut best = (usize::MAX, f64::INFINITY);
        let visit = |j: usize, best: &mut (usize, f64)| {
            let d = distance(query, refs.series(j), f, self.r, best.1);
            // Ties keep the lowest index, so the answer does not depend on the search order.
            if d < best.1 || (d == best.1 && j < best.0) {
                *best = (j, d);
            }
        };
        if let Some(s) = start.filter(|&s| Some(s) != skip) {
            visit(s, &mut best);
        }
        let others = (0..refs.len()).filter(|&j| Some(j) != skip && Some(j) != start);
        let (same, other): (Vec<usize>, Vec<usize>) = others.partition(|&j| refs.lens[j] == n);
        let floor_of = |j: usize| floor.map_or(0.0, |fl| fl[j]);
        let mut bounded: Vec<(f64, usize)> = same
            .into_iter()
            .map(|j| {
                let (u, l) = &self.envelopes[j];
                (lb_keogh(query, u, l).max(floor_of(j)), j)
            })
            .collect();
        bounded.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        // Candidates in order of their bound, LANES at a time: a group is taken while its first
        // bound does not exceed the best distance, and members whose bound does are skipped.
        let mut next = 0;
        while next < bounded.len() && bounded[next].0 <= best.1 {
            let group: Vec<usize> = bounded[next..]
                .iter()
                .take(LANES)
                .filter(|(lb, _)| *lb <= best.1)
                .map(|&(_, j)| j)
                .collect();
            next += LANES.min(bounded.len() - next);
            let tails: Vec<Vec<f64>> = group
                .iter()
                .map(|&j| keogh_tail(query, f, &self.envelopes[j].0, &self.envelopes[j].1))
                .collect();
            let d: Vec<f64> = if group.len() == LANES {
                let b = [0, 1, 2, 3].map(|l| refs.series(group[l]));
                let t = [0, 1, 2, 3].map(|l| tails[l].as_slice());
                distance_lanes(query, b, f, self.r, best.1, t).to_vec()
            } else {
                group
                    .iter()
                    .zip(&tails)
                    .map(|(&j, t)| {
                        bounded_distance(query, refs.series(j), f, self.r, best.1, Some(t))
                    })
                    .collect()
            };
            for (&j, d) in group.iter().zip(d) {
                if d < best.1 || (d == best.1 && j < best.0) {
                    best = (j, d);
                }
            }
        }
        let mut other: Vec<(f64, usize)> = other.into_iter().map(|j| (floor_of(j), j)).collect();
        other.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (bound, j) in other {
            if bound > best.1 {
                break;
            }
            visit(j, &mut best);
        }
        best
    }
}

/// Cells of the unconstrained all-pairs pass above which leave-one-out does without it: its
/// cost would then outweigh the pruning it buys.
const FLOOR_CELLS: f64 = 4e10;

/// The unconstrained DTW distance of every pair of `set` (`[n, n]`, symmetric), or `None` when
/// that pass would cost more than [`FLOOR_CELLS`]. A wider band admits more warping paths, so
/// these bound every window's distances from below: one pass prunes every window's search.
fn unconstrained_pairs(set: &SeriesSet<'_>) -> Option<Vec<f64>> {
    let n = set.len();
    let cells: f64 = (0..n)
        .map(|i| {
            ((i + 1)..n)
                .map(|j| (set.lens[i] * set.lens[j]) as f64)
                .sum::<f64>()
        })
        .sum();
    // Skipped (not an error) when the [n, n] matrix would pass the memory ceiling: it only
    // speeds the search up.
    if cells > FLOOR_CELLS || memory::check_elems::<f64>("dtw pairs", n * n).is_err() {
        return None;
    }
    let f = set.f;
    let rows: Vec<Vec<(usize, f64)>> = threads::install(|| {
        (0..n)
            .into_par_iter()
            .map(|i| {
                let a = set.series(i);
                let zero = vec![0.0; set.lens[i]];
                let (same, other): (Vec<usize>, Vec<usize>) =
                    ((i + 1)..n).partition(|&j| set.lens[j] == set.lens[i]);
                let mut out = Vec::with_capacity(n - i - 1);
                for group in same.chunks(LANES) {
                    if group.len() == LANES {
                        let b = [0, 1, 2, 3].map(|l| set.series(group[l]));
                        let t = [0, 1, 2, 3].map(|_| zero.as_slice());
                        let d = distance_lanes(a, b, f, 1.0, f64::INFINITY, t);
                        out.extend(group.iter().copied().zip(d));
                    } else {
                        out.extend(
                            group
                                .iter()
                                .map(|&j| (j, distance(a, set.series(j), f, 1.0, f64::INFINITY))),
                        );
                    }
                }
                out.extend(
                    other
                        .iter()
                        .map(|&j| (j, distance(a, set.series(j), f, 1.0, f64::INFINITY))),
                );
                out
            })
            .collect()
    });
    let mut full = vec![0.0; n * n];
    for (i, row) in rows.into_iter().enumerate() {
        for (j, d) in row {
            full[i * n + j] = d;
            full[j * n + i] = d;
        }
    }
    Some(full)
}

fn check_fraction(r: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&r) {
        return Err(Error::Value {
            arg: "window",
            expected: "a fraction of the series length in [0, 1]".into(),
            got: format!("{r}"),
        });
    }
    Ok(())
}

/// Leave-one-out accuracy of 1-NN DTW on `train` for each band fraction of `windows` (which
/// should be increasing: each window's search starts at the previous window's neighbour).
pub fn leave_one_out(train: &SeriesSet<'_>, labels: &[i64], windows: &[f64]) -> Result<Vec<f64>> {
    if labels.len() != train.len() {
        return Err(Error::Shape {
            arg: "labels",
            expected: format!("[{}]", train.len()),
            got: format!("[{}]", labels.len()),
        });
    }
    if train.len() < 2 {
        return Err(Error::Value {
            arg: "train",
            expected: "at least 2 series for leave-one-out".into(),
            got: format!("{}", train.len()),
        });
    }
    for &r in windows {
        check_fraction(r)?;
    }
    let n = train.len();
    let full = unconstrained_pairs(train);
    let mut hints: Vec<Option<usize>> = vec![None; n];
    let mut out = Vec::with_capacity(windows.len());
    for &r in windows {
        let index = Indexed::new(train, r);
        let found: Vec<usize> = threads::install(|| {
            (0..n)
                .into_par_iter()
                .map(|i| {
                    let floor = full.as_ref().map(|m| &m[i * n..(i + 1) * n]);
                    index.nearest(train.series(i), Some(i), hints[i], floor).0
                })
                .collect()
        });
        let correct = (0..n).filter(|&i| labels[found[i]] == labels[i]).count();
        out.push(correct as f64 / n as f64);
        hints = found.into_iter().map(Some).collect();
    }
    Ok(out)
}

/// The label of each `query` series' nearest `train` series under band fraction `r`.
pub fn classify(
    train: &SeriesSet<'_>,
    labels: &[i64],
    queries: &SeriesSet<'_>,
    r: f64,
) -> Result<Vec<i64>> {
    check_fraction(r)?;
    if labels.len() != train.len() || train.is_empty() {
        return Err(Error::Shape {
            arg: "labels",
            expected: format!("[{}] with at least one series", train.len()),
            got: format!("[{}]", labels.len()),
        });
    }
    if queries.f != train.f {
        return Err(Error::Shape {
            arg: "queries",
            expected: format!("{} features per step, as the training series", train.f),
            got: format!("{}", queries.f),
        });
    }
    let index = Indexed::new(train, r);
    Ok(threads::install(|| {
        (0..queries.len())
            .into_par_iter()
            .map(|i| labels[index.nearest(queries.series(i), None, None, None).0])
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_series(rng: &mut ChaCha8Rng, len: usize, f: usize) -> Vec<f64> {
        (0..len * f)
            .map(|_| (rng.next_u32() as f64 / u32::MAX as f64) * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn fast_distance_equals_the_reference() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for &(n, m, f) in &[
            (1, 1, 1),
            (1, 5, 2),
            (7, 7, 1),
            (9, 23, 3),
            (40, 17, 1),
            (31, 32, 2),
        ] {
            let a = random_series(&mut rng, n, f);
            let b = random_series(&mut rng, m, f);
            for &r in &[0.0, 0.05, 0.1, 0.3, 1.0] {
                let fast = distance(&a, &b, f, r, f64::INFINITY);
                let slow = reference_distance(&a, &b, f, r);
                assert!(
                    (fast - slow).abs() <= 1e-12 * slow.max(1.0),
                    "n={n} m={m} f={f} r={r}: {fast} vs {slow}"
                );
                assert!(fast.is_finite());
            }
        }
    }

    #[test]
    fn window_zero_on_equal_lengths_is_the_squared_euclidean_distance() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let a = random_series(&mut rng, 50, 2);
        let b = random_series(&mut rng, 50, 2);
        let euclid: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((distance(&a, &b, 2, 0.0, f64::INFINITY) - euclid).abs() < 1e-12);
    }

    #[test]
    fn warping_aligns_a_shifted_copy() {
        // A bump shifted by 3 steps: the Euclidean distance is large, DTW with a window of at
        // least 3 steps matches it exactly, a narrower one cannot.
        let bump = |c: f64| {
            (0..40)
                .map(|i| (-(i as f64 - c).powi(2) / 4.0).exp())
                .collect()
        };
        let a: Vec<f64> = bump(15.0);
        let b: Vec<f64> = bump(18.0);
        assert!(distance(&a, &b, 1, 0.0, f64::INFINITY) > 1.0);
        assert!(distance(&a, &b, 1, 3.0 / 40.0, f64::INFINITY) < 1e-3);
        assert!(distance(&a, &b, 1, 1.0 / 40.0, f64::INFINITY) > 0.1);
    }

    #[test]
    fn distance_is_symmetric_and_abandons_only_above_the_cutoff() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let a = random_series(&mut rng, 30, 1);
        let b = random_series(&mut rng, 30, 1);
        let d = distance(&a, &b, 1, 0.2, f64::INFINITY);
        assert!((d - distance(&b, &a, 1, 0.2, f64::INFINITY)).abs() < 1e-12);
        assert_eq!(distance(&a, &b, 1, 0.2, d * 1.0001), d);
        assert_eq!(distance(&a, &b, 1, 0.2, d * 0.5), f64::INFINITY);
    }

    fn two_class_set(rng: &mut ChaCha8Rng) -> (Vec<f64>, Vec<usize>, Vec<i64>) {
        // Class 0: a rising ramp, class 1: a falling one, with noise and different lengths.
        let (n, t) = (12, 30);
        let mut values = vec![0.0; n * t];
        let mut lens = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let len = 20 + i % 10;
            let class = (i % 2) as i64;
            for s in 0..len {
                let ramp = s as f64 / len as f64;
                let noise = (rng.next_u32() as f64 / u32::MAX as f64 - 0.5) * 0.2;
                values[i * t + s] = if class == 0 { ramp } else { 1.0 - ramp } + noise;
            }
            lens.push(len);
            labels.push(class);
        }
        (values, lens, labels)
    }

    #[test]
    fn nearest_neighbour_separates_two_shapes() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (values, lens, labels) = two_class_set(&mut rng);
        let set = SeriesSet::new("train", &values, &lens, 30, 1).unwrap();
        let acc = leave_one_out(&set, &labels, &[0.0, 0.1, 0.5]).unwrap();
        assert_eq!(acc, vec![1.0, 1.0, 1.0]);
        let pred = classify(&set, &labels, &set, 0.1).unwrap();
        assert_eq!(pred, labels);
    }

    #[test]
    fn leave_one_out_matches_a_brute_force_search() {
        // Unequal lengths (no lower bound) and equal ones (LB_Keogh ordering and pruning).
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (n, t, f) = (15, 25, 2);
        let values = random_series(&mut rng, n * t, f);
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
        let unequal: Vec<usize> = (0..n).map(|i| 10 + (i * 7) % 16).collect();
        for lens in [unequal, vec![t; n]] {
            let set = SeriesSet::new("train", &values, &lens, t, f).unwrap();
            let windows = [0.0, 0.1, 0.2, 1.0];
            let fast = leave_one_out(&set, &labels, &windows).unwrap();
            for (k, &r) in windows.iter().enumerate() {
                let mut correct = 0;
                for i in 0..n {
                    let mut best = (usize::MAX, f64::INFINITY);
                    for j in (0..n).filter(|&j| j != i) {
                        let d = reference_distance(set.series(i), set.series(j), f, r);
                        if d < best.1 {
                            best = (j, d);
                        }
                    }
                    correct += usize::from(labels[best.0] == labels[i]);
                }
                assert_eq!(fast[k], correct as f64 / n as f64, "window {r}");
                assert_eq!(classify(&set, &labels, &set, r).unwrap().len(), n);
            }
        }
    }

    #[test]
    fn lanes_equal_the_single_distance() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        for &(n, f) in &[(1, 1), (12, 1), (33, 2)] {
            for &r in &[0.0, 0.1, 1.0] {
                let a = random_series(&mut rng, n, f);
                let bs: Vec<Vec<f64>> = (0..LANES).map(|_| random_series(&mut rng, n, f)).collect();
                let zero = vec![0.0; n];
                let d = distance_lanes(
                    &a,
                    [0, 1, 2, 3].map(|l| bs[l].as_slice()),
                    f,
                    r,
                    f64::INFINITY,
                    [0, 1, 2, 3].map(|_| zero.as_slice()),
                );
                for l in 0..LANES {
                    let want = reference_distance(&a, &bs[l], f, r);
                    assert!(
                        (d[l] - want).abs() <= 1e-12 * want.max(1.0),
                        "{n} {f} {r} {l}"
                    );
                }
                // A cutoff below every distance abandons every lane.
                let low = d.iter().cloned().fold(f64::INFINITY, f64::min) * 0.5;
                let cut = distance_lanes(
                    &a,
                    [0, 1, 2, 3].map(|l| bs[l].as_slice()),
                    f,
                    r,
                    low,
                    [0, 1, 2, 3].map(|_| zero.as_slice()),
                );
                if low > 0.0 {
                    assert!(cut.iter().all(|x| x.is_infinite()));
                }
            }
        }
    }

    #[test]
    fn lb_keogh_never_exceeds_the_distance() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for &(n, f) in &[(1, 1), (9, 1), (40, 2), (64, 3)] {
            for &r in &[0.0, 0.05, 0.2, 1.0] {
                let a = random_series(&mut rng, n, f);
                let b = random_series(&mut rng, n, f);
                let (u, l) = envelope(&b, f, window_steps(r, n, n));
                let lb = lb_keogh(&a, &u, &l);
                let d = reference_distance(&a, &b, f, r);
                assert!(lb <= d + 1e-12, "n={n} f={f} r={r}: {lb} > {d}");
            }
        }
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let v = vec![0.0; 6];
        assert!(matches!(
            SeriesSet::new("train", &v, &[3, 4], 3, 1),
            Err(Error::Value { .. })
        ));
        assert!(matches!(
            SeriesSet::new("train", &v, &[3], 3, 1),
            Err(Error::Shape { .. })
        ));
        let nan = [f64::NAN, 0.0];
        assert!(SeriesSet::new("train", &nan, &[2], 2, 1).is_err());
        let set = SeriesSet::new("train", &v, &[3, 3], 3, 1).unwrap();
        assert!(leave_one_out(&set, &[0, 1], &[1.5]).is_err());
        assert!(classify(&set, &[0], &set, 0.1).is_err());
    }
}
