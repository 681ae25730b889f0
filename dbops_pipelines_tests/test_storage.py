"""Both stores behind one interface, against a real directory and a real S3 server."""

from __future__ import annotations

import hashlib
import os

import pytest

from dbops_pipelines.errors import StorageError
from dbops_pipelines.storage import open_store
from dbops_pipelines.storage.s3 import MIB, S3Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(f"file://{tmp_path / 'store'}")
    seaweed = request.getfixturevalue("seaweed")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, "prefix/x", endpoint_url=seaweed.endpoint_url, client=seaweed.s3_client())


def chunks(data: bytes, size: int = 1 << 20):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_put_get_list_delete(store):
    data = os.urandom(3 * MIB + 17)
    obj = store.put("app/b1/data", chunks(data))
    assert obj.size == len(data) and obj.sha256 == hashlib.sha256(data).hexdigest()
    store.put_bytes("app/b1/manifest.json", b"{}")
    store.put_bytes("other/b2/manifest.json", b"{}")
    assert b"".join(store.get("app/b1/data")) == data
    assert [o.key for o in store.list("app/")] == ["app/b1/data", "app/b1/manifest.json"]
    assert store.exists("app/b1/data") and not store.exists("app/b1/nope")
    store.delete("app/b1/data")
    store.delete("app/b1/data")  # idempotent
    assert [o.key for o in store.list("app/")] == ["app/b1/manifest.json"]
    with pytest.raises(StorageError, match="does not exist"):
        b"".join(store.get("app/b1/data"))


def test_failing_producer_leaves_nothing(store):
    def broken():
        yield os.urandom(MIB)
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        store.put("app/b1/data", broken())
    assert store.list() == []


def test_multipart_upload_uses_several_parts(seaweed, s3_bucket):
    store = S3Store(s3_bucket, "", endpoint_url=seaweed.endpoint_url, client=seaweed.s3_client())
    data = os.urandom(20 * MIB)
    obj = store.put("big", chunks(data), size_hint=None)
    head = seaweed.s3_client().head_object(Bucket=s3_bucket, Key="big")
    assert head["ETag"].strip('"').endswith("-3")  # 8 + 8 + 4 MiB
    assert obj.sha256 == hashlib.sha256(b"".join(store.get("big"))).hexdigest() == hashlib.sha256(data).hexdigest()


def test_wrong_credentials_explain_what_to_do(seaweed, s3_bucket):
    client = seaweed.s3_client(secret_key="wrong-secret-value")
    store = S3Store(s3_bucket, "", endpoint_url=seaweed.endpoint_url, client=client)
    with pytest.raises(StorageError) as err:
        store.put_bytes("x", b"data")
    assert "credentials" in str(err.value) and "wrong-secret-value" not in str(err.value)


# --- create-only writes, stat, listing scope, leftovers (issue 7) -----------------------------

from datetime import timedelta  # noqa: E402

from dbops_pipelines.errors import ObjectExists  # noqa: E402
from dbops_pipelines.storage import s3 as s3_module  # noqa: E402
from dbops_pipelines.storage.local import LocalStore  # noqa: E402


@pytest.mark.parametrize("size", [10, 9 * MIB])  # single request and multipart
def test_writes_are_create_only_unless_asked(store, size):
    first, second = os.urandom(size), os.urandom(size)
    store.put("wal/c1/000000010000000000000001", chunks(first))
    with pytest.raises(ObjectExists, match="already exists"):
        store.put("wal/c1/000000010000000000000001", chunks(second))
    assert b"".join(store.get("wal/c1/000000010000000000000001")) == first  # never overwritten
    store.put_bytes("lease", b"1")
    store.put_bytes("lease", b"2", overwrite=True)
    assert store.get_bytes("lease") == b"2"
    info = store.stat("wal/c1/000000010000000000000001")
    assert info is not None and info.size == size and store.stat("nope") is None


