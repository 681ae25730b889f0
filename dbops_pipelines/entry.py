"""The `dbops` executable. PostgreSQL runs `dbops wal-push` / `dbops wal-fetch` once per WAL file,
so those two go straight to cli_wal, which imports only what they need (about 0.1 s instead of
the ~1 s the whole command line takes to load); everything else goes to cli.main."""

from __future__ import annotations

import sys

FAST = ("wal-push", "wal-fetch")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in FAST:              # the form archive_command and restore_command use
        from dbops_pipelines import cli_wal
        return cli_wal.main(args)
    from dbops_pipelines import cli
    return cli.main(args)
