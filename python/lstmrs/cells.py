"""Custom recurrent cells written as element-wise expressions, compiled by the Rust core.

A cell is a function from a :class:`Cell` builder to the new value of every state. The builder
hands out the gate pre-activations (``xg[k] = W_ih[k] x + b_ih[k]`` and
``hg[k] = W_hh[k] h + b_hh[k]``, bias included), the previous states and per-unit parameters;
the function combines them with ``+``, ``-``, ``*``, ``/`` (safe division), Python numbers and
:func:`sigmoid`, :func:`tanh`, :func:`relu`, :func:`square`, :func:`exp`, :func:`log`,
:func:`sqrt`, :func:`softplus`, :func:`maximum`, :func:`minimum`, and the reductions over a row's
hidden units :func:`row_sum`, :func:`row_mean`, :func:`row_var` (broadcast back to every unit;
:func:`layer_norm` is written with them). The matrix products stay in the core's sweep (the
same GEMM path as LSTM/GRU); only the step's own maths is described here.

Domains and conventions (the Rust kernels, the NumPy reference and the ONNX export agree):
``log(x)`` is ``ln(max(x, 1e-30))`` (its domain is ``x > 0``; below the floor the gradient is 0);
``a / b`` divides by ``b`` moved out to ``±1e-12`` when ``|b| < 1e-12`` (gradient with respect
to ``b`` 0 there), so a division never gives inf or NaN; ``sqrt(x)`` is ``sqrt(max(x, 0))``
(gradient 0 where ``x <= 0``); at a tie ``maximum(a, b)`` and ``minimum(a, b)`` give the whole
gradient to ``a``; ``exp`` saturates at ``e^88`` in float32.

>>> from lstmrs.cells import Cell, sigmoid, tanh
>>> def mgu(c: Cell):
...     xf, xn = c.x_gates(2)
...     hf, hn = c.h_gates(2)
...     h = c.state("h")
...     f = sigmoid(xf + hf)
...     return {"h": (1 - f) * h + f * tanh(xn + f * hn)}
>>> spec = Cell.define("mgu", mgu, states=("h",))
>>> spec.x_gates, spec.h_gates, len(spec.nodes)
(2, 2, 14)

:meth:`CellSpec.to_json` gives the description the Rust core compiles (the format is specified
in the project's ``cell_dsl.md``): a topologically ordered DAG in which identical
subexpressions appear once. :meth:`CellSpec.reference_step` and
:meth:`CellSpec.reference_step_backward` evaluate the same DAG with NumPy in float64; they are
the oracle for the Rust kernels and for :func:`lstmrs.testing.check_cell_gradients`.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from .errors import InvalidArgumentError, ShapeError, UnsupportedOperationError
from .validation import check_int

__all__ = [
    "Cell",
    "CellSpec",
    "Expr",
    "UnitParam",
    "UnsupportedOperationError",
    "exp",
    "layer_norm",
    "log",
    "maximum",
    "minimum",
    "one_minus",
    "relu",
    "row_mean",
    "row_sum",
    "row_var",
    "sigmoid",
    "softplus",
    "sqrt",
    "square",
    "tanh",
]

LEAF_OPS = ("xg", "hg", "state", "param", "const")
UNARY_OPS = (
    "neg",
    "one_minus",
    "sigmoid",
    "tanh",
    "relu",
    "square",
    "exp",
    "log",
    "sqrt",
    "softplus",
    "sum",
    "mean",
)
BINARY_OPS = ("add", "sub", "mul", "div", "max", "min")
#: ``log`` clamps its argument at this floor (the Rust core's ``cellexpr::LOG_FLOOR``).
LOG_FLOOR = 1e-30
#: Safe division keeps ``|denominator| >= DIV_EPS`` (the Rust core's ``cellexpr::DIV_EPS``).
DIV_EPS = 1e-12
_COMMUTATIVE = ("add", "mul")
# The one rule for cell, state and unit-parameter names; it mirrors the Rust core's
# `cellexpr::is_name` (tests/test_fuzz.py asserts they agree on arbitrary text).
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
MAX_NAME_LEN = 64
# Unit parameters become `{name}_l{k}` next to the layer's matrices: these prefixes would clash.
_RESERVED_PARAM_PREFIXES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def is_name(name: Any) -> bool:
    """Whether ``name`` may name a cell, a state or a unit parameter: a lowercase identifier
    (``[a-z][a-z0-9_]*``) of at most 64 characters."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LEN
        and name.isascii()
        and _NAME_RE.fullmatch(name) is not None
    )


def _check_name(what: str, name: Any) -> str:
    if not is_name(name):
        shown = (
            repr(name)
            if not isinstance(name, str) or len(name) <= 80
            else (f"{name[:80]!r}... ({len(name)} characters)")
        )
        raise InvalidArgumentError(
            f"{what}: expected a lowercase identifier (letters, digits, '_', starting with a "
            f"letter, at most {MAX_NAME_LEN} characters), got {shown}"
        )
    return name


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _finite(what: str, v: Any) -> float:
    if not _is_number(v) or not math.isfinite(float(v)):
        raise InvalidArgumentError(f"{what}: expected a finite number, got {v!r}")
    return float(v)


# --------------------------------------------------------------------------------------------
# Expressions


