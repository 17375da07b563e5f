"""Property-based fuzzing of the Python API with hypothesis: layer calls with arbitrary shapes,
dtypes, lengths and states; model configurations; cell descriptions (DSL text); TOML configs
and overrides; checkpoint configs. Each property is "a typed error (an ``LstmrsError`` that is
also the matching built-in) or a result equal to the reference". Example counts are fixed and
the database is off, so the suite's time is bounded (well under two minutes) and runs alike in
CI; ``pytest --hypothesis-show-statistics tests/test_fuzz.py`` prints how many inputs each
property tried."""

from __future__ import annotations

import copy
import json
import os

import lstmrs
import numpy as np
import pytest
from lstmrs import _lstmrs
from lstmrs import checkpoint as ckpt
from lstmrs import config as C
from lstmrs.cells import CellSpec, is_name

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the test extra)")
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=int(os.environ.get("LSTMRS_FUZZ_EXAMPLES", "300")),
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    """Fuzzed sizes never allocate more than 256 MiB."""
    before = lstmrs.get_memory_limit()
    lstmrs.set_memory_limit(256 << 20)
    yield
    lstmrs.set_memory_limit(before)


def typed(e: BaseException) -> bool:
    """An lstmrs error that is also the built-in a caller expects."""
    return isinstance(e, lstmrs.LstmrsError) and isinstance(
        e, (ValueError, TypeError, MemoryError, RuntimeError)
    )


# --------------------------------------------------------------------------------------------
# A float64 NumPy reference of PyTorch's LSTM and GRU (packed-sequence semantics)


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _cell_step(cell, x_t, h, c, w_ih, w_hh, b_ih, b_hh):
    gx = x_t @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    hid = h.shape[1]
    if cell == "lstm":
        g = gx + gh
        i, f, gg, o = (g[:, k * hid : (k + 1) * hid] for k in range(4))
        c2 = _sig(f) * c + _sig(i) * np.tanh(gg)
        return _sig(o) * np.tanh(c2), c2
    r = _sig(gx[:, :hid] + gh[:, :hid])
    z = _sig(gx[:, hid : 2 * hid] + gh[:, hid : 2 * hid])
    n = np.tanh(gx[:, 2 * hid :] + r * gh[:, 2 * hid :])
    return (1 - z) * n + z * h, c


