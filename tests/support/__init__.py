"""Helpers shared by the whole test tree, one owner each: synthetic images (`images`), tiny
checkpoints on disk (`checkpoints`), datasets and galleries on disk (`datasets`), the HTTP API as a
client sees it (`api`), a real server on a free port (`server`) and the browser for page tests
(`browser`). Fixtures over them live in tests/conftest.py; test modules import helpers from here,
never from one another.
"""

import pkgutil

import pytest

# Their asserts report like a test's own (they are plain modules, not conftest files); registered
# before any of them is imported.
pytest.register_assert_rewrite(*(f"{__name__}.{module.name}" for module in pkgutil.iter_modules(__path__)))
