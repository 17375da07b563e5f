"""Built-in tasks for ``lstmrs train``: what people use LSTMs for, on real data.

A task turns a configuration into data, a model, a training run, a summary of numbers and plots:

- ``forecast``: multi-step forecasting of CSV columns, against naive and seasonal-naive forecasts.
- ``classify``: sequence classification (``.npz`` or numeric CSV) and text classification (CSV of
  text and label), against a bag-of-words logistic regression.
- ``charlm``: a character language model on a text file, in bits per character; ``lstmrs
  generate`` samples from it.
- ``anomaly``: a model of a series' normal behaviour whose prediction errors flag anomalies,
  scored against labelled windows in the Numenta Anomaly Benchmark's format.
- ``adding`` and ``copy``: the synthetic long-range memory benchmarks.

Every task is an instance of :class:`Task`, and registers through the plugin hook
``lstmrs_register_tasks`` like a plugin's tasks do (:func:`lstmrs_register_tasks` below), so a
plugin task and a built-in one are looked up the same way. A plugin task that only provides
``make_data(config, seed) -> (X, y)`` (and optionally ``model_kwargs(config)``) is run by
:class:`PluginTask`.
"""

from __future__ import annotations

from ..plugins import hookimpl
from .anomaly import AnomalyTask
from .base import (
    COMMON_DEFAULTS,
    COMMON_RULES,
    PluginTask,
    Prepared,
    Task,
    as_task,
    check_task_data,
    compile_model,
    model_kwargs,
    plateau_callback,
    registry_names,
    split_fractions,
)
from .charlm import CharLMTask
from .classify import ClassifyTask
from .forecast import ForecastTask
from .seq2seq import Seq2SeqTask
from .synthetic import AddingTask, CopyTask

__all__ = [
    "BUILTIN_TASKS",
    "COMMON_DEFAULTS",
    "COMMON_RULES",
    "PluginTask",
    "Prepared",
    "Task",
    "as_task",
    "check_task_data",
    "compile_model",
    "lstmrs_register_tasks",
    "model_kwargs",
    "plateau_callback",
    "registry_names",
    "split_fractions",
]


# --------------------------------------------------------------------------------------------
# Registration


def _builtin() -> dict[str, Task]:
    tasks = [
        AddingTask(),
        CopyTask(),
        ForecastTask(),
        ClassifyTask(),
        CharLMTask(),
        AnomalyTask(),
        Seq2SeqTask(),
    ]
    return {t.name: t for t in tasks}


#: ``{name: Task}`` of the built-in tasks.
BUILTIN_TASKS: dict[str, Task] = _builtin()


@hookimpl
def lstmrs_register_tasks(register):
    """Registers every built-in task (wired into the built-in plugin)."""
    for task in BUILTIN_TASKS.values():
        register(task)
