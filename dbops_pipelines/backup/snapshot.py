"""What the database looks like inside the dump's own snapshot: which tables are dumped, their
exact row counts, and a schema fingerprint restore verification compares against.

The backup opens a REPEATABLE READ transaction, exports its snapshot for ``pg_dump --snapshot``
and counts rows in that same snapshot, so counts describe exactly the data in the dump.
"""

from __future__ import annotations

import hashlib
import json
import re

import psycopg
from psycopg import sql

from dbops_pipelines.errors import BackupFailed

USER_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
  AND n.nspname NOT LIKE 'pg_temp%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

# Each query returns (schema, relation, member, detail) rows; names never depend on OIDs, so the
# same schema restored elsewhere gives the same fingerprint. fingerprint_name() joins the names.
_USER_NS = "n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'"
_NOT_EXT = "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')"
FINGERPRINT_QUERIES = {
    "tables": f"""SELECT n.nspname, c.relname, NULL, c.relkind::text ||
                  CASE WHEN c.relrowsecurity THEN ' rls' ELSE '' END ||
                  CASE WHEN c.relforcerowsecurity THEN ' forced' ELSE '' END
                  FROM pg_class c JOIN pg_namespace n ON n.oid=c.relnamespace
                  WHERE c.relkind IN ('r','p','v','m','S','f') AND {_USER_NS} AND {_NOT_EXT}""",
    "columns": f"""SELECT n.nspname, c.relname, a.attname,
                   format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END ||
                   coalesce(' default '||pg_get_expr(ad.adbin, ad.adrelid), '')
                   FROM pg_attribute a JOIN pg_class c ON c.oid=a.attrelid JOIN pg_namespace n ON n.oid=c.relnamespace
                   LEFT JOIN pg_attrdef ad ON ad.adrelid=a.attrelid AND ad.adnum=a.attnum
                   WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f')
                   AND {_USER_NS} AND {_NOT_EXT}""",
    "indexes": f"""SELECT n.nspname, c.relname, NULL, pg_get_indexdef(c.oid)
                   FROM pg_class c JOIN pg_namespace n ON n.oid=c.relnamespace
                   WHERE c.relkind IN ('i','I') AND {_USER_NS} AND {_NOT_EXT}""",
    "constraints": f"""SELECT n.nspname, c.relname, con.conname, pg_get_constraintdef(con.oid)
                   FROM pg_constraint con JOIN pg_class c ON c.oid=con.conrelid JOIN pg_namespace n ON n.oid=c.relnamespace
                   WHERE {_USER_NS} AND {_NOT_EXT}""",
    "policies": """SELECT schemaname, tablename, policyname,
                   permissive||' '||array_to_string(roles, ',')||' '||cmd||' using('||coalesce(qual,'')||') check('||coalesce(with_check,'')||')'
                   FROM pg_policies""",
    "extensions": "SELECT NULL, extname, NULL, extversion FROM pg_extension",
}
# schema_fingerprint()["names"]: its names are built with qualified(). Older fingerprints lack the
# key: they joined raw names with dots, and verification rebuilds that form to compare with them.
QUOTED_NAMES = "quoted"

_PLAIN = re.compile(r"[a-z_][a-z0-9_]*")
_PART = r'("(?:[^"]|"")+"|[^."]+)'
_KEY = re.compile(_PART + r"(?:\." + _PART + ")?")


def _ident(name: str) -> str:
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """A table's one name in manifests, reports and selections: each part double-quoted (quotes
    doubled) unless it is plain lower-case, so "public.users" stays what it always was while
    'a."b.c"' and '"a.b".c' are two different tables. split_table() is its inverse."""
    return f"{_ident(schema)}.{_ident(name)}"


def split_table(name: str) -> tuple[str, str]:
    """'public.users' -> ('public', 'users'); 'a."b.c"' -> ('a', 'b.c'); a bare name means schema
    public. Unquoted parts are taken as written (no case folding, unlike SQL). A name without
    double quotes splits at its last dot, as the keys of manifests written before quoting need."""
    if '"' in name and (m := _KEY.fullmatch(name)):
        parts = [p[1:-1].replace('""', '"') if p.startswith('"') else p for p in m.groups() if p is not None]
        return ("public", parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    schema, _, table = name.rpartition(".")
    return (schema or "public"), table


def canonical_table(name: str) -> str:
    """Any accepted spelling of a table (an older manifest's key, an operator's --table) as qualified() writes it."""
    return qualified(*split_table(name))


def fingerprint_name(schema: str | None, relation: str, member: str | None, quoted: bool = True) -> str:
    if not quoted:
        return ".".join(p for p in (schema, relation, member) if p is not None)
    name = relation if schema is None else qualified(schema, relation)  # extensions have no schema
    return name if member is None else f"{name}.{_ident(member)}"


def pg_dump_pattern(name: str) -> str:
    """A pg_dump -t/--exclude-table-data pattern matching exactly this table: inside double quotes
    pg_dump 15 takes every character literally (*, ?, ., $, backslash, newline; "" is one quote)."""
    schema, table = split_table(name)
    return '"{}"."{}"'.format(schema.replace('"', '""'), table.replace('"', '""'))


def schema_fingerprint(conn: psycopg.Connection, quoted: bool = True) -> dict:
    """Sorted descriptions of every schema object, per category, plus a sha256 over all of them.
    ``quoted=False`` names objects as fingerprints did before QUOTED_NAMES, to compare with those."""
    detail: dict[str, dict[str, str]] = {}
    for category, query in FINGERPRINT_QUERIES.items():
        rows = [(fingerprint_name(s, r, m, quoted), desc) for s, r, m, desc in conn.execute(query).fetchall()]
        detail[category] = {name: desc for name, desc in sorted(rows)}
    digest = hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, **({"names": QUOTED_NAMES} if quoted else {}), **detail}


