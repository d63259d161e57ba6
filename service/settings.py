"""The service's settings: typed, read once from ``TILESEG_*`` environment variables, validated at start.

``get_settings()`` is the one accessor (cached); tests override it, or start a server with another
environment. Lists are given comma-separated (``TILESEG_API_KEYS=key1,key2``); durations in seconds or as
ISO 8601 (``TILESEG_RESULT_TTL=PT6H``).

``TILESEG_DATA_DIR`` is where the service keeps its job table, uploads and results. (The test suite and the
benchmarks find the shared real data through ``TILESEG_SHARED_DATA``.)

``TILESEG_MODE`` says who runs the jobs: ``embedded`` (the default: a worker thread per device inside
``tileseg serve``) or ``queue`` (the API only queues; ``tileseg worker`` processes on a Celery broker,
``TILESEG_BROKER_URL``, run them, with the job table in a shared database, ``TILESEG_DATABASE_URL``).
"""

from __future__ import annotations

import enum
import os
import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from tileseg.config import EngineConfig

CommaList = Annotated[list[str], NoDecode]
MIN_KEY_LENGTH = 16


class Mode(str, enum.Enum):
    """Who runs the jobs: worker threads inside the server, or queue workers on a broker."""

    EMBEDDED = "embedded"
    QUEUE = "queue"


