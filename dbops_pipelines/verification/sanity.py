"""The operator's sanity queries, run against the restored copy."""

from __future__ import annotations

import operator
import re
from datetime import datetime

import psycopg

from dbops_pipelines.config import SanityCheck
from dbops_pipelines.redact import redact
from dbops_pipelines.verification.report import Finding

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
_COMPARISON = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")


def meets(value, expect) -> bool:
    """``expect`` is a literal (equality) or "<op> <number>"."""
    if isinstance(expect, str) and (m := _COMPARISON.match(expect)):
        if value is None:
            return False
        try:
            return _OPS[m[1]](float(value), float(m[2]))
        except (TypeError, ValueError):
            return False
    if isinstance(expect, bool) or isinstance(value, bool):
        return value is expect or value == expect
    return value == expect or str(value) == str(expect)


def run_sanity_checks(conn: psycopg.Connection, checks: list[SanityCheck], params: dict) -> tuple[list[dict], list[Finding]]:
    results, findings = [], []
    for check in checks:
        try:
            row = conn.execute(check.sql, params).fetchone()
            value = row[0] if row else None
            ok = meets(value, check.expect)
            error = None
        except psycopg.Error as exc:
            conn.rollback()
            value, ok, error = None, False, redact(str(exc)).strip()
        shown = value.isoformat() if isinstance(value, datetime) else value
        results.append({"name": check.name, "expect": check.expect, "value": shown if error is None else None,
                        "passed": ok, "error": error})
        if not ok:
            message = (f"sanity check {check.name!r} failed to run: {error}" if error
                       else f"sanity check {check.name!r} returned {shown!r}, expected {check.expect!r}")
            findings.append(Finding("sanity", "error", check.name, message, str(check.expect), None if error else str(shown)))
    return results, findings
