"""Clockwork RNN: the module sweeps against a plain step-by-step reference of the paper's
equations (forward, finite-difference gradients in float64) and against a masked dense network
in PyTorch autograd."""

from __future__ import annotations

import lstmrs
import numpy as np
import pytest
from lstmrs.clockwork import ClockworkRNN
from lstmrs.errors import InvalidArgumentError, ShapeError

PERIODS = [1, 2, 5]  # not powers of two: the schedule must not rely on divisibility


def reference(x, h0, w_i, w_h, b, periods, k):
    """Koutník et al. (2014), eq. (1)-(2) with t counted from 0: every step computes the full
    pre-activation with the dense block-triangular W_H, and only the modules whose period
    divides t take the new value."""
    active = np.repeat([[t % p == 0 for p in periods] for t in range(x.shape[1])], k, axis=1)
    h, outs = h0, []
    for t in range(x.shape[1]):
        new = np.tanh(x[:, t] @ w_i.T + h @ w_h.T + b)
        h = np.where(active[t], new, h)
        outs.append(h)
    return np.stack(outs, axis=1)


def make(seed=0, dtype="float64", k=2, n_in=2):
    return ClockworkRNN(n_in, k, periods=PERIODS, dtype=dtype, seed=seed)


def test_shapes_and_parameters():
    cw = make()
    assert cw.hidden_size == 6 and cw.num_modules == 3
    sd = cw.state_dict()
    assert sd["module0.weight_ih_l0"].shape == (2, 2 + 4)  # x and the two slower modules
    assert sd["module2.weight_ih_l0"].shape == (2, 2)  # the slowest reads x only
    assert cw.num_parameters == sum(v.size for v in sd.values()) == 48
    _, w_h, _ = cw.dense()
    mask = np.kron(np.triu(np.ones((3, 3))), np.ones((2, 2)))
    assert np.all(w_h[mask == 0] == 0) and np.all(w_h[mask == 1] != 0)


def test_forward_matches_the_reference(rng):
    cw = make()
    x = rng.normal(size=(3, 11, 2))
    h0 = rng.normal(size=(3, 6)) * 0.5
    out, h_n = cw(x, h0)
    ref = reference(x, h0, *cw.dense(), PERIODS, 2)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h_n, ref[:, -1], rtol=1e-12, atol=1e-13)
    # The slowest module holds its state between its updates at t = 0, 5, 10.
    slow = out[:, :, 4:]
    assert np.array_equal(slow[:, 1:5], np.repeat(slow[:, :1], 4, axis=1))
    assert not np.allclose(slow[:, 5], slow[:, 4])


def test_float32_forward(rng):
    cw64, cw32 = make(), make(dtype="float32")
    cw32.set_parameters_flat(cw64.parameters_flat().astype(np.float32))
    x = rng.normal(size=(2, 9, 2))
    out32, _ = cw32(x.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, cw64(x)[0], rtol=1e-5, atol=1e-6)


def test_gradients_match_finite_differences(rng):
    cw = make(seed=3)
    x = rng.normal(size=(2, 12, 2))
    h0 = rng.normal(size=(2, 6)) * 0.5
    g = rng.normal(size=(2, 12, 6))
    _, _, tape = cw.forward_train(x, h0)
    grads = cw.backward(tape, g)

    def loss(flat, xx, hh):
        cw.set_parameters_flat(flat)
        return float(np.sum(reference(xx, hh, *cw.dense(), PERIODS, 2) * g))

    flat0, eps = cw.parameters_flat(), 1e-6
    for name, base, analytic in (
        ("params", flat0, grads.flat),
        ("input", x, grads.input),
        ("state", h0, grads.state),
    ):
        fd = np.zeros(base.size)
        for n in range(base.size):
            vals = []
            for sign in (1, -1):
                arrs = {"params": flat0.copy(), "input": x.copy(), "state": h0.copy()}
                arrs[name].reshape(-1)[n] += sign * eps
                vals.append(loss(arrs["params"], arrs["input"], arrs["state"]))
            fd[n] = (vals[0] - vals[1]) / (2 * eps)
        np.testing.assert_allclose(analytic.reshape(-1), fd, rtol=1e-6, atol=1e-8, err_msg=name)
    cw.set_parameters_flat(flat0)
    # The parameter gradients are named as state_dict.
    assert list(grads.params) == list(cw.state_dict())


