"""The SeaweedFS server the project starts: it takes as many buckets as a long test session or a
long-lived `make up` stack creates (weed mini on its own refuses every write to a 65th bucket), and
once started (or restarted on its old data) it serves the objects it already holds."""

from __future__ import annotations

from pipeline.seaweed import MIN_VOLUMES, restart_seaweed, start_seaweed, stop_seaweed, volume_count
from pipeline.storage.s3 import S3Store
from tests.conftest import new_s3_store

WEED_MINIS_OWN_LIMIT = 64  # volumes, measured with 65 GB free; each bucket took one


def test_more_buckets_than_weed_minis_own_volume_limit_all_take_writes(tmp_path, monkeypatch):
    server = start_seaweed(tmp_path / "weed")
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        for i in range(WEED_MINIS_OWN_LIMIT + 6):
            store = new_s3_store(server)
            store.retry_seconds = 0  # a refused write fails at once instead of being retried
            store.put_bytes("object", b"%d" % i)
            assert store.get_bytes("object") == b"%d" % i
    finally:
        stop_seaweed(server)


def test_volume_count_follows_the_free_disk_space(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(0, 0, 300 * 128 * 1024 * 1024))
    assert volume_count(tmp_path) == 300
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(0, 0, 10 * 1024 * 1024))
    assert volume_count(tmp_path) == MIN_VOLUMES


def test_a_restarted_server_serves_its_old_objects_as_soon_as_it_is_started(tmp_path, monkeypatch):
    # The S3 gateway answers before the volume server has reported the volumes on disk; reads of
    # old objects failed with InternalError for up to 4.5 s after such a restart on a loaded machine.
    server = start_seaweed(tmp_path / "weed")
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        stores = [new_s3_store(server) for _ in range(3)]
        for i, store in enumerate(stores):
            store.put_bytes("object", b"%d" % i)
        for _restart in range(3):
            server = restart_seaweed(server)
            for i, store in enumerate(stores):
                # one attempt, no retry: nothing may hide a server that is not ready yet
                once = S3Store(store.bucket, store.prefix, endpoint_url=server.endpoint_url, max_attempts=1,
                               retry_seconds=0)
                assert once.get_bytes("object") == b"%d" % i
    finally:
        stop_seaweed(server)
