"""Importers (lstmrs.interop): live torch modules, ONNX files' LSTM/GRU nodes and Keras 3
layers, each against its live source; and the round trip torch -> lstmrs -> ONNX."""

from __future__ import annotations

import os

import lstmrs
import numpy as np
import pytest
from lstmrs.errors import InvalidArgumentError, ShapeError, UnsupportedModelError

TOL = 1e-5
# Keras 3 on the torch backend converts its tensors with np.array(x) and NumPy 2 warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def close(got, want, tol=TOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.abs(got - want) <= tol * (1 + np.abs(want))), np.abs(got - want).max()


def mixed_lengths(rng, b, t):
    lens = rng.integers(1, t + 1, size=b)
    lens[0], lens[-1] = t, 1
    return lens.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# torch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def torch_module(torch, kind, **kw):
    torch.manual_seed(0)
    if kind.startswith("rnn_"):
        return torch.nn.RNN(3, 5, nonlinearity=kind[4:], **kw)
    return getattr(torch.nn, kind.upper())(3, 5, **kw)


def torch_run(torch, module, x, lens=None):
    """torch's outputs, with packed sequences for ``lens`` (zeros past each length)."""
    batch_first = module.batch_first
    tx = torch.from_numpy(x)
    with torch.no_grad():
        if lens is None:
            out, st = module(tx)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                tx, torch.from_numpy(lens), batch_first=batch_first, enforce_sorted=False
            )
            out, st = module(packed)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(
                out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0]
            )
    st = st if isinstance(st, tuple) else (st,)
    return [out.numpy(), *(s.numpy() for s in st)]


KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_from_torch_matches_the_live_module(torch, kind, batch_first, layers, bidirectional, rng):
    module = torch_module(
        torch, kind, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first
    ).eval()
    layer = (lstmrs.RNN if kind.startswith("rnn_") else getattr(lstmrs, kind.upper())).from_torch(
        module
    )
    assert layer.batch_first == batch_first and layer.bidirectional == bidirectional
    assert layer.num_layers == layers and not layer.training
    b, t = 4, 6
    x = rng.standard_normal((b, t, 3) if batch_first else (t, b, 3)).astype(np.float32)
    lens = mixed_lengths(rng, b, t)
    for ln in (None, lens):
        out, st = layer(x, lengths=ln)
        want = torch_run(torch, module, x, ln)
        for g, w in zip([out, *(st if isinstance(st, tuple) else (st,))], want):
            close(g, w)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_torch_lstmrs_onnx_matches_torch(torch, kind, rng):
    pytest.importorskip("onnxruntime")
    module = torch_module(torch, kind, num_layers=2, bidirectional=True, batch_first=True).eval()
    layer = lstmrs.RNN.from_torch(module)
    proto = layer.to_onnx()
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((5, 9, 3)).astype(np.float32)
    lens = mixed_lengths(rng, 5, 9)
    got = sess.run(None, {"x": x, "lengths": lens})
    for g, w in zip(got, torch_run(torch, module, x, lens)):
        close(g, w)


def test_from_torch_keeps_float64_and_training_mode(torch, rng):
    module = torch.nn.GRU(3, 4, num_layers=2, dropout=0.5).double()
    layer = lstmrs.GRU.from_torch(module)
    assert layer.dtype == np.float64 and layer.training and layer.dropout == 0.5
    assert not layer.batch_first
    x = rng.standard_normal((6, 2, 3))
    close(layer.eval()(x)[0], module.eval()(torch.from_numpy(x))[0].detach().numpy(), 1e-12)


def test_from_torch_errors(torch):
    with pytest.raises(InvalidArgumentError, match="expects a torch.nn.LSTM, got GRU"):
        lstmrs.LSTM.from_torch(torch.nn.GRU(3, 4))
    with pytest.raises(InvalidArgumentError, match="Linear"):
        lstmrs.RNN.from_torch(torch.nn.Linear(3, 4))


# ----------------------------------------------------------------------------------------------
# ONNX


