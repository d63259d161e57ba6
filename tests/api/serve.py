"""Start the real ``tileseg serve`` with the test architectures registered: how the API tests run a server.

python -m tests.api.serve --port 8123      # settings from TILESEG_* variables, as in production
"""

import sys

from tests.api.nets import register

if __name__ == "__main__":
    register()
    from tileseg.cli import cli

    cli(["serve", *sys.argv[1:]], prog_name="tileseg")
