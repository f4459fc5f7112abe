"""Fixtures shared by the whole suite: a real SeaweedFS S3 server, stores on both backends, and
Prefect's test harness with results kept in a temporary directory."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from pipeline.seaweed import SeaweedServer, start_seaweed, stop_seaweed
from pipeline.storage import LocalStore, ObjectStore, S3Store

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory) -> SeaweedServer:
    """A real SeaweedFS (`weed mini`) on free loopback ports in a temp dir, with credentials."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    previous = {key: os.environ.get(key) for key in server.env()}
    os.environ.update(server.env())
    yield server
    stop_seaweed(server)
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def new_s3_store(server: SeaweedServer, prefix: str | None = None) -> S3Store:
    # A shorter retry budget than the default 300 s: a failing server shows as a StoreError with its
    # cause before pytest-timeout's 300 s would cut the test off without one.
    store = S3Store("test-" + uuid.uuid4().hex[:12], prefix or "p", endpoint_url=server.endpoint_url,
                    retry_seconds=30)
    store.ensure_bucket()
    return store


@pytest.fixture
def s3_store(seaweed) -> S3Store:
    return new_s3_store(seaweed)


@pytest.fixture
def local_store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store", "p")


@pytest.fixture(params=["s3", "local"])
def store(request, tmp_path) -> ObjectStore:
    """The same test against both backends."""
    if request.param == "s3":
        return new_s3_store(request.getfixturevalue("seaweed"))
    return LocalStore(tmp_path / "store", "p")


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """Prefect's test harness (its own database), with result storage in a temp dir so nothing
    leaks between test sessions through $PREFECT_HOME/storage."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(results)}):
        with prefect_test_harness(server_startup_timeout=120):
            yield
