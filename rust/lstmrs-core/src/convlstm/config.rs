//! What a ConvLSTM network is: its sizes, and where each weight tensor sits in the flat buffer.
//!
//! Parameter layout, per layer `l` (PyTorch's `Conv2d` weight layout, `[out, in, kh, kw]`):
//!
//! | name             | shape                   | |
//! |------------------|-------------------------|-|
//! | `weight_ih_l{l}` | `[4K, C_l, kh, kw]`     | input-to-state convolution |
//! | `weight_hh_l{l}` | `[4K, K, kh, kw]`       | state-to-state convolution |
//! | `bias_l{l}`      | `[4K]`                  | one bias (when `bias`) |
//!
//! with `K = hidden_channels`, `C_0 = in_channels`, `C_l = K` above, and the gate blocks along the
//! first axis in the order i, f, g (the candidate cell, Keras' `c`), o — PyTorch's LSTM order,
//! which is also Keras' `ConvLSTM2D` order (Keras stores its kernels as `[kh, kw, in, 4K]`).
//! No peepholes: this is Keras' and Flax's form, not Shi et al.'s Hadamard peepholes.

use crate::error::{Error, Result};
use crate::params::ParamSpec;

/// Sizes of a stacked ConvLSTM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvLstmConfig {
    pub in_channels: usize,
    pub hidden_channels: usize,
    /// `[kh, kw]`, both odd (the state-to-state convolution keeps the frame size).
    pub kernel: [usize; 2],
    /// Zero padding of the input-to-state convolution, `[ph, pw]`, each at most `k / 2`:
    /// `k / 2` is Keras' `"same"`, 0 its `"valid"`.
    pub padding: [usize; 2],
    pub num_layers: usize,
    pub bias: bool,
}

/// Offsets of one layer's tensors in the flat buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerOffsets {
    pub w_ih: usize,
    pub w_hh: usize,
    pub bias: Option<usize>,
}

fn at_least_one(arg: &'static str, v: usize) -> Result<()> {
    if v >= 1 {
        Ok(())
    } else {
        Err(Error::Value {
            arg,
            expected: "an integer >= 1".into(),
            got: v.to_string(),
        })
    }
}

impl ConvLstmConfig {
    /// Checks the sizes: every count at least 1, odd kernel sizes, padding at most `k / 2`, and a
    /// size-keeping padding when layers are stacked (every layer's state has the same frame size).
    pub fn new(
        in_channels: usize,
        hidden_channels: usize,
        kernel: [usize; 2],
        padding: [usize; 2],
        num_layers: usize,
        bias: bool,
    ) -> Result<Self> {
        at_least_one("in_channels", in_channels)?;
        at_least_one("hidden_channels", hidden_channels)?;
        at_least_one("num_layers", num_layers)?;
        if kernel.iter().any(|&k| k == 0 || k % 2 == 0) {
            return Err(Error::Value {
                arg: "kernel_size",
                expected: "odd sizes >= 1 (the state-to-state convolution pads k // 2 on each \
                           side to keep the frame size)"
                    .into(),
                got: format!("{kernel:?}"),
            });
        }
        if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
            return Err(Error::Value {
                arg: "padding",
                expected: format!(
                    "at most kernel_size // 2 = {:?} in each dimension",
                    [kernel[0] / 2, kernel[1] / 2]
                ),
                got: format!("{padding:?}"),
            });
        }
        let same = padding == [kernel[0] / 2, kernel[1] / 2];
        if num_layers > 1 && !same {
            return Err(Error::Value {
                arg: "padding",
                expected: format!(
                    "'same' ({:?}) with num_layers > 1, so every layer's state has one frame size",
                    [kernel[0] / 2, kernel[1] / 2]
                ),
                got: format!("{padding:?} with num_layers={num_layers}"),
            });
        }
        Ok(ConvLstmConfig {
            in_channels,
            hidden_channels,
            kernel,
            padding,
            num_layers,
            bias,
        })
    }

    /// Gate channels, `4K`.
    pub fn gate_channels(&self) -> usize {
        4 * self.hidden_channels
    }

    /// Input channels of `layer`.
    pub fn layer_in_channels(&self, layer: usize) -> usize {
        if layer == 0 {
            self.in_channels
        } else {
            self.hidden_channels
        }
    }

    /// `kh * kw`.
    pub(crate) fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// The state's frame size for input frames of `height × width`:
    /// `H + 2 ph - kh + 1` by `W + 2 pw - kw + 1`.
    pub fn state_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let [kh, kw] = self.kernel;
        let [ph, pw] = self.padding;
        let (ho, wo) = (height + 2 * ph + 1, width + 2 * pw + 1);
        if ho <= kh || wo <= kw {
            return Err(Error::Shape {
                arg: "x",
                expected: format!(
                    "[B, T, C, H, W] with H >= {} and W >= {} (kernel_size {:?}, padding {:?})",
                    kh - 2 * ph,
                    kw - 2 * pw,
                    self.kernel,
                    self.padding
                ),
                got: format!("H = {height}, W = {width}"),
            });
        }
        Ok((ho - kh, wo - kw))
    }

    pub(crate) fn offsets(&self, layer: usize) -> LayerOffsets {
        let mut o = 0;
        for l in 0..layer {
            o += self.layer_len(l);
        }
        let (g, k, taps) = (self.gate_channels(), self.hidden_channels, self.taps());
        let w_hh = o + g * self.layer_in_channels(layer) * taps;
        LayerOffsets {
            w_ih: o,
            w_hh,
            bias: self.bias.then_some(w_hh + g * k * taps),
        }
    }

    fn layer_len(&self, layer: usize) -> usize {
        let (g, k, taps) = (self.gate_channels(), self.hidden_channels, self.taps());
        g * (self.layer_in_channels(layer) + k) * taps + if self.bias { g } else { 0 }
    }

    /// The number of parameters, or None when it overflows.
    pub fn num_parameters(&self) -> Option<usize> {
        let (g, k, taps) = (self.gate_channels(), self.hidden_channels, self.taps());
        let per = |c: usize| -> Option<usize> {
            c.checked_add(k)?
                .checked_mul(taps)?
                .checked_mul(g)?
                .checked_add(if self.bias { g } else { 0 })
        };
        per(self.in_channels)?.checked_add(per(k)?.checked_mul(self.num_layers - 1)?)
    }

    /// Every tensor's name, shape and place, layer by layer.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (g, k) = (self.gate_channels(), self.hidden_channels);
        let [kh, kw] = self.kernel;
        let mut specs = Vec::with_capacity(3 * self.num_layers);
        let mut offset = 0;
        for l in 0..self.num_layers {
            let mut push = |name: String, shape: Vec<usize>| {
                let len = shape.iter().product();
                specs.push(ParamSpec {
                    name,
                    shape,
                    offset,
                    len,
                });
                offset += len;
            };
            push(
                format!("weight_ih_l{l}"),
                vec![g, self.layer_in_channels(l), kh, kw],
            );
            push(format!("weight_hh_l{l}"), vec![g, k, kh, kw]);
            if self.bias {
                push(format!("bias_l{l}"), vec![g]);
            }
        }
        specs
    }
}
