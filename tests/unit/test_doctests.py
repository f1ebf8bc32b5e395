"""The examples in the docstrings of pure modules are run, so they stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "processor.domain.rollup",
    "processor.domain.windows",
    "processor.domain.invoices",
    "processor.invoicing",
    "processor.domain.alerts",
    "processor.domain.alert_rules",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
