//! One flat parameter buffer with named views in PyTorch's names, shapes and order.
//!
//! Flat storage lets an optimizer update every parameter in one loop and gradients share the same
//! layout; the names (`weight_ih_l0`, `bias_hh_l1_reverse`, ...) are PyTorch's `state_dict` keys.

use crate::cellexpr::ParamInit;
use crate::config::RnnConfig;
use crate::error::{check_len, Error, Result};
use crate::memory;
use crate::pack_cache::PackCache;
use crate::scalar::Scalar;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Name, shape and place of one parameter tensor inside the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

/// Offsets of one layer-direction's tensors in the flat buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirOffsets {
    pub w_ih: usize,
    /// Where `W_hh` sits (length 0 for a cell without one).
    pub w_hh: usize,
    /// `(b_ih, b_hh)` when the network has biases.
    pub bias: Option<(usize, usize)>,
    /// Where `W_hr` `[P, H]` sits (length 0 without projections).
    pub w_hr: usize,
    /// The unit parameters, `P * H` back to back (custom cells only).
    pub units: usize,
}

/// How a parameter tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitRule {
    /// Uniform in `[-a, a]`.
    Uniform(f64),
    Constant(f64),
}

/// The layout of all parameters of a network, in PyTorch's `state_dict` order.
pub fn param_specs(config: &RnnConfig) -> Vec<ParamSpec> {
    param_specs_with_init(config)
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

/// [`param_specs`] with each tensor's initialisation: PyTorch's `±1/sqrt(H)` for the weights and
/// biases, the cell's own rule for unit parameters.
pub fn param_specs_with_init(config: &RnnConfig) -> Vec<(ParamSpec, InitRule)> {
    let (xw, hw) = (config.x_gate_width(), config.h_gate_width());
    let (h, s, p) = (config.hidden_size, config.state_size(), config.proj_size);
    let sqrt_h = (h as f64).sqrt();
    let default = InitRule::Uniform(1.0 / sqrt_h);
    let mut specs = Vec::new();
    let mut offset = 0;
    for layer in 0..config.num_layers {
        for dir in 0..config.num_directions() {
            let suffix = if dir == 1 { "_reverse" } else { "" };
            let mut push = |kind: &str, shape: Vec<usize>, init: InitRule| {
                let len = shape.iter().product();
                specs.push((
                    ParamSpec {
                        name: format!("{kind}_l{layer}{suffix}"),
                        shape,
                        offset,
                        len,
                    },
                    init,
                ));
                offset += len;
            };
            push(
                "weight_ih",
                vec![xw, config.layer_input_size(layer)],
                default,
            );
            if hw > 0 {
                push("weight_hh", vec![hw, s], default);
            }
            if config.bias {
                push("bias_ih", vec![xw], default);
                if hw > 0 {
                    push("bias_hh", vec![hw], default);
                }
            }
            // torch lists `weight_hr` after the biases, initialised like the other weights.
            if p > 0 {
                push("weight_hr", vec![p, h], default);
            }
            for u in config.cell.unit_params() {
                let init = match u.init {
                    ParamInit::Uniform(a) => InitRule::Uniform(a / sqrt_h),
                    ParamInit::Constant(v) => InitRule::Constant(v),
                };
                push(&u.name, vec![h], init);
            }
        }
    }
    specs
}

/// All weights of a network in one flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct RnnParams<T> {
    config: RnnConfig,
    specs: Vec<ParamSpec>,
    data: Vec<T>,
    /// Packed forms of `data` kept across forward calls; emptied by every `&mut self` method.
    packed: PackCache<T>,
}

impl<T: Scalar> RnnParams<T> {
    /// All parameters zero. Panics above the memory ceiling; [`RnnParams::try_zeros`] does not.
    pub fn zeros(config: RnnConfig) -> Self {
        Self::try_zeros(config).expect("parameters within the memory limit")
    }

