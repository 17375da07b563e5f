//! Optimizer state round trips, parallel/serial agreement, schedule state and every error path.

use lstmrs_core::optim::{
    clip_grad_norm, clip_grad_value, clip_grads_with_norm, grad_norm, Adagrad, AdagradConfig, Adam,
    AdamConfig, CosineWarmup, ExponentialLr, LrSchedule, Optimizer, OptimizerConfig,
    OptimizerState, PlateauConfig, PlateauMode, ReduceLrOnPlateau, RmsProp, RmsPropConfig,
    SchedulerState, Sgd, SgdConfig, StepLr, ThresholdMode, PAR_MIN_LEN,
};
use lstmrs_core::{Error, Scalar};

/// One configuration per option combination worth telling apart.
fn all_configs() -> Vec<OptimizerConfig> {
    vec![
        OptimizerConfig::Sgd(SgdConfig::default()),
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 0.01,
            ..SgdConfig::default()
        }),
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: true,
            maximize: true,
            ..SgdConfig::default()
        }),
        OptimizerConfig::Adam(AdamConfig::default()),
        OptimizerConfig::Adam(AdamConfig {
            amsgrad: true,
            weight_decay: 0.1,
            ..AdamConfig::default()
        }),
        OptimizerConfig::AdamW(AdamConfig::adamw_default()),
        OptimizerConfig::AdamW(AdamConfig {
            amsgrad: true,
            maximize: true,
            ..AdamConfig::adamw_default()
        }),
        OptimizerConfig::RmsProp(RmsPropConfig::default()),
        OptimizerConfig::RmsProp(RmsPropConfig {
            centered: true,
            momentum: 0.5,
            weight_decay: 0.1,
            ..RmsPropConfig::default()
        }),
        OptimizerConfig::RmsProp(RmsPropConfig {
            momentum: 0.9,
            ..RmsPropConfig::default()
        }),
        OptimizerConfig::Adagrad(AdagradConfig::default()),
        OptimizerConfig::Adagrad(AdagradConfig {
            lr_decay: 0.1,
            weight_decay: 0.01,
            initial_accumulator_value: 0.2,
            ..AdagradConfig::default()
        }),
    ]
}

fn data<T: Scalar>(n: usize, phase: f64) -> Vec<T> {
    (0..n)
        .map(|i| T::from_f64(((i as f64) * 0.731 + phase).sin() * (1.0 + (i % 5) as f64)))
        .collect()
}

fn lr_at(t: usize) -> f64 {
    0.01 * (1.0 - 0.05 * t as f64)
}

/// Runs `steps` steps starting at step `from`, gradients depending on the step.
fn run<T: Scalar>(opt: &mut dyn Optimizer<T>, params: &mut [T], from: usize, steps: usize) {
    for t in from..from + steps {
        let g = data::<T>(params.len(), t as f64);
        opt.step(params, &g, lr_at(t)).unwrap();
    }
}

fn bits<T: Scalar>(v: &[T]) -> Vec<u64> {
    v.iter().map(|&x| Scalar::to_f64(x).to_bits()).collect()
}

fn round_trip_is_bitwise<T: Scalar>(n: usize) {
    for config in all_configs() {
        let mut whole = config.build::<T>(n).unwrap();
        let mut p_whole = data::<T>(n, 0.3);
        run(whole.as_mut(), &mut p_whole, 0, 6);

        let mut first = config.build::<T>(n).unwrap();
        let mut p = data::<T>(n, 0.3);
        run(first.as_mut(), &mut p, 0, 3);
        let state = first.state();
        assert_eq!(state.step, 3);
        assert_eq!(state.kind, first.name());
        let mut resumed = config.build::<T>(n).unwrap();
        resumed.load_state(&state).unwrap();
        assert_eq!(resumed.state(), state, "{config:?}");
        run(resumed.as_mut(), &mut p, 3, 3);
        assert_eq!(bits(&p), bits(&p_whole), "{config:?}");
        assert_eq!(resumed.state(), whole.state(), "{config:?}");
        assert_eq!(resumed.steps(), 6);
    }
}

#[test]
fn state_round_trip_continues_bitwise_f64() {
    round_trip_is_bitwise::<f64>(37);
}

#[test]
fn state_round_trip_continues_bitwise_f32() {
    round_trip_is_bitwise::<f32>(37);
}

