"""Every bad input raises its typed lstmrs error, which is also the builtin a caller would catch
(ValueError / TypeError), with a message that names the argument."""

from __future__ import annotations

import lstmrs
import numpy as np
import pytest
from lstmrs import GRU, LSTM
from lstmrs import _lstmrs as ext
from lstmrs.errors import (
    DTypeError,
    InvalidArgumentError,
    LstmrsError,
    NonFiniteError,
    ShapeError,
)

BUILTIN = {
    ShapeError: ValueError,
    InvalidArgumentError: ValueError,
    NonFiniteError: ValueError,
    DTypeError: TypeError,
}


def raises(cls, *needles):
    """Context manager: raises `cls` (and its builtin, and LstmrsError) with every needle in
    the message."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(cls)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            if not handled:  # another exception: let it propagate unchanged
                return False
            err = self.info.value
            assert isinstance(err, LstmrsError) and isinstance(err, BUILTIN[cls])
            for needle in needles:
                assert needle in str(err), f"{needle!r} not in {str(err)!r}"
            return handled

    return _Check()


def test_exception_tree():
    for cls, builtin in BUILTIN.items():
        assert issubclass(cls, LstmrsError) and issubclass(cls, builtin)
    assert issubclass(LstmrsError, Exception) and not issubclass(LstmrsError, ValueError)
    assert lstmrs.ShapeError is ShapeError and lstmrs.NonFiniteError is NonFiniteError


# -- constructor ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"input_size": 0}, "input_size"),
        ({"input_size": -3}, "input_size"),
        ({"input_size": 2.5}, "input_size"),
        ({"input_size": "8"}, "input_size"),
        ({"input_size": True}, "input_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_size": None}, "hidden_size"),
        ({"num_layers": 0}, "num_layers"),
        ({"num_layers": 1.0}, "num_layers"),
        ({"dropout": 1.5}, "dropout"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": float("nan")}, "dropout"),
        ({"dropout": "0.1"}, "dropout"),
        ({"bias": "yes"}, "bias"),
        ({"batch_first": 1}, "batch_first"),
        ({"bidirectional": None}, "bidirectional"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"check_finite": "no"}, "check_finite"),
        ({"hidden_size": 10**6, "num_layers": 100}, "parameters"),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, name):
    args = {"input_size": 4, "hidden_size": 8, **kwargs}
    with raises(InvalidArgumentError, name):
        cls(**args)


@pytest.mark.parametrize("dtype", ["int8", np.int32, "float16", "complex64", None, "nope", object])
def test_bad_dtype(dtype):
    with raises(DTypeError, "dtype", "float32", "float64"):
        LSTM(4, 8, dtype=dtype)


def test_valid_dtype_spellings():
    for dtype in ["float32", np.float32, np.dtype("float32"), "f4"]:
        assert LSTM(2, 3, dtype=dtype, seed=0).dtype == np.float32
    for dtype in ["float64", np.float64, float, "double"]:
        assert GRU(2, 3, dtype=dtype, seed=0).dtype == np.float64


def test_bad_attribute_assignments():
    layer = LSTM(4, 8, seed=0)
    with raises(InvalidArgumentError, "mode"):
        layer.train("yes")
    with raises(InvalidArgumentError, "batch_first"):
        layer.batch_first = "no"
    with raises(InvalidArgumentError, "dropout"):
        layer.dropout = 2
    with pytest.raises(AttributeError):
        layer.hidden_size = 3  # structural sizes are fixed by the weights


# -- x -------------------------------------------------------------------------------------------


@pytest.fixture
def lstm():
    return LSTM(8, 16, num_layers=2, seed=0)


@pytest.fixture
def gru():
    return GRU(8, 16, num_layers=2, bidirectional=True, seed=0)


def test_feature_size_message_names_expected_and_given(lstm):
    with raises(ShapeError) as info:
        lstm(np.zeros((4, 5, 7), np.float32))
    assert str(info.value) == "x: expected shape [B, T, 8] (batch_first=True), got (4, 5, 7)"
    lstm.batch_first = False
    with raises(ShapeError, "x: expected shape [T, B, 8] (batch_first=False), got (4, 5, 9)"):
        lstm(np.zeros((4, 5, 9), np.float32))


@pytest.mark.parametrize("shape", [(8,), (2, 3, 4, 8), ()])
def test_wrong_rank(lstm, shape):
    with raises(ShapeError, "x:", str(shape)):
        lstm(np.zeros(shape, np.float32))


def test_unbatched_wrong_feature_size(gru):
    with raises(ShapeError, "x:", "[T, 8]", "(5, 3)"):
        gru(np.zeros((5, 3), np.float32))


@pytest.mark.parametrize("shape", [(0, 5, 8), (3, 0, 8), (0, 8)])
def test_empty_input(lstm, shape):
    with raises(ShapeError, "x:", str(shape)):
        lstm(np.zeros(shape, np.float32))


@pytest.mark.parametrize(
    "x,what",
    [
        (np.zeros((2, 3, 8), np.int64), "int64"),
        (np.zeros((2, 3, 8), bool), "bool"),
        (np.zeros((2, 3, 8), np.complex64), "complex64"),
        (np.zeros((2, 3, 8), object), "object"),
        ([[["a"] * 8] * 3] * 2, "<U1"),
        ([[[1.0] * 8, [1.0] * 7]], "cannot convert"),
        ("hello", "<U5"),
    ],
)
def test_x_dtype(lstm, x, what):
    with raises(DTypeError, "x:", what):
        lstm(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(lstm, bad):
    x = np.zeros((2, 3, 8), np.float32)
    x[1, 2, 5] = bad
    with raises(NonFiniteError, "x:", "(1, 2, 5)", "check_finite=False"):
        lstm(x)
    h0 = np.zeros((2, 2, 16), np.float32)
    c0 = h0.copy()
    c0[0, 1, 3] = bad
    with raises(NonFiniteError, "c0", "(0, 1, 3)"):
        lstm(np.zeros((2, 3, 8), np.float32), (h0, c0))
    with raises(NonFiniteError, "h0"):
        lstm(np.zeros((2, 3, 8), np.float32), (c0, h0))


def test_huge_finite_values_are_not_flagged():
    # Their sum would overflow to inf; the check looks at each value.
    x = np.full((2, 3, 8), 1e308, np.float64)
    layer = GRU(8, 4, dtype="float64", seed=0)
    out, _ = layer(x)
    assert out.shape == (2, 3, 4)


# -- state ---------------------------------------------------------------------------------------


def test_lstm_state_must_be_a_pair(lstm):
    x = np.zeros((2, 3, 8), np.float32)
    h0 = np.zeros((2, 2, 16), np.float32)
    with raises(InvalidArgumentError, "state", "(h0, c0)"):
        lstm(x, h0)
    with raises(InvalidArgumentError, "state", "(h0, c0)"):
        lstm(x, (h0, h0, h0))


def test_state_shapes(lstm, gru):
    x = np.zeros((2, 3, 8), np.float32)
    good = np.zeros((2, 2, 16), np.float32)
    bad = np.zeros((1, 2, 16), np.float32)
    with raises(ShapeError, "h0", "(2, 2, 16)", "(1, 2, 16)"):
        lstm(x, (bad, good))
    with raises(ShapeError, "c0", "(2, 2, 16)", "(1, 2, 16)"):
        lstm(x, (good, bad))
    with raises(ShapeError, "h0", "(4, 2, 16)", "(2, 2, 16)"):
        gru(x, good)  # bidirectional: L*D = 4
    with raises(ShapeError, "h0", "(4, 16)", "(4, 2, 16)"):
        gru(x[0], np.zeros((4, 2, 16), np.float32))  # unbatched input needs a 2-D state


def test_state_dtype(gru):
    with raises(DTypeError, "h0", "int64"):
        gru(np.zeros((2, 3, 8), np.float32), np.zeros((4, 2, 16), np.int64))


# -- lengths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths,needles",
    [
        ([3, 3, 3], ["lengths", "2", "(3,)"]),
        ([3], ["lengths", "(1,)"]),
        ([[3, 3]], ["lengths", "(1, 2)"]),
        ([3, 0], ["lengths", "1..3", "got 0 at index 1"]),
        ([4, 1], ["lengths", "1..3", "got 4 at index 0"]),
        ([-1, 2], ["lengths", "got -1"]),
        ([2.0, 3.0], ["lengths", "integers", "float64"]),
        ([True, True], ["lengths", "integers", "bool"]),
        (["a", "b"], ["lengths", "integers"]),
        (np.array([3, 3], np.uint64) * 2**62, ["lengths", "1..3"]),
    ],
)
def test_bad_lengths(lstm, lengths, needles):
    with raises(InvalidArgumentError, *needles):
        lstm(np.zeros((2, 3, 8), np.float32), lengths=lengths)


# -- parameters ----------------------------------------------------------------------------------


def test_load_state_dict_lists_missing_and_unexpected_keys(lstm):
    sd = lstm.state_dict()
    del sd["bias_hh_l1"]
    sd["weight_hr_l0"] = np.zeros(3)
    with raises(
        InvalidArgumentError,
        "state_dict",
        "missing keys ['bias_hh_l1']",
        "unexpected keys ['weight_hr_l0']",
    ):
        lstm.load_state_dict(sd)


def test_load_state_dict_shapes_dtypes_and_values(lstm):
    sd = lstm.state_dict()
    with raises(ShapeError, "weight_hh_l0", "(64, 16)", "(16, 64)"):
        lstm.load_state_dict({**sd, "weight_hh_l0": sd["weight_hh_l0"].T})
    with raises(DTypeError, "bias_ih_l1", "int64"):
        lstm.load_state_dict({**sd, "bias_ih_l1": np.zeros(64, np.int64)})
    bad = sd["weight_ih_l0"].copy()
    bad[3, 2] = np.nan
    with raises(NonFiniteError, "weight_ih_l0", "(3, 2)"):
        lstm.load_state_dict({**sd, "weight_ih_l0": bad})
    with raises(InvalidArgumentError, "state_dict", "mapping"):
        lstm.load_state_dict(list(sd.items()))
    with raises(InvalidArgumentError, "strict"):
        lstm.load_state_dict(sd, strict="yes")


def test_set_parameters_flat_checks(lstm):
    n = lstm.num_parameters
    with raises(ShapeError, "flat", f"({n},)", f"({n - 1},)"):
        lstm.set_parameters_flat(np.zeros(n - 1, np.float32))
    with raises(ShapeError, "flat", f"({n},)"):
        lstm.set_parameters_flat(np.zeros((1, n), np.float32))
    with raises(DTypeError, "flat"):
        lstm.set_parameters_flat(np.zeros(n, np.int32))


# -- backward ------------------------------------------------------------------------------------


def test_backward_arguments(lstm):
    x = np.zeros((2, 3, 8), np.float32)
    out, (h_n, c_n), tape = lstm.forward_train(x)
    with raises(InvalidArgumentError, "tape", "forward_train"):
        lstm.backward(object(), d_out=out)
    with raises(InvalidArgumentError, "d_out", "d_state", "neither"):
        lstm.backward(tape)
    with raises(InvalidArgumentError, "d_out", "d_state", "neither"):
        lstm.backward(tape, d_state=(None, None))
    with raises(ShapeError, "d_out", "(2, 3, 16)", "(2, 3, 15)"):
        lstm.backward(tape, d_out=np.zeros((2, 3, 15), np.float32))
    with raises(InvalidArgumentError, "d_state", "(dh_n, dc_n)"):
        lstm.backward(tape, d_state=h_n)
    with raises(ShapeError, "dc_n", "(2, 2, 16)"):
        lstm.backward(tape, d_state=(h_n, c_n[:1]))
    with raises(DTypeError, "d_out", "int"):
        lstm.backward(tape, d_out=np.zeros(out.shape, int))
    bad = np.zeros_like(out)
    bad[0, 0, 0] = np.inf
    with raises(NonFiniteError, "d_out"):
        lstm.backward(tape, d_out=bad)


def test_tape_from_another_layer_is_refused(lstm):
    other = LSTM(8, 16, num_layers=2, seed=0)  # same config and weights, different layer
    _, _, tape = other.forward_train(np.zeros((2, 3, 8), np.float32))
    with raises(InvalidArgumentError, "tape", "another network"):
        lstm.backward(tape, d_out=np.zeros((2, 3, 16), np.float32))


def test_tape_is_refused_after_the_parameters_change(gru):
    x = np.ones((2, 3, 8), np.float32)
    out, _, tape = gru.forward_train(x)
    gru.load_state_dict(gru.state_dict())
    with raises(InvalidArgumentError, "tape", "parameters"):
        gru.backward(tape, d_out=np.ones_like(out))
    out, _, tape = gru.forward_train(x)  # a fresh tape works
    assert gru.backward(tape, d_out=np.ones_like(out)).input.shape == x.shape


# -- threads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2", None, 2**40])
def test_bad_thread_counts(n, restore_num_threads):
    with raises(InvalidArgumentError, "n:"):
        lstmrs.set_num_threads(n)
    assert lstmrs.get_num_threads() == restore_num_threads


# -- the extension raises the same classes ---------------------------------------------------------


def test_extension_errors_use_the_python_exception_tree():
    with raises(InvalidArgumentError, "cell", "'lstm', 'gru'", "rnn"):
        ext.RnnCore("rnn", 2, 3, 1, True, False, "float32", 0)
    with raises(InvalidArgumentError, "hidden_size"):
        ext.RnnCore("gru", 2, 0, 1, True, False, "float32", 0)
    with raises(DTypeError, "dtype", "int8"):
        ext.RnnCore("gru", 2, 3, 1, True, False, "int8", 0)
    core = ext.RnnCore("lstm", 2, 3, 1, True, False, "float32", 0)
    with raises(InvalidArgumentError, "name", "weight_ih_l0", "nope"):
        core.get_param("nope")
    with raises(InvalidArgumentError, "name", "nope"):
        core.set_param("nope", np.zeros(3, np.float32))
    with raises(ShapeError, "weight_hh_l0", "(12, 3)", "(3, 12)"):
        core.set_param("weight_hh_l0", np.zeros((3, 12), np.float32))
    with raises(DTypeError, "x", "float32", "float64"):
        core.forward(np.zeros((1, 2, 2)))
    with raises(DTypeError, "x", "float32", "list"):
        core.forward([[[0.0, 0.0]]])
    with raises(InvalidArgumentError, "x", "C-contiguous"):
        core.forward(np.zeros((1, 4, 2), np.float32)[:, ::2])
    with raises(ShapeError, "x", "(1, 2, 3)"):
        core.forward(np.zeros((1, 2, 3), np.float32))
    with raises(ShapeError, "h0", "(1, 1, 3)"):
        core.forward(np.zeros((1, 2, 2), np.float32), h0=np.zeros((1, 3), np.float32))
    with raises(InvalidArgumentError, "lengths", "1..=2", "got 3"):
        core.forward(np.zeros((1, 2, 2), np.float32), lengths=np.array([3]))
    with raises(InvalidArgumentError, "dropout"):
        core.forward(np.zeros((1, 2, 2), np.float32), dropout=1.0)
    with raises(InvalidArgumentError, "flat"):
        core.set_flat(np.zeros((4, 4), np.float32)[:, ::2])
    with raises(ShapeError, "flat"):
        core.set_flat(np.zeros(5, np.float32))
    gru_core = ext.RnnCore("gru", 2, 3, 1, True, False, "float64", 0)
    with raises(InvalidArgumentError, "c0", "GRU"):
        gru_core.forward(np.zeros((1, 2, 2)), c0=np.zeros((1, 1, 3)))
    _, _, _, tape = gru_core.forward(np.zeros((1, 2, 2)), keep_tape=True)
    assert (tape.dtype, tape.seq_len, tape.batch, tape.batch_first) == ("float64", 2, 1, True)
    with raises(InvalidArgumentError, "d_c_n", "GRU"):
        gru_core.backward(tape, d_c_n=np.zeros((1, 1, 3)))
    with raises(InvalidArgumentError, "tape", "another network"):
        core.backward(tape, d_h_n=np.zeros((1, 1, 3), np.float32))
