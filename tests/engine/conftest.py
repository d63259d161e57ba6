"""The engine's tests load small test architectures by name: register them for each test, then remove them."""

from __future__ import annotations

import pytest

from tests.engine import nets


@pytest.fixture(autouse=True)
def test_architectures():
    nets.register()
    yield
    nets.unregister()
