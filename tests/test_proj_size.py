"""``proj_size``: the LSTM with a projected hidden state, as ``torch.nn.LSTM(..., proj_size=P)``.

Shapes and names without torch; live parity with torch (forward to 1e-5 in float32, gradients to
1e-4, stacked, bidirectional, ragged ``lengths``, given initial states) when it is installed;
typed refusals on every path that has no projections (GRU, custom cells, ONNX, Model). The GPU
backend has them: tests/test_gpu.py checks it against the CPU layer and torch.
"""

from __future__ import annotations

import itertools
import pickle
import zlib

import lstmrs
import numpy as np
import pytest
from lstmrs.errors import ExportError, InvalidArgumentError, ShapeError

FWD_TOL = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float64": {"rtol": 1e-10, "atol": 1e-12}}
GRAD_TOL = {"float32": {"rtol": 1e-4, "atol": 1e-5}, "float64": {"rtol": 1e-9, "atol": 1e-11}}


def test_shapes_and_names_follow_torch():
    lstm = lstmrs.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=4, seed=0)
    assert lstm.proj_size == 4 and lstm.state_size == 4 and "proj_size=4" in repr(lstm)
    shapes = {k: v.shape for k, v in lstm.state_dict().items()}
    assert list(shapes)[:5] == [
        "weight_ih_l0",
        "weight_hh_l0",
        "bias_ih_l0",
        "bias_hh_l0",
        "weight_hr_l0",
    ]
    assert shapes["weight_hh_l0"] == (24, 4)
    assert shapes["weight_hr_l0_reverse"] == (4, 6)
    assert shapes["weight_ih_l1"] == (24, 8)  # D * proj_size inputs above the first layer
    assert lstm.num_parameters == sum(int(np.prod(s)) for s in shapes.values())

    x = np.random.default_rng(0).standard_normal((5, 7, 3)).astype(np.float32)
    out, (h_n, c_n) = lstm(x)
    assert out.shape == (5, 7, 8) and h_n.shape == (4, 5, 4) and c_n.shape == (4, 5, 6)
    # The unbatched form, and the last step of the forward direction is h_n.
    out1, (h1, c1) = lstm(x[0])
    np.testing.assert_allclose(out1, out[0], rtol=1e-6, atol=1e-7)
    assert h1.shape == (4, 4) and c1.shape == (4, 6)
    np.testing.assert_allclose(out[:, -1, :4], h_n[2], rtol=1e-6, atol=1e-7)

    out_t, _, tape = lstm.forward_train(x)
    g = lstm.backward(tape, d_out=np.ones_like(out_t))
    assert g.params["weight_hr_l1_reverse"].shape == (4, 6)
    assert g.state[0].shape == (4, 5, 4) and g.state[1].shape == (4, 5, 6)
    assert np.abs(g.params["weight_hr_l0"]).sum() > 0


def test_projection_is_applied():
    """Zeroing ``weight_hr`` zeroes the output and the state the next step sees."""
    lstm = lstmrs.LSTM(2, 5, proj_size=3, seed=1, dtype="float64")
    x = np.random.default_rng(1).standard_normal((2, 4, 2))
    out, _ = lstm(x)
    assert np.abs(out).max() > 1e-3
    lstm.load_state_dict({**lstm.state_dict(), "weight_hr_l0": np.zeros((3, 5))})
    out0, (h0, c0) = lstm(x)
    assert not out0.any() and not h0.any() and np.abs(c0).max() > 1e-3


