"""tileseg's model zoo: architectures, the registry, checkpoints, own-model import.

``tileseg.models.load(name_or_path, device)`` returns a network in eval mode with a typed ``.spec``;
``tileseg.models.available()`` lists the installed checkpoints.
"""

from tileseg.errors import TilesegError
from tileseg.models.checkpoint import (
    available,
    card_hash,
    card_spec,
    describe,
    instance_models,
    load,
    read_card,
    save,
    weights_dir,
)
from tileseg.models.errors import CheckpointError, ModelNotFoundError, UnknownArchitectureError
from tileseg.models.registry import ARCHITECTURES, build_model
from tileseg.models.spec import BlendMode, ClassInfo, Geometry, InputSpec, InstanceSpec, ModelSpec

__all__ = [
    "ARCHITECTURES",
    "BlendMode",
    "CheckpointError",
    "ClassInfo",
    "Geometry",
    "InputSpec",
    "InstanceSpec",
    "ModelNotFoundError",
    "ModelSpec",
    "TilesegError",
    "UnknownArchitectureError",
    "available",
    "build_model",
    "card_hash",
    "card_spec",
    "describe",
    "instance_models",
    "load",
    "read_card",
    "save",
    "weights_dir",
]
