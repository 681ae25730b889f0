"""GDPR cleanup benchmark: `cleanup_target` removing soft-deleted people from a big subject table
while an application workload (pgbench) runs against the same database.

    .venv/bin/python benchmarks/gdpr_bench.py [--rows 5000000] [--eligible 1000000]
        [--batch-size 1000[,5000,...]] [--seconds 30] [--rate TPS | --rate-fraction 0.5]
        [--after-seconds 20]
        [--clients 4] [--threads 2] [--quick] [--work DIR] [--keep] [--json FILE] [--no-explain]
        [--dry-run-timeout 60] [--quiet-timeout 300]

It starts its own PostgreSQL 15 cluster (benchlib: fsync=on) under the work directory (default
benchmarks/.work/gdpr/, removed at the end unless --keep; a kept one is reused with its template
database), sets shared_buffers (--shared-buffers, default 2GB: the whole data set fits) and
max_wal_size (4GB) and restarts it, then:

  data   the sample app schema (dbops_pipelines.sample: users with deleted_at, user_roles, and the
         other tables, empty, whose keys reach users) filled in SQL with generate_series:
         --rows users, of which --eligible soft-deleted 31-90 days ago (past the 30-day grace),
         spread evenly over the key range (every (rows/eligible)-th id); 1 in 20 of the ids just
         after them soft-deleted 10 days ago (within grace: must stay); one user_roles row per user
         (the child, ON DELETE CASCADE, indexed by its primary key). The sample schema leaves four
         keys into users without an index on the referencing side (users.deleted_by,
         user_roles.granted_by, contracts.owner_id, requisitions.approver_id); the dry run lists
         them, and without them every deleted person costs a sequential scan per key, so they are
         indexed here, as a DBA would after reading the dry run. VACUUM ANALYZE, CHECKPOINT. Built
         once as a template; every measured cleanup runs on a fresh copy of it (CREATE DATABASE
         ... TEMPLATE, STRATEGY FILE_COPY).
  load   pgbench -c 4 -j 2 with a custom script on the live users only (ids the cleanup never
         touches): one "login" transaction = read the user by id, read their roles, look them up
         by lower(email), update last_login_at. Rate-limited (-R) to --rate-fraction (0.5) of the
         throughput measured unthrottled on the first copy (15 s after a 10 s warm-up and a
         CHECKPOINT), so latency means something; per-transaction latencies come from pgbench
         --log (the latency pgbench logs under -R counts from the scheduled start, so waiting for
         a slot counts).
         pgbench runs in segments of 10 s back to back; a window keeps the transactions that
         completed inside it.
  dry run before the first cleanup: `cleanup_target(dry=True)` timed; past --dry-run-timeout (60 s)
         the statement it is running is EXPLAINed and cancelled, and the benchmark goes on.
  phases per batch size, on its own fresh copy: a CHECKPOINT, a baseline window of --seconds
         with pgbench alone, then `cleanup_target(cfg, "bench")` (as roles.cleanup, a role with
         SELECT/UPDATE/DELETE and BYPASSRLS) with pgbench still running at the same rate; the
         cleanup window is from its call to its return.

Printed: rows deleted (people, and every row with their children), seconds, rows/s, the batch
size, the workload's p50/p95/p99 in both windows and the p95 ratio, the goal verdicts, and where
the time went: CPU of the cleanup's backend, of this Python process and of the whole machine;
batch times over the run; pg_stat_statements of the cleanup role (per statement kind); and,
unless --no-explain, EXPLAIN (ANALYZE, BUFFERS) of every statement of one batch (in a transaction
rolled back before the baseline), with the foreign-key trigger times PostgreSQL reports.

Goals (issue): >= 20,000 eligible rows removed per second, with the workload's p95 latency during
the cleanup <= 1.2x its baseline p95. The machine may be shared: before each window it waits up
to --quiet-timeout for other load to stop, and a window in which processes not ours (CPU not of
our cluster, this process or pgbench) took over 15% of the machine makes its verdicts
INCONCLUSIVE. After the cleanup, --after-seconds of pgbench alone show the drift (and autovacuum).

Nothing here is a test: it prints every number and the verdicts. Save the output next to the other
results: `... | tee benchmarks/results/gdpr_bench-<date>.txt`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from dbops_pipelines.config import GdprSettings, parse_config  # noqa: E402
from dbops_pipelines.gdpr.service import APPLICATION_NAME, cleanup_target  # noqa: E402

from benchlib import (  # noqa: E402  (benchmarks/, this script's directory, is sys.path[0])
    PG_BIN, build_once, cpu_busy_seconds, log, machine_info, postmaster_pid, proc_stat, run_bench, start_cluster,
    tree_cpu_seconds,
)
from stats_bench import wait_for_quiet  # noqa: E402  (the machine is shared: wait until others' load stops)

NAME = "gdpr_bench"
TARGET = "bench"
CLEANUP_ROLE = "dbops_cleanup"
RUN_DB = "gdpr_run"
GRACE_DAYS = GdprSettings(subject_table="public.users").grace_days      # the config default (30)
DEFAULT_BATCH = GdprSettings(subject_table="public.users").batch_size   # the config default (1000)
SEGMENT_SECONDS = 10
RECENT_EVERY = 20            # 1 in 20 of the ids right after an eligible one: soft-deleted within grace

GOAL_ROWS_PER_SECOND = 20_000
NOISY = 0.15                 # unattributed CPU share above which a window is called disturbed (kernel loopback work is ~5%)
GOAL_P95_RATIO = 1.2

# The keys into users the sample schema leaves without an index on the referencing side.
FK_INDEXES = (
    "CREATE INDEX users_deleted_by_idx ON public.users (deleted_by)",
    "CREATE INDEX user_roles_granted_by_idx ON public.user_roles (granted_by)",
    "CREATE INDEX contracts_owner_id_idx ON public.contracts (owner_id)",
    "CREATE INDEX requisitions_approver_id_idx ON public.requisitions (approver_id)",
)

WORKLOAD = """\
-- a login of a live user: ids k*step + r with r in 2..step-1 are never soft-deleted
\\set k random(0, :kmax)
\\set r random(2, :step - 1)
\\set uid :k * :step + :r
\\set tid 1 + :uid % :tenants
BEGIN;
SELECT id, email, full_name, last_login_at FROM public.users WHERE id = :uid AND deleted_at IS NULL;
SELECT role_id FROM public.user_roles WHERE user_id = :uid;
SELECT id FROM public.users WHERE lower(email) = lower('user' || :uid || '@tenant' || :tid || '.example');
UPDATE public.users SET last_login_at = now() WHERE id = :uid;
END;
"""


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, -(-int(p * 100) * len(s) // 10000) - 1)]


# ------------------------------------------------------------------------------------------------
# pgbench, in segments, with per-transaction logs
# ------------------------------------------------------------------------------------------------

class Load:
    """pgbench segments of SEGMENT_SECONDS back to back (in a thread) until stopped; every
    transaction's completion time and latency are read from the --log files afterwards."""

    def __init__(self, bench: "Bench", db: str, rate: float | None, label: str):
        self.bench, self.db, self.rate, self.label = bench, db, rate, label
        self.dir = bench.work / "pgbench" / label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.segments = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def command(self, seconds: int, prefix: Path | None) -> list[str]:
        b = self.bench
        cmd = [str(PG_BIN / "pgbench"), "-n", "-f", str(b.script), "-c", str(b.args.clients), "-j", str(b.args.threads),
               "-T", str(seconds), "-h", b.cluster.host, "-p", str(b.cluster.port), "-U", "postgres"]
        for k, v in b.workload_vars().items():
            cmd += ["-D", f"{k}={v}"]
        if self.rate:
            cmd += ["-R", f"{self.rate:.0f}"]
        if prefix is not None:
            cmd += ["--log", f"--log-prefix={prefix}"]
        return cmd + [self.db]

    def run_once(self, seconds: int, logged: bool = True) -> str:
        prefix = self.dir / f"seg{self.segments:04d}" if logged else None
        self.segments += 1
        # cwd: pgbench writes its log files relative to it when the prefix is relative (it is not)
        res = subprocess.run(self.command(seconds, prefix), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=self.dir)
        if res.returncode != 0:
            self.errors.append(res.stdout[-2000:])
        return res.stdout

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            self.run_once(SEGMENT_SECONDS)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()
        if self.errors:
            raise SystemExit(f"pgbench failed ({self.label}):\n{self.errors[0]}")

    def _parsed(self) -> list[tuple[float, float | None, float]]:
        """(completion epoch, latency ms or None when failed/skipped, schedule lag ms) of every
        logged transaction, read once (after stop)."""
        if getattr(self, "_rows", None) is None:
            rows = []
            for f in sorted(self.dir.glob("seg*")):
                for line in f.read_text().splitlines():
                    p = line.split()
                    if len(p) < 6:
                        continue
                    done = int(p[4]) + int(p[5]) / 1e6
                    lag = int(p[6]) / 1000 if len(p) > 6 and p[6].isdigit() else 0.0
                    rows.append((done, int(p[2]) / 1000 if p[2].isdigit() else None, lag))
            self._rows = rows
        return self._rows

    def transactions(self, t0: float, t1: float) -> dict:
        """Latency (ms, from the scheduled start under -R), schedule lag (ms) of the transactions
        completed between the epoch times t0 and t1, and those that failed."""
        inside = [(lat, lag) for done, lat, lag in self._parsed() if t0 <= done <= t1]
        failed = sum(1 for lat, _ in inside if lat is None)
        lat = [x for x, _ in inside if x is not None]
        service = [x - g for x, g in inside if x is not None]
        lag = [g for x, g in inside if x is not None]
        seconds = t1 - t0
        return {"seconds": seconds, "transactions": len(lat), "failed": failed, "tps": len(lat) / seconds if seconds else 0,
                "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99), "max_ms": max(lat, default=0),
                "mean_ms": sum(lat) / len(lat) if lat else float("nan"),
                "lag_p95_ms": pct(lag, 95), "service_p95_ms": pct(service, 95)}

    def p95_timeline(self, t0: float, t1: float, step: float = 10.0) -> list[tuple[float, float, int]]:
        out = []
        t = t0
        while t < t1:
            w = self.transactions(t, min(t + step, t1))
            out.append((t - t0, w["p95_ms"], w["transactions"]))
            t += step
        return out


