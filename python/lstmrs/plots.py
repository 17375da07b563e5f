"""PNG plots for run directories, drawn with matplotlib's Agg backend (no display needed).

matplotlib is optional: it is imported on the first plot, and when it is missing every function
returns None after one warning instead of failing the run (``pip install matplotlib``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "anomaly_plot",
    "available",
    "bar_plot",
    "confusion_matrix_plot",
    "forecast_plot",
    "loss_curves",
    "scatter_plot",
]

_warned = False


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (warning once) when not installed."""
    global _warned
    try:
        import matplotlib
    except ImportError:
        if not _warned:
            warnings.warn(
                "plots skipped: matplotlib is not installed (pip install matplotlib)",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned = True
        return None
    # Agg draws to files only; selecting it before pyplot loads avoids any GUI toolkit.
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def available() -> bool:
    """Whether matplotlib can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _finite(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def loss_curves(records: list[dict], path: str, title: str = "") -> str | None:
    """Training and validation loss per epoch from ``metrics.jsonl`` records."""
    plt = _pyplot()
    if plt is None or not records:
        return None
    epochs = np.array([r.get("epoch", i) for i, r in enumerate(records)]) + 1
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label, style in (("loss", "training", "-o"), ("val_loss", "validation", "-s")):
        if any(key in r for r in records):
            ys = _finite([r.get(key) for r in records])
            ax.plot(epochs, ys, style, ms=3, label=f"{label} loss")
    ys_all = _finite([r.get(k) for r in records for k in ("loss", "val_loss") if k in r])
    ys_all = ys_all[np.isfinite(ys_all) & (ys_all > 0)]
    if ys_all.size and ys_all.max() / max(ys_all.min(), 1e-300) > 30:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title or "Loss per epoch")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def metric_curves(
    records: list[dict],
    keys: Sequence[str],
    path: str,
    title: str,
    ylabel: str,
    labels: Sequence[str] | None = None,
):
    """Any per-epoch metrics (``bpc``, ``val_bpc``, ...) against the epoch."""
    plt = _pyplot()
    if plt is None or not records:
        return None
    epochs = np.array([r.get("epoch", i) for i, r in enumerate(records)]) + 1
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in zip(keys, labels or keys):
        if any(key in r for r in records):
            ax.plot(epochs, _finite([r.get(key) for r in records]), "-o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def forecast_plot(
    x_axis: Sequence[Any],
    actual: np.ndarray,
    spans: dict[str, tuple[int, int]],
    forecasts: dict[str, np.ndarray],
    path: str,
    title: str,
    ylabel: str = "",
    zoom_from: int | None = None,
) -> str | None:
    """The series with its train/validation/test spans shaded and forecasts over the test span
    (NaN where a forecast has no value). A second panel zooms on the test span."""
    plt = _pyplot()
    if plt is None:
        return None
    n = len(actual)
    idx = np.arange(n)
    colors = {"train": "#e8f0fe", "validation": "#fef7e0", "test": "#e6f4ea"}
    fig, axes = plt.subplots(2, 1, figsize=(10, 7))
    for ax, lo in ((axes[0], 0), (axes[1], zoom_from if zoom_from is not None else 0)):
        for name, (a, b) in spans.items():
            if b > max(a, lo):
                ax.axvspan(max(a, lo) - 0.5, b - 0.5, color=colors.get(name, "#eeeeee"), lw=0)
        ax.set_xlim(lo - 0.5, n - 0.5)
        ax.plot(idx[lo:], actual[lo:], color="black", lw=1.2, label="actual")
        for (name, f), style in zip(forecasts.items(), ("-", "--", ":", "-.")):
            ax.plot(idx[lo:], f[lo:], style, lw=1.3, label=name)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ticks = np.linspace(lo, n - 1, num=min(8, n - lo)).astype(int)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(x_axis[t]) for t in ticks], rotation=20, fontsize=8)
    handles, _labels = axes[0].get_legend_handles_labels()
    import matplotlib.patches as mpatches

    for name in spans:
        handles.append(mpatches.Patch(color=colors.get(name, "#eeeeee"), label=f"{name} span"))
    axes[0].legend(handles=handles, fontsize=8, loc="upper left")
    axes[0].set_title(title)
    axes[1].set_title("test span", fontsize=10)
    return _save(fig, path)


def confusion_matrix_plot(
    cm: np.ndarray, labels: Sequence[str], path: str, title: str = "Confusion matrix"
) -> str | None:
    """Counts with row-normalised shading (rows: true class, columns: predicted)."""
    plt = _pyplot()
    if plt is None:
        return None
    cm = np.asarray(cm)
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    size = max(5.0, 0.6 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticklabels(labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    color="white" if frac[i, j] > 0.5 else "black",
                    fontsize=10 if k <= 8 else 7,
                )
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def anomaly_plot(
    times: Sequence[Any],
    values: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    windows: list[tuple[int, int]],
    alarms: np.ndarray,
    train_end: int,
    path: str,
    title: str,
) -> str | None:
    """Series and anomaly scores, with labelled windows shaded, the threshold and the alarms."""
    plt = _pyplot()
    if plt is None:
        return None
    n = len(values)
    idx = np.arange(n)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    for ax in (a1, a2):
        for k, (lo, hi) in enumerate(windows):
            ax.axvspan(
                lo,
                hi,
                color="#fbbc04",
                alpha=0.3,
                lw=0,
                label="labelled window" if k == 0 else None,
            )
        ax.axvline(train_end, color="gray", ls="--", lw=1, label="end of training span")
        ax.grid(True, alpha=0.3)
    a1.plot(idx, values, color="black", lw=0.6, label="value")
    hit = np.flatnonzero(alarms)
    if hit.size:
        a1.plot(hit, values[hit], "v", color="#d93025", ms=4, label="alarm")
    a1.set_ylabel("value")
    a1.legend(fontsize=8, loc="upper left")
    a1.set_title(title)
    a2.plot(idx, scores, color="#1a73e8", lw=0.6, label="anomaly score")
    a2.axhline(threshold, color="#d93025", lw=1, label=f"threshold {threshold:.3g}")
    finite = scores[np.isfinite(scores)]
    if finite.size and finite.max() / max(np.median(finite), 1e-12) > 50:
        a2.set_yscale("log")
    a2.set_ylabel("score")
    a2.legend(fontsize=8, loc="upper left")
    ticks = np.linspace(0, n - 1, num=min(8, n)).astype(int)
    a2.set_xticks(ticks)
    a2.set_xticklabels([str(times[t])[:10] for t in ticks], rotation=20, fontsize=8)
    return _save(fig, path)


def scatter_plot(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    path: str,
    title: str,
    xlabel="target",
    ylabel="prediction",
) -> str | None:
    """Predictions against targets with the diagonal."""
    plt = _pyplot()
    if plt is None:
        return None
    t, p = np.ravel(y_true), np.ravel(y_pred)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(t, p, s=6, alpha=0.5)
    lo = float(min(t.min(), p.min()))
    hi = float(max(t.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="prediction = target")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def bar_plot(
    labels: Sequence[str], values: Sequence[float], path: str, title: str, ylabel: str, ref=None
) -> str | None:
    """Bars, with an optional horizontal reference line ``ref=(value, label)``."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(labels) + 2), 4))
    ax.bar(range(len(labels)), values, color="#1a73e8")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    if ref is not None and math.isfinite(ref[0]):
        ax.axhline(ref[0], color="#d93025", ls="--", lw=1, label=ref[1])
        ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)
