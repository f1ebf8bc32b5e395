"""Every Redis key this application writes, in one place.

All keys start with ``Settings.key_prefix`` so several deployments (and every test) can
share one Redis. User-supplied ids are embedded verbatim after a fixed number of
``:``-separated parts; nobody parses keys back, so ids containing ``:`` are harmless.

Layout (``p`` = prefix, ``t`` = tenant id):

- ``p:seen:t:<entryId>``            string, TTL dedup retention: the entry id was applied
- ``p:run:t:<runId>``               hash: the run's own rollup counters (see domain.rollup)
- ``p:run:t:<runId>:children``      set: sub-agent run ids referenced by the run
- ``p:run:t:<runId>:entries``       hash: entry id -> accepted entry JSON (TTL retention)
- ``p:runs:t``                      sorted set: run ids scored by startedAt
- ``p:runs:t:user:<userId>``        sorted set: the user's run ids scored by startedAt
- ``p:runs:t:agent:<agentName>``    sorted set: the agent's run ids scored by startedAt
- ``p:stats``                       hash: ``applied`` = entries applied (all tenants)

Faust tables on the ``redis://`` store (processor/store/faust_redis.py):

- ``p:ftab:{<app>:<table>:<partition>}``         hash: serialized key -> serialized value
- ``p:ftab:{<app>:<table>:<partition>}:offset``  string: last changelog offset applied
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    def seen_prefix(self, tenant: str) -> str:
        """Prefix of dedup marks; the Lua script appends the entry id."""
        return f"{self.prefix}:seen:{tenant}:"

    def seen(self, tenant: str, entry_id: str) -> str:
        return self.seen_prefix(tenant) + entry_id

    def run(self, tenant: str, run_id: str) -> str:
        return f"{self.prefix}:run:{tenant}:{run_id}"

    # apply_batch.lua derives the next two from run() by the same suffixes
    def run_children(self, tenant: str, run_id: str) -> str:
        return self.run(tenant, run_id) + ":children"

    def run_entries(self, tenant: str, run_id: str) -> str:
        return self.run(tenant, run_id) + ":entries"

    def runs_index(self, tenant: str) -> str:
        return f"{self.prefix}:runs:{tenant}"

    def runs_by_user(self, tenant: str, user_id: str) -> str:
        return f"{self.prefix}:runs:{tenant}:user:{user_id}"

    def runs_by_agent(self, tenant: str, agent_name: str) -> str:
        return f"{self.prefix}:runs:{tenant}:agent:{agent_name}"

    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def pattern_all(self) -> str:
        """Glob matching every key of this prefix (used by tests and `stack` tooling)."""
        return f"{self.prefix}:*"


# --- Faust tables on the redis:// store -------------------------------------------------


def table_data_key(prefix: str, app_id: str, table: str, partition: int) -> str:
    """Hash of one table partition: field = serialized key, value = serialized value.

    The ``{...}`` hash tag keeps a partition's data and offset in one cluster slot.
    """
    return f"{prefix}:ftab:{{{app_id}:{table}:{partition}}}"


def table_offset_key(prefix: str, app_id: str, table: str, partition: int) -> str:
    """String: the last changelog offset whose effect the partition's hash holds."""
    return table_data_key(prefix, app_id, table, partition) + ":offset"


def table_keys_pattern(prefix: str, app_id: str, table: str) -> str:
    """SCAN glob matching every key of one table (all partitions)."""
    raw = f"{prefix}:ftab:{{{app_id}:{table}:"
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in raw)
    return escaped + "*"
