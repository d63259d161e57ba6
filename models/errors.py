"""The product's exception hierarchy, rooted at :class:`TilesegError`.

Each error also inherits the builtin it resembles, so callers that catch ``ValueError`` or ``LookupError``
keep working. Every error carries a short machine-readable ``code`` (used in HTTP error bodies) and a
message a user can act on. The engine's own errors (rasters, tiles) live in ``tileseg.errors`` and derive
from the same root.
"""

from __future__ import annotations


class TilesegError(Exception):
    """Root of every error the product raises on purpose."""

    code = "tileseg_error"


class ModelNotFoundError(TilesegError, LookupError):
    """No installed model has this name, or no checkpoint lies at this path."""

    code = "model_not_found"

    def __str__(self) -> str:  # LookupError would quote the message like a KeyError does not, keep it plain
        return str(self.args[0]) if self.args else ""


class UnknownArchitectureError(TilesegError, LookupError):
    """The architecture name is not in the registry."""

    code = "unknown_architecture"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointError(TilesegError, ValueError):
    """A checkpoint is corrupt, incomplete, or does not match its model card."""

    code = "bad_checkpoint"
