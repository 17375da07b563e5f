"""lstmrs-lion: the update against the paper's formula, in-place operation, state, errors and
registration."""

from __future__ import annotations

import tracemalloc

import lstmrs_lion
import numpy as np
import pytest
from lstmrs.datasets import adding_problem
from lstmrs.errors import DTypeError, InvalidArgumentError, ShapeError
from lstmrs.models import Model
from lstmrs.plugins import get_optimizers
from lstmrs.testing import register_temporarily
from lstmrs_lion import Lion, LionCore


def lion_formula(p, grads, lr, beta1, beta2, wd):
    """Chen et al. (2023), Algorithm 2, written directly (new arrays every step)."""
    m = np.zeros_like(p)
    for g in grads:
        p = p * (1 - lr * wd)
        p = p - lr * np.sign(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g
    return p, m


def test_golden_values():
    # Golden values from the formula above (NumPy, float64):
    #   p = np.linspace(-1.0, 1.0, 6); m = np.zeros(6)
    #   grads = [np.array([0.5, -0.25, 0.0, 1.0, -2.0, 0.125]) * (k + 1) * (-1) ** k
    #            for k in range(3)]
    #   lr, b1, b2, wd = 0.1, 0.9, 0.99, 0.5
    #   for g in grads:
    #       p = p * (1 - lr * wd); p = p - lr * np.sign(b1 * m + (1 - b1) * g)
    #       m = b2 * m + (1 - b2) * g
    golden_p = [
        -0.9526249999999999,
        -0.41917499999999996,
        -0.17147499999999993,
        0.07622500000000015,
        0.609675,
        0.7621249999999999,
    ]
    golden_m = [
        0.01000050000000001,
        -0.005000250000000005,
        0.0,
        0.02000100000000002,
        -0.04000200000000004,
        0.0025001250000000023,
    ]
    p = np.linspace(-1.0, 1.0, 6)
    core = Lion(lr=0.1, betas=(0.9, 0.99), weight_decay=0.5).build(6, "float64")
    for k in range(3):
        g = np.array([0.5, -0.25, 0.0, 1.0, -2.0, 0.125]) * (k + 1) * (-1) ** k
        core.step(p, g, 0.1)
    np.testing.assert_allclose(p, golden_p, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(core.exp_avg, golden_m, rtol=1e-12, atol=1e-17)
    assert core.steps == 3
    # The zero-gradient element only decays: sign(0) = 0.
    assert p[2] == pytest.approx(-0.2 * 0.95**3, rel=1e-14)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-6)])
def test_matches_the_formula_on_random_data(dtype, rtol):
    rng = np.random.default_rng(7)
    n = 1000
    p0 = rng.normal(size=n)
    grads = [rng.normal(size=n) for _ in range(6)]
    expected_p, expected_m = lion_formula(p0.copy(), grads, 3e-3, 0.9, 0.99, 0.1)
    p = p0.astype(dtype)
    core = Lion(lr=3e-3, weight_decay=0.1).build(n, dtype)
    for g in grads:
        core.step(p, g.astype(dtype), 3e-3)
    np.testing.assert_allclose(p, expected_p, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(core.exp_avg, expected_m, rtol=rtol * 10, atol=rtol)
    assert p.dtype == np.dtype(dtype)


def test_updates_in_place_without_copying_the_model():
    n = 1_000_000
    core = Lion(lr=1e-3, weight_decay=0.1).build(n, "float32")
    p = np.ones(n, dtype=np.float32)
    g = np.full(n, 0.5, dtype=np.float32)
    m_buffer = core.exp_avg
    core.step(p, g, 1e-3)  # warm-up
    tracemalloc.start()
    try:
        core.step(p, g, 1e-3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * 4 // 10, f"a step allocated {peak} bytes for a {n * 4}-byte model"
    assert core.exp_avg is m_buffer
    assert p[0] == pytest.approx((1 * (1 - 1e-4) - 1e-3) * (1 - 1e-4) - 1e-3, rel=1e-6)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=50) for _ in range(4)]
    a, b = Lion(lr=1e-2).build(50, "float64"), Lion(lr=1e-2).build(50, "float64")
    pa = rng.normal(size=50)
    for g in grads[:2]:
        a.step(pa, g, 1e-2)
    state = a.state_dict()
    assert state["kind"] == "lion" and state["step"] == 2
    assert state["buffers"]["exp_avg"].dtype == np.float64
    b.load_state_dict(state)
    pb = pa.copy()
    for g in grads[2:]:
        a.step(pa, g, 1e-2)
        b.step(pb, g, 1e-2)
    np.testing.assert_array_equal(pa, pb)
    assert b.steps == 4
    with pytest.raises(InvalidArgumentError, match="expected 'lion'"):
        b.load_state_dict({"kind": "adam", "step": 0, "buffers": {}})
    with pytest.raises(ShapeError, match="expected 50 values"):
        b.load_state_dict({"kind": "lion", "step": 1, "buffers": {"exp_avg": np.zeros(3)}})


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(InvalidArgumentError, match="betas"):
        Lion(betas=(0.9, 1.0))
    with pytest.raises(InvalidArgumentError, match="betas"):
        Lion(betas=0.9)
    with pytest.raises(InvalidArgumentError, match="weight_decay"):
        Lion(weight_decay=-1)
    with pytest.raises(InvalidArgumentError, match="unknown argument"):
        Lion(momentum=0.9)
    core = Lion().build(4, "float32")
    with pytest.raises(DTypeError, match="float32"):
        core.step(np.zeros(4), np.zeros(4), 1e-3)
    with pytest.raises(ShapeError, match="expected 4 values"):
        core.step(np.zeros(5, np.float32), np.zeros(5, np.float32), 1e-3)
    with pytest.raises(InvalidArgumentError, match="writable"):
        core.step(np.zeros(8, np.float32)[::2], np.zeros(4, np.float32), 1e-3)
    with pytest.raises(DTypeError):
        LionCore(4, "int32")
    assert core.steps == 0


