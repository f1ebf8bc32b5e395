"""Run-tree alerts against a real redis-server: each run's tree (itself and every run
reachable through sub-agent links, each once, cycles cut) is a subject of its own, whatever
order parents and children arrive in; each (rule, run, level) fires once, decided in the
batch step and named after the entry whose application crossed."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from processor.domain.alert_rules import AlertRule
from processor.domain.fold import AcceptedEntry
from processor.store.keys import Keys
from processor.store.runs import ALERTS_OUTBOX, ApplyResult, RunStore
from tests.unit.api_support import subagent, tokens

T0 = 1_733_011_200_000
BUDGET = AlertRule("run-token-budget", "run", "run", "tokens", Decimal("80000"), Decimal("100000"))


class Rig:
    def __init__(
        self, redis: Redis, prefix: str, *, depth_limit: int = 64, children_limit: int = 1000
    ) -> None:
        self.redis, self.keys = redis, Keys(prefix)
        self.store = RunStore(
            redis, self.keys, dedup_ttl_s=3600, entry_ttl_s=3600, rules=[BUDGET],
            alert_retention_s=3600, depth_limit=depth_limit, children_limit=children_limit,
            clock=lambda: (T0 + 10**6) / 1000,
        )  # fmt: skip

    async def apply(self, entries: list[AcceptedEntry]) -> ApplyResult:
        return await self.store.apply(entries)

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


async def test_crossing_inside_one_batch_names_the_entry_and_the_value_after_it(
    redis: Redis, prefix: str
) -> None:
    """Links and usage in one batch, in an order where the link is what crosses warning
    and a later child entry crosses critical: the replay of the batch names each."""
    rig = Rig(redis, prefix)
    await rig.apply([tokens("kid", T0, "m", 70_000, 0, 1, id="k-1")])
    await rig.apply(
        [
            tokens("top", T0 + 1, "m", 5_000, 0, 1, id="t-1"),
            tokens("kid", T0 + 2, "m", 1_000, 0, 1, id="k-2"),  # kid alone: 71,000
            subagent("top", T0 + 3, "w", "kid", id="t-link"),  # top's tree: 76,000 + ...
            tokens("top", T0 + 4, "m", 3_000, 0, 1, id="t-2"),  # 79,000
            tokens("kid", T0 + 5, "m", 2_000, 0, 1, id="k-3"),  # 81,000: warning
            tokens("kid", T0 + 6, "m", 19_000, 0, 1, id="k-4"),  # 100,000: critical
            tokens("kid", T0 + 7, "m", 5_000, 0, 1, id="k-5"),
        ]
    )
    got = await rig.published()
    assert sorted((a["subject"]["id"], a["level"], a["entryId"], a["observed"]) for a in got) == [
        ("kid", "warning", "k-4", "92000"),  # kid's own tree never reaches critical
        ("top", "critical", "k-4", "100000"),
        ("top", "warning", "k-3", "81000"),
    ]


async def test_a_link_that_crosses_is_named(redis: Redis, prefix: str) -> None:
    rig = Rig(redis, prefix)
    await rig.apply([tokens("big", T0, "m", 85_000, 0, 1, id="b-1")])
    published = await rig.published()
    assert [(a["subject"]["id"], a["level"]) for a in published] == [("big", "warning")]
    await rig.apply(
        [
            tokens("p", T0 + 1, "m", 1_000, 0, 1, id="p-1"),
            subagent("p", T0 + 2, "w", "big", id="p-link"),
        ]
    )
    got = (await rig.published())[1:]
    assert [(a["subject"]["id"], a["level"], a["entryId"], a["observed"]) for a in got] == [
        ("p", "warning", "p-link", "86000")
    ]


async def test_depth_and_fan_out_cuts_are_counted(redis: Redis, prefix: str) -> None:
    rig = Rig(redis, prefix, depth_limit=2, children_limit=2)
    chain = [subagent(f"r{i}", T0 + i, "w", f"r{i + 1}", id=f"l{i}") for i in range(4)]
    fan = [subagent("r0", T0 + 10 + i, "w", f"z{i}", id=f"z{i}") for i in range(3)]
    await rig.apply(chain + fan + [tokens("z2", T0 + 20, "m", 1, 0, 1, id="z2-t")])
    await rig.apply([tokens("r4", T0 + 21, "m", 90_000, 0, 1, id="deep")])
    # r4 is within 2 levels of r2 and r3 only: r1's and r0's trees leave it out
    got = await rig.published()
    assert sorted(a["subject"]["id"] for a in got) == ["r2", "r3", "r4"]
    # r0's tree is deeper than 2 levels, and r0 has 4 children of which 2 are followed
    result = await rig.apply([tokens("r0", T0 + 22, "m", 1, 0, 1, id="r0-t")])
    assert (result.depth_cut, result.children_cut) == (1, 2)
    assert len(await rig.published()) == 3
