"""`usage-stream prices show|check`: what an operator sees."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from processor.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["prices", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_prints_the_price_in_effect_and_its_source(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("USAGE_PRICES_FILE", raising=False)
    code, out, _ = run(
        capsys, "show", "gemini-2.5-pro", "--provider", "vertex", "--at", "2026-01-05"
    )
    assert code == 0
    assert "priced as google's 'gemini-2.5-pro'" in out
    assert "source: built-in" in out and "in effect on 2026-01-05" in out
    assert "input        1.25; above 200,000 prompt tokens 2.5" in out
    code, out, _ = run(capsys, "show", "sonar", "--provider", "perplexity")
    assert code == 0 and "USD per 1,000 calls" in out
    code, out, _ = run(capsys, "show", "deepseek-chat")
    assert "daily 00:30-16:30 UTC" in out


def test_show_says_why_a_model_is_unpriced(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("USAGE_PRICES_FILE", raising=False)
    assert run(capsys, "show", "gpt-4o", "--provider", "groq")[0] == 1
    code, out, _ = run(capsys, "show", "gpt-4o", "--provider", "no-such-host")
    assert code == 1 and "knows no such provider" in out
    code, out, _ = run(capsys, "show", "whisper-1", "--provider", "openai")
    assert code == 1 and "per audio hour" in out


def test_show_uses_the_prices_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        textwrap.dedent(
            """
            models:
              gpt-4o-mini:
                provider: openai
                prices: [{effectiveFrom: "2024-01-01", input: "0.1", output: "0.4"}]
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.setenv("USAGE_PRICES_FILE", str(path))
    code, out, _ = run(capsys, "show", "gpt-4o-mini-2024-07-18", "--provider", "openai.chat")
    assert code == 0 and f"source: {path}" in out and "input        0.1" in out


def test_check_validates_a_file_like_start_up(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        'models:\n  m: {provider: groq, prices: [{effectiveFrom: "2024-01-01", input: "1",'
        ' output: {base: "2", tiers: [{above: 1000, price: "3"}]}}]}\n',
        encoding="utf-8",
    )
    code, out, _ = run(capsys, "check", str(good))
    assert code == 0 and "ok, 1 model price list" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'models:\n  m: {provider: groq, prices: [{effectiveFrom: "2024-01-01", input: "1",'
        ' output: {base: "2", tiers: [{above: 10, price: "3"}, {above: 5, price: "4"}]}}]}\n',
        encoding="utf-8",
    )
    code, _, err = run(capsys, "check", str(bad))
    assert code == 2
    assert "model 'm'" in err and "prices[0].output.tiers[1].above" in err and str(bad) in err
