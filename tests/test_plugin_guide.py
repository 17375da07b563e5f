"""plugins/README.md, the plugin author's guide, run as written.

The guide's code blocks preceded by ``<!-- file: PATH -->`` are pieces of one plugin package
(blocks with the same path are joined in order). This test assembles the package, "installs"
it (a ``*.dist-info`` with its entry point on PYTHONPATH, as tests/test_plugins.py does), runs
the package's own tests with pytest, and runs every ``<!-- check: console -->`` session: each
``$ command`` must print every expected line that is not ``...``, in order. Every numbered
section of the guide but the last (publishing) must hold at least one checked block.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from lstmrs.config import _toml_module

GUIDE = Path(__file__).resolve().parents[1] / "plugins" / "README.md"
BLOCK = re.compile(r"<!-- (file|check): ([^>]+?) -->\n```[a-z]*\n(.*?)```", re.DOTALL)
SECTION = re.compile(r"^## (\d+)\. (.+)$", re.MULTILINE)
UNCHECKED_SECTIONS = {"Publish"}  # prose: building and uploading a wheel needs the network


def _blocks(text: str):
    """(section title, kind, argument, body) for every tagged block, in order."""
    heads = [(m.start(), m.group(2)) for m in SECTION.finditer(text)]
    for m in BLOCK.finditer(text):
        section = [title for start, title in heads if start < m.start()]
        yield (section[-1] if section else "", m.group(1), m.group(2).strip(), m.group(3))


@pytest.fixture(scope="module")
def guide_package(tmp_path_factory):
    """The guide's package written out and installed; returns (root, env)."""
    text = GUIDE.read_text(encoding="utf-8")
    root = tmp_path_factory.mktemp("guide") / "lstmrs-mycell"
    files: dict[str, str] = {}
    for _, kind, arg, body in _blocks(text):
        if kind == "file":
            files[arg] = files.get(arg, "") + ("\n\n" if arg in files else "") + body
    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    (root / "README.md").write_text("The guide's example plugin.\n")
    project = _toml_module().loads(files["pyproject.toml"])["project"]
    site = root.parent / "site"
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    eps = project["entry-points"]["lstmrs"]
    (info / "entry_points.txt").write_text(
        "[lstmrs]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
    )
    env = dict(os.environ)
    paths = [str(root / "src"), str(site), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.pop("LSTMRS_PLUGINS", None)
    # Only the guide's plugin: the ones really installed here would change `lstmrs plugins`.
    env["LSTMRS_BLOCK_PLUGINS"] = ",".join(ep.name for ep in entry_points(group="lstmrs"))
    env.pop("LSTMRS_DEBUG", None)
    return root, env


def test_every_section_is_exercised():
    text = GUIDE.read_text(encoding="utf-8")
    checked = {section for section, *_ in _blocks(text)}
    titles = [m.group(2) for m in SECTION.finditer(text)]
    assert len(titles) >= 8
    missing = [t for t in titles if t not in checked and t not in UNCHECKED_SECTIONS]
    assert not missing, f"guide sections with no checked code block: {missing}"


def test_the_guides_package_passes_its_own_tests(guide_package):
    root, env = guide_package
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    # Every test the guide shows ran and none was skipped.
    assert re.search(r"\b1[0-9] passed\b", out.stdout) and "skipped" not in out.stdout, out.stdout


def _sessions():
    text = GUIDE.read_text(encoding="utf-8")
    for section, kind, arg, body in _blocks(text):
        if kind == "check" and arg == "console":
            commands: list[tuple[str, list[str]]] = []
            for line in body.splitlines():
                if line.startswith("$ "):
                    commands.append((line[2:], []))
                elif commands:
                    commands[-1][1].append(line)
            for command, expected in commands:
                yield pytest.param(command, expected, id=f"{section}: {command[:60]}")


@pytest.mark.parametrize("command, expected", list(_sessions()))
def test_console_sessions(guide_package, command, expected):
    root, env = guide_package
    words = shlex.split(command)
    env = dict(env)
    while "=" in words[0]:  # VAR=value prefixes
        key, _, value = words.pop(0).partition("=")
        # Blocking adds to the test's own list of the plugins really installed here.
        env[key] = f"{env[key]},{value}" if key == "LSTMRS_BLOCK_PLUGINS" else value
    assert words[0] == "lstmrs", command
    out = subprocess.run(
        [sys.executable, "-m", "lstmrs.cli", *words[1:]],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    printed = (out.stdout + out.stderr).splitlines()
    fails = any("error" in line.lower() or "Traceback" in line for line in expected)
    assert (out.returncode != 0) == fails, out.stdout + out.stderr
    # The expected lines, in order ("..." stands for any lines).
    at = 0
    for line in expected:
        if line.strip() == "...":
            continue
        found = [i for i in range(at, len(printed)) if printed[i].rstrip() == line.rstrip()]
        assert found, f"{command}: {line!r} not printed after line {at}:\n" + "\n".join(printed)
        at = found[0] + 1
