"""The schema the rules are checked against: the destination's catalog (with the exact foreign
key definitions, to re-add them), or the backup's own record of it (manifest.schema_fingerprint)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import psycopg

from dbops_pipelines.backup.snapshot import QUOTED_NAMES, qualified
from dbops_pipelines.gdpr.catalog import USER_SCHEMAS

@dataclass(frozen=True)
class _Column:
    type: str                        # format_type
    not_null: bool
    generated: bool = False          # GENERATED ... STORED or GENERATED ALWAYS AS IDENTITY


@dataclass(frozen=True)
class ForeignKey:
    name: str                        # raw constraint name
    child: str
    child_columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]
    match_full: bool
    definition: str = ""             # pg_get_constraintdef (destination only)


@dataclass
class Shape:
    tables: dict[str, dict[str, _Column]]
    foreign_keys: list[ForeignKey]
    oids: dict[str, int] = field(default_factory=dict)


def shape_from_database(conn: psycopg.Connection) -> Shape:
    tables: dict[str, dict[str, _Column]] = {}
    oids: dict[str, int] = {}
    for oid, schema, table in conn.execute(
            f"SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p') AND {USER_SCHEMAS}").fetchall():
        tables[qualified(schema, table)] = {}
        oids[qualified(schema, table)] = oid
    for schema, table, column, kind, not_null, generated in conn.execute(f"""
            SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   a.attgenerated <> '' OR a.attidentity = 'a'
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND {USER_SCHEMAS}""").fetchall():
        tables[qualified(schema, table)][column] = _Column(kind, not_null, generated)
    fks = [ForeignKey(name, qualified(cs, ct), tuple(ccols), qualified(ps, pt), tuple(pcols), match == "f", definition)
           for name, cs, ct, ps, pt, match, ccols, pcols, definition in conn.execute(f"""
            SELECT con.conname, n.nspname, c.relname, pn.nspname, p.relname, con.confmatchtype,
                   ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
                           JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.ord),
                   ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
                           JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.ord),
                   pg_get_constraintdef(con.oid)
              FROM pg_constraint con
              JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
             WHERE con.contype = 'f' AND con.conparentid = 0 AND {USER_SCHEMAS}
             ORDER BY n.nspname, c.relname, con.conname""").fetchall()]
    return Shape(tables, fks, oids)


_PART = r'"(?:[^"]|"")+"|[a-z_][a-z0-9_]*'          # a name part as snapshot.qualified writes it
_MEMBER_KEY = re.compile(rf"({_PART})\.({_PART})\.({_PART})")
_TOKEN = re.compile(r'\s*(?:("(?:[^"]|"")*")|([A-Za-z_][A-Za-z0-9_$]*)|([(),.]))')


def _unquote(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def _split_description(desc: str) -> tuple[str, bool]:
    """A fingerprint column description "<type>[ not null][ default <expr>]" -> (type, not null);
    quoted type names may hold anything, so the split is found outside double quotes."""
    quoted = False
    for i, ch in enumerate(desc):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == " " and desc.startswith((" not null", " default "), i):
            return desc[:i], desc.startswith(" not null", i)
    return desc, False


def _parse_foreign_key(definition: str) -> tuple[tuple[str, ...], tuple[str, str], tuple[str, ...], bool] | None:
    """FOREIGN KEY (a, "B") REFERENCES [schema.]table(x, "Y") ... -> its parts, or None. Names are
    single tokens (quoted ones may hold parentheses and commas); an unqualified table is public's
    (the fingerprint was read with the default search_path)."""
    toks: list[tuple[str, str]] = []
    pos, closed = 0, 0
    while closed < 2 and (m := _TOKEN.match(definition, pos)) and m.end() > pos:
        pos = m.end()
        toks.append(("name", _unquote(m[1])) if m[1] else ("word", m[2]) if m[2] else ("punct", m[3]))
        closed += toks[-1] == ("punct", ")")
    i = 0

    def expect(tok: tuple[str, str]) -> None:
        nonlocal i
        if toks[i] != tok:
            raise ValueError(tok)
        i += 1

    def name() -> str:
        nonlocal i
        kind, text = toks[i]
        if kind == "punct":
            raise ValueError(text)
        i += 1
        return text

    def names() -> tuple[str, ...]:
        nonlocal i
        out = [name()]
        while toks[i] == ("punct", ","):
            i += 1
            out.append(name())
        return tuple(out)

    try:
        expect(("word", "FOREIGN"))
        expect(("word", "KEY"))
        expect(("punct", "("))
        child = names()
        expect(("punct", ")"))
        expect(("word", "REFERENCES"))
        first = name()
        if toks[i] == ("punct", "."):
            i += 1
            parent = (first, name())
        else:
            parent = ("public", first)
        expect(("punct", "("))
        parent_columns = names()
        expect(("punct", ")"))
    except (ValueError, IndexError):
        return None
    if len(child) != len(parent_columns):
        return None
    return child, parent, parent_columns, "MATCH FULL" in definition[pos:]


def shape_from_fingerprint(fingerprint: dict | None) -> Shape | None:
    """The schema as the backup recorded it (manifest.schema_fingerprint), or None for a record
    too old to name objects unambiguously. Foreign keys are read from their definitions."""
    if not fingerprint or fingerprint.get("names") != QUOTED_NAMES:
        return None
    tables: dict[str, dict[str, _Column]] = {name: {} for name, desc in fingerprint.get("tables", {}).items()
                                              if desc.split(" ")[0] in ("r", "p")}
    for key, desc in fingerprint.get("columns", {}).items():
        m = _MEMBER_KEY.fullmatch(key)
        if m and f"{m[1]}.{m[2]}" in tables:
            kind, not_null = _split_description(desc)
            tables[f"{m[1]}.{m[2]}"][_unquote(m[3])] = _Column(kind, not_null)
    fks = []
    for key, definition in fingerprint.get("constraints", {}).items():
        m = _MEMBER_KEY.fullmatch(key)
        parsed = _parse_foreign_key(definition) if m and definition.startswith("FOREIGN KEY") else None
        if parsed:
            child_columns, parent, parent_columns, match_full = parsed
            fks.append(ForeignKey(_unquote(m[3]), f"{m[1]}.{m[2]}", child_columns, qualified(*parent),
                                  parent_columns, match_full))
    return Shape(tables, fks)
