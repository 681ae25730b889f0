"""GDPR cleanup against a real cluster: the grace boundary to the second, rows held by other
sessions skipped and taken on a later pass without stalling, a person undeleted meanwhile kept,
foreign-key chains removed children first (with and without ON DELETE CASCADE), small batches."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from dbops_pipelines.config import GdprSettings
from dbops_pipelines.gdpr.catalog import discover
from dbops_pipelines.gdpr.cleanup import run_cleanup

SCHEMA = """
CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
CREATE TABLE orders (id int PRIMARY KEY, person int REFERENCES people);              -- NO ACTION
CREATE TABLE lines (id int PRIMARY KEY, order_id int REFERENCES orders ON DELETE CASCADE);
CREATE TABLE parcels (id int PRIMARY KEY, line_id int REFERENCES lines);             -- NO ACTION, 3 levels down
CREATE TABLE logins (id int PRIMARY KEY, person int REFERENCES people ON DELETE SET NULL);
"""


@pytest.fixture
def db(pg_cluster, fresh_db):
    pg_cluster.execute(SCHEMA, dbname=fresh_db)
    return pg_cluster.dsn(fresh_db)


def cleanup(dsn: str, **settings):
    settings = GdprSettings(subject_table="public.people", **settings)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return run_cleanup(conn, "app", discover(conn, settings), settings)


def ids(dsn: str, table: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


def test_the_grace_boundary_is_exact_to_the_second(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("""INSERT INTO people VALUES
            (1, now() - interval '30 days' - interval '2 seconds'),   -- just past the grace period: goes
            (2, now() - interval '30 days' + interval '2 seconds'),   -- just inside it: stays
            (3, NULL)""")
    result = cleanup(db)
    assert ids(db, "people") == [2, 3]
    assert result.removed[("public.people", "delete")] == 1 and result.still_locked == {}


def test_chains_go_children_first_with_and_without_cascade(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO people SELECT g, CASE WHEN g % 2 = 0 THEN now() - interval '60 days' END FROM generate_series(1, 20) g;
            INSERT INTO orders SELECT g, g FROM generate_series(1, 20) g;
            INSERT INTO lines SELECT g, g FROM generate_series(1, 20) g;
            INSERT INTO parcels SELECT g, g FROM generate_series(1, 20) g;
            INSERT INTO logins SELECT g, g FROM generate_series(1, 20) g;""")
    result = cleanup(db, batch_size=3)                      # several batches, each a transaction
    odd = list(range(1, 21, 2))
    assert ids(db, "people") == odd and ids(db, "orders") == odd and ids(db, "lines") == odd
    assert ids(db, "parcels") == odd                        # three levels down, through a cascade
    with psycopg.connect(db) as conn:                       # SET NULL: the login stays, unlinked
        assert conn.execute("SELECT count(*) FROM logins WHERE person IS NULL").fetchone()[0] == 10
    assert result.batches >= 4
    assert {k: v for k, v in result.removed.items()} == {
        ("public.people", "delete"): 10, ("public.orders", "delete"): 10, ("public.lines", "delete"): 10,
        ("public.parcels", "delete"): 10}


