"""Apache Kafka, single node in KRaft mode, from the broker's jars on Maven Central.

The jars are fetched once per Kafka version with Maven into ``<cache_dir>/kafka-<version>``
(shared by every clone on the machine); the broker runs with the machine's Java as
``java -cp 'libs/*' kafka.Kafka server.properties`` after the storage tool formats its log dir.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from processor.stack.process import StackError, log_tail

# Identical to deploy/local/pom.xml (a unit test keeps them in step). Embedded so that an
# installed package, without the repository around it, can fetch the jars too.
POM_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!--
  Apache Kafka (single node, KRaft) for the local stack of usage-stream, assembled from the
  broker's jars on Maven Central. Used only to fetch the jars:

    mvn -q -f pom.xml dependency:copy-dependencies -Dkafka.version=3.9.1 -DoutputDirectory=DIR

  `usage-stream stack install` does this into the cache directory; this file and the copy
  embedded in processor/stack/kafka.py are kept identical by a unit test.
-->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>usage-stream.local</groupId>
  <artifactId>local-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>

  <properties>
    <kafka.version>3.9.1</kafka.version>
    <slf4j.version>1.7.36</slf4j.version>
    <reload4j.version>1.2.25</reload4j.version>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>

  <dependencies>
    <!-- the broker (kafka.Kafka) and the storage tool (kafka.tools.StorageTool) -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>${kafka.version}</version>
    </dependency>
    <!-- logging binding so the broker logs through log4j to a file -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>${slf4j.version}</version>
    </dependency>
    <dependency>
      <groupId>ch.qos.reload4j</groupId>
      <artifactId>reload4j</artifactId>
      <version>${reload4j.version}</version>
    </dependency>
  </dependencies>

  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>3.6.1</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
"""

COMPLETE_MARKER = ".complete"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
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


# --- jars ------------------------------------------------------------------------------


def kafka_home(cache_dir: Path, version: str) -> Path:
    return cache_dir.expanduser() / f"kafka-{version}"


def libs_dir(cache_dir: Path, version: str) -> Path:
    return kafka_home(cache_dir, version) / "libs"


def jars_installed(cache_dir: Path, version: str) -> bool:
    return (kafka_home(cache_dir, version) / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def install_jars(cache_dir: Path, version: str, *, quiet: bool = True) -> Path:
    """Fetch the broker's jars with Maven unless already done; returns the libs dir.

    Idempotent and safe against concurrent installs (file lock); a completed install is
    marked by a file, so a second call runs nothing at all.
    """
    home = kafka_home(cache_dir, version)
    libs = home / "libs"
    if jars_installed(cache_dir, version):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven (mvn) is needed once to fetch the Kafka jars; install it "
            "(Debian: apt-get install -y maven) or copy the jars into " + str(libs)
        )
    with _file_lock(home.parent / f"kafka-{version}.lock"):
        if jars_installed(cache_dir, version):
            return libs
        home.mkdir(parents=True, exist_ok=True)
        pom = home / "pom.xml"
        pom.write_text(POM_XML)
        staging = home / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        argv = [
            mvn,
            "-B",
            "-U",
            "-Dstyle.color=never",
            *(["-q"] if quiet else []),
            "-f",
            str(pom),
            f"-Dkafka.version={version}",
            f"-DoutputDirectory={staging}",
            "dependency:copy-dependencies",
        ]
        started = time.monotonic()
        result = subprocess.run(argv, cwd=home, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = _ANSI.sub("", result.stdout + result.stderr).strip().splitlines()[-40:]
            raise StackError(
                f"fetching Kafka {version} jars with Maven failed (exit {result.returncode}):\n"
                + "\n".join(output)
            )
        if not any(staging.glob(f"kafka_2.13-{version}.jar")):
            raise StackError(f"Maven finished but kafka_2.13-{version}.jar is not in {staging}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        size = sum(p.stat().st_size for p in libs.iterdir())
        (home / COMPLETE_MARKER).write_text(
            f"kafka {version}: {len(list(libs.iterdir()))} jars, {size} bytes, "
            f"fetched in {time.monotonic() - started:.1f}s\n"
        )
    return libs


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "Java (17 or newer) is needed to run Kafka; install it "
            "(Debian: apt-get install -y openjdk-17-jre-headless) or set JAVA_HOME"
        )
    return java


# --- configuration ---------------------------------------------------------------------


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


# --- readiness -------------------------------------------------------------------------


def _kafka_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">h", len(raw)) + raw


def metadata_request(correlation_id: int, client_id: str = "usage-stream-stack") -> bytes:
    """A Metadata v4 request for no topics (supported by Kafka 1.0 through 4.x)."""
    header = struct.pack(">hhi", 3, 4, correlation_id) + _kafka_string(client_id)
    body = struct.pack(">i", 0) + struct.pack(">?", False)  # topics: [], no auto-create
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def parse_metadata_brokers(correlation_id: int, frame: bytes) -> list[tuple[int, str, int]]:
    """Brokers (node id, host, port) from a Metadata v4 response frame (without length)."""
    offset = 0

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal offset
        values = struct.unpack_from(fmt, frame, offset)
        offset += struct.calcsize(fmt)
        return values

    def take_string() -> str:
        nonlocal offset
        (length,) = take(">h")
        if length < 0:
            return ""
        value = frame[offset : offset + length].decode("utf-8")
        offset += length
        return value

    (got_id,) = take(">i")
    if got_id != correlation_id:
        raise ValueError(f"correlation id {got_id} != {correlation_id}")
    take(">i")  # throttle_time_ms
    (count,) = take(">i")
    brokers = []
    for _ in range(count):
        (node_id,) = take(">i")
        host = take_string()
        (port,) = take(">i")
        take_string()  # rack
        brokers.append((node_id, host, port))
    return brokers


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks += chunk
    return bytes(chunks)


def probe_broker(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when the broker answers a Metadata request and lists itself."""
    correlation_id = int(time.monotonic() * 1000) & 0x7FFFFFFF
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(metadata_request(correlation_id))
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            frame = _recv_exact(sock, size)
        brokers = parse_metadata_brokers(correlation_id, frame)
    except (OSError, ValueError, struct.error):
        return False
    return any(node_id == NODE_ID for node_id, _, _ in brokers)
