"""How to reach a Kafka that wants TLS and SASL, as aiokafka keyword arguments.

Managed Kafka services (Confluent Cloud, Amazon MSK, Aiven, Redpanda Cloud, ...) take
SASL (PLAIN or SCRAM-SHA-256/512) over TLS, some a TLS client certificate. One model
describes that for the Python client and for the worker (``processor/connections.py``
builds it from the ``USAGE_KAFKA_*`` settings), so both accept the same combinations,
refuse the same mistakes and build the same SSL context: aiokafka's
``create_ssl_context``, which always verifies the broker's certificate and host name.

    KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                  sasl_username="alice", sasl_password="...", ssl_cafile="ca.pem")

Passwords are ``SecretStr``: they show as ``'**********'`` in reprs and logs and are
unwrapped only into the keyword arguments handed to aiokafka.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "KafkaSecurity",
    "SaslMechanism",
    "SecurityProtocol",
]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SECURITY_PROTOCOLS: Final[tuple[str, ...]] = get_args(SecurityProtocol)
SASL_MECHANISMS: Final[tuple[str, ...]] = get_args(SaslMechanism)
TLS_PROTOCOLS: Final = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS: Final = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})

#: The fields, in the order problems are reported.
FIELDS: Final = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_key_password",
)
#: Validation context key: field -> how to name it in messages (the worker passes its
#: ``USAGE_KAFKA_*`` variable names, so a message names what the operator has to fix).
NAMES_CONTEXT: Final = "names"


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


class KafkaSecurity(BaseModel):
    """TLS and SASL settings of a Kafka connection; ``PLAINTEXT`` (the default) needs none.

    * ``SSL``: TLS; ``ssl_cafile`` is the CA bundle that signed the brokers' certificates
      (none: the system's CAs, right for public managed services); ``ssl_certfile`` and
      ``ssl_keyfile`` (PEM) a client certificate for brokers that require one, the key
      optionally encrypted with ``ssl_key_password``.
    * ``SASL_SSL``: the above plus SASL ``sasl_mechanism`` (default ``PLAIN``) with
      ``sasl_username`` and ``sasl_password``.
    * ``SASL_PLAINTEXT``: SASL without TLS (the password crosses the network in the clear
      with PLAIN; for closed networks only).
    """

    # hide_input_in_errors: a validation error would otherwise quote the input, password too
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _case(cls, value: Any) -> Any:
        # "sasl_ssl" and "scram-sha-512" are how these are often written in env files
        return _upper(value)

    @model_validator(mode="after")
    def _combination(self, info: ValidationInfo) -> KafkaSecurity:
        names: Mapping[str, str] = (info.context or {}).get(NAMES_CONTEXT) or {}
        problems = self.problems(lambda field: names.get(field, field))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- what it means -------------------------------------------------------------------

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in TLS_PROTOCOLS

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in SASL_PROTOCOLS

    @property
    def mechanism(self) -> SaslMechanism | None:
        """The SASL mechanism in effect (``PLAIN`` when SASL is on and none was given)."""
        if not self.uses_sasl:
            return None
        return self.sasl_mechanism or "PLAIN"

    def problems(self, name: Callable[[str], str] = str) -> list[str]:
        """Every inconsistency, each naming the field(s) through ``name``; empty when usable.

        Settings that would be silently ignored are refused too: SASL credentials without
        a SASL protocol, or TLS files without a TLS one, are almost always a forgotten
        ``security_protocol``, and connecting without them fails far less clearly."""
        out: list[str] = []
        protocol = f"{name('security_protocol')}={self.security_protocol}"
        if self.uses_sasl:
            if not self.sasl_username:
                out.append(f"{name('sasl_username')} is required with {protocol}")
            if self.sasl_password is None or not self.sasl_password.get_secret_value():
                out.append(f"{name('sasl_password')} is required with {protocol}")
        else:
            given = [
                f for f in ("sasl_mechanism", "sasl_username", "sasl_password") if _set(self, f)
            ]
            if given:
                out.append(
                    f"{', '.join(map(name, given))} set but {protocol} does not use SASL "
                    "(SASL_SSL or SASL_PLAINTEXT does)"
                )
        files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
        if not self.uses_tls:
            given = [f for f in files if _set(self, f)]
            if given:
                out.append(
                    f"{', '.join(map(name, given))} set but {protocol} does not use TLS "
                    "(SSL or SASL_SSL does)"
                )
            return out
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            out.append(f"{name('ssl_keyfile')} needs {name('ssl_certfile')} (its certificate)")
        if self.ssl_key_password is not None and self.ssl_certfile is None:
            out.append(f"{name('ssl_key_password')} needs {name('ssl_certfile')}")
        for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path: Path | None = getattr(self, field)
            if path is not None and not path.is_file():
                out.append(f"{name(field)}: file not found: {path}")
        if not out:
            out.extend(self._load_problems(name))
        return out

    def _load_problems(self, name: Callable[[str], str]) -> list[str]:
        """Load the files as a connection would, so a bad PEM is named at start-up and not
        at the first connection attempt."""
        if self.ssl_cafile is not None:
            try:
                ssl.create_default_context(cafile=str(self.ssl_cafile))
            except (ssl.SSLError, OSError, ValueError) as exc:
                return [f"{name('ssl_cafile')}: cannot load {self.ssl_cafile}: {exc}"]
        if self.ssl_certfile is not None:
            try:
                self.ssl_context()
            except (ssl.SSLError, OSError, ValueError) as exc:
                fields = [name("ssl_certfile")]
                if self.ssl_keyfile is not None:
                    fields.append(name("ssl_keyfile"))
                if self.ssl_key_password is not None:
                    fields.append(name("ssl_key_password"))
                return [f"{', '.join(fields)}: cannot load the client certificate and key: {exc}"]
        return []

    # --- aiokafka --------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        """A fresh client context (a renewed certificate file is picked up by the next
        client), or None without TLS. The broker's certificate and host name are checked."""
        if not self.uses_tls:
            return None
        from aiokafka.helpers import create_ssl_context  # imported here: aiokafka is heavy

        key_password = self.ssl_key_password
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
            certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
            keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            password=key_password.get_secret_value() if key_password else None,
        )
        return context

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer``, ``AIOKafkaConsumer``,
        ``AIOKafkaAdminClient`` and ``AIOKafkaClient``. Contains the password in clear:
        hand it to aiokafka, never log it."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.uses_sasl:
            assert self.sasl_password is not None  # checked by the validator
            options["sasl_mechanism"] = self.mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return options

    async def probe(self, bootstrap_servers: str, timeout_s: float = 5.0) -> BaseException | None:
        """Why a connection fails: one connection to each bootstrap server in turn, with
        this TLS and SASL, until one succeeds (then None). Returns the first failure.

        For the messages of a failed start: aiokafka folds TLS errors into "Unable to
        bootstrap", and without a known broker version it authenticates with the original
        SASL framing, where the broker answers wrong credentials by closing the
        connection. Here the version is looked up first (``version_hint``), so SASL runs
        over SaslAuthenticate and a rejection comes back as the broker's own message."""
        import asyncio

        from aiokafka.conn import create_conn

        options = self.aiokafka_options()
        first: BaseException | None = None
        for server in bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                continue
            try:
                conn = await asyncio.wait_for(
                    create_conn(host.strip("[]"), int(port), version_hint=(1, 0), **options),
                    timeout_s,
                )
            except Exception as exc:  # the reason is what we are after
                first = first or exc
                continue
            conn.close()
            return None
        return first

    def describe(self) -> str:
        """One line for messages: protocol, mechanism and user; never the password."""
        parts: list[str] = [self.security_protocol]
        if self.uses_sasl:
            parts.append(f"{self.mechanism} as {self.sasl_username!r}")
        if self.uses_tls:
            parts.append(f"CA {self.ssl_cafile}" if self.ssl_cafile else "system CAs")
            if self.ssl_certfile is not None:
                parts.append(f"client certificate {self.ssl_certfile}")
        return ", ".join(parts)

    # --- from the environment --------------------------------------------------------------

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, prefix: str = "USAGE_KAFKA_"
    ) -> KafkaSecurity:
        """From the worker's variables (``USAGE_KAFKA_SECURITY_PROTOCOL``,
        ``USAGE_KAFKA_SASL_PASSWORD``, ...), so an agent deployed next to it shares its
        configuration; messages name the variables. Empty values count as unset."""
        env = os.environ if environ is None else environ
        values = {f: env[prefix + f.upper()] for f in FIELDS if env.get(prefix + f.upper())}
        names = {f: prefix + f.upper() for f in FIELDS}
        try:
            return cls.model_validate(values, context={NAMES_CONTEXT: names})
        except ValidationError as exc:
            raise ValueError(validation_message(exc, names)) from None


def validation_message(exc: ValidationError, names: Mapping[str, str]) -> str:
    """A ValidationError of this model as one line naming the fields through ``names``."""
    problems = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = [str(p) for p in err["loc"]]
        problems.append(f"{names.get(loc[0], loc[0])}: {msg}" if loc else msg)
    return "; ".join(problems)


def _set(security: KafkaSecurity, field: str) -> bool:
    value = getattr(security, field)
    if isinstance(value, SecretStr):
        return bool(value.get_secret_value())
    return value is not None and value != ""
