"""Runs the tests from a source checkout too (without `pip install`), and isolates them from
the lstmrs plugins installed on this machine."""

import sys
from pathlib import Path

try:
    import lstmrs_lion  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lstmrs.testing import lstmrs_plugins  # noqa: F401  (the fixture)
