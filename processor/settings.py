"""All configuration, from ``USAGE_*`` environment variables or a ``.env`` file.

One class on purpose: every knob is listed here, validated at start-up, and documented in
the README's configuration table (a test keeps the two in step).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "USAGE_"
# Variables read by the test harness only (e.g. USAGE_TEST_KAFKA_BOOTSTRAP), not settings.
TEST_ENV_PREFIX = "USAGE_TEST_"


class SettingsError(Exception):
    """Configuration that cannot be used; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        case_sensitive=False,
    )

    # --- connections -----------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "localhost:9092", description="Kafka bootstrap servers (host:port[,host:port])"
    )
    redis_url: str = Field("redis://localhost:6379/0", description="Redis URL holding all state")
    app_id: str = Field(
        "usage-stream", min_length=1, description="Faust app id; consumer groups are named after it"
    )
    key_prefix: str = Field(
        "us", min_length=1, description="Prefix of every Redis key this app writes"
    )

    # --- topics ----------------------------------------------------------------------
    topic_entries: str = Field(
        "usage.entries", min_length=1, description="Input topic of usage entries"
    )
    topic_dlq: str = Field("usage.entries.dlq", min_length=1, description="Dead-letter topic")
    topic_notifications: str = Field(
        "usage.notifications", min_length=1, description="Alerts topic"
    )
    topic_invoices: str = Field("usage.invoices", min_length=1, description="Invoices topic")
    topic_outbox_progress: str = Field(
        "usage.outbox.progress",
        min_length=1,
        description="Internal compacted topic: how far each outbox relay has published",
    )
    topic_partitions: int = Field(
        8, ge=1, le=10_000, description="Partitions of topics the processor creates"
    )
    topic_replication: int = Field(
        1, ge=1, le=16, description="Replication factor of topics it creates"
    )

    # --- HTTP API --------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the HTTP API binds to")
    api_port: int = Field(6066, ge=1, le=65535, description="Port of the HTTP API and /metrics")
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated key:tenant pairs; set: every /v1 request needs a bearer key",
    )

    # --- processing ------------------------------------------------------------------
    max_entry_bytes: int = Field(
        65536, ge=1, description="Larger messages are dead letters (too_large)"
    )
    batch_max_entries: int = Field(
        2000, ge=1, le=100_000, description="Entries applied to Redis per batch"
    )
    batch_max_wait_ms: int = Field(20, ge=0, le=10_000, description="Longest wait to fill a batch")
    entry_retention_seconds: int = Field(
        7 * 86400, ge=60, description="How long raw entries are kept"
    )
    dedup_retention_seconds: int = Field(
        35 * 86400, ge=60, description="How long entry ids are remembered for de-duplication"
    )
    hour_retention_seconds: int = Field(
        14 * 86400,
        ge=0,
        description="How long a user's hourly window is kept after it ends (0: until deleted)",
    )
    day_retention_seconds: int = Field(
        400 * 86400,
        ge=0,
        description="How long a user's daily window is kept after it ends (0: until deleted)",
    )
    month_retention_seconds: int = Field(
        0,
        ge=0,
        description="How long a user's monthly window is kept after it ends (0: until deleted)",
    )
    alert_retention_seconds: int = Field(
        90 * 86400, ge=60, description="How long alerts are kept for GET /v1/alerts"
    )
    kafka_session_timeout_ms: int = Field(
        10_000,
        ge=1000,
        le=300_000,
        description="Consumer group session timeout: how soon a dead worker's partitions move",
    )
    subagent_depth_limit: int = Field(
        64, ge=1, le=10_000, description="Deepest sub-agent tree walked"
    )
    subagent_children_limit: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Sub-agent runs read per run in a tree walk; the rest are cut and counted",
    )
    retry_max_seconds: float = Field(
        5.0, gt=0, le=300, description="Ceiling of the back-off between retries of a batch"
    )
    apply_stall_seconds: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="A batch failing to apply for this long makes /readyz answer 503",
    )
    label_cap: int = Field(
        200, ge=1, description="Distinct values per metric label before __other__"
    )

    # --- files -----------------------------------------------------------------------
    prices_file: Path | None = Field(
        None, description="YAML price catalog extending the built-in one"
    )
    alert_rules_file: Path | None = Field(
        None, description="YAML alert rules replacing the defaults (CONTRACT §7)"
    )

    # --- local stack -----------------------------------------------------------------
    stack_dir: Path = Field(
        Path(".usage-stack"), description="State of the local stack (logs, data, pids)"
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "usage-stream",
        description="Downloaded Kafka jars (kept across clones)",
    )
    kafka_version: str = Field("3.9.1", description="Apache Kafka version the local stack runs")

    log_level: str = Field("info", description="Log level: debug, info, warning, error")

    @field_validator("prices_file", "alert_rules_file")
    @classmethod
    def _file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file not found: {v}")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return v.lower()

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parse_api_keys(v.get_secret_value())
        return v

    def api_key_tenants(self) -> dict[str, str]:
        """Bearer key -> tenant id; empty when no keys are configured."""
        if self.api_keys is None:
            return {}
        return parse_api_keys(self.api_keys.get_secret_value())


def settings_env(settings: Settings) -> dict[str, str]:
    """Every field as a ``USAGE_<FIELD>`` variable (secrets unwrapped, None left out).

    How a parent process hands its exact configuration to a worker it starts.
    """
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        env[ENV_PREFIX + name.upper()] = text
    return env


def parse_api_keys(raw: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, tenant = pair.partition(":")
        if not sep or not key.strip() or not tenant.strip():
            raise ValueError("expected comma-separated key:tenant pairs")
        keys[key.strip()] = tenant.strip()
    if not keys:
        raise ValueError("no key:tenant pair given")
    return keys


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, refusing unknown ``USAGE_*`` variables and naming bad ones."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(
        k
        for k in os.environ
        if k.upper().startswith(ENV_PREFIX)
        and not k.upper().startswith(TEST_ENV_PREFIX)
        and k.upper() not in known
    )
    if unknown:
        raise SettingsError(f"unknown configuration variable(s): {', '.join(unknown)}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
