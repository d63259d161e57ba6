"""The models' errors: a model that is not installed, an unknown architecture, a bad checkpoint.

They derive from the product's root, :class:`tileseg.errors.TilesegError` (a module that imports nothing), and
each also inherits the builtin it resembles, so callers that catch ``ValueError`` or ``LookupError`` keep
working.
"""

from __future__ import annotations

from tileseg.errors import TilesegError


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
