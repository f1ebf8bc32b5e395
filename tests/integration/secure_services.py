"""A Kafka with SASL_SSL and SSL (client certificate) listeners and a TLS-only Redis, for
the tests of the managed-service settings (tests/integration/test_kafka_sasl_ssl.py).

Everything is made in a temporary directory per test module:

* a throw-away CA and certificates from ``openssl``: the servers' certificate names
  ``localhost`` and ``127.0.0.1`` (clients check the host name), a client certificate
  with an encrypted key, and a second, unrelated CA that must be refused;
* Kafka 3.9 from the local stack's cached jars (``processor.stack.kafka_jars``), one combined
  broker+controller in KRaft mode with four listeners: INTERNAL (plaintext, between the
  broker and itself, and the readiness probe), SASL_SSL (PLAIN, SCRAM-SHA-256,
  SCRAM-SHA-512), SSL with ``ssl.client.auth=required``, and CONTROLLER. The SCRAM users
  are written into the metadata log by Kafka's own storage tool (``format --add-scram``),
  the way a KRaft cluster is bootstrapped with them; the PLAIN user is in the JAAS line;
* ``redis-server`` (Debian's build has TLS) on a TLS port only, with a password.

A missing ``openssl``, ``java`` or ``redis-server`` is a failure, never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from processor.stack import kafka as kafka_mod
from processor.stack import kafka_jars, kafka_probe
from processor.stack import redis_server as redis_mod
from processor.stack.ports import LOOPBACK, pick_port
from processor.stack.process import ProcessRecord, log_tail, record_for, spawn, stop
from processor.stack.redis_server import find_redis_server

#: SCRAM users (created with the storage tool) and the PLAIN user (in the JAAS config).
SCRAM_USERS = {"alice": "alice-Secr3t", "bob": "bob-Secr3t"}
PLAIN_USERS = {"carol": "carol-Secr3t"}
KEYSTORE_PASSWORD = "keystore-pw"
CLIENT_KEY_PASSWORD = "client-key-pw"
REDIS_PASSWORD = "redis-Secr3t"
START_TIMEOUT_S = 60.0


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed by the TLS/SASL integration tests", pytrace=False)
    return found


def _run(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(argv)}` exited with {result.returncode}:\n{result.stdout}{result.stderr}"
        )


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def other_ca(self) -> Path:
        """A CA that signed nothing of ours: trusting only it must fail the handshake."""
        return self.dir / "other-ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_keystore(self) -> Path:
        """PKCS#12 of the server key and certificate chain, for the broker."""
        return self.dir / "server.p12"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        """Encrypted with CLIENT_KEY_PASSWORD (PKCS#8)."""
        return self.dir / "client.key"


def make_pki(directory: Path) -> Pki:
    openssl = _tool("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)

    def ca(name: str, out: Path) -> None:
        _run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", str(out.with_suffix(".key")), "-out", str(out),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            directory,
        )  # fmt: skip

    def leaf(name: str, cert: Path, key: Path, extensions: str) -> None:
        csr = cert.with_suffix(".csr")
        ext = cert.with_suffix(".ext")
        ext.write_text(extensions)
        _run(
            [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(csr)],
            directory,
        )  # fmt: skip
        _run(
            [openssl, "x509", "-req", "-in", str(csr), "-CA", str(pki.ca),
             "-CAkey", str(pki.ca.with_suffix(".key")), "-CAcreateserial", "-days", "2",
             "-out", str(cert), "-extfile", str(ext)],
            directory,
        )  # fmt: skip

    ca("usage-stream test CA", pki.ca)
    ca("some other CA", pki.other_ca)
    leaf(
        "localhost",
        pki.server_cert,
        pki.server_key,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    plain_client_key = directory / "client-plain.key"
    leaf(
        "usage-client",
        pki.client_cert,
        plain_client_key,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    _run(
        [openssl, "pkcs8", "-topk8", "-in", str(plain_client_key), "-out", str(pki.client_key),
         "-passout", f"pass:{CLIENT_KEY_PASSWORD}"],
        directory,
    )  # fmt: skip
    _run(
        [openssl, "pkcs12", "-export", "-in", str(pki.server_cert), "-inkey", str(pki.server_key),
         "-certfile", str(pki.ca), "-name", "broker", "-out", str(pki.server_keystore),
         "-passout", f"pass:{KEYSTORE_PASSWORD}"],
        directory,
    )  # fmt: skip
    return pki


# --- Kafka --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureKafka:
    internal_port: int
    sasl_ssl_port: int
    ssl_port: int
    layout: kafka_mod.KafkaLayout

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.sasl_ssl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.ssl_port}"

    @property
    def plaintext_bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.internal_port}"

    def tail(self) -> str:
        return self.layout.tail()


