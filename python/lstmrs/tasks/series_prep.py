"""Preprocessing of numeric sequences for classification, fitted on the training split only.

Two steps, both saved with the run so ``eval`` and ``predict`` transform new data the same way:

1. **Normalisation.** ``"global"``: each feature standardised with the mean and standard
   deviation of the training split's valid steps. ``"series"``: each series z-normalised on its
   own (per feature, over its valid steps, as the UCR archive prepares most of its data), with
   the series' own level and scale (mean and log standard deviation) kept as two extra constant
   channels per feature, so the model sees the shape first but does not lose the level; then the
   global standardisation of every channel. ``"auto"`` picks between the two by the
   leave-one-out accuracy of 1-nearest-neighbour (Euclidean) on the training split: the
   representation under which similar series share a class more often. ``"none"`` feeds the
   values as they are.
2. **Windows of steps for long series.** A series longer than ``max_steps`` is fed as
   non-overlapping windows of ``patch`` consecutive steps (each model step sees the window's
   values of every feature), so a 1,460-step series becomes 146 steps of 10 values: the
   recurrence spans the whole series, nothing is dropped, and backpropagation through time stays
   short enough to train.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .._lstmrs import dtw_leave_one_out
from ..errors import ShapeError

__all__ = ["SeriesPrep", "valid_mask"]

_EPS = 1e-8
# Series that choose the normalisation under "auto".
_AUTO_SAMPLE = 500


def valid_mask(lengths: np.ndarray, t: int) -> np.ndarray:
    """``[N, T, 1]`` booleans: which padded steps are real."""
    return (np.arange(t)[None, :] < np.asarray(lengths)[:, None])[:, :, None]


def _series_stats(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-series, per-feature mean and standard deviation over valid steps: ``[N, F]`` each."""
    valid = valid_mask(lengths, x.shape[1])
    cnt = valid.sum(axis=1)
    mean = np.where(valid, x, 0.0).sum(axis=1) / cnt
    var = np.where(valid, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / cnt
    return mean, np.sqrt(var)


def _feature_stats(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over every valid step of every series: ``[F]``."""
    valid = valid_mask(lengths, x.shape[1])
    cnt = valid.sum()
    mean = np.where(valid, x, 0.0).sum(axis=(0, 1)) / cnt
    std = np.sqrt(np.where(valid, (x - mean) ** 2, 0.0).sum(axis=(0, 1)) / cnt)
    return mean, std


def _znorm_series(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each series z-normalised per feature, with its mean and log scale as extra channels."""
    mean, std = _series_stats(x, lengths)
    # A constant series stays constant (at 0) instead of being blown up by a tiny scale.
    scale = np.where(std > _EPS, std, 1.0)
    z = (x - mean[:, None]) / scale[:, None]
    t = x.shape[1]
    level = np.repeat(mean[:, None, :], t, axis=1)
    spread = np.repeat(np.log(std + _EPS)[:, None, :], t, axis=1)
    return np.concatenate([z, level, spread], axis=2)


def _loo_1nn(x: np.ndarray, lengths: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out accuracy of 1-NN without warping (window 0) on ``x`` ``[N, T, F]``."""
    return float(
        dtw_leave_one_out(
            np.ascontiguousarray(x, dtype=np.float64),
            np.asarray(lengths, dtype=np.int64),
            np.ascontiguousarray(y, dtype=np.int64),
            [0.0],
        )[0]
    )


@dataclass
class SeriesPrep:
    """The fitted transform (JSON-friendly through :meth:`state`)."""

    normalize: str = "global"
    patch: int = 1
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    #: Leave-one-out 1-NN accuracies that chose ``normalize`` under ``"auto"``.
    loo: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        lengths: np.ndarray,
        y: np.ndarray,
        *,
        normalize: str = "auto",
        max_steps: int = 256,
        patch: int = 0,
    ) -> SeriesPrep:
        """Fits on the training split ``x`` ``[N, T, F]`` (valid steps ``lengths``, classes
        ``y``). ``patch`` 0 chooses the window from ``max_steps``."""
        x = np.asarray(x, dtype=np.float64)
        loo: dict[str, float] = {}
        if normalize == "auto":
            if len(np.unique(y)) > 1 and len(y) > 2:
                # Leave-one-out costs N^2 comparisons: a seeded sample of 500 series decides.
                pick = np.arange(len(y))
                if len(y) > _AUTO_SAMPLE:
                    pick = np.sort(np.random.default_rng(0).choice(len(y), _AUTO_SAMPLE, False))
                xs, ls, ys = x[pick], np.asarray(lengths)[pick], np.asarray(y)[pick]
                g = cls(normalize="global")._standardized(xs, ls)
                s = cls(normalize="series")._standardized(xs, ls)
                loo = {"global": _loo_1nn(g, ls, ys), "series": _loo_1nn(s, ls, ys)}
                normalize = "series" if loo["series"] > loo["global"] else "global"
            else:
                normalize = "global"
        if patch <= 0:
            patch = max(1, math.ceil(int(np.max(lengths)) / max_steps))
        prep = cls(normalize=normalize, patch=int(patch), loo=loo)
        mean, std = _feature_stats(prep._normalized(x, lengths), lengths)
        if normalize == "none":
            mean, std = np.zeros_like(mean), np.ones_like(std)
        prep.mean = mean.tolist()
        prep.std = np.where(std > _EPS, std, 1.0).tolist()
        return prep

    def _normalized(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return _znorm_series(x, lengths) if self.normalize == "series" else x

    def _standardized(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Normalised and standardised with statistics of ``x`` itself (for the auto choice)."""
        base = self._normalized(x, lengths)
        mean, std = _feature_stats(base, lengths)
        valid = valid_mask(lengths, x.shape[1])
        return np.where(valid, (base - mean) / np.where(std > _EPS, std, 1.0), 0.0)

    @property
    def features_per_step(self) -> int:
        """Input features of the model per raw feature of the data."""
        return self.patch * (3 if self.normalize == "series" else 1)

    def transform(self, x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x`` ``[N, T, F]`` -> float32 model input ``[N, ceil(T / patch), patch * F']`` and
        the lengths in model steps. Padding is 0 (the training mean)."""
        x = np.asarray(x, dtype=np.float64)
        lengths = np.asarray(lengths, dtype=np.int64)
        base = self._normalized(x, lengths)
        if len(self.mean) != base.shape[2]:
            raise ShapeError(
                f"x: expected {len(self.mean) // (3 if self.normalize == 'series' else 1)} "
                f"features per step (as in training), got {x.shape[2]}"
            )
        z = (base - np.asarray(self.mean)) / np.asarray(self.std)
        z = np.where(valid_mask(lengths, x.shape[1]), z, 0.0)
        n, t, f = z.shape
        p = self.patch
        steps = math.ceil(t / p)
        if steps * p != t:
            z = np.concatenate([z, np.zeros((n, steps * p - t, f))], axis=1)
        # Window k holds steps k*p .. k*p+p-1; its features are step-major ([p, F] flattened).
        out = z.reshape(n, steps, p * f).astype(np.float32)
        return out, (lengths + p - 1) // p

    def describe(self) -> str:
        how = {
            "global": "each feature standardised on the training split",
            "series": "each series z-normalised (its level and scale kept as 2 extra channels)",
            "none": "values as given",
        }[self.normalize]
        if self.loo:
            how += (
                f" (auto: leave-one-out 1-NN accuracy {self.loo['series']:.3f} z-normalised vs "
                f"{self.loo['global']:.3f} standardised)"
            )
        if self.patch > 1:
            how += f"; long series fed as windows of {self.patch} steps (data.patch)"
        return how

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> SeriesPrep:
        return cls(**state)
