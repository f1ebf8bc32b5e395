"""Alert rules (CONTRACT §4, §7): the defaults, a rules file checked whole, the CLI check,
and the worker refusing to start on a bad file."""

from __future__ import annotations

import doctest
import tempfile
import textwrap
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from processor import cli
from processor.domain.alert_rules import (
    DEFAULT_RULES,
    AlertRule,
    AlertRulesError,
    failure_rate_reached,
    load_rules,
    rule_digest,
    rules_document,
)
from processor.settings import Settings, SettingsError, load_settings

CONTRACT_EXAMPLE = """\
rules:
  - name: user-daily-spend
    subject: user            # user | run
    window: day              # hour | day | month (user); run (a run's lifetime)
    metric: costUsd          # costUsd | tokens | toolFailureRate (with minCalls)
    thresholds: {warning: "80", critical: "100"}
  - name: run-token-budget
    subject: run
    window: run
    metric: tokens
    thresholds: {warning: "80000", critical: "100000"}
"""


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def rule(**changes: Any) -> dict[str, Any]:
    """A valid rule named 'r', with ``changes`` applied (a value of ... removes the key)."""
    base: dict[str, Any] = {
        "name": "r",
        "subject": "user",
        "window": "day",
        "metric": "costUsd",
        "thresholds": {"warning": "1", "critical": "2"},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def refused(tmp_path: Path, doc: Any) -> str:
    path = write(tmp_path, doc if isinstance(doc, str) else yaml.safe_dump(doc))
    with pytest.raises(AlertRulesError) as info:
        load_rules(path)
    message = str(info.value)
    assert str(path) in message
    return message


# --- the defaults ----------------------------------------------------------------------


def test_defaults_are_the_contracts() -> None:
    assert load_rules(None) == DEFAULT_RULES
    spend, budget = DEFAULT_RULES
    assert spend == AlertRule(
        "user-daily-spend", "user", "day", "costUsd", Decimal("80"), Decimal("100")
    )
    assert (spend.warning_units, spend.critical_units) == (80 * 10**12, 100 * 10**12)
    assert budget == AlertRule(
        "run-token-budget", "run", "run", "tokens", Decimal("80000"), Decimal("100000")
    )
    assert (budget.warning_units, budget.critical_units) == (80_000, 100_000)


def test_the_contract_example_loads_as_the_defaults(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, CONTRACT_EXAMPLE))
    assert rules == DEFAULT_RULES
    assert rule_digest(rules) == rule_digest(DEFAULT_RULES)


# --- a valid file ----------------------------------------------------------------------


