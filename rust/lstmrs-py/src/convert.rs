//! NumPy arrays in and out: borrowed read-only views of exactly the expected element type and
//! layout, shapes checked with messages in NumPy's notation, results moved into new arrays.

use crate::dtype::Float;
use crate::errors::{error, Kind};
use numpy::{
    PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

/// `(2, 3)` / `(5,)`: NumPy's way of writing a shape, so messages match what Python shows.
pub(crate) fn shape_str(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub(crate) fn check_shape(
    py: Python<'_>,
    arg: &str,
    got: &[usize],
    want: &[usize],
) -> PyResult<()> {
    if got == want {
        Ok(())
    } else {
        Err(error(
            py,
            Kind::Shape,
            format!(
                "{arg}: expected shape {}, got {}",
                shape_str(want),
                shape_str(got)
            ),
        ))
    }
}

/// `obj`, when given, as [`readonly`] with exactly the shape `want`.
pub(crate) fn optional_readonly<'py, T: Float>(
    arg: &str,
    obj: Option<&Bound<'py, PyAny>>,
    want: &[usize],
) -> PyResult<Option<PyReadonlyArrayDyn<'py, T>>> {
    let Some(obj) = obj else { return Ok(None) };
    let a = readonly::<T>(arg, obj)?;
    check_shape(obj.py(), arg, a.shape(), want)?;
    Ok(Some(a))
}

/// Refuses a tape that network `id` did not record (`owner`: the recorder's id).
pub(crate) fn check_tape_owner(py: Python<'_>, owner: u64, id: u64) -> PyResult<()> {
    if owner == id {
        return Ok(());
    }
    Err(error(
        py,
        Kind::InvalidArgument,
        "tape: expected a tape recorded by this network, got one from another network",
    ))
}

/// A C-contiguous NumPy array of exactly `T`, borrowed read-only.
pub(crate) fn readonly<'py, T: Float>(
    arg: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let py = obj.py();
    let arr = match obj.cast::<PyArrayDyn<T>>() {
        Ok(a) => a,
        Err(_) => {
            let got = match obj.cast::<PyUntypedArray>() {
                Ok(a) => format!("an array of {}", a.dtype()),
                Err(_) => format!("{}", obj.get_type().name()?),
            };
            return Err(error(
                py,
                Kind::DType,
                format!("{arg}: expected a numpy.ndarray of {}, got {got}", T::NAME),
            ));
        }
    };
    if !arr.is_c_contiguous() {
        return Err(error(
            py,
            Kind::InvalidArgument,
            format!("{arg}: expected a C-contiguous array, got a non-contiguous one"),
        ));
    }
    arr.try_readonly().map_err(|e| {
        error(
            py,
            Kind::InvalidArgument,
            format!("{arg}: the array cannot be borrowed ({e})"),
        )
    })
}

pub(crate) fn slice<'a, T: Float>(
    arg: &str,
    a: &'a PyReadonlyArrayDyn<'_, T>,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|e| {
        error(
            a.py(),
            Kind::InvalidArgument,
            format!("{arg}: expected a C-contiguous array ({e})"),
        )
    })
}

/// A new array owning `data` (no copy) with the given shape.
pub(crate) fn to_array<'py, T: Float>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, data)
        .reshape(shape.to_vec())?
        .into_any())
}

/// `lengths` as sizes: a 1-D int64 array of `batch` values, each in `1..=seq_len`.
pub(crate) fn read_lengths(
    obj: &Bound<'_, PyAny>,
    batch: usize,
    seq_len: usize,
) -> PyResult<Vec<usize>> {
    let py = obj.py();
    let arr = match obj.cast::<PyArrayDyn<i64>>() {
        Ok(a) => a,
        Err(_) => {
            return Err(error(
                py,
                Kind::InvalidArgument,
                "lengths: expected a numpy.ndarray of int64",
            ))
        }
    };
    let ro = arr.try_readonly().map_err(|e| {
        error(
            py,
            Kind::InvalidArgument,
            format!("lengths: the array cannot be borrowed ({e})"),
        )
    })?;
    if ro.shape() != [batch] {
        return Err(error(
            py,
            Kind::InvalidArgument,
            format!(
                "lengths: expected shape ({batch},) (one length per sequence), got {}",
                shape_str(ro.shape())
            ),
        ));
    }
    ro.as_array()
        .iter()
        .map(|&v| {
            if v >= 1 && (v as u64) <= seq_len as u64 {
                Ok(v as usize)
            } else {
                Err(error(
                    py,
                    Kind::InvalidArgument,
                    format!("lengths: expected every length in 1..={seq_len}, got {v}"),
                ))
            }
        })
        .collect()
}
