from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from processor.metrics import OTHER, LabelCap, UsageMetrics

# CONTRACT §6: name -> (type, label names)
CONTRACT = {
    "usage_entries_total": ("counter", {"kind", "outcome"}),
    "usage_tokens_total": ("counter", {"model", "provider", "type"}),
    "usage_cost_usd_total": ("counter", {"model", "provider"}),
    "usage_tool_calls_total": ("counter", {"tool", "outcome"}),
    "usage_tool_duration_seconds": ("histogram", {"tool"}),
    "usage_subagent_calls_total": ("counter", {"type", "outcome"}),
    "usage_custom_entries_total": ("counter", {"type"}),
    "usage_dead_letters_total": ("counter", {"reason"}),
    "usage_alerts_total": ("counter", {"rule", "level"}),
    "usage_event_lag_seconds": ("histogram", set()),
    "usage_unpriced_tokens_total": ("counter", {"model"}),
}
HIST_LABELS = {"le"}


def parse(m: UsageMetrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted label items -> value}"""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def exercised() -> UsageMetrics:
    m = UsageMetrics()
    m.entry("tokens", "accepted", 3)
    m.tokens("gpt-4o-mini", "openai", "prompt", 1000)
    m.tokens("gpt-4o-mini", None, "completion", 10)
    m.cost("gpt-4o-mini", "openai", 435_000_000)
    m.tool_call("search", True, 250)
    m.tool_calls_batch("search", 2, 1, [100.0, 2000.0])
    m.subagent_call("researcher", False)
    m.custom("api_calls", 4)
    m.dead_letter("schema")
    m.alert("user-daily-spend", "warning")
    m.event_lag(0.3)
    m.event_lags([0.01, 5.0])
    m.unpriced("mystery-model", 42)
    return m


def test_names_types_and_labels_exactly_as_contract() -> None:
    text = exercised().render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (mtype, labels) in CONTRACT.items():
        base = name.removesuffix("_total") if mtype == "counter" else name
        fam = families[base]
        assert fam.type == mtype, name
        assert f"# TYPE {name} {mtype}\n" in text
        assert fam.samples, name
        for s in fam.samples:
            if mtype == "counter":
                if s.name.endswith("_created"):
                    continue
                assert s.name == name
                assert set(s.labels) == labels, (name, s.labels)
            else:
                assert s.name in {
                    f"{name}_bucket",
                    f"{name}_count",
                    f"{name}_sum",
                    f"{name}_created",
                }
                extra = HIST_LABELS if s.name.endswith("_bucket") else set()
                assert set(s.labels) == labels | extra, (name, s.labels)


def test_values() -> None:
    v = parse(exercised())
    entries = v["usage_entries_total"]
    assert entries[(("kind", "tokens"), ("outcome", "accepted"))] == 3
    # fixed enums are exported as zero from the start
    assert entries[(("kind", "custom"), ("outcome", "duplicate"))] == 0
    assert len(entries) == 12
    tokens = v["usage_tokens_total"]
    assert tokens[(("model", "gpt-4o-mini"), ("provider", "openai"), ("type", "prompt"))] == 1000
    # missing provider -> "unknown"
    assert tokens[(("model", "gpt-4o-mini"), ("provider", "unknown"), ("type", "completion"))] == 10
    cost = v["usage_cost_usd_total"][(("model", "gpt-4o-mini"), ("provider", "openai"))]
    assert cost == pytest.approx(0.000435)
    calls = v["usage_tool_calls_total"]
    assert calls[(("outcome", "success"), ("tool", "search"))] == 3
    assert calls[(("outcome", "failure"), ("tool", "search"))] == 1
    assert v["usage_tool_duration_seconds_count"][(("tool", "search"),)] == 3
    assert v["usage_tool_duration_seconds_sum"][(("tool", "search"),)] == pytest.approx(2.35)
    assert v["usage_subagent_calls_total"][(("outcome", "failure"), ("type", "researcher"))] == 1
    assert v["usage_custom_entries_total"][(("type", "api_calls"),)] == 4
    assert v["usage_dead_letters_total"][(("reason", "schema"),)] == 1
    assert v["usage_dead_letters_total"][(("reason", "json"),)] == 0
    assert v["usage_alerts_total"][(("level", "warning"), ("rule", "user-daily-spend"))] == 1
    assert v["usage_event_lag_seconds_count"][()] == 3
    assert v["usage_unpriced_tokens_total"][(("model", "mystery-model"),)] == 42


def test_label_cap_maps_to_other() -> None:
    m = UsageMetrics(label_cap=3)
    for i in range(10):
        m.tokens(f"model-{i}", "openai", "prompt", 1)
        m.unpriced(f"model-{i}", 1)
        m.tool_call(f"tool-{i}", True, 1.0)
        m.custom(f"custom-{i}")
        m.subagent_call(f"agent-{i}", True)
    m.tokens("model-1", "openai", "prompt", 5)  # admitted values stay admitted
    v = parse(m)
    models = {dict(k)["model"]: val for k, val in v["usage_tokens_total"].items()}
    assert models == {"model-0": 1, "model-1": 6, "model-2": 1, OTHER: 7}
    unpriced = {dict(k)["model"] for k in v["usage_unpriced_tokens_total"]}
    assert unpriced == {"model-0", "model-1", "model-2", OTHER}
    tools = {dict(k)["tool"] for k in v["usage_tool_calls_total"]}
    assert tools == {"tool-0", "tool-1", "tool-2", OTHER}
    assert {dict(k)["tool"] for k in v["usage_tool_duration_seconds_count"]} == tools
    assert {dict(k)["type"] for k in v["usage_custom_entries_total"]} == {
        "custom-0",
        "custom-1",
        "custom-2",
        OTHER,
    }
    assert {dict(k)["type"] for k in v["usage_subagent_calls_total"]} == {
        "agent-0",
        "agent-1",
        "agent-2",
        OTHER,
    }
    assert v["usage_custom_entries_total"][(("type", OTHER),)] == 7


def test_default_cap_is_200() -> None:
    cap = LabelCap(200)
    assert [cap(f"v{i}") for i in range(201)][-1] == OTHER
    assert len(cap) == 200
    m = UsageMetrics()
    for i in range(250):
        m.custom(f"t{i}")
    assert len(parse(m)["usage_custom_entries_total"]) == 201


def test_token_types_and_outcomes_are_validated() -> None:
    m = UsageMetrics()
    with pytest.raises(ValueError):
        m.tokens("m", "p", "input", 1)
    with pytest.raises(ValueError):
        m.entry("tokens", "ok")
    m.entry("bogus-kind", "rejected")  # unparsable kinds are reported as "unknown"
    assert parse(m)["usage_entries_total"][(("kind", "unknown"), ("outcome", "rejected"))] == 1


def test_zero_and_negative_amounts_are_not_exported() -> None:
    m = UsageMetrics()
    m.cost("m", "p", 0)
    m.cost("m", "p", -5)
    m.tokens("m", "p", "prompt", 0)
    v = parse(m)
    assert "usage_cost_usd_total" not in v and "usage_tokens_total" not in v


def test_registries_are_independent_and_shared_registry_clashes() -> None:
    a, b = UsageMetrics(), UsageMetrics()
    a.custom("x")
    assert "usage_custom_entries_total" not in parse(b)
    reg = CollectorRegistry()
    UsageMetrics(reg)
    with pytest.raises(ValueError):
        UsageMetrics(reg)


def test_no_id_labels() -> None:
    forbidden = {"user", "userId", "run", "runId", "thread", "threadId", "id", "entryId"}
    for fam in text_string_to_metric_families(exercised().render().decode()):
        for s in fam.samples:
            assert not forbidden & set(s.labels)


def test_observe_many_equals_observe_one_by_one() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from processor.metrics import observe_many

    values = [0.0, 0.004, 0.005, 0.3, 1.0, 2.5, 7.0, 10.0, 1e9]
    a = Histogram("a_seconds", "a", registry=CollectorRegistry())
    b = Histogram("b_seconds", "b", registry=CollectorRegistry())
    for v in values:
        a.observe(v)
    observe_many(b, values)
    samples_a = [(s.name[1:], s.labels, s.value) for s in next(iter(a.collect())).samples]
    samples_b = [(s.name[1:], s.labels, s.value) for s in next(iter(b.collect())).samples]
    assert [x for x in samples_a if "created" not in x[0]] == [
        x for x in samples_b if "created" not in x[0]
    ]
