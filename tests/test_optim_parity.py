"""Optimizers, schedules and a whole training step against PyTorch (f64).

- Schedules: ``lstmrs.optim`` closed forms vs ``torch.optim.lr_scheduler`` stepped k times.
- ``OptimizerCore`` vs ``torch.optim`` over 10 steps on random parameters and gradients, with a
  different learning rate at each step (as a schedule would pass).
- One ``train_step`` of a model vs the same forward / backward / step of ``nn.LSTM`` (or
  ``nn.GRU``) + ``nn.Linear`` in torch holding the same weights (loaded by name).
"""

from __future__ import annotations

import numpy as np
import pytest
from lstmrs import optim
from lstmrs.errors import InvalidArgumentError

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def _torch_opt():
    p = torch.zeros(1, requires_grad=True)
    return torch.optim.SGD([p], lr=0.5)


def _lrs(sched, opt, k):
    out = [opt.param_groups[0]["lr"]]
    for _ in range(k):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return np.array(out)


def test_step_lr_matches_torch():
    opt = _torch_opt()
    want = _lrs(torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.3), opt, 20)
    s = optim.StepLR(3, gamma=0.3)
    got = np.array([s.lr_at(k, 0.5) for k in range(21)])
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_exponential_lr_matches_torch():
    opt = _torch_opt()
    want = _lrs(torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9), opt, 30)
    s = optim.ExponentialLR(0.9)
    np.testing.assert_allclose([s.lr_at(k, 0.5) for k in range(31)], want, rtol=1e-12)


@pytest.mark.parametrize("warmup,start", [(5, 0.1), (0, 1.0), (3, 1 / 3)])
def test_cosine_warmup_matches_torch(warmup, start):
    total, min_lr = 20, 0.01
    opt = _torch_opt()
    lr_sched = torch.optim.lr_scheduler
    cosine = lr_sched.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr)
    if warmup:
        lin = lr_sched.LinearLR(opt, start_factor=start, total_iters=warmup)
        sched = lr_sched.SequentialLR(opt, [lin, cosine], milestones=[warmup])
    else:
        sched = cosine
    want = _lrs(sched, opt, total)
    s = optim.CosineWarmup(total, warmup_steps=warmup, min_lr=min_lr, warmup_start_factor=start)
    got = np.array([s.lr_at(k, 0.5) for k in range(total + 1)])
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # Past the end the schedule holds min_lr (torch's cosine would climb back).
    assert s.lr_at(total + 7, 0.5) == min_lr


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "min", "factor": 0.5, "patience": 2, "threshold": 1e-3, "cooldown": 1},
        {
            "mode": "max",
            "factor": 0.1,
            "patience": 0,
            "threshold_mode": "abs",
            "threshold": 0.05,
            "min_lr": 0.01,
        },
    ],
)
def test_reduce_on_plateau_matches_torch(kw):
    rng = np.random.default_rng(4)
    metrics = np.concatenate([np.linspace(1, 0.5, 5), 0.5 + 0.01 * rng.random(25)])
    if kw["mode"] == "max":
        metrics = -metrics
    metrics[12] = np.nan  # NaN counts as no improvement in both
    opt = _torch_opt()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    ours = optim.ReduceLROnPlateau(**kw)
    ours.start(0.5)
    for m in metrics:
        opt.step()
        sched.step(float(m))
        got = ours.step(float(m))
        assert got == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        assert ours.num_bad_epochs == sched.num_bad_epochs
        assert ours.cooldown_counter == sched.cooldown_counter
    # The state round trip continues identically.
    again = optim.schedule_from_state(ours.state_dict())
    assert again.state_dict() == ours.state_dict()
    assert again.step(0.3) == ours.step(0.3)


def test_schedule_arguments_are_checked():
    with pytest.raises(InvalidArgumentError):
        optim.StepLR(0)
    with pytest.raises(InvalidArgumentError):
        optim.CosineWarmup(10, warmup_steps=10)
    with pytest.raises(InvalidArgumentError):
        optim.ReduceLROnPlateau(factor=1.0)
    with pytest.raises(InvalidArgumentError):
        optim.ExponentialLR(0.9, interval="batch")


# --------------------------------------------------------------------------------------------
# OptimizerCore vs torch.optim

OPTIMIZERS = [
    ("sgd", {}, torch.optim.SGD),
    ("sgd", {"momentum": 0.9, "weight_decay": 0.01}, torch.optim.SGD),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, torch.optim.SGD),
    ("sgd", {"momentum": 0.8, "dampening": 0.3}, torch.optim.SGD),
    ("adam", {}, torch.optim.Adam),
    ("adam", {"betas": (0.8, 0.99), "weight_decay": 0.1, "amsgrad": True}, torch.optim.Adam),
    ("adamw", {"weight_decay": 0.05}, torch.optim.AdamW),
    ("adamw", {"amsgrad": True}, torch.optim.AdamW),
    ("rmsprop", {}, torch.optim.RMSprop),
    ("rmsprop", {"centered": True, "momentum": 0.9, "weight_decay": 0.01}, torch.optim.RMSprop),
    (
        "adagrad",
        {"lr_decay": 0.01, "weight_decay": 0.02, "initial_accumulator_value": 0.1},
        torch.optim.Adagrad,
    ),
]


