//! Learning-rate schedules with PyTorch's formulas (`torch.optim.lr_scheduler`).
//!
//! [`StepLr`], [`ExponentialLr`] and [`CosineWarmup`] are pure functions of the step (or epoch)
//! count: `lr_at(k)` is the rate after `k` calls of PyTorch's `scheduler.step()`, with `lr_at(0)`
//! the rate before the first. [`ReduceLrOnPlateau`] reacts to a metric and keeps counters.
//! Every schedule exports its configuration and counters as named numbers ([`SchedulerState`])
//! for checkpoints and rebuilds from them.

use super::{check_at_least, check_interval};
use crate::error::{Error, Result};

/// A schedule given in closed form.
pub trait LrSchedule {
    /// The learning rate after `step` scheduler steps.
    fn lr_at(&self, step: u64) -> f64;
}

/// A schedule as named numbers: configuration and, for [`ReduceLrOnPlateau`], its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerState {
    /// `step_lr`, `exponential_lr`, `cosine_warmup` or `reduce_lr_on_plateau`.
    pub kind: String,
    pub values: Vec<(String, f64)>,
}

impl SchedulerState {
    fn new(kind: &str, values: &[(&str, f64)]) -> Self {
        SchedulerState {
            kind: kind.into(),
            values: values.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
        }
    }

    fn expect_kind(&self, kind: &str) -> Result<()> {
        if self.kind == kind {
            Ok(())
        } else {
            Err(Error::Value {
                arg: "state.kind",
                expected: format!("{kind:?}"),
                got: format!("{:?}", self.kind),
            })
        }
    }

    fn get(&self, name: &str) -> Result<f64> {
        self.values
            .iter()
            .find(|(k, _)| k == name)
            .map(|&(_, v)| v)
            .ok_or_else(|| Error::Value {
                arg: "state.values",
                expected: format!("an entry {name:?}"),
                got: self
                    .values
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// A stored count: a whole number >= 0.
    fn get_count(&self, name: &'static str) -> Result<u64> {
        let v = self.get(name)?;
        if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
            Ok(v as u64)
        } else {
            Err(Error::Value {
                arg: name,
                expected: "a whole number >= 0".into(),
                got: format!("{v}"),
            })
        }
    }

    fn get_flag(&self, name: &'static str) -> Result<bool> {
        let v = self.get(name)?;
        if v == 0.0 {
            Ok(false)
        } else if v == 1.0 {
            Ok(true)
        } else {
            Err(Error::Value {
                arg: name,
                expected: "0 or 1".into(),
                got: format!("{v}"),
            })
        }
    }
}

/// `StepLR`: `base_lr * gamma^(step / step_size)` (integer division).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLr {
    base_lr: f64,
    step_size: u64,
    gamma: f64,
}

impl StepLr {
    pub fn new(base_lr: f64, step_size: u64, gamma: f64) -> Result<Self> {
        check_at_least("base_lr", base_lr, 0.0)?;
        if step_size == 0 {
            return Err(Error::Value {
                arg: "step_size",
                expected: "an integer >= 1".into(),
                got: "0".into(),
            });
        }
        check_at_least("gamma", gamma, 0.0)?;
        Ok(StepLr {
            base_lr,
            step_size,
            gamma,
        })
    }

    pub fn state(&self) -> SchedulerState {
        SchedulerState::new(
            "step_lr",
            &[
                ("base_lr", self.base_lr),
                ("step_size", self.step_size as f64),
                ("gamma", self.gamma),
            ],
        )
    }

    pub fn from_state(state: &SchedulerState) -> Result<Self> {
        state.expect_kind("step_lr")?;
        StepLr::new(
            state.get("base_lr")?,
            state.get_count("step_size")?,
            state.get("gamma")?,
        )
    }
}

impl LrSchedule for StepLr {
    fn lr_at(&self, step: u64) -> f64 {
        self.base_lr * self.gamma.powf((step / self.step_size) as f64)
    }
}

/// `ExponentialLR`: `base_lr * gamma^step`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialLr {
    base_lr: f64,
    gamma: f64,
}

impl ExponentialLr {
    pub fn new(base_lr: f64, gamma: f64) -> Result<Self> {
        check_at_least("base_lr", base_lr, 0.0)?;
        check_at_least("gamma", gamma, 0.0)?;
        Ok(ExponentialLr { base_lr, gamma })
    }

