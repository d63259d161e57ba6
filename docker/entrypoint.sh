#!/bin/sh
# The Docker image's start step (its ENTRYPOINT), which CI also runs (tests/deploy/test_install.py).
#
#   docker run IMAGE                      tileseg serve --host 0.0.0.0 --port 8000
#   docker run IMAGE serve|worker|...     tileseg serve|worker|...
#   docker run IMAGE CMD ARGS...          CMD ARGS... (tileseg ..., sh, ...)
#
# Settings come from TILESEG_* variables (see the README). Before `tileseg serve` or `tileseg worker`,
# preflight.py checks the data directory and the weights folder; while they are unusable it logs why and
# answers /readyz 503 with the reason (never a crash loop), and starts the command once they are fixed.
# `exec` makes the command the container's main process, so that SIGTERM from `docker stop` reaches it and
# its grace period applies.
set -eu

case "${1:-}" in
  "") set -- tileseg serve --host 0.0.0.0 --port 8000 ;;
  serve|worker|segment|models|train) set -- tileseg "$@" ;;
esac

if [ "$1" = tileseg ] && { [ "${2:-}" = serve ] || [ "${2:-}" = worker ]; }; then
  preflight="$(dirname "$0")/preflight.py"
  [ -f "$preflight" ] || preflight=/usr/local/lib/tileseg/preflight.py
  # in the background with a trap: as PID 1, sh would otherwise ignore `docker stop`'s SIGTERM
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
  python "$preflight" "$@" &
  child=$!
  status=0
  wait "$child" || status=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child" || status=$?; done
  trap - TERM INT
  [ "$status" -eq 0 ] || exit "$status"
fi
exec "$@"
