"""Restore verification vs a plain `pg_restore -j2`, measured in one run (not a test).

    .venv/bin/python benchmarks/verify_bench.py --scale 80 [--repeat 2] [--keep]

Builds a pgbench database (scale 80 is about 1.2 GB of pg_dump output) on its own cluster with
fsync on, backs it up once with the pipeline, then times:
  (r) reference: `pg_restore -j2` of an equivalent `pg_dump -Fc` file into an empty database;
  (v) `verify_backup`: sweep, scratch database, authenticate + decrypt + restore with 2 jobs,
      row counts, content checksums of small tables, schema fingerprint, drop.
Goal: (v) <= 1.25 x (r).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dbops_pipelines import fleet  # noqa: E402
from dbops_pipelines.config import load_config  # noqa: E402
from dbops_pipelines.context import FleetContext  # noqa: E402
from dbops_pipelines.localdev.pgcluster import LocalCluster  # noqa: E402
from dbops_pipelines.verification.runner import verify_backup  # noqa: E402

GOAL = 1.25


def run(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "verify"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="verification.jobs (the default is 1: see docs/verification.md)")
    args = parser.parse_args()

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cluster = LocalCluster(work / "pg", fsync=True)  # benchmarks never run with fsync off
    cluster.start()
    try:
        bin_dir = cluster.bin_dir
        cluster.create_database("bench")
        print(f"pgbench -i -s {args.scale} ...", flush=True)
        t = run([str(bin_dir / "pgbench"), "-i", "-q", "-s", str(args.scale), cluster.dsn("bench")])
        size = cluster.execute("SELECT pg_database_size('bench')")[0][0]
        print(f"  built in {t:.0f} s, {size / 1e6:.0f} MB on disk", flush=True)

        os.environ["DBOPS_BENCH_KEY"] = base64.b64encode(os.urandom(32)).decode()
        config = work / "dbops.yaml"
        config.write_text(yaml.safe_dump({
            "storage": {"url": f"file://{work / 'store'}"}, "encryption": {"key_env": "DBOPS_BENCH_KEY"},
            "targets": {"bench": {"dsn": cluster.dsn("bench"), "verification": {"jobs": args.jobs}}}}))
        cfg = FleetContext(load_config(config))
        t = time.monotonic()
        manifest = fleet.backup_target(cfg, "bench")
        print(f"  pipeline backup: {time.monotonic() - t:.1f} s, {manifest.raw_bytes / 1e6:.0f} MB dumped, "
              f"{manifest.stored_bytes / 1e6:.0f} MB stored", flush=True)
        dump = work / "bench.pgc"
        run([str(bin_dir / "pg_dump"), "-Fc", "-f", str(dump), cluster.dsn("bench")])

        reference, verification = [], []
        for i in range(args.repeat):
            cluster.create_database(f"ref{i}")
            reference.append(run([str(bin_dir / "pg_restore"), "-j2", "--no-owner", "--no-privileges",
                                  "-d", cluster.dsn(f"ref{i}"), str(dump)]))
            cluster.drop_database(f"ref{i}")
            t = time.monotonic()
            report = verify_backup(cfg, "bench")
            verification.append(time.monotonic() - t)
            assert report.passed, report.summary()
            print(f"  run {i + 1}: reference pg_restore -j2 {reference[-1]:.1f} s, verification {verification[-1]:.1f} s "
                  f"(of which restore {report.rto_seconds:.1f} s)", flush=True)

        r, v = statistics.median(reference), statistics.median(verification)
        print(f"\npgbench scale {args.scale}: {manifest.raw_bytes / 1e6:.0f} MB of pg_dump output, 2 cores")
        print(f"  (r) pg_restore -j2 of a pg_dump -Fc file: {r:.1f} s (median of {args.repeat})")
        print(f"  (v) restore verification:                 {v:.1f} s (median of {args.repeat})")
        print(f"  ratio (v)/(r) = {v / r:.2f}   goal <= {GOAL}   {'PASS' if v / r <= GOAL else 'MISS'}")
        return 0
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
