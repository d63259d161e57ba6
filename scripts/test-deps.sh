#!/usr/bin/env bash
# What the whole test suite needs beside its Python packages (`make test` runs this first):
#   redis-server, PostgreSQL    the queue mode's broker and job table, started on loopback by the tests
#   docker-compose              the compose files validated (podman serves its API; no Docker engine)
#   chromium                    the web page driven by Playwright (Debian's browser, not a downloaded one)
#   qgis, python3-qgis          the QGIS plug-in run headless (qgis_process)
#   podman and a base image     the image built and run (.ci/containers.sh setup: packages, config, image)
# As root, or with sudo that needs no password, it installs what is missing with apt and sets the containers
# up (both idempotent: a second run takes seconds). Otherwise it stops at once with the exact command to run.
# `make test-quick` runs the tests that need none of these.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
[ -x /usr/bin/chromium ] || need+=(chromium)
# with its dependencies (no recommends) up to 551 packages, ~800 MB to download and ~2.1 GB installed on
# Debian 12 (measured with apt-cache/dpkg-query; less where GDAL, Qt and Python are already there)
command -v qgis_process.bin >/dev/null 2>&1 || need+=(qgis python3-qgis)

if [ "$(id -u)" -eq 0 ]; then
  sudo_=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo_="sudo"
else
  if [ "${#need[@]}" -gt 0 ] || ! command -v podman >/dev/null 2>&1; then
    packages="${need[*]:-}"
    echo "make test needs system packages that are not installed here; run (as a user who may use sudo):" >&2
    [ -n "$packages" ] && echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends $packages" >&2
    echo "  sudo .ci/containers.sh setup" >&2
    echo "then 'make test' again; or 'make test-quick' for the tests that need no system service." >&2
    exit 1
  fi
  echo "test-deps: no root: the container set-up is left as it is (sudo .ci/containers.sh setup makes it)" >&2
  exit 0
fi

if [ "${#need[@]}" -gt 0 ]; then
  echo "test-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
$sudo_ .ci/containers.sh setup
