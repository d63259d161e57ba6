"""The compose file, rendered by Debian's ``docker-compose config`` (no Docker engine is needed for that):
valid in the default set-up and in the scale profile, with what each deployment needs, and running the same
commands as the tests that start the service and the workers (``tests/scale``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.backends import INSTALL_HINT
from tests.conftest import REPO
from tests.scale.launch import SERVE_ARGS, WORKER_ARGS

SERVE_COMMAND = ["tileseg", *(a.replace("127.0.0.1", "0.0.0.0").replace("{port}", "8000") for a in SERVE_ARGS)]
WORKER_COMMAND = ["tileseg", *WORKER_ARGS]


def render(*options: str) -> dict:
    """``docker-compose OPTIONS config``, parsed; the caller's shell settings left out."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(f"docker-compose is not installed: {INSTALL_HINT}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TILESEG_", "COMPOSE_", "POSTGRES_"))}
    done = subprocess.run([binary, *options, "config"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"docker-compose {' '.join(options)} config:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


def active(config: dict, profiles: set[str]) -> dict:
    """The services that run with these profiles: those without profiles, and those of the profiles."""
    return {
        name: service
        for name, service in config["services"].items()
        if not service.get("profiles") or profiles & set(service["profiles"])
    }


def seconds(duration: str) -> float:
    """A compose duration (``1m30s``, ``90s``, ``2m``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", str(duration))
    if not parts:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


def gpus(service: dict) -> list[dict]:
    return service["deploy"]["resources"]["reservations"]["devices"]


def data_volume(service: dict) -> str:
    (volume,) = [v for v in service["volumes"] if v.split(":")[1] == "/data"]
    return volume.split(":")[0]


GPU = ("-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml")


def without_gpus(config: dict) -> dict:
    """The rendered config less the GPU override's parts: reservations and the workers' device pin."""
    for service in config["services"].values():
        service.pop("deploy", None)
        service.get("environment", {}).pop("TILESEG_DEVICE", None)
    return config


def test_the_default_is_one_api_in_embedded_mode_on_the_gpu():
    config = render(*GPU)
    services = active(config, set())
    assert set(services) == {"api"}
    api = services["api"]
    assert api["command"] == SERVE_COMMAND
    env = api["environment"]
    assert env["TILESEG_MODE"] == "embedded" and not env["TILESEG_DATABASE_URL"] and not env["TILESEG_BROKER_URL"]
    (gpu,) = gpus(api)
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert data_volume(api) in config["volumes"], "the data directory is a named volume"
    assert [p["target"] for p in api["ports"]] == [8000] and api["ports"][0]["published"] == 8000
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert seconds(api["stop_grace_period"]) >= float(env["TILESEG_SHUTDOWN_GRACE"]) + 10, (
        "Docker waits longer than the grace period the running job gets, before it kills"
    )


def test_the_cpu_setup_differs_from_the_gpu_one_only_by_the_gpu_reservations():
    for options in ((), ("--env-file", "scale.env", "--profile", "scale")):
        cpu = render("-f", "docker-compose.yml", *options)
        gpu = render(*GPU, *options)
        assert not any("deploy" in service for service in cpu["services"].values()), "no GPU reserved"
        assert all(
            service["environment"]["TILESEG_DEVICE"] == "auto"
            for service in cpu["services"].values()
            if "environment" in service and "TILESEG_DEVICE" in service["environment"]
        )
        assert without_gpus(cpu) == without_gpus(gpu)


def test_the_backing_images_are_variables_defaulting_to_the_official_ones():
    config = render("--env-file", "scale.env", "--profile", "scale")
    assert (config["services"]["redis"]["image"], config["services"]["postgres"]["image"]) == (
        "redis:7-bookworm",
        "postgres:15-bookworm",
    )
    binary = shutil.which("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TILESEG_", "COMPOSE_", "POSTGRES_"))}
    env.update(TILESEG_REDIS_IMAGE="localhost/r:1", TILESEG_POSTGRES_IMAGE="localhost/p:2")
    out = subprocess.run(
        [binary, "--env-file", "scale.env", "--profile", "scale", "config"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    local = yaml.safe_load(out.stdout)
    assert (local["services"]["redis"]["image"], local["services"]["postgres"]["image"]) == (
        "localhost/r:1",
        "localhost/p:2",
    )


def test_the_scale_profile_queues_on_redis_and_postgres_with_a_worker_per_gpu():
    config = render(*GPU, "--env-file", "scale.env", "--profile", "scale")
    services = active(config, {"scale"})
    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    assert set(services) == {"api", "redis", "postgres", *workers} and len(workers) >= 2
    api = services["api"]
    env = api["environment"]
    assert env["TILESEG_MODE"] == "queue"
    database = env["TILESEG_DATABASE_URL"]
    assert database.startswith("postgresql+psycopg://") and "@postgres:" in database
    assert env["TILESEG_BROKER_URL"].startswith("redis://redis:")
    assert api["command"] == SERVE_COMMAND
    pinned = []
    for name, worker in workers.items():
        assert worker["command"] == WORKER_COMMAND, name
        wenv = worker["environment"]
        assert wenv["TILESEG_MODE"] == "queue"
        assert (wenv["TILESEG_DATABASE_URL"], wenv["TILESEG_BROKER_URL"]) == (
            env["TILESEG_DATABASE_URL"],
            env["TILESEG_BROKER_URL"],
        ), f"{name} shares the API's table and broker"
        assert data_volume(worker) == data_volume(api), f"{name} shares the API's data volume"
        (gpu,) = gpus(worker)
        assert len(gpu["device_ids"]) == 1, f"{name} is pinned to one GPU"
        pinned.append(gpu["device_ids"][0])
        assert seconds(worker["stop_grace_period"]) >= float(wenv["TILESEG_SHUTDOWN_GRACE"]) + 10
        assert {dep: spec["condition"] for dep, spec in worker["depends_on"].items()} == {
            "redis": "service_healthy",
            "postgres": "service_healthy",
        }
    assert len(set(pinned)) == len(pinned), "one worker per GPU"
    for backing in ("redis", "postgres"):
        assert services[backing]["healthcheck"]["test"], backing
        assert all(p.startswith("127.0.0.1:") for p in services[backing]["ports"]), (
            f"{backing} is published on loopback unless TILESEG_BIND says otherwise"
        )


S3 = ("-f", "docker-compose.yml", "-f", "docker-compose.s3.yml", "--env-file", "scale.env", "--profile", "scale")


def test_the_s3_override_keeps_results_in_a_bucket_and_shares_no_disk():
    from tileseg.settings import Settings

    config = render(*S3)
    services = active(config, {"scale"})
    assert {"minio", "minio-bucket", "api", "worker-gpu0", "worker-gpu1"} <= set(services)
    clients = [services[name] for name in ("api", "worker-gpu0", "worker-gpu1")]
    volumes = [data_volume(s) for s in clients]
    assert len(set(volumes)) == len(volumes), f"each container has its own /data: {volumes}"
    for service in clients:
        env = service["environment"]
        assert env["TILESEG_RESULTS_URL"] == "s3://tileseg/results/"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert service["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
        settings = Settings(**{k[8:].lower(): v for k, v in env.items() if k.startswith("TILESEG_") and v})
        assert settings.results_in_s3 and settings.mode.value == "queue"
    assert services["minio-bucket"]["entrypoint"][-1] == "local/tileseg", "the bucket of TILESEG_RESULTS_URL"
    assert all(str(p).startswith("127.0.0.1:") for p in services["minio"]["ports"]), "MinIO on loopback by default"
