//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay
//! (`torch.optim.SGD`).

use super::{
    check_at_least, check_interval, check_step_args, checked_buffers, copy_in, export, par,
    Optimizer, OptimizerState,
};
use crate::error::{Error, Result};
use crate::scalar::Scalar;

/// `torch.optim.SGD`'s arguments other than `lr` (which each step takes).
#[derive(Debug, Clone, PartialEq)]
pub struct SgdConfig {
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub maximize: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

/// SGD over a flat buffer. Per element, with `g` the gradient:
///
/// ```text
/// g = g + weight_decay * p                                  (weight_decay != 0)
/// b = g on the first step, else momentum * b + (1 - dampening) * g   (momentum != 0)
/// g = g + momentum * b (nesterov) or b
/// p = p - lr * g
/// ```
#[derive(Debug, Clone)]
pub struct Sgd<T: Scalar> {
    config: SgdConfig,
    n: usize,
    steps: u64,
    /// Empty without momentum.
    momentum_buffer: Vec<T>,
}

impl<T: Scalar> Sgd<T> {
    pub fn new(n: usize, config: SgdConfig) -> Result<Self> {
        check_at_least("momentum", config.momentum, 0.0)?;
        check_interval("dampening", config.dampening, 0.0, 1.0, true)?;
        check_at_least("weight_decay", config.weight_decay, 0.0)?;
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(Error::Value {
                arg: "nesterov",
                expected: "momentum > 0 and dampening == 0 with Nesterov momentum".into(),
                got: format!(
                    "momentum {}, dampening {}",
                    config.momentum, config.dampening
                ),
            });
        }
        let buf_len = if config.momentum != 0.0 { n } else { 0 };
        Ok(Sgd {
            config,
            n,
            steps: 0,
            momentum_buffer: vec![T::zero(); buf_len],
        })
    }

    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    fn buffer_names(&self) -> &'static [&'static str] {
        if self.config.momentum != 0.0 {
            &["momentum_buffer"]
        } else {
            &[]
        }
    }
}

impl<T: Scalar> Optimizer<T> for Sgd<T> {
    fn name(&self) -> &'static str {
        "sgd"
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
        let k = Kernel {
            neg_lr: T::from_f64(-lr),
            wd: T::from_f64(c.weight_decay),
            momentum: T::from_f64(c.momentum),
            one_minus_dampening: T::from_f64(1.0 - c.dampening),
            use_wd: c.weight_decay != 0.0,
            use_momentum: c.momentum != 0.0,
            // PyTorch creates the buffer from the first gradient instead of decaying zeros.
            first: self.steps == 0,
            nesterov: c.nesterov,
            maximize: c.maximize,
        };
        par::for_each(
            self.n,
            (params, grads, &mut self.momentum_buffer[..]),
            &|(p, g, b): (&mut [T], &[T], &mut [T])| k.run(p, g, b),
        );
        self.steps += 1;
        Ok(())
    }

    fn hyper_params(&self) -> Vec<(&'static str, f64)> {
        let c = &self.config;
        vec![
            ("momentum", c.momentum),
            ("dampening", c.dampening),
            ("weight_decay", c.weight_decay),
            ("nesterov", c.nesterov as u8 as f64),
            ("maximize", c.maximize as u8 as f64),
        ]
    }

    fn state(&self) -> OptimizerState {
        let mut buffers = Vec::new();
        if self.config.momentum != 0.0 {
            buffers.push(export("momentum_buffer", &self.momentum_buffer));
        }
        OptimizerState {
            kind: self.name().into(),
            step: self.steps,
            buffers,
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let bufs = checked_buffers(state, self.name(), self.n, self.buffer_names())?;
        if let Some(b) = bufs.first() {
            copy_in(&mut self.momentum_buffer, b);
        }
        self.steps = state.step;
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Kernel<T> {
    neg_lr: T,
    wd: T,
    momentum: T,
    one_minus_dampening: T,
    use_wd: bool,
    use_momentum: bool,
    first: bool,
    nesterov: bool,
    maximize: bool,
}

impl<T: Scalar> Kernel<T> {
    fn run(&self, p: &mut [T], g: &[T], b: &mut [T]) {
        // One monomorphised loop per branch of the update keeps each loop vectorisable.
        match (self.use_momentum, self.first, self.nesterov) {
            (false, _, _) => self.run_with::<false, false, false>(p, g, b),
            (true, true, false) => self.run_with::<true, true, false>(p, g, b),
            (true, true, true) => self.run_with::<true, true, true>(p, g, b),
            (true, false, false) => self.run_with::<true, false, false>(p, g, b),
            (true, false, true) => self.run_with::<true, false, true>(p, g, b),
        }
    }

    #[inline(always)]
    fn run_with<const MOMENTUM: bool, const FIRST: bool, const NESTEROV: bool>(
        &self,
        p: &mut [T],
        g: &[T],
        b: &mut [T],
    ) {
        let n = p.len();
        let g = &g[..n];
        let b = if MOMENTUM { &mut b[..n] } else { b };
        for i in 0..n {
            let mut d = if self.maximize { -g[i] } else { g[i] };
            if self.use_wd {
                d += self.wd * p[i];
            }
            if MOMENTUM {
                b[i] = if FIRST {
                    d
                } else {
                    b[i] * self.momentum + self.one_minus_dampening * d
                };
                d = if NESTEROV {
                    d + self.momentum * b[i]
                } else {
                    b[i]
                };
            }
            p[i] += self.neg_lr * d;
        }
    }
}
