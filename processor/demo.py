"""`usage-stream demo`: the local stack, a worker, a simulated fleet, a live dashboard.

Everything is real: the fleet publishes to Kafka, the worker consumes into Redis, and the
screen (processor/demo_board.py) is drawn from the worker's /metrics and HTTP API, from
Kafka's offsets and from the notifications topic. The fleet includes a runaway agent (a
run tree that keeps spending tokens) and a big spender (a user whose daily cost soars);
the alerts they trigger are listed as they arrive.

Each demo runs in a namespace of its own, ``demo-<8 hex digits>``: its key prefix, app id
(so its consumer groups), topics and run ids, with tenant ``demo`` behind an API key made
for the run. Nothing another worker, test or earlier demo left on the same stack can show
up in it, and on the way out it deletes its topics and Redis keys again.

Processes: the worker runs in the demo's own process group, so Ctrl-C (SIGINT to the
group) reaches both at once, and the demo waits for the worker before it exits; SIGTERM
to the demo alone does the same. A second signal while stopping kills the worker at once.
The local stack, when the demo had to start it, runs detached (its own sessions) and
keeps running: `usage-stream stack down` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live

from processor.connections import kafka_options, redis_client
from processor.demo_board import (
    AlertFeed,
    DemoInfo,
    KafkaProbe,
    Published,
    Sampler,
    Snapshot,
    alert_fields,
    render,
    summary_line,
)
from processor.local_worker import LocalWorker, WorkerStartError
from processor.logs import configure_logging
from processor.settings import ENV_PREFIX, Settings
from processor.simulate import Fleet, encode
from processor.stack.connect import with_local_stack
from processor.stack.ports import pick_port
from processor.stack.settings import StackSettings
from processor.topics import ensure_topics, namespaced, owned_topics

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"
#: The fleet's pace: a tenth of a second of traffic per send round.
_TICKS_PER_S = 10
#: After --seconds, how long the demo waits for the worker to apply what was published.
_DRAIN_S = 15.0

# What a careless producer sends now and then: each lands on the DLQ with its reason.
_BAD_INPUT: list[bytes] = [
    b'{"id": "oops", "kind": "tokens"',  # truncated JSON
    b'{"id": "x1", "kind": "tokens", "runId": "r", "userId": "u", "timestamp": 1700000000000,'
    b' "model": "gpt-4o", "tokens": {"prompt": 10, "completion": 5, "reasoning": 9}}',
    b'{"id": "x2", "kind": "tool", "runId": "r", "userId": "u", "timestamp": 1700000000000,'
    b' "toolName": "search", "durationMs": 5, "success": true, "tokenz": 1}',
]


@dataclass(frozen=True)
class Namespace:
    """The names one demo run writes under (see the module docstring)."""

    name: str
    api_key: str

    @classmethod
    def new(cls) -> Namespace:
        return cls(name=f"demo-{secrets.token_hex(4)}", api_key=secrets.token_urlsafe(24))

    def apply(self, settings: Settings) -> Settings:
        """The settings of the demo's worker: ``settings`` (the stack, log level and
        format, ...) with the namespace's names, a free port, and the namespace's key."""
        api_port = pick_port(settings.api_port)
        update: dict[str, object] = {
            **namespaced(self.name),
            "app_id": f"usage-{self.name}",
            "api_port": api_port,
            "api_keys": SecretStr(f"{self.api_key}:{DEMO_TENANT}"),
        }
        if getattr(settings, "metrics_port", None) is not None:
            update["metrics_port"] = pick_port(exclude=(api_port,))
        return settings.model_copy(update=update)


def run_demo(
    settings: Settings,
    *,
    seconds: float = 0,
    rate: int = 200,
    users: int = 20,
    headless: bool = False,
) -> int:
    """Run the demo until ``seconds`` have passed (0: until Ctrl-C); 0 when it ran, 1 when
    the worker could not start or died."""
    headless = headless or not sys.stdout.isatty()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(settings, seconds=seconds, rate=rate, users=users, headless=headless)
    except KeyboardInterrupt:
        return 0  # stopped before anything of the demo's own was started
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the demo the way Ctrl-C does, cleaning up on the way."""
    raise KeyboardInterrupt


def _say(text: str) -> None:
    print(text, flush=True)


