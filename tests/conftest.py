"""Shared fixtures. Tests marked ``brokers`` talk to the real local clusters."""
import os
import subprocess
import sys

import pytest

from helpers import brokers, config


@pytest.fixture(scope="session")
def clusters():
    """Both clusters serving; fails (not skips) with the command to run when they are down."""
    try:
        return brokers.check()
    except brokers.BrokerError as e:
        pytest.fail(str(e))


@pytest.fixture
def fresh_settings(monkeypatch):
    """Let a test change SOP_* variables and see them in helpers.config.settings()."""
    monkeypatch.setattr(config, "_cached", None)
    yield monkeypatch
    config._cached = None


def cli(*args, env=None, timeout=300):
    """Run ``python -m helpers.brokers ARGS`` and return the completed process."""
    return subprocess.run([sys.executable, "-m", "helpers.brokers", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})), cwd=config.ROOT)
