"""Writes optim_golden.txt: torch.optim trajectories, clipping results and LR schedules that
rust/lstmrs-core/tests/optim_golden.rs checks the Rust optimizers against.

Run from anywhere:  /work/venv-tools/bin/python rust/lstmrs-core/tests/golden/make_optim_golden.py

Format (whitespace separated, one record per line, numbers as Python's round-trip repr):
    case <kind> <name> <dtype>      kind: optim | clip_norm | clip_value | clip_norm_formula |
                                    sched | plateau
    hyper <key> <value> ...         constructor arguments
    <field> <values...>             e.g. lrs, init, grad (one line per step), param (one line
                                    per step, after it), norm, out, metrics
    end
"""

import math
from pathlib import Path

import torch

OUT = Path(__file__).with_name("optim_golden.txt")
N = 11
STEPS = 6
DTYPES = {"f64": torch.float64, "f32": torch.float32}


def init_params():
    # Mixed signs and magnitudes, one exact zero.
    return [0.0 if i == 4 else 0.5 * math.cos(0.9 * i) + 0.05 * i for i in range(N)]


def grad_at(t):
    # Magnitudes from 1e-2 to 1e2 so eps and the moment estimates all matter; element 3 always
    # has a zero gradient and element 7 changes sign every step.
    g = []
    for i in range(N):
        scale = 10.0 ** ((i % 5) - 2)
        v = math.sin(0.37 * (i + 1) * (t + 1) + 0.3 * t) * scale
        if i == 3:
            v = 0.0
        if i == 7:
            v = (-1.0) ** t * 0.8
        g.append(v)
    return g


def lrs_for(lr):
    # The rate changes every step, as under a schedule.
    return [lr * (1.0 - 0.1 * t) for t in range(STEPS)]


OPTIM_CASES = [
    # (name, torch class, lr, kwargs)
    ("sgd_plain", "SGD", 0.1, {}),
    ("sgd_wd", "SGD", 0.1, {"weight_decay": 0.05}),
    ("sgd_momentum", "SGD", 0.05, {"momentum": 0.9}),
    ("sgd_momentum_dampening", "SGD", 0.05, {"momentum": 0.8, "dampening": 0.3}),
    ("sgd_nesterov", "SGD", 0.05, {"momentum": 0.9, "nesterov": True}),
    (
        "sgd_nesterov_wd_maximize",
        "SGD",
        0.05,
        {"momentum": 0.7, "nesterov": True, "weight_decay": 0.1, "maximize": True},
    ),
    ("adam_default", "Adam", 0.01, {}),
    ("adam_wd", "Adam", 0.01, {"weight_decay": 0.1}),
    ("adam_amsgrad", "Adam", 0.01, {"amsgrad": True}),
    (
        "adam_betas_eps_amsgrad_wd",
        "Adam",
        0.02,
        {"betas": (0.7, 0.95), "eps": 1e-3, "amsgrad": True, "weight_decay": 0.01},
    ),
    ("adam_large_beta1_maximize", "Adam", 0.01, {"betas": (0.6, 0.9), "maximize": True}),
    ("adamw_default", "AdamW", 0.01, {}),
    ("adamw_wd_amsgrad", "AdamW", 0.05, {"weight_decay": 0.3, "amsgrad": True}),
    ("adamw_no_wd", "AdamW", 0.01, {"weight_decay": 0.0, "betas": (0.8, 0.99)}),
    ("rmsprop_default", "RMSprop", 0.01, {}),
    ("rmsprop_centered", "RMSprop", 0.01, {"centered": True}),
    ("rmsprop_momentum", "RMSprop", 0.01, {"momentum": 0.9}),
    (
        "rmsprop_centered_momentum_wd",
        "RMSprop",
        0.01,
        {"centered": True, "momentum": 0.5, "weight_decay": 0.1},
    ),
    ("rmsprop_alpha_eps", "RMSprop", 0.02, {"alpha": 0.3, "eps": 1e-3}),
    ("rmsprop_maximize", "RMSprop", 0.01, {"maximize": True, "alpha": 0.9}),
    ("adagrad_default", "Adagrad", 0.1, {}),
    ("adagrad_lr_decay", "Adagrad", 0.1, {"lr_decay": 0.5}),
    ("adagrad_wd", "Adagrad", 0.1, {"weight_decay": 0.2}),
    ("adagrad_init_acc_eps", "Adagrad", 0.1, {"initial_accumulator_value": 0.3, "eps": 1e-2}),
    ("adagrad_maximize", "Adagrad", 0.1, {"maximize": True, "lr_decay": 0.1}),
]


