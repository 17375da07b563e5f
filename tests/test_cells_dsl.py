"""The cell expression language: the JSON it emits, what it refuses, the NumPy reference and
its gradients, and the built-in LSTM/GRU descriptions against torch and the Rust kernels."""

from __future__ import annotations

import json
import math
import re
import unittest

import numpy as np
import pytest
from lstmrs import _lstmrs, testing
from lstmrs.cells import (
    Cell,
    CellSpec,
    UnsupportedOperationError,
    one_minus,
    relu,
    sigmoid,
    square,
    tanh,
)
from lstmrs.errors import InvalidArgumentError, LstmrsError, ShapeError
from lstmrs.plugins.builtin import GRU_CELL, LSTM_CELL
from lstmrs.testing import check_cell_gradients, check_rust_cell


def peephole(c: Cell):
    """Peephole LSTM, as in the issue."""
    xi, xf, xg, xo = c.x_gates(4)
    hi, hf, hg, ho = c.h_gates(4)
    cc = c.state("c")
    wci, wcf, wco = c.unit_param("w_ci"), c.unit_param("w_cf"), c.unit_param("w_co")
    i = sigmoid(xi + hi + wci * cc)
    f = sigmoid(xf + hf + wcf * cc)
    c_new = f * cc + i * tanh(xg + hg)
    o = sigmoid(xo + ho + wco * c_new)
    return {"h": o * tanh(c_new), "c": c_new}


def every_op(c: Cell):
    """A cell that uses every operation, with a constant and a constant-init parameter."""
    xa, xb = c.x_gates(2)
    (ha,) = c.h_gates(1)
    h, m = c.state("h"), c.state("m")
    u = c.unit_param("u", init="constant", value=0.5)
    a = sigmoid(xa + ha)
    b = relu(xb - 0.25 * m) - square(u * h)
    m_new = one_minus(a) * m + a * (-tanh(b))
    return {"h": tanh(m_new) - 0.5 * (1 - a) * h, "m": m_new}


EVERY_OP = Cell.define("every_op", every_op, states=("h", "m"))


# --------------------------------------------------------------------------------------------
# The emitted description


def test_small_cell_emits_exactly_the_documented_json():
    def cell(c):
        (x,) = c.x_gates(1)
        (hx,) = c.h_gates(1)
        w = c.unit_param("w_c")
        c_prev = c.state("c")
        s = sigmoid(x + hx + w * c_prev)
        return {"h": s, "c": 1 - s}

    spec = Cell.define("tiny", cell, states=("h", "c"))
    # Hand-derived: leaves in creation order, then each operation after its arguments.
    assert json.loads(spec.to_json()) == {
        "name": "tiny",
        "states": ["h", "c"],
        "x_gates": 1,
        "h_gates": 1,
        "unit_params": [{"name": "w_c", "init": {"uniform": 1.0}}],
        "nodes": [
            {"op": "xg", "index": 0},
            {"op": "hg", "index": 0},
            {"op": "param", "name": "w_c"},
            {"op": "state", "name": "c"},
            {"op": "add", "args": [0, 1]},
            {"op": "mul", "args": [2, 3]},
            {"op": "add", "args": [4, 5]},
            {"op": "sigmoid", "args": [6]},
            {"op": "one_minus", "args": [7]},
        ],
        "outputs": {"h": 7, "c": 8},
    }
    # Key order as documented, so the text matches the format byte for byte.
    assert list(json.loads(spec.to_json())) == [
        "name",
        "states",
        "x_gates",
        "h_gates",
        "unit_params",
        "nodes",
        "outputs",
    ]


def test_peephole_from_the_issue():
    spec = Cell.define("peephole_lstm", peephole, states=("h", "c"))
    d = json.loads(spec.to_json())
    assert (d["x_gates"], d["h_gates"]) == (4, 4)
    assert [p["name"] for p in d["unit_params"]] == ["w_ci", "w_cf", "w_co"]
    ops = [n["op"] for n in d["nodes"]]
    assert ops.count("xg") == 4 and ops.count("hg") == 4 and ops.count("state") == 1
    assert ops.count("sigmoid") == 3 and ops.count("tanh") == 2
    for k, n in enumerate(d["nodes"]):  # topological: arguments come first
        assert all(a < k for a in n.get("args", []))
    assert d["outputs"]["c"] < d["outputs"]["h"]
    assert spec.description == "Peephole LSTM, as in the issue."