def test_state_shapes_are_checked():
    lstm = lstmrs.LSTM(2, 5, proj_size=3, seed=0)
    x = np.zeros((2, 4, 2), np.float32)
    h0, c0 = np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 5), np.float32)
    lstm(x, (h0, c0))
    with pytest.raises(ShapeError, match=r"h0 .*\(1, 2, 3\).*proj_size"):
        lstm(x, (np.zeros((1, 2, 5), np.float32), c0))
    with pytest.raises(ShapeError, match=r"c0 .*\(1, 2, 5\)"):
        lstm(x, (h0, h0))
    _, _, tape = lstm.forward_train(x)
    with pytest.raises(ShapeError, match=r"d_out.*\(2, 4, 3\)"):
        lstm.backward(tape, d_out=np.zeros((2, 4, 5), np.float32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"proj_size": 5}, r"proj_size: expected an integer in 0\.\.4 .*hidden_size=5.*got 5"),
        ({"proj_size": 9}, "proj_size: expected an integer in 0..4"),
        ({"proj_size": -1}, "proj_size: expected an integer >= 0"),
        ({"proj_size": 2.0}, "proj_size: expected an integer"),
        ({"proj_size": True}, "proj_size: expected an integer"),
    ],
)
def test_bad_proj_size_is_a_typed_error(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        lstmrs.LSTM(3, 5, **kwargs)


def test_cells_without_projections_refuse_it():
    with pytest.raises(InvalidArgumentError, match="proj_size: expected 0 for the 'gru' cell"):
        lstmrs.GRU(3, 5, proj_size=2)
    from lstmrs.cells import Cell, tanh

    simple = Cell.define(
        "proj_test_cell",
        lambda c: {"h": tanh(c.x_gates(1)[0] + c.h_gates(1)[0])},
        states=("h",),
    )
    with pytest.raises(
        InvalidArgumentError, match="proj_size: expected 0 for the 'proj_test_cell'"
    ):
        lstmrs.RNN(3, 5, cell=simple, proj_size=2)
    # The native LSTM through RNN has projections like LSTM.
    rnn = lstmrs.RNN(3, 5, cell="lstm", proj_size=2, seed=0)
    lstm = lstmrs.LSTM(3, 5, proj_size=2, seed=0)
    x = np.ones((1, 3, 3), np.float32)
    np.testing.assert_array_equal(rnn(x)[0], lstm(x)[0])


def test_onnx_refuses_projections():
    # (The GPU runs projections: tests/test_gpu.py compares it with the CPU layer.)
    lstm = lstmrs.LSTM(3, 5, proj_size=2)
    with pytest.raises(ExportError, match="proj_size=2: ONNX's LSTM operator has no projection"):
        lstm.to_onnx(verify=False)


def test_pickle_keeps_projections():
    lstm = lstmrs.LSTM(3, 5, proj_size=2, seed=3)
    copy = pickle.loads(pickle.dumps(lstm))
    assert copy.proj_size == 2
    x = np.random.default_rng(3).standard_normal((2, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(copy(x)[0], lstm(x)[0])


# -- live parity with torch ----------------------------------------------------------------------

LAYERS = [1, 2, 3]
FLAGS = [False, True]
DTYPES = ["float32", "float64"]
# layers x bidirectional x lengths x dtype; bias, batch_first and initial states alternate.
CONFIGS = list(itertools.product(LAYERS, FLAGS, FLAGS, DTYPES))


def _config_id(c):
    layers, bidir, lens, dtype = c
    return f"L{layers}-{'bi' if bidir else 'uni'}-{'lens' if lens else 'full'}-{dtype[5:]}"


@pytest.mark.parametrize("config", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_forward_and_gradients_match_torch(config):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.set_num_threads(1)
    layers, bidir, use_lengths, dtype = config
    where = _config_id(config)
    seed = zlib.crc32(where.encode())
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    k = CONFIGS.index(config)
    bias, batch_first, use_state = k % 3 != 2, k % 2 == 0, k % 4 < 2
    batch, seq_len, input_size = 3, 6, 4
    hidden = int(rng.integers(3, 12))
    proj = int(rng.integers(1, hidden))
    d = 2 if bidir else 1
    net = torch.nn.LSTM(
        input_size,
        hidden,
        num_layers=layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidir,
        proj_size=proj,
    ).to(getattr(torch, dtype))
    # The state dict loads unchanged, through the layer's own constructor and from_torch.
    ours = lstmrs.LSTM(
        input_size,
        hidden,
        num_layers=layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidir,
        dtype=dtype,
        proj_size=proj,
    )
    ours.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})
    imported = lstmrs.LSTM.from_torch(net)
    assert imported.proj_size == proj
    assert list(ours.state_dict()) == list(net.state_dict())

    np_dt = np.dtype(dtype)
    x_shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
    x = rng.standard_normal(x_shape).astype(np_dt)
    lengths = None
    if use_lengths:
        lengths = np.array([seq_len, 1, int(rng.integers(2, seq_len))], dtype=np.int64)
    h_shape, c_shape = (layers * d, batch, proj), (layers * d, batch, hidden)
    h0 = (
        (0.5 * rng.standard_normal(h_shape)).astype(np_dt)
        if use_state
        else np.zeros(h_shape, np_dt)
    )
    c0 = (
        (0.5 * rng.standard_normal(c_shape)).astype(np_dt)
        if use_state
        else np.zeros(c_shape, np_dt)
    )
    g_out = rng.standard_normal(x_shape[:2] + (d * proj,)).astype(np_dt)
    g_h = rng.standard_normal(h_shape).astype(np_dt)
    g_c = rng.standard_normal(c_shape).astype(np_dt)

    tx = torch.from_numpy(x).requires_grad_()
    th0 = torch.from_numpy(h0).requires_grad_()
    tc0 = torch.from_numpy(c0).requires_grad_()
    inp = tx
    if lengths is not None:
        inp = pack_padded_sequence(
            tx, torch.from_numpy(lengths), batch_first=batch_first, enforce_sorted=False
        )
    t_out, (t_h, t_c) = net(inp, (th0, tc0))
    if lengths is not None:
        t_out, _ = pad_packed_sequence(t_out, batch_first=batch_first, total_length=seq_len)
    loss = (
        (t_out * torch.from_numpy(g_out)).sum()
        + (t_h * torch.from_numpy(g_h)).sum()
        + (t_c * torch.from_numpy(g_c)).sum()
    )
    loss.backward()

    state = (h0, c0) if use_state else None
    ftol, gtol = FWD_TOL[dtype], GRAD_TOL[dtype]
    for layer in (ours.eval(), imported.eval()):
        out, (h_n, c_n) = layer(x, state, lengths=lengths)
        np.testing.assert_allclose(out, t_out.detach().numpy(), err_msg=where, **ftol)
        np.testing.assert_allclose(h_n, t_h.detach().numpy(), err_msg=where + " h_n", **ftol)
        np.testing.assert_allclose(c_n, t_c.detach().numpy(), err_msg=where + " c_n", **ftol)

    ours.train()
    _, _, tape = ours.forward_train(x, state=state, lengths=lengths)
    g = ours.backward(tape, d_out=g_out, d_state=(g_h, g_c))
    assert list(g.params) == [name for name, _ in net.named_parameters()]
    for name, p in net.named_parameters():
        np.testing.assert_allclose(
            g.params[name], p.grad.numpy(), err_msg=f"{where} d{name}", **gtol
        )
    np.testing.assert_allclose(g.input, tx.grad.numpy(), err_msg=where + " dx", **gtol)
    np.testing.assert_allclose(g.state[0], th0.grad.numpy(), err_msg=where + " dh0", **gtol)
    np.testing.assert_allclose(g.state[1], tc0.grad.numpy(), err_msg=where + " dc0", **gtol)

    # And back: torch loads lstmrs' state dict unchanged and computes the same.
    back = torch.nn.LSTM(
        input_size,
        hidden,
        num_layers=layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidir,
        proj_size=proj,
    ).to(getattr(torch, dtype))
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    with torch.no_grad():
        np.testing.assert_allclose(
            back(torch.from_numpy(x))[0].numpy(), net(torch.from_numpy(x))[0].numpy(), **ftol
        )


# -- the Model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling, bidirectional", [("last", True), ("per_step", False)])
def test_model_with_projections_computes_the_layer_then_the_head(pooling, bidirectional, rng):
    model = lstmrs.Model(
        input_size=3,
        hidden_size=8,
        proj_size=3,
        num_layers=2,
        bidirectional=bidirectional,
        pooling=pooling,
        output_size=2,
        dtype="float64",
        seed=0,
    )
    assert model.proj_size == 3 and "proj_size=3" in repr(model)
    assert lstmrs.Model.from_config(model.get_config()).proj_size == 3
    sd = model.state_dict()
    d = 2 if bidirectional else 1
    assert sd["rnn.weight_hr_l1"].shape == (3, 8) and sd["head.0.weight"].shape == (2, d * 3)
    lstm = lstmrs.LSTM(
        3, 8, num_layers=2, bidirectional=bidirectional, proj_size=3, dtype="float64"
    ).eval()
    lstm.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("rnn.")})
    x = rng.standard_normal((4, 5, 3))
    lengths = np.array([5, 2, 4, 1])
    out, (h_n, _) = lstm(x, lengths=lengths)
    if pooling == "last":
        feats = np.concatenate([h_n[-2], h_n[-1]], axis=1) if bidirectional else h_n[-1]
    else:
        feats = out
    want = feats @ sd["head.0.weight"].T + sd["head.0.bias"]
    if pooling == "per_step":
        want[np.arange(5)[None, :] >= lengths[:, None]] = 0.0
    np.testing.assert_allclose(model.predict(x, lengths=lengths), want, rtol=1e-10, atol=1e-12)


