"""Configuration: every knob documented, bad values named, unknown variables refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from processor.settings import Settings, SettingsError, load_settings, settings_env
from processor.stack.settings import StackSettings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.upper().startswith("USAGE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(README.parent / "tests")  # no .env file here
    return monkeypatch


def test_readme_configuration_tables_list_every_setting() -> None:
    """The worker's table, then the local stack's: each lists exactly its class's fields."""
    text = README.read_text()
    section = text[text.index("\n## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    tables = re.split(r"\n(?=\| variable \| default \| meaning \|)", section)[1:]
    documented = [set(re.findall(r"^\| `(USAGE_[A-Z_]+)` \|", t, re.M)) for t in tables]
    assert documented == [
        {f"USAGE_{name.upper()}" for name in Settings.model_fields},
        {f"USAGE_{name.upper()}" for name in StackSettings.model_fields},
    ]


def test_stack_variables_are_not_worker_settings(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """USAGE_STACK_DIR and the like, in the environment or a .env, do not stop a worker."""
    (tmp_path / ".env").write_text("USAGE_KAFKA_VERSION=3.8.0\nUSAGE_API_PORT=7002\n")
    clean_env.chdir(tmp_path)
    clean_env.setenv("USAGE_STACK_DIR", str(tmp_path / "stack"))
    settings = load_settings()
    assert settings.api_port == 7002
    assert not {"stack_dir", "cache_dir", "kafka_version"} & set(Settings.model_fields)
    stack = StackSettings()
    assert (stack.stack_dir, stack.kafka_version) == (tmp_path / "stack", "3.8.0")


def test_malformed_value_names_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("USAGE_API_PORT", "not-a-port")
    with pytest.raises(SettingsError, match="USAGE_API_PORT"):
        load_settings()


def test_unknown_variable_is_refused_by_name(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("USAGE_KAFKA_BOOTSTRAPP", "x:1")
    with pytest.raises(SettingsError, match="USAGE_KAFKA_BOOTSTRAPP"):
        load_settings()


def test_test_harness_variables_are_not_settings(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("USAGE_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert load_settings().kafka_bootstrap == "localhost:9092"


def test_missing_prices_file_is_named(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("USAGE_PRICES_FILE", "/nonexistent/prices.yaml")
    with pytest.raises(SettingsError, match="USAGE_PRICES_FILE"):
        load_settings()


def test_api_keys_format(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("USAGE_API_KEYS", "k1:acme, k2:globex")
    assert load_settings().api_key_tenants() == {"k1": "acme", "k2": "globex"}
    clean_env.setenv("USAGE_API_KEYS", "no-tenant")
    with pytest.raises(SettingsError, match="USAGE_API_KEYS"):
        load_settings()


def test_settings_env_round_trips(clean_env: pytest.MonkeyPatch) -> None:
    original = Settings(api_port=7001, api_keys="k:t", topic_partitions=3)  # type: ignore[arg-type]
    for key, value in settings_env(original).items():
        clean_env.setenv(key, value)
    assert load_settings() == original
