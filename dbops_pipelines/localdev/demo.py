"""The demo: a throwaway PostgreSQL cluster under .demo/, the sample application database, a
local-directory backup store, and Dagster's webserver and daemon with schedules and sensors on.

What a user needs to carry on with the CLI stays in the demo's folder: the encryption key
(backup.key, 0600, kept across runs), env.sh to `source` (DBOPS_CONFIG and DBOPS_BACKUP_KEY),
and alerts.jsonl, where the alert sensor appends every alert (a `file` sink). The first backup is
taken before Dagster starts (the alert sensor looks at the store on its first tick, as soon as
the daemon is up), so the demo does not open on a CRITICAL "no valid backup"; then `backup_app`
is launched through the UI's GraphQL API, so the asset shows a materialization from the start.

Run through scripts/demo.sh. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from dbops_pipelines import fleet
from dbops_pipelines.backup.catalog import list_backups
from dbops_pipelines.backup.crypto import generate_key
from dbops_pipelines.config import load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import DbopsError
from dbops_pipelines.localdev.dagster_graphql import (FINISHED, DagsterGraphQLError, launch_job, run_status,
                                                      wait_for_location)
from dbops_pipelines.localdev.pgcluster import LocalCluster
from dbops_pipelines.sample.appdb import build_sample_database

ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = ROOT / "workspace.yaml"   # names the code location after the project: dbops_pipelines
KEY_FILE = "backup.key"
ENV_FILE = "env.sh"
METRICS_DB = "dbops_metrics"         # stats history of the demo
ALERTS_FILE = "alerts.jsonl"          # relative: next to dbops.yaml
KEY_VAR = "DBOPS_BACKUP_KEY"


def write_fleet_config(path: Path, app_dsn: str, ui_url: str | None = None, metrics_dsn: str | None = None) -> None:
    storage = {"url": os.environ.get("DBOPS_STORAGE_URL", f"file://{path.parent / 'backups'}")}
    if os.environ.get("DBOPS_S3_ENDPOINT_URL"):
        storage["s3_endpoint_url"] = os.environ["DBOPS_S3_ENDPOINT_URL"]
    alerts: dict = {"sinks": [{"kind": "file", "path": ALERTS_FILE, "min_severity": "info"}]}
    if ui_url:
        alerts = {"ui_base_url": ui_url, **alerts}   # links in alerts point at this demo's UI
    path.write_text(yaml.safe_dump({
        "storage": storage,
        "encryption": {"key_env": KEY_VAR},
        "alerts": alerts,
        # stats history: a database of the demo's own cluster (in production: a separate server)
        **({"metrics": {"dsn": metrics_dsn, "retention_days": 30}} if metrics_dsn else {}),
        "targets": {"app": {"dsn": app_dsn}},
    }, sort_keys=False))


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (never readable by others,
    even for a moment), replacing what was there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def demo_key(base: Path) -> tuple[str, bool]:
    """The demo's encryption key from ``base``/backup.key, made (0600) on the first run; returns
    (key, created). Kept across runs, so the backups of earlier runs stay readable."""
    path = base / KEY_FILE
    if not path.exists():
        key = generate_key()
        _write_private(path, key + "\n")
        return key, True
    key = path.read_text().strip()
    try:
        ok = len(base64.b64decode(key, validate=True)) == 32
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise SystemExit(f"{path} does not hold a key made by `dbops keygen` (base64 of 32 bytes): restore the "
                         f"original, or delete it to make a new one (the demo's existing backups then become unreadable)")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
        print(f"{path} was readable by others: its mode is now 0600", flush=True)
    return key, False


def write_env_file(base: Path, config: Path) -> Path:
    """``base``/env.sh (0600) for `source`: the CLI's config and key. The key is read from
    backup.key when sourced, so it exists in one file only."""
    path = base / ENV_FILE
    _write_private(path, "# The dbops demo: `source` this file, then run .venv/bin/dbops (written by scripts/demo.sh).\n"
                         f"export DBOPS_CONFIG={shlex.quote(str(config))}\n"
                         f'export {KEY_VAR}="$(cat {shlex.quote(str(base / KEY_FILE))})"\n')
    return path


def wait_for_ui(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dagster dev exited with code {proc.returncode}; see the output above")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the Dagster UI did not answer at {url} within {timeout:.0f} s")


def start_dagster_dev(config: Path, home: Path, cluster: LocalCluster, port: int,
                      extra_env: dict | None = None) -> subprocess.Popen:
    """`dagster dev` (webserver + daemon) for a fleet config, with run storage in ``cluster``'s
    database "dagster" (created if missing), in its own process group. The code location is the
    repository's workspace.yaml, so it is named after the project (dbops_pipelines). The key the
    config names must be in the environment or ``extra_env``."""
    if "dagster" not in {r[0] for r in cluster.execute("SELECT datname FROM pg_database")}:
        cluster.create_database("dagster")
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "DBOPS_CONFIG": str(config), "DAGSTER_HOME": str(home),
           "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(cluster.port),
           "DAGSTER_PG_USER": "postgres", "DAGSTER_PG_PASSWORD": "demo-trust-auth", "DAGSTER_PG_DB": "dagster",
           **(extra_env or {})}
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen([str(dagster), "dev", "-w", str(WORKSPACE), "-h", "127.0.0.1",
                             "-p", str(port)], env=env, cwd=home, start_new_session=True)
    wait_for_ui(f"http://127.0.0.1:{port}", proc)
    return proc


def stop_dagster_dev(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        # dagster dev ignores signals unless they reach its whole process group.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def seed_backup(config: Path, target: str = "app") -> str | None:
    """Back ``target`` up with the core (what `dbops backup` does) when the store holds no valid
    full backup of it within its RPO; returns the new backup id, or None when none was needed.

    Run before Dagster starts: the alert sensor ticks as soon as the daemon is up, before a run
    launched through the UI could finish, and would otherwise open the demo on a CRITICAL "no
    valid backup". The key must be in the environment already."""
    ctx = FleetContext(load_config(config))
    now = datetime.now(timezone.utc)
    rpo = timedelta(hours=ctx.config.rpo_hours_for(target))
    if any(e.valid and e.kind == "full" and now - e.started_at < rpo
           for e in list_backups(ctx.store, ctx.read_keys, target, now)):
        return None
    return fleet.backup_target(ctx, target).backup_id