def test_block_structure_survives_training(rng):
    # A few gradient steps change every parameter but cannot fill the lower blocks: they are
    # not parameters at all.
    cw = make(seed=1)
    x = rng.normal(size=(4, 10, 2))
    target = rng.normal(size=(4, 10, 6))
    before = cw.parameters_flat()
    for _ in range(5):
        out, _, tape = cw.forward_train(x)
        grads = cw.backward(tape, out - target)
        cw.set_parameters_flat(cw.parameters_flat() - 0.1 * grads.flat)
    assert np.all(cw.parameters_flat() != before)
    _, w_h, _ = cw.dense()
    assert np.all(
        np.tril(w_h, -1)[np.kron(np.tril(np.ones((3, 3)), -1), np.ones((2, 2))) == 1] == 0
    )
    np.testing.assert_allclose(
        cw(x)[0], reference(x, np.zeros((4, 6)), *cw.dense(), PERIODS, 2), atol=1e-12
    )


def test_matches_a_masked_dense_network_in_torch(rng):
    torch = pytest.importorskip("torch")
    cw = make(seed=2)
    x = rng.normal(size=(2, 8, 2))
    g = rng.normal(size=(2, 8, 6))
    out, _, tape = cw.forward_train(x)
    grads = cw.backward(tape, g)
    w_i, w_h, b = (torch.tensor(a, requires_grad=True) for a in cw.dense())
    mask = torch.from_numpy(np.kron(np.triu(np.ones((3, 3))), np.ones((2, 2))))
    h = torch.zeros(2, 6, dtype=torch.float64)
    outs = []
    for t in range(8):
        new = torch.tanh(torch.from_numpy(x[:, t]) @ w_i.T + h @ (w_h * mask).T + b)
        act = torch.tensor(np.repeat([t % p == 0 for p in PERIODS], 2))
        h = torch.where(act, new, h)
        outs.append(h)
    t_out = torch.stack(outs, 1)
    (t_out * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-12, atol=1e-13)
    # Map the module gradients onto the dense layout.
    d_wi, d_wh, d_b = np.zeros((6, 2)), np.zeros((6, 6)), np.zeros(6)
    for i in range(3):
        p, rows = grads.params, slice(2 * i, 2 * i + 2)
        d_wi[rows] = p[f"module{i}.weight_ih_l0"][:, :2]
        d_wh[rows, 2 * i : 2 * i + 2] = p[f"module{i}.weight_hh_l0"]
        d_wh[rows, 2 * i + 2 :] = p[f"module{i}.weight_ih_l0"][:, 2:]
        d_b[rows] = p[f"module{i}.bias_ih_l0"]
        np.testing.assert_array_equal(p[f"module{i}.bias_ih_l0"], p[f"module{i}.bias_hh_l0"])
    np.testing.assert_allclose(d_wi, w_i.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d_wh, (w_h.grad * mask).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d_b, b.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="periods: expected strictly increasing"):
        ClockworkRNN(1, 2, periods=[1, 4, 2])
    with pytest.raises(InvalidArgumentError, match="periods"):
        ClockworkRNN(1, 2, periods=[])
    with pytest.raises(InvalidArgumentError, match="periods\\[1\\]"):
        ClockworkRNN(1, 2, periods=[1, 0])
    with pytest.raises(InvalidArgumentError, match="module_size"):
        ClockworkRNN(1, 0)
    cw = ClockworkRNN(2, 3, periods=[1, 2])
    with pytest.raises(ShapeError, match=r"x: expected shape \[B, T, 2\]"):
        cw(np.zeros((1, 4, 3), np.float32))
    with pytest.raises(ShapeError, match=r"state: expected shape \[1, 6\]"):
        cw(np.zeros((1, 4, 2), np.float32), np.zeros((1, 5), np.float32))
    _, _, tape = cw.forward_train(np.zeros((1, 4, 2), np.float32))
    with pytest.raises(ShapeError, match=r"d_out: expected shape \[1, 4, 6\]"):
        cw.backward(tape, np.zeros((1, 4, 5), np.float32))
    assert isinstance(lstmrs.clockwork.TANH_CELL, lstmrs.cells.CellSpec)
