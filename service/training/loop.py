"""The training loop: ``train(TrainConfig(...))`` trains a registered architecture on a data set and writes a
checkpoint with its model card.

One optimisation step draws ``batch`` random crops (per process), runs the network (its deep-supervision
heads for U-Net++), takes the pixel-wise cross-entropy over labelled pixels, optionally weighted by class
(median frequency balancing) and by U-Net's border weights, and steps AdamW on a cosine schedule with warmup.

Runs are repeatable and resumable. The randomness of step ``t`` on process ``r`` comes from a generator
seeded with ``(seed, r, t)`` (:mod:`.sampler`), so a run that stops and resumes draws the very crops it would
have drawn without stopping. The resumable state (``OUT.train/``, :mod:`.state`) holds the fp32 weights and
the optimizer's tensors in safetensors files and everything else in ``state.json``; nothing is pickled.

Under ``torchrun`` (RANK and WORLD_SIZE in the environment) the same code trains data-parallel
(:mod:`.distributed`), process 0 alone writing files. The pieces: :mod:`.recipe` settles what is trained,
:class:`Trainer` runs the steps of one session, :mod:`.card` measures the result through the engine and
writes the checkpoint with its card.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tileseg.models.base import SegmentationNet
from tileseg.training.card import FinishedRun, write_checkpoint
from tileseg.training.config import TrainConfig
from tileseg.training.distributed import (
    Processes,
    barrier,
    data_parallel,
    process_group,
    resolve_device,
    share_threads,
    sync_batchnorm,
)
from tileseg.training.errors import TrainingConfigError
from tileseg.training.evaluation import evaluate
from tileseg.training.loss import segmentation_loss
from tileseg.training.network import Heads, check_output
from tileseg.training.optimizer import lr_factor, make_optimizer
from tileseg.training.recipe import Recipe, prepare
from tileseg.training.sampler import Sampler, pixel_weights, step_seed
from tileseg.training.scores import summarize
from tileseg.training.state import Tally, load_initial_weights, restore, save_state, state_dir
from tileseg.training.stopping import StopSignals, agree_on_stop, stop_reason

Say = Callable[[str], None]


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


def train(config: TrainConfig, log: Say | None = None) -> TrainResult:
    """Train ``config.arch`` on ``config.dataset`` and write ``config.out`` (``.safetensors`` + card).

    The run saves its state to ``OUT.train/`` every ``checkpoint_every`` steps and whenever it stops early
    (time budget, session steps, SIGINT/SIGTERM); with ``resume`` it continues from there. When all
    ``steps`` are done, process 0 evaluates the validation split through the engine's tiler (fp32, and bf16
    autocast to measure their agreement) and writes the checkpoint and its card.

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
    with process_group(procs, device):
        threads = torch.get_num_threads()
        try:
            return _train(config, procs, device, say)
        finally:
            torch.set_num_threads(threads)  # a caller's own work (other tests, a notebook) keeps its threads


def _train(config: TrainConfig, procs: Processes, device: torch.device, say: Say) -> TrainResult:
    """One session of the run, on this process."""
    session_start = time.monotonic()
    share_threads(config.threads, procs, device)
    autocast = config.autocast_dtype(device)
    if config.amp and autocast is None:
        say("--amp: this CPU has no bf16 in hardware (no AVX-512-bf16 or AMX), where bf16 autocast trains an order of "
            "magnitude slower: training in fp32 (--amp-dtype bf16 forces it)")  # fmt: skip
    recipe, net = prepare(config, say)
    trainer = Trainer(recipe, net, procs, device, autocast, say)
    progress = _progress(config, procs, trainer.start)
    reason, signum = trainer.run(progress, session_start)
    if progress is not None:
        progress.close()
    tally = trainer.tally
    tally.seconds += time.monotonic() - session_start
    finished = tally.step >= config.steps
    if procs.main and (tally.step > trainer.start or not finished):
        trainer.save(tally.seconds)
    if not finished:
        say(
            f"stopped at step {tally.step} of {config.steps} ({reason}); the state is in {trainer.directory}: "
            "run again with --resume to continue"
        )
        return TrainResult(tally.step, config.steps, False, reason, signal=signum)
    barrier(procs)
    if not procs.main:
        return TrainResult(tally.step, config.steps, True, "done")
    say(f"evaluating on the validation split ({len(recipe.data.val)} images, through the engine's tiler)")
    path, metrics = write_checkpoint(trainer.net, FinishedRun(recipe, tally, device, procs.world))
    say(
        f"validation: pixel error {metrics['pixel_error']:.4f} (majority baseline "
        f"{metrics['majority_baseline_pixel_error']:.4f}), mIoU {metrics['miou']:.4f}, "
        f"bf16 agreement {metrics['bf16_agreement']:.4f}; wrote {path}"
    )
    return TrainResult(tally.step, config.steps, True, "done", path, metrics)


