"""Every Kafka and Redis client of the processor is configured here, from the settings.

Managed services want TLS and SASL on every connection; a client built elsewhere with
only ``bootstrap_servers`` would connect in plaintext and fail (or worse, work against a
different listener). So each aiokafka producer, consumer, admin and probe client takes
``**kafka_options(settings)``, Faust's own broker connection takes
``faust_broker_credentials(settings)``, and Redis clients come from ``redis_client``.

The TLS context is aiokafka's ``create_ssl_context`` (broker certificate and host name
always checked); a Redis ``rediss://`` connection checks both too. Secrets are
``SecretStr`` in the settings and unwrapped only into the keyword arguments built here.
"""

from __future__ import annotations

import ssl
from typing import Any, cast

from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from redis.asyncio import Redis

from processor.settings import Settings
from usage_client.security import KafkaSecurity

#: How long the start-up diagnosis waits for one broker connection.
_DIAGNOSE_TIMEOUT_S = 10.0


def kafka_security(settings: Settings) -> KafkaSecurity:
    return cast(KafkaSecurity, settings.kafka_security())


def kafka_options(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` and the TLS / SASL keyword arguments of every aiokafka client
    (``AIOKafkaProducer``, ``AIOKafkaConsumer``, ``AIOKafkaAdminClient``, ``AIOKafkaClient``).
    Holds the SASL password in clear: pass it on, never log it."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap,
        **kafka_security(settings).aiokafka_options(),
    }


def faust_broker_credentials(settings: Settings) -> Any:
    """The same security for Faust's own consumer and producer (its group membership,
    leader election and crontab), as ``faust.App(broker_credentials=...)``; None for
    PLAINTEXT."""
    import faust

    security = kafka_security(settings)
    context = security.ssl_context()
    if security.uses_sasl:
        assert security.sasl_password is not None  # checked with the settings
        # with an ssl_context Faust picks SASL_SSL, without one SASL_PLAINTEXT
        return faust.SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password.get_secret_value(),
            mechanism=security.mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``Redis.from_url`` beyond the URL: the password kept out of
    it, and for ``rediss://`` a verified certificate and host name (redis-py leaves the
    host name unchecked unless asked) with the configured CA bundle."""
    options: dict[str, Any] = {}
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if settings.redis_url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
        if settings.redis_ssl_ca_file is not None:
            options["ssl_ca_certs"] = str(settings.redis_ssl_ca_file)
    return options


def redis_client(settings: Settings, **kwargs: Any) -> Redis:
    """``redis.asyncio.Redis`` for ``USAGE_REDIS_URL``; ``kwargs`` as for ``from_url``."""
    client: Redis = Redis.from_url(settings.redis_url, **{**redis_options(settings), **kwargs})
    return client


# --- start-up errors -------------------------------------------------------------------------


async def explain_kafka_failure(settings: Settings, exc: BaseException) -> str:
    """One line saying why the worker cannot use Kafka, naming the settings to look at.

    aiokafka reports both a TLS failure and rejected SASL credentials as a failed or
    closed connection; for those one connection is opened again to learn the reason
    (``KafkaSecurity.probe``): wrong credentials, an untrusted certificate, a host name
    mismatch, a plaintext port."""
    if isinstance(exc, KafkaConnectionError):
        cause = await kafka_security(settings).probe(settings.kafka_bootstrap, _DIAGNOSE_TIMEOUT_S)
        if cause is not None:
            exc = cause
    return " ".join(_explain(settings, exc).split())  # one line, whatever the cause says


def _explain(settings: Settings, exc: BaseException) -> str:
    security = kafka_security(settings)
    where = f"Kafka at {settings.kafka_bootstrap} (USAGE_KAFKA_BOOTSTRAP)"
    protocol = f"USAGE_KAFKA_SECURITY_PROTOCOL={security.security_protocol}"
    if isinstance(exc, SaslAuthenticationFailed | AuthenticationFailedError):
        return (
            f"{where} rejected the SASL credentials: check USAGE_KAFKA_SASL_USERNAME="
            f"{security.sasl_username!r}, USAGE_KAFKA_SASL_PASSWORD and "
            f"USAGE_KAFKA_SASL_MECHANISM={security.mechanism} ({_detail(exc)})"
        )
    if isinstance(exc, UnsupportedSaslMechanismError | IllegalSaslStateError):
        return (
            f"{where} does not accept USAGE_KAFKA_SASL_MECHANISM={security.mechanism} "
            f"with {protocol} ({_detail(exc)})"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        ca = "the system's CAs (USAGE_KAFKA_SSL_CAFILE unset)"
        if security.ssl_cafile is not None:
            ca = f"USAGE_KAFKA_SSL_CAFILE={security.ssl_cafile}"
        return (
            f"TLS with {where} failed: the broker's certificate was not accepted by {ca}, "
            f"or it does not name the host in USAGE_KAFKA_BOOTSTRAP ({exc.verify_message})"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS with {where} failed ({protocol}; is that port a TLS listener?): {exc}"
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer in time ({protocol})"
    return f"cannot reach {where} ({protocol}): {_detail(exc)}"


def _detail(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else repr(exc)
