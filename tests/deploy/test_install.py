"""The Docker image installs through ``docker/install.sh`` and starts through ``docker/entrypoint.sh`` under an
init, as a user that is not root, with the CUDA build by default and a base given as an argument. The image
that ``tests/deploy/test_image.py`` builds runs both scripts for real (every install step in its stages, the
start in each container it runs), so a broken install or start step fails there."""

from __future__ import annotations

import json
import re

from tests.conftest import REPO


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, rest), continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_the_dockerfile_installs_and_starts_through_the_scripts():
    steps = instructions((REPO / "Dockerfile").read_text())
    runs = [rest for keyword, rest in steps if keyword == "RUN"]
    assert any("docker/install.sh" in run for run in runs), "the install step is docker/install.sh"
    steps_run = {word for run in runs if "install.sh" in run for word in run.split()}
    missing = {"venv", "torch", "deps", "wheel", "weights", "package", "check"} - steps_run
    assert not missing, f"every install step runs in the image, so that its build tests it: {missing} do not"
    copies = [rest for keyword, rest in steps if keyword == "COPY"]
    entry = json.loads(next(rest for keyword, rest in steps if keyword == "ENTRYPOINT"))
    assert entry[:2] == ["tini", "--"], "an init as PID 1: SIGTERM ends the service with 143"
    assert any(c.startswith("docker/entrypoint.sh ") and c.split()[-1].endswith(entry[-1]) for c in copies)
    assert ("ARG", "TORCH_VARIANT=cuda") in steps, "the CUDA image is the default"
    assert ("ARG", "BASE=debian:bookworm-slim") in steps and ("FROM", "${BASE} AS base") in steps, (
        "the base is an argument"
    )
    user = [rest for keyword, rest in steps if keyword == "USER"]
    assert user and user[-1] not in ("root", "0"), "the service runs as a user that is not root"
    assert any(k == "HEALTHCHECK" and "/readyz" in r for k, r in steps)
    assert any(k == "ENV" and "TILESEG_WEIGHTS_DIR=/weights" in r for k, r in steps)
