"""Live parity with PyTorch (CPU): forward outputs, final states and every gradient.

Each configuration gets torch's default-initialised weights (seeded), loads them into lstmrs
through `load_state_dict`, and compares against torch autograd with random upstream gradients.
Dropout is compared by semantics only (eval equality, layer placement, inverted-dropout mask
values and rate, finite differences in training mode); torch's RNG is not reproduced.

Set LSTMRS_PARITY_REPORT=path to also write the observed maximum errors as JSON.
"""

from __future__ import annotations

import itertools
import json
import os
import zlib

import lstmrs
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# The reference runs tiny problems; one thread avoids oversubscribing the machine for nothing.
torch.set_num_threads(1)

FWD_TOL = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float64": {"rtol": 1e-10, "atol": 1e-12}}
GRAD_TOL = {"float32": {"rtol": 1e-4, "atol": 1e-5}, "float64": {"rtol": 1e-9, "atol": 1e-11}}

# (dtype, "forward" | "grad") -> worst errors seen, reported at the end of the module.
_ERRORS: dict[tuple[str, str], dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_errors(request):
    yield
    if not _ERRORS:
        return
    lines = ["torch parity, max errors over all compared arrays:"]
    for (dtype, kind), e in sorted(_ERRORS.items()):
        lines.append(
            f"  {dtype:8s} {kind:8s} max|a-b|/max|b| = {e['normwise']:.3e}   "
            f"max elementwise rel (|b| > 1e-3 max|b|) = {e['elementwise']:.3e}   "
            f"({e['where']})"
        )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        # Output capture is on during fixture teardown; print past it.
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
    path = os.environ.get("LSTMRS_PARITY_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({f"{d}/{k}": v for (d, k), v in _ERRORS.items()}, f, indent=1)


def _compare(dtype, kind, where, got, ref, tol):
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{where}: shape {got.shape} != {ref.shape}"
    assert got.dtype == ref.dtype, f"{where}: dtype {got.dtype} != {ref.dtype}"
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    if ref.size and scale > 0:
        normwise = float(diff.max()) / scale
        big = np.abs(ref) > 1e-3 * scale
        elementwise = float(np.max(diff[big] / np.abs(ref[big]))) if big.any() else 0.0
        rec = _ERRORS.setdefault((dtype, kind), {"normwise": 0.0, "elementwise": 0.0, "where": ""})
        if normwise > rec["normwise"]:
            rec["normwise"], rec["where"] = normwise, where
        rec["elementwise"] = max(rec["elementwise"], elementwise)
    np.testing.assert_allclose(got, ref, err_msg=where, **tol)


def _torch_net(cell, input_size, hidden, layers, bias, batch_first, bidir, dtype, dropout=0.0):
    cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    return cls(
        input_size,
        hidden,
        num_layers=layers,
        bias=bias,
        batch_first=batch_first,
        dropout=dropout,
        bidirectional=bidir,
    ).to(getattr(torch, dtype))


def _ours(net, cell, dtype, dropout=0.0, seed=None):
    cls = lstmrs.LSTM if cell == "lstm" else lstmrs.GRU
    ours = cls(
        net.input_size,
        net.hidden_size,
        num_layers=net.num_layers,
        bias=net.bias,
        batch_first=net.batch_first,
        dropout=dropout,
        bidirectional=net.bidirectional,
        dtype=dtype,
        seed=seed,
    )
    ours.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})
    return ours


def _torch_forward(net, x, state, lengths, seq_len):
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(
            x, torch.from_numpy(lengths), batch_first=net.batch_first, enforce_sorted=False
        )
    out, st = net(inp, state)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=net.batch_first, total_length=seq_len)
    return out, st


CELLS = ["lstm", "gru"]
LAYERS = [1, 2, 3]
FLAGS = [False, True]
DTYPES = ["float32", "float64"]
CONFIGS = list(itertools.product(CELLS, LAYERS, FLAGS, FLAGS, FLAGS, FLAGS, FLAGS, DTYPES))


