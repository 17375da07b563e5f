//! The one error type of the core. Every fallible public function returns it; the Python bindings
//! map each variant to a typed exception, so nothing here may panic on user input.

/// What went wrong, with the argument's name and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An array has the wrong number of elements for the shape its argument must have.
    #[error("{arg}: expected shape {expected}, got {got}")]
    Shape {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// A scalar argument is outside its allowed range.
    #[error("{arg}: expected {expected}, got {got}")]
    Value {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// An unknown name (parameter, cell kind, ...).
    #[error("{arg}: unknown name {got:?}; expected one of {expected}")]
    Name {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// A size that would need more memory than the ceiling allows (see [`crate::memory`]).
    #[error(
        "{arg}: needs {bytes} bytes, above the memory limit of {limit} bytes \
         (lstmrs.set_memory_limit or LSTMRS_MEMORY_LIMIT raise it)"
    )]
    Memory {
        arg: &'static str,
        bytes: String,
        limit: u64,
    },
    /// The GPU backend cannot run this call; `failure` says why in a word, `detail` in full.
    #[error("GPU backend: {}: {detail}", failure.reason())]
    Gpu { failure: GpuFailure, detail: String },
}

/// Why a call asked of the GPU backend cannot run there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuFailure {
    /// The crate was built without the `gpu` feature.
    NotBuilt,
    /// No Vulkan adapter (no driver or no device).
    NoAdapter,
    /// The adapter's limits are below what the kernels, or this call's sizes, need.
    LimitsTooSmall,
    /// The call asks for something the GPU path does not implement (f64, custom cells).
    Unsupported,
    /// The device failed while running (lost, out of memory, a driver error).
    Device,
}

impl GpuFailure {
    /// The short reason shown in messages.
    pub fn reason(self) -> &'static str {
        match self {
            GpuFailure::NotBuilt => "feature not built",
            GpuFailure::NoAdapter => "no adapter",
            GpuFailure::LimitsTooSmall => "limits too small",
            GpuFailure::Unsupported => "not supported on the GPU",
            GpuFailure::Device => "device error",
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Checks that `slice` holds exactly the elements of `shape`.
pub(crate) fn check_len(arg: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let want: usize = shape.iter().product();
    if len == want {
        Ok(())
    } else {
        Err(Error::Shape {
            arg,
            expected: format!("{shape:?} ({want} elements)"),
            got: format!("{len} elements"),
        })
    }
}
