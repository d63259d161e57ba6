"""The same network served three ways: native PyTorch, a TorchScript export and an ONNX Runtime session.

    python -m bench.formats                        # unet-aerial and unet-em, 2 threads, 3 rounds
    python -m bench.formats unet-aerial --threads 4 --rounds 5 --batch 4

Each shipped network is exported here (TorchScript by tracing, ONNX with dynamic sizes, opset 17), wrapped as
``tileseg models add`` wraps them (:class:`tileseg.models.external.TorchScriptNet`, ``OnnxNet``), and run on
batches of the windows the engine feeds it at the model's default tile, fp32 on the CPU. Each cell is the
fastest of its rounds (after one warm-up pass): output megapixels per second of the network alone, since the
rest of the engine is the same for all three. The last column is the largest logit difference to native.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

from tileseg import models
from tileseg.models.external import OnnxNet, TorchScriptNet

REPO = Path(__file__).resolve().parent.parent


def export(net: models.SegmentationNet, folder: Path, size: int) -> tuple[Path, Path]:
    """``net`` traced to TorchScript and exported to ONNX (dynamic batch and sizes), at an accepted ``size``."""
    x = torch.randn(1, net.spec.input.bands, size, size)
    script, onnx = folder / "net.torchscript", folder / "net.onnx"
    axes = {"input": {0: "b", 2: "h", 3: "w"}, "logits": {0: "b", 2: "oh", 3: "ow"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, x, check_trace=False), str(script))
        torch.onnx.export(
            net, (x,), str(onnx), dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"],
            dynamic_axes=axes,
        )  # fmt: skip
    return script, onnx


def best_seconds(net: torch.nn.Module, x: torch.Tensor, rounds: int) -> tuple[float, torch.Tensor]:
    """The fastest of ``rounds`` forward passes (after a warm-up) and the logits."""
    with torch.inference_mode():
        out = net(x)
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - started)
    return min(times), out


def bench(name: str, batch: int, rounds: int) -> list[tuple[str, str, float, float]]:
    """Rows ``(model, runtime, Mpx/s, max |logits - native|)`` for one shipped model."""
    native = models.load(name).float().to(memory_format=torch.contiguous_format).eval()
    geometry = native.spec.geometry
    core, window = geometry.default_tile, geometry.window(geometry.default_tile)
    x = torch.randn(batch, native.spec.input.bands, window, window)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script, onnx = export(native, Path(tmp), window)
        runtimes = {"native": native, "torchscript": TorchScriptNet(script), "onnxruntime": OnnxNet(onnx)}
        reference = None
        for label, net in runtimes.items():
            seconds, out = best_seconds(net, x, rounds)
            reference = out if reference is None else reference
            margin = geometry.halo - geometry.shrink
            pixels = batch * (out.shape[-2] - 2 * margin) * (out.shape[-1] - 2 * margin)
            rows.append((name, label, pixels / seconds / 1e6, float((out - reference).abs().max())))
    print(f"{name}: tile {core}, window {window}, batch {batch}", flush=True)
    return rows


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=["unet-aerial", "unet-em"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for name in args.names for row in bench(name, args.batch, args.rounds)]
    print(f"\n{cpu_name()}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"torch {torch.__version__}; core Mpx/s (the kept centre of each window), fastest of {args.rounds}")
    print(f"| {'model':<12} | {'runtime':<12} | {'Mpx/s':>6} | {'vs native':>9} | {'max |dlogit|':>12} |")
    print(f"|{'-' * 14}|{'-' * 14}|{'-' * 8}|{'-' * 11}|{'-' * 14}|")
    native = {name: speed for name, label, speed, _ in rows if label == "native"}
    for name, label, speed, error in rows:
        print(f"| {name:<12} | {label:<12} | {speed:6.3f} | {speed / native[name]:8.2f}x | {error:12.2e} |")


if __name__ == "__main__":
    main()
