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