#[test]
fn state_round_trip_on_a_parallel_sized_buffer() {
    round_trip_is_bitwise::<f32>(PAR_MIN_LEN + 4099);
}

#[test]
fn state_exported_before_the_first_step_keeps_pytorch_first_step_momentum() {
    let config = SgdConfig {
        momentum: 0.9,
        dampening: 0.5,
        ..SgdConfig::default()
    };
    let mut a = Sgd::<f64>::new(5, config.clone()).unwrap();
    let mut b = Sgd::<f64>::new(5, config).unwrap();
    b.load_state(&a.state()).unwrap();
    let (mut pa, mut pb) = (vec![1.0; 5], vec![1.0; 5]);
    let g = [1.0, -2.0, 0.5, 0.0, 4.0];
    a.step(&mut pa, &g, 0.1).unwrap();
    b.step(&mut pb, &g, 0.1).unwrap();
    assert_eq!(pa, pb);
    // First step: buffer = g (no dampening), so p = 1 - 0.1 * g.
    let want: Vec<f64> = g.iter().map(|x| 1.0 - 0.1 * x).collect();
    assert_eq!(pa, want);
    let buf = &a.state().buffers[0];
    assert_eq!(buf.0, "momentum_buffer");
    assert_eq!(buf.1, g.to_vec());
}

/// A long buffer goes through the thread pool; the same elements updated in short pieces (each
/// below the parallel threshold, each with its own optimizer) must give the same bits.
fn parallel_matches_pieces<T: Scalar>() {
    let n = 3 * PAR_MIN_LEN + 5;
    let piece = PAR_MIN_LEN / 2 - 3;
    for config in all_configs() {
        let mut big = config.build::<T>(n).unwrap();
        let mut p_big = data::<T>(n, 0.1);
        run(big.as_mut(), &mut p_big, 0, 3);

        let mut p_small = data::<T>(n, 0.1);
        let mut opts: Vec<_> = (0..n)
            .step_by(piece)
            .map(|s| config.build::<T>(piece.min(n - s)).unwrap())
            .collect();
        for t in 0..3 {
            let g = data::<T>(n, t as f64);
            for (k, opt) in opts.iter_mut().enumerate() {
                let r = k * piece..(k * piece + piece).min(n);
                opt.step(&mut p_small[r.clone()], &g[r], lr_at(t)).unwrap();
            }
        }
        assert_eq!(bits(&p_big), bits(&p_small), "{config:?}");
    }
}

#[test]
fn parallel_update_matches_serial_pieces_f32() {
    parallel_matches_pieces::<f32>();
}

#[test]
fn parallel_update_matches_serial_pieces_f64() {
    parallel_matches_pieces::<f64>();
}

#[test]
fn norm_is_the_same_at_any_thread_count() {
    let g = data::<f32>(5 * PAR_MIN_LEN + 77, 0.0);
    let before = lstmrs_core::threads::num_threads();
    let mut seen = Vec::new();
    for threads in [1, 2, 4] {
        lstmrs_core::threads::set_num_threads(threads).unwrap();
        for p in [1.0, 2.0, 3.5, f64::INFINITY] {
            seen.push((threads, p, grad_norm(&g, p).unwrap().to_bits()));
        }
    }
    lstmrs_core::threads::set_num_threads(before).unwrap();
    for &(_, p, b) in &seen {
        let first = seen.iter().find(|s| s.1 == p).unwrap().2;
        assert_eq!(b, first, "p = {p}");
    }
    // And the norm is right: compare with a plain f64 sum.
    let plain: f64 = g
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt();
    let n2 = grad_norm(&g, 2.0).unwrap();
    assert!((n2 - plain).abs() <= 1e-12 * plain);
    let linf = g.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
    assert_eq!(grad_norm(&g, f64::INFINITY).unwrap(), linf);
}

fn expect_value<T: std::fmt::Debug>(r: lstmrs_core::Result<T>, want_arg: &str) {
    match r {
        Err(Error::Value { arg, .. }) => assert_eq!(arg, want_arg),
        other => panic!("expected Error::Value for {want_arg}, got {other:?}"),
    }
}

fn expect_shape<T: std::fmt::Debug>(r: lstmrs_core::Result<T>, want_arg: &str) {
    match r {
        Err(Error::Shape { arg, .. }) => assert_eq!(arg, want_arg),
        other => panic!("expected Error::Shape for {want_arg}, got {other:?}"),
    }
}