@pytest.mark.parametrize(
    "name,hyper,torch_cls", OPTIMIZERS, ids=[f"{o[0]}-{i}" for i, o in enumerate(OPTIMIZERS)]
)
def test_optimizer_core_matches_torch(name, hyper, torch_cls):
    from lstmrs._lstmrs import OptimizerCore

    rng = np.random.default_rng(7)
    n = 37
    params = rng.normal(size=n)
    spec = optim.get_optimizer(name, lr=0.01, **hyper)
    core = spec.build(n, "float64")
    assert isinstance(core, OptimizerCore) and core.name == name
    tp = torch.tensor(params.copy(), requires_grad=True)
    topt = torch_cls([tp], lr=0.01, **hyper)
    ours = params.copy()
    for k in range(10):
        g = rng.normal(size=n)
        lr = 0.01 * (1 + 0.1 * k)  # a different rate at each step, as a schedule gives
        for group in topt.param_groups:
            group["lr"] = lr
        tp.grad = torch.tensor(g)
        topt.step()
        core.step(ours, g, lr)
    np.testing.assert_allclose(ours, tp.detach().numpy(), rtol=1e-10, atol=1e-14)
    state = core.state_dict()
    assert state["kind"] == name and state["step"] == 10 == core.steps
    tstate = topt.state[tp]
    for buf, values in state["buffers"].items():
        np.testing.assert_allclose(values, tstate[buf].numpy(), rtol=1e-10, atol=1e-14)
    # A restored optimizer continues exactly like the original.
    twin = spec.build(n, "float64")
    twin.load_state_dict(state)
    g = rng.normal(size=n)
    a, b = ours.copy(), ours.copy()
    core.step(a, g, 0.01)
    twin.step(b, g, 0.01)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# A whole training step


def _torch_twin(model, cell):
    """nn.LSTM/GRU + dense head in torch holding the lstmrs model's weights (by name)."""
    k = model.config
    rnn_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    rnn = rnn_cls(
        k["input_size"], k["hidden_size"], num_layers=k["num_layers"], batch_first=True
    ).double()
    dims = [k["hidden_size"], *k["head_hidden"], k["output_size"]]
    head = torch.nn.ModuleList(
        [torch.nn.Linear(a, b).double() for a, b in zip(dims[:-1], dims[1:])]
    )
    sd = model.state_dict()
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            p.copy_(torch.from_numpy(sd[f"rnn.{name}"]))
        for name, p in head.named_parameters():
            p.copy_(torch.from_numpy(sd[f"head.{name}"]))
    return rnn, head


def _torch_forward(rnn, head, x):
    _, h = rnn(x)
    h_n = h[0] if isinstance(h, tuple) else h
    z = h_n[-1]
    for i, layer in enumerate(head):
        z = layer(z)
        if i + 1 < len(head):
            z = torch.tanh(z)
    return z


@pytest.mark.parametrize(
    "cell,layers,head_hidden,clip",
    [("lstm", 1, (), None), ("gru", 2, (6,), 0.05)],
)
def test_train_step_matches_torch(cell, layers, head_hidden, clip):
    from lstmrs.models import Model

    model = Model(
        input_size=3,
        hidden_size=5,
        num_layers=layers,
        cell=cell,
        head_hidden=head_hidden,
        output_size=2,
        pooling="last",
        loss="mse",
        dtype="float64",
        seed=11,
    )
    model.compile("adam", lr=0.01, clip_norm=clip)
    rnn, head = _torch_twin(model, cell)
    params = list(rnn.parameters()) + list(head.parameters())
    topt = torch.optim.Adam(params, lr=0.01)
    rng = np.random.default_rng(5)
    for step in range(3):
        x = rng.normal(size=(4, 6, 3))
        y = rng.normal(size=(4, 2))
        topt.zero_grad()
        tloss = torch.nn.functional.mse_loss(
            _torch_forward(rnn, head, torch.tensor(x)), torch.tensor(y)
        )
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        topt.step()
        loss, grad_norm, out, h_n, c_n = model.core.train_step(
            x, y, model._loss_spec, model._opt_core, 0.01, step, clip_norm=clip
        )
        assert loss == pytest.approx(tloss.item(), rel=1e-10)
        assert grad_norm == pytest.approx(tnorm.item(), rel=1e-9)
        assert out.shape == (4, 2) and h_n.shape == (layers, 4, 5)
        assert (c_n is None) == (cell == "gru")
    sd = model.state_dict()
    for name, p in rnn.named_parameters():
        np.testing.assert_allclose(sd[f"rnn.{name}"], p.detach().numpy(), rtol=1e-9, atol=1e-12)
    for name, p in head.named_parameters():
        np.testing.assert_allclose(sd[f"head.{name}"], p.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_fit_one_batch_equals_torch_step():
    """``fit`` with one unshuffled batch is exactly one Adam step of torch's model."""
    from lstmrs.models import Model

    model = Model(input_size=2, hidden_size=4, output_size=1, dtype="float64", seed=3)
    model.compile("adam", lr=0.05)
    rnn, head = _torch_twin(model, "lstm")
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(5, 7, 2)), rng.normal(size=(5, 1))
    hist = model.fit(x, y, epochs=1, batch_size=5, shuffle=False, verbose=0, seed=0)
    params = list(rnn.parameters()) + list(head.parameters())
    topt = torch.optim.Adam(params, lr=0.05)
    tloss = torch.nn.functional.mse_loss(
        _torch_forward(rnn, head, torch.tensor(x)), torch.tensor(y)
    )
    tloss.backward()
    topt.step()
    assert hist.history["loss"][0] == pytest.approx(tloss.item(), rel=1e-10)
    np.testing.assert_allclose(
        model.state_dict()["rnn.weight_hh_l0"], rnn.weight_hh_l0.detach().numpy(), rtol=1e-9
    )
