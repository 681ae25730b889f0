"""The one redaction helper: passwords out of everything that leaves the process (logs, run
metadata, exceptions, alerts, CLI output). Neutral: every layer may import it."""

from __future__ import annotations

import re

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^@/\s]*)(?P<tail>@)", re.I)
_PASSWORD_KV = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def redact(text: str) -> str:
    """Remove passwords from DSNs and key=value connection strings anywhere in ``text``.

    Used on everything that leaves the process: logs, metadata, exceptions, CLI output.
    """
    text = _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _PASSWORD_KV.sub(lambda m: f"{m['head']}***", text)