def reference(layer, cell, x, lengths, h0, c0):
    """Outputs [B, T, D*H] and h_n, c_n [L*D, B, H] in float64; x is batch-first."""
    sd = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    b, t, _ = x.shape
    hid, nd, nl = layer.hidden_size, layer.num_directions, layer.num_layers
    lens = np.full(b, t) if lengths is None else np.asarray(lengths)
    inp = x.astype(np.float64)
    h_n = np.zeros((nl * nd, b, hid))
    c_n = np.zeros((nl * nd, b, hid))
    for layer_k in range(nl):
        outs = []
        for d in range(nd):
            sfx = f"_l{layer_k}" + ("_reverse" if d else "")
            w = [sd[f"{n}{sfx}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            s = layer_k * nd + d
            out = np.zeros((b, t, hid))
            for row in range(b):
                h = np.zeros((1, hid)) if h0 is None else h0[s, row : row + 1].astype(float)
                c = np.zeros((1, hid)) if c0 is None else c0[s, row : row + 1].astype(float)
                steps = range(lens[row] - 1, -1, -1) if d else range(lens[row])
                for k in steps:
                    h, c = _cell_step(cell, inp[row : row + 1, k], h, c, *w)
                    out[row, k] = h[0]
                h_n[s, row], c_n[s, row] = h[0], c[0]
            outs.append(out)
        inp = np.concatenate(outs, axis=2)
    return inp, h_n, c_n


DTYPES = ["float32", "float64", "float16", "int64", "bool", "complex64", "object"]


@st.composite
def layer_calls(draw):
    cell = draw(st.sampled_from(["lstm", "gru"]))
    i, h = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    nl, bidi = draw(st.integers(1, 2)), draw(st.booleans())
    dtype = draw(st.sampled_from(["float32", "float64"]))
    b, t = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    # The input: right or wrong rank, sizes and dtype.
    shape = draw(
        st.one_of(
            st.just((b, t, i)),
            st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
        )
    )
    x_dtype = draw(st.sampled_from([dtype] * 4 + DTYPES))
    special = draw(st.sampled_from([None, None, None, np.nan, np.inf, "fortran"]))
    lengths = draw(
        st.one_of(
            st.none(),
            st.lists(st.integers(1, max(t, 1)), min_size=b, max_size=b),
            st.lists(st.integers(-2, 7), min_size=0, max_size=4),
            st.just([1.5] * b),
        )
    )
    state_kind = draw(st.sampled_from(["none", "none", "right", "wrong"]))
    return cell, i, h, nl, bidi, dtype, shape, x_dtype, special, lengths, state_kind


@FUZZ
@given(layer_calls(), st.integers(0, 2**31))
def test_layer_call_is_typed_error_or_equals_reference(call, seed):
    cell, i, h, nl, bidi, dtype, shape, x_dtype, special, lengths, state_kind = call
    rng = np.random.default_rng(seed)
    cls = lstmrs.LSTM if cell == "lstm" else lstmrs.GRU
    layer = cls(i, h, num_layers=nl, bidirectional=bidi, dtype=dtype, seed=seed)
    x = rng.standard_normal(shape)
    if x_dtype == "object":
        x = x.astype(object)
    else:
        x = x.astype(x_dtype)
    if special == "fortran":
        x = np.asfortranarray(x)
    elif special is not None and x.size and x.dtype.kind == "f":
        x.flat[0] = special
    nd = 2 if bidi else 1
    batch = shape[0] if len(shape) == 3 else 1
    hx = None
    if state_kind != "none":
        sshape = (nl * nd, batch, h) if state_kind == "right" else (nl, batch + 1, h)
        h0 = rng.standard_normal(sshape).astype(dtype)
        hx = (h0, h0.copy()) if cell == "lstm" else h0
    lens = None if lengths is None else np.asarray(lengths)
    try:
        out, state = layer(x, hx, lengths=lens)
    except Exception as e:  # noqa: BLE001 - the property: every error is typed
        assert typed(e), f"untyped {type(e).__name__}: {e}"
        event(f"typed error: {type(e).__name__}")
        return
    event("result compared with the reference")
    # A result: the input was valid ([B, T, I], or [T, I] unbatched); compare with the reference.
    assert x.dtype.kind == "f" and np.isfinite(x).all()
    assert (len(shape) == 3 and shape[2] == i) or (len(shape) == 2 and shape[1] == i)
    unbatched = len(shape) == 2
    h0 = c0 = None
    if hx is not None:
        h0, c0 = hx if cell == "lstm" else (hx, None)
        if unbatched and h0.ndim == 2:
            h0, c0 = h0[:, None], None if c0 is None else c0[:, None]
    ref, ref_h, ref_c = reference(layer, cell, x[None] if unbatched else x, lens, h0, c0)
    if unbatched:
        ref, ref_h, ref_c = ref[0], ref_h[:, 0], ref_c[:, 0]
    tol = 1e-9 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(out, ref, atol=tol, rtol=tol)
    h_n = state[0] if cell == "lstm" else state
    np.testing.assert_allclose(h_n, ref_h, atol=tol, rtol=tol)
    if cell == "lstm":
        np.testing.assert_allclose(state[1], ref_c, atol=tol, rtol=tol)


# --------------------------------------------------------------------------------------------
# Model configurations

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 6),
    st.sampled_from([2**20, 2**40, 2**63, -(2**63)]),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.lists(st.integers(-1, 5), max_size=3),
)
MODEL_KEYS = {
    "input_size": st.integers(1, 4),
    "hidden_size": st.integers(1, 4),
    "num_layers": st.integers(1, 2),
    "bidirectional": st.booleans(),
    "pooling": st.sampled_from(["last", "mean", "per_step", "attention"]),
    "head_hidden": st.lists(st.integers(1, 4), max_size=2),
    "output_size": st.integers(1, 3),
    "dropout": st.floats(0, 0.9),
    "cell": st.sampled_from(["lstm", "gru"]),
    "dtype": st.sampled_from(["float32", "float64"]),
}


