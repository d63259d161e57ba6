"""The ``tileseg`` command: a thin layer over the engine, the model zoo and the service.

    tileseg segment INPUT OUTPUT --model NAME [options] [--server URL [--api-key KEY]]
    tileseg segment INPUT... --out-dir DIR --model NAME [options]   (many inputs, a manifest, resumable)
    tileseg models [--json] [--server URL [--api-key KEY]]
    tileseg models add NAME FILE [options]     (TorchScript, ONNX or a state dict; geometry measured)
    tileseg models check NAME
    tileseg train --arch ARCH --data DIR --out weights/NAME [options]
    tileseg serve [--host 127.0.0.1] [--port 8000]
    tileseg worker

Errors the user can fix are printed as one line, with a non-zero exit and no traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import click
from tqdm import tqdm

from tileseg import models
from tileseg.cli.cohort import cohort_options, segment_many, wants_many
from tileseg.cli.errors import user_errors
from tileseg.cli.objects import ObjectPaths, object_options, object_paths, report_objects
from tileseg.cli.options import build, click_options
from tileseg.cli.outputs import Outputs, names_zarr, staged
from tileseg.cli.own_models import register as register_model_commands
from tileseg.cli.remote import segment_remote, server_options
from tileseg.cli.serving import serve, worker
from tileseg.cli.train import train
from tileseg.cli.tune import tune
from tileseg.client import Client
from tileseg.engine.options import SegmentOptions

server_option = click.option(
    "--server",
    envvar="TILESEG_SERVER",
    metavar="URL",
    help="Run on this tileseg server instead of here (env TILESEG_SERVER), e.g. http://127.0.0.1:8000.",
)
api_key_option = click.option(
    "--api-key", envvar="TILESEG_API_KEY", metavar="KEY", help="The server's API key (env TILESEG_API_KEY)."
)


def connect(server: str, api_key: str | None) -> Client:
    """A client of ``server``.

    Raises:
        click.BadParameter: not an http(s) URL.
    """
    try:
        return Client(server, api_key=api_key)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--server") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tileseg", message="tileseg %(version)s")
def cli() -> None:
    """Segment arbitrarily large images, tile by tile, into seamless mask GeoTIFFs."""


@cli.command()
@click.argument("paths", metavar="INPUT... [OUTPUT]", nargs=-1)
@click.option("--model", "model_name", help="An installed model (see `tileseg models`).")
@click.option("--weights", "weights_path", type=click.Path(path_type=Path), help="A checkpoint NAME.safetensors.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option(
    "--probabilities",
    help="Also write per-class probabilities here (a path or an s3:// URL); with --out-dir, a format: tif or zarr.",
)
@click.option(
    "--vectors",
    help="Also write every region of every object class as a polygon here (.gpkg, .geojson, .fgb; .parquet "
    "where this GDAL writes GeoParquet; a path or an s3:// URL); with --out-dir, a format: gpkg, geojson, fgb "
    "or parquet.",
)
@object_options
@click_options(SegmentOptions)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="Run the image in this many local processes (bands of tile rows), each with its share of the cores; "
    "the outputs equal one process's. With --out-dir: this many processes, each taking whole inputs.",
)
@click.option(
    "--devices",
    metavar="LIST",
    help="One process per device, e.g. cuda:0,cuda:1 (the same sharded run as --workers, one shard a device).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@cohort_options
@server_option
@api_key_option
@click.pass_context
@user_errors
def segment(
    ctx: click.Context,
    paths: tuple[str, ...],
    model_name: str | None,
    weights_path: Path | None,
    device: str,
    probabilities: str | None,
    vectors: str | None,
    workers: int,
    devices: str | None,
    quiet: bool,
    server: str | None,
    api_key: str | None,
    **values,
) -> None:
    """Segment INPUT into the mask GeoTIFF OUTPUT; or every INPUT into a folder of its own under --out-dir.

    INPUT is any raster GDAL reads, a local path or an s3:// or http(s):// URL (read by range requests), or
    a STAC item (a .json path or URL): --asset picks an asset (default visual), --bands red,green,blue stacks
    single-band assets by common name. OUTPUT, --probabilities and --vectors may be s3:// URLs: written here,
    then uploaded once the run succeeded.

    With --server, the server runs it: INPUT is uploaded, or, when it is a URL or no file here, sent for the
    server to read itself (a path under its TILESEG_INPUT_ROOTS); the results are written here as a local
    run writes them. Ctrl-C cancels the job on the server.

    With --out-dir DIR, each INPUT is a file, a folder (--recursive), a glob, @list.txt (a path or URL a line),
    an s3:// prefix, or a STAC ItemCollection or catalog; --stac-search API_URL adds the items a STAC API finds
    (--collections, --bbox, --datetime, --query). Each input's outputs go to DIR/NAME/ and each attempt to
    DIR/manifest.jsonl; the same command again skips what is done. Exit status 1 if any input failed.
    """
    if bool(model_name) == bool(weights_path):
        raise click.UsageError("give exactly one of --model NAME or --weights PATH")
    shard_devices = _shard_devices(workers, devices, device)
    wanted = object_paths(values)  # --instances, --objects: one image only
    if wants_many(values):
        if server:
            raise click.UsageError("--out-dir runs here: leave --server out (a server takes batches of its own)")
        name = str(model_name or weights_path)
        segment_many(paths, name, device, probabilities, vectors, shard_devices, quiet, values, wanted.keywords())
        return
    if len(paths) != 2:
        raise click.UsageError("give INPUT OUTPUT for one image, or INPUT... --out-dir DIR for many")
    input_path, output_path = paths
    options = build(SegmentOptions, values)  # checked here, before any upload
    if server and shard_devices:
        raise click.UsageError("--workers and --devices run here: leave them out with --server")
    if server and any(names_zarr(p) for p in (output_path, probabilities)):
        raise click.UsageError("a server writes GeoTIFF results: give OUTPUT as .tif with --server, or run here")
    with staged(output_path, probabilities, vectors) as out:
        if server:
            with connect(server, api_key) as client:
                sent = server_options(ctx, values)
                segment_remote(
                    client, input_path, out.mask, str(model_name), sent, out.vectors, out.probabilities, quiet, wanted
                )
            return
        name = str(model_name or weights_path)
        from tileseg.engine.io.fetch import readable

        with readable(input_path) as local:  # a server without Range: a temporary copy, fetched whole
            result = _segment_here(name, local, out, options, device, shard_devices, quiet, wanted)
    _summary(output_path, result, quiet)
    report_objects(result.objects, quiet)


def _segment_here(
    name: str, input_path: str, out: Outputs, options, device: str, shard_devices, quiet: bool, wanted: ObjectPaths
):
    """Run the segmentation in this process (or in shards, one process per device), with a progress bar."""
    from tileseg.engine import run_file
    from tileseg.engine.io.inputs import locate
    from tileseg.engine.runtime.device import configure_threads
    from tileseg.engine.zarr.sink import check_zarr_paths

    if out.vectors is not None:
        from tileseg.engine.vectors.sink import check_vector_path

        check_vector_path(out.vectors)  # before any work
    if names_zarr(out.mask) or names_zarr(out.probabilities):
        check_zarr_paths(out.mask, out.probabilities, options.cog, input_path)  # before any work
    configure_threads()
    # a local path, an s3:// or http(s):// URL read by ranges, or a STAC item (its JSON read now)
    source = locate(input_path, options.asset, options.bands)
    with tqdm(total=0, unit="tile", disable=quiet, desc=source.name) as bar, _tuner_notes(bar, source.name):

        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.set_description_str(source.name)  # measuring is over
            bar.total = total
            bar.update(done - bar.n)

        if shard_devices:
            from tileseg.engine.shards.plan import run_file_sharded

            # each shard opens the input by its text (a STAC item again, with the same asset or band names)
            outputs = (out.mask, shard_devices, options, out.probabilities, progress, out.vectors)
            return run_file_sharded(name, input_path, *outputs, **wanted.keywords())
        return run_file(
            name, source, out.mask, options, device, out.probabilities, progress, out.vectors, **wanted.keywords()
        )


@contextlib.contextmanager
def _tuner_notes(bar: tqdm, name: str):
    """While the tuner measures this machine (a first run of a model here), the bar says so and for how long."""

    class Notes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            bar.set_description_str(f"{name}: {record.getMessage()}")
            bar.refresh()

    handler, tuner_log = Notes(logging.INFO), logging.getLogger("tileseg.engine.runtime.tuner")
    level = tuner_log.level
    tuner_log.addHandler(handler)
    tuner_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        tuner_log.removeHandler(handler)
        tuner_log.setLevel(level)


def _summary(output_path: str, result, quiet: bool) -> None:
    for note in result.warnings:
        click.echo(f"warning: {note}", err=True)
    if quiet:
        return
    info = result.input
    click.echo(
        f"{output_path}: {info.width}x{info.height}, {result.tiles_total} tiles "
        f"({result.tiles_skipped} nodata), {result.seconds:.1f} s, "
        f"{info.width * info.height / result.seconds / 1e6:.2f} Mpx/s, "
        f"{result.runtime.runtime} on {result.runtime.device}, tile {result.runtime.tile} "
        f"(window {result.runtime.window}) x{result.runtime.batch}",
        err=True,
    )
    click.echo(f"pixel size: {result.pixel_size.why}", err=True)
    if result.roi:
        roi = result.roi
        click.echo(
            f"roi {roi.source}: {roi.area_share:.0%} of the image, {roi.tiles_skipped} tiles "
            f"({roi.skipped_share:.0%}) skipped, about {roi.seconds_saved_estimate:.1f} s saved",
            err=True,
        )


def _shard_devices(workers: int, devices: str | None, device: str) -> list[str] | None:
    """The devices of a sharded run, one per process: ``--devices``, else ``--workers`` times ``--device``;
    None for a run in this process.

    Raises:
        click.UsageError: --workers and --devices that disagree.
    """
    if devices is None:
        return [device] * workers if workers > 1 else None
    names = [d.strip() for d in devices.split(",") if d.strip()]
    if not names:
        raise click.UsageError("--devices: give a comma-separated list, e.g. cuda:0,cuda:1")
    if workers not in (1, len(names)):
        raise click.UsageError(f"--workers {workers} disagrees with the {len(names)} --devices: give one of them")
    return names


@cli.group("models", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the model cards as JSON.")
@server_option
@api_key_option
@click.pass_context
@user_errors
def list_models(ctx: click.Context, as_json: bool, server: str | None, api_key: str | None) -> None:
    """List the installed models, or with --server a server's (and measure them: `tileseg models bench NAME`)."""
    if ctx.invoked_subcommand is not None:
        return
    if server:
        with connect(server, api_key) as client:
            entries = client.models()
    else:
        entries = [models.describe(name) for name in models.available()]
    if as_json:
        click.echo(json.dumps({"models": entries}, indent=2))
        return
    if not entries:
        click.echo(f"no models served by {server}" if server else f"no models installed in {models.weights_dir()}")
        return
    click.echo(f"{'name':<20} {'arch':<11} {'bands':>5}  {'tile':>5}  {'blend':<8} classes")
    for e in entries:
        geometry = e["spec"]["geometry"]
        classes = ", ".join(c["name"] for c in e["classes"])
        click.echo(
            f"{e['name']:<20} {e['arch']:<11} {e['bands']:>5}  {geometry['default_tile']:>5}  "
            f"{geometry['blend']:<8} {classes}"
        )


