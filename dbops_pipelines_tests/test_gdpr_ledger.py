"""The erasure ledger and the audit trail, against a real cluster and a real store: every erasure
is recorded before it commits, a restore (dbops restore, verification, or by other means with
`dbops gdpr reapply`) erases the same people again, and a ledger that was tampered with is refused."""

from __future__ import annotations

import json
from collections import Counter

import psycopg
import pytest

from dbops_pipelines import fleet
from dbops_pipelines.cli import main
from dbops_pipelines.config import load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import StorageError
from dbops_pipelines.gdpr.anonymize import token
from dbops_pipelines.gdpr.catalog import discover
from dbops_pipelines.gdpr.cleanup import run_cleanup
from dbops_pipelines.gdpr.ledger import read_ledger
from dbops_pipelines.gdpr.service import gdpr_settings
from dbops_pipelines.restore import restore_backup
from dbops_pipelines.storage.namespaces import LEDGER
from dbops_pipelines.verification.runner import verify_backup
from dbops_pipelines_tests.conftest import scratch_database

SECRET = "ledger-test-secret-0123456789"
SCHEMA = """
CREATE TABLE people (id int PRIMARY KEY, email text, deleted_at timestamptz);
CREATE TABLE orders (id int PRIMARY KEY, person int REFERENCES people);
CREATE TABLE invoices (id int PRIMARY KEY, person int REFERENCES people, email text);
INSERT INTO people SELECT g, 'p' || g || '@example.org', CASE WHEN g <= 4 THEN now() - interval '45 days' END
  FROM generate_series(1, 10) g;
INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g;
INSERT INTO invoices SELECT g, g, 'p' || g || '@example.org' FROM generate_series(1, 10) g;
"""
GDPR = {"subject_table": "public.people", "batch_size": 1,
        "tables": {"public.people": {}, "public.orders": {},
                   "public.invoices": {"action": "anonymize", "columns": {"email": "hash"}}}}


@pytest.fixture
def app(pg_cluster, fresh_db, write_config, monkeypatch):
    monkeypatch.setenv("DBOPS_GDPR_HASH_KEY", SECRET)
    pg_cluster.execute(SCHEMA, dbname=fresh_db)
    path = write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "roles": {"cleanup": "postgres"}, "gdpr": GDPR}})
    return FleetContext(load_config(path))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows(dsn, query):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def ledger_objects(ctx):
    return [o.key for o in ctx.store.list(f"{LEDGER}app/")]


