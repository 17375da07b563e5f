//! Optimizers, gradient clipping and learning-rate schedules with PyTorch's update rules.
//!
//! An optimizer updates one flat parameter buffer from one flat gradient buffer of the same
//! length (the layout of [`crate::RnnParams`]); its state (momentum, moment estimates, ...) lives
//! in flat buffers of that length inside it. Each step is one fused pass over all buffers with no
//! allocation; buffers of at least [`PAR_MIN_LEN`] elements are split over the core's thread pool.
//! Element-wise updates give the same bits whatever the split, so results never depend on the
//! thread count.
//!
//! The learning rate is an argument of every step, so any schedule (see [`schedule`]) drives it.
//! State exports to named `f64` buffers plus the step counter ([`OptimizerState`]) for
//! checkpoints; f32 values survive the round trip through f64 exactly.

mod adagrad;
mod adam;
pub mod clip;
mod par;
mod rmsprop;
pub mod schedule;
mod sgd;

pub use adagrad::{Adagrad, AdagradConfig};
pub use adam::{Adam, AdamConfig};
pub use clip::{clip_grad_norm, clip_grad_value, clip_grads_with_norm, grad_norm};
pub use par::PAR_MIN_LEN;
pub use rmsprop::{RmsProp, RmsPropConfig};
pub use schedule::{
    CosineWarmup, ExponentialLr, LrSchedule, PlateauConfig, PlateauMode, ReduceLrOnPlateau,
    SchedulerState, StepLr, ThresholdMode,
};
pub use sgd::{Sgd, SgdConfig};

use crate::error::{check_len, Error, Result};
use crate::scalar::Scalar;

/// A checkpointable snapshot of an optimizer: its kind, the number of steps taken and its state
/// buffers by PyTorch's state names (`exp_avg`, `momentum_buffer`, ...), each as long as the
/// parameter buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// [`Optimizer::name`] of the optimizer that wrote it.
    pub kind: String,
    /// Steps taken so far (PyTorch's `state["step"]`).
    pub step: u64,
    pub buffers: Vec<(String, Vec<f64>)>,
}

/// An optimizer over one flat parameter buffer.
pub trait Optimizer<T: Scalar>: Send {
    /// Lower-case kind: `sgd`, `adam`, `adamw`, `rmsprop`, `adagrad`.
    fn name(&self) -> &'static str;
    /// The number of parameters it was built for.
    fn len(&self) -> usize;
    /// Whether it was built for an empty buffer.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Steps taken so far.
    fn steps(&self) -> u64;
    /// Applies one update to `params` from `grads` at learning rate `lr`.
    fn step(&mut self, params: &mut [T], grads: &[T], lr: f64) -> Result<()>;
    /// The hyper-parameters it was built with, by PyTorch's argument names (flags as 0 or 1).
    fn hyper_params(&self) -> Vec<(&'static str, f64)>;
    /// A copy of its state for a checkpoint.
    fn state(&self) -> OptimizerState;
    /// Replaces its state with `state`; checks the kind, the buffer names and lengths first and
    /// changes nothing when they do not fit. The hyper-parameters stay those it was built with.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;
}

/// Any optimizer's configuration, to build one by kind at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerConfig {
    Sgd(SgdConfig),
    Adam(AdamConfig),
    /// Adam with decoupled weight decay (`torch.optim.AdamW`).
    AdamW(AdamConfig),
    RmsProp(RmsPropConfig),
    Adagrad(AdagradConfig),
}

impl OptimizerConfig {
    /// Builds the optimizer for `n` parameters, checking the hyper-parameters.
    pub fn build<T: Scalar>(&self, n: usize) -> Result<Box<dyn Optimizer<T>>> {
        Ok(match self {
            OptimizerConfig::Sgd(c) => Box::new(Sgd::new(n, c.clone())?),
            OptimizerConfig::Adam(c) => Box::new(Adam::new(n, c.clone())?),
            OptimizerConfig::AdamW(c) => Box::new(Adam::new_adamw(n, c.clone())?),
            OptimizerConfig::RmsProp(c) => Box::new(RmsProp::new(n, c.clone())?),
            OptimizerConfig::Adagrad(c) => Box::new(Adagrad::new(n, c.clone())?),
        })
    }
}

