"""The SeaweedFS server the project starts: it takes as many buckets as a long test session or a
long-lived `make up` stack creates (weed mini on its own refuses every write to a 65th bucket)."""

from __future__ import annotations

from pipeline.seaweed import MIN_VOLUMES, start_seaweed, stop_seaweed, volume_count

WEED_MINIS_OWN_LIMIT = 64  # volumes, measured with 65 GB free; each bucket took one
from tests.conftest import new_s3_store


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
