"""The API tests' networks: the engine's test networks, and one that takes its time.

``SlowNet`` is :class:`tests.engine.nets.ShiftNet` (a known answer) that sleeps in every forward pass, so
that a job runs for as long as a test needs (to cancel it, kill the server under it, stop it with
SIGTERM) without using the CPU.
"""

from __future__ import annotations

import time

from tests.engine import nets
from tests.engine.nets import ShiftNet
from tileseg.models.registry import ARCHITECTURES


class SlowNet(ShiftNet):
    # its sleep is a side effect no exported or compiled program keeps: the tuner must run it eager, or a job
    # meant to take seconds would end in milliseconds (an ONNX Runtime candidate measures fastest)
    compilable = False

    def __init__(self, in_channels, num_classes, *, delay=0.1, **shift):
        super().__init__(in_channels, num_classes, **shift)
        self.hparams = {**self.hparams, "delay": delay}
        self.delay = delay

    def forward(self, x):
        time.sleep(self.delay)
        return super().forward(x)


def register() -> None:
    """Make the engine's and the API's test architectures loadable by name."""
    nets.register()
    ARCHITECTURES["test-slow"] = SlowNet


def unregister() -> None:
    nets.unregister()
    ARCHITECTURES.pop("test-slow", None)
