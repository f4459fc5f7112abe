"""The ObjectStore contract, on a real SeaweedFS S3 server and on a local directory.

Tests taking the `store` fixture run once per backend; `s3_store` / `local_store` tests are
backend-specific (credentials, bucket versioning, pickling, multipart; key validation on disk).
"""

from __future__ import annotations

import os
import pickle
import uuid

import pytest

from pipeline.storage import LocalStore, NotFound, ObjectStore, S3Store, StoreError

REFS_KEY = "refs/model.json"


def is_s3(store: ObjectStore) -> bool:
    return isinstance(store, S3Store)


# ---------------------------------------------------------------------------------------------
# Both backends


def test_put_get_bytes_round_trip(store):
    payload = bytes(range(256)) * 3 + b"\x00end"
    assert store.put_bytes("a/b/blob.bin", payload) is True
    assert store.get_bytes("a/b/blob.bin") == payload
    # An overwrite replaces the whole object.
    store.put_bytes("a/b/blob.bin", b"second")
    assert store.get_bytes("a/b/blob.bin") == b"second"
    # Empty objects are objects too.
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""
    assert store.size("empty") == 0


def test_put_file_and_download(store, tmp_path):
    source = tmp_path / "in.bin"
    data = os.urandom(200_000)
    source.write_bytes(data)
    store.put_file("files/in.bin", source)
    assert store.get_bytes("files/in.bin") == data
    target = tmp_path / "out.bin"
    store.download("files/in.bin", target)
    assert target.read_bytes() == data


def test_get_range_reads_just_those_bytes(store):
    data = os.urandom(10_000)
    store.put_bytes("files/ranged.bin", data)
    assert store.get_range("files/ranged.bin", 1234, 567) == data[1234:1801]
    assert store.get_range("files/ranged.bin", 0, 1) == data[:1]
    assert store.get_range("files/ranged.bin", 9_990, 10) == data[-10:]
    with pytest.raises(NotFound):
        store.get_range("no/such/key", 0, 10)


