"""What the engine and the models read from ``TILESEG_*`` variables, declared once: :class:`EngineConfig`.

The command line reads it from the environment when a run asks (:func:`engine_config`); the service's
:class:`tileseg.settings.Settings` extends it with the service's own settings and hands itself over with
:func:`use` when it starts, so that a server's engine runs with the server's settings. Nothing is read at import
time, and an environment changed between runs (a test, a notebook) is read again.

This module imports nothing of the product but its root error, so every layer, the models' included, may use it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tileseg.errors import TilesegError


class ConfigError(TilesegError, ValueError):
    """A ``TILESEG_*`` variable whose value cannot be used."""

    code = "bad_configuration"


class EngineConfig(BaseSettings):
    """The settings of a run that come from the machine, not from the run's options."""

    model_config = SettingsConfigDict(env_prefix="TILESEG_", extra="ignore", frozen=True)

    weights_dir: Path | None = Field(None, description="Installed checkpoints; default: the shipped weights/.")
    cache_dir: Path | None = Field(
        None,
        description="Exported programs and the tuner's measurements; default: $XDG_CACHE_HOME/tileseg, else "
        "~/.cache/tileseg.",
    )
    tune_seconds: float | None = Field(
        None, gt=0, description="Bound of the tuner's search on a first run, in seconds; default: 6."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads for the network; default: every core the process may use."
    )
    memory_budget: str | None = Field(
        None,
        description="Memory a forward pass may take, e.g. 2GiB (a run's --memory wins); default: a fair share "
        "of what is free.",
    )
    http_max_retry: int = Field(5, ge=0, description="Remote reads: retries of a request that failed (GDAL's).")
    http_retry_delay: float = Field(0.5, ge=0, description="Remote reads: seconds before the first retry.")
    http_connect_timeout: float = Field(
        10.0, gt=0, description="Remote reads: seconds to wait for a connection before the request fails."
    )
    http_read_timeout: float = Field(
        30.0,
        gt=0,
        description="Remote reads: seconds a source may send nothing before the request fails (then the retries): "
        "a source that stops answering fails its run in bounded time.",
    )
    http_header_bytes: int = Field(
        16384, ge=1024, description="Remote reads: bytes fetched when a raster is opened (its header, at least)."
    )
    http_chunk_bytes: int = Field(
        16384, ge=1024, description="Remote reads: the smallest range requested (GDAL's CPL_VSIL_CURL_CHUNK_SIZE)."
    )
    fetch_max_bytes: int = Field(
        4 << 30,
        gt=0,
        description="Sources on servers without Range requests are fetched whole, up to this many bytes (the "
        "service: at most TILESEG_MAX_UPLOAD_BYTES); larger ones are refused.",
    )
    gdal_cache_mb: int = Field(64, gt=0, description="GDAL's block cache of each reading thread, in MB.")


_in_force: EngineConfig | None = None


def engine_config() -> EngineConfig:
    """The configuration in force: the one handed over with :func:`use`, else the environment's, read now.

    Raises:
        ConfigError: a variable whose value cannot be used (its name and the reason in the message).
    """
    if _in_force is not None:
        return _in_force
    try:
        return EngineConfig()
    except ValidationError as err:
        first = err.errors()[0]
        name = "TILESEG_" + "_".join(str(part) for part in first["loc"]).upper()
        raise ConfigError(f"{name}: {first['msg']}") from err


def use(config: EngineConfig | None) -> None:
    """Run the engine with ``config`` in this process from now on (None: read the environment again)."""
    global _in_force
    _in_force = config


__all__ = ["ConfigError", "EngineConfig", "engine_config", "use"]
