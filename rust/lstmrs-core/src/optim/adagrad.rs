//! Adagrad (`torch.optim.Adagrad`), dense gradients.

use super::{
    check_at_least, check_step_args, checked_buffers, copy_in, export, par, Optimizer,
    OptimizerState,
};
use crate::error::Result;
use crate::scalar::Scalar;

/// `torch.optim.Adagrad`'s arguments other than `lr` (which each step takes).
#[derive(Debug, Clone, PartialEq)]
pub struct AdagradConfig {
    pub lr_decay: f64,
    pub weight_decay: f64,
    pub initial_accumulator_value: f64,
    pub eps: f64,
    pub maximize: bool,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

/// Adagrad over a flat buffer. Per element, at step `t`:
///
/// ```text
/// g = g + weight_decay * p                    (weight_decay != 0)
/// s = s + g * g                               (s starts at initial_accumulator_value)
/// p = p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)
/// ```
#[derive(Debug, Clone)]
pub struct Adagrad<T: Scalar> {
    config: AdagradConfig,
    n: usize,
    steps: u64,
    sum: Vec<T>,
}

impl<T: Scalar> Adagrad<T> {
    pub fn new(n: usize, config: AdagradConfig) -> Result<Self> {
        check_at_least("lr_decay", config.lr_decay, 0.0)?;
        check_at_least("weight_decay", config.weight_decay, 0.0)?;
        check_at_least(
            "initial_accumulator_value",
            config.initial_accumulator_value,
            0.0,
        )?;
        check_at_least("eps", config.eps, 0.0)?;
        let init = T::from_f64(config.initial_accumulator_value);
        Ok(Adagrad {
            config,
            n,
            steps: 0,
            sum: vec![init; n],
        })
    }

    pub fn config(&self) -> &AdagradConfig {
        &self.config
    }
}

impl<T: Scalar> Optimizer<T> for Adagrad<T> {
    fn name(&self) -> &'static str {
        "adagrad"
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
        let step = (self.steps + 1) as f64;
        let clr = lr / (1.0 + (step - 1.0) * c.lr_decay);
        let k = Kernel {
            neg_clr: T::from_f64(-clr),
            wd: T::from_f64(c.weight_decay),
            eps: T::from_f64(c.eps),
            use_wd: c.weight_decay != 0.0,
            maximize: c.maximize,
        };
        par::for_each(
            self.n,
            (params, grads, &mut self.sum[..]),
            &|(p, g, s): (&mut [T], &[T], &mut [T])| k.run(p, g, s),
        );
        self.steps += 1;
        Ok(())
    }

    fn hyper_params(&self) -> Vec<(&'static str, f64)> {
        let c = &self.config;
        vec![
            ("lr_decay", c.lr_decay),
            ("weight_decay", c.weight_decay),
            ("initial_accumulator_value", c.initial_accumulator_value),
            ("eps", c.eps),
            ("maximize", c.maximize as u8 as f64),
        ]
    }

    fn state(&self) -> OptimizerState {
        OptimizerState {
            kind: self.name().into(),
            step: self.steps,
            buffers: vec![export("sum", &self.sum)],
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let bufs = checked_buffers(state, self.name(), self.n, &["sum"])?;
        copy_in(&mut self.sum, bufs[0]);
        self.steps = state.step;
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Kernel<T> {
    neg_clr: T,
    wd: T,
    eps: T,
    use_wd: bool,
    maximize: bool,
}

impl<T: Scalar> Kernel<T> {
    fn run(&self, p: &mut [T], g: &[T], s: &mut [T]) {
        let n = p.len();
        let (g, s) = (&g[..n], &mut s[..n]);
        for i in 0..n {
            let mut gi = if self.maximize { -g[i] } else { g[i] };
            if self.use_wd {
                gi += self.wd * p[i];
            }
            s[i] += gi * gi;
            let std = s[i].sqrt() + self.eps;
            p[i] += self.neg_clr * (gi / std);
        }
    }
}
