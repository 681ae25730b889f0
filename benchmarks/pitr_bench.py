"""PITR benchmark (issue 10): dbops against pgBackRest and plain tools, side by side in one run.

    .venv/bin/python benchmarks/pitr_bench.py [--work DIR] [--scale 20] [--seconds 30] [--keep]
        [--drain-timeout 180] | tee benchmarks/results/pitr_bench-DATE.txt

One throwaway PostgreSQL 15 cluster (fsync=on, archive_mode=on, max_wal_size=64MB so pgbench
makes many segments) under the work directory (default benchmarks/.work/pitr, removed at the
end unless --keep). pgBackRest comes from Debian (`apt-get install -y pgbackrest`); its config,
repo, spool, lock and log directories live under the work directory, owned by the server's OS
user (`postgres` when run as root), and every pgbackrest command runs as that user.

(1) WAL archiving under `pgbench -c 4 -j 2 -T SECONDS -n` (after `pgbench -i -s SCALE`), with
    archive_command in turn (ALTER SYSTEM + reload):
      cp        test ! -f DIR/%f && cp %p DIR/%f
      pgbackrest  pgbackrest archive-push %p  (archive-async=y, spool-path, process-max=2, zst)
      dbops     .venv/bin/dbops wal-push %p --target app   (local file store, encryption key env)
      dbops-m   .venv/bin/python -m dbops_pipelines.cli_wal wal-push %p --target app
    For each: WAL produced during the run (LSN delta / 16 MiB), segments archived during the run
    (pg_stat_archiver), .ready files during the run (max) and at its end, seconds until no .ready
    file is left after pgbench stops, and segments/s = archived from the start until the backlog
    is empty / that time.
(1b) Backlog drain: archive_command set to '' (paused) during pgbench -T BACKLOG_SECONDS,
    then the command set; seconds until no .ready file is left = the archiver's top speed.
(2) Base backups: `dbops basebackup take app`, `pgbackrest backup --type=full` (zst, start-fast),
    `pg_basebackup -Ft -X fetch --checkpoint=fast -D DIR`: wall time and stored size.
(3) PITR to one target time T (marker rows written before and after it):
    `dbops pitr app --into DIR --port P --to T` against
    `pgbackrest restore --type=time --target=T --target-action=promote` + pg_ctl start + waiting
    until the server is promoted; both copies are checked to hold exactly the marker rows <= T.
"""

from __future__ import annotations

import argparse
import base64
import os
import pwd
import shutil
import subprocess
import sys
import time
from datetime import timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from dbops_pipelines.localdev.pgcluster import PG_OS_USER  # noqa: E402
from dbops_pipelines.localdev.ports import free_port  # noqa: E402

from benchlib import PG_BIN, log, machine_info, pgbench_init, run_bench, start_cluster  # noqa: E402

NAME = "pitr_bench"
KEY_ENV = "DBOPS_BENCH_PITR_KEY"
DB = "app"
SEG = 16 << 20
AS_ROOT = os.geteuid() == 0
VENV_BIN = Path(sys.executable).parent
STANZA = "bench"

GOAL_BASE = 1.2          # dbops base backup wall <= 1.2 x pgBackRest
GOAL_PITR = 1.2          # dbops PITR wall <= 1.2 x pgBackRest


