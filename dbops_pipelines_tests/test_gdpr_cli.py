"""`dbops gdpr cleanup` against a real cluster: the dry run counts and changes nothing, the
cleanup runs only as the cleanup role, and configuration mistakes fail before anything runs."""

from __future__ import annotations

import json

import pytest

from dbops_pipelines.cli import main

SCHEMA = """
CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
CREATE TABLE orders (id int PRIMARY KEY, person int REFERENCES people);
INSERT INTO people SELECT g, CASE WHEN g <= 3 THEN now() - interval '45 days' END FROM generate_series(1, 10) g;
INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g;
"""


@pytest.fixture
def app(pg_cluster, fresh_db):
    pg_cluster.execute(SCHEMA, dbname=fresh_db)
    return pg_cluster.dsn(fresh_db)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def count(pg_cluster, fresh_db, table):
    return pg_cluster.execute(f"SELECT count(*) FROM {table}", dbname=fresh_db)[0][0]


def test_dry_run_then_cleanup(write_config, app, pg_cluster, fresh_db, capsys):
    write_config({"app": {"dsn": app, "roles": {"cleanup": "postgres"}, "gdpr": {"subject_table": "public.people"}}})
    code, out, err = run(capsys, "gdpr", "cleanup", "app", "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    rows = {(t["table"], t["action"]): t["rows"] for t in plan["tables"]}
    assert plan["dry_run"] is True and rows == {("public.people", "delete"): 3, ("public.orders", "delete"): 3}
    assert count(pg_cluster, fresh_db, "people") == 10            # the dry run changed nothing
    code, out, err = run(capsys, "gdpr", "cleanup", "app", "--dry-run")
    assert code == 0 and "would be deleted (e.g. keys 1, 2, 3)" in out and "nothing was changed" in out

    code, out, err = run(capsys, "gdpr", "cleanup", "app")
    assert code == 0, err
    assert "public.people: 3 rows deleted" in out and "public.orders: 3 rows deleted" in out
    assert count(pg_cluster, fresh_db, "people") == 7 and count(pg_cluster, fresh_db, "orders") == 7


@pytest.mark.parametrize("gdpr, roles, problem", [
    ({"subject_table": "public.people"}, {}, "has no role for cleanup"),
    ({"subject_table": 'public."people; DROP TABLE orders"'}, {"cleanup": "postgres"}, "does not exist"),
    ({"subject_table": "public.People"}, {"cleanup": "postgres"}, "did you mean public.people?"),
    (None, {"cleanup": "postgres"}, "has no gdpr section"),
])
def test_mistakes_fail_before_anything_runs(write_config, app, pg_cluster, fresh_db, capsys, gdpr, roles, problem):
    target = {"dsn": app, "roles": roles, **({"gdpr": gdpr} if gdpr else {})}
    write_config({"app": target})
    code, out, err = run(capsys, "gdpr", "cleanup", "app")
    assert code == 1 and problem in err and "Traceback" not in err
    assert count(pg_cluster, fresh_db, "people") == 10 and count(pg_cluster, fresh_db, "orders") == 10


def test_a_kill_mid_run_leaves_finished_batches_done_and_the_next_run_finishes(write_config, pg_cluster, fresh_db):
    import os
    import signal
    import subprocess
    import sys
    import time

    pg_cluster.execute("""
        CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
        CREATE TABLE orders (id int PRIMARY KEY, person int REFERENCES people);
        CREATE INDEX ON orders (person);
        INSERT INTO people SELECT g, now() - interval '45 days' FROM generate_series(1, 60000) g;
        INSERT INTO orders SELECT g, g FROM generate_series(1, 60000) g;""", dbname=fresh_db)
    path = write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "roles": {"cleanup": "postgres"},
                                 "gdpr": {"subject_table": "public.people", "batch_size": 50}}})
    dbops = os.path.join(os.path.dirname(sys.executable), "dbops")
    proc = subprocess.Popen([dbops, "gdpr", "cleanup", "app"], env={**os.environ, "DBOPS_CONFIG": str(path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while pg_cluster.execute("SELECT count(*) FROM people", dbname=fresh_db)[0][0] > 55000:
        assert proc.poll() is None and time.monotonic() < deadline, "the cleanup ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)                       # no clean-up of any kind: the worst case
    proc.wait(10)
    people = pg_cluster.execute("SELECT count(*) FROM people", dbname=fresh_db)[0][0]
    orders = pg_cluster.execute("SELECT count(*) FROM orders", dbname=fresh_db)[0][0]
    # whole batches only: a person's order went in the same transaction as the person, and no batch is half done
    assert 0 < people < 60000 and orders == people and people % 50 == 0
    rerun = subprocess.run([dbops, "gdpr", "cleanup", "app"], env={**os.environ, "DBOPS_CONFIG": str(path)},
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert pg_cluster.execute("SELECT count(*) FROM people", dbname=fresh_db)[0][0] == 0
    assert pg_cluster.execute("SELECT count(*) FROM orders", dbname=fresh_db)[0][0] == 0
    # Every person erased is in the ledger, the batch cut short by the kill included: its entry is
    # stored before its transaction commits.
    from dbops_pipelines.config import load_config
    from dbops_pipelines.context import FleetContext
    from dbops_pipelines.gdpr.ledger import read_ledger
    ctx = FleetContext(load_config(path))
    recorded = {int(k[0]) for e in read_ledger(ctx.store, ctx.read_keys, "app").erasures for k in e.keys}
    assert recorded == set(range(1, 60001))
