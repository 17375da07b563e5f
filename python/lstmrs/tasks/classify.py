"""``classify``: sequence and text classification, judged against a bag-of-words baseline.

Three inputs (``data.format = "auto"`` picks by file name and columns):

- ``npz``: arrays ``X`` (float ``[N, T, F]`` or ``[N, T]``, or integer token ids ``[N, T]``),
  ``y`` (labels) and optionally ``lengths``; ``X_test``/``y_test``(/``lengths_test``) give a
  fixed test set.
- ``csv`` (numeric sequences, one per row, UCR style): the label in ``data.label_column`` (by
  default the first column), the sequence in the other columns; empty trailing cells make
  sequences shorter.
- ``text`` (a CSV with ``data.text_column`` and ``data.label_column``): a word or character
  vocabulary built from the training split only (``data.min_freq``, ``data.max_vocab``; id 0
  stands for unknown tokens), texts truncated to ``data.max_len`` tokens (``data.keep``: the
  ``"first"`` or ``"last"`` ones) and fed through an embedding with their true lengths.
  ``model.kind = "hierarchical"`` reads the same tokens as sentences of words instead
  (:mod:`.classify_han`: the hierarchical attention network of Yang et al. 2016).

The test split is ``data.test_id_regex`` matched against ``data.id_column`` (for the movie
reviews: ids cv900-cv999 of each class, ``"^cv9"``) or else a stratified random
``data.test_fraction``; validation is a stratified ``data.val_fraction`` of the rest.

The summary has accuracy, macro precision / recall / F1 and the confusion matrix, beside a
multinomial logistic regression on TF-IDF bag-of-words features (text), or on per-feature
summary statistics (numeric sequences), fitted in NumPy with the L2 strength chosen on the
validation split.
"""

from __future__ import annotations

import csv
import math
import os
import re
import time
from collections import Counter
from typing import Any, ClassVar

import numpy as np

from .. import config as C
from .. import plots
from ..callbacks import EarlyStopping
from ..csv_series import is_number, parse_number, read_rows
from ..datasets import load_arrays
from ..ensemble import Ensemble
from ..hierarchical_model import HierarchicalModel
from ..metrics import confusion_matrix, precision_recall_f1
from ..models import Loss, Model
from ..ts_format import find_split_pair, read_ts
from . import classify_han as han
from .base import Prepared, Task, compile_model, model_kwargs, plateau_callback
from .baselines import Dense, LogisticRegression, choose_l2, dtw_1nn, summary_features, tfidf
from .series_prep import SeriesPrep

__all__ = ["ClassifyTask", "LogisticRegression", "tokenize"]  # LogisticRegression: .baselines

_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]", re.UNICODE)


def tokenize(text: str, kind: str, lowercase: bool) -> list[str]:
    if lowercase:
        text = text.lower()
    return _WORD.findall(text) if kind == "word" else list(text)


# --------------------------------------------------------------------------------------------
# Reading


def _read_csv(path: str) -> tuple[list[str] | None, list[list[str]]]:
    rows = read_rows(path)
    if not rows:
        raise C.ConfigError(f"config: data.path = {path!r}: the file is empty")
    return None, rows


def _column(header: list[str], name: str, key: str, default: int | None = None) -> int:
    if not name:
        if default is None:
            raise C.ConfigError(f'config: {key} = "" is not allowed: expected a column name')
        return default
    if name in header:
        return header.index(name)
    if name.isdigit() and int(name) < len(header):
        return int(name)
    raise C.ConfigError(
        f"config: {key} = {name!r} is not allowed: expected one of the columns {', '.join(header)}"
    )


