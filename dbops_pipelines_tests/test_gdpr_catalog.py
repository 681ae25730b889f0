"""GDPR cleanup's view of a target's catalog (real cluster): soft-deletable tables discovered,
the foreign keys that reach the subject table followed with their ON DELETE rules and index
presence, a safe deletion order, and every configured name checked before anything runs."""

from __future__ import annotations

import psycopg
import pytest

from dbops_pipelines.config import GdprSettings
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.gdpr.catalog import discover

SCHEMA = '''
CREATE SCHEMA "Odd ""Schema""";
CREATE TABLE "Odd ""Schema"""."Users ü" (id bigint PRIMARY KEY, email text, deleted_at timestamptz,
    deleted_by bigint REFERENCES "Odd ""Schema"""."Users ü" (id));
CREATE TABLE public.orders (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES "Odd ""Schema"""."Users ü" (id));
CREATE TABLE public.order_lines (id bigint PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES public.orders (id) ON DELETE CASCADE);
CREATE INDEX order_lines_order_id ON public.order_lines (order_id);
CREATE TABLE public.sessions (id bigint PRIMARY KEY,
    user_id bigint REFERENCES "Odd ""Schema"""."Users ü" (id) ON DELETE SET NULL);
CREATE TABLE public.invoices (id bigint PRIMARY KEY, user_id bigint REFERENCES "Odd ""Schema"""."Users ü" (id),
    email text, name text);
CREATE TABLE public.notes (id bigint PRIMARY KEY, body text, deleted_at timestamp);
CREATE TABLE public.audit_events (id bigint PRIMARY KEY, deleted_at timestamptz);
CREATE TABLE public.no_pk (deleted_at timestamptz);
'''
SUBJECT = '"Odd ""Schema"""."Users ü"'


@pytest.fixture(scope="module")
def app_db(pg_cluster):
    from dbops_pipelines_tests.conftest import scratch_database

    with scratch_database(pg_cluster, "gdpr") as name:
        with psycopg.connect(pg_cluster.dsn(name), autocommit=True) as conn:
            conn.execute(SCHEMA)
        yield pg_cluster.dsn(name)


def catalog(dsn, **settings):
    with psycopg.connect(dsn) as conn:
        return discover(conn, GdprSettings(subject_table=SUBJECT, **settings))


def test_discovers_soft_deletable_tables_and_follows_foreign_keys(app_db):
    cat = catalog(app_db, exclude=["public.audit_events"])
    assert cat.subject.name == SUBJECT and cat.subject.primary_key == ("id",)
    assert [t.name for t in cat.soft_deletable] == [SUBJECT, "public.notes"]
    assert "no primary key" in cat.skipped["public.no_pk"]             # reported, never skipped silently
    links = {(fk.child, fk.child_columns): fk for fk in cat.links}
    assert set(links) == {(SUBJECT, ("deleted_by",)), ("public.orders", ("user_id",)), ("public.order_lines", ("order_id",)),
                          ("public.sessions", ("user_id",)), ("public.invoices", ("user_id",))}
    assert links[("public.order_lines", ("order_id",))].on_delete == "cascade"
    assert links[("public.sessions", ("user_id",))].on_delete == "set null"
    assert links[("public.orders", ("user_id",))].on_delete == "no action"
    assert {fk.child for fk in cat.unindexed_links()} == {SUBJECT, "public.orders", "public.sessions", "public.invoices"}
    order = cat.deletion_order()
    assert order[-1] == SUBJECT and order.index("public.order_lines") < order.index("public.orders")


def test_configured_tables_replace_discovery_and_anonymize_columns_are_checked(app_db):
    cat = catalog(app_db, tables={"public.notes": {},
                                  "public.invoices": {"action": "anonymize", "columns": {"email": "hash", "name": None}}})
    assert [t.name for t in cat.soft_deletable] == [SUBJECT, "public.notes"]
    assert set(cat.anonymized) == {"public.notes", "public.invoices"}
    with pytest.raises(ConfigError) as err:
        catalog(app_db, tables={"public.invoices": {"action": "anonymize", "columns": {"Email": "hash"}}})
    assert "no column 'Email' in public.invoices" in err.value.message