    /// All parameters zero, or [`Error::Memory`](crate::Error::Memory) when they would not fit
    /// under the memory ceiling (checked before anything is allocated).
    pub fn try_zeros(config: RnnConfig) -> Result<Self> {
        check_param_memory::<T>(&config)?;
        let specs = param_specs(&config);
        let n = specs.last().map_or(0, |s| s.offset + s.len);
        Ok(RnnParams {
            config,
            specs,
            data: memory::try_filled("parameters", n, T::zero())?,
            packed: PackCache::new(n),
        })
    }

    /// PyTorch's initialisation: every parameter uniform in `[-1/sqrt(H), 1/sqrt(H)]`, reproducible
    /// from `seed` (the stream is ChaCha8, so the values differ from torch's own generator).
    /// Panics above the memory ceiling; [`RnnParams::try_init_uniform`] does not.
    pub fn init_uniform(config: RnnConfig, seed: u64) -> Self {
        Self::try_init_uniform(config, seed).expect("parameters within the memory limit")
    }

    /// [`RnnParams::init_uniform`], or [`Error::Memory`](crate::Error::Memory) above the ceiling.
    pub fn try_init_uniform(config: RnnConfig, seed: u64) -> Result<Self> {
        let mut p = Self::try_zeros(config)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (s, init) in param_specs_with_init(&config) {
            for v in p.data[s.offset..s.offset + s.len].iter_mut() {
                *v = T::from_f64(match init {
                    InitRule::Uniform(bound) => {
                        // 53 random bits -> uniform in [0, 1).
                        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        (2.0 * u - 1.0) * bound
                    }
                    InitRule::Constant(c) => c,
                });
            }
        }
        Ok(p)
    }

    /// Wraps a flat buffer laid out as `param_specs(config)` says.
    pub fn from_flat(config: RnnConfig, data: Vec<T>) -> Result<Self> {
        check_param_memory::<T>(&config)?;
        let specs = param_specs(&config);
        let n = specs.last().map_or(0, |s| s.offset + s.len);
        check_len("params", data.len(), &[n])?;
        Ok(RnnParams {
            config,
            specs,
            data,
            packed: PackCache::new(n),
        })
    }

    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.packed.clear();
        &mut self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The named tensor, row-major.
    pub fn get(&self, name: &str) -> Result<&[T]> {
        named(&self.specs, &self.data, name)
    }

    /// Overwrites the named tensor; `values` must hold exactly its elements.
    pub fn set(&mut self, name: &str, values: &[T]) -> Result<()> {
        self.packed.clear();
        set_named(&self.specs, &mut self.data, name, values)
    }
}

impl<T: Scalar> RnnParams<T> {
    /// A borrowed view for the forward and backward passes.
    pub fn view(&self) -> RnnWeights<'_, T> {
        RnnWeights {
            config: self.config,
            data: &self.data,
            packed: Some(&self.packed),
        }
    }
}

/// Borrowed weights of a network: its config and a flat buffer laid out as `param_specs` says.
/// Models keep the recurrent weights inside one larger buffer and lend this view of them.
#[derive(Debug, Clone, Copy)]
pub struct RnnWeights<'a, T> {
    config: RnnConfig,
    data: &'a [T],
    /// The owner's packed-weight cache (`None` for a view of a bare slice, which cannot tell
    /// when its values change).
    packed: Option<&'a PackCache<T>>,
}

impl<'a, T: Scalar> RnnWeights<'a, T> {
    pub fn new(config: RnnConfig, data: &'a [T]) -> Result<Self> {
        check_len("params", data.len(), &[param_count(&config)])?;
        Ok(RnnWeights {
            config,
            data,
            packed: None,
        })
    }

    /// The cache of packed weights that lives as long as these values, if any.
    pub(crate) fn pack_cache(&self) -> Option<&'a PackCache<T>> {
        self.packed
    }
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }
    pub fn as_slice(&self) -> &'a [T] {
        self.data
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl<'a, T: Scalar> From<&'a RnnParams<T>> for RnnWeights<'a, T> {
    fn from(p: &'a RnnParams<T>) -> Self {
        p.view()
    }
}