def _server_properties(
    base: str, pki: Pki, ports: dict[str, int], data_dir: Path, partitions: int
) -> str:
    """The local stack's single-node properties with the listeners replaced."""
    props = dict(line.split("=", 1) for line in base.splitlines() if "=" in line and line[0] != "#")
    host = LOOPBACK
    names = ("INTERNAL", "SASL_SSL", "SSL")
    jaas_plain = " ".join(f'user_{u}="{p}"' for u, p in PLAIN_USERS.items())
    props.update(
        {
            "listeners": ",".join(
                [
                    *(f"{n}://{host}:{ports[n]}" for n in names),
                    f"CONTROLLER://{host}:{ports['CONTROLLER']}",
                ]
            ),
            "advertised.listeners": ",".join(f"{n}://{host}:{ports[n]}" for n in names),
            "listener.security.protocol.map": (
                "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL"
            ),
            "inter.broker.listener.name": "INTERNAL",
            "controller.quorum.voters": f"{kafka_mod.NODE_ID}@{host}:{ports['CONTROLLER']}",
            "log.dirs": str(data_dir),
            "num.partitions": str(partitions),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(pki.server_keystore),
            "ssl.keystore.password": KEYSTORE_PASSWORD,
            "ssl.key.password": KEYSTORE_PASSWORD,
            # the CA clients' certificates must chain to (SSL listener)
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(pki.ca),
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {jaas_plain};"
            ),
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
        }
    )
    return "".join(f"{k}={v}\n" for k, v in props.items())


@contextmanager
def secure_kafka(root: Path, pki: Pki, cache_dir: Path, version: str) -> Iterator[SecureKafka]:
    """Start the broker (formatting its log dir with the SCRAM users), wait until it
    answers, stop it at exit."""
    libs = kafka_jars.install_jars(cache_dir, version)
    java = kafka_jars.java_binary()
    layout = kafka_mod.KafkaLayout(root)
    root.mkdir(parents=True, exist_ok=True)
    taken: list[int] = []
    for _ in range(4):
        taken.append(pick_port(exclude=taken))
    ports = dict(zip(("INTERNAL", "SASL_SSL", "SSL", "CONTROLLER"), taken, strict=True))
    base = kafka_mod.render_server_properties(
        data_dir=layout.data_dir, broker_port=ports["INTERNAL"], controller_port=ports["CONTROLLER"]
    )
    layout.server_properties.write_text(
        _server_properties(base, pki, ports, layout.data_dir, partitions=4)
    )
    layout.log4j_properties.write_text(kafka_mod.render_log4j(layout.server_log))
    layout.log4j2_properties.write_text(kafka_mod.render_log4j2(layout.server_log))
    scram = [
        f"--add-scram=SCRAM-SHA-{bits}=[name={user},password={password}]"
        for user, password in SCRAM_USERS.items()
        for bits in (256, 512)
    ]
    _run(
        kafka_mod.java_argv(
            java, libs, layout, kafka_mod.STORAGE_TOOL, "format",
            f"--cluster-id={kafka_mod.new_cluster_id()}", "-c", str(layout.server_properties),
            *scram,
        ),
        root,
    )  # fmt: skip
    proc = spawn(
        kafka_mod.java_argv(
            java, libs, layout, kafka_mod.KAFKA_MAIN, str(layout.server_properties)
        ),
        log_file=layout.stdout_log,
        cwd=root,
    )
    record: ProcessRecord | None = None
    try:
        record = record_for(proc, str(layout.server_properties))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not kafka_probe.probe_broker(LOOPBACK, ports["INTERNAL"]):
            if proc.poll() is not None:
                raise RuntimeError(f"the SASL_SSL Kafka exited during start-up\n{layout.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the SASL_SSL Kafka did not answer in time\n{layout.tail()}")
            time.sleep(0.2)
        yield SecureKafka(ports["INTERNAL"], ports["SASL_SSL"], ports["SSL"], layout)
    finally:
        if record is not None:
            stop(record, timeout=20, proc=proc)
        elif proc.poll() is None:
            proc.kill()
            proc.wait(10)


# --- Redis --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsRedis:
    port: int
    log: Path

    @property
    def url(self) -> str:
        """With the host name the certificate names, and no password (see REDIS_PASSWORD)."""
        return f"rediss://localhost:{self.port}/0"


@contextmanager
def tls_redis(root: Path, pki: Pki) -> Iterator[TlsRedis]:
    binary = find_redis_server()
    if binary is None:
        pytest.fail("redis-server is needed by the TLS integration tests", pytrace=False)
    layout = redis_mod.RedisLayout(root)
    port = pick_port()
    log = layout.log
    # the stack's configuration, with the plaintext port closed (port 0) and TLS on `port`
    tls = (
        f"tls-port {port}",
        f"tls-cert-file {pki.server_cert}",
        f"tls-key-file {pki.server_key}",
        f"tls-ca-cert-file {pki.ca}",
        "tls-auth-clients no",
        f"requirepass {REDIS_PASSWORD}",
    )
    redis_mod.write_config(layout, 0, appendonly=False, snapshots=False, extra=tls)
    proc = redis_mod.launch(binary, layout)
    record: ProcessRecord | None = None
    try:
        record = record_for(proc, "redis-server")
        client = redis.Redis(
            host="localhost",
            port=port,
            password=REDIS_PASSWORD,
            ssl=True,
            ssl_ca_certs=str(pki.ca),
            socket_timeout=1,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server with TLS did not start\n{log_tail(log)}")
            time.sleep(0.1)
        client.close()
        yield TlsRedis(port, log)
    finally:
        if record is not None:
            stop(record, timeout=10, proc=proc)
        elif proc.poll() is None:
            proc.kill()
            proc.wait(10)
