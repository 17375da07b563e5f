//! Adam and AdamW (`torch.optim.Adam`, `torch.optim.AdamW`), with AMSGrad.

use super::{
    check_at_least, check_interval, check_step_args, checked_buffers, copy_in, export, lerp,
    nan_max, par, Optimizer, OptimizerState,
};
use crate::error::Result;
use crate::scalar::Scalar;

/// The arguments of `torch.optim.Adam` / `AdamW` other than `lr` (which each step takes).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    pub maximize: bool,
}

impl Default for AdamConfig {
    /// `torch.optim.Adam`'s defaults.
    fn default() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
        }
    }
}

impl AdamConfig {
    /// `torch.optim.AdamW`'s defaults (weight decay 0.01).
    pub fn adamw_default() -> Self {
        AdamConfig {
            weight_decay: 1e-2,
            ..AdamConfig::default()
        }
    }
}

/// Adam over a flat buffer; with `decoupled` weight decay it is AdamW. Per element, at step `t`:
///
/// ```text
/// p = p * (1 - lr * weight_decay)            (AdamW)   |  g = g + weight_decay * p   (Adam)
/// m = lerp(m, g, 1 - beta1)
/// v = beta2 * v + (1 - beta2) * g * g
/// vmax = max(vmax, v); use vmax for v       (amsgrad)
/// p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// ```
#[derive(Debug, Clone)]
pub struct Adam<T: Scalar> {
    config: AdamConfig,
    decoupled: bool,
    n: usize,
    steps: u64,
    exp_avg: Vec<T>,
    exp_avg_sq: Vec<T>,
    /// Empty without AMSGrad.
    max_exp_avg_sq: Vec<T>,
}

impl<T: Scalar> Adam<T> {
    /// `torch.optim.Adam`: L2 weight decay added to the gradient.
    pub fn new(n: usize, config: AdamConfig) -> Result<Self> {
        Self::build(n, config, false)
    }

    /// `torch.optim.AdamW`: weight decay applied to the parameters, outside the moments.
    pub fn new_adamw(n: usize, config: AdamConfig) -> Result<Self> {
        Self::build(n, config, true)
    }

    fn build(n: usize, config: AdamConfig, decoupled: bool) -> Result<Self> {
        check_interval("betas[0]", config.beta1, 0.0, 1.0, false)?;
        check_interval("betas[1]", config.beta2, 0.0, 1.0, false)?;
        check_at_least("eps", config.eps, 0.0)?;
        check_at_least("weight_decay", config.weight_decay, 0.0)?;
        let max_len = if config.amsgrad { n } else { 0 };
        Ok(Adam {
            config,
            decoupled,
            n,
            steps: 0,
            exp_avg: vec![T::zero(); n],
            exp_avg_sq: vec![T::zero(); n],
            max_exp_avg_sq: vec![T::zero(); max_len],
        })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Whether weight decay is decoupled (AdamW).
    pub fn is_adamw(&self) -> bool {
        self.decoupled
    }

    fn buffer_names(&self) -> &'static [&'static str] {
        if self.config.amsgrad {
            &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        } else {
            &["exp_avg", "exp_avg_sq"]
        }
    }
}