def fmt(values):
    return " ".join(repr(float(v)) for v in values)


def hyper_line(kwargs):
    parts = []
    for k, v in kwargs.items():
        if isinstance(v, tuple):
            for j, x in enumerate(v):
                parts += [f"{k}{j}", repr(float(x))]
        elif isinstance(v, bool):
            parts += [k, "1" if v else "0"]
        elif isinstance(v, str):
            parts += [k, v]
        else:
            parts += [k, repr(float(v))]
    return "hyper " + " ".join(parts) if parts else "hyper"


def optim_case(out, name, cls_name, lr, kwargs, dkey):
    dtype = DTYPES[dkey]
    p = torch.nn.Parameter(torch.tensor(init_params(), dtype=dtype))
    # foreach=False pins the single-tensor loop, PyTorch's CPU default.
    opt = getattr(torch.optim, cls_name)([p], lr=lr, foreach=False, **kwargs)
    lrs = lrs_for(lr)
    out.append(f"case optim {name} {dkey}")
    out.append(f"hyper class {cls_name} " + hyper_line(kwargs)[len("hyper ") :])
    out.append("lrs " + fmt(lrs))
    out.append("init " + fmt(p.detach().tolist()))
    for t in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lrs[t]
        grad = torch.tensor(grad_at(t), dtype=dtype)
        p.grad = grad.clone()
        opt.step()
        out.append("grad " + fmt(grad.tolist()))
        out.append("param " + fmt(p.detach().tolist()))
    out.append("end")


