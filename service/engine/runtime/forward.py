"""A network's forward function in a runtime, made once per model and runtime and kept while the model lives.

:func:`prepare` makes it (a copy in another memory format, a ``torch.compile`` of it, or an exported program of
:mod:`.export`), :func:`run_forward` runs a batch through it, :func:`release` drops what a search prepared and did
not choose. :mod:`.runtimes` says what may be run; this module runs it.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable

import torch

from tileseg.engine.runtime.export import exported_forward
from tileseg.engine.runtime.runtimes import Runtime
from tileseg.models.base import SegmentationNet

_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare(model: SegmentationNet, runtime: Runtime) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward function of ``model`` in ``runtime``, made once per model and runtime and kept while the
    model lives (a compiled network or an exported program is reused by every later run).

    The model itself stays as loaded (channels_last, eager) and is what that runtime runs; every other runtime
    runs a copy or a program, so that what is kept here never refers back to the model and goes when it goes.

    Raises:
        RuntimeError (and subclasses): the runtime cannot be made (an export that fails or differs from eager).
    """
    if runtime.channels_last and runtime.mode == "eager":
        return model
    per_model = _PREPARED.setdefault(model, {})
    key = (runtime.channels_last, runtime.mode, runtime.precision if runtime.exported else None)
    if key not in per_model:
        if runtime.exported:
            per_model[key] = exported_forward(model, runtime)
        else:
            net = copy.deepcopy(model)
            if not runtime.channels_last:
                net = net.to(memory_format=torch.contiguous_format)
            per_model[key] = torch.compile(net, dynamic=False) if runtime.compiled else net
    return per_model[key]


def release(model: SegmentationNet, keep: Runtime) -> None:
    """Drop what was prepared for ``model`` except ``keep``'s (and compiled networks, whose compile was paid):
    after a search, the programs of the runtimes not chosen would hold their buffers for nothing."""
    per_model = _PREPARED.get(model, {})
    kept = (keep.channels_last, keep.mode, keep.precision if keep.exported else None)
    for key in [k for k in per_model if k != kept and k[1] != "compiled"]:
        del per_model[key]


def is_prepared(model: SegmentationNet, runtime: Runtime) -> bool:
    """Whether this process already holds ``model`` prepared for ``runtime`` (a compile paid)."""
    if runtime.channels_last and runtime.mode == "eager":
        return True
    key = (runtime.channels_last, runtime.mode, runtime.precision if runtime.exported else None)
    return key in _PREPARED.get(model, {})


def run_forward(model: SegmentationNet, runtime: Runtime, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``model(x)`` in ``runtime`` (``x`` already scaled, on the device)."""
    fn = prepare(model, runtime)
    x = x.contiguous(memory_format=torch.channels_last if runtime.channels_last else torch.contiguous_format)
    with runtime.autocast(device):
        return fn(x)


__all__ = ["is_prepared", "prepare", "release", "run_forward"]
