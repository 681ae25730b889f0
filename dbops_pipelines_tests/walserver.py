"""A real PostgreSQL 15 archiving through `dbops wal-push` (run by the server as its own OS user)
into a local file store, for the WAL tests (test_pitr.py, test_verify_base.py).

    with archiving_world(tmp_path_factory.mktemp("pitr")) as w:
        w.sql("CREATE TABLE ...")
        w.switch_and_wait()
        ...

The store, the server's spool and the recovered servers' fetch spool belong to the `postgres`
OS user when the tests run as root; the config (DBOPS_CONFIG), the key and TMPDIR are set in the
environment for the block, as an operator's shell would have them.
"""

from __future__ import annotations

import base64
import os
import pwd
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from dbops_pipelines.config import load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.localdev.pgcluster import PG_OS_USER, LocalCluster

KEY_ENV = "DBOPS_TEST_PITR_KEY"
AS_ROOT = os.geteuid() == 0


def for_server(path: Path) -> Path:
    """``path`` created mode 0700 and, as root, given to the server's OS user."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if AS_ROOT:
        pg = pwd.getpwnam(PG_OS_USER)
        os.chown(path, pg.pw_uid, pg.pw_gid)
    return path


class World:
    def __init__(self, base: Path):
        self.base = base
        self.key = base64.b64encode(os.urandom(32)).decode()
        self.cluster: LocalCluster
        self.config_path: Path
        self.store_dir: Path

    def ctx(self) -> FleetContext:
        return FleetContext(load_config(self.config_path))

    def sql(self, query: str, params=None):
        return self.cluster.execute(query, dbname="app", params=params)

    def switch_and_wait(self, timeout: float = 60) -> None:
        last = self.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        self.sql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            archived = self.cluster.execute("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            if archived and archived >= last:
                return
            time.sleep(0.2)
        pytest.fail(f"{last} not archived: {self.cluster.log_file.read_text()[-2000:]}")


@contextmanager
def archiving_world(base: Path, target: dict | None = None) -> Iterator[World]:
    """A started cluster archiving into ``base/store`` with a database `app`, and the target `app`
    in ``base/conf/dbops.yaml`` (``target``: more settings of it, e.g. roles). Stopped afterwards."""
    w = World(base)
    store = w.store_dir = for_server(base / "store")
    spool = for_server(base / "server-tmp")
    conf = base / "conf"
    conf.mkdir(mode=0o755)
    w.cluster = LocalCluster(base / "pg")
    w.config_path = conf / "dbops.yaml"
    w.config_path.write_text(yaml.safe_dump({
        "storage": {"url": f"file://{store}"}, "encryption": {"key_env": KEY_ENV},
        "targets": {"app": {"dsn": w.cluster.dsn("app"), "wal": {"prefetch": 4}, **(target or {})}}}))
    os.chmod(w.config_path, 0o644)
    w.cluster.extra_conf = "\n".join([
        "archive_mode = on",
        f"archive_command = '{sys.executable} -m dbops_pipelines.cli_wal wal-push %p --target app'"])
    w.cluster.env = {"DBOPS_CONFIG": str(w.config_path), KEY_ENV: w.key, "TMPDIR": str(spool)}
    w.cluster.start()
    try:
        w.cluster.create_database("app")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(KEY_ENV, w.key)
            mp.setenv("DBOPS_CONFIG", str(w.config_path))
            mp.setenv("TMPDIR", str(for_server(base / "fetch-tmp")))     # the recovered servers' spool
            yield w
    finally:
        w.cluster.stop()
