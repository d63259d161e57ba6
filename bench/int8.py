"""int8 against bf16 and fp32, per shipped model: agreement with fp32 on the validation split, and speed.

    python -m bench.int8                        # unet-em and unet-aerial, 2 threads
    python -m bench.int8 unet-em --images 2     # the first 2 validation images only

For each model whose card holds int8 ranges (``tileseg models quantize NAME`` writes them), each runtime below
predicts the model's validation split through the engine (:func:`tileseg.training.evaluation.evaluate`, cores
of 1024 px, as ``models quantize`` and the cards' metrics do), and its masks are compared with eager fp32's: the
share of pixels where they agree (not measured for the exported fp32 programs, whose logits match eager's by
the export's own check: ``nan``). The same runtime then runs bare (:func:`tileseg.engine.runtime.tuner.
time_forward`: random input, batch 1, the window of a ``--core`` px core, steady state after one call) and gives
output (core) megapixels per second. Runtimes: PyTorch eager fp32 (the reference) and bf16 autocast, ONNX Runtime
fp32 and int8, OpenVINO fp32, bf16 and int8 (those installed). The table names the CPU, its int8 and bf16
instructions (``avx512_vnni``, ``amx_int8``, ``avx512_bf16``, ``amx_bf16``) and the load average, since
other work on the machine moves the speeds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from bench.formats import cpu_name
from tileseg import models
from tileseg.engine.runtime.runtimes import Runtime, exported_modes
from tileseg.engine.runtime.tuner import time_forward
from tileseg.training.evaluation import evaluate
from tileseg.training.quantize import EVAL_TILE, data_folder, validation_samples
from tileseg.training.scores import agreement
from tileseg.training.sources import open_source

FLAGS = ("avx512_vnni", "amx_int8", "avx512_bf16", "amx_bf16")


def runtimes() -> list[Runtime]:
    """Eager fp32 first (the reference), then the others installed."""
    found = [Runtime("fp32", True, "eager"), Runtime("bf16", True, "eager")]
    modes = exported_modes(torch.device("cpu"))
    if "onnxruntime" in modes:
        found += [Runtime("fp32", False, "onnxruntime"), Runtime("int8", False, "onnxruntime")]
    if "openvino" in modes:
        found += [Runtime(p, False, "openvino") for p in ("fp32", "bf16", "int8")]
    return found


def bench(name: str, images: int, core: int, seconds: float) -> list[tuple[str, str, float, float, float]]:
    """Rows ``(model, runtime, agreement with fp32, Mpx/s, seconds to predict the split)`` for one model."""
    model = models.load(name)
    if not (model.card.get("int8") or {}).get("ranges"):
        raise SystemExit(f"{name}'s card has no int8 ranges: run `tileseg models quantize {name}` first")
    kind, folder = data_folder(model.card, None)
    val = validation_samples(model.card, open_source(kind, folder))
    val = val[:images] if images else val
    window = model.spec.geometry.window(core)
    rows, reference = [], None
    for runtime in runtimes():
        share, spent = float("nan"), float("nan")
        if runtime.precision != "fp32" or reference is None:  # an exported fp32 program matches eager's by check
            started = time.perf_counter()
            found = evaluate(model, val, runtime=runtime, tile=EVAL_TILE)
            spent = time.perf_counter() - started
            if found.runtime != runtime:
                raise SystemExit(f"{name}: {runtime.label} failed (the engine fell back to {found.runtime.label})")
            reference = found.masks if reference is None else reference
            share = agreement(reference, found.masks)
        steady, _, _ = time_forward(model, runtime, window, 1, seconds)
        rows.append((name, runtime.label, share, core * core / steady / 1e6, spent))
        print(f"{name} {runtime.label}: agreement {share:.6f}, {rows[-1][3]:.3f} Mpx/s", flush=True)
    pixels = sum(s.label.size for s in val)
    print(f"{name}: {len(val)} validation images ({pixels / 1e6:.1f} Mpx), window {window} (core {core})")
    return rows


def flags() -> str:
    try:
        present = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "flags unknown"
    return ", ".join(f"{flag} {'yes' if flag in present else 'no'}" for flag in FLAGS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=["unet-em", "unet-aerial"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=0, help="validation images per model (0: all)")
    parser.add_argument("--core", type=int, default=1024, help="the core of the bare forward's window")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed calls per runtime stop after this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for name in args.names for row in bench(name, args.images, args.core, args.seconds)]
    print(f"\n{cpu_name()}: {flags()}; {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"torch {torch.__version__}; agreement with eager fp32 on the validation split; bare forward, batch 1")
    print(f"| {'model':<12} | {'runtime':<27} | {'agreement':>9} | {'Mpx/s':>6} | {'vs fp32':>7} | {'split s':>7} |")
    print(f"|{'-' * 14}|{'-' * 29}|{'-' * 11}|{'-' * 8}|{'-' * 9}|{'-' * 9}|")
    fp32 = {name: speed for name, label, _, speed, _ in rows if label == "fp32/channels_last/eager"}
    for name, label, share, speed, spent in rows:
        print(f"| {name:<12} | {label:<27} | {share:9.6f} | {speed:6.3f} | {speed / fp32[name]:6.2f}x | {spent:7.1f} |")


if __name__ == "__main__":
    main()