class Expr:
    """A node of a cell's expression graph; build them with a :class:`Cell` and combine them
    with ``+``, ``-``, ``*``, numbers and the functions of this module."""

    __slots__ = ("_args", "_attr", "_cell", "_id", "_op")

    def __init__(self, cell: Cell, ident: int, op: str, args: tuple, attr: Any) -> None:
        self._cell = cell
        self._id = ident
        self._op = op
        self._args = args
        self._attr = attr

    @property
    def op(self) -> str:
        return self._op

    def __repr__(self) -> str:
        if self._op in ("xg", "hg"):
            return f"{self._op}[{self._attr}]"
        if self._op in ("state", "param"):
            return f"{self._op}({self._attr!r})"
        if self._op == "const":
            return repr(self._attr)
        return f"{self._op}({', '.join(repr(a) for a in self._args)})"

    # Arithmetic ------------------------------------------------------------------------------

    def _operand(self, other: Any, op: str) -> Expr:
        if isinstance(other, Expr):
            if other._cell is not self._cell:
                raise InvalidArgumentError(
                    f"{op}: the two expressions come from different Cell builders; build a "
                    "cell's whole expression inside its one definition function"
                )
            return other
        if _is_number(other):
            return self._cell.const(other)
        hint = (
            " (per-unit values are parameters: c.param(name))"
            if isinstance(other, np.ndarray)
            else ""
        )
        raise UnsupportedOperationError(
            f"{op}: expected an expression or a Python number, got {type(other).__name__}{hint}"
        )

    def __add__(self, other: Any) -> Expr:
        return self._cell._node("add", (self, self._operand(other, "+")))

    def __radd__(self, other: Any) -> Expr:
        return self._cell._node("add", (self._operand(other, "+"), self))

    def __sub__(self, other: Any) -> Expr:
        return self._cell._node("sub", (self, self._operand(other, "-")))

    def __rsub__(self, other: Any) -> Expr:
        if _is_number(other) and float(other) == 1.0:
            return self._cell._node("one_minus", (self,))
        return self._cell._node("sub", (self._operand(other, "-"), self))

    def __mul__(self, other: Any) -> Expr:
        return self._cell._node("mul", (self, self._operand(other, "*")))

    def __rmul__(self, other: Any) -> Expr:
        return self._cell._node("mul", (self._operand(other, "*"), self))

    def __neg__(self) -> Expr:
        return self._cell._node("neg", (self,))

    def __pos__(self) -> Expr:
        return self

    # What the language deliberately lacks ----------------------------------------------------

    def _unsupported(self, what: str, hint: str = "") -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"{what} is not supported in a cell expression (it has {_LANGUAGE}){hint}"
        )

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # NumPy scalars times expressions (`np.float64(2) * x`) arrive here as ufunc calls:
        # + - * and unary - become graph nodes; every other ufunc (np.exp(x), np.maximum, ...)
        # is refused with its name and what to write instead.
        name = getattr(ufunc, "__name__", str(ufunc))
        arithmetic = _UFUNC_ARITHMETIC.get(name)
        arrays = [a for a in inputs if isinstance(a, np.ndarray) and a.ndim > 0]
        if arithmetic is None or method != "__call__" or kwargs or arrays:
            if arithmetic is not None and arrays:
                hint = (
                    "; a NumPy array is not a constant of the graph: per-unit values are "
                    "parameters (c.param(name)), constants are Python numbers"
                )
            else:
                instead = _INSTEAD.get(name)
                hint = f"; write {instead} instead" if instead else ""
            call = f"numpy.{name}" + ("" if method == "__call__" else f".{method}")
            raise self._unsupported(f"{call}(...) on an expression", hint)
        if len(inputs) == 1:
            return getattr(self, arithmetic)()
        a, b = inputs
        if a is self:
            return getattr(self, arithmetic)(b)
        return getattr(self, "__r" + arithmetic[2:])(a)

    def __truediv__(self, other: Any) -> Expr:
        return self._cell._node("div", (self, self._operand(other, "/")))

    def __rtruediv__(self, other: Any) -> Expr:
        return self._cell._node("div", (self._operand(other, "/"), self))

    def __floordiv__(self, other: Any):
        raise self._unsupported("floor division (//)")

    __rfloordiv__ = __floordiv__

    def __mod__(self, other: Any):
        raise self._unsupported("modulo (%)")

    __rmod__ = __mod__

    def __pow__(self, other: Any, mod: Any = None):
        raise self._unsupported("power (**)", "; write square(x) or x * x instead")

    def __rpow__(self, other: Any):
        raise self._unsupported("power (**)", "; write exp(x * math.log(base)) instead")

    def __matmul__(self, other: Any):
        raise self._unsupported("matrix product (@)", "; the matrix products are x_gates / h_gates")

    __rmatmul__ = __matmul__

    def __abs__(self):
        raise self._unsupported("abs()", f"; write {_INSTEAD['absolute']} instead")

    def _compare(self, op: str) -> UnsupportedOperationError:
        # max()/min() reach an expression only through a comparison: say so.
        return self._unsupported(
            f"comparison ({op}), which is also what max() and min() do,",
            f"; write {_INSTEAD['maximum']} for max(a, b), {_INSTEAD['minimum']} for "
            "min(a, b), relu(x) for max(x, 0)",
        )

    def __lt__(self, other: Any):
        raise self._compare("<")

    def __le__(self, other: Any):
        raise self._compare("<=")

    def __gt__(self, other: Any):
        raise self._compare(">")

    def __ge__(self, other: Any):
        raise self._compare(">=")

    def __eq__(self, other: object):  # type: ignore[override]
        raise self._unsupported("comparison (==)", "; the graph has no branches")

    def __ne__(self, other: object):  # type: ignore[override]
        raise self._unsupported("comparison (!=)", "; the graph has no branches")

    __hash__ = object.__hash__

    def __bool__(self):
        raise self._unsupported(
            "truth value (if / and / or / max / min)",
            f"; the graph has no branches: write {_INSTEAD['maximum']} for max(a, b), "
            f"{_INSTEAD['minimum']} for min(a, b)",
        )

    def __float__(self):
        # The math module's functions (math.exp, math.tanh, ...) convert with float() first.
        raise self._unsupported(
            "float(), which math.exp, math.tanh, math.log and every math function call first,",
            "; an expression has no value until the cell runs: write the lstmrs.cells "
            "functions instead (tanh(x) for math.tanh(x), exp(x) for math.exp(x), log(x) for "
            "math.log(x), sqrt(x) for math.sqrt(x), square(x) for math.pow(x, 2))",
        )

    def __index__(self):
        raise self._unsupported("int()", "; an expression has no value until the cell runs")


_LANGUAGE = (
    "+, -, *, / (safe division), unary -, 1 - x, sigmoid, tanh, relu, square, exp, log, sqrt, "
    "softplus, maximum, minimum, row_sum, row_mean, row_var"
)
#: NumPy ufuncs that are the language's own arithmetic, and the Expr method each one is.
_UFUNC_ARITHMETIC = {
    "add": "__add__",
    "subtract": "__sub__",
    "multiply": "__mul__",
    "true_divide": "__truediv__",
    "divide": "__truediv__",
    "negative": "__neg__",
    "positive": "__pos__",
}
#: What to write instead of an operation the language lacks (keyed by NumPy ufunc name).
_INSTEAD = {
    "exp": "lstmrs.cells.exp(x)",
    "tanh": "lstmrs.cells.tanh(x)",
    "square": "lstmrs.cells.square(x)",
    "maximum": "lstmrs.cells.maximum(a, b)",
    "minimum": "lstmrs.cells.minimum(a, b)",
    "absolute": "maximum(x, -x)",
    "sqrt": "lstmrs.cells.sqrt(x)",
    "log": "lstmrs.cells.log(x)",
    "exp2": "exp(x * math.log(2))",
    "expm1": "exp(x) - 1",
    "power": "square(x) or exp(p * log(x))",
    "reciprocal": "1 / x",
    "floor_divide": "a / b (the language has no rounding)",
    "log1p": "log(1 + x), or softplus(x) for log(1 + exp(x))",
    "logaddexp": "maximum(a, b) + softplus(-|a - b|), or softplus(x) for log(1 + exp(x))",
}
for _alias, _of in (
    ("float_power", "power"),
    ("fmax", "maximum"),
    ("fmin", "minimum"),
    ("fabs", "absolute"),
):
    _INSTEAD[_alias] = _INSTEAD[_of]