# ------------------------------------------------------------------------------------------------
# CPU accounting
# ------------------------------------------------------------------------------------------------

def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def pid_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        t = proc_stat(pid)[1]
    except (OSError, IndexError, ValueError):
        return None
    return (t[0] + t[1]) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    def __init__(self, bench: "Bench"):
        self.bench = bench

    def mark(self) -> dict:
        return {"machine": cpu_busy_seconds(), "postgres": tree_cpu_seconds(postmaster_pid(self.bench.cluster)),
                "python": time.process_time(), "pgbench": children_cpu(), "wall": time.monotonic()}

    def __enter__(self) -> "CpuWindow":
        self.before = self.mark()
        return self

    def __exit__(self, *exc) -> None:
        after = self.mark()
        d = {k: after[k] - self.before[k] for k in after}
        cores = d["wall"] * os.cpu_count()
        d["other"] = d["machine"] - d["postgres"] - d["python"] - d["pgbench"]
        self.result = {k: round(v, 2) for k, v in d.items()}
        self.result["machine_busy"] = round(d["machine"] / cores, 3)
        self.result["other_busy"] = round(max(0.0, d["other"]) / cores, 3)


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work).resolve()
        self.cluster = None
        self.script = self.work / "workload.sql"
        self.step = args.rows // args.eligible
        self.tenants = max(10, args.rows // 5000)
        self.rate: float | None = args.rate
        self.results: dict = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "settings": {"rows": args.rows, "eligible": args.eligible, "batch_sizes": args.batch_sizes,
                         "baseline_seconds": args.seconds, "clients": args.clients, "threads": args.threads,
                         "rate_fraction": args.rate_fraction, "rate": args.rate, "grace_days": GRACE_DAYS,
                         "shared_buffers": args.shared_buffers, "segment_seconds": SEGMENT_SECONDS},
            "runs": [],
        }

    # -- cluster --------------------------------------------------------------------------------

    def start(self) -> None:
        self.cluster = start_cluster(self.work, NAME)
        wanted = {"shared_buffers": self.args.shared_buffers, "max_wal_size": "4GB"}
        current = {k: self.cluster.execute(
            "SELECT setting, unit FROM pg_settings WHERE name = %s", params=(k,))[0] for k in wanted}
        restart = False
        for k, v in wanted.items():
            (pending,) = self.cluster.execute("SELECT count(*) FROM pg_file_settings WHERE name = %s AND setting = %s "
                                              "AND sourcefile LIKE '%%postgresql.auto.conf'", params=(k, v))[0]
            if not pending:
                self.cluster.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(k), sql.Literal(v)))
                restart = True
        if restart or self.cluster.execute("SELECT count(*) FROM pg_settings WHERE pending_restart")[0][0]:
            log(f"restarting the cluster for {wanted} (was {current})")
            self.cluster.stop()
            self.cluster.start()
            if self.cluster.execute("SHOW fsync")[0][0] != "on":
                raise SystemExit("fsync is off after the restart; benchmarks need fsync=on")
        version = self.cluster.execute("SHOW server_version")[0][0]
        shown = {k: self.cluster.execute(sql.SQL("SHOW {}").format(sql.Identifier(k)))[0][0]
                 for k in ("fsync", "shared_buffers", "max_wal_size", "synchronous_commit", "autovacuum")}
        self.results["server"] = {"version": version, **shown}
        log(f"PostgreSQL {version} on port {self.cluster.port}: {shown}; work dir {self.work}")
        self.cluster.execute(sql.SQL(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {n}) THEN "
            "CREATE ROLE {r} LOGIN BYPASSRLS; END IF; END $$").format(n=sql.Literal(CLEANUP_ROLE), r=sql.Identifier(CLEANUP_ROLE)))
        self.script.write_text(WORKLOAD)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()

    # -- data -------------------------------------------------------------------------------------

    def build_template(self) -> str:
        from dbops_pipelines.sample.appdb import create_constraints, create_tables

        rows, eligible, step, tenants = self.args.rows, self.args.eligible, self.step, self.tenants

        def build(db: str) -> str:
            with psycopg.connect(self.cluster.dsn(db)) as conn:
                conn.execute("SET maintenance_work_mem = '1GB'")
                conn.execute("SET synchronous_commit = off")
                create_tables(conn)
                conn.execute(f"""
                    INSERT INTO public.tenants (id, name, slug, domain, country_code, plan)
                    SELECT g, 'Tenant ' || g, 'tenant-' || g, 'tenant' || g || '.example', 'DE',
                           (ARRAY['free', 'team', 'business', 'enterprise'])[1 + g % 4]
                      FROM generate_series(1, {tenants}) g""")
                conn.execute("""
                    INSERT INTO public.roles (id, name, description)
                    SELECT g, 'role' || g, 'Role number ' || g FROM generate_series(1, 8) g""")
                conn.commit()
                t0 = time.perf_counter()
                # eligible: id = k*step for k = 1..eligible; within grace: id = k*step + 1 for every 20th k.
                conn.execute(f"""
                    INSERT INTO public.users (id, tenant_id, email, full_name, phone, street_address, city,
                                              postal_code, country_code, locale, created_at, last_login_at, deleted_at)
                    SELECT g, 1 + g % {tenants}, 'user' || g || '@tenant' || (1 + g % {tenants}) || '.example',
                           'Person ' || md5(g::text), '+49 30 ' || lpad((g % 10000000)::text, 8, '0'),
                           (g % 997) || ' ' || substr(md5(g::text), 1, 10) || ' Street', 'City ' || (g % 503),
                           lpad((g % 99999)::text, 5, '0'), 'DE', 'de-DE',
                           now() - interval '3 years' + (g % 1000) * interval '1 day',
                           now() - (g % 400) * interval '1 hour',
                           CASE WHEN g % {step} = 0 AND g / {step} <= {eligible}
                                  THEN now() - interval '31 days' - (g % 60) * interval '1 day'
                                WHEN g % {step} = 1 AND (g / {step}) % {RECENT_EVERY} = 0
                                  THEN now() - interval '10 days' END
                      FROM generate_series(1, {rows}) g""")
                conn.commit()
                log(f"  users: {rows:,} rows in {time.perf_counter() - t0:.0f} s")
                t0 = time.perf_counter()
                conn.execute(f"""
                    INSERT INTO public.user_roles (user_id, role_id, granted_at)
                    SELECT g, 1 + g % 8, now() - (g % 1000) * interval '1 day' FROM generate_series(1, {rows}) g""")
                conn.commit()
                log(f"  user_roles: {rows:,} rows in {time.perf_counter() - t0:.0f} s")
                conn.execute(f"SELECT setval(pg_get_serial_sequence('public.users', 'id'), {rows})")
                conn.execute(f"SELECT setval(pg_get_serial_sequence('public.tenants', 'id'), {tenants})")
                t0 = time.perf_counter()
                create_constraints(conn)
                for stmt in FK_INDEXES:
                    conn.execute(stmt)
                conn.commit()
                log(f"  keys and indexes in {time.perf_counter() - t0:.0f} s")
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {r}; "
                                     "GRANT SELECT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r}").format(
                    r=sql.Identifier(CLEANUP_ROLE)))
                conn.commit()
            (soft, recent) = self.cluster.execute(
                f"SELECT count(*) FILTER (WHERE deleted_at < now() - interval '{GRACE_DAYS} days'), "
                f"count(*) FILTER (WHERE deleted_at >= now() - interval '{GRACE_DAYS} days') FROM public.users",
                dbname=db)[0]
            if soft != eligible:
                raise SystemExit(f"built {soft} eligible users, wanted {eligible}")
            return f"{rows:,} users, {soft:,} soft-deleted past grace, {recent:,} within grace; {rows:,} user_roles"

        db = build_once(self.cluster, f"gdpr_r{rows}_e{eligible}", f"{rows:,} users, {eligible:,} eligible",
                        build, extensions=("pg_stat_statements",))
        size = self.cluster.execute("SELECT pg_database_size(%s)", params=(db,))[0][0]
        self.results["database_bytes"] = size
        log(f"template {db}: {size / 1e9:.2f} GB")
        return db

    def fresh_copy(self, template: str) -> str:
        t0 = time.perf_counter()
        self.cluster.drop_database(RUN_DB)
        self.cluster.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
            sql.Identifier(RUN_DB), sql.Identifier(template)))
        # The audit trail's schema, owned by the cleanup role (it may not CREATE in the database).
        self.cluster.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
            sql.Identifier(GdprSettings(subject_table="public.users").audit_schema), sql.Identifier(CLEANUP_ROLE)),
            dbname=RUN_DB)
        log(f"fresh copy {RUN_DB} of {template} in {time.perf_counter() - t0:.0f} s")
        return RUN_DB

    def workload_vars(self) -> dict:
        return {"step": self.step, "kmax": self.args.rows // self.step - 1, "tenants": self.tenants}

    def config(self, db: str, batch_size: int):
        store = self.work / "store" / f"b{batch_size}"       # the erasure ledger of this run alone
        shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True)
        os.environ.setdefault("DBOPS_BACKUP_KEY", _bench_key())   # for a ledger written by cleanup, if any
        return parse_config({
            "storage": {"url": f"file://{store}"},
            "encryption": {"key_env": "DBOPS_BACKUP_KEY"},
            "targets": {TARGET: {"dsn": self.cluster.dsn(db), "roles": {"cleanup": CLEANUP_ROLE},
                                 "gdpr": {"subject_table": "public.users", "batch_size": batch_size}}},
        })

    # -- measurements -------------------------------------------------------------------------------

    def counts(self, db: str) -> dict:
        (eligible, recent, live, roles) = self.cluster.execute(
            f"SELECT count(*) FILTER (WHERE deleted_at < now() - interval '{GRACE_DAYS} days'), "
            f"count(*) FILTER (WHERE deleted_at >= now() - interval '{GRACE_DAYS} days'), "
            "count(*) FILTER (WHERE deleted_at IS NULL), (SELECT count(*) FROM public.user_roles) FROM public.users",
            dbname=db)[0]
        return {"eligible": eligible, "within_grace": recent, "live": live, "user_roles": roles}

    def dry_run(self, cfg) -> dict:
        """`cleanup_target(dry=True)`, given --dry-run-timeout seconds: past that, what it is running
        is EXPLAINed (without ANALYZE) and cancelled, and the benchmark goes on."""
        done: dict = {}

        def work() -> None:
            try:
                done["plan"] = cleanup_target(cfg, TARGET, dry=True)
            except Exception as exc:          # noqa: BLE001 - reported below
                done["error"] = exc

        t0 = time.perf_counter()
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(self.args.dry_run_timeout)
        out: dict = {}
        if thread.is_alive():
            running = self.cluster.execute(
                "SELECT pid, query FROM pg_stat_activity WHERE application_name = %s AND datname = %s "
                "AND backend_type = 'client backend' AND state = 'active'", params=(APPLICATION_NAME, RUN_DB))
            out["timed_out"] = []
            for pid, query in running or []:
                plan = [r[0] for r in self.cluster.execute("EXPLAIN " + query, dbname=RUN_DB)]
                out["timed_out"].append({"query": shorten(query), "plan": plan})
                self.cluster.execute("SELECT pg_cancel_backend(%s)", params=(pid,))
                log(f"dry run still running after {self.args.dry_run_timeout:.0f} s: cancelled; it was running "
                    f"{shorten(query)[:300]}")
                for line in plan:
                    log(f"    {line[:200]}")
            thread.join(60)
        secs = time.perf_counter() - t0
        out["seconds"] = secs
        if "plan" in done:
            plan = done["plan"]
            out.update(tables=[(t.table, t.action, t.rows) for t in plan.tables], unindexed=plan.unindexed)
            log(f"dry run in {secs:.1f} s: " + ", ".join(f"{t} {a} {n:,}" for t, a, n in out["tables"] if n)
                + f"; unindexed keys: {plan.unindexed or 'none'}")
        else:
            out["error"] = f"{type(done.get('error')).__name__}: {done.get('error')}"
            log(f"dry run failed after {secs:.1f} s: {out['error'][:300]}")
        return out

    def explain_batch(self, cfg, batch_size: int) -> list[dict]:
        """EXPLAIN (ANALYZE, BUFFERS) of every statement one batch runs, the cleanup's own SQL (its
        _lock and erase_rows), in one transaction rolled back: the data stays as it was. The ledger
        entry and audit row a real batch also writes are not in it."""
        from datetime import timedelta

        from dbops_pipelines.gdpr import cleanup as core
        from dbops_pipelines.gdpr.catalog import discover
        from dbops_pipelines.gdpr.service import _connect, gdpr_settings

        lock = getattr(core, "_lock", None)
        erase = getattr(core, "erase_rows", None) or getattr(core, "_remove", None)
        timeouts = getattr(core, "set_timeouts", None) or getattr(core, "_timeouts", None)
        if not (lock and erase and timeouts):
            log("explain skipped: the cleanup internals changed (no _lock / erase_rows / set_timeouts)")
            return []
        settings = gdpr_settings(cfg, TARGET).model_copy(update={"batch_size": batch_size})
        out: list[dict] = []
        with _connect(cfg, TARGET, "cleanup") as conn:
            catalog = discover(conn, settings)
            (now,) = conn.execute("SELECT now()").fetchone()
            cutoff = now - timedelta(days=settings.grace_days)
            proxy = ExplainingConnection(conn, out)
            try:
                with conn.transaction(force_rollback=True):
                    timeouts(conn, settings)
                    conn.execute("SET LOCAL statement_timeout = 0")
                    keys = lock(proxy, catalog.subject, settings, cutoff, sql.SQL(""), batch_size)
                    erase(proxy, catalog, catalog.subject, settings, cutoff, keys, None)
            except (AttributeError, TypeError) as exc:     # the core changed shape: report, go on
                log(f"explain skipped: the cleanup internals changed ({exc})")
        return out

    def cleanup_under_load(self, db: str, cfg, batch_size: int) -> dict:
        progress: list[tuple[float, int]] = []
        backend = {"pid": None, "cpu": None}
        mon = psycopg.connect(self.cluster.dsn(db), autocommit=True)
        last_print = [time.monotonic()]

        def on_log(line: str) -> None:
            now = time.monotonic()
            m = re.search(r"(\d+) rows removed so far", line)
            if m:
                progress.append((now, int(m.group(1))))
            if backend["pid"] is None:
                row = mon.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND usename = %s",
                                  (APPLICATION_NAME, CLEANUP_ROLE)).fetchone()
                backend["pid"] = row[0] if row else None
                backend["cpu0"] = pid_cpu(backend["pid"])
            backend["cpu"] = pid_cpu(backend["pid"])
            if now - last_print[0] >= 10:
                last_print[0] = now
                log(f"    {line}")

        load = Load(self, db, self.rate, f"during_b{batch_size}")
        self.cluster.execute("SELECT pg_stat_statements_reset()", dbname=db)
        busy_before = wait_for_quiet(self.args.quiet_timeout)
        load.start()
        time.sleep(2)      # pgbench connected and at its rate before the cleanup starts
        with CpuWindow(self) as cpu:
            t0_epoch, t0 = time.time(), time.monotonic()
            py0 = time.process_time()
            result = None
            try:
                result = cleanup_target(cfg, TARGET, log=on_log)
            finally:
                t1_epoch, t1 = time.time(), time.monotonic()
                py1 = time.process_time()
                load.stop()
                mon.close()
        secs = t1 - t0
        people = result.removed.get(("public.users", "delete"), 0)
        total = sum(result.removed.values())
        window = load.transactions(t0_epoch, t1_epoch)
        times = [t - t0 for t, _ in progress]
        batch_secs = [b - a for a, b in zip([0.0] + times, times)]
        quarters = []
        if len(progress) >= 8:
            n = len(progress)
            for q in range(4):
                a, b = progress[q * n // 4 - 1] if q else (t0, 0), progress[(q + 1) * n // 4 - 1]
                quarters.append((b[1] - a[1]) / (b[0] - a[0]))
        stmts = self.statement_profile(db)
        return {
            "batch_size": batch_size, "seconds": secs, "people_deleted": people, "rows_deleted": total,
            "people_per_second": people / secs, "rows_per_second": total / secs,
            "removed": {f"{t} {a}": n for (t, a), n in sorted(result.removed.items())},
            "batches": result.batches, "passes": result.passes, "still_locked": result.still_locked,
            "blocked": {k: len(v) for k, v in result.blocked.items()}, "notes": result.notes,
            "batch_seconds": {"median": pct(batch_secs, 50), "p95": pct(batch_secs, 95), "max": max(batch_secs, default=0)},
            "people_per_second_by_quarter": quarters,
            "cpu": cpu.result, "python_cpu": py1 - py0,
            "backend_cpu": (backend["cpu"] - backend["cpu0"]) if backend.get("cpu0") is not None and backend["cpu"] is not None else None,
            "load": window, "load_timeline": load.p95_timeline(t0_epoch, t1_epoch, max(10.0, secs / 12)),
            "load_segments": load.segments, "statements": stmts, "busy_before": busy_before,
        }

    def statement_profile(self, db: str, top: int = 8) -> list[dict]:
        rows = self.cluster.execute(
            "SELECT calls, total_exec_time, rows, shared_blks_hit + shared_blks_read, shared_blks_read, wal_bytes, query "
            "FROM pg_stat_statements WHERE userid = %s::regrole::oid "
            "AND dbid = (SELECT oid FROM pg_database WHERE datname = %s) ORDER BY total_exec_time DESC LIMIT %s",
            dbname=db, params=(CLEANUP_ROLE, db, top))
        return [{"calls": c, "total_s": round(t / 1000, 2), "mean_ms": round(t / c, 2), "rows": r, "blocks": b,
                 "blocks_read": br, "wal_mb": round(float(w) / 1e6, 1), "query": shorten(q)}
                for c, t, r, b, br, w, q in rows]

    def window(self, db: str, label: str, seconds: int) -> dict:
        """pgbench alone at the rate for ``seconds``: its latencies and the CPU spent."""
        load = Load(self, db, self.rate, label)
        busy_before = wait_for_quiet(self.args.quiet_timeout)
        with CpuWindow(self) as cpu:
            t0 = time.time()
            segs = max(1, round(seconds / SEGMENT_SECONDS))
            for _ in range(segs):
                load.run_once(SEGMENT_SECONDS)
            t1 = time.time()
        if load.errors:
            raise SystemExit(f"pgbench failed ({label}):\n{load.errors[0]}")
        w = load.transactions(t0, t1)
        w["cpu"] = cpu.result
        w["busy_before"] = busy_before
        return w

    def probe_rate(self, db: str) -> None:
        load = Load(self, db, None, "probe")
        load.run_once(10, logged=False)                                  # warm-up: caches, connections
        wait_for_quiet(self.args.quiet_timeout)
        self.cluster.execute("CHECKPOINT")      # as before the baseline: full-page writes count alike
        out = load.run_once(15, logged=False)
        m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
        if not m:
            raise SystemExit(f"pgbench failed (probe):\n{out}")
        max_tps = float(m.group(1))
        lat = re.search(r"latency average = ([0-9.]+) ms", out)
        self.results["max_tps"] = max_tps
        if self.rate is None:
            self.rate = round(max_tps * self.args.rate_fraction)
        self.results["rate"] = self.rate
        log(f"workload unthrottled: {max_tps:.0f} TPS (latency average {lat.group(1) if lat else '?'} ms) -> "
            f"-R {self.rate:.0f} ({100 * self.rate / max_tps:.0f}% of it)")

    def run(self) -> None:
        template = self.build_template()
        for i, bs in enumerate(self.args.batch_sizes):
            log(f"=== batch size {bs} ===")
            db = self.fresh_copy(template)
            cfg = self.config(db, bs)
            before = self.counts(db)
            log(f"  before: {before}")
            run: dict = {"batch_size": bs, "before": before}
            if i == 0:
                run["dry_run"] = self.dry_run(cfg)
            if not self.args.no_explain:
                run["explain"] = self.explain_batch(cfg, bs)
                for e in run["explain"]:
                    log(f"  explain: {e['ms']:.0f} ms  {e['query'][:140]}")
            if i == 0 or self.rate is None:
                self.probe_rate(db)
            else:
                Load(self, db, None, "warmup").run_once(10, logged=False)
            self.cluster.execute("CHECKPOINT")
            log(f"  baseline: {self.args.seconds} s of pgbench -R {self.rate:.0f} alone")
            run["baseline"] = self.window(db, f"baseline_b{bs}", self.args.seconds)
            b = run["baseline"]
            log(f"    p50 {b['p50_ms']:.2f} ms, p95 {b['p95_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms, {b['tps']:.0f} TPS "
                f"(machine {100 * b['cpu']['machine_busy']:.0f}% busy, {100 * b['cpu']['other_busy']:.1f}% unattributed)")
            log(f"  cleanup (batch_size {bs}) under the same load")
            run["cleanup"] = self.cleanup_under_load(db, cfg, bs)
            c = run["cleanup"]
            log(f"    {c['people_deleted']:,} people ({c['rows_deleted']:,} rows) in {c['seconds']:.1f} s: "
                f"{c['people_per_second']:,.0f} people/s; load p95 {c['load']['p95_ms']:.2f} ms "
                f"({c['load']['p95_ms'] / b['p95_ms']:.2f}x baseline)")
            run["after"] = self.counts(db)
            log(f"  after: {run['after']}")
            if self.args.after_seconds:
                a = run["after_window"] = self.window(db, f"after_b{bs}", self.args.after_seconds)
                log(f"  after the cleanup, {self.args.after_seconds} s of pgbench alone (autovacuum may run): "
                    f"p50 {a['p50_ms']:.2f} ms, p95 {a['p95_ms']:.2f} ms, {a['tps']:.0f} TPS")
            self.results["runs"].append(run)


class ExplainingConnection:
    """Stands in for the cleanup's connection: every DELETE/UPDATE runs as EXPLAIN (ANALYZE,
    BUFFERS) (which executes it), every SELECT first as EXPLAIN ANALYZE and then for real (its
    rows are needed; our own row locks do not skip us)."""

    def __init__(self, conn: psycopg.Connection, out: list[dict]):
        self.conn, self.out = conn, out

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def execute(self, query, params=None):
        text = query.as_string(self.conn) if isinstance(query, sql.Composable) else query
        head = text.lstrip().split(None, 1)[0].upper()
        if head not in ("SELECT", "DELETE", "UPDATE", "WITH"):
            return self.conn.execute(query, params)
        t0 = time.perf_counter()
        plan = [r[0] for r in self.conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + text, params).fetchall()]
        ms = 1000 * (time.perf_counter() - t0)
        self.out.append({"ms": ms, "query": shorten(text), "plan": plan})
        if head in ("SELECT", "WITH") or " RETURNING " in text.upper():
            # its rows are needed: run it again for real (a DELETE already done returns none;
            # the rows it returns are then re-read from the keys it was given)
            return self.conn.execute(query, params) if head in ("SELECT", "WITH") else _Done()
        return _Done()


