"""The examples in the docstrings of pure modules are run, so they stay true.

Every module of ``processor.domain`` is collected by walking the package, so a new
domain module's examples run without being listed here.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import processor.domain

DOMAIN_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(processor.domain.__path__, "processor.domain.")
)
# Pure modules outside the domain package that carry examples too.
OTHER_MODULES = ["processor.invoicing"]


@pytest.mark.parametrize("name", DOMAIN_MODULES + OTHER_MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0


def test_examples_are_collected() -> None:
    # the walk found the package's modules, and the listed ones do carry examples
    assert {"processor.domain.fields", "processor.domain.pricing.match"} <= set(DOMAIN_MODULES)
    for name in ["processor.domain.fields", "processor.domain.windows", *OTHER_MODULES]:
        assert doctest.testmod(importlib.import_module(name)).attempted > 0, name
