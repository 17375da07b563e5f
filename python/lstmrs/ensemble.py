"""An ensemble of models of one configuration, each trained on its own cross-validation fold.

On small data sets (tens of training series) one model's test accuracy swings by 10-20 points
with its seed and its validation split; the mean of several models' predicted probabilities
does not (bagging, as InceptionTime does for time-series classification). :meth:`Ensemble.fit`
trains member ``k`` on every fold but ``folds[k]``, early-stopped on that fold, so every
training series serves both for training and, once, for choosing when to stop.

Saved as a directory holding ``ensemble.json`` and one checkpoint directory per member; each
member's training checkpoints live in ``checkpoint_dir/member_<k>`` and a finished member is
kept in ``checkpoint_dir/member_<k>/final``, so a killed run resumes at the member it was
training, from that member's last checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .callbacks import Callback
from .checkpoint_format import latest_checkpoint
from .errors import ExportError, InvalidArgumentError
from .models import Model

__all__ = ["ENSEMBLE_FILE", "Ensemble", "is_ensemble"]

ENSEMBLE_FILE = "ensemble.json"
# Descriptions that are the same for every member.
_SHARED = frozenset(
    (
        "bidirectional",
        "cell",
        "config",
        "device",
        "dtype",
        "has_cell_state",
        "hidden_size",
        "loss",
        "metrics",
        "num_layers",
        "output_size",
        "pooling",
        "tokens",
    )
)


def is_ensemble(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), ENSEMBLE_FILE))


class Ensemble:
    """Models whose probabilities (or regression outputs) are averaged by :meth:`predict`."""

    def __init__(self, members: Sequence[Model]) -> None:
        if not members:
            raise InvalidArgumentError("members: expected at least one model")
        self.members = list(members)
        self.stop_training = False

    # Description, as Model has it -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"Ensemble({len(self)} x {self.members[0]!r})"

    def __getattr__(self, name: str) -> Any:
        # The configuration every member shares; anything else (evaluate, core, stepper, ...)
        # would silently be the first member's alone, so it is not forwarded.
        if name in _SHARED:
            return getattr(self.members[0], name)
        raise AttributeError(
            f"Ensemble has no attribute {name!r}: use predict, or one model of .members"
        )

    @property
    def num_params(self) -> int:
        return sum(m.num_params for m in self.members)

    @property
    def _interrupt_checkpoint(self) -> str | None:
        return next(
            (m._interrupt_checkpoint for m in self.members if m._interrupt_checkpoint), None
        )

    def to_onnx(self, *args: Any, **kwargs: Any):
        raise ExportError(
            f"an ensemble of {len(self)} models has no single graph: export each member "
            "(ensemble.members[k].to_onnx(path)) and average their probabilities"
        )

    def save_safetensors(self, *args: Any, **kwargs: Any):
        raise ExportError(
            f"an ensemble of {len(self)} models: save each member "
            "(ensemble.members[k].save_safetensors(path))"
        )

    def compile(self, optimizer: Any, **kwargs: Any) -> None:
        """Compiles every member; an optimizer object is copied so each has its own state."""
        for m in self.members:
            m.compile(copy.deepcopy(optimizer), **copy.deepcopy(kwargs))

    # Training -------------------------------------------------------------------------------

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        masks: Sequence[np.ndarray],
        lengths: Any = None,
        callbacks_for: Callable[[int], list] = lambda k: [],
        checkpoint_dir: str | os.PathLike | None = None,
        time_limit: float = 0.0,
        on_member_end: Callable[[int, Model], None] | None = None,
        **fit_kwargs: Any,
    ) -> list:
        """Trains member ``k`` on the items where ``masks[k]`` is false and validates it on
        those where it is true; returns the members' histories.

        ``callbacks_for(k)``: the callbacks of member ``k`` (early stopping belongs there).
        ``time_limit``: seconds for the whole ensemble (0: none), shared out so the members
        left get equal parts of what remains. With ``checkpoint_dir`` a killed run resumes.
        """
        masks = [np.asarray(m, dtype=bool) for m in masks]
        if len(masks) != len(self) or any(m.shape != (len(y),) for m in masks):
            raise InvalidArgumentError(
                f"masks: expected {len(self)} boolean masks of {len(y)} items (one per member)"
            )
        lens = None if lengths is None else np.asarray(lengths)
        x, y = np.asarray(x), np.asarray(y)
        start = time.perf_counter()
        histories = []
        for k, member in enumerate(self.members):
            ck = None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"member_{k}")
            final = None if ck is None else os.path.join(ck, "final")
            if final and os.path.isfile(os.path.join(final, "config.json")):
                self.members[k] = Model.load(final)
                histories.append(None)
                continue
            callbacks = list(callbacks_for(k))
            if time_limit:
                left = time_limit - (time.perf_counter() - start)
                callbacks.append(_Deadline(time.perf_counter() + max(left, 0) / (len(self) - k)))
            val, tr = masks[k], ~masks[k]
            resume = ck is not None and latest_checkpoint(ck) is not None
            if resume:
                member = self.members[k] = Model.resume(latest_checkpoint(ck))
            h = member.fit(
                x[tr],
                y[tr],
                lengths=None if lens is None else lens[tr],
                validation_data=(x[val], y[val], None if lens is None else lens[val]),
                callbacks=callbacks,
                checkpoint_dir=ck,
                resume=resume,
                **fit_kwargs,
            )
            histories.append(h)
            if final:
                member.save(final)
            if on_member_end is not None:
                on_member_end(k, member)
            if self.stop_training:
                break
        return histories

    # Inference and persistence ----------------------------------------------------------------

    def predict(self, x: Any, *, output: str = "raw", **kwargs: Any) -> np.ndarray:
        """The mean of the members' outputs. ``output="labels"`` is the arg-max of the mean
        probabilities; ``"raw"`` (logits) averages probabilities, as logits of different
        models are not on one scale, and returns them."""
        want = "probabilities" if output in ("labels", "raw") else output
        mean = np.mean([m.predict(x, output=want, **kwargs) for m in self.members], axis=0)
        if output == "labels":
            return mean.argmax(axis=-1)
        return mean

    def save(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        for k, m in enumerate(self.members):
            m.save(os.path.join(path, f"member_{k}"))
        tmp = os.path.join(path, ENSEMBLE_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"members": len(self.members)}, f)
        os.replace(tmp, os.path.join(path, ENSEMBLE_FILE))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, compile: bool = False) -> Ensemble:
        path = os.fspath(path)
        with open(os.path.join(path, ENSEMBLE_FILE), encoding="utf-8") as f:
            n = int(json.load(f)["members"])
        return cls(
            [Model.load(os.path.join(path, f"member_{k}"), compile=compile) for k in range(n)]
        )


class _Deadline(Callback):
    """Stops a member's training at a wall-clock deadline (``perf_counter`` time)."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def on_batch_end(self, batch, logs=None):
        if time.perf_counter() >= self.deadline:
            self.model.stop_training = True