def with_node_outputs(onnx, model):
    """A copy of ``model`` that also outputs each LSTM/GRU node's X, sequence_lens, Y, Y_h."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        if n.op_type in ("LSTM", "GRU"):
            lens = n.input[4] if len(n.input) > 4 else ""
            for name in (n.input[0], lens, n.output[0], n.output[1]):
                if name and name not in have:
                    m.graph.output.append(onnx.ValueInfoProto(name=name))
                    have.add(name)
    return m


def check_nodes_against_onnxruntime(onnx, ort, model, feeds):
    """Every LSTM/GRU node: the imported layer on the node's X gives the node's Y and Y_h."""
    from lstmrs.interop.onnx_import import read_onnx_rnns

    probe = with_node_outputs(onnx, model)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in probe.graph.output]
    values = dict(zip(names, sess.run(None, feeds)))
    found = read_onnx_rnns(model)
    nodes = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU")]
    assert len(found) == len(nodes) > 0
    for imp, node in zip(found, nodes):
        layer = imp.layer
        assert not layer.batch_first  # layout 0: time-major
        x = values[node.input[0]]
        lens = values[node.input[4]] if len(node.input) > 4 and node.input[4] else None
        out, st = layer(x, lengths=lens)
        y = values[node.output[0]]  # [T, D, B, H]
        t, d, b, h = y.shape
        close(out, y.transpose(0, 2, 1, 3).reshape(t, b, d * h))
        h_n = st[0] if isinstance(st, tuple) else st
        close(h_n, values[node.output[1]])
    return found


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_onnx_import_of_torch_onnx_export(torch, kind, rng, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    module = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    module.eval()
    path = tmp_path / "torch.onnx"
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), dynamo=False)
    exported = onnx.load(path)
    found = check_nodes_against_onnxruntime(onnx, ort, exported, {exported.graph.input[0].name: x})
    # The stacked layers' weights are torch's, layer by layer.
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    for k, imp in enumerate(found):
        for name, v in imp.layer.state_dict().items():
            close(v, sd[name.replace("_l0", f"_l{k}")], 0)


@pytest.mark.parametrize("cls", [lstmrs.LSTM, lstmrs.GRU])
def test_onnx_import_of_lstmrs_exports(cls, rng):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    layer = cls(3, 4, num_layers=2, bidirectional=True, seed=5)
    proto = layer.to_onnx()
    x = rng.standard_normal((3, 6, 3)).astype(np.float32)
    check_nodes_against_onnxruntime(onnx, ort, proto, {"x": x, "lengths": np.array([6, 2, 4])})
    one = cls(3, 4, seed=6, bidirectional=True)
    back = cls.from_onnx(one.to_onnx())
    for name, v in one.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], v)
    rnn = lstmrs.RNN.from_onnx(one.to_onnx())
    assert isinstance(rnn, lstmrs.RNN) and rnn.cell == cls.__name__.lower()
    assert not rnn.batch_first  # the node is time-major (layout 0); the export transposes
    rnn.batch_first = True
    close(rnn(x)[0], one(x)[0])


def test_onnx_import_evaluates_computed_weights_and_refuses_what_it_cannot_represent(rng):
    pytest.importorskip("onnx")
    from lstmrs.formats.onnx_rnn import onnx_layer_tensors
    from onnx import TensorProto, helper, numpy_helper

    src = lstmrs.LSTM(2, 3, seed=1)
    w, r, b = onnx_layer_tensors("lstm", src.state_dict(), 0, 3, 1, True)

    def model(attrs=None, extra_inputs=(), half_w=True):
        inits = [numpy_helper.from_array(r, "R"), numpy_helper.from_array(b, "B")]
        nodes = []
        if half_w:  # W = W_half * 2: not an initializer, a constant subgraph
            inits += [
                numpy_helper.from_array(w / 2, "W_half"),
                numpy_helper.from_array(np.float32(2), "two"),
            ]
            nodes.append(helper.make_node("Mul", ["W_half", "two"], ["W"]))
        else:
            inits.append(numpy_helper.from_array(w, "W"))
        nodes.append(
            helper.make_node(
                "LSTM", ["x", "W", "R", "B", *extra_inputs], ["y"], hidden_size=3, **(attrs or {})
            )
        )
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            inits,
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    back = lstmrs.LSTM.from_onnx(model())
    for name, v in src.state_dict().items():
        close(back.state_dict()[name], v, 1e-7)
    with pytest.raises(UnsupportedModelError, match="reverse"):
        lstmrs.LSTM.from_onnx(model({"direction": "reverse"}))
    with pytest.raises(UnsupportedModelError, match="clip"):
        lstmrs.LSTM.from_onnx(model({"clip": 3.0}))
    with pytest.raises(UnsupportedModelError, match="activations"):
        lstmrs.LSTM.from_onnx(model({"activations": ["Sigmoid", "Relu", "Tanh"]}))
    with pytest.raises(InvalidArgumentError, match="0 GRU nodes"):
        lstmrs.GRU.from_onnx(model())
    with pytest.raises(InvalidArgumentError, match="not a file"):
        lstmrs.LSTM.from_onnx("/nonexistent.onnx")


# ----------------------------------------------------------------------------------------------
# Keras 3


@pytest.fixture(scope="module")
def keras():
    # Keras 3 picks its backend at import; torch is the one the test environment has.
    try:
        import torch  # noqa: F401

        os.environ.setdefault("KERAS_BACKEND", "torch")
    except ImportError:
        pass
    return pytest.importorskip("keras", minversion="3")


def as_np(v):
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def randomize(layer, rng):
    """Random weights, biases included (Keras starts them at zero or one)."""
    layer.set_weights(
        [rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()]
    )


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_keras_layers_match(keras, kind, return_sequences, go_backwards, rng):
    from lstmrs.interop.keras_import import from_keras, from_keras_weights

    layer = getattr(keras.layers, kind)(
        5, return_sequences=return_sequences, go_backwards=go_backwards, return_state=True
    )
    x = rng.standard_normal((3, 7, 4)).astype(np.float32)
    layer(x)
    randomize(layer, rng)
    want = [as_np(v) for v in layer(x)]
    imported = from_keras(layer)
    got = imported(x)
    assert len(got) == len(want) == (3 if kind == "LSTM" else 2)
    for g, w in zip(got, want):
        close(g, w)
    # The same from the get_weights() arrays, without the layer object.
    again = from_keras_weights(
        kind.lower(),
        layer.get_weights(),
        return_sequences=return_sequences,
        go_backwards=go_backwards,
    )
    close(again(x), want[0])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_keras_bidirectional_and_keras_files(keras, kind, rng, tmp_path):
    from lstmrs.interop.keras_import import from_keras

    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    inp = keras.Input((None, 3))
    h = keras.layers.Bidirectional(getattr(keras.layers, kind)(4, return_sequences=True))(inp)
    h = getattr(keras.layers, kind)(5, return_sequences=True, go_backwards=True)(h)
    out = keras.layers.Bidirectional(getattr(keras.layers, kind)(3))(h)
    model = keras.Model(inp, out)
    for layer in model.layers[1:]:
        randomize(layer, rng)
    path = tmp_path / "m.keras"
    model.save(path)
    imported = from_keras(str(path))
    assert [type(i.layer).__name__ for i in imported] == [kind] * 3
    assert [i.layer.bidirectional for i in imported] == [True, False, True]
    y = x
    for imp in imported:
        y = imp(y)
    close(y, as_np(model(x)))


def test_keras_refusals(keras):
    from lstmrs.interop.keras_import import from_keras, from_keras_weights

    x = np.zeros((1, 2, 3), np.float32)
    gru = keras.layers.GRU(4, reset_after=False)
    gru(x)
    with pytest.raises(UnsupportedModelError, match="reset_after=False"):
        from_keras(gru)
    lstm = keras.layers.LSTM(4, activation="relu")
    lstm(x)
    with pytest.raises(UnsupportedModelError, match="activation='relu'"):
        from_keras(lstm)
    with pytest.raises(ShapeError, match="kernel"):
        from_keras_weights("lstm", [np.zeros((3, 12)), np.zeros((4, 16))])
    with pytest.raises(InvalidArgumentError, match="Dense"):
        from_keras(keras.layers.Dense(3))