def test_cleanup_writes_the_ledger_and_the_audit_trail(app, pg_cluster, fresh_db, capsys):
    dsn = pg_cluster.dsn(fresh_db)
    code, out, err = run(capsys, "gdpr", "cleanup", "app", "--dry-run")
    assert code == 0, err
    assert ledger_objects(app) == []                              # a dry run erases nobody: no entry
    code, out, err = run(capsys, "gdpr", "cleanup", "app")
    assert code == 0, err

    # The audit trail: both runs, who ran them, the cutoff, the rows per table, never a key or value.
    audit = rows(dsn, "SELECT kind, dry_run, outcome, actor, cutoff IS NOT NULL, ledger_seq FROM dbops_audit.gdpr_run "
                      "ORDER BY started_at")
    assert [a[:3] for a in audit] == [("cleanup", True, "dry run"), ("cleanup", False, "done")]
    assert all("dbops cli" in a[3] and a[4] for a in audit) and audit[1][5] == 5     # 4 erasures, 1 outcome
    counted = dict(((t, a), n) for t, a, n in rows(
        dsn, "SELECT table_name, action, rows FROM dbops_audit.gdpr_run_table t JOIN dbops_audit.gdpr_run r "
             "USING (run_id) WHERE NOT r.dry_run"))
    assert counted == {("public.people", "delete"): 4, ("public.orders", "delete"): 4, ("public.invoices", "anonymize"): 4}
    dumped = " ".join(str(r) for r in rows(dsn, "SELECT r::text FROM dbops_audit.gdpr_run r UNION ALL "
                                                "SELECT t::text FROM dbops_audit.gdpr_run_table t"))
    assert "@example.org" not in dumped and SECRET not in dumped

    # The ledger: one authenticated entry per batch (batch_size 1), the people's keys, encrypted at rest.
    code, out, err = run(capsys, "gdpr", "ledger", "app", "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert listing["entries_total"] == 5 and [e.get("people") for e in listing["entries"]] == [1, 1, 1, 1, None]
    assert listing["entries"][-1] == {**listing["entries"][-1], "kind": "outcome", "void": []}
    assert listing["entries"][0]["rows"] == {"public.people": {"delete": 1}, "public.orders": {"delete": 1},
                                             "public.invoices": {"anonymize": 1}}
    for key in ledger_objects(app):
        raw = app.store.get_bytes(key)
        assert b"public.people" not in raw and b"run_id" not in raw      # encrypted, not just signed
    keys = sorted(k for e in read_ledger(app.store, app.read_keys, "app").entries for k in e.keys)
    assert keys == [("1",), ("2",), ("3",), ("4",)]


def test_restore_verification_and_reapply_erase_the_same_people_again(app, pg_cluster, fresh_db, capsys):
    manifest = fleet.backup_target(app, "app")                 # taken before anyone is erased
    code, out, err = run(capsys, "gdpr", "cleanup", "app")
    assert code == 0, err
    live = pg_cluster.dsn(fresh_db)
    expected_people = rows(live, "SELECT id FROM people ORDER BY id")
    assert expected_people == [(i,) for i in range(5, 11)]
    secret = SECRET.encode()

    def assert_erased(dsn):
        assert rows(dsn, "SELECT id FROM people ORDER BY id") == expected_people
        assert rows(dsn, "SELECT count(*) FROM orders") == [(6,)]
        invoices = dict(rows(dsn, "SELECT id, email FROM invoices"))
        assert all(invoices[i] == token(secret, f"p{i}@example.org") for i in range(1, 5))
        assert all(invoices[i] == f"p{i}@example.org" for i in range(5, 11))

    # dbops restore: the output says how many were erased again.
    with scratch_database(pg_cluster, "restored") as db:
        code, out, err = run(capsys, "restore", manifest.backup_id, "--to", pg_cluster.dsn(db))
        assert code == 0, err
        assert "re-applied 4 erasure ledger entries (4 people)" in out
        assert_erased(pg_cluster.dsn(db))

    # Restored by other means (no re-application), then `dbops gdpr reapply --to`.
    with scratch_database(pg_cluster, "other") as db:
        restore_backup(app.store, manifest, app.read_keys, pg_cluster.dsn(db))
        assert rows(pg_cluster.dsn(db), "SELECT count(*) FROM people") == [(10,)]     # everyone is back
        code, out, err = run(capsys, "gdpr", "reapply", "app", "--since", manifest.started_at, "--to",
                             pg_cluster.dsn(db), "--json")
        assert code == 0, err
        result = json.loads(out)
        assert result["complete"] and result["entries"] == 4 and result["people"] == 4
        assert {(t["table"], t["action"]): t["rows"] for t in result["tables"]} == {
            ("public.people", "delete"): 4, ("public.orders", "delete"): 4, ("public.invoices", "anonymize"): 4}
        assert_erased(pg_cluster.dsn(db))
        # A second time changes nothing: erasing someone twice is harmless.
        code, out, err = run(capsys, "gdpr", "reapply", "app", "--since", manifest.started_at, "--to", pg_cluster.dsn(db))
        assert code == 0 and "0 rows changed" in out, out + err

    # Verification compares the copy exactly with the backup, then reports the re-application.
    report = verify_backup(app, "app", manifest.backup_id)
    assert report.passed, report.summary()
    assert report.erasures_reapplied["entries"] == 4 and report.erasures_reapplied["complete"]
    assert SECRET not in json.dumps(report.to_dict())


def test_a_tampered_ledger_is_refused_and_cleanup_stops(app, pg_cluster, fresh_db, capsys):
    code, out, err = run(capsys, "gdpr", "cleanup", "app")
    assert code == 0, err
    objects = ledger_objects(app)
    assert len(objects) == 5                                     # 4 erasures and the run's outcome
    first, second, *_, newest = objects

    # Altered bytes do not authenticate.
    original = app.store.get_bytes(second)
    app.store.put_bytes(second, original[:-1] + bytes([original[-1] ^ 1]), overwrite=True)
    code, out, err = run(capsys, "gdpr", "ledger", "app")
    assert code == 1 and "Traceback" not in err and "failed authentication" in err, err
    app.store.put_bytes(second, original, overwrite=True)

    # An entry moved away leaves a hole in the numbering.
    app.store.delete(second)
    code, out, err = run(capsys, "gdpr", "ledger", "app")
    assert code == 1 and "entry 2 is missing" in err, err
    app.store.put_bytes(second, original)

    # An entry from elsewhere (another position) does not chain.
    first_bytes = app.store.get_bytes(first)
    app.store.put_bytes(second, first_bytes, overwrite=True)
    code, out, err = run(capsys, "gdpr", "ledger", "app")
    assert code == 1 and "does not belong where it was found" in err, err
    app.store.put_bytes(second, original, overwrite=True)
    assert run(capsys, "gdpr", "ledger", "app")[0] == 0

    # The newest entry lost: the audit trail in the database still names it, so cleanup refuses
    # to erase anyone else (a new entry would hide the loss).
    pg_cluster.execute("UPDATE people SET deleted_at = now() - interval '45 days' WHERE id = 5", dbname=fresh_db)
    app.store.delete(newest)
    code, out, err = run(capsys, "gdpr", "cleanup", "app")
    assert code == 1 and "newest entries are missing" in err, err
    assert pg_cluster.execute("SELECT count(*) FROM people WHERE id = 5", dbname=fresh_db)[0][0] == 1


def test_one_cleanup_per_target_at_a_time(app, pg_cluster, fresh_db, capsys):
    with psycopg.connect(pg_cluster.dsn(fresh_db)) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended('dbops_gdpr:app', 0))")
        code, out, err = run(capsys, "gdpr", "cleanup", "app")
    assert code == 1 and "another GDPR cleanup or re-application of app is running" in err
    assert pg_cluster.execute("SELECT count(*) FROM people", dbname=fresh_db)[0][0] == 10
    assert ledger_objects(app) == []


