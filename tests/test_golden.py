"""lstmrs against golden values that PyTorch produced, without torch at test time.

The golden file `tests/golden/rnn_golden.json` is written by `tests/golden/make_golden.py`
(torch 2.x, CPU). Weights, inputs, initial states and loss weights are cosine waves of their flat
index, rebuilt here by the generator's numpy-only `build`. Each case's values come from this
PyTorch snippet (`run_torch` in the generator), with `case` the entry of `CASES`:

    data = build(case)
    net = (torch.nn.LSTM if case["cell"] == "lstm" else torch.nn.GRU)(
        case["I"], case["H"], num_layers=case["L"], bias=case["bias"],
        batch_first=case["batch_first"], bidirectional=case["bidir"]).to(dtype)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in data["params"].items()})
    x = torch.from_numpy(data["x"]).requires_grad_()
    h0 = torch.from_numpy(data["h0"]).requires_grad_()        # when case["state"]
    c0 = torch.from_numpy(data["c0"]).requires_grad_()        # LSTM, when case["state"]
    inp = x if lengths is None else pack_padded_sequence(
        x, torch.tensor(lengths), batch_first=case["batch_first"], enforce_sorted=False)
    out, st = net(inp, (h0, c0) | h0 | None)
    out = out if lengths is None else pad_packed_sequence(
        out, batch_first=case["batch_first"], total_length=case["T"])[0]
    h_n, c_n = st                                             # GRU: h_n = st
    loss = (out * w_out).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()   # c_n term: LSTM
    loss.backward()
    expected = out, h_n, c_n, {name: p.grad}, x.grad, h0.grad, c0.grad

Regenerate with `python tests/golden/make_golden.py` (needs torch).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import lstmrs
import numpy as np
import pytest

GOLDEN_DIR = pathlib.Path(__file__).with_name("golden")


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN_DIR / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _load_generator()
GOLDEN = json.loads((GOLDEN_DIR / "rnn_golden.json").read_text())
CASES = GOLDEN["cases"]

# f64 agrees with torch to rounding; f32 to the single-precision criterion of the project.
TOL = {
    "float64": {"rtol": 1e-10, "atol": 1e-12},
    "float32": {"rtol": 1e-5, "atol": 1e-6},
}
GRAD_TOL = {
    "float64": {"rtol": 1e-10, "atol": 1e-12},
    "float32": {"rtol": 1e-5, "atol": 1e-5},
}


def _net(case):
    cls = lstmrs.LSTM if case["cell"] == "lstm" else lstmrs.GRU
    return cls(
        case["I"],
        case["H"],
        num_layers=case["L"],
        bias=case["bias"],
        batch_first=case["batch_first"],
        bidirectional=case["bidir"],
        dtype=case["dtype"],
    )


def _state(case, data):
    if data["h0"] is None:
        return None
    return (data["h0"], data["c0"]) if case["cell"] == "lstm" else data["h0"]


def _lengths(case):
    return None if case["lengths"] is None else np.asarray(case["lengths"], dtype=np.int64)


def _split(case, state):
    return state if case["cell"] == "lstm" else (state, None)


def _check(name, got, expected, shape, tol):
    got = np.asarray(got)
    assert got.shape == tuple(shape), f"{name}: shape {got.shape} != {tuple(shape)}"
    np.testing.assert_allclose(
        got.reshape(-1), np.asarray(expected, dtype=np.float64), err_msg=name, **tol
    )


def test_generator_matches_golden_file():
    # The test rebuilds inputs from the generator's CASES; the file must be of the same cases.
    assert [c["name"] for c in CASES] == [c["name"] for c in GEN.CASES]
    for stored, case in zip(CASES, GEN.CASES):
        assert {k: v for k, v in stored.items() if k != "expected"} == case


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_forward_matches_golden(case):
    data = GEN.build(case)
    net = _net(case)
    net.load_state_dict(data["params"])
    net.eval()
    out, state = net(data["x"], _state(case, data), lengths=_lengths(case))
    h_n, c_n = _split(case, state)
    exp = case["expected"]
    tol = TOL[case["dtype"]]
    assert np.asarray(out).dtype == np.dtype(case["dtype"])
    _check("output", out, exp["output"], data["w_out"].shape, tol)
    _check("h_n", h_n, exp["h_n"], data["w_h"].shape, tol)
    if case["cell"] == "lstm":
        _check("c_n", c_n, exp["c_n"], data["w_c"].shape, tol)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_gradients_match_golden(case):
    data = GEN.build(case)
    net = _net(case)
    net.load_state_dict(data["params"])
    net.train()
    out, _, tape = net.forward_train(data["x"], state=_state(case, data), lengths=_lengths(case))
    exp = case["expected"]
    # Training mode without dropout computes the same forward pass.
    _check("train output", out, exp["output"], data["w_out"].shape, TOL[case["dtype"]])

    d_state = (data["w_h"], data["w_c"]) if case["cell"] == "lstm" else data["w_h"]
    g = net.backward(tape, d_out=data["w_out"], d_state=d_state)
    tol = GRAD_TOL[case["dtype"]]
    assert list(g.params) == list(exp["grad_params"])
    for name, values in exp["grad_params"].items():
        _check(f"grad {name}", g.params[name], values, data["params"][name].shape, tol)
    _check("grad input", g.input, exp["grad_input"], data["x"].shape, tol)
    if case["state"]:
        dh0, dc0 = _split(case, g.state)
        _check("grad h0", dh0, exp["grad_h0"], data["h0"].shape, tol)
        if case["cell"] == "lstm":
            _check("grad c0", dc0, exp["grad_c0"], data["c0"].shape, tol)


@pytest.mark.parametrize("case", CASES[:4], ids=[c["name"] for c in CASES[:4]])
def test_state_dict_round_trip(case):
    data = GEN.build(case)
    net = _net(case)
    net.load_state_dict(data["params"])
    sd = net.state_dict()
    assert list(sd) == [name for name, _ in GEN.param_shapes(case)]
    for name, value in data["params"].items():
        assert sd[name].dtype == value.dtype
        np.testing.assert_array_equal(sd[name], value)
