"""`dbops gdpr export` against a real cluster: every row of one person, found by following the
foreign keys down from the subject table (a chain three deep, a second branch, a composite key, a
hostile table name, a cycle, a self-reference), nothing of anyone else, counts that match, and the
mistakes (unknown person, wrong id type, existing file) refused with nothing written."""

from __future__ import annotations

import json
import stat

import psycopg
import pytest

from dbops_pipelines.cli import main
from dbops_pipelines.config import load_config
from dbops_pipelines.errors import InvalidSubjectId, SubjectNotFound
from dbops_pipelines.gdpr.export import export_subject
from dbops_pipelines_tests.conftest import scratch_database

NOTES = '"Odd Schema"."User ""Notes"" Tbl"'     # as SQL, and as the export names it (schema.table, quoted parts)

SCHEMA = f'''
CREATE TABLE people (id int PRIMARY KEY, email text NOT NULL, deleted_at timestamptz,
                     deleted_by int REFERENCES people);                      -- a self-reference: not followed
CREATE TABLE orders (id int PRIMARY KEY, person int NOT NULL REFERENCES people ON DELETE CASCADE,
                     total numeric(12, 2), placed_at timestamptz, meta jsonb, tags text[],
                     fav_region text, fav_no int);
CREATE TABLE order_items (region text, no int, order_id int REFERENCES orders ON DELETE SET NULL,
                          sku text, qty int, PRIMARY KEY (region, no));     -- a composite primary key
ALTER TABLE orders ADD FOREIGN KEY (fav_region, fav_no) REFERENCES order_items;  -- a cycle
CREATE TABLE shipments (id int PRIMARY KEY, item_region text, item_no int, sent date,
                        FOREIGN KEY (item_region, item_no) REFERENCES order_items ON DELETE RESTRICT);
CREATE SCHEMA "Odd Schema";
CREATE TABLE {NOTES} (id bigint PRIMARY KEY, "Person" int REFERENCES people, "Body ""Text""" text,
                      blob bytea, until timestamp, ratio double precision);
CREATE TABLE audit (id int PRIMARY KEY, person int REFERENCES people ON DELETE SET NULL, what text);
CREATE TABLE unrelated (id int PRIMARY KEY, person_email text);

INSERT INTO people VALUES (1, 'ann@example.org', NULL, NULL), (2, 'bob@example.org', now(), 1),
                          (3, 'cy@example.org', NULL, NULL);
INSERT INTO order_items VALUES ('eu', 1, NULL, 'A', 1), ('eu', 2, NULL, 'B', 2), ('us', 1, NULL, 'C', 3),
                               ('eu', 3, NULL, 'Z', 9);
INSERT INTO orders VALUES (10, 1, 12.50, '2024-03-01 10:00+00', '{{"gift": true, "n": 1.25}}', '{{a,b}}', 'eu', 1),
                          (11, 1, 99999999.99, 'infinity', NULL, '{{}}', NULL, NULL),
                          (20, 2, 5.00, '2024-01-01 00:00+00', NULL, NULL, 'eu', 3);
UPDATE order_items SET order_id = 10 WHERE (region, no) IN (('eu', 1), ('eu', 2));
UPDATE order_items SET order_id = 11 WHERE (region, no) = ('us', 1);
UPDATE order_items SET order_id = 20 WHERE (region, no) = ('eu', 3);
INSERT INTO shipments VALUES (100, 'eu', 1, '2024-03-02'), (101, 'eu', 1, '2024-03-03'), (102, 'us', 1, NULL),
                             (200, 'eu', 3, '2024-01-02');
INSERT INTO {NOTES} VALUES (1000, 1, 'says "hi"', '\\x00ff10', '2024-05-05 12:34:56.789', 0.1),
                           (2000, 2, 'bob''s note', NULL, '-infinity', NULL);
INSERT INTO audit VALUES (1, 1, 'login'), (2, 2, 'login'), (3, NULL, 'boot');
INSERT INTO unrelated VALUES (1, 'ann@example.org');

CREATE TABLE accounts (region text, id int, deleted_at timestamptz, PRIMARY KEY (region, id));
CREATE TABLE sessions (id int PRIMARY KEY, region text, account int, FOREIGN KEY (region, account) REFERENCES accounts);
INSERT INTO accounts VALUES ('eu', 42, NULL), ('us', 42, NULL);
INSERT INTO sessions VALUES (1, 'eu', 42), (2, 'us', 42), (3, 'eu', 42);
'''


