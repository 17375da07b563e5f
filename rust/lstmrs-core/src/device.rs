//! Where a recurrent stack runs: the CPU kernels or the GPU backend (feature `gpu`; without it
//! [`crate::gpu`] is a stand-in that refuses with one "not built" error). The one place that
//! chooses: `RnnCore` (the bindings) and [`crate::model::Model`] both call through here.
//!
//! In a model only the recurrent layers move: the embedding, pooling, head, loss and optimizer stay on the
//! host, where they cost a small fraction of a step. The GPU backend takes the same weights and
//! batch and returns the same outputs and gradients, so the rest of the model does not know which
//! device ran.

use crate::config::RnnConfig;
use crate::error::{Error, GpuFailure, Result};
use crate::gpu;
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
#[derive(Debug, Clone)]
pub enum RnnTape<T> {
    Cpu(Tape<T>),
    /// Kept on the device (f32).
    Gpu(gpu::GpuTape),
}

impl<T> RnnTape<T> {
    pub fn seq_len(&self) -> usize {
        match self {
            RnnTape::Cpu(t) => t.seq_len(),
            RnnTape::Gpu(t) => t.seq_len(),
        }
    }

    pub fn batch(&self) -> usize {
        match self {
            RnnTape::Cpu(t) => t.batch(),
            RnnTape::Gpu(t) => t.batch(),
        }
    }
}

/// The recurrent stack's outputs and, when kept, its tape.
#[derive(Debug)]
pub struct RnnForward<T> {
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
pub fn check(device: Device, regularization: &Regularization) -> Result<()> {
    if device == Device::Cpu {
        return Ok(());
    }
    gpu::ensure_built()?;
    if *regularization != Regularization::default() {
        return Err(unsupported(
            "the GPU kernels have no variational dropout or zoneout (use device='cpu', or \
             dropout between layers)"
                .into(),
        ));
    }
    Ok(())
}

/// Everything [`check`] does, then whether the GPU runs this network in `T` (not f64, custom
/// cells) and has an adapter: the test before a model moves to `device`.
pub fn check_runs<T: Scalar>(
    device: Device,
    rnn: &RnnConfig,
    regularization: &Regularization,
) -> Result<()> {
    check(device, regularization)?;
    if device == Device::Gpu {
        gpu::check_supported::<T>(rnn)?;
        gpu::gpu_available()?;
    }
    Ok(())
}

/// The forward pass on `device`, with dropout between layers (`opts`) and `regularization`
/// (variational dropout, zoneout: CPU only).
pub fn forward<T: Scalar>(
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
        Device::Gpu => {
            let out = gpu::forward(weights, batch, opts)?;
            Ok(RnnForward {
                output: out.output.output,
                h_n: out.output.h_n,
                c_n: out.output.c_n,
                tape: out.tape.map(RnnTape::Gpu),
            })
        }
    }
}

/// Backpropagation through the recurrent stack; without `want_params` the CPU skips the
/// parameters' gradient (`Gradients::params` is then empty, see `network::backward_input`).
pub fn backward<T: Scalar>(
    weights: RnnWeights<'_, T>,
    tape: &RnnTape<T>,
    grads: &GradOutputs<T>,
    want_params: bool,
) -> Result<Gradients<T>> {
    match tape {
        RnnTape::Cpu(t) if !want_params => network::backward_input(weights, t, grads),
        RnnTape::Cpu(t) => network::backward(weights, t, grads),
        RnnTape::Gpu(t) => gpu::backward(weights, t, grads),
    }
}

/// [`backward`] of the parameters' gradients that may use the tape up
/// ([`network::backward_consuming`] on the CPU; the device's tape is read as by [`backward`], and
/// freed when the caller drops it). On an error the tape is intact.
pub fn backward_consuming<T: Scalar>(
    weights: RnnWeights<'_, T>,
    tape: &mut RnnTape<T>,
    grads: &GradOutputs<T>,
) -> Result<Gradients<T>> {
    match tape {
        RnnTape::Cpu(t) => network::backward_consuming(weights, t, grads),
        RnnTape::Gpu(t) => gpu::backward(weights, t, grads),
    }
}
