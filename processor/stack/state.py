"""``stack.json``: what the local stack runs where (ports, pids, urls), and StackInfo."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor.stack.process import ProcessRecord, StackError

STATE_FILE = "stack.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class StackInfo:
    """Where a running local stack answers; what a worker needs to connect."""

    kafka_bootstrap: str
    redis_url: str
    kafka_port: int = 0
    kafka_controller_port: int = 0
    redis_port: int = 0
    kafka_version: str = ""
    kafka_pid: int | None = None
    redis_pid: int | None = None
    stack_dir: str = ""
    kafka_log: str = ""
    redis_log: str = ""

    def env(self) -> dict[str, str]:
        return {"USAGE_KAFKA_BOOTSTRAP": self.kafka_bootstrap, "USAGE_REDIS_URL": self.redis_url}

    def env_lines(self) -> list[str]:
        return [f"export {key}={shlex.quote(value)}" for key, value in self.env().items()]


@dataclass
class ServiceState:
    """One service of the stack as recorded: its ports and, while it runs, its process."""

    port: int
    process: ProcessRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "process": self.process.to_json() if self.process else None,
            **self.extra,
        }

    @classmethod
    def from_json(cls, raw: Any) -> ServiceState:
        if not isinstance(raw, dict):
            raise ValueError("service entry must be an object")
        extra = {k: v for k, v in raw.items() if k not in {"port", "process"}}
        proc = raw.get("process")
        return cls(
            port=int(raw["port"]),
            process=ProcessRecord.from_json(proc) if proc is not None else None,
            extra=extra,
        )


@dataclass
class StackState:
    kafka: ServiceState | None = None
    redis: ServiceState | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "kafka": self.kafka.to_json() if self.kafka else None,
            "redis": self.redis.to_json() if self.redis else None,
        }

    @classmethod
    def from_json(cls, raw: Any) -> StackState:
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            raise ValueError(f"not a version {STATE_VERSION} stack state")
        kafka, redis = raw.get("kafka"), raw.get("redis")
        return cls(
            kafka=ServiceState.from_json(kafka) if kafka is not None else None,
            redis=ServiceState.from_json(redis) if redis is not None else None,
        )


def load_state(stack_dir: Path) -> StackState:
    """The recorded state, or an empty one when there is none."""
    path = stack_dir / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return StackState()
    try:
        return StackState.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(
            f"{path} is unreadable ({exc}); stop what it started by hand and delete it"
        ) from exc


def save_state(stack_dir: Path, state: StackState) -> None:
    """Write atomically, so a crash never leaves half a file."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    path = stack_dir / STATE_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
