"""Test helper: compare two databases object by object and row by row, independently of the
product.

Nothing here imports dbops_pipelines' own schema fingerprint or verification comparison
(backup.snapshot, verification.compare): a bug there must not hide itself by being used to judge
its own output. Everything is read from the system catalogs with psycopg and PostgreSQL's own
deparsers (format_type, pg_get_expr, pg_get_indexdef, pg_get_constraintdef, pg_get_viewdef,
pg_get_triggerdef, pg_get_functiondef), and table contents are compared by an order-independent
digest computed in SQL. Superuser connections are assumed (row-level security does not hide rows
from them).
"""

from __future__ import annotations

import json
import re

import psycopg
from psycopg import sql

# User objects: not the system schemas, not what an extension owns (the extension is compared as one).
_USER_NS = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
            "AND n.nspname NOT LIKE 'pg\\_temp\\_%'")


def _not_extension_member(catalog: str, oid: str) -> str:
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass "
            f"AND d.objid = {oid} AND d.deptype = 'e')")


_PLAIN = re.compile(r"[a-z_][a-z0-9_]*")


def _part(name: str) -> str:
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def name_of(*parts: str | None) -> str:
    """schema.table as the manifests key tables: a part stays bare when plain lower-case, else it is
    double-quoted with its quotes doubled (so 'a."b.c"' and '"a.b".c' differ)."""
    return ".".join(_part(p) for p in parts if p is not None)


# Each query returns (schema, relation, member, description) rows: names, never OIDs, so the same
# objects restored elsewhere describe the same.
CATALOG_QUERIES = {
    "relations": f"""
        SELECT n.nspname, c.relname, NULL,
               c.relkind::text || ' persistence=' || c.relpersistence::text
               || ' rls=' || c.relrowsecurity::text || ' force_rls=' || c.relforcerowsecurity::text
               || ' inherits=' || coalesce((SELECT string_agg(i.inhparent::regclass::text, ',')
                                               FROM pg_inherits i WHERE i.inhrelid = c.oid), '-')
               || ' bound=' || coalesce(pg_get_expr(c.relpartbound, c.oid), '-')
               || ' partitioned_by=' || coalesce(pg_get_partkeydef(c.oid), '-')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_NS} AND {_not_extension_member('pg_class', 'c.oid')}""",
    "columns": f"""
        SELECT n.nspname, c.relname, a.attname,
               a.attnum::text || ' ' || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
               || CASE a.attidentity WHEN 'a' THEN ' identity always' WHEN 'd' THEN ' identity by default' ELSE '' END
               || CASE a.attgenerated WHEN 's' THEN ' generated stored' ELSE '' END
               || coalesce(' collate ' || co.collname, '')
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
             AND co.oid <> (SELECT typcollation FROM pg_type WHERE oid = a.atttypid)
        WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND {_USER_NS} AND {_not_extension_member('pg_class', 'c.oid')}""",
    "sequences": f"""
        SELECT s.schemaname, s.sequencename, NULL,
               s.data_type::text || ' start ' || s.start_value || ' increment ' || s.increment_by
               || ' min ' || s.min_value || ' max ' || s.max_value || ' cycle ' || s.cycle::text
        FROM pg_sequences s JOIN pg_namespace n ON n.nspname = s.schemaname
        WHERE {_USER_NS}""",
    # Data, not schema: a schema-only dump leaves every sequence "never called".
    "sequence_values": f"""
        SELECT s.schemaname, s.sequencename, NULL, coalesce(s.last_value::text, 'never called')
        FROM pg_sequences s JOIN pg_namespace n ON n.nspname = s.schemaname
        WHERE {_USER_NS}""",
    "indexes": f"""
        SELECT n.nspname, c.relname, NULL,
               pg_get_indexdef(c.oid) || CASE WHEN x.indisvalid THEN '' ELSE ' INVALID' END
        FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NS} AND {_not_extension_member('pg_class', 'c.oid')}""",
    "constraints": f"""
        SELECT n.nspname, coalesce(r.relname, t.typname), con.conname,
               con.contype::text || ' ' || pg_get_constraintdef(con.oid)
               || CASE WHEN con.convalidated THEN '' ELSE ' (not validated)' END
        FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
        LEFT JOIN pg_class r ON r.oid = con.conrelid LEFT JOIN pg_type t ON t.oid = con.contypid
        WHERE {_USER_NS} AND {_not_extension_member('pg_constraint', 'con.oid')}""",
    "policies": f"""
        SELECT n.nspname, c.relname, p.polname,
               CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END || ' for ' || p.polcmd::text
               || ' to ' || coalesce((SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ',' ORDER BY 1)
                                      FROM unnest(p.polroles) r), '')
               || ' using (' || coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ')'
               || ' check (' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') || ')'
        FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_NS}""",
    "views": f"""
        SELECT n.nspname, c.relname, NULL, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_USER_NS} AND {_not_extension_member('pg_class', 'c.oid')}""",
    "triggers": f"""
        SELECT n.nspname, c.relname, tg.tgname, pg_get_triggerdef(tg.oid) || ' enabled=' || tg.tgenabled::text
        FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT tg.tgisinternal AND {_USER_NS}""",
    "functions": f"""
        SELECT n.nspname, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', NULL,
               CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) ELSE p.prokind::text END
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {_USER_NS} AND {_not_extension_member('pg_proc', 'p.oid')}""",
    "comments": f"""
        SELECT n.nspname, c.relname, CASE WHEN d.objsubid = 0 THEN NULL ELSE a.attname END, d.description
        FROM pg_description d JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND c.oid = d.objoid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid
        WHERE {_USER_NS}""",
    "extensions": """
        SELECT NULL, e.extname, NULL, e.extversion || ' in ' || n.nspname
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace""",
}

