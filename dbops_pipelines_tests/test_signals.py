"""SIGTERM (Dagster's "terminate run", systemd, Docker, Kubernetes) stops `dbops backup`, `restore`
and `verify` as cleanly as Ctrl-C: children stopped, temp files removed, uploads aborted, scratch
database dropped, nothing recorded, exit 143 with one line. The real CLI, on real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

DBOPS = str(Path(sys.executable).parent / "dbops")
ROWS = 1_500_000  # a backup, restore or verification of this takes a few seconds here


@pytest.fixture(scope="module")
def big_db(pg_cluster):
    """A database whose dump and restore take seconds: time to send a signal mid-work."""
    name = f"signals_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    pg_cluster.execute(f"""CREATE TABLE big AS SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b
                           FROM generate_series(1, {ROWS}) g""", dbname=name)
    pg_cluster.execute("ALTER TABLE big ADD PRIMARY KEY (id)", dbname=name)
    pg_cluster.execute("CREATE INDEX ON big (a, b)", dbname=name)
    yield name
    pg_cluster.drop_database(name, force=True)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a live process, None if it is gone (a zombie counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in ("Z", "X") else (fields[0], int(fields[1]))


def children(pid: int, program: str, with_arg: str | None = None) -> list[int]:
    """The child processes of ``pid`` running ``program`` (with ``with_arg`` among their arguments:
    the real pg_restore, not the `--version` probe dbops runs before it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        st = _stat(int(entry.name))
        if (st and st[1] == pid and argv[0].endswith(program.encode())
                and (with_arg is None or any(a.startswith(with_arg.encode()) for a in argv[1:]))):
            found.append(int(entry.name))
    return found


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([DBOPS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_for_child(proc: subprocess.Popen, program: str, timeout: float = 120, with_arg: str | None = None) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dbops ended (exit {proc.returncode}) before {program} started: {proc.stderr.read()}")
        kids = children(proc.pid, program, with_arg)
        if kids:
            return kids[0]
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"{program} did not start within {timeout} s")


def terminate(proc: subprocess.Popen, after: float = 0.7) -> tuple[int, str]:
    """SIGTERM to dbops alone (not its group): it must stop its children itself."""
    time.sleep(after)
    assert proc.poll() is None, "the work finished before the signal: make the database bigger"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def assert_one_line_interrupt(rc: int, err: str) -> None:
    assert rc == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted (SIGTERM): "), err
    assert sum("interrupted" in line for line in lines) == 1, err


def wait_gone(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _stat(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def sessions(pg_cluster, dbname: str, program: str, timeout: float = 10) -> int:
    """Server sessions of pg_dump/pg_restore still in ``dbname`` (a backend ends a moment after its client)."""
    deadline = time.monotonic() + timeout
    while True:
        n = pg_cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                               params=(dbname, program))[0][0]
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def backup_now(target: str) -> str:
    made = subprocess.run([DBOPS, "backup", target], capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_sigterm_stops_a_backup_and_stores_nothing(write_config, pg_cluster, big_db, tmp_path):
    write_config({"big": pg_cluster.dsn(big_db)})
    proc = start("backup", "big")
    pg_dump = wait_for_child(proc, "pg_dump")
    rc, err = terminate(proc)
    assert_one_line_interrupt(rc, err)
    assert wait_gone([pg_dump]) == [], "pg_dump outlived dbops"
    assert sessions(pg_cluster, big_db, "pg_dump") == 0
    assert stored_files(tmp_path / "store") == []  # no object, no .partial, no manifest, no lease


def test_sigterm_cancels_the_row_count_thread_before_closing_its_connection(write_config, pg_cluster, big_db, tmp_path):
    # A content checksum of the whole big table takes seconds: the counter is mid-query at the
    # signal. Closing the connection under it would leave that query running on the server.
    write_config({"big": {"dsn": pg_cluster.dsn(big_db), "verification": {"checksum_max_bytes": 1 << 30}}})
    proc = start("backup", "big")
    wait_for_child(proc, "pg_dump")
    rc, err = terminate(proc)
    assert_one_line_interrupt(rc, err)
    assert sessions(pg_cluster, big_db, "dbops", timeout=2) == 0, "a row-count query went on after the backup stopped"
    assert stored_files(tmp_path / "store") == []


def test_sigterm_aborts_an_s3_upload(write_config, pg_cluster, big_db, s3_env, s3_bucket):
    write_config({"big": pg_cluster.dsn(big_db)},
                 storage={"url": f"s3://{s3_bucket}/nightly", "s3_endpoint_url": s3_env.endpoint_url})
    proc = start("backup", "big")
    pg_dump = wait_for_child(proc, "pg_dump")
    rc, err = terminate(proc, after=1.5)  # past the first upload part
    assert_one_line_interrupt(rc, err)
    assert wait_gone([pg_dump]) == []
    s3 = s3_env.s3_client()
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_sigterm_stops_a_parallel_restore_and_removes_the_decrypted_dump(write_config, pg_cluster, big_db, fresh_db, tmp_path):
    write_config({"big": pg_cluster.dsn(big_db)})
    backup_id = backup_now("big")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = start("restore", backup_id, "--to", pg_cluster.dsn(fresh_db), "--jobs", "2", env={"TMPDIR": str(tmp)})
    pg_restore = wait_for_child(proc, "pg_restore", with_arg="--jobs")
    assert any(p.name.startswith("dbops-restore-") for p in tmp.iterdir())  # the plaintext dump is staged here
    time.sleep(0.5)
    workers = children(pg_restore, "pg_restore")
    rc, err = terminate(proc, after=0)
    assert_one_line_interrupt(rc, err)
    assert wait_gone([pg_restore, *workers]) == [], "pg_restore or a worker outlived dbops"
    assert sessions(pg_cluster, fresh_db, "pg_restore") == 0  # nothing goes on writing to the destination
    assert list(tmp.iterdir()) == []  # no dbops-restore-* left, so no plaintext dump


def test_sigterm_stops_a_streaming_restore_and_rolls_back(write_config, pg_cluster, big_db, fresh_db):
    write_config({"big": pg_cluster.dsn(big_db)})
    backup_id = backup_now("big")
    proc = start("restore", backup_id, "--to", pg_cluster.dsn(fresh_db))
    pg_restore = wait_for_child(proc, "pg_restore")
    rc, err = terminate(proc)
    assert_one_line_interrupt(rc, err)
    assert wait_gone([pg_restore]) == []
    assert sessions(pg_cluster, fresh_db, "pg_restore") == 0
    assert pg_cluster.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname=fresh_db)[0][0] == 0


def test_sigterm_stops_a_verification_and_drops_the_scratch_database(write_config, pg_cluster, big_db, tmp_path):
    write_config({"big": pg_cluster.dsn(big_db)})
    backup_id = backup_now("big")
    before = stored_files(tmp_path / "store")
    proc = start("verify", "big")
    pg_restore = wait_for_child(proc, "pg_restore")
    rc, err = terminate(proc)
    assert_one_line_interrupt(rc, err)
    assert wait_gone([pg_restore]) == []
    scratch = pg_cluster.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dbops\\_verify\\_%'")
    assert scratch == [], "the scratch database was left behind"
    assert stored_files(tmp_path / "store") == before  # a cancelled verification concluded nothing
    assert backup_id in before[0]


def test_sigint_still_means_ctrl_c(write_config, pg_cluster, big_db, tmp_path):
    write_config({"big": pg_cluster.dsn(big_db)})
    proc = start("backup", "big")
    pg_dump = wait_for_child(proc, "pg_dump")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C): ")
    assert wait_gone([pg_dump]) == []
    assert stored_files(tmp_path / "store") == []


def test_handler_is_scoped_and_restores_the_previous_one():
    from dbops_pipelines.interrupts import Terminated, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as caught:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in this thread long before this ends
    assert isinstance(caught.value, KeyboardInterrupt) and caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_interrupted_verify_json_still_prints_json(write_config, pg_cluster, big_db, tmp_path):
    """Scripts parse `verify --json`'s stdout whatever happened, an interruption included."""
    write_config({"big": pg_cluster.dsn(big_db)})
    backup_now("big")
    proc = start("verify", "big", "--json")
    wait_for_child(proc, "pg_restore")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert_one_line_interrupt(proc.returncode, err)
    doc = json.loads(out)
    assert doc["outcome"] == "interrupted" and doc["passed"] is False and "nothing was recorded" in doc["error"]
    assert pg_cluster.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dbops\\_verify\\_%'") == []
