"""Apache Kafka, single node in KRaft mode: its files, configuration and command lines.

The broker runs with the machine's Java as ``java -cp 'libs/*' kafka.Kafka
server.properties`` after the storage tool formats its log dir; the jars come from
``processor.stack.kafka_jars``, the readiness probe from ``processor.stack.kafka_probe``.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from processor.stack.process import StackError, log_tail

KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
NODE_ID = 1
JVM_HEAP_OPTS = ("-Xms256m", "-Xmx1g")
JVM_OPTS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


@dataclass(frozen=True)
class KafkaLayout:
    """Files of one broker instance under the stack dir."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def server_properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j_properties(self) -> Path:
        return self.root / "log4j.properties"

    @property
    def log4j2_properties(self) -> Path:
        return self.root / "log4j2.properties"

    @property
    def server_log(self) -> Path:
        """What log4j writes (the broker's own log)."""
        return self.root / "server.log"

    @property
    def stdout_log(self) -> Path:
        """stdout and stderr of the JVM (start-up failures land here)."""
        return self.root / "kafka.out"

    @property
    def cluster_id_file(self) -> Path:
        return self.root / "cluster.id"

    def tail(self, lines: int = 40) -> str:
        return (
            f"--- {self.stdout_log} ---\n{log_tail(self.stdout_log, lines)}\n"
            f"--- {self.server_log} ---\n{log_tail(self.server_log, lines)}"
        )


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).

    Like Kafka's own ``Uuid.randomUuid``, never one starting with ``-``, which a command
    line would read as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def render_server_properties(
    *,
    data_dir: Path,
    broker_port: int,
    controller_port: int,
    host: str = "127.0.0.1",
    partitions: int = 8,
) -> str:
    """server.properties of a single combined broker+controller node on loopback."""
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{broker_port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(partitions),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.retention.hours": "168",
        "log.segment.bytes": str(256 * 1024 * 1024),
        "message.max.bytes": str(2 * 1024 * 1024),
    }
    lines = ["# written by usage-stream's local stack; regenerated on every start"]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def render_log4j(server_log: Path) -> str:
    """log4j 1.x (reload4j) configuration for Kafka 3.x: everything to one file."""
    return "\n".join(
        [
            "log4j.rootLogger=INFO, file",
            "log4j.appender.file=org.apache.log4j.RollingFileAppender",
            f"log4j.appender.file.File={server_log}",
            "log4j.appender.file.MaxFileSize=20MB",
            "log4j.appender.file.MaxBackupIndex=2",
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout",
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n",
            "log4j.logger.kafka.request.logger=WARN",
            "log4j.logger.state.change.logger=WARN",
            "log4j.logger.org.apache.kafka.controller=INFO",
            "",
        ]
    )


def render_log4j2(server_log: Path) -> str:
    """log4j2 configuration, used by Kafka 4.x (harmless for 3.x)."""
    return "\n".join(
        [
            "status = warn",
            "appender.file.type = File",
            "appender.file.name = FILE",
            f"appender.file.fileName = {server_log}",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "rootLogger.level = info",
            "rootLogger.appenderRef.file.ref = FILE",
            "",
        ]
    )


def java_argv(java: str, libs: Path, layout: KafkaLayout, main: str, *args: str) -> list[str]:
    return [
        java,
        *JVM_HEAP_OPTS,
        *JVM_OPTS,
        f"-Dlog4j.configuration=file:{layout.log4j_properties}",
        f"-Dlog4j2.configurationFile={layout.log4j2_properties}",
        f"-Dkafka.logs.dir={layout.root}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def write_config(
    layout: KafkaLayout, *, broker_port: int, controller_port: int, partitions: int
) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.server_properties.write_text(
        render_server_properties(
            data_dir=layout.data_dir,
            broker_port=broker_port,
            controller_port=controller_port,
            partitions=partitions,
        )
    )
    layout.log4j_properties.write_text(render_log4j(layout.server_log))
    layout.log4j2_properties.write_text(render_log4j2(layout.server_log))


def format_storage(java: str, libs: Path, layout: KafkaLayout) -> None:
    """Format the log dir once (KRaft needs it); a formatted dir keeps its cluster id."""
    if (layout.data_dir / "meta.properties").is_file():
        return
    if layout.cluster_id_file.is_file():
        cluster_id = layout.cluster_id_file.read_text().strip()
    else:
        cluster_id = new_cluster_id()
        layout.cluster_id_file.write_text(cluster_id + "\n")
    argv = java_argv(
        java,
        libs,
        layout,
        STORAGE_TOOL,
        "format",
        f"--cluster-id={cluster_id}",  # one token: an old id may start with "-"
        "-c",
        str(layout.server_properties),
        "--ignore-formatted",
    )
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise StackError(
            f"formatting the Kafka log dir {layout.data_dir} failed (exit {result.returncode}):\n"
            + (result.stdout + result.stderr).strip()
        )
