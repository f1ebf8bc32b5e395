"""All configuration, from ``USAGE_*`` environment variables or a ``.env`` file.

One class on purpose: every knob of the worker is listed here, validated at start-up, and
documented in the README's configuration table (a test keeps the two in step). The local
stack's own settings (its directory, cache and Kafka version) are
``processor.stack.settings.StackSettings``, which a worker never reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from processor.logs import LOG_FORMATS
from processor.stack.settings import STACK_ENV_NAMES

ENV_PREFIX = "USAGE_"
# Variables read by the test harness only (e.g. USAGE_TEST_KAFKA_BOOTSTRAP), not settings.
TEST_ENV_PREFIX = "USAGE_TEST_"


class SettingsError(Exception):
    """Configuration that cannot be used; the message names the variable."""


# The same values as usage_client.security (a unit test keeps them equal); spelled out here
# so that reading the settings does not import the client and aiokafka with it.
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
#: Settings field -> usage_client.security.KafkaSecurity field.
KAFKA_SECURITY_FIELDS = {
    "kafka_security_protocol": "security_protocol",
    "kafka_sasl_mechanism": "sasl_mechanism",
    "kafka_sasl_username": "sasl_username",
    "kafka_sasl_password": "sasl_password",
    "kafka_ssl_cafile": "ssl_cafile",
    "kafka_ssl_certfile": "ssl_certfile",
    "kafka_ssl_keyfile": "ssl_keyfile",
    "kafka_ssl_key_password": "ssl_key_password",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        case_sensitive=False,
        # a validation error would otherwise quote the input, passwords included
        hide_input_in_errors=True,
    )

    # --- connections -----------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "localhost:9092", description="Kafka bootstrap servers (host:port[,host:port])"
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT",
        description="PLAINTEXT, SSL (TLS), SASL_SSL (SASL over TLS: managed Kafka) or "
        "SASL_PLAINTEXT",
    )
    kafka_sasl_mechanism: KafkaSaslMechanism | None = Field(
        None,
        description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* protocols only; unset: PLAIN)",
    )
    kafka_sasl_username: str | None = Field(
        None, description="SASL user name (an API key on Confluent Cloud); needed by SASL_*"
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (an API secret); needed by SASL_*; never logged"
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM CA bundle that signed the brokers' certificates (SSL, SASL_SSL; "
        "unset: the system's CAs); the broker host name is always checked",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate, for brokers that require one (SSL, SASL_SSL)"
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="PEM private key of the client certificate (unset: in the certfile)"
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted client key; never logged"
    )
    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis URL holding all state; rediss:// for TLS (the host name is checked)",
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Redis password (AUTH), kept out of the URL; a password in the URL wins",
    )
    redis_ssl_ca_file: Path | None = Field(
        None, description="PEM CA bundle for a rediss:// URL (unset: the system's CAs)"
    )
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
    api_port: int = Field(
        6066,
        ge=1,
        le=65535,
        description="Port of the HTTP API (and of /metrics, /healthz, /readyz unless "
        "USAGE_METRICS_PORT is set)",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of /metrics, /healthz and /readyz, then not served on the API port "
        "(unset: the API port)",
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated key:tenant pairs; set: every /v1 request needs a bearer key",
    )

    # --- processing ------------------------------------------------------------------
    max_entry_bytes: int = Field(
        65536, ge=1, description="Larger messages are dead letters (too_large)"
    )
    batch_max_entries: int = Field(
        5000, ge=1, le=100_000, description="Entries applied to Redis per batch"
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

    log_level: str = Field("info", description="Log level: debug, info, warning, error")
    log_format: str = Field(
        "text",
        description="Log lines: text, or json (one object per line: time, level, logger, "
        "message, and topic/partition/offset where relevant)",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # one .env may configure the local stack too: its lines are not this class's extras
        if isinstance(dotenv_settings, DotEnvSettingsSource):
            dotenv_settings = _WithoutStackLines(dotenv_settings)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator("prices_file", "alert_rules_file")
    @classmethod
    def _file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file not found: {v}")
        return v

    @field_validator("redis_ssl_ca_file")
    @classmethod
    def _ca_file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file not found: {v}")
        return v

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _connections(self) -> Settings:
        """Combinations of the connection settings, each problem naming its variables."""
        if self.redis_ssl_ca_file is not None and not self.redis_url.startswith("rediss://"):
            raise ValueError(
                "USAGE_REDIS_SSL_CA_FILE is set but USAGE_REDIS_URL is not a rediss:// URL"
            )
        if self.kafka_security_protocol != "PLAINTEXT" or any(
            getattr(self, f) is not None
            for f in KAFKA_SECURITY_FIELDS
            if f != "kafka_security_protocol"
        ):
            self.kafka_security()  # raises ValueError naming the variables
        return self

    def kafka_security(self) -> Any:
        """The Kafka TLS and SASL settings as a ``usage_client.security.KafkaSecurity``
        (typed Any: importing it here would load aiokafka with every settings read)."""
        from usage_client.security import NAMES_CONTEXT, KafkaSecurity, validation_message

        fields = KAFKA_SECURITY_FIELDS.items()
        values = {theirs: getattr(self, ours) for ours, theirs in fields}
        names = {theirs: ENV_PREFIX + ours.upper() for ours, theirs in fields}
        try:
            return KafkaSecurity.model_validate(values, context={NAMES_CONTEXT: names})
        except ValidationError as exc:
            raise ValueError(validation_message(exc, names)) from None

    def secret_values(self) -> list[str]:
        """Every configured secret in clear (API keys, the Kafka and Redis passwords), for
        the log redactor: whatever logs one, a worker's log lines never show it."""
        values = list(self.api_key_tenants())
        for secret in (self.kafka_sasl_password, self.kafka_ssl_key_password, self.redis_password):
            if secret is not None and secret.get_secret_value():
                values.append(secret.get_secret_value())
        try:
            url_password = urlsplit(self.redis_url).password
        except ValueError:  # not a URL redis-py could use either
            url_password = None
        if url_password:
            values.append(url_password)
        return values

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # a password in the Redis URL stays out of reprs and logs, like the SecretStr fields
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" else value

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return v.lower()

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, v: str) -> str:
        if v.lower() not in LOG_FORMATS:
            raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
        return v.lower()

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parse_api_keys(v.get_secret_value())
        return v

    @property
    def operations_port(self) -> int:
        """Where /metrics, /healthz and /readyz answer."""
        return self.metrics_port if self.metrics_port is not None else self.api_port

    @property
    def operations_apart(self) -> bool:
        """/metrics, /healthz and /readyz on a port of their own, not on the API port.

        /metrics names every tenant's models, tools and custom types, so an operator keeps
        that port on the internal network while the API port faces tenants.
        """
        return self.operations_port != self.api_port

    def api_key_tenants(self) -> dict[str, str]:
        """Bearer key -> tenant id; empty when no keys are configured."""
        if self.api_keys is None:
            return {}
        return parse_api_keys(self.api_keys.get_secret_value())


class _WithoutStackLines(PydanticBaseSettingsSource):
    """A ``.env`` source without the local stack's variables (StackSettings reads those)."""

    def __init__(self, source: DotEnvSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self._source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        stack = {name.lower() for name in STACK_ENV_NAMES}
        stack |= {name.removeprefix(ENV_PREFIX).lower() for name in STACK_ENV_NAMES}
        return {k: v for k, v in self._source().items() if k.lower() not in stack}


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


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


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
    """Build the settings, refusing unknown ``USAGE_*`` variables and naming bad ones.

    The local stack's variables (``USAGE_STACK_DIR``, ...) are known but not read here.
    """
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | STACK_ENV_NAMES
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
            if not field:  # a combination of settings: the message names the variables
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
