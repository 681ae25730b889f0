"""Shared fixtures: a throwaway PostgreSQL cluster and S3 service per test session.

Process management lives in dbops_pipelines.localdev; this file only wires it to pytest.
"""

from __future__ import annotations

import secrets
import uuid

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


@pytest.fixture
def fresh_db(pg_cluster):
    name = f"test_{uuid.uuid4().hex[:12]}"
    pg_cluster.create_database(name)
    yield name
    pg_cluster.drop_database(name, force=True)
