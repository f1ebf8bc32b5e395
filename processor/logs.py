"""Logging of every process this package runs: text lines, or one JSON object per line.

``USAGE_LOG_FORMAT=json`` is for log shippers: each record is one line holding ``time``
(ISO 8601, UTC), ``level``, ``logger``, ``message``, ``exception`` when there is one, and
the Kafka position (``topic``, ``partition``, ``offset``) when the call passed it with
``extra=``. The handler is installed on the root logger before Faust starts (the worker
runs with ``override_logging=False``), so Faust's, mode's and aiokafka's records come out
in the same format.

Configured API keys are replaced by ``[redacted]`` in every line, whatever logged them:
a key is a credential, and logs travel further than the process.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

LOG_FORMATS: Final = ("text", "json")
#: Attributes a log call may pass with ``extra=`` that the JSON lines carry as fields.
CONTEXT_FIELDS: Final = ("topic", "partition", "offset")
REDACTED: Final = "[redacted]"
TEXT_FORMAT: Final = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"

# Client libraries that log every failed connection attempt: during a 50 s Kafka outage
# they wrote ~59,000 lines. Below debug level the worker reports outages itself, one line
# per change of state (processor.health), and keeps only their critical lines.
CHATTY_LOGGERS: Final = ("aiokafka", "kafka", "faust.transport", "mode.timers")


def kafka_position(topic: str, partition: int, offset: int | None = None) -> dict[str, Any]:
    """``extra=`` of a log call about a partition (and an offset in it)."""
    position: dict[str, Any] = {"topic": topic, "partition": partition}
    if offset is not None:
        position["offset"] = offset
    return position


class _Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        # longest first, so a key that contains another is replaced whole
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class TextFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(TEXT_FORMAT)
        self._redact = _Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._redact = _Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, Any] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            # cached on the record as logging.Formatter does, for the other handlers
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = self._redact(record.exc_text)
        if record.stack_info:
            line["stack"] = self._redact(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def make_formatter(log_format: str, secrets: Iterable[str] = ()) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(secrets)
    if log_format == "text":
        return TextFormatter(secrets)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")


def configure_logging(
    level: str,
    log_format: str = "text",
    *,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
    path: Path | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one writing ``log_format`` lines to
    ``path`` (appended) or ``stream`` (default stderr) at ``level``; returns the handler."""
    handler: logging.Handler
    if path is not None:
        # append: the demo's worker writes to the same file through its own descriptor
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(log_format, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = level.lower() != "debug"
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL if quiet else logging.NOTSET)
    # warnings.warn() output becomes log records in the same format, not raw stderr text
    logging.captureWarnings(True)
    return handler
