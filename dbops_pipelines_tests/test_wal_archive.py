"""WAL archiving (issue 10): a real PostgreSQL 15 server archiving through `dbops wal-push %p`
(archive_command, run by the server as its own OS user) into a real S3 service (SeaweedFS, a
private instance: one test stops it), `dbops wal-fetch` as restore_command would run it, and
`dbops wal verify`. The timeline logic of verify is checked on a local store without a server.

The tests of the module share one cluster and build on each other's WAL; each leaves the archive
as complete as it found it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dbops_pipelines.config import load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.localdev.pgcluster import PG_OS_USER, LocalCluster
from dbops_pipelines.localdev.seaweed import SeaweedServer
from dbops_pipelines.storage.local import LocalStore
from dbops_pipelines.wal.archive import ClusterIdentity, check_identity, store_file, verify_archive
from dbops_pipelines.wal.naming import archive_key

DBOPS = Path(sys.executable).parent / "dbops"
KEY_ENV = "DBOPS_TEST_WAL_KEY"
AS_ROOT = os.geteuid() == 0


def _searchable_by_others(path: Path) -> None:
    """o+x (search, not read) on ``path``'s directories and their ancestors, as LocalCluster does
    for its data directory: the server's OS user must reach the venv's interpreter (which may live
    under /root, e.g. with pyenv) to run archive_command."""
    for d in [path, *path.parents]:
        if d.is_dir():
            st = d.stat()
            if not st.st_mode & stat.S_IXOTH:
                os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _server_can_run_dbops() -> str | None:
    if not AS_ROOT:
        return None
    _searchable_by_others(Path(os.path.realpath(sys.executable)).parent)
    _searchable_by_others(DBOPS.parent)
    probe = subprocess.run(["runuser", "-u", PG_OS_USER, "--", str(DBOPS), "--help"], capture_output=True, text=True,
                           cwd="/", timeout=60)
    return None if probe.returncode == 0 else f"the {PG_OS_USER} OS user cannot run {DBOPS}: {probe.stderr.strip()[:200]}"


def _owned_by_server(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if AS_ROOT:
        pg = pwd.getpwnam(PG_OS_USER)
        os.chown(path, pg.pw_uid, pg.pw_gid)
    return path


class Wal:
    """The module's world: S3, config, key, and a server archiving into them."""

    def __init__(self, base: Path):
        self.base = base
        self.weed = SeaweedServer(base / "seaweed", "wal-test-access", secrets.token_hex(16))
        self.key = base64.b64encode(os.urandom(32)).decode()
        self.bucket = "wal-archive"
        self.cluster = None

    def env(self, **more) -> dict:
        return {**os.environ, "DBOPS_CONFIG": str(self.config_path), KEY_ENV: self.key,
                "AWS_ACCESS_KEY_ID": self.weed.access_key, "AWS_SECRET_ACCESS_KEY": self.weed.secret_key, **more}

    def dbops(self, *args: str, cwd: Path | None = None, tmpdir: Path | None = None, full: bool = False) -> subprocess.CompletedProcess:
        """The CLI as an operator (root here) runs it; ``tmpdir`` picks its spool. ``full``: through
        `dbops` itself; else `python -m dbops_pipelines.cli_wal`, the same commands, which starts
        several times faster (the server's archive_command is always `dbops wal-push`)."""
        env = self.env(**({"TMPDIR": str(tmpdir)} if tmpdir else {}))
        cmd = [str(DBOPS)] if full else [sys.executable, "-m", "dbops_pipelines.cli_wal"]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, cwd=cwd or self.base, timeout=120)

    def ctx(self) -> FleetContext:
        return FleetContext(load_config(self.config_path))

    def stored(self, name: str) -> bytes:
        return self.ctx().store.get_bytes(archive_key(self.cluster_name, name))

    # -- the server's WAL ------------------------------------------------------------------
    def status_files(self, suffix: str) -> set[str]:
        folder = self.cluster.data_dir / "pg_wal" / "archive_status"
        return {p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix)}

    def archiver(self) -> dict:
        row = self.cluster.execute("SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver")[0]
        return {"archived": row[0], "failed": row[1], "last": row[2]}

    def write_wal(self, switches: int) -> list[str]:
        """Rows, then a switch, ``switches`` times; the names of the segments switched out."""
        names = []
        for _ in range(switches):
            self.cluster.execute("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
            names.append(self.cluster.execute("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0])
            self.cluster.execute("SELECT pg_switch_wal()")
        return names

    def wait_archived(self, names: list[str], timeout: float = 45) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.status_files(".ready") and set(names) <= self.status_files(".done"):
                return
            time.sleep(0.2)
        pytest.fail(f"not archived within {timeout} s: {sorted(self.status_files('.ready'))}; {self.archiver()}; "
                    f"server log: {self.cluster.log_file.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def wal(tmp_path_factory):
    if shutil.which("runuser") is None and AS_ROOT:
        pytest.skip("runuser is needed to run the server as postgres")
    problem = _server_can_run_dbops()
    if problem:
        pytest.skip(problem)
    base = tmp_path_factory.mktemp("wal")
    _searchable_by_others(base)
    w = Wal(base)
    w.weed.start()
    w.weed.create_bucket(w.bucket)
    conf_dir = base / "conf"
    conf_dir.mkdir(mode=0o755)
    cluster = LocalCluster(base / "pg")
    w.config_path = conf_dir / "dbops.yaml"
    w.config_path.write_text(yaml.safe_dump({
        "storage": {"url": f"s3://{w.bucket}/prod", "s3_endpoint_url": w.weed.endpoint_url},
        "encryption": {"key_env": KEY_ENV},
        "targets": {"app": {"dsn": cluster.dsn("postgres"), "wal": {"push_parallel": 4, "prefetch": 4}}},
    }))
    os.chmod(w.config_path, 0o644)
    server_tmp = _owned_by_server(base / "server-tmp")
    cluster.extra_conf = "\n".join([
        "archive_mode = on",
        f"archive_command = '{DBOPS} wal-push %p --target app'",
        "wal_keep_size = '2GB'",        # keep every segment in pg_wal: the tests compare with them
    ])
    cluster.env = {k: v for k, v in w.env(TMPDIR=str(server_tmp)).items()
                   if k in ("DBOPS_CONFIG", KEY_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TMPDIR")}
    w.cluster = cluster
    cluster.start()
    w.cluster_name = load_config(w.config_path).server_of("app")
    cluster.execute("CREATE TABLE filler (id int, note text)")
    w.first = w.write_wal(3)
    w.wait_archived(w.first)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, w.key)
        mp.setenv("AWS_ACCESS_KEY_ID", w.weed.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", w.weed.secret_key)
        yield w
    cluster.stop()
    w.weed.kill()


def test_server_archives_and_fetch_returns_the_same_bytes(wal, tmp_path):
    state = wal.archiver()
    assert state["failed"] == 0, wal.cluster.log_file.read_text()[-2000:]
    assert state["last"] == wal.first[-1]
    report = verify_archive(wal.ctx(), wal.cluster_name)
    assert report.ok, report.to_dict()
    assert report.newest_segment == wal.first[-1]
    assert report.system_identifier and report.segment_size == 16 << 20

    # restore_command: fetch a segment; it equals what the server wrote, byte for byte.
    spool_tmp = tmp_path / "tmp"
    spool_tmp.mkdir()
    name, following = wal.first[0], wal.first[1:]
    dest = tmp_path / "RECOVERYXLOG"
    t0 = time.monotonic()
    r = wal.dbops("wal-fetch", name, str(dest), "--target", "app", tmpdir=spool_tmp, full=True)
    store_call = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert dest.read_bytes() == (wal.cluster.data_dir / "pg_wal" / name).read_bytes()

    # The following segments were prefetched into the spool, and the next call is served from it.
    prefetched = {p.name for p in spool_tmp.glob("dbops-wal-*/*/prefetch/*") if not p.name.endswith(".sha256")}
    assert set(following) <= prefetched
    nxt = tmp_path / "next"
    t0 = time.monotonic()
    r = wal.dbops("wal-fetch", following[0], str(nxt), "--target", "app", "-v", tmpdir=spool_tmp)
    spool_call = time.monotonic() - t0
    assert r.returncode == 0 and "prefetch spool" in r.stderr, r.stderr
    assert nxt.read_bytes() == (wal.cluster.data_dir / "pg_wal" / following[0]).read_bytes()
    print(f"wal-fetch from the store (with prefetch of {len(following)}): {store_call:.2f} s; from the spool: {spool_call:.2f} s")

    # A prefetched copy altered in the spool is not used: the segment comes from the store again.
    altered = next(p for p in spool_tmp.glob(f"dbops-wal-*/*/prefetch/{following[1]}"))
    altered.write_bytes(b"\0" * altered.stat().st_size)
    again = tmp_path / "again"
    r = wal.dbops("wal-fetch", following[1], str(again), "--target", "app", "-v", tmpdir=spool_tmp)
    assert r.returncode == 0 and "fetched from the store" in r.stderr, r.stderr
    assert again.read_bytes() == (wal.cluster.data_dir / "pg_wal" / following[1]).read_bytes()


def test_duplicate_push_identical_accepted_different_refused(wal, tmp_path):
    name = wal.first[1]
    before = wal.stored(name)
    # The same content again (a fresh spool: the store is asked, the copy read back and compared).
    r = wal.dbops("wal-push", f"pg_wal/{name}", "--target", "app", cwd=wal.cluster.data_dir, tmpdir=tmp_path)
    assert r.returncode == 0, r.stderr

    # Different content under the same name: refused loudly, nothing overwritten.
    other = tmp_path / "elsewhere" / name
    other.parent.mkdir()
    data = bytearray((wal.cluster.data_dir / "pg_wal" / name).read_bytes())
    data[5000] ^= 0xFF
    other.write_bytes(bytes(data))
    r = wal.dbops("wal-push", str(other), "--target", "app", cwd=wal.cluster.data_dir, tmpdir=tmp_path, full=True)
    assert r.returncode == 3, r.stderr
    assert name in r.stderr and "different content" in r.stderr and "what to do:" in r.stderr
    assert hashlib.sha256(bytes(data)).hexdigest() in r.stderr
    assert hashlib.sha256((wal.cluster.data_dir / "pg_wal" / name).read_bytes()).hexdigest() in r.stderr
    assert "Traceback" not in r.stderr
    assert wal.stored(name) == before


def test_corrupted_segment_refused_on_fetch(wal, tmp_path):
    name = wal.first[2]
    store = wal.ctx().store
    key = archive_key(wal.cluster_name, name)
    original = store.get_bytes(key)
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    store.put(key, [bytes(damaged)], overwrite=True)
    try:
        dest_dir = tmp_path / "pg_wal"
        dest_dir.mkdir()
        r = wal.dbops("wal-fetch", name, str(dest_dir / "RECOVERYXLOG"), "--target", "app", tmpdir=tmp_path)
        assert r.returncode == 3, r.stderr
        assert "error:" in r.stderr and name in r.stderr and "failed authentication" in r.stderr
        assert list(dest_dir.iterdir()) == []          # nothing at the destination, no temporary left

        report = verify_archive(wal.ctx(), wal.cluster_name)
        assert [d.name for d in report.damaged] == [name] and not report.ok
        assert verify_archive(wal.ctx(), wal.cluster_name, quick=True).ok   # --quick only lists
    finally:
        store.put(key, [original], overwrite=True)


def test_missing_segment_is_exit_1_without_noise(wal, tmp_path):
    for name, full in (("0000000100000000000000F0", True), ("00000002.history", False)):
        dest = tmp_path / name
        r = wal.dbops("wal-fetch", name, str(dest), "--target", "app", tmpdir=tmp_path, full=full)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", "")
        assert not dest.exists()


def test_store_unreachable_push_fails_and_nothing_is_lost(wal):
    before = wal.archiver()
    wal.weed.stop()                    # the store goes away (and comes back on the same port)
    try:
        during = wal.write_wal(2)
        deadline = time.monotonic() + 45
        while wal.archiver()["failed"] <= before["failed"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert wal.archiver()["failed"] > before["failed"], "the archiver never saw wal-push fail"
        assert set(during) & wal.status_files(".ready"), "segments should wait as .ready while the store is down"
        log = wal.cluster.log_file.read_text()
        assert "archive command failed with exit code 5" in log and "error: S3 upload" in log, log[-3000:]
    finally:
        wal.weed.start()
    after = wal.write_wal(1)           # a new segment wakes the archiver at once
    wal.wait_archived(during + after, timeout=90)
    assert wal.archiver()["last"] == after[-1]
    # Nothing lost: every segment the server produced (and marked .done) is in the archive, and
    # the archive holds nothing else.
    report = verify_archive(wal.ctx(), wal.cluster_name, quick=True)
    assert report.ok, report.to_dict()
    archived = {o.key.rsplit("/", 1)[1].removesuffix(".zst.aes") for o in wal.ctx().store.list("wal/")
                if o.key.endswith(".zst.aes")}
    assert archived == wal.status_files(".done")


def test_foreign_system_identifier_refused(wal, tmp_path):
    other = LocalCluster(tmp_path / "other")
    other.init()                       # a new cluster: another system identifier, never started
    name = "000000010000000000000001"
    before = wal.stored(name)
    r = wal.dbops("wal-push", f"pg_wal/{name}", "--target", "app", cwd=other.data_dir, tmpdir=tmp_path)
    assert r.returncode == 4, r.stderr
    assert "system identifier" in r.stderr and "refused" in r.stderr and "what to do:" in r.stderr
    assert wal.stored(name) == before


def test_wal_verify_reports_a_gap(wal, tmp_path):
    store = wal.ctx().store
    name = wal.first[1]
    key = archive_key(wal.cluster_name, name)
    kept = store.get_bytes(key)
    store.delete(key)
    try:
        r = wal.dbops("wal", "verify", "app", "--json", tmpdir=tmp_path, full=True)
        assert r.returncode == 1, r.stderr
        report = json.loads(r.stdout)
        assert report["gaps"] == [{"timeline": 1, "first": name, "last": name, "count": 1}]
        r = wal.dbops("wal", "verify", "--quick", tmpdir=tmp_path)     # the config's only target with wal
        assert r.returncode == 1 and f"GAP timeline 1: {name} (1 missing)" in r.stdout, r.stdout
        assert "NOT OK: 1 missing segment(s)" in r.stderr and "what to do:" in r.stderr
    finally:
        store.put(key, [kept])
    assert verify_archive(wal.ctx(), wal.cluster_name).ok


# --- verify's timeline logic, on a local store (no server) ------------------------------------

def test_verify_follows_timeline_switches(tmp_path, write_config):
    cfg_path = write_config({"app": "postgresql://u@db.example:5432/app"})
    ctx = FleetContext(load_config(cfg_path), store=LocalStore(tmp_path / "store"))
    cluster = "db.example:5432"
    check_identity(ctx, cluster, ClusterIdentity("7000000000000000001", 16 << 20))
    files = tmp_path / "files"
    files.mkdir()

    def put(name: str, content: bytes | None = None) -> None:
        path = files / name
        path.write_bytes(content if content is not None else b"wal " + name.encode())
        data = path.read_bytes()
        header = {"format": "dbops-wal", "version": 1, "cluster": "wal/db.example_5432/", "name": name,
                  "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "system_identifier": "7000000000000000001"}
        store_file(ctx.store, ctx.write_key, cluster, path, header, 1)

    # Timeline 1: segments 1-8, without 6; timeline 2 branched at 0/5000028 (in segment 5):
    # timeline 1 is needed up to segment 5 only; 6 (missing), 7 and 8 are its ignored tail.
    for n in (1, 2, 3, 4, 5, 7, 8):
        put(f"0000000100000000000000{n:02X}")
    put("00000002.history", b"1\t0/5000028\tno recovery target specified\n")
    for n in (5, 6, 7):
        put(f"0000000200000000000000{n:02X}")
    report = verify_archive(ctx, cluster)
    assert report.ok, report.to_dict()
    assert [(s.parent, s.timeline, s.lsn, s.segment) for s in report.switches] == [(1, 2, "0/5000028", "000000010000000000000005")]
    tl1, tl2 = report.timelines
    assert (tl1.checked_to, tl1.ignored_after_switch) == ("000000010000000000000005", 2)
    assert (tl2.first, tl2.last) == ("000000020000000000000005", "000000020000000000000007")

    # A missing segment before the switch, one on the new timeline, and its missing start.
    for name in ("000000010000000000000003", "000000020000000000000006", "000000020000000000000005"):
        ctx.store.delete(archive_key(cluster, name))
    report = verify_archive(ctx, cluster)
    assert [(g.timeline, g.first, g.last, g.count) for g in report.gaps] == [
        (1, "000000010000000000000003", "000000010000000000000003", 1),
        (2, "000000020000000000000005", "000000020000000000000006", 2)]
    assert verify_archive(ctx, cluster, since_segment="000000010000000000000004", quick=True).gaps[0].timeline == 2

    # An object copied under another segment's name fails its checks; a timeline without history is reported.
    src = ctx.store.get_bytes(archive_key(cluster, "000000010000000000000002"))
    ctx.store.delete(archive_key(cluster, "000000010000000000000001"))
    ctx.store.put_bytes(archive_key(cluster, "000000010000000000000001"), src)
    put("000000030000000000000009")
    report = verify_archive(ctx, cluster)
    assert [d.name for d in report.damaged] == ["000000010000000000000001"]
    assert "copied or renamed" in report.damaged[0].error
    assert any("timeline 3 has segments but no history file" in p for p in report.problems)