class _Done:
    """A statement already executed by its EXPLAIN ANALYZE: no rows to give back."""
    rowcount = 0

    def fetchall(self):
        return []


def shorten(q: str) -> str:
    """A statement for the report: whitespace squeezed, long literal arrays cut."""
    q = " ".join(q.split())
    q = re.sub(r"'\{[^}]{60,}\}'", "'{...}'", q)
    q = re.sub(r"ARRAY\[[^\]]{60,}\]", "ARRAY[...]", q)
    return q[:400]


def _bench_key() -> str:
    from dbops_pipelines.backup.crypto import generate_key
    return generate_key()


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

def goals(res: dict) -> list[dict]:
    """Each goal per batch size; a window in which processes not ours took over NOISY of the
    machine makes its verdicts INCONCLUSIVE (the value is still shown)."""
    rows = []
    for run in res["runs"]:
        c, b = run["cleanup"], run["baseline"]
        ratio = c["load"]["p95_ms"] / b["p95_ms"]
        disturbed = [name for name, x in (("baseline", b["cpu"]), ("cleanup", c["cpu"])) if x["other_busy"] > NOISY]
        rows.append({"batch_size": run["batch_size"], "check": "eligible rows/s", "value": c["people_per_second"],
                     "goal": f">= {GOAL_ROWS_PER_SECOND:,}", "pass": c["people_per_second"] >= GOAL_ROWS_PER_SECOND,
                     "disturbed": [d for d in disturbed if d == "cleanup"]})
        rows.append({"batch_size": run["batch_size"], "check": "p95 during / baseline", "value": ratio,
                     "goal": f"<= {GOAL_P95_RATIO}", "pass": ratio <= GOAL_P95_RATIO, "disturbed": disturbed})
    return rows