    pub fn state(&self) -> SchedulerState {
        SchedulerState::new(
            "exponential_lr",
            &[("base_lr", self.base_lr), ("gamma", self.gamma)],
        )
    }

    pub fn from_state(state: &SchedulerState) -> Result<Self> {
        state.expect_kind("exponential_lr")?;
        ExponentialLr::new(state.get("base_lr")?, state.get("gamma")?)
    }
}

impl LrSchedule for ExponentialLr {
    fn lr_at(&self, step: u64) -> f64 {
        self.base_lr * self.gamma.powf(step as f64)
    }
}

/// Linear warm-up followed by cosine annealing, as PyTorch's
/// `SequentialLR([LinearLR(start_factor=s, total_iters=W), CosineAnnealingLR(T_max=N-W,
/// eta_min=min_lr)], milestones=[W])` in closed form:
///
/// ```text
/// k <  W:       base_lr * (s + (1 - s) * k / W)
/// W <= k <= N:  min_lr + (base_lr - min_lr) * (1 + cos(pi * (k - W) / (N - W))) / 2
/// k >  N:       min_lr   (PyTorch's cosine would climb back up; a finished schedule holds)
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineWarmup {
    base_lr: f64,
    warmup_steps: u64,
    total_steps: u64,
    min_lr: f64,
    warmup_start_factor: f64,
}

impl CosineWarmup {
    /// `warmup_start_factor` (PyTorch's `LinearLR(start_factor)`, in `[0, 1]`; 0 starts from a
    /// zero rate) scales the first warm-up step; `total_steps` counts the warm-up and must exceed
    /// it. `warmup_steps = 0` gives plain `CosineAnnealingLR(T_max=total_steps)`.
    pub fn new(
        base_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
        min_lr: f64,
        warmup_start_factor: f64,
    ) -> Result<Self> {
        check_at_least("base_lr", base_lr, 0.0)?;
        check_at_least("min_lr", min_lr, 0.0)?;
        check_interval("warmup_start_factor", warmup_start_factor, 0.0, 1.0, true)?;
        if total_steps <= warmup_steps {
            return Err(Error::Value {
                arg: "total_steps",
                expected: format!("more than warmup_steps ({warmup_steps})"),
                got: format!("{total_steps}"),
            });
        }
        Ok(CosineWarmup {
            base_lr,
            warmup_steps,
            total_steps,
            min_lr,
            warmup_start_factor,
        })
    }

    pub fn state(&self) -> SchedulerState {
        SchedulerState::new(
            "cosine_warmup",
            &[
                ("base_lr", self.base_lr),
                ("warmup_steps", self.warmup_steps as f64),
                ("total_steps", self.total_steps as f64),
                ("min_lr", self.min_lr),
                ("warmup_start_factor", self.warmup_start_factor),
            ],
        )
    }

    pub fn from_state(state: &SchedulerState) -> Result<Self> {
        state.expect_kind("cosine_warmup")?;
        CosineWarmup::new(
            state.get("base_lr")?,
            state.get_count("warmup_steps")?,
            state.get_count("total_steps")?,
            state.get("min_lr")?,
            state.get("warmup_start_factor")?,
        )
    }
}

impl LrSchedule for CosineWarmup {
    fn lr_at(&self, step: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            let s = self.warmup_start_factor;
            // LinearLR's closed form, in its operation order.
            return self.base_lr * (s + (1.0 - s) * step as f64 / w as f64);
        }
        if step > self.total_steps {
            return self.min_lr;
        }
        let t = (step - w) as f64;
        let t_max = (self.total_steps - w) as f64;
        // CosineAnnealingLR's closed form, in its operation order.
        self.min_lr
            + (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t / t_max).cos()) / 2.0
    }
}

/// Whether a lower or a higher metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlateauMode {
    Min,
    Max,
}

/// Whether `threshold` is relative to the best metric or absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdMode {
    Rel,
    Abs,
}

/// `ReduceLROnPlateau`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct PlateauConfig {
    pub mode: PlateauMode,
    pub factor: f64,
    pub patience: u64,
    pub threshold: f64,
    pub threshold_mode: ThresholdMode,
    pub cooldown: u64,
    pub min_lr: f64,
    pub eps: f64,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        PlateauConfig {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
        }
    }
}

/// `ReduceLROnPlateau`: multiplies the rate by `factor` (not below `min_lr`) once the metric has
/// not improved by `threshold` for more than `patience` steps, then waits `cooldown` steps
/// before counting again. Reductions smaller than `eps` are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct ReduceLrOnPlateau {
    config: PlateauConfig,
    lr: f64,
    best: f64,
    num_bad_epochs: u64,
    cooldown_counter: u64,
    last_epoch: u64,
}