def test_model_with_projections_trains_saves_and_refuses_what_it_cannot(tmp_path, rng):
    x = rng.standard_normal((32, 6, 2)).astype(np.float32)
    y = x.sum(axis=(1, 2))[:, None].astype(np.float32)
    model = lstmrs.Model(input_size=2, hidden_size=16, proj_size=4, output_size=1, seed=1)
    model.compile(lr=0.01)
    before = model.evaluate(x, y)["loss"]
    model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    assert model.evaluate(x, y)["loss"] < 0.8 * before
    path = model.save(tmp_path / "m")
    again = lstmrs.Model.load(path)
    assert again.proj_size == 4
    np.testing.assert_array_equal(again.predict(x), model.predict(x))

    # Streaming gives what predict gives for the sequence ending at each step.
    stepper = model.stepper(batch=4)
    for t in range(6):
        y_t = stepper.step(x[:4, t])
    np.testing.assert_allclose(y_t, model.predict(x[:4]), rtol=1e-5, atol=1e-6)
    h, c = stepper.state
    assert h.shape == (1, 4, 4) and c.shape == (1, 4, 16)
    stepper.state = (h, c)
    with pytest.raises(ExportError, match="proj_size=4: ONNX's LSTM operator has no projection"):
        model.to_onnx(verify=False)
    with pytest.raises(InvalidArgumentError, match="proj_size: expected 0 for the 'gru' cell"):
        lstmrs.Model(input_size=2, hidden_size=16, cell="gru", proj_size=4)
    with pytest.raises(InvalidArgumentError, match="proj_size: expected an integer in 0..15"):
        lstmrs.Model(input_size=2, hidden_size=16, proj_size=16)