class Trainer:
    """One session of a run on this process: the network on its device, its optimizer, and the steps.

    Setting up restores a saved state (``config.resume``) into the net and optimizer, so that
    :attr:`tally` starts where the run had come to.

    Raises:
        TrainingConfigError: border weights asked of a data set without objects, or a saved run without
            ``--resume``, or an unreadable state.
    """

    def __init__(
        self,
        recipe: Recipe,
        net: SegmentationNet,
        procs: Processes,
        device: torch.device,
        autocast: torch.dtype | None,
        say: Say,
    ) -> None:
        config = recipe.config
        self.recipe, self.procs, self.device, self.autocast, self.say = recipe, procs, device, autocast, say
        weights = (
            pixel_weights(recipe.data, recipe.source, config.w0, config.sigma, say) if config.border_weight else None
        )
        self.sampler = Sampler(
            recipe.data,
            recipe.output,
            recipe.geometry.shrink,
            recipe.augment,
            config.seed,
            procs.rank,
            weights,
            by=config.sample_by,
        )
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.net = net.to(device=device, memory_format=self.memory_format)
        self.optimizer = make_optimizer(self.net, config.lr, config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if autocast == torch.float16 else None
        self.directory = state_dir(config.out)
        self.tally = self._restore()
        self.start = self.tally.step
        self.net = sync_batchnorm(self.net, procs, device)
        self.model: nn.Module = data_parallel(Heads(self.net, recipe.deep), procs, device)
        self.class_weights = (
            torch.tensor(recipe.class_weights, dtype=torch.float32, device=device)
            if recipe.class_weights is not None
            else None
        )

    def _restore(self) -> Tally:
        config = self.recipe.config
        tally = restore(self.directory, config.resume, self.net, self.optimizer, self.scaler)
        if tally is None:
            tally = Tally()
            if config.init is not None:
                load_initial_weights(self.net, Path(config.init))
                self.say(f"starting from the weights in {config.init}")
        else:
            self.say(f"resuming from step {tally.step} of {config.steps} ({tally.seconds / 60:.1f} min trained so far)")
        tally.sessions += 1
        return tally

    def run(self, progress, session_start: float) -> tuple[str, int | None]:
        """Take steps until the run is done or this session must stop; returns the reason (``"done"`` when
        every step is taken) and the signal that stopped it, if one did."""
        config = self.recipe.config
        reason = "done"
        self.model.train()
        with StopSignals() as signals:
            self.say(f"training steps {self.tally.step}..{config.steps}; SIGINT or SIGTERM saves the state and stops")
            while self.tally.step < config.steps:
                reason = stop_reason(
                    signals,
                    config.time_budget,
                    config.session_steps,
                    self.tally.step - self.start,
                    time.monotonic() - session_start,
                )
                if self.procs.distributed:
                    reason = agree_on_stop(reason, self.device)
                if reason != "done":
                    break
                lr = self.step()
                self._after_step(progress, lr, session_start)
        return reason, signals.received

    def step(self) -> float:
        """One optimisation step; returns its learning rate."""
        config, step = self.recipe.config, self.tally.step
        lr = config.lr * lr_factor(step, config.steps, self.recipe.warmup, config.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # dropout and anything else drawing from torch: reseeded per step and process, like the crops
        torch.manual_seed(step_seed(config.seed, self.procs.rank, step))
        heads, labels, weights = self._forward(step)
        loss = segmentation_loss(heads, labels, self.class_weights, weights)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.tally.step += 1
        value = float(loss.detach())
        self.tally.loss_ema = value if self.tally.loss_ema is None else 0.95 * self.tally.loss_ema + 0.05 * value
        return lr

    def _forward(self, step: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """The heads' logits on this step's batch, with its labels and pixel weights, on the device."""
        recipe = self.recipe
        x, y, w = self.sampler.batch(step, recipe.config.batch)
        x = x.to(self.device, memory_format=self.memory_format, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        w = w.to(self.device, non_blocking=True) if w is not None else None
        with (
            torch.autocast(self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        ):
            try:
                heads = self.model(x)
            except ValueError as err:  # the net refuses the crop size; say which crop would do
                raise TrainingConfigError(
                    f"{recipe.config.arch} refuses a {recipe.input_size}-pixel crop: {err}. Choose a larger --crop"
                ) from err
        if step == self.start:
            check_output(heads[-1], recipe.output, recipe.input_size, recipe.config.arch)
        return heads, y, w

    def _after_step(self, progress, lr: float, session_start: float) -> None:
        """Report the step, and save the state or validate when their turn has come."""
        config, step = self.recipe.config, self.tally.step
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{self.tally.loss_ema:.4f}", lr=f"{lr:.2e}", refresh=False)
        if self.procs.main and step % config.checkpoint_every == 0 and step < config.steps:
            self.save(self.tally.seconds + time.monotonic() - session_start)
        if self.procs.main and config.val_every and step % config.val_every == 0 and step < config.steps:
            found = self.validate()
            _write(
                progress,
                self.say,
                f"step {step}: validation pixel error {found['pixel_error']:.4f}, mIoU {found['miou']:.4f}",
            )

    def validate(self) -> dict[str, Any]:
        """The validation metrics of the weights as they are (fp32, through the engine's tiler)."""
        recipe = self.recipe
        found = evaluate(self.net, recipe.data.val, spec=recipe.spec(), tile=recipe.config.eval_tile)
        return summarize(found.confusion, [c.name for c in recipe.classes])

    def save(self, seconds: float) -> None:
        """Save the resumable state at the current step, with ``seconds`` of training so far."""
        recipe = self.recipe
        mean, std = recipe.data.band_stats()
        extra = {
            "seconds": seconds,
            "sessions": self.tally.sessions,
            "config": recipe.config.to_json(),
            "crop": recipe.output,
            "world_size": self.procs.world,
            "mean": list(mean),
            "std": list(std),
            "loss_ema": self.tally.loss_ema,
        }
        save_state(self.directory, self.tally.step, self.net, self.optimizer, self.scaler, extra)


def _progress(config: TrainConfig, procs: Processes, start: int):
    if not (config.progress and procs.main):
        return None
    from tqdm import tqdm

    return tqdm(
        total=config.steps, initial=start, desc=Path(config.out).with_suffix("").name, unit="step", dynamic_ncols=True
    )


def _write(progress, say: Say, message: str) -> None:
    if progress is not None:
        progress.write(message)
    else:
        say(message)
