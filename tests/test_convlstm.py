"""lstmrs.ConvLSTM: parity with a small PyTorch ConvLSTM (Conv2d over the concatenated [x, h], as
the common implementations write it), golden values from it, finite differences in float64, and
typed errors for bad input."""

from __future__ import annotations

import copy
import pickle

import lstmrs
import numpy as np
import pytest
from lstmrs.errors import (
    DTypeError,
    InvalidArgumentError,
    MemoryLimitError,
    NonFiniteError,
    ShapeError,
)


def torch_convlstm(layer: lstmrs.ConvLSTM):
    """A PyTorch ConvLSTM with ``layer``'s configuration and weights: per layer one
    ``nn.Conv2d(C_l + K, 4K, k, padding=k // 2)`` over ``cat([x_t, h_{t-1}], dim=1)``, gates
    i, f, g, o. Returns ``run(x, h0, c0) -> (out, h_n, c_n)`` and the list of its convolutions."""
    torch = pytest.importorskip("torch")
    dtype = torch.float64 if layer.dtype == np.float64 else torch.float32
    k = layer.hidden_channels
    sd = layer.state_dict()
    convs = []
    for n in range(layer.num_layers):
        conv = torch.nn.Conv2d(
            (layer.in_channels if n == 0 else k) + k,
            4 * k,
            layer.kernel_size,
            padding=layer.padding,
            bias=layer.bias,
            dtype=dtype,
        )
        with torch.no_grad():
            w = np.concatenate([sd[f"weight_ih_l{n}"], sd[f"weight_hh_l{n}"]], axis=1)
            conv.weight.copy_(torch.from_numpy(w))
            if layer.bias:
                conv.bias.copy_(torch.from_numpy(sd[f"bias_l{n}"]))
        convs.append(conv)

    def run(x, h0, c0):
        seq, hs, cs = x, [], []
        for n, conv in enumerate(convs):
            h, c, outs = h0[n], c0[n], []
            for t in range(seq.shape[1]):
                z = conv(torch.cat([seq[:, t], h], dim=1))
                i, f, g, o = z.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            seq = torch.stack(outs, dim=1)
            hs.append(h)
            cs.append(c)
        return seq, torch.stack(hs), torch.stack(cs)

    return run, convs


def _inputs(layer, rng, batch=2, steps=3, size=(5, 6)):
    dt = layer.dtype
    x = rng.standard_normal((batch, steps, layer.in_channels, *size)).astype(dt)
    shape = (layer.num_layers, batch, layer.hidden_channels, *layer.state_size(*size))
    h0 = (0.5 * rng.standard_normal(shape)).astype(dt)
    c0 = (0.5 * rng.standard_normal(shape)).astype(dt)
    return x, h0, c0


