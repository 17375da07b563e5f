"""Synthetic sequence tasks for tests, demos and benchmarks, reproducible from a seed.

- :func:`adding_problem` (Hochreiter & Schmidhuber, 1997): inputs ``[N, T, 2]`` (a value in
  [0, 1) and a marker), target ``[N, 1]`` = the sum of the two marked values, one marker in each
  half. Predicting the mean scores an MSE of about 0.167; solving it needs memory over ``T``.
- :func:`copy_task` (Arjovsky et al., 2016): ``length`` symbols, ``delay`` blanks, a delimiter,
  then the model must repeat the symbols. Token inputs ``[N, length + delay + 1 + length]`` and
  per-step class targets of the same shape (blank everywhere but the recall part, or
  ``ignore_index`` there with ``mask_prefix=True``).
"""

from __future__ import annotations

import zipfile

import numpy as np

from .errors import DataFileError
from .validation import check_int

__all__ = ["adding_problem", "copy_task"]


def adding_problem(
    n: int, seq_len: int, *, seed: int = 0, dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` adding-problem sequences of ``seq_len`` steps: ``(x [n, T, 2], y [n, 1])``."""
    n, t = check_int("n", n), check_int("seq_len", seq_len, 2)
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(n, t))
    half = t // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, t, size=n)
    markers = np.zeros((n, t))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1).astype(dtype)
    y = (values[rows, first] + values[rows, second]).reshape(n, 1).astype(dtype)
    return x, y


def copy_task(
    n: int,
    length: int = 10,
    delay: int = 20,
    *,
    num_symbols: int = 8,
    seed: int = 0,
    mask_prefix: bool = False,
    ignore_index: int = -100,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` copy-task sequences: ``(tokens [n, S], targets [n, S])`` with
    ``S = 2 * length + delay + 1``.

    Vocabulary: 0 = blank, ``1..num_symbols`` = symbols, ``num_symbols + 1`` = delimiter (so
    ``vocab_size = num_symbols + 2``). Targets are blank (0) until the last ``length`` steps,
    which hold the symbols; ``mask_prefix`` puts ``ignore_index`` in place of those blanks.
    """
    n, length = check_int("n", n), check_int("length", length)
    delay, num_symbols = check_int("delay", delay, 0), check_int("num_symbols", num_symbols)
    rng = np.random.default_rng(seed)
    symbols = rng.integers(1, num_symbols + 1, size=(n, length))
    total = 2 * length + delay + 1
    x = np.zeros((n, total), dtype=np.int64)
    x[:, :length] = symbols
    x[:, length + delay] = num_symbols + 1
    y = np.full((n, total), ignore_index if mask_prefix else 0, dtype=np.int64)
    y[:, total - length :] = symbols
    return x, y


def load_arrays(path: str, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (or ``{"X": array}`` for an ``.npy``), read eagerly and
    without unpickling. A missing, truncated or foreign file raises
    :class:`~lstmrs.errors.DataFileError` naming ``what`` (the argument or config field) and
    the file; NumPy's own error is the ``__cause__``."""
    try:
        if str(path).endswith(".npy"):
            return {"X": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except OSError as e:
        raise DataFileError(f"{what}: cannot read {path!r}: {e.strerror or e}") from e
    except AttributeError as e:  # np.load returned a plain array: an .npy under another name
        raise DataFileError(f"{what}: {path!r} is an .npy array, expected an .npz archive") from e
    except (ValueError, EOFError, zipfile.BadZipFile, KeyError, MemoryError) as e:
        raise DataFileError(
            f"{what}: {path!r} is not a valid NumPy .npz/.npy file (corrupt, truncated or "
            f"another format: {type(e).__name__})"
        ) from e