impl<T: Scalar> Optimizer<T> for Adam<T> {
    fn name(&self) -> &'static str {
        if self.decoupled {
            "adamw"
        } else {
            "adam"
        }
    }

    fn len(&self) -> usize {
        self.n
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn step(&mut self, params: &mut [T], grads: &[T], lr: f64) -> Result<()> {
        check_step_args(self.n, params, grads, lr)?;
        let c = &self.config;
        let t = (self.steps + 1) as f64;
        // Scalars in f64 as PyTorch computes them in Python floats.
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2 = 1.0 - c.beta2.powf(t);
        let step_size = lr / bias_correction1;
        let w1 = 1.0 - c.beta1;
        let k = Kernel {
            decay: T::from_f64(1.0 - lr * c.weight_decay),
            wd: T::from_f64(c.weight_decay),
            w1: T::from_f64(w1),
            w1_small: w1.abs() < 0.5,
            beta2: T::from_f64(c.beta2),
            one_minus_beta2: T::from_f64(1.0 - c.beta2),
            bc2_sqrt: T::from_f64(bias_correction2.sqrt()),
            eps: T::from_f64(c.eps),
            neg_step_size: T::from_f64(-step_size),
            l2: c.weight_decay != 0.0 && !self.decoupled,
            decoupled: c.weight_decay != 0.0 && self.decoupled,
            amsgrad: c.amsgrad,
            maximize: c.maximize,
        };
        par::for_each(
            self.n,
            (
                params,
                grads,
                &mut self.exp_avg[..],
                &mut self.exp_avg_sq[..],
                &mut self.max_exp_avg_sq[..],
            ),
            &|(p, g, m, v, vmax)| k.run(p, g, m, v, vmax),
        );
        self.steps += 1;
        Ok(())
    }

    fn hyper_params(&self) -> Vec<(&'static str, f64)> {
        let c = &self.config;
        vec![
            ("beta1", c.beta1),
            ("beta2", c.beta2),
            ("eps", c.eps),
            ("weight_decay", c.weight_decay),
            ("amsgrad", c.amsgrad as u8 as f64),
            ("maximize", c.maximize as u8 as f64),
        ]
    }

    fn state(&self) -> OptimizerState {
        let mut buffers = vec![
            export("exp_avg", &self.exp_avg),
            export("exp_avg_sq", &self.exp_avg_sq),
        ];
        if self.config.amsgrad {
            buffers.push(export("max_exp_avg_sq", &self.max_exp_avg_sq));
        }
        OptimizerState {
            kind: self.name().into(),
            step: self.steps,
            buffers,
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let bufs = checked_buffers(state, self.name(), self.n, self.buffer_names())?;
        copy_in(&mut self.exp_avg, bufs[0]);
        copy_in(&mut self.exp_avg_sq, bufs[1]);
        if self.config.amsgrad {
            copy_in(&mut self.max_exp_avg_sq, bufs[2]);
        }
        self.steps = state.step;
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Kernel<T> {
    decay: T,
    wd: T,
    w1: T,
    w1_small: bool,
    beta2: T,
    one_minus_beta2: T,
    bc2_sqrt: T,
    eps: T,
    neg_step_size: T,
    l2: bool,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
}

impl<T: Scalar> Kernel<T> {
    fn run(&self, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], vmax: &mut [T]) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        if self.amsgrad {
            let vmax = &mut vmax[..n];
            for i in 0..n {
                let (d, vi) = self.moments(&mut p[i], g[i], &mut m[i], &mut v[i]);
                vmax[i] = nan_max(vmax[i], vi);
                let denom = vmax[i].sqrt() / self.bc2_sqrt + self.eps;
                p[i] += self.neg_step_size * (d / denom);
            }
        } else {
            for i in 0..n {
                let (d, vi) = self.moments(&mut p[i], g[i], &mut m[i], &mut v[i]);
                let denom = vi.sqrt() / self.bc2_sqrt + self.eps;
                p[i] += self.neg_step_size * (d / denom);
            }
        }
    }

    /// Weight decay and the moment updates of one element; returns the new `(m, v)`.
    #[inline(always)]
    fn moments(&self, p: &mut T, g: T, m: &mut T, v: &mut T) -> (T, T) {
        let mut g = if self.maximize { -g } else { g };
        if self.decoupled {
            *p *= self.decay;
        } else if self.l2 {
            g += self.wd * *p;
        }
        *m = lerp(*m, g, self.w1, self.w1_small);
        *v = *v * self.beta2 + self.one_minus_beta2 * g * g;
        (*m, *v)
    }
}
