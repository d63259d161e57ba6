"""A training run's settings, and how a resumed session completes them from the run it continues.

A run is defined by its architecture, data, crop, optimiser and seed; a *session* is one process lifetime of
it, which may change only how it is run (steps, device, threads, time budget, ...): :data:`SESSION_FIELDS`.
``make_config(out, resume=True, ...)`` fills the settings not given from the saved run and refuses a given
one that would make it another run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from tileseg.engine.runtime.device import native_bf16
from tileseg.training.errors import TrainingConfigError
from tileseg.training.state import saved_config, state_dir

# Settings that may change from one session of a run to the next; every other setting defines the run.
SESSION_FIELDS = frozenset(
    {
        "data",
        "steps",
        "device",
        "threads",
        "checkpoint_every",
        "time_budget",
        "session_steps",
        "eval_tile",
        "val_every",
        "progress",
        "default_tile",
        "resume",
    }
)


# how the image of each training crop is drawn (``--sample-by``), as the card says it
SAMPLING = {
    "area": "images drawn in proportion to their area (every labelled pixel equally likely)",
    "image": "every image equally likely (as per-image scores weigh them)",
}


@dataclass
class TrainConfig:
    """Everything a training run needs. ``crop`` is the *output* crop side; see :func:`~.loop.train`."""

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
    colour: bool = False
    sample_by: str = "area"  # area: images drawn in proportion to their area; image: every image equally
    init: str | None = None  # weights (.safetensors) of the same network to start from, not a random one
    deep_supervision: bool | None = None  # None: on when the model has forward_deep
    val_fraction: float = 0.2
    class_names: list[str] | None = None
    data_license: str | None = None
    default_tile: int | None = None
    eval_tile: int | None = None  # the core of validation's tiling (segment's --tile); None: the served default
    val_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {
            "crop": self.crop,
            "batch": self.batch,
            "steps": self.steps,
            "checkpoint_every": self.checkpoint_every,
            "eval_tile": self.eval_tile,
        }
        for name, value in positive.items():
            if value is not None and value < 1:
                raise TrainingConfigError(f"{name} must be at least 1, got {value}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise TrainingConfigError("need lr > 0 and weight_decay >= 0")
        if self.sample_by not in SAMPLING:
            raise TrainingConfigError(f"sample_by must be one of {', '.join(SAMPLING)}, not {self.sample_by!r}")
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

    def warmup_steps(self) -> int:
        """The warmup length actually used."""
        return min(self.warmup if self.warmup is not None else min(200, self.steps // 20), self.steps - 1)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype of training on ``device``, or None without AMP.

        ``amp_dtype`` auto on a CPU without bf16 in hardware (no AVX-512-bf16, no AMX) is None: autocast gains
        nothing there, and where bf16 is emulated it trains a U-Net an order of magnitude slower than fp32
        (measured on a 2-core AVX2 AMD EPYC: about 24 s a step against 1.8 s). ``bf16`` asked for by name is the
        user's call, and kept.

        Raises:
            TrainingConfigError: fp16 asked for on the CPU.
        """
        if not self.amp:
            return None
        kind = self.amp_dtype if self.amp_dtype != "auto" else ("fp16" if device.type == "cuda" else "bf16")
        if kind == "fp16" and device.type != "cuda":
            raise TrainingConfigError("fp16 autocast needs CUDA; on the CPU use --amp-dtype bf16")
        if self.amp_dtype == "auto" and device.type == "cpu" and not native_bf16(device):
            return None
        return torch.float16 if kind == "fp16" else torch.bfloat16

    def to_json(self) -> dict[str, Any]:
        """The settings as ``state.json`` saves them."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Settings as saved; keys this version does not know are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    directory = state_dir(out)
    saved = saved_config(directory) if resume else None
    if saved is not None:
        clashes = [
            f"{k}={given[k]!r} (the run has {saved.get(k)!r})"
            for k in sorted(given)
            if k not in SESSION_FIELDS and _normal(given[k]) != _normal(saved.get(k))
        ]
        if clashes:
            raise TrainingConfigError(
                f"--resume continues the run saved in {directory}, which differs in: {'; '.join(clashes)}. "
                "Leave those settings out (or equal), or train into another --out"
            )
        return TrainConfig.from_json({**saved, **given, "out": str(out), "resume": True})
    missing = [k for k in ("arch", "data", "dataset") if k not in given]
    if missing:
        hint = f" (no saved run in {directory} to resume)" if resume else ""
        raise TrainingConfigError(f"missing {', '.join('--' + k for k in missing)}{hint}")
    return TrainConfig(out=str(out), resume=resume, **given)


def _normal(value: Any) -> Any:
    # JSON turns tuples into lists; compare settings the way they are saved
    return json.loads(json.dumps(value))