#[test]
fn bad_buffers_and_rates_are_errors_that_change_nothing() {
    for config in all_configs() {
        let mut opt = config.build::<f64>(4).unwrap();
        let mut p = vec![0.5; 4];
        opt.step(&mut p, &[0.1, 0.2, 0.3, 0.4], 0.1).unwrap();
        let (p0, s0) = (p.clone(), opt.state());
        expect_shape(opt.step(&mut [0.0; 3], &[0.0; 4], 0.1), "params");
        expect_shape(opt.step(&mut p, &[0.0; 5], 0.1), "grads");
        expect_value(opt.step(&mut p, &[0.0; 4], -0.1), "lr");
        expect_value(opt.step(&mut p, &[0.0; 4], f64::NAN), "lr");
        expect_value(opt.step(&mut p, &[0.0; 4], f64::INFINITY), "lr");
        assert_eq!(p, p0);
        assert_eq!(opt.state(), s0);
    }
}

#[test]
fn bad_hyper_parameters_are_value_errors_naming_the_argument() {
    let sgd = |c: SgdConfig| Sgd::<f64>::new(3, c).map(|_| ());
    let d = SgdConfig::default;
    expect_value(
        sgd(SgdConfig {
            momentum: -0.1,
            ..d()
        }),
        "momentum",
    );
    expect_value(
        sgd(SgdConfig {
            dampening: 1.5,
            ..d()
        }),
        "dampening",
    );
    expect_value(
        sgd(SgdConfig {
            weight_decay: -1.0,
            ..d()
        }),
        "weight_decay",
    );
    expect_value(
        sgd(SgdConfig {
            nesterov: true,
            ..d()
        }),
        "nesterov",
    );
    expect_value(
        sgd(SgdConfig {
            nesterov: true,
            momentum: 0.9,
            dampening: 0.1,
            ..d()
        }),
        "nesterov",
    );

    let adam = |c: AdamConfig| Adam::<f32>::new(3, c).map(|_| ());
    let adamw = |c: AdamConfig| Adam::<f32>::new_adamw(3, c).map(|_| ());
    let a = AdamConfig::default;
    expect_value(adam(AdamConfig { beta1: 1.0, ..a() }), "betas[0]");
    expect_value(adam(AdamConfig { beta1: -0.1, ..a() }), "betas[0]");
    expect_value(adamw(AdamConfig { beta2: 1.0, ..a() }), "betas[1]");
    expect_value(
        adam(AdamConfig {
            beta2: f64::NAN,
            ..a()
        }),
        "betas[1]",
    );
    expect_value(adam(AdamConfig { eps: -1e-8, ..a() }), "eps");
    expect_value(
        adamw(AdamConfig {
            weight_decay: -0.01,
            ..a()
        }),
        "weight_decay",
    );

    let rms = |c: RmsPropConfig| RmsProp::<f64>::new(3, c).map(|_| ());
    let r = RmsPropConfig::default;
    expect_value(rms(RmsPropConfig { alpha: -0.1, ..r() }), "alpha");
    expect_value(rms(RmsPropConfig { alpha: 1.5, ..r() }), "alpha");
    expect_value(rms(RmsPropConfig { eps: -1.0, ..r() }), "eps");
    expect_value(
        rms(RmsPropConfig {
            momentum: -0.5,
            ..r()
        }),
        "momentum",
    );
    expect_value(
        rms(RmsPropConfig {
            weight_decay: f64::INFINITY,
            ..r()
        }),
        "weight_decay",
    );

    let ada = |c: AdagradConfig| Adagrad::<f64>::new(3, c).map(|_| ());
    let g = AdagradConfig::default;
    expect_value(
        ada(AdagradConfig {
            lr_decay: -1.0,
            ..g()
        }),
        "lr_decay",
    );
    expect_value(
        ada(AdagradConfig {
            initial_accumulator_value: -0.1,
            ..g()
        }),
        "initial_accumulator_value",
    );
    expect_value(ada(AdagradConfig { eps: -1.0, ..g() }), "eps");
    expect_value(
        ada(AdagradConfig {
            weight_decay: -1.0,
            ..g()
        }),
        "weight_decay",
    );
}