def test_every_metric_and_window(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        rules:
          - {name: h, subject: user, window: hour, metric: costUsd,
             thresholds: {warning: "0.000000000001"}}
          - {name: d, subject: user, window: day, metric: tokens, thresholds: {critical: "0"}}
          - {name: m, subject: user, window: month, metric: toolFailureRate,
             thresholds: {warning: "0.25", critical: "1"}}
          - {name: run-failures, subject: run, window: run, metric: toolFailureRate,
             minCalls: 20, thresholds: {critical: "0.5"}}
          - {name: run-cost, subject: run, window: run, metric: costUsd,
             thresholds: {warning: "12.5", critical: "12.5"}}
          - {name: run-tokens, subject: run, window: run, metric: tokens,
             thresholds: {warning: "1000.0", critical: "9223372036854775807"}}
        """,
    )
    h, d, m, rf, rc, rt = load_rules(path)
    assert (h.subject, h.window, h.metric) == ("user", "hour", "costUsd")
    assert (h.warning, h.critical, h.warning_units, h.critical_units) == (
        Decimal("1E-12"),
        None,
        1,
        None,
    )
    assert h.levels == (("warning", Decimal("1E-12")),)
    assert (d.window, d.metric, d.warning, d.critical_units) == ("day", "tokens", None, 0)
    assert (m.window, m.metric, m.min_calls) == ("month", "toolFailureRate", 1)
    assert (m.warning, m.critical, m.warning_units) == (Decimal("0.25"), Decimal(1), None)
    assert (rf.subject, rf.window, rf.min_calls, rf.critical) == ("run", "run", 20, Decimal("0.5"))
    assert rc.warning_units == rc.critical_units == 12_500_000_000_000
    assert (rt.warning_units, rt.critical_units) == (1000, 2**63 - 1)
    assert [r.min_calls for r in (h, d, rc, rt)] == [1, 1, 1, 1]


def test_an_empty_list_means_no_alerting(tmp_path: Path) -> None:
    assert load_rules(write(tmp_path, "rules: []\n")) == ()


def test_docstring_examples() -> None:
    import processor.domain.alert_rules as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_failure_rate_is_compared_exactly() -> None:
    assert failure_rate_reached(1, 3, Decimal("0.333333333333"))
    assert not failure_rate_reached(1, 3, Decimal("0.333333333334"))
    assert failure_rate_reached(1, 2, Decimal("0.5"))
    assert not failure_rate_reached(0, 0, Decimal("0"))  # no calls, no rate
    assert failure_rate_reached(0, 1, Decimal("0"))
    assert failure_rate_reached(5, 5, Decimal("1")) and not failure_rate_reached(4, 5, Decimal(1))


# --- refusals --------------------------------------------------------------------------


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(AlertRulesError, match="cannot read") as info:
        load_rules(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(info.value)
    with pytest.raises(AlertRulesError, match="cannot read"):
        load_rules(tmp_path)  # a directory
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"rules: [\xff]\n")
    with pytest.raises(AlertRulesError, match="cannot read"):
        load_rules(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: [\n", "invalid YAML"),
        ("rules: {? [a] : 1}\n", "invalid YAML"),
        ("", "top level must be a mapping with only 'rules'"),
        ("- name: r\n", "top level must be a mapping with only 'rules'"),
        ("rules: []\nmodels: {}\n", "top level must be a mapping with only 'rules'"),
        ("rules: []\nrules: []\n", "top level: duplicate key 'rules'"),
        ("rules: {r: 1}\n", "rules: must be a list"),
        ("rules:\n", "rules: must be a list"),
        ("rules: [user-daily-spend]\n", "rules[0]: must be a mapping"),
    ],
)
def test_file_level_refusals(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refused(tmp_path, text)


BAD_RULES: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, rule, the rule as named in the message, the field)
    ("unknown key", rule(level="x"), "rule 'r'", "level: unknown key"),
    ("unknown key min_calls", rule(min_calls=3), "rule 'r'", "min_calls: unknown key"),
    ("missing name", rule(name=...), "rules[1]", "name: missing"),
    ("missing subject", rule(subject=...), "rule 'r'", "subject: missing"),
    ("missing window", rule(window=...), "rule 'r'", "window: missing"),
    ("missing metric", rule(metric=...), "rule 'r'", "metric: missing"),
    ("missing thresholds", rule(thresholds=...), "rule 'r'", "thresholds: missing"),
    ("empty name", rule(name=""), "rules[1]", "name: must be a non-empty string"),
    ("blank name", rule(name="  "), "rules[1]", "name: must be a non-empty string"),
    ("number name", rule(name=5), "rules[1]", "name: must be a non-empty string"),
    ("duplicate name", rule(name="first"), "rule 'first'", "name: duplicate: rules[0]"),
    ("unknown subject", rule(subject="team"), "rule 'r'", "subject: unknown subject 'team'"),
    ("subject not text", rule(subject=["user"]), "rule 'r'", "subject: unknown subject"),
    ("unknown window", rule(window="week"), "rule 'r'", "window: unknown window 'week'"),
    ("unknown metric", rule(metric="latency"), "rule 'r'", "metric: unknown metric 'latency'"),
    ("user with run window", rule(window="run"), "rule 'r'", "window: 'run' does not fit"),
    ("run with day window", rule(subject="run"), "rule 'r'", "window: 'day' does not fit"),
    ("thresholds text", rule(thresholds="80"), "rule 'r'", "thresholds: must be a mapping"),
    ("thresholds list", rule(thresholds=["80"]), "rule 'r'", "thresholds: must be a mapping"),
    ("thresholds key", rule(thresholds={"info": "1"}), "rule 'r'", "thresholds.info: unknown"),
    ("no threshold", rule(thresholds={}), "rule 'r'", "thresholds: needs warning, critical"),
    ("YAML int", rule(thresholds={"warning": 80}), "rule 'r'", "thresholds.warning: must be a"),
    ("YAML float", rule(thresholds={"critical": 0.5}), "rule 'r'", "thresholds.critical: must"),
    ("YAML bool", rule(thresholds={"warning": True}), "rule 'r'", "thresholds.warning: must"),
    ("YAML null", rule(thresholds={"warning": None}), "rule 'r'", "thresholds.warning: must"),
    ("exponent", rule(thresholds={"warning": "1e3"}), "rule 'r'", "thresholds.warning: '1e3'"),
    ("plus sign", rule(thresholds={"warning": "+1"}), "rule 'r'", "thresholds.warning: '+1'"),
    ("space", rule(thresholds={"warning": " 1"}), "rule 'r'", "thresholds.warning: ' 1'"),
    ("bare point", rule(thresholds={"warning": ".5"}), "rule 'r'", "thresholds.warning: '.5'"),
    ("empty text", rule(thresholds={"warning": ""}), "rule 'r'", "thresholds.warning: ''"),
    ("arabic digit", rule(thresholds={"warning": "٣"}), "rule 'r'", "thresholds.warning"),
    (
        "negative",
        rule(thresholds={"critical": "-1"}),
        "rule 'r'",
        "thresholds.critical: '-1' is neg",
    ),
    (
        "warning above critical",
        rule(thresholds={"warning": "2", "critical": "1.99"}),
        "rule 'r'",
        "thresholds.warning: 2 is above critical 1.99",
    ),
    (
        "past pico-dollars",
        rule(thresholds={"warning": "0.0000000000001"}),
        "rule 'r'",
        "thresholds.warning: USD amount '0.0000000000001' has 13 decimal places",
    ),
    (
        "fractional tokens",
        rule(metric="tokens", thresholds={"warning": "1.5"}),
        "rule 'r'",
        "thresholds.warning: '1.5' is not a whole number of tokens",
    ),
    (
        "tokens past int64",
        rule(metric="tokens", thresholds={"critical": "9223372036854775808"}),
        "rule 'r'",
        "thresholds.critical: '9223372036854775808' is too large",
    ),
    (
        "cost past int64",
        rule(thresholds={"critical": "9223373"}),
        "rule 'r'",
        "thresholds.critical: '9223373' is too large",
    ),
    (
        "rate above 1",
        rule(metric="toolFailureRate", thresholds={"critical": "1.01"}),
        "rule 'r'",
        "thresholds.critical: '1.01' is above 1",
    ),
    ("minCalls on cost", rule(minCalls=5), "rule 'r'", "minCalls: only applies to"),
    *[
        (
            f"minCalls {value!r}",
            rule(metric="toolFailureRate", minCalls=value, thresholds={"critical": "0.5"}),
            "rule 'r'",
            "minCalls: must be a positive integer",
        )
        for value in (0, -1, "5", 2.5, True, None)
    ],
]


@pytest.mark.parametrize(
    ("bad", "where", "field"), [c[1:] for c in BAD_RULES], ids=[c[0] for c in BAD_RULES]
)
def test_a_bad_rule_is_refused_naming_rule_and_field(
    tmp_path: Path, bad: dict[str, Any], where: str, field: str
) -> None:
    """Behind a valid rule, so the message must name the bad one and nothing is half-loaded."""
    message = refused(tmp_path, {"rules": [rule(name="first"), bad]})
    assert f": {where}: " in message
    assert field in message


@pytest.mark.parametrize(
    ("text", "where", "field"),
    [
        (
            "rules:\n  - {name: a, subject: user, subject: run, window: day, metric: tokens,"
            ' thresholds: {warning: "1"}}\n',
            "rule 'a'",
            "subject: duplicate key",
        ),
        (
            "rules:\n  - {name: a, subject: user, window: day, metric: tokens,"
            ' thresholds: {warning: "1", warning: "2"}}\n',
            "rule 'a'",
            "thresholds.warning: duplicate key",
        ),
        (
            "rules:\n  - {name: a, subject: user, window: day, metric: tokens,"
            " thresholds: {warning: 1e3}}\n",
            "rule 'a'",
            "thresholds.warning: '1e3' is not a plain decimal",
        ),
        (
            "rules:\n  - {name: a, subject: user, window: day, metric: tokens,"
            " thresholds: {warning: 1.0e+3}}\n",
            "rule 'a'",
            "thresholds.warning: must be a quoted decimal string",
        ),
        ("rules:\n  - {name: [a], subject: user}\n", "rules[0]", "window: missing"),
    ],
)
def test_refusals_written_as_yaml_text(tmp_path: Path, text: str, where: str, field: str) -> None:
    message = refused(tmp_path, text)
    assert f": {where}: " in message and field in message


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        rules:
          - &base {name: a, subject: user, window: hour, metric: tokens,
                   thresholds: {warning: "10"}}
          - {<<: *base, name: b, window: month}
        """,
    )
    assert [(r.name, r.window) for r in load_rules(path)] == [("a", "hour"), ("b", "month")]


