"""The ``.ts`` time-series file format of sktime/aeon and the UCR/UEA archives.

A file is comment lines (``#``), header lines (``@problemName``, ``@univariate``,
``@dimensions``, ``@equalLength``, ``@seriesLength``, ``@missing``, ``@timeStamps``,
``@classLabel true 1 2 ...``, ``@targetLabel``), then ``@data`` and one case per line: its
dimensions separated by ``:``, each a comma-separated list of values (``?`` or ``NaN`` for a
missing value; ``(timestamp,value)`` pairs when ``@timeStamps true``), and the class label last.

Unequal-length archives pad the shorter series with ``NaN`` at the end: such trailing padding is
cut off, so each case keeps its true length. Values missing inside a series are filled by linear
interpolation between their neighbours (the nearest value at the ends), and the reader counts
them so the caller can say so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import DataFileError

__all__ = ["TsData", "find_split_pair", "read_ts"]

_MISSING = {"?", "nan", "NaN", "NAN", ""}
_PAIR = re.compile(r"\(([^,()]*),([^()]*)\)")


@dataclass
class TsData:
    """The cases of a ``.ts`` file: ``series[i]`` is ``[T_i, D]`` float64, ``labels[i]`` its class
    label (text; ``None`` without ``@classLabel true``)."""

    series: list[np.ndarray]
    labels: list[str] | None
    name: str = ""
    class_labels: list[str] = field(default_factory=list)
    #: Values missing inside a series (filled by interpolation), over all cases.
    filled: int = 0

    @property
    def dims(self) -> int:
        return int(self.series[0].shape[1]) if self.series else 0


def _values(text: str, timestamps: bool, where: str) -> list[float]:
    if timestamps:
        pairs = _PAIR.findall(text)
        if not pairs and text.strip():
            raise DataFileError(f"{where}: expected (timestamp,value) pairs, got {text[:40]!r}")
        items = [v for _, v in pairs]
    else:
        items = text.split(",")
    out = []
    for item in items:
        item = item.strip()
        if item in _MISSING:
            out.append(np.nan)
            continue
        try:
            out.append(float(item))
        except ValueError:
            raise DataFileError(f"{where}: expected a number or '?', got {item[:40]!r}") from None
    return out


def _fill_inside(v: np.ndarray) -> int:
    """Fills NaNs of ``v`` in place by linear interpolation (nearest value at the ends); returns
    how many it filled."""
    bad = np.isnan(v)
    n = int(bad.sum())
    if n and n < v.size:
        idx = np.arange(v.size)
        v[bad] = np.interp(idx[bad], idx[~bad], v[~bad])
    return n


def read_ts(path: str | os.PathLike) -> TsData:
    """Reads a ``.ts`` file. Raises :class:`DataFileError` naming the file, line and field of
    anything it cannot read."""
    path = os.fspath(path)
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataFileError(f"{path}: cannot read it ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e

    header: dict[str, str] = {}
    start = None
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("@"):
            raise DataFileError(f"{name} line {i + 1}: expected a @header line before @data")
        key, _, value = line[1:].partition(" ")
        key = key.lower()
        if key == "data":
            start = i + 1
            break
        header[key] = value.strip()
    if start is None:
        raise DataFileError(f"{name}: no @data line (is it a .ts file?)")

    def flag(key: str, default: bool) -> bool:
        v = header.get(key.lower(), "").split()
        return default if not v else v[0].lower() == "true"

    timestamps = flag("timeStamps", False)
    has_label = flag("classLabel", False)
    class_labels = header.get("classlabel", "").split()[1:] if has_label else []
    series: list[np.ndarray] = []
    labels: list[str] | None = [] if has_label else None
    filled = 0
    for i in range(start, len(lines)):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name} line {i + 1}"
        parts = line.split(":")
        if has_label:
            if len(parts) < 2:
                raise DataFileError(f"{where}: expected values then ':' and a class label")
            label = parts.pop().strip()
            if class_labels and label not in class_labels:
                raise DataFileError(
                    f"{where}: class label {label!r} is not among @classLabel {class_labels}"
                )
            labels.append(label)
        dims = [
            np.array(_values(p, timestamps, f"{where} dimension {d + 1}"), dtype=np.float64)
            for d, p in enumerate(parts)
        ]
        if series and len(dims) != series[0].shape[1]:
            raise DataFileError(
                f"{where}: {len(dims)} dimensions, but the first case has {series[0].shape[1]}"
            )
        # The true length: up to the last value present in any dimension (the rest is padding).
        present = [np.flatnonzero(~np.isnan(d)) for d in dims]
        length = max((int(p[-1]) + 1 for p in present if p.size), default=0)
        if length == 0:
            raise DataFileError(f"{where}: the case has no values")
        case = np.full((length, len(dims)), np.nan)
        for d, v in enumerate(dims):
            case[: min(length, v.size), d] = v[:length]
            filled += _fill_inside(case[:, d])
            if np.isnan(case[:, d]).all():
                raise DataFileError(f"{where} dimension {d + 1}: no values")
        series.append(case)
    if not series:
        raise DataFileError(f"{name}: no cases after @data")
    return TsData(
        series=series,
        labels=labels,
        name=header.get("problemname", os.path.splitext(name)[0]),
        class_labels=class_labels,
        filled=filled,
    )


def find_split_pair(path: str) -> str | None:
    """The archive's other split of ``path``: ``X_TRAIN.ts`` -> ``X_TEST.ts`` when that file
    exists (any case of TRAIN/TEST), else ``None``."""
    base = os.path.basename(path)
    m = re.search(r"_(train)(\.[^.]+)$", base, re.IGNORECASE)
    if not m:
        return None
    test = "TEST" if m.group(1).isupper() else "test"
    other = os.path.join(os.path.dirname(path), base[: m.start(1)] + test + m.group(2))
    return other if os.path.exists(other) else None
