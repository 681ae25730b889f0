#!/usr/bin/env bash
# Sets up a fresh machine for dbops_pipelines: PostgreSQL server binaries (Debian), a venv in
# .venv with the project and its test dependencies. Safe to run again; it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_MAJOR=15
if [ ! -x "/usr/lib/postgresql/${PG_MAJOR}/bin/initdb" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing PostgreSQL ${PG_MAJOR} server binaries (apt-get install postgresql-${PG_MAJOR})"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-${PG_MAJOR}" >/dev/null
  else
    echo "error: PostgreSQL ${PG_MAJOR} server binaries are missing (/usr/lib/postgresql/${PG_MAJOR}/bin)." >&2
    echo "  install them as root: apt-get install postgresql-${PG_MAJOR}  (or set DBOPS_PG_BIN to their bin dir)" >&2
    exit 1
  fi
fi

# promtool (Debian package prometheus) checks the stats exporter's output in the tests.
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing promtool (apt-get install prometheus)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "error: promtool is missing; install it as root: apt-get install prometheus" >&2
    exit 1
  fi
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)'; then
  echo "error: Python 3.11 or 3.12 is required ($PYTHON is $("$PYTHON" --version 2>&1))." >&2
  echo "  install it, or run with PYTHON=/path/to/python3.11" >&2
  exit 1
fi

stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "creating .venv and installing dbops_pipelines with its test dependencies"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.installed-* && touch "$stamp"
fi