def test_nothing_is_half_loaded(tmp_path: Path) -> None:
    good = [rule(name=f"r{i}") for i in range(20)]
    message = refused(tmp_path, {"rules": [*good, rule(name="bad", window="week")]})
    assert "rule 'bad': window" in message
    assert load_rules(None) == DEFAULT_RULES  # the defaults are untouched


# --- settings --------------------------------------------------------------------------


def test_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("USAGE_ALERT_RULES_FILE", raising=False)
    monkeypatch.delenv("USAGE_ALERT_RETENTION_SECONDS", raising=False)
    defaults = load_settings()
    assert defaults.alert_rules_file is None
    assert defaults.alert_retention_seconds == 90 * 86400
    path = write(tmp_path, CONTRACT_EXAMPLE)
    monkeypatch.setenv("USAGE_ALERT_RULES_FILE", str(path))
    assert load_settings().alert_rules_file == path
    monkeypatch.setenv("USAGE_ALERT_RULES_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(SettingsError, match="USAGE_ALERT_RULES_FILE"):
        load_settings()
    monkeypatch.delenv("USAGE_ALERT_RULES_FILE")
    monkeypatch.setenv("USAGE_ALERT_RETENTION_SECONDS", "59")
    with pytest.raises(SettingsError, match="USAGE_ALERT_RETENTION_SECONDS"):
        load_settings()


# --- usage-stream alerts check, and the worker -----------------------------------------


def test_alerts_check_prints_each_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        CONTRACT_EXAMPLE + "  - {name: flaky, subject: run, window: run, metric: toolFailureRate,"
        ' minCalls: 10, thresholds: {critical: "0.50"}}\n',
    )
    assert cli.main(["alerts", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"{path}: ok, 3 rule(s)")
    assert lines[1:] == [
        "  user-daily-spend: user/day costUsd >= warning 80, critical 100",
        "  run-token-budget: run/run tokens >= warning 80000, critical 100000",
        "  flaky: run/run toolFailureRate >= critical 0.5 (minCalls 10)",
    ]


def test_alerts_check_refuses_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CONTRACT_EXAMPLE.replace('"100000"', "100000"))
    assert cli.main(["alerts", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage-stream alerts check: alert rules file ")
    assert "rule 'run-token-budget': thresholds.critical: must be a quoted" in err
    assert cli.main(["alerts", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_the_worker_refuses_a_bad_rules_file_before_kafka(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "rules:\n  - {name: x, subject: user}\n")
    settings = Settings(alert_rules_file=path, kafka_bootstrap="127.0.0.1:1")
    started = time.monotonic()
    assert cli.cmd_worker(settings) == 2
    assert time.monotonic() - started < 5  # no broker was waited for
    err = capsys.readouterr().err
    assert err.startswith(f"usage-stream: USAGE_ALERT_RULES_FILE: alert rules file {path}: ")
    assert "rule 'x': window: missing" in err


def test_the_worker_goes_on_with_a_good_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import processor.topics

    async def no_kafka(settings: Settings) -> None:
        raise ConnectionError("no broker in unit tests")

    monkeypatch.setattr(processor.topics, "ensure_topics", no_kafka)
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    settings = Settings(alert_rules_file=write(tmp_path, CONTRACT_EXAMPLE))
    assert cli.cmd_worker(settings) == 1  # past the rules, stopped at Kafka
    assert "cannot reach Kafka" in capsys.readouterr().err


# --- round trip ------------------------------------------------------------------------

_SUBJECT_WINDOWS = {"user": ["hour", "day", "month"], "run": ["run"]}


def _amount(metric: str) -> st.SearchStrategy[Decimal]:
    if metric == "costUsd":
        return st.integers(0, 10**18).map(lambda p: Decimal(p).scaleb(-12))
    if metric == "tokens":
        return st.integers(0, 2**63 - 1).map(Decimal)
    return st.integers(0, 10**6).map(lambda n: Decimal(n).scaleb(-6))


@st.composite
def rules_strategy(draw: st.DrawFn, name: str) -> AlertRule:
    subject = draw(st.sampled_from(["user", "run"]))
    window = draw(st.sampled_from(_SUBJECT_WINDOWS[subject]))
    metric = draw(st.sampled_from(["costUsd", "tokens", "toolFailureRate"]))
    low, high = sorted(draw(st.lists(_amount(metric), min_size=2, max_size=2)))
    which = draw(st.sampled_from(["both", "warning", "critical"]))
    warning = low if which != "critical" else None
    critical = high if which != "warning" else None
    min_calls = draw(st.integers(1, 10_000)) if metric == "toolFailureRate" else 1
    return AlertRule(name, subject, window, metric, warning, critical, min_calls)  # type: ignore[arg-type]


def _by_hand(r: AlertRule) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": r.name, "subject": r.subject, "window": r.window}
    doc |= {"metric": r.metric, "thresholds": {}}
    for level, value in (("warning", r.warning), ("critical", r.critical)):
        if value is not None:
            doc["thresholds"][level] = format(value, "f")
    if r.metric == "toolFailureRate" and r.min_calls != 1:
        doc["minCalls"] = r.min_calls  # else omitted: 1 by default
    return doc


names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(names.filter(str.strip), unique=True, max_size=6).flatmap(
        lambda ns: st.tuples(*(rules_strategy(n) for n in ns))
    )
)
def test_valid_rules_round_trip_through_yaml(rules: tuple[AlertRule, ...]) -> None:
    by_hand = {"rules": [_by_hand(r) for r in rules]}  # independent of rules_document
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rules.yaml"
        path.write_text(yaml.safe_dump(by_hand, allow_unicode=True), "utf-8")
        loaded = load_rules(path)
        path.write_text(yaml.safe_dump(rules_document(rules), allow_unicode=True), "utf-8")
        assert load_rules(path) == loaded
    assert loaded == rules
    assert [(r.warning_units, r.critical_units) for r in loaded] == [
        (r.warning_units, r.critical_units) for r in rules
    ]
    assert rule_digest(loaded) == rule_digest(rules)
