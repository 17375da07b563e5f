"""The hooks an lstmrs plugin can implement.

A plugin is a module (or any object) with functions named after these hooks, marked with
:data:`lstmrs.plugins.hookimpl` (unmarked functions whose names start with ``lstmrs_`` are
taken as implementations too, as pytest does for ``pytest_``). A function with the
``lstmrs_`` prefix that matches no hook here is an error (an installed plugin with one is
disabled, with a warning), so a misspelt hook never goes silently unused. Implementations may accept a subset of the arguments.

Registration hooks are called once, the first time the registry they fill is needed (for
example :func:`lstmrs.plugins.get_cells`). Names are lowercase identifiers. When two plugins
register the same name in one category, the first keeps it (the built-ins first) and a
:class:`lstmrs.plugins.PluginWarning` names both; an installed plugin whose hook raises or
registers something invalid is disabled with a warning (see :mod:`lstmrs.plugins.manager`).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("lstmrs")


@hookspec
def lstmrs_register_cells(register):
    """Register recurrent cells.

    Call ``register(spec)`` with an :class:`lstmrs.cells.CellSpec` (from
    :meth:`lstmrs.cells.Cell.define`) for every cell; its ``spec.name`` is the name users pass
    as ``cell=...``. The Rust core compiles the spec's expression graph into fused forward and
    backward kernels, so a plugin cell runs at the core's speed.
    """


@hookspec
def lstmrs_register_tasks(register):
    """Register data tasks (synthetic benchmarks, dataset loaders).

    Call ``register(task)`` with an object that has ``name`` (str), ``description`` (str),
    ``default_config`` (dict) and ``make_data(config, seed) -> (X, y)``; ``config`` is
    ``default_config`` updated with the user's overrides. Optionally
    ``model_kwargs(config) -> dict`` suggests :class:`lstmrs.Model` arguments that fit the data.
    """


@hookspec
def lstmrs_register_optimizers(register):
    """Register optimizers.

    Call ``register(cls)`` with a subclass of :class:`lstmrs.optim.Optimizer` whose ``name``
    is the string users pass to ``Model.compile`` (and ``lstmrs train --optimizer``).
    ``cls.build(num_params, dtype)`` returns the object that updates the model's flat parameter
    buffer, with the interface of ``lstmrs._lstmrs.OptimizerCore``:

    - ``step(params, grads, lr)``: one update, **in place** on ``params``. In ``fit``,
      ``params`` is a writable, C-contiguous 1-D view of the model's weights themselves
      (``Model.weights_view()``, no copy) and ``grads`` the batch's gradient after the model's
      clipping, in a buffer that the next step overwrites (copy what you keep). Both have
      ``num_params`` values of ``dtype``. Allocate state once in ``build``; a step should copy
      nothing the size of the model (``out=`` and in-place operators).
    - ``steps``: the number of updates so far.
    - ``state_dict()`` -> ``{"kind": str, "step": int, "buffers": {name: numpy array}}`` and
      optionally ``"extra"``: JSON-serialisable values (counters, running scalars). Checkpoints
      store the buffers in ``optimizer.safetensors`` (store them as float64, or the model's
      dtype, so that resuming is exact) and ``extra`` in ``config.json``.
    - ``load_state_dict(state)``: restores such a dict (buffers as NumPy arrays; ``extra``
      when the state had it); check the kind and the sizes first.

    ``fit`` runs a plugin optimizer's steps as one core call for the loss and the clipped
    gradient (GIL released), then ``step``. An ``OptimizerCore`` returned by ``build`` runs the
    core's fused step instead.
    """


@hookspec
def lstmrs_register_commands(register):
    """Register ``lstmrs`` command-line subcommands.

    Call ``register(name, func, help="")``: ``lstmrs NAME ARGS...`` runs ``func(argv)`` with
    the remaining arguments (a list of str) and exits with the int it returns.
    """


@hookspec
def lstmrs_train_start(model, config):
    """Called when ``Model.fit`` starts: ``config`` holds the fit arguments (epochs,
    batch_size, ...). Observers only: the return value is ignored."""


@hookspec
def lstmrs_epoch_end(model, epoch, logs):
    """Called after every epoch of ``Model.fit`` with the epoch index (0-based) and the logged
    metrics (``{"loss": ..., "val_loss": ...}``). Observers must not modify ``logs``."""


@hookspec
def lstmrs_train_end(model, history):
    """Called when ``Model.fit`` returns (also after early stopping) with its
    :class:`lstmrs.callbacks.History`."""
