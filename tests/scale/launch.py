"""Run the real ``tileseg`` command with the test architectures registered: how the scale-out tests start
the API and the workers, with the command lines of the compose file's services (``SERVE_ARGS``,
``WORKER_ARGS``; ``tests/deploy/test_compose.py`` checks that they agree).

    python -m tests.scale.launch worker --log-level info    # is `tileseg worker --log-level info`
"""

import sys

LAUNCH = [sys.executable, "-m", "tests.scale.launch"]  # `tileseg`, with the test networks registered
SERVE_ARGS = ["serve", "--host", "127.0.0.1", "--port", "{port}"]  # compose: --host 0.0.0.0 --port 8000
WORKER_ARGS = ["worker", "--log-level", "info"]

if __name__ == "__main__":
    from tests.api.nets import register

    register()
    from tileseg.cli import cli

    cli(sys.argv[1:], prog_name="tileseg")