impl ReduceLrOnPlateau {
    pub fn new(initial_lr: f64, config: PlateauConfig) -> Result<Self> {
        check_at_least("lr", initial_lr, 0.0)?;
        check_interval("factor", config.factor, 0.0, 1.0, false)?;
        check_at_least("threshold", config.threshold, 0.0)?;
        check_at_least("min_lr", config.min_lr, 0.0)?;
        check_at_least("eps", config.eps, 0.0)?;
        let best = Self::worst(config.mode);
        Ok(ReduceLrOnPlateau {
            config,
            lr: initial_lr,
            best,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            last_epoch: 0,
        })
    }

    fn worst(mode: PlateauMode) -> f64 {
        match mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        }
    }

    fn is_better(&self, a: f64) -> bool {
        let (best, thr) = (self.best, self.config.threshold);
        match (self.config.mode, self.config.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - thr),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - thr,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (thr + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + thr,
        }
    }

    /// Records one epoch's metric and returns the learning rate to use next. A NaN metric counts
    /// as no improvement, as in PyTorch.
    pub fn step(&mut self, metric: f64) -> f64 {
        self.last_epoch += 1;
        if self.is_better(metric) {
            self.best = metric;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.config.patience {
            let new_lr = (self.lr * self.config.factor).max(self.config.min_lr);
            if self.lr - new_lr > self.config.eps {
                self.lr = new_lr;
            }
            self.cooldown_counter = self.config.cooldown;
            self.num_bad_epochs = 0;
        }
        self.lr
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The best metric so far (`inf` for `Min`, `-inf` for `Max` before the first step).
    pub fn best(&self) -> f64 {
        self.best
    }

    pub fn num_bad_epochs(&self) -> u64 {
        self.num_bad_epochs
    }

    pub fn cooldown_counter(&self) -> u64 {
        self.cooldown_counter
    }

    /// Steps taken.
    pub fn last_epoch(&self) -> u64 {
        self.last_epoch
    }

    pub fn config(&self) -> &PlateauConfig {
        &self.config
    }

    /// Configuration and counters; `mode_max` and `threshold_abs` are 0 or 1, `best` may be
    /// infinite.
    pub fn state(&self) -> SchedulerState {
        let c = &self.config;
        SchedulerState::new(
            "reduce_lr_on_plateau",
            &[
                ("mode_max", (c.mode == PlateauMode::Max) as u8 as f64),
                ("factor", c.factor),
                ("patience", c.patience as f64),
                ("threshold", c.threshold),
                (
                    "threshold_abs",
                    (c.threshold_mode == ThresholdMode::Abs) as u8 as f64,
                ),
                ("cooldown", c.cooldown as f64),
                ("min_lr", c.min_lr),
                ("eps", c.eps),
                ("lr", self.lr),
                ("best", self.best),
                ("num_bad_epochs", self.num_bad_epochs as f64),
                ("cooldown_counter", self.cooldown_counter as f64),
                ("last_epoch", self.last_epoch as f64),
            ],
        )
    }

    pub fn from_state(state: &SchedulerState) -> Result<Self> {
        state.expect_kind("reduce_lr_on_plateau")?;
        let config = PlateauConfig {
            mode: if state.get_flag("mode_max")? {
                PlateauMode::Max
            } else {
                PlateauMode::Min
            },
            factor: state.get("factor")?,
            patience: state.get_count("patience")?,
            threshold: state.get("threshold")?,
            threshold_mode: if state.get_flag("threshold_abs")? {
                ThresholdMode::Abs
            } else {
                ThresholdMode::Rel
            },
            cooldown: state.get_count("cooldown")?,
            min_lr: state.get("min_lr")?,
            eps: state.get("eps")?,
        };
        let mut s = ReduceLrOnPlateau::new(state.get("lr")?, config)?;
        let best = state.get("best")?;
        if best.is_nan() {
            return Err(Error::Value {
                arg: "best",
                expected: "a number or +-inf".into(),
                got: "nan".into(),
            });
        }
        s.best = best;
        s.num_bad_epochs = state.get_count("num_bad_epochs")?;
        s.cooldown_counter = state.get_count("cooldown_counter")?;
        s.last_epoch = state.get_count("last_epoch")?;
        Ok(s)
    }
}
