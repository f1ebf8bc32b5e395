"""usage-stream: exact, live rollups, invoices and alerts from LLM agent usage events."""

__version__ = "0.1.0"
