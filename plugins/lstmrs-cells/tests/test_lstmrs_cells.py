"""lstmrs-cells: registration, gradients and golden values of every cell."""

from __future__ import annotations

import json

import lstmrs_cells
import numpy as np
import pytest
from lstmrs.cells import CellSpec
from lstmrs.plugins import get_cells, list_plugins
from lstmrs.testing import check_cell_gradients, check_rust_cell, register_temporarily

NAMES = [
    "peephole_lstm",
    "cifg_lstm",
    "mgu",
    "indrnn",
    "elman",
    "ln_lstm",
    "ln_gru",
    "slstm",
    "decay_rnn",
]
CELLS = {spec.name: spec for spec in lstmrs_cells.CELLS}


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def chunks(a: np.ndarray, n: int) -> list[np.ndarray]:
    return np.split(a, n, axis=1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def random_step(spec: CellSpec, rng: np.random.Generator, b: int = 3, h: int = 5):
    x_pre = rng.normal(size=(b, spec.x_gates * h))
    h_pre = rng.normal(size=(b, spec.h_gates * h)) if spec.h_gates else None
    params = {p.name: rng.normal(size=h) for p in spec.unit_params}
    states = {s: rng.normal(size=(b, h)) for s in spec.states}
    return x_pre, h_pre, params, states


def test_registered_through_the_hook(lstmrs_plugins):
    assert set(get_cells()) == {"lstm", "gru"}  # isolated: only the built-ins
    with register_temporarily(lstmrs_cells, name="lstmrs_cells"):
        cells = get_cells()
        assert set(NAMES) <= set(cells)
        assert all(lstmrs_plugins.owner("cells", n) == "lstmrs_cells" for n in NAMES)
        row = next(r for r in list_plugins() if r["name"] == "lstmrs_cells")
        assert row["cells"] == sorted(NAMES)
        assert row["version"] == lstmrs_cells.__version__
    assert "mgu" not in get_cells()


@pytest.mark.parametrize("name", NAMES)
def test_json_round_trip(name):
    spec = CELLS[name]
    assert CellSpec.from_json(spec.to_json()) == spec
    d = json.loads(spec.to_json())
    assert d["name"] == name and set(d["outputs"]) == set(spec.states)


def test_shapes_of_the_parameters():
    assert CELLS["peephole_lstm"].param_specs(3, 5) == [
        ("weight_ih_l0", (20, 3)),
        ("weight_hh_l0", (20, 5)),
        ("bias_ih_l0", (20,)),
        ("bias_hh_l0", (20,)),
        ("w_ci_l0", (5,)),
        ("w_cf_l0", (5,)),
        ("w_co_l0", (5,)),
    ]
    assert CELLS["cifg_lstm"].x_gates == 3 and CELLS["mgu"].h_gates == 2
    # IndRNN has no recurrent matrix, only the per-unit weight, initialised to 1.
    ind = CELLS["indrnn"]
    assert ind.param_specs(3, 5, layer=1) == [
        ("weight_ih_l1", (5, 3)),
        ("bias_ih_l1", (5,)),
        ("u_l1", (5,)),
    ]
    assert np.array_equal(ind.init_params(3, 5)["u_l0"], np.ones(5))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
    report = check_cell_gradients(CELLS[name], seed=3)
    assert report["elements"] > 40 and report["worst"] <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_rust_path(name):
    # Skips (with the reason) while the Rust core has no compile_cell.
    check_rust_cell(CELLS[name])


# Golden values from direct NumPy formulas, written independently of the cell language.


def test_peephole_lstm_direct_formula(rng):
    spec = CELLS["peephole_lstm"]
    x_pre, h_pre, p, s = random_step(spec, rng)
    xi, xf, xg, xo = chunks(x_pre, 4)
    hi, hf, hg, ho = chunks(h_pre, 4)
    c = s["c"]
    i = sigmoid(xi + hi + p["w_ci"] * c)
    f = sigmoid(xf + hf + p["w_cf"] * c)
    c_new = f * c + i * np.tanh(xg + hg)
    o = sigmoid(xo + ho + p["w_co"] * c_new)
    new = spec.reference_step(x_pre, h_pre, p, s)
    np.testing.assert_allclose(new["c"], c_new, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(new["h"], o * np.tanh(c_new), rtol=1e-13, atol=1e-15)


def test_cifg_lstm_direct_formula(rng):
    spec = CELLS["cifg_lstm"]
    x_pre, h_pre, p, s = random_step(spec, rng)
    xf, xg, xo = chunks(x_pre, 3)
    hf, hg, ho = chunks(h_pre, 3)
    f = sigmoid(xf + hf)
    c_new = f * s["c"] + (1 - f) * np.tanh(xg + hg)
    new = spec.reference_step(x_pre, h_pre, p, s)
    np.testing.assert_allclose(new["c"], c_new, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(new["h"], sigmoid(xo + ho) * np.tanh(c_new), rtol=1e-13, atol=1e-15)


def test_mgu_direct_formula(rng):
    spec = CELLS["mgu"]
    x_pre, h_pre, p, s = random_step(spec, rng)
    xf, xn = chunks(x_pre, 2)
    hf, hn = chunks(h_pre, 2)
    f = sigmoid(xf + hf)
    expected = (1 - f) * s["h"] + f * np.tanh(xn + f * hn)
    np.testing.assert_allclose(spec.reference_step(x_pre, h_pre, p, s)["h"], expected, rtol=1e-13)


def test_indrnn_direct_formula(rng):
    spec = CELLS["indrnn"]
    x_pre, h_pre, p, s = random_step(spec, rng)
    assert h_pre is None
    expected = np.maximum(x_pre + p["u"] * s["h"], 0.0)
    got = spec.reference_step(x_pre, None, p, s)["h"]
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    assert (got == 0).any() and (got > 0).any()  # both sides of the ReLU were exercised


def test_elman_golden_from_torch():
    # Golden values from PyTorch 2.15 (float64):
    #   cell = torch.nn.RNNCell(3, 4, nonlinearity="tanh").double()
    #   with torch.no_grad():
    #       cell.weight_ih.copy_(torch.from_numpy(np.sin(np.arange(12.0)).reshape(4, 3) * 0.5))
    #       cell.weight_hh.copy_(torch.from_numpy(np.cos(np.arange(16.0)).reshape(4, 4) * 0.5))
    #       cell.bias_ih.copy_(torch.from_numpy(np.linspace(-0.2, 0.3, 4)))
    #       cell.bias_hh.copy_(torch.from_numpy(np.linspace(0.1, -0.1, 4)))
    #   x = torch.from_numpy((np.arange(6.0).reshape(2, 3) - 2.5) / 3)
    #   h = torch.from_numpy(np.linspace(-0.5, 0.5, 8).reshape(2, 4))
    #   cell(x, h).tolist()
    golden = np.array(
        [
            [-0.5734720653366272, 0.1908965407010314, 0.25293810225208146, -0.1124271898040186],
            [0.25526375307174765, -0.20697597462483786, 0.38135930036567034, -0.3420966880666428],
        ]
    )
    w_ih = np.sin(np.arange(12.0)).reshape(4, 3) * 0.5
    w_hh = np.cos(np.arange(16.0)).reshape(4, 4) * 0.5
    b_ih, b_hh = np.linspace(-0.2, 0.3, 4), np.linspace(0.1, -0.1, 4)
    x = (np.arange(6.0).reshape(2, 3) - 2.5) / 3
    h = np.linspace(-0.5, 0.5, 8).reshape(2, 4)
    got = CELLS["elman"].reference_step(x @ w_ih.T + b_ih, h @ w_hh.T + b_hh, {}, {"h": h})
    np.testing.assert_allclose(got["h"], golden, rtol=1e-14, atol=1e-15)
    # The same through the whole-sequence reference, with torch's parameter names.
    weights = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh}
    out, fin = CELLS["elman"].reference_sequence(x[:, None, :], weights, {"h": h})
    np.testing.assert_allclose(out[:, 0], golden, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(fin["h"], golden, rtol=1e-14, atol=1e-15)


# Live comparisons with torch where an equivalent exists (skipped without torch).


def test_elman_matches_torch_rnn_over_a_sequence(rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rnn = torch.nn.RNN(3, 4, nonlinearity="tanh", batch_first=True).double()
    x = rng.normal(size=(2, 6, 3))
    h0 = rng.normal(size=(1, 2, 4))
    out_t, h_t = rnn(torch.from_numpy(x), torch.from_numpy(h0))
    weights = {k: v.detach().numpy() for k, v in rnn.state_dict().items()}
    out, fin = CELLS["elman"].reference_sequence(x, weights, {"h": h0[0]})
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fin["h"], h_t[0].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_mgu_is_a_gru_with_tied_gates(rng):
    # GRU: r = s(a_r), z = s(a_z), n = tanh(xn + r * hn), h' = (1 - z) n + z h. With the reset
    # gate's weights = MGU's forget gate and the update gate's = minus them, s(-a) = 1 - s(a)
    # makes r = f and z = 1 - f: exactly the MGU.
    torch = pytest.importorskip("torch")
    i, h, b = 3, 4, 5
    w_ih, w_hh = rng.normal(size=(2 * h, i)), rng.normal(size=(2 * h, h))
    b_ih, b_hh = rng.normal(size=2 * h), rng.normal(size=2 * h)
    x, h0 = rng.normal(size=(b, i)), rng.normal(size=(b, h))
    gru = torch.nn.GRUCell(i, h).double()
    with torch.no_grad():
        for name, w in (
            ("weight_ih", w_ih),
            ("weight_hh", w_hh),
            ("bias_ih", b_ih),
            ("bias_hh", b_hh),
        ):
            f, n = np.split(w, 2, axis=0)
            getattr(gru, name).copy_(torch.from_numpy(np.concatenate([f, -f, n])))
    expected = gru(torch.from_numpy(x), torch.from_numpy(h0)).detach().numpy()
    got = CELLS["mgu"].reference_step(x @ w_ih.T + b_ih, h0 @ w_hh.T + b_hh, {}, {"h": h0})
    np.testing.assert_allclose(got["h"], expected, rtol=1e-12, atol=1e-14)


def test_cifg_is_an_lstm_with_tied_gates(rng):
    # torch's LSTMCell with the input gate's weights = minus the forget gate's: i = 1 - f.
    torch = pytest.importorskip("torch")
    i, h, b = 3, 4, 5
    w_ih, w_hh = rng.normal(size=(3 * h, i)), rng.normal(size=(3 * h, h))
    b_ih, b_hh = rng.normal(size=3 * h), rng.normal(size=3 * h)
    x, h0, c0 = rng.normal(size=(b, i)), rng.normal(size=(b, h)), rng.normal(size=(b, h))
    lstm = torch.nn.LSTMCell(i, h).double()
    with torch.no_grad():
        for name, w in (
            ("weight_ih", w_ih),
            ("weight_hh", w_hh),
            ("bias_ih", b_ih),
            ("bias_hh", b_hh),
        ):
            f, g, o = np.split(w, 3, axis=0)
            getattr(lstm, name).copy_(torch.from_numpy(np.concatenate([-f, f, g, o])))
    h1, c1 = lstm(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    got = CELLS["cifg_lstm"].reference_step(
        x @ w_ih.T + b_ih, h0 @ w_hh.T + b_hh, {}, {"h": h0, "c": c0}
    )
    np.testing.assert_allclose(got["h"], h1.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got["c"], c1.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_indrnn_is_a_relu_rnn_with_a_diagonal_recurrence(rng):
    torch = pytest.importorskip("torch")
    i, h, b = 3, 4, 5
    w_ih, b_ih, u = rng.normal(size=(h, i)), rng.normal(size=h), rng.normal(size=h)
    x, h0 = rng.normal(size=(b, i)), np.abs(rng.normal(size=(b, h)))
    cell = torch.nn.RNNCell(i, h, nonlinearity="relu").double()
    with torch.no_grad():
        cell.weight_ih.copy_(torch.from_numpy(w_ih))
        cell.bias_ih.copy_(torch.from_numpy(b_ih))
        cell.weight_hh.copy_(torch.from_numpy(np.diag(u)))
        cell.bias_hh.zero_()
    expected = cell(torch.from_numpy(x), torch.from_numpy(h0)).detach().numpy()
    got = CELLS["indrnn"].reference_step(x @ w_ih.T + b_ih, None, {"u": u}, {"h": h0})
    np.testing.assert_allclose(got["h"], expected, rtol=1e-12, atol=1e-14)


# The cells of the language's second version (exp, softplus, division, maximum, row reductions).


def layer_norm_np(a, gain, bias, eps=1e-5):
    mu, var = a.mean(axis=1, keepdims=True), a.var(axis=1, keepdims=True)
    return (a - mu) / np.sqrt(var + eps) * gain + bias


def test_ln_lstm_direct_formula(rng):
    spec = CELLS["ln_lstm"]
    x_pre, h_pre, p, s = random_step(spec, rng, h=6)
    a = [x + h for x, h in zip(chunks(x_pre, 4), chunks(h_pre, 4))]
    i, f, g, o = (
        layer_norm_np(a[k], p[f"ln_gain_{n}"], p[f"ln_bias_{n}"]) for k, n in enumerate("ifgo")
    )
    c_new = sigmoid(f) * s["c"] + sigmoid(i) * np.tanh(g)
    h_new = sigmoid(o) * np.tanh(layer_norm_np(c_new, p["ln_gain_c"], p["ln_bias_c"]))
    new = spec.reference_step(x_pre, h_pre, p, s)
    np.testing.assert_allclose(new["c"], c_new, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(new["h"], h_new, rtol=1e-12, atol=1e-14)


def test_ln_lstm_layer_norm_matches_torch(rng):
    # Each gate's normalisation is torch.nn.functional.layer_norm over the H units.
    torch = pytest.importorskip("torch")
    spec = CELLS["ln_lstm"]
    x_pre, h_pre, p, s = random_step(spec, rng, h=6)
    x_pre[:, 6:12] = 0.0  # forget gate: pre-activation from h_pre alone
    t = torch.from_numpy
    f = torch.nn.functional.layer_norm(
        t(h_pre[:, 6:12]), (6,), t(p["ln_gain_f"]), t(p["ln_bias_f"])
    )
    i = torch.nn.functional.layer_norm(
        t(x_pre[:, :6] + h_pre[:, :6]), (6,), t(p["ln_gain_i"]), t(p["ln_bias_i"])
    )
    g = torch.nn.functional.layer_norm(
        t(x_pre[:, 12:18] + h_pre[:, 12:18]), (6,), t(p["ln_gain_g"]), t(p["ln_bias_g"])
    )
    c_new = torch.sigmoid(f) * t(s["c"]) + torch.sigmoid(i) * torch.tanh(g)
    new = spec.reference_step(x_pre, h_pre, p, s)
    np.testing.assert_allclose(new["c"], c_new.numpy(), rtol=1e-12, atol=1e-14)


def test_ln_gru_direct_formula(rng):
    spec = CELLS["ln_gru"]
    x_pre, h_pre, p, s = random_step(spec, rng, h=6)
    (xr, xz, xn), (hr, hz, hn) = chunks(x_pre, 3), chunks(h_pre, 3)
    r = sigmoid(layer_norm_np(xr + hr, p["ln_gain_r"], p["ln_bias_r"]))
    z = sigmoid(layer_norm_np(xz + hz, p["ln_gain_z"], p["ln_bias_z"]))
    n = np.tanh(
        layer_norm_np(xn, p["ln_gain_xn"], p["ln_bias_xn"])
        + r * layer_norm_np(hn, p["ln_gain_hn"], p["ln_bias_hn"])
    )
    new = spec.reference_step(x_pre, h_pre, p, s)
    np.testing.assert_allclose(new["h"], (1 - z) * n + z * s["h"], rtol=1e-12, atol=1e-14)


def _torch_ln_sequence(torch, name, x, weights, h):
    """LN-LSTM / LN-GRU over a sequence written with torch ops and torch.nn.functional.layer_norm,
    independently of the cell language: the oracle for the Rust layer's forward and gradients."""
    ln = torch.nn.functional.layer_norm
    w = weights
    size = h.shape[1]

    def norm(a, k):
        return ln(a, (size,), w[f"ln_gain_{k}_l0"], w[f"ln_bias_{k}_l0"], eps=1e-5)

    c = torch.zeros_like(h)
    outs = []
    for t in range(x.shape[1]):
        xg = x[:, t] @ w["weight_ih_l0"].T + w["bias_ih_l0"]
        hg = h @ w["weight_hh_l0"].T + w["bias_hh_l0"]
        if name == "ln_lstm":
            i, f, g, o = (norm(a + b, k) for a, b, k in zip(xg.chunk(4, 1), hg.chunk(4, 1), "ifgo"))
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(norm(c, "c"))
        else:
            (xr, xz, xn), (hr, hz, hn) = xg.chunk(3, 1), hg.chunk(3, 1)
            r, z = torch.sigmoid(norm(xr + hr, "r")), torch.sigmoid(norm(xz + hz, "z"))
            n = torch.tanh(norm(xn, "xn") + r * norm(hn, "hn"))
            h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs, 1), h


@pytest.mark.parametrize("name", ["ln_lstm", "ln_gru"])
def test_ln_cells_match_torch_forward_and_gradients(name, rng):
    # The Rust layer (float64) against the same network in torch autograd: outputs, the input
    # gradient and every parameter's gradient, with gains and biases away from their init.
    torch = pytest.importorskip("torch")
    import lstmrs

    layer = lstmrs.RNN(3, 5, cell=CELLS[name], seed=1, dtype="float64", batch_first=True)
    sd = {
        k: np.asarray(v) + (rng.normal(scale=0.3, size=np.shape(v)) if k.startswith("ln_") else 0)
        for k, v in layer.state_dict().items()
    }
    layer.load_state_dict(sd)
    x = rng.normal(size=(4, 7, 3))
    h0 = np.zeros((1, 4, 5))
    init = (h0, np.zeros_like(h0)) if name == "ln_lstm" else h0
    out, _state, tape = layer.forward_train(x, init)
    d_out = rng.normal(size=out.shape)
    grads = layer.backward(tape, d_out=d_out)

    tw = {k: torch.tensor(v, requires_grad=True) for k, v in sd.items()}
    tx = torch.tensor(x, requires_grad=True)
    t_out, _ = _torch_ln_sequence(torch, name, tx, tw, torch.zeros(4, 5, dtype=torch.float64))
    (t_out * torch.from_numpy(d_out)).sum().backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads.input, tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    for k, v in tw.items():
        np.testing.assert_allclose(
            grads.params[k], v.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=k
        )


def slstm_step_np(x_pre, h_pre, s):
    """xLSTM's sLSTM (Beck et al. 2024, eqs. 8-17, sigmoid forget gate) written out in the
    paper's stabilised form, from the paper's states: n = exp(l - m) for any stabiliser m."""
    it, ft, zt, ot = (x + h for x, h in zip(chunks(x_pre, 4), chunks(h_pre, 4)))
    m_prev = s["l"]  # any m_prev works; this one makes the paper's n_prev = 1
    n_prev, c_prev = np.exp(s["l"] - m_prev), s["c"]  # c is stored as c / n
    log_f = np.log(sigmoid(ft))
    m = np.maximum(log_f + m_prev, it)
    i_gate = np.exp(it - m)
    f_gate = np.exp(log_f + m_prev - m)
    c = f_gate * c_prev * n_prev + i_gate * np.tanh(zt)
    n = f_gate * n_prev + i_gate
    return {"h": sigmoid(ot) * c / n, "c": c / n, "l": m + np.log(n)}


def test_slstm_direct_formula(rng):
    spec = CELLS["slstm"]
    x_pre, h_pre, _, s = random_step(spec, rng)
    new = spec.reference_step(x_pre, h_pre, {}, s)
    for k, v in slstm_step_np(x_pre, h_pre, s).items():
        np.testing.assert_allclose(new[k], v, rtol=1e-12, atol=1e-14, err_msg=k)


def test_slstm_stabiliser_is_exact(rng):
    # The stabiliser changes nothing but the scale: h = o * C / N for the unstabilised
    # C' = F C + I z, N' = F N + I (F = sigmoid(f~), I = exp(i~)) from N0 = exp(l0) = 1, over a
    # sequence with input-gate pre-activations near +-100 (float64 still holds exp(100), so
    # the unstabilised recurrence is the oracle; float32 would overflow at exp(89)).
    spec = CELLS["slstm"]
    b, hid, steps = 2, 3, 6
    s = {k: np.zeros((b, hid)) for k in spec.states}
    big_c, big_n = np.zeros((b, hid)), np.ones((b, hid))
    for _ in range(steps):
        x_pre = rng.normal(size=(b, 4 * hid))
        x_pre[:, :hid] *= 30.0
        h_pre = rng.normal(size=(b, 4 * hid))
        it, ft, zt, ot = (x + h for x, h in zip(chunks(x_pre, 4), chunks(h_pre, 4)))
        big_c = sigmoid(ft) * big_c + np.exp(it) * np.tanh(zt)
        big_n = sigmoid(ft) * big_n + np.exp(it)
        s = spec.reference_step(x_pre, h_pre, {}, s)
        np.testing.assert_allclose(s["h"], sigmoid(ot) * big_c / big_n, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(s["l"], np.log(big_n), rtol=1e-12)
        assert np.all(np.abs(s["c"]) <= 1.0)  # a convex combination of tanh candidates


def test_decay_rnn_direct_formula(rng):
    spec = CELLS["decay_rnn"]
    x_pre, h_pre, p, s = random_step(spec, rng)
    a = np.exp(-np.log1p(np.exp(p["decay"])))
    expected = a * s["h"] + (1 - a) * np.tanh(x_pre + h_pre)
    np.testing.assert_allclose(spec.reference_step(x_pre, h_pre, p, s)["h"], expected, rtol=1e-13)
    assert np.allclose(spec.init_params(2, 4)["decay_l0"], -2.0)


def test_slstm_layer_matches_the_reference_sequence(rng):
    # The internal state l through the Rust core: the layer's outputs equal the reference
    # sequence from l0 = 0.
    import lstmrs

    spec = CELLS["slstm"]
    layer = lstmrs.RNN(3, 4, cell=spec, seed=0, dtype="float64", batch_first=True)
    x = rng.standard_normal((2, 5, 3))
    out, (h_n, c_n) = layer(x)
    assert h_n.shape == c_n.shape == (1, 2, 4)
    weights = {k: np.asarray(v) for k, v in layer.state_dict().items()}
    ref, fin = spec.reference_sequence(x, weights)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c_n[0], fin["c"], rtol=1e-10, atol=1e-12)