#[test]
fn mismatched_states_are_rejected_and_change_nothing() {
    let mut adam = Adam::<f64>::new(4, AdamConfig::default()).unwrap();
    let mut p = vec![1.0; 4];
    adam.step(&mut p, &[1.0, 2.0, 3.0, 4.0], 0.1).unwrap();
    let good = adam.state();
    let before = adam.state();

    let mut wrong_kind = good.clone();
    wrong_kind.kind = "adamw".into();
    expect_value(adam.load_state(&wrong_kind), "state.kind");

    let mut missing = good.clone();
    missing.buffers.pop();
    expect_value(adam.load_state(&missing), "state.buffers");

    let mut extra = good.clone();
    extra.buffers.push(("max_exp_avg_sq".into(), vec![0.0; 4]));
    expect_value(adam.load_state(&extra), "state.buffers");

    let mut short = good.clone();
    short.buffers[1].1.pop();
    short.step = 99;
    expect_shape(adam.load_state(&short), "state.buffers");
    assert_eq!(adam.state(), before);

    // An SGD state cannot go into RMSprop even with the same buffer name.
    let sgd = Sgd::<f64>::new(
        4,
        SgdConfig {
            momentum: 0.9,
            ..SgdConfig::default()
        },
    )
    .unwrap();
    let mut rms = RmsProp::<f64>::new(4, RmsPropConfig::default()).unwrap();
    expect_value(rms.load_state(&sgd.state()), "state.kind");

    // Buffers may come in any order.
    let mut reordered = good.clone();
    reordered.buffers.reverse();
    let mut fresh = Adam::<f64>::new(4, AdamConfig::default()).unwrap();
    fresh.load_state(&reordered).unwrap();
    assert_eq!(fresh.state(), good);

    // The state round trip through f64 is exact for f32 buffers.
    let mut a32 = Adagrad::<f32>::new(3, AdagradConfig::default()).unwrap();
    let mut p32 = vec![0.1f32, 0.2, 0.3];
    a32.step(&mut p32, &[0.3, 1e-7, 7.0], 0.5).unwrap();
    let s = a32.state();
    let mut b32 = Adagrad::<f32>::new(3, AdagradConfig::default()).unwrap();
    b32.load_state(&s).unwrap();
    assert_eq!(b32.state(), s);
    let bad = OptimizerState {
        kind: "adagrad".into(),
        step: 1,
        buffers: vec![("sum".into(), vec![0.0; 2])],
    };
    expect_shape(b32.load_state(&bad), "state.buffers");
}

#[test]
fn names_and_hyper_params_are_reported() {
    let names: Vec<&str> = all_configs()
        .iter()
        .map(|c| c.build::<f32>(1).unwrap().name())
        .collect();
    for kind in ["sgd", "adam", "adamw", "rmsprop", "adagrad"] {
        assert!(names.contains(&kind));
    }
    let adamw = Adam::<f32>::new_adamw(2, AdamConfig::adamw_default()).unwrap();
    assert!(adamw.is_adamw());
    let hp = adamw.hyper_params();
    assert!(hp.contains(&("weight_decay", 0.01)));
    assert!(hp.contains(&("beta2", 0.999)));
    assert_eq!(adamw.len(), 2);
    assert!(!adamw.is_empty());
}

#[test]
fn adamw_decays_params_outside_the_moments_and_adam_inside() {
    // With a zero gradient, AdamW only shrinks p by (1 - lr * wd); Adam feeds wd * p into the
    // moments, so its first step moves p by lr (the normalised step) instead.
    let c = AdamConfig {
        weight_decay: 0.1,
        ..AdamConfig::default()
    };
    let mut w = Adam::<f64>::new_adamw(1, c.clone()).unwrap();
    let mut a = Adam::<f64>::new(1, c).unwrap();
    let (mut pw, mut pa) = ([2.0], [2.0]);
    w.step(&mut pw, &[0.0], 0.5).unwrap();
    a.step(&mut pa, &[0.0], 0.5).unwrap();
    assert_eq!(pw[0], 2.0 * (1.0 - 0.5 * 0.1));
    assert!((pa[0] - (2.0 - 0.5)).abs() < 1e-7, "{}", pa[0]);
}

