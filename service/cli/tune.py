"""``tileseg tune``: measure this machine for a model ahead of time, so that its first run is as quick as later ones."""

from __future__ import annotations

import time

import click

from tileseg.cli.errors import user_errors


@click.command("tune")
@click.argument("names", nargs=-1, metavar="MODEL...")
@click.option("--all", "every", is_flag=True, help="Every installed model.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option(
    "--size",
    type=click.IntRange(256, 200_000),
    default=8192,
    show_default=True,
    help="The side of the square image the window is chosen for (a run of another size may search its window "
    "again; the numeric path is kept whatever the size).",
)
@click.option(
    "--again",
    is_flag=True,
    help="Measure the window and the batch anew (the numeric path, and so the values, are kept): for a search "
    "made while other work shared the machine.",
)
@user_errors
def tune(names: tuple[str, ...], every: bool, device: str, size: int, again: bool) -> None:
    """Choose and cache the numeric path (runtime x precision), the window and the batch of each MODEL on this
    machine, as a first `tileseg segment` would (the Docker image can run it at build time: see its
    TUNE argument). Runs that follow read the choice from the cache."""
    from tileseg import models
    from tileseg.engine import SegmentOptions
    from tileseg.engine.runtime.device import configure_threads, pick_device
    from tileseg.engine.runtime.tuner import choose_runtime, known_choice, tuner

    chosen = list(models.available()) if every else list(names)
    if not chosen:
        raise click.UsageError("name at least one MODEL, or give --all")
    configure_threads()
    for name in chosen:
        model = models.load(name, device=pick_device(device))
        options = SegmentOptions()
        if again:
            tuner().forget_windows(model, next(model.parameters()).device)
        cached = known_choice(model, options) is not None
        started, measured, searching, calls = time.perf_counter(), 0, True, 0
        while searching:  # each call within the bound, as runs would: here until the window's search is done
            choice = choose_runtime(model, next(model.parameters()).device, options, size * size, size)
            calls += 1  # the first call's window search may measure nothing: the path's search took its bound
            measured, searching = measured + choice.measured, choice.searching and (choice.measured > 0 or calls == 1)
        seconds = time.perf_counter() - started
        summary = choice.summary()
        how = "already measured" if cached and not measured else f"measured in {seconds:.1f} s"
        click.echo(
            f"{name}: {summary['numeric_path']}, tile {summary['tile']} (window {summary['window']}), "
            f"batch {summary['batch']}, {summary['mpx_per_s']} Mpx/s ({how})"
        )


__all__ = ["tune"]