/// Checks that the parameters of `config` fit under the memory ceiling, with arithmetic that
/// cannot overflow (a size near `usize::MAX` must not wrap into a small allocation).
pub fn check_param_memory<T>(config: &RnnConfig) -> Result<()> {
    let h = config.hidden_size as u128;
    let (s, p) = (config.state_size() as u128, config.proj_size as u128);
    let (xw, hw) = (
        config.cell.gate_count() as u128 * h,
        config.cell.h_gate_count() as u128 * h,
    );
    let bytes = (0..config.num_layers).try_fold(0u128, |acc, l| {
        let per_dir = hw
            .checked_mul(s)?
            .checked_add(xw + hw)?
            .checked_add(p.checked_mul(h)?)?
            .checked_add(h.checked_mul(config.cell.unit_params().len() as u128)?)?;
        let input = if l == 0 {
            config.input_size as u128
        } else {
            s * config.num_directions() as u128
        };
        let per_dir = per_dir.checked_add(xw.checked_mul(input)?)?;
        acc.checked_add(per_dir.checked_mul(config.num_directions() as u128)?)
    });
    memory::check(
        "parameters",
        bytes.and_then(|b| b.checked_mul(std::mem::size_of::<T>() as u128)),
    )
}

/// Number of scalars in all parameters of `config`.
pub fn param_count(config: &RnnConfig) -> usize {
    (0..config.num_layers)
        .map(|l| dir_param_count(config, l) * config.num_directions())
        .sum()
}

/// Scalars of one direction of layer `layer`: `W_ih`, `W_hh`, the two biases, `W_hr` and the
/// unit parameters.
fn dir_param_count(config: &RnnConfig, layer: usize) -> usize {
    let (xw, hw) = (config.x_gate_width(), config.h_gate_width());
    xw * config.layer_input_size(layer)
        + hw * config.state_size()
        + if config.bias { xw + hw } else { 0 }
        + config.proj_size * config.hidden_size
        + config.unit_width()
}

/// Offsets of layer `layer`, direction `dir` (0 forward, 1 reverse), in `param_specs` order.
pub(crate) fn dir_offsets(config: &RnnConfig, layer: usize, dir: usize) -> DirOffsets {
    let (xw, hw) = (config.x_gate_width(), config.h_gate_width());
    let start: usize = (0..layer)
        .map(|l| dir_param_count(config, l) * config.num_directions())
        .sum::<usize>()
        + dir * dir_param_count(config, layer);
    let w_hh = start + xw * config.layer_input_size(layer);
    let b_ih = w_hh + hw * config.state_size();
    let w_hr = if config.bias { b_ih + xw + hw } else { b_ih };
    DirOffsets {
        w_ih: start,
        w_hh,
        bias: config.bias.then_some((b_ih, b_ih + xw)),
        w_hr,
        units: w_hr + config.proj_size * config.hidden_size,
    }
}

/// The spec named `name` among `specs`, or an error listing the names there are.
fn find_spec<'a>(specs: &'a [ParamSpec], name: &str) -> Result<&'a ParamSpec> {
    specs
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::Name {
            arg: "name",
            expected: specs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            got: name.into(),
        })
}

/// The tensor `name` of a flat buffer laid out by `specs`, row-major.
pub(crate) fn named<'a, T>(specs: &[ParamSpec], data: &'a [T], name: &str) -> Result<&'a [T]> {
    let s = find_spec(specs, name)?;
    Ok(&data[s.offset..s.offset + s.len])
}

