"""The topics of CONTRACT §1, created at start-up when missing."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from processor.connections import kafka_options
from processor.settings import Settings
from schemas.deadletter import DLQ_TOPIC_MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


class TopicSetupError(Exception):
    """A topic the processor owns could not be created."""


def namespaced(tag: str) -> dict[str, str]:
    """Settings updates that give a bench, a demo or a tool run names of its own (app id,
    key prefix, every topic), so it never sees another run's data on a shared stack."""
    return {
        "app_id": tag,
        "key_prefix": tag,
        "topic_entries": f"{tag}.usage.entries",
        "topic_dlq": f"{tag}.usage.entries.dlq",
        "topic_notifications": f"{tag}.usage.notifications",
        "topic_invoices": f"{tag}.usage.invoices",
        "topic_outbox_progress": f"{tag}.usage.outbox.progress",
    }


def owned_topics(settings: Settings) -> list[str]:
    return [
        settings.topic_entries,
        settings.topic_dlq,
        settings.topic_notifications,
        settings.topic_invoices,
        settings.topic_outbox_progress,
    ]


def topic_partitions(settings: Settings, topic: str) -> int:
    """The outbox progress topic has one partition: a relay reads its own progress back
    by offset order, which only one partition gives (processor/outbox.py)."""
    if topic == settings.topic_outbox_progress:
        return 1
    return settings.topic_partitions


def topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    """A dead letter carries the original bytes JSON-escaped, which can take several times
    the broker's default 1 MB message limit; the DLQ topic allows 8 MiB."""
    if topic == settings.topic_dlq:
        return {"max.message.bytes": str(DLQ_TOPIC_MAX_MESSAGE_BYTES)}
    if topic == settings.topic_outbox_progress:
        # Compaction keeps the latest record per key, which is all a relay needs (each key
        # is one slot of its ring of recent ids); hourly segments let the cleaner run.
        return {"cleanup.policy": "compact", "segment.ms": str(3_600_000)}
    return {}


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics; returns the names created. Existing ones are left alone."""
    admin = AIOKafkaAdminClient(**kafka_options(settings), request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in owned_topics(settings) if t not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    name=t,
                    num_partitions=topic_partitions(settings, t),
                    replication_factor=settings.topic_replication,
                    topic_configs=topic_configs(settings, t),
                )
                for t in missing
            ]
        )
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            # another worker may have created it between our list and create: same outcome
            if code not in (0, TopicAlreadyExistsError.errno):
                detail = topic_error[2] if len(topic_error) > 2 else ""
                raise TopicSetupError(f"cannot create topic {name!r}: error {code} {detail}")
        log.info("created topics %s", ", ".join(missing))
        return missing
    finally:
        await admin.close()
