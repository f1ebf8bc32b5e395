"""Alerts on run trees end to end: real workers, Kafka and Redis (CONTRACT §4).

- Children first: a root with two levels of sub-agent runs, each run on its own key (so in
  its own partition), every child's and grandchild's entries applied before the parents'
  ``subagent`` entries link them in. Exactly the (rule, run, level) alerts the linked trees
  reach are published, each once, every field checked: the root crosses both levels only
  once linked, one middle run's subtree crosses warning, the leaves never cross.
- Exactly once under failure: 40 independent trees (shared children, grandchildren, one
  cycle), 10% re-sent ids, TWO workers of one group, one SIGKILLed at three moments and
  restarted each time, a run tokens and a run costUsd rule. ``usage.notifications`` read as
  a ``read_committed`` consumer once the alerts outbox is empty: one message per (rule,
  run, level) that the ground truth (a tree walk over the entries sent, each run once,
  cycles cut; final totals against the thresholds) says must fire, and nothing else.

The ground truth (run_alert_truth.py) is written from the contract; only ``alert_id`` (the
deterministic id) and ``entry_cost`` (the catalog's public prices or the producer's
``costUsd``) are imported.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis

from processor.consumer import ingest_group_id
from processor.settings import Settings
from processor.stack.ports import pick_port
from processor.store.keys import Keys
from tests.integration.alert_checks import (
    LEVELS,
    TENANT,
    assert_records,
    published_alerts,
    two_workers_with_kills,
)
from tests.integration.ground_truth import (
    messages,
    wait_caught_up,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics, produce
from tests.integration.run_alert_truth import (
    T0,
    Maker,
    TreeTruth,
    assert_exactly_once,
    check_message,
    forest,
    stamp,
    write_rules,
)
from tests.integration.user_streams import (
    Published,
    decoding_redis,
    wait_applied,
    window_settings,
)

CHILDREN_RULES = """\
rules:
  - name: run-tokens
    subject: run
    window: run
    metric: tokens
    thresholds: {warning: "8000", critical: "10000"}
"""


async def test_children_applied_before_links_fire_when_linked(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    rules_file = tmp_path / "alert-rules.yaml"
    (rule,) = write_rules(rules_file, CHILDREN_RULES)
    settings = window_settings(settings, alert_rules_file=rules_file)
    p = settings.app_id
    root, m1, m2 = f"{p}-root", f"{p}-mid-1", f"{p}-mid-2"
    l1a, l1b, l2a = f"{p}-leaf-1a", f"{p}-leaf-1b", f"{p}-leaf-2a"
    mk = Maker(p, 1)
    # own tokens: leaves 2500 + 2500 (under m1), 2000 (under m2); m1 3500 (subtree 8500:
    # warning only), m2 2000 (subtree 4000), root 500 (tree 13000: both levels)
    own = [
        mk.tokens(l1a, 1500), mk.tokens(l1b, 2500), mk.tokens(l2a, 2000),
        mk.tokens(m1, 2000), mk.tokens(m2, 1200), mk.tokens(root, 500),
        mk.tokens(l1a, 1000), mk.tokens(m1, 1500), mk.tokens(m2, 800),
    ]  # fmt: skip
    middle_links = [mk.link(m1, l1a), mk.link(m2, l2a), mk.link(m1, l1b)]
    root_links = [mk.link(root, m1), mk.link(root, m2)]
    phases = [stamp(own, T0), stamp(middle_links, T0 + 100), stamp(root_links, T0 + 200)]
    truth = TreeTruth()
    for phase in phases:
        truth.add_all(phase)
    assert {r: int(truth.value("tokens", r)) for r in truth.runs} == {
        l1a: 2500, l1b: 2500, l2a: 2000, m1: 8500, m2: 4000, root: 13000,
    }  # fmt: skip
    expected = truth.expected([rule])
    assert sorted((r, lv) for _, r, lv in expected.values()) == sorted(
        [(m1, "warning"), (root, "warning"), (root, "critical")]
    )
    crossings = {
        (m1, "warning"): (middle_links[2]["id"], "8500"),  # 3500 + 2500 + 2500
        (root, "warning"): (root_links[0]["id"], "9000"),  # 500 + m1's 8500
        (root, "critical"): (root_links[1]["id"], "13000"),  # and m2's 4000
    }

    await create_topics(settings)
    redis = decoding_redis(settings)
    keys = Keys(settings.key_prefix)
    try:
        async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
            started_ms = int(time.time() * 1000)
            applied = 0
            fired_after = [
                set(),
                {truth.alert_id(rule, m1, "warning")},
                set(expected),
            ]
            for phase, want in zip(phases, fired_after, strict=True):
                await produce(settings, settings.topic_entries, messages(phase))
                applied += len(phase)
                await wait_applied(redis, settings, applied, timeout=30, workers=[worker])
                # decided in the batch step; wait for the group to have committed past
                # the phase, then the index is final for it
                await wait_caught_up(settings, ingest_group_id(settings), timeout=60)
                listed = set(await redis.zrange(keys.alerts(TENANT), 0, -1))
                assert listed == want, f"after {len(phase)} entries: alerts {listed}, want {want}"
            got = await published_alerts(redis, settings, [worker])
            done_ms = int(time.time() * 1000)
        assert_exactly_once(got, expected)
        problems = []
        for m in got:
            r, run, level = expected[m.value["alertId"]]
            found = check_message(m, r, run, level, truth, (started_ms, done_ms))
            # each level is named after the link whose application made it hold (the
            # links of one run arrive in order), with the tree's value right after it
            want_entry, want_observed = crossings[(run, level)]
            if (m.value["entryId"], m.value["observed"]) != (want_entry, want_observed):
                found.append(
                    f"(entryId, observed) {(m.value['entryId'], m.value['observed'])}, "
                    f"want {(want_entry, want_observed)}"
                )
            if found:
                problems.append(f"{json.dumps(m.value, sort_keys=True)}: {'; '.join(found)}")
        assert not problems, "\n".join(problems)
        await assert_records(redis, settings, got)
    finally:
        await redis.aclose()


# --- 2. many trees, two workers, three SIGKILLs ---------------------------------------------


CHAOS_RULES = """\
rules:
  - name: tree-tokens
    subject: run
    window: run
    metric: tokens
    thresholds: {warning: "20000", critical: "32000"}
  - name: tree-spend
    subject: run
    window: run
    metric: costUsd
    thresholds: {warning: "3", critical: "4.5"}