def _config_id(c):
    cell, layers, bidir, bias, bf, lens, state, dtype = c
    return "-".join(
        [
            cell,
            f"L{layers}",
            "bi" if bidir else "uni",
            "bias" if bias else "nobias",
            "bf" if bf else "tm",
            "lens" if lens else "full",
            "h0" if state else "zero",
            dtype[5:],
        ]
    )


@pytest.mark.parametrize("config", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_forward_and_gradients_match_torch(config):
    cell, layers, bidir, bias, batch_first, use_lengths, use_state, dtype = config
    where = _config_id(config)
    seed = zlib.crc32(where.encode())
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    np_dt = np.dtype(dtype)

    batch = int(rng.integers(2 if use_lengths else 1, 5))
    seq_len = int(rng.integers(2 if use_lengths else 1, 8))
    input_size = int(rng.integers(1, 7))
    hidden = int(rng.integers(1, 7))
    d = 2 if bidir else 1
    net = _torch_net(cell, input_size, hidden, layers, bias, batch_first, bidir, dtype)
    ours = _ours(net, cell, dtype)

    x_shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
    out_shape = x_shape[:2] + (d * hidden,)
    s_shape = (layers * d, batch, hidden)
    x = rng.standard_normal(x_shape).astype(np_dt)
    lengths = None
    if use_lengths:
        lengths = rng.integers(1, seq_len + 1, size=batch).astype(np.int64)
        lengths[rng.integers(batch)] = int(rng.integers(1, seq_len))  # always ragged
    h0 = (
        (0.5 * rng.standard_normal(s_shape)).astype(np_dt)
        if use_state
        else np.zeros(s_shape, np_dt)
    )
    c0 = (
        (0.5 * rng.standard_normal(s_shape)).astype(np_dt)
        if use_state
        else np.zeros(s_shape, np_dt)
    )
    g_out = rng.standard_normal(out_shape).astype(np_dt)
    g_h = rng.standard_normal(s_shape).astype(np_dt)
    g_c = rng.standard_normal(s_shape).astype(np_dt)

    # torch: the initial state always requires grad, zero when the config passes none.
    tx = torch.from_numpy(x).requires_grad_()
    th0 = torch.from_numpy(h0).requires_grad_()
    tc0 = torch.from_numpy(c0).requires_grad_()
    t_out, t_st = _torch_forward(net, tx, (th0, tc0) if cell == "lstm" else th0, lengths, seq_len)
    t_h, t_c = t_st if cell == "lstm" else (t_st, None)
    loss = (t_out * torch.from_numpy(g_out)).sum() + (t_h * torch.from_numpy(g_h)).sum()
    if t_c is not None:
        loss = loss + (t_c * torch.from_numpy(g_c)).sum()
    loss.backward()

    state = None
    if use_state:
        state = (h0, c0) if cell == "lstm" else h0

    # Inference path.
    ours.eval()
    out, st = ours(x, state, lengths=lengths)
    h_n, c_n = st if cell == "lstm" else (st, None)
    ftol = FWD_TOL[dtype]
    _compare(dtype, "forward", where, out, t_out.detach().numpy(), ftol)
    _compare(dtype, "forward", where + " h_n", h_n, t_h.detach().numpy(), ftol)
    if cell == "lstm":
        _compare(dtype, "forward", where + " c_n", c_n, t_c.detach().numpy(), ftol)
    if lengths is not None:
        # Packed-sequence semantics: nothing past each sequence's length.
        steps = np.arange(seq_len)[None, :] if batch_first else np.arange(seq_len)[:, None]
        lens = lengths[:, None] if batch_first else lengths[None, :]
        assert not np.any(np.asarray(out)[steps >= lens]), where

    # Training path (no dropout): same forward, then BPTT.
    ours.train()
    out_t, _, tape = ours.forward_train(x, state=state, lengths=lengths)
    np.testing.assert_allclose(out_t, out, err_msg=where + " forward_train vs eval", **ftol)
    g = ours.backward(tape, d_out=g_out, d_state=(g_h, g_c) if cell == "lstm" else g_h)
    gtol = GRAD_TOL[dtype]
    names = [k for k, _ in net.named_parameters()]
    assert list(g.params) == names, where
    for name, p in net.named_parameters():
        _compare(dtype, "grad", f"{where} d{name}", g.params[name], p.grad.numpy(), gtol)
    _compare(dtype, "grad", where + " dinput", g.input, tx.grad.numpy(), gtol)
    if use_state or g.state is not None:
        dh0, dc0 = g.state if cell == "lstm" else (g.state, None)
        _compare(dtype, "grad", where + " dh0", dh0, th0.grad.numpy(), gtol)
        if cell == "lstm":
            _compare(dtype, "grad", where + " dc0", dc0, tc0.grad.numpy(), gtol)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("missing", ["d_out", "d_state"])
def test_backward_missing_upstream_gradient_is_zero(cell, missing):
    """backward without d_out (or d_state) equals torch with that loss term left out."""
    torch.manual_seed(7)
    net = _torch_net(cell, 3, 5, 2, True, True, True, "float64")
    ours = _ours(net, cell, "float64")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6, 3))
    w_out = rng.standard_normal((4, 6, 10))
    w_h = rng.standard_normal((4, 4, 5))
    tx = torch.from_numpy(x).requires_grad_()
    t_out, t_st = net(tx)
    t_h = t_st[0] if cell == "lstm" else t_st
    if missing == "d_out":
        (t_h * torch.from_numpy(w_h)).sum().backward()
    else:
        (t_out * torch.from_numpy(w_out)).sum().backward()

    ours.train()
    _, _, tape = ours.forward_train(x)
    if missing == "d_out":
        g = ours.backward(tape, d_state=(w_h, np.zeros_like(w_h)) if cell == "lstm" else w_h)
    else:
        g = ours.backward(tape, d_out=w_out)
    where = f"missing-{missing}-{cell}"
    tol = GRAD_TOL["float64"]
    for name, p in net.named_parameters():
        _compare("float64", "grad", f"{where} d{name}", g.params[name], p.grad.numpy(), tol)
    _compare("float64", "grad", f"{where} dinput", g.input, tx.grad.numpy(), tol)