#[test]
fn clip_grad_norm_edge_cases() {
    // Unclipped gradients keep their bits; the returned norm is the norm before clipping.
    let mut g = vec![0.3f32, -0.4];
    let n = clip_grad_norm(&mut g, 1.0, 2.0, true).unwrap();
    assert!((n - 0.5).abs() < 1e-7);
    assert_eq!(g, vec![0.3f32, -0.4]);
    // Clipped gradients end with norm max_norm (up to the 1e-6 guard).
    let mut g = vec![3.0f64, -4.0];
    assert_eq!(clip_grad_norm(&mut g, 1.0, 2.0, false).unwrap(), 5.0);
    assert_eq!(g, vec![3.0 / (5.0 + 1e-6), -4.0 / (5.0 + 1e-6)]);
    // An empty buffer has norm 0.
    let mut e: Vec<f64> = Vec::new();
    assert_eq!(clip_grad_norm(&mut e, 1.0, 2.0, true).unwrap(), 0.0);

    // Non-finite norms: an error that leaves the gradients alone, or PyTorch's scaling.
    let mut g = vec![1.0f64, f64::INFINITY, 2.0];
    expect_value(clip_grad_norm(&mut g, 1.0, 2.0, true), "grads");
    assert_eq!(g, vec![1.0, f64::INFINITY, 2.0]);
    let n = clip_grad_norm(&mut g, 1.0, 2.0, false).unwrap();
    assert_eq!(n, f64::INFINITY);
    assert_eq!(g[0], 0.0);
    assert!(g[1].is_nan());
    let mut g = vec![1.0f32, f32::NAN];
    expect_value(clip_grad_norm(&mut g, 1.0, 2.0, true), "grads");
    assert!(clip_grad_norm(&mut g, 1.0, 2.0, false).unwrap().is_nan());
    assert!(g[0].is_nan());

    // Bad arguments.
    let mut g = vec![1.0f64; 3];
    expect_value(clip_grad_norm(&mut g, -1.0, 2.0, false), "max_norm");
    expect_value(clip_grad_norm(&mut g, f64::NAN, 2.0, false), "max_norm");
    expect_value(clip_grad_norm(&mut g, 1.0, 0.0, false), "norm_type");
    expect_value(clip_grad_norm(&mut g, 1.0, f64::NAN, false), "norm_type");
    expect_value(grad_norm(&g, -2.0), "norm_type");
    expect_value(clip_grads_with_norm(&mut g, -0.5, 1.0), "max_norm");
    assert_eq!(g, vec![1.0; 3]);
    // An infinite max_norm never clips.
    clip_grad_norm(&mut g, f64::INFINITY, 2.0, true).unwrap();
    assert_eq!(g, vec![1.0; 3]);
}

#[test]
fn clip_grad_value_edge_cases() {
    let mut g = vec![-3.0f64, 0.5, f64::NAN, 7.0, -0.0];
    clip_grad_value(&mut g, 1.0).unwrap();
    assert_eq!(g[0], -1.0);
    assert_eq!(g[1], 0.5);
    assert!(g[2].is_nan());
    assert_eq!(g[3], 1.0);
    assert_eq!(g[4].to_bits(), (-0.0f64).to_bits());
    expect_value(clip_grad_value(&mut g, -1.0), "clip_value");
    expect_value(clip_grad_value(&mut g, f64::NAN), "clip_value");
    // Long buffers take the parallel path with the same result.
    let mut long = data::<f32>(2 * PAR_MIN_LEN + 3, 0.0);
    let want: Vec<f32> = long.iter().map(|&v| v.clamp(-1.5, 1.5)).collect();
    clip_grad_value(&mut long, 1.5).unwrap();
    assert_eq!(long, want);
}

#[test]
fn cosine_warmup_shape_and_end() {
    let s = CosineWarmup::new(0.1, 4, 20, 0.01, 0.0).unwrap();
    assert_eq!(s.lr_at(0), 0.0);
    assert_eq!(s.lr_at(2), 0.05);
    assert_eq!(s.lr_at(4), 0.1);
    assert!((s.lr_at(20) - 0.01).abs() < 1e-15);
    for k in [21, 25, 1000] {
        assert_eq!(s.lr_at(k), 0.01);
    }
    for k in 4..20 {
        assert!(s.lr_at(k + 1) < s.lr_at(k), "not decreasing at {k}");
    }
    // Half way through the cosine: the middle of base and min.
    assert!((s.lr_at(12) - 0.055).abs() < 1e-15);
}

