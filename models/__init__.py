"""tileseg's model zoo: architectures, the registry, checkpoints and training.

``models.load(name_or_path, device)`` returns a network in eval mode with a typed ``.spec``;
``models.available()`` lists the installed checkpoints.
"""

from .checkpoint import available, card_hash, card_spec, describe, load, read_card, save, weights_dir
from .errors import CheckpointError, ModelNotFoundError, TilesegError, UnknownArchitectureError
from .registry import ARCHITECTURES, build_model
from .spec import BlendMode, ClassInfo, Geometry, InputSpec, ModelSpec

__all__ = [
    "ARCHITECTURES",
    "BlendMode",
    "CheckpointError",
    "ClassInfo",
    "Geometry",
    "InputSpec",
    "ModelNotFoundError",
    "ModelSpec",
    "TilesegError",
    "UnknownArchitectureError",
    "available",
    "build_model",
    "card_hash",
    "card_spec",
    "describe",
    "load",
    "read_card",
    "save",
    "weights_dir",
]
