"""Every legal PostgreSQL identifier, in any schema, backs up, checks, restores and verifies.

Names with dots, quotes, spaces, newlines, backslashes, pattern characters, upper case, unicode,
63 bytes, and pairs that used to share one "schema.table" string (schema a table "b.c" versus
schema "a.b" table c): the unit tests pin the naming and the archive reading, the rest run the
real engine against one shared database on the test cluster.
"""

from __future__ import annotations

import base64
import os
import random
import uuid
from types import SimpleNamespace

import psycopg
import pytest
import yaml
from psycopg import sql

from dbops_pipelines import fleet
from dbops_pipelines.backup.catalog import find_backup
from dbops_pipelines.backup.integrity import check_backup
from dbops_pipelines.backup.snapshot import canonical_table, qualified, schema_fingerprint, split_table
from dbops_pipelines.backup.toc import TocEntry, Toc, read_toc
from dbops_pipelines.config import load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import BackupFailed, IntegrityError, RestoreFailed
from dbops_pipelines.restore import open_dump_stream, restore_backup
from dbops_pipelines.table_selection import select_entries
from dbops_pipelines.verification.compare import compare_fingerprints, compare_tables
from dbops_pipelines.verification.runner import _restored_state, verify_backup
from dbops_pipelines_tests.conftest import KEY_ENV
from dbops_pipelines_tests.dbcompare import table_digests, tamper_manifest

NASTY = [
    ("a", "b.c"), ("a.b", "c"),                      # one "a.b.c" string before names were quoted
    ("public", "a.b"), ("public", "."),              # a dot in the name made every backup fail
    ("public", 'dq"uote'), ("public", '"'), ('we"ird.sch', "ta.ble"),
    ("public", "sp ace"), ("public", " lead"), ("public", "trail "),
    ("public", "new\nline"), ("sch\nnl", "t"),       # `check` called such a backup broken
    ("public", "back\\slash"), ("public", "Upper"), ("public", "upper"), ("Sch Ema", "T"),
    ("public", "ünï€ode"), ("public", "x" * 63), ("public", "é" * 31 + "x"),  # 63 bytes
    ("public", "st*r"), ("public", "stxr"), ("public", "q?m"), ("public", "qam"), ("public", "dol$lar"),
    ("public", "(p)|[b]{1}^+"), ("public", "sales order"), ("public", "sales"),
]
PARTITIONS = [("public", "Meas 2024"), ("p.art", "m_2025")]  # of the partitioned public."Meas"


# --- naming: one key per table, and its inverse -------------------------------------------------

