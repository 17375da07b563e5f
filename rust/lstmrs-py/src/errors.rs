//! Core errors and binding-level checks as Python exceptions.
//!
//! The exception classes live in `lstmrs.errors` (Python) so there is one exception tree; they are
//! looked up when an error is raised. If that module cannot be imported (the extension used on its
//! own) the matching builtin is raised instead, so an error is never lost.

use lstmrs_core::error::GpuFailure;
use lstmrs_core::Error;
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The classes of `lstmrs.errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Shape,
    DType,
    InvalidArgument,
    /// A size above the memory ceiling (`MemoryLimitError`, a `MemoryError`).
    MemoryLimit,
    /// A GPU was asked for and cannot be used (`GpuUnavailableError`).
    GpuUnavailable,
    /// `LstmrsError` itself: failures that are not the caller's fault.
    Internal,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Kind::Shape => "ShapeError",
            Kind::DType => "DTypeError",
            Kind::InvalidArgument => "InvalidArgumentError",
            Kind::MemoryLimit => "MemoryLimitError",
            Kind::GpuUnavailable => "GpuUnavailableError",
            Kind::Internal => "LstmrsError",
        }
    }
}

/// A Python exception of `kind` carrying `msg`.
pub(crate) fn error(py: Python<'_>, kind: Kind, msg: impl Into<String>) -> PyErr {
    let msg = msg.into();
    let class = PyModule::import(py, "lstmrs.errors").and_then(|m| m.getattr(kind.class_name()));
    match class.and_then(|c| c.call1((msg.clone(),))) {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => match kind {
            Kind::Shape | Kind::InvalidArgument => PyValueError::new_err(msg),
            Kind::DType => PyTypeError::new_err(msg),
            Kind::MemoryLimit => PyMemoryError::new_err(msg),
            Kind::GpuUnavailable | Kind::Internal => PyRuntimeError::new_err(msg),
        },
    }
}

/// Maps a core error to its exception: shape errors to `ShapeError`, bad values and unknown names
/// to `InvalidArgumentError`, a GPU that cannot run the call to `GpuUnavailableError` (a request
/// the GPU path does not implement, such as f64, is an invalid argument).
pub(crate) fn core_error(py: Python<'_>, e: Error) -> PyErr {
    let kind = match e {
        Error::Shape { .. } => Kind::Shape,
        Error::Value { .. } | Error::Name { .. } => Kind::InvalidArgument,
        Error::Memory { .. } => Kind::MemoryLimit,
        Error::Gpu {
            failure: GpuFailure::Unsupported,
            ..
        } => Kind::InvalidArgument,
        Error::Gpu { .. } => Kind::GpuUnavailable,
    };
    error(py, kind, e.to_string())
}

/// Runs `f`, turning a panic into an error message instead of unwinding into Python (where PyO3
/// would raise `PanicException`, a `BaseException` that `except Exception` does not catch).
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in lstmrs (please report it): {detail}")
}

/// The result of a guarded core call as a Python result.
pub(crate) fn lift<R>(py: Python<'_>, r: Result<Result<R, Error>, String>) -> PyResult<R> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(core_error(py, e)),
        Err(msg) => Err(error(py, Kind::Internal, msg)),
    }
}
