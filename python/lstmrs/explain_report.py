"""``lstmrs explain RUN``: PNG figures and one self-contained HTML page explaining a trained run.

The data come from the task itself (``task.prepare``), so they are read and preprocessed
exactly as the run was trained: the run's own test split by default, or ``--input FILE`` read
as the task reads its data file (all of it). One figure per task kind:

* ``forecast``: the lookback window and the forecast over the series, the attribution of a
  forecast step (``--target``, default the first) to each lookback step under it.
* ``classify`` (numeric) and the synthetic tasks: each input channel over the steps, its points
  coloured by their attribution to the predicted class, the step totals under it.
* ``classify`` (text): the text with each token highlighted by its attribution (HTML), and the
  most attributed tokens (PNG).
* ``charlm``: a stretch of the text coloured by one unit's activation (``--unit``, default the
  unit that best tracks the position in the line), a heatmap of the top layer's keep gate
  (time x units), and the attribution of the next character to the text before it.
* ``anomaly``: the top-scored windows, each with the attribution of the model's prediction
  (whose error is the score) to the steps of its lookback window.

The page embeds every PNG as a base64 data URI and needs no network.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import explain as X
from .errors import InvalidArgumentError
from .hierarchical_model import HierarchicalModel

__all__ = ["Report", "explain_ensemble", "write_report"]


@dataclass
class Report:
    """What :func:`write_report` produced: the page, the figures, and lines for the console."""

    html: str
    figures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Attributions of a model or an ensemble


def explain_ensemble(model: Any, x: Any, lengths: Any = None, **kwargs: Any) -> X.Explanation:
    """:func:`lstmrs.explain.explain` for a model or an ensemble (``.members``): an ensemble's
    attributions are the mean of its members' (integrated gradients are linear in the output,
    so this explains the mean of the members' outputs), the target chosen once from the
    ensemble's prediction."""
    members = getattr(model, "members", None)
    if not members:
        return X.explain(model, x, lengths, **kwargs)
    if kwargs.get("target") is None and members[0].loss.name == "cross_entropy":
        proba = model.predict(x, lengths=lengths, output="probabilities")
        if members[0].pooling != "per_step":
            kwargs["target"] = proba.argmax(axis=1)
    parts = [X.explain(m, x, lengths, **kwargs) for m in members]
    first = parts[0]

    def mean(name):
        vals = [getattr(p, name) for p in parts]
        return None if vals[0] is None else np.mean(vals, axis=0)

    return X.Explanation(
        method=first.method,
        attributions=mean("attributions"),
        target=first.target,
        output=mean("output"),
        baseline_output=mean("baseline_output"),
        delta=mean("delta"),
        step=first.step,
        attention=mean("attention"),
        lengths=first.lengths,
    )


# --------------------------------------------------------------------------------------------
# Drawing


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def _limit(a: np.ndarray) -> float:
    m = float(np.max(np.abs(a))) if a.size else 0.0
    return m if m > 0 else 1.0


def _bars(ax, steps, scores, title: str) -> None:
    colors = np.where(scores >= 0, "tab:red", "tab:blue")
    ax.bar(steps, scores, color=colors, width=0.85)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")


def _series_figure(path: str, x: np.ndarray, attr: np.ndarray, length: int, title: str) -> str:
    """Each channel of one sequence (``x [T, F]``) with its points coloured by attribution
    (``attr [T, F]``), and the per-step totals under it."""
    plt = _plt()
    t = np.arange(length)
    channels = min(x.shape[1], 6)
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True, height_ratios=[3, 2])
    lim = _limit(attr[:length, :channels])
    for k in range(channels):
        axes[0].plot(t, x[:length, k], color="0.6", lw=0.8)
        sc = axes[0].scatter(
            t, x[:length, k], c=attr[:length, k], cmap="coolwarm", vmin=-lim, vmax=lim, s=14
        )
    fig.colorbar(sc, ax=axes[0], label="attribution")
    axes[0].set_title(title, fontsize=10)
    _bars(axes[1], t, attr[:length].sum(axis=1), "attribution per step (sum over channels)")
    return _save(fig, path)


