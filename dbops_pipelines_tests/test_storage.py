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
