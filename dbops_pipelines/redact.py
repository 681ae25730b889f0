"""The one redaction helper: passwords out of everything that leaves the process (logs, run
metadata, exceptions, alerts, CLI output). Neutral: every layer may import it.

The patterns follow libpq's own parsing, so whatever libpq would take as a password is hidden:
- URL userinfo: libpq reads credentials up to the last '@' before the first '/', so a raw '@'
  or '?' inside the password is hidden too (percent-encoded ones need nothing special);
- URL query parameters: libpq percent-decodes the keys, so ``?pass%77ord=`` is a password as
  much as ``&PassWord=``; the value ends at the next '&';
- key=value: ``password=x``, ``password = 'x y'``, quoted values with backslash escapes
  (``'it\\'s'``), unquoted values with escaped spaces (``a\\ b``), an unterminated quote (to the end);
- sslpassword (the client key's passphrase) like password; PGPASSWORD=x; and the keys as a
  Python dict or JSON prints them (``'password': 'x'``);
- SQL: the literal after PASSWORD in ``CREATE/ALTER ROLE ... [ENCRYPTED] PASSWORD 'x'`` (as
  pg_stat_statements keeps utility statements and pg_stat_activity shows running ones).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_KEYS = ("password", "sslpassword", "pgpassword")
_KEY = r"(?:ssl|pg)?password"
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^/\s]*)(?P<tail>@)", re.I)
_QUERY_PARAM = re.compile(r"(?P<head>[?&](?P<key>[^=&#\s]+)=)(?P<pw>[^&#\s]*)")
# Not right after ?/&: query values were handled above and end at '&', not at a space.
_PASSWORD_KV = re.compile(
    rf"(?<![?&\w%])(?P<head>{_KEY}\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*(?:'|\Z)|(?:\\.|[^\s\\])+\\?)", re.I | re.S)
# PASSWORD 'x' / E'x' / $$x$$ / $tag$x$tag$, in SQL; '' inside a literal is a quote, not its end.
# Between the keyword and the literal: nothing, spaces, comments; the literal may be U&'...'.
_PASSWORD_IN_SQL = re.compile(
    r"(?P<head>(?<!['\"])\bpassword(?:\s|/\*.*?\*/|--[^\n]*\n)*)"
    r"(?P<pw>(?:[eE]|[uU]&)?'(?:[^'\\]|''|\\.)*(?:'|\Z)|(?P<tag>\$\w*\$).*?(?:(?P=tag)|\Z))", re.I | re.S)
# In a statement's text, what follows the PASSWORD keyword may be any expression: cut it all.
_PASSWORD_KEYWORD_ONWARD = re.compile(r"(?P<head>\bpassword\b).*", re.I | re.S)
_PASSWORD_IN_MAPPING = re.compile(
    rf"""(?P<head>(?P<q>['"]){_KEY}(?P=q)\s*:\s*)(?P<pw>'(?:[^'\\]|\\.)*(?:'|\Z)|"(?:[^"\\]|\\.)*(?:"|\Z))""", re.I | re.S)


def _query_param(m: re.Match) -> str:
    return f"{m['head']}***" if unquote(m["key"]).lower() in _KEYS else m[0]


def redact(text: str) -> str:
    """Remove passwords from DSNs and key=value connection strings anywhere in ``text``.

    Used on everything that leaves the process: logs, metadata, exceptions, CLI output.
    """
    text = _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    text = _QUERY_PARAM.sub(_query_param, text)
    text = _PASSWORD_KV.sub(lambda m: f"{m['head']}***", text)
    text = _PASSWORD_IN_SQL.sub(lambda m: f"{m['head'].rstrip()} '***'", text)
    return _PASSWORD_IN_MAPPING.sub(lambda m: f"{m['head']}{m['pw'][0]}***{m['pw'][0]}", text)


def redact_sql(statement: str) -> str:
    """A SQL statement's text as it may be kept or shown (pg_stat_statements, pg_stat_activity):
    ``redact`` and, when the word PASSWORD appears at all, everything from it on, whatever
    spelling the literal after it has (a comment, U&'', a function call, a new syntax). A query
    that merely reads a column named password loses its tail; no password is ever kept."""
    return _PASSWORD_KEYWORD_ONWARD.sub(lambda m: f"{m['head']} ***", redact(statement))
