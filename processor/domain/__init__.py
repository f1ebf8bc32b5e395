"""The pure domain: no Redis, no Kafka, no clock of its own.

The rollup algebra is split by concern: ``fields`` (stored counter names and units),
``counts`` (call stats; token counts re-exported from ``schemas.tokens``), ``fold``
(accepted entries folded per run), ``readback`` (stored counters back into a run's
rollup) and ``trees`` (sums over a run tree); around it ``accept`` (validated entry ->
priced, flattened), ``windows`` (a user's hour/day/month/all-time windows),
``alert_rules``, ``alerts``, ``budgets``, ``invoices``, ``money`` and the ``pricing``
package.
"""