"""

BURST = 50
RATE = 200.0
KILLS = ((0.2, 0), (0.5, 1), (0.8, 0))


async def test_run_alerts_exactly_once_with_two_workers_and_sigkills(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    rules_file = tmp_path / "alert-rules.yaml"
    rules = write_rules(rules_file, CHAOS_RULES)
    settings = window_settings(
        settings,
        batch_max_entries=40,
        kafka_session_timeout_ms=6000,
        alert_rules_file=rules_file,
    )
    other = settings.model_copy(update={"api_port": pick_port()})
    originals = forest(settings.app_id, 11)
    stream, late = with_duplicates(originals, fraction=0.1, seed=12)
    stream += late
    truth = TreeTruth()
    truth.add_all(stream)
    expected = truth.expected(rules)

    # the premise: every (rule, level) fires several times, on roots and on children,
    # warning alone sometimes, many runs stay silent; the cycle and the shared children hold
    per = Counter((x[0].name, x[2]) for x in expected.values())
    for rule in rules:
        for level in LEVELS:
            assert per[(rule.name, level)] >= 3, per
    fired_runs = {x[1] for x in expected.values()}
    assert any("-c" in r for r in fired_runs), "some child's own tree fires"
    assert len(set(truth.runs) - fired_runs) >= 20, "many runs stay silent"
    for rule in rules:
        warn_only = {x[1] for x in expected.values() if x[0] == rule and x[2] == "warning"}
        crit = {x[1] for x in expected.values() if x[0] == rule and x[2] == "critical"}
        assert crit <= warn_only and warn_only - crit, (rule.name, warn_only, crit)
    cyclic = f"{settings.app_id}-t3"
    assert cyclic in truth.tree(f"{cyclic}-c0") and f"{cyclic}-c0" in truth.tree(cyclic)
    parents = Counter(c for r in truth.runs for c in truth.children[r])
    assert sum(1 for n in parents.values() if n > 1) >= 5, "shared children"
    print(
        f"{len(stream)} messages, {truth.accepted} distinct entries, {len(truth.runs)} runs, "
        f"{len(expected)} alerts"
    )

    async def check(redis: aioredis.Redis, got: list[Published], span: tuple[int, int]) -> None:
        assert_exactly_once(got, expected)
        problems = []
        for m in got:
            rule, run, level = expected[m.value["alertId"]]
            found = check_message(m, rule, run, level, truth, span)
            if found:
                problems.append(f"{json.dumps(m.value, sort_keys=True)}: {'; '.join(found)}")
        assert not problems, f"{len(problems)} wrong alert message(s):\n" + "\n".join(problems[:20])
        await assert_records(redis, settings, got)

    await two_workers_with_kills(
        settings, other, tmp_path, stream, truth.accepted,
        rate=RATE, burst=BURST, kills=KILLS, check=check,
    )  # fmt: skip
