"""Shared fixtures: a throwaway PostgreSQL cluster and S3 service per test session.

Process management lives in dbops_pipelines.localdev; this file only wires it to pytest.
"""

from __future__ import annotations

import secrets
import uuid
from contextlib import contextmanager

import pytest

from dbops_pipelines.localdev.pgcluster import LocalCluster
from dbops_pipelines.localdev.seaweed import SeaweedServer

S3_TEST_ACCESS_KEY = "dbops-test-access"


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("pg"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    server = SeaweedServer(
        tmp_path_factory.mktemp("seaweed"), S3_TEST_ACCESS_KEY, secrets.token_hex(16)
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(seaweed) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    seaweed.create_bucket(name)
    return name


@contextmanager
def scratch_database(cluster: LocalCluster, prefix: str = "test"):
    """A new database on ``cluster`` named ``<prefix>_<random>``, dropped afterwards whatever happens."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    cluster.create_database(name)
    try:
        yield name
    finally:
        cluster.drop_database(name, force=True)


@pytest.fixture
def fresh_db(pg_cluster):
    with scratch_database(pg_cluster) as name:
        yield name


@pytest.fixture
def metrics_dsn(pg_cluster):
    """The DSN of an empty metrics database (stats history) of its own."""
    with scratch_database(pg_cluster, "metrics") as name:
        yield pg_cluster.dsn(name)


# --- backup fixtures -------------------------------------------------------------------------

import base64  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from dbops_pipelines.backup.crypto import key_from_env  # noqa: E402
from dbops_pipelines.config import BackupDefaults, load_config  # noqa: E402
from dbops_pipelines.sample.appdb import build_sample_database  # noqa: E402

SAMPLE_ROWS = 2000
KEY_ENV = "DBOPS_TEST_BACKUP_KEY"


@pytest.fixture(scope="session")
def sample_app(pg_cluster) -> dict:
    """The sample application database ("app", rows=2000) on the throwaway cluster; read-only for tests."""
    pg_cluster.create_database("app")
    counts = build_sample_database(pg_cluster.dsn("app"), SAMPLE_ROWS, seed=42)
    return {"dsn": pg_cluster.dsn("app"), "counts": counts}


@pytest.fixture
def backup_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    return key_from_env(KEY_ENV)


@pytest.fixture
def s3_env(seaweed, monkeypatch):
    """S3 credentials for boto3, as an operator would export them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    return seaweed


def _defaults_in_todays_shape(given: dict) -> dict:
    """`defaults` as today's shape writes it: no retries or waits in tests, and the backup keys a
    test gives flat (`retention`, `run_retries`, ...) moved under `defaults.backup`, so a test
    config never loads with the flat shape's DeprecationWarning."""
    given = dict(given)
    backup = {"run_retries": 0, "retry_delay_seconds": 0, **given.pop("backup", {})}
    for key in [k for k in given if k in BackupDefaults.model_fields]:
        backup[key] = given.pop(key)
    return {"connect_retries": 1, **given, "backup": backup}


@pytest.fixture
def write_config(tmp_path, backup_key, monkeypatch):
    """Factory: write a dbops.yaml (targets -> dsn, storage url) and point DBOPS_CONFIG at it."""

    def write(targets: dict, storage: dict | None = None, **extra) -> Path:
        raw = {
            "storage": storage or {"url": f"file://{tmp_path / 'store'}"},
            "encryption": extra.pop("encryption", {"key_env": KEY_ENV}),
            "defaults": _defaults_in_todays_shape(extra.pop("defaults", {})),
            "targets": {name: ({"dsn": t} if isinstance(t, str) else t) for name, t in targets.items()},
            **extra,
        }
        path = tmp_path / "dbops.yaml"
        path.write_text(yaml.safe_dump(raw))
        monkeypatch.setenv("DBOPS_CONFIG", str(path))
        load_config(path)  # fail here, not in the test, if the fixture wrote something invalid
        return path

    return write
from dbops_pipelines_tests.receivers import http_receiver, smtp_receiver  # noqa: F401,E402
