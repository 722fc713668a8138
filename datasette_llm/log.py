"""datasette-llm's logger, which never writes an API key it knows of.

Every API key datasette-llm reads for a prompt is remembered (``remember``) for as long as the
process runs; each record logged through ``logger``, its message and any traceback, has those
values replaced by ``[redacted]``. A provider's error can quote the key, in a URL for instance,
and our log lines repeat provider errors.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["REDACTED", "logger", "redact", "remember"]

REDACTED: Final = "[redacted]"
_MIN_LENGTH: Final = 8  # shorter values would redact ordinary words; no real key is this short

_known: set[str] = set()


def remember(secret: str | None) -> None:
    """Remember an API key value, so that no log line shows it, in any form an error may quote
    it in: as it is, without the whitespace around it, and with its control characters escaped
    (a key saved with a newline at its end is quoted by the HTTP library that refuses to send
    it as ``b'Bearer sk-...\\n'``)."""
    if not secret:
        return
    escaped = secret.encode("unicode_escape").decode("ascii")
    for form in (secret, secret.strip(), escaped, escaped.strip()):
        if len(form) >= _MIN_LENGTH:
            _known.add(form)


def redact(text: str) -> str:
    """Return ``text`` with every remembered key value replaced by ``[redacted]``."""
    for secret in sorted(_known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class _Redacting(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not _known:
            return True
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


logger: Final = logging.getLogger("datasette_llm")
logger.addFilter(_Redacting())