class FailingJournal:
    """Records the first batch, then fails as a store that went away would."""

    def __init__(self):
        self.calls = 0

    def record(self, conn, table, gone, done: Counter) -> None:
        self.calls += 1
        if self.calls == 2:
            raise StorageError("the store went away", "bring it back")


def test_a_batch_whose_record_cannot_be_stored_is_rolled_back(app, pg_cluster, fresh_db):
    settings = gdpr_settings(app.config, "app")
    with psycopg.connect(pg_cluster.dsn(fresh_db), autocommit=True) as conn:
        with pytest.raises(StorageError, match="the store went away"):
            run_cleanup(conn, "app", discover(conn, settings), settings, journal=FailingJournal())
    # The first batch (person 1) went with its record; the second (person 2) was rolled back whole.
    assert [r[0] for r in rows(pg_cluster.dsn(fresh_db), "SELECT id FROM people WHERE id <= 4 ORDER BY id")] == [2, 3, 4]
    assert rows(pg_cluster.dsn(fresh_db), "SELECT email FROM invoices WHERE id = 2") == [("p2@example.org",)]
    assert rows(pg_cluster.dsn(fresh_db), "SELECT count(*) FROM orders WHERE person = 2") == [(1,)]


def test_an_audit_schema_the_role_may_not_create_stops_the_run_with_the_sql_that_fixes_it(
        pg_cluster, fresh_db, write_config, monkeypatch, capsys):
    monkeypatch.setenv("DBOPS_GDPR_HASH_KEY", SECRET)
    role, schema = "gdpr_cleaner", 'Ops "Audit"'      # role names are restricted by the config; schema names not
    quoted_role = '"gdpr_cleaner"'
    pg_cluster.execute(SCHEMA + f"""
        DROP ROLE IF EXISTS {quoted_role};
        CREATE ROLE {quoted_role} LOGIN;
        REVOKE CREATE ON DATABASE {fresh_db} FROM PUBLIC;
        GRANT SELECT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted_role};""", dbname=fresh_db)
    write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "roles": {"cleanup": role},
                          "gdpr": {**GDPR, "audit_schema": schema}}})
    code, out, err = run(capsys, "gdpr", "cleanup", "app")
    assert code == 1 and "may not create it" in err and "Traceback" not in err, err
    assert pg_cluster.execute("SELECT count(*) FROM people", dbname=fresh_db)[0][0] == 10    # nothing changed
    fix = err.split("as the database owner: ", 1)[1].split(";", 1)[0]
    assert fix == 'CREATE SCHEMA "Ops ""Audit""" AUTHORIZATION "gdpr_cleaner"'
    pg_cluster.execute(fix, dbname=fresh_db)
    code, out, err = run(capsys, "gdpr", "cleanup", "app")
    assert code == 0, err
    assert pg_cluster.execute('SELECT outcome FROM "Ops ""Audit""".gdpr_run', dbname=fresh_db) == [("done",)]
    pg_cluster.execute(f'DROP SCHEMA "Ops ""Audit""" CASCADE; DROP OWNED BY {quoted_role}; DROP ROLE {quoted_role}',
                       dbname=fresh_db)


