"""``forecast``: multi-step forecasting of a CSV time series, judged against naive forecasts.

The series (``data.columns`` of ``data.path``; by default its last column) is split in time
order into train / validation / test spans. A window of ``lookback`` steps ending at an origin
predicts the next ``horizon`` values of the target column at once (a direct multi-output head:
one output per step ahead). A window belongs to the span that holds all of its targets; its
inputs may reach back into the span before, as they would in real use.

Scaling (``standard`` or ``minmax``) is fitted on the train span only. ``log`` models the
logarithm (multiplicative seasonality, as in the airline series). With ``window_norm =
"last"`` the model predicts each target relative to the last observed value, which lets it
follow a trend beyond the levels it saw in training; ``level_input`` also feeds it the
absolute (scaled) levels, for series whose behaviour depends on the level (sunspots).

On the test span the summary reports RMSE, MAE and MAPE (over non-zero actual values, in
percent) of the model and of two references: the naive forecast (the last value, for every
step ahead) and the seasonal-naive forecast (the value one season earlier; ``eval.season``,
``"auto"`` infers it from the time column: monthly 12, quarterly 4, weekly 52, daily 7,
hourly 24, half-hourly 48).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, ClassVar

import numpy as np

from .. import config as C
from .. import plots
from ..csv_series import parse_number, parse_time, read_rows
from ..models import Model
from .base import Prepared, Task, model_kwargs

__all__ = ["ForecastTask", "infer_season", "read_series"]


# --------------------------------------------------------------------------------------------
# Reading


def read_series(path: str, columns: list[str], time_column: str):
    """``(times, values [N, len(columns)], header)`` from a CSV file with a header row.

    ``columns`` empty: the last column. ``time_column`` empty: the first column when it is
    not numeric. Raises :class:`ConfigError` naming the bad column, row and value.
    """
    rows = read_rows(path)
    if len(rows) < 3:
        raise C.ConfigError(f"config: data.path = {path!r}: expected a header and rows of values")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    columns = list(columns) or [header[-1]]
    for c in columns:
        if c not in header:
            raise C.ConfigError(
                f"config: data.columns = {columns!r} is not allowed: {c!r} is not a column of "
                f"{os.path.basename(path)} (columns: {', '.join(header)})"
            )
    if not time_column:
        first = header[0]
        try:
            parse_number(body[0][0])
        except ValueError:
            time_column = first
    elif time_column not in header:
        raise C.ConfigError(
            f"config: data.time_column = {time_column!r} is not allowed: expected one of "
            f"{', '.join(header)}"
        )
    idx = [header.index(c) for c in columns]
    values = np.empty((len(body), len(idx)))
    for i, r in enumerate(body):
        for j, k in enumerate(idx):
            try:
                values[i, j] = parse_number(r[k])
            except (ValueError, IndexError):
                cell = r[k] if k < len(r) else "(missing)"
                raise C.ConfigError(
                    f"data.path: {os.path.basename(path)} row {i + 2}, column {columns[j]!r}: "
                    f"expected a number, got {cell!r}"
                ) from None
    if not np.all(np.isfinite(values)):
        raise C.ConfigError(f"data.path: {os.path.basename(path)} holds NaN or infinite values")
    times = (
        [r[header.index(time_column)].strip() for r in body]
        if time_column
        else [str(i) for i in range(len(body))]
    )
    return times, values, columns


# (lower, upper) bounds in days of a median step, and the season length it implies.
_SEASONS = (
    (0.019, 0.023, 48),  # half-hourly: a day
    (0.040, 0.044, 24),  # hourly: a day
    (0.9, 1.1, 7),  # daily: a week
    (6.5, 7.5, 52),  # weekly: a year
    (27.0, 32.0, 12),  # monthly: a year
    (88.0, 93.0, 4),  # quarterly: a year
)


def infer_season(times: list[str]) -> tuple[int, str]:
    """The season length implied by the spacing of ``times``, and how it was decided."""
    parsed = [parse_time(t) for t in times[: min(len(times), 400)]]
    if len(parsed) < 3 or any(p is None for p in parsed):
        return 1, "no parseable time column, so the seasonal-naive forecast is the naive one"
    days = np.median([(b - a).total_seconds() / 86400 for a, b in zip(parsed, parsed[1:])])
    for lo, hi, m in _SEASONS:
        if lo <= days <= hi:
            return m, f"inferred from a median step of {days:g} days"
    return 1, f"a median step of {days:g} days matches no known season"


# --------------------------------------------------------------------------------------------
# Windows


class _Scaler:
    def __init__(self, kind: str, a: np.ndarray, b: np.ndarray) -> None:
        self.kind, self.a, self.b = kind, a, b  # scaled = (x - a) / b

    @classmethod
    def fit(cls, kind: str, x: np.ndarray) -> _Scaler:
        if kind == "standard":
            a, b = x.mean(axis=0), x.std(axis=0)
        elif kind == "minmax":
            a, b = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
        else:
            a, b = np.zeros(x.shape[1]), np.ones(x.shape[1])
        b = np.where(b > 0, b, 1.0)
        return cls(kind, a, b)

    def __call__(self, x):
        return (x - self.a) / self.b

    def state(self) -> dict:
        return {"kind": self.kind, "a": self.a.tolist(), "b": self.b.tolist()}

    @classmethod
    def from_state(cls, s: dict) -> _Scaler:
        return cls(s["kind"], np.asarray(s["a"], float), np.asarray(s["b"], float))


def _windows(z: np.ndarray, target: int, origins: np.ndarray, lookback: int, horizon: int, d):
    """Inputs ``[N, lookback, F]`` and targets ``[N, horizon]`` (scaled units) for windows ending
    at ``origins`` (index of the last input)."""
    steps = np.arange(-lookback + 1, 1)
    xw = z[origins[:, None] + steps[None, :]]  # [N, L, F]
    last = z[origins, target][:, None]  # [N, 1]
    feats = []
    if d["window_norm"] == "last":
        feats.append(xw[:, :, target : target + 1] - last[:, :, None])
        if d["level_input"]:
            feats.append(xw)
    else:
        feats.append(xw)
    x = np.concatenate(feats, axis=2).astype(np.float32)
    y = None
    if origins.size and origins.max() + horizon < len(z):
        fut = z[origins[:, None] + np.arange(1, horizon + 1)[None, :], target]
        y = fut - last if d["window_norm"] == "last" else fut
        y = y.astype(np.float32)
    return x, y, last[:, 0]


def _origins(lo_target: int, hi_target: int, lookback: int, horizon: int) -> np.ndarray:
    """Origins whose ``horizon`` targets all lie in ``[lo_target, hi_target)``."""
    first = max(lo_target - 1, lookback - 1)
    last = hi_target - 1 - horizon
    return np.arange(first, last + 1) if last >= first else np.zeros(0, dtype=np.int64)


def _errors(actual: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    e = pred - actual
    nz = actual != 0
    return {
        "rmse": float(np.sqrt(np.mean(e**2))),
        "mae": float(np.mean(np.abs(e))),
        "mape": float(100 * np.mean(np.abs(e[nz]) / np.abs(actual[nz]))) if nz.any() else math.nan,
    }


class ForecastTask(Task):
    name = "forecast"
    description = (
        "Multi-step forecasting of CSV columns (lookback -> horizon), compared with naive and "
        "seasonal-naive forecasts (RMSE, MAE, MAPE on the test span)"
    )
    task_defaults: ClassVar[dict[str, Any]] = {
        "data": {
            "path": "",
            "columns": [],
            "target": "",
            "time_column": "",
            "lookback": 24,
            "horizon": 12,
            "val_fraction": 0.15,
            "test_fraction": 0.2,
            "scaling": "standard",
            "log": False,
            "window_norm": "last",
            "level_input": True,
        },
        "model": {"hidden_size": 64},
        "train": {"lr": 0.003, "epochs": 300, "batch_size": 16, "patience": 30},
        "eval": {"season": "auto"},
    }
    task_rules: ClassVar[dict[str, C.Rule]] = {
        "data.path": C.Path(),
        "data.lookback": C.Int(lo=1),
        "data.horizon": C.Int(lo=1),
        "data.val_fraction": C.Float(lo=0.0, hi=0.5),
        "data.test_fraction": C.Float(lo=0.0, hi=0.5, lo_open=True),
        "data.scaling": C.Choice("standard", "minmax", "none"),
        "data.window_norm": C.Choice("last", "none"),
        "eval.season": C.OneOf(C.Choice("auto"), C.Int(lo=1)),
    }

    def check(self, config):
        if not config["data"]["path"]:
            raise C.ConfigError(
                'config: data.path = "" is not allowed: expected a CSV file with a header row '
                "(set it in the config file or with --set data.path=FILE)"
            )

    # Data ------------------------------------------------------------------------------------

    def _load(self, config, state):
        d = config["data"]
        times, values, columns = read_series(d["path"], d["columns"], d["time_column"])
        target = d["target"] or columns[-1]
        if target not in columns:
            raise C.ConfigError(
                f"config: data.target = {target!r} is not allowed: expected one of the input "
                f"columns {columns}"
            )
        if d["log"]:
            if np.any(values <= 0):
                raise C.ConfigError(
                    "config: data.log = true is not allowed for this data: it holds values "
                    "<= 0 (expected positive values)"
                )
            values = np.log(values)
        return times, values, columns, columns.index(target)

    def prepare(self, config, state=None, whole=False):
        d = config["data"]
        times, values, columns, ti = self._load(config, state)
        raw = np.exp(values[:, ti]) if d["log"] else values[:, ti]
        n, lb, h = len(values), d["lookback"], d["horizon"]
        if whole:
            if not state:
                raise C.ConfigError("eval --data: the run directory has no fitted scaler")
            n_val, n_test = 0, n - lb
        else:
            n_test = max(1, round(n * d["test_fraction"]))
            n_val = round(n * d["val_fraction"])
        train_end, test_start = n - n_test - n_val, n - n_test
        if state:
            scaler = _Scaler.from_state(state["scaler"])
        else:
            if train_end < lb + h:
                raise C.ConfigError(
                    f"config: data.lookback + data.horizon = {lb + h} is not allowed for this "
                    f"data: the train span has only {train_end} points (of {n})"
                )
            scaler = _Scaler.fit(d["scaling"], values[:train_end])
        z = scaler(values)
        spans = {
            "train": (0, train_end),
            "validation": (train_end, test_start),
            "test": (test_start, n),
        }
        o_train = _origins(0, train_end, lb, h) if not whole else np.zeros(0, np.int64)
        o_val = _origins(train_end, test_start, lb, h) if n_val else np.zeros(0, np.int64)
        o_test = _origins(test_start, n, lb, h)
        if o_test.size == 0:
            raise C.ConfigError(
                f"config: data.horizon = {h} is not allowed for this data: the test span "
                f"({n_test} points) is shorter than the horizon (raise data.test_fraction)"
            )
        season = config["eval"]["season"]
        how = "set by eval.season"
        if season == "auto":
            season, how = infer_season(times)
        mk = lambda o: _windows(z, ti, o, lb, h, d) if o.size else None
        train, val, test = mk(o_train), mk(o_val), mk(o_test)
        info = [
            (
                f"data: {os.path.basename(d['path'])}, {n} points of {', '.join(columns)} "
                f"(target {columns[ti]}); spans train {train_end} / validation {n_val} / test "
                f"{n_test} points"
            ),
            (
                f"windows: lookback {lb} -> horizon {h}; {len(o_train)} train, {len(o_val)} "
                f"validation, {len(o_test)} test origins; seasonal naive with season {season} ({how})"
            ),
        ]
        if val is None and not whole:
            info.append("no validation windows (the validation span is shorter than the horizon)")
        new_state = {
            "columns": columns,
            "target": columns[ti],
            "scaler": scaler.state(),
            "season": int(season),
        }
        return Prepared(
            train=None if train is None else (train[0], train[1]),
            val=None if val is None else (val[0], val[1]),
            test=(test[0], test[1]),
            state=new_state,
            info=info,
            extra={
                "times": times,
                "raw": raw,
                "values": values,
                "z": z,
                "target": ti,
                "scaler": scaler,
                "spans": spans,
                "o_test": o_test,
                "last_test": test[2],
                "season": int(season),
            },
        )

    def build_model(self, config, data):
        f = data.train[0].shape[2]
        return Model(
            input_size=f, output_size=config["data"]["horizon"], loss="mse", **model_kwargs(config)
        )

    def train(self, model, data, config, **fit_kwargs):
        t = config["train"]
        return model.fit(
            data.train[0],
            data.train[1],
            validation_data=data.val,
            epochs=t["epochs"],
            batch_size=t["batch_size"],
            **fit_kwargs,
        )

    # Evaluation ------------------------------------------------------------------------------

    def _to_raw(self, data, config, scaled: np.ndarray) -> np.ndarray:
        """Scaled target values (absolute) back to the data's units."""
        sc, ti = data.extra["scaler"], data.extra["target"]
        v = scaled * sc.b[ti] + sc.a[ti]
        return np.exp(v) if config["data"]["log"] else v

    def _model_forecast(self, model, data, config, x, last) -> np.ndarray:
        pred = model.predict(x, batch_size=512).astype(np.float64)
        if config["data"]["window_norm"] == "last":
            pred = pred + last[:, None]
        return self._to_raw(data, config, pred)

    def evaluate(self, model, data, config):
        h = config["data"]["horizon"]
        raw = data.extra["raw"]
        origins = data.extra["o_test"]
        x, _ = data.test
        fc = self._model_forecast(model, data, config, x, data.extra["last_test"])
        steps = np.arange(1, h + 1)
        actual = raw[origins[:, None] + steps[None, :]]
        naive = np.repeat(raw[origins][:, None], h, axis=1)
        m = data.extra["season"]
        back = steps - m * np.ceil(steps / m).astype(int)  # one season before each target
        seasonal_idx = origins[:, None] + back[None, :]
        if seasonal_idx.min() < 0:
            seasonal = np.full_like(actual, np.nan)
        else:
            seasonal = raw[seasonal_idx]
        out: dict[str, Any] = {}
        for name, f in (("model", fc), ("naive", naive), ("seasonal_naive", seasonal)):
            for k, v in _errors(actual, f).items():
                out[f"{name}_{k}"] = v
        out["season"] = m
        out["test_origins"] = len(origins)
        out["horizon"] = h
        out["model_rmse_by_step"] = np.sqrt(np.mean((fc - actual) ** 2, axis=0)).tolist()
        out["_forecast"] = fc
        out["_seasonal"] = seasonal
        return out

    def format_summary(self, s):
        lines = [
            f"test span: {s['test_origins']} forecast origins x {s['horizon']} steps ahead",
            f"{'':<22}{'RMSE':>12}{'MAE':>12}{'MAPE %':>10}",
        ]
        for name, label in (
            ("model", "model"),
            ("naive", "naive"),
            ("seasonal_naive", f"seasonal naive ({s['season']})"),
        ):
            lines.append(
                f"{label:<22}{s[name + '_rmse']:>12.4f}{s[name + '_mae']:>12.4f}"
                f"{s[name + '_mape']:>10.2f}"
            )
        best = min(("naive", "seasonal_naive"), key=lambda k: s[k + "_rmse"])
        ratio = s["model_rmse"] / s[best + "_rmse"] if s[best + "_rmse"] else math.nan
        lines.append(
            f"model RMSE / best reference ({best.replace('_', '-')}) RMSE = {ratio:.3f} "
            f"({'better' if ratio < 1 else 'worse'})"
        )
        return "\n".join(lines)

    def plot(self, model, data, summary, config, out_dir, records):
        h = config["data"]["horizon"]
        raw = data.extra["raw"]
        origins = data.extra["o_test"]
        n = len(raw)
        # Non-overlapping forecasts tile the test span: origins every `horizon` steps.
        tiled = {"model": np.full(n, np.nan), "seasonal naive": np.full(n, np.nan)}
        pick = np.arange(0, len(origins), h)
        for k in pick:
            o = origins[k]
            tiled["model"][o + 1 : o + 1 + h] = summary["_forecast"][k]
            tiled["seasonal naive"][o + 1 : o + 1 + h] = summary["_seasonal"][k]
        spans = data.extra["spans"]
        lo = max(0, spans["test"][0] - 3 * h)
        target = data.state["target"]
        p = plots.forecast_plot(
            data.extra["times"],
            raw,
            spans,
            tiled,
            os.path.join(out_dir, "forecast.png"),
            f"{os.path.basename(config['data']['path'])}: {h}-step forecasts from every "
            f"{h}th test origin (model RMSE {summary['model_rmse']:.4g}, seasonal naive "
            f"{summary['seasonal_naive_rmse']:.4g})",
            ylabel=target,
            zoom_from=lo,
        )
        return [p] if p else []

    # Prediction ------------------------------------------------------------------------------

    def predict_file(self, model, config, state, input_path, output_path):
        cfg = {**config, "data": {**config["data"], "path": input_path}}
        d = cfg["data"]
        times, values, columns = read_series(input_path, state["columns"], d["time_column"])
        ti = columns.index(state["target"])
        if d["log"]:
            values = np.log(values)
        lb, h = d["lookback"], d["horizon"]
        if len(values) < lb:
            raise C.ConfigError(
                f"--input: needs at least {lb} rows (the lookback), got {len(values)}"
            )
        scaler = _Scaler.from_state(state["scaler"])
        z = scaler(values)
        o = np.array([len(z) - 1])
        x, _, last = _windows(z, ti, o, lb, h, d)
        pred = model.predict(x).astype(np.float64)
        if d["window_norm"] == "last":
            pred = pred + last[:, None]
        v = pred[0] * scaler.b[ti] + scaler.a[ti]
        if d["log"]:
            v = np.exp(v)
        with open(output_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["steps_ahead", state["target"]])
            for k, val in enumerate(v, 1):
                w.writerow([k, f"{val:.6g}"])
        return f"{h} steps after {times[-1]}"
