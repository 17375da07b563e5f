"""One way to refuse a bad integer: every "integer >= minimum" argument of the package goes
through lstmrs.validation.check_int, so True, 3.0 and "3" are refused alike, with an
InvalidArgumentError naming the argument."""

from __future__ import annotations

import lstmrs
import numpy as np
import pytest
from lstmrs import datasets, optim
from lstmrs.cells import Cell
from lstmrs.errors import InvalidArgumentError
from lstmrs.validation import check_bool, check_int, check_number


@pytest.mark.parametrize("bad", [True, False, np.True_, 3.0, np.float64(3.0), "3", None, 2.5])
def test_check_int_refuses_what_is_not_an_integer(bad):
    with pytest.raises(InvalidArgumentError, match=r"^size: expected an integer >= 1, got "):
        check_int("size", bad)


def test_check_int_takes_python_and_numpy_integers():
    assert check_int("n", 3) == 3 and type(check_int("n", np.int64(3))) is int
    assert check_int("n", 0, 0) == 0
    with pytest.raises(InvalidArgumentError, match=r"^n: expected an integer >= 1, got 0$"):
        check_int("n", 0)


def test_check_number_and_check_bool():
    assert check_number("lr", 0.5, 0.0, 1.0) == 0.5
    with pytest.raises(InvalidArgumentError, match=r"lr: expected a finite number in \[0.0, 1.0\)"):
        check_number("lr", 1.0, 0.0, 1.0, hi_open=True)
    with pytest.raises(InvalidArgumentError, match="lr: expected a finite number"):
        check_number("lr", float("nan"))
    assert check_bool("flag", np.True_) is True
    with pytest.raises(InvalidArgumentError, match="flag: expected True or False, got 1 "):
        check_bool("flag", 1)


# Every integer argument that used to be checked its own way: each refuses True and 3.0 now.
CALLS = {
    "LSTM hidden_size": lambda v: lstmrs.LSTM(4, v),
    "Model hidden_size": lambda v: lstmrs.Model(input_size=2, hidden_size=v, output_size=1),
    "adding_problem n": lambda v: datasets.adding_problem(v, 5),
    "StepLR step_size": lambda v: optim.StepLR(v),
    "Cell x_gates": lambda v: Cell.define("elman_v", lambda c: {"h": c.x_gates(v)[0]}),
    "Stepper batch": lambda v: lstmrs.Model(input_size=2, hidden_size=3, output_size=1).stepper(v),
    "fit epochs": lambda v: _compiled().fit(np.zeros((2, 3, 2)), np.zeros((2, 1)), epochs=v),
    "evaluate batch_size": lambda v: _compiled().evaluate(
        np.zeros((2, 3, 2)), np.zeros((2, 1)), batch_size=v
    ),
}


def _compiled():
    m = lstmrs.Model(input_size=2, hidden_size=3, output_size=1, seed=0)
    m.compile("sgd", lr=0.1)
    return m


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("bad", [True, 3.0])
def test_every_integer_argument_refuses_bools_and_floats_alike(call, bad):
    with pytest.raises(InvalidArgumentError, match=r"expected an integer >= \d+, got "):
        CALLS[call](bad)
