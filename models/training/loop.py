"""The training loop: ``train(TrainConfig(...))`` trains a registered architecture on a data set and writes a
checkpoint with its model card.

One optimisation step draws ``batch`` random crops (per process), runs the network (its deep-supervision
heads for U-Net++), takes the pixel-wise cross-entropy over labelled pixels, optionally weighted by class
(median frequency balancing) and by U-Net's border weights, and steps AdamW on a cosine schedule with warmup.

Runs are repeatable and resumable. The randomness of step ``t`` on process ``r`` comes from a generator
seeded with ``(seed, r, t)``, so a run that stops and resumes draws the very crops it would have drawn
without stopping, and no random state has to be carried between sessions. The resumable state
(``OUT.train/``) holds the fp32 weights and the optimizer's tensors in safetensors files and everything
else in ``state.json``; nothing is pickled.

Under ``torchrun`` (RANK and WORLD_SIZE in the environment) the same code trains data-parallel: gloo on the
CPU, NCCL on CUDA (with SyncBatchNorm), each process drawing its own crops, process 0 alone writing files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from tileseg.models import checkpoint
from tileseg.models.errors import TilesegError
from tileseg.models.registry import build_model
from tileseg.models.spec import Geometry, InputSpec, ModelSpec
from tileseg.models.training.augment import Augment, border_weights, sample_crop
from tileseg.models.training.data import IGNORE_INDEX, Dataset, normalize, open_source
from tileseg.models.training.metrics import agreement, evaluate, summarize

STATE_VERSION = 1
BF16_AGREEMENT_FOR_BF16 = 0.995  # the card offers bf16 when its masks agree with fp32 on this share of pixels

# Settings that may change from one session of a run to the next; every other setting defines the run.
SESSION_FIELDS = frozenset({
    "data", "steps", "device", "threads", "checkpoint_every", "time_budget", "session_steps", "eval_tile",
    "val_every", "progress", "default_tile", "resume",
})


class TrainingConfigError(TilesegError, ValueError):
    """Training settings that cannot work together, or that contradict the run being resumed."""

    code = "bad_training_config"


@dataclass
class TrainConfig:
    """Everything a training run needs. ``crop`` is the *output* crop side; see :func:`train`."""

    arch: str
    data: str
    dataset: str
    out: str
    params: dict[str, Any] = field(default_factory=dict)
    crop: int = 128
    batch: int = 4
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int | None = None  # steps; None: 5 % of the run, at most 200
    schedule: str = "cosine"  # or "constant" (after warmup)
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "auto"  # auto: bf16 on CPU, fp16 on CUDA
    channels_last: bool = True
    threads: int | None = None
    checkpoint_every: int = 200
    resume: bool = False
    time_budget: float | None = None  # minutes of wall time for this session
    session_steps: int | None = None  # at most this many steps in this session
    class_weights: str = "none"  # none, auto (median frequency balancing) or w1,w2,...
    border_weight: bool = False
    w0: float = 10.0
    sigma: float = 5.0
    flips: bool = True
    elastic: bool = False
    deep_supervision: bool | None = None  # None: on when the model has forward_deep
    val_fraction: float = 0.2
    class_names: list[str] | None = None
    data_license: str | None = None
    default_tile: int | None = None
    eval_tile: int | None = None  # validation cores; None: see evaluation_tile()
    val_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {"crop": self.crop, "batch": self.batch, "steps": self.steps,
                    "checkpoint_every": self.checkpoint_every, "eval_tile": self.eval_tile}
        for name, value in positive.items():
            if value is not None and value < 1:
                raise TrainingConfigError(f"{name} must be at least 1, got {value}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise TrainingConfigError("need lr > 0 and weight_decay >= 0")
        if self.schedule not in ("cosine", "constant"):
            raise TrainingConfigError(f"schedule must be 'cosine' or 'constant', not {self.schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise TrainingConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.amp_dtype not in ("auto", "bf16", "fp16"):
            raise TrainingConfigError(f"amp_dtype must be auto, bf16 or fp16, not {self.amp_dtype!r}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise TrainingConfigError("time_budget must be positive (minutes)")
        if self.session_steps is not None and self.session_steps < 1:
            raise TrainingConfigError("session_steps must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise TrainingConfigError("threads must be at least 1")

    def evaluation_tile(self, geometry: Geometry) -> int:
        """The largest core side in validation: ``eval_tile`` when given; else 1024 for translation-equivariant
        networks (any tile gives them their whole-image result) and the default tile for the others, whose
        window is then the size they were trained on, as the engine runs them."""
        if self.eval_tile is not None:
            return self.eval_tile
        if geometry.equivariant:
            return 1024
        return self.default_tile or geometry.default_tile

    def warmup_steps(self) -> int:
        """The warmup length actually used."""
        return min(self.warmup if self.warmup is not None else min(200, self.steps // 20), self.steps - 1)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def state_dir(out: str | os.PathLike) -> Path:
    """Where the resumable state of the run writing ``out`` lives: ``OUT.train/``."""
    return Path(str(Path(out).with_suffix("")) + ".train")


def make_config(out: str, resume: bool = False, **given: Any) -> TrainConfig:
    """A config from the settings given, completed by the saved run when resuming.

    With ``resume`` and a saved state, settings not given are the saved ones, and a given setting that
    defines the run (architecture, data set, crop, lr, ...) must equal the saved one; only session settings
    (steps, device, threads, time budget, ...) may change. Without a saved state, ``arch``, ``data`` and
    ``dataset`` are required.

    Raises:
        TrainingConfigError: a required setting is missing, or a given one contradicts the saved run.
    """
    given = {k: v for k, v in given.items() if v is not None}
    saved_path = state_dir(out) / "state.json"
    if resume and saved_path.is_file():
        saved = json.loads(saved_path.read_text())["config"]
        clashes = [
            f"{k}={given[k]!r} (the run has {saved.get(k)!r})"
            for k in sorted(given)
            if k not in SESSION_FIELDS and _normal(given[k]) != _normal(saved.get(k))
        ]
        if clashes:
            raise TrainingConfigError(
                f"--resume continues the run saved in {saved_path.parent}, which differs in: {'; '.join(clashes)}. "
                "Leave those settings out (or equal), or train into another --out"
            )
        merged = {**saved, **given, "out": str(out), "resume": True}
        return TrainConfig.from_json(merged)
    missing = [k for k in ("arch", "data", "dataset") if k not in given]
    if missing:
        hint = f" (no saved run in {saved_path.parent} to resume)" if resume else ""
        raise TrainingConfigError(f"missing {', '.join('--' + k for k in missing)}{hint}")
    return TrainConfig(out=str(out), resume=resume, **given)


def _normal(value: Any) -> Any:
    # JSON turns tuples into lists; compare settings the way they are saved
    return json.loads(json.dumps(value))


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` as an architecture hyper-parameter: ints, floats, true/false and none are parsed,
    anything else is a string.

    Raises:
        TrainingConfigError: no ``=``, or an empty key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TrainingConfigError(f"--param takes key=value, got {text!r}")
    raw = raw.strip()
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered in ("none", "null"):
        return key, None
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw


def nearest_valid_crop(geometry: Geometry, wanted: int) -> int:
    """The valid output length (``O % multiple == offset``, at least one multiple) nearest to ``wanted``;
    of two equally near, the larger."""
    above = geometry.window_output(max(wanted, 1))
    below = above - geometry.multiple
    smallest = geometry.window_output(geometry.multiple)
    if below < smallest:
        return max(above, smallest)
    return below if wanted - below < above - wanted else above


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """The learning-rate multiplier for optimisation step ``step`` (0-based) of ``total``: linear warmup
    over ``warmup`` steps, then constant or a cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def median_frequency_weights(labels: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Median frequency balancing (Eigen and Fergus 2015): ``w_c = median(f) / f_c``, where ``f_c`` is the
    pixel count of class c over the pixel count of the images in which c appears.

    A class that never appears gets weight 0 (there is nothing to weigh).
    """
    counts = np.zeros(num_classes)
    exposure = np.zeros(num_classes)
    for label in labels:
        hist = np.bincount(label.ravel(), minlength=256)[:num_classes]
        labelled = label.size - np.count_nonzero(label == IGNORE_INDEX)
        counts += hist
        exposure += np.where(hist > 0, labelled, 0)
    present = counts > 0
    freq = np.where(present, counts / np.maximum(exposure, 1), 0.0)
    median = np.median(freq[present]) if present.any() else 1.0
    return np.where(present, median / np.where(present, freq, 1.0), 0.0)


def parse_class_weights(text: str, labels: list[np.ndarray], num_classes: int) -> np.ndarray | None:
    """``none`` -> None, ``auto`` -> median frequency balancing, ``w1,w2,...`` -> those weights.

    Raises:
        TrainingConfigError: a list of the wrong length or with a negative or non-numeric weight.
    """
    text = text.strip().lower()
    if text == "none":
        return None
    if text == "auto":
        return median_frequency_weights(labels, num_classes)
    try:
        weights = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise TrainingConfigError(f"--class-weights takes none, auto or {num_classes} numbers, got {text!r}") from None
    if weights.shape != (num_classes,) or (weights < 0).any():
        raise TrainingConfigError(
            f"--class-weights needs {num_classes} non-negative numbers, one per class, got {text!r}"
        )
    return weights


# --- processes and devices -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Processes:
    """This process's place in a data-parallel run (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls) -> Processes:
        """Read torchrun's RANK, WORLD_SIZE and LOCAL_RANK."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str, procs: Processes) -> torch.device:
    """``auto`` is CUDA when available; under torchrun each process takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingConfigError("--device cuda, but this torch sees no CUDA device")
        return torch.device("cuda", procs.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None without AMP."""
    if not config.amp:
        return None
    kind = config.amp_dtype if config.amp_dtype != "auto" else ("fp16" if device.type == "cuda" else "bf16")
    if kind == "fp16" and device.type != "cuda":
        raise TrainingConfigError("fp16 autocast needs CUDA; on the CPU use --amp-dtype bf16")
    return torch.float16 if kind == "fp16" else torch.bfloat16


# --- the pieces of a step ------------------------------------------------------------------------------

class Heads(nn.Module):
    """The network as trained: its deep-supervision heads, or its one output, as a list.

    DistributedDataParallel synchronises gradients of what its wrapped ``forward`` computes, so the choice
    between ``forward_deep`` and ``forward`` has to live inside a module's forward.
    """

    def __init__(self, net: nn.Module, deep: bool) -> None:
        super().__init__()
        self.net = net
        self.deep = deep

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net.forward_deep(x)) if self.deep else [self.net(x)]


class Sampler:
    """Random training batches from a data set in memory; batch ``t`` of process ``r`` depends only on
    ``(seed, r, t)``."""

    def __init__(self, data: Dataset, output: int, shrink: int, augment: Augment, seed: int, rank: int,
                 weights: list[np.ndarray] | None) -> None:
        self.samples = data.train
        self.mean, self.std = data.band_stats()
        self.output, self.shrink, self.augment = output, shrink, augment
        self.seed, self.rank = seed, rank
        self.weights = weights
        # Images are drawn in proportion to their area, so that every labelled pixel is equally likely.
        areas = np.array([s.label.size for s in self.samples], dtype=np.float64)
        self.p = areas / areas.sum()

    def batch(self, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(images (B, bands, I, I) float32, labels (B, O, O) int64, weights (B, O, O) float32 or None)``."""
        rng = np.random.default_rng((self.seed, self.rank, step))
        images, labels, weights = [], [], []
        for _ in range(size):
            k = int(rng.choice(len(self.samples), p=self.p))
            sample = self.samples[k]
            img, lab, wts = sample_crop(rng, sample.image, sample.label, self.output, self.shrink, self.augment,
                                        self.weights[k] if self.weights is not None else None)
            images.append(normalize(img, self.mean, self.std))
            labels.append(lab)
            weights.append(wts)
        x = torch.from_numpy(np.stack(images))
        y = torch.from_numpy(np.stack(labels).astype(np.int64))
        w = torch.from_numpy(np.stack(weights)) if self.weights is not None else None
        return x, y, w


def centre_crop_to(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre ``height x width`` of the last two axes."""
    top = (t.shape[-2] - height) // 2
    left = (t.shape[-1] - width) // 2
    return t[..., top : top + height, left : left + width]


def segmentation_loss(heads: list[torch.Tensor], labels: torch.Tensor, class_weights: torch.Tensor | None,
                      pixel_weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over heads of the weighted pixel-wise cross-entropy over labelled pixels.

    Each pixel weighs ``class_weights[label] + pixel_weights`` (1 + border term without class weights);
    ignored pixels weigh 0; the loss is ``sum(w * ce) / sum(w)``. A head smaller than the labels is scored on
    their centre (valid-convolution deep supervision).
    """
    losses = []
    for logits in heads:
        h, w = logits.shape[-2:]
        y = centre_crop_to(labels, h, w) if labels.shape[-2:] != (h, w) else labels
        ce = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX, reduction="none")
        labelled = y != IGNORE_INDEX
        if class_weights is not None:
            weight = class_weights[y.clamp(max=len(class_weights) - 1)]
        else:
            weight = torch.ones_like(ce)
        if pixel_weights is not None:
            weight = weight + centre_crop_to(pixel_weights, h, w)
        weight = weight * labelled
        # clamp: a crop with no labelled pixel gives loss 0 (and no gradient), not NaN
        losses.append((weight * ce).sum() / weight.sum().clamp(min=1e-6))
    return torch.stack(losses).mean()


# --- resumable state -----------------------------------------------------------------------------------

def save_state(directory: Path, step: int, net: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None, extra: dict[str, Any]) -> None:
    """Write the resumable state: tensors to step-numbered safetensors files, the rest to ``state.json``,
    written last and atomically, so that a crash mid-write leaves the previous state intact."""
    directory.mkdir(parents=True, exist_ok=True)
    model_file = f"model-{step:08d}.safetensors"
    optim_file = f"optimizer-{step:08d}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(directory / model_file))
    tensors, index = flatten_optimizer(optimizer.state_dict())
    save_file(tensors, str(directory / optim_file))
    state = {
        "version": STATE_VERSION,
        "step": step,
        "model": model_file,
        "optimizer": optim_file,
        "optimizer_index": index,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": "regenerated each step from (seed, rank, step): nothing to restore",
        **extra,
    }
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, directory / "state.json")
    for old in directory.glob("*.safetensors"):
        if old.name not in (model_file, optim_file):
            old.unlink()


def load_state(directory: Path) -> dict[str, Any]:
    """``state.json`` of a saved run with its tensors: ``model`` (a state dict) and ``optimizer_state``.

    Raises:
        TrainingConfigError: the state is unreadable or from another version.
    """
    try:
        state = json.loads((directory / "state.json").read_text())
        if state.get("version") != STATE_VERSION:
            raise TrainingConfigError(
                f"{directory} holds training state version {state.get('version')}, not {STATE_VERSION}"
            )
        state["model_tensors"] = load_file(str(directory / state["model"]))
        optimizer_tensors = load_file(str(directory / state["optimizer"]))
        state["optimizer_state"] = unflatten_optimizer(optimizer_tensors, state["optimizer_index"])
    except (OSError, ValueError, KeyError) as err:
        raise TrainingConfigError(f"cannot read the training state in {directory}: {err}") from err
    return state


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict as ``(tensors for safetensors, JSON-able index)``."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        per_param[str(pid)] = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                key = f"{pid}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                per_param[str(pid)][name] = {"tensor": key}
            else:
                per_param[str(pid)][name] = {"value": value}
    return tensors, {"param_groups": state_dict["param_groups"], "state": per_param}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], index: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer`."""
    state = {
        int(pid): {name: tensors[ref["tensor"]] if "tensor" in ref else ref["value"] for name, ref in entries.items()}
        for pid, entries in index["state"].items()
    }
    return {"state": state, "param_groups": index["param_groups"]}


# --- stopping cleanly ----------------------------------------------------------------------------------

class StopSignals:
    """Turns the first SIGINT or SIGTERM into a request to stop after the current step (the state is then
    saved); a second one acts as usual."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # signal handlers can only be set from the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainResult:
    """What a call of :func:`train` did."""

    step: int
    steps: int
    finished: bool
    stop_reason: str  # "done", "time budget", "session steps", "signal SIGINT", ...
    checkpoint: Path | None = None
    metrics: dict[str, Any] | None = None
    signal: int | None = None


# --- the loop ------------------------------------------------------------------------------------------

def train(config: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``config.arch`` on ``config.dataset`` and write ``config.out`` (``.safetensors`` + card).

    The run saves its state to ``OUT.train/`` every ``checkpoint_every`` steps and whenever it stops early
    (time budget, session steps, SIGINT/SIGTERM); with ``resume`` it continues from there. When all
    ``steps`` are done, process 0 evaluates the validation split on whole images (fp32, and bf16 autocast to
    measure their agreement) and writes the checkpoint and its card.

    Args:
        config: the settings.
        log: where messages go (process 0 only); default: nowhere.

    Raises:
        TrainingConfigError: settings that cannot work (crop too small for the net, --resume clash, ...).
        TrainingDataError: a data set that cannot be read or does not fit together.
    """
    procs = Processes.from_environ()
    say = log if (log is not None and procs.main) else (lambda message: None)
    device = resolve_device(config.device, procs)
    if procs.distributed:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    threads = torch.get_num_threads()
    try:
        return _train(config, procs, device, say)
    finally:
        torch.set_num_threads(threads)  # a caller's own work (other tests, a notebook) keeps its threads
        if procs.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(config: TrainConfig, procs: Processes, device: torch.device, say: Callable[[str], None]) -> TrainResult:
    session_start = time.monotonic()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    elif procs.distributed and device.type == "cpu":
        # several processes on one CPU would otherwise each take every core and fight over them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", procs.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    autocast = amp_dtype(config, device)
    source, data = _load_data(config, say)
    mean, std = data.band_stats()
    num_classes = len(data.classes)
    net, geometry, output, deep = _build_net(config, data, say)
    input_size = geometry.input_length(output)
    served = geometry.window(config.default_tile or geometry.default_tile)
    if not geometry.equivariant and served != input_size:
        say(f"note: {config.arch} is not translation-equivariant and will be served on windows of {served} px "
            f"(its default tile), but trains on {input_size}-pixel crops: give --crop {served}, or set the net's "
            "training size to the crop (SETR: --param img_size)")

    class_weights = parse_class_weights(config.class_weights, [s.label for s in data.train], num_classes)
    pixel_weights = None
    if config.border_weight:
        if source.instance_channel is None:
            raise TrainingConfigError(f"--border-weight needs a data set of separable objects (two classes); "
                                      f"{config.dataset} has none")
        say(f"computing border weights (w0 {config.w0:g}, sigma {config.sigma:g}) for {len(data.train)} images")
        pixel_weights = [border_weights(s.label, source.instance_channel, config.w0, config.sigma)
                         for s in data.train]
    augment = Augment(flips=config.flips, elastic=config.elastic)
    sampler = Sampler(data, output, geometry.shrink, augment, config.seed, procs.rank, pixel_weights)

    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    net = net.to(device=device, memory_format=memory_format)
    optimizer = torch.optim.AdamW(_param_groups(net, config.weight_decay), lr=config.lr)
    scaler = torch.amp.GradScaler("cuda") if autocast == torch.float16 else None
    directory = state_dir(config.out)
    start, seconds, sessions, loss_ema = _restore(directory, config, net, optimizer, scaler, say)
    sessions += 1

    if procs.distributed and device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model: nn.Module = Heads(net, deep)
    if procs.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # static_graph: the same parameters take part in every step, and it tolerates heads left unused
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        static_graph=True)
    cw_tensor = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights is not None else None
    warmup = config.warmup_steps()

    def extra_state(step_seconds: float) -> dict[str, Any]:
        return {"seconds": step_seconds, "sessions": sessions, "config": config.to_json(), "crop": output,
                "world_size": procs.world, "mean": list(mean), "std": list(std), "loss_ema": loss_ema}

    step = start
    stop_reason = "done"
    signum = None
    progress = _progress(config, procs, start)
    model.train()
    with StopSignals() as signals:
        say(f"training steps {step}..{config.steps}; SIGINT or SIGTERM saves the state and stops")
        while step < config.steps:
            session_seconds = time.monotonic() - session_start
            stop_reason = _stop_reason(config, signals, step - start, session_seconds)
            if procs.distributed:
                stop_reason = _agree_on_stop(stop_reason, device)
            if stop_reason != "done":
                break
            factor = lr_factor(step, config.steps, warmup, config.schedule)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * factor
            # dropout and anything else drawing from torch: reseeded per step and process, like the crops
            torch.manual_seed(int(np.random.SeedSequence((config.seed, procs.rank, step, 1)).generate_state(1)[0]))
            x, y, w = sampler.batch(step, config.batch)
            x = x.to(device, memory_format=memory_format, non_blocking=True)
            y = y.to(device, non_blocking=True)
            w = w.to(device, non_blocking=True) if w is not None else None
            with torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext():
                try:
                    heads = model(x)
                except ValueError as err:  # the net refuses the crop size; say which crop would do
                    raise TrainingConfigError(f"{config.arch} refuses a {input_size}-pixel crop: {err}. "
                                              "Choose a larger --crop") from err
            if step == start:
                _check_output(heads[-1], output, input_size, config.arch)
            loss = segmentation_loss(heads, y, cw_tensor, w)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            step += 1
            value = float(loss.detach())
            loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss_ema:.4f}", lr=f"{config.lr * factor:.2e}", refresh=False)
            if procs.main and step % config.checkpoint_every == 0 and step < config.steps:
                so_far = seconds + time.monotonic() - session_start
                save_state(directory, step, net, optimizer, scaler, extra_state(so_far))
            if procs.main and config.val_every and step % config.val_every == 0 and step < config.steps:
                cm, _ = evaluate(net, data.val, mean, std, geometry, num_classes, config.evaluation_tile(geometry),
                                 device)
                found = summarize(cm, [c.name for c in data.classes])
                _write(progress, say,
                       f"step {step}: validation pixel error {found['pixel_error']:.4f}, mIoU {found['miou']:.4f}")
        signum = signals.received
    if progress is not None:
        progress.close()
    seconds += time.monotonic() - session_start
    finished = step >= config.steps

    if procs.main and (step > start or not finished):
        save_state(directory, step, net, optimizer, scaler, extra_state(seconds))
    if not finished:
        say(f"stopped at step {step} of {config.steps} ({stop_reason}); the state is in {directory}: "
            "run again with --resume to continue")
        return TrainResult(step, config.steps, False, stop_reason, signal=signum)
    if procs.distributed:
        import torch.distributed as dist

        dist.barrier()
    if not procs.main:
        return TrainResult(step, config.steps, True, "done")

    say(f"evaluating on the validation split ({len(data.val)} images, whole-image inference)")
    path, metrics = _finish(config, data, source, net, geometry, output, deep, class_weights, augment, device,
                            procs, seconds, sessions, step, warmup, loss_ema)
    say(f"validation: pixel error {metrics['pixel_error']:.4f} (majority baseline "
        f"{metrics['majority_baseline_pixel_error']:.4f}), mIoU {metrics['miou']:.4f}, "
        f"bf16 agreement {metrics['bf16_agreement']:.4f}; wrote {path}")
    return TrainResult(step, config.steps, True, "done", path, metrics)


def _finish(config: TrainConfig, data: Dataset, source, net: nn.Module, geometry: Geometry, output: int, deep: bool,
            class_weights: np.ndarray | None, augment: Augment, device: torch.device, procs: Processes,
            seconds: float, sessions: int, step: int, warmup: int, loss_ema: float | None) -> tuple[Path, dict]:
    """Evaluate the weights as they will be shipped and write the checkpoint and its card."""
    mean, std = data.band_stats()
    names = [c.name for c in data.classes]
    # The checkpoint stores fp16 weights: measure the network that users will load, not the fp32 one.
    shipped = build_model(config.arch, in_channels=data.bands, num_classes=len(data.classes), **config.params)
    shipped.load_state_dict({k: v.detach().to(torch.float16).to(v.dtype) if v.is_floating_point() else v
                             for k, v in net.state_dict().items()})
    shipped = shipped.to(device=device, memory_format=torch.channels_last).eval()
    tile = config.evaluation_tile(geometry)
    cm, fp32_masks = evaluate(shipped, data.val, mean, std, geometry, len(data.classes), tile, device)
    _, bf16_masks = evaluate(shipped, data.val, mean, std, geometry, len(data.classes), tile, device,
                             autocast=torch.bfloat16)
    metrics = {"split": f"{config.dataset} validation, {source.val_split}", **summarize(cm, names),
               "bf16_agreement": round(agreement(fp32_masks, bf16_masks), 6),
               "evaluation": f"whole images, mirror-padded, cores of at most {tile} px"
                             + ("" if geometry.equivariant else f" (windows of {geometry.window(tile)} px), "
                                "each core kept whole, not blended") + f", fp32 on {device.type}"}
    if loss_ema is not None:
        metrics["final_training_loss"] = round(loss_ema, 6)
    geo = geometry if config.default_tile is None else dataclasses.replace(geometry, default_tile=config.default_tile)
    spec = ModelSpec(
        name=Path(config.out).with_suffix("").name,
        arch=config.arch,
        input=InputSpec(bands=data.bands, mean=tuple(mean), std=tuple(std)),
        classes=data.classes,
        geometry=geo,
        precision="bf16" if metrics["bf16_agreement"] >= BF16_AGREEMENT_FOR_BF16 else "fp32",
    )
    training = {
        "data": config.dataset,
        "split": source.split,
        "steps": step,
        "crop": output,
        "input_crop": geometry.input_length(output),
        "batch": config.batch,
        "processes": procs.world,
        "global_batch": config.batch * procs.world,
        "optimizer": "AdamW",
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "schedule": f"{config.schedule}, {warmup} warmup steps",
        "loss": "pixel-wise cross-entropy over labelled pixels"
                + (", mean over deep-supervision heads" if deep else ""),
        "class_weights": [round(float(v), 6) for v in class_weights] if class_weights is not None else None,
        "border_weight": {"w0": config.w0, "sigma": config.sigma} if config.border_weight else None,
        "deep_supervision": deep,
        "augmentations": augment.names(),
        "seed": config.seed,
        "seconds": round(seconds, 1),
        "sessions": sessions,
        "device": _describe_device(device),
        "amp": str(amp_dtype(config, device)).replace("torch.", "") if config.amp else None,
        "torch": torch.__version__,
    }
    data_card = {
        "dataset": config.dataset,
        "source": source.citation or config.dataset,
        "train_images": len(data.train),
        "val_images": [s.name for s in data.val],
        "bands": data.bands,
    }
    if source.pixel_size:
        data_card["pixel_size"] = source.pixel_size
    if config.dataset == "dubai":
        data_card["ignored_label"] = "mask value 0 (unlabeled): not learnt, not scored, never predicted"
    path = checkpoint.save(shipped, spec, config.out, training=training, metrics=metrics, license=source.license,
                           created=datetime.date.today().isoformat(), data=data_card)
    return path, metrics


def _load_data(config: TrainConfig, say: Callable[[str], None]):
    """The data source and its data in memory."""
    options = {}
    if config.dataset == "folder":
        options = {"val_fraction": config.val_fraction, "class_names": config.class_names,
                   "license": config.data_license or ""}
    source = open_source(config.dataset, config.data, **options)
    data = source.load()
    mean, std = data.band_stats()
    say(f"{config.dataset}: {len(data.train)} training and {len(data.val)} validation images, "
        f"{data.bands} band(s), {len(data.classes)} classes; mean {_fmt(mean)}, std {_fmt(std)}")
    return source, data


def _build_net(config: TrainConfig, data: Dataset, say: Callable[[str], None]):
    """``(net, geometry, output crop, deep supervision)``: the untrained net and what follows from it."""
    torch.manual_seed(config.seed)  # the same initial weights on every process, and from run to run
    try:
        net = build_model(config.arch, in_channels=data.bands, num_classes=len(data.classes), **config.params)
    except (TypeError, ValueError) as err:
        raise TrainingConfigError(f"cannot build {config.arch} with {config.params}: {err}") from err
    geometry = net.geometry()
    output = nearest_valid_crop(geometry, config.crop)
    if output != config.crop:
        say(f"crop {config.crop} does not fit {config.arch} (output % {geometry.multiple} must be "
            f"{geometry.offset}); using the nearest valid output crop {output}")
    # a U-Net++ built without deep supervision has forward_deep, but only its one head behind it
    has_deep = callable(getattr(net, "forward_deep", None)) and net.hparams.get("deep_supervision", True) is not False
    if config.deep_supervision and not has_deep:
        raise TrainingConfigError(f"{config.arch} has no deep-supervision heads (no forward_deep)")
    deep = has_deep if config.deep_supervision is None else config.deep_supervision
    return net, geometry, output, deep


def _restore(directory: Path, config: TrainConfig, net: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None, say: Callable[[str], None]) -> tuple[int, float, int, float | None]:
    """Load a saved state into the net and optimizer; ``(step, seconds, sessions, smoothed loss)`` so far
    (zeros and None if none)."""
    if not (directory / "state.json").is_file():
        return 0, 0.0, 0, None
    if not config.resume:
        raise TrainingConfigError(f"{directory} holds a saved run: pass --resume to continue it, or remove "
                                  "the folder to start again")
    state = load_state(directory)
    net.load_state_dict(state["model_tensors"])
    optimizer.load_state_dict(state["optimizer_state"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    start, seconds = int(state["step"]), float(state.get("seconds", 0.0))
    say(f"resuming from step {start} of {config.steps} ({seconds / 60:.1f} min trained so far)")
    return start, seconds, int(state.get("sessions", 0)), state.get("loss_ema")


def _param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decaying norm scales and biases only pulls them towards 0 for no gain in generalisation.
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    keep = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def _stop_reason(config: TrainConfig, signals: StopSignals, session_step: int, session_seconds: float) -> str:
    if signals.received is not None:
        return f"signal {signal.Signals(signals.received).name}"
    if config.time_budget is not None and session_seconds >= config.time_budget * 60:
        return "time budget"
    if config.session_steps is not None and session_step >= config.session_steps:
        return "session steps"
    return "done"


_REASONS = ("done", "session steps", "time budget", "signal SIGTERM", "signal SIGINT")


def _agree_on_stop(reason: str, device: torch.device) -> str:
    """All processes stop at the same step: the strongest reason any of them has wins."""
    import torch.distributed as dist

    code = torch.tensor([_REASONS.index(reason) if reason in _REASONS else len(_REASONS) - 1], device=device)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return _REASONS[int(code.item())]


def _check_output(logits: torch.Tensor, output: int, input_size: int, arch: str) -> None:
    if logits.shape[-2:] != (output, output):
        raise TrainingConfigError(
            f"{arch} returned {tuple(logits.shape[-2:])} logits for a {input_size}-pixel input; its geometry "
            f"promises {output}x{output}"
        )


def _progress(config: TrainConfig, procs: Processes, start: int):
    if not (config.progress and procs.main):
        return None
    from tqdm import tqdm

    return tqdm(total=config.steps, initial=start, desc=Path(config.out).with_suffix("").name, unit="step",
                dynamic_ncols=True)


def _write(progress, say: Callable[[str], None], message: str) -> None:
    if progress is not None:
        progress.write(message)
    else:
        say(message)


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads > 1 else ''})"


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