def test_small_objects_go_in_one_request(seaweed, s3_bucket):
    store = S3Store(s3_bucket, "", endpoint_url=seaweed.endpoint_url, client=seaweed.s3_client())
    store.put_bytes("small", b"x" * 1000)
    head = seaweed.s3_client().head_object(Bucket=s3_bucket, Key="small")
    assert "-" not in head["ETag"].strip('"')  # a multipart ETag ends in -<parts>


def test_local_list_walks_only_the_prefix_folder(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("backups/app/x/manifest.json", b"{}")
    store.put_bytes("wal/c1/seg", b"x")
    visited = []
    real_walk = os.walk

    def counting_walk(top, *a, **kw):
        visited.append(str(top))
        return real_walk(top, *a, **kw)

    os.walk = counting_walk
    try:
        assert [o.key for o in store.list("backups/app/")] == ["backups/app/x/manifest.json"]
    finally:
        os.walk = real_walk
    assert visited == [str(tmp_path / "store" / "backups" / "app")]


def test_failed_multipart_upload_is_aborted(seaweed, s3_bucket):
    """Fails if the abort in S3Store._put is removed: the upload would stay listed."""
    client = seaweed.s3_client()
    store = S3Store(s3_bucket, "p", endpoint_url=seaweed.endpoint_url, client=client)

    def broken():
        yield os.urandom(9 * MIB)
        yield os.urandom(9 * MIB)
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        store.put("backups/app/x/dump", broken())
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert store.list() == []


def test_part_limit_is_refused_before_the_excess_part(seaweed, s3_bucket, monkeypatch):
    monkeypatch.setattr(s3_module, "PART_LIMIT", 2)
    client = seaweed.s3_client()
    store = S3Store(s3_bucket, "", endpoint_url=seaweed.endpoint_url, client=client)
    sent = []
    real_upload = client.upload_part
    monkeypatch.setattr(client, "upload_part", lambda **kw: sent.append(kw["PartNumber"]) or real_upload(**kw))
    with pytest.raises(StorageError, match="more than 2 parts"):
        store.put("big", chunks(os.urandom(20 * MIB)), size_hint=1)
    assert sorted(sent) == [1, 2] and store.list() == []
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_s3_sweep_touches_only_its_own_prefix(seaweed, s3_bucket):
    client = seaweed.s3_client()
    store = S3Store(s3_bucket, "", endpoint_url=seaweed.endpoint_url, client=client)
    mine = client.create_multipart_upload(Bucket=s3_bucket, Key="backups/app/x/dump.pgc.zst.aes")["UploadId"]
    theirs = client.create_multipart_upload(Bucket=s3_bucket, Key="colleague/big-upload")["UploadId"]
    wal = client.create_multipart_upload(Bucket=s3_bucket, Key="wal/c1/seg")["UploadId"]
    with pytest.raises(StorageError, match="without a namespace prefix"):
        store.sweep_leftovers("", timedelta(0))
    assert store.sweep_leftovers("backups/", timedelta(0)) == ["backups/app/x/dump.pgc.zst.aes"]
    left = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])}
    assert left == {theirs, wal} and mine not in left


def test_local_sweep_removes_old_partials_under_its_prefix_only(tmp_path):
    store = LocalStore(tmp_path / "store")
    mine = tmp_path / "store" / "backups" / "app" / "x" / "dump.pgc.zst.aes.1a2b3c4d.partial"
    theirs = tmp_path / "store" / "wal" / "c1" / "seg.1a2b3c4d.partial"
    for p in (mine, theirs):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"half")
    assert store.sweep_leftovers("backups/", timedelta(hours=1)) == []  # too young
    os.utime(mine, (1, 1))
    os.utime(theirs, (1, 1))
    assert store.sweep_leftovers("backups/", timedelta(hours=1)) == ["backups/app/x/dump.pgc.zst.aes.1a2b3c4d.partial"]
    assert not mine.exists() and theirs.exists()
