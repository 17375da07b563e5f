"""Hyperparameter search over ``lstmrs train`` configurations with Optuna: ``lstmrs tune``.

The search space is the ``[tune]`` table of a task's config file (``lstmrs train`` ignores it)::

    task = "forecast"
    [data]
    path = "airline.csv"

    [tune]
    trials = 40            # the budget: trials that finish (complete or pruned), and/or
    timeout = 1200         # seconds; 0 = no limit (one of the two is needed)
    metric = "val_loss"    # any validation metric the task logs per epoch (val_accuracy, ...)

    [tune.params]
    "train.lr" = { low = 1e-4, high = 1e-2, log = true }
    "model.hidden_size" = { low = 16, high = 256, log = true }   # int: the key's default is
    "model.cell" = ["lstm", "gru"]                                # a list: categorical
    "model.num_layers" = [1, 2]
    "model.dropout" = { low = 0.0, high = 0.5, when = { "model.num_layers" = 2 } }

A key's type is its default's (int, float; anything else takes a list of choices); every sampled
configuration passes the task's own validation. ``when`` makes a key conditional on the value of
a key declared before it (or of the base config); otherwise the key keeps the config's value.

Each trial is a complete run directory under ``RUN_DIR/trials/`` (``lstmrs train`` with the
sampled values), reports its validation metric after every epoch to the study (Optuna's pruner
stops poor trials early; TPE samples the next ones) and is scored by the metric of the epoch its
saved model comes from (the best ``val_loss`` epoch when ``train.patience`` restores it, else the
last). The test split is never looked at.

The study lives in ``RUN_DIR/study.db`` (SQLite) unless ``--storage URL`` names any database
Optuna supports (``postgresql://user@host/db``): workers started with the same command on
several machines then share one study. Workers send heartbeats; a trial whose worker died (``kill
-9``, a lost machine) is marked failed after ``grace_period`` seconds by the next worker that
looks, and queued again with the same parameters (up to ``retries`` times). Optuna gives each
trial to one worker only.

The tune directory::

    runs/tune-forecast-20250101-120000/
        config.toml        the base config with its [tune] table (``--resume`` reads it)
        state.json         study name and storage, status
        study.db           the SQLite study (default storage)
        trials/trial-0007/ one lstmrs run directory per trial (train.log: its console output)
        best.toml          the best configuration: ``lstmrs train best.toml`` runs it unchanged
        leaderboard.csv    every trial, best first
        summary.json       the best trial, its value and run directory, counts per state
        plots/             optimization history, parameter importances, parallel coordinates
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from . import config as C
from .callbacks import Callback
from .errors import LstmrsError, NonFiniteError, TuneError
from .metrics import METRIC_NAMES
from .rnn import set_num_threads
from .rundir import RunDir, RunDirError, _write_json
from .tasks.runner import EXIT_INTERRUPTED, lookup_task, resolve_config, train_run

__all__ = ["TUNE_DEFAULTS", "TuneError", "TuneResult", "tune"]

STUDY_DB = "study.db"
BEST_TOML = "best.toml"
LEADERBOARD = "leaderboard.csv"
TRIALS = "trials"
# The search space a study was started with, kept in the study so that a worker with another
# config cannot join it.
SEARCH_ATTR = "lstmrs_search"
# A worker stops after this many failed trials in a row when no trial of the study has finished.
MAX_FIRST_FAILURES = 3
# ... and after this many in a row in any case (the space diverges everywhere).
MAX_FAILURES = 10
# The environment variable that hands a storage URL (which may hold a password) to local workers.
STORAGE_ENV = "LSTMRS_TUNE_STORAGE"
# pip packages of the database drivers SQLAlchemy imports (postgresql:// means psycopg 3).
_DRIVERS = {
    "psycopg": "'psycopg[binary]'",
    "psycopg2": "psycopg2-binary",
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
}


# The [tune] table's settings (besides ``params``) and their defaults.
TUNE_DEFAULTS: dict[str, Any] = {
    "trials": 20,
    "timeout": 0.0,
    "metric": "val_loss",
    "direction": "auto",
    "sampler": "tpe",
    "pruner": "median",
    "startup_trials": 5,
    "warmup_epochs": 2,
    "seed": 0,
    "heartbeat_interval": 10,
    "grace_period": 30,
    "retries": 2,
    "trial_plots": True,
    "start_from_config": True,
}

_TUNE_RULES: dict[str, C.Rule] = {
    # Trials that finish (complete or pruned), over all workers; 0 = no count limit.
    "tune.trials": C.Int(lo=0),
    # Seconds after which a worker starts no new trial and prunes its running one; 0 = no limit.
    "tune.timeout": C.Float(lo=0.0),
    "tune.metric": C.Str(nonempty=True),
    "tune.direction": C.Choice("auto", "minimize", "maximize"),
    "tune.sampler": C.Choice("tpe", "random"),
    "tune.pruner": C.Choice("median", "hyperband", "none"),
    # Random trials before TPE models the space, and trials before the pruner prunes.
    "tune.startup_trials": C.Int(lo=0),
    # Epochs of every trial that are never pruned.
    "tune.warmup_epochs": C.Int(lo=0),
    "tune.seed": C.Int(lo=0),
    "tune.heartbeat_interval": C.Int(lo=1),
    "tune.grace_period": C.Int(lo=1),
    "tune.retries": C.Int(lo=0),
    # Whether every completed trial draws its run's plots (the best trial's always exist then).
    "tune.trial_plots": C.Bool(),
    # The first trial of a new study runs the config's own values (where the space holds them):
    # the search then never ends below what `lstmrs train` would give.
    "tune.start_from_config": C.Bool(),
}

# Sections whose keys can be tuned (eval only changes how the test split is scored).
_TUNABLE = ("model", "train", "data")
_SPEC_KEYS = {"low", "high", "log", "step", "choices", "when"}
# Validation metrics where more is better; every other metric (losses, errors) is minimized.
_MAXIMIZED = ("accuracy", "acc", "precision", "recall", "f1")


def _optuna():
    """Optuna, imported on first use: it is an optional dependency (``lstmrs[tune]``)."""
    try:
        import optuna
    except ImportError:
        raise TuneError(
            "lstmrs tune needs Optuna: pip install 'lstmrs[tune]' (or pip install optuna)"
        ) from None
    import warnings

    # The heartbeat, retry and plotting APIs are marked experimental; their use here is fixed.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Failed trials are reported by lstmrs's own line (with the error), not Optuna's traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


# --------------------------------------------------------------------------------------------
# The search space


@dataclass
class Param:
    """One tuned key: ``kind`` is "int", "float" or "categorical"; ``when``: ``{key: [values]}``
    that must all hold for the key to be sampled."""

    key: str
    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: list = field(default_factory=list)
    when: dict[str, list] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "kind": self.kind}
        if self.kind == "categorical":
            d["choices"] = self.choices
        else:
            d.update(low=self.low, high=self.high, log=self.log, step=self.step)
        if self.when:
            d["when"] = self.when
        return d

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) in allowed for k, allowed in self.when.items())

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is in this key's space."""
        if self.kind == "categorical":
            return value in self.choices
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and self.low <= value <= self.high

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(
                self.key, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


def _is_spec(node: Any) -> bool:
    return isinstance(node, list) or (isinstance(node, dict) and bool(set(node) & _SPEC_KEYS))


def _walk_params(node: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, spec)`` in declaration order; keys may be quoted (``"train.lr" = ...``)
    or nested (``[tune.params.train] lr = ...``)."""
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        if _is_spec(v):
            out.append((key, v))
        elif isinstance(v, dict):
            out += _walk_params(v, key + ".")
        else:
            raise C.ConfigError(
                f"config: tune.params.{key} = {v!r} is not allowed: expected a list of choices "
                "or a table with low and high (and optionally log, step, when)"
            )
    return out


def _checked(base: dict, key: str, value: Any, rules, source: str) -> Any:
    """``value`` for ``key`` as the task's rules coerce it (ConfigError naming ``source``)."""
    cfg = C.apply_layer(base, C.nest({key: value}), rules, source=source)
    return C.get(cfg, key)


def _param(key: str, spec: Any, base: dict, rules, later: set) -> Param:
    where = f"tune.params.{key}"
    if key.split(".")[0] not in _TUNABLE:
        raise C.ConfigError(
            f"config: {where} is not allowed: only {', '.join(k + '.*' for k in _TUNABLE)} "
            "keys can be tuned"
        )
    if isinstance(spec, list):
        spec = {"choices": spec}
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise C.ConfigError(
            f"config: {where}.{min(unknown)} is not a search-space key: expected "
            f"{', '.join(sorted(_SPEC_KEYS))}"
        )
    if not _has(base, key):
        _checked(base, key, None, rules, where)  # raises "unknown key", with a suggestion
    default = C.get(base, key)
    when = _when(key, spec.get("when", {}), base, rules, later)
    if "choices" in spec:
        if set(spec) & {"low", "high", "log", "step"}:
            raise C.ConfigError(f"config: {where}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise C.ConfigError(
                f"config: {where}.choices = {choices!r} is not allowed: expected a non-empty list"
            )
        out = []
        for i, c in enumerate(choices):
            if not isinstance(c, (bool, int, float, str)):
                raise C.ConfigError(
                    f"config: {where}.choices[{i}] = {c!r} is not allowed: expected a number, "
                    "string or boolean"
                )
            out.append(_checked(base, key, c, rules, f"{where}.choices[{i}]"))
        return Param(key, "categorical", choices=out, when=when)
    if "low" not in spec or "high" not in spec:
        raise C.ConfigError(
            f"config: {where} needs low and high (a range) or choices (a list of values)"
        )
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise C.ConfigError(
            f"config: {where} is not a number (its value is {default!r}): give choices = [...]"
        )
    kind = "int" if isinstance(default, int) else "float"
    low = _checked(base, key, spec["low"], rules, f"{where}.low")
    high = _checked(base, key, spec["high"], rules, f"{where}.high")
    if not low < high:
        raise C.ConfigError(
            f"config: {where}: low = {low} must be below high = {high} (fix a value in the "
            f"config instead)"
        )
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise C.ConfigError(f"config: {where}.log = {log!r} is not allowed: expected true or false")
    if log and low <= 0:
        raise C.ConfigError(f"config: {where}: log = true needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        ok = isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0
        if not ok or (kind == "int" and not float(step).is_integer()):
            raise C.ConfigError(
                f"config: {where}.step = {step!r} is not allowed: expected a "
                f"{'whole ' if kind == 'int' else ''}number > 0"
            )
        if log:
            raise C.ConfigError(f"config: {where}: step and log = true cannot be combined")
        step = int(step) if kind == "int" else float(step)
    return Param(key, kind, low=low, high=high, log=log, step=step, when=when)


def _has(cfg: dict, key: str) -> bool:
    try:
        C.get(cfg, key)
    except (KeyError, TypeError):
        return False
    return True


def _when(key: str, when: Any, base: dict, rules, later: set) -> dict[str, list]:
    """``when`` as ``{key: [values]}``; ``later``: the tuned keys declared after ``key``."""
    where = f"tune.params.{key}.when"
    if not isinstance(when, dict):
        raise C.ConfigError(
            f"config: {where} = {when!r} is not allowed: expected a table {{ KEY = VALUE or "
            "[VALUES] }}"
        )
    out = {}
    for other, values in C.flatten(when).items():
        if other == key:
            raise C.ConfigError(f"config: {where}: a key cannot depend on itself")
        if not _has(base, other):
            _checked(base, other, None, rules, where)  # raises "unknown key", with a suggestion
        if other in later:
            raise C.ConfigError(
                f"config: {where}.{other}: {other!r} is tuned after {key!r}; declare it first"
            )
        values = values if isinstance(values, list) else [values]
        out[other] = [_checked(base, other, v, rules, where) for v in values]
    return out


@dataclass
class Settings:
    """The ``[tune]`` table, validated."""

    trials: int
    timeout: float
    metric: str
    direction: str
    sampler: str
    pruner: str
    startup_trials: int
    warmup_epochs: int
    seed: int
    heartbeat_interval: int
    grace_period: int
    retries: int
    trial_plots: bool
    start_from_config: bool
    params: list[Param]

    def fingerprint(self, task: str) -> str:
        return json.dumps(
            {
                "task": task,
                "metric": self.metric,
                "direction": self.direction,
                "params": sorted((p.describe() for p in self.params), key=lambda d: d["key"]),
            },
            sort_keys=True,
        )


def parse_settings(table: Any, base: dict, rules, *, source: str) -> Settings:
    """The ``[tune]`` table checked against the task's config ``base`` and ``rules``."""
    if not isinstance(table, dict):
        raise C.ConfigError(f"config: tune ({source}) must be a table ([tune])")
    table = dict(table)
    params = table.pop("params", None)
    s = C.apply_layer({"tune": TUNE_DEFAULTS}, {"tune": table}, _TUNE_RULES, source=source)["tune"]
    if not isinstance(params, dict) or not params:
        raise C.ConfigError(
            f"config: tune.params ({source}) is missing or empty: expected the keys to search, "
            'e.g. [tune.params] "train.lr" = { low = 1e-4, high = 1e-2, log = true }'
        )
    entries = _walk_params(params)
    declared: dict[str, Param] = {}
    later = {k for k, _ in entries}
    for key, spec in entries:
        later.discard(key)
        if key in declared:
            raise C.ConfigError(f"config: tune.params.{key} ({source}) is given twice")
        declared[key] = _param(key, spec, base, rules, later)
    metric = s["metric"]
    if not metric.startswith("val_"):
        raise C.ConfigError(
            f"config: tune.metric = {metric!r} ({source}) is not allowed: expected a validation "
            "metric logged every epoch (val_loss, or val_ and a compiled metric such as "
            "val_accuracy); the test split is never used for tuning"
        )
    direction = s["direction"]
    if direction == "auto":
        name = metric[len("val_") :]
        if name != "loss" and name not in METRIC_NAMES:
            raise C.ConfigError(
                f"config: tune.metric = {metric!r} ({source}) is not a metric lstmrs knows; set "
                'tune.direction = "minimize" or "maximize"'
            )
        direction = "maximize" if name.startswith(_MAXIMIZED) else "minimize"
    if not s["trials"] and not s["timeout"]:
        raise C.ConfigError(
            f"config: tune.trials = 0 and tune.timeout = 0 ({source}): the search needs a budget "
            "(a number of trials, seconds, or both)"
        )
    if s["grace_period"] <= s["heartbeat_interval"]:
        raise C.ConfigError(
            f"config: tune.grace_period = {s['grace_period']} ({source}) is not allowed: "
            f"expected more than tune.heartbeat_interval = {s['heartbeat_interval']}"
        )
    s.update(metric=metric, direction=direction)
    return Settings(**s, params=list(declared.values()))


def sample(settings: Settings, trial, base: dict) -> dict[str, Any]:
    """The values of ``trial`` for the active keys, in declaration order."""
    flat = C.flatten(base)
    chosen: dict[str, Any] = {}
    for p in settings.params:
        if p.active({**flat, **chosen}):
            chosen[p.key] = p.suggest(trial)
    return chosen


# --------------------------------------------------------------------------------------------
# One trial


class _MetricMissing(C.ConfigError):
    """The tuned metric is not in the epoch logs: no trial of this config can be scored."""


class _TrialReporter(Callback):
    """Reports the metric after every epoch; prunes the trial when the pruner says so, or when
    the search's time budget is spent."""

    def __init__(self, trial, metric: str, deadline: float | None, run: RunDir) -> None:
        super().__init__()
        self.trial, self.metric, self.deadline, self.run = trial, metric, deadline, run

    def on_epoch_end(self, epoch, logs=None):
        optuna = _optuna()
        logs = logs or {}
        if self.metric not in logs:
            have = ", ".join(sorted(k for k in logs if isinstance(logs[k], (int, float))))
            raise _MetricMissing(
                f"config: tune.metric = {self.metric!r} is not in the epoch logs ({have}); the "
                "task must have a validation split and compile that metric"
            )
        value = float(logs[self.metric])
        if math.isfinite(value):
            self.trial.report(value, epoch)
        last = epoch + 1 >= self.params.get("epochs", 0)
        if not last and self.trial.should_prune():
            self.run.update_state(status="pruned")
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")
        if not last and self.deadline is not None and time.time() >= self.deadline:
            self.trial.set_user_attr("stopped", "time budget")
            self.run.update_state(status="pruned")
            raise optuna.TrialPruned(f"time budget spent after epoch {epoch + 1}")


def saved_model_value(records: list[dict], metric: str, restores_best: bool) -> float:
    """The metric of the epoch whose weights the run saved: the best ``val_loss`` epoch when
    early stopping restores it (``train.patience`` > 0), else the last epoch."""
    rows = [r for r in records if r.get(metric) is not None]
    if not rows:
        raise _MetricMissing(f"config: tune.metric = {metric!r} was never logged")
    if restores_best:
        scored = [r for r in rows if r.get("val_loss") is not None]
        if scored:
            return float(min(scored, key=lambda r: r["val_loss"])[metric])
    return float(rows[-1][metric])


@dataclass
class _Search:
    """What every worker of one search needs."""

    task: Any
    base: dict
    settings: Settings
    run_dir: str
    storage_url: str
    study_name: str
    label: str = ""
    deadline: float | None = None
    fatal: BaseException | None = None
    last_trial: int | None = None
    pop_lock: _PopLock | None = None

    def trial_config(self, params: dict[str, Any], number: int) -> dict:
        cfg = C.apply_layer(
            self.base, C.nest(params), self.task.rules, source=f"tune trial {number}"
        )
        self.task.check(cfg)
        return cfg

    def objective(self, trial) -> float:
        optuna = _optuna()
        if self.pop_lock is not None:
            self.pop_lock.release()  # the trial is ours: other workers may take the next
        self.last_trial = trial.number
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = sample(self.settings, trial, self.base)
        path = os.path.join(self.run_dir, TRIALS, f"trial-{trial.number:04d}")
        run = RunDir.create(path, self.task.name)
        trial.set_user_attr("run_dir", run.path)
        try:
            cfg = self.trial_config(params, trial.number)
            reporter = _TrialReporter(trial, self.settings.metric, self.deadline, run)
            log_path = os.path.join(run.path, "train.log")
            # The trial's console output (its epochs and test numbers) goes to its own log.
            with open(log_path, "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
                rc = train_run(
                    self.task,
                    cfg,
                    run,
                    resume=False,
                    say=lambda text="": print(text, flush=True),
                    make_plots=self.settings.trial_plots,
                    extra_callbacks=[reporter],
                )
        except optuna.TrialPruned:
            raise
        except _MetricMissing as e:
            self.fatal = e
            trial.set_user_attr("error", str(e))
            raise
        except LstmrsError as e:
            run.update_state(status="failed")
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise
        if rc == EXIT_INTERRUPTED:
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt
        records = run.read_metrics()
        trial.set_user_attr("epochs", len(records))
        value = saved_model_value(records, self.settings.metric, cfg["train"]["patience"] > 0)
        # A task that trains several models (classify's fold ensembles) reports the metric
        # cross-validated over all of them; it replaces the first model's own validation value.
        cv = run.read_summary().get("cv_" + self.settings.metric[len("val_") :])
        if isinstance(cv, (int, float)):
            value = float(cv)
        if not math.isfinite(value):
            trial.set_user_attr("error", f"{self.settings.metric} = {value}")
            raise NonFiniteError(f"tune: trial {trial.number}: {self.settings.metric} = {value}")
        return value


# --------------------------------------------------------------------------------------------
# Storage and study


def _safe_url(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    cred, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in cred:
        return url
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"


def _storage(url: str, settings: Settings):
    optuna = _optuna()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        # Several local workers write to one file: wait for its lock instead of failing.
        kwargs["connect_args"] = {"timeout": 60}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=settings.retries
            ),
        )
    except ImportError as e:
        driver = _DRIVERS.get(e.name or "", e.name or "its driver")
        raise TuneError(
            f"--storage {_safe_url(url)}: the database driver is missing ({e}): pip install "
            f"{driver}"
        ) from None
    except Exception as e:  # sqlalchemy's errors: a bad URL, a server that cannot be reached
        raise TuneError(f"--storage {_safe_url(url)}: cannot open the study storage: {e}") from e


def _sampler(settings: Settings, seed: int):
    optuna = _optuna()
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=settings.startup_trials,
        multivariate=True,
        group=True,  # conditional keys: model the keys that occur together
        constant_liar=True,  # parallel workers: running trials count as poor, spreading samples
    )


def _pruner(settings: Settings):
    optuna = _optuna()
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, settings.warmup_epochs))
    return optuna.pruners.MedianPruner(
        n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_epochs
    )


