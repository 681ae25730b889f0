"""The local service launchers behave as the other tests rely on."""

from __future__ import annotations

import botocore.exceptions
import pytest
from botocore.exceptions import ClientError


def test_cluster_answers_and_has_pg_stat_statements(pg_cluster, fresh_db):
    assert pg_cluster.is_running()
    assert pg_cluster.execute("select 1", dbname=fresh_db) == [(1,)]
    # Only works when the library is preloaded; the view errors otherwise.
    pg_cluster.execute("CREATE EXTENSION pg_stat_statements", dbname=fresh_db)
    rows = pg_cluster.execute("select count(*) from pg_stat_statements", dbname=fresh_db)
    assert rows[0][0] >= 0


def test_fresh_db_is_listed_and_uses_the_cluster_port(pg_cluster, fresh_db):
    names = {r[0] for r in pg_cluster.execute("select datname from pg_database")}
    assert fresh_db in names
    assert pg_cluster.dsn(fresh_db) == f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/{fresh_db}"


def test_seaweed_rejects_a_wrong_secret(seaweed, s3_bucket):
    bad = seaweed.s3_client(secret_key="not-the-secret", retries={"max_attempts": 1})
    with pytest.raises(ClientError) as info:
        bad.put_object(Bucket=s3_bucket, Key="x", Body=b"x")
    assert info.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "SignatureDoesNotMatch")


def test_seaweed_rejects_an_unknown_access_key(seaweed, s3_bucket):
    bad = seaweed.s3_client(access_key="someone-else", retries={"max_attempts": 1})
    with pytest.raises(ClientError) as info:
        bad.list_objects_v2(Bucket=s3_bucket)
    assert info.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_seaweed_put_get_round_trip(seaweed, s3_bucket):
    s3 = seaweed.s3_client()
    body = bytes(range(256)) * 40_000  # ~10 MB: more than one 4 MB filer chunk
    s3.put_object(Bucket=s3_bucket, Key="dir/blob.bin", Body=body)
    assert s3.get_object(Bucket=s3_bucket, Key="dir/blob.bin")["Body"].read() == body


def test_seaweed_kill_then_restart_serves_same_endpoint(seaweed, s3_bucket):
    s3 = seaweed.s3_client(retries={"max_attempts": 1}, connect_timeout=2)
    s3.put_object(Bucket=s3_bucket, Key="before", Body=b"kept")
    endpoint = seaweed.endpoint_url

    seaweed.kill()
    assert not seaweed.is_running()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):  # connection refused
        s3.get_object(Bucket=s3_bucket, Key="before")

    seaweed.restart()
    assert seaweed.endpoint_url == endpoint
    assert s3.get_object(Bucket=s3_bucket, Key="before")["Body"].read() == b"kept"