def for_server(path: Path) -> Path:
    """``path`` created 0700 and, as root, owned by the server's OS user."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if AS_ROOT:
        pg = pwd.getpwnam(PG_OS_USER)
        os.chown(path, pg.pw_uid, pg.pw_gid)
    return path


def as_server(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_OS_USER, "--", *cmd] if AS_ROOT else cmd


def du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, **env} if env else None, cwd=cwd, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout[-3000:]}")
    return res


class PitrBench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work).resolve()
        self.cluster = None
        self.copies: list[Path] = []
        self.results: dict = {"machine": machine_info(), "args": vars(args), "archiving": {}, "base": {}, "pitr": {}}

    # -------------------------------------------------------------------------------- setup
    def start(self) -> None:
        self.cluster = c = start_cluster(self.work, NAME)
        w = self.work
        self.key = base64.b64encode(os.urandom(32)).decode()
        self.cp_dir = for_server(w / "cp-archive")
        self.store = for_server(w / "dbops-store")
        self.spool = for_server(w / "dbops-tmp")
        self.fetch_tmp = for_server(w / "dbops-fetch-tmp")
        conf = w / "conf"
        conf.mkdir(mode=0o755, exist_ok=True)
        self.dbops_conf = conf / "dbops.yaml"
        self.dbops_conf.write_text(yaml.safe_dump({
            "storage": {"url": f"file://{self.store}"}, "encryption": {"key_env": KEY_ENV},
            "targets": {DB: {"dsn": c.dsn(DB), "wal": {}}}}))
        os.chmod(self.dbops_conf, 0o644)
        self.dbops_env = {"DBOPS_CONFIG": str(self.dbops_conf), KEY_ENV: self.key, "TMPDIR": str(self.fetch_tmp)}
        # pgBackRest: everything under the work dir, owned by postgres
        self.br_repo = for_server(w / "pgbr-repo")
        br_spool = for_server(w / "pgbr-spool")
        br_lock = for_server(w / "pgbr-lock")
        br_log = for_server(w / "pgbr-log")
        self.br_conf = w / "pgbr-conf" / "pgbackrest.conf"
        self.br_conf.parent.mkdir(mode=0o755, exist_ok=True)
        self.br_conf.write_text(f"""[global]
repo1-path={self.br_repo}
repo1-retention-full=4
compress-type=zst
archive-async=y
spool-path={br_spool}
process-max=2
lock-path={br_lock}
log-path={br_log}
log-level-console=warn
log-level-file=info
start-fast=y

