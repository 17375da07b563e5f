//! Where a model's recurrent stack runs: the CPU kernels or the GPU backend (feature `gpu`).
//!
//! Only the recurrent layers move: the embedding, pooling, head, loss and optimizer stay on the
//! host, where they cost a small fraction of a step. The GPU backend takes the same weights and
//! batch and returns the same outputs and gradients, so the rest of the model does not know which
//! device ran.

use crate::error::{Error, GpuFailure, Result};
use crate::network::{self, Batch, ForwardOptions, GradOutputs, Gradients, Regularization, Tape};
use crate::params::RnnWeights;
use crate::scalar::Scalar;

/// The device that runs the recurrent layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Gpu,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            _ => Err(Error::Value {
                arg: "device",
                expected: "'cpu' or 'gpu'".into(),
                got: format!("{text:?}"),
            }),
        }
    }
}

/// The recurrent stack's tape on whichever device recorded it.
pub(crate) enum RnnTape<T> {
    Cpu(Tape<T>),
    #[cfg(feature = "gpu")]
    Gpu(crate::gpu::GpuTape),
}

/// The recurrent stack's outputs and, when kept, its tape.
pub(crate) struct RnnForward<T> {
    pub output: Vec<T>,
    pub h_n: Vec<T>,
    pub c_n: Option<Vec<T>>,
    pub tape: Option<RnnTape<T>>,
}

fn unsupported(detail: String) -> Error {
    Error::Gpu {
        failure: GpuFailure::Unsupported,
        detail,
    }
}

/// Checks, before any work, that `device` can run a recurrent stack with this regularization.
/// Without the `gpu` feature the GPU is refused with `NotBuilt`; the GPU kernels have no
/// variational dropout or zoneout.
pub(crate) fn check(device: Device, regularization: &Regularization) -> Result<()> {
    if device == Device::Cpu {
        return Ok(());
    }
    if !cfg!(feature = "gpu") {
        return Err(Error::Gpu {
            failure: GpuFailure::NotBuilt,
            detail: "this lstmrs was built without the `gpu` cargo feature".into(),
        });
    }
    if *regularization != Regularization::default() {
        return Err(unsupported(
            "the GPU kernels have no variational dropout or zoneout (use device='cpu', or \
             dropout between layers)"
                .into(),
        ));
    }
    Ok(())
}

pub(crate) fn forward<T: Scalar>(
    device: Device,
    weights: RnnWeights<'_, T>,
    batch: &Batch<T>,
    opts: &ForwardOptions,
    regularization: &Regularization,
) -> Result<RnnForward<T>> {
    check(device, regularization)?;
    match device {
        Device::Cpu => {
            let out = network::forward_regularized(weights, batch, opts, regularization)?;
            Ok(RnnForward {
                output: out.output,
                h_n: out.h_n,
                c_n: out.c_n,
                tape: out.tape.map(RnnTape::Cpu),
            })
        }
        #[cfg(feature = "gpu")]
        Device::Gpu => {
            let out = crate::gpu::forward(weights, batch, opts)?;
            Ok(RnnForward {
                output: out.output.output,
                h_n: out.output.h_n,
                c_n: out.output.c_n,
                tape: out.tape.map(RnnTape::Gpu),
            })
        }
        #[cfg(not(feature = "gpu"))]
        Device::Gpu => unreachable!("check() refuses the GPU without the feature"),
    }
}

/// Backpropagation through the recurrent stack; without `want_params` the CPU skips the
/// parameters' gradient (`Gradients::params` is then empty, see `network::backward_input`).
pub(crate) fn backward<T: Scalar>(
    weights: RnnWeights<'_, T>,
    tape: &RnnTape<T>,
    grads: &GradOutputs<T>,
    want_params: bool,
) -> Result<Gradients<T>> {
    match tape {
        RnnTape::Cpu(t) if !want_params => network::backward_input(weights, t, grads),
        RnnTape::Cpu(t) => network::backward(weights, t, grads),
        #[cfg(feature = "gpu")]
        RnnTape::Gpu(t) => crate::gpu::backward(weights, t, grads),
    }
}