/// Overwrites the tensor `name` of a flat buffer laid out by `specs`; `values` must hold exactly
/// its elements.
pub(crate) fn set_named<T: Copy>(
    specs: &[ParamSpec],
    data: &mut [T],
    name: &str,
    values: &[T],
) -> Result<()> {
    let s = find_spec(specs, name)?;
    check_len("values", values.len(), &s.shape)?;
    data[s.offset..s.offset + s.len].copy_from_slice(values);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CellKind;

    #[test]
    fn offsets_and_counts_agree_with_specs() {
        for cell in [CellKind::Lstm, CellKind::Gru] {
            for (layers, bidir, bias) in [(1, false, true), (3, true, true), (2, true, false)] {
                let cfg = RnnConfig::new(cell, 7, 5, layers, bidir, bias).unwrap();
                let specs = param_specs(&cfg);
                let last = specs.last().unwrap();
                assert_eq!(param_count(&cfg), last.offset + last.len);
                let per_dir = if bias { 4 } else { 2 };
                for l in 0..layers {
                    for d in 0..cfg.num_directions() {
                        let o = dir_offsets(&cfg, l, d);
                        let s = &specs[(l * cfg.num_directions() + d) * per_dir..];
                        assert_eq!(o.w_ih, s[0].offset, "{}", s[0].name);
                        assert_eq!(o.w_hh, s[1].offset, "{}", s[1].name);
                        assert_eq!(o.bias, bias.then(|| (s[2].offset, s[3].offset)));
                    }
                }
            }
        }
    }

    #[test]
    fn projections_follow_pytorch() {
        // torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2): per layer and
        // direction weight_ih, weight_hh, bias_ih, bias_hh, weight_hr.
        let cfg = RnnConfig::new(CellKind::Lstm, 3, 5, 2, true, true)
            .unwrap()
            .with_proj_size(2)
            .unwrap();
        let specs = param_specs(&cfg);
        let got: Vec<_> = specs[5..10]
            .iter()
            .map(|s| (s.name.as_str(), s.shape.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("weight_ih_l0_reverse", vec![20, 3]),
                ("weight_hh_l0_reverse", vec![20, 2]),
                ("bias_ih_l0_reverse", vec![20]),
                ("bias_hh_l0_reverse", vec![20]),
                ("weight_hr_l0_reverse", vec![2, 5]),
            ]
        );
        assert_eq!(
            specs[10].shape,
            [20, 4],
            "layer 1 reads D * proj_size features"
        );
        let last = specs.last().unwrap();
        assert_eq!(param_count(&cfg), last.offset + last.len);
        for l in 0..2 {
            for d in 0..2 {
                let o = dir_offsets(&cfg, l, d);
                let s = &specs[(l * 2 + d) * 5..];
                assert_eq!(
                    (o.w_ih, o.w_hh, o.w_hr),
                    (s[0].offset, s[1].offset, s[4].offset)
                );
            }
        }
        let no_bias = RnnConfig { bias: false, ..cfg };
        let names: Vec<_> = param_specs(&no_bias).into_iter().map(|s| s.name).collect();
        assert_eq!(names[..3], ["weight_ih_l0", "weight_hh_l0", "weight_hr_l0"]);
        assert!(RnnConfig::new(CellKind::Gru, 3, 5, 1, false, true)
            .unwrap()
            .with_proj_size(2)
            .is_err());
        for bad in [5, 6] {
            assert!(cfg.with_proj_size(bad).is_err());
        }
    }

    #[test]
    fn names_follow_pytorch() {
        let cfg = RnnConfig::new(CellKind::Lstm, 3, 4, 2, true, true).unwrap();
        let names: Vec<_> = param_specs(&cfg).into_iter().map(|s| s.name).collect();
        assert_eq!(
            &names[..5],
            [
                "weight_ih_l0",
                "weight_hh_l0",
                "bias_ih_l0",
                "bias_hh_l0",
                "weight_ih_l0_reverse"
            ]
        );
        assert_eq!(names.len(), 16);
        assert_eq!(names[15], "bias_hh_l1_reverse");
    }
}
