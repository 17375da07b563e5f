//! The element types the core computes in: f32 (fast paths) and f64 (gradient checks, science).

use num_traits::Float;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

/// Which floating-point type a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
}

impl DType {
    /// NumPy's name of the type: "float32" or "float64".
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// The type NumPy names `name` ("float32", "f32", "f4"; "float64", "f64", "f8").
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "float32" | "f32" | "f4" => Some(DType::F32),
            "float64" | "f64" | "f8" => Some(DType::F64),
            _ => None,
        }
    }
}

/// What a buffer element must be to be copied to a GPU: plain bytes (`bytemuck::Pod`) when the
/// `gpu` feature is built, nothing otherwise. As a supertrait of [`Scalar`] it lets generic code
/// (the model) hand any `T: Scalar` to the GPU backend.
#[cfg(feature = "gpu")]
pub trait DeviceElement: bytemuck::Pod {}
#[cfg(feature = "gpu")]
impl<T: bytemuck::Pod> DeviceElement for T {}
#[cfg(not(feature = "gpu"))]
pub trait DeviceElement {}
#[cfg(not(feature = "gpu"))]
impl<T> DeviceElement for T {}

/// A floating-point element type with the activations the cells need.
///
/// `sigmoid` and `tanh` are the scalar forms; the fused gate kernels call them inside loops that the
/// compiler vectorises, so they must be branch-free (see `activations`).
pub trait Scalar:
    Float
    + Debug
    + Default
    + Send
    + Sync
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DeviceElement
    + 'static
{
    const DTYPE: DType;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sigmoid(self) -> Self;
    fn tanh_act(self) -> Self;
    /// `e^x` for the cell kernels: branch-free (vectorisable) for f32, saturating at `e^88`.
    #[inline(always)]
    fn exp_act(self) -> Self {
        self.exp()
    }
}

impl Scalar for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        crate::activations::sigmoid_f32(self)
    }
    #[inline(always)]
    fn tanh_act(self) -> Self {
        crate::activations::tanh_f32(self)
    }
    #[inline(always)]
    fn exp_act(self) -> Self {
        crate::activations::exp_f32(self)
    }
}

impl Scalar for f64 {
    const DTYPE: DType = DType::F64;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        // f64 serves accuracy (gradient checks), so it uses the libm functions.
        1.0 / (1.0 + (-self).exp())
    }
    #[inline(always)]
    fn tanh_act(self) -> Self {
        self.tanh()
    }
}