class ClassifyTask(Task):
    name = "classify"
    description = (
        "Sequence classification (.npz or numeric CSV) and text classification (CSV of text "
        "and label); accuracy, precision, recall, F1 and a bag-of-words baseline"
    )
    task_defaults: ClassVar[dict[str, Any]] = {
        "data": {
            "path": "",
            "test_path": "",
            "format": "auto",
            "text_column": "",
            "label_column": "",
            "id_column": "",
            "test_id_regex": "",
            "test_fraction": 0.2,
            "val_fraction": 0.1,
            "normalize": "auto",
            "max_steps": 32,
            "patch": 0,
            "tokens": "word",
            "lowercase": True,
            "min_freq": 2,
            "max_vocab": 20000,
            "max_len": 400,
            "keep": "last",
            "max_sentences": 60,
            "max_words": 50,
        },
        "model": {
            "kind": "flat",
            "attention_units": 0,
            "hidden_size": 64,
            "embedding_dim": 64,
            "pooling": "auto",
            "bidirectional": "auto",
        },
        "train": {
            "lr": 0.003,
            "epochs": "auto",
            "batch_size": "auto",
            "patience": "auto",
            "lr_plateau": 0.5,
            "ensemble": "auto",
            "class_weight": "auto",
        },
    }
    task_rules: ClassVar[dict[str, C.Rule]] = {
        "data.path": C.Path(),
        "data.test_path": C.Path(),
        "data.format": C.Choice("auto", "npz", "csv", "ts", "text"),
        "data.test_fraction": C.Float(lo=0.0, hi=0.9, lo_open=True),
        "data.val_fraction": C.Float(lo=0.0, hi=0.5),
        "data.normalize": C.Choice("auto", "global", "series", "none"),
        "data.max_steps": C.Int(lo=1),
        "data.patch": C.Int(lo=0),
        "data.tokens": C.Choice("word", "char"),
        "data.min_freq": C.Int(lo=1),
        "data.max_vocab": C.Int(lo=1),
        "data.max_len": C.Int(lo=1),
        "data.keep": C.Choice("first", "last"),
        # model.kind = "hierarchical" (texts only, .classify_han): sentences and words kept.
        "data.max_sentences": C.Int(lo=1),
        "data.max_words": C.Int(lo=1),
        # "flat": an LSTM over the tokens; "hierarchical": words -> sentences -> document,
        # attention pooling at each level (Yang et al. 2016).
        "model.kind": C.Choice("flat", "hierarchical"),
        # Attention units of the hierarchical model; 0 = twice model.hidden_size.
        "model.attention_units": C.Int(lo=0),
        "model.embedding_dim": C.Int(lo=1),
        "model.pooling": C.Choice("auto", "last", "mean", "attention"),
        "model.bidirectional": C.OneOf(C.Choice("auto"), C.Bool()),
        "train.epochs": C.OneOf(C.Choice("auto"), C.Int(lo=0)),
        "train.batch_size": C.OneOf(C.Choice("auto"), C.Int(lo=1)),
        "train.patience": C.OneOf(C.Choice("auto"), C.Int(lo=0)),
        "train.ensemble": C.OneOf(C.Choice("auto"), C.Int(lo=1)),
        "train.class_weight": C.Choice("auto", "none", "balanced"),
    }
    metrics = ("accuracy",)

    def check(self, config):
        d = config["data"]
        if not d["path"]:
            raise C.ConfigError(
                'config: data.path = "" is not allowed: expected an .npz file, a CSV of numeric '
                "sequences or a CSV of texts and labels (--set data.path=FILE)"
            )
        if d["test_id_regex"]:
            try:
                re.compile(d["test_id_regex"])
            except re.error as e:
                raise C.ConfigError(
                    f"config: data.test_id_regex = {d['test_id_regex']!r} is not allowed: "
                    f"expected a regular expression ({e})"
                ) from None
        if config["model"]["kind"] == "hierarchical":
            han.check(config)

    # Data ------------------------------------------------------------------------------------

    def _format(self, d, path: str | None = None) -> str:
        path = path or d["path"]
        if d["format"] != "auto":
            return d["format"]
        if path.endswith(".npz"):
            return "npz"
        if path.lower().endswith(".ts"):
            return "ts"
        if d["text_column"]:
            return "text"
        _, rows = _read_csv(path)
        return "text" if "text" in [h.strip() for h in rows[0]] else "csv"

    def _test_path(self, d) -> str:
        """``data.test_path``, else the archive's ``*_TEST`` file beside a ``*_TRAIN`` path."""
        if d["test_path"]:
            return d["test_path"]
        return find_split_pair(d["path"]) or ""

    def _raw(self, d, fmt, path: str | None = None):
        """``{"seqs" | "texts": items, "labels": [...], "ids": [...] | None}``; ``.npz`` files
        give their arrays (``X``, ``y``, optional ``lengths``, ``X_test``, ...)."""
        path = path or d["path"]
        if fmt == "npz":
            z = load_arrays(path, "data.path")
            for k in ("X", "y"):
                if k not in z:
                    raise C.ConfigError(
                        f"config: data.path = {path!r}: the .npz has no array {k!r} "
                        f"(it has {sorted(z)})"
                    )
            return z
        if fmt == "ts":
            ts = read_ts(path)
            if ts.labels is None:
                raise C.ConfigError(
                    f"config: data.path = {path!r}: the .ts file has no class labels "
                    "(@classLabel false)"
                )
            return {"seqs": ts.series, "labels": ts.labels, "ids": None, "filled": ts.filled}
        _, rows = _read_csv(path)
        header = [h.strip() for h in rows[0]]
        if fmt == "text":
            tcol = _column(
                header, d["text_column"] or ("text" if "text" in header else ""), "data.text_column"
            )
            lcol = _column(
                header,
                d["label_column"] or ("label" if "label" in header else ""),
                "data.label_column",
            )
            icol = (
                _column(header, d["id_column"], "data.id_column", -1)
                if d["id_column"] or d["test_id_regex"]
                else -1
            )
            body = rows[1:]
            texts = [r[tcol] if tcol < len(r) else "" for r in body]
            labels = [r[lcol].strip() if lcol < len(r) else "" for r in body]
            ids = [r[icol] for r in body] if icol >= 0 else None
            return {"texts": texts, "labels": labels, "ids": ids}
        has_header = not all(is_number(c) for c in rows[0][1:] if c.strip())
        header = (
            [h.strip() for h in rows[0]] if has_header else [str(i) for i in range(len(rows[0]))]
        )
        body = rows[1:] if has_header else rows
        lcol = _column(header, d["label_column"], "data.label_column", 0)
        icol = _column(header, d["id_column"], "data.id_column", -1) if d["id_column"] else -1
        seqs, labels, ids = [], [], []
        for i, r in enumerate(body):
            vals = [c for j, c in enumerate(r) if j not in (lcol, icol)]
            while vals and (not vals[-1].strip() or vals[-1].strip().lower() == "nan"):
                vals.pop()
            try:
                seqs.append(np.array([parse_number(v) for v in vals]))
            except ValueError:
                raise C.ConfigError(
                    f"data.path: {os.path.basename(path)} row {i + 1 + has_header}: expected "
                    "numbers after the label"
                ) from None
            labels.append(r[lcol].strip())
            ids.append(r[icol] if icol >= 0 else str(i))
        if any(len(s) == 0 for s in seqs):
            raise C.ConfigError("data.path: a row holds a label but no values")
        return {"seqs": seqs, "labels": labels, "ids": ids if icol >= 0 else None}

    def _items(self, d, fmt, path: str | None = None) -> dict[str, Any]:
        """:meth:`_raw` in one shape for every format: ``seqs``/``texts``, ``labels`` (text),
        ``ids``, ``lengths`` (``None`` or given), plus a ``test`` part from an ``.npz`` file's
        ``X_test``."""
        raw = self._raw(d, fmt, path)
        if fmt != "npz":
            return {**raw, "lengths": None}
        out: dict[str, Any] = {
            "seqs": list(raw["X"]),
            "labels": [str(v) for v in np.asarray(raw["y"]).reshape(-1).tolist()],
            "ids": None,
            "lengths": raw.get("lengths"),
        }
        if "X_test" in raw and "y_test" in raw:
            out["test"] = {
                "seqs": list(raw["X_test"]),
                "labels": [str(v) for v in np.asarray(raw["y_test"]).reshape(-1).tolist()],
                "ids": None,
                "lengths": raw.get("lengths_test"),
            }
        return out

    def _splits(self, config, n, labels_idx, ids, n_fixed_test, whole):
        d, rng = config["data"], np.random.default_rng(config["seed"])
        if whole:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.arange(n)
        if n_fixed_test:
            test = np.arange(n - n_fixed_test, n)
            rest = np.arange(n - n_fixed_test)
        elif d["test_id_regex"]:
            if ids is None:
                raise C.ConfigError(
                    "config: data.test_id_regex needs data.id_column (a column of ids)"
                )
            rx = re.compile(d["test_id_regex"])
            is_test = np.array([bool(rx.search(str(i))) for i in ids])
            if not is_test.any() or is_test.all():
                raise C.ConfigError(
                    f"config: data.test_id_regex = {d['test_id_regex']!r} is not allowed for this "
                    f"data: it matches {int(is_test.sum())} of {n} ids (expected some, not all)"
                )
            test = np.flatnonzero(is_test)
            rest = np.flatnonzero(~is_test)
        else:
            test, rest = _stratified(labels_idx, np.arange(n), d["test_fraction"], rng)
        val, train = _stratified(labels_idx, rest, d["val_fraction"], rng)
        return np.sort(train), np.sort(val), np.sort(test)

    def prepare(self, config, state=None, whole=False):
        d = config["data"]
        fmt = state["format"] if state else self._format(d)
        items = self._items(d, fmt)
        test_items = items.pop("test", None)
        test_path = "" if whole else self._test_path(d)
        if test_path:
            test_items = self._items(d, self._format(d, test_path), test_path)
            test_items.pop("test", None)
        n_fixed = 0
        if test_items is not None and not whole:
            # One list of items, the fixed test set last.
            key = "texts" if fmt == "text" else "seqs"
            n_fixed = len(test_items["labels"])
            items[key] = list(items[key]) + list(test_items[key])
            items["labels"] = list(items["labels"]) + list(test_items["labels"])
            if items["ids"] is not None:
                items["ids"] = list(items["ids"]) + list(test_items["ids"] or [""] * n_fixed)
            if items["lengths"] is not None or test_items["lengths"] is not None:
                lens = [items["lengths"], test_items["lengths"]]
                given = [
                    np.asarray(g) if g is not None else np.array([len(s) for s in part])
                    for g, part in zip(lens, (items[key][:-n_fixed], test_items[key]))
                ]
                items["lengths"] = np.concatenate(given)
        labels, ids = items["labels"], items["ids"]
        n = len(labels)
        classes = state["classes"] if state else sorted(set(labels[: n - n_fixed]), key=_label_key)
        cls_index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({lab for lab in labels if lab not in cls_index})
        if unknown:
            raise C.ConfigError(
                f"data: labels {unknown[:5]} are not among the run's classes {classes}"
            )
        if len(classes) < 2 and not whole:
            raise C.ConfigError(f"data: expected at least 2 classes, found {classes}")
        y = np.array([cls_index[lab] for lab in labels], dtype=np.int64)
        train, val, test = self._splits(config, n, y, ids, n_fixed, whole)
        new_state: dict[str, Any] = {"format": fmt, "classes": classes}
        extra: dict[str, Any] = {"classes": classes, "ids": ids, "test_index": test}
        name = os.path.basename(d["path"])
        hierarchical = config["model"]["kind"] == "hierarchical"
        if hierarchical and fmt != "text":
            raise han.not_text(fmt)
        if fmt == "text":
            toks = [tokenize(t, d["tokens"], d["lowercase"]) for t in items["texts"]]
            if state:
                vocab = {w: i for i, w in enumerate(state["vocab"])}
            else:
                vocab = _build_vocab([toks[i] for i in train], d["min_freq"], d["max_vocab"])
            new_state["vocab"] = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
            if hierarchical:  # ids [N, S, W], word counts [N, S] where the flat model has lengths
                seqs, lens = han.encode(toks, vocab, d)
            else:
                seqs, lens = _encode(toks, vocab, d["max_len"], d["keep"])
            split = lambda idx: (seqs[idx], y[idx], lens[idx]) if idx.size else None
            extra["tokens"] = toks
            extra["vocab"] = vocab
            info = [
                (
                    f"data: {name}, {n} texts in {len(classes)} classes "
                    f"({', '.join(classes)}); {d['tokens']} vocabulary of {len(vocab) - 1} from the "
                    f"training split (+1 for unknown), texts cut to {d['max_len']} tokens "
                    f"(median length {int(np.median([len(t) for t in toks]))})"
                ),
            ]
            if hierarchical:
                info[0] = info[0].split(", texts cut to")[0] + (
                    f", texts cut into sentences: at most {d['max_sentences']} of at most "
                    f"{d['max_words']} words (median {int(np.median((lens > 0).sum(axis=1)))} "
                    f"sentences, {int(np.median([len(t) for t in toks]))} tokens)"
                )
        else:
            x, lens = _pad(items["seqs"], items["lengths"])
            info = [
                (
                    f"data: {name}, {n} sequences of {int(lens.min())}-{int(lens.max())} "
                    f"steps x {x.shape[2] if x.ndim == 3 else 1} features in {len(classes)} classes"
                    + (
                        f"; {items['filled']} missing values interpolated"
                        if items.get("filled")
                        else ""
                    )
                )
            ]
            extra["x"] = x
            extra["lengths"] = lens
            if x.dtype.kind == "f":
                fit_idx = np.concatenate([train, val])
                if state and "prep" in state:
                    prep = SeriesPrep.from_state(state["prep"])
                else:
                    prep = SeriesPrep.fit(
                        x[fit_idx],
                        lens[fit_idx],
                        y[fit_idx],
                        normalize=d["normalize"],
                        max_steps=d["max_steps"],
                        patch=d["patch"],
                    )
                new_state["prep"] = prep.state()
                info.append("input: " + prep.describe())
                xm, lm = prep.transform(x, lens)
            else:
                xm, lm = x, lens
            split = lambda idx: (xm[idx], y[idx], lm[idx]) if idx.size else None
        where = (
            f" (test = {os.path.basename(test_path) if test_path else 'X_test of the file'})"
            if n_fixed
            else (f" (test = ids matching {d['test_id_regex']!r})" if d["test_id_regex"] else "")
        )
        info.append(f"splits: {len(train)} train / {len(val)} validation / {len(test)} test{where}")
        extra.update(train_index=train, val_index=val, y=y)
        return Prepared(
            train=split(train),
            val=split(val),
            test=split(test),
            state=new_state,
            info=info,
            extra=extra,
        )

    # Choices made for the data ---------------------------------------------------------------

    def resolve(self, config, data):
        """``"auto"`` values: numeric sequences get a bidirectional LSTM read at its last step,
        small batches, epochs and patience sized in optimizer steps (long for small data), and
        (under 1,000 training series) an ensemble of fold models; texts keep a one-directional
        LSTM with mean pooling."""
        m, t = config["model"], config["train"]
        text = "vocab" in data.state
        n = len(data.extra.get("train_index", ())) + len(data.extra.get("val_index", ()))
        chosen = []

        def pick(section, key, value):
            if section[key] == "auto":
                section[key] = value
                chosen.append(f"{key} {value}")

        if m["kind"] == "flat":  # the hierarchical model's LSTMs and pooling are fixed
            pick(m, "bidirectional", not text)
            pick(m, "pooling", "mean" if text else "last")
        pick(t, "batch_size", 32 if text else 16)
        # Budgets in optimizer steps, so that a small data set (a few steps per epoch) gets as
        # many updates, and as much patience, as a large one: about 300 steps without a better
        # val_loss before stopping, at most about 6,000 steps in all.
        steps = max(1, math.ceil(n / t["batch_size"]))
        pick(t, "epochs", 30 if text else int(np.clip(math.ceil(6000 / steps), 30, 400)))
        pick(t, "patience", 5 if text else int(np.clip(math.ceil(300 / steps), 10, 50)))
        members = 1 if text or n >= 1000 or data.val is None else 10
        pick(t, "ensemble", members)
        counts = np.bincount(data.extra["y"][data.extra["train_index"]], minlength=2)
        imbalance = counts.max() / max(counts.min(), 1)
        pick(t, "class_weight", "balanced" if imbalance >= 1.5 else "none")
        return [f"auto: {', '.join(chosen)}"] if chosen else []

    def build_model(self, config, data):
        m, t = config["model"], config["train"]
        x = data.train[0]
        kw = model_kwargs(config)
        k = len(data.state["classes"])
        loss: Any = "cross_entropy"
        if t["class_weight"] == "balanced":
            counts = np.bincount(data.train[1], minlength=k).astype(float)
            weights = np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0.0)
            loss = Loss("cross_entropy", class_weights=weights)
        if m["kind"] == "hierarchical":
            weights = loss.class_weights if isinstance(loss, Loss) else None
            return han.build(config, len(data.state["vocab"]), k, weights)

        def one(seed: int) -> Model:
            if x.dtype.kind in "iu":
                vocab = len(data.state["vocab"]) if "vocab" in data.state else int(x.max()) + 1
                data.state.setdefault("vocab_size", vocab)
                return Model(
                    vocab_size=data.state["vocab_size"],
                    embedding_dim=m["embedding_dim"],
                    pooling=m["pooling"],
                    output_size=k,
                    loss=loss,
                    **{**kw, "seed": seed},
                )
            return Model(
                input_size=x.shape[2],
                pooling=m["pooling"],
                output_size=k,
                loss=loss,
                **{**kw, "seed": seed},
            )

        members = t["ensemble"]
        if members == 1:
            return one(config["seed"])
        return Ensemble([one(config["seed"] + 1000 * i) for i in range(members)])

    def compile(self, model, config):
        if isinstance(model, HierarchicalModel):
            han.compile_han(model, config)
        else:
            compile_model(model, config, self.metrics)

    def own_checkpoint(self, checkpoint_dir):
        # The runner resumes `Model` checkpoints; the hierarchical model resumes from its own.
        return han.own_checkpoint(checkpoint_dir)

    def train(self, model, data, config, **fit_kwargs):
        t = config["train"]
        ck = fit_kwargs.get("checkpoint_dir")
        if isinstance(model, HierarchicalModel) and ck and self.own_checkpoint(ck) is not None:
            fit_kwargs["resume"] = True
        if not isinstance(model, Ensemble):
            x, y, lens = data.train
            return model.fit(
                x,
                y,
                lengths=lens,
                validation_data=data.val,
                epochs=t["epochs"],
                batch_size=t["batch_size"],
                **fit_kwargs,
            )
        # Every member validates on its own stratified fold of the training and validation
        # splits together; member 0 reports to the runner's callbacks (log, early stopping).
        ex = data.extra
        pool = np.concatenate([ex["train_index"], ex["val_index"]])
        xs, ys, ls = (np.concatenate([a, b]) for a, b in zip(data.train, data.val))
        masks = _fold_masks(ex["y"][pool], len(model), config["seed"])
        runner = list(fit_kwargs.pop("callbacks", ()))
        # Members resume from their own checkpoints (Ensemble.fit), not the runner's flag.
        fit_kwargs.pop("resume", None)

        def callbacks_for(k):
            if k == 0:
                return runner
            cbs = [EarlyStopping("val_loss", patience=t["patience"], restore_best_weights=True)]
            if t["lr_plateau"] > 0:
                cbs.append(plateau_callback(t))
            return cbs

        histories = model.fit(
            xs,
            ys,
            lengths=ls,
            masks=masks,
            callbacks_for=callbacks_for,
            time_limit=t["time_limit"],
            epochs=t["epochs"],
            batch_size=t["batch_size"],
            **fit_kwargs,
        )
        ex["cv"] = _out_of_fold(model, xs, ys, ls, masks)
        return histories

    # Evaluation ------------------------------------------------------------------------------

    def _baselines(self, data, config) -> list[tuple[str, str, np.ndarray, dict]]:
        """``(key, label, test predictions, extra summary fields)`` of each baseline."""
        ex = data.extra
        tr, va, te = ex.get("train_index"), ex.get("val_index"), ex.get("test_index")
        if tr is None or not len(tr):
            return []
        y = ex["y"]
        k = len(ex["classes"])
        out = []
        if "tokens" in ex:
            docs = ex["tokens"]
            d = config["data"]
            vocab = _build_vocab([docs[i] for i in tr], d["min_freq"], 50000)
            vocab = {w: i - 1 for w, i in vocab.items() if i > 0}  # no unknown feature
            df = np.zeros(len(vocab))
            for i in tr:
                for t in set(docs[i]):
                    j = vocab.get(t)
                    if j is not None:
                        df[j] += 1
            idf = np.log((1 + len(tr)) / (1 + df)) + 1
            feats = lambda idx: tfidf([docs[i] for i in idx], vocab, idf)
            what, label = f"TF-IDF bag of {len(vocab)} words", "bag-of-words LR"
        else:
            f = summary_features(ex["x"], ex["lengths"])
            mu, sd = f[tr].mean(axis=0), f[tr].std(axis=0) + 1e-12
            feats = lambda idx: Dense((f[idx] - mu) / sd)
            what, label = "per-feature mean/std/min/max/first/last", "summary-stats LR"
        xtr = feats(tr)
        xva = feats(va) if len(va) else None
        l2, lr_model = choose_l2(xtr, y[tr], xva, y[va] if len(va) else None, k)
        out.append(
            (
                "baseline_",
                label,
                lr_model.predict(feats(te)),
                {"baseline": f"logistic regression on {what} (L2 {l2:g})"},
            )
        )
        if "tokens" not in ex and ex["x"].dtype.kind == "f":
            # 1-NN DTW on the series as given (the archive's convention), trained on the
            # training and validation splits, its window chosen by leave-one-out there.
            pool = np.concatenate([tr, va])
            start = time.perf_counter()
            pred, window, loo = dtw_1nn(
                ex["x"][pool], y[pool], ex["x"][te], ex["lengths"][pool], ex["lengths"][te]
            )
            out.append(
                (
                    "dtw_",
                    f"1-NN DTW (w={window:.0%})",
                    pred,
                    {
                        "dtw_window": window,
                        "dtw_loo_accuracy": loo,
                        "dtw_seconds": round(time.perf_counter() - start, 2),
                    },
                )
            )
        return out

    def evaluate(self, model, data, config):
        x, y, lens = data.test
        classes = data.state["classes"]
        k = len(classes)
        proba = model.predict(x, lengths=lens, batch_size=256, output="probabilities")
        pred = proba.argmax(axis=1)
        out = _scores(y, pred, k, "")
        rows = []
        for prefix, label, base_pred, fields in self._baselines(data, config):
            out.update(_scores(y, base_pred, k, prefix))
            out.update(fields)
            rows.append([label, prefix])
        out["baseline_rows"] = rows
        out["test_size"] = len(y)
        out["classes"] = classes
        out["cell"] = model.cell
        out["model_kind"] = config["model"]["kind"]
        if isinstance(model, Ensemble):
            out["ensemble"] = len(model)
            out.update(data.extra.get("cv", {}))
        return out

    def format_summary(self, s):
        lines = [
            f"test set: {s['test_size']} items, classes {', '.join(s['classes'])}",
            f"{'':<22}{'accuracy':>10}{'precision':>11}{'recall':>9}{'F1':>9}",
        ]
        what = f"{s.get('cell', 'lstm').upper()} model"
        if s.get("model_kind") == "hierarchical":
            what = "hierarchical BiLSTM"
        if s.get("ensemble"):
            what = f"{s['cell'].upper()} x{s['ensemble']} ensemble"
        rows = [(what, "")]
        for label, prefix in s.get("baseline_rows", []):
            rows.append((label, prefix))
        for label, p in rows:
            lines.append(
                f"{label:<22}{s[p + 'accuracy']:>10.4f}{s[p + 'precision']:>11.4f}"
                f"{s[p + 'recall']:>9.4f}{s[p + 'f1']:>9.4f}"
            )
        if "baseline" in s:
            lines.append(f"baseline: {s['baseline']}; precision/recall/F1 are macro averages")
        if "dtw_window" in s:
            lines.append(
                f"1-NN DTW: Sakoe-Chiba window {s['dtw_window']:.0%} of the length, chosen by "
                f"leave-one-out on the training data (accuracy {s['dtw_loo_accuracy']:.4f}); "
                f"{s['dtw_seconds']:.1f}s"
            )
        return "\n".join(lines)

    def plot(self, model, data, summary, config, out_dir, records):
        title = f"Test confusion matrix\nmodel accuracy {summary['accuracy']:.3f}"
        for label, prefix in summary.get("baseline_rows", []):
            title += f", {label} {summary[prefix + 'accuracy']:.3f}"
        p = plots.confusion_matrix_plot(
            np.asarray(summary["confusion_matrix"]),
            summary["classes"],
            os.path.join(out_dir, "confusion_matrix.png"),
            title,
        )
        return [p] if p else []

    # Prediction ------------------------------------------------------------------------------

    def predict_file(self, model, config, state, input_path, output_path):
        d = dict(config["data"], path=input_path)
        classes = state["classes"]
        fmt = "npz" if input_path.endswith(".npz") else state["format"]
        ids: list[str] | None = None
        if fmt == "text":
            _, rows = _read_csv(input_path)
            header = [h.strip() for h in rows[0]]
            tname = d["text_column"] or "text"
            if tname not in header:
                raise C.ConfigError(
                    f"--input: expected a CSV with a {tname!r} column (columns: {header})"
                )
            tcol = header.index(tname)
            if d["id_column"] in header:
                ids = [r[header.index(d["id_column"])] for r in rows[1:]]
            vocab = {w: i for i, w in enumerate(state["vocab"])}
            toks = [tokenize(r[tcol], d["tokens"], d["lowercase"]) for r in rows[1:]]
            if config["model"]["kind"] == "hierarchical":
                x, lens = han.encode(toks, vocab, d)
            else:
                x, lens = _encode(toks, vocab, d["max_len"], d["keep"])
        elif fmt == "npz":
            z = load_arrays(input_path, "--input")
            if "X" not in z:
                raise C.ConfigError(f"--input: {input_path!r} has no array 'X'")
            x, lens = _pad(list(z["X"]), z.get("lengths", None))
        elif input_path.lower().endswith(".ts"):
            x, lens = _pad(read_ts(input_path).series, None)
        else:
            raw = self._raw(d, "csv")
            x, lens = _pad(raw["seqs"], None)
        if "prep" in state:
            x, lens = SeriesPrep.from_state(state["prep"]).transform(x, lens)
        proba = model.predict(x, lengths=lens, batch_size=256, output="probabilities")
        with open(output_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", *[f"p_{c}" for c in classes]])
            for i, p in enumerate(proba):
                w.writerow(
                    [ids[i] if ids else i, classes[int(p.argmax())], *[f"{v:.5f}" for v in p]]
                )
        return f"{len(proba)} predictions"


# --------------------------------------------------------------------------------------------
# Helpers


def _label_key(label: str):
    # Numeric labels sort as numbers (2 before 10), others as text.
    return (0, parse_number(label), "") if is_number(label) else (1, 0.0, label)


def _stratified(
    y: np.ndarray, idx: np.ndarray, fraction: float, rng
) -> tuple[np.ndarray, np.ndarray]:
    """``(picked, rest)``: about ``fraction`` of ``idx`` from every class."""
    if fraction <= 0 or len(idx) == 0:
        return np.zeros(0, np.int64), idx
    picked = []
    for c in np.unique(y[idx]):
        members = idx[y[idx] == c]
        members = members[rng.permutation(len(members))]
        k = round(len(members) * fraction)
        if len(members) > 1:
            k = min(max(k, 1), len(members) - 1)
        else:
            k = 0
        picked.append(members[:k])
    picked_arr = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    rest = np.setdiff1d(idx, picked_arr)
    return picked_arr, rest


def _out_of_fold(ens: Ensemble, x, y, lengths, masks) -> dict[str, float]:
    """Cross-validated accuracy and loss of an ensemble's members, each on its own validation
    fold: an estimate over every training item instead of one member's small fold."""
    hits, losses = [], []
    for member, m in zip(ens.members, masks):
        p = member.predict(x[m], lengths=lengths[m], output="probabilities")
        hits.append(p.argmax(axis=1) == y[m])
        losses.append(-np.log(np.maximum(p[np.arange(len(p)), y[m]], 1e-12)))
    return {
        "cv_accuracy": float(np.concatenate(hits).mean()),
        "cv_loss": float(np.concatenate(losses).mean()),
    }


def _fold_masks(y: np.ndarray, members: int, seed: int) -> list[np.ndarray]:
    """Validation masks of ``members`` models: stratified folds (as many as the smallest class
    allows, at most 5, so no fold misses a class it could hold), repeated with new shuffles
    until every member has one."""
    smallest = int(np.bincount(y)[np.unique(y)].min())
    k = max(2, min(5, smallest))
    masks = []
    rng = np.random.default_rng(seed)
    while len(masks) < members:
        fold = np.zeros(len(y), np.int64)
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            fold[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % k
        masks += [fold == j for j in range(k)]
    return masks[:members]


def _build_vocab(docs: list[list[str]], min_freq: int, max_vocab: int) -> dict[str, int]:
    """Token -> id, ids from 1 by falling frequency (ties by token); 0 is the unknown token."""
    counts = Counter(t for doc in docs for t in doc)
    kept = sorted(
        ((c, t) for t, c in counts.items() if c >= min_freq), key=lambda ct: (-ct[0], ct[1])
    )
    vocab = {"<unk>": 0}
    for _, t in kept[:max_vocab]:
        vocab[t] = len(vocab)
    return vocab


def _encode(docs, vocab, max_len: int, keep: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[N, T]`` (padded with 0) and lengths (at least 1: an empty text is one
    unknown token)."""
    lens = np.array([min(max(len(t), 1), max_len) for t in docs], dtype=np.int64)
    x = np.zeros((len(docs), int(lens.max()) if len(docs) else 1), dtype=np.int64)
    for i, toks in enumerate(docs):
        part = toks[:max_len] if keep == "first" else toks[-max_len:]
        x[i, : len(part)] = [vocab.get(t, 0) for t in part]
    return x, lens


def _pad(seqs: list[np.ndarray], lengths) -> tuple[np.ndarray, np.ndarray]:
    """Float sequences padded to ``[N, T, F]`` (or int tokens ``[N, T]``) and their lengths."""
    arrs = [np.asarray(s) for s in seqs]
    tokens = all(a.dtype.kind in "iu" for a in arrs)
    if lengths is not None:
        lens = np.asarray(lengths, dtype=np.int64)
    else:
        lens = np.array([a.shape[0] for a in arrs], dtype=np.int64)
    t = int(lens.max())
    if tokens:
        x = np.zeros((len(arrs), t), dtype=np.int64)
    else:
        f = 1 if arrs[0].ndim == 1 else arrs[0].shape[1]
        x = np.zeros((len(arrs), t, f), dtype=np.float32)
    for i, a in enumerate(arrs):
        m = int(lens[i])
        x[i, :m] = a[:m] if tokens else a[:m].reshape(m, -1)
    return x, lens


def _scores(y: np.ndarray, pred: np.ndarray, k: int, prefix: str) -> dict[str, Any]:
    cm = confusion_matrix(y, pred, k)
    p, r, f = precision_recall_f1(cm, "macro")
    out = {
        f"{prefix}accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else math.nan,
        f"{prefix}precision": float(p),
        f"{prefix}recall": float(r),
        f"{prefix}f1": float(f),
    }
    if not prefix:
        out["confusion_matrix"] = np.asarray(cm).tolist()
    return out
