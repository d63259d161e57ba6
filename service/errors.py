"""The product's one root error, :class:`TilesegError`: every error raised on purpose derives from it.

Each layer keeps its own errors beside its code: the models' (:mod:`tileseg.models.errors`), the engine's
(:mod:`tileseg.engine.errors`), training's (:mod:`tileseg.training.errors`), the object store's
(:mod:`tileseg.objectstore`), the jobs' (:mod:`tileseg.jobs.errors`) and the HTTP layer's
(:mod:`tileseg.api.errors`). Each also inherits the builtin it resembles (an unreadable input is also an
``OSError``, a bad option also a ``ValueError``), so callers that catch builtins keep working.

Every error carries a short machine-readable ``code`` and a message a user can act on: the CLI prints the
message (no traceback) and the HTTP layer maps the classes to status codes in one handler. This module
imports nothing, so every layer, the models' included, may import it.
"""

from __future__ import annotations


class TilesegError(Exception):
    """Root of every error the product raises on purpose."""

    code = "tileseg_error"


__all__ = ["TilesegError"]
