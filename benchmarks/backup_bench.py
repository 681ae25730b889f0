"""Backup pipeline benchmark: dbops `run_backup` against plain `pg_dump`, on a real cluster.

    .venv/bin/python benchmarks/backup_bench.py --size-mb 1200 [--datasets app,pgbench,hash]
        [--work DIR] [--skip-s3] [--keep] [--json FILE] [--repeat N] [--profile] [--no-sweep]
        [--only a,b,b2,b3,c,d,u] [--load pgbench|pgbench-select]
    .venv/bin/python benchmarks/backup_bench.py --report FILE.json

It starts its own PostgreSQL 15 cluster (fsync=on) and SeaweedFS S3 service under the work
directory (default benchmarks/.work/backup/, removed at the end unless --keep), builds one database per
dataset sized to about --size-mb of `pg_dump -Fc -Z0` output, warms the cache with one
`pg_dump -Fc -Z0` (piped into this script, which counts its bytes), then runs each measurement once (N times with --repeat), each in
its own process, whose peak RSS and CPU time are read with wait4() by a small parent forking it
(GNU time, or a minimal Python launcher):

  (a)  pg_dump -Fc -f FILE DB                    gzip level 6, what runbooks do
  (b)  pg_dump -Fc -Z0 DB > /dev/null            the read ceiling
  (b2) pg_dump -Fc -Z0 DB | zstd -1 -T2 > /dev/null   (only if the zstd CLI exists)
  (b3) pg_dump -Fc -Z0 DB | zstd -3 -T1 > FILE   the same compression as (c) done by C tools
                                                 (level = the engine's default; needs the zstd CLI)
  (c)  run_backup -> LocalStore                  the full pipeline (zstd, AES-GCM, sha256, fsync)
  (d)  run_backup -> S3Store (SeaweedFS)         the full pipeline to S3
  (u)  boto3 upload_fileobj of a random file as big as (c)'s stored bytes, to the same store

With --load pgbench, (b), (b3) and (c) are measured a second time per round under a background
`pgbench -c 4 -j 2 -n` (tpcb-like; `pgbench-select`: -S) on its own database of the same cluster,
started before and stopped after each of those measurements; the pgbench TPS before and during
each one is reported.

Datasets: app (realistic text, ~3x compressible), pgbench (blank-padded, ~85x) and hash
(md5/sha256 hex strings and random bytea, ~2.6x: where compression is the most expensive).

See docs/benchmarks.md for what the numbers mean and the goals they are checked against.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dbops_pipelines.backup.engine import BackupOptions  # noqa: E402  (the engine's defaults are what is measured)

from benchlib import (  # noqa: E402  (benchmarks/, this script's directory, is sys.path[0])
    PG_BIN, build_once, complete_databases, cpu_busy_seconds, fresh_database, log, machine_info, mark_complete,
    pgbench_init, postmaster_pid, proc_stat, run_bench, settle, start_cluster, tree_cpu_seconds,
)

THREADS, LEVEL = BackupOptions().zstd_threads, BackupOptions().zstd_level

MIB = 1 << 20
APP_BYTES_PER_ROW = 1600          # pg_dump -Z0 bytes per `rows` of the sample app database (docstring of appdb)
S3_ACCESS_KEY = "dbops-bench-access"
S3_BUCKET = "bench"

# Goals (see docs/benchmarks.md).
GOAL_APP_VS_GZIP = 0.4            # realistic data: (c) wall <= 0.4 x (a) wall
GOAL_APP_VS_READ = 1.3            # realistic data: (c) wall <= 1.3 x (b) wall
GOAL_PGBENCH_VS_GZIP = 1.1        # pgbench data:   (c) wall <= 1.1 x (a) wall
GOAL_RSS_MIB = 256                # peak RSS of our process
GOAL_S3 = 1.2                     # (d) wall <= 1.2 x max((c), boto3 upload)
GOAL_VS_ZSTD_CLI = 1.1            # every dataset, quiet and under load: (c) wall <= 1.1 x (b3) wall

DATASETS = ("app", "pgbench", "hash")
MEASUREMENTS = ("a", "b", "b2", "b3", "c", "d", "u")
HASH_BYTES_PER_ROW = 273          # pg_dump -Z0 bytes per row of the hash dataset (measured)
LOAD_DB = "loadbench"
LOAD_SCALE = 10                   # pgbench -i -s 10 for the background load: ~160 MB, in the page cache
LOAD_WARMUP_S = 1.0               # after starting the load: connections made, caches warm
LOAD_BASELINE_S = 3.0             # then pgbench alone, to measure its TPS without us


# ----------------------------------------------------------------------------------------------
# Child side: one measurement of our own code per process, so its peak RSS is its own.
# ----------------------------------------------------------------------------------------------

def _child(spec_path: str) -> int:
    import resource

    spec = json.loads(Path(spec_path).read_text())
    out: dict = {}
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()

    if spec["mode"] == "backup":
        from dbops_pipelines.backup.crypto import BackupKey
        from dbops_pipelines.backup.engine import BackupOptions, run_backup

        if spec["store"] == "local":
            from dbops_pipelines.storage.local import LocalStore

            store = LocalStore(spec["root"])
        else:
            from dbops_pipelines.storage.s3 import S3Store

            store = S3Store(S3_BUCKET, spec["prefix"], endpoint_url=spec["endpoint_url"])
        key = BackupKey(os.urandom(32), "BENCH_KEY")
        opts = BackupOptions(zstd_threads=spec["zstd_threads"], zstd_level=spec.get("zstd_level", BackupOptions().zstd_level),
                             pg_bin_dir=spec.get("pg_bin_dir"))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        manifest = run_backup(spec["target"], spec["dsn"], store, key, opts)
        if profiler:
            profiler.disable()
        out.update(seconds=time.perf_counter() - t0, raw_bytes=manifest.raw_bytes,
                   stored_bytes=manifest.stored_bytes, object_key=manifest.object_key,
                   rss_before_backup_kib=rss_before)
    elif spec["mode"] == "upload":
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=spec["endpoint_url"], region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}))
        t0 = time.perf_counter()
        with open(spec["file"], "rb") as fh:
            client.upload_fileobj(fh, S3_BUCKET, spec["key"])
        out.update(seconds=time.perf_counter() - t0, stored_bytes=os.path.getsize(spec["file"]))
    else:
        raise SystemExit(f"unknown child mode {spec['mode']!r}")

    self_ru = resource.getrusage(resource.RUSAGE_SELF)
    kids_ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:  # cross-check of the peak RSS the launcher reports
        status = Path("/proc/self/status").read_text()
        out["vmhwm_kib"] = int(status.split("VmHWM:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    out.update(self_cpu=self_ru.ru_utime + self_ru.ru_stime, children_cpu=kids_ru.ru_utime + kids_ru.ru_stime)
    if profiler:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(18)
        out["profile"] = buf.getvalue()
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------

# Peak RSS and CPU. wait4()'s ru_maxrss of a child we fork+exec directly is useless here: Linux keeps
# the high-water RSS of the pre-exec image, i.e. of this ~85 MiB Python process, so every child
# would report >= 85 MiB. So each measured process is forked by a tiny parent that wait4()s it
# and appends "maxrss_kib user_s sys_s" to a file: GNU time if installed, else a minimal Python.
TIME_BIN = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
_LAUNCHER = (
    "import os,sys\n"
    "pid=os.fork()\n"
    "if pid==0:\n"
    "    os.execvp(sys.argv[2],sys.argv[2:])\n"
    "_,st,ru=os.wait4(pid,0)\n"
    "open(sys.argv[1],'a').write('%d %.2f %.2f\\n'%(ru.ru_maxrss,ru.ru_utime,ru.ru_stime))\n"
    "sys.exit(os.waitstatus_to_exitcode(st))\n"
)


def rss_wrapped(argv: list[str], rss_file: str | Path) -> list[str]:
    """argv run under a small parent that appends its peak RSS and CPU times to rss_file."""
    if TIME_BIN:
        return [TIME_BIN, "-a", "-f", "%M %U %S", "-o", str(rss_file), *argv]
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(rss_file), *argv]


def read_usage(rss_file: str | Path) -> tuple[float, float]:
    """(peak RSS MiB, user+sys CPU s) of the last process recorded in rss_file (GNU time may
    add a 'Command exited with...' line; the CPU includes the children the process reaped)."""
    rows = [line.split() for line in Path(rss_file).read_text().splitlines()]
    rows = [r for r in rows if len(r) == 3 and r[0].isdigit()]
    kib, user, system = rows[-1]
    return int(kib) / 1024, float(user) + float(system)


def _add_other(cpu: dict) -> None:
    """Busy CPU on the machine not accounted to any process we know of: kernel work not charged
    to a process (within about +-1 s per run here) plus anything else running on the box. A
    large value means the measurement was disturbed."""
    known = sum(v for k, v in cpu.items() if k != "machine")
    cpu["other"] = round(cpu["machine"] - known, 2)


def children_of(pid: int | None) -> set[int]:
    if pid is None:
        return set()
    try:
        return {int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def process_cpu_seconds(pid: int) -> float:
    """user+sys CPU of one live process (all its threads); 0 if it is gone."""
    try:
        _, t = proc_stat(pid)
    except (OSError, IndexError, ValueError):
        return 0.0
    return (t[0] + t[1]) / os.sysconf("SC_CLK_TCK")


def _reap(procs: list[subprocess.Popen]) -> list[int]:
    """wait4 every process; return their exit codes in order."""
    codes = []
    for proc in procs:
        _, status, _ = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it was reaped
        codes.append(proc.returncode)
    return codes


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work).resolve()
        self.cluster = None
        self.s3 = None
        self.zstd_cli = shutil.which("zstd")
        self.results: dict = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "size_mb_requested": args.size_mb,
            "repeat": args.repeat,
            "zstd_cli": self.zstd_cli,
            "datasets": {},
        }
        self._child_seq = 0
        self.loaded = False               # True while measuring under the background load
        self._load_proc: subprocess.Popen | None = None
        self._load_backends: set[int] = set()

    # -- services -----------------------------------------------------------------------------

    def start(self) -> None:
        self.cluster = start_cluster(self.work, "backup_bench")   # fsync=on, or it refuses
        log(f"PostgreSQL {self.cluster.execute('SHOW server_version')[0][0]} on port {self.cluster.port}, fsync=on")
        if not self.args.skip_s3:
            import secrets

            from dbops_pipelines.localdev.seaweed import SeaweedServer

            self.s3 = SeaweedServer(self.work / "s3", S3_ACCESS_KEY, secrets.token_hex(16))
            self.s3.start()
            try:
                self.s3.create_bucket(S3_BUCKET)
            except Exception as exc:  # noqa: BLE001 - a kept work dir already has it
                if "BucketAlready" not in str(exc):
                    raise
            log(f"SeaweedFS S3 at {self.s3.endpoint_url}")

    def stop(self) -> None:
        if self.s3 is not None:
            self.s3.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def child_env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.s3 is not None:
            env["AWS_ACCESS_KEY_ID"] = self.s3.access_key
            env["AWS_SECRET_ACCESS_KEY"] = self.s3.secret_key
            env["AWS_DEFAULT_REGION"] = "us-east-1"
        return env

    # -- datasets -----------------------------------------------------------------------------

    def dump_size(self, db: str) -> tuple[int, float]:
        """pg_dump -Fc -Z0 through a pipe into us, counting bytes (also the cache warm-up)."""
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(PG_BIN / "pg_dump"), "-Fc", "-Z0", f"--dbname={self.cluster.dsn(db)}"],
                                stdout=subprocess.PIPE, bufsize=0)
        n = 0
        fd = proc.stdout.fileno()
        while data := os.read(fd, MIB):
            n += len(data)
        if proc.wait() != 0:
            raise SystemExit(f"pg_dump of {db} failed")
        return n, time.perf_counter() - t0

    def build_app(self, target_bytes: int) -> str:
        from dbops_pipelines.sample.appdb import build_sample_database

        rows = max(1000, round(target_bytes / APP_BYTES_PER_ROW))

        def build(db: str) -> str:
            stats: dict = {}
            build_sample_database(self.cluster.dsn(db), rows, seed=42, stats=stats)
            return (f"load {stats['seconds_load']:.0f} s, keys/indexes {stats['seconds_constraints']:.0f} s, "
                    f"analyze {stats['seconds_analyze']:.0f} s")

        return build_once(self.cluster, f"app_r{rows}", f"the sample app database ({rows:,} rows, "
                          f"~{rows * APP_BYTES_PER_ROW / 1e6:.0f} MB of dump)", build)

    def build_pgbench(self, target_bytes: int) -> str:
        cal_file = self.work / "pgbench_bytes_per_scale"
        if cal_file.exists():
            per_scale = int(cal_file.read_text())
        else:
            # Calibrate: the dump of scale 2 minus scale 1 is the per-scale size.
            sizes = {}
            for s in (1, 2):
                cal = f"pgbench_cal{s}"
                fresh_database(self.cluster, cal)
                pgbench_init(self.cluster, cal, s)
                sizes[s] = self.dump_size(cal)[0]
                self.cluster.drop_database(cal)
            per_scale = sizes[2] - sizes[1]
            cal_file.write_text(str(per_scale))
            log(f"pgbench calibration: {per_scale / 1e6:.2f} MB of pg_dump -Z0 per scale unit")
        scale = max(1, round(target_bytes / per_scale))

        def build(db: str) -> str:
            pgbench_init(self.cluster, db, scale)
            return ""

        return build_once(self.cluster, f"pgbench_s{scale}", f"pgbench -i -s {scale}, ~{scale * per_scale / 1e6:.0f} MB of dump",
                          build)

    def build_hash(self, target_bytes: int) -> str:
        """Hash-like data, built in SQL with generate_series: per row an md5 and a sha256 hex
        string and 32 random bytes (dumped as hex), an object path that repeats the md5, a
        sequential id, a timestamp, a status and a content type. Hex carries 4 bits per
        character, so zstd -3 gets about 2.6x out of it (2.64x measured), at the cost of real
        work on every byte: the dataset where compression is the bottleneck."""
        rows = max(1000, round(target_bytes / HASH_BYTES_PER_ROW))

        def build(db: str) -> str:
            import psycopg

            with psycopg.connect(self.cluster.dsn(db)) as conn:
                conn.execute("SET LOCAL synchronous_commit = off")
                conn.execute("SELECT setseed(0.42)")
                conn.execute("""
                    CREATE TABLE digests (
                        id      bigint PRIMARY KEY,
                        md5     text NOT NULL,
                        sha256  text NOT NULL,
                        salt    bytea NOT NULL,
                        path    text NOT NULL,
                        seen_at timestamptz NOT NULL,
                        status  text NOT NULL,
                        content_type text NOT NULL
                    )""")
                conn.execute("""
                    INSERT INTO digests
                    SELECT i,
                           md5(i::text),
                           encode(sha256(int8send(i)), 'hex'),
                           decode(md5(random()::text) || md5(random()::text), 'hex'),
                           's3://bench-objects/' || left(md5(i::text), 2) || '/' || md5(i::text) || '.bin',
                           timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
                           (ARRAY['new', 'seen', 'verified', 'expired'])[1 + i %% 4],
                           (ARRAY['image/png', 'application/pdf', 'text/csv'])[1 + i %% 3]
                    FROM generate_series(1, %s) AS i""", (rows,))
            return ""

        return build_once(self.cluster, f"hash_r{rows}", f"hash-like data ({rows:,} rows, "
                          f"~{rows * HASH_BYTES_PER_ROW / 1e6:.0f} MB of dump)", build)

    # -- background load ----------------------------------------------------------------------

    def build_load_db(self) -> None:
        if LOAD_DB in complete_databases(self.cluster):
            return
        log(f"building the background-load database {LOAD_DB} (pgbench -i -s {LOAD_SCALE})...")
        fresh_database(self.cluster, LOAD_DB)
        pgbench_init(self.cluster, LOAD_DB, LOAD_SCALE)
        # pg_stat_statements counts statements as they finish (no stats-flush delay): the TPS source.
        self.cluster.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname=LOAD_DB)
        settle(self.cluster, LOAD_DB)
        mark_complete(self.cluster, LOAD_DB)

    def load_transactions(self) -> int:
        """Transactions pgbench completed so far: calls of the one statement each of its
        transactions runs once (UPDATE pgbench_accounts for tpcb-like, the SELECT for -S)."""
        pattern = "SELECT abalance FROM pgbench_accounts%" if self.args.load == "pgbench-select" else "UPDATE pgbench_accounts%"
        row = self.cluster.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = %s AND s.query LIKE %s", dbname=LOAD_DB, params=(LOAD_DB, pattern))
        return int(row[0][0])

    def start_load(self) -> dict:
        """Start pgbench against LOAD_DB; after a warm-up, measure its TPS alone for a few
        seconds. Returns the state end_load needs."""
        cmd = [str(PG_BIN / "pgbench"), "-c", "4", "-j", "2", "-T", "3600", "-n",
               *(["-S"] if self.args.load == "pgbench-select" else []),
               "-h", self.cluster.host, "-p", str(self.cluster.port), "-U", "postgres", LOAD_DB]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(LOAD_WARMUP_S)
        if proc.poll() is not None:
            raise SystemExit(f"the background pgbench exited at once with {proc.returncode}: {' '.join(cmd)}")
        n0, t0 = self.load_transactions(), time.monotonic()
        time.sleep(LOAD_BASELINE_S)
        n1, t1 = self.load_transactions(), time.monotonic()
        self._load_backends = {r[0] for r in self.cluster.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", params=(LOAD_DB,))}
        return {"proc": proc, "tps_alone": (n1 - n0) / (t1 - t0)}

    def load_mark(self) -> tuple[int, float]:
        return self.load_transactions(), time.monotonic()

    def end_load(self, state: dict, start: tuple[int, float] | None, end: tuple[int, float] | None) -> dict:
        proc: subprocess.Popen = state["proc"]
        running = proc.poll() is None
        if running:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._load_backends = set()
        # Its backends notice the lost client and exit; wait for them so the next wait_for_quiet is fair.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.cluster.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                params=(LOAD_DB,))[0][0]:
            time.sleep(0.1)
        if not running:
            raise SystemExit(f"the background pgbench died during the measurement (exit {proc.returncode})")
        if start is None or end is None:  # the measurement failed: only stop the load
            return {}
        during = (end[0] - start[0]) / (end[1] - start[1])
        return {"mode": self.args.load, "tps_alone": round(state["tps_alone"], 1), "tps_during": round(during, 1),
                "tps_ratio": round(during / state["tps_alone"], 3) if state["tps_alone"] else None}

    # -- measurements -------------------------------------------------------------------------

    def _measure_cmds(self, name: str, cmds: list[tuple[list[str], dict]]) -> dict:
        """Run a pipeline of commands (each stdin fed by the previous stdout); wall time and
        each process's peak RSS from wait4."""
        ctx = self.begin_measurement()
        try:
            return self._measure_cmds_inner(name, cmds, ctx)
        finally:
            self.finish_measurement(ctx)

    def _measure_cmds_inner(self, name: str, cmds: list[tuple[list[str], dict]], ctx: dict) -> dict:
        cpu0 = self.cpu_snapshot()
        self.mark_load(ctx, "start")
        t0 = time.perf_counter()
        procs: list[subprocess.Popen] = []
        rss_files = []
        prev = None
        for i, (argv, kw) in enumerate(cmds):
            last = i == len(cmds) - 1
            stdout = kw.get("stdout", subprocess.DEVNULL) if last else subprocess.PIPE
            rss_files.append(self.work / f"rss{i}.txt")
            rss_files[-1].unlink(missing_ok=True)
            p = subprocess.Popen(rss_wrapped(argv, rss_files[-1]),
                                 stdin=prev if prev is not None else subprocess.DEVNULL, stdout=stdout)
            if prev is not None:
                prev.close()
            prev = p.stdout if not last else None
            procs.append(p)
        codes = _reap(procs)
        wall = time.perf_counter() - t0
        self.mark_load(ctx, "end")
        cpu = self.cpu_delta(cpu0)
        for rc, (argv, _) in zip(codes, cmds):
            if rc != 0:
                raise SystemExit(f"{name}: {' '.join(argv[:3])}... exited with {rc}")
        usage = [read_usage(f) for f in rss_files]
        for f in rss_files:
            f.unlink()
        cpu["pg_dump"] = usage[0][1]
        if len(usage) > 1:
            cpu["zstd"] = usage[1][1]
        _add_other(cpu)
        return {"seconds": wall, "rss_mib": [u[0] for u in usage], "cpu": cpu, "background_util_before": ctx["background"],
                "cpu_util": cpu["machine"] / (wall * os.cpu_count()), **self.load_result(ctx)}

    def measure_gzip(self, db: str, path: Path) -> dict:
        r = self._measure_cmds("(a)", [([str(PG_BIN / "pg_dump"), "-Fc", "-f", str(path),
                                         f"--dbname={self.cluster.dsn(db)}"], {})])
        r["stored_bytes"] = path.stat().st_size
        r["peak_rss_mib"] = r["pg_dump_rss_mib"] = r["rss_mib"][0]
        path.unlink()
        return r

    def measure_read(self, db: str) -> dict:
        r = self._measure_cmds("(b)", [([str(PG_BIN / "pg_dump"), "-Fc", "-Z0",
                                         f"--dbname={self.cluster.dsn(db)}"], {})])
        r["peak_rss_mib"] = r["pg_dump_rss_mib"] = r["rss_mib"][0]
        return r

    def measure_zstd_cli(self, db: str) -> dict:
        r = self._measure_cmds("(b2)", [
            ([str(PG_BIN / "pg_dump"), "-Fc", "-Z0", f"--dbname={self.cluster.dsn(db)}"], {}),
            ([self.zstd_cli, "-1", "-T2", "-q", "-c"], {"stdout": subprocess.DEVNULL}),
        ])
        r["peak_rss_mib"] = r["rss_mib"][1]  # zstd's
        r["pg_dump_rss_mib"] = r["rss_mib"][0]
        return r

    def measure_zstd_cli_file(self, db: str) -> dict:
        """(b3): the C-tools pipeline with the engine's zstd level, written to a file in the work
        directory as (c) writes to its LocalStore. (c) also fsyncs its object before it finishes;
        zstd does not, so the time an fsync takes right after (b3) is recorded apart."""
        path = self.work / f"{db}.b3.zst"
        with open(path, "wb") as fh:
            r = self._measure_cmds("(b3)", [
                ([str(PG_BIN / "pg_dump"), "-Fc", "-Z0", f"--dbname={self.cluster.dsn(db)}"], {}),
                ([self.zstd_cli, f"-{LEVEL}", "-T1", "-q", "-c"], {"stdout": fh}),
            ])
            t0 = time.perf_counter()
            os.fsync(fh.fileno())
            r["fsync_after_seconds"] = time.perf_counter() - t0
        r["stored_bytes"] = path.stat().st_size
        r["peak_rss_mib"] = r["rss_mib"][1]  # zstd's
        r["pg_dump_rss_mib"] = r["rss_mib"][0]
        path.unlink()
        return r

    def _run_child(self, spec: dict) -> dict:
        self._child_seq += 1
        spec_path = self.work / f"child{self._child_seq}.json"
        spec["result"] = str(self.work / f"child{self._child_seq}.result.json")
        spec_path.write_text(json.dumps(spec))
        ctx = self.begin_measurement()
        try:
            return self._run_child_inner(spec, spec_path, ctx)
        finally:
            self.finish_measurement(ctx)

    def _run_child_inner(self, spec: dict, spec_path: Path, ctx: dict) -> dict:
        cpu0 = self.cpu_snapshot()
        self.mark_load(ctx, "start")
        t0 = time.perf_counter()
        rss_file, pg_dump_rss_file = self.work / "rss_child.txt", self.work / "rss_pg_dump.txt"
        rss_file.unlink(missing_ok=True)
        pg_dump_rss_file.unlink(missing_ok=True)
        env = self.child_env()
        env["DBOPS_BENCH_PG_DUMP_RSS"] = str(pg_dump_rss_file)
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
        proc = subprocess.Popen(rss_wrapped(argv, rss_file), env=env, stdin=subprocess.DEVNULL)
        rc, = _reap([proc])
        wall = time.perf_counter() - t0
        self.mark_load(ctx, "end")
        cpu = self.cpu_delta(cpu0)
        if rc != 0:
            raise SystemExit(f"child {spec['mode']} exited with {rc}")
        out = json.loads(Path(spec["result"]).read_text())
        spec_path.unlink()
        Path(spec["result"]).unlink()
        out["peak_rss_mib"], cpu["ours"] = read_usage(rss_file)
        if pg_dump_rss_file.exists():  # the last line is the dump (the first is pg_dump --version)
            out["pg_dump_rss_mib"], cpu["pg_dump"] = read_usage(pg_dump_rss_file)
            cpu["ours"] -= cpu["pg_dump"]  # the child's figure includes the pg_dump it reaped
            pg_dump_rss_file.unlink()
        rss_file.unlink()
        _add_other(cpu)
        out.update(process_seconds=wall, cpu=cpu, background_util_before=ctx["background"],
                   cpu_util=cpu["machine"] / (wall * os.cpu_count()), **self.load_result(ctx))
        return out

    # Every measurement: wait for the machine to be quiet; under load (self.loaded) then start
    # the background pgbench, measure its TPS alone, and stop it again right after.

    def begin_measurement(self) -> dict:
        ctx: dict = {"background": self.wait_for_quiet()}
        if self.loaded:
            ctx["load"] = self.start_load()
            self._load_proc = ctx["load"]["proc"]
        return ctx

    def mark_load(self, ctx: dict, which: str) -> None:
        if "load" in ctx:
            ctx[which] = self.load_mark()

    def finish_measurement(self, ctx: dict) -> None:
        if "load" in ctx and "load_info" not in ctx:
            self._load_proc = None
            ctx["load_info"] = self.end_load(ctx["load"], ctx.get("start"), ctx.get("end"))

    def load_result(self, ctx: dict) -> dict:
        """The load figures, stopping the load first (the CPU figures were taken with it running)."""
        self.finish_measurement(ctx)
        return {"load": ctx["load_info"]} if "load_info" in ctx else {}

    def cpu_snapshot(self) -> dict:
        self._backends_before = children_of(postmaster_pid(self.cluster))
        snap = {"machine": cpu_busy_seconds(), "postgres": tree_cpu_seconds(postmaster_pid(self.cluster))}
        if self.s3 is not None and self.s3._proc is not None:
            snap["weed"] = tree_cpu_seconds(self.s3._proc.pid)
        if self._load_proc is not None:  # the background pgbench and its backends (also inside "postgres")
            snap["load_client"] = process_cpu_seconds(self._load_proc.pid)
            snap["load_backends"] = sum(process_cpu_seconds(p) for p in self._load_backends)
        return snap

    def cpu_delta(self, before: dict) -> dict:
        # A backend's CPU only reaches the postmaster's cutime once it has exited and been
        # reaped, which can lag its client's exit: wait for the measurement's backends to go.
        deadline = time.monotonic() + 3
        while children_of(postmaster_pid(self.cluster)) - self._backends_before and time.monotonic() < deadline:
            time.sleep(0.02)
        after = self.cpu_snapshot()
        delta = {k: round(after[k] - before[k], 2) for k in before}
        if "load_client" in delta:
            delta["postgres"] = round(delta["postgres"] - delta["load_backends"], 2)
            delta["load"] = round(delta.pop("load_client") + delta.pop("load_backends"), 2)
        return delta

    def wait_for_quiet(self) -> float:
        """Before a measurement, wait (up to --quiet-timeout s) until the rest of the machine is
        idle: under 10% of all cores busy over half a second. Returns the last load seen."""
        deadline = time.monotonic() + self.args.quiet_timeout
        waited = False
        while True:
            c0 = cpu_busy_seconds()
            time.sleep(0.5)
            util = (cpu_busy_seconds() - c0) / (0.5 * os.cpu_count())
            if util < 0.10:
                if waited:
                    log(f"  ... machine quiet again ({100 * util:.0f}% busy)")
                return util
            if time.monotonic() >= deadline:
                log(f"  machine still {100 * util:.0f}% busy by something else after "
                    f"{self.args.quiet_timeout:.0f} s: measuring anyway")
                return util
            if not waited:
                log(f"  machine {100 * util:.0f}% busy by something else: waiting for it to settle")
                waited = True

    def pg_dump_wrapper_dir(self) -> Path:
        """A bin dir whose pg_dump runs the real one under the RSS recorder (BackupOptions.pg_bin_dir)."""
        d = self.work / "pgbin"
        d.mkdir(exist_ok=True)
        wrapper = d / "pg_dump"
        inner = " ".join(f"'{a}'" for a in rss_wrapped([str(PG_BIN / "pg_dump")], "@RSS@"))
        inner = inner.replace("'@RSS@'", '"$DBOPS_BENCH_PG_DUMP_RSS"')
        wrapper.write_text(f'#!/bin/sh\nexec {inner} "$@"\n')
        wrapper.chmod(0o755)
        return d

    def measure_pipeline_local(self, db: str, threads: int, level: int | None = None, profile: bool = False) -> dict:
        level = BackupOptions().zstd_level if level is None else level
        root = self.work / "store"
        shutil.rmtree(root, ignore_errors=True)
        r = self._run_child({"mode": "backup", "store": "local", "root": str(root), "target": db,
                             "dsn": self.cluster.dsn(db), "zstd_threads": threads, "zstd_level": level,
                             "profile": profile, "pg_bin_dir": str(self.pg_dump_wrapper_dir())})
        on_disk = (root / r["object_key"]).stat().st_size
        if on_disk != r["stored_bytes"]:
            raise SystemExit(f"stored object is {on_disk} bytes, the manifest says {r['stored_bytes']}")
        shutil.rmtree(root, ignore_errors=True)
        return r

    def measure_pipeline_s3(self, db: str, threads: int) -> dict:
        prefix = f"pipeline-{self._child_seq}"
        r = self._run_child({"mode": "backup", "store": "s3", "prefix": prefix, "endpoint_url": self.s3.endpoint_url,
                             "target": db, "dsn": self.cluster.dsn(db), "zstd_threads": threads,
                             "pg_bin_dir": str(self.pg_dump_wrapper_dir())})
        client = self.s3.s3_client()
        head = client.head_object(Bucket=S3_BUCKET, Key=f"{prefix}/{r['object_key']}")
        if head["ContentLength"] != r["stored_bytes"]:
            raise SystemExit(f"S3 object is {head['ContentLength']} bytes, the manifest says {r['stored_bytes']}")
        for obj in client.list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix + "/").get("Contents", []):
            client.delete_object(Bucket=S3_BUCKET, Key=obj["Key"])
        return r

    def measure_boto3_upload(self, nbytes: int) -> dict:
        path = self.work / "random.bin"
        with open(path, "wb") as fh:
            left = nbytes
            while left:
                n = min(left, 8 * MIB)
                fh.write(os.urandom(n))
                left -= n
        key = f"upload-{self._child_seq}"
        try:
            r = self._run_child({"mode": "upload", "file": str(path), "key": key, "endpoint_url": self.s3.endpoint_url})
        finally:
            path.unlink()
        self.s3.s3_client().delete_object(Bucket=S3_BUCKET, Key=key)
        return r

    # -- driver -------------------------------------------------------------------------------

    def run_dataset(self, name: str, target_bytes: int) -> dict:
        db = {"app": self.build_app, "pgbench": self.build_pgbench, "hash": self.build_hash}[name](target_bytes)
        db_size = self.cluster.execute("SELECT pg_database_size(current_database())", dbname=db)[0][0]
        dump_bytes, warm_s = self.dump_size(db)  # the warm-up run, which also gives the real size
        log(f"{name}: database {db} is {db_size / 1e6:.0f} MB on disk, pg_dump -Fc -Z0 gives "
            f"{dump_bytes / 1e6:.0f} MB (warm-up took {warm_s:.1f} s)")
        res: dict = {"database": db, "database_bytes": db_size, "dump_z0_bytes": dump_bytes, "warmup_seconds": warm_s,
                     "measurements": {}}
        rounds = []
        for rnd in range(self.args.repeat):
            if self.args.repeat > 1:
                log(f"  round {rnd + 1} of {self.args.repeat}")
            rounds.append(self.one_round(name, db, rnd))
        # Per measurement, the run with the median wall time (the lower middle one for even
        # counts) and the fastest run (the least disturbed by anything else on the machine).
        m = res["measurements"]
        res["best"] = {}
        for key in rounds[0]:
            runs = sorted((rd[key] for rd in rounds), key=lambda r: r["seconds"])
            m[key] = dict(runs[(len(runs) - 1) // 2], runs_seconds=[rd[key]["seconds"] for rd in rounds])
            res["best"][key] = runs[0]
        res["rounds"] = rounds
        if any(k.startswith("c_threads") for k in m):
            sweep = {t: m[f"c_threads{t}"] for t in (0, 1, 2) if f"c_threads{t}" in m} | {THREADS: m["c"]}
            res["zstd_threads_seconds"] = {str(t): sweep[t]["seconds"] for t in sorted(sweep)}
            res["best_zstd_threads"] = min(sweep, key=lambda t: sweep[t]["seconds"])
            log(f"  fastest zstd_threads: {res['best_zstd_threads']} ({res['zstd_threads_seconds']})")
        if "c" in m and "b3" in m:
            res["c_vs_b3"] = paired_ratios(rounds, "c", "b3")
            log(f"  (c)/(b3): median {res['c_vs_b3']['median']:.2f} of per-round ratios "
                f"{', '.join(f'{x:.2f}' for x in res['c_vs_b3']['rounds'])}")
        if "c_load" in m and "b3_load" in m:
            res["c_vs_b3_load"] = paired_ratios(rounds, "c_load", "b3_load")
            log(f"  (c)/(b3) under load: median {res['c_vs_b3_load']['median']:.2f} of per-round ratios "
                f"{', '.join(f'{x:.2f}' for x in res['c_vs_b3_load']['rounds'])}")
        if self.args.profile:
            prof = self.measure_pipeline_local(db, THREADS, profile=True)
            res["profile"] = prof["profile"]
            log(f"  (c) under cProfile: {prof['seconds']:.2f} s\n{prof['profile']}")
            if self.args.load:
                self.loaded = True
                try:
                    prof = self.measure_pipeline_local(db, THREADS, profile=True)
                finally:
                    self.loaded = False
                res["profile_load"] = prof["profile"]
                log(f"  (c) under cProfile and load: {prof['seconds']:.2f} s\n{prof['profile']}")
        return res

    def one_round(self, name: str, db: str, rnd: int = 0) -> dict:
        m: dict = {}
        want = set(self.args.only)

        def show(key: str, label: str) -> None:
            r = m[key]
            stored = f", stored {r['stored_bytes'] / 1e6:.1f} MB" if "stored_bytes" in r else ""
            load = (f", pgbench {r['load']['tps_alone']:.0f} TPS alone -> {r['load']['tps_during']:.0f} during"
                    if r.get("load") else "")
            log(f"  {label}: {r['seconds']:.2f} s{stored}, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                f"CPU {100 * r['cpu_util']:.0f}% of {os.cpu_count()} cores ({r['cpu']}){load}")

        if "a" in want:
            m["a"] = self.measure_gzip(db, self.work / f"{db}.dump"); show("a", "(a) pg_dump -Fc (gzip)")
        if "b" in want:
            m["b"] = self.measure_read(db); show("b", "(b) pg_dump -Fc -Z0 > /dev/null")
        for key in ("b2", "b3"):
            if key in want and not self.zstd_cli:
                log(f"  ({key}) skipped: no zstd CLI on PATH (apt-get install zstd)")
        if "b2" in want and self.zstd_cli:
            m["b2"] = self.measure_zstd_cli(db); show("b2", "(b2) pg_dump -Z0 | zstd -1 -T2")
        # (b3) and (c) in alternating order, round by round, so a drift of the machine's speed
        # over a round does not favour either.
        pair = [k for k in ("b3", "c") if k in want and (k != "b3" or self.zstd_cli)]
        for key in (pair if rnd % 2 == 0 else pair[::-1]):
            if key == "b3":
                m["b3"] = self.measure_zstd_cli_file(db); show("b3", f"(b3) pg_dump -Z0 | zstd -{LEVEL} -T1 > FILE")
            else:
                m["c"] = self.measure_pipeline_local(db, THREADS)
                show("c", f"(c) run_backup -> LocalStore (defaults: zstd level {LEVEL}, threads {THREADS})")
        if "c" in want and name == "app" and not self.args.no_sweep:
            for t in (t for t in (0, 1, 2) if t != THREADS):
                m[f"c_threads{t}"] = self.measure_pipeline_local(db, t)
                show(f"c_threads{t}", f"(c) zstd_threads={t}")
            # Informational: what other zstd levels cost (the default is BackupOptions.zstd_level).
            for level in (lv for lv in (1, 2, 3) if lv != LEVEL):
                m[f"c_level{level}"] = self.measure_pipeline_local(db, THREADS, level=level)
                show(f"c_level{level}", f"(c) zstd_level={level}, zstd_threads={THREADS}")
        if self.s3 is not None and "d" in want:
            m["d"] = self.measure_pipeline_s3(db, THREADS); show("d", "(d) run_backup -> S3 (SeaweedFS)")
        if self.s3 is not None and "u" in want and "c" in m:
            m["u"] = self.measure_boto3_upload(m["c"]["stored_bytes"]); show("u", "(u) boto3 upload_fileobj, same bytes")
        if self.args.load:
            self.loaded = True
            try:
                if "b" in want:
                    m["b_load"] = self.measure_read(db); show("b_load", "(b) under load")
                for key in (pair if rnd % 2 == 0 else pair[::-1]):
                    if key == "b3":
                        m["b3_load"] = self.measure_zstd_cli_file(db); show("b3_load", "(b3) under load")
                    else:
                        m["c_load"] = self.measure_pipeline_local(db, THREADS); show("c_load", "(c) under load")
            finally:
                self.loaded = False
        return m

    def run(self) -> None:
        target = int(self.args.size_mb * 1e6)
        if self.args.load:
            self.build_load_db()
        for name in self.args.datasets:
            self.results["datasets"][name] = self.run_dataset(name, target)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def paired_ratios(rounds: list[dict], num: str, den: str) -> dict:
    """num/den wall time per round (the two ran back to back, so each ratio compares runs made
    under the same conditions) and their median (the lower middle one for even counts)."""
    pairs = [(rd[num], rd[den]) for rd in rounds if num in rd and den in rd]
    ratios = [n["seconds"] / d["seconds"] for n, d in pairs]
    # The same with the whole process of each side ((c)'s wall time is the run_backup call;
    # its process also starts Python and imports, ~0.3-0.6 s).
    whole = [n.get("process_seconds", n["seconds"]) / d.get("process_seconds", d["seconds"]) for n, d in pairs]
    mid = (len(ratios) - 1) // 2
    return {"rounds": ratios, "median": sorted(ratios)[mid], "min": min(ratios), "max": max(ratios),
            "process_rounds": whole, "process_median": sorted(whole)[mid]}


def goals(results: dict) -> list[dict]:
    """Each goal checked on the median runs and, with --repeat, on the fastest runs too."""
    rows: list[dict] = []

    def check(dataset: str, what: str, value: float, best: float | None, limit: float, strict: bool = False) -> None:
        ok = (lambda v: v < limit) if strict else (lambda v: v <= limit)
        rows.append({"dataset": dataset, "check": what, "value": value, "pass": ok(value),
                     "best_value": best, "best_pass": ok(best) if best is not None else None,
                     "goal": limit, "op": "<" if strict else "<="})

    for name, ds in results["datasets"].items():
        sets = [ds["measurements"]] + ([ds["best"]] if results.get("repeat", 1) > 1 and "best" in ds else [])

        def both(f):
            vals = [f(m) for m in sets]
            return vals[0], (vals[1] if len(vals) > 1 else None)

        m = ds["measurements"]
        has = lambda *keys: all(k in m for k in keys)  # noqa: E731 - --only may leave some out
        if name == "app":
            if has("c", "a"):
                check(name, "(c)/(a) wall", *both(lambda m: m["c"]["seconds"] / m["a"]["seconds"]), GOAL_APP_VS_GZIP)
                check(name, "stored(c)/stored(a)", *both(lambda m: m["c"]["stored_bytes"] / m["a"]["stored_bytes"]), 1.0)
            if has("c", "b"):
                check(name, "(c)/(b) wall", *both(lambda m: m["c"]["seconds"] / m["b"]["seconds"]), GOAL_APP_VS_READ)
        elif name == "pgbench" and has("c", "a"):
            check(name, "(c)/(a) wall", *both(lambda m: m["c"]["seconds"] / m["a"]["seconds"]), GOAL_PGBENCH_VS_GZIP)
        # Against the same compression done by C tools: the median of the per-round ratios
        # (each round runs (b3) and (c) back to back); on the right, the ratio of the fastest runs.
        for num, den, what in (("c", "b3", "(c)/(b3) wall"), ("c_load", "b3_load", "(c)/(b3) wall, load")):
            if has(num, den):
                pr = paired_ratios(ds["rounds"], num, den)
                best = ds["best"][num]["seconds"] / ds["best"][den]["seconds"] if len(pr["rounds"]) > 1 else None
                check(name, what, pr["median"], best, GOAL_VS_ZSTD_CLI)
        for key in ("c", "c_load", "d"):
            if key in m:
                check(name, f"peak RSS ({key}) MiB", *both(lambda m, k=key: m[k]["peak_rss_mib"]), GOAL_RSS_MIB, strict=True)
        if "d" in m:
            check(name, "(d)/max((c),upload) wall",
                  *both(lambda m: m["d"]["seconds"] / max(m["c"]["seconds"], m["u"]["seconds"])), GOAL_S3)
    return rows


LABELS = {
    "a": "(a) pg_dump -Fc (gzip -6) -f FILE",
    "b": "(b) pg_dump -Fc -Z0 > /dev/null",
    "b2": "(b2) pg_dump -Z0 | zstd -1 -T2",
    "b3": "(b3) pg_dump -Z0 | zstd -3 -T1 > FILE",
    "c": "(c) run_backup -> LocalStore (defaults)",
    "c_threads0": "(c) ... zstd_threads=0",
    "c_threads1": "(c) ... zstd_threads=1",
    "c_threads2": "(c) ... zstd_threads=2",
    "c_level1": "(c) ... zstd_level=1",
    "c_level2": "(c) ... zstd_level=2",
    "c_level3": "(c) ... zstd_level=3",
    "d": "(d) run_backup -> S3 (SeaweedFS)",
    "u": "(u) boto3 upload_fileobj, same bytes",
    "b_load": "(b) under load",
    "b3_load": "(b3) under load",
    "c_load": "(c) under load",
}


def _cpu_cell(cpu: dict, key: str) -> str:
    return f"{cpu[key]:.1f}" if key in cpu else "-"


def report(results: dict) -> str:
    lines = []
    for name, ds in results["datasets"].items():
        lines.append(f"\n{name}: database {ds['database']}, {ds['database_bytes'] / 1e6:.0f} MB on disk, "
                     f"pg_dump -Fc -Z0 = {ds['dump_z0_bytes'] / 1e6:.0f} MB")
        lines.append(f"  {'':<42} {'':>7} {'':>5} {'':>11} {'':>5} {'peak RSS MiB':>13}  "
                     f"{'CPU seconds':-^54}")
        lines.append(f"  {'measurement':<42} {'wall s':>7} {'MB/s':>5} {'stored bytes':>11} {'ratio':>5} "
                     f"{'main':>6} {'pg_dump':>7}  {'ours':>5} {'pg_dump':>7} {'postgres':>8} {'weed':>5} {'load':>5} {'other':>5} "
                     f"{'machine':>7} {'util':>4}  runs (s)")
        for key, r in ds["measurements"].items():
            stored = r.get("stored_bytes")
            ratio = f"{ds['dump_z0_bytes'] / stored:5.2f}" if stored else f"{'':>5}"
            pgd = r.get("pg_dump_rss_mib") if key != "u" else None
            cpu = r["cpu"]
            ours = cpu.get("ours", cpu.get("zstd"))
            lines.append(
                f"  {LABELS.get(key, key):<42} {r['seconds']:7.2f} {ds['dump_z0_bytes'] / 1e6 / r['seconds']:5.0f} "
                f"{stored if stored else '':>11} {ratio} {r['peak_rss_mib']:6.1f} "
                f"{(f'{pgd:.1f}' if pgd is not None else '-'):>7}  {(f'{ours:.1f}' if ours is not None else '-'):>5} "
                f"{_cpu_cell(cpu, 'pg_dump'):>7} {_cpu_cell(cpu, 'postgres'):>8} {_cpu_cell(cpu, 'weed'):>5} {_cpu_cell(cpu, 'load'):>5} "
                f"{_cpu_cell(cpu, 'other'):>5} {_cpu_cell(cpu, 'machine'):>7} {100 * r['cpu_util']:3.0f}%  "
                f"{' '.join(f'{x:.1f}' for x in r.get('runs_seconds', []))}")
        for key, cmp in (("c_vs_b3", "quiet"), ("c_vs_b3_load", "under load")):
            if key in ds:
                pr = ds[key]
                lines.append(f"  (c)/(b3) {cmp}: median {pr['median']:.2f} (runs {', '.join(f'{x:.2f}' for x in pr['rounds'])}); "
                             f"whole processes: median {pr['process_median']:.2f}")
        if "c" in ds["measurements"] and "b3" in ds["measurements"]:
            c, b3 = ds["measurements"]["c"], ds["measurements"]["b3"]
            lines.append(f"  stored bytes (c)/(b3): {c['stored_bytes'] / b3['stored_bytes']:.3f}; "
                         f"an fsync right after (b3) took {b3.get('fsync_after_seconds', 0):.2f} s (not in its wall time)")
        loaded = [(k, r) for k, r in ds["measurements"].items() if r.get("load")]
        if loaded:
            lines.append(f"  background load: {loaded[0][1]['load']['mode']} -c 4 -j 2 on its own database; TPS alone -> during, every run:")
            for key in (k for k, _ in loaded):
                runs = [rd[key]["load"] for rd in ds["rounds"] if key in rd]
                lines.append(f"    {LABELS.get(key, key):<28} " + "  ".join(
                    f"{x['tps_alone']:.0f}->{x['tps_during']:.0f} ({100 * x['tps_ratio']:.0f}%)" for x in runs))
        if "best_zstd_threads" in ds:
            lines.append(f"  fastest zstd_threads: {ds['best_zstd_threads']} "
                         f"({', '.join(f'{t}: {s:.2f} s' for t, s in ds['zstd_threads_seconds'].items())})")
    lines.append("\n  main = the measured process (ours, or zstd for (b2), pg_dump for (a)/(b)); ours = its CPU without\n"
                 "  pg_dump's; load = the background pgbench and its backends (not in postgres);\n"
                 "  other = busy CPU not from these processes (kernel network work, other load on the box);\n"
                 "  machine = all busy CPU during the run; util = machine / (wall x cores); runs = wall of every run,\n"
                 "  the median one is reported")
    repeated = results.get("repeat", 1) > 1
    lines.append("\nGoals" + (" (median runs; fastest runs on the right):" if repeated else ":"))
    for g in results["goals"]:
        line = (f"  {g['dataset']:<8} {g['check']:<28} {g['value']:8.2f}  {'PASS' if g['pass'] else 'MISS'}"
                f"   goal {g['op']} {g['goal']:<5}")
        if g.get("best_value") is not None:
            line += f"   fastest: {g['best_value']:8.2f}  {'PASS' if g['best_pass'] else 'MISS'}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1200, help="target pg_dump -Z0 size per dataset (MB)")
    parser.add_argument("--datasets", default="app,pgbench,hash", help="comma list of app, pgbench, hash")
    parser.add_argument("--only", default=",".join(MEASUREMENTS),
                        help="comma list of the measurements to run (default all: a,b,b2,b3,c,d,u)")
    parser.add_argument("--load", choices=("pgbench", "pgbench-select"),
                        help="also measure (b), (b3) and (c) under a background pgbench -c 4 -j 2 (tpcb-like, or -S)")
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "backup"),
                        help="work directory, removed at the end unless --keep (default benchmarks/.work/backup)")
    parser.add_argument("--skip-s3", action="store_true", help="skip (d) and the boto3 upload")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (and reuse its databases next time)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--profile", action="store_true", help="also run (c) once under cProfile and print it")
    parser.add_argument("--no-sweep", action="store_true",
                        help="on app, skip the extra (c) runs with zstd_threads 0 and 2 and zstd_level 2 and 3")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every measurement N times (rounds interleaved) and report the median run")
    parser.add_argument("--quiet-timeout", type=float, default=60,
                        help="before each measurement wait up to this many seconds for other load on the machine to stop")
    parser.add_argument("--report", metavar="JSON", help="only print the report of an earlier --json file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return 0
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = set(args.datasets) - set(DATASETS)
    if bad:
        parser.error(f"unknown datasets {sorted(bad)}")
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    if set(args.only) - set(MEASUREMENTS):
        parser.error(f"unknown measurements {sorted(set(args.only) - set(MEASUREMENTS))}")

    res = run_bench(Bench(args), "backup_bench", args.keep, goals, report)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
