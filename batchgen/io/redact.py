"""Scrubbing credentials out of text that may reach a log line or an error message.

The secret key itself never travels over the wire, so a store cannot echo it; what can leak is
what we (or a library) print: the configured secret, credentials inside a URL, and the parts of a
signed request (signature, credential scope) that some error messages and debug logs repeat.
"""

from __future__ import annotations

import re
from typing import Iterable

MASK = "***"

_PATTERNS = (
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # scheme://user:password@host
    re.compile(r"(?i)((?:x-amz-)?signature=)[0-9a-f]+"),
    re.compile(r"(?i)((?:x-amz-)?credential=)[^,&\s\"']+"),
    re.compile(r"(?i)((?:x-amz-security-token|aws_secret_access_key|aws_session_token)[=:]\s*)[^,&\s\"']+"),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret and every credential-shaped fragment replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text