def report(res: dict) -> str:
    s = res["settings"]
    L = [f"\nGDPR cleanup under live traffic ({res['date']}, {res['machine']['cpus']} cores, "
         f"{res['machine']['mem_gib']} GiB; PostgreSQL {res.get('server', {}).get('version', '?')})",
         f"  server: {', '.join(f'{k}={v}' for k, v in res.get('server', {}).items() if k != 'version')}",
         f"  data: {s['rows']:,} users ({s['eligible']:,} soft-deleted past the {s['grace_days']}-day grace), "
         f"{s['rows']:,} user_roles; database {res.get('database_bytes', 0) / 1e9:.2f} GB",
         f"  workload: login script, pgbench -c {s['clients']} -j {s['threads']} -R {res.get('rate', 0):.0f} "
         f"(unthrottled {res.get('max_tps', 0):.0f} TPS); baseline {s['baseline_seconds']} s"]
    for run in res["runs"]:
        c, b, w = run["cleanup"], run["baseline"], run["cleanup"]["load"]
        L.append(f"\n  batch_size {run['batch_size']}:")
        d = run.get("dry_run")
        if d:
            if "tables" in d:
                L.append(f"    dry run: {d['seconds']:.1f} s; " + ", ".join(f"{t} {a} {n:,}" for t, a, n in d["tables"] if n)
                         + f"; unindexed keys: {d['unindexed'] or 'none'}")
            else:
                L.append(f"    dry run: FAILED after {d['seconds']:.0f} s: {d.get('error', '')[:200]}")
            for t in d.get("timed_out", []):
                L.append(f"      cancelled after --dry-run-timeout while running: {t['query'][:300]}")
                L.extend(f"        {line[:200]}" for line in t["plan"])
        L.append(f"    deleted: {c['people_deleted']:,} people, {c['rows_deleted']:,} rows in all "
                 f"({', '.join(f'{k} {v:,}' for k, v in c['removed'].items())})")
        L.append(f"    seconds: {c['seconds']:.1f}; {c['people_per_second']:,.0f} people/s, {c['rows_per_second']:,.0f} rows/s in all; "
                 f"{c['batches']} batches in {c['passes']} passes (batch median {1000 * c['batch_seconds']['median']:.0f} ms, "
                 f"p95 {1000 * c['batch_seconds']['p95']:.0f} ms, max {1000 * c['batch_seconds']['max']:.0f} ms)")
        if c["people_per_second_by_quarter"]:
            L.append("    people/s by quarter of the run: " + ", ".join(f"{x:,.0f}" for x in c["people_per_second_by_quarter"]))
        if c["still_locked"] or c["blocked"] or c["notes"]:
            L.append(f"    still locked {c['still_locked']}, blocked {c['blocked']}, notes {c['notes']}")
        L.append(f"    after: {run['after']}")
        L.append(f"    {'':<22} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'TPS':>6} {'txns':>8} "
                 f"{'lag p95':>8} {'svc p95':>8} {'failed':>6}")
        for name, x in (("baseline (alone)", b), ("during cleanup", w), ("after (alone)", run.get("after_window"))):
            if x is None:
                continue
            L.append(f"    {name:<22} {x['p50_ms']:8.2f} {x['p95_ms']:8.2f} {x['p99_ms']:8.2f} {x['max_ms']:8.1f} "
                     f"{x['tps']:6.0f} {x['transactions']:8d} {x['lag_p95_ms']:8.2f} {x['service_p95_ms']:8.2f} {x['failed']:6d}")
        L.append(f"    p95 ratio during/baseline: {w['p95_ms'] / b['p95_ms']:.2f}")
        L.append("    load p95 over the cleanup (start s: p95 ms): "
                 + ", ".join(f"{t:.0f}: {p:.1f}" for t, p, _ in c["load_timeline"]))
        cpu = c["cpu"]
        be = f"{c['backend_cpu']:.1f}" if c["backend_cpu"] is not None else "?"
        L.append(f"    CPU s during cleanup ({c['seconds']:.0f} s wall x {res['machine']['cpus']} cores): "
                 f"cleanup backend {be}, this Python {c['python_cpu']:.1f}, all postgres {cpu['postgres']:.1f}, "
                 f"pgbench {cpu['pgbench']:.1f}, unattributed {cpu['other']:.1f} (kernel network work, other processes); "
                 f"machine {100 * cpu['machine_busy']:.0f}% busy")
        L.append(f"    baseline CPU: machine {100 * b['cpu']['machine_busy']:.0f}% busy, "
                 f"{100 * b['cpu']['other_busy']:.1f}% unattributed; during cleanup {100 * cpu['other_busy']:.1f}% unattributed")
        noisy = [name for name, x in (("baseline", b["cpu"]), ("cleanup", cpu)) if x["other_busy"] > NOISY]
        if noisy:
            L.append(f"    NOTE: over {100 * NOISY:.0f}% of the machine went to processes not ours in the {' and '.join(noisy)} "
                     "window (another session's work?): these numbers are disturbed")
        if c["statements"]:
            L.append("    pg_stat_statements, cleanup role (calls, total s, mean ms, rows, blocks read/all, WAL MB):")
            for st in c["statements"]:
                L.append(f"      {st['calls']:6d} {st['total_s']:8.2f} {st['mean_ms']:9.2f} {st['rows']:9d} "
                         f"{st['blocks_read']:>8}/{st['blocks']:<9} {st['wal_mb']:7.1f}  {st['query'][:200]}")
        if run.get("explain"):
            full = run is res["runs"][0]
            L.append(f"    EXPLAIN ANALYZE of one batch of {run['batch_size']} (rolled back, before the baseline; no load)"
                     + ("" if full else "; plans as in the first run, its top lines and trigger times") + ":")
            for e in run["explain"]:
                L.append(f"      {e['ms']:8.1f} ms  {e['query'][:300]}")
                for i, line in enumerate(e["plan"]):
                    if full or i < 2 or line.lstrip().startswith(("Trigger", "Execution", "Sort Method", "Rows Removed")):
                        L.append(f"          {line.rstrip()[:220]}")
    L.append("\nGoals:")
    for g in res["goals"]:
        v = f"{g['value']:,.0f}" if g["check"].endswith("/s") else f"{g['value']:.2f}"
        verdict = "PASS" if g["pass"] else "MISS"
        if g.get("disturbed"):
            verdict = f"INCONCLUSIVE ({verdict} as measured; {' and '.join(g['disturbed'])} window disturbed)"
        L.append(f"  batch_size {g['batch_size']:<6} {g['check']:<24} {v:>10}  {verdict}  (goal {g['goal']})")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000, help="users (subject rows)")
    parser.add_argument("--eligible", type=int, default=1_000_000, help="users soft-deleted past the grace period")
    parser.add_argument("--batch-size", default=str(DEFAULT_BATCH),
                        help=f"gdpr.batch_size (default the config's, {DEFAULT_BATCH}); a comma list runs one "
                             "measurement per size, each on a fresh copy")
    parser.add_argument("--seconds", type=int, default=30, help="baseline window (s)")
    parser.add_argument("--rate", type=float, help="pgbench -R (TPS); default --rate-fraction of the measured maximum")
    parser.add_argument("--rate-fraction", type=float, default=0.5)
    parser.add_argument("--after-seconds", type=int, default=20,
                        help="a window of pgbench alone after the cleanup (drift, autovacuum); 0: none")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-buffers", default="2GB")
    parser.add_argument("--quick", action="store_true", help="smoke run: 500k rows, 100k eligible, 20 s baseline")
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "gdpr"),
                        help="work directory, removed at the end unless --keep (default benchmarks/.work/gdpr)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (and reuse its template database)")
    parser.add_argument("--no-explain", action="store_true", help="skip the EXPLAIN ANALYZE of one batch")
    parser.add_argument("--dry-run-timeout", type=float, default=60,
                        help="the dry run (timed, before the first cleanup) is cancelled past this many seconds")
    parser.add_argument("--quiet-timeout", type=float, default=300,
                        help="before each window wait up to this many seconds for other load on the machine to stop")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.eligible, args.seconds = 500_000, 100_000, 20
    args.batch_sizes = [int(x) for x in args.batch_size.split(",") if x.strip()]
    if args.rows // args.eligible < 3:
        parser.error("--eligible must be at most a third of --rows (the workload needs ids between them)")
    res = run_bench(Bench(args), NAME, args.keep, goals, report)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
