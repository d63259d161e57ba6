"""Is the default fast on this machine? `tileseg segment` with defaults against every fixed choice, per model.

    python -m bench.runtime                  # every installed model, a 2048^2 input
    python -m bench.runtime unet-aerial --size 1024

For each model, in one run, each a fresh `tileseg segment` process end to end (start-up, read, tile, run,
stitch, write) on a mirrored mosaic of a real image with the model's band count:

* ``auto (measuring)``: the defaults with an empty measurement cache: what the first run on a machine costs;
* ``auto``: the defaults again, the measurements cached: what every later run costs;
* every fixed option at the card's tile and batch 4 (what ran before the tuner chose the window): ``--runtime
  torch|onnxruntime|openvino`` (those installed) x ``--precision fp32|bf16`` (bf16 where the card allows it;
  ONNX Runtime fp32 only) x ``--compile off|on`` (torch).

``auto`` and the fixed options run in rounds (``--repeat``, default 2), each cell the fastest of its rounds.

The table gives seconds and the ratio of ``auto`` to the fastest fixed option (the goal: at most 1.10), with
the CPU's name and capability. Then the readers' share: ``auto`` with 0-1 reader threads against the default
2, to see whether reading steals the network's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.models import SOURCES, mosaic
from tileseg.models import available, card_spec

REPO = Path(__file__).resolve().parent.parent


TILESEG = Path(sys.executable).with_name("tileseg")


def run(image: Path, out: Path, name: str, cache: Path, *args: str) -> tuple[float, str]:
    """Seconds of one `tileseg segment` process, and the runtime its summary line names."""
    env = {**os.environ, "TILESEG_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    done = subprocess.run(
        [str(TILESEG), "segment", str(image), str(out), "--model", name, *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{name} {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    found = re.search(r"(\w+/\w+/\w+) on \w+", done.stderr)  # the summary line names the runtime
    return seconds, found.group(1) if found else "?"


def runtimes() -> list[str]:
    """torch, and the exported runtimes installed here."""
    import torch

    from tileseg.engine.runtime.runtimes import exported_modes

    return ["torch", *(m for m in exported_modes(torch.device("cpu")) if m in ("onnxruntime", "openvino"))]


def machine() -> str:
    import torch

    from tileseg.engine.runtime.device import configure_threads, describe_device

    configure_threads()
    d = describe_device(torch.device("cpu"))
    return f"{d['name']}, torch capability {d['capability']}, native bf16 {d['native_bf16']}, {d['threads']} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="models (default: every installed one)")
    parser.add_argument("--size", type=int, default=2048, help="side of the input mosaic")
    parser.add_argument("--no-compile", action="store_true", help="leave out the --compile on columns")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; each cell is the fastest of its rounds")
    parser.add_argument(
        "--readers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the reader threads' share (first model only)",
    )
    args = parser.parse_args()
    names = args.names or available()
    print(
        f"{machine()}; torch.compile {'measured' if not args.no_compile else 'left out'}; "
        f"input {args.size}², `tileseg segment` end to end, one process a cell\n"
    )
    print("| model | auto (measuring) | auto | fixed options, s | best fixed | auto / best |")
    print("|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs: dict[int, Path] = {}
        for name in names:
            spec = card_spec(name)
            bands = spec.input.bands
            if bands not in inputs:
                inputs[bands] = tmp / f"in{bands}.tif"
                mosaic(SOURCES[bands], inputs[bands], args.size)
            image, out, cache = inputs[bands], tmp / "out.tif", tmp / f"cache-{name}"
            first, _ = run(image, out, name, cache)
            variants = {"auto": ()}
            tile = ("--tile", str(spec.geometry.default_tile), "--batch", "4")  # what ran before the tuner chose
            for runtime in runtimes():
                for precision in ["fp32"] + ([spec.precision] if spec.precision == "bf16" else []):
                    if runtime == "onnxruntime" and precision != "fp32":
                        continue  # ONNX Runtime runs the fp32 graph
                    modes = ["off"] + ([] if args.no_compile or runtime != "torch" else ["on"])
                    for compile_ in modes:
                        key = f"{runtime} {precision}" + (" compiled" if compile_ == "on" else "")
                        variants[key] = ("--runtime", runtime, "--precision", precision, "--compile", compile_, *tile)
            seconds: dict[str, list[float]] = {key: [] for key in variants}
            chosen = ""
            for _ in range(args.repeat):  # rounds in turn, so that a busy spell does not fall on one variant
                for key, extra in variants.items():
                    took, said = run(image, out, name, cache, *extra)
                    seconds[key].append(took)
                    chosen = said if key == "auto" else chosen
            auto = min(seconds.pop("auto"))
            fixed = {key: min(values) for key, values in seconds.items()}
            best = min(fixed, key=fixed.get)
            cells = ", ".join(f"{k} {v:.1f}" for k, v in fixed.items())
            ratio = auto / fixed[best]
            rows.append({"model": name, "first": first, "auto": auto, "chosen": chosen, "fixed": fixed, "ratio": ratio})
            print(
                f"| `{name}` | {first:.1f} s | {auto:.1f} s ({chosen}) | {cells} | {best} | {ratio:.2f} |", flush=True
            )
        if args.readers and names:
            name = names[0]
            image = inputs[card_spec(name).input.bands]
            cache = tmp / f"cache-{name}"
            print(f"\nreader threads, `{name}`, auto (cached):")
            for readers in (1, 2, 4):
                seconds, _ = run_with_readers(image, tmp / "out.tif", name, cache, readers)
                print(f"  {readers} reader thread(s): {seconds:.1f} s")
    (Path(tempfile.gettempdir()) / "tileseg-bench-runtime.json").write_text(json.dumps(rows, indent=1))


def run_with_readers(image: Path, out: Path, name: str, cache: Path, readers: int) -> tuple[float, str]:
    code = (
        "import sys, time; from tileseg.engine import run_file, SegmentOptions; "
        "from tileseg.engine.runtime.device import configure_threads; configure_threads(); t = time.perf_counter(); "
        f"run_file({name!r}, {str(image)!r}, {str(out)!r}, SegmentOptions(readers={readers})); "
        "print(time.perf_counter() - t)"
    )
    env = {**os.environ, "TILESEG_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, check=True)
    return float(done.stdout.strip().splitlines()[-1]), ""


if __name__ == "__main__":
    main()
