"""Reduced-precision inference (lstmrs.quantize_dynamic): bf16 and int8 against the float32
layer on every kernel this CPU runs (the portable one included), torch's dynamically quantized
LSTM when torch imports, the float layer's argument checks, and the typed errors."""

from __future__ import annotations

import doctest
import pickle

import lstmrs
import numpy as np
import pytest
from lstmrs import quantization
from lstmrs.errors import InferenceOnlyError, InvalidArgumentError, ShapeError
from lstmrs.plugins.builtin import LSTM_CELL

DTYPES = ("qint8", "bfloat16")
# max|q - f32| / max|f32| on these small random networks (measured: int8 <= 0.008, bf16 <= 0.003);
# the accuracy budget on trained models is bench/lowp.py's.
TOLERANCE = {"qint8": 0.03, "bfloat16": 0.01}


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _paths():
    return [(dt, k) for dt in DTYPES for k in quantization.kernels(dt)]


def test_kernels_list_the_dispatch_choice_first_and_portable_last():
    for dt in DTYPES:
        ks = quantization.kernels(dt)
        assert ks[-1] == "portable"
        assert lstmrs.quantize_dynamic(lstmrs.GRU(3, 4, seed=0), dt).kernel == ks[0]


@pytest.mark.parametrize(("dtype", "kernel"), _paths())
@pytest.mark.parametrize("cls", [lstmrs.LSTM, lstmrs.GRU])
def test_close_to_float32_stacked_bidirectional_with_lengths_and_state(cls, dtype, kernel):
    layer = cls(6, 20, num_layers=2, bidirectional=True, batch_first=False, seed=1).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 4, 6)).astype(np.float32)
    h0 = rng.standard_normal((4, 4, 20)).astype(np.float32) * 0.5
    state = (h0, h0 * 0.7) if cls is lstmrs.LSTM else h0
    lengths = [9, 2, 5, 1]
    want, want_state = layer(x, state, lengths=lengths)
    q = lstmrs.quantize_dynamic(layer, dtype, kernel=kernel)
    assert q.kernel == kernel and q.dtype == dtype
    out, got_state = q(x, state, lengths=lengths)
    assert out.dtype == np.float32 and out.shape == want.shape
    assert _rel(out, want) < TOLERANCE[dtype]
    for a, b in zip(
        got_state if cls is lstmrs.LSTM else [got_state],
        want_state if cls is lstmrs.LSTM else [want_state],
    ):
        assert a.shape == b.shape and _rel(a, b) < TOLERANCE[dtype]
    # Past each sequence's length the outputs are exactly zero (packed-sequence semantics).
    for b, n in enumerate(lengths):
        assert not out[n:, b].any()


def test_int8_paths_agree_bit_for_bit_and_bf16_paths_closely():
    layer = lstmrs.LSTM(12, 40, seed=2).eval()
    x = np.random.default_rng(1).standard_normal((3, 7, 12)).astype(np.float32)
    for dt in DTYPES:
        outs = [
            lstmrs.quantize_dynamic(layer, dt, kernel=k)(x)[0] for k in quantization.kernels(dt)
        ]
        for o in outs[1:]:
            if dt == "qint8":  # exact int32 sums and one shared epilogue
                np.testing.assert_array_equal(o, outs[0])
            else:
                np.testing.assert_allclose(o, outs[0], atol=1e-5)


def test_float64_layer_unbatched_input_and_pickle():
    layer = lstmrs.GRU(5, 16, dtype="float64", seed=3).eval()
    x = np.random.default_rng(2).standard_normal((8, 5))
    q = lstmrs.quantize_dynamic(layer, "bfloat16")
    out, h_n = q(x)
    want, _ = layer(x)
    assert out.shape == (8, 16) and h_n.shape == (1, 16)
    assert _rel(out, want) < TOLERANCE["bfloat16"]
    q2 = pickle.loads(pickle.dumps(q))
    np.testing.assert_array_equal(q2(x)[0], out)


