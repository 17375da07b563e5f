//! A ConvLSTM's weights: one flat buffer with named views (see [`super::config`] for the layout).

use super::config::ConvLstmConfig;
use crate::error::{check_len, Error, Result};
use crate::memory;
use crate::params::{named, set_named, ParamSpec};
use crate::scalar::Scalar;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// All weights of a ConvLSTM in one flat buffer, in [`ConvLstmConfig::param_specs`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLstmParams<T> {
    config: ConvLstmConfig,
    specs: Vec<ParamSpec>,
    data: Vec<T>,
}

fn param_count(config: &ConvLstmConfig) -> Result<usize> {
    config.num_parameters().ok_or_else(|| Error::Memory {
        arg: "parameters",
        bytes: "more than 2^64".into(),
        limit: memory::limit(),
    })
}

impl<T: Scalar> ConvLstmParams<T> {
    /// All parameters zero; [`Error::Memory`] above the memory ceiling.
    pub fn try_zeros(config: ConvLstmConfig) -> Result<Self> {
        let n = param_count(&config)?;
        Ok(ConvLstmParams {
            config,
            specs: config.param_specs(),
            data: memory::try_filled("parameters", n, T::zero())?,
        })
    }

    /// The initialisation of PyTorch's `Conv2d` over the concatenated `[x, h]` (weights uniform in
    /// `±1/sqrt(fan_in)`, `fan_in = (C_l + K) kh kw`) with Keras' `unit_forget_bias`: biases zero
    /// except the forget gate's, which are 1, so the cell starts out remembering. Reproducible from
    /// `seed` (ChaCha8).
    pub fn try_init(config: ConvLstmConfig, seed: u64) -> Result<Self> {
        let mut p = Self::try_zeros(config)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let k = config.hidden_channels;
        for layer in 0..config.num_layers {
            let fan_in = (config.layer_in_channels(layer) + k) * config.taps();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let o = config.offsets(layer);
            let end = o
                .bias
                .unwrap_or(o.w_hh + config.gate_channels() * k * config.taps());
            for v in &mut p.data[o.w_ih..end] {
                // 53 random bits -> uniform in [0, 1).
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                *v = T::from_f64((2.0 * u - 1.0) * bound);
            }
            if let Some(b) = o.bias {
                p.data[b + k..b + 2 * k].fill(T::one());
            }
        }
        Ok(p)
    }

    /// Wraps a flat buffer laid out as `config.param_specs()` says.
    pub fn from_flat(config: ConvLstmConfig, data: Vec<T>) -> Result<Self> {
        check_len("params", data.len(), &[param_count(&config)?])?;
        Ok(ConvLstmParams {
            config,
            specs: config.param_specs(),
            data,
        })
    }

    pub fn config(&self) -> &ConvLstmConfig {
        &self.config
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The named tensor, row-major.
    pub fn get(&self, name: &str) -> Result<&[T]> {
        named(&self.specs, &self.data, name)
    }

    /// Overwrites the named tensor; `values` must hold exactly its elements.
    pub fn set(&mut self, name: &str, values: &[T]) -> Result<()> {
        set_named(&self.specs, &mut self.data, name, values)
    }
}