register_model_commands(list_models, user_errors)


@list_models.command("bench")
@click.argument("name")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--memory", help="The forward's memory budget, e.g. 2GiB (default: a fair share of what is free).")
@click.option("--seconds", type=float, help="Bound of the search (default: TILESEG_TUNE_SECONDS, else 8).")
@click.option("--compile", "with_compile", is_flag=True, help="Also measure torch.compile at the best point.")
@click.option(
    "--pixels", type=int, default=2048 * 2048, show_default=True, help="The run to choose for (output pixels)."
)
@user_errors
def bench_model(
    name: str, device: str, memory: str | None, seconds: float | None, with_compile: bool, pixels: int
) -> None:
    """Measure how NAME runs here: every runtime, precision and memory format the card and the installed
    libraries allow, over windows and batches, as the tuner searches them; prints the table and the choice."""
    from tileseg.engine.runtime.device import configure_threads, describe_device, memory_budget, pick_device
    from tileseg.engine.runtime.tuner import Request, Tuner

    configure_threads()
    model = models.load(name, device=pick_device(device))
    where = next(model.parameters()).device
    geometry, machine = model.spec.geometry, describe_device(where)
    click.echo(
        f"{name} on {machine['name']} ({machine['capability']}, native bf16: {machine['native_bf16']}"
        + (f", {machine['threads']} threads" if "threads" in machine else "")
        + f"), torch {torch_version()}"
    )
    exact = geometry.equivariant and geometry.blend.value == "crop" and geometry.fixed_window is None
    request = Request(
        core=None if exact else geometry.default_tile,
        default_core=geometry.default_tile,
        batch=None,
        budget=memory_budget(where, memory),
        run_pixels=pixels,
        compile="auto",
        measure_compile=with_compile,
    )
    click.echo(f"budget {request.budget / 2**20:.0f} MB; window {'searched' if exact else 'fixed (blended model)'}")
    choice = Tuner(cache=None, seconds=seconds).choose(model, where, request)
    click.echo(f"{'runtime':<30} {'tile':>5} {'window':>6} {'batch':>5} {'Mpx/s':>7} {'peak MB':>8}  status")
    for row in choice.table():
        speed = f"{row['mpx_per_s']:7.3f}" if row["mpx_per_s"] is not None else f"{'-':>7}"
        peak = f"{row['peak_mb']:8d}" if row["peak_mb"] is not None else f"{'-':>8}"
        note = f" ({row['error'][:60]})" if row["error"] else ""
        mark = "  <- chosen" if row["chosen"] else ""
        window = geometry.window(row["core"])
        click.echo(
            f"{row['runtime']:<30} {row['core']:>5} {window:>6} {row['batch']:>5} {speed} {peak}  "
            f"{row['status']}{note}{mark}"
        )
    click.echo(f"chosen: {choice.runtime.label}, tile {choice.core} (window {choice.window}) x{choice.batch}")


def torch_version() -> str:
    import torch

    return torch.__version__


cli.add_command(serve)
cli.add_command(worker)
cli.add_command(train)
cli.add_command(tune)
