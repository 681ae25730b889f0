"""The demo: a throwaway PostgreSQL cluster under .demo/, the sample application database, a
local-directory backup store, and Dagster's webserver and daemon with schedules and sensors on.

Run through scripts/demo.sh. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from dbops_pipelines.backup.crypto import generate_key
from dbops_pipelines.localdev.pgcluster import LocalCluster
from dbops_pipelines.sample.appdb import build_sample_database

ROOT = Path(__file__).resolve().parents[2]


def write_fleet_config(path: Path, app_dsn: str) -> None:
    storage = {"url": os.environ.get("DBOPS_STORAGE_URL", f"file://{path.parent / 'backups'}")}
    if os.environ.get("DBOPS_S3_ENDPOINT_URL"):
        storage["s3_endpoint_url"] = os.environ["DBOPS_S3_ENDPOINT_URL"]
    path.write_text(yaml.safe_dump({
        "storage": storage,
        "encryption": {"key_env": "DBOPS_BACKUP_KEY"},
        "targets": {"app": {"dsn": app_dsn}},
    }, sort_keys=False))


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
    database "dagster" (created if missing), in its own process group."""
    if "dagster" not in {r[0] for r in cluster.execute("SELECT datname FROM pg_database")}:
        cluster.create_database("dagster")
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "DBOPS_CONFIG": str(config), "DAGSTER_HOME": str(home),
           "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(cluster.port),
           "DAGSTER_PG_USER": "postgres", "DAGSTER_PG_PASSWORD": "demo-trust-auth", "DAGSTER_PG_DB": "dagster",
           **(extra_env or {})}
    if not env.get("DBOPS_BACKUP_KEY"):
        # A key for this session only, never written to disk: export your own
        # DBOPS_BACKUP_KEY (from `dbops keygen`) to read demo backups across sessions.
        env["DBOPS_BACKUP_KEY"] = generate_key()
        print("DBOPS_BACKUP_KEY is not set: using a fresh key for this session only", flush=True)
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen([str(dagster), "dev", "-m", "dbops_pipelines.definitions", "-h", "127.0.0.1",
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

        config = base / "dbops.yaml"
        write_fleet_config(config, cluster.dsn("app"))
        proc = start_dagster_dev(config, base / "dagster_home", cluster, args.port)
        url = f"http://127.0.0.1:{args.port}"
        print(f"\nDagster UI: {url}\n  fleet config: {config}\n  backups: {base / 'backups'}\n"
              f"  CLI: DBOPS_CONFIG={config} .venv/bin/dbops backups list   (needs the same DBOPS_BACKUP_KEY)\n"
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