@pytest.fixture(scope="module")
def shared_db(pg_cluster):
    """One database for the whole module: the tests only read it."""
    with scratch_database(pg_cluster, "export") as name:
        pg_cluster.execute(SCHEMA, dbname=name)
        yield name


@pytest.fixture
def app(write_config, pg_cluster, shared_db):
    write_config({"app": {"dsn": pg_cluster.dsn(shared_db), "gdpr": {"subject_table": "public.people"}},
                  "acct": {"dsn": pg_cluster.dsn(shared_db), "gdpr": {"subject_table": "public.accounts"}}})
    return "app"


@pytest.fixture
def out_dir(tmp_path):
    """Where the exports go: a directory of their own (the config lives in tmp_path)."""
    path = tmp_path / "exports"
    path.mkdir()
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ids(rows, *columns):
    return sorted(tuple(r[c] for c in columns) if len(columns) > 1 else r[columns[0]] for r in rows)


def test_everything_of_one_person_and_nothing_else(app, out_dir, capsys):
    out_file = out_dir / "ann.json"
    code, out, err = run(capsys, "gdpr", "export", "app", "--subject", "1", "--out", str(out_file))
    assert code == 0, err
    doc = json.loads(out_file.read_text())
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert [p.name for p in out_dir.iterdir()] == ["ann.json"]           # no temporary file left
    assert doc["format"] == "dbops-gdpr-export" and doc["version"] == 1 and doc["target"] == "app"
    assert doc["subject_table"] == "public.people" and doc["subject_key"] == {"id": 1}
    assert doc["snapshot"] == "repeatable read" and doc["exported_at"]

    t = doc["tables"]
    assert set(t) == {"public.people", "public.orders", "public.order_items", "public.shipments", NOTES,
                      "public.audit"}                                      # never `unrelated`
    assert t["public.people"] == [{"id": 1, "email": "ann@example.org", "deleted_at": None, "deleted_by": None}]
    assert ids(t["public.orders"], "id") == [10, 11]
    assert ids(t["public.order_items"], "region", "no") == [("eu", 1), ("eu", 2), ("us", 1)]   # each once
    assert ids(t["public.shipments"], "id") == [100, 101, 102]             # three levels down
    assert ids(t["public.audit"], "id") == [1]                             # ON DELETE SET NULL followed too
    assert t[NOTES] == [{"id": 1000, "Person": 1, 'Body "Text"': 'says "hi"', "blob": "\\x00ff10",
                              "until": "2024-05-05T12:34:56.789", "ratio": "0.1"}]
    order = {r["id"]: r for r in t["public.orders"]}
    assert order[10]["total"] == "12.50" and order[11]["total"] == "99999999.99"    # exact digits, never floats
    assert order[10]["placed_at"] == "2024-03-01T10:00:00+00:00" and order[11]["placed_at"] == "infinity"
    assert order[10]["meta"] == {"gift": True, "n": "1.25"} and order[10]["tags"] == ["a", "b"]
    assert "bob@example.org" not in out_file.read_text()                  # the person who was deleted by ann: not hers

    manifest = doc["manifest"]
    searched = {s["table"]: s for s in manifest["searched"]}
    assert {name: s["rows"] for name, s in searched.items()} == {name: len(rows) for name, rows in t.items()}
    assert manifest["total_rows"] == sum(len(rows) for rows in t.values()) == 11
    assert manifest["searched"][0] == {"table": "public.people", "via": [], "rows": 1}
    assert {v["constraint"] for v in searched["public.order_items"]["via"]} == {"order_items_order_id_fkey"}
    assert {v["from"] for v in searched["public.orders"]["via"]} == {"public.people", "public.order_items"}
    assert [n["table"] for n in manifest["not_followed"]] == ["public.people"]     # deleted_by

    # stdout: one line of tables and counts; no personal data anywhere but the file
    assert out.count("\n") == 1 and "public.orders 2" in out and "public.shipments 3" in out and str(out_file) in out
    assert "example.org" not in out + err


