"""redact(): every form libpq accepts a password in is hidden, and nothing that is not a password is."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from dbops_pipelines.redact import redact, redact_sql

SECRET = "s3cr3t"


@pytest.mark.parametrize("dsn", [
    f"postgresql://u:{SECRET}@h:5432/db",
    f"postgres://u:{SECRET}@h/db",
    f"postgresql://u:{SECRET}%40x%2Fy@h/db",        # percent-encoded @ and / in the password
    f"postgresql://u:{SECRET}@x@h/db",               # a raw '@': libpq reads up to the last one
    f"postgresql://u:{SECRET}?x@h/db",               # a raw '?': still userinfo for libpq
    f"postgresql://h/db?password={SECRET}",
    f"postgresql://h/db?pass%77ord={SECRET}",        # libpq percent-decodes query keys
    f"postgresql://h/db?sslpassword={SECRET}",
    f"host=h password={SECRET} dbname=db",
    f"host=h password = '{SECRET} with spaces' dbname=db",
    f"host=h password='{SECRET}\\' quoted\\\\' dbname=db",   # escaped quote and backslash
    f"host=h password={SECRET}\\ escaped\\ space dbname=db",
])
def test_every_libpq_password_form_is_hidden(dsn):
    # The forms are real: libpq parses each to a password containing the secret.
    info = conninfo_to_dict(dsn)
    assert SECRET in (info.get("password") or info.get("sslpassword") or "")
    out = redact(dsn)
    assert SECRET not in out and "***" in out
    assert "with spaces" not in out and "quoted" not in out and "escaped" not in out and "space" not in out


def test_what_follows_a_password_survives():
    assert redact(f"host=h password = '{SECRET} x' dbname=db") == "host=h password = *** dbname=db"
    assert redact(f"postgresql://u:{SECRET}@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert redact(f"postgresql://h/db?password={SECRET}&sslmode=require") == "postgresql://h/db?password=***&sslmode=require"
    assert redact(f"postgresql://h/db?password={SECRET}&sslmode=require") == "postgresql://h/db?password=***&sslmode=require"


@pytest.mark.parametrize("text", [
    f"connection to postgresql://u:{SECRET}@h/db failed: timeout",
    f"pg_restore: error: connection to server failed (host=h password='{SECRET} x')",
    f"unterminated: host=h password='{SECRET} and the rest",
    f"PGPASSWORD={SECRET} pg_dump -h h",
    # libpq's keys are case-sensitive, so these fail to parse, but the text holds a secret all the same
    f"invalid URI query parameter: \"PassWord\" in postgresql://h/db?sslmode=require&PassWord={SECRET}&x=1",
    f"invalid connection option \"PASSWORD\" in host=h PASSWORD={SECRET}",
    f"{{'host': 'h', 'password': '{SECRET}'}}",
    f'{{"password": "{SECRET} x", "host": "h"}}',
    f"two: postgresql://a:{SECRET}@h/x and postgresql://b:{SECRET}@k/y",
    # SQL, as pg_stat_statements keeps utility statements and pg_stat_activity shows running ones
    f"ALTER ROLE app PASSWORD '{SECRET}'",
    f"CREATE USER x WITH LOGIN ENCRYPTED PASSWORD 'it''s {SECRET}' VALID UNTIL 'infinity'",
    f"alter role x password E'a\\' {SECRET}'",
    f"CREATE ROLE x PASSWORD $$ {SECRET} $$",
    f"CREATE ROLE x PASSWORD $pw$ {SECRET} $pw$ LOGIN",
    f"ALTER ROLE x PASSWORD '{SECRET}",                      # cut at 300 characters: no closing quote
    f"ALTER ROLE bob PASSWORD'{SECRET}'",
    f"ALTER ROLE bob PASSWORD /* c */ '{SECRET}'",
    f"ALTER ROLE bob PASSWORD U&'{SECRET}'",
    f"CREATE USER MAPPING FOR x SERVER s OPTIONS (user 'u', password'{SECRET}')",
])
def test_passwords_inside_messages_are_hidden(text):
    assert SECRET not in redact(text)


@pytest.mark.parametrize("text", [
    "postgresql://u@h:5432/db",
    "postgresql://h:5432,h2:5433/db?sslmode=require&application_name=nightly",
    "host=h user=password_owner dbname=db",
    "mypassword=1 old_password=2",
    "pg_dump: dumping contents of table public.passwords",
    "postgresql://h/db?options=-c%20x%3Dy",
    "SELECT password_hash FROM users WHERE id = $1",
])
def test_text_without_a_password_is_unchanged(text):
    assert redact(text) == text


@pytest.mark.parametrize("statement", [
    f"ALTER ROLE bob PASSWORD '{SECRET}'",
    f"ALTER ROLE bob PASSWORD concat('{SECRET}', '')",         # any expression after the keyword
    f"ALTER ROLE bob WITH LOGIN PASSWORD\n--note\n'{SECRET}'",
    f"SELECT 1; ALTER ROLE bob ENCRYPTED PASSWORD $x${SECRET}$x$",
])
def test_statement_texts_lose_everything_after_password(statement):
    kept = redact_sql(statement)
    assert SECRET not in kept and kept.lower().split("password")[0] in statement.lower()


def test_statement_texts_without_password_are_unchanged():
    assert redact_sql("SELECT * FROM users WHERE id = $1") == "SELECT * FROM users WHERE id = $1"
