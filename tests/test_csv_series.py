"""The one CSV reader of the forecast, anomaly and classify tasks (lstmrs.csv_series): quoted
numbers, dates and blank rows are read the same way by all three."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from lstmrs.csv_series import is_number, parse_number, parse_time, read_rows
from lstmrs.errors import ConfigError
from lstmrs.tasks import anomaly, forecast


def test_numbers_ignore_spaces_and_quotes():
    assert parse_number(' "3.5" ') == 3.5 and parse_number("-2e3") == -2000.0
    assert is_number('"7"') and not is_number("abc") and not is_number("")


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("1949-01", datetime(1949, 1, 1)),
        ('"1949-01-31"', datetime(1949, 1, 31)),
        ("2014-04-01T00:05:00", datetime(2014, 4, 1, 0, 5)),
        ("2014-04-01 00:05:00", datetime(2014, 4, 1, 0, 5)),
        ("step 3", None),
    ],
)
def test_times(text, when):
    assert parse_time(text) == when


def test_rows_skip_blank_lines_and_find_tabs(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("\ufefft,v\n1,2\n,\n\n3,4\n", encoding="utf-8")
    assert read_rows(str(p)) == [["t", "v"], ["1", "2"], ["3", "4"]]
    q = tmp_path / "b.txt"
    q.write_text("t\tv\n1\t2\n")
    assert read_rows(str(q)) == [["t", "v"], ["1", "2"]]
    with pytest.raises(ConfigError, match="data.path = .*missing.csv.*cannot read it"):
        read_rows(str(tmp_path / "missing.csv"))


def _quoted_csv(tmp_path):
    # A spreadsheet export: every field quoted, a month column, a blank separator row.
    p = tmp_path / "quoted.csv"
    rows = ['"month","value","is_anomaly"']
    rows += [f'"{1950 + k // 12}-{k % 12 + 1:02d}","{k + 0.5}","0"' for k in range(30)]
    rows.insert(5, '"",""')
    p.write_text("\n".join(rows) + "\n")
    return str(p)


def test_forecast_and_anomaly_read_the_same_file_alike(tmp_path):
    path = _quoted_csv(tmp_path)
    times_f, values_f, _ = forecast.read_series(path, ["value"], "month")
    times_a, parsed, values_a, labels = anomaly.read_series(path, "value", "month", "auto")
    assert times_f == times_a and len(times_f) == 30
    np.testing.assert_array_equal(values_f[:, 0], values_a)
    assert values_a[0] == 0.5 and labels is not None and not labels.any()
    assert parsed[0] == datetime(1950, 1, 1) and parsed[-1] == datetime(1952, 6, 1)
