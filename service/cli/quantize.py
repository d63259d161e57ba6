"""``tileseg models quantize``: make a model's int8 program, measure it against fp32, and record in its card
whether int8 is allowed."""

from __future__ import annotations

from pathlib import Path

import click


def register(group: click.Group, user_errors) -> None:
    """Add ``quantize`` to the ``models`` group; ``user_errors`` prints the product's errors."""

    @group.command("quantize")
    @click.argument("name")
    @click.option(
        "--data",
        type=click.Path(file_okay=False, path_type=Path),
        help="The folder of the data set it was trained on (default: the card's data set under "
        "$TILESEG_SHARED_DATA, else ../shared/data).",
    )
    @click.option("--crops", type=click.IntRange(1, 1024), default=32, show_default=True, help="Calibration crops.")
    @user_errors
    def quantize(name: str, data: Path | None, crops: int) -> None:
        """Calibrate NAME's int8 program (post-training static quantization) on fixed crops of its training
        images, measure how often its masks agree with fp32's on the validation split, and record it in the
        card: int8 is allowed where it agrees at least as well as bf16 does."""
        from tileseg.engine.runtime.device import configure_threads
        from tileseg.training.quantize import quantize_model

        configure_threads()
        record = quantize_model(name, data, crops, say=lambda line: click.echo(line, err=True))
        runtimes = ", ".join(f"{mode} {value:.6f}" for mode, value in record["by_runtime"].items())
        verdict = "allowed" if record["allowed"] else "not allowed"
        click.echo(
            f"{name}: int8 agrees with fp32 on {record['agreement']:.6f} of validation pixels ({runtimes}); "
            f"bf16 on {record['bar']:.6f}: int8 {verdict}"
        )


__all__ = ["register"]
