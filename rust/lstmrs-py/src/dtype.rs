//! The one dtype dispatch of the bindings: a Python object holds its core value for one element
//! type in a [`Typed`], and a method written once for `T: Float` reaches it through
//! [`Float::of`]; [`by_dtype!`] picks `T` from a runtime [`DType`].

use crate::errors::{error, Kind};
use lstmrs_core::{DType, Scalar};
use numpy::Element;
use pyo3::prelude::*;

/// A generic core type, named without its element type (`Model<T>`, `RnnParams<T>`, ...).
pub(crate) trait Family {
    type Of<T: Float>;
}

/// A core value of one of the two element types.
pub(crate) enum Typed<K: Family> {
    F32(K::Of<f32>),
    F64(K::Of<f64>),
}

/// The two element types, tied to their variants of [`Typed`].
pub(crate) trait Float: Scalar + Element + bytemuck::Pod {
    /// NumPy's name, "float32" or "float64".
    const NAME: &'static str;
    fn of<K: Family>(v: &Typed<K>) -> Option<&K::Of<Self>>;
    fn of_mut<K: Family>(v: &mut Typed<K>) -> Option<&mut K::Of<Self>>;
    fn typed<K: Family>(v: K::Of<Self>) -> Typed<K>;
}

macro_rules! float_impl {
    ($t:ty, $v:ident) => {
        impl Float for $t {
            const NAME: &'static str = <$t as Scalar>::DTYPE.name();
            fn of<K: Family>(v: &Typed<K>) -> Option<&K::Of<$t>> {
                match v {
                    Typed::$v(x) => Some(x),
                    _ => None,
                }
            }
            fn of_mut<K: Family>(v: &mut Typed<K>) -> Option<&mut K::Of<$t>> {
                match v {
                    Typed::$v(x) => Some(x),
                    _ => None,
                }
            }
            fn typed<K: Family>(v: K::Of<$t>) -> Typed<K> {
                Typed::$v(v)
            }
        }
    };
}
float_impl!(f32, F32);
float_impl!(f64, F64);

impl<K: Family> Typed<K> {
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Typed::F32(_) => DType::F32,
            Typed::F64(_) => DType::F64,
        }
    }
}

/// Calls `$body` with `$T` bound to the element type of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            lstmrs_core::DType::F32 => {
                type $T = f32;
                $body
            }
            lstmrs_core::DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}
pub(crate) use by_dtype;

/// A `Typed` value asked for with the other element type: a bug of the bindings, not the caller's.
pub(crate) const MISMATCH: &str = "internal error in lstmrs (please report it): dtype mismatch";

/// The dtype argument of a constructor ("float32", "float64" or NumPy's short names).
pub(crate) fn parse_dtype(py: Python<'_>, dtype: &str) -> PyResult<DType> {
    DType::from_name(dtype).ok_or_else(|| {
        error(
            py,
            Kind::DType,
            format!("dtype: expected 'float32' or 'float64', got {dtype:?}"),
        )
    })
}
