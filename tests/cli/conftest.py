"""The command line's tests load the engine's small test architectures by name, as the engine's tests do."""

from tests.engine.conftest import test_architectures  # noqa: F401  (an autouse fixture)
