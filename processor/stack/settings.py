"""Settings of the local stack only (``usage-stream stack``, the demo, the bench, the tests).

A worker never reads them: they say where the local Kafka and Redis keep their state and
which Kafka they run, which is no concern of a worker pointed at any Kafka and Redis. They
share the ``USAGE_`` prefix so that one ``.env`` file or shell configures both; the
worker's settings loader skips exactly these names (``STACK_ENV_NAMES``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# the worker's prefix (processor.settings.ENV_PREFIX), spelled out: that module imports this one
STACK_ENV_PREFIX = "USAGE_"


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=STACK_ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        # every other USAGE_* variable is the worker's, checked by its own loader
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
    )

    stack_dir: Path = Field(
        Path(".usage-stack"), description="State of the local stack (logs, data, pids)"
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "usage-stream",
        description="Downloaded Kafka jars (kept across clones)",
    )
    kafka_version: str = Field(
        "3.9.1", min_length=1, description="Apache Kafka version the local stack runs"
    )


#: The variables of StackSettings, upper case (``USAGE_STACK_DIR``, ...).
STACK_ENV_NAMES = frozenset(STACK_ENV_PREFIX + name.upper() for name in StackSettings.model_fields)
