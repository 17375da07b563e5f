"""Reading series from CSV files, one way for every task (forecast, anomaly, classify).

- Rows: UTF-8 (a byte-order mark is skipped), comma-separated, or tab-separated for ``.tsv``
  files and files with more tabs than commas in their first 4 KiB; rows with no text in any cell
  are skipped.
- Numbers: surrounding spaces and double quotes are ignored (``"3.5"`` written by a spreadsheet
  that quotes every field reads as 3.5).
- Dates and times: ISO 8601 (``1949-01-31``, ``2014-04-01 00:05:00``, ``2014-04-01T00:05``) and
  months (``1949-01``, the first of the month), quoted or not; anything else is not a time.
"""

from __future__ import annotations

import csv
import os
from datetime import datetime

from .errors import ConfigError

__all__ = ["is_number", "parse_number", "parse_time", "read_rows"]


def read_rows(path: str, key: str = "data.path") -> list[list[str]]:
    """The rows of the CSV file ``path`` as lists of strings, blank rows left out;
    :class:`~lstmrs.errors.ConfigError` naming ``key`` when the file cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(4096)
            f.seek(0)
            tabs = path.endswith(".tsv") or sample.count("\t") > sample.count(",")
            return [r for r in csv.reader(f, delimiter="\t" if tabs else ",") if _filled(r)]
    except OSError as e:
        raise ConfigError(f"config: {key} = {path!r}: cannot read it ({e.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(
            f"config: {key} = {path!r}: not a UTF-8 CSV file ({os.path.basename(path)}: {e})"
        ) from None


def _filled(row: list[str]) -> bool:
    return any(c.strip() for c in row)


def _unquote(text: str) -> str:
    return text.strip().strip('"').strip()


def parse_number(text: str) -> float:
    """``text`` as a float, spaces and double quotes around it ignored; ValueError otherwise."""
    return float(_unquote(text))


def is_number(text: str) -> bool:
    """Whether :func:`parse_number` reads ``text``."""
    try:
        parse_number(text)
    except ValueError:
        return False
    return True


def parse_time(text: str) -> datetime | None:
    """``text`` as a date and time (ISO 8601, or a year and month), or None."""
    t = _unquote(text).replace("T", " ")
    for candidate in (t, t + "-01"):
        try:
            return datetime.fromisoformat(candidate)
        except ValueError:
            continue
    return None
