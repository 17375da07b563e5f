"""``anomaly``: anomaly detection from the errors of a model of normal behaviour.

The model reads a window of ``data.lookback`` values (and, with ``data.time_features``, the
time of day and day of week of the step to predict) and predicts the next value. It is trained
on the first part of the series (``data.train_fraction``; ``"auto"`` = everything before the
first labelled window, kept between 15% and 50% of the series), leaving out targets inside
labelled windows so that it learns normal behaviour only.

The anomaly score of a step is its absolute prediction error in units of the training span's
standard deviation, averaged over ``eval.smooth`` steps. The threshold is the
``eval.threshold_quantile`` quantile of the scores on the training span; every later step above
it raises an alarm.

Scoring follows the windows of the Numenta Anomaly Benchmark (``data.windows``: NAB's
``combined_windows.json``; ``data.key`` the series' key there, by default the one ending in
``/<file name>``): a window counts as found when an alarm falls inside it; alarms outside every
window are false alarms, grouped into bursts (alarms at most ``eval.group_gap`` steps apart
count once). Window precision = found / (found + false bursts), window recall = found / windows
after the training span.
"""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import datetime
from typing import Any, ClassVar

import numpy as np

from .. import config as C
from .. import plots
from ..csv_series import parse_number, parse_time, read_rows
from ..models import Model
from ..ts_format import find_split_pair
from .base import Prepared, Task, model_kwargs

__all__ = ["AnomalyTask", "window_scores"]


def read_series(path: str, value_column: str, time_column: str, label_column: str = ""):
    """``(times [str], parsed [datetime|None], values float [N], labels int [N] | None)`` of a
    CSV with a header; ``label_column`` ``"auto"`` takes ``is_anomaly`` (the UCR anomaly
    archive's column), ``label`` or ``anomaly`` when the file has one."""
    rows = read_rows(path)
    if len(rows) < 3:
        raise C.ConfigError(f"config: data.path = {path!r}: expected a header and rows")
    header = [h.strip() for h in rows[0]]
    if label_column == "auto":
        label_column = next((c for c in ("is_anomaly", "label", "anomaly") if c in header), "")
    named = [("data.value_column", value_column), ("data.time_column", time_column)]
    if label_column:
        named.append(("data.label_column", label_column))
    for key, col in named:
        if col not in header:
            raise C.ConfigError(
                f"config: {key} = {col!r} is not allowed: expected one of the columns "
                f"{', '.join(header)}"
            )
    vi, ti = header.index(value_column), header.index(time_column)
    li = header.index(label_column) if label_column else -1
    times, values = [], np.empty(len(rows) - 1)
    labels = np.zeros(len(rows) - 1, dtype=np.int64) if li >= 0 else None
    for i, r in enumerate(rows[1:]):
        try:
            values[i] = parse_number(r[vi])
            if labels is not None:
                labels[i] = int(parse_number(r[li])) != 0
        except (ValueError, IndexError):
            col = value_column if labels is None or vi >= len(r) else label_column
            raise C.ConfigError(
                f"data.path: {os.path.basename(path)} row {i + 2}: expected a number in "
                f"{col!r}, got {r[header.index(col)] if header.index(col) < len(r) else '(missing)'!r}"
            ) from None
        times.append(r[ti].strip())
    if not np.all(np.isfinite(values)):
        raise C.ConfigError(f"data.path: {os.path.basename(path)} holds NaN or infinite values")
    return times, [parse_time(t) for t in times], values, labels


