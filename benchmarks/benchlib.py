"""What the benchmark scripts share: their own PostgreSQL cluster, datasets built once, CPU accounting.

backup_bench.py and stats_bench.py both measure on a cluster of their own under a work directory
that a --keep run leaves for the next one, stop it and remove that directory however a run ends,
build each dataset database once, and read CPU times from /proc to tell their own load from
everything else on the machine. That machinery lives here once, so a fix to it (the marker that
guards --work, the fsync check, the clean-up, the completeness mark, the CPU sums) reaches every
benchmark. What each benchmark measures and prints stays in its own script.

The scripts run as `.venv/bin/python benchmarks/X.py`: their directory is sys.path[0], so a plain
`import benchlib` finds this file; they put the repository root on sys.path before importing it.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import time
from pathlib import Path

from psycopg import sql

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def log(msg: str) -> None:
    """A timestamped progress line, flushed at once: the runs take minutes and their output is
    often piped into a log file next to the results."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine_info() -> dict:
    """The machine the numbers were measured on, recorded with the results so runs on different
    machines are not compared by mistake."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def run_bench(bench, name: str, keep: bool, goals, report) -> dict:
    """Run a benchmark (``bench.start()``, ``bench.run()``), print its report and return its
    results (``bench.results`` with the total run time and ``goals(results)``).

    However the run ends (an error, Ctrl-C, or SIGTERM, turned into KeyboardInterrupt here so it
    takes the same way), ``bench.stop()`` stops the cluster and the work directory ``bench.work``
    is removed unless ``keep``: no benchmark leaves a server running or its data behind."""
    def on_sigterm(*_) -> None:   # clean up like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    t0 = time.perf_counter()
    try:
        bench.start()
        bench.run()
    finally:
        bench.stop()
        if not keep:
            remove_work_dir(bench.work, name)
    res = bench.results
    res["total_seconds"] = time.perf_counter() - t0
    res["goals"] = goals(res)
    print(report(res))
    print(f"\ntotal run time {res['total_seconds'] / 60:.1f} min")
    return res


# ------------------------------------------------------------------------------------------------
# CPU accounting from /proc
# ------------------------------------------------------------------------------------------------

def cpu_busy_seconds() -> float:
    """Machine-wide busy CPU seconds so far (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> tuple[int, list[int]]:
    """(ppid, [utime, stime, cutime, cstime] in clock ticks) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), [int(x) for x in fields[11:15]]


def tree_cpu_seconds(root: int | None) -> float:
    """CPU used so far by process ``root``, its reaped children (cutime/cstime) and its live
    children. For the postmaster this covers every backend, finished or not."""
    if root is None:
        return 0.0
    try:
        ticks = sum(proc_stat(root)[1])
    except OSError:
        return 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid, t = proc_stat(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
            if ppid == root:
                ticks += t[0] + t[1]
    return ticks / os.sysconf("SC_CLK_TCK")


def postmaster_pid(cluster) -> int | None:
    """The cluster's postmaster, the root of every backend's CPU (see tree_cpu_seconds); None
    if it is not running."""
    try:
        return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# ------------------------------------------------------------------------------------------------
# The benchmark's own cluster under its work directory
# ------------------------------------------------------------------------------------------------

def start_cluster(work: Path, name: str):
    """Start the benchmark's PostgreSQL cluster under ``work``/pg and return it (a LocalCluster).

    ``work`` is claimed with a marker file ``.<name>``: a directory that holds anything else is
    refused, because it is deleted at the end (remove_work_dir). A cluster a --keep run left is
    started again on the port it had, so the datasets it finished are reused. Benchmarks measure
    with fsync=on only; if the server says otherwise the cluster is stopped and the run refused.
    """
    from dbops_pipelines.localdev.pgcluster import LocalCluster

    marker = work / f".{name}"
    if work.exists() and any(work.iterdir()) and not marker.exists():
        raise SystemExit(f"{work} is not empty and not a {name} work directory: "
                         "pass an empty or new --work (it is deleted at the end unless --keep)")
    work.mkdir(parents=True, exist_ok=True)
    marker.touch()
    port_file = work / "pg_port"
    port = int(port_file.read_text()) if port_file.exists() and (work / "pg" / "data" / "PG_VERSION").exists() else None
    cluster = LocalCluster(work / "pg", port=port, fsync=True)
    try:
        cluster.start()
        port_file.write_text(str(cluster.port))
        fsync = cluster.execute("SHOW fsync")[0][0]
        if fsync != "on":
            raise SystemExit(f"the benchmark cluster runs with fsync={fsync}; benchmarks need fsync=on")
    except BaseException:
        cluster.stop()   # the caller never got it, so its own clean-up cannot stop it
        raise
    return cluster


def remove_work_dir(work: Path, name: str) -> None:
    """Delete ``work`` at the end of a run, but only if start_cluster claimed it for ``name``:
    a mistyped --work must not cost anyone a directory."""
    if (work / f".{name}").exists():
        shutil.rmtree(work, ignore_errors=True)


def pgbench_init(cluster, db: str, scale: int) -> float:
    """``pgbench -i -q -s scale`` into ``db``; returns the seconds it took."""
    cmd = [str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale), "-h", cluster.host,
           "-p", str(cluster.port), "-U", "postgres", db]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        raise SystemExit(f"pgbench -i failed:\n{res.stdout}")
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Dataset databases, each built once
# ------------------------------------------------------------------------------------------------

def complete_databases(cluster) -> set[str]:
    """Databases a previous --keep run finished building (marked by a comment, mark_complete)."""
    return {r[0] for r in cluster.execute(
        "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') = 'bench-complete'")}


def fresh_database(cluster, db: str) -> None:
    """An empty ``db``: whatever has the name is a half-built leftover of an interrupted --keep run."""
    cluster.drop_database(db)
    cluster.create_database(db)


def settle(cluster, db: str) -> None:
    """VACUUM and CHECKPOINT after loading, so autovacuum and the checkpointer have nothing
    left to do while we measure."""
    cluster.execute("VACUUM (ANALYZE)", dbname=db)
    cluster.execute("CHECKPOINT")


def mark_complete(cluster, db: str) -> None:
    """Mark ``db`` as fully built (a database comment), the last step of a build: a database
    without the mark is rebuilt."""
    cluster.execute(sql.SQL("COMMENT ON DATABASE {} IS 'bench-complete'").format(sql.Identifier(db)))


def build_once(cluster, db: str, what: str, build, *, extensions: tuple[str, ...] = (),
               time_until_ready: bool = False) -> str:
    """``db`` as a previous --keep run left it, or built now; returns ``db``.

    A dataset takes minutes to build and is measured many times, so a kept work directory keeps
    it. Building: ``build(db)`` fills a fresh database and returns a note for the log ('' for
    none); then the ``extensions`` are created, the database is settled and marked complete.
    The log line "built in N s (note)" times the fill alone, logged right after it; with
    ``time_until_ready`` it times everything up to the mark and is logged last."""
    if db in complete_databases(cluster):
        log(f"reusing database {db}")
        return db
    log(f"building {db}: {what}...")
    fresh_database(cluster, db)
    t0 = time.perf_counter()
    note = build(db)

    def built() -> None:
        log(f"  built in {time.perf_counter() - t0:.0f} s{f' ({note})' if note else ''}")

    if not time_until_ready:
        built()
    for ext in extensions:
        cluster.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext)), dbname=db)
    settle(cluster, db)
    mark_complete(cluster, db)
    if time_until_ready:
        built()
    return db