def test_copy_does_not_follow_later_changes_of_the_float_layer():
    layer = lstmrs.LSTM(4, 8, seed=0)
    x = np.ones((2, 3, 4), np.float32)
    q = lstmrs.quantize_dynamic(layer)
    before = q(x)[0]
    layer.set_parameters_flat(layer.parameters_flat() * 2)
    np.testing.assert_array_equal(q(x)[0], before)


def test_matches_torch_dynamic_quantization_in_distribution():
    """torch quantizes activations per tensor and weights per tensor, lstmrs per row: the two
    are different roundings of one network, both near the float32 output."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tl = torch.nn.LSTM(10, 24, batch_first=True)
    layer = lstmrs.LSTM.from_torch(tl).eval()
    tq = torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(tl), {torch.nn.LSTM}, dtype=torch.qint8
    )
    x = np.random.default_rng(3).standard_normal((4, 12, 10)).astype(np.float32)
    with torch.inference_mode():
        want = tl(torch.from_numpy(x))[0].numpy()
        torch_q = tq(torch.from_numpy(x))[0].numpy()
    ours = lstmrs.quantize_dynamic(layer, torch.qint8)(x)[0]
    assert _rel(ours, want) < TOLERANCE["qint8"]
    # Per-row scales: no less accurate than torch's per-tensor scheme (with some slack).
    assert _rel(ours, want) <= 1.5 * _rel(torch_q, want) + 1e-3


def test_training_raises_a_typed_error():
    q = lstmrs.quantize_dynamic(lstmrs.LSTM(3, 4, seed=0), "bfloat16")
    x = np.zeros((1, 2, 3), np.float32)
    for call in (lambda: q.forward_train(x), lambda: q.backward(None), lambda: q.train()):
        with pytest.raises(InferenceOnlyError, match="inference-only"):
            call()
    assert q.eval() is q and q.train(False) is q


def test_bad_arguments_raise_typed_errors():
    lstm = lstmrs.LSTM(3, 6, seed=0)
    with pytest.raises(InvalidArgumentError, match="dtype: expected 'qint8' or 'bfloat16'"):
        lstmrs.quantize_dynamic(lstm, "float16")
    with pytest.raises(InvalidArgumentError, match="kernel"):
        lstmrs.quantize_dynamic(lstm, "qint8", kernel="avx512_bf16")
    with pytest.raises(InvalidArgumentError, match="proj_size"):
        lstmrs.quantize_dynamic(lstmrs.LSTM(3, 6, proj_size=2, seed=0))
    with pytest.raises(InvalidArgumentError, match="layer: expected an lstmrs"):
        lstmrs.quantize_dynamic(object())
    # The LSTM written in the cell language is compiled like a plugin cell: no int8 kernels.
    custom = lstmrs.RNN(3, 6, cell=LSTM_CELL.to_json(), seed=0)
    with pytest.raises(InvalidArgumentError, match="built-in 'lstm' or 'gru'"):
        lstmrs.quantize_dynamic(custom)
    q = lstmrs.quantize_dynamic(lstm)
    with pytest.raises(ShapeError, match=r"x: expected shape \[B, T, 3\]"):
        q(np.zeros((2, 4, 5), np.float32))
    with pytest.raises(ShapeError, match="h0"):
        q(np.zeros((2, 4, 3), np.float32), (np.zeros((1, 3, 6)), np.zeros((1, 2, 6))))
    with pytest.raises(InvalidArgumentError, match="lengths"):
        q(np.zeros((2, 4, 3), np.float32), lengths=[5, 1])
    with pytest.raises(lstmrs.NonFiniteError):
        q(np.full((1, 2, 3), np.nan, np.float32))


def test_module_docstring_example_runs():
    failures, tried = doctest.testmod(quantization, verbose=False)
    assert tried > 0 and failures == 0
