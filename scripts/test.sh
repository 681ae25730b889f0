#!/usr/bin/env bash
# The test suite: sets up the machine if needed, then runs every test against real throwaway
# PostgreSQL clusters and a SeaweedFS S3 server started by the fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
