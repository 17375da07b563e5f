"""Generates tests/golden/rnn_golden.json with PyTorch.

Run from the repository root with a Python that has torch:

    python tests/golden/make_golden.py

Every weight, input, initial state and loss weight is a cosine wave of its flat index (like
candle's RNN tests), so `tests/test_golden.py` rebuilds them with numpy alone, with no RNG and no
torch. The builders below import only numpy; torch is imported inside `main` so the test can load
this file for them.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

OUT_PATH = pathlib.Path(__file__).with_name("rnn_golden.json")

# Columns of CASES.
FIELDS = ("name", "cell", "I", "H", "L", "bidir", "bias", "batch_first", "B", "T", "lengths",
          "state", "dtype")  # fmt: skip
# I = input size, H = hidden size, L = layers, B = batch, T = steps, state = h0 (and c0) given.
ROWS = [
    ("lstm_l1_f32", "lstm", 3, 4, 1, False, True, True, 2, 5, None, False, "float32"),
    ("gru_l1_f32", "gru", 3, 4, 1, False, True, True, 2, 5, None, False, "float32"),
    ("lstm_l1_state_f64", "lstm", 2, 3, 1, False, True, True, 2, 4, None, True, "float64"),
    ("lstm_l2_bi_lens_state_f64", "lstm", 3, 4, 2, True, True, True, 3, 6, [6, 2, 4], True,
     "float64"),
    ("gru_l2_bi_lens_state_tm_f64", "gru", 3, 4, 2, True, True, False, 3, 6, [3, 6, 1], True,
     "float64"),
    ("lstm_l2_nobias_tm_f64", "lstm", 4, 3, 2, False, False, False, 2, 5, None, True, "float64"),
    ("gru_l1_bi_lens_f32", "gru", 2, 5, 1, True, True, True, 3, 5, [5, 1, 3], False, "float32"),
    ("gru_l2_nobias_state_f64", "gru", 2, 3, 2, False, False, True, 2, 4, None, True, "float64"),
]  # fmt: skip
CASES = [dict(zip(FIELDS, row)) for row in ROWS]


def wave(n: int, freq: float, phase: float, scale: float) -> np.ndarray:
    """`cos(arange(n) * freq + phase) * scale` in float64."""
    return np.cos(np.arange(n, dtype=np.float64) * freq + phase) * scale


def param_shapes(case: dict) -> list[tuple[str, tuple[int, ...]]]:
    """PyTorch's state_dict names and shapes, in order."""
    gates = 4 if case["cell"] == "lstm" else 3
    d = 2 if case["bidir"] else 1
    out = []
    for layer in range(case["L"]):
        in_size = case["I"] if layer == 0 else d * case["H"]
        for direction in range(d):
            sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            out.append(("weight_ih" + sfx, (gates * case["H"], in_size)))
            out.append(("weight_hh" + sfx, (gates * case["H"], case["H"])))
            if case["bias"]:
                out.append(("bias_ih" + sfx, (gates * case["H"],)))
                out.append(("bias_hh" + sfx, (gates * case["H"],)))
    return out


def build(case: dict) -> dict:
    """Deterministic weights, inputs, initial states and loss weights, in the case's dtype."""
    dt = np.dtype(case["dtype"])
    b, t, h = case["B"], case["T"], case["H"]
    d = 2 if case["bidir"] else 1
    params = {}
    for k, (name, shape) in enumerate(param_shapes(case)):
        n = int(np.prod(shape))
        params[name] = wave(n, 0.37, 0.5 * k, 0.5).reshape(shape).astype(dt)
    x_shape = (b, t, case["I"]) if case["batch_first"] else (t, b, case["I"])
    out_shape = (b, t, d * h) if case["batch_first"] else (t, b, d * h)
    s_shape = (case["L"] * d, b, h)
    ns = int(np.prod(s_shape))
    built = {
        "params": params,
        "x": wave(int(np.prod(x_shape)), 0.21, 0.1, 1.0).reshape(x_shape).astype(dt),
        "h0": wave(ns, 0.13, 0.7, 0.5).reshape(s_shape).astype(dt) if case["state"] else None,
        "c0": None,
        # loss = sum(out * w_out) + sum(h_n * w_h) [+ sum(c_n * w_c)]
        "w_out": wave(int(np.prod(out_shape)), 0.29, 1.0, 1.0).reshape(out_shape).astype(dt),
        "w_h": wave(ns, 0.31, 2.0, 1.0).reshape(s_shape).astype(dt),
        "w_c": None,
    }
    if case["cell"] == "lstm":
        built["w_c"] = wave(ns, 0.23, 3.0, 1.0).reshape(s_shape).astype(dt)
        if case["state"]:
            built["c0"] = wave(ns, 0.17, 1.3, 0.5).reshape(s_shape).astype(dt)
    return built


def run_torch(case: dict) -> dict:
    """The PyTorch computation whose results are the golden values (copied in test_golden.py)."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    data = build(case)
    tdt = getattr(torch, case["dtype"])
    cls = torch.nn.LSTM if case["cell"] == "lstm" else torch.nn.GRU
    net = cls(
        case["I"],
        case["H"],
        num_layers=case["L"],
        bias=case["bias"],
        batch_first=case["batch_first"],
        bidirectional=case["bidir"],
    ).to(tdt)
    sd = net.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == param_shapes(case)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in data["params"].items()})

    x = torch.from_numpy(data["x"]).requires_grad_()
    h0 = torch.from_numpy(data["h0"]).requires_grad_() if data["h0"] is not None else None
    c0 = torch.from_numpy(data["c0"]).requires_grad_() if data["c0"] is not None else None
    state = None if h0 is None else ((h0, c0) if case["cell"] == "lstm" else h0)

    inp = x
    if case["lengths"] is not None:
        lengths = torch.tensor(case["lengths"], dtype=torch.int64)
        inp = pack_padded_sequence(
            x, lengths, batch_first=case["batch_first"], enforce_sorted=False
        )
    out, st = net(inp, state)
    if case["lengths"] is not None:
        out, _ = pad_packed_sequence(out, batch_first=case["batch_first"], total_length=case["T"])
    h_n, c_n = st if case["cell"] == "lstm" else (st, None)

    loss = (out * torch.from_numpy(data["w_out"])).sum()
    loss = loss + (h_n * torch.from_numpy(data["w_h"])).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.from_numpy(data["w_c"])).sum()
    loss.backward()

    def flat(t):
        return [float(v) for v in t.detach().reshape(-1).tolist()]

    expected = {
        "output": flat(out),
        "h_n": flat(h_n),
        "grad_params": {k: flat(p.grad) for k, p in net.named_parameters()},
        "grad_input": flat(x.grad),
    }
    if c_n is not None:
        expected["c_n"] = flat(c_n)
    if h0 is not None:
        expected["grad_h0"] = flat(h0.grad)
    if c0 is not None:
        expected["grad_c0"] = flat(c0.grad)
    return expected


def main() -> None:
    import torch

    torch.use_deterministic_algorithms(True)
    golden = {
        "generator": "tests/golden/make_golden.py",
        "torch_version": torch.__version__,
        "cases": [dict(case, expected=run_torch(case)) for case in CASES],
    }
    OUT_PATH.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {OUT_PATH} ({OUT_PATH.stat().st_size} bytes, {len(CASES)} cases)")


if __name__ == "__main__":
    main()
