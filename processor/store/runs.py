"""Run rollups in Redis: one atomic script call per batch (or per bounded chunk of one).

The write side. A batch is folded per run (``fold_batch``), encoded once, and applied by
``apply_batch.lua``, which checks every group before it writes any and writes the
partitions' next offsets in the same step as the effects. Everything here survives a
retry: a plan remembers which groups are resolved, and the script recognises its own
earlier writes by the batch's token, so a reply lost to a broken connection never turns
an applied entry into a duplicate or applies it twice.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import msgpack  # type: ignore[import-untyped]
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from processor.domain.alert_rules import AlertRule
from processor.domain.alerts import run_checks
from processor.domain.fold import AcceptedEntry, RunDelta, fold_batch, fold_run
from processor.domain.windows import Retention
from processor.store.keys import Keys
from processor.store.tree_totals import MAX_NODES as MAX_TREE_NODES
from processor.store.user_payload import Alerting, Invoiced, WindowIdent, user_payloads

_APPLY_LUA = resources.files("processor.store").joinpath("apply_batch.lua").read_text("utf-8")

#: Entry bodies per script call: a batch of maximum-size entries (5,000 by default x
#: 64 KiB) is split into calls of at most this much, so no argument or reply nears
#: Redis' limits.
CALL_MAX_BYTES = 8 * 1024 * 1024

# Each round applies groups or strictly shrinks them (seen ids dropped, overflowing or
# failing groups split), so this bounds only races between workers re-sending the same
# ids at the same moment.
_MAX_ROUNDS = 50

# Errors that say Redis cannot take writes right now, not that the script is wrong.
_TRANSIENT_PREFIXES = (
    "OOM",
    "BUSY",
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOSCRIPT",
)

Group = tuple[list[AcceptedEntry], RunDelta]

_NO_GROUPS: bytes = msgpack.packb({"fields": [], "seen": [], "groups": [], "users": []})

#: Windows kept as the settings' defaults do (hour 14 days, day 400 days, month for ever).
DEFAULT_RETENTION = Retention(hour_s=14 * 86400, day_s=400 * 86400, month_s=0)

#: Outbox of invoice messages (new invoices, adjustments) for the relay to publish.
INVOICES_OUTBOX = "invoices"
#: Outbox of alerts (CONTRACT §4) for the relay to publish on the notifications topic.
ALERTS_OUTBOX = "alerts"


class StaleOffsets(Exception):
    """Redis no longer holds the offsets this worker last wrote for some partitions.

    Redis lost writes (a failover to a lagging replica, a restored snapshot) or another
    worker moved the partitions on. Nothing of the call was written; ``stored`` maps
    each such offset field to what Redis holds (None: nothing).
    """

    def __init__(self, stored: dict[str, str | None]) -> None:
        super().__init__(f"offsets moved under this worker: {stored}")
        self.stored = stored


@dataclass(frozen=True, slots=True)
class OffsetUpdate:
    """The partitions of a batch: what Redis must hold, and what to write once applied."""

    key: str
    #: (field, expected offset or "" for none, next offset after the batch)
    parts: list[tuple[str, str, str]]


@dataclass(slots=True)
class ApplyResult:
    accepted: list[AcceptedEntry] = field(default_factory=list)
    duplicates: list[AcceptedEntry] = field(default_factory=list)
    #: entries that would take a counter of their run or user past 64 bits, with the
    #: counter name: not applied (the caller dead-letters them as ``invariant``)
    overflowed: list[tuple[AcceptedEntry, str]] = field(default_factory=list)
    #: entries on which the script itself failed, with the error: not applied (the
    #: caller dead-letters them as ``internal``)
    failed: list[tuple[AcceptedEntry, str]] = field(default_factory=list)
    offsets_written: bool = False
    #: sub-agent runs a run-tree evaluation did not follow: beyond the children limit
    #: of their parent, and trees cut at the depth limit
    children_cut: int = 0
    depth_cut: int = 0


@dataclass(slots=True)
class _Call:
    groups: list[int]  # indices into the plan's pending groups
    payload: bytes
    blob: bytes
    #: (tenant, user, month) of every month the call's users touch, in payload order
    months: list[list[tuple[str, str, str]]]
    #: per user, the identity of each window in payload order
    windows: list[list[WindowIdent]]


@dataclass(slots=True)
class ApplyPlan:
    """A batch folded per run and encoded, with what is already resolved of it."""

    token: str
    now_ms: int
    pending: list[Group]
    #: alerting state of the plan: which windows' entries travel with it, batch order
    alerting: Alerting | None
    calls: list[_Call] | None
    result: ApplyResult
    #: groups that must be sent in a call of their own (a call with them failed)
    alone: set[int] = field(default_factory=set)
    #: entry id -> position in the batch, when run rules replay the batch's entries
    order: dict[str, int] | None = None

    @property
    def done(self) -> bool:
        return not self.pending


class RunStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        dedup_ttl_s: int,
        entry_ttl_s: int,
        retention: Retention = DEFAULT_RETENTION,
        rules: Sequence[AlertRule] = (),
        alert_retention_s: int = 90 * 86400,
        depth_limit: int = 64,
        children_limit: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._dedup_ttl_s = dedup_ttl_s
        self._entry_ttl_s = entry_ttl_s
        self._retention = retention
        # both are evaluated in the batch step: user rules on the windows it writes, run
        # rules on the trees of the runs it touches (apply_batch.lua, sections 5 and 5b)
        self._rules = [r for r in rules if r.subject == "user"]
        self._run_checks = run_checks(rules)
        # names the run rules in the marks of runs with nothing left to fire
        self._run_rules_tag = hashlib.sha1(
            json.dumps(self._run_checks).encode(), usedforsecurity=False
        ).hexdigest()[:12]
        self._tree = (depth_limit, children_limit)
        self._alert_ttl_ms = alert_retention_s * 1000
        self._clock = clock
        # Months seen invoiced (an invoice is never deleted by this app): calls touching
        # them carry their adjustments up front instead of learning it from a refusal.
        self._invoiced: Invoiced = set()
        self._apply_script = redis.register_script(_APPLY_LUA)

    # --- write side ---------------------------------------------------------------------

    async def apply(self, entries: Sequence[AcceptedEntry]) -> ApplyResult:
        """Apply a batch exactly once per entry id; returns what was new and what was not."""
        return await self.execute(self.plan(entries))

    def plan(self, entries: Sequence[AcceptedEntry], now_ms: int | None = None) -> ApplyPlan:
        """The CPU part of ``apply``: fold per run and encode the script's arguments.

        Separate so a caller can do it while Redis still works on the previous batch.
        ``now_ms`` decides which windows have expired (default: the store's clock).
        """
        folded, repeats = fold_batch(entries)
        pending: list[Group] = []
        for members, delta in folded:
            pending.extend(_split_by_size(members, delta))
        now = int(self._clock() * 1000) if now_ms is None else now_ms
        alerting = Alerting(self._rules, entries) if self._rules else None
        plan = ApplyPlan(
            secrets.token_hex(6), now, pending, alerting, None, ApplyResult(duplicates=repeats)
        )
        if self._run_checks:
            plan.order = {e.entry_id: i for i, e in enumerate(entries)}
        plan.calls = self._encode(plan)
        return plan

    async def execute(
        self, plan: ApplyPlan, offsets: OffsetUpdate | None = None, *, write_offsets: bool = True
    ) -> ApplyResult:
        """The I/O part of ``apply``; may be called again after it raised (Redis away):
        it goes on from what is resolved.

        ``write_offsets=False`` checks the offsets without moving them (the caller has
        more to do before the partitions may move on, then calls ``write_offsets``).

        With ``offsets``, they are checked by every call (``StaleOffsets`` when Redis
        lost them) and written by the call that completes the batch when nothing had to
        be dead-lettered; otherwise ``result.offsets_written`` stays False and the caller
        publishes the dead letters, then calls ``write_offsets``.
        """
        for _ in range(_MAX_ROUNDS):
            if plan.done:
                return plan.result
            await self._round(plan, offsets, write_offsets)
        raise RuntimeError("could not apply batch: entry ids kept conflicting")

    async def write_offsets(self, offsets: OffsetUpdate) -> None:
        """Write a batch's offsets alone (after its dead letters are acknowledged)."""
        reply = await self._apply_script(
            keys=[], args=[_NO_GROUPS, self._control("", offsets, write=True), b""]
        )
        self._check_stale(json.loads(reply))

    def offset_update(
        self, group_id: str, parts: Iterable[tuple[str, int, int | None, int]]
    ) -> OffsetUpdate:
        """(topic, partition, offset Redis holds or None, next offset) -> an update."""
        return OffsetUpdate(
            self._keys.offsets(group_id),
            [
                (Keys.offset_field(topic, p), "" if held is None else str(held), str(end))
                for topic, p, held, end in parts
            ],
        )

    async def stored_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]]
    ) -> tuple[bool, list[int | None]]:
        """Whether the group has any offset in Redis, and each partition's (None: none)."""
        key = self._keys.offsets(group_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(key)
            pipe.hmget(key, [Keys.offset_field(t, p) for t, p in partitions])
            exists, values = await pipe.execute()
        return bool(exists), [None if v is None else int(v) for v in values]

    async def _round(
        self, plan: ApplyPlan, offsets: OffsetUpdate | None, write_offsets: bool = True
    ) -> None:
        calls = plan.calls if plan.calls is not None else self._encode(plan)
        plan.calls = None
        result = plan.result
        retry: list[Group] = []
        retry_alone: list[Group] = []
        clean = True
        done_calls = 0
        try:
            for ci, call in enumerate(calls):
                write = (
                    write_offsets
                    and offsets is not None
                    and ci == len(calls) - 1
                    and clean
                    and not result.overflowed
                    and not result.failed
                )
                try:
                    raw = await self._apply_script(
                        keys=[],
                        args=[
                            call.payload,
                            self._control(plan.token, offsets, write, plan.now_ms),
                            call.blob,
                        ],
                    )
                except ResponseError as exc:
                    if str(exc).startswith(_TRANSIENT_PREFIXES):
                        raise
                    clean = False
                    done_calls += 1
                    self._isolate(plan, call, str(exc), retry_alone)
                    continue
                reply = json.loads(raw)
                self._check_stale(reply)
                done_calls += 1
                if reply.get("offsets"):
                    result.offsets_written = True
                cut = reply.get("cut")
                if cut:
                    result.children_cut += int(cut[0])
                    result.depth_cut += int(cut[1])
                if reply.get("applied"):
                    for gi in call.groups:
                        result.accepted.extend(plan.pending[gi][0])
                else:
                    clean = False
                    self._note_invoiced(call, reply.get("invoiced") or [])
                    if plan.alerting is not None:
                        for user_index, window_index in reply.get("detail") or []:
                            ident = call.windows[int(user_index)][int(window_index)]
                            plan.alerting.detail.add(ident)
                    self._resolve(plan, call, reply.get("results") or [], retry, retry_alone)
        finally:
            # what is resolved stays resolved; the rest is sent again (re-encoded)
            rest = [plan.pending[i] for call in calls[done_calls:] for i in call.groups]
            plan.pending = retry_alone + retry + rest
            plan.alone = set(range(len(retry_alone)))

    def _resolve(
        self,
        plan: ApplyPlan,
        call: _Call,
        results: list[Any],
        retry: list[Group],
        retry_alone: list[Group],
    ) -> None:
        """Record the verdict of a call that wrote nothing: what is resolved (done by an
        earlier attempt, duplicates, overflowing entries) and what goes again."""
        result = plan.result
        outcomes = {int(index): (kind, rest) for index, kind, *rest in results}
        for local, gi in enumerate(call.groups):
            members, delta = plan.pending[gi]
            outcome = outcomes.get(local)
            if outcome is None:
                retry.append((members, delta))
                continue
            kind, detail = outcome
            if kind == "done":
                result.accepted.extend(members)
            elif kind == "overflow":
                # narrowed down to the entry: the group alone, then each entry alone (a
                # user's counters sum over every group of the call)
                if len(call.groups) > 1:
                    retry_alone.append((members, delta))
                elif len(members) > 1:
                    retry_alone.extend(([e], fold_run([e])) for e in members)
                else:
                    result.overflowed.append((members[0], str(detail[0])))
            else:
                others = set(detail[0] or ())
                ours = set(detail[1] or ()) if len(detail) > 1 else set()
                rest = []
                for e in members:
                    if e.entry_id in ours:
                        result.accepted.append(e)
                    elif e.entry_id in others:
                        result.duplicates.append(e)
                    else:
                        rest.append(e)
                if rest:
                    retry.append((rest, fold_run(rest)))

    def _note_invoiced(self, call: _Call, verdicts: list[Any]) -> None:
        for user_index, month_index, found in verdicts:
            month = call.months[int(user_index)][int(month_index)]
            if found:
                self._invoiced.add(month)
            else:
                self._invoiced.discard(month)

    def note_invoiced(self, tenant: str, user: str, period: str) -> None:
        """This process invoiced a month: its late entries are adjustments from now on."""
        self._invoiced.add((tenant, user, period))

    @staticmethod
    def _isolate(plan: ApplyPlan, call: _Call, error: str, retry_alone: list[Group]) -> None:
        """A call failed inside the script: retry its groups one per call, then their
        entries one by one; an entry that fails alone is reported as failed."""
        for gi in call.groups:
            members, delta = plan.pending[gi]
            if gi not in plan.alone or len(call.groups) > 1:
                retry_alone.append((members, delta))
            elif len(members) > 1:
                retry_alone.extend(([e], fold_run([e])) for e in members)
            else:
                plan.result.failed.append((members[0], error))

    @staticmethod
    def _check_stale(reply: Any) -> None:
        if isinstance(reply, dict) and reply.get("stale"):
            raise StaleOffsets({str(f): (str(v) or None) for f, v in reply["stale"]})

    def _control(
        self, token: str, offsets: OffsetUpdate | None, write: bool, now_ms: int = 0
    ) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            {
                "stats": self._keys.stats(),
                "token": token,
                "dedup_ttl": self._dedup_ttl_s,
                "entry_ttl": self._entry_ttl_s,
                "offsets": None
                if offsets is None
                else [offsets.key, [list(p) for p in offsets.parts]],
                "write_offsets": write,
                "outbox": self._keys.outbox(INVOICES_OUTBOX),
                "alerts_outbox": self._keys.outbox(ALERTS_OUTBOX),
                "alert_ttl_ms": self._alert_ttl_ms,
                "now_ms": now_ms,
                **self._tree_control,
            }
        )

    @property
    def _tree_control(self) -> dict[str, Any]:
        if not self._run_checks:
            return {}
        depth, children = self._tree
        return {
            "run_rules": self._run_checks,
            "run_rules_tag": self._run_rules_tag,
            "tree_depth": depth,
            "tree_children": children,
            "tree_cap": MAX_TREE_NODES,
        }

    def _encode(self, plan: ApplyPlan) -> list[_Call]:
        """The pending groups as script calls of at most CALL_MAX_BYTES of bodies each;
        groups marked ``alone`` get a call of their own."""
        calls: list[_Call] = []
        batch: list[int] = []
        size = 0

        def flush() -> None:
            nonlocal batch, size
            if batch:
                calls.append(self._encode_call(plan, batch))
            batch, size = [], 0

        for gi, (_, delta) in enumerate(plan.pending):
            bytes_ = sum(len(b) for _, _, b in delta.entries)
            if gi in plan.alone:
                flush()
                batch = [gi]
                flush()
                continue
            if batch and size + bytes_ > CALL_MAX_BYTES:
                flush()
            batch.append(gi)
            size += bytes_
        flush()
        return calls

    def _encode_call(self, plan: ApplyPlan, indices: list[int]) -> _Call:
        bodies = _Blob()
        fields: dict[str, int] = {}
        tenants: dict[str, int] = {}
        order = plan.order
        groups = [
            self._group_payload(*plan.pending[i], bodies, fields, tenants, order) for i in indices
        ]
        users = user_payloads(
            self._keys,
            [plan.pending[i] for i in indices],
            now_ms=plan.now_ms,
            keep=self._retention,
            invoiced=self._invoiced,
            tenants=tenants,
            fields=fields,
            alerting=plan.alerting,
        )
        payload = {
            "fields": list(fields),
            "seen": [self._keys.seen_prefix(t) for t in tenants],
            "groups": groups,
            "users": users.payload,
        }
        if order is not None:
            payload["trees"] = [self._keys.tree_alert_keys(t) for t in tenants]
        return _Call(
            indices, msgpack.packb(payload), b"".join(bodies.parts), users.months, users.windows
        )

    def _group_payload(
        self,
        members: Sequence[AcceptedEntry],
        d: RunDelta,
        bodies: _Blob,
        fields: dict[str, int],
        tenants: dict[str, int],
        order: dict[str, int] | None,
    ) -> list[Any]:
        """One group of the Lua payload.

        Entry bodies are appended to ``bodies``, one blob sent as a single argument (one
        argument per body cost more to encode than everything else); the group carries
        its first body's offset and every body's length. Counter names are interned in
        ``fields`` (sent once per call, referred to by 1-based index).
        """
        k = self._keys
        t = d.tenant_id
        own = [b if isinstance(b, bytes) else b.encode() for _, _, b in d.entries]
        body_at = bodies.add(own)
        agent = d.agent_name
        # positional, in the order apply_batch.lua unpacks it (maps cost more to decode)
        payload = [
            _intern(tenants, t),
            d.entry_ids,
            [body_at, *map(len, own)],
            k.run(t, d.run_id),
            k.run_children(t, d.run_id),
            k.run_entries(t, d.run_id),
            k.run_entry_index(t, d.run_id),
            d.run_id,
            k.runs_index(t),
            k.runs_by_user(t, d.user_id),
            k.runs_by_agent(t, agent) if agent else "",
            k.runs_by_user_agent(t, d.user_id, agent) if agent else "",
            d.user_id,
            t,
            agent or "",
            _flat_incr(d.incr, fields),
            d.min_ts,
            d.max_ts,
            sorted(d.children),
            [ts for _, ts, _ in d.entries],
            [k.run_parents(t, c) for c in sorted(d.children)],
        ]
        if order is not None:
            # what each entry adds to its run's tree, for the replay that names the entry
            # whose application crossed a run rule's threshold
            events: list[Any] = []
            for e in members:
                events += _tree_event(e, order)
            payload.append(events)
        return payload


