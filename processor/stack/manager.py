"""LocalStack: start, reuse, inspect and stop the local Kafka + Redis on loopback."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from processor.stack import kafka as kafka_mod
from processor.stack import kafka_jars, kafka_probe
from processor.stack import redis_server as redis_mod
from processor.stack.ports import LOOPBACK, pick_port, port_is_free
from processor.stack.process import (
    ProcessRecord,
    StackError,
    is_running,
    record_for,
    spawn,
    stop,
)
from processor.stack.settings import StackSettings
from processor.stack.state import ServiceState, StackInfo, StackState, load_state, save_state

log = logging.getLogger(__name__)

DEFAULT_KAFKA_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
DEFAULT_REDIS_PORT = 6379
# USAGE_TOPIC_PARTITIONS' default: what a topic the broker creates by itself gets
DEFAULT_PARTITIONS = 8
START_ATTEMPTS = 3


class LocalStack:
    """A single-node Kafka (KRaft) and a Redis server owned by this project.

    All state lives under ``settings.stack_dir``; the Kafka jars under ``settings.cache_dir``.
    ``up()`` reuses what already runs, ``down()`` stops only what it recorded starting.
    ``partitions`` is the broker's ``num.partitions`` (the worker's USAGE_TOPIC_PARTITIONS).
    """

    def __init__(
        self,
        settings: StackSettings,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        prefer_default_ports: bool = True,
        ready_timeout: float = 90.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.stack_dir = Path(settings.stack_dir).expanduser().resolve()
        self.cache_dir = Path(settings.cache_dir).expanduser().resolve()
        self.kafka_version = settings.kafka_version
        self.partitions = partitions
        self.prefer_default_ports = prefer_default_ports
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.kafka_layout = kafka_mod.KafkaLayout(self.stack_dir / "kafka")
        self.redis_layout = redis_mod.RedisLayout(self.stack_dir / "redis")
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # --- public API ----------------------------------------------------------------------

    def install(self) -> str:
        """Fetch the Kafka jars (once per version, cached) and make sure redis-server exists."""
        started = time.monotonic()
        cached = kafka_jars.jars_installed(self.cache_dir, self.kafka_version)
        if not cached:
            log.info("fetching Apache Kafka %s jars with Maven (once)", self.kafka_version)
        libs = kafka_jars.install_jars(self.cache_dir, self.kafka_version)
        redis_binary = redis_mod.install_redis()
        kafka_jars.java_binary()
        how = "cached" if cached else f"fetched in {time.monotonic() - started:.1f}s"
        return f"kafka {self.kafka_version} jars: {libs} ({how}); redis-server: {redis_binary}"

    def up(self) -> StackInfo:
        """Start whatever is not running yet and wait until both answer; idempotent."""
        with self._lock():
            state = load_state(self.stack_dir)
            state.redis = self._ensure_redis(state)
            save_state(self.stack_dir, state)
            state.kafka = self._ensure_kafka(state)
            save_state(self.stack_dir, state)
            info = self._info_from(state)
            assert info is not None
            return info

    def down(self, services: tuple[str, ...] = ("kafka", "redis")) -> None:
        """Stop the processes this stack recorded (SIGTERM, then SIGKILL); keep the data.

        ``services`` narrows it, e.g. ``("kafka",)`` to take only the broker away; the next
        ``up()`` starts it again on its recorded port.
        """
        with self._lock():
            state = load_state(self.stack_dir)
            for name, service in (("kafka", state.kafka), ("redis", state.redis)):
                if name not in services or service is None or service.process is None:
                    continue
                record = service.process
                if stop(record, timeout=self.stop_timeout, proc=self._procs.pop(record.pid, None)):
                    log.info("stopped %s (pid %d)", name, record.pid)
                service.process = None
                save_state(self.stack_dir, state)

    def info(self) -> StackInfo | None:
        """Where the stack answers, or None when either service is not running."""
        return self._info_from(load_state(self.stack_dir))

    def status(self) -> str:
        state = load_state(self.stack_dir)
        lines = [f"stack dir: {self.stack_dir}"]
        if state.kafka is None:
            lines.append(f"kafka {self.kafka_version}: not started")
        else:
            k = state.kafka
            lines.append(
                f"kafka {k.extra.get('version', '?')}: {self._describe(k.process)}, "
                f"bootstrap {LOOPBACK}:{k.port} (controller port "
                f"{k.extra.get('controller_port', '?')}), log {self.kafka_layout.server_log}"
            )
        if state.redis is None:
            lines.append("redis: not started")
        else:
            r = state.redis
            lines.append(
                f"redis: {self._describe(r.process)}, url {_redis_url(r.port)}, "
                f"log {self.redis_layout.log}"
            )
        return "\n".join(lines)

    def env_lines(self) -> list[str]:
        """``export USAGE_KAFKA_BOOTSTRAP=...`` and ``export USAGE_REDIS_URL=...``."""
        info = self.info()
        if info is None:
            raise StackError(
                f"the local stack in {self.stack_dir} is not running; run `usage-stream stack up`"
            )
        return info.env_lines()

    # --- internals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stack_dir / ".lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _describe(record: ProcessRecord | None) -> str:
        if record is None:
            return "stopped"
        if is_running(record):
            return f"running (pid {record.pid})"
        return f"not running (recorded pid {record.pid} is gone)"

    def _info_from(self, state: StackState) -> StackInfo | None:
        k, r = state.kafka, state.redis
        if k is None or r is None or k.process is None or r.process is None:
            return None
        if not (is_running(k.process) and is_running(r.process)):
            return None
        return StackInfo(
            kafka_bootstrap=f"{LOOPBACK}:{k.port}",
            redis_url=_redis_url(r.port),
            kafka_port=k.port,
            kafka_controller_port=int(k.extra.get("controller_port", 0)),
            redis_port=r.port,
            kafka_version=str(k.extra.get("version", self.kafka_version)),
            kafka_pid=k.process.pid,
            redis_pid=r.process.pid,
            stack_dir=str(self.stack_dir),
            kafka_log=str(self.kafka_layout.server_log),
            redis_log=str(self.redis_layout.log),
        )

    def _port(self, recorded: int | None, default: int, exclude: tuple[int, ...] = ()) -> int:
        if recorded and recorded not in exclude and port_is_free(recorded):
            return recorded
        return pick_port(default if self.prefer_default_ports else None, exclude=exclude)

    def _wait(
        self,
        name: str,
        record: ProcessRecord,
        probe: Callable[[], bool],
        tail: Callable[[], str],
    ) -> None:
        deadline = time.monotonic() + self.ready_timeout
        proc = self._procs.get(record.pid)
        while time.monotonic() < deadline:
            if probe():
                return
            if proc is not None:
                proc.poll()
            if not is_running(record):
                raise _StartFailed(f"{name} exited during start-up\n{tail()}")
            time.sleep(0.25)
        raise StackError(
            f"{name} did not answer within {self.ready_timeout:.0f}s (pid {record.pid} left "
            f"running; `usage-stream stack down` stops it)\n{tail()}"
        )

    # redis

    def _ensure_redis(self, state: StackState) -> ServiceState:
        current = state.redis
        if current is not None and current.process is not None and is_running(current.process):
            port = current.port
            self._wait(
                "redis",
                current.process,
                lambda: redis_mod.ping(LOOPBACK, port),
                self.redis_layout.tail,
            )
            return current
        binary = redis_mod.install_redis()
        recorded = current.port if current else None
        last_error: StackError | None = None
        for _ in range(START_ATTEMPTS):
            port = self._port(recorded, DEFAULT_REDIS_PORT)
            redis_mod.write_config(self.redis_layout, port)
            log.info("starting redis-server on %s:%d", LOOPBACK, port)
            proc = redis_mod.launch(binary, self.redis_layout)
            self._procs[proc.pid] = proc
            time.sleep(0.05)
            record = record_for(proc, "redis-server")
            service = ServiceState(port=port, process=record)
            state.redis = service
            save_state(self.stack_dir, state)
            try:
                self._wait(
                    "redis",
                    record,
                    functools.partial(redis_mod.ping, LOOPBACK, port),
                    self.redis_layout.tail,
                )
                return service
            except _StartFailed as exc:
                service.process = None
                save_state(self.stack_dir, state)
                last_error = exc
                recorded = None  # maybe the port was taken meanwhile; pick another
        assert last_error is not None
        raise StackError(str(last_error))

    # kafka

    def _ensure_kafka(self, state: StackState) -> ServiceState:
        current = state.kafka
        if current is not None and current.process is not None and is_running(current.process):
            port = current.port
            self._wait(
                "kafka",
                current.process,
                lambda: kafka_probe.probe_broker(LOOPBACK, port),
                self.kafka_layout.tail,
            )
            return current
        libs = kafka_jars.install_jars(self.cache_dir, self.kafka_version)
        java = kafka_jars.java_binary()
        layout = self.kafka_layout
        recorded = current.port if current else None
        recorded_ctl = int(current.extra.get("controller_port", 0)) if current else None
        last_error: StackError | None = None
        for _ in range(START_ATTEMPTS):
            port = self._port(recorded, DEFAULT_KAFKA_PORT)
            ctl = self._port(recorded_ctl, DEFAULT_CONTROLLER_PORT, exclude=(port,))
            kafka_mod.write_config(
                layout,
                broker_port=port,
                controller_port=ctl,
                partitions=self.partitions,
            )
            kafka_mod.format_storage(java, libs, layout)
            log.info("starting kafka %s on %s:%d", self.kafka_version, LOOPBACK, port)
            proc = spawn(
                kafka_mod.java_argv(
                    java, libs, layout, kafka_mod.KAFKA_MAIN, str(layout.server_properties)
                ),
                log_file=layout.stdout_log,
                cwd=layout.root,
            )
            self._procs[proc.pid] = proc
            time.sleep(0.05)
            record = record_for(proc, str(layout.server_properties))
            service = ServiceState(
                port=port,
                process=record,
                extra={"controller_port": ctl, "version": self.kafka_version},
            )
            state.kafka = service
            save_state(self.stack_dir, state)
            try:
                self._wait(
                    "kafka",
                    record,
                    functools.partial(kafka_probe.probe_broker, LOOPBACK, port),
                    layout.tail,
                )
                return service
            except _StartFailed as exc:
                service.process = None
                save_state(self.stack_dir, state)
                last_error = exc
                recorded = recorded_ctl = None
        assert last_error is not None
        raise StackError(str(last_error))


class _StartFailed(StackError):
    """The process died while starting (e.g. its port was taken meanwhile); retryable."""


def _redis_url(port: int) -> str:
    return f"redis://{LOOPBACK}:{port}/0"