@pytest.mark.parametrize(
    ("dtype", "num_layers", "kernel", "bias"),
    [("float32", 1, 3, True), ("float32", 2, (3, 5), True), ("float64", 2, 3, False)],
)
def test_matches_torch_forward_and_gradients(rng, dtype, num_layers, kernel, bias):
    torch = pytest.importorskip("torch")
    layer = lstmrs.ConvLSTM(
        2, 3, kernel_size=kernel, num_layers=num_layers, bias=bias, dtype=dtype, seed=3
    )
    # Random biases, so a bias bug cannot hide behind the initial zeros and ones.
    layer.set_parameters_flat(rng.uniform(-0.4, 0.4, layer.num_parameters).astype(layer.dtype))
    x, h0, c0 = _inputs(layer, rng)
    out, (h_n, c_n), tape = layer.forward_train(x, (h0, c0))

    run, convs = torch_convlstm(layer)
    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    t_out, t_h, t_c = run(tx, th0, tc0)
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, t_h.detach().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(c_n, t_c.detach().numpy(), rtol=0, atol=1e-5)

    d_out = rng.standard_normal(out.shape).astype(layer.dtype)
    d_h = rng.standard_normal(h_n.shape).astype(layer.dtype)
    d_c = rng.standard_normal(c_n.shape).astype(layer.dtype)
    loss = (
        (t_out * torch.from_numpy(d_out)).sum()
        + (t_h * torch.from_numpy(d_h)).sum()
        + (t_c * torch.from_numpy(d_c)).sum()
    )
    loss.backward()
    g = layer.backward(tape, d_out, (d_h, d_c))
    tol = {"rtol": 1e-4, "atol": 1e-4}
    np.testing.assert_allclose(g.input, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(g.state[0], th0.grad.numpy(), **tol)
    np.testing.assert_allclose(g.state[1], tc0.grad.numpy(), **tol)
    k_in = [layer.in_channels] + [layer.hidden_channels] * (num_layers - 1)
    for n, conv in enumerate(convs):
        w_grad = conv.weight.grad.numpy()
        np.testing.assert_allclose(g.params[f"weight_ih_l{n}"], w_grad[:, : k_in[n]], **tol)
        np.testing.assert_allclose(g.params[f"weight_hh_l{n}"], w_grad[:, k_in[n] :], **tol)
        if bias:
            np.testing.assert_allclose(g.params[f"bias_l{n}"], conv.bias.grad.numpy(), **tol)


def _golden_layer() -> lstmrs.ConvLSTM:
    layer = lstmrs.ConvLSTM(2, 2, kernel_size=3, dtype="float64", seed=0)
    flat = [
        0.3 * np.cos(0.37 * np.arange(int(np.prod(v.shape)))).reshape(v.shape)
        for v in layer.state_dict().values()
    ]
    layer.load_state_dict(dict(zip(layer.state_dict(), flat)))
    return layer


def test_golden_values_from_torch():
    """Values that torch computed, so the semantics are pinned without torch installed.

    Produced with this file's ``torch_convlstm``::

        layer = _golden_layer()
        x = np.sin(0.11 * np.arange(2 * 3 * 2 * 4 * 4)).reshape(2, 3, 2, 4, 4)
        z = torch.zeros(1, 2, 2, 4, 4, dtype=torch.float64)
        tx = torch.tensor(x, requires_grad=True)
        out, h, c = torch_convlstm(layer)[0](tx, z, z)
        out.sum().backward()
        print(out[1, 2, :, 1].flatten(), c[0, 0, 1, 2], tx.grad[0, 0, 1, 2])
    """
    layer = _golden_layer()
    x = np.sin(0.11 * np.arange(2 * 3 * 2 * 4 * 4)).reshape(2, 3, 2, 4, 4)
    out, (_, c_n), tape = layer.forward_train(x)
    g = layer.backward(tape, np.ones_like(out))
    np.testing.assert_allclose(out[1, 2, :, 1].ravel(), GOLDEN_OUT, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_n[0, 0, 1, 2], GOLDEN_C, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.input[0, 0, 1, 2], GOLDEN_DX, rtol=0, atol=1e-12)


GOLDEN_OUT = [
    0.2246656561564162,
    0.1273142944925497,
    0.09929508369138418,
    0.08264486614249955,
    0.2517014165067012,
    0.31897013146683173,
    0.2996797265866789,
    0.17823041762497716,
]
GOLDEN_C = [-0.21642556881323732, -0.24398733147106494, -0.2573630058668155, -0.34775769794661265]
GOLDEN_DX = [0.6583069267546806, 0.7429946469137543, 0.56981694658189, 0.2642867550514692]


def test_gradients_match_finite_differences_float64(rng):
    layer = lstmrs.ConvLSTM(1, 2, kernel_size=3, num_layers=2, dtype="float64", seed=1)
    x, h0, c0 = _inputs(layer, rng, batch=2, steps=2, size=(3, 4))
    out, (h_n, c_n), tape = layer.forward_train(x, (h0, c0))
    w_out, w_h, w_c = (rng.standard_normal(a.shape) for a in (out, h_n, c_n))

    def loss(flat, x, h0, c0):
        layer.set_parameters_flat(flat)
        o, (h, c) = layer(x, (h0, c0))
        return float((o * w_out).sum() + (h * w_h).sum() + (c * w_c).sum())

    flat = layer.parameters_flat()
    g = layer.backward(tape, w_out, (w_h, w_c))
    args = [flat, x, h0, c0]
    analytic = [g.flat, g.input, g.state[0], g.state[1]]
    eps = 1e-6
    for which, grad in enumerate(analytic):
        for i in rng.choice(grad.size, size=12, replace=False):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[which].flat[i] += eps
            minus[which].flat[i] -= eps
            numeric = (loss(*plus) - loss(*minus)) / (2 * eps)
            assert abs(grad.flat[i] - numeric) <= 1e-7 + 1e-6 * abs(numeric), (which, i)


def test_return_sequences_false_is_the_last_step(rng):
    seq = lstmrs.ConvLSTM(2, 3, seed=5)
    last = lstmrs.ConvLSTM(2, 3, seed=5, return_sequences=False)
    x, _, _ = _inputs(seq, rng)
    out_seq, _, tape_seq = seq.forward_train(x)
    out_last, (h_n, _), tape_last = last.forward_train(x)
    assert out_last.shape == (2, 3, 5, 6)
    np.testing.assert_array_equal(out_last, out_seq[:, -1])
    np.testing.assert_array_equal(out_last, h_n[-1])
    d = rng.standard_normal(out_last.shape).astype(np.float32)
    d_full = np.zeros_like(out_seq)
    d_full[:, -1] = d
    g_last = last.backward(tape_last, d)
    g_seq = seq.backward(tape_seq, d_full)
    np.testing.assert_allclose(g_last.flat, g_seq.flat, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_last.input, g_seq.input, rtol=1e-6, atol=1e-6)


def test_valid_padding_shrinks_the_frame(rng):
    layer = lstmrs.ConvLSTM(1, 2, kernel_size=(3, 5), padding="valid", seed=0)
    assert layer.padding == (0, 0)
    assert layer.state_size(7, 9) == (5, 5)
    out, (h_n, c_n) = layer(rng.standard_normal((2, 4, 1, 7, 9)))
    assert out.shape == (2, 4, 2, 5, 5)
    assert h_n.shape == c_n.shape == (1, 2, 2, 5, 5)
    assert out.dtype == np.float32


def test_parameters_state_dict_and_pickle(rng):
    layer = lstmrs.ConvLSTM(3, 4, kernel_size=3, num_layers=2, seed=7)
    names = [n for n, _ in layer.parameters()]
    assert names == [
        "weight_ih_l0",
        "weight_hh_l0",
        "bias_l0",
        "weight_ih_l1",
        "weight_hh_l1",
        "bias_l1",
    ]
    sd = layer.state_dict()
    assert sd["weight_ih_l0"].shape == (16, 3, 3, 3)
    assert sd["weight_hh_l1"].shape == (16, 4, 3, 3)
    # Keras' unit_forget_bias: the forget gate's biases start at 1, the others at 0.
    np.testing.assert_array_equal(sd["bias_l0"], np.repeat([0, 1, 0, 0], 4))
    assert layer.num_parameters == sum(v.size for v in sd.values())

    other = lstmrs.ConvLSTM(3, 4, kernel_size=3, num_layers=2, seed=8)
    other.load_state_dict(sd)
    x, _, _ = _inputs(layer, rng)
    np.testing.assert_array_equal(layer(x)[0], other(x)[0])
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        np.testing.assert_array_equal(clone(x)[0], layer(x)[0])
        assert repr(clone) == repr(layer)


def test_tapes_belong_to_their_layer_and_parameters(rng):
    layer = lstmrs.ConvLSTM(2, 3, seed=0)
    x, _, _ = _inputs(layer, rng)
    out, _, tape = layer.forward_train(x)
    other = lstmrs.ConvLSTM(2, 3, seed=0)
    with pytest.raises(InvalidArgumentError, match="tape: expected a tape recorded by this"):
        other.backward(tape, np.ones_like(out))
    layer.set_parameters_flat(layer.parameters_flat())
    with pytest.raises(InvalidArgumentError, match="tape: expected a tape recorded with the"):
        layer.backward(tape, np.ones_like(out))
    with pytest.raises(InvalidArgumentError, match="tape: expected the ConvLSTMTape"):
        layer.backward("tape", np.ones_like(out))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kernel_size": 2}, InvalidArgumentError, "kernel_size: expected odd sizes"),
        ({"kernel_size": (3, 3, 3)}, InvalidArgumentError, "kernel_size: expected an integer"),
        ({"padding": 2}, InvalidArgumentError, r"padding: expected at most kernel_size // 2"),
        ({"padding": "full"}, InvalidArgumentError, "padding: expected 'same', 'valid'"),
        (
            {"padding": "valid", "num_layers": 2},
            InvalidArgumentError,
            "padding: expected 'same'.*num_layers > 1",
        ),
        ({"num_layers": 0}, InvalidArgumentError, "num_layers"),
        ({"dtype": "int8"}, DTypeError, "dtype"),
    ],
)
def test_bad_configurations_are_typed_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        lstmrs.ConvLSTM(2, 3, **kwargs)