# Study attribute set once the config's own values were queued as the first trial.
START_ATTR = "lstmrs_start_enqueued"


def _open_study(search: _Search, *, create: bool, seed: int):
    optuna = _optuna()
    storage = _storage(search.storage_url, search.settings)
    args = {
        "study_name": search.study_name,
        "storage": storage,
        "pruner": _pruner(search.settings),
    }
    where = f"study {search.study_name!r} in {_safe_url(search.storage_url)}"
    if create:
        study = optuna.create_study(
            direction=search.settings.direction, load_if_exists=True, **args
        )
    else:
        try:
            study = optuna.load_study(**args)
        except KeyError:
            raise TuneError(f"--resume: there is no {where}") from None
    # A study that goes on must not draw its first trials again: the seed moves on with it.
    study.sampler = _sampler(search.settings, seed + len(study.get_trials(deepcopy=False)))
    if create and search.settings.start_from_config and not study.user_attrs.get(START_ATTR):
        study.set_user_attr(START_ATTR, True)
        flat = C.flatten(search.base)
        start = {
            p.key: flat[p.key]
            for p in search.settings.params
            if p.active(flat) and p.holds(flat.get(p.key))
        }
        if start:
            study.enqueue_trial(start, user_attrs={"from_config": True})
    mine = search.settings.fingerprint(search.task.name)
    theirs = study.user_attrs.get(SEARCH_ATTR)
    if theirs is None:
        study.set_user_attr(SEARCH_ATTR, mine)
    elif theirs != mine:
        raise C.ConfigError(
            f"config: {where} searches another space (task, metric or [tune.params] differ "
            f"from this config): its space is {theirs}; use another --study name"
        )
    return study