_INSTEAD["log2"] = "log(x) / math.log(2)"
_INSTEAD["log10"] = "log(x) / math.log(10)"


def _unary(op: str, x: Any) -> Expr:
    if not isinstance(x, Expr):
        raise UnsupportedOperationError(
            f"{op}: expected an expression from a Cell builder, got {type(x).__name__} "
            f"({x!r}); constants are folded by hand"
        )
    return x._cell._node(op, (x,))


def sigmoid(x: Expr) -> Expr:
    """Logistic sigmoid ``1 / (1 + exp(-x))``."""
    return _unary("sigmoid", x)


def tanh(x: Expr) -> Expr:
    """Hyperbolic tangent."""
    return _unary("tanh", x)


def relu(x: Expr) -> Expr:
    """``max(x, 0)`` (derivative 0 at 0, as in PyTorch)."""
    return _unary("relu", x)


def square(x: Expr) -> Expr:
    """``x * x``."""
    return _unary("square", x)


def one_minus(x: Expr) -> Expr:
    """``1 - x`` (what ``1 - x`` gives too)."""
    return _unary("one_minus", x)


def exp(x: Expr) -> Expr:
    """``e^x`` (float32 kernels saturate at ``e^88`` rather than overflow to inf)."""
    return _unary("exp", x)


def log(x: Expr) -> Expr:
    """Natural logarithm of a positive argument: ``ln(max(x, 1e-30))``. The domain is
    ``x > 0``; arguments below the floor are clamped (value ``ln(1e-30)``, gradient 0), so a
    log never gives -inf or NaN. For ``log(1 + exp(x))`` write :func:`softplus`."""
    return _unary("log", x)


def sqrt(x: Expr) -> Expr:
    """``sqrt(max(x, 0))`` (gradient ``1 / (2 sqrt(x))``, 0 where ``x <= 0``)."""
    return _unary("sqrt", x)


def softplus(x: Expr) -> Expr:
    """``ln(1 + e^x)`` computed without overflow; its derivative is ``sigmoid(x)``. Also
    ``log(sigmoid(x)) == -softplus(-x)``, the log of a sigmoid gate (sLSTM)."""
    return _unary("softplus", x)


def _binary(op: str, a: Any, b: Any) -> Expr:
    e = a if isinstance(a, Expr) else b if isinstance(b, Expr) else None
    if e is None:
        raise UnsupportedOperationError(
            f"{op}: expected at least one expression from a Cell builder, got "
            f"{type(a).__name__} and {type(b).__name__}; constants are folded by hand"
        )
    return e._cell._node(op, (e._operand(a, op), e._operand(b, op)))


def maximum(a: Expr | float, b: Expr | float) -> Expr:
    """Element-wise ``max(a, b)``. Subgradient: at a tie (``a == b``) the whole gradient goes
    to ``a``, none to ``b``."""
    return _binary("max", a, b)


def minimum(a: Expr | float, b: Expr | float) -> Expr:
    """Element-wise ``min(a, b)``; at a tie the whole gradient goes to ``a``."""
    return _binary("min", a, b)


def row_sum(x: Expr) -> Expr:
    """Sum of ``x`` over the ``H`` hidden units of each batch row, broadcast back to every unit.
    The kernels compute it once per row and step; its gradient couples the row's units."""
    return _unary("sum", x)


def row_mean(x: Expr) -> Expr:
    """Mean of ``x`` over the ``H`` hidden units of each row, broadcast back."""
    return _unary("mean", x)


def row_var(x: Expr) -> Expr:
    """Population variance over the row's units, ``row_mean(square(x - row_mean(x)))`` (as in
    layer normalisation; the two-pass form, which does not cancel catastrophically)."""
    return row_mean(square(x - row_mean(x)))


def layer_norm(x: Expr, gain: Expr | None = None, bias: Expr | None = None, eps: float = 1e-5):
    """Layer normalisation over the hidden units (Ba et al. 2016), PyTorch's ``LayerNorm``
    formula: ``(x - mean) / sqrt(var + eps) * gain + bias`` with the population variance;
    ``gain`` and ``bias`` are usually unit params (``c.unit_param(..., "constant", 1.0)`` and
    ``0.0``)."""
    eps = _finite("layer_norm: eps", eps)
    if eps <= 0:
        raise InvalidArgumentError(f"layer_norm: eps must be > 0, got {eps!r}")
    centred = x - row_mean(x)
    y = centred / sqrt(row_mean(square(centred)) + eps)
    if gain is not None:
        y = y * gain
    if bias is not None:
        y = y + bias
    return y


def _safe_denominator(b: Any) -> Any:
    b = np.asarray(b, dtype=np.float64)
    return np.where(np.abs(b) >= DIV_EPS, b, np.where(b < 0, -DIV_EPS, DIV_EPS))


#: The NumPy float64 forms of the element-wise ops beyond the first version's (the reference
#: the Rust kernels are tested against), by op name.
_REFERENCE_OPS: dict[str, Callable[..., Any]] = {
    "exp": np.exp,
    "log": lambda a: np.log(np.maximum(a, LOG_FLOOR)),
    "sqrt": lambda a: np.sqrt(np.maximum(a, 0.0)),
    "softplus": lambda a: np.maximum(a, 0.0) + np.log1p(np.exp(-np.abs(a))),
    "div": lambda a, b: a / _safe_denominator(b),
    "max": lambda a, b: np.where(a >= b, a, b),
    "min": lambda a, b: np.where(a <= b, a, b),
}


# --------------------------------------------------------------------------------------------
# The builder