def test_bad_inputs_are_typed_errors(rng):
    layer = lstmrs.ConvLSTM(2, 3, num_layers=2, seed=0)
    x, h0, c0 = _inputs(layer, rng)
    with pytest.raises(ShapeError, match=r"x: expected shape \[B, T, C, H, W\] with C = "):
        layer(x[:, :, :1])
    with pytest.raises(ShapeError, match=r"x: expected shape"):
        layer(x[0])
    with pytest.raises(ShapeError, match=r"h0: expected shape \(2, 2, 3, 5, 6\)"):
        layer(x, (h0[:1], c0))
    with pytest.raises(InvalidArgumentError, match=r"state: expected a tuple \(h0, c0\)"):
        layer(x, h0)
    with pytest.raises(DTypeError, match="x: expected a real floating-point array"):
        layer(x.astype(np.int32))
    bad = x.copy()
    bad[1, 2, 0, 3, 4] = np.nan
    with pytest.raises(NonFiniteError, match=r"x: expected finite values.*\(1, 2, 0, 3, 4\)"):
        layer(bad)
    small = lstmrs.ConvLSTM(1, 2, kernel_size=5, padding="valid")
    with pytest.raises(
        ShapeError, match=r"x: expected shape \[B, T, C, H, W\] with H >= 5 and W >= 5 .*got H = 4"
    ):
        small(np.zeros((1, 1, 1, 4, 8), np.float32))

    # Every column matrix of this kernel over this frame would hold 4e10 values.
    wide = lstmrs.ConvLSTM(1, 1, kernel_size=(1, 200_001), padding=(0, 100_000))
    with pytest.raises(MemoryLimitError, match="kernel_size: needs"):
        wide(np.zeros((1, 1, 1, 1, 200_000), np.float32))

    out, _, tape = layer.forward_train(x)
    with pytest.raises(ShapeError, match=r"d_out: expected shape \(2, 3, 3, 5, 6\)"):
        layer.backward(tape, out[:, :2])
    with pytest.raises(InvalidArgumentError, match="expected at least one gradient"):
        layer.backward(tape)
