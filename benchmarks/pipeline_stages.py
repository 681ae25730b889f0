"""Where the backup pipeline's time goes: its stages re-created one by one, outside the engine.

    .venv/bin/python benchmarks/pipeline_stages.py --dsn postgresql://postgres@127.0.0.1:PORT/DB [--runs 2]

Each variant runs `pg_dump -Fc -Z0` into a pipe (enlarged to 1 MiB, as the engine does) and
consumes it in this process, adding one stage at a time, so the cost of each stage is the
difference between two rows:

  read            os.read(fd, 1 MiB) in a loop, as run_backup's dump_stream does; data discarded
  read+coalesce   the same, but after a short read sleep 2 ms so reads come back fuller
  +zstd tN        zstd compressobj (the engine's level, or --level) with threads=N on every read
  +aes+sha        + encrypt_stream (1 MiB AES-GCM records) + sha256 of the output, as the store does
                  ("+zstd t1 +aes+sha" is how run_backup streams since December 2026)
  full            everything, with coalesced reads (how run_backup streamed before, with t0)

For each: wall time, this process's CPU (user+sys), pg_dump's CPU, and the average read size.
Use it on a database the benchmark kept (backup_bench.py --keep). Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dbops_pipelines.backup.crypto import BackupKey, encrypt_stream  # noqa: E402
from dbops_pipelines.backup.engine import BackupOptions  # noqa: E402
from dbops_pipelines.pgtools import enlarge_pipe  # noqa: E402

READ_SIZE = 1 << 20


LEVEL = BackupOptions().zstd_level


def run(dsn: str, pg_dump: str, *, coalesce: bool, zstd_threads: int | None, encrypt: bool) -> dict:
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([pg_dump, "-Fc", "-Z0", f"--dbname={dsn}"], stdout=subprocess.PIPE, bufsize=0)
    enlarge_pipe(proc.stdout.fileno())
    fd = proc.stdout.fileno()
    reads = raw = 0

    def chunks():
        nonlocal reads, raw
        comp = zstandard.ZstdCompressor(level=LEVEL, threads=zstd_threads).compressobj() if zstd_threads is not None else None
        while data := os.read(fd, READ_SIZE):
            if coalesce and len(data) < READ_SIZE // 2:
                time.sleep(0.002)  # at ~200 MB/s pg_dump writes ~400 kB meanwhile: fits the 1 MiB pipe
            reads += 1
            raw += len(data)
            if comp is not None:
                out = comp.compress(data)
                if out:
                    yield out
        if comp is not None:
            yield comp.flush()

    stored = 0
    if encrypt:
        sha = hashlib.sha256()
        for piece in encrypt_stream(chunks(), BackupKey(os.urandom(32), "STAGES")):
            sha.update(piece)
            stored += len(piece)
    else:
        for piece in chunks():
            stored += len(piece)
    if proc.wait() != 0:
        raise SystemExit("pg_dump failed")
    wall = time.perf_counter() - t0
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall": wall,
        "ours_cpu": (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime),
        "pg_dump_cpu": (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime),
        "reads": reads, "avg_read_kib": raw / max(reads, 1) / 1024, "raw": raw, "stored": stored,
    }


VARIANTS = [
    ("read", dict(coalesce=False, zstd_threads=None, encrypt=False)),
    ("read+coalesce", dict(coalesce=True, zstd_threads=None, encrypt=False)),
    ("+zstd t0", dict(coalesce=False, zstd_threads=0, encrypt=False)),
    ("+zstd t1", dict(coalesce=False, zstd_threads=1, encrypt=False)),
    ("+zstd t0 +aes+sha", dict(coalesce=False, zstd_threads=0, encrypt=True)),
    ("+zstd t1 +aes+sha", dict(coalesce=False, zstd_threads=1, encrypt=True)),
    ("full t0, coalesced", dict(coalesce=True, zstd_threads=0, encrypt=True)),
    ("full t1, coalesced", dict(coalesce=True, zstd_threads=1, encrypt=True)),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--pg-dump", default="/usr/lib/postgresql/15/bin/pg_dump")
    parser.add_argument("--runs", type=int, default=2, help="rounds over all variants; the fastest run of each is shown")
    parser.add_argument("--level", type=int, default=LEVEL, help=f"zstd level (default: the engine's, {LEVEL})")
    args = parser.parse_args()
    globals()["LEVEL"] = args.level
    best: dict[str, dict] = {}
    for rnd in range(args.runs):
        for name, kw in VARIANTS:
            r = run(args.dsn, args.pg_dump, **kw)
            if name not in best or r["wall"] < best[name]["wall"]:
                best[name] = r
            print(f"  round {rnd + 1} {name:<20} {r['wall']:6.2f} s", file=sys.stderr, flush=True)
    print(f"zstd level {LEVEL}; reads = os.read calls")
    print(f"{'variant':<20} {'wall s':>7} {'ours CPU s':>10} {'pg_dump CPU s':>13} {'reads':>7} {'avg read KiB':>12} {'stored MB':>9}")
    for name, _ in VARIANTS:
        r = best[name]
        print(f"{name:<20} {r['wall']:7.2f} {r['ours_cpu']:10.2f} {r['pg_dump_cpu']:13.2f} {r['reads']:7d} "
              f"{r['avg_read_kib']:12.1f} {r['stored'] / 1e6:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