def _label_windows(labels: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive index ranges of the runs of labelled (non-zero) steps."""
    edges = np.diff(np.concatenate([[0], (labels != 0).astype(np.int8), [0]]))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist())
    )


def _read_split(d) -> tuple[list[str], list, np.ndarray, np.ndarray | None, int | None]:
    """The series of ``data.path``, joined with ``data.test_path`` (or the ``*_TEST`` file
    beside a ``*_TRAIN`` path) when there is one: ``(times, parsed, values, labels,
    train_end)``; ``train_end`` is the training file's length then. A test file that repeats
    the training file at its start (the UCR anomaly archive's layout) is the whole series."""
    read = lambda p: read_series(p, d["value_column"], d["time_column"], d["label_column"])
    times, parsed, values, labels = read(d["path"])
    test_path = d["test_path"] or find_split_pair(d["path"]) or ""
    if not test_path:
        return times, parsed, values, labels, None
    t2, p2, v2, l2 = read(test_path)
    n = len(values)
    if (labels is None) != (l2 is None):
        raise C.ConfigError(
            f"config: data.test_path = {test_path!r}: one file has a label column and the other "
            "not (expected both or neither)"
        )
    if len(v2) > n and np.array_equal(v2[:n], values):
        return t2, p2, v2, l2, n
    labels_all = None if labels is None else np.concatenate([labels, l2])
    return times + t2, parsed + p2, np.concatenate([values, v2]), labels_all, n


def _time_features(parsed: list[datetime | None]) -> np.ndarray | None:
    """sin/cos of the time of day and of the day of week, ``[N, 4]`` (None if unparseable)."""
    if any(p is None for p in parsed):
        return None
    day = np.array([(p.hour * 3600 + p.minute * 60 + p.second) / 86400 for p in parsed])
    week = np.array([(p.weekday() + day[i]) / 7 for i, p in enumerate(parsed)])
    return np.stack(
        [
            np.sin(2 * np.pi * day),
            np.cos(2 * np.pi * day),
            np.sin(2 * np.pi * week),
            np.cos(2 * np.pi * week),
        ],
        axis=1,
    )


def _load_windows(path: str, key: str, data_path: str) -> tuple[str, list[tuple[str, str]]]:
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise C.ConfigError(f"config: data.windows = {path!r}: cannot read it ({e})") from None
    if not key:
        base = os.path.basename(data_path)
        matches = [k for k in table if k == base or k.endswith("/" + base)]
        if len(matches) != 1:
            raise C.ConfigError(
                f'config: data.key = "" is not allowed here: {len(matches)} keys of '
                f"{os.path.basename(path)} end in {base!r}; expected the series' key, e.g. "
                f"'realKnownCause/{base}'"
            )
        key = matches[0]
    if key not in table:
        close = [k for k in table if k.endswith(os.path.basename(key))]
        raise C.ConfigError(
            f"config: data.key = {key!r} is not allowed: it is not in {os.path.basename(path)}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
        )
    return key, [(w[0], w[1]) for w in table[key]]


def _window_index(parsed: list[datetime], windows: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """Inclusive index ranges of the steps inside each window."""
    stamps = np.array([p.timestamp() for p in parsed])
    out = []
    for a, b in windows:
        ta, tb = parse_time(a), parse_time(b)
        if ta is None or tb is None:
            raise C.ConfigError(f"data.windows: cannot read the window {a!r} .. {b!r}")
        lo = int(np.searchsorted(stamps, ta.timestamp(), side="left"))
        hi = int(np.searchsorted(stamps, tb.timestamp(), side="right")) - 1
        if hi >= lo:
            out.append((lo, hi))
    return out


def window_scores(
    alarms: np.ndarray, windows: list[tuple[int, int]], start: int, gap: int
) -> dict[str, Any]:
    """Window precision and recall of boolean ``alarms`` over steps ``>= start``.

    A window (inclusive index range) overlapping ``[start, end)`` is found when an alarm falls
    inside it. Alarms outside every window are false alarms, grouped into bursts of alarms at
    most ``gap`` steps apart; each burst counts as one false positive.
    """
    n = len(alarms)
    inside = np.zeros(n, dtype=bool)
    live = [(lo, hi) for lo, hi in windows if hi >= start]
    for lo, hi in live:
        inside[max(lo, 0) : hi + 1] = True
    idx = np.flatnonzero(alarms[start:]) + start
    found = sum(1 for lo, hi in live if np.any((idx >= lo) & (idx <= hi)))
    outside = idx[~inside[idx]] if idx.size else idx
    bursts = 0
    if outside.size:
        bursts = 1 + int(np.sum(np.diff(outside) > gap))
    precision = found / (found + bursts) if found + bursts else math.nan
    recall = found / len(live) if live else math.nan
    return {
        "windows": len(live),
        "windows_found": found,
        "false_alarm_bursts": bursts,
        "alarms": int(idx.size),
        "window_precision": precision,
        "window_recall": recall,
        "window_f1": (2 * precision * recall / (precision + recall))
        if found and precision + recall
        else 0.0,
    }


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    """Trailing moving average over ``k`` steps (NaN stays NaN)."""
    if k <= 1:
        return x
    out = np.full_like(x, np.nan)
    ok = np.isfinite(x)
    c = np.cumsum(np.where(ok, x, 0.0))
    n = np.cumsum(ok)
    c = np.concatenate([[0.0], c])
    n = np.concatenate([[0], n])
    i = np.arange(len(x))
    lo = np.maximum(i + 1 - k, 0)
    cnt = n[i + 1] - n[lo]
    np.divide(c[i + 1] - c[lo], cnt, out=out, where=(cnt > 0) & ok)
    return out


class AnomalyTask(Task):
    name = "anomaly"
    description = (
        "Anomaly detection from next-value prediction errors, threshold from the training "
        "span; window precision and recall against NAB-style labelled windows"
    )
    task_defaults: ClassVar[dict[str, Any]] = {
        "data": {
            "path": "",
            "test_path": "",
            "windows": "",
            "key": "",
            "value_column": "value",
            "time_column": "timestamp",
            "label_column": "auto",
            "lookback": 48,
            "train_fraction": "auto",
            "val_fraction": 0.1,
            "time_features": "auto",
        },
        "model": {"hidden_size": 64},
        "train": {"lr": 0.003, "epochs": 40, "batch_size": 64, "patience": 5},
        "eval": {"threshold_quantile": 0.999, "smooth": 12, "group_gap": 48},
    }
    task_rules: ClassVar[dict[str, C.Rule]] = {
        "data.path": C.Path(),
        "data.test_path": C.Path(optional=True),
        "data.windows": C.Path(optional=True),
        "data.time_features": C.OneOf(C.Choice("auto"), C.Bool()),
        "data.lookback": C.Int(lo=1),
        "data.train_fraction": C.OneOf(C.Choice("auto"), C.Float(0.0, 1.0, True, True)),
        "data.val_fraction": C.Float(lo=0.0, hi=0.5),
        "eval.threshold_quantile": C.Float(0.0, 1.0, True, True),
        "eval.smooth": C.Int(lo=1),
        "eval.group_gap": C.Int(lo=0),
    }

    def check(self, config):
        if not config["data"]["path"]:
            raise C.ConfigError(
                'config: data.path = "" is not allowed: expected a CSV series with timestamp '
                "and value columns (--set data.path=FILE)"
            )

    def _inputs(self, z: np.ndarray, tf: np.ndarray | None, lookback: int) -> np.ndarray:
        """Per-step inputs ``[N, F]``: the scaled value and the time features of the next
        step (so the window's last step tells the model when its target is)."""
        cols = [z[:, None]]
        if tf is not None:
            nxt = np.concatenate([tf[1:], tf[-1:]], axis=0)
            cols.append(nxt)
        return np.concatenate(cols, axis=1).astype(np.float32)

    def prepare(self, config, state=None, whole=False):
        d = config["data"]
        times, parsed, values, labels, split_end = _read_split(d)
        n, lb = len(values), d["lookback"]
        if n < lb + 10:
            raise C.ConfigError(
                f"config: data.lookback = {lb} is not allowed for this data: the series has "
                f"only {n} points"
            )
        windows: list[tuple[int, int]] = []
        key = ""
        if d["windows"]:
            if any(p is None for p in parsed):
                raise C.ConfigError(
                    f"data.windows: the {d['time_column']!r} column is not all timestamps"
                )
            key, raw_windows = _load_windows(d["windows"], d["key"], d["path"])
            windows = _window_index(parsed, raw_windows)
        elif labels is not None:
            windows = _label_windows(labels)
            key = "labelled points"
        if whole:
            train_end = lb + 1
        elif split_end is not None:
            train_end = split_end
        elif d["train_fraction"] == "auto":
            first = windows[0][0] if windows else n // 2
            train_end = int(np.clip(first, 0.15 * n, 0.5 * n))
        else:
            train_end = int(n * d["train_fraction"])
        if not whole and train_end < lb + 20:
            raise C.ConfigError(
                f"config: data.train_fraction = {d['train_fraction']!r} is not allowed for this "
                f"data: the training span ({train_end} points) is shorter than data.lookback + 20"
            )
        if state:
            mean, std = state["mean"], state["std"]
        else:
            mean = float(values[:train_end].mean())
            std = float(values[:train_end].std()) or 1.0
        use_tf = d["time_features"]
        tf = _time_features(parsed) if use_tf else None
        if use_tf == "auto":
            use_tf = tf is not None
        elif use_tf and tf is None:
            raise C.ConfigError(
                "config: data.time_features = true is not allowed for this data: the time "
                "column does not hold timestamps (expected false)"
            )
        z = (values - mean) / std
        feats = self._inputs(z, tf, lb)
        targets = np.arange(lb, n)  # predict step t from steps t-lb .. t-1
        x_all = feats[targets[:, None] + np.arange(-lb, 0)[None, :]]
        y_all = z[targets].astype(np.float32)[:, None]
        in_window = np.zeros(n, dtype=bool)
        for lo, hi in windows:
            in_window[lo : hi + 1] = True
        normal = ~in_window[targets]
        tr_mask = (targets < train_end) & normal
        n_val = round(train_end * d["val_fraction"])
        val_start = train_end - n_val
        fit_idx = np.flatnonzero(tr_mask & (targets < val_start))
        val_idx = np.flatnonzero(tr_mask & (targets >= val_start))
        info = [
            f"data: {os.path.basename(d['path'])}, {n} points from {times[0]} to {times[-1]}; "
            f"training span: the first {train_end} ({100 * train_end / n:.0f}%)"
            + (f", {len(windows)} labelled windows ({key})" if key else ", no labels"),
            f"model input: {lb} steps of value" + (" + time of day/week" if use_tf else ""),
        ]
        return Prepared(
            train=(x_all[fit_idx], y_all[fit_idx]) if fit_idx.size else None,
            val=(x_all[val_idx], y_all[val_idx]) if val_idx.size else None,
            test=(x_all, y_all),
            state={"mean": mean, "std": std, **(state or {})},
            info=info,
            extra={
                "times": times,
                "values": values,
                "targets": targets,
                "train_end": train_end,
                "windows": windows,
                "key": key,
                "normal": normal,
            },
        )

    def build_model(self, config, data):
        return Model(
            input_size=data.train[0].shape[2], output_size=1, loss="mse", **model_kwargs(config)
        )

    def _scores(self, model, data, config) -> np.ndarray:
        """Per-step scores over the whole series (NaN before the first prediction)."""
        x, y = data.test
        pred = model.predict(x, batch_size=1024)
        err = np.abs(pred[:, 0] - y[:, 0]).astype(np.float64)
        n = len(data.extra["values"])
        raw = np.full(n, np.nan)
        raw[data.extra["targets"]] = err
        return _smooth(raw, config["eval"]["smooth"])

    def evaluate(self, model, data, config):
        e = config["eval"]
        scores = self._scores(model, data, config)
        train_end = data.extra["train_end"]
        state = data.state
        if "threshold" not in state:
            train_scores = scores[:train_end]
            normal = np.ones(len(scores), dtype=bool)
            normal[data.extra["targets"]] = data.extra["normal"]
            ok = np.isfinite(train_scores) & normal[:train_end]
            state["threshold"] = float(np.quantile(train_scores[ok], e["threshold_quantile"]))
        thr = state["threshold"]
        alarms = np.nan_to_num(scores, nan=-np.inf) > thr
        alarms[:train_end] = False
        out: dict[str, Any] = {"threshold": thr, "train_end": train_end}
        if data.extra["windows"] or config["data"]["windows"]:
            out.update(window_scores(alarms, data.extra["windows"], train_end, e["group_gap"]))
        else:
            out["alarms"] = int(alarms.sum())
        out.update(_top_window(scores, train_end, e["smooth"], data.extra["windows"]))
        out["_scores"], out["_alarms"] = scores, alarms
        return out

    def format_summary(self, s):
        text = f"threshold {s['threshold']:.4g} (score = smoothed |error| / training std)"
        if "windows" in s:
            text += (
                f"\nwindows found {s['windows_found']}/{s['windows']}, false-alarm bursts "
                f"{s['false_alarm_bursts']} ({s['alarms']} alarm steps): window precision "
                f"{_p(s['window_precision'])}, recall {_p(s['window_recall'])}, F1 "
                f"{_p(s['window_f1'])}"
            )
        else:
            text += f"\n{s['alarms']} alarm steps after the training span (no labelled windows)"
        if "top_window" in s:
            a, b = s["top_window"]
            text += f"\ntop-scored window: steps {a}-{b} (score {s['top_score']:.4g})"
            if "top_window_hit" in s:
                text += (
                    " overlaps a labelled window"
                    if s["top_window_hit"]
                    else " overlaps no labelled window"
                )
        return text

    def plot(self, model, data, summary, config, out_dir, records):
        title = f"{os.path.basename(config['data']['path'])}: anomaly scores"
        if "window_recall" in summary:
            title += (
                f" (windows found {summary['windows_found']}/{summary['windows']}, "
                f"false bursts {summary['false_alarm_bursts']})"
            )
        p = plots.anomaly_plot(
            data.extra["times"],
            data.extra["values"],
            summary["_scores"],
            summary["threshold"],
            data.extra["windows"],
            summary["_alarms"],
            data.extra["train_end"],
            os.path.join(out_dir, "anomalies.png"),
            title,
        )
        return [p] if p else []

    def predict_file(self, model, config, state, input_path, output_path):
        if "threshold" not in state:
            raise C.ConfigError("predict: the run has no threshold yet (it did not finish)")
        cfg = {**config, "data": {**config["data"], "path": input_path, "windows": ""}}
        data = self.prepare(cfg, state=state, whole=True)
        scores = self._scores(model, data, cfg)
        alarms = np.nan_to_num(scores, nan=-np.inf) > state["threshold"]
        with open(output_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["timestamp", "value", "score", "alarm"])
            for t, v, s, a in zip(data.extra["times"], data.extra["values"], scores, alarms):
                w.writerow([t, f"{v:.6g}", "" if not np.isfinite(s) else f"{s:.5g}", int(a)])
        return (
            f"{len(scores)} steps, {int(alarms.sum())} alarms (threshold {state['threshold']:.4g})"
        )


def _top_window(
    scores: np.ndarray, start: int, span: int, windows: list[tuple[int, int]]
) -> dict[str, Any]:
    """The ``span`` steps whose smoothed score (a trailing mean over ``span`` steps) is the
    highest after the training span, and whether they overlap a labelled window: the UCR
    anomaly archive's question, "where is the one anomaly?"."""
    live = np.where(np.arange(len(scores)) >= start, scores, np.nan)
    if not np.isfinite(live).any():
        return {}
    end = int(np.nanargmax(live))
    first = max(start, end - span + 1)
    out: dict[str, Any] = {"top_window": [first, end], "top_score": float(live[end])}
    if windows:
        out["top_window_hit"] = any(lo <= end and hi >= first for lo, hi in windows)
    return out


def _p(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
