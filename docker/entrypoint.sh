#!/bin/sh
# The Docker image's start step (its ENTRYPOINT), which CI also runs (tests/deploy/test_install.py).
#
#   docker run IMAGE                      tileseg serve --host 0.0.0.0 --port 8000
#   docker run IMAGE serve|worker|...     tileseg serve|worker|...
#   docker run IMAGE CMD ARGS...          CMD ARGS... (tileseg ..., sh, ...)
#
# Settings come from TILESEG_* variables (see the README). `exec` makes the command the container's main
# process, so that SIGTERM from `docker stop` reaches it and its grace period applies.
set -eu

case "${1:-}" in
  "") set -- tileseg serve --host 0.0.0.0 --port 8000 ;;
  serve|worker|segment|models|train) set -- tileseg "$@" ;;
esac

if [ -n "${TILESEG_DATA_DIR:-}" ] && ! mkdir -p "$TILESEG_DATA_DIR" 2>/dev/null; then
  echo "entrypoint: TILESEG_DATA_DIR=$TILESEG_DATA_DIR cannot be created by user $(id -u)" >&2
  exit 1
fi
exec "$@"
