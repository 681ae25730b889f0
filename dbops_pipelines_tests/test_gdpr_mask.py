"""`dbops restore BACKUP_ID --to DSN --anonymize` against a real cluster: a real backup restored
into a fresh database comes out with every configured personal column masked in every row, keyed
tokens equal to HMAC-SHA-256 under the secret, the same value the same token in every table,
foreign keys on masked columns present and validated again; mistakes fail before anything is
restored, and a masking failure after the restore says loudly that the copy is unmasked."""

from __future__ import annotations

import hashlib
import hmac

import psycopg
import pytest
import yaml

from dbops_pipelines.cli import main
from dbops_pipelines.config import load_config, parse_config
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.gdpr import mask
from dbops_pipelines.gdpr.anonymize import token
from dbops_pipelines_tests.conftest import scratch_database

SECRET = "a-test-secret-of-more-than-16-bytes"
HOSTILE = '"Odd; Schema"."Con""tacts; DROP TABLE users"'     # schema `Odd; Schema`, table `Con"tacts; DROP TABLE users`
LEGACY = "legacy@example.com"                                   # cleanup anonymized it in production already

SCHEMA = f"""
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text, phone varchar(40),
                    plan text NOT NULL DEFAULT 'free', deleted_at timestamptz);
CREATE TABLE orders (id int PRIMARY KEY, user_email text REFERENCES users (email), shipping_name text,
                     total numeric NOT NULL);
CREATE TABLE email_changes (changed_at timestamptz NOT NULL DEFAULT now(), old_email text);
CREATE FUNCTION log_email_change() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.email_changes (old_email) VALUES (OLD.email); RETURN NEW; END $$;
CREATE TRIGGER users_email_audit AFTER UPDATE OF email ON users FOR EACH ROW EXECUTE FUNCTION log_email_change();
CREATE SCHEMA "Odd; Schema";
CREATE TABLE {HOSTILE} (id int PRIMARY KEY,
    "E-Mail Address" varchar(64) CONSTRAINT "fk; DROP ""users""\" REFERENCES users (email),
    "Full Name" text);
INSERT INTO users (id, email, name, phone)
  SELECT g, 'person' || g || '@example.com', 'Person Number ' || g, '+49 30 555' || lpad(g::text, 4, '0')
    FROM generate_series(1, 50) g;
INSERT INTO orders SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'person' || (g % 50 + 1) || '@example.com' END,
                          'Person Number ' || (g % 50 + 1), g * 1.5
                     FROM generate_series(1, 120) g;
INSERT INTO {HOSTILE} SELECT g, 'person' || g || '@example.com', 'Person Number ' || g FROM generate_series(1, 30) g;
CREATE MATERIALIZED VIEW user_directory AS SELECT email, name FROM users;
"""

GDPR = {
    "subject_table": "public.users",
    # cleanup's anonymization of orders is masked too; gdpr.mask wins where both name a column
    "tables": {"public.orders": {"action": "anonymize", "columns": {"user_email": "hash", "shipping_name": "fixed:someone"}}},
    "mask": {"public.users": {"email": "hash", "name": "fixed:Jane Doe", "phone": None},
             "public.orders": {"shipping_name": None},
             HOSTILE: {"E-Mail Address": "hash", "Full Name": None}},
}


def expected_token(value: str) -> str:
    return "anon_" + hmac.new(SECRET.encode(), value.encode(), hashlib.sha256).hexdigest()[:24]


@pytest.fixture
def source(pg_cluster, fresh_db, monkeypatch):
    pg_cluster.execute(SCHEMA, dbname=fresh_db)
    pg_cluster.execute("INSERT INTO users (id, email, name) VALUES (51, %s, NULL)", dbname=fresh_db,
                       params=(expected_token(LEGACY),))
    pg_cluster.execute("REFRESH MATERIALIZED VIEW user_directory", dbname=fresh_db)
    monkeypatch.setenv("DBOPS_GDPR_HASH_KEY", SECRET)
    return pg_cluster.dsn(fresh_db)


