"""Pure parts of the local stack: ports, config rendering, state file, process identity."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from processor.stack import (
    LocalStack,
    StackError,
    StackInfo,
    StackSettings,
    kafka_jars,
    kafka_probe,
)
from processor.stack import kafka as kafka_mod
from processor.stack import redis_server as redis_mod
from processor.stack.ports import pick_port, port_is_free
from processor.stack.process import ProcessRecord, is_running, log_tail, record_for, spawn, stop
from processor.stack.state import ServiceState, StackState, load_state, save_state
from tests.integration.harness import build_settings, settings_env, stack_settings, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def _props(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


# --- ports -----------------------------------------------------------------------------


def test_pick_port_prefers_a_free_port() -> None:
    free = pick_port()
    assert port_is_free(free)
    assert pick_port(free) == free


def test_pick_port_avoids_a_taken_port_and_exclusions() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        assert not port_is_free(taken)
        other = pick_port(taken)
        assert other != taken and port_is_free(other)
    free = pick_port()
    assert pick_port(free, exclude=[free]) != free


# --- StackInfo / env -------------------------------------------------------------------


def test_env_lines_are_shell_exports() -> None:
    info = StackInfo(kafka_bootstrap="127.0.0.1:9092", redis_url="redis://127.0.0.1:6379/0")
    assert info.env_lines() == [
        "export USAGE_KAFKA_BOOTSTRAP=127.0.0.1:9092",
        "export USAGE_REDIS_URL=redis://127.0.0.1:6379/0",
    ]
    odd = StackInfo(kafka_bootstrap="h:1", redis_url="redis://:p w@h:2/0")
    assert shlex.split(odd.env_lines()[1]) == ["export", "USAGE_REDIS_URL=redis://:p w@h:2/0"]


def test_env_lines_refuse_a_stopped_stack(tmp_path: Path) -> None:
    local = LocalStack(StackSettings(stack_dir=tmp_path / "s", cache_dir=tmp_path / "c"))
    assert local.info() is None
    with pytest.raises(StackError, match="not running"):
        local.env_lines()
    assert "not started" in local.status()
    local.down()  # nothing recorded: nothing to do


# --- Kafka config ----------------------------------------------------------------------


def test_server_properties_single_node_kraft_on_loopback(tmp_path: Path) -> None:
    props = _props(
        kafka_mod.render_server_properties(
            data_dir=tmp_path / "data", broker_port=19092, controller_port=19093, partitions=4
        )
    )
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["num.partitions"] == "4"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"


def test_log4j_configs_write_to_the_server_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    assert f"File={log}" in kafka_mod.render_log4j(log)
    assert f"fileName = {log}" in kafka_mod.render_log4j2(log)


def test_cluster_id_is_kafka_uuid_shaped() -> None:
    # 1 in 64 random ids starts with "-"; 2,000 draws make missing the rule near impossible
    ids = {kafka_mod.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and "=" not in i and not i.startswith("-") for i in ids)


def test_a_stored_cluster_id_starting_with_a_dash_formats(tmp_path: Path) -> None:
    """Stack dirs written before ids avoided "-" must still start: one-token option."""
    settings = stack_settings(tmp_path / "stack")
    libs = kafka_jars.install_jars(settings.cache_dir, settings.kafka_version)
    layout = kafka_mod.KafkaLayout(tmp_path / "stack" / "kafka")
    kafka_mod.write_config(
        layout, broker_port=pick_port(), controller_port=pick_port(), partitions=1
    )
    layout.cluster_id_file.write_text("-Zy8Fw4pQ2uRk1n0bXc3aQ\n")
    kafka_mod.format_storage(kafka_jars.java_binary(), libs, layout)
    assert "-Zy8Fw4pQ2uRk1n0bXc3aQ" in (layout.data_dir / "meta.properties").read_text()


def test_embedded_pom_is_deploy_local_pom() -> None:
    assert (REPO_ROOT / "deploy" / "local" / "pom.xml").read_text() == kafka_jars.POM_XML
    assert "<artifactId>kafka_2.13</artifactId>" in kafka_jars.POM_XML
    assert "${kafka.version}" in kafka_jars.POM_XML


def test_install_jars_skips_maven_when_marker_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = kafka_jars.kafka_home(tmp_path, "9.9.9")
    (home / "libs").mkdir(parents=True)
    (home / kafka_jars.COMPLETE_MARKER).write_text("done\n")
    monkeypatch.setattr(shutil, "which", lambda _name: None)  # no mvn, no problem
    assert kafka_jars.install_jars(tmp_path, "9.9.9") == home / "libs"


def test_install_jars_without_maven_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(StackError, match="Maven"):
        kafka_jars.install_jars(tmp_path, "9.9.9")


def test_metadata_request_and_response_codec() -> None:
    request = kafka_probe.metadata_request(7, client_id="c")
    (size,) = struct.unpack(">i", request[:4])
    assert size == len(request) - 4
    assert struct.unpack(">hhi", request[4:12]) == (3, 4, 7)

    def kstr(s: str) -> bytes:
        return struct.pack(">h", len(s)) + s.encode()

    frame = (
        struct.pack(">iii", 7, 0, 1)
        + struct.pack(">i", 1)
        + kstr("127.0.0.1")
        + struct.pack(">i", 9092)
        + struct.pack(">h", -1)
        + kstr("cluster")
        + struct.pack(">ii", 1, 0)
    )
    assert kafka_probe.parse_metadata_brokers(7, frame) == [(1, "127.0.0.1", 9092)]
    with pytest.raises(ValueError):
        kafka_probe.parse_metadata_brokers(8, frame)


def test_probe_broker_is_false_when_nothing_listens() -> None:
    assert kafka_probe.probe_broker("127.0.0.1", pick_port(), timeout=0.5) is False


# --- Redis config ----------------------------------------------------------------------


def test_redis_conf_persists_with_aof_on_loopback(tmp_path: Path) -> None:
    layout = redis_mod.RedisLayout(tmp_path)
    conf = redis_mod.render_redis_conf(layout, 16379)
    lines = set(conf.splitlines())
    for expected in (
        "bind 127.0.0.1",
        "port 16379",
        "appendonly yes",
        "appendfsync everysec",
        "daemonize no",
        f"dir {tmp_path / 'data'}",
        f"pidfile {tmp_path / 'redis.pid'}",
        f"logfile {tmp_path / 'redis.log'}",
    ):
        assert expected in lines


def test_redis_conf_options_of_a_tests_own_server(tmp_path: Path) -> None:
    """What the tests' own servers add to the stack's configuration, and only that."""
    layout = redis_mod.RedisLayout(tmp_path)
    stack = redis_mod.render_redis_conf(layout, 16379).splitlines()
    own = redis_mod.render_redis_conf(
        layout, 16379, appendonly=False, snapshots=False, extra=("replicaof 127.0.0.1 1",)
    ).splitlines()
    assert set(stack) - set(own) == {"appendonly yes", "save 3600 1 300 100 60 10000"}
    assert set(own) - set(stack) == {"appendonly no", 'save ""', "replicaof 127.0.0.1 1"}


def test_redis_ping_is_false_when_nothing_listens() -> None:
    assert redis_mod.ping("127.0.0.1", pick_port(), timeout=0.5) is False


# --- state file ------------------------------------------------------------------------


def test_state_round_trip(tmp_path: Path) -> None:
    state = StackState(
        kafka=ServiceState(
            port=9092,
            process=ProcessRecord(123, 456, "server.properties"),
            extra={"controller_port": 9093, "version": "3.9.1"},
        ),
        redis=ServiceState(port=6379, process=None),
    )
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    raw = json.loads((tmp_path / "stack.json").read_text())
    assert raw["kafka"]["process"]["pid"] == 123
    assert raw["redis"]["process"] is None
    assert not list(tmp_path.glob("*.tmp*"))


def test_missing_state_is_empty_and_corrupt_state_is_an_error(tmp_path: Path) -> None:
    assert load_state(tmp_path) == StackState()
    (tmp_path / "stack.json").write_text("{not json")
    with pytest.raises(StackError, match="unreadable"):
        load_state(tmp_path)


def test_status_reports_a_dead_recorded_process(tmp_path: Path) -> None:
    settings = StackSettings(stack_dir=tmp_path, cache_dir=tmp_path / "cache")
    dead = ProcessRecord(pid=2**22 + 1, start_ticks=1, cmd_token="redis-server")
    save_state(tmp_path, StackState(redis=ServiceState(port=6390, process=dead)))
    local = LocalStack(settings)
    assert "recorded pid" in local.status()
    assert local.info() is None
    local.down()
    assert load_state(tmp_path).redis == ServiceState(port=6390, process=None)


# --- processes -------------------------------------------------------------------------


def test_process_identity_and_stop(tmp_path: Path) -> None:
    proc = spawn(
        [sys.executable, "-c", "import time; time.sleep(60)", "marker-xyz"],
        log_file=tmp_path / "p.log",
        cwd=tmp_path,
    )
    record = record_for(proc, "marker-xyz")
    assert is_running(record)
    assert not is_running(ProcessRecord(record.pid, record.start_ticks, "other-token"))
    assert not is_running(ProcessRecord(record.pid, record.start_ticks + 1, "marker-xyz"))
    assert os.getpgid(proc.pid) == proc.pid  # its own process group
    assert stop(record, timeout=5, proc=proc) is True
    assert not is_running(record)
    assert proc.poll() is not None
    assert stop(record, timeout=5, proc=proc) is False  # nothing of ours left to stop


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    proc = spawn(
        [sys.executable, "-c", code, "stubborn"], log_file=tmp_path / "p.log", cwd=tmp_path
    )
    record = record_for(proc, "stubborn")

    # wait until the child has installed its handler (it answers nothing, so poll stat)
    def handler_installed() -> bool:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        ignored = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
        return bool(int(ignored.split()[1], 16) & (1 << 14))  # bit of SIGTERM (15)

    asyncio.run(wait_for(handler_installed, timeout=10, interval=0.02))
    assert stop(record, timeout=0.5, proc=proc) is True
    assert proc.wait(timeout=5) == -9


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    assert "no log" in log_tail(log)
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 3) == "line 97\nline 98\nline 99"


# --- harness pieces that need no stack -------------------------------------------------


def test_build_settings_ignores_ambient_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USAGE_APP_ID", "from-env")
    monkeypatch.setenv("USAGE_LOG_LEVEL", "debug")
    settings = build_settings(key_prefix="x")
    assert settings.app_id == "usage-stream"
    assert settings.log_level == "info"
    assert os.environ["USAGE_APP_ID"] == "from-env"  # restored


def test_settings_env_round_trips_every_field(tmp_path: Path) -> None:
    settings = build_settings(api_keys=SecretStr("k1:tenant-a"), api_port=7001, topic_partitions=4)
    env = settings_env(settings)
    assert env["USAGE_API_KEYS"] == "k1:tenant-a"
    assert env["USAGE_API_PORT"] == "7001"
    assert "USAGE_PRICES_FILE" not in env  # None is left out
    # a child process reading exactly this environment rebuilds the same settings
    code = (
        "import json; from processor.settings import load_settings; s = load_settings(); "
        "print(json.dumps(s.model_dump(mode='json')))"
    )
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_")}
    child_env.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == settings.model_dump(mode="json")


async def test_wait_for_returns_the_value_or_times_out() -> None:
    calls = {"n": 0}

    async def third_time() -> int:
        calls["n"] += 1
        return calls["n"] if calls["n"] >= 3 else 0

    assert await wait_for(third_time, timeout=5, interval=0.01) == 3
    with pytest.raises(TimeoutError, match="never"):
        await wait_for(lambda: False, timeout=0.05, interval=0.01, message="never")
