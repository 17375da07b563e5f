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
from collections import Counter
from typing import Any, ClassVar

import numpy as np

from .. import config as C
from .. import plots
from ..datasets import load_arrays
from ..metrics import confusion_matrix, precision_recall_f1
from . import Prepared, Task, model_kwargs

__all__ = ["ClassifyTask", "LogisticRegression", "tokenize"]

_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]", re.UNICODE)


def tokenize(text: str, kind: str, lowercase: bool) -> list[str]:
    if lowercase:
        text = text.lower()
    return _WORD.findall(text) if kind == "word" else list(text)


# --------------------------------------------------------------------------------------------
# Logistic regression in NumPy (the baseline)


class _Sparse:
    """Rows of (feature index, value) pairs: enough of a CSR matrix for ``X @ W`` and
    ``X.T @ G``. SciPy's sparse matrices do the products when SciPy is installed (about 20x
    faster); NumPy's ``bincount`` otherwise."""

    def __init__(self, rows: list[dict[int, float]], n_features: int) -> None:
        self.n, self.d = len(rows), n_features
        self.row = np.repeat(np.arange(self.n), [len(r) for r in rows])
        self.col = np.fromiter((k for r in rows for k in r), dtype=np.int64, count=self.row.size)
        self.val = np.fromiter((v for r in rows for v in r.values()), float, count=self.row.size)
        self._csr = None
        try:
            from scipy import sparse
        except ImportError:
            return
        self._csr = sparse.csr_matrix((self.val, (self.row, self.col)), shape=(self.n, self.d))
        self._csr_t = self._csr.T.tocsr()

    def dot(self, w: np.ndarray) -> np.ndarray:
        if self._csr is not None:
            return np.asarray(self._csr @ w)
        prod = self.val[:, None] * w[self.col]
        out = np.empty((self.n, w.shape[1]))
        for k in range(w.shape[1]):
            out[:, k] = np.bincount(self.row, weights=prod[:, k], minlength=self.n)
        return out

    def tdot(self, g: np.ndarray) -> np.ndarray:
        if self._csr is not None:
            return np.asarray(self._csr_t @ g)
        prod = self.val[:, None] * g[self.row]
        out = np.empty((self.d, g.shape[1]))
        for k in range(g.shape[1]):
            out[:, k] = np.bincount(self.col, weights=prod[:, k], minlength=self.d)
        return out


class _Dense:
    def __init__(self, x: np.ndarray) -> None:
        self.x = np.asarray(x, float)
        self.n, self.d = self.x.shape

    def dot(self, w):
        return self.x @ w

    def tdot(self, g):
        return self.x.T @ g


class LogisticRegression:
    """Multinomial logistic regression with an L2 penalty ``l2 / 2 * |W|^2`` on the mean
    cross-entropy, fitted by Nesterov-accelerated gradient descent (a convex problem), with the
    step set from the largest eigenvalue of ``X^T X / n`` (power iteration)."""

    def __init__(self, l2: float = 1e-3, iters: int = 200) -> None:
        self.l2, self.iters = l2, iters
        self.w: np.ndarray | None = None
        self.b: np.ndarray | None = None

    @staticmethod
    def curvature(x, iters: int = 30, seed: int = 0) -> float:
        """An estimate (from above, by 10%) of the largest eigenvalue of ``X^T X / n``."""
        v = np.random.default_rng(seed).standard_normal((x.d, 1))
        lam = 0.0
        for _ in range(iters):
            u = x.tdot(x.dot(v)) / x.n
            lam = float(np.linalg.norm(u))
            if lam == 0.0:
                return 0.0
            v = u / lam
        return 1.1 * lam

    def fit(self, x, y: np.ndarray, classes: int, curvature: float | None = None, warm=None):
        n, d = x.n, x.d
        onehot = np.zeros((n, classes))
        onehot[np.arange(n), y] = 1.0
        lam = self.curvature(x) if curvature is None else curvature
        # The softmax cross-entropy's Hessian is at most 0.5 * X^T X / n (+ l2 on W); the bias
        # column adds at most 0.5.
        step = 1.0 / (0.5 * max(lam, 1.0) + self.l2)
        if warm is not None:
            w, b = warm.w.copy(), warm.b.copy()
        else:
            w, b = np.zeros((d, classes)), np.zeros(classes)
        vw, vb = w.copy(), b.copy()
        t = 1.0
        for _ in range(self.iters):
            z = x.dot(vw) + vb
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            g = (p - onehot) / n
            w_new = vw - step * (x.tdot(g) + self.l2 * vw)
            b_new = vb - step * g.sum(axis=0)
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            mom = (t - 1) / t_new
            vw = w_new + mom * (w_new - w)
            vb = b_new + mom * (b_new - b)
            w, b, t = w_new, b_new, t_new
        self.w, self.b = w, b
        return self

    def predict(self, x) -> np.ndarray:
        return (x.dot(self.w) + self.b).argmax(axis=1)