def test_a_batch_refused_at_commit_is_voided_and_never_reapplied(app, pg_cluster, fresh_db, capsys):
    # Person 1 cannot go: a deferred constraint trigger refuses at COMMIT, after the batch's
    # ledger entry was stored. Support then undeletes them. A restore must not erase them.
    pg_cluster.execute("""
        CREATE FUNCTION keep_one() RETURNS trigger LANGUAGE plpgsql AS
          $$BEGIN RAISE EXCEPTION 'kept' USING ERRCODE = 'integrity_constraint_violation'; END$$;
        CREATE CONSTRAINT TRIGGER keep_one AFTER DELETE ON people DEFERRABLE INITIALLY DEFERRED
          FOR EACH ROW WHEN (OLD.id = 1) EXECUTE FUNCTION keep_one();""", dbname=fresh_db)
    manifest = fleet.backup_target(app, "app")
    code, out, err = run(capsys, "gdpr", "cleanup", "app", "--json")
    assert code == 0, err
    assert json.loads(out)["blocked"]["public.people"][0]["key"] == ["1"]
    reading = read_ledger(app.store, app.read_keys, "app")
    tried = [e.seq for e in reading.entries if e.kind == "erasure" and e.keys == (("1",),)]
    assert tried and reading.voided == set(tried)                   # every attempt on person 1 is void
    assert sorted(k for e in reading.erasures for k in e.keys) == [("2",), ("3",), ("4",)]
    pg_cluster.execute("UPDATE people SET deleted_at = NULL WHERE id = 1", dbname=fresh_db)   # undeleted
    with scratch_database(pg_cluster, "restored") as db:
        code, out, err = run(capsys, "restore", manifest.backup_id, "--to", pg_cluster.dsn(db))
        assert code == 0, err
        assert rows(pg_cluster.dsn(db), "SELECT id FROM people WHERE id <= 4") == [(1,)]


