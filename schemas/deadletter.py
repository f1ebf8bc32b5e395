"""Dead letters on ``usage.entries.dlq`` (CONTRACT §5).

``value`` holds the original message bytes: UTF-8 text when they decode as UTF-8, else
base64 with ``"valueEncoding": "base64"``. The key is treated the same way: decoded UTF-8
text, or base64 with ``"keyEncoding": "base64"`` (an addition to §5; message keys are
``runId``s and practically always UTF-8). ``valueEncoding``/``keyEncoding`` are only present
when base64 is used.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any, Final, Literal

from pydantic import Field

from schemas.common import WireModel
from schemas.errors import EntryRejected, RejectionCode

__all__ = ["DeadLetter", "DeadLetterError", "build_dead_letter", "decode_bytes"]


class DeadLetterError(WireModel):
    """Why the entry was rejected."""

    code: RejectionCode
    message: str
    field: str | None = Field(
        description="camelCase dotted path of the offending field, e.g. tokens.reasoning; "
        "null when the whole value is at fault (json, too_large)."
    )


class DeadLetter(WireModel):
    """A rejected message of ``usage.entries``, with where it came from."""

    error: DeadLetterError
    received_at: int = Field(description="When the processor received it, epoch ms.")
    topic: str
    partition: int
    offset: int
    key: str | None = Field(description="The message key as received (null when none).")
    value: str = Field(description="The original message value (UTF-8 text or base64).")
    value_encoding: Literal["base64"] | None = Field(
        default=None, description='"base64" when value is not valid UTF-8; absent otherwise.'
    )
    key_encoding: Literal["base64"] | None = Field(
        default=None, description='"base64" when key is not valid UTF-8; absent otherwise.'
    )


def decode_bytes(data: bytes) -> tuple[str, bool]:
    """``(text, is_base64)``: UTF-8 text when ``data`` decodes, else its base64."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def build_dead_letter(
    raw_value: bytes,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    error: EntryRejected,
    received_at_ms: int,
) -> bytes:
    """The JSON value (UTF-8 bytes) of the dead letter for one rejected message."""
    value, value_b64 = decode_bytes(raw_value)
    doc: dict[str, Any] = {
        "error": error.as_dict(),
        "receivedAt": received_at_ms,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": None,
        "value": value,
    }
    if key is not None:
        doc["key"], key_b64 = decode_bytes(key)
        if key_b64:
            doc["keyEncoding"] = "base64"
    if value_b64:
        doc["valueEncoding"] = "base64"
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


#: The largest dead letter published: the processor creates the DLQ topic with
#: ``max.message.bytes`` = 8 MiB and its producer allows as much; JSON escaping can blow a
#: 1 MiB input (the broker's default limit) up to 6 MiB, so only pathological inputs to the
#: HTTP ingest (bodies up to 5 MiB) ever need cutting.
MAX_DEAD_LETTER_BYTES: Final = 7 * 1024 * 1024 + 512 * 1024
DLQ_TOPIC_MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024


def fit_dead_letter(
    build: Callable[[bytes], bytes], value: bytes, limit: int = MAX_DEAD_LETTER_BYTES
) -> bytes:
    """``build(value)``, or, when that exceeds ``limit``, the letter of the longest prefix of
    ``value`` (whole characters) that fits, marked ``valueTruncated`` with ``valueBytes``."""
    letter = build(value)
    if len(letter) <= limit:
        return letter
    cut = value
    while len(letter) > limit:
        cut = cut[: max(0, len(cut) * limit // len(letter) - 1024)]
        cut = cut.decode("utf-8", "ignore").encode("utf-8")
        letter = build(cut)
    doc = json.loads(letter)
    doc["valueTruncated"] = True
    doc["valueBytes"] = len(value)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
