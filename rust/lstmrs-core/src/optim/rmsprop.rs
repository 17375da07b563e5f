//! RMSprop (`torch.optim.RMSprop`), plain or centered, with momentum.

use super::{
    check_at_least, check_interval, check_step_args, checked_buffers, copy_in, export, lerp, par,
    Optimizer, OptimizerState,
};
use crate::error::Result;
use crate::scalar::Scalar;

/// `torch.optim.RMSprop`'s arguments other than `lr` (which each step takes).
#[derive(Debug, Clone, PartialEq)]
pub struct RmsPropConfig {
    pub alpha: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub centered: bool,
    pub maximize: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig {
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

/// RMSprop over a flat buffer. Per element:
///
/// ```text
/// g = g + weight_decay * p                               (weight_decay != 0)
/// s = alpha * s + (1 - alpha) * g * g
/// a = lerp(a, g, 1 - alpha); d = sqrt(s - a * a) + eps  (centered)  |  d = sqrt(s) + eps
/// b = momentum * b + g / d; p = p - lr * b              (momentum > 0) | p = p - lr * g / d
/// ```
#[derive(Debug, Clone)]
pub struct RmsProp<T: Scalar> {
    config: RmsPropConfig,
    n: usize,
    steps: u64,
    square_avg: Vec<T>,
    /// Empty without momentum.
    momentum_buffer: Vec<T>,
    /// Empty unless centered.
    grad_avg: Vec<T>,
}

impl<T: Scalar> RmsProp<T> {
    pub fn new(n: usize, config: RmsPropConfig) -> Result<Self> {
        // PyTorch only asks alpha >= 0; above 1 the square average goes negative.
        check_interval("alpha", config.alpha, 0.0, 1.0, true)?;
        check_at_least("eps", config.eps, 0.0)?;
        check_at_least("weight_decay", config.weight_decay, 0.0)?;
        check_at_least("momentum", config.momentum, 0.0)?;
        let mom_len = if config.momentum > 0.0 { n } else { 0 };
        let avg_len = if config.centered { n } else { 0 };
        Ok(RmsProp {
            config,
            n,
            steps: 0,
            square_avg: vec![T::zero(); n],
            momentum_buffer: vec![T::zero(); mom_len],
            grad_avg: vec![T::zero(); avg_len],
        })
    }

    pub fn config(&self) -> &RmsPropConfig {
        &self.config
    }

    fn buffer_names(&self) -> Vec<&'static str> {
        let mut names = vec!["square_avg"];
        if self.config.momentum > 0.0 {
            names.push("momentum_buffer");
        }
        if self.config.centered {
            names.push("grad_avg");
        }
        names
    }
}

impl<T: Scalar> Optimizer<T> for RmsProp<T> {
    fn name(&self) -> &'static str {
        "rmsprop"
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
        let w = 1.0 - c.alpha;
        let k = Kernel {
            neg_lr: T::from_f64(-lr),
            wd: T::from_f64(c.weight_decay),
            alpha: T::from_f64(c.alpha),
            one_minus_alpha: T::from_f64(w),
            w_small: w.abs() < 0.5,
            eps: T::from_f64(c.eps),
            momentum: T::from_f64(c.momentum),
            use_wd: c.weight_decay != 0.0,
            use_momentum: c.momentum > 0.0,
            centered: c.centered,
            maximize: c.maximize,
        };
        par::for_each(
            self.n,
            (
                params,
                grads,
                &mut self.square_avg[..],
                &mut self.momentum_buffer[..],
                &mut self.grad_avg[..],
            ),
            &|(p, g, s, b, a)| k.run(p, g, s, b, a),
        );
        self.steps += 1;
        Ok(())
    }

    fn hyper_params(&self) -> Vec<(&'static str, f64)> {
        let c = &self.config;
        vec![
            ("alpha", c.alpha),
            ("eps", c.eps),
            ("weight_decay", c.weight_decay),
            ("momentum", c.momentum),
            ("centered", c.centered as u8 as f64),
            ("maximize", c.maximize as u8 as f64),
        ]
    }

    fn state(&self) -> OptimizerState {
        let mut buffers = vec![export("square_avg", &self.square_avg)];
        if self.config.momentum > 0.0 {
            buffers.push(export("momentum_buffer", &self.momentum_buffer));
        }
        if self.config.centered {
            buffers.push(export("grad_avg", &self.grad_avg));
        }
        OptimizerState {
            kind: self.name().into(),
            step: self.steps,
            buffers,
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let names = self.buffer_names();
        let bufs = checked_buffers(state, self.name(), self.n, &names)?;
        for (name, src) in names.iter().zip(bufs) {
            let dst = match *name {
                "square_avg" => &mut self.square_avg,
                "momentum_buffer" => &mut self.momentum_buffer,
                _ => &mut self.grad_avg,
            };
            copy_in(dst, src);
        }
        self.steps = state.step;
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Kernel<T> {
    neg_lr: T,
    wd: T,
    alpha: T,
    one_minus_alpha: T,
    w_small: bool,
    eps: T,
    momentum: T,
    use_wd: bool,
    use_momentum: bool,
    centered: bool,
    maximize: bool,
}

impl<T: Scalar> Kernel<T> {
    fn run(&self, p: &mut [T], g: &[T], s: &mut [T], b: &mut [T], a: &mut [T]) {
        // One monomorphised loop per set of optional buffers keeps each loop free of indexing
        // into empty slices, so it vectorises.
        match (self.use_momentum, self.centered) {
            (false, false) => self.run_with::<false, false>(p, g, s, b, a),
            (true, false) => self.run_with::<true, false>(p, g, s, b, a),
            (false, true) => self.run_with::<false, true>(p, g, s, b, a),
            (true, true) => self.run_with::<true, true>(p, g, s, b, a),
        }
    }

    #[inline(always)]
    fn run_with<const MOMENTUM: bool, const CENTERED: bool>(
        &self,
        p: &mut [T],
        g: &[T],
        s: &mut [T],
        b: &mut [T],
        a: &mut [T],
    ) {
        let n = p.len();
        let (g, s) = (&g[..n], &mut s[..n]);
        let b = if MOMENTUM { &mut b[..n] } else { b };
        let a = if CENTERED { &mut a[..n] } else { a };
        for i in 0..n {
            let mut gi = if self.maximize { -g[i] } else { g[i] };
            if self.use_wd {
                gi += self.wd * p[i];
            }
            s[i] = s[i] * self.alpha + self.one_minus_alpha * gi * gi;
            let denom = if CENTERED {
                a[i] = lerp(a[i], gi, self.one_minus_alpha, self.w_small);
                (s[i] - a[i] * a[i]).sqrt() + self.eps
            } else {
                s[i].sqrt() + self.eps
            };
            if MOMENTUM {
                b[i] = b[i] * self.momentum + gi / denom;
                p[i] += self.neg_lr * b[i];
            } else {
                p[i] += self.neg_lr * (gi / denom);
            }
        }
    }
}