def test_shared_subexpressions_appear_once():
    def cell(c):
        x, y = c.x_gates(2)
        h = c.state("h")
        s1 = sigmoid(x + h)
        s2 = sigmoid(h + x)  # commuted: the same node
        return {"h": s1 * s2 + (x * 2.0) * (2.0 * x) + tanh(y) * 2}

    d = Cell.define("shared", cell).to_dict()
    ops = [n["op"] for n in d["nodes"]]
    assert ops.count("sigmoid") == 1 and ops.count("add") == 3  # x+h and the two sums
    assert ops.count("const") == 1  # 2.0 and 2 are one constant
    # x * 2.0 and 2.0 * x are one node; squared by the product of the node with itself.
    squares = [n for n in d["nodes"] if n["op"] == "mul" and n["args"][0] == n["args"][1]]
    assert len(squares) == 2


def test_constants_and_subtraction_forms():
    def cell(c):
        (x,) = c.x_gates(1)
        return {"h": (1 - x) + (1.0 - x) + (2 - x) + (x - 1) + (-x) + np.float64(3.0) * x}

    spec = Cell.define("consts", cell)
    ops = [n["op"] for n in spec.nodes]
    assert ops.count("one_minus") == 1  # 1 - x and 1.0 - x, deduplicated
    assert ops.count("sub") == 2 and ops.count("neg") == 1
    assert sorted(n["value"] for n in spec.nodes if n["op"] == "const") == [1.0, 2.0, 3.0]
    x = np.array([[-1.0, 0.5]])
    got = spec.reference_step(x, None, {}, {"h": np.zeros((1, 2))})["h"]
    np.testing.assert_allclose(got, (1 - x) * 2 + (2 - x) + (x - 1) - x + 3 * x)


def test_unit_param_inits():
    def cell(c):
        (x,) = c.x_gates(1)
        a = c.unit_param("a")
        b = c.unit_param("b", init="constant", value=-0.5)
        d = c.unit_param("d", init={"uniform": 0.1})
        return {"h": tanh(x + a + b + d)}

    spec = Cell.define("inits", cell)
    assert spec.to_dict()["unit_params"] == [
        {"name": "a", "init": {"uniform": 1.0}},
        {"name": "b", "init": {"constant": -0.5}},
        {"name": "d", "init": {"uniform": 0.1}},
    ]
    p = spec.init_params(3, 100, seed=1)
    assert list(p) == ["weight_ih_l0", "bias_ih_l0", "a_l0", "b_l0", "d_l0"]
    assert np.all(p["b_l0"] == -0.5)
    assert np.abs(p["a_l0"]).max() <= 0.1 and np.abs(p["a_l0"]).max() > 0.08  # 1/sqrt(100)
    assert np.abs(p["d_l0"]).max() <= 0.01
    assert np.abs(p["weight_ih_l0"]).max() <= 0.1


def test_param_specs_follow_the_rust_naming():
    assert LSTM_CELL.param_specs(3, 5, layer=2, reverse=True) == [
        ("weight_ih_l2_reverse", (20, 3)),
        ("weight_hh_l2_reverse", (20, 5)),
        ("bias_ih_l2_reverse", (20,)),
        ("bias_hh_l2_reverse", (20,)),
    ]
    assert EVERY_OP.param_specs(3, 5, bias=False) == [
        ("weight_ih_l0", (10, 3)),
        ("weight_hh_l0", (5, 5)),
        ("u_l0", (5,)),
    ]


@pytest.mark.parametrize("spec", [LSTM_CELL, GRU_CELL, EVERY_OP], ids=lambda s: s.name)
def test_json_round_trip(spec):
    again = CellSpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()


# --------------------------------------------------------------------------------------------
# What the language refuses


