#!/bin/sh
# `redis-server ARGS` as the official image runs it: as the `redis` user, reachable from other containers
# (no protected mode: there is no configuration file), keeping its files in /data. Anything else is run as is.
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  [ "$(id -u)" -ne 0 ] || chown -R redis:redis /data
  set -- redis-server --protected-mode no --dir /data "$@"
  [ "$(id -u)" -ne 0 ] || set -- setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
