//! The optimizers, clipping functions and LR schedules against PyTorch's own results.
//!
//! `tests/golden/optim_golden.txt` comes from `tests/golden/make_optim_golden.py` (torch 2.x,
//! CPU). The heart of it, for each optimizer configuration and dtype:
//!
//! ```python
//! p = torch.nn.Parameter(torch.tensor(init_params(), dtype=dtype))
//! opt = getattr(torch.optim, cls_name)([p], lr=lr, foreach=False, **kwargs)
//! for t in range(6):
//!     for group in opt.param_groups:
//!         group["lr"] = lr * (1.0 - 0.1 * t)
//!     p.grad = torch.tensor(grad_at(t), dtype=dtype)
//!     opt.step()
//!     record(p)            # -> "param" lines
//! ```
//!
//! clipping: `norm = torch.nn.utils.clip_grad_norm_([p], max_norm, norm_type=norm_type)`,
//! `torch.nn.utils.clip_grad_value_([p], clip_value)`; schedules: `sched.get_last_lr()[0]` after
//! 0..30 calls of `sched.step()` for `StepLR`, `ExponentialLR`, `CosineAnnealingLR` and
//! `SequentialLR([LinearLR(o, start_factor=0.1, total_iters=5), CosineAnnealingLR(o, T_max=25,
//! eta_min=1e-3)], milestones=[5])`; `ReduceLROnPlateau(opt, **kw).step(metric)` then
//! `opt.param_groups[0]["lr"]` over 30 metrics.
//!
//! f64 results must agree to 1e-12 relative; f32 results (against torch in float32) to 1e-6.

use lstmrs_core::optim::{
    clip_grad_norm, clip_grad_value, AdagradConfig, AdamConfig, CosineWarmup, ExponentialLr,
    LrSchedule, OptimizerConfig, PlateauConfig, PlateauMode, ReduceLrOnPlateau, RmsPropConfig,
    SgdConfig, StepLr, ThresholdMode,
};
use lstmrs_core::Scalar;

const GOLDEN: &str = include_str!("golden/optim_golden.txt");

/// One `case ... end` block of the golden file.
struct Case {
    kind: String,
    name: String,
    dtype: String,
    fields: Vec<(String, Vec<String>)>,
}

impl Case {
    fn id(&self) -> String {
        format!("{} {} {}", self.kind, self.name, self.dtype)
    }

    fn hyper(&self, key: &str) -> Option<&str> {
        let toks = &self
            .fields
            .iter()
            .find(|(k, _)| k == "hyper")
            .unwrap_or_else(|| panic!("{}: no hyper line", self.id()))
            .1;
        toks.chunks(2)
            .find(|kv| kv[0] == key)
            .map(|kv| kv[1].as_str())
    }

    fn hf(&self, key: &str, default: f64) -> f64 {
        self.hyper(key)
            .map(|v| v.parse().expect("hyper number"))
            .unwrap_or(default)
    }

    fn flag(&self, key: &str) -> bool {
        self.hyper(key) == Some("1")
    }

    fn rows(&self, key: &str) -> Vec<Vec<f64>> {
        self.fields
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.iter().map(|t| t.parse().expect("number")).collect())
            .collect()
    }

    fn row(&self, key: &str) -> Vec<f64> {
        let mut rows = self.rows(key);
        assert_eq!(rows.len(), 1, "{}: field {key}", self.id());
        rows.remove(0)
    }
}

fn parse(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut cur: Option<Case> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut toks = line.split_whitespace().map(str::to_string);
        let head = toks.next().unwrap();
        match head.as_str() {
            "case" => {
                assert!(cur.is_none(), "nested case: {line}");
                let t: Vec<String> = toks.collect();
                assert_eq!(t.len(), 3, "bad case line: {line}");
                cur = Some(Case {
                    kind: t[0].clone(),
                    name: t[1].clone(),
                    dtype: t[2].clone(),
                    fields: Vec::new(),
                });
            }
            "end" => cases.push(cur.take().expect("end without case")),
            _ => cur
                .as_mut()
                .expect("field outside a case")
                .fields
                .push((head, toks.collect())),
        }
    }
    assert!(cur.is_none(), "unterminated case");
    cases
}