def test_rows_held_by_others_are_skipped_without_waiting_and_taken_next_run(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO people SELECT g, now() - interval '40 days' FROM generate_series(1, 6) g")
    holder = psycopg.connect(db)
    holder.execute("SELECT 1 FROM people WHERE id IN (2, 5) FOR UPDATE")   # another session holds two people
    try:
        started = time.monotonic()
        result = cleanup(db, batch_size=2, lock_timeout_seconds=30)
        assert time.monotonic() - started < 10                  # skipped, not waited for
        assert ids(db, "people") == [2, 5] and result.still_locked == {"public.people": 2}
    finally:
        holder.rollback()
        holder.close()
    result = cleanup(db)
    assert ids(db, "people") == [] and result.removed[("public.people", "delete")] == 2


def test_a_person_undeleted_while_held_is_kept(db):
    """The other session holds the person, undeletes them and commits while cleanup runs: the
    row is skipped while held and no longer eligible after, so it stays."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO people SELECT g, now() - interval '40 days' FROM generate_series(1, 50) g")
    holder = psycopg.connect(db)
    holder.execute("UPDATE people SET deleted_at = NULL WHERE id = 7")      # undeleted, not yet committed
    committer = threading.Timer(0.3, holder.commit)
    committer.start()
    try:
        cleanup(db, batch_size=1)
    finally:
        committer.join()
        holder.close()
    assert ids(db, "people") == [7]
    again = cleanup(db)                                   # once committed it is simply no longer eligible
    assert ids(db, "people") == [7] and again.still_locked == {} and sum(again.removed.values()) == 0


def test_kept_rows_are_anonymized_consistently_across_tables_and_unlinked(pg_cluster, fresh_db, monkeypatch):
    secret = "an-anonymization-secret-never-shown"
    monkeypatch.setenv("DBOPS_GDPR_HASH_KEY", secret)
    pg_cluster.execute("""
        CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
        CREATE TABLE invoices (id int PRIMARY KEY, person int REFERENCES people, email text, name text, phone text);
        CREATE TABLE audit (id int PRIMARY KEY, person int REFERENCES people, email varchar(64));
        INSERT INTO people VALUES (1, now() - interval '40 days'), (2, NULL);
        INSERT INTO invoices VALUES (10, 1, 'ann@example.org', 'Ann', '555'), (11, 2, 'bob@example.org', 'Bob', '556');
        INSERT INTO audit VALUES (20, 1, 'ann@example.org'), (21, 2, 'bob@example.org');""", dbname=fresh_db)
    dsn = pg_cluster.dsn(fresh_db)
    result = cleanup(dsn, tables={
        "public.invoices": {"action": "anonymize", "columns": {"email": "hash", "name": "fixed:redacted", "phone": None}},
        "public.audit": {"action": "anonymize", "columns": {"email": "hash"}}})
    with psycopg.connect(dsn) as conn:
        invoices = conn.execute("SELECT id, person, email, name, phone FROM invoices ORDER BY id").fetchall()
        audit = conn.execute("SELECT id, person, email FROM audit ORDER BY id").fetchall()
        people = conn.execute("SELECT id FROM people").fetchall()
    assert people == [(2,)]
    (_, person, token, name, phone), kept = invoices
    assert (person, name, phone) == (None, "redacted", None) and token.startswith("anon_") and len(token) == 29
    assert audit[0] == (20, None, token)                  # the same person, the same token, in every table
    assert kept == (11, 2, "bob@example.org", "Bob", "556") and audit[1] == (21, 2, "bob@example.org")
    assert result.removed[("public.invoices", "anonymize")] == 1 and result.removed[("public.audit", "anonymize")] == 1
    assert secret not in str(result.to_dict()) and "ann@example.org" not in str(result.to_dict())


def test_anonymization_needs_its_secret_before_anything_runs(pg_cluster, fresh_db, monkeypatch):
    from dbops_pipelines.errors import ConfigError

    monkeypatch.delenv("DBOPS_GDPR_HASH_KEY", raising=False)
    pg_cluster.execute("""
        CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
        CREATE TABLE invoices (id int PRIMARY KEY, person int REFERENCES people, email text);
        INSERT INTO people VALUES (1, now() - interval '40 days');
        INSERT INTO invoices VALUES (10, 1, 'ann@example.org');""", dbname=fresh_db)
    with pytest.raises(ConfigError) as err:
        cleanup(pg_cluster.dsn(fresh_db), tables={"public.invoices": {"action": "anonymize", "columns": {"email": "hash"}}})
    assert "DBOPS_GDPR_HASH_KEY is not set" in err.value.message
    assert ids(pg_cluster.dsn(fresh_db), "people") == [1]               # nothing changed


@pytest.mark.parametrize("ddl, columns, problem", [
    ("email varchar(10)", {"email": "hash"}, "a hash token is text of 29 characters"),
    ("amount int", {"amount": "fixed:lots"}, "is not a value of type integer"),
    ("email text NOT NULL", {"email": None}, "the column is NOT NULL"),
])
def test_anonymization_that_cannot_work_is_a_config_error(pg_cluster, fresh_db, monkeypatch, ddl, columns, problem):
    from dbops_pipelines.errors import ConfigError

    monkeypatch.setenv("DBOPS_GDPR_HASH_KEY", "x" * 32)
    pg_cluster.execute(f"""
        CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
        CREATE TABLE invoices (id int PRIMARY KEY, person int REFERENCES people, {ddl});""", dbname=fresh_db)
    with pytest.raises(ConfigError) as err:
        cleanup(pg_cluster.dsn(fresh_db), tables={"public.invoices": {"action": "anonymize", "columns": columns}})
    assert problem in err.value.message


def test_a_person_the_database_refuses_to_let_go_is_reported_and_the_rest_go(pg_cluster, fresh_db):
    """users.deleted_by: a staying user still points at a leaving one (NO ACTION). That one is
    blocked, with the constraint named and no key values; everyone else is removed."""
    pg_cluster.execute("""
        CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, deleted_at timestamptz,
                            deleted_by int REFERENCES users);
        INSERT INTO users SELECT g, 'u' || g || '@example.org', now() - interval '40 days', NULL FROM generate_series(1, 6) g;
        INSERT INTO users VALUES (7, 'stays@example.org', NULL, 2);""", dbname=fresh_db)
    settings = GdprSettings(subject_table="public.users", batch_size=4)
    with psycopg.connect(pg_cluster.dsn(fresh_db), autocommit=True) as conn:
        result = run_cleanup(conn, "app", discover(conn, settings), settings)
    assert ids(pg_cluster.dsn(fresh_db), "users") == [2, 7]
    [blocked] = result.blocked["public.users"]
    assert blocked["key"] == ["2"] and "users_deleted_by_fkey" in blocked["why"]
    assert "@example.org" not in str(result.to_dict())           # no DETAIL with key values
    assert result.removed[("public.users", "delete")] == 5 and result.still_locked == {}


def test_a_child_row_held_by_another_session_blocks_only_its_person(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO people SELECT g, now() - interval '40 days' FROM generate_series(1, 6) g;
            INSERT INTO orders SELECT g, g FROM generate_series(1, 6) g;""")
    holder = psycopg.connect(db)
    holder.execute("SELECT 1 FROM orders WHERE id = 3 FOR UPDATE")
    try:
        result = cleanup(db, batch_size=10, lock_timeout_seconds=0.2)
    finally:
        holder.rollback()
        holder.close()
    assert ids(db, "people") == [3] and ids(db, "orders") == [3]
    assert "LockNotAvailable" in result.blocked["public.people"][0]["why"]


