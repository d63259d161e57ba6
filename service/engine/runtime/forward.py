"""A network's forward function in a runtime, made once per model and runtime and kept while the model lives.

:func:`prepare` makes it (a copy in another memory format, a ``torch.compile`` of it, or an exported program of
:mod:`.export`), :func:`run_forward` runs a batch through it, :func:`release` drops what a search prepared and did
not choose. :mod:`.runtimes` says what may be run; this module runs it.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Sequence

import torch

from tileseg.engine.runtime.export import exported_forward
from tileseg.engine.runtime.memory import release_free_memory
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
    key = _key(runtime)
    if key not in per_model:
        if runtime.exported:
            per_model[key] = exported_forward(model, runtime)
        else:
            net = copy.deepcopy(model)
            if not runtime.channels_last:
                net = net.to(memory_format=torch.contiguous_format)
            per_model[key] = torch.compile(net, dynamic=False) if runtime.compiled else net
    return per_model[key]


def release(model: SegmentationNet, keep: Runtime | Sequence[Runtime]) -> None:
    """Drop what was prepared for ``model`` except ``keep``'s (and compiled networks, whose compile was paid),
    and the shapes the kept programs were compiled for: after a search, the programs of the runtimes left behind,
    and the kept one's programs for the windows it measured, would hold their buffers for nothing (the run
    compiles its own window once)."""
    per_model = _PREPARED.get(model, {})
    kept = {_key(r) for r in ([keep] if isinstance(keep, Runtime) else keep)}
    for key in list(per_model):
        if key not in kept and key[1] != "compiled":
            del per_model[key]
        else:
            getattr(per_model[key], "clear", lambda: None)()
    release_free_memory()  # the heap's freed pages back to the system: the run's peak is then the run's own


def _key(runtime: Runtime) -> tuple:
    return (runtime.channels_last, runtime.mode, runtime.precision if runtime.exported else None)


def is_prepared(model: SegmentationNet, runtime: Runtime) -> bool:
    """Whether this process already holds ``model`` prepared for ``runtime`` (a compile paid)."""
    if runtime.channels_last and runtime.mode == "eager":
        return True
    return _key(runtime) in _PREPARED.get(model, {})


def run_forward(model: SegmentationNet, runtime: Runtime, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``model(x)`` in ``runtime`` (``x`` already scaled, on the device)."""
    fn = prepare(model, runtime)
    x = x.contiguous(memory_format=torch.channels_last if runtime.channels_last else torch.contiguous_format)
    with runtime.autocast(device):
        return fn(x)


__all__ = ["is_prepared", "prepare", "release", "run_forward"]
