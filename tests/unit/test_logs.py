"""Log lines (USAGE_LOG_FORMAT): JSON objects one per line, keys redacted, no payloads."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from processor.domain.pricing import PriceCatalog, load_catalog
from processor.logs import (
    CHATTY_LOGGERS,
    REDACTED,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    kafka_position,
)
from processor.settings import Settings
from tests.unit.batch_rig import Rig, as_messages, entry, llm


def _record(msg: str, *args: object, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("processor.test", level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_holds_time_level_logger_message_and_the_kafka_position() -> None:
    record = _record("batch of %d", 3, **kafka_position("usage.entries", 2, 41))
    line = JsonFormatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields.keys() == {"time", "level", "logger", "message", "topic", "partition", "offset"}
    assert fields["time"].endswith("Z") and fields["time"][10] == "T"  # ISO 8601, UTC
    assert (fields["level"], fields["logger"], fields["message"]) == (
        "INFO",
        "processor.test",
        "batch of 3",
    )
    assert (fields["topic"], fields["partition"], fields["offset"]) == ("usage.entries", 2, 41)


def test_a_json_line_without_a_position_has_none_and_keeps_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert line.count("\n") == 0
    fields = json.loads(line)
    assert "partition" not in fields and "offset" not in fields
    assert "Traceback" in fields["exception"] and "boom\nsecond line" in fields["exception"]


def test_api_keys_are_redacted_in_both_formats() -> None:
    key = "k3y-s3cr3t"
    record = _record("got %s from a client", f"Bearer {key}")
    assert key not in JsonFormatter([key]).format(record)
    assert REDACTED in json.loads(JsonFormatter([key]).format(record))["message"]
    assert key not in TextFormatter([key]).format(record)


def test_log_format_setting_accepts_text_and_json_only() -> None:
    assert Settings(_env_file=None).log_format == "text"  # type: ignore[call-arg]
    assert Settings(_env_file=None, log_format="JSON").log_format == "json"  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="text, json"):
        Settings(_env_file=None, log_format="xml")  # type: ignore[call-arg]


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    levels = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_logging_puts_every_library_logger_through_the_json_handler() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("faust.worker").info("[^Worker]: Starting...")
    logging.getLogger("aiokafka.consumer").critical("lost")
    logging.getLogger("aiokafka.consumer").warning("retrying")  # below the chatty cut-off
    logging.getLogger("processor.x").debug("not at info")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(f["logger"], f["message"]) for f in lines] == [
        ("faust.worker", "[^Worker]: Starting..."),
        ("aiokafka.consumer", "lost"),
    ]


MARKER = "payload-marker-7f3a"


@pytest.mark.usefixtures("restore_root_logger")
async def test_no_entry_payload_is_logged_at_info_or_below(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Valid, duplicate and every kind of rejected entry through the real pipeline, with
    everything logged down to DEBUG captured: no record at INFO or below quotes an entry."""
    rig = Rig(redis, prefix)
    valid = llm(f"run-{MARKER}", 0, "gpt-4o-mini")
    messages = as_messages(
        [
            valid,
            valid,  # a duplicate
            entry(f"r-{MARKER}", 1, kind="tokens", model="m", tokens={"prompt": 1, "x": 1}),
            entry(f"r-{MARKER}", 2, kind="tokens", model="m", tokens={"prompt": 1, "reasoning": 5}),
            b'{"id": "' + MARKER.encode() + b'", "kind": "tokens"',  # not JSON
            b'{"id": "' + MARKER.encode() + b'", "pad": "' + b"x" * 70_000 + b'"}',  # too large
        ]
    )
    with caplog.at_level(logging.DEBUG):
        outcome = await rig.pipeline.process(messages)
    assert len(outcome.accepted) == 1 and outcome.rejected == 4
    quiet = [r for r in caplog.records if r.levelno <= logging.INFO]
    for record in quiet:
        text = record.getMessage()
        assert MARKER not in text and '"kind"' not in text, text


async def test_a_message_dead_lettered_as_internal_is_logged_with_its_position(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    class ExplodingCatalog(PriceCatalog):
        def price_tokens(self, model: str, **kw: Any) -> Any:
            if model == "explode":
                raise ZeroDivisionError("a bug of ours")
            return super().price_tokens(model, **kw)

    base = load_catalog(None)
    catalog = ExplodingCatalog.__new__(ExplodingCatalog)
    catalog.__dict__.update(base.__dict__)
    rig = Rig(redis, prefix, catalog)
    messages = as_messages([llm("r", 0, "gpt-4o"), llm("r", 1, "explode")], partition=3)
    with caplog.at_level(logging.ERROR, logger="processor.batch_pipeline"):
        await rig.pipeline.process(messages)
    (record,) = [r for r in caplog.records if "internal" in r.getMessage()]
    fields = json.loads(JsonFormatter().format(record))
    assert (fields["topic"], fields["partition"], fields["offset"]) == ("usage.entries", 3, 1)
    assert "ZeroDivisionError" in fields["exception"]
