#!/usr/bin/env bash
# The container machinery that the deployment tests (tests/deploy/test_image.py, test_stack.py) use: podman
# driven through its Docker-compatible socket by Debian's docker-compose, on a Debian bookworm base image made
# here from Debian's packages (registry images cannot be pulled on the CI machines).
#
#   .ci/containers.sh setup   apt packages, /etc/containers/containers.conf, the base image (made once: later
#                             runs find it in podman's storage, or load it from $CACHE_DIR)
#   .ci/containers.sh start   the podman API socket and the healthcheck pump, in the background (idempotent)
#   .ci/containers.sh stop    stop what `start` started
#   .ci/containers.sh env     print DOCKER_HOST=... for the socket
#
# Why the pump: podman schedules healthchecks through systemd timers, and no systemd runs here; without a
# pump no container ever turns healthy and compose's `condition: service_healthy` waits forever. The pump
# runs `podman healthcheck run` on every running container that has a healthcheck, every 2 s.
#
# Needs root (apt, /etc/containers, rootful podman). Settings: CACHE_DIR (default /var/cache/ci-images),
# RUN_DIR (default /run/tileseg-ci: socket, pid files, logs), BASE_IMAGE (default localhost/debian-base:bookworm).
set -euo pipefail

CACHE_DIR="${CACHE_DIR:-/var/cache/ci-images}"
RUN_DIR="${RUN_DIR:-/run/tileseg-ci}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian-base:bookworm}"
SOCKET="$RUN_DIR/podman.sock"
PACKAGES=(podman buildah runc debootstrap docker-compose netavark aardvark-dns iptables uidmap
          fuse-overlayfs slirp4netns catatonit)

say() { echo "containers.sh: $*" >&2; }

install_packages() {
  local missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

configure_podman() {
  # runc, not crun: crun 1.8 refuses this machine's hybrid cgroup set-up ("cgroups in hybrid mode not
  # supported"); no default ulimits: the sandbox refuses raising RLIMIT_NOFILE/NPROC past its hard limit
  local conf=/etc/containers/containers.conf
  if ! grep -q '^runtime = "runc"' "$conf" 2>/dev/null || ! grep -q '^default_ulimits = \[\]' "$conf"; then
    say "writing $conf"
    mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >"$conf"
  fi
}

# The first Debian archive URI in this machine's apt sources (deb822 .sources files, else sources.list).
host_debian_mirror() {
  local uri
  uri="$(grep -h -E '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
    | grep -v -- '-security' | head -n1 || true)"
  [ -n "$uri" ] || uri="$(grep -h -E '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list 2>/dev/null \
    | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)"
  [ -n "$uri" ] || { echo "no Debian mirror in this machine's apt sources" >&2; return 1; }
  echo "$uri"
}

# This machine's Debian sources, for the image's apt (the deb822 file when there is one).
host_debian_sources() {
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cat /etc/apt/sources.list.d/debian.sources
  else
    local mirror
    mirror="$(host_debian_mirror)"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\n' "$mirror"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
  fi
}

make_base_image() {
  if podman image exists "$BASE_IMAGE"; then
    :
  elif [ -f "$CACHE_DIR/debian-base-bookworm.tar" ]; then
    say "loading $BASE_IMAGE from $CACHE_DIR"
    podman load -q -i "$CACHE_DIR/debian-base-bookworm.tar" >/dev/null
  else
    say "making $BASE_IMAGE with debootstrap (1-2 minutes)"
    local root
    root="$(mktemp -d /var/tmp/debian-base.XXXXXX)"
    # the Debian mirror and sources of this machine's own apt: no registry host is written into the tree
    debootstrap --variant=minbase bookworm "$root" "$(host_debian_mirror)" >/dev/null
    rm -f "$root/etc/apt/sources.list"
    host_debian_sources >"$root/etc/apt/sources.list.d/debian.sources"
    # what official Debian images do: no services started by package scripts, no apt caches kept
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
    printf 'APT::Install-Recommends "false";\nDir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' \
      >"$root/etc/apt/apt.conf.d/90-container"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    : >"$root/etc/machine-id"
    tar --numeric-owner -C "$root" -c . | podman import -q \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    mkdir -p "$CACHE_DIR"
    podman save -q -o "$CACHE_DIR/debian-base-bookworm.tar.part" "$BASE_IMAGE"
    mv "$CACHE_DIR/debian-base-bookworm.tar.part" "$CACHE_DIR/debian-base-bookworm.tar"
  fi
  # an unchanged `FROM debian:bookworm(-slim)` then resolves to the local base, never to a registry
  podman tag "$BASE_IMAGE" docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim
}

alive() { [ -f "$RUN_DIR/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

pump() {
  while true; do
    for id in $(podman ps -q --filter health=starting --filter health=healthy --filter health=unhealthy); do
      podman healthcheck run "$id" >/dev/null 2>&1 || true
    done
    sleep 2
  done
}

start() {
  mkdir -p "$RUN_DIR"
  if ! alive podman; then
    rm -f "$SOCKET"
    podman system service --time=0 "unix://$SOCKET" >"$RUN_DIR/podman.log" 2>&1 &
    echo $! >"$RUN_DIR/podman.pid"
    for _ in $(seq 100); do [ -S "$SOCKET" ] && break; sleep 0.1; done
    [ -S "$SOCKET" ] || { say "the podman service did not open $SOCKET:"; cat "$RUN_DIR/podman.log" >&2; exit 1; }
  fi
  if ! alive pump; then
    pump >/dev/null 2>&1 &
    echo $! >"$RUN_DIR/pump.pid"
  fi
  say "podman socket at $SOCKET (DOCKER_HOST=unix://$SOCKET), healthcheck pump running"
}

stop() {
  for name in pump podman; do
    if alive "$name"; then kill "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null || true; fi
    rm -f "$RUN_DIR/$name.pid"
  done
}

case "${1:-}" in
  setup) install_packages; configure_podman; make_base_image ;;
  start) start ;;
  stop) stop ;;
  env) echo "DOCKER_HOST=unix://$SOCKET" ;;
  *) echo "usage: $0 setup|start|stop|env" >&2; exit 2 ;;
esac
