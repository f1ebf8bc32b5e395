"""Reads of the alerts the batch step stored (``GET /v1/alerts``, CONTRACT §3.4).

Alerts are listed newest first by ``triggeredAt``, ties by ``alertId`` descending (byte
order): the order of ``ZREVRANGEBYSCORE`` on the index read, which is the user's or the
run's index when one is asked for, else the tenant's. Ids are read from the index in
pages (``LIMIT offset count``, the offset only skipping ties of the cursor's score), so a
page costs O(limit) reads when no filter drops records. ``rule`` and ``level`` are checked
on the records; one call scans at most ``SCAN_FACTOR * limit`` ids and then answers what it
found with a cursor to continue (a page may thus hold fewer than ``limit`` alerts, even
none, and still have a ``nextCursor``). Records whose string expired are skipped and
removed from the index read. With both ``user_id`` and ``run_id`` the run's index is read
and its records kept only when they name the user (as ``subject`` or ``userId``).

The cursor is opaque: URL-safe base64 of the last scanned alert's score and id; the next
page starts strictly after it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Final

from redis.asyncio import Redis

from processor.store.keys import Keys

#: One call scans at most this many ids per alert asked for.
SCAN_FACTOR: Final = 20
#: Ids read per round trip at least, when filters may drop records.
_MIN_CHUNK: Final = 50
_CURSOR_TAG: Final = "a1"
_CURSOR_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,4096}", re.ASCII)
#: The order of an alert's members in answers (CONTRACT §4); others follow, as stored.
_FIELDS: Final = (
    "alertId",
    "rule",
    "level",
    "tenantId",
    "subject",
    "window",
    "metric",
    "observed",
    "threshold",
    "triggeredAt",
    "entryId",
    "message",
)

#: (score, alert id) of a position in an index.
Position = tuple[int, str]
#: (alert id, score) rows of an index, newest first.
Rows = list[tuple[str, int]]


class BadCursor(ValueError):
    """The cursor is not one this module produced."""


def encode_cursor(position: Position) -> str:
    score, alert_id = position
    raw = f"{_CURSOR_TAG}|{score}|{alert_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> Position:
    if _CURSOR_RE.fullmatch(cursor) is None:
        raise BadCursor(cursor)
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadCursor(cursor) from None
    tag, _, rest = text.partition("|")
    score, sep, alert_id = rest.partition("|")
    if tag != _CURSOR_TAG or not sep or not alert_id or not score.isascii():
        raise BadCursor(cursor)
    if not score.isdigit() or len(score) > 19:
        raise BadCursor(cursor)
    return int(score), alert_id


def _score(value: Any) -> int:
    return int(float(value))


def _before(member: str, score: int, position: Position) -> bool:
    """Whether (score, member) comes strictly after ``position`` in newest-first order."""
    at, alert_id = position
    return score < at or (score == at and member.encode() < alert_id.encode())


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {name: record[name] for name in _FIELDS if name in record}
    out.update((k, v) for k, v in record.items() if k not in out)
    window = out.get("window")
    if isinstance(window, dict):  # cjson drops a null end
        out["window"] = {"kind": window.get("kind"), "start": window.get("start"),
                         "end": window.get("end")}  # fmt: skip
    return out


class AlertQueries:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def list(
        self,
        tenant: str,
        *,
        user_id: str | None = None,
        run_id: str | None = None,
        rule: str | None = None,
        level: str | None = None,
        since: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of alerts, newest first, and the cursor of the next (None: no more).

        Raises :class:`BadCursor` for a cursor this module did not produce.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        position = None if cursor is None else decode_cursor(cursor)
        if run_id is not None:
            key = self._keys.alerts_by_run(tenant, run_id)
        elif user_id is not None:
            key = self._keys.alerts_by_user(tenant, user_id)
        else:
            key = self._keys.alerts(tenant)
        user_filter = user_id if run_id is not None else None
        filtering = rule is not None or level is not None or user_filter is not None
        floor = 0 if since is None else since
        max_scan = SCAN_FACTOR * limit

        found: list[dict[str, Any]] = []
        expired: list[str] = []
        scanned = 0
        try:
            while True:
                need = limit - len(found)
                size = min(max(need, _MIN_CHUNK) if filtering else need, max_scan - scanned)
                rows, exhausted = await self._ids_after(key, position, floor, size + 1)
                if not rows:
                    if exhausted or position is None:
                        return found, None
                    return found, encode_cursor(position)
                texts: list[str | None] = await self._redis.mget(
                    [self._keys.alert(tenant, member) for member, _ in rows]
                )
                for (member, score), text in zip(rows, texts, strict=True):
                    if len(found) == limit or scanned == max_scan:
                        assert position is not None
                        return found, encode_cursor(position)
                    scanned += 1
                    position = (score, member)
                    if text is None:
                        expired.append(member)
                        continue
                    record = json.loads(text)
                    if rule is not None and record.get("rule") != rule:
                        continue
                    if level is not None and record.get("level") != level:
                        continue
                    if user_filter is not None and not _names_user(record, user_filter):
                        continue
                    found.append(_ordered(record))
                if exhausted:
                    return found, None
        finally:
            if expired:
                await self._redis.zrem(key, *expired)

    async def _ids_after(
        self, key: str, position: Position | None, floor: int, count: int
    ) -> tuple[Rows, bool]:
        """Up to ``count`` (id, score) strictly after ``position`` with score >= ``floor``,
        and whether the index holds no more after them."""
        if position is None:
            rows = await self._redis.zrevrangebyscore(
                key, "+inf", floor, start=0, num=count, withscores=True, score_cast_func=_score
            )
            return [(m, s) for m, s in rows], len(rows) < count
        at, alert_id = position
        if at < floor:
            return [], True
        pipe = self._redis.pipeline(transaction=True)
        pipe.zscore(key, alert_id)
        pipe.zrevrank(key, alert_id)
        pipe.zcount(key, f"({at}", "+inf")
        score, rank, above = await pipe.execute()
        if score is not None and rank is not None and _score(score) == at:
            offset = rank - above + 1  # the ties of ``at`` up to and including alert_id
        else:  # the cursor's alert left the index: count its ties at or above it
            ties: list[str] = await self._redis.zrevrangebyscore(key, at, at)
            offset = sum(1 for t in ties if t.encode() >= alert_id.encode())
        rows = await self._redis.zrevrangebyscore(
            key, at, floor, start=offset, num=count, withscores=True, score_cast_func=_score
        )
        # an alert added meanwhile at the cursor's score may shift the offset: drop repeats
        kept = [(m, s) for m, s in rows if _before(m, s, position)]
        return kept, len(rows) < count


def _names_user(record: dict[str, Any], user_id: str) -> bool:
    subject = record.get("subject")
    if isinstance(subject, dict) and subject.get("type") == "user":
        return subject.get("id") == user_id
    return record.get("userId") == user_id