class UnitParam:
    """A trained per-unit vector ``[H]`` and its initialisation.

    ``init="uniform"``: ``U(-a, a)`` with ``a = value / sqrt(H)`` (``value=1.0`` is PyTorch's
    scheme for the layer's matrices); ``init="constant"``: every element ``value``.
    """

    __slots__ = ("init", "name", "value")

    def __init__(self, name: str, init: str = "uniform", value: float = 1.0) -> None:
        self.name = _check_name("unit_param name", name)
        if name.startswith(_RESERVED_PARAM_PREFIXES):
            raise InvalidArgumentError(
                f"unit_param name: {name!r} would clash with the layer's "
                f"{'/'.join(_RESERVED_PARAM_PREFIXES)} parameters; choose another name"
            )
        if init not in ("uniform", "constant"):
            raise InvalidArgumentError(
                f"unit_param {name!r}: init must be 'uniform' or 'constant', got {init!r}"
            )
        self.init = init
        self.value = _finite(f"unit_param {name!r}: value", value)
        if init == "uniform" and self.value < 0:
            raise InvalidArgumentError(
                f"unit_param {name!r}: a uniform scale must be >= 0, got {value!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "init": {self.init: self.value}}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> UnitParam:
        if not isinstance(d, Mapping) or set(d) != {"name", "init"}:
            raise InvalidArgumentError(f"{where}: expected {{'name': ..., 'init': ...}}, got {d!r}")
        init = d["init"]
        if not isinstance(init, Mapping) or len(init) != 1:
            raise InvalidArgumentError(
                f"{where}.init: expected {{'uniform': a}} or {{'constant': v}}, got {init!r}"
            )
        ((kind, value),) = init.items()
        return cls(d["name"], kind, value)

    def initial_value(self, hidden_size: int, rng: np.random.Generator) -> np.ndarray:
        if self.init == "constant":
            return np.full(hidden_size, self.value)
        a = self.value / math.sqrt(hidden_size)
        return rng.uniform(-a, a, size=hidden_size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnitParam) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"UnitParam({self.name!r}, init={self.init!r}, value={self.value!r})"


class Cell:
    """The builder a cell definition receives; see :meth:`define`."""

    def __init__(self, states: Sequence[str]) -> None:
        self._states = tuple(states)
        self._exprs: list[Expr] = []
        self._keys: dict[tuple, Expr] = {}
        self._x_gates: tuple[Expr, ...] | None = None
        self._h_gates: tuple[Expr, ...] | None = None
        self._params: OrderedDict[str, UnitParam] = OrderedDict()

    # Leaves ------------------------------------------------------------------------------------

    def _node(self, op: str, args: tuple = (), attr: Any = None) -> Expr:
        ids = tuple(a._id for a in args)
        if op in _COMMUTATIVE:
            ids = tuple(sorted(ids))  # a + b and b + a are one node (IEEE + and * commute)
            args = tuple(self._exprs[i] for i in ids)
        key = (op, ids, float(attr).hex() if op == "const" else attr)
        found = self._keys.get(key)
        if found is None:
            found = Expr(self, len(self._exprs), op, args, attr)
            self._exprs.append(found)
            self._keys[key] = found
        return found

    def x_gates(self, n: int) -> tuple[Expr, ...]:
        """The ``n`` input-projection pre-activations ``W_ih[k] x + b_ih[k]``, k = 0..n-1
        (rows ``k*H:(k+1)*H`` of ``weight_ih``, PyTorch's chunk order)."""
        self._x_gates = self._gates("x_gates", "xg", n, self._x_gates, lo=1)
        return self._x_gates

    def h_gates(self, n: int) -> tuple[Expr, ...]:
        """The ``n`` recurrent pre-activations ``W_hh[k] h + b_hh[k]`` (``h`` = previous
        hidden state). ``n = 0``: the cell has no ``weight_hh`` / ``bias_hh`` at all."""
        self._h_gates = self._gates("h_gates", "hg", n, self._h_gates, lo=0)
        return self._h_gates

    def _gates(self, what: str, op: str, n: Any, have: tuple | None, lo: int) -> tuple:
        n = check_int(what, n, lo)
        if have is not None and len(have) != n:
            raise InvalidArgumentError(
                f"{what}: already declared with {len(have)} gates, now asked for {n}"
            )
        return tuple(self._node(op, (), k) for k in range(n))

    def state(self, name: str) -> Expr:
        """The previous value of state ``name`` (one of ``states``)."""
        if name not in self._states:
            raise InvalidArgumentError(
                f"state: {name!r} is not one of the cell's states {list(self._states)}"
            )
        return self._node("state", (), name)

    def unit_param(self, name: str, init: Any = "uniform", value: float = 1.0) -> Expr:
        """A trained per-unit vector ``[H]`` (e.g. a peephole weight), broadcast over the
        batch. ``init``: ``"uniform"`` (``U(-a, a)``, ``a = value / sqrt(H)``) or
        ``"constant"`` (``value``); a dict ``{"uniform": a}`` / ``{"constant": v}`` works too.
        """
        if isinstance(init, Mapping):
            if len(init) != 1:
                raise InvalidArgumentError(
                    f"unit_param {name!r}: init dict needs exactly one entry, got {init!r}"
                )
            ((init, value),) = init.items()
        p = UnitParam(name, init, value)
        have = self._params.get(name)
        if have is not None and have != p:
            raise InvalidArgumentError(
                f"unit_param {name!r}: declared twice with different inits ({have!r}, {p!r})"
            )
        self._params.setdefault(name, p)
        return self._node("param", (), name)

    def gate_params(
        self, name: str, n: int, init: Any = "uniform", value: float = 1.0
    ) -> tuple[Expr, ...]:
        """``n`` per-unit vectors ``[H]`` for ``n`` gates (a per-gate ``[n, H]`` parameter),
        named ``{name}_0`` .. ``{name}_{n-1}``, with one init rule."""
        n = _int_field(f"gate_params {name!r}: n", n, 1)
        return tuple(self.unit_param(f"{name}_{k}", init, value) for k in range(n))

    def low_rank(
        self, name: str, x: Expr, rank: int, init: Any = "uniform", value: float = 1.0
    ) -> Expr:
        """``U V^T x`` for trained low-rank factors ``U, V`` ``[H, rank]`` applied to the row
        ``x`` (a state, usually): ``sum_k u_k * row_sum(v_k * x)``, with the columns as unit
        params ``{name}_u{k}``, ``{name}_v{k}``. A rank-``r`` recurrent matrix at ``O(r H)`` per
        row and step; the row sums couple the units as a matrix product does."""
        rank = _int_field(f"low_rank {name!r}: rank", rank, 1)
        if not isinstance(x, Expr) or x._cell is not self:
            raise InvalidArgumentError(
                f"low_rank {name!r}: x must be an expression of this cell, got {type(x).__name__}"
            )
        terms = [
            self.unit_param(f"{name}_u{k}", init, value)
            * _unary("sum", self.unit_param(f"{name}_v{k}", init, value) * x)
            for k in range(rank)
        ]
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    def const(self, value: float) -> Expr:
        """A constant; plain Python numbers in expressions become these."""
        return self._node("const", (), _finite("const", value))

    # Definition --------------------------------------------------------------------------------

    @staticmethod
    def define(
        name: str,
        fn: Callable[[Cell], Mapping[str, Any]],
        states: Sequence[str] = ("h",),
        description: str | None = None,
    ) -> CellSpec:
        """Runs ``fn`` on a fresh builder and returns the compiled :class:`CellSpec`.

        ``states[0]`` is the hidden state: the layer's output, the input of the recurrent
        product and of the next layer. ``fn`` returns ``{state: new value}`` for every state.
        ``description`` defaults to the first line of ``fn``'s docstring.
        """
        _check_name("cell name", name)
        if isinstance(states, str) or not isinstance(states, Sequence) or not states:
            raise InvalidArgumentError(
                f"states: expected a non-empty sequence of names, got {states!r}"
            )
        for s in states:
            _check_name("state name", s)
        if len(set(states)) != len(states):
            raise InvalidArgumentError(f"states: names repeat in {list(states)}")
        c = Cell(states)
        outputs = fn(c)
        if not isinstance(outputs, Mapping):
            raise InvalidArgumentError(
                f"cell {name!r}: the definition must return {{state: expression}}, got "
                f"{type(outputs).__name__}"
            )
        missing = [s for s in states if s not in outputs]
        extra = [k for k in outputs if k not in states]
        if missing or extra:
            raise InvalidArgumentError(
                f"cell {name!r}: the definition must return a new value for exactly the states "
                f"{list(states)}; missing {missing}, unexpected {extra}"
            )
        outs: dict[str, Expr] = {}
        for s in states:
            v = outputs[s]
            if _is_number(v):
                v = c.const(v)
            if not isinstance(v, Expr) or v._cell is not c:
                raise InvalidArgumentError(
                    f"cell {name!r}: output {s!r} must be an expression built from this cell's "
                    f"builder, got {v!r}"
                )
            outs[s] = v
        if c._x_gates is None:
            raise InvalidArgumentError(
                f"cell {name!r}: call c.x_gates(n) (n >= 1): a cell must read its input"
            )
        # Keep the nodes the outputs reach, in creation order (already topological).
        live = set()
        stack = [e._id for e in outs.values()]
        while stack:
            i = stack.pop()
            if i not in live:
                live.add(i)
                stack.extend(a._id for a in c._exprs[i]._args)
        unused = [repr(e) for e in c._exprs if e._id not in live and e.op in ("xg", "hg", "param")]
        if unused:
            raise InvalidArgumentError(
                f"cell {name!r}: declared but never used in any output: {', '.join(unused)} "
                "(an unused gate or parameter would be a weight that never gets a gradient)"
            )
        order = [e for e in c._exprs if e._id in live]
        index = {e._id: k for k, e in enumerate(order)}
        nodes: list[dict[str, Any]] = []
        for e in order:
            if e.op in ("xg", "hg"):
                nodes.append({"op": e.op, "index": e._attr})
            elif e.op in ("state", "param"):
                nodes.append({"op": e.op, "name": e._attr})
            elif e.op == "const":
                nodes.append({"op": "const", "value": e._attr})
            else:
                nodes.append({"op": e.op, "args": [index[a._id] for a in e._args]})
        if description is None:
            doc = (getattr(fn, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        return CellSpec(
            name=name,
            states=tuple(states),
            x_gates=len(c._x_gates),
            h_gates=len(c._h_gates or ()),
            unit_params=tuple(c._params.values()),
            nodes=nodes,
            outputs={s: index[outs[s]._id] for s in states},
            description=description,
        )


# --------------------------------------------------------------------------------------------
# The compiled description


def _int_field(where: str, v: Any, lo: int, hi: int | None = None) -> int:
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if not ok or v < lo or (hi is not None and v >= hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
        raise InvalidArgumentError(f"{where}: expected an integer {rng}, got {v!r}")
    return int(v)


class CellSpec:
    """A validated cell description: what :meth:`Cell.define` returns and the Rust core
    compiles. Build one with :meth:`Cell.define` or :meth:`from_json`."""

    def __init__(
        self,
        *,
        name: str,
        states: Sequence[str],
        x_gates: int,
        h_gates: int,
        unit_params: Sequence[UnitParam],
        nodes: Sequence[Mapping[str, Any]],
        outputs: Mapping[str, int],
        description: str = "",
        native: str | None = None,
    ) -> None:
        self.name = _check_name("name", name)
        if isinstance(states, str) or not states:
            raise InvalidArgumentError(
                f"states: expected a non-empty list of names, got {states!r}"
            )
        self.states = tuple(_check_name("states", s) for s in states)
        if len(set(self.states)) != len(self.states):
            raise InvalidArgumentError(f"states: names repeat in {list(self.states)}")
        self.x_gates = _int_field("x_gates", x_gates, 1)
        self.h_gates = _int_field("h_gates", h_gates, 0)
        self.unit_params = tuple(unit_params)
        names = [p.name for p in self.unit_params]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"unit_params: names repeat in {names}")
        self.nodes = tuple(self._check_node(i, n, set(names)) for i, n in enumerate(nodes))
        if not isinstance(outputs, Mapping) or set(outputs) != set(self.states):
            raise InvalidArgumentError(
                f"outputs: expected one node index for every state {list(self.states)}, got "
                f"{dict(outputs) if isinstance(outputs, Mapping) else outputs!r}"
            )
        self.outputs = {
            s: _int_field(f"outputs[{s!r}]", outputs[s], 0, len(self.nodes)) for s in self.states
        }
        self.description = str(description)
        #: Name of the Rust core's own fused kernel computing this cell ("lstm", "gru"), or
        #: None for a cell that goes through the expression compiler.
        self.native = native

    def _check_node(self, i: int, node: Any, params: set) -> dict[str, Any]:
        where = f"nodes[{i}]"
        if not isinstance(node, Mapping) or "op" not in node:
            raise InvalidArgumentError(f"{where}: expected an object with an 'op', got {node!r}")
        op = node["op"]
        if op in ("xg", "hg"):
            keys, n = {"op", "index"}, self.x_gates if op == "xg" else self.h_gates
            if set(node) == keys:
                if n == 0:
                    raise InvalidArgumentError(f"{where}: 'hg' in a cell with h_gates = 0")
                return {"op": op, "index": _int_field(f"{where}.index", node["index"], 0, n)}
        elif op == "state":
            keys = {"op", "name"}
            if set(node) == keys:
                if node["name"] not in self.states:
                    raise InvalidArgumentError(
                        f"{where}: unknown state {node['name']!r} (states: {list(self.states)})"
                    )
                return {"op": op, "name": node["name"]}
        elif op == "param":
            keys = {"op", "name"}
            if set(node) == keys:
                if node["name"] not in params:
                    raise InvalidArgumentError(
                        f"{where}: unknown unit param {node['name']!r} (unit_params: "
                        f"{sorted(params)})"
                    )
                return {"op": op, "name": node["name"]}
        elif op == "const":
            keys = {"op", "value"}
            if set(node) == keys:
                return {"op": op, "value": _finite(f"{where}.value", node["value"])}
        elif op in UNARY_OPS or op in BINARY_OPS:
            keys = {"op", "args"}
            arity = 1 if op in UNARY_OPS else 2
            if set(node) == keys:
                args = node["args"]
                if not isinstance(args, Sequence) or len(args) != arity:
                    raise InvalidArgumentError(
                        f"{where}: {op!r} takes {arity} argument(s), got args={args!r}"
                    )
                return {
                    "op": op,
                    "args": [_int_field(f"{where}.args", a, 0, i) for a in args],
                }
        else:
            raise InvalidArgumentError(
                f"{where}: unknown op {op!r} (ops: {', '.join(LEAF_OPS + UNARY_OPS + BINARY_OPS)})"
            )
        raise InvalidArgumentError(
            f"{where}: op {op!r} takes keys {sorted(keys)}, got {sorted(node)}"
        )

    # Serialisation -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The description as plain data, in the documented key order."""
        return {
            "name": self.name,
            "states": list(self.states),
            "x_gates": self.x_gates,
            "h_gates": self.h_gates,
            "unit_params": [p.to_dict() for p in self.unit_params],
            "nodes": [
                dict(n, args=list(n["args"])) if "args" in n else dict(n) for n in self.nodes
            ],
            "outputs": dict(self.outputs),
        }

    def to_json(self, indent: int | None = None) -> str:
        """The JSON the Rust core compiles (``lstmrs._lstmrs.compile_cell``)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], description: str = "") -> CellSpec:
        required = {"name", "states", "x_gates", "h_gates", "unit_params", "nodes", "outputs"}
        if not isinstance(d, Mapping) or set(d) != required:
            got = sorted(d) if isinstance(d, Mapping) else type(d).__name__
            raise InvalidArgumentError(
                f"cell description: expected keys {sorted(required)}, got {got}"
            )
        ups = d["unit_params"]
        if not isinstance(ups, Sequence) or isinstance(ups, str):
            raise InvalidArgumentError(f"unit_params: expected a list, got {ups!r}")
        nodes = d["nodes"]
        if not isinstance(nodes, Sequence) or isinstance(nodes, str):
            raise InvalidArgumentError(f"nodes: expected a list, got {nodes!r}")
        return cls(
            name=d["name"],
            states=d["states"],
            x_gates=d["x_gates"],
            h_gates=d["h_gates"],
            unit_params=[UnitParam.from_dict(p, f"unit_params[{i}]") for i, p in enumerate(ups)],
            nodes=nodes,
            outputs=d["outputs"],
            description=description,
        )

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"cell description: not valid JSON ({e})") from None
        except RecursionError as e:  # JSON nested thousands deep
            raise InvalidArgumentError("cell description: JSON nested too deeply") from e
        try:
            return cls.from_dict(d)
        except RecursionError as e:
            raise InvalidArgumentError("cell description: nested too deeply") from e

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CellSpec) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"CellSpec({self.name!r}, states={list(self.states)}, x_gates={self.x_gates}, "
            f"h_gates={self.h_gates}, unit_params={[p.name for p in self.unit_params]}, "
            f"nodes={len(self.nodes)})"
        )

    # Parameters ----------------------------------------------------------------------------------

    def param_specs(
        self,
        input_size: int,
        hidden_size: int,
        layer: int = 0,
        reverse: bool = False,
        bias: bool = True,
    ) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of one layer direction's parameters, in the Rust core's order:
        ``weight_ih_l{k}`` [Gx*H, I], ``weight_hh_l{k}`` [Gh*H, H], ``bias_ih_l{k}``,
        ``bias_hh_l{k}``, then ``{param}_l{k}`` [H] (``_reverse`` for the reverse direction;
        the ``hh`` entries are absent when ``h_gates == 0``)."""
        i = _int_field("input_size", input_size, 1)
        h = _int_field("hidden_size", hidden_size, 1)
        sfx = f"_l{_int_field('layer', layer, 0)}" + ("_reverse" if reverse else "")
        gx, gh = self.x_gates * h, self.h_gates * h
        out = [(f"weight_ih{sfx}", (gx, i))]
        if gh:
            out.append((f"weight_hh{sfx}", (gh, h)))
        if bias:
            out.append((f"bias_ih{sfx}", (gx,)))
            if gh:
                out.append((f"bias_hh{sfx}", (gh,)))
        out += [(f"{p.name}{sfx}", (h,)) for p in self.unit_params]
        return out

    def init_params(
        self,
        input_size: int,
        hidden_size: int,
        seed: int = 0,
        layer: int = 0,
        reverse: bool = False,
    ) -> OrderedDict[str, np.ndarray]:
        """Fresh float64 parameters by :meth:`param_specs` name: matrices and biases
        ``U(-1/sqrt(H), 1/sqrt(H))`` as in PyTorch, unit params by their own init rule."""
        rng = np.random.default_rng(seed)
        a = 1.0 / math.sqrt(hidden_size)
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        inits = {p.name: p for p in self.unit_params}
        sfx_len = len(f"_l{layer}") + (len("_reverse") if reverse else 0)
        for name, shape in self.param_specs(input_size, hidden_size, layer, reverse):
            base = name[:-sfx_len]
            if base in inits:
                out[name] = inits[base].initial_value(hidden_size, rng)
            else:
                out[name] = rng.uniform(-a, a, size=shape)
        return out

    # NumPy reference -----------------------------------------------------------------------------

    def _inputs(self, x_pre, h_pre, params, prev_states):
        x_pre = np.asarray(x_pre, dtype=np.float64)
        if x_pre.ndim != 2 or x_pre.shape[1] % self.x_gates:
            raise ShapeError(f"x_pre: expected shape [B, {self.x_gates} * H], got {x_pre.shape}")
        b, hid = x_pre.shape[0], x_pre.shape[1] // self.x_gates
        if self.h_gates:
            if h_pre is None:
                raise ShapeError(f"h_pre: expected shape [{b}, {self.h_gates * hid}], got None")
            h_pre = np.asarray(h_pre, dtype=np.float64)
            if h_pre.shape != (b, self.h_gates * hid):
                raise ShapeError(
                    f"h_pre: expected shape [{b}, {self.h_gates * hid}], got {h_pre.shape}"
                )
        elif h_pre is not None and np.size(h_pre):
            raise ShapeError(f"h_pre: cell {self.name!r} has h_gates = 0; pass None")
        if not isinstance(prev_states, Mapping):
            prev_states = dict(zip(self.states, prev_states))
        states = {}
        for s in self.states:
            if s not in prev_states:
                raise InvalidArgumentError(f"prev_states: missing state {s!r}")
            v = np.asarray(prev_states[s], dtype=np.float64)
            if v.shape != (b, hid):
                raise ShapeError(f"prev_states[{s!r}]: expected shape [{b}, {hid}], got {v.shape}")
            states[s] = v
        params = {} if params is None else params
        ps = {}
        for p in self.unit_params:
            if p.name not in params:
                raise InvalidArgumentError(f"params: missing unit param {p.name!r}")
            v = np.asarray(params[p.name], dtype=np.float64)
            if v.shape != (hid,):
                raise ShapeError(f"params[{p.name!r}]: expected shape [{hid}], got {v.shape}")
            ps[p.name] = v
        return x_pre, h_pre, ps, states, hid

    def _forward(self, x_pre, h_pre, params, states, hid) -> list[np.ndarray]:
        vals: list[np.ndarray] = []
        rows = x_pre.shape[0]
        for n in self.nodes:
            op = n["op"]
            if op == "xg":
                k = n["index"]
                v = x_pre[:, k * hid : (k + 1) * hid]
            elif op == "hg":
                k = n["index"]
                v = h_pre[:, k * hid : (k + 1) * hid]
            elif op == "state":
                v = states[n["name"]]
            elif op == "param":
                v = params[n["name"]]
            elif op == "const":
                v = np.float64(n["value"])
            else:
                a = vals[n["args"][0]]
                if op == "add":
                    v = a + vals[n["args"][1]]
                elif op == "sub":
                    v = a - vals[n["args"][1]]
                elif op == "mul":
                    v = a * vals[n["args"][1]]
                elif op == "neg":
                    v = -a
                elif op == "one_minus":
                    v = 1.0 - a
                elif op == "sigmoid":
                    # Split by sign so exp never overflows.
                    e = np.exp(-np.abs(a))
                    v = np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
                elif op == "tanh":
                    v = np.tanh(a)
                elif op == "relu":
                    v = np.maximum(a, 0.0)
                elif op == "square":
                    v = a * a
                elif op in _REFERENCE_OPS:
                    v = _REFERENCE_OPS[op](a, *(vals[j] for j in n["args"][1:]))
                else:  # row reductions: every row of a [B, H] value (a param: one row)
                    full = np.broadcast_to(a, (rows, hid))
                    v = full.sum(axis=1, keepdims=True)
                    if op == "mean":
                        v = v / hid
            vals.append(v)
        return vals

    def _new_states(self, vals, b: int, hid: int) -> dict[str, np.ndarray]:
        # An output may be a const or a [H] param: broadcast every state to [B, H].
        return {s: np.broadcast_to(vals[i], (b, hid)).copy() for s, i in self.outputs.items()}

    def reference_step(
        self, x_pre: Any, h_pre: Any, params: Mapping[str, Any] | None, prev_states: Any
    ) -> dict[str, np.ndarray]:
        """One step in float64: ``x_pre`` = ``x W_ih^T + b_ih`` [B, Gx*H] (gate k in columns
        ``k*H:(k+1)*H``), ``h_pre`` = ``h W_hh^T + b_hh`` [B, Gh*H] (None when Gh = 0),
        ``params`` = ``{unit param: [H]}``, ``prev_states`` = ``{state: [B, H]}`` (or a
        sequence in ``states`` order). Returns ``{state: new value [B, H]}``."""
        x_pre, h_pre, ps, states, hid = self._inputs(x_pre, h_pre, params, prev_states)
        return self._new_states(self._forward(x_pre, h_pre, ps, states, hid), x_pre.shape[0], hid)

    def reference_step_backward(
        self,
        x_pre: Any,
        h_pre: Any,
        params: Mapping[str, Any] | None,
        prev_states: Any,
        grad_new_states: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Reverse-mode gradient of :meth:`reference_step`: given ``d loss / d new state``
        (missing states count as 0), returns ``{"x_pre": [B, Gx*H], "h_pre": [B, Gh*H] or
        None, "params": {name: [H]}, "states": {name: [B, H]}}``."""
        x_pre, h_pre, ps, states, hid = self._inputs(x_pre, h_pre, params, prev_states)
        b = x_pre.shape[0]
        vals = self._forward(x_pre, h_pre, ps, states, hid)
        adj: list[Any] = [0.0] * len(self.nodes)
        for s, i in self.outputs.items():
            g = grad_new_states.get(s)
            if g is not None:
                g = np.asarray(g, dtype=np.float64)
                if g.shape != (b, hid):
                    raise ShapeError(
                        f"grad_new_states[{s!r}]: expected shape [{b}, {hid}], got {g.shape}"
                    )
                adj[i] = adj[i] + g
        d_x = np.zeros_like(x_pre)
        d_h = np.zeros_like(h_pre) if self.h_gates else None
        d_p = {p.name: np.zeros(hid) for p in self.unit_params}
        d_s = {s: np.zeros((b, hid)) for s in self.states}
        for i in range(len(self.nodes) - 1, -1, -1):
            g = adj[i]
            if isinstance(g, float):  # never reached from an output with a gradient
                continue
            n, op = self.nodes[i], self.nodes[i]["op"]
            g = np.broadcast_to(g, (b, hid))
            if op == "xg":
                k = n["index"]
                d_x[:, k * hid : (k + 1) * hid] += g
            elif op == "hg":
                k = n["index"]
                d_h[:, k * hid : (k + 1) * hid] += g
            elif op == "state":
                d_s[n["name"]] += g
            elif op == "param":
                d_p[n["name"]] += g.sum(axis=0)
            elif op == "const":
                pass
            else:
                args = n["args"]
                a = vals[args[0]]
                if op == "add":
                    parts = [g, g]
                elif op == "sub":
                    parts = [g, -g]
                elif op == "mul":
                    parts = [g * vals[args[1]], g * a]
                elif op in ("neg", "one_minus"):
                    parts = [-g]
                elif op == "sigmoid":
                    y = vals[i]
                    parts = [g * y * (1.0 - y)]
                elif op == "tanh":
                    y = vals[i]
                    parts = [g * (1.0 - y * y)]
                elif op == "relu":
                    parts = [g * (a > 0)]
                elif op == "square":
                    parts = [2.0 * g * a]
                elif op == "exp":
                    parts = [g * vals[i]]
                elif op == "log":
                    inside = a > LOG_FLOOR
                    parts = [np.where(inside, g / np.where(inside, a, 1.0), 0.0)]
                elif op == "sqrt":
                    y = vals[i]
                    parts = [np.where(y > 0, g / np.where(y > 0, 2.0 * y, 1.0), 0.0)]
                elif op == "softplus":
                    parts = [g * -np.expm1(-vals[i])]
                elif op in ("sum", "mean"):
                    # Every unit of the row feeds the reduction: each gets the row's total
                    # gradient (1/H of it for the mean).
                    total = g.sum(axis=1, keepdims=True)
                    parts = [np.broadcast_to(total / (hid if op == "mean" else 1), (b, hid))]
                elif op == "div":
                    den = vals[args[1]]
                    inside = np.abs(den) >= DIV_EPS
                    parts = [
                        g / _safe_denominator(den),
                        np.where(inside, -g * vals[i] / np.where(inside, den, 1.0), 0.0),
                    ]
                elif op in ("max", "min"):
                    other = vals[args[1]]
                    first = a >= other if op == "max" else a <= other
                    parts = [g * first, g * ~first]
                for j, pj in zip(args, parts):
                    adj[j] = adj[j] + pj
        return {"x_pre": d_x, "h_pre": d_h, "params": d_p, "states": d_s}

    def _layer_weights(self, weights: Mapping[str, Any], input_size: int, hid: int, layer: int):
        sfx = f"_l{layer}"
        w = {}
        for name, shape in self.param_specs(input_size, hid, layer):
            base = name[: -len(sfx)]
            if name in weights:
                v = np.asarray(weights[name], dtype=np.float64)
            elif base.startswith("bias_"):
                v = np.zeros(shape)  # a layer built with bias=False
            else:
                raise InvalidArgumentError(f"weights: missing {name!r}")
            if v.shape != shape:
                raise ShapeError(f"weights[{name!r}]: expected shape {list(shape)}, got {v.shape}")
            w[base] = v
        return w

    def reference_sequence(
        self,
        x: Any,
        weights: Mapping[str, Any],
        initial_states: Mapping[str, Any] | None = None,
        layer: int = 0,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One unidirectional layer over ``x`` [B, T, I] (batch first) in float64, with
        ``weights`` named as :meth:`param_specs` names them (``layer`` picks the suffix).
        Returns ``(outputs [B, T, H], final states {name: [B, H]})``."""
        out, final, _ = self._sequence(x, weights, initial_states, layer)
        return out, final

    def _sequence(self, x, weights, initial_states, layer):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 3:
            raise ShapeError(f"x: expected shape [B, T, I], got {x.shape}")
        b, t, i = x.shape
        hid_key = f"weight_ih_l{layer}"
        if hid_key not in weights:
            raise InvalidArgumentError(f"weights: missing {hid_key!r}")
        hid = np.shape(weights[hid_key])[0] // self.x_gates
        w = self._layer_weights(weights, i, hid, layer)
        states = {s: np.zeros((b, hid)) for s in self.states}
        for s, v in (initial_states or {}).items():
            if s not in states:
                raise InvalidArgumentError(f"initial_states: unknown state {s!r}")
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (b, hid):
                raise ShapeError(
                    f"initial_states[{s!r}]: expected shape [{b}, {hid}], got {v.shape}"
                )
            states[s] = v
        ps = {p.name: w[p.name] for p in self.unit_params}
        out = np.zeros((b, t, hid))
        tape = []
        for k in range(t):
            x_pre = x[:, k] @ w["weight_ih"].T + w["bias_ih"]
            h_pre = None
            if self.h_gates:
                h_pre = states[self.states[0]] @ w["weight_hh"].T + w["bias_hh"]
            tape.append((x_pre, h_pre, states))
            states = self.reference_step(x_pre, h_pre, ps, states)
            out[:, k] = states[self.states[0]]
        return out, states, (x, w, ps, tape)

    def reference_sequence_backward(
        self,
        x: Any,
        weights: Mapping[str, Any],
        grad_outputs: Any = None,
        grad_final_states: Mapping[str, Any] | None = None,
        initial_states: Mapping[str, Any] | None = None,
        layer: int = 0,
    ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """Backpropagation through time of :meth:`reference_sequence`: returns
        ``(d weights by name, d x [B, T, I], d initial states {name: [B, H]})``."""
        _, _, (x, w, ps, tape) = self._sequence(x, weights, initial_states, layer)
        b, t, _ = x.shape
        hid = w["weight_ih"].shape[0] // self.x_gates
        if grad_outputs is not None:
            grad_outputs = np.asarray(grad_outputs, dtype=np.float64)
            if grad_outputs.shape != (b, t, hid):
                raise ShapeError(
                    f"grad_outputs: expected shape [{b}, {t}, {hid}], got {grad_outputs.shape}"
                )
        d = {s: np.zeros((b, hid)) for s in self.states}
        for s, v in (grad_final_states or {}).items():
            d[s] = d[s] + np.asarray(v, dtype=np.float64)
        dw = {k: np.zeros_like(v) for k, v in w.items()}
        dx = np.zeros_like(x)
        h_name = self.states[0]
        for k in range(t - 1, -1, -1):
            if grad_outputs is not None:
                d[h_name] = d[h_name] + grad_outputs[:, k]
            x_pre, h_pre, prev = tape[k]
            r = self.reference_step_backward(x_pre, h_pre, ps, prev, d)
            dw["weight_ih"] += r["x_pre"].T @ x[:, k]
            dw["bias_ih"] += r["x_pre"].sum(axis=0)
            dx[:, k] = r["x_pre"] @ w["weight_ih"]
            for p in self.unit_params:
                dw[p.name] += r["params"][p.name]
            d = r["states"]
            if self.h_gates:
                dw["weight_hh"] += r["h_pre"].T @ prev[h_name]
                dw["bias_hh"] += r["h_pre"].sum(axis=0)
                d[h_name] = d[h_name] + r["h_pre"] @ w["weight_hh"]
        sfx = f"_l{layer}"
        grads = {f"{k}{sfx}": v for k, v in dw.items() if f"{k}{sfx}" in weights}
        return grads, dx, d