def _run(settings: Settings, *, seconds: float, rate: int, users: int, headless: bool) -> int:
    local = not ({ENV_PREFIX + "KAFKA_BOOTSTRAP", ENV_PREFIX + "REDIS_URL"} & set(os.environ))
    if local:
        _say("usage-stream demo: starting the local stack (Kafka KRaft + Redis) if needed ...")
    stack = StackSettings()
    settings = with_local_stack(settings, stack)
    ns = Namespace.new()
    demo = ns.apply(settings)
    stack_dir = Path(stack.stack_dir)
    stack_dir.mkdir(parents=True, exist_ok=True)
    log_path = stack_dir / "demo.log"
    log_path.write_bytes(b"")  # this run's log only; both processes then append to it
    configure_logging(demo.log_level, demo.log_format, secrets=[ns.api_key], path=log_path)
    key_path = stack_dir / "demo-api-key"
    _write_private(key_path, ns.api_key)

    worker = LocalWorker(demo, log_path, own_session=False)
    info = DemoInfo(
        tenant=DEMO_TENANT,
        key_prefix=demo.key_prefix,
        api_url=worker.url,
        metrics_url=f"{worker.ops_url}/metrics",
        key_file=str(key_path),
        log_file=str(log_path),
        rate=rate,
        users=users,
        seconds=seconds,
    )
    _say(
        f"namespace {ns.name}: tenant {DEMO_TENANT}, key prefix {demo.key_prefix}, "
        f"topics {ns.name}.usage.*"
    )
    code = 0
    try:
        asyncio.run(ensure_topics(demo))
        _say(f"starting a worker (log: {log_path}) ...")
        worker.start()
        worker.wait_ready()
        _say(
            f"worker ready (pid {worker.pid}): API {info.api_url}/v1, metrics "
            f"{info.metrics_url}, OpenAPI {info.openapi_url}; the API key is in {key_path}"
        )
        code = asyncio.run(_drive(demo, ns, info, worker, headless=headless))
    except KeyboardInterrupt:
        pass
    except WorkerStartError as exc:
        print(f"usage-stream demo: {exc}", file=sys.stderr, flush=True)
        code = 1
    except Exception as exc:  # Kafka or Redis away, most likely: say so, clean up, exit 1
        log.exception("the demo failed")
        print(f"usage-stream demo: {exc!r} (details in {log_path})", file=sys.stderr, flush=True)
        code = 1
    finally:
        _shut_down(worker, demo, local=local)
    return code


def _write_private(path: Path, text: str) -> None:
    """Only the user can read the key: it opens the demo tenant's API while the demo
    runs. The file stays afterwards (the next demo overwrites it), so that a log can be
    checked for the key; with the demo's worker gone it opens nothing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


@contextlib.contextmanager
def _hurried(worker: LocalWorker) -> Iterator[None]:
    """While stopping, a further Ctrl-C or SIGTERM kills the worker instead of waiting."""

    def hurry(signum: int, frame: FrameType | None) -> None:
        worker.kill()

    saved = {sig: signal.signal(sig, hurry) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _shut_down(worker: LocalWorker, settings: Settings, *, local: bool) -> None:
    with _hurried(worker):
        if worker.pid is not None:
            _say("stopping the demo's worker ...")
        worker.stop()
        try:
            asyncio.run(asyncio.wait_for(_remove_namespace(settings), 30))
        except Exception as exc:
            _say(f"could not remove the demo's topics and keys ({settings.key_prefix}*): {exc!r}")
    if local:
        _say("demo stopped; the stack keeps running (`usage-stream stack down` stops it)")
    else:
        _say("demo stopped")


async def _remove_namespace(settings: Settings) -> None:
    """Delete the run's topics (Faust's own are named after the app id) and Redis keys."""
    admin = AIOKafkaAdminClient(**kafka_options(settings), request_timeout_ms=10000)
    await admin.start()
    try:
        owned = set(owned_topics(settings))
        topics = [
            t
            for t in await admin.list_topics()
            if t in owned or t.startswith(f"{settings.app_id}-")
        ]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
    redis = redis_client(settings)
    try:
        batch: list[bytes] = []
        async for key in redis.scan_iter(match=f"{settings.key_prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await redis.unlink(*batch)
                batch.clear()
        if batch:
            await redis.unlink(*batch)
    finally:
        await redis.aclose()


async def _drive(
    settings: Settings, ns: Namespace, info: DemoInfo, worker: LocalWorker, *, headless: bool
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signalled = False

    def on_signal() -> None:
        nonlocal signalled
        signalled = True
        stop.set()

    # A signal ignored when the demo started stays ignored (a shell's background job
    # ignores SIGINT); the loop's removal resets a handler, hence the restore.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    handled = [sig for sig, handler in previous.items() if handler is not signal.SIG_IGN]
    for sig in handled:
        loop.add_signal_handler(sig, on_signal)
    try:
        return await _show(settings, ns, info, worker, stop, lambda: signalled, headless=headless)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig])


async def _show(
    settings: Settings,
    ns: Namespace,
    info: DemoInfo,
    worker: LocalWorker,
    stop: asyncio.Event,
    signalled: Callable[[], bool],
    *,
    headless: bool,
) -> int:
    loop = asyncio.get_running_loop()
    started = loop.time()
    if info.seconds:
        loop.call_later(info.seconds, stop.set)
    alerts = AlertFeed()
    probe = KafkaProbe(settings)
    producer = AIOKafkaProducer(**kafka_options(settings), acks="all", enable_idempotence=True)
    published = Published()
    fleet = Fleet(
        seed=int(time.time()),
        users=info.users,
        run_prefix=ns.name,
        tenant_id=DEMO_TENANT,
        runaway=True,
    )
    async with contextlib.AsyncExitStack() as resources:
        await alerts.start(settings)  # before the fleet: every alert of this demo is seen
        resources.push_async_callback(alerts.stop)
        await probe.start()
        resources.push_async_callback(probe.stop)
        await producer.start()
        resources.push_async_callback(producer.stop)
        http = await resources.enter_async_context(
            aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {ns.api_key}"},
                timeout=aiohttp.ClientTimeout(total=5),
            )
        )
        sampler = Sampler(info, http, probe, alerts, published)
        publisher = asyncio.create_task(
            _publish(settings, producer, fleet, info.rate, published, stop, started)
        )
        resources.callback(publisher.cancel)
        board = _Board(info, headless)
        failure = ""
        with board:
            tick = 0
            while not stop.is_set():
                board.show(await sampler.sample(loop.time() - started, loop.time()))
                failure = _failure(worker, publisher)
                if failure and not stop.is_set():
                    break
                tick += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), started + tick - loop.time())
            stop.set()
            if not failure:
                await publisher
            if not failure and not signalled():
                await producer.flush()
                await _drain(sampler, board, loop.time, started)
        if failure:
            print(f"usage-stream demo: {failure}", file=sys.stderr, flush=True)
            return 1
        if headless and not signalled():
            _print_alerts(alerts)
    return 0


def _failure(worker: LocalWorker, publisher: asyncio.Task[None]) -> str:
    """Why the demo cannot go on (the worker died, publishing failed), or ""."""
    code = worker.exit_code()
    if code is not None:
        return f"the worker exited with code {code}; its log ends:\n{worker.tail()}"
    if publisher.done() and not publisher.cancelled() and publisher.exception() is not None:
        return f"publishing the fleet's entries failed: {publisher.exception()!r}"
    return ""


async def _drain(
    sampler: Sampler, board: _Board, clock: Callable[[], float], started: float
) -> Snapshot:
    """After the fleet stopped: samples until the worker has applied everything published
    (lag 0), for at most _DRAIN_S, so the last figures are the whole run's."""
    deadline = clock() + _DRAIN_S
    while True:
        now = clock()
        snap = await sampler.sample(now - started, now)
        board.show(snap)
        if snap.lag == 0 or now >= deadline:
            return snap
        await asyncio.sleep(1.0)  # the once-a-second pace of the screen