def launch_backup_run(url: str, job: str = "backup_app") -> str | None:
    """Launch ``job`` through the GraphQL API once the code location has loaded; returns its run
    URL, or None after saying why it could not (the demo goes on: launch it from the UI). A
    thread prints one line when the run ends."""
    try:
        location = wait_for_location(url)
        run_id = launch_job(url, job, location)
    except (DagsterGraphQLError, OSError) as exc:
        print(f"warning: {job} could not be launched ({exc}); launch it from the UI", flush=True)
        return None

    def report() -> None:   # one line when it ends, so a failure is not missed
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                status = run_status(url, run_id)
            except (DagsterGraphQLError, OSError):
                return   # the UI is going away: the demo is stopping
            if status in FINISHED:
                outcome = "succeeded" if status == "SUCCESS" else f"ended {status}: open {url}/runs/{run_id}"
                print(f"{job} run {outcome}", flush=True)
                return
            time.sleep(1)

    threading.Thread(target=report, name="first-backup", daemon=True).start()
    return f"{url}/runs/{run_id}"


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (the commands are run from there)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def main() -> int:
    # Started from a script or in the background, SIGINT may arrive ignored; handle both
    # Ctrl-C and SIGTERM explicitly so everything started here is stopped either way.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=str(ROOT / ".demo"))
    parser.add_argument("--rows", type=int, default=20000, help="size of the sample database")
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    parser.add_argument("--pg-port", type=int, default=None, help="demo cluster port (default: a free one)")
    args = parser.parse_args()

    base = Path(args.dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    key, new_key = demo_key(base)
    if os.environ.get(KEY_VAR, key).strip() != key:
        print(f"note: the {KEY_VAR} exported in this shell is not used: the demo's backups are encrypted with "
              f"the key in {base / KEY_FILE}", flush=True)
    os.environ[KEY_VAR] = key   # for the backup taken here and for dagster dev, started from this process
    cluster = LocalCluster(base / "pg", port=args.pg_port)
    cluster.start()
    print(f"demo PostgreSQL running on 127.0.0.1:{cluster.port} (data in {base / 'pg'})", flush=True)
    proc = None
    try:
        if "app" not in {r[0] for r in cluster.execute("SELECT datname FROM pg_database")}:
            print(f"seeding the sample application database 'app' ({args.rows} rows)...", flush=True)
            cluster.create_database("app")
            build_sample_database(cluster.dsn("app"), args.rows)
            cluster.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname="app")
        if METRICS_DB not in {r[0] for r in cluster.execute("SELECT datname FROM pg_database")}:
            cluster.create_database(METRICS_DB)

        url = f"http://127.0.0.1:{args.port}"
        config = base / "dbops.yaml"
        write_fleet_config(config, cluster.dsn("app"), ui_url=url, metrics_dsn=cluster.dsn(METRICS_DB))
        env_file = write_env_file(base, config)
        try:
            seeded = seed_backup(config)
        except DbopsError as exc:   # the demo goes on; the alert sensor will say there is no backup
            print(f"warning: the first backup failed: {exc.message}", flush=True)
        else:
            if seeded:
                print(f"first backup: {seeded} (taken before Dagster starts, so the alert sensor finds a valid "
                      "backup on its first look)", flush=True)
        proc = start_dagster_dev(config, base / "dagster_home", cluster, args.port, extra_env={KEY_VAR: key})
        run_url = launch_backup_run(url)
        dbops = _shown(Path(sys.executable).with_name("dbops"))
        print(f"\nDagster UI: {url}\n"
              + (f"  backup_app run (the asset's materialization): {run_url}\n" if run_url else "")
              + f"  fleet config: {config}\n  backups: {base / 'backups'}\n"
              f"  encryption key: {base / KEY_FILE} ({'new' if new_key else 'kept from an earlier run'}, mode 0600)\n"
              f"  alerts: appended to {base / ALERTS_FILE} (tail -f it); `dbops alerts` lists the open ones\n"
              "Use the CLI from another terminal:\n"
              f"  cd {shlex.quote(str(ROOT))}\n  source {shlex.quote(_shown(env_file))}\n"
              f"  {dbops} backups list\n  {dbops} verify app\n  {dbops} alerts\n"
              "Press Ctrl-C to stop everything.", flush=True)
        proc.wait()
        return proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if proc:
            stop_dagster_dev(proc)
        cluster.stop()
        print("demo stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