@st.composite
def model_configs(draw):
    cfg = {k: draw(v) for k, v in MODEL_KEYS.items() if draw(st.booleans())}
    for k in draw(st.lists(st.sampled_from(sorted(MODEL_KEYS) + ["vocab_size"]), max_size=3)):
        cfg[k] = draw(ANY_VALUE)
    return cfg


@FUZZ
@given(model_configs())
def test_model_config_is_typed_error_or_a_model_that_predicts(cfg):
    if "vocab_size" not in cfg:
        cfg.setdefault("input_size", 2)
    # A million stacked layers is valid and fits the ceiling, but takes minutes to run.
    layers = cfg.get("num_layers")
    assume(not (isinstance(layers, int) and not isinstance(layers, bool) and layers > 16))
    try:
        m = lstmrs.Model(seed=0, **cfg)
    except Exception as e:  # noqa: BLE001 - the property: every error is typed
        assert typed(e), f"{cfg}: untyped {type(e).__name__}: {e}"
        event(f"typed error: {type(e).__name__}")
        return
    event("model built and predicted")
    if m.get_config()["vocab_size"] is None:
        x = np.ones((2, 3, m.get_config()["input_size"]), m.dtype)
    else:
        x = np.zeros((2, 3), np.int64)
    out = m.predict(x)
    assert np.isfinite(out).all()
    # The saved configuration rebuilds the same model.
    np.testing.assert_array_equal(lstmrs.Model.from_config(m.get_config()).predict(x), out)


VALID_CORE = {
    "input": {"kind": "dense", "features": 2},
    "cell": "lstm",
    "hidden_size": 3,
    "num_layers": 1,
    "bidirectional": False,
    "bias": True,
    "dropout": 0.0,
    "pooling": "last",
    "head_hidden": [],
    "activation": "tanh",
    "outputs": 2,
}


def _leaves(d, path=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path


def _set(d, path, value):
    for k in path[:-1]:
        d = d[k]
    if value is _DELETE:
        del d[path[-1]]
    else:
        d[path[-1]] = value


_DELETE = object()


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(_leaves(VALID_CORE))),
            st.one_of(ANY_VALUE, st.just(_DELETE)),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_model_core_config_json_is_typed_error_or_builds(edits):
    cfg = copy.deepcopy(VALID_CORE)
    for path, value in edits:
        try:
            _set(cfg, path, value)
        except (KeyError, TypeError):
            pass
    layers = cfg.get("num_layers")
    assume(not (isinstance(layers, int) and not isinstance(layers, bool) and layers > 16))
    text = json.dumps(cfg)
    try:
        core = _lstmrs.ModelCore(text, "float32", 0)
    except Exception as e:  # noqa: BLE001 - the property: every error is typed
        assert typed(e), f"{text}: untyped {type(e).__name__}: {e}"
        return
    assert all(len(s) >= 1 for _, s in core.param_specs())


# --------------------------------------------------------------------------------------------
# Cell descriptions (DSL text) and the one naming rule

ELMAN = {
    "name": "elman",
    "states": ["h"],
    "x_gates": 1,
    "h_gates": 1,
    "unit_params": [{"name": "w", "init": {"constant": 0.5}}],
    "nodes": [
        {"op": "xg", "index": 0},
        {"op": "hg", "index": 0},
        {"op": "add", "args": [0, 1]},
        {"op": "param", "name": "w"},
        {"op": "mul", "args": [2, 3]},
        {"op": "tanh", "args": [4]},
    ],
    "outputs": {"h": 5},
}
ELMAN_TEXT = json.dumps(ELMAN)


