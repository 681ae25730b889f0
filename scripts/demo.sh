#!/usr/bin/env bash
# The demo: a local PostgreSQL with the sample app database, backed up by Dagster.
# Prints the UI address and the CLI commands (`source .demo/env.sh` gives them the config and the
# key kept in .demo/backup.key); alerts go to .demo/alerts.jsonl. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m dbops_pipelines.localdev.demo "$@"