def _forecast_figure(path, history, times_hist, future, forecast, scores, step, title) -> str:
    plt = _plt()
    lb = len(history)
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True, height_ratios=[3, 2])
    ax = axes[0]
    ax.plot(np.arange(lb), history, color="black", lw=1.2, label="lookback window")
    h = np.arange(lb, lb + len(forecast))
    if future is not None:
        ax.plot(h, future, color="0.5", lw=1.0, ls="--", label="actual")
    ax.plot(h, forecast, color="tab:orange", lw=1.4, label="forecast")
    ax.scatter([lb + step], [forecast[step]], color="tab:red", zorder=3, label="explained step")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    _bars(axes[1], np.arange(lb), scores, f"attribution of forecast step {step + 1}")
    axes[1].set_xlim(-1, lb + len(forecast))
    if times_hist is not None and len(times_hist) == lb:
        ticks = np.linspace(0, lb - 1, min(6, lb)).astype(int)
        axes[1].set_xticks(ticks, [str(times_hist[i])[:10] for i in ticks], fontsize=7)
    return _save(fig, path)


def _heatmap(path, gate: np.ndarray, text: str, title: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    im = ax.imshow(gate.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="none")
    fig.colorbar(im, ax=ax)
    ax.set_ylabel("unit")
    ax.set_xlabel("character")
    if len(text) <= 120:
        ax.set_xticks(range(len(text)), [repr(c)[1:-1] for c in text], fontsize=5)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _top_tokens_figure(path, tokens, scores, title) -> str:
    plt = _plt()
    order = np.argsort(-np.abs(scores))[:20][::-1]
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = np.where(scores[order] >= 0, "tab:red", "tab:blue")
    ax.barh(range(len(order)), scores[order], color=colors)
    ax.set_yticks(range(len(order)), [f"{tokens[i]} @{i}" for i in order], fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("attribution")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# HTML


def _color(v: float, lim: float) -> str:
    """Red for positive, blue for negative, white at zero."""
    a = max(-1.0, min(1.0, v / lim)) if lim > 0 else 0.0
    if a >= 0:
        c = int(255 * (1 - a))
        return f"rgb(255,{c},{c})"
    c = int(255 * (1 + a))
    return f"rgb({c},{c},255)"


def _highlight(tokens: list[str], values: np.ndarray, sep: str) -> str:
    lim = _limit(np.asarray(values, dtype=np.float64))
    spans = []
    for tok, v in zip(tokens, values):
        shown = html.escape(tok).replace("\n", "&#8629;<br>")
        spans.append(
            f'<span class="tok" style="background:{_color(float(v), lim)}" '
            f'title="{float(v):.4g}">{shown}</span>'
        )
    return f'<div class="text">{sep.join(spans)}</div>'


def _img(path: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    name = html.escape(os.path.basename(path))
    return f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


_STYLE = """
body { font-family: sans-serif; max-width: 1000px; margin: 1em auto; color: #222; }
figure { margin: 1em 0; } img { max-width: 100%; }
.text { font-family: monospace; line-height: 1.8; border: 1px solid #ddd; padding: .5em; }
.tok { padding: 1px 0; } table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; font-size: 90%; }
"""


def _page(title: str, sections: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# Per task


def _summary_rows(e: X.Explanation, i: int) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("method", e.method),
        ("explained output index", int(e.target[i])),
        ("output", f"{e.output[i]:.5g}"),
        ("output at the baseline (zeros)", f"{e.baseline_output[i]:.5g}"),
    ]
    if e.step is not None:
        rows.insert(2, ("at step", int(e.step[i])))
    if e.delta is not None:
        gap = e.output[i] - e.baseline_output[i]
        rows.append(("completeness gap (sum - difference)", f"{e.delta[i]:.3g} of {gap:.4g}"))
    return rows


def _pick_index(index: int | None, n: int, default: int) -> int:
    i = default if index is None else index
    if not -n <= i < n:
        raise InvalidArgumentError(f"--index: expected an item in 0..{n - 1}, got {index}")
    return i % n


def _forecast(model, data, cfg, out, index, kw, target):
    x, _ = data.test
    i = _pick_index(index, len(x), len(x) - 1)
    h = cfg["data"]["horizon"]
    step = 0 if target is None else int(target)
    if not 0 <= step < h:
        raise InvalidArgumentError(f"--target: expected a forecast step in 0..{h - 1}, got {step}")
    e = explain_ensemble(model, x[i : i + 1], target=step, **kw)
    o = int(data.extra["o_test"][i])
    lb = x.shape[1]
    raw = np.asarray(data.extra["raw"])
    ti = data.extra["target"]
    series = raw if raw.ndim == 1 else raw[:, ti]
    history = series[o - lb + 1 : o + 1]
    future = series[o + 1 : o + 1 + h] if o + h < len(series) else None
    pred = model.predict(x[i : i + 1]).astype(np.float64)[0]
    if cfg["data"]["window_norm"] == "last":
        pred = pred + data.extra["last_test"][i]
    sc, t = data.extra["scaler"], ti
    forecast = pred * sc.b[t] + sc.a[t]
    if cfg["data"]["log"]:
        forecast = np.exp(forecast)
    times = data.extra.get("times")
    hist_times = None if times is None else list(times[o - lb + 1 : o + 1])
    scores = e.step_scores()[0]
    fig = _forecast_figure(
        os.path.join(out, "forecast.png"),
        history,
        hist_times,
        future,
        forecast,
        scores,
        step,
        f"forecast window {i} (origin {o}): which past steps drove step {step + 1}",
    )
    top = np.argsort(-np.abs(scores))[:3]
    lines = [f"window {i}: the most attributed lookback steps are {', '.join(map(str, top))}"]
    return [fig], [_table(_summary_rows(e, 0))], lines, model_for_trace(model), x[i : i + 1]


def model_for_trace(model):
    members = getattr(model, "members", None)
    return members[0] if members else model


def _numeric(model, data, cfg, out, index, kw, target, title):
    x, _y, lens = data.test[:3] if len(data.test) == 3 else (*data.test, None)
    i = _pick_index(index, len(x), 0)
    xi = x[i : i + 1]
    li = None if lens is None else np.asarray(lens[i : i + 1])
    e = explain_ensemble(model, xi, li, target=target, **kw)
    length = xi.shape[1] if li is None else int(li[0])
    xv = xi[0] if xi.ndim == 3 else xi[0][:, None]
    attr = e.attributions[0] if e.attributions.ndim == 3 else e.attributions[0][:, None]
    fig = _series_figure(os.path.join(out, "attribution.png"), xv, attr, length, title(i, e))
    sections = [_table(_summary_rows(e, 0))]
    if e.attention is not None:
        sections.append(
            "<h3>attention weights</h3>"
            + _highlight([str(s) for s in range(length)], e.attention[0][:length], " ")
        )
    top = np.argsort(-np.abs(e.step_scores()[0][:length]))[:3]
    lines = [f"item {i}: the most attributed steps are {', '.join(map(str, top))}"]
    return [fig], sections, lines, model_for_trace(model), (xi, li)


def _text(model, data, cfg, out, index, kw, target, classes):
    x, _y, lens = data.test
    i = _pick_index(index, len(x), 0)
    xi, li = x[i : i + 1], np.asarray(lens[i : i + 1])
    e = explain_ensemble(model, xi, li, target=target, **kw)
    vocab = data.state["vocab"]
    n = int(li[0])
    tokens = [vocab[t] if 0 < t < len(vocab) else "<unk>" for t in xi[0][:n]]
    scores = e.attributions[0][:n]
    label = classes[int(e.target[0])] if classes else int(e.target[0])
    fig = _top_tokens_figure(
        os.path.join(out, "tokens.png"), tokens, scores, f"text {i}: tokens for class {label!r}"
    )
    sep = " " if cfg["data"]["tokens"] == "word" else ""
    sections = [
        _table(_summary_rows(e, 0) + [("class", label)]),
        f"<h3>text {i}, tokens coloured by their attribution to {html.escape(str(label))}</h3>",
        _highlight(tokens, scores, sep),
    ]
    top = np.argsort(-np.abs(scores))[:5]
    lines = [f"text {i}: top tokens " + ", ".join(repr(tokens[k]) for k in top)]
    return [fig], sections, lines, model_for_trace(model), (xi, li)


def _charlm(model, data, cfg, out, index, kw, unit, length=160):
    ids = np.asarray(data.test)
    chars = data.state["chars"]
    start = _pick_index(index, max(1, len(ids) - 1), 0)
    seg = ids[start : start + length]
    if len(seg) < 2:
        raise InvalidArgumentError("--index: too close to the end of the text")
    text = "".join(chars[c] if c > 0 else "?" for c in seg)
    tr = X.trace(model, seg[None, :])
    top = max(lt.layer for lt in tr.layers)
    lt = tr[top, 0]
    h = lt.states[next(iter(lt.states))][0]
    # Default unit: the one that best follows the position in the line (Karpathy et al.).
    pos, p = np.zeros(len(text)), 0
    for k, c in enumerate(text):
        pos[k] = p
        p = 0 if c == "\n" else p + 1
    best = tr.correlated_units(pos[None, :], top=1)[0]
    if unit is None:
        unit, why = (
            best[2],
            f"the unit most correlated with the position in the line (r={best[3]:.2f})",
        )
        layer_trace = tr[best[0], best[1]]
        h = layer_trace.states[next(iter(layer_trace.states))][0]
    else:
        if not 0 <= unit < h.shape[1]:
            raise InvalidArgumentError(
                f"--unit: expected a unit in 0..{h.shape[1] - 1}, got {unit}"
            )
        why = f"unit {unit} of the top layer (--unit)"
    keep = "f" if "f" in lt.gates else ("z" if "z" in lt.gates else next(iter(lt.gates)))
    fig = _heatmap(
        os.path.join(out, "gates.png"),
        lt.gates[keep][0],
        text,
        f"layer {top} gate {keep!r} over the text (time x units)",
    )
    e = X.explain(model, seg[None, :], target=(len(seg) - 1, int(tr.output[0, -1].argmax())), **kw)
    nxt = chars[int(e.target[0])] if e.target[0] > 0 else "?"
    spans = list(text)
    sections = [
        f"<h3>text coloured by unit {unit}: {html.escape(why)}</h3>",
        _highlight(spans, h[:, unit], ""),
        f"<h3>attribution of the predicted next character {nxt!r} to the text before it</h3>",
        _highlight(spans, e.attributions[0], ""),
        _table(_summary_rows(e, 0)),
    ]
    span = tr.memory_span(keep if keep not in ("f", "z") else None)[(top, 0)]
    lines = [
        f"unit {unit}: {why}",
        (
            f"layer {top} memory span (mean 1/(1-{keep})): median {np.median(span):.1f} "
            f"steps, max {span.max():.1f}"
        ),
    ]
    return [fig], sections, lines, None, None


def _anomaly(model, data, cfg, out, index, kw, task, top=3):
    scores = task._scores(model, data, cfg)
    x, _ = data.test
    targets = np.asarray(data.extra["targets"])
    lb = x.shape[1]
    order = [int(s) for s in np.argsort(-np.nan_to_num(scores, nan=-np.inf))]
    picked: list[int] = []
    for s in order:
        if len(picked) == top:
            break
        if np.isfinite(scores[s]) and all(abs(s - p) > lb for p in picked):
            picked.append(s)
    if index is not None:
        picked = [picked[_pick_index(index, len(picked), 0)]]
    rows = [int(np.searchsorted(targets, s)) for s in picked]
    e = explain_ensemble(model, x[rows], **kw)
    values = np.asarray(data.extra["values"])
    figs, sections, lines = [], [], []
    for k, (s, r) in enumerate(zip(picked, rows)):
        path = os.path.join(out, f"anomaly_{k}.png")
        pred = model.predict(x[r : r + 1])[0, 0]
        plt = _plt()
        fig, axes = plt.subplots(2, 1, figsize=(9, 4.5), sharex=True, height_ratios=[3, 2])
        t0 = targets[r] - lb
        axes[0].plot(np.arange(lb + 1), values[t0 : t0 + lb + 1], color="black", lw=1)
        axes[0].scatter([lb], [values[targets[r]]], color="tab:red", zorder=3, label="actual")
        mean, std = data.state["mean"], data.state["std"]
        axes[0].scatter([lb], [pred * std + mean], color="tab:orange", zorder=3, label="predicted")
        axes[0].legend(fontsize=8)
        axes[0].set_title(f"window {k + 1}: score {scores[s]:.3g} at step {s}", fontsize=10)
        _bars(axes[1], np.arange(lb), e.step_scores()[k], "attribution of the prediction")
        figs.append(_save(fig, path))
        lines.append(f"top window {k + 1}: step {s}, score {scores[s]:.3g}")
    sections.append(_table([("windows explained", ", ".join(map(str, picked)))]))
    return figs, sections, lines, model_for_trace(model), x[rows[:1]]


def _trace_section(model, inputs, out) -> tuple[list[str], list[str]]:
    """Summaries of the recurrent layers on the explained input."""
    if model is None or inputs is None:
        return [], []
    x, lengths = inputs if isinstance(inputs, tuple) else (inputs, None)
    tr = X.trace(model, x, lengths)
    rows = []
    sat = tr.gate_saturation()
    for (layer, d, g), (lo, hi) in sat.items():
        rows.append(
            (f"layer {layer} dir {d} gate {g}", f"{100 * lo:.0f}% < 0.1, {100 * hi:.0f}% > 0.9")
        )
    try:
        for (layer, d), span in tr.memory_span().items():
            rows.append(
                (
                    f"layer {layer} dir {d} memory span",
                    f"median {np.median(span):.1f} steps, max {span.max():.1f}",
                )
            )
    except InvalidArgumentError:
        pass  # A custom cell without a known keep gate.
    return ["<h2>inside the recurrent layers</h2>", _table(rows)], []


def write_report(
    task: Any,
    model: Any,
    data: Any,
    cfg: dict,
    out: str,
    *,
    index: int | None = None,
    method: str = "integrated_gradients",
    steps: int = 50,
    target: int | None = None,
    unit: int | None = None,
    title: str = "",
) -> Report:
    """Figures into ``out`` and ``out/index.html`` for the run's task (see the module
    docstring)."""
    if isinstance(model, HierarchicalModel):
        raise InvalidArgumentError(
            "explain: the run's model is the hierarchical attention network (model.kind = "
            "'hierarchical'), which has no attribution report; expected a run of a flat model"
        )
    os.makedirs(out, exist_ok=True)
    kw = {"method": method, "steps": steps}
    name = task.name
    if name == "forecast":
        figs, sections, lines, m, inp = _forecast(model, data, cfg, out, index, kw, target)
    elif name == "charlm":
        figs, sections, lines, m, inp = _charlm(model, data, cfg, out, index, kw, unit)
    elif name == "anomaly":
        figs, sections, lines, m, inp = _anomaly(model, data, cfg, out, index, kw, task)
    elif name == "classify" and "vocab" in data.state:
        classes = data.state.get("classes", [])
        figs, sections, lines, m, inp = _text(model, data, cfg, out, index, kw, target, classes)
    else:
        classes = data.state.get("classes", []) if isinstance(data.state, dict) else []

        def title_of(i, e):
            t = int(e.target[0])
            what = f"class {classes[t]!r}" if classes else f"output {t}"
            return f"{name} item {i}: input channels coloured by attribution to {what}"

        figs, sections, lines, m, inp = _numeric(model, data, cfg, out, index, kw, target, title_of)
    more, _ = _trace_section(m, inp, out)
    page = _page(
        title or f"lstmrs explain: {name}",
        sections + more + ["<h2>figures</h2>"] + [_img(p) for p in figs],
    )
    path = os.path.join(out, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return Report(html=path, figures=figs, lines=lines)