class Settings(EngineConfig):
    """Everything the HTTP service can be told: the engine's configuration (:class:`tileseg.config.EngineConfig`)
    and the service's own settings (the reference lists them all)."""

    model_config = SettingsConfigDict(env_prefix="TILESEG_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("tileseg-data"), description="Job table, uploads and results.")
    models: CommaList = Field(default_factory=list, description="Models to load; empty: every installed one.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N; comma-separated for one worker per GPU.")
    max_upload_bytes: int = Field(4 << 30, gt=0, description="Largest request body accepted.")
    max_pixels: int = Field(10**10, gt=0, description="Largest input, width x height (a 100000^2 scan).")
    max_untiled_pixels: int = Field(
        1 << 28,
        gt=0,
        description="Largest PNG/JPEG/BMP/WebP input: formats "
        "that must be decoded from their first row to reach any window.",
    )
    input_roots: CommaList = Field(default_factory=list, description="Server folders that `source` may name.")
    source_allow: CommaList = Field(
        default_factory=list,
        description="URL prefixes (s3://bucket/folder/, https://host/folder/) under which `source` may name a "
        "remote raster; empty: none.",
    )
    api_keys: CommaList = Field(default_factory=list, description="If set, every route but health needs one.")
    cors_origins: CommaList = Field(default_factory=list, description="Origins allowed to call from a browser.")
    basemap_url: str | None = Field(
        None,
        description="The page's base map under georeferenced masks: an XYZ tile template "
        "(https://tile.openstreetmap.org/{z}/{x}/{y}.png); none by default (the page then makes no outside request).",
    )
    results_url: str | None = Field(
        None,
        description="Where uploads and results are kept: a local folder (default: DATA_DIR), or an S3 prefix "
        "(s3://bucket/prefix/; credentials and endpoint from the AWS variables) so that the API and the workers "
        "share no disk.",
    )
    results_redirect: bool = Field(
        False,
        description="With results in S3: answer result downloads with a redirect to a presigned URL (valid "
        "15 minutes) instead of streaming them through the API.",
    )
    result_ttl: timedelta = Field(timedelta(hours=24), description="How long results are kept.")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the job table; default SQLite in DATA_DIR.")
    max_attempts: int = Field(3, ge=1, description="Starts of a job before it fails (crashes, restarts).")
    shutdown_grace: float = Field(30.0, ge=0, description="SIGTERM: seconds the running job may take to finish.")
    sweep_interval: float = Field(60.0, gt=0, description="Seconds between sweeps for expired results.")
    keep_inputs: bool = Field(False, description="Keep uploaded inputs after their job ends.")
    view_copies: bool = Field(
        True,
        description="Keep an 8-bit view copy of each input (display bands, overviews) with the results, as the "
        "web viewer's base layer; it goes when the results expire.",
    )
    min_free_bytes: int = Field(256 << 20, ge=0, description="/readyz fails below this much free disk.")
    batch: int | None = Field(None, ge=1, description="Tiles per forward pass; default: measured by the tuner.")
    mode: Mode = Field(Mode.EMBEDDED, description="embedded: workers inside the server; queue: Celery workers.")
    broker_url: str | None = Field(None, description="Queue mode: the Celery broker (redis://host:6379/0).")
    queue_name: str = Field("tileseg", min_length=1, description="Queue mode: the broker queue of the jobs.")
    lease: float = Field(30.0, gt=0, description="Seconds a running job stays its worker's without a heartbeat.")
    heartbeat: float = Field(10.0, gt=0, description="Seconds between a running job's heartbeats.")
    reap_interval: float = Field(
        10.0,
        gt=0,
        description="Queue mode: seconds between looks for expired leases and for queued jobs the broker lost.",
    )
    requeue_after: float = Field(
        60.0,
        gt=0,
        description="Queue mode: a queued job not claimed for this long, and not in the broker's queue, is sent again.",
    )
    shard_pixels: int = Field(
        10**9,
        gt=0,
        description="Queue mode: a job without a `shards` option runs in one shard per this many input pixels past "
        "it (on many workers at once); one shard should take a worker a few minutes.",
    )

    batch_max_jobs: int = Field(
        1000,
        ge=1,
        description="The most jobs one API key may have queued or running at once through POST /batches (the batch "
        "counted in): a larger batch is refused with 413, one that would pass the limit now with 429.",
    )
    callback_allow: CommaList = Field(
        default_factory=list,
        description="URL prefixes (https://host/folder/) under which a job's `callback` or an OGC `subscriber` may "
        "point, by the rules of source_allow; empty: no callbacks.",
    )
    callback_secret: SecretStr | None = Field(
        None,
        description="The key of each callback's X-Tileseg-Signature (HMAC-SHA256 of the body); needed with "
        "callback_allow, at least 16 characters.",
    )
    callback_retry_for: float = Field(
        3600.0, gt=0, description="Seconds a callback delivery is retried (with a doubling wait) before it is given up."
    )
    callback_timeout: float = Field(10.0, gt=0, description="Seconds a callback's receiver has to answer.")
    callback_interval: float = Field(
        1.0, gt=0, description="Seconds between the server's looks for jobs and batches whose callbacks are due."
    )

    @field_validator(
        "models", "input_roots", "source_allow", "api_keys", "cors_origins", "callback_allow", mode="before"
    )
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("result_ttl", mode="before")
    @classmethod
    def _seconds(cls, value):
        if isinstance(value, str):
            try:
                return timedelta(seconds=float(value))
            except ValueError:  # not a number: ISO 8601 (PT6H) or [D ]HH:MM:SS, pydantic's own formats
                return value
        return value

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, keys: list[str]) -> list[str]:
        short = [k for k in keys if len(k) < MIN_KEY_LENGTH]
        if short:
            raise ValueError(f"API keys need at least {MIN_KEY_LENGTH} characters; {len(short)} are shorter")
        return keys

    @field_validator("basemap_url")
    @classmethod
    def _xyz_template(cls, url: str | None) -> str | None:
        if not url:
            return None
        missing = [part for part in ("{z}", "{x}", "{y}") if part not in url]
        if not url.startswith(("http://", "https://")) or missing:
            raise ValueError(f"basemap_url must be an http(s) XYZ template with {{z}}, {{x}} and {{y}}: {url!r}")
        return url

    @field_validator("source_allow")
    @classmethod
    def _url_prefixes(cls, prefixes: list[str]) -> list[str]:
        bad = [p for p in prefixes if not re.match(r"^(s3|https?)://[^/@?#]+/([^?#]*/)?$", p)]
        if bad:
            raise ValueError(
                "source_allow takes s3:// or http(s):// prefixes of a folder, ending with '/' and without "
                f"credentials or a query, e.g. s3://scenes/public/: {bad[0]!r}"
            )
        return prefixes

    @field_validator("callback_allow")
    @classmethod
    def _callback_prefixes(cls, prefixes: list[str]) -> list[str]:
        bad = [p for p in prefixes if not re.match(r"^https?://[^/@?#]+/([^?#]*/)?$", p)]
        if bad:
            raise ValueError(
                "callback_allow takes http(s):// prefixes of a folder, ending with '/' and without credentials or a "
                f"query, e.g. https://hooks.example.org/tileseg/: {bad[0]!r}"
            )
        return prefixes

    @model_validator(mode="after")
    def _callbacks_are_signed(self) -> Settings:
        secret = self.callback_secret.get_secret_value() if self.callback_secret else ""
        if self.callback_allow and len(secret) < MIN_KEY_LENGTH:
            raise ValueError(
                f"callback_allow needs TILESEG_CALLBACK_SECRET of at least {MIN_KEY_LENGTH} characters: every "
                "callback is signed with it"
            )
        return self

    @field_validator("results_url")
    @classmethod
    def _results_place(cls, url: str | None) -> str | None:
        if not url:
            return None
        if "://" not in url:
            return url
        if not re.match(r"^s3://[^/@?#]+/([^?#]*/)?$", url):
            raise ValueError(f"results_url takes a local folder or an s3://bucket/prefix/ ending with '/': {url!r}")
        return url

    @field_validator("input_roots")
    @classmethod
    def _existing_roots(cls, roots: list[str]) -> list[str]:
        missing = [r for r in roots if not Path(r).is_dir()]
        if missing:
            raise ValueError(f"input roots must be existing folders: {', '.join(missing)}")
        # resolved once, so that a symlinked root is compared by where it leads
        return [str(Path(r).resolve()) for r in roots]

    @model_validator(mode="after")
    def _writable_data_dir(self) -> Settings:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"data_dir {self.data_dir} cannot be created: {err}") from err
        if not os.access(self.data_dir, os.W_OK):
            raise ValueError(f"data_dir {self.data_dir} is not writable")
        return self

    @model_validator(mode="after")
    def _queue_needs_a_broker(self) -> Settings:
        if self.mode is Mode.QUEUE and not self.broker_url:
            raise ValueError("mode queue needs TILESEG_BROKER_URL (e.g. redis://redis:6379/0)")
        if self.heartbeat >= self.lease:
            # a lease shorter than the beat that renews it would expire under a healthy worker
            raise ValueError(f"heartbeat ({self.heartbeat} s) must be shorter than the lease ({self.lease} s)")
        return self

    @property
    def database(self) -> str:
        """The job table's SQLAlchemy URL."""
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'jobs.db'}"

    @property
    def results_in_s3(self) -> bool:
        """Whether uploads and results are kept in S3 (``TILESEG_RESULTS_URL=s3://...``)."""
        return bool(self.results_url and self.results_url.startswith("s3://"))

    @property
    def files_dir(self) -> Path:
        """Where the job folders lie on this machine: the results folder (``TILESEG_RESULTS_URL`` when it is a
        path), else DATA_DIR (with results in S3: each process's own scratch space)."""
        if self.results_url and not self.results_in_s3:
            return Path(self.results_url)
        return self.data_dir

    @property
    def devices(self) -> list[str]:
        return [d.strip() for d in self.device.split(",") if d.strip()] or ["auto"]


@lru_cache
def get_settings() -> Settings:
    """The settings, read from the environment once (``get_settings.cache_clear()`` reads them again)."""
    return Settings()


__all__ = ["Mode", "Settings", "get_settings"]
