"""Rollup algebra: folding is order-independent, batch-split-independent and exact."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.domain.counts import CallStats, TokenCounts
from processor.domain.fields import (
    CUSTOM_DECIMALS,
    T_TOKENS,
    custom_to_nano,
    duration_to_us,
    field_name,
    nano_to_number,
    us_to_ms,
)
from processor.domain.fold import AcceptedEntry, fold_batch, fold_run
from processor.domain.readback import RunRollup
from processor.domain.trees import sum_tree, walk_tree_levels

names = st.text(min_size=1, max_size=12)


@st.composite
def entries(draw: st.DrawFn, run_id: str = "r1") -> AcceptedEntry:
    kind = draw(st.sampled_from(["tokens", "tool", "subagent", "custom"]))
    eid = draw(st.uuids()).hex
    ts = draw(st.integers(1_577_836_800_000, 1_900_000_000_000))
    base = dict(
        entry_id=eid,
        kind=kind,
        tenant_id="default",
        run_id=run_id,
        user_id="u",
        timestamp=ts,
        agent_name=draw(st.none() | names),
        wire_json="{}",
    )
    if kind == "tokens":
        p, c = draw(st.integers(0, 10**7)), draw(st.integers(0, 10**7))
        return AcceptedEntry(
            **base,
            model=draw(st.sampled_from(["gpt-4o", "m|x", 'we"ird', "claude"])),
            tokens=TokenCounts(p, c, c // 2, p // 3, p // 5, p + c),
            cost_pico=draw(st.integers(0, 10**15)),
        )
    if kind in ("tool", "subagent"):
        return AcceptedEntry(
            **base,
            call_name=draw(names),
            success=draw(st.booleans()),
            duration_us=draw(st.integers(0, 10**9)),
            child_run_id=draw(names) if kind == "subagent" else None,
        )
    return AcceptedEntry(
        **base,
        custom_type=draw(names),
        custom_name=draw(names),
        custom_nano=draw(st.integers(-(10**24), 10**24)),
    )


def merged(deltas: list[dict[str, int]]) -> dict[str, int]:
    """Counter increments summed; a 0 increment and no increment are the same in Redis."""
    total: Counter[str] = Counter()
    for d in deltas:
        total.update(d)
    # a custom sum is units * 10**9 + nano, whichever way it is split between the two
    for name in [k for k in total if k.startswith("xn|")]:
        total["x|" + name[3:]] = total["x|" + name[3:]] * 10**9 + total.pop(name)
    return {k: v for k, v in total.items() if v}


@settings(max_examples=200)
@given(st.lists(entries(), min_size=1, max_size=40), st.randoms())
def test_fold_is_order_independent(es: list[AcceptedEntry], rnd: object) -> None:
    shuffled = list(es)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = fold_run(es), fold_run(shuffled)
    assert merged([a.incr]) == merged([b.incr])
    assert a.custom == b.custom
    assert (a.min_ts, a.max_ts, a.children) == (b.min_ts, b.max_ts, b.children)


@settings(max_examples=200)
@given(st.lists(entries(), min_size=2, max_size=40), st.data())
def test_fold_of_split_batches_merges_to_fold_of_whole(
    es: list[AcceptedEntry], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(1, len(es) - 1))
    whole = fold_run(es)
    left, right = fold_run(es[:cut]), fold_run(es[cut:])
    assert merged([left.incr, right.incr]) == merged([whole.incr])
    assert min(left.min_ts, right.min_ts) == whole.min_ts
    assert max(left.max_ts, right.max_ts) == whole.max_ts
    assert left.children | right.children == whole.children


@given(st.lists(entries(), min_size=1, max_size=30))
def test_fields_read_back_exactly(es: list[AcceptedEntry]) -> None:
    delta = fold_run(es)
    fields = {k: str(v) for k, v in delta.incr.items()}
    rollup = RunRollup.from_fields("r1", fields, delta.children)
    tokens = [e.tokens for e in es if e.tokens is not None]
    assert rollup.tokens == sum(tokens, TokenCounts())
    assert rollup.cost_pico == sum(e.cost_pico for e in es)
    assert rollup.entry_count == len(es)
    tools = [e for e in es if e.kind == "tool"]
    assert sum((s.calls for s in rollup.tools.values()), 0) == len(tools)
    assert sum((s.failed for s in rollup.tools.values()), 0) == sum(not e.success for e in tools)
    assert sum((s.duration_us for s in rollup.tools.values()), 0) == sum(
        e.duration_us for e in tools
    )
    custom = Counter[tuple[str, str]]()
    for e in es:
        if e.kind == "custom":
            custom[(e.custom_type or "", e.custom_name or "")] += e.custom_nano
    for (ctype, cname), value in custom.items():
        assert rollup.custom[ctype][cname] == value
    assert rollup.children == sorted({e.child_run_id for e in es if e.child_run_id})


def test_field_names_are_unambiguous_for_any_model_name() -> None:
    a = field_name(T_TOKENS, 'a","b', "prompt")
    b = field_name(T_TOKENS, "a", '","b"prompt')
    assert a != b


def group_by_run(
    es: list[AcceptedEntry],
) -> tuple[dict[tuple[str, str], list[AcceptedEntry]], list[AcceptedEntry]]:
    """Reference for fold_batch: entries per (tenant, run) and the repeats of an id."""
    groups: dict[tuple[str, str], list[AcceptedEntry]] = {}
    repeats: list[AcceptedEntry] = []
    seen: set[tuple[str, str]] = set()
    for e in es:
        if (e.tenant_id, e.entry_id) in seen:
            repeats.append(e)
            continue
        seen.add((e.tenant_id, e.entry_id))
        groups.setdefault((e.tenant_id, e.run_id), []).append(e)
    return groups, repeats


def test_fold_batch_drops_repeated_ids_within_a_batch() -> None:
    e = AcceptedEntry(
        "id1",
        "custom",
        "default",
        "r",
        "u",
        1,
        None,
        "{}",
        custom_type="t",
        custom_name="n",
        custom_nano=10**9,
    )
    again = AcceptedEntry(
        "id1",
        "custom",
        "default",
        "r",
        "u",
        1,
        None,
        "{}",
        custom_type="t",
        custom_name="n",
        custom_nano=10**9,
    )
    other_tenant = AcceptedEntry(
        "id1",
        "custom",
        "acme",
        "r",
        "u",
        1,
        None,
        "{}",
        custom_type="t",
        custom_name="n",
        custom_nano=10**9,
    )
    folded, repeats = fold_batch([e, again, other_tenant])
    assert repeats == [again]
    groups = {(d.tenant_id, d.run_id): members for members, d in folded}
    assert groups == {("default", "r"): [e], ("acme", "r"): [other_tenant]}


def test_durations_are_whole_microseconds_and_read_back_as_ms() -> None:
    assert duration_to_us(12.3456) == 12346
    assert us_to_ms(12000) == 12
    assert us_to_ms(12346) == 12.346
    assert CallStats(1, 1, 0, 5) + CallStats(2, 0, 2, 7) == CallStats(3, 1, 2, 12)


def test_tree_walk_counts_each_run_once_and_cuts_cycles() -> None:
    children = {"root": ["a", "b"], "a": ["c", "b"], "b": ["c"], "c": ["root", "d"], "d": []}
    assert walk_tree_levels("root", children, depth_limit=10) == ["root", "a", "b", "c", "d"]
    assert walk_tree_levels("root", children, depth_limit=1) == ["root", "a", "b"]


def test_sum_tree_adds_tokens_cost_and_custom() -> None:
    def rollup(run: str, prompt: int, cost: int, custom: int) -> RunRollup:
        return RunRollup(
            run,
            "default",
            "u",
            None,
            1,
            1,
            1,
            {"m": TokenCounts(prompt=prompt, total=prompt)},
            {"m": cost},
            {},
            {},
            {"api": {"x": custom}},
            [],
        )

    totals = sum_tree([rollup("a", 10, 7, 1_500_000_000), rollup("b", 5, 3, 2_500_000_000)])
    assert totals.tokens == TokenCounts(prompt=15, total=15)
    assert totals.cost_pico == 10
    assert totals.custom == {"api": {"x": 4_000_000_000}}


@settings(max_examples=100)
@given(st.lists(entries(), min_size=1, max_size=30), st.data())
def test_fold_batch_equals_grouping_then_folding(
    es: list[AcceptedEntry], data: st.DataObject
) -> None:
    for e in es:
        e.run_id = data.draw(st.sampled_from(["r1", "r2", "r3"]))
    es = es + es[: len(es) // 3]  # some ids repeated in the batch
    groups, repeats = group_by_run(es)
    folded, folded_repeats = fold_batch(es)
    assert folded_repeats == repeats
    assert [members for members, _ in folded] == list(groups.values())
    for members, delta in folded:
        expected = fold_run(members)
        assert (delta.incr, delta.custom, delta.children) == (
            expected.incr,
            expected.custom,
            expected.children,
        )
        assert (delta.min_ts, delta.max_ts, delta.entry_ids) == (
            expected.min_ts,
            expected.max_ts,
            expected.entry_ids,
        )


@given(st.lists(st.sampled_from([0.1, 0.2, 0.3, 1e-9, 2.5e-7, -0.7, 123.456]), max_size=60))
def test_custom_values_sum_exactly_whatever_the_order(values: list[float]) -> None:
    exact = sum((Decimal(repr(v)) for v in values), Decimal(0))
    nano = sum(custom_to_nano(v) for v in values)
    assert Decimal(nano).scaleb(-CUSTOM_DECIMALS) == exact
    assert sum(custom_to_nano(v) for v in reversed(values)) == nano


def test_custom_values_round_half_even_below_nine_decimals() -> None:
    assert custom_to_nano(5e-324) == 0
    assert custom_to_nano(-0.0) == 0
    assert custom_to_nano(1.5e-9) == 2
    assert custom_to_nano(2.5e-9) == 2
    assert custom_to_nano(1e15) == 10**24
    assert custom_to_nano(3) == 3 * 10**9
    assert nano_to_number(300 * 10**9) == 300
    assert nano_to_number(-1) == -1e-9
    assert nano_to_number(10**24 + 1) == 1e15
