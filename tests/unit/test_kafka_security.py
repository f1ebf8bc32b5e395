"""Kafka TLS / SASL and Redis TLS settings: the combinations accepted and refused (messages
naming the variables), the keyword arguments every client gets, and secrets kept out of
reprs, errors and logs. Against real brokers: tests/integration/test_kafka_sasl_ssl.py."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, get_args

import faust
import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
from pydantic import SecretStr

from processor import settings as settings_mod
from processor.connections import (
    explain_kafka_failure,
    faust_broker_credentials,
    kafka_options,
    redis_options,
)
from processor.settings import Settings, SettingsError, load_settings, redact_url, settings_env
from tests.integration.secure_services import CLIENT_KEY_PASSWORD, Pki, make_pki
from usage_client import KafkaSecurity, UsageRecorder
from usage_client import security as security_mod

PASSWORD = "pa55-never-shown"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.upper().startswith("USAGE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # no .env file here
    return monkeypatch


def _refused(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *expected: str) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    for part in expected:
        assert part in message, message
    assert PASSWORD not in message
    return message


def test_the_settings_and_the_client_accept_the_same_values() -> None:
    assert get_args(settings_mod.KafkaSecurityProtocol) == security_mod.SECURITY_PROTOCOLS
    assert get_args(settings_mod.KafkaSaslMechanism) == security_mod.SASL_MECHANISMS
    assert set(settings_mod.KAFKA_SECURITY_FIELDS.values()) == set(security_mod.FIELDS)
    assert set(settings_mod.KAFKA_SECURITY_FIELDS) <= set(Settings.model_fields)


def test_plaintext_by_default(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert kafka_options(s) == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_broker_credentials(s) is None
    assert redis_options(s) == {}


def test_bad_combinations_are_refused_naming_the_variables(
    clean_env: pytest.MonkeyPatch, pki: Pki
) -> None:
    _refused(
        {"USAGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
        clean_env,
        "USAGE_KAFKA_SASL_USERNAME is required with USAGE_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        "USAGE_KAFKA_SASL_PASSWORD is required",
    )
    clean_env.delenv("USAGE_KAFKA_SECURITY_PROTOCOL")
    _refused(
        {"USAGE_KAFKA_SASL_USERNAME": "alice", "USAGE_KAFKA_SASL_PASSWORD": PASSWORD},
        clean_env,
        "USAGE_KAFKA_SASL_USERNAME, USAGE_KAFKA_SASL_PASSWORD set but "
        "USAGE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use SASL",
    )
    _refused(
        {"USAGE_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext", "USAGE_KAFKA_SSL_CAFILE": str(pki.ca)},
        clean_env,
        "USAGE_KAFKA_SSL_CAFILE set but USAGE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not "
        "use TLS",
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"USAGE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "USAGE_KAFKA_SECURITY_PROTOCOL: Input should"),
        ({"USAGE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "USAGE_KAFKA_SASL_MECHANISM: Input should"),
        ({"USAGE_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "file not found: /nonexistent/ca.pem"),
        ({"USAGE_KAFKA_SSL_KEYFILE": "{key}"}, "USAGE_KAFKA_SSL_KEYFILE needs "),
        ({"USAGE_KAFKA_SSL_CAFILE": "{not_pem}"}, "USAGE_KAFKA_SSL_CAFILE: cannot load"),
        (
            {"USAGE_KAFKA_SSL_CERTFILE": "{cert}", "USAGE_KAFKA_SSL_KEYFILE": "{key}"},
            "USAGE_KAFKA_SSL_CERTFILE, USAGE_KAFKA_SSL_KEYFILE: cannot load the client certificate",
        ),
    ],
)
def test_tls_files_are_checked_at_start_up(
    clean_env: pytest.MonkeyPatch,
    pki: Pki,
    tmp_path: Path,
    env: dict[str, str],
    expected: str,
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    files = {"key": str(pki.client_key), "cert": str(pki.client_cert), "not_pem": str(not_pem)}
    env = {k: v.format(**files) for k, v in env.items()}
    # the key is encrypted: without USAGE_KAFKA_SSL_KEY_PASSWORD it cannot be loaded
    _refused({"USAGE_KAFKA_SECURITY_PROTOCOL": "SSL", **env}, clean_env, expected)


def test_sasl_ssl_options_for_aiokafka_and_faust(clean_env: pytest.MonkeyPatch, pki: Pki) -> None:
    for key, value in {
        "USAGE_KAFKA_BOOTSTRAP": "b1:9096,b2:9096",
        "USAGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "USAGE_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "USAGE_KAFKA_SASL_USERNAME": "alice",
        "USAGE_KAFKA_SASL_PASSWORD": PASSWORD,
        "USAGE_KAFKA_SSL_CAFILE": str(pki.ca),
    }.items():
        clean_env.setenv(key, value)
    s = load_settings()
    options = kafka_options(s)
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "b1:9096,b2:9096",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert any(
        c["subject"] == ((("commonName", "usage-stream test CA"),),) for c in context.get_ca_certs()
    )

    credentials = faust_broker_credentials(s)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("alice", PASSWORD)
    assert PASSWORD not in repr(credentials)


def test_mechanism_defaults_to_plain_and_sasl_plaintext_has_no_tls(
    clean_env: pytest.MonkeyPatch,
) -> None:
    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="bob",
        kafka_sasl_password=SecretStr(PASSWORD),
    )
    options = kafka_options(s)
    assert "ssl_context" not in options
    assert options["sasl_mechanism"] == "PLAIN"
    credentials = faust_broker_credentials(s)
    assert credentials.protocol.value == "SASL_PLAINTEXT" and credentials.ssl_context is None


def test_ssl_with_an_encrypted_client_key(clean_env: pytest.MonkeyPatch, pki: Pki) -> None:
    s = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pki.ca,
        kafka_ssl_certfile=pki.client_cert,
        kafka_ssl_keyfile=pki.client_key,
        kafka_ssl_key_password=SecretStr(CLIENT_KEY_PASSWORD),
    )
    options = kafka_options(s)
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    credentials = faust_broker_credentials(s)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.context.check_hostname


def test_secrets_stay_out_of_repr_and_errors(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="alice",
        kafka_sasl_password=SecretStr(PASSWORD),
        redis_url="rediss://default:url-pw-42@redis.example.com:6380/0",
        redis_password=SecretStr("redis-pw-43"),
    )
    text = repr(s) + str(s)
    for secret in (PASSWORD, "url-pw-42", "redis-pw-43"):
        assert secret not in text
    assert "rediss://default:***@redis.example.com:6380/0" in text
    assert set(s.secret_values()) == {PASSWORD, "url-pw-42", "redis-pw-43"}
    # a validation error does not quote its input
    with pytest.raises(ValueError) as info:
        KafkaSecurity(security_protocol="PLAINTEXT", sasl_password=PASSWORD)  # type: ignore[arg-type]
    assert PASSWORD not in str(info.value)
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_security_settings_round_trip_through_the_environment(
    clean_env: pytest.MonkeyPatch, pki: Pki
) -> None:
    original = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="alice",
        kafka_sasl_password=SecretStr(PASSWORD),
        kafka_ssl_cafile=pki.ca,
        redis_url="rediss://localhost:6380/0",
        redis_password=SecretStr("r"),
        redis_ssl_ca_file=pki.ca,
    )
    for key, value in settings_env(original).items():
        clean_env.setenv(key, value)
    assert load_settings() == original


def test_rediss_checks_certificate_and_host_name(clean_env: pytest.MonkeyPatch, pki: Pki) -> None:
    s = Settings(
        redis_url="rediss://cache.example.com:6380/0",
        redis_password=SecretStr("pw"),
        redis_ssl_ca_file=pki.ca,
    )
    assert redis_options(s) == {
        "password": "pw",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(pki.ca),
    }
    clean_env.setenv("USAGE_REDIS_SSL_CA_FILE", str(pki.ca))
    with pytest.raises(SettingsError, match="USAGE_REDIS_SSL_CA_FILE is set but USAGE_REDIS_URL"):
        load_settings()


def test_client_security_from_the_workers_variables(pki: Pki) -> None:
    security = KafkaSecurity.from_env(
        {
            "USAGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "USAGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "USAGE_KAFKA_SASL_USERNAME": "bob",
            "USAGE_KAFKA_SASL_PASSWORD": PASSWORD,
            "USAGE_KAFKA_SSL_CAFILE": str(pki.ca),
            "USAGE_KAFKA_SSL_CERTFILE": "",  # empty: unset
        }
    )
    assert security.mechanism == "SCRAM-SHA-256" and security.ssl_certfile is None
    assert security.describe() == f"SASL_SSL, SCRAM-SHA-256 as 'bob', CA {pki.ca}"
    assert KafkaSecurity.from_env({}) == KafkaSecurity()
    with pytest.raises(ValueError, match="USAGE_KAFKA_SASL_PASSWORD is required") as info:
        KafkaSecurity.from_env({"USAGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    assert "USAGE_KAFKA_SASL_USERNAME is required" in str(info.value)


async def test_the_recorder_uses_it_and_keeps_the_password_out_of_reprs(pki: Pki) -> None:
    security = KafkaSecurity(
        security_protocol="SASL_SSL",
        sasl_username="bob",
        sasl_password=SecretStr(PASSWORD),
        ssl_cafile=pki.ca,
    )
    recorder = UsageRecorder("b1:9096", user_id="u", security=security)
    assert recorder.security is security
    for text in (repr(recorder._factory), repr(vars(recorder)), repr(security)):
        assert PASSWORD not in text
    producer: Any = recorder._factory()
    try:
        client = producer.client
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "PLAIN"
        assert client._sasl_plain_password == PASSWORD
        assert client._ssl_context.check_hostname
    finally:
        await producer.stop()  # never started: releases what the constructor made


async def test_start_up_failures_name_the_settings(pki: Pki) -> None:
    s = Settings(
        kafka_bootstrap="127.0.0.1:1",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="alice",
        kafka_sasl_password=SecretStr(PASSWORD),
        kafka_ssl_cafile=pki.ca,
    )
    line = await explain_kafka_failure(
        s, SaslAuthenticationFailed("Authentication failed during authentication")
    )
    assert line == (
        "Kafka at 127.0.0.1:1 (USAGE_KAFKA_BOOTSTRAP) rejected the SASL credentials: check "
        "USAGE_KAFKA_SASL_USERNAME='alice', USAGE_KAFKA_SASL_PASSWORD and "
        "USAGE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512 (SaslAuthenticationFailed: [Error 58] "
        "SaslAuthenticationFailed: Authentication failed during authentication)"
    )
    # nothing listens on port 1: the probe's own error is the reason
    line = await explain_kafka_failure(s, KafkaConnectionError("Unable to bootstrap"))
    assert line.startswith("cannot reach Kafka at 127.0.0.1:1 (USAGE_KAFKA_BOOTSTRAP)"), line
    assert "USAGE_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in line and "\n" not in line
    assert PASSWORD not in line