def user_tables(conn: psycopg.Connection) -> list[str]:
    return [qualified(s, t) for s, t in conn.execute(USER_TABLES_SQL).fetchall()]


def tables_in_dump(conn: psycopg.Connection, kind: str, selected: list[str], excluded_data: list[str]) -> list[str]:
    """Tables whose rows the dump will contain, validating the operator's table names."""
    existing = user_tables(conn)
    if kind == "schema":
        return []
    wanted = [canonical_table(t) for t in selected]
    unknown = [t for t in wanted + [canonical_table(t) for t in excluded_data] if t not in existing]
    if unknown:
        raise BackupFailed(
            f"table(s) not found in the database: {', '.join(unknown)}{near_misses(unknown, existing)}",
            f"check the names in --table or the target's tables/exclude_table_data: {NAMING_HINT}",
        )
    if kind == "tables":
        if not wanted:
            raise BackupFailed("a 'tables' backup needs at least one table", "pass --table schema.table (repeatable)")
        return sorted(set(wanted))
    excluded = {canonical_table(t) for t in excluded_data}
    return [t for t in existing if t not in excluded]


NAMING_HINT = ('schema.table, case-sensitive; double-quote a part that is not plain lower-case, doubling its quotes, '
               'e.g. public."Order Items" or "a.b".c')


def near_misses(unknown: list[str], existing: list[str]) -> str:
    """' (did you mean ...?)' for names that differ from existing ones only in case or quoting."""
    def fold(name: str) -> tuple[str, ...]:
        return tuple(part.casefold() for part in split_table(name))

    hits = [e for t in unknown for e in existing if fold(e) == fold(t)]
    return f" (did you mean {', '.join(hits)}?)" if hits else ""


def check_readable(conn: psycopg.Connection, tables: list[str]) -> None:
    """Fail before pg_dump starts if the backup role cannot read a table as pg_dump will (row
    security off): a permission or RLS error later would abort the exported snapshot, and
    pg_dump would then fail with a confusing "could not import the requested snapshot"."""
    for name in tables:
        schema, table = split_table(name)
        try:
            conn.execute(sql.SQL("SELECT 1 FROM ONLY {}.{} LIMIT 0").format(sql.Identifier(schema), sql.Identifier(table)))
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.FeatureNotSupported) as exc:
            raise BackupFailed(
                f"the backup role cannot read {name}: {str(exc).strip()}",
                "make the backup role a superuser or give it BYPASSRLS and SELECT on every table",
            ) from None


def count_rows(conn: psycopg.Connection, tables: list[str]) -> dict[str, int]:
    """Exact row counts in the connection's current snapshot.

    row_security is off, as in pg_dump: if a policy would hide rows from the backup role, the
    count fails loudly instead of silently matching a dump that is missing rows.
    """
    counts: dict[str, int] = {}
    for name in tables:
        schema, table = split_table(name)
        query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        try:
            counts[name] = conn.execute(query).fetchone()[0]
        except psycopg.errors.InsufficientPrivilege as exc:
            raise BackupFailed(
                f"cannot read {name}: {exc}".strip(),
                "the backup role must be a superuser or have BYPASSRLS and SELECT on every table",
            ) from None
    return counts


def content_checksum_sql(schema: str, table: str) -> sql.Composed:
    """md5 over every row's text form in byte order (COLLATE "C": independent of the database's
    locale), so the same rows give the same checksum in any database."""
    return sql.SQL(
        "SELECT coalesce(md5(string_agg(r::text, E'\\n' ORDER BY r::text COLLATE \"C\")), '') FROM ONLY {}.{} r"
    ).format(sql.Identifier(schema), sql.Identifier(table))


def table_checksums(conn: psycopg.Connection, tables: list[str], max_bytes: int) -> dict[str, str]:
    """Content checksums of the tables no larger than ``max_bytes`` (0 disables them)."""
    if max_bytes <= 0:
        return {}
    out = {}
    for name in tables:
        schema, table = split_table(name)
        size = conn.execute("SELECT pg_relation_size((quote_ident(%s) || '.' || quote_ident(%s))::regclass)", (schema, table)).fetchone()[0]
        if size <= max_bytes:
            out[name] = conn.execute(content_checksum_sql(schema, table)).fetchone()[0]
    return out
