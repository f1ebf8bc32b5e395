"""HttpUsageRecorder against a small aiohttp server: batching, re-posts, rejections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from usage_client import HttpUsageRecorder, UsageRecorderError


class Ingest:
    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.fail_next = 0
        self.reject_kind: str | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.posts.append(body["entries"])
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response(
                {"error": {"code": "unavailable", "message": "Kafka is unavailable"}}, status=503
            )
        rejected = [
            {"index": i, "error": {"code": "schema", "message": "no", "field": "kind"}}
            for i, e in enumerate(body["entries"])
            if e["kind"] == self.reject_kind
        ]
        return web.json_response(
            {"accepted": len(body["entries"]) - len(rejected), "rejected": rejected}, status=202
        )


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[Ingest, str]]:
    state = Ingest()
    app = web.Application()
    app.router.add_post("/v1/entries", state.handle)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield state, str(srv.make_url("")).rstrip("/")
    finally:
        await srv.close()


async def test_batches_and_flush_on_exit(ingest: tuple[Ingest, str]) -> None:
    state, url = ingest
    async with HttpUsageRecorder(url, user_id="u", batch_size=3) as rec:
        run = rec.run("r")
        for i in range(7):
            await run.record_custom("c", "n", i)
    assert [len(p) for p in state.posts] == [3, 3, 1]
    assert [e["value"] for p in state.posts for e in p] == list(range(7))
    assert rec.accepted == 7


async def test_retries_a_503_with_the_same_entries(ingest: tuple[Ingest, str]) -> None:
    state, url = ingest
    state.fail_next = 2
    async with HttpUsageRecorder(url, user_id="u", retry_backoff_s=0.01) as rec:
        await rec.run("r").record_tokens("m", prompt=1, completion=2)
    assert len(state.posts) == 3
    assert state.posts[0] == state.posts[1] == state.posts[2]  # same ids re-posted
    assert rec.accepted == 1


async def test_gives_up_after_the_delivery_timeout(ingest: tuple[Ingest, str]) -> None:
    state, url = ingest
    state.fail_next = 10**6
    rec = HttpUsageRecorder(url, user_id="u", retry_backoff_s=0.05, delivery_timeout_s=0.3)
    await rec.run("r").record_custom("c", "n", 1)
    with pytest.raises(UsageRecorderError, match="503"):
        await rec.close()


async def test_rejections_raise(ingest: tuple[Ingest, str]) -> None:
    state, url = ingest
    state.reject_kind = "tool"
    with pytest.raises(UsageRecorderError, match="1 entries rejected"):
        async with HttpUsageRecorder(url, user_id="u") as rec:
            await rec.run("r").record_tool("t", duration_ms=1)


async def test_local_validation(ingest: tuple[Ingest, str]) -> None:
    state, url = ingest
    async with HttpUsageRecorder(url, user_id="u") as rec:
        with pytest.raises(ValueError, match=r"tokens\.reasoning"):
            await rec.run("r").record_tokens("m", prompt=1, completion=1, reasoning=2)
    assert state.posts == []
