"""The shipped default rules end to end, under failure (CONTRACT §4, §7): no rules file.

A user's daily spend (warning $80, critical $100) and a run's token budget including its
sub-agents (warning 80,000, critical 100,000). One stream crosses every default threshold
several times over: 40 run trees (shared children, grandchildren, a cycle, links before,
among and after their children's entries) and users spending past $100 a day on two
days, interleaved, 10% re-sent ids, TWO workers of one group, one SIGKILLed at three
moments and restarted each time. ``usage.notifications`` read with a ``read_committed``
consumer once the alerts outbox is empty: exactly one message per (rule, subject,
window, level) the ground truth says must fire, and nothing else, every field checked.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis

from processor.domain.alert_rules import DEFAULT_RULES
from processor.settings import Settings
from processor.stack.ports import pick_port
from tests.integration import alert_checks
from tests.integration import run_alert_truth as runs_e2e
from tests.integration import user_alert_truth as users_e2e
from tests.integration.alert_checks import two_workers_with_kills
from tests.integration.ground_truth import (
    Entry,
    usd,
    utc_ms,
    with_duplicates,
)
from tests.integration.user_streams import (
    Published,
    window_settings,
)

LEVELS = ("warning", "critical")
DAYS = ("2025-10-20", "2025-10-21")
#: spender -> entries per day of USD 3-9 each: past critical, past critical, warning only
#: (about 90), silent
SPENDERS = {"sp-0": 34, "sp-1": 28, "sp-2": 15, "sp-3": 6}
TOKEN_SCALE = 5  # the forest's trees, scaled past the default run token budget
BURST = 50
RATE = 200.0
KILLS = ((0.2, 0), (0.5, 1), (0.8, 0))


def _user_rule() -> users_e2e.Rule:
    (rule,) = [r for r in DEFAULT_RULES if r.subject == "user"]
    assert rule.warning is not None and rule.critical is not None
    return users_e2e.Rule(rule.name, rule.window, rule.metric, {"warning": "80", "critical": "100"})


def _run_rule() -> runs_e2e.Rule:
    (rule,) = [r for r in DEFAULT_RULES if r.subject == "run"]
    return runs_e2e.Rule(rule.name, rule.metric, {"warning": "80000", "critical": "100000"})


def stream_of(prefix: str, seed: int) -> list[Entry]:
    """The forest of the run-tree chaos test with its token counts scaled up, and the
    spenders' entries (small token counts, large ``costUsd``) interleaved with it."""
    rnd = random.Random(seed)
    trees = runs_e2e.forest(prefix, seed)
    for e in trees:
        if e["kind"] == "tokens":
            e["tokens"] = {k: v * TOKEN_SCALE for k, v in e["tokens"].items()}
    spending: list[Entry] = []
    n = 0
    for user, per_day in SPENDERS.items():
        for day in DAYS:
            start = utc_ms(f"{day}T09:00:00.000Z")
            for i in range(per_day):
                n += 1
                spending.append(
                    {
                        "id": f"{prefix}-spend-{n}",
                        "runId": f"{prefix}-{user}-{day}-r{i % 4}",
                        "userId": user,
                        "timestamp": start + i * 60_000,
                        "kind": "tokens",
                        "model": "acme-llm-9000",
                        "tokens": {"prompt": 300, "completion": 100},
                        "costUsd": usd(Decimal(rnd.randint(3_000_000, 9_000_000)).scaleb(-6)),
                    }
                )
    out: list[Entry] = []
    a, b = list(trees), list(spending)
    while a or b:
        pick = a if b == [] or (a and rnd.random() < len(a) / (len(a) + len(b))) else b
        out.append(pick.pop(0))
    return out


async def test_default_rules_fire_exactly_once_with_two_workers_and_sigkills(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    settings = window_settings(settings, batch_max_entries=40, kafka_session_timeout_ms=6000)
    assert settings.alert_rules_file is None  # the shipped defaults
    other = settings.model_copy(update={"api_port": pick_port()})
    originals = stream_of(settings.app_id, 21)
    stream, late = with_duplicates(originals, fraction=0.1, seed=22)
    stream += late

    user_rule, run_rule = _user_rule(), _run_rule()
    user_truth = users_e2e.AlertTruth([user_rule])
    user_truth.add_all(stream)
    tree_truth = runs_e2e.TreeTruth()
    tree_truth.add_all(stream)
    user_expected = user_truth.expected()
    run_expected = tree_truth.expected([run_rule])
    expected_ids = set(user_expected) | set(run_expected)

    # the premise: both rules fire both levels several times, warning alone sometimes,
    # and subjects with usage stay silent
    per = Counter((x.rule.name, x.level) for x in user_expected.values())
    per.update((x[0].name, x[2]) for x in run_expected.values())
    for name in (user_rule.name, run_rule.name):
        for level in LEVELS:
            assert per[(name, level)] >= 2, per
    assert per[(run_rule.name, "warning")] > per[(run_rule.name, "critical")], per
    assert per[(user_rule.name, "warning")] > per[(user_rule.name, "critical")], per
    assert len(set(tree_truth.runs) - {x[1] for x in run_expected.values()}) >= 20
    print(
        f"{len(stream)} messages, {tree_truth.accepted} distinct entries, "
        f"{len(expected_ids)} alerts ({dict(per)})"
    )

    async def check(redis: aioredis.Redis, got: list[Published], span: tuple[int, int]) -> None:
        def describe(aid: str) -> str:
            if aid in user_expected:
                x = user_expected[aid]
                return f"{x.rule.name} {x.user} {x.kind} {x.start} {x.level}"
            rule, run, level = run_expected[aid]
            return f"{rule.name} {run} {level}"

        alert_checks.assert_exactly_once(got, sorted(expected_ids), describe)
        problems = []
        for m in got:
            aid = m.value["alertId"]
            if aid in user_expected:
                found = users_e2e.check_message(m, user_expected[aid], user_truth, span)
            else:
                rule, run, level = run_expected[aid]
                found = runs_e2e.check_message(m, rule, run, level, tree_truth, span)
                eid = m.value["entryId"]
                entry = tree_truth.entries.get(eid)
                if not found and entry is not None and entry["kind"] == "tokens":
                    # a usage entry that crossed: without it the tree held less
                    observed, threshold = (
                        Decimal(m.value["observed"]),
                        Decimal(rule.thresholds[level]),
                    )
                    if not observed - tree_truth.tokens[eid] < threshold <= observed:
                        found.append(f"entry {eid} did not cross: observed {observed}")
            if found:
                problems.append(f"{json.dumps(m.value, sort_keys=True)}: {'; '.join(found)}")
        assert not problems, f"{len(problems)} wrong alert message(s):\n" + "\n".join(problems[:20])
        users_e2e.assert_warning_first([m for m in got if m.value["subject"]["type"] == "user"])
        await alert_checks.assert_records(redis, settings, got)

    await two_workers_with_kills(
        settings, other, tmp_path, stream, tree_truth.accepted,
        rate=RATE, burst=BURST, kills=KILLS, check=check,
    )  # fmt: skip