# --------------------------------------------------------------------------------------------
# The worker loop


def _counts(trials) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _requeue_interrupted(study) -> None:
    """Trials stopped by Ctrl-C go back into the queue when a study is resumed."""
    trials = study.get_trials(deepcopy=False)
    requeued = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state.name == "FAIL" and t.user_attrs.get("interrupted") and t.number not in requeued:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def _trial_line(study, number: int, metric: str) -> str:
    t = study.get_trials(deepcopy=False)[number]
    params = " ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    seconds = t.duration.total_seconds() if t.duration else 0.0
    if t.state.name == "COMPLETE":
        what = f"{metric} {_fmt(t.value)}"
    elif t.state.name == "PRUNED":
        steps = t.intermediate_values
        last = f" ({metric} {_fmt(steps[max(steps)])})" if steps else ""
        what = f"{t.user_attrs.get('stopped', 'pruned')} after epoch {len(steps)}{last}"
    else:
        what = f"failed: {t.user_attrs.get('error', 'see its train.log')}"
    return f"trial {number}: {what}  [{seconds:.1f}s]  {params}"


class _PopLock:
    """Workers on one machine sharing a SQLite study take turns from just before a trial is
    started until its objective runs: SQLite has no row locks, so two workers could otherwise
    both take the same queued trial (the config's own values, or a retried one) and one of them
    would find it finished under it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = None

    def acquire(self) -> None:
        import fcntl  # POSIX only: see _pop_lock

        self._file = open(self.path, "a")  # noqa: SIM115 - held across optimize(), closed in release()
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def _pop_lock(search: _Search) -> _PopLock | None:
    """A :class:`_PopLock` beside a SQLite study file (None for a database server, which locks
    the rows itself, or where ``fcntl`` does not exist)."""
    prefix = "sqlite:///"
    if not search.storage_url.startswith(prefix) or os.name != "posix":
        return None
    return _PopLock(search.storage_url[len(prefix) :] + ".pop-lock")


def _work(search: _Search, study, say) -> None:
    """Runs trials until the study's budget is spent: ``trials`` finished trials in the study
    (all workers together) or this worker's ``timeout``."""
    optuna = _optuna()
    s = search.settings
    failures = 0
    prefix = f"[{search.label}] " if search.label else ""
    while True:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        n = _counts(trials)
        done = n.get("COMPLETE", 0) + n.get("PRUNED", 0)
        if s.trials and done >= s.trials:
            return
        if search.deadline is not None and time.time() >= search.deadline:
            say(f"{prefix}time budget of {s.timeout:g}s spent")
            return
        if s.trials and not n.get("WAITING") and done + n.get("RUNNING", 0) >= s.trials:
            # The last trials run elsewhere. Wait: if their worker dies, they come back queued.
            time.sleep(min(2.0, s.heartbeat_interval))
            continue
        search.last_trial = None
        search.pop_lock = _pop_lock(search)
        if search.pop_lock is not None:
            search.pop_lock.acquire()
        try:
            study.optimize(search.objective, n_trials=1, catch=(LstmrsError,), gc_after_trial=False)
        finally:
            if search.pop_lock is not None:
                search.pop_lock.release()
        if search.fatal is not None:
            raise search.fatal
        if search.last_trial is None:
            continue
        say(prefix + _trial_line(study, search.last_trial, s.metric))
        state = study.get_trials(deepcopy=False)[search.last_trial].state.name
        failures = failures + 1 if state == "FAIL" else 0
        finished = any(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials())
        if failures >= (MAX_FAILURES if finished else MAX_FIRST_FAILURES):
            error = study.get_trials(deepcopy=False)[search.last_trial].user_attrs.get("error")
            raise TuneError(f"{failures} trials in a row failed; the last: {error}")