def _print_alerts(alerts: AlertFeed) -> None:
    rules = ", ".join(f"{rule} {level}: {n}" for (rule, level), n in sorted(alerts.by_rule.items()))
    _say(f"alerts received: {alerts.total}" + (f" ({rules})" if rules else ""))
    for a in alerts.latest:
        _say("alert " + "  ".join(alert_fields(a)))


class _Board:
    """The live dashboard (rich Live, redrawn in place) or, headless, one line a second."""

    def __init__(self, info: DemoInfo, headless: bool) -> None:
        self._info = info
        self._live: Live | None = None
        if not headless:
            self._live = Live(
                console=Console(),
                auto_refresh=False,
                vertical_overflow="crop",
                redirect_stdout=False,
                redirect_stderr=False,
            )

    def __enter__(self) -> _Board:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()  # the last screen stays on the terminal

    def show(self, snap: Snapshot) -> None:
        if self._live is not None:
            self._live.update(render(snap, self._info), refresh=True)
        else:
            _say(summary_line(snap))


async def _publish(
    settings: Settings,
    producer: AIOKafkaProducer,
    fleet: Fleet,
    rate: int,
    published: Published,
    stop: asyncio.Event,
    started: float,
) -> None:
    """The fleet's traffic at ``rate`` entries/s, in rounds of a tenth of a second."""
    loop = asyncio.get_running_loop()
    tick = 0
    while not stop.is_set():
        await _publish_round(settings, producer, fleet, rate, published)
        tick += 1
        delay = started + tick / _TICKS_PER_S - loop.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


async def _publish_round(
    settings: Settings,
    producer: AIOKafkaProducer,
    fleet: Fleet,
    rate: int,
    published: Published,
) -> None:
    """One round of the fleet's traffic, with re-sends and the odd bad entry."""
    batch: list[tuple[bytes, bytes]] = []
    for entry in fleet.entries(max(1, rate // _TICKS_PER_S)):
        entry["timestamp"] = time.time_ns() // 1_000_000
        batch.append(encode(entry))
    if random.random() < 0.3:
        batch.append(random.choice(batch))  # a producer retry: same id, changes nothing
        published.resent += 1
    if random.random() < 0.05:
        batch.append((b"bad-producer", random.choice(_BAD_INPUT)))
        published.bad += 1
    for key, value in batch:
        await producer.send(settings.topic_entries, value, key=key)
    published.entries += len(batch)