class _Blob:
    """Entry bodies concatenated into one script argument."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, bodies: list[bytes]) -> int:
        """Append ``bodies``; returns the 1-based offset of the first one."""
        at = self.size + 1
        self.parts.extend(bodies)
        self.size += sum(map(len, bodies))
        return at


def _tree_event(e: AcceptedEntry, order: dict[str, int]) -> list[Any]:
    """[position in the batch, cost, tokens, 0 | 1 ok | 2 failed tool call, linked run]
    (the group carries them flat, one list for all its entries)."""
    tokens = e.tokens.total if e.tokens is not None else 0
    tool = 0 if e.kind != "tool" else (1 if e.success else 2)
    cost = e.cost_pico
    return [
        order.get(e.entry_id, 0),
        cost if -_EXACT < cost < _EXACT else str(cost),
        tokens if tokens < _EXACT else str(tokens),
        tool,
        e.child_run_id or "",
    ]


def _split_by_size(members: list[AcceptedEntry], delta: RunDelta) -> list[Group]:
    """A run's group, or several when its bodies exceed what one call may carry (each
    part is applied atomically with its own dedup marks)."""
    sizes = [len(b) for _, _, b in delta.entries]
    if sum(sizes) <= CALL_MAX_BYTES:
        return [(members, delta)]
    parts: list[Group] = []
    chunk: list[AcceptedEntry] = []
    size = 0
    for e, n in zip(members, sizes, strict=True):
        if chunk and size + n > CALL_MAX_BYTES:
            parts.append((chunk, fold_run(chunk)))
            chunk, size = [], 0
        chunk.append(e)
        size += n
    parts.append((chunk, fold_run(chunk)))
    return parts


def _flat_incr(incr: dict[str, int], fields: dict[str, int]) -> list[int | str]:
    """[field index, increment, ...] with the names interned (inline: the hot path)."""
    flat: list[int | str] = []
    for f, v in incr.items():
        index = fields.get(f)
        if index is None:
            index = fields[f] = len(fields) + 1
        flat.append(index)
        flat.append(v if -_EXACT < v < _EXACT else str(v))
    return flat


# Lua numbers are doubles: integers beyond 2^53 travel as strings.
_EXACT = 2**53


def _intern(fields: dict[str, int], name: str) -> int:
    index = fields.get(name)
    if index is None:
        index = fields[name] = len(fields) + 1
    return index