@pytest.fixture
def destination(pg_cluster):
    with scratch_database(pg_cluster, "masked") as name:
        yield pg_cluster.dsn(name)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def backup(capsys, write_config, dsn: str, gdpr: dict | None = GDPR) -> str:
    write_config({"app": {"dsn": dsn, **({"gdpr": gdpr} if gdpr is not None else {})}})
    code, out, err = run(capsys, "backup", "app")
    assert code == 0, err
    return out.strip()


def rows(dsn: str, query: str, params=None) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def user_relations(dsn: str) -> list[str]:
    return [r[0] for r in rows(dsn, "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                    "WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                                    "AND n.nspname !~ '^pg_' ORDER BY 1")]


def originals(dsn: str) -> set[str]:
    found = set()
    for email, name, phone in rows(dsn, "SELECT email, name, phone FROM users"):
        found |= {v for v in (email, name, phone) if v and not v.startswith("anon_")}
    found |= {r[0] for r in rows(dsn, 'SELECT "Full Name" FROM ' + HOSTILE)}
    return found


def test_restore_anonymize_masks_every_row_consistently(capsys, write_config, source, destination, pg_cluster):
    before = {t: rows(source, f"SELECT count(*) FROM {t}")[0][0] for t in user_relations(source)}
    secrets_in_source = originals(source)
    assert len(secrets_in_source) == 150          # 50 e-mails, names and phone numbers
    backup_id = backup(capsys, write_config, source)

    code, out, err = run(capsys, "restore", backup_id, "--to", destination, "--anonymize")
    assert code == 0, err
    assert "masked 7 columns in 3 tables (201 rows)" in out        # 51 users + 120 orders + 30 contacts
    assert SECRET not in out + err
    assert not any(v in out + err for v in secrets_in_source)      # no original value printed

    # Same relations, same row counts.
    assert {t: rows(destination, f"SELECT count(*) FROM {t}")[0][0] for t in user_relations(destination)} == before
    # No original value anywhere: every column of every table and materialized view, as text.
    for relation in user_relations(destination):
        for (text,) in rows(destination, f"SELECT t::text FROM {relation} t"):
            assert not any(v in text for v in secrets_in_source), relation
    # ... nor in the planner's statistics (most common values, histograms), replaced after masking.
    stats = rows(destination, "SELECT coalesce(most_common_vals::text, '') || coalesce(histogram_bounds::text, '') "
                              "FROM pg_stats WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
    assert stats and not any(v in s for (s,) in stats for v in secrets_in_source)

    # Tokens are HMAC-SHA-256 under the secret, as cleanup writes them; an existing token stays itself.
    src_users = dict(rows(source, "SELECT id, email FROM users"))
    got_users = {i: (e, n, p) for i, e, n, p in rows(destination, "SELECT id, email, name, phone FROM users")}
    for uid, email in src_users.items():
        want = email if email.startswith("anon_") else expected_token(email)
        assert email.startswith("anon_") or want == token(SECRET.encode(), email)    # the test's HMAC is cleanup's
        assert got_users[uid] == (want, "Jane Doe", None)
    assert got_users[51][0] == expected_token(LEGACY)
    # The same value is the same token in every table; NULL stays NULL; mask wins over gdpr.tables.
    src_orders = dict(rows(source, "SELECT id, user_email FROM orders"))
    for oid, email, shipping in rows(destination, "SELECT id, user_email, shipping_name FROM orders"):
        assert email == (expected_token(src_orders[oid]) if src_orders[oid] else None) and shipping is None
    src_contacts = dict(rows(source, f'SELECT id, "E-Mail Address" FROM {HOSTILE}'))
    for cid, email, name in rows(destination, f'SELECT id, "E-Mail Address", "Full Name" FROM {HOSTILE}'):
        assert email == expected_token(src_contacts[cid]) and name is None
    joined = rows(destination, "SELECT count(*) FROM orders o JOIN users u ON u.email = o.user_email")[0][0]
    assert joined == sum(1 for e in src_orders.values() if e)
    # The materialized view was refreshed from the masked rows.
    assert sorted(rows(destination, "SELECT email FROM user_directory")) == sorted(
        rows(destination, "SELECT email FROM users"))

    # Both foreign keys on masked columns are back, with their names, and validated.
    fks = dict(rows(destination, "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f'"))
    assert fks == {"orders_user_email_fkey": True, 'fk; DROP "users"': True}
    # The audit trigger was paused while masking (it would have copied every old e-mail) and is back.
    assert rows(destination, "SELECT count(*) FROM email_changes") == [(0,)]
    assert rows(destination, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'users_email_audit'") == [("O",)]

    # Masking a masked copy again changes nothing: tokens stay tokens.
    snapshot = {t: sorted(rows(destination, f"SELECT t::text FROM {t} t")) for t in user_relations(destination)}
    with psycopg.connect(destination, autocommit=True) as conn:
        again = mask.mask_database(conn, load_config().targets["app"].gdpr)
    assert again.rows == 201 and sorted(again.foreign_keys) == sorted(["public.orders.orders_user_email_fkey",
                                                                       f'{HOSTILE}.fk; DROP "users"'])
    assert {t: sorted(rows(destination, f"SELECT t::text FROM {t} t")) for t in user_relations(destination)} == snapshot


def empty(dsn: str) -> bool:
    return user_relations(dsn) == []


def test_a_missing_secret_fails_before_anything_is_restored(capsys, write_config, source, destination, monkeypatch):
    backup_id = backup(capsys, write_config, source)
    monkeypatch.delenv("DBOPS_GDPR_HASH_KEY")
    code, out, err = run(capsys, "restore", backup_id, "--to", destination, "--anonymize")
    assert code == 1 and "$DBOPS_GDPR_HASH_KEY is not set" in err and "Traceback" not in err
    assert empty(destination)
    monkeypatch.setenv("DBOPS_GDPR_HASH_KEY", "short")
    code, out, err = run(capsys, "restore", backup_id, "--to", destination, "--anonymize")
    assert code == 1 and "$DBOPS_GDPR_HASH_KEY is shorter than 16 bytes" in err
    assert empty(destination)


@pytest.mark.parametrize("gdpr, problem", [
    ({**GDPR, "mask": {"public.users": {"Email": "hash"}, "public.orders": {"shipping_name": None}}},
     "gdpr.mask.public.users.Email: no column 'Email' in public.users (did you mean 'email'?)"),
    ({**GDPR, "mask": {"public.Users": {"email": "hash"}}}, 'gdpr.mask.public.Users: table public."Users" '),
    ({**GDPR, "mask": {"public.Users": {"email": "hash"}}}, "(did you mean public.users?)"),
    ({**GDPR, "mask": {"public.Users": {"email": "hash"}}}, "does not exist in backup"),
    ({**GDPR, "mask": {"public.users": {"email": "hash"}}, "tables": {}},
     "references public.users.email (foreign key"),   # orders' key or the hostile table's, whichever comes first
    ({**GDPR, "mask": {"public.users": {"email": "hash"}}, "tables": {}},
     "which gdpr.mask.public.users.email masks, but"),
    ({**GDPR, "mask": {"public.orders": {"total": "hash"}}}, "a hash token is text of 29 characters and the column is numeric"),
    ({**GDPR, "mask": {"public.users": {"plan": None}}}, "gdpr.mask.public.users.plan: the column is NOT NULL"),
    ({"subject_table": "public.users"}, "targets.app.gdpr lists nothing to mask"),
    (None, "target 'app' has no gdpr section"),
])
def test_configuration_mistakes_fail_before_anything_is_restored(capsys, write_config, source, destination, gdpr, problem):
    backup_id = backup(capsys, write_config, source)
    write_config({"app": {"dsn": source, **({"gdpr": gdpr} if gdpr is not None else {})}})
    code, out, err = run(capsys, "restore", backup_id, "--to", destination, "--anonymize")
    assert code == 1 and problem in " ".join(err.split()), err
    assert "Traceback" not in err
    assert empty(destination)


def test_a_masking_failure_after_the_restore_says_the_copy_is_unmasked(capsys, write_config, pg_cluster, destination,
                                                                        monkeypatch):
    monkeypatch.setenv("DBOPS_GDPR_HASH_KEY", SECRET)
    with scratch_database(pg_cluster, "checked") as name:
        # A CHECK constraint a token breaks: found only when the UPDATE runs, after the restore.
        pg_cluster.execute("CREATE TABLE people (id int PRIMARY KEY, deleted_at timestamptz, email text CHECK (email LIKE '%@%'));"
                           "INSERT INTO people SELECT g, NULL, 'secret' || g || '@example.org' FROM generate_series(1, 5) g",
                           dbname=name)
        backup_id = backup(capsys, write_config, pg_cluster.dsn(name),
                           {"subject_table": "public.people", "mask": {"public.people": {"email": "hash"}}})
    code, out, err = run(capsys, "restore", backup_id, "--to", destination, "--anonymize")
    assert code == 1 and "Traceback" not in err
    flat = " ".join(err.split())
    assert "masking failed" in flat and "holds UNMASKED production data" in flat and "drop it" in flat
    assert "people_email_check" in flat
    assert "@example.org" not in err                      # the DETAIL (the failing row) is never shown
    # Rolled back whole: the copy is as restored, which is what the message says.
    assert rows(destination, "SELECT count(*) FROM people WHERE email LIKE 'secret%'") == [(5,)]



def test_a_partial_restore_masks_the_restored_tables(capsys, write_config, source, destination):
    backup_id = backup(capsys, write_config, source)
    code, out, err = run(capsys, "restore", backup_id, "--to", destination, "--anonymize", "--table", "public.orders")
    assert code == 0, err
    assert "masked 2 columns in 1 tables (120 rows)" in out
    src = dict(rows(source, "SELECT id, user_email FROM orders"))
    assert {i: (e, s) for i, e, s in rows(destination, "SELECT id, user_email, shipping_name FROM orders")} == {
        i: (expected_token(e) if e else None, None) for i, e in src.items()}


# --- pieces ----------------------------------------------------------------------------------------

def test_tokens_are_cleanups_tokens():
    values = ["a@example.com", "Ünïcødé", "", "x" * 1000, token(b"k" * 16, "old")]
    assert mask.tokens(b"k" * 16, values) == [token(b"k" * 16, v) for v in values[:4]] + [values[4]]


@pytest.mark.parametrize("definition, parsed", [
    ("FOREIGN KEY (user_email) REFERENCES users(email)", (("user_email",), ("public", "users"), ("email",), False)),
    ('FOREIGN KEY ("E-Mail, (x)", b) REFERENCES "Odd; Schema"."Con""tacts)"("a""b", c) MATCH FULL ON DELETE CASCADE',
     (("E-Mail, (x)", "b"), ("Odd; Schema", 'Con"tacts)'), ('a"b', "c"), True)),
    ("CHECK ((email ~~ '%@%'::text))", None),
])
def test_foreign_key_definitions_are_read_with_any_names(definition, parsed):
    assert mask._parse_foreign_key(definition) == parsed


def test_column_descriptions_split_outside_quotes():
    assert mask._split_description('character varying(64) not null default \'x\'::text') == ("character varying(64)", True)
    assert mask._split_description('"my not null type" default 1') == ('"my not null type"', False)
    assert mask._split_description("text") == ("text", False)


@pytest.mark.parametrize("masked, problem", [
    ({"public.users": {}}, "'public.users' lists no columns"),
    ({"public.users": {"email": "sha1"}}, "'sha1' is not a column action"),
])
def test_mask_is_checked_when_the_config_loads(masked, problem):
    raw = {"targets": {"app": {"dsn": "postgresql://u@h/app", "gdpr": {"subject_table": "public.users", "mask": masked}}}}
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(")):
        parse_config(yaml.safe_load(yaml.safe_dump(raw)))

