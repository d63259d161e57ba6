"""How every ``tileseg`` command reports the errors a user can fix: one line, a non-zero exit, no traceback.

(Here rather than in the package's ``__init__``, so that the command modules beside it can use it without
importing the group that imports them.)
"""

from __future__ import annotations

import functools
import sys

import click

from tileseg.client import ClientError
from tileseg.errors import TilesegError

EXIT_USER_ERROR = 1


def user_errors(fn):
    """Print the product's own errors, and a server's (through the client), as ``error: ...`` and exit
    non-zero."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (TilesegError, ClientError) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
