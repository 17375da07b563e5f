//! The 1-nearest-neighbour DTW baseline (`lstmrs-core`'s `dtw`): conversion only. Both calls
//! release the GIL while the core searches.

use crate::errors::{guarded, lift};
use lstmrs_core::dtw::{self, SeriesSet};
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::prelude::*;

fn lengths(lens: &PyReadonlyArray1<'_, i64>) -> Vec<usize> {
    // Negative lengths become 0, which the core rejects with a typed error.
    lens.as_array().iter().map(|&l| l.max(0) as usize).collect()
}

/// Leave-one-out accuracy of 1-NN DTW on `x` `[N, T, F]` (valid steps `lens`, classes
/// `labels`) for each Sakoe-Chiba band fraction in `windows`.
#[pyfunction]
pub(crate) fn dtw_leave_one_out(
    py: Python<'_>,
    x: PyReadonlyArray3<'_, f64>,
    lens: PyReadonlyArray1<'_, i64>,
    labels: PyReadonlyArray1<'_, i64>,
    windows: Vec<f64>,
) -> PyResult<Vec<f64>> {
    let (t, f) = (x.shape()[1], x.shape()[2]);
    let (lens, values, labels) = (lengths(&lens), x.as_slice()?, labels.as_slice()?);
    let r = py.detach(|| {
        guarded(|| {
            let set = SeriesSet::new("x", values, &lens, t, f)?;
            dtw::leave_one_out(&set, labels, &windows)
        })
    });
    lift(py, r)
}

/// The label of each query's nearest training series under band fraction `window`.
#[pyfunction]
pub(crate) fn dtw_classify<'py>(
    py: Python<'py>,
    x: PyReadonlyArray3<'py, f64>,
    lens: PyReadonlyArray1<'py, i64>,
    labels: PyReadonlyArray1<'py, i64>,
    queries: PyReadonlyArray3<'py, f64>,
    query_lens: PyReadonlyArray1<'py, i64>,
    window: f64,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (t, f) = (x.shape()[1], x.shape()[2]);
    let (qt, qf) = (queries.shape()[1], queries.shape()[2]);
    let (lens, qlens) = (lengths(&lens), lengths(&query_lens));
    let (values, labels, qvalues) = (x.as_slice()?, labels.as_slice()?, queries.as_slice()?);
    let r = py.detach(|| {
        guarded(|| {
            let train = SeriesSet::new("x", values, &lens, t, f)?;
            let queries = SeriesSet::new("queries", qvalues, &qlens, qt, qf)?;
            dtw::classify(&train, labels, &queries, window)
        })
    });
    Ok(PyArray1::from_vec(py, lift(py, r)?))
}