# --------------------------------------------------------------------------------------------
# Results


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.5g}"
    return str(v)


def leaderboard(study, metric: str) -> list[dict[str, Any]]:
    """Every trial as a row, best first: completed trials by value, then pruned trials by their
    last reported value, then the rest by number."""
    sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = t.intermediate_values
        value = t.value if t.state.name == "COMPLETE" else None
        last = steps[max(steps)] if steps else None
        retry_of = t.system_attrs.get("failed_trial", t.user_attrs.get("retry_of"))
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                metric: value,
                "last_reported": last,
                "epochs": t.user_attrs.get("epochs", len(steps)),
                "seconds": round(t.duration.total_seconds(), 2) if t.duration else None,
                "retry_of": retry_of,
                "worker": t.user_attrs.get("worker", ""),
                "run_dir": t.user_attrs.get("run_dir", ""),
                "params": dict(t.params),
            }
        )
    order = {"complete": 0, "pruned": 1}

    def key(r):
        v = r[metric] if r["state"] == "complete" else r["last_reported"]
        rank = order.get(r["state"], 2)
        return (rank, sign * v if rank < 2 and v is not None else math.inf, r["trial"])

    return sorted(rows, key=key)


def _print_leaderboard(rows, metric: str, keys: list[str], show: int, console: Console) -> None:
    table = Table(title=f"lstmrs tune: {len(rows)} trials, best first", title_justify="left")
    for col in ("#", "trial", "state", metric, "epochs", "time"):
        table.add_column(col, justify="left" if col == "state" else "right")
    for k in keys:
        table.add_column(k, justify="right")
    for i, r in enumerate(rows[:show]):
        value = r[metric] if r[metric] is not None else r["last_reported"]
        shown = "" if value is None else _fmt(value)
        if r["state"] == "pruned" and value is not None:
            shown = f"({shown})"
        state = r["state"] + (f" (retry of {r['retry_of']})" if r["retry_of"] is not None else "")
        table.add_row(
            str(i + 1),
            str(r["trial"]),
            state,
            shown,
            str(r["epochs"]),
            "" if r["seconds"] is None else f"{r['seconds']:.1f}s",
            *(_fmt(r["params"][k]) if k in r["params"] else "-" for k in keys),
        )
    console.print(table)
    if len(rows) > show:
        console.print(f"... and {len(rows) - show} more in {LEADERBOARD}")


