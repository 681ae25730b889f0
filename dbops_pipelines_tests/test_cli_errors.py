"""No command ends in a raw traceback, and no password reaches output or a process list.

The real CLI runs as a subprocess; pg_dump/pg_restore are the real ones, behind a small wrapper
that records the command line and environment they were given."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from dbops_pipelines.backup.engine import BackupOptions, run_backup
from dbops_pipelines.errors import RestoreFailed
from dbops_pipelines.pgtools import find_binary, pick_client
from dbops_pipelines.storage.local import LocalStore

DBOPS = str(Path(sys.executable).parent / "dbops")
SECRET = "s3cr3t-pw"


def dbops(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DBOPS, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def assert_one_error(result: subprocess.CompletedProcess, code: int, *expected: str) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], result.stderr
    return errors[0]


@pytest.fixture
def small_db(pg_cluster):
    """A source database of its own (fresh_db is the restore destination)."""
    name = f"small_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    pg_cluster.execute("CREATE TABLE items AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 500) g", dbname=name)
    yield name
    pg_cluster.drop_database(name, force=True)


def wrapper_bin(tmp_path: Path, version: str | None = None) -> Path:
    """pg_dump and pg_restore that write down their argv and PGPASSWORD, then run the real
    program (or, with ``version``, only claim to be that version)."""
    bin_dir = tmp_path / "wrapped"
    bin_dir.mkdir(exist_ok=True)
    for name in ("pg_dump", "pg_restore"):
        real = find_binary(name, 15)
        body = (f'[ "$1" = "--version" ] && echo "{name} (PostgreSQL) {version}" && exit 0\nexit 99\n' if version else
                f'[ "$1" = "--version" ] && exec {real} "$@"\nprintf "%s\\n" "$@" > {bin_dir}/{name}.argv\n'
                f'printf "%s" "$PGPASSWORD" > {bin_dir}/{name}.pgpassword\nexec {real} "$@"\n')
        script = bin_dir / name
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


# --- invalid input ------------------------------------------------------------------------------

@pytest.mark.parametrize("to, expected", [
    ("host=127.0.0.1 port=notanumber dbname=x", "port 'notanumber' is not a number"),
    ("postgresql://[bad", 'looking for matching "]"'),
    # libpq takes the password as s3cr3t-pw and then quotes the word after it in its message
    (f"host=127.0.0.1 password={SECRET} second-half dbname=x", "details are withheld"),
    (f"postgresql://u:{SECRET}@[bad", "details are withheld"),
])
def test_invalid_destination_is_refused_up_front(to, expected, tmp_path):
    # No config exists: the DSN is checked before anything is loaded or touched.
    result = dbops("restore", "app-20260101T000000Z-0000", "--to", to, env={"DBOPS_CONFIG": str(tmp_path / "none.yaml")})
    line = assert_one_error(result, 2, "--to is not a valid connection string", expected)
    assert SECRET not in result.stderr + result.stdout and "second-half" not in line


def test_destination_must_name_a_database(tmp_path):
    # libpq would otherwise restore into a default database (named after the user)
    result = dbops("restore", "app-20260101T000000Z-0000", "--to", "host=127.0.0.1 user=postgres",
                   env={"DBOPS_CONFIG": str(tmp_path / "none.yaml")})
    assert_one_error(result, 2, "--to names no database")


# --- broken pipe ----------------------------------------------------------------------------------

@pytest.fixture
def two_backups(write_config, pg_cluster, small_db) -> list[str]:
    write_config({"app": pg_cluster.dsn(small_db)})
    ids = [dbops("backup", "app").stdout.strip() for _ in range(2)]
    assert all(ids), ids
    return ids


@pytest.mark.parametrize("args", [["backups", "list"], ["backups", "list", "--json"]])
def test_closed_stdout_ends_quietly(two_backups, args):
    proc = subprocess.Popen([DBOPS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before dbops writes a byte
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 141, err  # 128 + SIGPIPE, like any Unix tool
    assert err == ""


def test_head_of_a_listing(two_backups):
    shell = subprocess.run(["bash", "-c", f'"{DBOPS}" backups list | head -1; echo "rc=${{PIPESTATUS[0]}}" >&2'],
                           capture_output=True, text=True, timeout=120)
    assert shell.stdout.startswith("ID ") and shell.stdout.count("\n") == 1
    assert "Traceback" not in shell.stderr and "Exception ignored" not in shell.stderr
    assert shell.stderr.strip().splitlines()[-1] in ("rc=0", "rc=141")  # 0 when it all fitted in the pipe


# --- errors that slip past the core ----------------------------------------------------------------

def run_command_raising(statement: str, debug: bool = False) -> subprocess.CompletedProcess:
    """The real main() over a command whose core lets ``statement``'s exception escape."""
    code = ("import sys, psycopg\nfrom dbops_pipelines import cli\n"
            f"def broken(args):\n    {statement}\n"
            "cli.cmd_keygen = broken\nsys.exit(cli.main(['keygen']))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DBOPS_DEBUG": "1" if debug else ""})


def test_psycopg_error_gives_one_line():
    result = run_command_raising("psycopg.connect('host=127.0.0.1 port=1 dbname=x connect_timeout=2')")
    assert_one_error(result, 1, "database error: ", "port 1 failed")


