"""Configuration: every knob documented, bad values named, unknown variables refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from processor.settings import Settings, SettingsError, load_settings, settings_env

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.upper().startswith("USAGE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(README.parent / "tests")  # no .env file here
    return monkeypatch


def test_readme_configuration_table_lists_every_setting() -> None:
    documented = set(re.findall(r"^\| `(USAGE_[A-Z_]+)` \|", README.read_text(), re.M))
    expected = {f"USAGE_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


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
