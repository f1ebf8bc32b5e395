"""Point settings at the local stack unless the user configured Kafka/Redis explicitly."""

from __future__ import annotations

import os

from processor.settings import ENV_PREFIX, Settings
from processor.stack.manager import LocalStack
from processor.stack.settings import StackSettings


def with_local_stack(settings: Settings, stack: StackSettings | None = None) -> Settings:
    """Bring the local stack up (a no-op when it runs) and return settings pointing at it.

    An explicit ``USAGE_KAFKA_BOOTSTRAP`` or ``USAGE_REDIS_URL`` means "use mine": then
    nothing is started and the settings are returned unchanged. ``stack``: the local
    stack's settings (unset: from the environment).
    """
    explicit = {ENV_PREFIX + "KAFKA_BOOTSTRAP", ENV_PREFIX + "REDIS_URL"} & set(os.environ)
    if explicit:
        return settings
    local = LocalStack(stack or StackSettings(), partitions=settings.topic_partitions)
    local.install()
    info = local.up()
    return settings.model_copy(
        update={"kafka_bootstrap": info.kafka_bootstrap, "redis_url": info.redis_url}
    )
