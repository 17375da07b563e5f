"""The run directory of ``lstmrs train``: everything a run used and produced, in one place.

::

    runs/forecast-20250101-120000/
        config.toml        the configuration as used (defaults filled in, paths absolute)
        state.json         task state (vocabulary, scaler, threshold), status, timings
        metrics.jsonl      one JSON object per epoch (loss, val_loss, metrics, lr, seconds)
        summary.json       the evaluation numbers
        checkpoints/       training checkpoints (``--resume`` continues from the newest)
        model/             the final model (``lstmrs.load(...)``)
        plots/*.png        loss curves and the task's own plots

``lstmrs eval``, ``predict`` and ``generate`` read a run directory back.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from . import config as C
from .callbacks import read_jsonl
from .checkpoint import atomic_write, latest_checkpoint, load
from .ensemble import Ensemble, is_ensemble
from .errors import DataFileError, RunDirError
from .hierarchical_model import HierarchicalModel
from .seq2seq import Seq2Seq

__all__ = ["RunDir", "RunDirError"]

CONFIG = "config.toml"
STATE = "state.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
MODEL = "model"
PLOTS = "plots"


def _jsonable(v: Any) -> Any:
    import numpy as np

    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        v = float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN or infinity; None reads back as "not available".
    return v


def _write_json(path: str, obj: Any) -> None:
    atomic_write(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode())


class RunDir:
    """A run directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))

    # Creating and opening --------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | None, task: str, base: str = "runs") -> RunDir:
        """A new run directory: ``path`` if given (it must be empty or absent), else
        ``base/<task>-<YYYYmmdd-HHMMSS>`` (with a suffix when that exists)."""
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = os.path.join(base, f"{task}-{stamp}")
            k = 1
            while os.path.exists(path):
                k += 1
                path = os.path.join(base, f"{task}-{stamp}-{k}")
        elif os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise RunDirError(
                f"--run-dir: {path!r} already exists and is not empty; pass --resume to "
                f"continue that run, or choose another directory"
            )
        os.makedirs(path, exist_ok=True)
        run = cls(path)
        os.makedirs(run.plots, exist_ok=True)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """An existing run directory; :class:`RunDirError` when ``path`` is not one."""
        run = cls(path)
        if not os.path.isfile(run.config_path):
            raise RunDirError(
                f"run directory: {os.fspath(path)!r} is not an lstmrs run (no {CONFIG})"
            )
        return run

    @staticmethod
    def latest(base: str = "runs", task: str | None = None) -> RunDir | None:
        """The most recently modified run under ``base`` (of ``task``), or None."""
        if not os.path.isdir(base):
            return None
        found = []
        for name in os.listdir(base):
            p = os.path.join(base, name)
            if task is not None and not name.startswith(f"{task}-"):
                continue
            if os.path.isfile(os.path.join(p, CONFIG)):
                found.append((os.path.getmtime(os.path.join(p, CONFIG)), p))
        return RunDir(max(found)[1]) if found else None

    # Paths -----------------------------------------------------------------------------------

    @property
    def config_path(self) -> str:
        return os.path.join(self.path, CONFIG)

    @property
    def state_path(self) -> str:
        return os.path.join(self.path, STATE)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.path, METRICS)

    @property
    def summary_path(self) -> str:
        return os.path.join(self.path, SUMMARY)

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.path, CHECKPOINTS)

    @property
    def model_path(self) -> str:
        return os.path.join(self.path, MODEL)

    @property
    def plots(self) -> str:
        return os.path.join(self.path, PLOTS)

    # Contents --------------------------------------------------------------------------------

    def write_config(self, cfg: dict[str, Any]) -> None:
        header = "# The configuration this run used (written by lstmrs train).\n"
        atomic_write(self.config_path, (header + C.dumps(cfg)).encode())

    def read_config(self) -> dict[str, Any]:
        return C.load_toml(self.config_path)

    def _read_json(self, path: str, what: str) -> Any:
        try:
            with open(path, "rb") as f:
                return json.loads(f.read().decode("utf-8"))
        except OSError as e:
            raise RunDirError(f"run directory: cannot read {path!r}: {e.strerror or e}") from e
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise RunDirError(
                f"run directory: {path!r} ({what}) is torn or not JSON ({e}); "
                "delete it to start that part afresh"
            ) from e

    def read_state(self) -> dict[str, Any]:
        if not os.path.isfile(self.state_path):
            return {}
        state = self._read_json(self.state_path, "the run's state")
        if not isinstance(state, dict):
            raise RunDirError(
                f"run directory: {self.state_path!r}: expected a JSON object, got "
                f"{type(state).__name__}"
            )
        return state

    def update_state(self, **fields: Any) -> dict[str, Any]:
        state = self.read_state()
        state.update(fields)
        _write_json(self.state_path, state)
        return state

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        return self._read_json(self.summary_path, "the run's summary")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl`` (empty when there are none)."""
        if not os.path.isfile(self.metrics_path):
            return []
        try:
            return read_jsonl(self.metrics_path)
        except DataFileError as e:
            raise RunDirError(f"run directory: {e}") from e

    def latest_checkpoint(self) -> str | None:
        return latest_checkpoint(self.checkpoints)

    def load_model(self):
        """The final model, or the newest training checkpoint when training did not finish."""
        if is_ensemble(self.model_path):
            return Ensemble.load(self.model_path)
        if Seq2Seq.is_saved(self.model_path):
            return Seq2Seq.load(self.model_path)
        if HierarchicalModel.is_saved(self.model_path):
            return HierarchicalModel.load(self.model_path)
        if os.path.isfile(os.path.join(self.model_path, "config.json")):
            return load(self.model_path, compile=False)
        ck = self.latest_checkpoint()
        if ck is None:
            raise RunDirError(
                f"run directory: {self.path!r} has no model yet (no {MODEL}/ and no checkpoint)"
            )
        return load(ck, compile=False)

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"
