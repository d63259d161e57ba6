"""``tileseg train``: train a registered architecture on a data set and write a checkpoint with its card.

A thin layer over :func:`tileseg.training.train`: it parses options, builds the config (completing it from
the saved run with ``--resume``), and turns the product's errors into messages without tracebacks.

Run it standalone with ``python -m tileseg.cli.train ...``, and data-parallel with
``torchrun --nproc_per_node N -m tileseg.cli.train ...``.

Exit status: 0 when the run finished, or stopped cleanly at ``--time-budget`` / ``--session-steps`` (run
again with ``--resume``); 128 + the signal number when SIGINT or SIGTERM stopped it (its state is saved).
"""

from __future__ import annotations

import click

from tileseg.cli.options import parse_params
from tileseg.engine.errors import OptionsError
from tileseg.training.sources import ADAPTERS


def _params(ctx: click.Context, option: click.Parameter, values: tuple[str, ...]) -> dict | None:
    if not values:
        return None
    try:
        return parse_params(values)
    except OptionsError as err:
        raise click.BadParameter(str(err)) from None


@click.command("train")
@click.option("--arch", help="Architecture from the registry (unet, unetpp, fcn8s, setr-pup, ...).")
@click.option(
    "--param",
    "params",
    multiple=True,
    callback=_params,
    metavar="KEY=VALUE",
    help="Architecture hyper-parameter, repeatable (e.g. --param base=64 --param depth=4).",
)
@click.option("--data", type=click.Path(file_okay=False), help="The data set's folder (e.g. ../shared/data/isbi2012).")
@click.option("--dataset", type=click.Choice(tuple(ADAPTERS)), help="Layout of --data.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Checkpoint to write, e.g. weights/unet-em (gives .safetensors and .json; state in OUT.train/).",
)
@click.option(
    "--crop",
    type=click.IntRange(1),
    help="Output crop side in pixels (the input is larger by 2*shrink); "
    "rounded to the nearest size the network takes.  [default: 128]",
)
@click.option("--batch", type=click.IntRange(1), help="Crops per step and process.  [default: 4]")
@click.option("--steps", type=click.IntRange(1), help="Total optimisation steps of the run.  [default: 1000]")
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="Peak AdamW learning rate.  [default: 1e-3]")
@click.option(
    "--weight-decay", type=click.FloatRange(0), help="AdamW weight decay (not on biases and norms).  [default: 1e-4]"
)
@click.option("--warmup", type=click.IntRange(0), help="Linear warmup steps.  [default: 5% of --steps, at most 200]")
@click.option("--schedule", type=click.Choice(("cosine", "constant")), help="After warmup.  [default: cosine]")
@click.option("--seed", type=int, help="Seed of the weights and of every crop.  [default: 0]")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), help="[default: auto]")
@click.option("--amp/--no-amp", default=None, help="Mixed precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA.")
@click.option(
    "--amp-dtype", type=click.Choice(("auto", "bf16", "fp16")), help="Autocast dtype with --amp.  [default: auto]"
)
@click.option("--channels-last/--no-channels-last", default=None, help="Memory format.  [default: channels-last]")
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads (per process).")
@click.option(
    "--checkpoint-every", type=click.IntRange(1), help="Save the resumable state every N steps.  [default: 200]"
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run saved in OUT.train/ (settings not given are the saved ones); "
    "starts afresh if there is none.",
)
@click.option(
    "--time-budget",
    type=click.FloatRange(0, min_open=True),
    metavar="MINUTES",
    help="Stop cleanly (saving) after this much wall time in this session.",
)
@click.option(
    "--session-steps", type=click.IntRange(1), help="Stop cleanly (saving) after this many steps in this session."
)
@click.option(
    "--class-weights",
    metavar="none|auto|W1,W2,...",
    help="Loss weight per class; auto = median frequency balancing.  [default: none]",
)
@click.option(
    "--border-weight/--no-border-weight",
    default=None,
    help="U-Net's weight map separating touching objects (ISBI cells).  [default: off]",
)
@click.option("--w0", type=click.FloatRange(0), help="Border weight amplitude.  [default: 10]")
@click.option("--sigma", type=click.FloatRange(0, min_open=True), help="Border weight width, pixels.  [default: 5]")
@click.option("--flips/--no-flips", default=None, help="Random flips and 90-degree rotations.  [default: on]")
@click.option("--elastic/--no-elastic", default=None, help="Elastic deformation (U-Net paper).  [default: off]")
@click.option(
    "--colour/--no-colour",
    default=None,
    help="Random intensity and colour: inversion, grey, band order, gamma, gain, offset.  [default: off]",
)
@click.option(
    "--sample-by",
    type=click.Choice(["area", "image"]),
    help="Draw each crop's image in proportion to its area (every pixel equally likely), or every image "
    "equally (as per-image scores weigh them: small images and rarer kinds drawn more).  [default: area]",
)
@click.option(
    "--init",
    type=click.Path(exists=True, dir_okay=False),
    help="Start from these weights (.safetensors of the same architecture and --param settings), not random ones.",
)
@click.option(
    "--deep-supervision/--no-deep-supervision",
    default=None,
    help="Train every deep-supervision head (U-Net++).  [default: on when the model has them]",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="--dataset folder: share of pairs (last by name) that validate.  [default: 0.2]",
)
@click.option("--class-names", help="--dataset folder: comma-separated names of the mask values, in increasing order.")
@click.option("--data-license", help="--dataset folder: the data's licence, for the card.")
@click.option("--default-tile", type=click.IntRange(1), help="The card's default tile (else the architecture's).")
@click.option(
    "--eval-tile",
    type=click.IntRange(1),
    help="Core side of validation's tiling, as `tileseg segment --tile` takes it (rounded up to the "
    "network's stride).  [default: segment's own: the card's default tile, evened out over each image]",
)
@click.option(
    "--val-every", type=click.IntRange(0), help="Also report validation metrics every N steps.  [default: 0, off]"
)
@click.option("--progress/--no-progress", default=None, help="Progress bar.  [default: on]")
def train(out: str, resume: bool, class_names: str | None, **options) -> None:
    """Train a segmentation network and write OUT.safetensors with its model card OUT.json.

    \b
    Example (valid U-Net on ISBI 2012):
      tileseg train --arch unet --param base=32 --data ../shared/data/isbi2012 \\
        --dataset isbi2012 --out weights/unet-em --crop 196 --batch 4 \\
        --steps 2000 --amp --elastic --time-budget 45 --resume
    """
    from tileseg.errors import TilesegError
    from tileseg.training.config import make_config
    from tileseg.training.loop import train as run_training

    if class_names is not None:
        options["class_names"] = [n.strip() for n in class_names.split(",")]
    try:
        config = make_config(out, resume=resume, **options)
        result = run_training(config, log=lambda message: click.echo(message, err=True))
    except TilesegError as err:
        raise click.ClickException(str(err)) from None
    if result.signal is not None:
        raise SystemExit(128 + int(result.signal))


if __name__ == "__main__":
    train()