[{STANZA}]
pg1-path={c.data_dir}
pg1-port={c.port}
pg1-socket-path={c.socket_dir}
pg1-user=postgres
""")
        os.chmod(self.br_conf, 0o644)
        self.br = ["pgbackrest", f"--config={self.br_conf}", f"--stanza={STANZA}"]
        self.cmds = {
            "cp": f"test ! -f {self.cp_dir}/%f && cp %p {self.cp_dir}/%f",
            "pgbackrest": f"pgbackrest --config={self.br_conf} --stanza={STANZA} archive-push %p",
            "dbops": f"{VENV_BIN}/dbops wal-push %p --target {DB}",
            "dbops-m": f"{sys.executable} -m dbops_pipelines.cli_wal wal-push %p --target {DB}",
        }
        c.extra_conf = "\n".join([
            "archive_mode = on", f"archive_command = '{self.cmds['cp']}'",
            "max_wal_size = 64MB", "min_wal_size = 32MB", "checkpoint_timeout = 5min"])
        c.env = {"DBOPS_CONFIG": str(self.dbops_conf), KEY_ENV: self.key, "TMPDIR": str(self.spool)}
        c.stop()
        c.start()
        assert c.execute("SHOW fsync")[0][0] == "on"
        log(f"cluster on port {c.port}, archive_mode on, max_wal_size {c.execute('SHOW max_wal_size')[0][0]}")
        c.create_database(DB)
        log(f"pgbench -i -s {self.args.scale} (archiving with cp)...")
        t = pgbench_init(c, DB, self.args.scale)
        log(f"  {t:.1f} s")
        c.execute("CHECKPOINT")
        self.wait_drained(300)
        log("pgbackrest stanza-create...")
        run(as_server([*self.br, "stanza-create"]), cwd=self.work)
        log("  ok")

    def stop(self) -> None:
        for d in self.copies:
            if (d / "postmaster.pid").exists():
                run(as_server([str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(d)]), cwd=self.work, check=False)
        if self.cluster:
            self.cluster.stop()

    # -------------------------------------------------------------------------------- helpers
    def ready(self) -> int:
        d = self.cluster.data_dir / "pg_wal" / "archive_status"
        return sum(1 for n in os.listdir(d) if n.endswith(".ready"))

    def archiver(self) -> tuple[int, int]:
        return tuple(self.cluster.execute("SELECT archived_count, failed_count FROM pg_stat_archiver")[0])

    def lsn(self) -> str:
        return self.cluster.execute("SELECT pg_current_wal_lsn()::text")[0][0]

    def wait_drained(self, timeout: float) -> float | None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.ready() == 0:
                return time.perf_counter() - t0
            time.sleep(0.2)
        return None

    def set_archive_command(self, cmd: str) -> None:
        self.cluster.execute(f"ALTER SYSTEM SET archive_command = '{cmd}'")
        self.cluster.execute("SELECT pg_reload_conf()")
        time.sleep(1)

    def pgbench(self, seconds: int) -> subprocess.Popen:
        c = self.cluster
        return subprocess.Popen([str(PG_BIN / "pgbench"), "-c", "4", "-j", "2", "-T", str(seconds), "-n",
                                 "-h", c.host, "-p", str(c.port), "-U", "postgres", DB],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # -------------------------------------------------------------------------------- (1)
    def archiving(self, method: str) -> dict:
        c = self.cluster
        self.set_archive_command(self.cmds[method])
        c.execute("CHECKPOINT")
        if self.wait_drained(120) is None:
            raise RuntimeError("backlog before the run did not drain")
        a0, f0 = self.archiver()
        l0 = self.lsn()
        log(f"[{method}] archive_command = {self.cmds[method]}")
        t0 = time.perf_counter()
        p = self.pgbench(self.args.seconds)
        max_ready = 0
        while p.poll() is None:
            max_ready = max(max_ready, self.ready())
            time.sleep(0.5)
        t_run = time.perf_counter() - t0
        out = p.stdout.read()
        tps = next((line.split("=")[1].split()[0] for line in out.splitlines() if line.startswith("tps")), "?")
        a1, f1 = self.archiver()
        l1 = self.lsn()
        ready_end = self.ready()
        produced = c.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", params=(l1, l0))[0][0] / SEG
        drain = self.wait_drained(self.args.drain_timeout)
        a2, f2 = self.archiver()
        total = t_run + (drain if drain is not None else self.args.drain_timeout)
        r = {"command": self.cmds[method], "run_s": round(t_run, 1), "tps": tps,
             "wal_produced_segments": round(float(produced), 1), "archived_during_run": a1 - a0,
             "ready_max_during_run": max_ready, "ready_at_end": ready_end,
             "drain_s": None if drain is None else round(drain, 1), "archived_total": a2 - a0,
             "failed": f2 - f0, "segments_per_s": round((a2 - a0) / total, 2),
             "ready_after_drain_timeout": None if drain is not None else self.ready()}
        log(f"  {r}")
        return r

    def backlog(self, method: str) -> dict:
        """Archiving paused (archive_command '') during pgbench -T backlog_seconds, then the
        command set: seconds until the .ready backlog is gone: the archiver's top speed."""
        c = self.cluster
        self.set_archive_command("")
        p = self.pgbench(self.args.backlog_seconds)
        p.wait()
        c.execute("SELECT pg_switch_wal()")
        time.sleep(0.5)
        n = self.ready()
        a0, f0 = self.archiver()
        log(f"[{method}] backlog of {n} .ready segments, draining...")
        t0 = time.perf_counter()
        self.cluster.execute(f"ALTER SYSTEM SET archive_command = '{self.cmds[method]}'")
        self.cluster.execute("SELECT pg_reload_conf()")
        drain = self.wait_drained(self.args.drain_timeout)
        t = time.perf_counter() - t0
        a1, f1 = self.archiver()
        r = {"backlog": n, "drain_s": None if drain is None else round(t, 1), "archived": a1 - a0,
             "failed": f1 - f0, "segments_per_s": round((a1 - a0) / t, 2), "left": self.ready()}
        log(f"  {r}")
        return r

    # -------------------------------------------------------------------------------- (2)
    def base_backups(self) -> None:
        res = self.results["base"]
        dbops = [str(VENV_BIN / "dbops")]
        log("base backup: dbops basebackup take app")
        t0 = time.perf_counter()
        out = run([*dbops, "basebackup", "take", DB], env=self.dbops_env, cwd=self.work).stdout.strip()
        t = time.perf_counter() - t0
        bid = out.splitlines()[-1].strip()
        size = sum(du(p) for p in self.store.rglob(bid) if p.is_dir())
        res["dbops"] = {"seconds": round(t, 2), "stored_bytes": size, "id": bid}
        log(f"  {res['dbops']}")
        log("base backup: pgbackrest backup --type=full")
        t0 = time.perf_counter()
        run(as_server([*self.br, "backup", "--type=full"]), cwd=self.work)
        t = time.perf_counter() - t0
        res["pgbackrest"] = {"seconds": round(t, 2), "stored_bytes": du(self.br_repo / "backup")}
        log(f"  {res['pgbackrest']}")
        log("base backup: pg_basebackup -Ft -X fetch --checkpoint=fast")
        d = self.work / "pg_basebackup"
        t0 = time.perf_counter()
        run([str(PG_BIN / "pg_basebackup"), "-h", self.cluster.host, "-p", str(self.cluster.port), "-U", "postgres",
             "-D", str(d), "-Ft", "-X", "fetch", "--checkpoint=fast"])
        t = time.perf_counter() - t0
        res["pg_basebackup"] = {"seconds": round(t, 2), "stored_bytes": du(d)}
        log(f"  {res['pg_basebackup']}")
        shutil.rmtree(d, ignore_errors=True)

    # -------------------------------------------------------------------------------- (3)
    def pitr(self) -> None:
        c = self.cluster
        res = self.results["pitr"]
        c.execute("CREATE TABLE IF NOT EXISTS marker (id int, at timestamptz DEFAULT clock_timestamp())", dbname=DB)
        log("WAL to replay: pgbench 15 s, marker rows, target time, pgbench 5 s")
        self.pgbench(15).wait()
        for i in range(1, 4):
            c.execute("INSERT INTO marker (id) VALUES (%s)", dbname=DB, params=(i,))
        time.sleep(0.5)
        target = c.execute("SELECT clock_timestamp()")[0][0].astimezone(timezone.utc)
        time.sleep(0.5)
        for i in range(4, 7):
            c.execute("INSERT INTO marker (id) VALUES (%s)", dbname=DB, params=(i,))
        self.pgbench(5).wait()
        c.execute("SELECT pg_switch_wal()")
        if self.wait_drained(self.args.drain_timeout) is None:
            raise RuntimeError("WAL for the PITR target not archived in time")
        time.sleep(2)
        t_iso = target.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        t_br = target.strftime("%Y-%m-%d %H:%M:%S.%f+00")
        res["target"] = t_iso
        res["replay_wal_mb"] = None

        # dbops
        d1 = self.work / "pitr-dbops"
        self.copies.append(d1)
        p1 = free_port()
        cmd = [str(VENV_BIN / "dbops"), "pitr", DB, "--into", str(d1), "--port", str(p1), "--to", t_iso]
        log("PITR: " + " ".join(cmd))
        t0 = time.perf_counter()
        out = run(cmd, env=self.dbops_env, cwd=self.work).stdout
        t = time.perf_counter() - t0
        rows = self.marker_rows(p1)
        res["dbops"] = {"command": " ".join(cmd), "seconds": round(t, 2), "marker_rows": rows}
        log(f"  {res['dbops']}\n{out[-800:]}")
        run(as_server([str(PG_BIN / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(d1)]), cwd=self.work, check=False)

        # pgBackRest
        d2 = for_server(self.work / "pitr-pgbr")
        self.copies.append(d2)
        p2 = free_port()
        cmd = [*self.br, "restore", "--type=time", f"--target={t_br}", "--target-action=promote", f"--pg1-path={d2}"]
        log("PITR: " + " ".join(cmd) + " + pg_ctl start + wait until promoted")
        t0 = time.perf_counter()
        run(as_server(cmd), cwd=self.work)
        t_restore = time.perf_counter() - t0
        # the copy must not archive into the repos nor collide with the running server
        sock = for_server(self.work / "pitr-pgbr-sock")
        with open(d2 / "postgresql.auto.conf", "a") as fh:
            fh.write(f"\nport = {p2}\nunix_socket_directories = '{sock}'\narchive_mode = off\n")
        run(as_server([str(PG_BIN / "pg_ctl"), "start", "-w", "-t", "3600", "-D", str(d2), "-l", str(d2 / "pitr.log")]),
            cwd=self.work)
        import psycopg
        while True:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{p2}/postgres", autocommit=True) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    break
            time.sleep(0.1)
        t = time.perf_counter() - t0
        rows = self.marker_rows(p2)
        res["pgbackrest"] = {"command": " ".join(cmd), "seconds": round(t, 2), "restore_s": round(t_restore, 2),
                             "marker_rows": rows}
        log(f"  {res['pgbackrest']}")
        rc = (d2 / "postgresql.auto.conf").read_text()
        log("  pgbackrest restore_command: " + next((x for x in rc.splitlines() if x.startswith("restore_command")), "?"))
        run(as_server([str(PG_BIN / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(d2)]), cwd=self.work, check=False)

    def marker_rows(self, port: int) -> list[int]:
        import psycopg
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/{DB}", autocommit=True) as conn:
            return [r[0] for r in conn.execute("SELECT id FROM marker ORDER BY id")]

    # -------------------------------------------------------------------------------- run
    def run(self) -> None:
        for m in self.args.methods.split(","):
            try:
                self.results["archiving"][m] = self.archiving(m)
            except Exception as exc:   # report the rest
                log(f"  {m} FAILED: {exc}")
                self.results["archiving"][m] = {"error": str(exc)[:2000]}
        self.results["backlog"] = {}
        for m in self.args.methods.split(","):
            try:
                self.results["backlog"][m] = self.backlog(m)
            except Exception as exc:
                log(f"  {m} backlog FAILED: {exc}")
                self.results["backlog"][m] = {"error": str(exc)[:2000]}
        # both archives from here on, for both PITRs
        both = f"{self.cmds['pgbackrest']} && {self.cmds['dbops-m']}"
        log(f"archive_command for (2) and (3): {both}")
        self.set_archive_command(both)
        self.cluster.execute("SELECT pg_switch_wal()")
        self.wait_drained(self.args.drain_timeout)
        try:
            self.base_backups()
        except Exception as exc:
            log(f"base backups FAILED: {exc}")
            self.results["base"]["error"] = str(exc)[:2000]
        try:
            self.pitr()
        except Exception as exc:
            log(f"PITR FAILED: {exc}")
            self.results["pitr"]["error"] = str(exc)[:2000]


def ratio(a, b):
    try:
        return round(a / b, 2)
    except (TypeError, ZeroDivisionError):
        return None


def goals(res: dict) -> dict:
    g = {}
    arch = res["archiving"]
    d, b = arch.get("dbops", {}), arch.get("pgbackrest", {})
    g["archiving_ratio_dbops_vs_pgbackrest"] = ratio(d.get("segments_per_s"), b.get("segments_per_s"))
    g["archiving_never_behind (dbops, .ready max <= 1 during run, 0 at end)"] = (
        d.get("ready_max_during_run", 99) <= 1 and d.get("ready_at_end", 99) <= 1)
    bl = res.get("backlog", {})
    g["backlog_ratio_dbops_vs_pgbackrest"] = ratio(bl.get("dbops", {}).get("segments_per_s"), bl.get("pgbackrest", {}).get("segments_per_s"))
    g["backlog_ratio_dbops-m_vs_pgbackrest"] = ratio(bl.get("dbops-m", {}).get("segments_per_s"), bl.get("pgbackrest", {}).get("segments_per_s"))
    g["archiving_at_least_as_fast (dbops, under load and backlog)"] = (
        (g["archiving_ratio_dbops_vs_pgbackrest"] or 0) >= 1.0 and (g["backlog_ratio_dbops_vs_pgbackrest"] or 0) >= 1.0)
    dm = arch.get("dbops-m", {})
    g["archiving_ratio_dbops-m_vs_pgbackrest"] = ratio(dm.get("segments_per_s"), b.get("segments_per_s"))
    base = res["base"]
    g["base_ratio_dbops_vs_pgbackrest"] = ratio(base.get("dbops", {}).get("seconds"), base.get("pgbackrest", {}).get("seconds"))
    g["base_within_1.2x"] = (g["base_ratio_dbops_vs_pgbackrest"] or 99) <= GOAL_BASE
    g["base_size_ratio_dbops_vs_pgbackrest"] = ratio(base.get("dbops", {}).get("stored_bytes"), base.get("pgbackrest", {}).get("stored_bytes"))
    p = res["pitr"]
    g["pitr_ratio_dbops_vs_pgbackrest"] = ratio(p.get("dbops", {}).get("seconds"), p.get("pgbackrest", {}).get("seconds"))
    g["pitr_within_1.2x"] = (g["pitr_ratio_dbops_vs_pgbackrest"] or 99) <= GOAL_PITR
    g["pitr_same_point"] = p.get("dbops", {}).get("marker_rows") == p.get("pgbackrest", {}).get("marker_rows") == [1, 2, 3]
    return g


def report(res: dict) -> str:
    L = ["", "=" * 100, f"PITR benchmark  machine {res['machine']}  args {res['args']}", ""]
    L.append("(1) WAL archiving under pgbench -c 4 -j 2 -T %s -n (scale %s, max_wal_size 64MB)" % (res["args"]["seconds"], res["args"]["scale"]))
    L.append(f"{'method':<11}{'tps':>8}{'WAL segs':>10}{'arch.run':>9}{'.ready max':>11}{'.ready end':>11}{'drain s':>9}{'arch.tot':>9}{'failed':>7}{'segs/s':>8}")
    for m, r in res["archiving"].items():
        if "error" in r:
            L.append(f"{m:<11} ERROR {r['error'][:300]}")
            continue
        L.append(f"{m:<11}{r['tps']:>8}{r['wal_produced_segments']:>10}{r['archived_during_run']:>9}{r['ready_max_during_run']:>11}"
                 f"{r['ready_at_end']:>11}{str(r['drain_s']):>9}{r['archived_total']:>9}{r['failed']:>7}{r['segments_per_s']:>8}")
    for m, r in res["archiving"].items():
        L.append(f"  {m}: archive_command = {r.get('command', '?')}")
    L.append("")
    L.append("(1b) Backlog drain: archiving paused during pgbench -T %s, then the command set" % res["args"]["backlog_seconds"])
    for m, r in res.get("backlog", {}).items():
        if "error" in r:
            L.append(f"  {m:<11} ERROR {r['error'][:300]}")
        else:
            L.append(f"  {m:<11} {r['backlog']:>4} .ready -> drained in {r['drain_s']} s, {r['archived']} archived, "
                     f"{r['failed']} failed, {r['segments_per_s']} segments/s, {r['left']} left")
    L.append("")
    L.append("(2) Base backups")
    for m, r in res["base"].items():
        if isinstance(r, dict):
            L.append(f"  {m:<14}{r['seconds']:>8.2f} s {r['stored_bytes'] / 2**20:>10.1f} MiB stored")
        else:
            L.append(f"  {m}: {r}")
    L.append("")
    L.append("(3) PITR to %s" % res["pitr"].get("target"))
    for m, r in res["pitr"].items():
        if isinstance(r, dict):
            L.append(f"  {m:<14}{r['seconds']:>8.2f} s  marker rows {r['marker_rows']}  ({r['command']})")
        elif m == "error":
            L.append(f"  ERROR {r}")
    L.append("")
    L.append("Ratios and goals")
    for k, v in res["goals"].items():
        L.append(f"  {k}: {v}")
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "pitr"))
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--backlog-seconds", type=int, default=15)
    ap.add_argument("--drain-timeout", type=float, default=180)
    ap.add_argument("--methods", default="cp,pgbackrest,dbops,dbops-m")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not shutil.which("pgbackrest"):
        raise SystemExit("pgbackrest not installed: apt-get install -y pgbackrest")
    bench = PitrBench(args)
    run_bench(bench, NAME, args.keep, goals, report)


if __name__ == "__main__":
    main()
