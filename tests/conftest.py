"""Shared fixtures: small synthetic worlds written in the real on-disk formats."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from flows.cli import temporary_prefect_server_defaults  # the parser only: no Prefect, no torch

# Prefect: a private home (its database and settings), the CLI's settings of its temporary server
# (no telemetry, time to start), before any import of it; a developer's PREFECT_API_URL must not
# send test runs to their server.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="webvse-prefect-home-")
temporary_prefect_server_defaults()
os.environ.pop("PREFECT_API_URL", None)
# webvse's per-user state (the hourly Flickr budget per key) goes to this run's own folder
os.environ["WEBVSE_STATE_DIR"] = tempfile.mkdtemp(prefix="webvse-state-")

import prefect.main  # noqa: F401  # configures Prefect's logging now, on the real streams (see below)
import pytest
import torch

from webvse_model.datasets.synthetic import SyntheticSizes, generate_synthetic_precomp

torch.set_num_threads(2)
# Why prefect is imported above: its console log handler keeps the stderr it finds when logging is
# configured. Configured first inside a test that captures output (capsys), it kept writing to
# that capture after pytest closed it, and every later flow's log line failed ("I/O operation on
# closed file", then a RecursionError): tests/test_cli.py failed when run on its own.

TINY = SyntheticSizes(train=600, val=40, test=40, web=400, feature_dim=64, tag_dim=16, noise=0.1)


@pytest.fixture(scope="session")
def tiny_precomp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, well separated synthetic precomp folder (train/dev/test + web pairs)."""
    return generate_synthetic_precomp(tmp_path_factory.mktemp("precomp"), TINY, seed=3)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop Prefect's ephemeral API server now, while pytest's streams are open: left to its
    atexit hook, its "Stopping temporary server" line is logged into a closed stream and
    prints a '--- Logging error ---' traceback after the summary."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    # Send what the last flow runs still hold in their queues first: drained after the server
    # stopped, they print "--- Error logging to API --- All connection attempts failed".
    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=30)
    for server in list(SubprocessASGIServer._instances.values()):  # no public registry of running servers
        server.stop()
    # The private Prefect home (its SQLite database) is this run's alone: leave no trace in /tmp.
    shutil.rmtree(os.environ["PREFECT_HOME"], ignore_errors=True)
    shutil.rmtree(os.environ["WEBVSE_STATE_DIR"], ignore_errors=True)
