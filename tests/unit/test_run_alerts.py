"""Run-tree alerts against a real redis-server: each run's tree (itself and every run
reachable through sub-agent links, each once, cycles cut) is a subject of its own, whatever
order parents and children arrive in; each (rule, run, level) fires once."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from processor.domain.alert_rules import AlertRule
from processor.domain.rollup import AcceptedEntry
from processor.store.keys import Keys
from processor.store.run_alerts import RunAlerts
from processor.store.runs import ALERTS_OUTBOX, RunStore
from tests.unit.test_api_support import subagent, tokens

T0 = 1_733_011_200_000
BUDGET = AlertRule("run-token-budget", "run", "run", "tokens", Decimal("80000"), Decimal("100000"))


class Rig:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis, self.keys = redis, Keys(prefix)
        self.store = RunStore(redis, self.keys, dedup_ttl_s=3600, entry_ttl_s=3600)
        self.alerts = RunAlerts(
            redis, self.keys, [BUDGET], depth_limit=64, children_limit=1000,
            alert_retention_s=3600,
        )  # fmt: skip

    async def apply(self, entries: list[AcceptedEntry]) -> None:
        result = await self.store.apply(entries)
        await self.alerts.evaluate(entries, {e.entry_id for e in result.accepted}, T0 + 10**6)

    async def published(self) -> list[dict[str, Any]]:
        rows = await self.redis.xrange(self.keys.outbox(ALERTS_OUTBOX))
        return [json.loads(f["v"]) for _, f in rows]


async def test_children_before_parents_fire_on_the_root_once(redis: Redis, prefix: str) -> None:
    rig = Rig(redis, prefix)
    await rig.apply([tokens("c1", T0 + 1, "m", 50_000, 0, 1, id="c1-a")])
    await rig.apply([tokens("c2", T0 + 2, "m", 45_000, 0, 1, id="c2-a")])
    assert await rig.published() == []
    link = [
        tokens("root", T0 + 3, "m", 1_000, 0, 1, id="r-a"),
        subagent("root", T0 + 4, "w", "c1", id="r-s1"),
        subagent("root", T0 + 5, "w", "c2", id="r-s2"),
    ]
    await rig.apply(link)
    got = await rig.published()
    assert [(a["subject"]["id"], a["level"], a["observed"]) for a in got] == [
        ("root", "warning", "96000")
    ]
    alert = got[0]
    assert alert["entryId"] == "r-s2" and alert["window"] == {
        "kind": "run",
        "start": T0 + 3,
        "end": None,
    }
    # a grandchild's usage grows every ancestor's tree: root reaches critical, c1 warning
    await rig.apply([subagent("c1", T0 + 6, "w", "g", id="c1-s")])
    await rig.apply([tokens("g", T0 + 7, "m", 31_000, 0, 1, id="g-a")])
    got = await rig.published()
    assert sorted(
        (a["subject"]["id"], a["level"], a["entryId"], a["observed"]) for a in got[1:]
    ) == [
        ("c1", "warning", "g-a", "81000"),
        ("root", "critical", "g-a", "127000"),
    ]
    # re-sent entries and another evaluation of the same batch: nothing new
    await rig.apply([tokens("g", T0 + 7, "m", 31_000, 0, 1, id="g-a")])
    assert len(await rig.published()) == 3


async def test_cycles_and_shared_children_count_once(redis: Redis, prefix: str) -> None:
    rig = Rig(redis, prefix)
    await rig.apply(
        [
            tokens("s", T0, "m", 40_000, 0, 1, id="s-a"),
            subagent("a", T0 + 1, "w", "s", id="a-s"),
            subagent("b", T0 + 2, "w", "s", id="b-s"),
            subagent("root", T0 + 3, "w", "a", id="root-a"),
            subagent("root", T0 + 4, "w", "b", id="root-b"),
            subagent("s", T0 + 5, "w", "root", id="s-root"),  # a cycle
            tokens("root", T0 + 6, "m", 39_000, 0, 1, id="root-t"),
        ]
    )
    # every run's tree is all four runs (through the cycle): 79,000 tokens, below warning
    assert await rig.published() == []
    await rig.apply([tokens("a", T0 + 7, "m", 1_000, 0, 1, id="a-t")])
    got = await rig.published()
    assert sorted(a["subject"]["id"] for a in got) == ["a", "b", "root", "s"]
    assert {(a["level"], a["observed"], a["entryId"]) for a in got} == {("warning", "80000", "a-t")}
