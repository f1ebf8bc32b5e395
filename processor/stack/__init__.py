"""The local real stack: single-node Apache Kafka (KRaft) and Redis on loopback.

``usage-stream stack up|down|status|env|install`` and the integration tests drive it.
"""

from processor.stack.manager import LocalStack
from processor.stack.process import StackError
from processor.stack.settings import StackSettings
from processor.stack.state import StackInfo

__all__ = ["LocalStack", "StackError", "StackInfo", "StackSettings"]