def test_unexpected_error_gives_one_line_and_a_redacted_traceback_on_request():
    statement = f"raise RuntimeError('lost postgresql://u:{SECRET}@h/db')"
    plain = run_command_raising(statement)
    assert_one_error(plain, 1, "unexpected RuntimeError: lost postgresql://u:***@h/db")
    assert "DBOPS_DEBUG=1" in plain.stderr and SECRET not in plain.stderr
    debug = run_command_raising(statement, debug=True)
    assert "Traceback" in debug.stderr and "def broken" not in debug.stderr and SECRET not in debug.stderr


# --- passwords never on a command line ----------------------------------------------------------

@pytest.mark.parametrize("form", ["url", "query", "keyvalue"])
def test_destination_password_goes_to_the_environment_only(form, write_config, pg_cluster, small_db, fresh_db, tmp_path):
    bin_dir = wrapper_bin(tmp_path)
    write_config({"app": pg_cluster.dsn(small_db)}, defaults={"pg_bin_dir": str(bin_dir)})
    backup_id = dbops("backup", "app").stdout.strip()
    password = f"{SECRET} it's"  # a space and a quote: the key=value form must quote and escape it
    host, port = pg_cluster.host, pg_cluster.port
    to = {"url": f"postgresql://postgres:{SECRET}@{host}:{port}/{fresh_db}",  # trust auth: any password works
          "query": f"postgresql://postgres@{host}:{port}/{fresh_db}?sslmode=disable&password={SECRET}",
          "keyvalue": f"host={host} port={port} dbname={fresh_db} user=postgres password = '{SECRET} it\\'s'"}[form]
    result = dbops("restore", backup_id, "--to", to)
    assert result.returncode == 0, result.stderr
    argv = (bin_dir / "pg_restore.argv").read_text()
    assert "--dbname=" in argv and SECRET not in argv and fresh_db in argv
    assert (bin_dir / "pg_restore.pgpassword").read_text() == (password if form == "keyvalue" else SECRET)
    assert SECRET not in result.stdout + result.stderr and "***" in result.stdout
    assert pg_cluster.execute("SELECT count(*) FROM items", dbname=fresh_db)[0][0] == 500


def test_source_password_goes_to_pg_dump_through_the_environment(pg_cluster, small_db, backup_key, tmp_path):
    # dbops.yaml refuses DSNs with passwords, but run_backup is the core API any caller may use.
    bin_dir = wrapper_bin(tmp_path)
    dsn = f"postgresql://postgres:{SECRET}@{pg_cluster.host}:{pg_cluster.port}/{small_db}"
    manifest = run_backup("app", dsn, LocalStore(tmp_path / "store"), backup_key,
                          BackupOptions(pg_bin_dir=str(bin_dir), connect_retries=0))
    assert manifest.table_rows == {"public.items": 500}
    argv = (bin_dir / "pg_dump.argv").read_text()
    assert SECRET not in argv and small_db in argv
    assert (bin_dir / "pg_dump.pgpassword").read_text() == SECRET


# --- pg_restore versions --------------------------------------------------------------------------

def test_pg_restore_older_than_the_destination_is_refused(write_config, pg_cluster, small_db, fresh_db, tmp_path):
    write_config({"app": pg_cluster.dsn(small_db)})
    backup_id = dbops("backup", "app").stdout.strip()
    write_config({"app": pg_cluster.dsn(small_db)}, defaults={"pg_bin_dir": str(wrapper_bin(tmp_path, "14.12"))})
    result = dbops("restore", backup_id, "--to", pg_cluster.dsn(fresh_db))
    assert_one_error(result, 1, "pg_restore 14.12", "is older than the destination server (PostgreSQL 15)")
    assert "postgresql-client-15" in result.stderr
    assert pg_cluster.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname=fresh_db)[0][0] == 0


def test_pg_restore_older_than_the_archive_is_refused():
    # Only PostgreSQL 15 is installed: an archive written by a (future) pg_dump 16 needs a 16 client.
    with pytest.raises(RestoreFailed) as err:
        pick_client("pg_restore", {"the archive (written by pg_dump 16.2)": 16, "the destination server (PostgreSQL 15)": 15},
                    error=RestoreFailed)
    assert "is older than the archive (written by pg_dump 16.2): it must be version 16 or newer" in err.value.message
    assert "postgresql-client-16" in err.value.hint
    path, version = pick_client("pg_restore", {"the archive": 15, "the destination": 15}, error=RestoreFailed)
    assert version[0] == 15 and path.name == "pg_restore"


# --- verification sweep ---------------------------------------------------------------------------

def test_verify_leaves_a_stale_scratch_database_it_may_not_drop(write_config, pg_cluster, small_db):
    """Another role's leftover scratch database made the sweep fail with a raw psycopg error."""
    pg_cluster.execute("DO $$ BEGIN CREATE ROLE dbops_verifier LOGIN CREATEDB; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    stale = "dbops_verify_sweeptest_20200101000000"
    pg_cluster.create_database(stale)  # owned by postgres, nobody connected, years old
    try:
        write_config({"sweeptest": {"dsn": pg_cluster.dsn(small_db),
                                    "verification": {"server_dsn": pg_cluster.dsn("postgres", user="dbops_verifier")}}})
        assert dbops("backup", "sweeptest").returncode == 0
        result = dbops("verify", "sweeptest")
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 0, result.stdout + result.stderr
        assert pg_cluster.execute("SELECT count(*) FROM pg_database WHERE datname = %s", params=(stale,))[0][0] == 1
    finally:
        pg_cluster.drop_database(stale)