@pytest.mark.parametrize("settings, problem", [
    ({"subject_table": "public.Users"}, "gdpr.subject_table public.\"Users\" does not exist"),
    ({"subject_table": 'public."users; DROP TABLE orders"'}, "does not exist"),
    ({"subject_table": "public.notes", "soft_delete_column": "gone_at"}, "has no timestamp column 'gone_at'"),
    ({"subject_table": "public.orders"}, "has no timestamp column 'deleted_at'"),
    ({"exclude": ["public.nope"]}, "gdpr.exclude entry public.nope does not exist"),
    ({"tables": {"public.audit_events": {}}, "exclude": ["public.audit_events"]}, "both in gdpr.tables and gdpr.exclude"),
])
def test_every_configured_name_is_checked_before_anything_runs(app_db, settings, problem):
    settings = {"subject_table": SUBJECT, **settings}
    with psycopg.connect(app_db) as conn, pytest.raises(ConfigError) as err:
        discover(conn, GdprSettings(**settings))
    assert problem in err.value.message
    with psycopg.connect(app_db) as conn:            # nothing was created, dropped or changed
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()[0]


def test_a_subject_table_without_a_primary_key_is_refused(pg_cluster, fresh_db):
    pg_cluster.execute("CREATE TABLE people (email text, deleted_at timestamptz)", dbname=fresh_db)
    with psycopg.connect(pg_cluster.dsn(fresh_db)) as conn, pytest.raises(ConfigError) as err:
        discover(conn, GdprSettings(subject_table="public.people"))
    assert "has no primary key" in err.value.message


def test_a_foreign_key_cycle_under_the_subject_is_a_config_error(pg_cluster, fresh_db):
    pg_cluster.execute("""
        CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
        CREATE TABLE a (id int PRIMARY KEY, person int REFERENCES people, b_id int);
        CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a);
        ALTER TABLE a ADD FOREIGN KEY (b_id) REFERENCES b""", dbname=fresh_db)
    with psycopg.connect(pg_cluster.dsn(fresh_db)) as conn, pytest.raises(ConfigError) as err:
        discover(conn, GdprSettings(subject_table="public.people"))
    assert "cycle" in err.value.message and "public.a" in err.value.message


def test_dry_run_counts_what_would_go_and_changes_nothing(pg_cluster, fresh_db):
    from dbops_pipelines.gdpr.plan import dry_run

    pg_cluster.execute("""
        CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
        CREATE TABLE orders (id int PRIMARY KEY, person int REFERENCES people);
        CREATE TABLE lines (id int PRIMARY KEY, order_id int REFERENCES orders ON DELETE CASCADE);
        CREATE TABLE parcels (id int PRIMARY KEY, line_id int REFERENCES lines);
        CREATE TABLE logins (id int PRIMARY KEY, person int REFERENCES people ON DELETE SET NULL);
        CREATE TABLE invoices (id int PRIMARY KEY, person int REFERENCES people, email text);
        INSERT INTO people VALUES (1, now() - interval '31 days'), (2, now() - interval '29 days'), (3, NULL),
                                  (4, now() - interval '40 days');
        INSERT INTO orders VALUES (10, 1), (11, 1), (12, 2), (13, 4);
        INSERT INTO lines VALUES (100, 10), (101, 11), (102, 12), (103, 13);
        INSERT INTO parcels VALUES (1000, 100), (1001, 102);
        INSERT INTO logins VALUES (1, 1), (2, 3);
        INSERT INTO invoices VALUES (1, 1, 'a@x'), (2, 4, 'b@x'), (3, 2, 'c@x');""", dbname=fresh_db)
    dsn = pg_cluster.dsn(fresh_db)
    before = pg_cluster.execute("SELECT md5(string_agg(t::text, ',')) FROM (SELECT * FROM people ORDER BY id) t",
                                dbname=fresh_db)
    settings = GdprSettings(subject_table="public.people",
                            tables={"public.invoices": {"action": "anonymize", "columns": {"email": "hash"}}})
    with psycopg.connect(dsn) as conn:
        plan = dry_run(conn, "app", discover(conn, settings), settings.grace_days)
    got = {(t.table, t.action): t for t in plan.tables}
    assert got[("public.people", "delete")].rows == 2 and got[("public.people", "delete")].sample_keys == [[1], [4]]
    assert got[("public.orders", "delete")].rows == 3            # 10, 11 of person 1; 13 of person 4
    assert got[("public.lines", "delete")].rows == 3             # three levels down, through a cascade
    assert got[("public.parcels", "delete")].rows == 1           # four levels: only 1000 (line 100)
    assert got[("public.logins", "set null")].rows == 1
    assert got[("public.invoices", "anonymize")].rows == 2
    assert plan.cutoff.tzinfo is not None and plan.to_dict()["grace_days"] == 30
    assert "public.orders (person) -> public.people [orders_person_fkey]" in plan.unindexed
    after = pg_cluster.execute("SELECT md5(string_agg(t::text, ',')) FROM (SELECT * FROM people ORDER BY id) t",
                               dbname=fresh_db)
    assert before == after
