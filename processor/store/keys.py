"""Every Redis key this application writes, in one place.

All keys start with ``Settings.key_prefix`` so several deployments (and every test) can
share one Redis. Each kind of key has its own tag right after the prefix, and every
user-supplied part (tenant, run, user, agent, entry id) is escaped (``%`` -> ``%25``,
``:`` -> ``%3A``), so no id can make one key look like another: run ``x:children`` or
tenant ``t:user:bob`` stay in their own keys.

Layout (``p`` = prefix, ``t`` = tenant id, all ids escaped):

- ``p:seen:t:<generation>``     hash: entry id -> 1 for ids applied in that generation
                                (``now // dedup retention``); expires after the next one
- ``p:run:t:<runId>``           hash: the run's own rollup counters (see domain.fields)
- ``p:runkids:t:<runId>``       sorted set, all scores 0 (so ordered by id): sub-agent run ids
                                referenced by the run; read in capped ranges
- ``p:runparents:t:<runId>``   set: the runs whose ``subagent`` entries name this run (what
                                run-tree alerts walk up)
- ``p:runentries:t:<runId>``    hash: entry id -> accepted entry JSON (TTL retention)
- ``p:runidx:t:<runId>``        sorted set: entry id scored by timestamp, so ordered by
                                (timestamp, id); expires with ``runentries``
- ``p:runs:t``                  sorted set: run ids scored by startedAt
- ``p:runsbyuser:t:<userId>``   sorted set: the user's run ids scored by startedAt
- ``p:runsbyagent:t:<agent>``   sorted set: the agent's run ids scored by startedAt
- ``p:runsbyuseragent:t:<userId>:<agent>``  sorted set: the user's runs of one agent
- ``p:uh:t:<userId>:<YYYY-MM-DDTHH>``  hash: the user's counters of one UTC hour (same
                                field names as a run, see domain.windows); expires
                                ``hour_retention_seconds`` after the hour ends
- ``p:ud:t:<userId>:<YYYY-MM-DD>``  hash: one UTC day; expires ``day_retention_seconds``
                                after the day ends
- ``p:um:t:<userId>:<YYYY-MM>``  hash: one billing month, also by agent; kept until
                                deleted unless ``month_retention_seconds`` is set
- ``p:ua:t:<userId>``           hash: the user's all-time counters
- ``p:billusers:t:<YYYY-MM>``   sorted set, all scores 0 (so ordered by id): users with
                                usage in the month
- ``p:billtenants:<YYYY-MM>``   set: tenants with usage in the month (what scheduled
                                invoice generation walks)
- ``p:invdone:<YYYY-MM>``       string: set once scheduled generation of the month ran
                                to the end (a restarted worker's catch-up skips it)
- ``p:inv:t:<invoiceId>``       hash: one invoice (domain.invoices); its existence marks
                                the user's month as invoiced
- ``p:invs:t:<YYYY-MM>``        sorted set, all scores 0: user ids invoiced for the month
- ``p:alerted:t:<alertId>``     string: the alert fired (its one message is in the outbox);
                                expires with the window it watches
- ``p:alert:t:<alertId>``       string: the alert as published (JSON), for GET /v1/alerts;
                                expires ``alert_retention_seconds`` after it fired
- ``p:alerts:t``                sorted set: alert ids scored by triggeredAt
- ``p:alertsbyuser:t:<userId>`` sorted set: the user's alert ids scored by triggeredAt
- ``p:alertsbyrun:t:<runId>``   sorted set: the run's alert ids scored by triggeredAt
                                (written by the batch step's run-tree alerts)
- ``p:outbox:<name>``           stream: messages decided in Redis, waiting for the relay
                                to publish them to Kafka (processor/outbox.py)
- ``p:offsets:<group>``         hash: ``<topic>:<partition>`` -> next offset to consume,
                                written in the same atomic step as the batch's effects
- ``p:stats``                   hash: ``applied`` = entries applied (all tenants)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@lru_cache(maxsize=65536)
def part(value: str) -> str:
    """A user-supplied key part, escaped so it cannot contain the ``:`` separator."""
    return value.replace("%", "%25").replace(":", "%3A")


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    def seen(self, tenant: str, generation: int) -> str:
        return self.seen_prefix(tenant) + str(generation)

    def seen_prefix(self, tenant: str) -> str:
        """The dedup hash key without its generation (the batch script appends it, from
        the Redis server's clock)."""
        return f"{self.prefix}:seen:{part(tenant)}:"

    def run(self, tenant: str, run_id: str) -> str:
        return f"{self.prefix}:run:{part(tenant)}:{part(run_id)}"

    def run_children(self, tenant: str, run_id: str) -> str:
        return f"{self.prefix}:runkids:{part(tenant)}:{part(run_id)}"

    def run_parents(self, tenant: str, run_id: str) -> str:
        return f"{self.prefix}:runparents:{part(tenant)}:{part(run_id)}"

    def run_entries(self, tenant: str, run_id: str) -> str:
        return f"{self.prefix}:runentries:{part(tenant)}:{part(run_id)}"

    def run_entry_index(self, tenant: str, run_id: str) -> str:
        return f"{self.prefix}:runidx:{part(tenant)}:{part(run_id)}"

    def runs_index(self, tenant: str) -> str:
        return f"{self.prefix}:runs:{part(tenant)}"

    def runs_by_user(self, tenant: str, user_id: str) -> str:
        return f"{self.prefix}:runsbyuser:{part(tenant)}:{part(user_id)}"

    def runs_by_agent(self, tenant: str, agent_name: str) -> str:
        return f"{self.prefix}:runsbyagent:{part(tenant)}:{part(agent_name)}"

    def runs_by_user_agent(self, tenant: str, user_id: str, agent_name: str) -> str:
        return f"{self.prefix}:runsbyuseragent:{part(tenant)}:{part(user_id)}:{part(agent_name)}"

    def user_hour(self, tenant: str, user_id: str, hour: str) -> str:
        return f"{self.prefix}:uh:{part(tenant)}:{part(user_id)}:{hour}"

    def user_day(self, tenant: str, user_id: str, day: str) -> str:
        return f"{self.prefix}:ud:{part(tenant)}:{part(user_id)}:{day}"

    def user_month(self, tenant: str, user_id: str, month: str) -> str:
        return f"{self.prefix}:um:{part(tenant)}:{part(user_id)}:{month}"

    def user_all(self, tenant: str, user_id: str) -> str:
        return f"{self.prefix}:ua:{part(tenant)}:{part(user_id)}"

    def billing_users(self, tenant: str, month: str) -> str:
        return f"{self.prefix}:billusers:{part(tenant)}:{month}"

    def billing_tenants(self, month: str) -> str:
        return f"{self.prefix}:billtenants:{month}"

    def invoices_done(self, month: str) -> str:
        return f"{self.prefix}:invdone:{month}"

    def invoice(self, tenant: str, invoice_id: str) -> str:
        return f"{self.prefix}:inv:{part(tenant)}:{part(invoice_id)}"

    def invoiced_users(self, tenant: str, month: str) -> str:
        return f"{self.prefix}:invs:{part(tenant)}:{month}"

    def alert_marker(self, tenant: str, alert_id: str) -> str:
        return f"{self.prefix}:alerted:{part(tenant)}:{part(alert_id)}"

    def alert(self, tenant: str, alert_id: str) -> str:
        return f"{self.prefix}:alert:{part(tenant)}:{part(alert_id)}"

    def alerts(self, tenant: str) -> str:
        return f"{self.prefix}:alerts:{part(tenant)}"

    def alerts_by_user(self, tenant: str, user_id: str) -> str:
        return f"{self.prefix}:alertsbyuser:{part(tenant)}:{part(user_id)}"

    def alerts_by_run(self, tenant: str, run_id: str) -> str:
        return f"{self.prefix}:alertsbyrun:{part(tenant)}:{part(run_id)}"

    def tree_alert_keys(self, tenant: str) -> list[str]:
        """Key prefixes apply_batch.lua completes with an escaped run id (or an alert id)
        to walk a tenant's run trees and fire their alerts: run, children, parents,
        the tenant itself, alert marker, alert record, the tenant's alerts index, alerts
        by run, alerts by user, runs whose every run-rule level fired (then the rules'
        tag)."""
        t = part(tenant)
        p = self.prefix
        return [
            f"{p}:run:{t}:",
            f"{p}:runkids:{t}:",
            f"{p}:runparents:{t}:",
            tenant,
            f"{p}:alerted:{t}:",
            f"{p}:alert:{t}:",
            self.alerts(tenant),
            f"{p}:alertsbyrun:{t}:",
            f"{p}:alertsbyuser:{t}:",
            f"{p}:runalertsdone:{t}:",
        ]

    def outbox(self, name: str) -> str:
        return f"{self.prefix}:outbox:{part(name)}"

    def offsets(self, group_id: str) -> str:
        return f"{self.prefix}:offsets:{part(group_id)}"

    @staticmethod
    def offset_field(topic: str, partition: int) -> str:
        return f"{part(topic)}:{partition}"

    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def pattern_all(self) -> str:
        """Glob matching every key of this prefix (used by tests and `stack` tooling)."""
        return f"{self.prefix}:*"
