"""One-shot preparation for the docker-compose deployment (service `setup`).

1. Creates the backup bucket named in the fleet config (storage.url, $DBOPS_CONFIG) if it does
   not exist, waiting for the S3 service to come up.
2. If $SEED_DSN is set: creates the pg_stat_statements extension in that database and, if it has
   no tables in schema public yet, loads the sample application data ($SEED_ROWS rows).
   A database that already has tables is left alone, so restarts are harmless.

Exits non-zero on failure, which keeps the code server (depends_on: setup) from starting.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import boto3
import psycopg
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dbops_pipelines.config import load_config
from dbops_pipelines.redact import redact
from dbops_pipelines.sample.appdb import build_sample_database

WAIT_SECONDS = 180


def create_bucket(url: str, endpoint_url: str | None, region: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "s3":
        print(f"storage.url is {url}: no bucket to create")
        return
    bucket = parts.netloc
    s3 = boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      connect_timeout=3, read_timeout=15),
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            s3.head_bucket(Bucket=bucket)
            print(f"bucket {bucket} exists")
            return
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status == 404:
                extra = {} if region == "us-east-1" else {
                    "CreateBucketConfiguration": {"LocationConstraint": region}}
                try:
                    s3.create_bucket(Bucket=bucket, **extra)
                    print(f"created bucket {bucket}")
                    return
                except ClientError as create_exc:
                    code = create_exc.response.get("Error", {}).get("Code", "")
                    if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        continue  # created meanwhile: head_bucket again
                    error: Exception = create_exc
            elif status in (400, 401, 403):
                sys.exit(f"S3 refused access to bucket {bucket} (HTTP {status}): check "
                         "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in docker/.env")
            else:
                error = exc  # 5xx while SeaweedFS starts
        except BotoCoreError as exc:  # connection refused while it starts
            error = exc
        if time.monotonic() > deadline:
            sys.exit(f"S3 at {endpoint_url or 'AWS'} not usable after {WAIT_SECONDS}s: {error}")
        time.sleep(2)


def seed(dsn: str, rows: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
            break
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                sys.exit(f"cannot connect to {redact(dsn)}: {redact(str(exc).strip())}")
            time.sleep(2)
    with conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    if tables:
        print(f"{redact(dsn)} already has {tables} tables: not loading sample data")
        return
    print(f"loading sample data ({rows} rows) into {redact(dsn)}")
    counts = build_sample_database(dsn, rows, anchor=datetime.now(timezone.utc))
    print(f"loaded {sum(counts.values())} rows in {len(counts)} tables")


def main() -> None:
    cfg = load_config()
    create_bucket(cfg.storage.url, cfg.storage.s3_endpoint_url, cfg.storage.s3_region)
    dsn = os.environ.get("SEED_DSN")
    if dsn:
        seed(dsn, int(os.environ.get("SEED_ROWS", "10000")))


if __name__ == "__main__":
    main()
