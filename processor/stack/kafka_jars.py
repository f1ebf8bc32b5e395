"""Apache Kafka's jars from Maven Central, and the Java that runs them.

The jars are fetched once per Kafka version with Maven into ``<cache_dir>/kafka-<version>``
(shared by every clone on the machine, guarded by a file lock against concurrent installs).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from processor.stack.process import StackError

# Identical to deploy/local/pom.xml (a unit test keeps them in step). Embedded so that an
# installed package, without the repository around it, can fetch the jars too.
POM_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!--
  Apache Kafka (single node, KRaft) for the local stack of usage-stream, assembled from the
  broker's jars on Maven Central. Used only to fetch the jars:

    mvn -q -f pom.xml dependency:copy-dependencies -Dkafka.version=3.9.1 -DoutputDirectory=DIR

  `usage-stream stack install` does this into the cache directory; this file and the copy
  embedded in processor/stack/kafka_jars.py are kept identical by a unit test.
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
