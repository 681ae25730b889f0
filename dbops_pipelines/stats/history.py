"""The history of stats snapshots, kept in a PostgreSQL database of its own (``metrics:`` in dbops.yaml).

Everything lives in one schema (``metrics.schema_name``, default ``dbops_metrics``). Every table but
``statement_text`` is range-partitioned by ``taken_at`` into one partition per UTC day, named
``<table>_pYYYYMMDD`` (e.g. ``sample_p20261201``); there is no default partition. Partitions for
today and the next two days are created ahead by ``ensure_schema`` and ``apply_retention``, and
``save`` creates the one for its snapshot's day if it is missing, so a clock jump never loses a
snapshot. Retention drops whole daily partitions (``DROP TABLE``, never ``DELETE``) once their
day ended more than ``metrics.retention_days`` ago. All times are ``timestamptz``, in UTC.

Tables (one row per ...):

``snapshot`` - snapshot; primary key (target, taken_at)
    target text, taken_at timestamptz (the target server's clock), server_version_num int
    (e.g. 150004), connect_seconds float8, duration_seconds float8 (the whole snapshot),
    interval_seconds float8 (since the previous snapshot the rates use; null for the first),
    doc jsonb (the whole snapshot, ``Snapshot.to_dict()``: sections, rates, samples, findings,
    errors; non-finite numbers stored as null).
``sample`` - number of a snapshot: the time series for Grafana; index (target, metric, taken_at)
    target, taken_at, metric text (e.g. ``connections``, ``xact_commit_total``; the Prometheus
    exporter prefixes ``dbops_pg_``), labels jsonb (``{}`` when none; e.g. ``{"state": "idle"}``),
    value float8, kind text (``gauge`` or ``counter``).
``statement`` - top statement of a snapshot (pg_stat_statements); index (target, queryid, taken_at)
    target, taken_at, queryid bigint, calls bigint, total_ms float8, mean_ms float8, max_ms float8,
    rows bigint, shared_blks_hit bigint, shared_blks_read bigint, temp_blks bigint (cumulative
    since the statistics were last reset), calls_per_second float8 and mean_ms_window float8
    (over the interval since the previous snapshot; null without one or across a reset).
``statement_text`` - statement, not partitioned; primary key (target, queryid)
    target, queryid bigint, query text (pg_stat_statements' normalised text), last_seen timestamptz
    (the latest snapshot that had it among its top statements; retention deletes older ones).
``finding`` - finding of a snapshot; index (target, taken_at)
    target, taken_at, code text, severity text (info|warning|critical), object text (the quoted
    SQL name; '' for the whole database), message text, recommendation text, sql text (null when
    there is no statement to run).

A ``MetricsStore`` is one connection; use it as a context manager. Connectivity failures raise
``MetricsStoreError`` (transient: the next run retries); storing a snapshot twice raises
``StatsFailed`` and keeps the first.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from dbops_pipelines.config import MetricsSettings
from dbops_pipelines.errors import DatabaseUnreachable, MetricsStoreError, StatsFailed
from dbops_pipelines.findings import Finding, by_severity
from dbops_pipelines.pgtools import connect
from dbops_pipelines.redact import redact
from dbops_pipelines.stats.model import Sample, Snapshot

log = logging.getLogger(__name__)

PARTITIONED_TABLES = ("snapshot", "sample", "statement", "finding")
DAYS_AHEAD = 2                 # partitions created beyond today
DDL_LOCK_TIMEOUT = "10s"       # a long Grafana query must not queue every insert behind our DROP/CREATE
_WRITE_HINT = ("check that the metrics database (metrics.dsn) is up and that its user may create and "
               "write tables in metrics.schema_name; snapshots are not kept until then")

_TABLES_DDL = """
CREATE TABLE IF NOT EXISTS {s}.snapshot (
    target text NOT NULL, taken_at timestamptz NOT NULL, server_version_num int NOT NULL,
    connect_seconds float8 NOT NULL, duration_seconds float8 NOT NULL, interval_seconds float8,
    doc jsonb NOT NULL, PRIMARY KEY (target, taken_at)
) PARTITION BY RANGE (taken_at);
CREATE TABLE IF NOT EXISTS {s}.sample (
    target text NOT NULL, taken_at timestamptz NOT NULL, metric text NOT NULL,
    labels jsonb NOT NULL DEFAULT '{{}}', value float8 NOT NULL, kind text NOT NULL
) PARTITION BY RANGE (taken_at);
CREATE INDEX IF NOT EXISTS sample_target_metric_taken_at_idx ON {s}.sample (target, metric, taken_at);
CREATE TABLE IF NOT EXISTS {s}.statement (
    target text NOT NULL, taken_at timestamptz NOT NULL, queryid bigint NOT NULL,
    userid bigint, calls bigint, total_ms float8, mean_ms float8, max_ms float8, rows bigint,
    shared_blks_hit bigint, shared_blks_read bigint, temp_blks bigint,
    calls_per_second float8, mean_ms_window float8
) PARTITION BY RANGE (taken_at);
CREATE INDEX IF NOT EXISTS statement_target_queryid_taken_at_idx ON {s}.statement (target, queryid, taken_at);
CREATE INDEX IF NOT EXISTS statement_target_taken_at_idx ON {s}.statement (target, taken_at);
CREATE TABLE IF NOT EXISTS {s}.statement_text (
    target text NOT NULL, queryid bigint NOT NULL, query text NOT NULL, last_seen timestamptz NOT NULL,
    PRIMARY KEY (target, queryid)
);
CREATE TABLE IF NOT EXISTS {s}.finding (
    target text NOT NULL, taken_at timestamptz NOT NULL, code text NOT NULL, severity text NOT NULL,
    object text NOT NULL, message text NOT NULL, recommendation text NOT NULL, sql text,
    section text NOT NULL DEFAULT ''
) PARTITION BY RANGE (taken_at);
CREATE INDEX IF NOT EXISTS finding_target_taken_at_idx ON {s}.finding (target, taken_at);
"""

_STATEMENT_COLUMNS = ("calls", "total_ms", "mean_ms", "max_ms", "rows", "shared_blks_hit",
                      "shared_blks_read", "temp_blks")
# Where each column's value is in a statement of the statements section (stats/sections/statements.py).
_STATEMENT_FIELDS = {"total_ms": ("total_exec_ms", "total_ms"), "mean_ms": ("mean_exec_ms", "mean_ms"),
                     "max_ms": ("max_exec_ms", "max_ms")}


def _utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got the naive {moment.isoformat()}")
    return moment.astimezone(timezone.utc)


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), timezone.utc)


def _json_safe(value: Any) -> Any:
    """What jsonb accepts: NaN/Infinity become null, NUL characters (which PostgreSQL text cannot
    hold) become U+FFFD; anything else not JSON (a stray datetime) becomes its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {str(_json_safe(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int)):
        return value
    return _json_safe(str(value))


def _text(value: Any) -> str | None:
    return None if value is None else str(value).replace("\x00", "\ufffd")


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(_json_safe(value), dumps=lambda v: json.dumps(v, allow_nan=False))


def _storable(sample: Sample) -> bool:
    return (isinstance(sample.value, (int, float)) and not isinstance(sample.value, bool)
            and math.isfinite(sample.value))


def _number(value: Any, kind: type) -> int | float | None:
    """A statement column's value, or None when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if kind is int or math.isfinite(number) else None


def _statement_rates(rates: Any) -> dict[str, dict]:
    """The window of each statement, keyed ``queryid/userid`` as the statements section keys
    them (``rates["statements"]["statements"]``, see stats/sections/statements.py)."""
    found = rates.get("statements") if isinstance(rates, dict) else None
    return found if isinstance(found, dict) else {}


def _top_statements(statements: Any) -> list[dict]:
    """``sections["statements"]["top"]``: the statement dicts that carry a queryid."""
    top = statements.get("top", []) if isinstance(statements, dict) else []
    return [item for item in top if isinstance(item, dict) and _number(item.get("queryid"), int) is not None] \
        if isinstance(top, list) else []


def _statement_value(item: dict, column: str):
    for key in _STATEMENT_FIELDS.get(column, (column,)):
        if item.get(key) is not None:
            return _number(item[key], float if column.endswith("_ms") else int)
    return None


class MetricsStore:
    """The stats history: one connection to the metrics database."""

    def __init__(self, conn: psycopg.Connection, settings: MetricsSettings):
        self.conn = conn
        self.settings = settings
        self.schema = sql.Identifier(settings.schema_name)

    @classmethod
    def open(cls, settings: MetricsSettings, retries: int = 1) -> MetricsStore:
        try:
            conn = connect(settings.dsn, "the metrics database", retries=retries, error=MetricsStoreError,
                           application_name="dbops_metrics", autocommit=True)
        except (DatabaseUnreachable, MetricsStoreError) as exc:   # down, or the login refused
            raise MetricsStoreError(f"the stats history cannot be written or read: {exc.message}", exc.hint) from None
        store = cls(conn, settings)
        try:
            # UTC whatever the server's or the role's default, so every timestamp read back is UTC
            store._run(lambda: conn.execute("SET TimeZone = 'UTC'"), "prepare the session")
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> MetricsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    def _run(self, step, doing: str):
        """``step()``, with psycopg's failures turned into MetricsStoreError (passwords redacted)."""
        try:
            return step()
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MetricsStoreError(f"cannot {doing} in the metrics database: {redact(first)}", _WRITE_HINT) from None

    def _rows(self, query: sql.Composable, params: tuple | list = ()) -> list[tuple]:
        """A read; a history not created yet reads as empty."""
        def read():
            try:
                with self.conn.transaction():
                    return self.conn.execute(query, params).fetchall()
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                return []
        return self._run(read, "read the stats history")

    def _t(self, table: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(self.schema, sql.Identifier(table))

    def _lock(self) -> None:
        """Serialise DDL on this schema across processes (two runs creating a partition at once)."""
        self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                          (f"dbops_metrics schema {self.settings.schema_name}",))
        self.conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(DDL_LOCK_TIMEOUT)))

    def _existing(self, names: list[str]) -> set[str]:
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = ANY(%s)", (self.settings.schema_name, names)).fetchall()
        return {r[0] for r in rows}

    def _create_partitions(self, days: list[date]) -> None:
        """Inside a transaction holding the lock: what is missing of the tables and of the
        partitions of ``days``. DDL only for what is missing: CREATE SCHEMA IF NOT EXISTS needs the
        database's CREATE right even when the schema exists, and CREATE INDEX IF NOT EXISTS locks
        every partition, so running them every tick would need more rights and queue behind readers."""
        if len(self._existing([*PARTITIONED_TABLES, "statement_text"])) < len(PARTITIONED_TABLES) + 1:
            (has_schema,) = self.conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                                              (self.settings.schema_name,)).fetchone()
            if not has_schema:
                self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(self.schema))
            self.conn.execute(sql.SQL(_TABLES_DDL).format(s=self.schema))
        wanted = {partition_name(t, day): (t, day) for day in days for t in PARTITIONED_TABLES}
        present = self._existing(list(wanted))
        for name, (table, day) in wanted.items():
            if name not in present:
                self.conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    self._t(name), self._t(table),
                    sql.Literal(_day_start(day)), sql.Literal(_day_start(day + timedelta(days=1)))))

    def _missing_partitions(self, day: date) -> bool:
        names = [partition_name(t, day) for t in PARTITIONED_TABLES]
        return len(self._existing(names)) < len(names)

    # -- schema and retention -------------------------------------------------------------

    def ensure_schema(self, now: datetime) -> None:
        """Create the schema, tables and the partitions of today and the next days (idempotent)."""
        today = _utc(now, "now").date()

        days = [today + timedelta(days=n) for n in range(DAYS_AHEAD + 1)]
        wanted = [*PARTITIONED_TABLES, "statement_text", *(partition_name(t, d) for d in days for t in PARTITIONED_TABLES)]

        def create():
            if len(self._existing(wanted)) == len(wanted):
                return                 # the usual tick: everything is there, no lock, no DDL
            with self.conn.transaction():
                self._lock()
                self._create_partitions(days)
        self._run(create, "create the stats history tables")

    def apply_retention(self, now: datetime) -> list[str]:
        """Drop the daily partitions whose day ended ``retention_days`` or more before ``now``,
        forget statement texts not seen since then, create partitions ahead. Returns the dropped
        tables (schema-qualified)."""
        now = _utc(now, "now")
        cutoff = now - timedelta(days=self.settings.retention_days)

        def prune() -> list[str]:
            dropped: list[str] = []
            expired = self._expired_partitions(cutoff)
            if not expired:
                return dropped     # the usual tick: nothing to drop, no lock taken
            with self.conn.transaction():
                self._lock()
                for name in self._expired_partitions(cutoff):
                    self.conn.execute(sql.SQL("DROP TABLE {}").format(self._t(name)))
                    dropped.append(f"{self.settings.schema_name}.{name}")
                # Texts still referenced by a kept partition stay: the oldest kept day starts at
                # the cutoff's day (a partition is dropped only once its whole day is past it).
                self.conn.execute(sql.SQL("DELETE FROM {} WHERE last_seen < %s").format(self._t("statement_text")),
                                  (_day_start(cutoff.date()),))
            return dropped
        self.ensure_schema(now)    # the partitions ahead, whatever the retention finds
        dropped = self._run(prune, "apply the retention of the stats history")
        if dropped:
            log.info("stats history retention dropped %d partitions: %s", len(dropped), ", ".join(dropped))
        return dropped

    def _expired_partitions(self, cutoff: datetime) -> list[str]:
        """Our daily partitions (by name) whose upper bound is at or before ``cutoff``; tables
        attached by hand under other names are left alone."""
        rows = self.conn.execute(
            "SELECT c.relname, p.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
            "WHERE n.nspname = %s AND p.relname = ANY(%s) ORDER BY c.relname",
            (self.settings.schema_name, list(PARTITIONED_TABLES))).fetchall()
        expired = []
        for child, parent in rows:
            suffix = child.removeprefix(f"{parent}_p")
            try:
                day = datetime.strptime(suffix, "%Y%m%d").date()
            except ValueError:
                continue
            if child == partition_name(parent, day) and _day_start(day + timedelta(days=1)) <= cutoff:
                expired.append(child)
        return expired

    def bytes_used(self, target: str | None = None) -> int:
        """Disk used by the history: all tables with indexes and TOAST; for one ``target``, the
        size of its rows only (pg_column_size: data without indexes or page overhead)."""
        if target is None:
            rows = self._rows(sql.SQL(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'"),
                (self.settings.schema_name,))
            return int(rows[0][0]) if rows else 0
        parts = sql.SQL(" + ").join(
            sql.SQL("(SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {} t WHERE t.target = %s)").format(self._t(table))
            for table in (*PARTITIONED_TABLES, "statement_text"))
        rows = self._rows(sql.SQL("SELECT ({})::bigint").format(parts), [target] * (len(PARTITIONED_TABLES) + 1))
        return int(rows[0][0]) if rows else 0

    # -- writing --------------------------------------------------------------------------

    def save(self, snap: Snapshot) -> None:
        """Store one snapshot, all its rows in one transaction. Storing the same (target,
        taken_at) twice raises StatsFailed and keeps the first."""
        taken_at = _utc(snap.taken_at, "the snapshot's taken_at")
        day = taken_at.date()

        def make_room():
            if self._missing_partitions(day):
                with self.conn.transaction():
                    self._lock()
                    self._create_partitions([day])
        self._run(make_room, f"create the partition for {day.isoformat()}")
        samples = [s for s in snap.samples if _storable(s)]
        if len(samples) < len(snap.samples):
            log.warning("snapshot of %s at %s: %d samples without a finite value were not stored",
                        snap.target, taken_at.isoformat(), len(snap.samples) - len(samples))
        doc = _stored_doc(snap, taken_at, samples)
        self._run(lambda: self._write(snap, taken_at, doc, samples), "save the snapshot")

    def _write(self, snap: Snapshot, taken_at: datetime, doc: dict, samples: list[Sample]) -> None:
        target = _text(snap.target)
        with self.conn.transaction():
            try:
                with self.conn.transaction():   # a savepoint, so the duplicate can be told apart
                    self.conn.execute(sql.SQL(
                        "INSERT INTO {} (target, taken_at, server_version_num, connect_seconds, duration_seconds, "
                        "interval_seconds, doc) VALUES (%s, %s, %s, %s, %s, %s, %s)").format(self._t("snapshot")),
                        (target, taken_at, snap.server_version_num, snap.connect_seconds, snap.duration_seconds,
                         snap.interval_seconds, _jsonb(doc)))
            except psycopg.errors.UniqueViolation:
                raise StatsFailed(
                    f"a snapshot of target {snap.target!r} taken at {taken_at.isoformat()} is already stored; "
                    "it was kept and this one was not written",
                    "snapshots are never overwritten: take a new snapshot instead") from None
            with self.conn.cursor() as cur:
                cur.executemany(sql.SQL("INSERT INTO {} (target, taken_at, metric, labels, value, kind) "
                                        "VALUES (%s, %s, %s, %s, %s, %s)").format(self._t("sample")),
                                [(target, taken_at, _text(s.name), _jsonb(dict(s.labels)), float(s.value), s.kind)
                                 for s in samples])
                self._write_statements(cur, snap, target, taken_at)
                cur.executemany(sql.SQL(
                    "INSERT INTO {} (target, taken_at, code, severity, object, message, recommendation, sql, section) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)").format(self._t("finding")),
                    [(target, taken_at, _text(f.code), f.severity, _text(f.object) or "", _text(f.message) or "",
                      _text(f.recommendation) or "", _text(f.sql), _text(f.section) or "") for f in snap.findings])

    def _write_statements(self, cur: psycopg.Cursor, snap: Snapshot, target: str, taken_at: datetime) -> None:
        window = _statement_rates(snap.rates.get("statements", {}))
        rows, texts = [], {}
        for item in _top_statements(snap.sections.get("statements", {})):
            queryid, userid = int(item["queryid"]), _number(item.get("userid"), int)
            rates = window.get(f"{queryid}/{userid}", {})
            values = [_statement_value(item, c) for c in _STATEMENT_COLUMNS]
            rows.append((target, taken_at, queryid, userid, *values, _number(rates.get("calls_per_second"), float),
                         _number(rates.get("mean_exec_ms"), float)))
            if item.get("query") is not None:
                texts.setdefault(queryid, _text(item["query"]))
        cur.executemany(sql.SQL("INSERT INTO {} (target, taken_at, queryid, userid, {}, calls_per_second, mean_ms_window) "
                                "VALUES (%s, %s, %s, %s, {}, %s, %s)").format(
            self._t("statement"), sql.SQL(", ").join(map(sql.Identifier, _STATEMENT_COLUMNS)),
            sql.SQL(", ").join(sql.Placeholder() * len(_STATEMENT_COLUMNS))), rows)
        # sorted: two savers upserting the same texts take the row locks in the same order
        cur.executemany(sql.SQL(
            "INSERT INTO {t} AS old (target, queryid, query, last_seen) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (target, queryid) DO UPDATE SET query = EXCLUDED.query, "
            "last_seen = greatest(old.last_seen, EXCLUDED.last_seen)").format(t=self._t("statement_text")),
            [(target, queryid, text, taken_at) for queryid, text in sorted(texts.items())])

    # -- reading --------------------------------------------------------------------------

    def _snapshot(self, where: str, params: tuple, order: str = "DESC") -> Snapshot | None:
        rows = self._rows(sql.SQL("SELECT taken_at, doc FROM {} WHERE target = %s AND " + where +
                                  " ORDER BY taken_at " + order + " LIMIT 1").format(self._t("snapshot")), params)
        return self._complete([_from_row(*rows[0])])[0] if rows else None

    def _complete(self, snaps: list[Snapshot]) -> list[Snapshot]:
        """Put back what the stored document leaves to the other tables (``_stored_doc``): the
        samples, the findings, and the statements' query texts. Three queries, however many snapshots."""
        if not snaps:
            return snaps
        keys = ([s.target for s in snaps], [s.taken_at for s in snaps])
        found = self._findings(*keys)
        wanted = {(s.target, int(item["queryid"])) for s in snaps for item in _top_statements(s.sections.get("statements"))
                  if "query" not in item}
        rows = self._rows(sql.SQL(
            "SELECT x.target, x.queryid, x.query FROM unnest(%s::text[], %s::bigint[]) AS k(target, queryid) "
            "JOIN {} x ON x.target = k.target AND x.queryid = k.queryid").format(self._t("statement_text")),
            ([t for t, _ in wanted], [q for _, q in wanted])) if wanted else []
        texts = {(t, q): text for t, q, text in rows}
        samples: dict[tuple, list[Sample]] = {}
        for target, taken_at, metric, labels, value, kind in self._rows(sql.SQL(
                "SELECT s.target, s.taken_at, metric, labels, value, kind "
                "FROM unnest(%s::text[], %s::timestamptz[]) AS k(target, taken_at) "
                "JOIN {} s ON s.target = k.target AND s.taken_at = k.taken_at").format(self._t("sample")), keys):
            samples.setdefault((target, taken_at), []).append((metric, labels, value, kind))
        for snap in snaps:
            if not snap.findings:
                snap.findings = found.get((snap.target, snap.taken_at), [])
            if not snap.samples:
                help_of = snap.sample_help
                snap.samples = [Sample(m, float(v), tuple(sorted((labels or {}).items())), kind, help_of.get(m, ""))
                                for m, labels, v, kind in samples.get((snap.target, snap.taken_at), [])]
            for item in _top_statements(snap.sections.get("statements")):
                item.setdefault("query", texts.get((snap.target, int(item["queryid"])), ""))
        return snaps

    def latest(self, target: str) -> Snapshot | None:
        return self._snapshot("true", (target,))

    def previous(self, target: str, before: datetime) -> Snapshot | None:
        """The latest snapshot taken strictly before ``before``."""
        return self._snapshot("taken_at < %s", (target, _utc(before, "before")))

    def snapshot_at_or_before(self, target: str, t: datetime) -> Snapshot | None:
        return self._snapshot("taken_at <= %s", (target, _utc(t, "t")))

    def snapshot_at_or_after(self, target: str, t: datetime) -> Snapshot | None:
        return self._snapshot("taken_at >= %s", (target, _utc(t, "t")), order="ASC")

    def latest_all(self, targets: list[str]) -> dict[str, Snapshot]:
        """The latest snapshot of each of ``targets`` that has one, in one query. A LATERAL
        LIMIT 1 per target rather than DISTINCT ON: it reads one row per target through the
        primary key of each partition, where DISTINCT ON would sort all the days kept."""
        rows = self._rows(sql.SQL("SELECT s.taken_at, s.doc FROM unnest(%s::text[]) AS t(target) CROSS JOIN LATERAL "
                                  "(SELECT taken_at, doc FROM {} WHERE target = t.target ORDER BY taken_at DESC LIMIT 1) s")
                          .format(self._t("snapshot")), (list(targets),))
        return {snap.target: snap for snap in self._complete([_from_row(*row) for row in rows])}

    def last_taken_at(self, target: str) -> datetime | None:
        rows = self._rows(sql.SQL("SELECT max(taken_at) FROM {} WHERE target = %s").format(self._t("snapshot")), (target,))
        return rows[0][0] if rows else None

    def snapshots_between(self, target: str, start: datetime, end: datetime, limit: int = 10_000) -> list[datetime]:
        """When the snapshots of ``target`` with start <= taken_at <= end were taken, oldest first."""
        rows = self._rows(sql.SQL("SELECT taken_at FROM {} WHERE target = %s AND taken_at BETWEEN %s AND %s "
                                  "ORDER BY taken_at LIMIT %s").format(self._t("snapshot")),
                          (target, _utc(start, "start"), _utc(end, "end"), limit))
        return [r[0] for r in rows]

    def series(self, target: str, metric: str, since: datetime, until: datetime | None = None,
               labels: dict | None = None) -> list[tuple[datetime, float]]:
        """One time series, oldest first: the samples of ``metric`` whose labels are exactly
        ``labels`` (None or {}: the unlabelled series), since <= taken_at <= until."""
        end = sql.SQL("AND taken_at <= %s ") if until else sql.SQL("")
        rows = self._rows(sql.SQL(
            "SELECT taken_at, value FROM {} WHERE target = %s AND metric = %s AND labels = %s AND taken_at >= %s {}"
            "ORDER BY taken_at").format(self._t("sample"), end),
            (target, metric, _jsonb({str(k): str(v) for k, v in (labels or {}).items()}), _utc(since, "since"),
             *([_utc(until, "until")] if until else [])))
        return [(taken_at, float(value)) for taken_at, value in rows]

    def labelled_series(self, target: str, metric: str, since: datetime) -> list[tuple[datetime, dict, float]]:
        """Every series of ``metric`` whatever its labels, oldest first: (taken_at, labels, value)."""
        rows = self._rows(sql.SQL("SELECT taken_at, labels, value FROM {} WHERE target = %s AND metric = %s "
                                  "AND taken_at >= %s ORDER BY taken_at, labels::text").format(self._t("sample")),
                          (target, metric, _utc(since, "since")))
        return [(taken_at, labels or {}, float(value)) for taken_at, labels, value in rows]

    def metrics(self, target: str, since: datetime | None = None) -> list[str]:
        """The metric names of ``target`` seen since ``since`` (default: the day before its latest snapshot)."""
        start = sql.SQL("%s") if since else sql.SQL(
            "(SELECT max(taken_at) - interval '1 day' FROM {} WHERE target = %s)").format(self._t("snapshot"))
        rows = self._rows(sql.SQL("SELECT DISTINCT metric FROM {} WHERE target = %s AND taken_at >= {} ORDER BY metric")
                          .format(self._t("sample"), start), (target, _utc(since, "since") if since else target))
        return [r[0] for r in rows]

    def _findings(self, targets: list[str], times: list[datetime]) -> dict[tuple[str, datetime], list[Finding]]:
        """The findings of each (target, taken_at) snapshot, worst first, in one query."""
        found: dict[tuple[str, datetime], list[Finding]] = {}
        for target, taken_at, code, severity, obj, message, rec, fix, section in self._rows(sql.SQL(
                "SELECT f.target, f.taken_at, code, severity, object, message, recommendation, sql, section "
                "FROM unnest(%s::text[], %s::timestamptz[]) AS k(target, taken_at) "
                "JOIN {} f ON f.target = k.target AND f.taken_at = k.taken_at").format(self._t("finding")),
                (targets, times)):
            found.setdefault((target, taken_at), []).append(Finding(code, severity, target, obj, message, rec, fix, section))
        return {k: by_severity(v) for k, v in found.items()}

    def latest_findings(self, targets: list[str]) -> dict[str, tuple[datetime, list[Finding]]]:
        """When each of ``targets`` was last snapshotted, with that snapshot's findings (the alert
        sensor's per-tick read: no documents, one PK probe per target, two queries in all)."""
        latest = self._rows(sql.SQL(
            "SELECT t.target, s.taken_at FROM unnest(%s::text[]) AS t(target) CROSS JOIN LATERAL "
            "(SELECT taken_at FROM {} WHERE target = t.target ORDER BY taken_at DESC LIMIT 1) s"
        ).format(self._t("snapshot")), (list(targets),))
        found = self._findings([t for t, _ in latest], [at for _, at in latest]) if latest else {}
        return {t: (at, found.get((t, at), [])) for t, at in latest}

    def findings_at(self, target: str, taken_at: datetime) -> list[Finding]:
        return self._findings([target], [_utc(taken_at, "taken_at")]).get((target, _utc(taken_at, "taken_at")), [])

def _stored_doc(snap: Snapshot, taken_at: datetime, samples: list[Sample]) -> dict:
    """The snapshot as the ``doc`` column keeps it: without the samples (the ``sample`` table has
    them, the doc their help texts), the findings (the ``finding`` table has them), the statements' query texts (``statement_text`` has each once) and the statements'
    window rates (the ``statement`` table's calls_per_second and mean_ms_window), which would
    otherwise be stored twice, every five minutes: about half of a snapshot's bytes. Reads put
    the samples, findings and texts back; the window rates are read from ``statement``."""
    doc = snap.to_dict() | {"taken_at": taken_at.isoformat(), "samples": [], "findings": [],
                            # the samples are the `sample` table's rows; their help texts, once per name
                            "sample_help": {s.name: s.help for s in samples if s.help}}
    rates = doc["rates"].get("statements")
    if isinstance(rates, dict) and "statements" in rates:
        doc["rates"] = dict(doc["rates"]) | {"statements": {k: v for k, v in rates.items() if k != "statements"}}
    statements = doc["sections"].get("statements")
    if isinstance(statements, dict) and isinstance(statements.get("top"), list):
        doc["sections"] = dict(doc["sections"])          # copies: the snapshot itself stays whole
        statements = doc["sections"]["statements"] = dict(statements)
        statements["top"] = [{k: v for k, v in item.items() if k != "query"}
                             if isinstance(item, dict) and _number(item.get("queryid"), int) is not None else item
                             for item in statements["top"]]
    return doc


def _from_row(taken_at: datetime, doc: dict) -> Snapshot:
    snap = Snapshot.from_dict(doc)
    snap.taken_at = taken_at   # the column: UTC, whatever offset the doc's text carries
    return snap
