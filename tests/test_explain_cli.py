"""`lstmrs explain RUN` on tiny runs of every task, and its HTML page opened in a real headless
browser (Debian's chromium-headless-shell) to check that every embedded figure loads."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess

import pytest
from lstmrs.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
needs_data = pytest.mark.skipif(
    not os.path.isdir(DATA), reason=f"real data sets not found at {DATA} (../shared/data)"
)

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")
# Appended to a copy of the page: after load, records for every image whether it decoded.
PROBE = """<script>
window.addEventListener('load', () => {
  const ok = [...document.images].map(i => i.complete && i.naturalWidth > 0);
  document.body.setAttribute('data-images', JSON.stringify(ok));
});
</script>"""


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("LSTMRS_REQUIRE_BROWSER") == "1":
        pytest.fail("LSTMRS_REQUIRE_BROWSER=1 but no chromium-headless-shell / chromium found")
    return None


def images_load_in_browser(page: str) -> list[bool] | None:
    """Whether each image of ``page`` loads in headless Chromium; None without a browser."""
    browser = _browser()
    if browser is None:
        return None
    with open(page, encoding="utf-8") as f:
        text = f.read()
    probe = page[: -len(".html")] + "-probe.html"
    with open(probe, "w", encoding="utf-8") as f:
        f.write(text.replace("</body>", PROBE + "</body>"))
    res = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "file://" + probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    m = re.search(r'data-images="([^"]*)"', res.stdout)
    assert m, f"the page did not finish loading in {browser}: {res.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"'))


def check_page(run, figures: int) -> str:
    page = os.path.join(run, "explain", "index.html")
    with open(page, encoding="utf-8") as f:
        text = f.read()
    # Self-contained: every image is a data URI, nothing is fetched.
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == figures and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in text and "https://" not in text
    pngs = [p for p in os.listdir(os.path.join(run, "explain")) if p.endswith(".png")]
    assert len(pngs) == figures
    loaded = images_load_in_browser(page)
    if loaded is not None:
        assert loaded == [True] * figures, loaded
    return text


def train(tmp_path, name, task, *sets):
    args = ["train", "--task", task, "--run-dir", str(tmp_path / name), "--no-plots", "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return str(tmp_path / name)


def test_browser_probe_sees_a_broken_image(tmp_path):
    """The probe can fail: a page whose image does not decode reports False."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="data:image/png;base64,AAAA"></body></html>')
    loaded = images_load_in_browser(str(page))
    if loaded is None:
        pytest.skip("no headless Chromium (apt install chromium-headless-shell)")
    assert loaded == [False]


@needs_data
def test_explain_forecast(tmp_path, capsys):
    run = train(
        tmp_path,
        "f",
        "forecast",
        f"data.path={DATA}/timeseries/airline-passengers.csv",
        "data.log=true",
        "train.epochs=3",
        "model.hidden_size=8",
    )
    assert main(["explain", run, "--target", "2", "--index", "0"]) == 0
    assert "most attributed lookback steps" in capsys.readouterr().out
    text = check_page(run, 1)
    assert "completeness gap" in text and "at step" not in text
    capsys.readouterr()
    assert main(["explain", run, "--target", "99"]) == 1
    assert "--target: expected a forecast step in 0..11" in capsys.readouterr().err


@needs_data
def test_explain_charlm(tmp_path, capsys):
    with open(os.path.join(DATA, "tinyshakespeare", "input.txt")) as f:
        (tmp_path / "shk.txt").write_text("".join(f.readlines()[:200]))
    run = train(
        tmp_path,
        "c",
        "charlm",
        f"data.path={tmp_path / 'shk.txt'}",
        "train.epochs=1",
        "train.batch_size=8",
        "model.hidden_size=12",
        "model.num_layers=1",
        "eval.sample_length=10",
    )
    assert main(["explain", run, "--unit", "3", "--method", "gradient_x_input"]) == 0
    out = capsys.readouterr().out
    assert "unit 3" in out and "memory span" in out
    text = check_page(run, 1)
    assert text.count('class="tok"') > 100  # the text, coloured twice


@needs_data
def test_explain_anomaly_and_text_classify(tmp_path):
    with open(os.path.join(DATA, "anomaly", "nyc_taxi.csv")) as f:
        lines = f.readlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("2014-10-14 00:00"))
    (tmp_path / "nyc_taxi.csv").write_text(lines[0] + "".join(lines[start : start + 600]))
    run = train(
        tmp_path,
        "an",
        "anomaly",
        f"data.path={tmp_path / 'nyc_taxi.csv'}",
        f"data.windows={DATA}/anomaly/nab_combined_windows.json",
        "train.epochs=1",
        "model.hidden_size=8",
        "data.lookback=24",
    )
    assert main(["explain", run, "--steps", "16"]) == 0
    check_page(run, 3)

    with open(os.path.join(DATA, "sentiment", "review_polarity.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["id"][2:5]) < 8 or int(r["id"][2:5]) >= 997]
    with open(tmp_path / "reviews.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "label", "text"])
        w.writeheader()
        w.writerows(keep)
    run = train(
        tmp_path,
        "t",
        "classify",
        f"data.path={tmp_path / 'reviews.csv'}",
        "data.id_column=id",
        "data.test_id_regex=^cv9",
        "data.max_len=30",
        "train.epochs=1",
        "model.hidden_size=8",
        "model.embedding_dim=8",
    )
    # --input: the whole file, read as the task reads its data.
    assert main(["explain", run, "--input", str(tmp_path / "reviews.csv"), "--index", "3"]) == 0
    text = check_page(run, 1)
    assert text.count('class="tok"') >= 10


@needs_data
def test_explain_numeric_classify_ensemble_and_adding(tmp_path, capsys):
    run = train(
        tmp_path,
        "u",
        "classify",
        f"data.path={DATA}/ucr/PickupGestureWiimoteZ_TRAIN.ts",
        "train.ensemble=2",
        "train.epochs=1",
        "model.hidden_size=6",
    )
    assert main(["explain", run, "--index", "1"]) == 0
    check_page(run, 1)
    run = train(tmp_path, "a", "adding", "train.epochs=1", "model.hidden_size=8")
    assert main(["explain", run, "--method", "occlusion"]) == 0
    check_page(run, 1)
    capsys.readouterr()
    assert main(["explain", run, "--index", "100000"]) == 1
    assert "--index: expected an item in 0.." in capsys.readouterr().err