def test_a_person_with_nothing_below_lists_every_table_with_zero(app, out_dir, capsys):
    code, out, err = run(capsys, "gdpr", "export", "app", "--subject", "3", "--out", str(out_dir / "cy.json"),
                         "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert "subject_key" not in manifest and "tables" not in manifest and "cy@" not in out
    rows = {s["table"]: s["rows"] for s in manifest["searched"]}
    assert rows == {"public.people": 1, "public.orders": 0, "public.order_items": 0, "public.shipments": 0,
                    NOTES: 0, "public.audit": 0}
    assert manifest["total_rows"] == 1 and manifest["out"] == str(out_dir / "cy.json")
    doc = json.loads((out_dir / "cy.json").read_text())
    assert doc["tables"]["public.orders"] == [] and doc["manifest"]["total_rows"] == 1


def test_composite_subject_key(app, out_dir, capsys):
    code, out, err = run(capsys, "gdpr", "export", "acct", "--subject", '["eu", 42]', "--out", str(out_dir / "a.json"))
    assert code == 0, err
    doc = json.loads((out_dir / "a.json").read_text())
    assert doc["subject_key"] == {"region": "eu", "id": 42}
    assert ids(doc["tables"]["public.sessions"], "id") == [1, 3]
    for bad in ("42", '["eu"]', '["eu", 42, 1]', '{"region": "eu"}', '["eu", null]'):
        code, out, err = run(capsys, "gdpr", "export", "acct", "--subject", bad, "--out", str(out_dir / "b.json"))
        assert code == 1 and "JSON array of 2 values" in err and "Traceback" not in err, bad
    code, out, err = run(capsys, "gdpr", "export", "acct", "--subject", '["eu", "x"]', "--out", str(out_dir / "b.json"))
    assert code == 1 and "of type integer" in err
    assert not (out_dir / "b.json").exists()


def test_unknown_person_is_an_error_and_nothing_is_written(app, out_dir, capsys):
    code, out, err = run(capsys, "gdpr", "export", "app", "--subject", "424242", "--out", str(out_dir / "x.json"))
    assert code == 1 and "no row of public.people has that primary key" in err and "Traceback" not in err
    assert "424242" not in err and out == ""
    assert list(out_dir.iterdir()) == []
    with pytest.raises(SubjectNotFound):
        export_subject(load_config(), "app", "424242")


def test_an_id_of_the_wrong_type_is_named_plainly(app, out_dir, capsys):
    code, out, err = run(capsys, "gdpr", "export", "app", "--subject", "abc@example.org", "--out", str(out_dir / "x.json"))
    assert code == 1 and "not a value of public.people.id, of type integer" in err
    assert "Traceback" not in err and "database error" not in err and "abc@" not in err
    assert list(out_dir.iterdir()) == []
    with pytest.raises(InvalidSubjectId):
        export_subject(load_config(), "app", "99999999999")                 # out of range for integer


def test_an_existing_file_is_kept_unless_forced(app, out_dir, capsys):
    target = out_dir / "out.json"
    target.write_text("keep me")
    code, out, err = run(capsys, "gdpr", "export", "app", "--subject", "1", "--out", str(target))
    assert code == 1 and "already exists" in err and "--force" in err
    assert target.read_text() == "keep me" and [p.name for p in out_dir.iterdir()] == ["out.json"]
    code, out, err = run(capsys, "gdpr", "export", "app", "--subject", "1", "--out", str(target), "--force")
    assert code == 0, err
    assert json.loads(target.read_text())["subject_key"] == {"id": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    code, out, err = run(capsys, "gdpr", "export", "app", "--subject", "1", "--out", str(out_dir / "no" / "x.json"))
    assert code == 1 and "does not exist" in err


def test_one_read_only_repeatable_read_snapshot(app, monkeypatch):
    """Every row query runs inside one transaction, REPEATABLE READ and READ ONLY."""
    seen = []
    real_execute = psycopg.Connection.execute

    def spy(self, query, *args, **kwargs):
        text = query.as_string(self) if hasattr(query, "as_string") else str(query)
        if "row_to_json" in text:
            seen.append(real_execute(self, "SELECT current_setting('transaction_isolation'), "
                                           "current_setting('transaction_read_only'), now()").fetchone())
        return real_execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", spy)
    export = export_subject(load_config(), "app", "1")
    assert len(seen) >= 5
    assert {(iso, ro) for iso, ro, _ in seen} == {("repeatable read", "on")}
    assert len({start for _, _, start in seen}) == 1 and export.exported_at == seen[0][2]   # one transaction
