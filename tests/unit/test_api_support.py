"""Self-checks of the unit tests' shared helpers (tests/unit/api_support.py)."""

from __future__ import annotations

import json
import socket

from tests.unit.api_support import T0, redis_server, tokens

# --- self-checks of the helpers ------------------------------------------------------------


def test_redis_server_starts_and_stops() -> None:
    with redis_server() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_tokens_builder_writes_cost_as_plain_decimal() -> None:
    e = tokens("r", T0, "m", 10, 5, 1_500_000_000, id="x")
    body = json.loads(e.wire_json)
    assert body["costUsd"] == "0.0015"
    assert body["id"] == "x" and e.tokens is not None and e.tokens.total == 15