# ---------------------------------------------------------------------------------------------
# Dropout between layers.


def _dropout_setup(cell, layers, bidir, dtype="float64", p=0.4, seed=11, hidden=5):
    torch.manual_seed(3)
    net = _torch_net(cell, 4, hidden, layers, True, True, bidir, dtype, dropout=p)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 7, 4)).astype(dtype)
    return net, x, lambda s=seed: _ours(net, cell, dtype, dropout=p, seed=s)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [2, 3])
def test_dropout_eval_mode_matches_torch_eval(cell, layers):
    net, x, make = _dropout_setup(cell, layers, bidir=True)
    net.eval()
    with torch.no_grad():
        t_out, t_st = net(torch.from_numpy(x))
    ours = make()
    ours.eval()
    out, st = ours(x)
    _compare(
        "float64",
        "forward",
        f"dropout-eval-{cell}-L{layers}",
        out,
        t_out.numpy(),
        FWD_TOL["float64"],
    )
    t_h = t_st[0] if cell == "lstm" else t_st
    h_n = st[0] if cell == "lstm" else st
    _compare(
        "float64",
        "forward",
        f"dropout-eval-{cell}-L{layers} h_n",
        h_n,
        t_h.numpy(),
        FWD_TOL["float64"],
    )


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_training_changes_only_layers_after_the_first(cell):
    _, x, make = _dropout_setup(cell, 2, bidir=True, p=0.5)
    ours = make()
    ours.eval()
    out_eval, st_eval = ours(x)
    ours.train()
    out_train, st_train, _ = ours.forward_train(x)
    # The top layer sees a dropped-out input, so its outputs change...
    assert np.max(np.abs(np.asarray(out_train) - np.asarray(out_eval))) > 1e-3
    # ...while the first layer's final states (both directions) are untouched by dropout.
    h_eval = st_eval[0] if cell == "lstm" else st_eval
    h_train = st_train[0] if cell == "lstm" else st_train
    np.testing.assert_allclose(h_train[:2], h_eval[:2], rtol=1e-12, atol=1e-14)
    assert np.max(np.abs(h_train[2:] - h_eval[2:])) > 1e-3
    if cell == "lstm":
        np.testing.assert_allclose(st_train[1][:2], st_eval[1][:2], rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore:.*dropout.*:UserWarning")
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_single_layer_is_a_no_op(cell):
    # PyTorch applies dropout only between layers: with one layer training equals eval.
    _, x, make = _dropout_setup(cell, 1, bidir=False, p=0.5)
    ours = make()
    ours.eval()
    out_eval, _ = ours(x)
    ours.train()
    out_train, _, _ = ours.forward_train(x)
    np.testing.assert_allclose(out_train, out_eval, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_masks_follow_the_seed(cell):
    _, x, make = _dropout_setup(cell, 3, bidir=False, p=0.3)
    runs = []
    for s in (5, 5, 6):
        ours = make(s)
        ours.train()
        runs.append(np.asarray(ours.forward_train(x)[0]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.max(np.abs(runs[0] - runs[2])) > 1e-6


def _identity_gru_masks(impl, p, batch=8, steps=50, hidden=16):
    """Recovers the dropout mask applied to layer 1's input of a 2-layer GRU.

    Layer 1 is wired so that h' = tanh(mask * x): W_in = I, every other weight 0, and the update
    gate biased to sigmoid(-40) ~ 4e-18, so h' = n. Layer 0's output x comes from a one-layer
    network with the same layer-0 weights in eval mode.
    """
    rng = np.random.default_rng(21)
    torch.manual_seed(21)
    net = _torch_net("gru", 3, hidden, 2, True, True, False, "float64", dropout=p)
    with torch.no_grad():
        for name in ("weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"):
            getattr(net, name).zero_()
        net.weight_ih_l1[2 * hidden :].copy_(torch.eye(hidden, dtype=torch.float64))
        net.bias_ih_l1[hidden : 2 * hidden] = -40.0
    layer0 = _torch_net("gru", 3, hidden, 1, True, True, False, "float64")
    layer0.load_state_dict({k: v for k, v in net.state_dict().items() if k.endswith("_l0")})
    x = rng.standard_normal((batch, steps, 3))
    with torch.no_grad():
        x0 = layer0(torch.from_numpy(x))[0].numpy()
    if impl == "torch":
        net.train()
        with torch.no_grad():
            out = net(torch.from_numpy(x))[0].numpy()
    else:
        ours = _ours(net, "gru", "float64", dropout=p, seed=1234)
        ours.train()
        out = np.asarray(ours.forward_train(x)[0])
    ok = np.abs(x0) > 1e-3
    return np.arctanh(out)[ok] / x0[ok], np.arctanh(out) / np.where(ok, x0, 1.0), ok


@pytest.mark.parametrize("impl", ["lstmrs", "torch"])
def test_dropout_is_elementwise_inverted_dropout(impl):
    # torch is run through the same probe to show the probe measures the same semantics.
    p = 0.3
    masks, grid, ok = _identity_gru_masks(impl, p)
    kept = 1.0 / (1.0 - p)
    dist = np.minimum(np.abs(masks), np.abs(masks - kept))
    assert dist.max() < 1e-6, f"mask values not in {{0, {kept}}}: worst distance {dist.max()}"
    dropped = np.abs(masks) < 0.5 * kept
    rate = dropped.mean()
    sigma = np.sqrt(p * (1 - p) / masks.size)
    assert abs(rate - p) < 5 * sigma, f"drop rate {rate:.4f}, expected {p} +- {5 * sigma:.4f}"
    # Independent per element: the mask of an element varies over time steps.
    per_elem = np.where(ok, np.abs(grid) < 0.5 * kept, False).sum(axis=1)
    assert np.mean((per_elem > 0) & (per_elem < ok.sum(axis=1))) > 0.9


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_training_gradients_match_finite_differences(cell):
    """BPTT through the dropout masks, checked against central differences of the same loss.

    Every evaluation uses a fresh network with the same seed, so it draws the same masks.
    """
    p, seed = 0.4, 99
    torch.manual_seed(5)
    net = _torch_net(cell, 3, 4, 3, True, True, True, "float64", dropout=p)
    params = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 3))
    lengths = np.array([6, 2, 4], dtype=np.int64)
    s_shape = (6, 3, 4)
    h0 = 0.5 * rng.standard_normal(s_shape)
    c0 = 0.5 * rng.standard_normal(s_shape)
    w_out = rng.standard_normal((3, 6, 8))
    w_h = rng.standard_normal(s_shape)
    w_c = rng.standard_normal(s_shape)
    lstm = cell == "lstm"

    def run(ps, xx, hh):
        cls = lstmrs.LSTM if lstm else lstmrs.GRU
        ours = cls(3, 4, num_layers=3, bidirectional=True, dropout=p, dtype="float64", seed=seed)
        ours.load_state_dict(ps)
        ours.train()
        out, st, tape = ours.forward_train(xx, state=(hh, c0) if lstm else hh, lengths=lengths)
        h_n, c_n = st if lstm else (st, None)
        loss = np.sum(out * w_out) + np.sum(h_n * w_h) + (np.sum(c_n * w_c) if lstm else 0.0)
        return loss, ours, tape, out

    _, ours, tape, out = run(params, x, h0)
    ours.eval()
    assert (
        np.max(np.abs(np.asarray(ours(x, (h0, c0) if lstm else h0, lengths=lengths)[0]) - out))
        > 1e-3
    )
    g = ours.backward(tape, d_out=w_out, d_state=(w_h, w_c) if lstm else w_h)
    eps = 1e-6

    def fd(perturb):
        plus, minus = perturb(eps), perturb(-eps)
        return (run(*plus)[0] - run(*minus)[0]) / (2 * eps)

    checked = 0
    for name, value in params.items():
        for idx in rng.choice(value.size, size=2, replace=False):

            def perturb(e, name=name, idx=idx):
                ps = {k: v.copy() for k, v in params.items()}
                ps[name].reshape(-1)[idx] += e
                return ps, x, h0

            analytic = np.asarray(g.params[name]).reshape(-1)[idx]
            np.testing.assert_allclose(
                analytic, fd(perturb), rtol=1e-5, atol=1e-7, err_msg=f"d{name}[{idx}]"
            )
            checked += 1
    for idx in rng.choice(x.size, size=6, replace=False):

        def perturb_x(e, idx=idx):
            xx = x.copy()
            xx.reshape(-1)[idx] += e
            return params, xx, h0

        analytic = np.asarray(g.input).reshape(-1)[idx]
        np.testing.assert_allclose(
            analytic, fd(perturb_x), rtol=1e-5, atol=1e-7, err_msg=f"dinput[{idx}]"
        )
        checked += 1
    dh0 = g.state[0] if lstm else g.state
    for idx in rng.choice(h0.size, size=4, replace=False):

        def perturb_h(e, idx=idx):
            hh = h0.copy()
            hh.reshape(-1)[idx] += e
            return params, x, hh

        np.testing.assert_allclose(
            np.asarray(dh0).reshape(-1)[idx],
            fd(perturb_h),
            rtol=1e-5,
            atol=1e-7,
            err_msg=f"dh0[{idx}]",
        )
        checked += 1
    assert checked == 2 * len(params) + 10
