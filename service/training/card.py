"""The end of a run: the checkpoint as users will load it, measured through the engine, and its model card.

The checkpoint stores fp16 weights, so the card's metrics are measured on the weights rounded to fp16, not on
the fp32 ones trained: the network users get. They are measured twice, in fp32 and under bf16 autocast; the
card offers bf16 when the two masks agree on :data:`BF16_AGREEMENT_FOR_BF16` of the pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tileseg.models import checkpoint
from tileseg.models.base import SegmentationNet
from tileseg.models.registry import build_model
from tileseg.models.spec import ModelSpec
from tileseg.training.config import SAMPLING
from tileseg.training.decoding import choose_decoding
from tileseg.training.evaluation import BF16, Evaluation, evaluate
from tileseg.training.instance_scores import instance_metrics
from tileseg.training.recipe import Recipe
from tileseg.training.scores import agreement, summarize
from tileseg.training.state import Tally

BF16_AGREEMENT_FOR_BF16 = 0.995  # the card offers bf16 when its masks agree with fp32 on this share of pixels


@dataclass(frozen=True)
class FinishedRun:
    """What the card records of a run beside its recipe: how far and where it ran.

    Attributes:
        recipe: the data, network geometry, crop, loss weights and augmentations.
        tally: steps, wall seconds, sessions and the final smoothed loss.
        device: where it trained (and where the card's metrics are measured).
        processes: how many processes trained it (data-parallel).
    """

    recipe: Recipe
    tally: Tally
    device: torch.device
    processes: int


def write_checkpoint(net: nn.Module, run: FinishedRun) -> tuple[Path, dict[str, Any]]:
    """Evaluate the weights as they will be shipped and write the checkpoint and its card.

    Returns:
        ``(the .safetensors path, the card's metrics)``.

    Raises:
        RuntimeError: bf16 autocast failed on this device, so the card's bf16 agreement cannot be measured.
    """
    recipe = run.recipe
    spec = recipe.spec()
    shipped = shipped_network(net, recipe, spec, run.device)
    choice = None
    if spec.instances is not None and recipe.source.read_objects is not None:
        instances, choice = choose_decoding(shipped, recipe, spec.instances)
        spec = shipped.spec = dataclasses.replace(spec, instances=instances)
    fp32 = evaluate(shipped, recipe.data.val, tile=recipe.config.eval_tile)
    bf16 = evaluate(shipped, recipe.data.val, runtime=BF16, tile=recipe.config.eval_tile)
    if bf16.runtime != BF16:
        raise RuntimeError(
            f"bf16 autocast failed on {run.device} (the engine fell back to {bf16.runtime.label}): "
            "the card's bf16 agreement cannot be measured here"
        )
    metrics = card_metrics(recipe, spec, fp32, bf16, run, choice)
    precision = "bf16" if metrics["bf16_agreement"] >= BF16_AGREEMENT_FOR_BF16 else "fp32"
    source = recipe.source
    path = checkpoint.save(
        shipped,
        dataclasses.replace(spec, precision=precision),
        recipe.config.out,
        training=training_record(run),
        metrics=metrics,
        license=source.license,
        created=datetime.date.today().isoformat(),
        data=data_record(recipe),
    )
    return path, metrics


def shipped_network(net: nn.Module, recipe: Recipe, spec: ModelSpec, device: torch.device) -> SegmentationNet:
    """A copy of ``net`` with its weights rounded to fp16 and back, as the checkpoint will hold them, in eval
    mode on ``device`` with ``spec``."""
    config, data = recipe.config, recipe.data
    shipped = build_model(config.arch, in_channels=data.bands, num_classes=len(data.classes), **config.params)
    shipped.load_state_dict(
        {
            k: v.detach().to(torch.float16).to(v.dtype) if v.is_floating_point() else v
            for k, v in net.state_dict().items()
        }
    )
    shipped = shipped.to(device=device, memory_format=torch.channels_last).eval()
    shipped.spec = spec
    return shipped


def card_metrics(
    recipe: Recipe,
    spec: ModelSpec,
    fp32: Evaluation,
    bf16: Evaluation,
    run: FinishedRun,
    decoding_choice: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card's ``metrics``: the validation split, the fp32 metrics, the bf16 agreement, how they were
    measured, the final smoothed training loss and, for an instance model, its objects' scores and how its
    decoding was chosen (:mod:`.decoding`)."""
    metrics = {
        "split": f"{recipe.config.dataset} validation, {recipe.source.val_split}",
        **summarize(fp32.confusion, [c.name for c in recipe.classes]),
        "bf16_agreement": round(agreement(fp32.masks, bf16.masks), 6),
        "evaluation": fp32.describe(run.device),
    }
    if recipe.source.instances is not None and recipe.source.read_objects is not None:
        metrics["instances"] = instance_metrics(fp32.masks, spec, recipe.source)
        if decoding_choice is not None:
            metrics["instances"]["decoding_choice"] = decoding_choice
    if run.tally.loss_ema is not None:
        metrics["final_training_loss"] = round(run.tally.loss_ema, 6)
    return metrics


def training_record(run: FinishedRun) -> dict[str, Any]:
    """The card's ``training``: the recipe, the optimiser, the seed and what the run took."""
    recipe, config, tally = run.recipe, run.recipe.config, run.tally
    return {
        "data": config.dataset,
        "split": recipe.source.split,
        "steps": tally.step,
        "crop": recipe.output,
        "input_crop": recipe.input_size,
        "batch": config.batch,
        "processes": run.processes,
        "global_batch": config.batch * run.processes,
        "optimizer": "AdamW",
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "schedule": f"{config.schedule}, {recipe.warmup} warmup steps",
        "loss": "pixel-wise cross-entropy over labelled pixels"
        + (", mean over deep-supervision heads" if recipe.deep else ""),
        "class_weights": [round(float(v), 6) for v in recipe.class_weights]
        if recipe.class_weights is not None
        else None,
        "border_weight": {"w0": config.w0, "sigma": config.sigma} if config.border_weight else None,
        "deep_supervision": recipe.deep,
        "augmentations": recipe.augment.names(),
        "sampling": SAMPLING[config.sample_by],
        "initial_weights": initial_weights(config.init),
        "seed": config.seed,
        "seconds": round(tally.seconds, 1),
        "sessions": tally.sessions,
        "device": describe_device(run.device),
        "amp": str(dtype).replace("torch.", "") if (dtype := config.autocast_dtype(run.device)) else None,
        "torch": torch.__version__,
    }


def initial_weights(init: str | None) -> dict[str, Any] | None:
    """Where an ``--init`` run started: the weights file and, from the card beside it, its training steps and
    its whole training record (which names its own start in turn: a chain of fine-tunes reads back to the first
    run)."""
    if init is None:
        return None
    path = Path(init)
    record: dict[str, Any] = {"weights": path.name}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        training = json.loads(path.with_suffix(".json").read_text())["training"]
        record["steps"] = int(training["steps"])
        record["training"] = training
    return record


def data_record(recipe: Recipe) -> dict[str, Any]:
    """The card's ``data``: the data set, its source, the training image count and the validation images."""
    config, source, data = recipe.config, recipe.source, recipe.data
    record = {
        "dataset": config.dataset,
        "source": source.citation or config.dataset,
        "train_images": len(data.train),
        "val_images": [s.name for s in data.val],
        "bands": data.bands,
    }
    if source.pixel_size:
        record["pixel_size"] = source.pixel_size
    if config.dataset == "dubai":
        record["ignored_label"] = "mask value 0 (unlabeled): not learnt, not scored, never predicted"
    return record


def describe_device(device: torch.device) -> str:
    """The device as the card names it: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads > 1 else ''})"
