"""Running the network, fast and within memory on this machine.

- :mod:`.device`: the device to run on, its threads and the memory budget a forward pass may take.
- :mod:`.runtimes`: one interface (:class:`~tileseg.engine.runtime.runtimes.Runtime`) over eager or compiled
  PyTorch and the exported runtimes.
- :mod:`.export`: the network exported to ONNX, run by ONNX Runtime or OpenVINO, cached per serving options.
- :mod:`.tuner` and :mod:`.search`: runtime, precision, window and batch measured on this machine and cached.
- :mod:`.memory`: memory handed back between tile rows.
"""