def test_table_keys_are_distinct_and_parse_back():
    rng = random.Random(7)
    alphabet = 'aZ._ "\\\n*?$é€x'
    fuzz = [("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))),
             "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))) for _ in range(3000)]
    pairs = set(NASTY + PARTITIONS + fuzz)
    keys = {qualified(s, t) for s, t in pairs}
    assert len(keys) == len(pairs)  # before: a/"b.c" and "a.b"/c were both "a.b.c"
    assert all(split_table(qualified(s, t)) == (s, t) for s, t in pairs)
    assert qualified("a", "b.c") == 'a."b.c"' and qualified("a.b", "c") == '"a.b".c'
    # Plain lower-case names keep the form every existing manifest, config and report uses.
    assert qualified("public", "users") == "public.users" and qualified("sales", "order_2") == "sales.order_2"
    assert qualified("public", "user") == "public.user"  # keywords need no quotes: the key is not SQL


def test_older_keys_and_operator_spellings_still_parse():
    assert split_table("tenants") == ("public", "tenants")
    assert split_table("public.Users") == ("public", "Users")  # as written: no case folding
    assert canonical_table("sales.order items") == 'sales."order items"'
    assert canonical_table('"Sch Ema".T') == '"Sch Ema"."T"'
    assert split_table('public.we"ird') == ("public", 'we"ird')  # not a quoted key: an older manifest's


# --- the archive's table of contents, read from crafted bytes ----------------------------------

def _int(v: int) -> bytes:
    return bytes([v < 0]) + abs(v).to_bytes(4, "little")


def _str(s: str | bytes | None) -> bytes:
    if s is None:
        return _int(-1)
    b = s.encode() if isinstance(s, str) else s
    return _int(len(b)) + b


def crafted_archive(entries, version=(1, 14, 0), encoding="UTF8") -> bytes:
    """Header and TOC as pg_dump's WriteHead/WriteToc lay them out, then some data bytes."""
    out = b"PGDMP" + bytes(version) + bytes([4, 8, 1])
    out += b"\0" if version >= (1, 15, 0) else _int(0)
    out += b"".join(_int(x) for x in (1, 2, 3, 4, 5, 126, 0)) + _str("db") + _str("15.4") + _str("15.4")
    entries = [(9999, "ENCODING", None, "ENCODING", (), f"SET client_encoding = '{encoding}';\n")] + list(entries)
    out += _int(len(entries))
    for dump_id, desc, ns, tag, deps, *defn in entries:
        out += _int(dump_id) + _int(1) + _str("1259") + _str("16390") + _str(tag) + _str(desc) + _int(1)
        out += _str(defn[0] if defn else "CREATE ...") + _str("") + _str("") + _str(ns) + _str("") + _str("heap")
        out += _int(114) if version >= (1, 16, 0) else b""
        out += _str("postgres") + _str("false") + b"".join(_str(str(d)) for d in deps) + _str(None)
        out += b"\1" + bytes(8)
    return out + b"\0" * 100 + b"table data"


def test_toc_is_read_exactly_and_the_stream_replayed():
    entries = [(5, "SCHEMA", None, "a.b", ()), (6, "TABLE", "a.b", "c", (5,)), (7, "TABLE", "a", "b.c", ()),
               (8, "TABLE DATA", "public", "new\nline", (9,)), (9, "TABLE", "public", 'q"t "x', ())]
    for version in ((1, 14, 0), (1, 15, 0), (1, 16, 0)):
        data = crafted_archive(entries, version)
        toc, stream = read_toc(data[i:i + 3] for i in range(0, len(data), 3))  # names split across chunks
        assert toc.version == version
        assert [(e.dump_id, e.desc, e.namespace, e.tag, e.deps) for e in toc.entries[1:]] == entries
        assert b"".join(stream) == data  # pg_restore gets every byte, the ones read here first
        assert toc.find("TABLE DATA", "public", "new\nline").dump_id == 8 and toc.find("TABLE", "a", "c") is None
    latin = crafted_archive([(3, "TABLE", "public", "caf\xe9".encode("latin-1"), ())], encoding="LATIN1")
    assert read_toc([latin])[0].entries[1].tag == "café"  # names are in the dump's encoding


@pytest.mark.parametrize("damage, match", [
    (lambda d: d[:200], "archive ends inside it"),
    (lambda d: b"PGDMQ" + d[5:], "no PGDMP magic"),
    (lambda d: d[:5] + bytes([1, 17, 0]) + d[8:], "version 1.17.0 is not supported"),
    (lambda d: d[:10] + b"\3" + d[11:], "unexpected format 3"),
])
def test_toc_reader_refuses_what_it_cannot_read(damage, match):
    data = crafted_archive([(6, "TABLE", "public", "t", ())])
    with pytest.raises(IntegrityError, match=match):
        read_toc([damage(data)], "backup b-1")


def test_selection_is_exact_brings_partitions_and_names_what_exists():
    toc = Toc((1, 14, 0), (
        TocEntry(1, "TABLE", "a", "x", ()), TocEntry(2, "TABLE", "a", "y", ()), TocEntry(3, "TABLE", "b", "x", ()),
        TocEntry(4, "TABLE", "b", "y", ()), TocEntry(5, "TABLE", "public", "Meas", ()),
        TocEntry(6, "TABLE", "public", "Meas 2024", ()), TocEntry(7, "TABLE", "p", "sub", ()),
        TocEntry(8, "TABLE", "p", "leaf", ()), TocEntry(9, "TABLE ATTACH", "public", "Meas 2024", (6, 5)),
        TocEntry(10, "TABLE ATTACH", "p", "sub", (7, 5)), TocEntry(11, "TABLE ATTACH", "p", "leaf", (8, 7)),
        TocEntry(12, "TABLE DATA", "a", "x", (1,)), TocEntry(13, "TABLE DATA", "b", "y", (4,)),
        TocEntry(14, "TABLE DATA", "b", "x", (3,)), TocEntry(15, "TABLE DATA", "public", "Meas 2024", (6,)),
        TocEntry(16, "TABLE DATA", "p", "leaf", (8,)), TocEntry(17, "COMMENT", "a", "TABLE x", (1,)),
        TocEntry(18, "ACL", "b", "TABLE x", (3,)), TocEntry(19, "INDEX", "a", "x_idx", (1,)),
    ))
    # a.x + b.y and nothing else (pg_restore -n a -n b -t x -t y would also bring a.y and b.x)
    assert select_entries(toc, ["a.x", "b.y"]) == [1, 4, 12, 13, 17]
    # The parent brings its partitions, attached, with their data, down through sub-partitions.
    assert select_entries(toc, ['public."Meas"']) == [5, 6, 7, 8, 9, 10, 11, 15, 16]
    assert select_entries(toc, ['public."Meas 2024"']) == [6, 15]  # a partition alone is not attached
    with pytest.raises(RestoreFailed, match=r'no table public.meas \(did you mean public."Meas"\?\); it has a.x, a.y, b.x'):
        select_entries(toc, ["public.meas"])


# --- the real engine on one database full of such names ----------------------------------------

def _create(conn, schema: str, table: str, rows: int) -> None:
    s, t = sql.Identifier(schema), sql.Identifier(table)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
    conn.execute(sql.SQL("CREATE TABLE {}.{} (id int PRIMARY KEY, v text)").format(s, t))
    conn.execute(sql.SQL("INSERT INTO {}.{} SELECT g, {} FROM generate_series(1, {}) g").format(
        s, t, sql.Literal(f"{schema}|{table}"), sql.Literal(rows)))


@pytest.fixture(scope="module")
def nasty(pg_cluster, tmp_path_factory):
    """A database with every name above (each with its own row count), one full backup of it."""
    db = f"ids_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(db)
    expected = {}
    with psycopg.connect(pg_cluster.dsn(db), autocommit=True) as conn:
        for i, (schema, table) in enumerate(NASTY, start=1):
            _create(conn, schema, table, i)
            expected[qualified(schema, table)] = i
        # Two columns k of different types: a fingerprint naming both "a.b.c.k" kept only one.
        conn.execute('ALTER TABLE a."b.c" ADD COLUMN k int CHECK (k > 0), ENABLE ROW LEVEL SECURITY')
        conn.execute('ALTER TABLE "a.b".c ADD COLUMN k text CHECK (k <> \'\')')
        conn.execute('CREATE POLICY "p.q" ON a."b.c" USING (true)')
        conn.execute('CREATE TABLE public."Meas" (id int, d date) PARTITION BY RANGE (d)')
        conn.execute('CREATE SCHEMA "p.art"')
        conn.execute('CREATE TABLE public."Meas 2024" PARTITION OF public."Meas" FOR VALUES FROM (\'2024-01-01\') TO (\'2025-01-01\')')
        conn.execute('CREATE TABLE "p.art".m_2025 PARTITION OF public."Meas" FOR VALUES FROM (\'2025-01-01\') TO (\'2026-01-01\')')
        conn.execute("INSERT INTO public.\"Meas\" SELECT g, date '2024-06-30' + g FROM generate_series(1, 300) g")
        expected |= {'public."Meas 2024"': 184, '"p.art".m_2025': 116}
    tmp = tmp_path_factory.mktemp("identifiers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, base64.b64encode(os.urandom(32)).decode())
        path = tmp / "dbops.yaml"
        path.write_text(yaml.safe_dump({
            "storage": {"url": f"file://{tmp / 'store'}"}, "encryption": {"key_env": KEY_ENV},
            "defaults": {"connect_retries": 1},
            "targets": {"ids": {"dsn": pg_cluster.dsn(db)},
                        "ids_excluding": {"dsn": pg_cluster.dsn(db),
                                          "backup": {"exclude_table_data": ['public."st*r"', 'a."b.c"']}}}}))
        mp.setenv("DBOPS_CONFIG", str(path))
        cfg = load_config(path)
        ctx = FleetContext(cfg)
        full = fleet.backup_target(ctx, "ids")  # before: BackupFailed, relation "public.a.b" does not exist
        yield SimpleNamespace(db=db, dsn=pg_cluster.dsn(db), cfg=cfg, ctx=ctx, full=full, expected=expected)
    pg_cluster.drop_database(db, force=True)


def _schemas(dsn: str, *names: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in names:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(n)))


def test_full_backup_counts_checks_restores_and_verifies_every_name(nasty, pg_cluster, fresh_db):
    assert nasty.full.table_rows == nasty.expected
    assert nasty.full.schema_fingerprint["columns"]['a."b.c".k'] == "integer"
    assert nasty.full.schema_fingerprint["columns"]['"a.b".c.k'] == "text"
    report = check_backup(nasty.ctx.store, nasty.full, nasty.ctx.read_keys)  # before: "no data for public.new\nline"
    assert sorted(report.tables_with_data) == sorted(nasty.expected)
    restore_backup(nasty.ctx.store, nasty.full, nasty.ctx.read_keys, pg_cluster.dsn(fresh_db))
    assert table_digests(pg_cluster.dsn(fresh_db)) == table_digests(nasty.dsn)
    verified = verify_backup(nasty.ctx, "ids", nasty.full.backup_id)
    assert verified.passed and not verified.findings, verified.summary()
    assert {t.table for t in verified.tables} == set(nasty.expected)


def test_check_matches_data_entries_by_exact_name(nasty):
    # A tables backup of public."sales order" only, whose manifest also claims public.sales: in
    # `pg_restore --list` "public sales order postgres" starts with "public sales ", which passed.
    picked = fleet.backup_target(nasty.ctx, "ids", kind="tables", tables=('public."sales order"',))
    tamper_manifest(nasty.cfg, picked, lambda m: m["table_rows"].update({"public.sales": 27}))
    manifest = find_backup(nasty.ctx.store, nasty.ctx.read_keys, picked.backup_id).manifest
    with pytest.raises(IntegrityError, match="has no data for public.sales although"):
        check_backup(nasty.ctx.store, manifest, nasty.ctx.read_keys)


def _archive_tables(nasty, manifest) -> set[str]:
    toc, _ = read_toc(open_dump_stream(nasty.ctx.store, manifest, nasty.ctx.read_keys))
    return {qualified(e.namespace, e.tag) for e in toc.entries if e.desc == "TABLE"}


def test_tables_backup_and_excluded_data_match_names_literally(nasty):
    chosen = ('a."b.c"', '"we""ird.sch"."ta.ble"', 'public."st*r"', 'public."q?m"', 'public."new\nline"', '"sch\nnl".t')
    picked = fleet.backup_target(nasty.ctx, "ids", kind="tables", tables=chosen)
    assert set(picked.table_rows) == set(chosen) == _archive_tables(nasty, picked)  # not "a.b".c, stxr, qam
    assert picked.selected_tables == sorted(chosen)
    verified = verify_backup(nasty.ctx, "ids", picked.backup_id)
    assert verified.passed and not verified.findings, verified.summary()

    with pytest.raises(BackupFailed, match=r'not found in the database: public."UPPER" \(did you mean public."Upper", public.upper\?\)'):
        fleet.backup_target(nasty.ctx, "ids", kind="tables", tables=("public.UPPER", 'public."Upper"'))
    excluded = fleet.backup_target(nasty.ctx, "ids_excluding")  # exclude_table_data: public."st*r", a."b.c"
    assert set(nasty.expected) - set(excluded.table_rows) == {'public."st*r"', 'a."b.c"'}
    check_backup(nasty.ctx.store, excluded, nasty.ctx.read_keys)  # stxr, "a.b".c still have their data


def test_table_restore_is_exact_across_schemas_and_brings_partitions(nasty, pg_cluster, fresh_db):
    dest = pg_cluster.dsn(fresh_db)
    _schemas(dest, "a", "a.b", "p.art", 'we"ird.sch')
    # Several schemas at once (refused before), a partitioned table, names pg_restore -t can't tell apart.
    restore_backup(nasty.ctx.store, nasty.full, nasty.ctx.read_keys, dest,
                   tables=['a."b.c"', '"we""ird.sch"."ta.ble"', 'public."Meas"', 'public."new\nline"'], jobs=2)
    source = table_digests(nasty.dsn)
    wanted = {'a."b.c"', '"we""ird.sch"."ta.ble"', 'public."Meas 2024"', '"p.art".m_2025', 'public."new\nline"'}
    assert table_digests(dest) == {t: source[t] for t in wanted}
    with psycopg.connect(dest) as conn:
        assert conn.execute('SELECT count(*) FROM public."Meas"').fetchone()[0] == 300  # attached


def test_table_restore_of_a_missing_table_fails_naming_the_tables(nasty, pg_cluster, fresh_db):
    dest = pg_cluster.dsn(fresh_db)
    for wrong in ("public.meas", "public.a.b", "public.nope"):  # wrong case, public."a.b" unquoted, absent
        with pytest.raises(RestoreFailed, match=r'(?s)the backup has no table .*; it has .*public."Upper"'):
            restore_backup(nasty.ctx.store, nasty.full, nasty.ctx.read_keys, dest, tables=[wrong])
    with pytest.raises(RestoreFailed, match=r'did you mean public."Meas"\?'):
        restore_backup(nasty.ctx.store, nasty.full, nasty.ctx.read_keys, dest, tables=["public.meas"])
    assert table_digests(dest) == {}  # before: "restored" 0 B and exited 0


def test_manifest_written_before_quoting_still_verifies(nasty):
    """Older manifests joined raw names with dots (keys and fingerprint): their backups must keep
    verifying, so the restored side is described the same way for them."""
    legacy = {t: ".".join(split_table(t)) for t in nasty.expected if "." not in "".join(split_table(t))}
    with psycopg.connect(nasty.dsn) as conn:
        old_fp = schema_fingerprint(conn, quoted=False)
    old = SimpleNamespace(table_rows={legacy[t]: nasty.expected[t] for t in legacy}, schema_fingerprint=old_fp,
                          table_checksums={legacy[t]: s for t, s in nasty.full.table_checksums.items() if t in legacy})
    assert "public.Upper" in old.table_rows and 'public.dq"uote' in old.table_checksums and "names" not in old_fp
    rows, extra, checksums, fingerprint = _restored_state(nasty.dsn, old)
    results, findings = compare_tables(old, rows, checksums)
    assert findings == [] and {r.table for r in results} == set(legacy)
    assert all(r.checksum == "match" for r in results)
    assert compare_fingerprints(old_fp, fingerprint) == []
    assert "public.Upper.id" in fingerprint["columns"]