# Ordinary tables and partitions hold the rows; a partitioned parent's rows are its partitions'.
_TABLES_WITH_ROWS = f"""
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND {_USER_NS} AND {_not_extension_member('pg_class', 'c.oid')}
    ORDER BY 1, 2"""


def _rows(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    out = {}
    for schema, table in conn.execute(_TABLES_WITH_ROWS).fetchall():
        # md5 of each row's text form, sorted, concatenated, md5 again: independent of the
        # physical order; ROW(r.*) so that a column named like the alias cannot stand in for it.
        query = sql.SQL("SELECT count(*), coalesce(md5(string_agg(md5(ROW(r.*)::text), '' ORDER BY md5(ROW(r.*)::text))), '') "
                        "FROM {} AS r").format(sql.Identifier(schema, table))
        count, digest = conn.execute(query).fetchone()
        out[name_of(schema, table)] = (count, digest)
    return out


def describe(dsn: str) -> dict[str, dict[str, object]]:
    """{section: {object name: description}}: every catalog section above, plus "rows":
    {table: (row count, content digest)}. Read in one REPEATABLE READ snapshot."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SET search_path = ''")  # deparsed expressions name every schema
        out: dict[str, dict[str, object]] = {}
        for section, query in CATALOG_QUERIES.items():
            rows = conn.execute(query).fetchall()
            described = {name_of(s, r, m): d for s, r, m, d in rows}
            if len(described) != len(rows):
                raise AssertionError(f"dbcompare: two {section} share a name in database {conn.info.dbname}; "
                                     "this helper cannot compare them")
            out[section] = described
        out["rows"] = _rows(conn)
    return out


_MISSING = object()


def _compared(expected: dict, actual: dict, sections: tuple[str, ...] | None) -> list[tuple[str, str, object, object]]:
    """(section, name, expected, actual) of every object missing, extra (_MISSING on the side
    without it) or described differently."""
    out = []
    for section in sections or sorted(set(expected) | set(actual)):
        want, got = expected.get(section, {}), actual.get(section, {})
        for name in sorted(set(want) | set(got)):
            if want.get(name, _MISSING) != got.get(name, _MISSING):
                out.append((section, name, want.get(name, _MISSING), got.get(name, _MISSING)))
    return out


def changed_objects(expected: dict, actual: dict, sections: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """(section, name) of every difference, sorted: what a test expects to have changed."""
    return [(section, name) for section, name, _, _ in _compared(expected, actual, sections)]


def differences(expected: dict, actual: dict, sections: tuple[str, ...] | None = None) -> list[str]:
    """One readable line per difference."""
    lines = []
    for section, name, want, got in _compared(expected, actual, sections):
        if got is _MISSING:
            lines.append(f"{section}: {name} missing (expected {want!r})")
        elif want is _MISSING:
            lines.append(f"{section}: {name} unexpected ({got!r})")
        else:
            lines.append(f"{section}: {name} differs: expected {want!r}, got {got!r}")
    return lines


SCHEMA_SECTIONS = tuple(s for s in CATALOG_QUERIES if s != "sequence_values")


def assert_same_database(expected_dsn: str, actual_dsn: str, sections: tuple[str, ...] | None = None) -> dict:
    """Fail with every difference listed; returns the description of the expected database."""
    expected, actual = describe(expected_dsn), describe(actual_dsn)
    diff = differences(expected, actual, sections)
    assert not diff, f"{len(diff)} difference(s) between the databases:\n" + "\n".join(diff[:50])
    assert any(expected[s] for s in sections or expected), "nothing was compared: the expected database is empty"
    return expected


def table_digests(dsn: str) -> dict[str, tuple[int, str]]:
    """(row count, order-independent content digest) for every table holding rows."""
    with psycopg.connect(dsn) as conn:
        return _rows(conn)


def tamper_manifest(cfg, manifest, change) -> None:
    """Edit a stored manifest's body and seal it again with the backup key: it simulates a genuine
    record that the dump disagrees with (a table missing, a count or a policy that differs)."""
    from dbops_pipelines.backup.manifest import BackupManifest, manifest_key, read_manifest, seal_manifest
    from dbops_pipelines.context import FleetContext

    ctx = FleetContext(cfg)
    key = manifest_key(manifest.target, manifest.backup_id)
    current = read_manifest(ctx.store.get_bytes(key), ctx.read_keys, manifest.target, manifest.backup_id)
    raw = json.loads(current.body())
    change(raw)
    edited = BackupManifest.from_body(json.dumps(raw).encode())
    ctx.store.put_bytes(key, seal_manifest(edited, ctx.write_key), overwrite=True)
