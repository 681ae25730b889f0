"""Review fixes of WAL archiving, without a server: `wal-fetch --strict` (every failure but "not
in the archive" exits above 125, so PostgreSQL stops recovery instead of ending it there), an
unreadable config as a clean error, the local store's directory fsyncs (a put that returned
survives a crash of the store's host), and the spool's per-store tag including the S3 endpoint."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

import pytest

from dbops_pipelines import cli_wal
from dbops_pipelines.config import WalSettings, load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.storage.local import LocalStore
from dbops_pipelines.wal.archive import Spool, store_file
from dbops_pipelines.wal.naming import archive_key, cluster_prefix

CLUSTER = "db.example:5432"
SEGMENT = "000000010000000000000003"
MISSING = "0000000100000000000000F0"


@pytest.fixture
def setup(tmp_path, write_config, monkeypatch):
    """A config with target app (wal archiving, no prefetch) on a local store holding SEGMENT."""
    # The resolve cache of cli_wal lives in $TMPDIR: keep it (and nothing else) in this test's folder.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    cfg_path = write_config({"app": {"dsn": f"postgresql://u@{CLUSTER}/app",
                                     "wal": {"prefetch": 0, "spool_dir": str(tmp_path / "spool")}}})
    ctx = FleetContext(load_config(cfg_path))
    seg = tmp_path / "files" / SEGMENT
    seg.parent.mkdir()
    seg.write_bytes(os.urandom(64 << 10))
    data = seg.read_bytes()
    header = {"format": "dbops-wal", "version": 1, "cluster": cluster_prefix(CLUSTER), "name": SEGMENT,
              "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "system_identifier": "7000000000000000001"}
    store_file(ctx.store, ctx.write_key, CLUSTER, seg, header, 1)
    dest = tmp_path / "pg_wal"
    dest.mkdir()
    return {"ctx": ctx, "config": cfg_path, "data": data, "dest": dest}


def _fetch(name: str, dest: Path, *extra: str) -> int:
    return cli_wal.main(["wal-fetch", name, str(dest / "RECOVERYXLOG"), "--target", "app", *extra])


def _damage(ctx: FleetContext) -> None:
    key = archive_key(CLUSTER, SEGMENT)
    damaged = bytearray(ctx.store.get_bytes(key))
    damaged[len(damaged) // 2] ^= 0x01
    ctx.store.put(key, [bytes(damaged)], overwrite=True)


def test_fetch_works_with_and_without_strict(setup, capsys):
    for extra in ((), ("--strict",)):
        assert _fetch(SEGMENT, setup["dest"], *extra) == 0
        assert (setup["dest"] / "RECOVERYXLOG").read_bytes() == setup["data"]
        (setup["dest"] / "RECOVERYXLOG").unlink()
    assert capsys.readouterr().err == ""


def test_missing_file_is_exit_1_silently_also_with_strict(setup, capsys):
    for extra in ((), ("--strict",)):
        assert _fetch(MISSING, setup["dest"], *extra) == 1
        out = capsys.readouterr()
        assert (out.out, out.err) == ("", "")
    assert list(setup["dest"].iterdir()) == []


def test_damaged_object_exits_3_without_strict_and_above_125_with_it(setup, capsys):
    _damage(setup["ctx"])
    assert _fetch(SEGMENT, setup["dest"]) == 3
    err = capsys.readouterr().err
    assert "error:" in err and SEGMENT in err and "Traceback" not in err

    code = _fetch(SEGMENT, setup["dest"], "--strict")
    err = capsys.readouterr().err
    assert code >= 126, err
    assert "error:" in err and SEGMENT in err and "--strict" in err and "Traceback" not in err
    assert list(setup["dest"].iterdir()) == []        # nothing written, no temporary left


def test_key_missing_or_store_unreachable_exit_above_125_with_strict(setup, monkeypatch, capsys):
    from dbops_pipelines_tests.conftest import KEY_ENV

    monkeypatch.delenv(KEY_ENV)
    assert _fetch(SEGMENT, setup["dest"]) == 5
    assert _fetch(SEGMENT, setup["dest"], "--strict") >= 126
    assert "Traceback" not in capsys.readouterr().err

    def unreachable(self, key):
        from dbops_pipelines.errors import StorageError
        raise StorageError("the store is unreachable", "check the network")

    monkeypatch.setattr(LocalStore, "stat", unreachable)
    assert _fetch(SEGMENT, setup["dest"]) == 5
    assert _fetch(SEGMENT, setup["dest"], "--strict") >= 126
    assert _fetch(MISSING, setup["dest"], "--strict") >= 126    # unknown is not "missing"


def test_unexpected_error_exits_above_125_with_strict(setup, monkeypatch, capsys):
    def boom(*a, **k):
        raise RuntimeError("surprise")

    monkeypatch.setattr(LocalStore, "stat", boom)
    assert _fetch(SEGMENT, setup["dest"]) == 5
    assert _fetch(SEGMENT, setup["dest"], "--strict") >= 126
    err = capsys.readouterr().err
    assert "unexpected RuntimeError" in err and "Traceback" not in err


def test_unreadable_config_is_a_clean_error(setup, monkeypatch, capsys):
    config = setup["config"]
    real_read_bytes = Path.read_bytes

    def denied(self):
        if self == config:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    if os.geteuid() == 0:      # root reads a file of mode 000: deny it as the server's OS user would be
        monkeypatch.setattr(Path, "read_bytes", denied)
    else:
        os.chmod(config, 0)
    for extra, expected in (((), 5), (("--strict",), None)):
        code = _fetch(SEGMENT, setup["dest"], *extra)
        err = capsys.readouterr().err
        assert code == expected if expected else code >= 126, err
        assert f"cannot read the config file {config}: Permission denied" in err
        assert "must be able to read it" in err
        assert "Traceback" not in err and "unexpected" not in err
    assert list(setup["dest"].iterdir()) == []


def test_config_that_is_a_directory_is_a_clean_error(setup, monkeypatch, capsys, tmp_path):
    folder = tmp_path / "confdir"
    folder.mkdir()
    monkeypatch.setenv("DBOPS_CONFIG", str(folder))
    assert _fetch(SEGMENT, setup["dest"], "--strict") >= 126
    err = capsys.readouterr().err
    assert f"cannot read the config file {folder}" in err and "Traceback" not in err


# --- the local store: directory fsyncs -------------------------------------------------------

def _record_dir_fsyncs(monkeypatch, watch: Path) -> list[tuple[tuple[int, int], bool]]:
    """os.fsync calls on directories: ((st_dev, st_ino), whether ``watch`` existed then)."""
    synced = []
    real = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append(((st.st_dev, st.st_ino), watch.exists()))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _ident(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("overwrite", [False, True])
def test_local_put_fsyncs_the_new_directories_and_the_parent_after_publishing(tmp_path, monkeypatch, overwrite):
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store").mkdir()
    key = "wal/c/archive/0000000100000000/000000010000000000000001.zst.aes"
    final = tmp_path / "store" / key
    synced = _record_dir_fsyncs(monkeypatch, final)
    store.put_bytes(key, b"segment", overwrite=overwrite)
    assert final.read_bytes() == b"segment"
    assert [p.name for p in final.parent.iterdir()] == [final.name]     # the temporary file is gone

    dirs = {d for d, _ in synced}
    # Each directory mkdir created is made durable in its parent: store, store/wal, ..., archive.
    for created in (final.parent, final.parent.parent, final.parent.parent.parent, tmp_path / "store" / "wal"):
        assert _ident(created.parent) in dirs, created
    # The parent is synced once the object is there under its final name.
    assert (_ident(final.parent), True) in synced


def test_local_put_into_an_existing_directory_fsyncs_it_after_linking(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("archive/grp/a", b"a")
    final = tmp_path / "store" / "archive" / "grp" / "b"
    synced = _record_dir_fsyncs(monkeypatch, final)
    store.put_bytes("archive/grp/b", b"b")
    assert synced == [(_ident(final.parent), True)]    # no directory was created: only the parent, after the link


# --- the spool: one per store, S3 endpoint and region included --------------------------------

def _s3_ctx(write_config, **storage) -> FleetContext:
    pytest.importorskip("boto3")
    path = write_config({"app": f"postgresql://u@{CLUSTER}/app"},
                        storage={"url": "s3://wal-archive/prod", **storage})
    return FleetContext(load_config(path))


def test_spool_differs_between_s3_endpoints_with_the_same_bucket(tmp_path, write_config, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    settings = WalSettings(spool_dir=str(tmp_path / "spool"))
    a = _s3_ctx(write_config, s3_endpoint_url="http://store-a.example:8333")
    b = _s3_ctx(write_config, s3_endpoint_url="http://store-b.example:8333")
    assert a.store.location("x") == b.store.location("x")        # what the tag used to be made of
    spool_a = Spool.locate(a.store, CLUSTER, settings).work
    spool_b = Spool.locate(b.store, CLUSTER, settings).work
    assert spool_a != spool_b
    assert Spool.locate(a.store, CLUSTER, settings).work == spool_a    # stable for one store

    # A segment recorded as pushed to store A is not "already pushed" for store B.
    Spool(spool_a).record_pushed(SEGMENT, "0" * 64)
    assert Spool(spool_b).pushed(SEGMENT) is None

    c = _s3_ctx(write_config, s3_endpoint_url="http://store-a.example:8333", s3_region="eu-central-1")
    assert Spool.locate(c.store, CLUSTER, settings).work not in (spool_a, spool_b)


def test_spool_of_a_local_store_keeps_its_tag(tmp_path):
    store = LocalStore(tmp_path / "store")
    settings = WalSettings(spool_dir=str(tmp_path / "spool"))
    tag = hashlib.sha256(store.location(cluster_prefix(CLUSTER)).encode()).hexdigest()[:12]
    assert Spool.locate(store, CLUSTER, settings).work == tmp_path / "spool" / tag