def clip_cases(out):
    base = [math.sin(1.3 * i + 0.2) * (1.0 + (i % 4)) for i in range(N)]
    # (name, grads, max_norm, norm_type): clipped, unclipped, other p-norms.
    cases = [
        ("l2_clipped", base, 1.0, 2.0),
        ("l2_not_clipped", base, 100.0, 2.0),
        ("l1_clipped", base, 2.5, 1.0),
        ("l3_clipped", base, 0.5, 3.0),
        ("linf_clipped", base, 0.75, math.inf),
    ]
    for dkey, dtype in DTYPES.items():
        for name, grads, max_norm, norm_type in cases:
            p = torch.nn.Parameter(torch.zeros(N, dtype=dtype))
            p.grad = torch.tensor(grads, dtype=dtype)
            out.append(f"case clip_norm {name} {dkey}")
            out.append(f"hyper max_norm {max_norm!r} norm_type {norm_type!r}")
            out.append("grad " + fmt(p.grad.tolist()))
            norm = torch.nn.utils.clip_grad_norm_([p], max_norm, norm_type=norm_type)
            out.append("norm " + fmt([norm.item()]))
            out.append("out " + fmt(p.grad.tolist()))
            out.append("end")
        for clip_value in (0.5, 2.0):
            p = torch.nn.Parameter(torch.zeros(N, dtype=dtype))
            p.grad = torch.tensor(base, dtype=dtype)
            out.append(f"case clip_value value_{clip_value} {dkey}")
            out.append(f"hyper clip_value {clip_value!r}")
            out.append("grad " + fmt(p.grad.tolist()))
            torch.nn.utils.clip_grad_value_([p], clip_value)
            out.append("out " + fmt(p.grad.tolist()))
            out.append("end")
    # A buffer long enough for the parallel path; the Rust test rebuilds it from the formula
    # x[i] = sin(0.001 * i) * (1 + i % 7) and checks the norm and a few clipped entries.
    n = 300_000
    x = torch.tensor([math.sin(0.001 * i) * (1 + i % 7) for i in range(n)], dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    p.grad = x
    norm = torch.nn.utils.clip_grad_norm_([p], 10.0)
    idx = [0, 1, 7, 12345, 65535, 65536, 200001, n - 1]
    out.append("case clip_norm_formula sin_1e-3_mod7 f64")
    out.append(f"hyper n {n} max_norm 10.0 norm_type 2.0")
    out.append("norm " + fmt([norm.item()]))
    out.append("index " + " ".join(str(i) for i in idx))
    out.append("out " + fmt([p.grad[i].item() for i in idx]))
    out.append("end")


def sched_lrs(make, steps=30, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    return lrs


def sched_cases(out):
    S = torch.optim.lr_scheduler
    cases = [
        ("step_lr", {"base_lr": 0.1, "step_size": 3, "gamma": 0.5}, lambda o: S.StepLR(o, 3, 0.5)),
        (
            "step_lr_1",
            {"base_lr": 0.1, "step_size": 1, "gamma": 0.9},
            lambda o: S.StepLR(o, 1, 0.9),
        ),
        ("exponential_lr", {"base_lr": 0.1, "gamma": 0.87}, lambda o: S.ExponentialLR(o, 0.87)),
        (
            "cosine_warmup",
            {
                "base_lr": 0.1,
                "warmup_steps": 5,
                "total_steps": 30,
                "min_lr": 1e-3,
                "warmup_start_factor": 0.1,
            },
            lambda o: S.SequentialLR(
                o,
                [
                    S.LinearLR(o, start_factor=0.1, total_iters=5),
                    S.CosineAnnealingLR(o, T_max=25, eta_min=1e-3),
                ],
                milestones=[5],
            ),
        ),
        (
            "cosine_no_warmup",
            {
                "base_lr": 0.1,
                "warmup_steps": 0,
                "total_steps": 30,
                "min_lr": 0.0,
                "warmup_start_factor": 1.0,
            },
            lambda o: S.CosineAnnealingLR(o, T_max=30),
        ),
    ]
    for name, hyper, make in cases:
        out.append(f"case sched {name} f64")
        out.append(hyper_line(hyper))
        out.append("lrs " + fmt(sched_lrs(make)))
        out.append("end")

    # Metrics that improve, stall, wobble below the threshold and improve again.
    metrics = [
        1.0,
        0.9,
        0.8,
        0.8,
        0.79995,
        0.81,
        0.85,
        0.7,
        0.7,
        0.7,
        0.7,
        0.7,
        0.69,
        0.71,
        0.72,
        0.73,
        0.5,
        0.5,
        0.5,
        0.5,
        0.5,
        0.5,
        0.5,
        0.5,
        float("nan"),
        0.4,
        0.45,
        0.45,
        0.45,
        0.45,
    ]
    plateau_cases = [
        ("min_rel", {"mode": "min", "factor": 0.5, "patience": 2}),
        (
            "min_abs_cooldown",
            {
                "mode": "min",
                "factor": 0.3,
                "patience": 1,
                "threshold": 0.05,
                "threshold_mode": "abs",
                "cooldown": 2,
                "min_lr": 0.004,
            },
        ),
        ("max_rel", {"mode": "max", "factor": 0.5, "patience": 1, "threshold": 0.01}),
        (
            "max_abs_minlr_eps",
            {
                "mode": "max",
                "factor": 0.1,
                "patience": 0,
                "threshold": 0.0,
                "threshold_mode": "abs",
                "min_lr": 0.00099,
                "eps": 1e-4,
            },
        ),
    ]
    for name, kw in plateau_cases:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = S.ReduceLROnPlateau(opt, **kw)
        lrs = []
        for m in metrics:
            opt.step()
            sched.step(m)
            lrs.append(opt.param_groups[0]["lr"])
        out.append(f"case plateau {name} f64")
        out.append(hyper_line({"lr": 0.1, **kw}))
        out.append("metrics " + fmt(metrics))
        out.append("lrs " + fmt(lrs))
        out.append("end")


def main():
    torch.manual_seed(0)
    out = [f"# Generated by make_optim_golden.py with torch {torch.__version__}; do not edit."]
    for dkey in DTYPES:
        for name, cls_name, lr, kwargs in OPTIM_CASES:
            optim_case(out, name, cls_name, lr, kwargs, dkey)
    clip_cases(out)
    sched_cases(out)
    OUT.write_text("\n".join(out) + "\n")
    print(f"wrote {OUT} ({len(out)} lines)")


if __name__ == "__main__":
    main()