@st.composite
def cell_texts(draw):
    kind = draw(st.sampled_from(["text", "mutated", "deep"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "deep":
        n = draw(st.integers(100, 20000))
        return draw(st.sampled_from(["[", '{"a":'])) * n
    b = bytearray(ELMAN_TEXT.encode())
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(b) - 1))
        b[pos] = draw(st.sampled_from(list(b'{}[]",:0123456789-e.az ')))
    return b.decode("utf-8", "replace")


@FUZZ
@given(cell_texts())
def test_cell_description_text_is_typed_error_or_a_spec_rust_compiles(text):
    try:
        spec = CellSpec.from_json(text)
    except Exception as e:  # noqa: BLE001 - the property: every error is typed
        assert typed(e), f"untyped {type(e).__name__}: {e}"
        py_ok = False
    else:
        py_ok = True
    try:
        _lstmrs.compile_cell(text)
    except Exception as e:  # noqa: BLE001 - the property: every error is typed
        assert typed(e), f"untyped {type(e).__name__}: {e}"
        rust_ok = False
    else:
        rust_ok = True
    if py_ok:
        # What the DSL accepts, the compiler accepts (the DSL may be stricter, never looser).
        assert rust_ok, text
        assert CellSpec.from_json(spec.to_json()) == spec


@FUZZ
@given(
    st.one_of(
        st.text(max_size=80),
        st.from_regex(r"[a-z][a-z0-9_]{0,70}", fullmatch=True),
        st.text(alphabet="abcXYZ_09\x00é ", max_size=70),
    )
)
def test_cell_name_rule_is_the_same_in_python_and_rust(name):
    text = json.dumps({**ELMAN, "name": name})
    try:
        _lstmrs.compile_cell(text)
        rust_ok = True
    except lstmrs.InvalidArgumentError:
        rust_ok = False
    assert rust_ok == is_name(name), repr(name)


# --------------------------------------------------------------------------------------------
# TOML configs and --set overrides


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        st.integers(1, 30000).map(lambda n: "x = " + "[" * n + "]" * n),
        st.integers(1, 3000).map(lambda n: "a = {b = " * n + "1" + "}" * n),
    )
)
def test_toml_text_is_config_error_or_a_table(text):
    try:
        cfg = C.loads_toml(text, "fuzz.toml")
    except C.ConfigError as e:
        assert "fuzz.toml" in str(e)
        return
    assert isinstance(cfg, dict)


@FUZZ
@given(
    st.sampled_from(["train.epochs", "model.hidden_size", "data.seq_len", "train.lr", "x", "a..b"]),
    st.one_of(st.text(max_size=40), st.integers(1, 20000).map(lambda n: "[" * n + "]" * n)),
)
def test_overrides_resolve_to_a_config_or_a_config_error(key, value):
    from lstmrs.cli import lookup_task, resolve_config

    task = lookup_task("adding")
    try:
        cfg = resolve_config(task, sets=[f"{key}={value}"])
    except C.ConfigError:
        return
    assert isinstance(cfg, dict) and cfg["task"] == "adding"


# --------------------------------------------------------------------------------------------
# Checkpoint configs


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    m = lstmrs.Model(input_size=2, hidden_size=3, output_size=2, seed=0)
    m.compile("adam", lr=1e-3)
    path = m.save(tmp_path_factory.mktemp("ck") / "m")
    with open(os.path.join(path, "config.json")) as f:
        return path, json.load(f), m.predict(np.ones((1, 2, 2), np.float32))


@FUZZ
@given(st.data())
def test_checkpoint_config_edits_are_checkpoint_errors_or_load(saved_checkpoint, data):
    path, original, ref = saved_checkpoint
    cfg = copy.deepcopy(original)
    leaves = list(_leaves(cfg))
    for _ in range(data.draw(st.integers(1, 3))):
        leaf = data.draw(st.sampled_from(leaves))
        try:
            _set(cfg, leaf, data.draw(st.one_of(ANY_VALUE, st.just(_DELETE))))
        except (KeyError, TypeError):
            pass
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    try:
        try:
            m = ckpt.load(path)
        except ckpt.CheckpointError:
            event("CheckpointError")
            return
        except Exception as e:
            raise AssertionError(f"untyped {type(e).__name__}: {e}") from e
        out = m.predict(np.ones((1, 2, 2), np.float32))
        assert out.shape == ref.shape
    finally:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(original, f)