def test_an_entry_whose_key_does_not_fit_the_copy_is_refused_not_guessed(app, pg_cluster, fresh_db, capsys):
    from dbops_pipelines.gdpr.ledger import LedgerWriter
    from datetime import datetime, timezone
    writer = LedgerWriter(app.store, "app", app.write_key, app.read_keys)
    # Written when people had a (tenant, id) key: "7" is a tenant, not person 7.
    writer.append_erasure("r1", datetime.now(timezone.utc), "1", "public.people", ("tenant", "id"), ("integer", "integer"),
                          [["7", "3"]], {"public.people": {"delete": 1}})
    code, out, err = run(capsys, "gdpr", "reapply", "app", "--since", "2000-01-01", "--to", pg_cluster.dsn(fresh_db))
    assert code == 1 and "cannot be told apart safely" in err, err
    assert rows(pg_cluster.dsn(fresh_db), "SELECT count(*) FROM people") == [(10,)]


def test_restore_notices_lost_newest_entries_and_tolerates_a_newer_config(app, pg_cluster, fresh_db, capsys, write_config):
    manifest = fleet.backup_target(app, "app")
    # After the backup: a new table that keeps rows (anonymized), configured from now on.
    pg_cluster.execute("CREATE TABLE notes (id int PRIMARY KEY, person int REFERENCES people, body text);"
                       "INSERT INTO notes SELECT g, g, 'note ' || g FROM generate_series(1, 10) g", dbname=fresh_db)
    newer = {**GDPR, "tables": {**GDPR["tables"], "public.notes": {"action": "anonymize", "columns": {"body": None}}}}
    write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "roles": {"cleanup": "postgres"}, "gdpr": newer}})
    code, out, err = run(capsys, "gdpr", "cleanup", "app")
    assert code == 0, err
    with scratch_database(pg_cluster, "restored") as db:
        code, out, err = run(capsys, "restore", manifest.backup_id, "--to", pg_cluster.dsn(db))
        assert code == 0, err
        assert "configured tables not in the restored copy, left out: public.notes" in err
        assert rows(pg_cluster.dsn(db), "SELECT count(*) FROM people") == [(6,)]
    app.store.delete(ledger_objects(app)[-1])             # the newest entry lost
    with scratch_database(pg_cluster, "restored") as db:
        code, out, err = run(capsys, "restore", manifest.backup_id, "--to", pg_cluster.dsn(db))
        assert code == 1 and "NOT re-applied" in err and "newest entries are missing" in err, err


def test_one_refused_person_does_not_bring_back_the_others(pg_cluster, fresh_db, write_config, monkeypatch, capsys):
    monkeypatch.setenv("DBOPS_GDPR_HASH_KEY", SECRET)
    pg_cluster.execute(SCHEMA, dbname=fresh_db)
    ctx = FleetContext(load_config(write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "roles": {"cleanup": "postgres"},
                                                         "gdpr": {**GDPR, "batch_size": 10}}})))
    manifest = fleet.backup_target(ctx, "app")
    assert run(capsys, "gdpr", "cleanup", "app")[0] == 0                 # one entry, four people
    with scratch_database(pg_cluster, "copy") as db:
        restore_backup(ctx.store, manifest, ctx.read_keys, pg_cluster.dsn(db))
        # In this copy person 6 still points at person 2 through a key cleanup does not follow.
        pg_cluster.execute("ALTER TABLE people ADD COLUMN referred_by int REFERENCES people;"
                           "UPDATE people SET referred_by = 2 WHERE id = 6", dbname=db)
        code, out, err = run(capsys, "gdpr", "reapply", "app", "--since", manifest.started_at, "--to",
                             pg_cluster.dsn(db), "--json")
        assert code == 1, err
        result = json.loads(out)
        assert [(b["keys"], b["people"]) for b in result["blocked"]] == [([["2"]], 1)]
        assert "ForeignKeyViolation" in result["blocked"][0]["why"] and "@" not in out
        assert rows(pg_cluster.dsn(db), "SELECT id FROM people WHERE id <= 4") == [(2,)]