def test_keys_of_every_type_are_matched_as_themselves(pg_cluster, fresh_db):
    pg_cluster.execute("""
        CREATE TYPE mood AS ENUM ('sad', 'ok');
        CREATE TABLE people (code char(5), m mood, since date, deleted_at timestamptz, PRIMARY KEY (code, m, since));
        INSERT INTO people VALUES ('ab', 'sad', 'infinity', now() - interval '40 days'),
                                  ('cd', 'ok', '2020-01-01', now() - interval '40 days'), ('ef', 'ok', '2020-01-01', NULL);
        """, dbname=fresh_db)
    settings = GdprSettings(subject_table="public.people", batch_size=1)
    with psycopg.connect(pg_cluster.dsn(fresh_db), autocommit=True) as conn:
        result = run_cleanup(conn, "app", discover(conn, settings), settings)
        left = conn.execute("SELECT code FROM people").fetchall()
    assert left == [("ef   ",)] and result.removed[("public.people", "delete")] == 2 and result.still_locked == {}


def test_an_anonymized_row_keeps_its_links_to_people_who_stay(pg_cluster, fresh_db, monkeypatch):
    monkeypatch.setenv("DBOPS_GDPR_HASH_KEY", "y" * 32)
    pg_cluster.execute("""
        CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
        CREATE TABLE orders (id int PRIMARY KEY, person int REFERENCES people);
        CREATE TABLE invoices (id int PRIMARY KEY, customer int REFERENCES people, order_id int REFERENCES orders, email text);
        INSERT INTO people VALUES (1, now() - interval '40 days'), (2, NULL);
        INSERT INTO orders VALUES (10, 1);
        INSERT INTO invoices VALUES (100, 2, 10, 'x@example.org');""", dbname=fresh_db)
    settings = GdprSettings(subject_table="public.people",
                            tables={"public.invoices": {"action": "anonymize", "columns": {"email": "hash"}}})
    with psycopg.connect(pg_cluster.dsn(fresh_db), autocommit=True) as conn:
        run_cleanup(conn, "app", discover(conn, settings), settings)
        [(customer, order_id)] = conn.execute("SELECT customer, order_id FROM invoices").fetchall()
    assert (customer, order_id) == (2, None)       # the link to the order that went is cleared, not the staying customer's


@pytest.mark.parametrize("ddl, settings, problem", [
    ("CREATE TABLE audit (id int PRIMARY KEY, person int REFERENCES people ON DELETE CASCADE)",
     {"exclude": ["public.audit"]}, "public.audit is in gdpr.exclude, but its foreign key"),
    ("", {"exclude": ["public.people"]}, "the subject table public.people is in gdpr.exclude"),
    ("", {"tables": {"public.people": {"action": "anonymize", "columns": {"deleted_at": None}}}},
     "are deleted, not anonymized"),
])
def test_what_cleanup_must_not_touch_is_refused_up_front(pg_cluster, fresh_db, ddl, settings, problem):
    from dbops_pipelines.errors import ConfigError

    pg_cluster.execute("CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);" + ddl, dbname=fresh_db)
    with psycopg.connect(pg_cluster.dsn(fresh_db)) as conn, pytest.raises(ConfigError) as err:
        discover(conn, GdprSettings(subject_table="public.people", **settings))
    assert problem in err.value.message


def test_a_soft_deletable_table_with_children_of_its_own_is_left_alone_and_reported(pg_cluster, fresh_db):
    pg_cluster.execute("""
        CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz);
        CREATE TABLE posts (id int PRIMARY KEY, deleted_at timestamptz);
        CREATE TABLE comments (id int PRIMARY KEY, post int REFERENCES posts ON DELETE CASCADE);
        INSERT INTO posts VALUES (1, now() - interval '40 days');
        INSERT INTO comments VALUES (1, 1);""", dbname=fresh_db)
    settings = GdprSettings(subject_table="public.people")
    with psycopg.connect(pg_cluster.dsn(fresh_db), autocommit=True) as conn:
        result = run_cleanup(conn, "app", discover(conn, settings), settings)
    assert ids(pg_cluster.dsn(fresh_db), "comments") == [1] and ids(pg_cluster.dsn(fresh_db), "posts") == [1]
    assert "comments_post_fkey" in result.skipped["public.posts"]
