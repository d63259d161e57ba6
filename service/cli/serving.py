"""``tileseg serve`` and ``tileseg worker``: start the service's processes, the HTTP service (running the
jobs itself, or only queueing them) and a queue worker, with their settings from TILESEG_* variables,
checked before either starts.
"""

from __future__ import annotations

import sys

import click

from tileseg.cli.errors import user_errors
from tileseg.engine.errors import OptionsError
from tileseg.models.errors import ModelNotFoundError

LOG_LEVELS = click.Choice(["critical", "error", "warning", "info", "debug"])


def service_settings():
    """The service's settings from TILESEG_* variables, checked as a command's start needs them.

    Raises:
        click.UsageError: invalid settings, or models that are not installed.
    """
    from pydantic import ValidationError

    from tileseg.jobs.modelpool import served_names, weights_folder
    from tileseg.settings import get_settings

    try:
        settings = get_settings()
    except ValidationError as err:
        problems = "; ".join(
            f"TILESEG_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" if e["loc"] else e["msg"]
            for e in err.errors()
        )
        raise click.UsageError(f"invalid settings: {problems}") from None
    try:
        served_names(weights_folder(settings), settings.models)
    except ModelNotFoundError as err:
        raise click.UsageError(str(err)) from None
    return settings


def _quiet_georeferencing() -> None:
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)  # plain PNG/JPEG inputs are fine


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--log-level", type=LOG_LEVELS, default="info", show_default=True)
@user_errors
def serve(host: str, port: int, log_level: str) -> None:
    """Run the HTTP service (settings from TILESEG_* variables; see the README).

    TILESEG_MODE=embedded (the default) runs the jobs in this process; TILESEG_MODE=queue only queues them
    for `tileseg worker` processes on TILESEG_BROKER_URL.

    SIGTERM or SIGINT: stop taking jobs, let the running one finish within TILESEG_SHUTDOWN_GRACE seconds or
    put it back in the queue, and exit with 128 + the signal number.
    """
    import logging

    import uvicorn

    from tileseg.api import create_app

    settings = service_settings()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_georeferencing()
    # One process: the job table's embedded workers live in it. Uvicorn turns SIGTERM into a graceful
    # shutdown, in which the app's lifespan gives the running job its grace period.
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=max(5, int(settings.shutdown_grace)),
    )


@click.command()
@click.option("--log-level", type=LOG_LEVELS, default="info", show_default=True)
@user_errors
def worker(log_level: str) -> None:
    """Run a queue worker: one process, one job at a time, on one device (TILESEG_DEVICE, e.g. cuda:0).

    Takes jobs from the Celery broker at TILESEG_BROKER_URL and runs them against the job table at
    TILESEG_DATABASE_URL, with the results in TILESEG_DATA_DIR: all three shared with the API. Run one per
    GPU. SIGTERM: take no more jobs, give the running one TILESEG_SHUTDOWN_GRACE seconds, else hand it back
    to the queue, and exit.
    """
    from tileseg.jobs.queue import run_worker, worker_device
    from tileseg.settings import Mode

    settings = service_settings()
    if settings.mode is not Mode.QUEUE:
        raise click.UsageError(
            "tileseg worker takes jobs from a broker: set TILESEG_MODE=queue, "
            "TILESEG_BROKER_URL and TILESEG_DATABASE_URL (the API's)"
        )
    try:
        worker_device(settings)
    except OptionsError as err:
        raise click.UsageError(str(err)) from None
    _quiet_georeferencing()
    sys.exit(run_worker(settings, log_level))