def test_defaults_and_config():
    opt = Lion()
    assert opt.lr == 1e-4 and opt.hyper == {"betas": (0.9, 0.99), "weight_decay": 0.0}
    assert opt.get_config() == {
        "name": "lion",
        "lr": 1e-4,
        "hyper": {"betas": [0.9, 0.99], "weight_decay": 0.0},
    }
    assert repr(Lion(lr=1e-3, weight_decay=1.0)) == "Lion(lr=0.001, weight_decay=1.0)"


def test_registered_through_the_hook(lstmrs_plugins):
    assert "lion" not in get_optimizers()
    with register_temporarily(lstmrs_lion, name="lstmrs_lion"):
        assert get_optimizers()["lion"] is Lion
        assert lstmrs_plugins.owner("optimizers", "lion") == "lstmrs_lion"
        assert {"adam", "sgd"} <= set(get_optimizers())
    assert "lion" not in get_optimizers()


def test_trains_an_lstmrs_model_through_fit(lstmrs_plugins):
    # compile("lion") finds the plugin; fit takes the gradient from the Rust core and runs the
    # update here, in place on the model's weights (a view, not a copy).
    x, y = adding_problem(128, 10, seed=0)
    with register_temporarily(lstmrs_lion, name="lstmrs_lion"):
        model = Model(input_size=2, hidden_size=16, output_size=1, loss="mse", seed=0)
        model.compile("lion", lr=3e-3, clip_norm=1.0)
        assert isinstance(model._opt_core, LionCore)
        first = model.evaluate(x, y)["loss"]
        model.fit(x, y, epochs=15, batch_size=32, verbose=0, seed=0)
    last = model.evaluate(x, y)["loss"]
    assert last < 0.5 * first, (first, last)
    assert model.optimizer_steps == 60
    np.testing.assert_array_equal(model._opt_core.exp_avg.shape, (model.num_params,))


def test_first_fit_step_is_the_formula(lstmrs_plugins):
    # One step through fit against the paper's formula on the core's gradient.
    x, y = (a.astype(np.float64) for a in adding_problem(32, 6, seed=1))
    with register_temporarily(lstmrs_lion, name="lstmrs_lion"):
        model = Model(input_size=2, hidden_size=8, output_size=1, dtype="float64", seed=2)
        p0 = model.get_weights()
        _, g = model.core.loss_and_grad(x, y, model.loss.spec(), training=True)
        model.compile("lion", lr=1e-2, weight_decay=0.5)
        model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    expected, _ = lion_formula(p0, [g], 1e-2, 0.9, 0.99, 0.5)
    np.testing.assert_allclose(model.get_weights(), expected, rtol=1e-13, atol=1e-15)