#[test]
fn schedule_states_round_trip() {
    let step = StepLr::new(0.3, 4, 0.5).unwrap();
    assert_eq!(StepLr::from_state(&step.state()).unwrap(), step);
    let exp = ExponentialLr::new(0.3, 0.9).unwrap();
    assert_eq!(ExponentialLr::from_state(&exp.state()).unwrap(), exp);
    let cos = CosineWarmup::new(0.3, 3, 10, 0.001, 0.25).unwrap();
    assert_eq!(CosineWarmup::from_state(&cos.state()).unwrap(), cos);

    // A plateau scheduler resumed from a mid-run state continues exactly.
    let config = PlateauConfig {
        mode: PlateauMode::Max,
        factor: 0.5,
        patience: 1,
        threshold: 0.1,
        threshold_mode: ThresholdMode::Abs,
        cooldown: 2,
        min_lr: 1e-3,
        eps: 1e-9,
    };
    let metrics = [
        0.1, 0.5, 0.55, 0.52, 0.5, 0.7, 0.6, 0.6, 0.6, 0.6, 0.9, 0.9, 0.9, 0.9,
    ];
    let mut whole = ReduceLrOnPlateau::new(0.2, config.clone()).unwrap();
    let want: Vec<f64> = metrics.iter().map(|&m| whole.step(m)).collect();
    assert!(want.last().unwrap() < &0.2);
    let mut first = ReduceLrOnPlateau::new(0.2, config).unwrap();
    let mut got: Vec<f64> = metrics[..5].iter().map(|&m| first.step(m)).collect();
    let mut resumed = ReduceLrOnPlateau::from_state(&first.state()).unwrap();
    assert_eq!(resumed, first);
    got.extend(metrics[5..].iter().map(|&m| resumed.step(m)));
    assert_eq!(got, want);
    assert_eq!(resumed, whole);
    assert_eq!(resumed.last_epoch(), metrics.len() as u64);

    // A fresh plateau state carries an infinite `best` and restores it.
    let fresh = ReduceLrOnPlateau::new(0.1, PlateauConfig::default()).unwrap();
    assert_eq!(fresh.best(), f64::INFINITY);
    assert_eq!(
        ReduceLrOnPlateau::from_state(&fresh.state()).unwrap(),
        fresh
    );
}

#[test]
fn bad_schedules_are_value_errors() {
    expect_value(StepLr::new(0.1, 0, 0.5), "step_size");
    expect_value(StepLr::new(-0.1, 1, 0.5), "base_lr");
    expect_value(StepLr::new(0.1, 1, -0.5), "gamma");
    expect_value(ExponentialLr::new(0.1, f64::NAN), "gamma");
    expect_value(CosineWarmup::new(0.1, 10, 10, 0.0, 0.5), "total_steps");
    expect_value(CosineWarmup::new(0.1, 1, 10, -1.0, 0.5), "min_lr");
    expect_value(
        CosineWarmup::new(0.1, 1, 10, 0.0, 1.5),
        "warmup_start_factor",
    );
    let d = PlateauConfig::default;
    expect_value(
        ReduceLrOnPlateau::new(0.1, PlateauConfig { factor: 1.0, ..d() }),
        "factor",
    );
    expect_value(
        ReduceLrOnPlateau::new(
            0.1,
            PlateauConfig {
                threshold: -1.0,
                ..d()
            },
        ),
        "threshold",
    );
    expect_value(
        ReduceLrOnPlateau::new(
            0.1,
            PlateauConfig {
                min_lr: -1.0,
                ..d()
            },
        ),
        "min_lr",
    );
    expect_value(ReduceLrOnPlateau::new(-0.1, d()), "lr");

    // States from elsewhere.
    let step = StepLr::new(0.3, 4, 0.5).unwrap().state();
    expect_value(ExponentialLr::from_state(&step), "state.kind");
    let mut missing = step.clone();
    missing.values.retain(|(k, _)| k != "gamma");
    expect_value(StepLr::from_state(&missing), "state.values");
    let mut fractional = step.clone();
    fractional.values[1].1 = 2.5;
    expect_value(StepLr::from_state(&fractional), "step_size");
    let plateau = ReduceLrOnPlateau::new(0.1, d()).unwrap().state();
    let mut bad_flag = plateau.clone();
    for (k, v) in &mut bad_flag.values {
        if k == "mode_max" {
            *v = 2.0;
        }
    }
    expect_value(ReduceLrOnPlateau::from_state(&bad_flag), "mode_max");
    let bogus = SchedulerState {
        kind: "cosine_warmup".into(),
        values: vec![],
    };
    expect_value(CosineWarmup::from_state(&bogus), "state.values");
}
