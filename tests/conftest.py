"""Shared fixtures of the Python test suite."""

from __future__ import annotations

import lstmrs
import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: minutes-long end-to-end tests (deselect with -m 'not slow')"
    )


@pytest.fixture(autouse=True, scope="session")
def no_installed_plugins():
    """The suite never depends on the lstmrs plugins installed on this machine: only the
    built-ins load unless a test asks for more (see `lstmrs.testing`)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LSTMRS_PLUGINS", "")
    mp.delenv("LSTMRS_BLOCK_PLUGINS", raising=False)
    yield
    mp.undo()


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed generator, so a failure reproduces."""
    return np.random.default_rng(1234)


@pytest.fixture
def restore_num_threads():
    """Restores the worker-thread count a test changes, so later tests see the default."""
    before = lstmrs.get_num_threads()
    yield before
    lstmrs.set_num_threads(before)