fn cases(kind: &str) -> Vec<Case> {
    parse(GOLDEN)
        .into_iter()
        .filter(|c| c.kind == kind)
        .collect()
}

/// Largest relative difference, with `floor` guarding exact zeros in `want`.
fn max_rel_err(got: &[f64], want: &[f64], floor: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g - w).abs() / w.abs().max(floor))
        .fold(0.0, f64::max)
}

fn optimizer_config(case: &Case) -> OptimizerConfig {
    let class = case.hyper("class").expect("class");
    match class {
        "SGD" => OptimizerConfig::Sgd(SgdConfig {
            momentum: case.hf("momentum", 0.0),
            dampening: case.hf("dampening", 0.0),
            weight_decay: case.hf("weight_decay", 0.0),
            nesterov: case.flag("nesterov"),
            maximize: case.flag("maximize"),
        }),
        "Adam" | "AdamW" => {
            let d = if class == "Adam" {
                AdamConfig::default()
            } else {
                AdamConfig::adamw_default()
            };
            let c = AdamConfig {
                beta1: case.hf("betas0", d.beta1),
                beta2: case.hf("betas1", d.beta2),
                eps: case.hf("eps", d.eps),
                weight_decay: case.hf("weight_decay", d.weight_decay),
                amsgrad: case.flag("amsgrad"),
                maximize: case.flag("maximize"),
            };
            if class == "Adam" {
                OptimizerConfig::Adam(c)
            } else {
                OptimizerConfig::AdamW(c)
            }
        }
        "RMSprop" => {
            let d = RmsPropConfig::default();
            OptimizerConfig::RmsProp(RmsPropConfig {
                alpha: case.hf("alpha", d.alpha),
                eps: case.hf("eps", d.eps),
                weight_decay: case.hf("weight_decay", 0.0),
                momentum: case.hf("momentum", 0.0),
                centered: case.flag("centered"),
                maximize: case.flag("maximize"),
            })
        }
        "Adagrad" => {
            let d = AdagradConfig::default();
            OptimizerConfig::Adagrad(AdagradConfig {
                lr_decay: case.hf("lr_decay", 0.0),
                weight_decay: case.hf("weight_decay", 0.0),
                initial_accumulator_value: case.hf("initial_accumulator_value", 0.0),
                eps: case.hf("eps", d.eps),
                maximize: case.flag("maximize"),
            })
        }
        other => panic!("unknown class {other}"),
    }
}

fn to_t<T: Scalar>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

fn to_f64<T: Scalar>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| Scalar::to_f64(x)).collect()
}

/// Runs one trajectory; returns the worst relative error over all steps.
fn run_optim_case<T: Scalar>(case: &Case) -> f64 {
    let lrs = case.row("lrs");
    let grads = case.rows("grad");
    let want = case.rows("param");
    assert_eq!(grads.len(), want.len());
    assert_eq!(grads.len(), lrs.len());
    let mut params = to_t::<T>(&case.row("init"));
    let mut opt = optimizer_config(case)
        .build::<T>(params.len())
        .unwrap_or_else(|e| panic!("{}: {e}", case.id()));
    let mut worst = 0.0f64;
    // Rounding errors are relative to the operands: an entry that the steps move towards zero
    // (cancellation) is measured against the largest size it has had so far.
    let mut scale: Vec<f64> = case.row("init").iter().map(|v| v.abs().max(1e-3)).collect();
    for (t, (g, w)) in grads.iter().zip(&want).enumerate() {
        opt.step(&mut params, &to_t::<T>(g), lrs[t]).unwrap();
        let got = to_f64(&params);
        for i in 0..got.len() {
            scale[i] = scale[i].max(w[i].abs());
            worst = worst.max((got[i] - w[i]).abs() / scale[i]);
        }
    }
    assert_eq!(opt.steps(), grads.len() as u64);
    worst
}

