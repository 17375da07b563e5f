"""The cell language's second version: exp, log, sqrt, softplus, safe division, maximum/minimum
and the row reductions (layer normalisation). The NumPy reference against direct formulas and
torch, its gradients against finite differences, the Rust kernels against the reference, the
documented domain edges, and the ONNX export in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from lstmrs.cells import (
    DIV_EPS,
    LOG_FLOOR,
    Cell,
    CellSpec,
    exp,
    layer_norm,
    log,
    maximum,
    minimum,
    row_mean,
    row_sum,
    row_var,
    sigmoid,
    softplus,
    sqrt,
    square,
    tanh,
)
from lstmrs.errors import InvalidArgumentError
from lstmrs.testing import check_cell_gradients, check_rust_cell


def every_new_op(c: Cell):
    """Every new op, with arguments kept inside their smooth domains (positive logs and
    denominators) so finite differences apply."""
    x0, x1 = c.x_gates(2)
    (h0,) = c.h_gates(1)
    s, m = c.state("s"), c.state("m")
    w = c.unit_param("w")
    e = exp(0.5 * x0)
    q = sqrt(square(x1) + 0.5)
    news = e * log(softplus(h0) + 0.1) + q - x1 * s / (e + 0.25) + maximum(x0, h0)
    newm = minimum(s, w) * q + softplus(m) + 0.1 * row_sum(x1 * s) - row_mean(m)
    return {"s": news, "m": newm}


EVERY_NEW_OP = Cell.define("every_new_op", every_new_op, states=("s", "m"))


def ln_cell(c: Cell):
    """Layer normalisation of a gate pre-activation with learned gain and bias, and a
    normalised state."""
    (x,) = c.x_gates(1)
    (hh,) = c.h_gates(1)
    g = c.unit_param("gain", "constant", 1.0)
    b = c.unit_param("bias", "constant", 0.0)
    h = c.state("h")
    a = layer_norm(x + hh, g, b)
    return {"h": tanh(a) + 0.5 * (h - row_mean(h)) / sqrt(row_var(h) + 1e-3)}


LN_CELL = Cell.define("ln_cell", ln_cell, states=("h",))


def sigmoid_np(a):
    return 1 / (1 + np.exp(-a))


def softplus_np(a):
    return np.log1p(np.exp(a))


@pytest.fixture
def rng():
    return np.random.default_rng(2016)


def test_the_json_names_the_new_ops():
    ops = {n["op"] for n in EVERY_NEW_OP.nodes}
    assert {"exp", "log", "sqrt", "softplus", "div", "max", "min", "sum", "mean"} <= ops
    assert CellSpec.from_json(EVERY_NEW_OP.to_json()) == EVERY_NEW_OP


def test_reference_against_direct_formulas(rng):
    x_pre, h_pre = rng.normal(size=(3, 10)), rng.normal(size=(3, 5))
    s, m, w = rng.normal(size=(3, 5)), rng.normal(size=(3, 5)), rng.normal(size=5)
    x0, x1 = x_pre[:, :5], x_pre[:, 5:]
    e = np.exp(0.5 * x0)
    q = np.sqrt(x1**2 + 0.5)
    news = e * np.log(softplus_np(h_pre) + 0.1) + q - x1 * s / (e + 0.25) + np.maximum(x0, h_pre)
    newm = (
        np.minimum(s, w) * q
        + softplus_np(m)
        + 0.1 * (x1 * s).sum(axis=1, keepdims=True)
        - m.mean(axis=1, keepdims=True)
    )
    got = EVERY_NEW_OP.reference_step(x_pre, h_pre, {"w": w}, {"s": s, "m": m})
    np.testing.assert_allclose(got["s"], news, rtol=1e-13)
    np.testing.assert_allclose(got["m"], newm, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("spec", [EVERY_NEW_OP, LN_CELL], ids=lambda s: s.name)
def test_gradients_match_finite_differences(spec):
    # One step and through time: the reductions' backward couples the units of a row.
    report = check_cell_gradients(spec, hidden_size=4, seed=5)
    assert report["elements"] > 60 and report["worst"] <= 1.0


@pytest.mark.parametrize("spec", [EVERY_NEW_OP, LN_CELL], ids=lambda s: s.name)
def test_rust_kernels_match_the_reference(spec):
    # float64 forward and backward through the core's sweep, float32 forward.
    check_rust_cell(spec, hidden_size=6, seq_len=4)


def test_layer_norm_matches_torch():
    # Golden values from torch (2.x):
    #   x = torch.tensor([[1., 2., 4.], [-1., 0., 3.]], dtype=torch.float64)
    #   g = torch.tensor([1., .5, 2.], dtype=torch.float64)
    #   b = torch.tensor([0., .1, -.2], dtype=torch.float64)
    #   torch.nn.functional.layer_norm(x, (3,), g, b, 1e-5)
    golden = [
        [-1.0690415314502977, -0.03363019143128726, 2.4726038286257435],
        [-0.9805789785364644, -0.0961157957072929, 2.5456211399021],
    ]
    spec = Cell.define(
        "ln",
        lambda c: {"h": layer_norm(c.x_gates(1)[0], c.unit_param("g"), c.unit_param("b"))},
    )
    x = np.array([[1.0, 2.0, 4.0], [-1.0, 0.0, 3.0]])
    params = {"g": np.array([1.0, 0.5, 2.0]), "b": np.array([0.0, 0.1, -0.2])}
    got = spec.reference_step(x, None, params, {"h": np.zeros((2, 3))})
    np.testing.assert_allclose(got["h"], golden, rtol=1e-13)


def test_layer_norm_and_softplus_match_torch_live(rng):
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    x = rng.normal(size=(4, 7)) * 3
    g, b = rng.normal(size=7), rng.normal(size=7)
    spec = Cell.define(
        "ln_sp",
        lambda c: {
            "h": layer_norm(c.x_gates(1)[0], c.unit_param("g"), c.unit_param("b"), eps=1e-3),
            "s": softplus(c.x_gates(1)[0]) - softplus(-c.state("s")),
        },
        states=("h", "s"),
    )
    s = rng.normal(size=(4, 7)) * 20
    got = spec.reference_step(x, None, {"g": g, "b": b}, {"h": 0 * x, "s": s})
    t = torch.from_numpy
    want_h = f.layer_norm(t(x), (7,), t(g), t(b), 1e-3).numpy()
    want_s = (f.softplus(t(x)) + f.logsigmoid(t(s))).numpy()
    np.testing.assert_allclose(got["h"], want_h, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got["s"], want_s, rtol=1e-12, atol=1e-13)
    # The backward too: torch's autograd of the same expressions.
    tx = t(x).requires_grad_()
    ts = t(s).requires_grad_()
    gh, gs = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    out = (f.layer_norm(tx, (7,), t(g), t(b), 1e-3) * t(gh)).sum()
    out = out + ((f.softplus(tx) + f.logsigmoid(ts)) * t(gs)).sum()
    out.backward()
    back = spec.reference_step_backward(
        x, None, {"g": g, "b": b}, {"h": 0 * x, "s": s}, {"h": gh, "s": gs}
    )
    np.testing.assert_allclose(back["x_pre"], tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(back["states"]["s"], ts.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_domain_edges_are_finite_and_as_documented():
    def edges(c: Cell):
        x0, x1 = c.x_gates(2)
        return {
            "a": log(x0),
            "b": x1 / x0,
            "c": sqrt(x0),
            "d": maximum(x0, x1),
            "e": minimum(x1, x0),
        }

    spec = Cell.define("edges", edges, states=("a", "b", "c", "d", "e"))
    # Rows: x0 = 0 (ties with x1 = 0); x0 = -1, x1 = 2; x0 = -1e-13 inside the division band.
    x = np.array([[0.0, 0.0], [-1.0, 2.0], [-1e-13, 1.0]])
    zero = {s: np.zeros((3, 1)) for s in spec.states}
    got = spec.reference_step(x, None, {}, zero)
    floor = np.log(LOG_FLOOR)
    np.testing.assert_array_equal(got["a"][:, 0], [floor, floor, floor])
    np.testing.assert_array_equal(got["b"][:, 0], [0.0, -2.0, 1.0 / -DIV_EPS])
    np.testing.assert_array_equal(got["c"][:, 0], [0.0, 0.0, 0.0])
    ones = {s: np.ones((3, 1)) for s in spec.states}
    d = spec.reference_step_backward(x, None, {}, zero, ones)["x_pre"]
    # Clamped log/sqrt and a denominator in the band get no gradient; ties go to the first
    # argument (max(x0, x1) -> x0, min(x1, x0) -> x1).
    np.testing.assert_array_equal(d[:, 0], [1.0, -2.0 + 1.0, 1.0])
    np.testing.assert_array_equal(d[:, 1], [1.0 / DIV_EPS + 1.0, -1.0 + 1.0, 1.0 / -DIV_EPS + 1.0])


def test_division_forms():
    def cell(c: Cell):
        (x,) = c.x_gates(1)
        return {"h": x / 2 + 1 / (1 + square(x)) + np.float64(3.0) / (2 + exp(x))}

    spec = Cell.define("divs", cell)
    x = np.array([[-1.0, 0.5, 2.0]])
    got = spec.reference_step(x, None, {}, {"h": np.zeros((1, 3))})["h"]
    np.testing.assert_allclose(got, x / 2 + 1 / (1 + x * x) + 3 / (2 + np.exp(x)), rtol=1e-14)


def test_layer_norm_eps_must_be_positive():
    with pytest.raises(InvalidArgumentError, match=r"layer_norm: eps must be > 0, got 0"):
        Cell.define("bad", lambda c: {"h": layer_norm(c.x_gates(1)[0], eps=0)})


def test_sigmoid_of_softplus_identity_used_by_the_backward(rng):
    # d softplus(x)/dx = sigmoid(x) = 1 - exp(-softplus(x)): what the kernels compute from the
    # taped output. Checked through the reference backward at large |x| too.
    spec = Cell.define("sp", lambda c: {"h": softplus(c.x_gates(1)[0])})
    x = np.array([[-40.0, -3.0, 0.0, 3.0, 40.0]])
    d = spec.reference_step_backward(x, None, {}, {"h": 0 * x}, {"h": np.ones_like(x)})["x_pre"]
    np.testing.assert_allclose(d, sigmoid_np(x), rtol=1e-12)


def test_onnx_export_matches_onnx_runtime(rng):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import lstmrs

    for spec in (EVERY_NEW_OP, LN_CELL):
        layer = lstmrs.RNN(3, 5, cell=spec, num_layers=2, seed=3)
        proto = layer.to_onnx()  # the exporter also checks it in ONNX Runtime
        x = rng.standard_normal((2, 6, 3)).astype(np.float32)
        lens = np.array([6, 3])
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x, "lengths": lens})
        out, state = layer(x, lengths=lens)
        want = [out, *(state if isinstance(state, tuple) else (state,))]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def low_rank_cell(c: Cell):
    """A tanh RNN with no W_hh: the recurrence is a rank-2 factor U V^T h plus per-gate
    diagonal terms."""
    x0, x1 = c.x_gates(2)
    h = c.state("h")
    d0, d1 = c.gate_params("diag", 2)
    a = sigmoid(x0 + d0 * h)
    return {"h": (1 - a) * h + a * tanh(x1 + d1 * h + c.low_rank("rec", h, 2))}


LOW_RANK = Cell.define("low_rank_rnn", low_rank_cell)


def test_low_rank_and_per_gate_params_against_numpy(rng):
    names = [p.name for p in LOW_RANK.unit_params]
    assert names == ["diag_0", "diag_1", "rec_u0", "rec_v0", "rec_u1", "rec_v1"]
    hid = 5
    x_pre, h = rng.normal(size=(3, 2 * hid)), rng.normal(size=(3, hid))
    p = {n: rng.normal(size=hid) for n in names}
    u = np.stack([p["rec_u0"], p["rec_u1"]], axis=1)  # U [H, 2]
    v = np.stack([p["rec_v0"], p["rec_v1"]], axis=1)  # V [H, 2]
    a = sigmoid_np(x_pre[:, :hid] + p["diag_0"] * h)
    rec = h @ v @ u.T  # (U V^T h) for every row
    want = (1 - a) * h + a * np.tanh(x_pre[:, hid:] + p["diag_1"] * h + rec)
    got = LOW_RANK.reference_step(x_pre, None, p, {"h": h})["h"]
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_low_rank_gradients_and_rust_path():
    report = check_cell_gradients(LOW_RANK, hidden_size=4, seed=9)
    assert report["worst"] <= 1.0
    check_rust_cell(LOW_RANK, hidden_size=6, seq_len=4)