def test_missing_key_raises_not_found(store, tmp_path):
    with pytest.raises(NotFound):
        store.get_bytes("no/such/key")
    with pytest.raises(NotFound):
        store.download("no/such/key", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # NotFound is a KeyError, so callers may catch either.
    assert issubclass(NotFound, KeyError)


def test_size_and_exists(store):
    assert store.size("k/obj") is None
    assert store.exists("k/obj") is False
    store.put_bytes("k/obj", b"12345")
    assert store.size("k/obj") == 5
    assert store.exists("k/obj") is True
    # A "directory" is not an object.
    assert store.size("k") is None
    assert store.exists("k") is False


def test_put_if_absent_never_overwrites(store):
    assert store.put_bytes("commit/manifest.json", b"first", if_absent=True) is True
    assert store.put_bytes("commit/manifest.json", b"second", if_absent=True) is False
    assert store.get_bytes("commit/manifest.json") == b"first"
    assert store.size("commit/manifest.json") == len(b"first")
    # A plain put still overwrites.
    store.put_bytes("commit/manifest.json", b"third")
    assert store.get_bytes("commit/manifest.json") == b"third"


def test_list_is_recursive_and_sorted(store):
    keys = ["a/b/2", "a/b/1", "a/b/c/3", "a/bc/4", "z/5", "a/0"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert list(store.list()) == sorted(keys)
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("a/b/")) == ["a/b/1", "a/b/2", "a/b/c/3"]
    assert list(store.list("z/")) == ["z/5"]
    assert list(store.list("nothing/")) == []


def test_list_children(store):
    for key in ["a/b/x", "a/b/y/1", "a/b/y/2", "a/c", "a/d/e/f"]:
        store.put_bytes(key, b".")
    assert store.list_children("a") == ["b", "c", "d"]
    assert store.list_children("a/") == ["b", "c", "d"]
    assert store.list_children("a/b") == ["x", "y"]
    assert store.list_children("a/d") == ["e"]
    assert store.list_children("missing") == []


def test_list_of_store_with_prefix_hides_other_prefixes(store, tmp_path):
    """Keys are relative to the store's prefix: a sibling store's keys are invisible."""
    if is_s3(store):
        other = S3Store(store.bucket, "other", endpoint_url=store.endpoint_url)
    else:
        other = LocalStore(tmp_path / "store", "other")
    other.put_bytes("x/1", b"1")
    store.put_bytes("x/2", b"2")
    assert list(store.list()) == ["x/2"]
    assert list(other.list()) == ["x/1"]
    assert store.get_bytes("x/2") == b"2"
    with pytest.raises(NotFound):
        store.get_bytes("x/1")


def test_versions_keep_overwritten_refs(store):
    bodies = [b'{"v": 1}', b'{"v": 22}', b'{"v": 333}']
    for body in bodies:
        store.put_bytes(REFS_KEY, body)
    history = store.versions(REFS_KEY)
    assert len(history) == 3
    # Newest first; only the newest is the latest.
    assert [store.get_version(REFS_KEY, v.version_id) for v in history] == bodies[::-1]
    assert [v.size for v in history] == [len(b) for b in bodies[::-1]]
    assert [v.latest for v in history] == [True, False, False]
    assert len({v.version_id for v in history}) == 3
    assert store.get_bytes(REFS_KEY) == bodies[-1]


def test_versions_of_missing_key_is_empty(store):
    assert store.versions("refs/none.json") == []
    store.put_bytes("refs/one.json", b"x")
    assert [store.get_version("refs/one.json", v.version_id) for v in store.versions("refs/one.json")] == [b"x"]


def test_get_version_unknown_raises_not_found(store):
    store.put_bytes(REFS_KEY, b"x")
    with pytest.raises(NotFound):
        store.get_version(REFS_KEY, "20000101T000000.000000Z" if not is_s3(store) else "nonexistentversionid")


def test_uri_forms(store, tmp_path):
    if is_s3(store):
        assert store.uri("a/b.json") == f"s3://{store.bucket}/p/a/b.json"
        assert store.uri() == f"s3://{store.bucket}/p"
        assert store.uri("/a/") == f"s3://{store.bucket}/p/a"
    else:
        base = (tmp_path / "store" / "p").resolve()
        assert store.uri("a/b.json") == (base / "a" / "b.json").as_uri()
        assert store.uri() == base.as_uri()
        assert store.uri().startswith("file:///")


def test_delete(store):
    store.put_bytes("scratch/x", b"1")
    store.delete("scratch/x")
    assert not store.exists("scratch/x")
    store.delete("scratch/never-existed")  # deleting a missing key is not an error


# ---------------------------------------------------------------------------------------------
# S3 only


def test_s3_wrong_credentials_raise_store_error(s3_store, monkeypatch):
    s3_store.put_bytes("secret/obj", b"data")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-not-the-secret")
    bad = S3Store(s3_store.bucket, "p", endpoint_url=s3_store.endpoint_url, max_attempts=1)
    with pytest.raises(StoreError):
        bad.put_bytes("secret/other", b"x")
    with pytest.raises(StoreError):
        bad.put_bytes("secret/other", b"x", if_absent=True)
    with pytest.raises(StoreError):
        bad.get_bytes("secret/obj")
    with pytest.raises(StoreError):
        bad.size("secret/obj")
    with pytest.raises(StoreError):
        bad.get_range("secret/obj", 0, 2)
    with pytest.raises(StoreError):
        bad.ensure_bucket()
    # The wrong secret must not have been able to write anything.
    assert s3_store.get_bytes("secret/obj") == b"data"
    assert not s3_store.exists("secret/other")



@pytest.mark.parametrize("operation", ["put_file", "list", "list_children", "versions", "delete"])
def test_s3_wrong_credentials_every_operation_raises_store_error(s3_store, monkeypatch, tmp_path, operation):
    local = tmp_path / "f"
    local.write_bytes(b"x")
    s3_store.put_bytes("d/obj", b"data")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-not-the-secret")
    bad = S3Store(s3_store.bucket, "p", endpoint_url=s3_store.endpoint_url, max_attempts=1)
    calls = {
        "put_file": lambda: bad.put_file("d/new", local),
        "list": lambda: list(bad.list("d/")),
        "list_children": lambda: bad.list_children("d"),
        "versions": lambda: bad.versions("d/obj"),
        "delete": lambda: bad.delete("d/obj"),
    }
    with pytest.raises(StoreError):
        calls[operation]()


def test_s3_ensure_bucket_creates_bucket_with_versioning(seaweed):
    store = S3Store("test-" + uuid.uuid4().hex[:12], "p", endpoint_url=seaweed.endpoint_url)
    store.ensure_bucket()
    assert store.client.get_bucket_versioning(Bucket=store.bucket).get("Status") == "Enabled"
    # Idempotent on an existing bucket, and switches versioning on where it is off.
    store.client.put_bucket_versioning(Bucket=store.bucket, VersioningConfiguration={"Status": "Suspended"})
    store.ensure_bucket()
    assert store.client.get_bucket_versioning(Bucket=store.bucket).get("Status") == "Enabled"


def test_s3_store_pickles_and_works_after_unpickling(s3_store):
    s3_store.put_bytes("pickled/a", b"before")
    assert s3_store._client is not None  # a live client is not part of the pickle
    clone = pickle.loads(pickle.dumps(s3_store))
    assert isinstance(clone, S3Store)
    assert (clone.bucket, clone.prefix, clone.endpoint_url) == (s3_store.bucket, s3_store.prefix, s3_store.endpoint_url)
    assert clone.get_bytes("pickled/a") == b"before"
    clone.put_bytes("pickled/b", b"after")
    assert s3_store.get_bytes("pickled/b") == b"after"
    # The original keeps working too.
    assert list(s3_store.list("pickled/")) == ["pickled/a", "pickled/b"]


def test_s3_multipart_upload_round_trips(s3_store, tmp_path):
    store = S3Store(s3_store.bucket, "mp", endpoint_url=s3_store.endpoint_url, multipart_threshold_mb=5)
    big = tmp_path / "big.bin"
    data = os.urandom(12 * 1024 * 1024)
    big.write_bytes(data)
    store.put_file("big/file.bin", big)
    assert store.size("big/file.bin") == len(data)
    # 12 MB with 5 MB parts: a multipart upload of three parts (its ETag says so).
    etag = store.client.head_object(Bucket=store.bucket, Key="mp/big/file.bin")["ETag"].strip('"')
    assert etag.endswith("-3"), etag
    out = tmp_path / "back.bin"
    store.download("big/file.bin", out)
    assert out.read_bytes() == data
    assert store.get_bytes("big/file.bin") == data


def test_s3_http_link_is_a_working_presigned_url(s3_store):
    import urllib.request

    s3_store.put_bytes("link/obj.txt", b"hello link")
    url = s3_store.http_link("link/obj.txt")
    assert url and url.startswith(s3_store.endpoint_url)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"hello link"


def test_s3_list_without_trailing_slash_matches_local(s3_store, tmp_path):
    local = LocalStore(tmp_path / "store", "p")
    for backend in (s3_store, local):
        for key in ["a/b/1", "a/b/c/3", "a/bc/4"]:
            backend.put_bytes(key, b".")
    assert list(local.list("a/b")) == ["a/b/1", "a/b/c/3"]
    assert list(s3_store.list("a/b")) == list(local.list("a/b"))


# ---------------------------------------------------------------------------------------------
# Local only


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "a/..", ".history/refs/x", ""])
def test_local_refuses_keys_outside_the_store(local_store, key, tmp_path):
    with pytest.raises(ValueError):
        local_store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        local_store.get_bytes(key)
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "store" / "escape").exists()


def test_local_history_is_not_listed_and_temp_files_hidden(local_store):
    local_store.put_bytes(REFS_KEY, b"1")
    local_store.put_bytes(REFS_KEY, b"2")
    # A staged temporary file of an interrupted write is not an object.
    (local_store.base / "refs" / ".model.json.abc.tmp").write_bytes(b"partial")
    assert list(local_store.list()) == [REFS_KEY]
    assert local_store.list_children("refs") == ["model.json"]
    assert local_store.list_children("") == ["refs"]


def test_local_put_file_of_unversioned_key_keeps_no_history(local_store, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"one")
    local_store.put_file("data/f", src)
    src.write_bytes(b"two")
    local_store.put_file("data/f", src)
    assert [v.latest for v in local_store.versions("data/f")] == [True]
    assert local_store.get_bytes("data/f") == b"two"