#[test]
fn optimizers_follow_torch_trajectories() {
    let all = cases("optim");
    // 25 configurations in each dtype: every option of every optimizer.
    assert_eq!(all.len(), 50);
    let mut report = Vec::new();
    for case in &all {
        let (err, tol) = match case.dtype.as_str() {
            "f64" => (run_optim_case::<f64>(case), 1e-12),
            "f32" => (run_optim_case::<f32>(case), 1e-6),
            d => panic!("dtype {d}"),
        };
        report.push((case.id(), err, tol));
    }
    for (id, err, tol) in &report {
        println!("{id}: {err:.2e} (tol {tol:e})");
    }
    for (id, err, tol) in &report {
        assert!(err <= tol, "{id}: relative error {err:e} > {tol:e}");
    }
}

#[test]
fn optimizer_kinds_cover_every_torch_class() {
    let all = cases("optim");
    for class in ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"] {
        let n = all
            .iter()
            .filter(|c| c.hyper("class") == Some(class))
            .count();
        assert!(n >= 6, "{class}: {n} cases");
    }
    let names: Vec<&str> = all
        .iter()
        .map(|c| optimizer_config(c).build::<f64>(1).unwrap().name())
        .collect();
    for kind in ["sgd", "adam", "adamw", "rmsprop", "adagrad"] {
        assert!(names.contains(&kind), "{kind}");
    }
}

fn run_clip_norm<T: Scalar>(case: &Case) -> (f64, f64) {
    let mut g = to_t::<T>(&case.row("grad"));
    let norm = clip_grad_norm(
        &mut g,
        case.hf("max_norm", f64::NAN),
        case.hf("norm_type", f64::NAN),
        true,
    )
    .unwrap();
    let want_norm = case.row("norm")[0];
    let norm_err = (norm - want_norm).abs() / want_norm;
    (norm_err, max_rel_err(&to_f64(&g), &case.row("out"), 1e-3))
}

#[test]
fn clip_grad_norm_matches_torch() {
    let all = cases("clip_norm");
    assert_eq!(all.len(), 10);
    for case in &all {
        let tol = if case.dtype == "f64" { 1e-12 } else { 1e-6 };
        let (norm_err, out_err) = match case.dtype.as_str() {
            "f64" => run_clip_norm::<f64>(case),
            _ => run_clip_norm::<f32>(case),
        };
        assert!(norm_err <= tol, "{}: norm error {norm_err:e}", case.id());
        assert!(out_err <= tol, "{}: grad error {out_err:e}", case.id());
        // The cases that clip really change the gradients.
        let before = case.row("grad");
        let after = case.row("out");
        assert_eq!(case.name.contains("not_clipped"), before == after);
    }
}

#[test]
fn clip_grad_norm_long_buffer_matches_torch_at_any_thread_count() {
    let case = &cases("clip_norm_formula")[0];
    let n = case.hf("n", 0.0) as usize;
    assert!(n >= 4 * lstmrs_core::optim::PAR_MIN_LEN);
    let x: Vec<f64> = (0..n)
        .map(|i| (0.001 * i as f64).sin() * (1 + i % 7) as f64)
        .collect();
    let want_norm = case.row("norm")[0];
    let idx: Vec<usize> = case.rows("index")[0].iter().map(|&v| v as usize).collect();
    let want_out = case.row("out");
    let before = lstmrs_core::threads::num_threads();
    let mut results = Vec::new();
    for threads in [1, 2, 3] {
        lstmrs_core::threads::set_num_threads(threads).unwrap();
        let mut g = x.clone();
        let norm = clip_grad_norm(&mut g, 10.0, 2.0, false).unwrap();
        assert!(
            (norm - want_norm).abs() <= 1e-12 * want_norm,
            "{norm} vs {want_norm}"
        );
        let got: Vec<f64> = idx.iter().map(|&i| g[i]).collect();
        assert!(max_rel_err(&got, &want_out, 1e-300) <= 1e-12);
        results.push((norm.to_bits(), g));
    }
    lstmrs_core::threads::set_num_threads(before).unwrap();
    for r in &results[1..] {
        assert_eq!(r.0, results[0].0, "norm differs between thread counts");
        assert!(
            r.1 == results[0].1,
            "clipped grads differ between thread counts"
        );
    }
}