def _tfidf(docs: list[list[str]], vocab: dict[str, int], idf: np.ndarray) -> _Sparse:
    rows = []
    for toks in docs:
        counts = Counter(t for t in toks if t in vocab)
        r = {vocab[t]: (1.0 + math.log(c)) * idf[vocab[t]] for t, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in r.values())) or 1.0
        rows.append({k: v / norm for k, v in r.items()})
    return _Sparse(rows, len(vocab))


def _summary_features(x: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Per-feature mean, std, min, max, first and last valid value: ``[N, 6F]``."""
    n, t = x.shape[:2]
    x = x.reshape(n, t, -1).astype(float)
    lens = np.full(n, t) if lengths is None else np.asarray(lengths)
    valid = (np.arange(t)[None, :] < lens[:, None])[:, :, None]
    cnt = valid.sum(axis=1)
    mean = np.where(valid, x, 0).sum(axis=1) / cnt
    std = np.sqrt(np.where(valid, (x - mean[:, None]) ** 2, 0).sum(axis=1) / cnt)
    mn = np.where(valid, x, np.inf).min(axis=1)
    mx = np.where(valid, x, -np.inf).max(axis=1)
    last = x[np.arange(n), lens - 1]
    return np.concatenate([mean, std, mn, mx, x[:, 0], last], axis=1)


def _choose_l2(xtr, ytr, xval, yval, k, grid=(1e-2, 1e-3, 1e-4, 1e-5)) -> tuple[float, Any]:
    """The L2 strength of ``grid`` with the best validation accuracy (the first, strongest, on
    ties), each fit warm-started from the previous one."""
    lam = LogisticRegression.curvature(xtr)
    best, prev = None, None
    for l2 in grid:
        m = LogisticRegression(l2).fit(xtr, ytr, k, curvature=lam, warm=prev)
        prev = m
        acc = float(np.mean(m.predict(xval) == yval)) if yval is not None else 0.0
        if best is None or acc > best[0]:
            best = (acc, l2, m)
        if yval is None:
            break
    return best[1], best[2]


# --------------------------------------------------------------------------------------------
# Reading


def _read_csv(path: str) -> tuple[list[str] | None, list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(4096)
            f.seek(0)
            delim = "\t" if path.endswith(".tsv") or sample.count("\t") > sample.count(",") else ","
            rows = [r for r in csv.reader(f, delimiter=delim) if r]
    except OSError as e:
        raise C.ConfigError(
            f"config: data.path = {path!r}: cannot read it ({e.strerror})"
        ) from None
    if not rows:
        raise C.ConfigError(f"config: data.path = {path!r}: the file is empty")
    return None, rows


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


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
            "format": "auto",
            "text_column": "",
            "label_column": "",
            "id_column": "",
            "test_id_regex": "",
            "test_fraction": 0.2,
            "val_fraction": 0.1,
            "tokens": "word",
            "lowercase": True,
            "min_freq": 2,
            "max_vocab": 20000,
            "max_len": 400,
            "keep": "last",
        },
        "model": {"hidden_size": 64, "embedding_dim": 64, "pooling": "mean"},
        "train": {"lr": 0.003, "epochs": 30, "batch_size": 32, "patience": 5},
    }
    task_rules: ClassVar[dict[str, C.Rule]] = {
        "data.path": C.Path(),
        "data.format": C.Choice("auto", "npz", "csv", "text"),
        "data.test_fraction": C.Float(lo=0.0, hi=0.9, lo_open=True),
        "data.val_fraction": C.Float(lo=0.0, hi=0.5),
        "data.tokens": C.Choice("word", "char"),
        "data.min_freq": C.Int(lo=1),
        "data.max_vocab": C.Int(lo=1),
        "data.max_len": C.Int(lo=1),
        "data.keep": C.Choice("first", "last"),
        "model.embedding_dim": C.Int(lo=1),
        "model.pooling": C.Choice("last", "mean", "attention"),
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

    # Data ------------------------------------------------------------------------------------

    def _format(self, d) -> str:
        if d["format"] != "auto":
            return d["format"]
        if d["path"].endswith(".npz"):
            return "npz"
        if d["text_column"]:
            return "text"
        _, rows = _read_csv(d["path"])
        return "text" if "text" in [h.strip() for h in rows[0]] else "csv"

    def _raw(self, d, fmt):
        """``(items, labels, ids, lengths)``: items are texts, or arrays ``[N, T(, F)]``."""
        if fmt == "npz":
            z = load_arrays(d["path"], "data.path")
            for k in ("X", "y"):
                if k not in z:
                    raise C.ConfigError(
                        f"config: data.path = {d['path']!r}: the .npz has no array {k!r} "
                        f"(it has {sorted(z)})"
                    )
            return z
        _, rows = _read_csv(d["path"])
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
        has_header = not all(_is_number(c) for c in rows[0][1:] if c.strip())
        header = (
            [h.strip() for h in rows[0]] if has_header else [str(i) for i in range(len(rows[0]))]
        )
        body = rows[1:] if has_header else rows
        lcol = _column(header, d["label_column"], "data.label_column", 0)
        icol = _column(header, d["id_column"], "data.id_column", -1) if d["id_column"] else -1
        seqs, labels, ids = [], [], []
        for i, r in enumerate(body):
            vals = [c for j, c in enumerate(r) if j not in (lcol, icol)]
            while vals and not vals[-1].strip():
                vals.pop()
            try:
                seqs.append(np.array([float(v) for v in vals]))
            except ValueError:
                raise C.ConfigError(
                    f"data.path: {os.path.basename(d['path'])} row {i + 1 + has_header}: expected "
                    "numbers after the label"
                ) from None
            labels.append(r[lcol].strip())
            ids.append(r[icol] if icol >= 0 else str(i))
        if any(len(s) == 0 for s in seqs):
            raise C.ConfigError("data.path: a row holds a label but no values")
        return {"seqs": seqs, "labels": labels, "ids": ids if icol >= 0 else None}

    def _splits(self, config, n, labels_idx, ids, state, whole):
        d, rng = config["data"], np.random.default_rng(config["seed"])
        if whole:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.arange(n)
        if d["test_id_regex"]:
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
        raw = self._raw(d, fmt)
        if fmt == "npz" and "X_test" in raw and not whole:
            return self._prepare_npz_fixed(config, raw, state)
        if fmt == "npz":
            labels = [str(v) for v in np.asarray(raw["y"]).reshape(-1).tolist()]
            ids = None
        else:
            labels, ids = raw["labels"], raw["ids"]
        n = len(labels)
        classes = state["classes"] if state else sorted(set(labels), key=_label_key)
        cls_index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({lab for lab in labels if lab not in cls_index})
        if unknown:
            raise C.ConfigError(
                f"data: labels {unknown[:5]} are not among the run's classes {classes}"
            )
        if len(classes) < 2 and not whole:
            raise C.ConfigError(f"data: expected at least 2 classes, found {classes}")
        y = np.array([cls_index[lab] for lab in labels], dtype=np.int64)
        train, val, test = self._splits(config, n, y, ids, state, whole)
        new_state: dict[str, Any] = {"format": fmt, "classes": classes}
        extra: dict[str, Any] = {"classes": classes, "ids": ids, "test_index": test}
        if fmt == "text":
            toks = [tokenize(t, d["tokens"], d["lowercase"]) for t in raw["texts"]]
            if state:
                vocab = {w: i for i, w in enumerate(state["vocab"])}
            else:
                vocab = _build_vocab([toks[i] for i in train], d["min_freq"], d["max_vocab"])
            new_state["vocab"] = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
            seqs, lens = _encode(toks, vocab, d["max_len"], d["keep"])
            split = lambda idx: (seqs[idx], y[idx], lens[idx]) if idx.size else None
            extra["tokens"] = toks
            extra["vocab"] = vocab
            info = [
                (
                    f"data: {os.path.basename(d['path'])}, {n} texts in {len(classes)} classes "
                    f"({', '.join(classes)}); {d['tokens']} vocabulary of {len(vocab) - 1} from the "
                    f"training split (+1 for unknown), texts cut to {d['max_len']} tokens "
                    f"(median length {int(np.median([len(t) for t in toks]))})"
                ),
            ]
        else:
            seqs_list = [np.asarray(raw["X"][i]) for i in range(n)] if fmt == "npz" else raw["seqs"]
            lens_arr = None
            if fmt == "npz" and "lengths" in raw:
                lens_arr = np.asarray(raw["lengths"], dtype=np.int64)
            x, lens = _pad(seqs_list, lens_arr)
            split = lambda idx: (x[idx], y[idx], lens[idx]) if idx.size else None
            info = [
                (
                    f"data: {os.path.basename(d['path'])}, {n} sequences of up to {x.shape[1]} "
                    f"steps x {x.shape[2] if x.ndim == 3 else 1} features in {len(classes)} classes"
                )
            ]
            extra["x"] = x
            extra["lengths"] = lens
        info.append(
            f"splits: {len(train)} train / {len(val)} validation / {len(test)} test"
            + (f" (test = ids matching {d['test_id_regex']!r})" if d["test_id_regex"] else "")
        )
        extra.update(train_index=train, val_index=val, y=y)
        data = Prepared(
            train=split(train),
            val=split(val),
            test=split(test),
            state=new_state,
            info=info,
            extra=extra,
        )
        return data

    def _prepare_npz_fixed(self, config, raw, state):
        # X_test / y_test in the file: the given test set; validation from the training part.
        d = config["data"]
        tr_labels = [str(v) for v in np.asarray(raw["y"]).reshape(-1).tolist()]
        te_labels = [str(v) for v in np.asarray(raw["y_test"]).reshape(-1).tolist()]
        classes = state["classes"] if state else sorted(set(tr_labels), key=_label_key)
        idx = {c: i for i, c in enumerate(classes)}
        y_tr = np.array([idx[v] for v in tr_labels])
        y_te = np.array([idx[v] for v in te_labels if v in idx])
        x_tr, l_tr = _pad(list(raw["X"]), raw.get("lengths"))
        x_te, l_te = _pad(list(raw["X_test"]), raw.get("lengths_test"))
        rng = np.random.default_rng(config["seed"])
        val, train = _stratified(y_tr, np.arange(len(y_tr)), d["val_fraction"], rng)
        split = lambda x, y, lens, i: (x[i], y[i], lens[i]) if i.size else None
        return Prepared(
            train=split(x_tr, y_tr, l_tr, np.sort(train)),
            val=split(x_tr, y_tr, l_tr, np.sort(val)),
            test=(x_te, y_te, l_te),
            state={"format": "npz", "classes": classes},
            info=[
                (
                    f"data: {os.path.basename(d['path'])}, {len(y_tr)} training and {len(y_te)} "
                    f"test sequences in {len(classes)} classes (X_test in the file)"
                )
            ],
            extra={"classes": classes, "x": x_tr, "lengths": l_tr},
        )

    def build_model(self, config, data):
        from ..models import Model

        m = config["model"]
        x = data.train[0]
        kw = model_kwargs(config)
        k = len(data.state["classes"])
        if x.dtype.kind in "iu":
            vocab = len(data.state["vocab"]) if "vocab" in data.state else int(x.max()) + 1
            data.state.setdefault("vocab_size", vocab)
            return Model(
                vocab_size=data.state["vocab_size"],
                embedding_dim=m["embedding_dim"],
                pooling=m["pooling"],
                output_size=k,
                loss="cross_entropy",
                **kw,
            )
        return Model(
            input_size=x.shape[2],
            pooling=m["pooling"],
            output_size=k,
            loss="cross_entropy",
            **kw,
        )

    def train(self, model, data, config, **fit_kwargs):
        x, y, lens = data.train
        return model.fit(
            x,
            y,
            lengths=lens,
            validation_data=data.val,
            epochs=config["train"]["epochs"],
            batch_size=config["train"]["batch_size"],
            **fit_kwargs,
        )

    # Evaluation ------------------------------------------------------------------------------

    def _baseline(self, data, config) -> tuple[np.ndarray, str] | None:
        """Test-set predictions of the logistic-regression baseline and its description."""
        ex = data.extra
        tr, va, te = ex.get("train_index"), ex.get("val_index"), ex.get("test_index")
        if tr is None or not len(tr):
            return None
        y = ex["y"]
        k = len(ex["classes"])
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
            feats = lambda idx: _tfidf([docs[i] for i in idx], vocab, idf)
            what = f"TF-IDF bag of {len(vocab)} words"
        else:
            f = _summary_features(ex["x"], ex["lengths"])
            mu, sd = f[tr].mean(axis=0), f[tr].std(axis=0) + 1e-12
            feats = lambda idx: _Dense((f[idx] - mu) / sd)
            what = "per-feature mean/std/min/max/first/last"
        xtr = feats(tr)
        xva = feats(va) if len(va) else None
        l2, model = _choose_l2(xtr, y[tr], xva, y[va] if len(va) else None, k)
        return model.predict(feats(te)), f"logistic regression on {what} (L2 {l2:g})"

    def evaluate(self, model, data, config):
        x, y, lens = data.test
        classes = data.state["classes"]
        k = len(classes)
        proba = model.predict(x, lengths=lens, batch_size=256, output="probabilities")
        pred = proba.argmax(axis=1)
        out = _scores(y, pred, k, "")
        base = self._baseline(data, config)
        if base is not None:
            out.update(_scores(y, base[0], k, "baseline_"))
            out["baseline"] = base[1]
        out["test_size"] = len(y)
        out["classes"] = classes
        out["cell"] = model.cell
        return out

    def format_summary(self, s):
        lines = [
            f"test set: {s['test_size']} items, classes {', '.join(s['classes'])}",
            f"{'':<22}{'accuracy':>10}{'precision':>11}{'recall':>9}{'F1':>9}",
        ]
        rows = [(f"{s.get('cell', 'lstm').upper()} model", "")]
        if "baseline_accuracy" in s:
            rows.append(("bag-of-words LR", "baseline_"))
        for label, p in rows:
            lines.append(
                f"{label:<22}{s[p + 'accuracy']:>10.4f}{s[p + 'precision']:>11.4f}"
                f"{s[p + 'recall']:>9.4f}{s[p + 'f1']:>9.4f}"
            )
        if "baseline" in s:
            lines.append(f"baseline: {s['baseline']}; precision/recall/F1 are macro averages")
        return "\n".join(lines)

    def plot(self, model, data, summary, config, out_dir, records):
        title = f"Test confusion matrix\nmodel accuracy {summary['accuracy']:.3f}"
        if "baseline_accuracy" in summary:
            title += f", bag-of-words baseline {summary['baseline_accuracy']:.3f}"
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
            x, lens = _encode(toks, vocab, d["max_len"], d["keep"])
        elif fmt == "npz":
            z = load_arrays(input_path, "--input")
            if "X" not in z:
                raise C.ConfigError(f"--input: {input_path!r} has no array 'X'")
            x, lens = _pad(list(z["X"]), z.get("lengths", None))
        else:
            raw = self._raw(d, "csv")
            x, lens = _pad(raw["seqs"], None)
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
    return (0, float(label), "") if _is_number(label) else (1, 0.0, label)


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
