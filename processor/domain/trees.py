"""Sums over a run tree: a run and the runs reachable from it through sub-agent links."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from processor.domain.counts import TokenCounts
from processor.domain.readback import RunRollup


@dataclass(frozen=True, slots=True)
class TreeTotals:
    tokens: TokenCounts
    cost_pico: int
    custom: dict[str, dict[str, int]]


def sum_tree(rollups: Iterable[RunRollup]) -> TreeTotals:
    """Totals over a set of runs, each counted once (the caller dedups the tree)."""
    tokens = TokenCounts()
    cost = 0
    custom: dict[str, dict[str, int]] = {}
    for r in rollups:
        tokens = tokens + r.tokens
        cost += r.cost_pico
        for ctype, names in r.custom.items():
            bucket = custom.setdefault(ctype, {})
            for cname, nano in names.items():
                bucket[cname] = bucket.get(cname, 0) + nano
    return TreeTotals(tokens, cost, custom)


def walk_tree_levels(
    root: str, children_of: Mapping[str, Iterable[str]], depth_limit: int
) -> list[str]:
    """Run ids reachable from ``root`` (root first), each once, cycles cut, depth-limited.

    >>> tree = {"a": ["b", "c"], "b": ["a", "d"], "d": ["e"]}
    >>> walk_tree_levels("a", tree, 2)
    ['a', 'b', 'c', 'd']
    """
    order = [root]
    visited = {root}
    frontier = [root]
    depth = 0
    while frontier and depth < depth_limit:
        nxt: list[str] = []
        for run in frontier:
            for child in children_of.get(run, ()):
                if child not in visited:
                    visited.add(child)
                    order.append(child)
                    nxt.append(child)
        frontier = nxt
        depth += 1
    return order