/// Checks that a hyper-parameter is finite and at least `min`.
pub(crate) fn check_at_least(arg: &'static str, v: f64, min: f64) -> Result<()> {
    if v.is_finite() && v >= min {
        Ok(())
    } else {
        Err(Error::Value {
            arg,
            expected: format!("a finite number >= {min}"),
            got: format!("{v}"),
        })
    }
}

/// Checks that a hyper-parameter lies in `[lo, hi)` (or `[lo, hi]` with `hi_inclusive`).
pub(crate) fn check_interval(
    arg: &'static str,
    v: f64,
    lo: f64,
    hi: f64,
    hi_inclusive: bool,
) -> Result<()> {
    let ok = v >= lo && if hi_inclusive { v <= hi } else { v < hi };
    if ok {
        Ok(())
    } else {
        let close = if hi_inclusive { ']' } else { ')' };
        Err(Error::Value {
            arg,
            expected: format!("a number in [{lo}, {hi}{close}"),
            got: format!("{v}"),
        })
    }
}

/// The checks every `step` makes before touching anything.
pub(crate) fn check_step_args<T>(n: usize, params: &[T], grads: &[T], lr: f64) -> Result<()> {
    check_len("params", params.len(), &[n])?;
    check_len("grads", grads.len(), &[n])?;
    check_at_least("lr", lr, 0.0)
}

/// Checks `state` against the buffers an optimizer expects (names in order, each `n` long) and
/// returns them in that order.
pub(crate) fn checked_buffers<'a>(
    state: &'a OptimizerState,
    kind: &str,
    n: usize,
    names: &[&str],
) -> Result<Vec<&'a [f64]>> {
    if state.kind != kind {
        return Err(Error::Value {
            arg: "state.kind",
            expected: format!("{kind:?}"),
            got: format!("{:?}", state.kind),
        });
    }
    let got_names: Vec<&str> = state.buffers.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted_got = got_names.clone();
    sorted_got.sort_unstable();
    let mut sorted_want = names.to_vec();
    sorted_want.sort_unstable();
    if sorted_got != sorted_want {
        return Err(Error::Value {
            arg: "state.buffers",
            expected: format!("buffers {names:?}"),
            got: format!("{got_names:?}"),
        });
    }
    names
        .iter()
        .map(|name| {
            let (_, buf) = state
                .buffers
                .iter()
                .find(|(k, _)| k == name)
                .expect("names checked above");
            check_len("state.buffers", buf.len(), &[n]).map_err(|e| match e {
                Error::Shape { arg, expected, got } => Error::Shape {
                    arg,
                    expected: format!("{name}: {expected}"),
                    got,
                },
                other => other,
            })?;
            Ok(buf.as_slice())
        })
        .collect()
}

/// Copies a checkpoint buffer into a state buffer of the optimizer's element type.
pub(crate) fn copy_in<T: Scalar>(dst: &mut [T], src: &[f64]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = T::from_f64(s);
    }
}

/// A state buffer as checkpoint values.
pub(crate) fn export<T: Scalar>(name: &str, src: &[T]) -> (String, Vec<f64>) {
    (name.to_string(), src.iter().map(|&v| v.to_f64()).collect())
}

/// `self.lerp_(end, weight)` as ATen computes it: the branch keeps the result exact at both ends.
#[inline(always)]
pub(crate) fn lerp<T: Scalar>(start: T, end: T, weight: T, small_weight: bool) -> T {
    if small_weight {
        start + weight * (end - start)
    } else {
        end - (end - start) * (T::one() - weight)
    }
}

/// `torch.maximum`: the larger value, NaN when either is NaN.
#[inline(always)]
pub(crate) fn nan_max<T: Scalar>(a: T, b: T) -> T {
    // A NaN `a` fails `b > a` and is kept; a NaN `b` is taken.
    if b > a || b.is_nan() {
        b
    } else {
        a
    }
}
