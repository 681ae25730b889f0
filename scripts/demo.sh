#!/usr/bin/env bash
# The demo: a local PostgreSQL with the sample app database, backed up by Dagster.
# Prints the UI address; Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m dbops_pipelines.localdev.demo "$@"