def _write_leaderboard(path: str, rows, metric: str, keys: list[str]) -> None:
    cols = ["trial", "state", metric, "last_reported", "epochs", "seconds", "retry_of"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*cols, *keys, "worker", "run_dir"])
        for r in rows:
            w.writerow(
                [
                    *("" if r[c] is None else r[c] for c in cols),
                    *(r["params"].get(k, "") for k in keys),
                    r["worker"],
                    r["run_dir"],
                ]
            )


def _plots(study, out_dir: str, metric: str, say) -> list[str]:
    """Optimization history, parameter importances and parallel coordinates as PNGs; a plot
    that the study cannot have yet (importances need two completed trials whose parameters
    differ) is skipped with the reason."""
    optuna = _optuna()
    try:
        import matplotlib
    except ImportError:
        say("tune plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    # Agg draws to files only; chosen before pyplot loads so that no GUI toolkit is needed.
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    vis = optuna.visualization.matplotlib
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    varied = {k for t in complete for k in t.params if t.params[k] != complete[0].params.get(k)}
    jobs = [("tune_history.png", "optimization history", vis.plot_optimization_history, 1)]
    jobs.append(("tune_importances.png", "parameter importances", vis.plot_param_importances, 2))
    jobs.append(("tune_parallel.png", "parallel coordinates", vis.plot_parallel_coordinate, 1))
    written = []
    os.makedirs(out_dir, exist_ok=True)
    for name, what, draw, needed in jobs:
        if len(complete) < needed:
            say(
                f"{what} plot skipped: it needs {needed} completed trials, the study has "
                f"{len(complete)}"
            )
            continue
        if what == "parameter importances" and not varied:
            say(f"{what} plot skipped: no parameter varies among the completed trials")
            continue
        try:
            # Optuna warns about thin data (one value of a parameter, few trials per regime);
            # the plot is still right for what the study has.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ax = draw(study, target_name=metric)
        except (ValueError, RuntimeError) as e:
            say(f"{what} plot skipped: {e}")
            continue
        fig = getattr(ax, "figure", None) or ax.flat[0].figure
        fig.set_size_inches(9, 5.5)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


@dataclass
class TuneResult:
    """What :func:`tune` found. ``best_*`` are None when no trial completed."""

    run_dir: str
    study_name: str
    storage: str
    metric: str
    direction: str
    counts: dict[str, int]
    leaderboard: list[dict[str, Any]]
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_config: dict[str, Any] | None = None
    best_config_path: str | None = None
    best_run_dir: str | None = None
    plots: list[str] = field(default_factory=list)
    study: Any = field(default=None, repr=False)


def _report(search: _Search, study, say, console: Console, show: int = 20) -> TuneResult:
    s = search.settings
    rows = leaderboard(study, s.metric)
    keys = [p.key for p in s.params]
    counts = _counts(study.get_trials(deepcopy=False))
    if rows:
        _print_leaderboard(rows, s.metric, keys, show, console)
    _write_leaderboard(os.path.join(search.run_dir, LEADERBOARD), rows, s.metric, keys)
    say(
        f"{len(rows)} trials: "
        + ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
    )
    result = TuneResult(
        run_dir=search.run_dir,
        study_name=search.study_name,
        storage=_safe_url(search.storage_url),
        metric=s.metric,
        direction=s.direction,
        counts=counts,
        leaderboard=rows,
        study=study,
    )
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        cfg = search.trial_config(best.params, best.number)
        header = (
            f"# The best configuration of lstmrs tune study {search.study_name!r}: trial "
            f"{best.number}, {s.metric} = {best.value!r} ({s.direction}d).\n"
            f"# Its run directory: {best.user_attrs.get('run_dir', '?')} (on "
            f"{best.user_attrs.get('worker', '?').split(':')[0]}).\n"
            "# `lstmrs train` runs it unchanged.\n"
        )
        path = os.path.join(search.run_dir, BEST_TOML)
        with open(path, "w", encoding="utf-8") as f:
            f.write(header + C.dumps(cfg))
        result.best_trial, result.best_value = best.number, best.value
        result.best_params, result.best_config = dict(best.params), cfg
        result.best_config_path, result.best_run_dir = path, best.user_attrs.get("run_dir")
        say(f"best: trial {best.number}, {s.metric} {_fmt(best.value)}")
        for k, v in best.params.items():
            say(f"  {k} = {_fmt(v)}")
        say(f"best configuration: {path}  (lstmrs train {path})")
        say(f"best trial's run directory: {result.best_run_dir}")
    else:
        say("no trial completed: no best configuration")
    result.plots = _plots(study, os.path.join(search.run_dir, "plots"), s.metric, say)
    if result.plots:
        say("plots: " + ", ".join(result.plots))
    _write_json(
        os.path.join(search.run_dir, "summary.json"),
        {
            "study": search.study_name,
            "storage": _safe_url(search.storage_url),
            "metric": s.metric,
            "direction": s.direction,
            "counts": counts,
            "best_trial": result.best_trial,
            "best_value": result.best_value,
            "best_params": result.best_params,
            "best_config": result.best_config_path,
            "best_run_dir": result.best_run_dir,
        },
    )
    return result


# --------------------------------------------------------------------------------------------
# Entry point


def _split_sets(sets) -> tuple[list[str], dict[str, Any]]:
    """``--set`` values for the base config, and those for the [tune] table (``tune.x=...``)."""
    base, tune_sets = [], {}
    for text in sets:
        key, value = C.parse_override(text)
        if key.startswith("tune."):
            tune_sets[key[len("tune.") :]] = value
        else:
            base.append(text)
    return base, tune_sets


def _set_tune_value(table: dict, key: str, value: Any) -> None:
    """``--set tune.KEY=VALUE``: a setting (``trials``), a whole search-space entry
    (``params.model.cell=[...]``) or one field of one (``params.train.lr.high=0.05``)."""
    if not key.startswith("params."):
        table[key] = value
        return
    params = table.setdefault("params", {})
    rest = key[len("params.") :]
    name, _, field_name = rest.rpartition(".")
    if rest in params or field_name not in _SPEC_KEYS:
        params[rest] = value
        return
    spec = params.get(name)
    spec = {"choices": spec} if isinstance(spec, list) else dict(spec or {})
    spec[field_name] = value
    params[name] = spec


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _prepare(
    config, *, storage, study, trials, timeout, resume, run_dir, sets, worker
) -> tuple[_Search, bool]:
    """The search's settings and directory; returns it and whether the study is new."""
    base_sets, tune_sets = _split_sets(sets)
    if resume or worker is not None:
        if config is not None:
            raise C.ConfigError(
                "--resume: the tune directory's own config.toml is used; change values with --set"
            )
        if run_dir is None:
            found = RunDir.latest(task="tune")
            if found is None:
                raise RunDirError(
                    "--resume: no tune directory given (--run-dir DIR) and none under runs/"
                )
            run_dir = found.path
        run = RunDir.open(run_dir)
        file_cfg, file_source, file_dir = run.read_config(), run.config_path, run.path
        state = run.read_state()
    else:
        if config is None:
            raise C.ConfigError("lstmrs tune: give a CONFIG.toml with a [tune] table")
        if isinstance(config, dict):
            file_cfg, file_source, file_dir = copy.deepcopy(config), "config", None
        else:
            file_cfg = C.load_toml(config)
            file_source, file_dir = os.fspath(config), os.path.dirname(os.path.abspath(config))
        state = {}
    file_cfg = dict(file_cfg)
    table = dict(file_cfg.pop("tune", None) or {})
    if not table:
        raise C.ConfigError(
            f"config: {file_source} has no [tune] table: add one with the keys to search "
            "([tune.params]); see `lstmrs tune --help`"
        )
    name = file_cfg.get("task")
    if not isinstance(name, str) or not name:
        raise C.ConfigError(f'config: {file_source} names no task (task = "forecast", ...)')
    task = lookup_task(name)
    base = resolve_config(
        task, file_cfg=file_cfg, file_source=file_source, file_dir=file_dir, sets=base_sets
    )
    if isinstance(table.get("params"), dict):
        table["params"] = dict(_walk_params(table["params"]))
    for key, value in tune_sets.items():
        _set_tune_value(table, key, value)
    if trials is not None:
        table["trials"] = trials
    if timeout is not None:
        table["timeout"] = timeout
    settings = parse_settings(table, base, task.rules, source=file_source)

    if resume or worker is not None:
        storage = storage or os.environ.get(STORAGE_ENV) or state.get("storage")
        study = study or state.get("study")
        if not storage or "***" in storage or not study:
            raise C.ConfigError(
                f"--resume: {run_dir} records no usable storage; give --storage URL --study NAME"
            )
        created = False
    else:
        if storage and not study:
            raise C.ConfigError(
                "--storage: also give --study NAME, the name every worker of the study uses"
            )
        if run_dir is not None and os.path.isdir(run_dir) and os.listdir(run_dir):
            raise RunDirError(
                f"--run-dir: {run_dir!r} already exists and is not empty; pass --resume to "
                "continue its study, or choose another directory"
            )
        run = RunDir.create(run_dir, f"tune-{task.name}")
        storage = storage or f"sqlite:///{os.path.join(run.path, STUDY_DB)}"
        study = study or os.path.basename(run.path)
        # Every key as a table of its own: TOML writes plain values before tables, and the
        # declaration order must survive (``when`` refers to keys declared before).
        params = {
            k: v if isinstance(v, dict) else {"choices": v}
            for k, v in _walk_params(table["params"])
        }
        saved = {**base, "tune": {**table, "params": params}}
        header = "# The base configuration and search space of this lstmrs tune directory.\n"
        with open(run.config_path, "w", encoding="utf-8") as f:
            f.write(header + C.dumps(saved))
        run.update_state(
            kind="tune", task=task.name, study=study, storage=_safe_url(storage), status="started"
        )
        created = True
    search = _Search(task, base, settings, run.path, storage, study)
    return search, created


def tune(
    config: str | os.PathLike | dict | None = None,
    *,
    storage: str | None = None,
    study: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    workers: int = 1,
    resume: bool = False,
    run_dir: str | None = None,
    sets: list[str] = (),
    threads: int | None = None,
    quiet: bool = False,
    _worker: int | None = None,
) -> TuneResult | None:
    """Searches the ``[tune]`` space of ``config`` (a TOML path, or a nested dict with ``task``
    and ``tune``); see the module docstring.

    ``storage``/``study``: an Optuna RDB URL and study name shared by workers on several
    machines (default: SQLite in the tune directory). ``trials``/``timeout`` override the
    table's budget. ``workers``: local worker processes, each with ``threads`` threads (default:
    the cores divided among them). ``resume``: continue the study of ``run_dir`` (default: the
    newest ``runs/tune-*``). ``sets``: ``key=value`` overrides, ``tune.*`` keys included.
    """
    _optuna()  # fails early, with the pip command, when Optuna is missing
    say = (lambda text="": None) if quiet else (lambda text="": print(text, flush=True))
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise C.ConfigError(f"--workers = {workers!r} is not allowed: expected an integer >= 1")
    search, created = _prepare(
        config,
        storage=storage,
        study=study,
        trials=trials,
        timeout=timeout,
        resume=resume,
        run_dir=run_dir,
        sets=list(sets),
        worker=_worker,
    )
    s = search.settings
    start = time.time()
    search.deadline = start + s.timeout if s.timeout else None
    local_db = search.storage_url.endswith(os.path.join(search.run_dir, STUDY_DB))
    parallel = workers > 1 or _worker is not None or not local_db
    # One worker on its own study is reproducible from tune.seed; parallel workers sample in an
    # order that timing decides anyway, so each gets a seed of its own.
    if parallel:
        host = zlib.crc32(socket.gethostname().encode())
        seed = (s.seed * 1_000_003 + host + os.getpid()) % 2**31
    else:
        seed = s.seed
    the_study = _open_study(search, create=created or not resume, seed=seed)
    if _worker is not None:
        search.label = f"w{_worker}"
        if threads:
            set_num_threads(threads)
        _work(search, the_study, say)
        return None
    if resume:
        _requeue_interrupted(the_study)
    say(
        f"lstmrs tune: task {search.task.name!r}, study {search.study_name!r} in "
        f"{_safe_url(search.storage_url)}"
    )
    say(
        f"  {s.metric} ({s.direction}), {len(s.params)} keys, budget: "
        + " and ".join(
            x for x in (s.trials and f"{s.trials} trials", s.timeout and f"{s.timeout:g}s") if x
        )
        + f"; trials in {os.path.join(search.run_dir, TRIALS)}"
    )
    RunDir(search.run_dir).update_state(status="running")
    interrupted = False
    try:
        if workers == 1:
            if threads:
                set_num_threads(threads)
            _work(search, the_study, say)
        else:
            per = threads or max(1, _cores() // workers)
            say(f"  {workers} worker processes with {per} thread(s) each")
            _run_workers(search, workers, per, say)
    except KeyboardInterrupt:
        interrupted = True
        say(f"\ninterrupted; continue with: lstmrs tune --resume --run-dir {search.run_dir}")
    console = Console(quiet=quiet)
    if not console.is_terminal:
        console = Console(quiet=quiet, width=200)  # a log file: do not squeeze the table to 80
    result = _report(search, the_study, say, console)
    RunDir(search.run_dir).update_state(
        status="interrupted" if interrupted else "finished",
        seconds=round(time.time() - start, 1),
    )
    if interrupted:
        raise KeyboardInterrupt
    return result


def _run_workers(search: _Search, workers: int, threads: int, say) -> None:
    """Starts ``workers`` processes of ``lstmrs tune --worker-index K`` on the tune directory and
    waits for them."""
    s = search.settings
    env = dict(os.environ, **{STORAGE_ENV: search.storage_url})
    procs = []
    for k in range(workers):
        cmd = [sys.executable, "-m", "lstmrs.cli", "tune", "--worker-index", str(k)]
        cmd += ["--run-dir", search.run_dir, "--study", search.study_name]
        cmd += ["--threads", str(threads), "--trials", str(s.trials)]
        if search.deadline is not None:
            cmd += ["--timeout", str(max(0.001, search.deadline - time.time()))]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        # The terminal's Ctrl-C reached the workers too; give them time to stop their trials.
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    bad = [f"worker {k}: exit status {c}" for k, c in enumerate(codes) if c]
    if bad:
        say("some workers failed: " + "; ".join(bad))