#[test]
fn clip_grad_value_matches_torch() {
    let all = cases("clip_value");
    assert_eq!(all.len(), 4);
    for case in &all {
        let v = case.hf("clip_value", f64::NAN);
        let want = case.row("out");
        if case.dtype == "f64" {
            let mut g = case.row("grad");
            clip_grad_value(&mut g, v).unwrap();
            assert_eq!(g, want, "{}", case.id());
        } else {
            let mut g = to_t::<f32>(&case.row("grad"));
            clip_grad_value(&mut g, v).unwrap();
            assert_eq!(to_f64(&g), want, "{}", case.id());
        }
        assert!(
            case.row("grad").iter().any(|x| x.abs() > v),
            "{}",
            case.id()
        );
    }
}

#[test]
fn closed_form_schedules_match_torch() {
    let all = cases("sched");
    assert_eq!(all.len(), 5);
    for case in &all {
        let base = case.hf("base_lr", f64::NAN);
        let sched: Box<dyn LrSchedule> = match case.name.as_str() {
            n if n.starts_with("step_lr") => Box::new(
                StepLr::new(
                    base,
                    case.hf("step_size", 0.0) as u64,
                    case.hf("gamma", f64::NAN),
                )
                .unwrap(),
            ),
            "exponential_lr" => {
                Box::new(ExponentialLr::new(base, case.hf("gamma", f64::NAN)).unwrap())
            }
            n if n.starts_with("cosine") => Box::new(
                CosineWarmup::new(
                    base,
                    case.hf("warmup_steps", f64::NAN) as u64,
                    case.hf("total_steps", f64::NAN) as u64,
                    case.hf("min_lr", f64::NAN),
                    case.hf("warmup_start_factor", f64::NAN),
                )
                .unwrap(),
            ),
            n => panic!("unknown schedule {n}"),
        };
        let want = case.row("lrs");
        assert_eq!(want.len(), 31);
        let got: Vec<f64> = (0..want.len() as u64).map(|k| sched.lr_at(k)).collect();
        let err = max_rel_err(&got, &want, 1e-300);
        assert!(err <= 1e-12, "{}: {err:e}\n{got:?}\n{want:?}", case.id());
    }
}

#[test]
fn reduce_lr_on_plateau_matches_torch() {
    let all = cases("plateau");
    assert_eq!(all.len(), 4);
    for case in &all {
        let d = PlateauConfig::default();
        let config = PlateauConfig {
            mode: match case.hyper("mode") {
                Some("max") => PlateauMode::Max,
                _ => PlateauMode::Min,
            },
            factor: case.hf("factor", d.factor),
            patience: case.hf("patience", d.patience as f64) as u64,
            threshold: case.hf("threshold", d.threshold),
            threshold_mode: match case.hyper("threshold_mode") {
                Some("abs") => ThresholdMode::Abs,
                _ => ThresholdMode::Rel,
            },
            cooldown: case.hf("cooldown", 0.0) as u64,
            min_lr: case.hf("min_lr", 0.0),
            eps: case.hf("eps", d.eps),
        };
        let mut s = ReduceLrOnPlateau::new(case.hf("lr", f64::NAN), config).unwrap();
        let got: Vec<f64> = case.row("metrics").iter().map(|&m| s.step(m)).collect();
        let want = case.row("lrs");
        // Same operations on Python floats: the rates agree exactly.
        assert_eq!(got, want, "{}", case.id());
        assert!(
            want.last() < want.first(),
            "{}: the case never reduces",
            case.id()
        );
    }
}