@pytest.mark.parametrize(
    "expr, what, instead",
    [
        (lambda x, h: x // h, "floor division", ""),
        (lambda x, h: x**2, r"power \(\*\*\)", r"square\(x\) or x \* x"),
        (lambda x, h: 2**x, r"power \(\*\*\)", r"exp\(x \* math.log\(base\)\)"),
        (lambda x, h: x % h, "modulo", ""),
        (lambda x, h: x @ h, "matrix product", "x_gates / h_gates"),
        (lambda x, h: x < h, r"comparison \(<\)", r"maximum\(a, b\) for max"),
        (lambda x, h: x >= 0, r"comparison \(>=\)", r"relu\(x\) for max\(x, 0\)"),
        (lambda x, h: x == h, r"comparison \(==\)", "no branches"),
        (lambda x, h: x if x else h, "truth value", r"minimum\(a, b\) for min"),
        # max() and min() compare: the message says so, and how to write them.
        (
            lambda x, h: max(x, h),
            r"comparison \(>\), which is also what max\(\) and min\(\)",
            r"lstmrs.cells.maximum\(a, b\)",
        ),
        (lambda x, h: min(x, 0.0), r"what max\(\) and min\(\) do", r"minimum\(a, b\)"),
        (lambda x, h: abs(x), r"abs\(\)", r"maximum\(x, -x\)"),
        (lambda x, h: float(x), r"float\(\)", "no value until the cell runs"),
        # math functions convert with float(): the message names them and the replacements.
        (lambda x, h: math.exp(x), r"float\(\), which math.exp", r"exp\(x\) for math.exp\(x\)"),
        (lambda x, h: math.log(x), "math.log", r"log\(x\) for math.log\(x\)"),
        (lambda x, h: math.tanh(x), "math.tanh", r"tanh\(x\) for math.tanh\(x\)"),
        # NumPy ufuncs name themselves.
        (lambda x, h: np.exp(x), r"numpy.exp\(...\) on an expression", r"lstmrs.cells.exp\(x\)"),
        (lambda x, h: np.tanh(x), r"numpy.tanh\(...\)", r"lstmrs.cells.tanh\(x\) instead"),
        (lambda x, h: np.maximum(x, h), r"numpy.maximum\(...\)", r"lstmrs.cells.maximum\(a, b\)"),
        (lambda x, h: np.sqrt(x), r"numpy.sqrt\(...\)", r"lstmrs.cells.sqrt\(x\)"),
        (lambda x, h: np.log1p(x), r"numpy.log1p\(...\)", r"softplus\(x\) for log\(1 \+ exp"),
        (lambda x, h: np.floor_divide(x, 2.0), r"numpy.floor_divide", "no rounding"),
        (lambda x, h: np.ones(3) * x, r"numpy.multiply\(...\)", r"c.param\(name\)"),
        (lambda x, h: x * np.ones(3), r"\*: expected an expression.*ndarray", r"c.param\(name\)"),
        (lambda x, h: x + "1", r"\+: expected an expression or a Python number, got str", ""),
        (lambda x, h: x * True, r"\*: expected an expression or a Python number, got bool", ""),
        (lambda x, h: sigmoid(0.5), "sigmoid: expected an expression", ""),
    ],
)
def test_unsupported_operations_name_the_operation_and_what_to_write(expr, what, instead):
    def cell(c):
        (x,) = c.x_gates(1)
        return {"h": expr(x, c.state("h"))}

    with pytest.raises(UnsupportedOperationError, match=what) as e:
        Cell.define("bad", cell)
    assert isinstance(e.value, (TypeError, LstmrsError))
    assert re.search(instead, str(e.value)), str(e.value)


def test_numpy_scalars_are_constants():
    """The ufunc hook keeps NumPy scalars working as numbers on either side of + - *: the
    graph is the one the same cell gives with Python floats."""

    def cell(two, half, one, three, neg):
        def define(c):
            (x,) = c.x_gates(1)
            y = two * x - half + one - x * three
            return {"h": tanh(-one + y + neg(x))}

        return define

    with_numpy = Cell.define("same", cell(*map(np.float64, (2, 0.5, 1, 3)), np.negative))
    plain = Cell.define("same", cell(2.0, 0.5, 1.0, 3.0, lambda x: -x))
    assert with_numpy.to_json() == plain.to_json()
    assert '"neg"' in plain.to_json() and "3.0" in plain.to_json()


@pytest.mark.parametrize(
    "cell, states, match",
    [
        (lambda c: {"h": tanh(c.x_gates(1)[0]) + c.state("q")}, ("h",), "'q' is not one of"),
        (lambda c: {"h": tanh(c.x_gates(1)[0])}, ("h", "c"), r"missing \['c'\]"),
        (lambda c: {"h": tanh(c.x_gates(1)[0]), "z": 1.0}, ("h",), r"unexpected \['z'\]"),
        (lambda c: {"h": tanh(c.state("h"))}, ("h",), r"call c.x_gates\(n\)"),
        (lambda c: {"h": tanh(c.x_gates(2)[0])}, ("h",), r"never used.*xg\[1\]"),
        (
            lambda c: {"h": tanh(c.x_gates(1)[0] + 0 * c.h_gates(2)[0])},
            ("h",),
            r"never used.*hg\[1\]",
        ),
        (
            lambda c: {
                "h": tanh(c.x_gates(1)[0])
                + 0 * c.unit_param("p") * 0
                + c.unit_param("q") * 0
                - c.unit_param("q") * 0
            },
            ("h",),
            None,
        ),
        (
            lambda c: (c.unit_param("r"), {"h": tanh(c.x_gates(1)[0])})[1],
            ("h",),
            r"never used.*param\('r'\)",
        ),
        (lambda c: {"h": c.x_gates(0)}, ("h",), r"x_gates: expected an integer >= 1, got 0"),
        (lambda c: {"h": c.x_gates(2)[0] + c.x_gates(3)[0]}, ("h",), "already declared with 2"),
        (lambda c: {"h": c.x_gates(1)[0] + c.unit_param("weight_ih")}, ("h",), "would clash"),
        (
            lambda c: {"h": c.x_gates(1)[0] + c.unit_param("u", init="normal")},
            ("h",),
            "init must be 'uniform' or 'constant'",
        ),
        (
            lambda c: {"h": c.x_gates(1)[0] + c.unit_param("u", init="uniform", value=-1)},
            ("h",),
            "scale must be >= 0",
        ),
        (
            lambda c: {"h": c.x_gates(1)[0] + c.unit_param("u") + c.unit_param("u", "constant")},
            ("h",),
            "declared twice",
        ),
        (lambda c: {"h": c.x_gates(1)[0] * float("nan")}, ("h",), "const: expected a finite"),
        (lambda c: {"h": "tanh(x)"}, ("h",), "must be an expression"),
        (lambda c: [c.x_gates(1)[0]], ("h",), r"must return \{state: expression\}"),
        (lambda c: {"h": c.x_gates(1)[0]}, ("h", "h"), "names repeat"),
        (lambda c: {"H": c.x_gates(1)[0]}, ("H",), "state name: expected a lowercase"),
    ],
)
def test_invalid_definitions(cell, states, match):
    if match is None:  # the control case: valid
        Cell.define("ok", cell, states=states)
        return
    with pytest.raises(InvalidArgumentError, match=match):
        Cell.define("bad", cell, states=states)


def test_expressions_from_two_builders_do_not_mix():
    other = Cell(("h",))
    stray = other.x_gates(1)[0]
    with pytest.raises(InvalidArgumentError, match="different Cell builders"):
        Cell.define("mix", lambda c: {"h": c.x_gates(1)[0] + stray})
    with pytest.raises(InvalidArgumentError, match="built from this cell's builder"):
        Cell.define("mix", lambda c: (c.x_gates(1), {"h": stray})[1])


@pytest.mark.parametrize(
    "patch, match",
    [
        (
            lambda d: d["nodes"].append({"op": "logsumexp", "args": [0]}),
            r"nodes\[\d+\]: unknown op 'logsumexp'",
        ),
        (
            lambda d: d["nodes"].insert(0, {"op": "add", "args": [0, 1]}),
            r"nodes\[0\].args: expected an integer in \[0, 0\)",
        ),
        (
            lambda d: d["nodes"].append({"op": "xg", "index": 4}),
            r"nodes\[\d+\].index: expected an integer in \[0, 4\)",
        ),
        (lambda d: d["nodes"].append({"op": "state", "name": "q"}), r"unknown state 'q'"),
        (lambda d: d["nodes"].append({"op": "param", "name": "w"}), r"unknown unit param 'w'"),
        (lambda d: d["nodes"].append({"op": "const", "value": float("inf")}), "finite number"),
        (lambda d: d["nodes"].append({"op": "tanh", "args": [0, 1]}), "takes 1 argument"),
        (lambda d: d["nodes"].append({"op": "xg", "index": 0, "extra": 1}), "takes keys"),
        (lambda d: d["outputs"].pop("c"), "one node index for every state"),
        (lambda d: d["outputs"].update(c=10_000), r"outputs\['c'\]: expected an integer"),
        (lambda d: d.update(h_gates=0), r"'hg' in a cell with h_gates = 0"),
        (lambda d: d.update(x_gates=0), r"x_gates: expected an integer >= 1"),
        (lambda d: d.update(bias=True), "expected keys"),
        (lambda d: d["unit_params"].append({"name": "w", "init": {"xavier": 1}}), "init must be"),
    ],
)
def test_from_json_validation_names_the_node(patch, match):
    d = LSTM_CELL.to_dict()
    patch(d)
    with pytest.raises(InvalidArgumentError, match=match):
        CellSpec.from_json(json.dumps(d))


def test_from_json_rejects_text_that_is_not_json():
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        CellSpec.from_json("{nodes: ")


# --------------------------------------------------------------------------------------------
# The NumPy reference


def test_reference_step_checks_shapes(rng):
    x = rng.normal(size=(2, 8))
    with pytest.raises(ShapeError, match=r"h_pre: expected shape \[2, 6\], got \(2, 8\)"):
        GRU_CELL.reference_step(rng.normal(size=(2, 6)), x, {}, {"h": np.zeros((2, 2))})
    with pytest.raises(ShapeError, match=r"x_pre: expected shape \[B, 4 \* H\]"):
        LSTM_CELL.reference_step(rng.normal(size=(2, 7)), x, {}, {"h": 0, "c": 0})
    with pytest.raises(InvalidArgumentError, match="missing state 'c'"):
        LSTM_CELL.reference_step(x, x, {}, {"h": np.zeros((2, 2))})
    with pytest.raises(InvalidArgumentError, match="missing unit param 'u'"):
        EVERY_OP.reference_step(
            rng.normal(size=(2, 4)),
            rng.normal(size=(2, 2)),
            {},
            {"h": np.zeros((2, 2)), "m": np.zeros((2, 2))},
        )


def test_every_op_reference_against_a_direct_formula(rng):
    x_pre, h_pre = rng.normal(size=(3, 8)), rng.normal(size=(3, 4))
    u, h, m = rng.normal(size=4), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    a = 1 / (1 + np.exp(-(x_pre[:, :4] + h_pre)))
    b = np.maximum(x_pre[:, 4:] - 0.25 * m, 0) - (u * h) ** 2
    m_new = (1 - a) * m - a * np.tanh(b)
    got = EVERY_OP.reference_step(x_pre, h_pre, {"u": u}, (h, m))
    np.testing.assert_allclose(got["m"], m_new, rtol=1e-14)
    np.testing.assert_allclose(got["h"], np.tanh(m_new) - 0.5 * (1 - a) * h, rtol=1e-13)


def test_sigmoid_is_stable_for_large_inputs():
    spec = Cell.define("sig", lambda c: {"h": sigmoid(c.x_gates(1)[0])})
    with np.errstate(over="raise"):
        got = spec.reference_step(
            np.array([[-800.0, 0.0, 800.0]]), None, {}, {"h": np.zeros((1, 3))}
        )
    np.testing.assert_array_equal(got["h"], [[0.0, 0.5, 1.0]])


@pytest.mark.parametrize("spec", [LSTM_CELL, GRU_CELL, EVERY_OP], ids=lambda s: s.name)
def test_gradients_match_finite_differences(spec):
    report = check_cell_gradients(spec, seed=11)
    assert report["elements"] > 60 and report["worst"] <= 1.0


def test_gradient_check_catches_a_wrong_gradient(monkeypatch):
    spec = CellSpec.from_json(GRU_CELL.to_json())
    real = spec.reference_step_backward

    def off_by_a_bit(*args):
        r = real(*args)
        r["h_pre"][0, 1] *= 1.001
        return r

    monkeypatch.setattr(spec, "reference_step_backward", off_by_a_bit)
    with pytest.raises(AssertionError, match=r"'gru', one step: d loss / d h_pre\[0, 1\]"):
        check_cell_gradients(spec)


def test_lstm_and_gru_descriptions_match_torch_cells(rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    i, h, b = 3, 5, 4
    x, h0, c0 = rng.normal(size=(b, i)), rng.normal(size=(b, h)), rng.normal(size=(b, h))
    lstm = torch.nn.LSTMCell(i, h).double()
    w = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
    h1, c1 = lstm(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    got = LSTM_CELL.reference_step(
        x @ w["weight_ih"].T + w["bias_ih"],
        h0 @ w["weight_hh"].T + w["bias_hh"],
        {},
        {"h": h0, "c": c0},
    )
    np.testing.assert_allclose(got["h"], h1.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got["c"], c1.detach().numpy(), rtol=1e-12, atol=1e-14)
    gru = torch.nn.GRUCell(i, h).double()
    w = {k: v.detach().numpy() for k, v in gru.state_dict().items()}
    expected = gru(torch.from_numpy(x), torch.from_numpy(h0)).detach().numpy()
    got = GRU_CELL.reference_step(
        x @ w["weight_ih"].T + w["bias_ih"], h0 @ w["weight_hh"].T + w["bias_hh"], {}, {"h": h0}
    )
    np.testing.assert_allclose(got["h"], expected, rtol=1e-12, atol=1e-14)


def test_reference_sequence_matches_torch_lstm(rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(3, 4, batch_first=True).double()
    x = rng.normal(size=(2, 7, 3))
    h0, c0 = rng.normal(size=(1, 2, 4)), rng.normal(size=(1, 2, 4))
    out, (h_n, c_n) = lstm(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    weights = {k: v.detach().numpy() for k, v in lstm.state_dict().items()}
    ref, fin = LSTM_CELL.reference_sequence(x, weights, {"h": h0[0], "c": c0[0]})
    np.testing.assert_allclose(ref, out.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fin["h"], h_n[0].detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fin["c"], c_n[0].detach().numpy(), rtol=1e-12, atol=1e-14)
    # And the backward pass against torch's autograd.
    xt = torch.from_numpy(x).requires_grad_()
    g_out = rng.normal(size=out.shape)
    out2, _ = lstm(xt, (torch.from_numpy(h0), torch.from_numpy(c0)))
    out2.backward(torch.from_numpy(g_out))
    dw, dx, _ = LSTM_CELL.reference_sequence_backward(
        x, weights, g_out, None, {"h": h0[0], "c": c0[0]}
    )
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, p in lstm.named_parameters():
        np.testing.assert_allclose(dw[name], p.grad.numpy(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# The Rust path


def test_rust_check_skips_clearly_without_the_binding(monkeypatch):
    monkeypatch.delattr(_lstmrs, "compile_cell", raising=False)
    with pytest.raises(unittest.SkipTest, match="'every_op' not checked.*no compile_cell"):
        check_rust_cell(EVERY_OP)
    with pytest.raises(unittest.SkipTest):
        check_cell_gradients(EVERY_OP, rust=True)


@pytest.mark.parametrize("spec", [LSTM_CELL, GRU_CELL], ids=lambda s: s.name)
def test_rust_check_against_the_native_kernels(monkeypatch, spec):
    # The built-in cells' descriptions run through the same comparison with the Rust core's
    # fused LSTM/GRU kernels standing in for the compiled cell: this checks the harness (and
    # that the descriptions are the kernels' equations, forward and backward, in float64).
    def native_layer(spec, input_size, hidden_size, dtype, seed):
        return _lstmrs.RnnCore(spec.native, input_size, hidden_size, 1, True, False, dtype, seed)

    monkeypatch.setattr(testing, "_rust_layer", native_layer)
    assert check_rust_cell(spec, hidden_size=4, input_size=3, batch=2, seq_len=5) == {
        "checked": True
    }


def test_rust_check_notices_a_different_cell(monkeypatch):
    def gru_layer(spec, input_size, hidden_size, dtype, seed):
        return _lstmrs.RnnCore("gru", input_size, hidden_size, 1, True, False, dtype, seed)

    monkeypatch.setattr(testing, "_rust_layer", gru_layer)
    mgu_like = Cell.define(  # GRU's shapes, different equations
        "not_gru",
        lambda c: {
            "h": tanh(
                sum(c.x_gates(3)[1:], c.x_gates(3)[0]) + sum(c.h_gates(3)[1:], c.h_gates(3)[0])
            )
        },
    )
    with pytest.raises(AssertionError, match="'not_gru': Rust outputs differ"):
        check_rust_cell(mgu_like)
