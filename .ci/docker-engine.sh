#!/usr/bin/env bash
# Make sure a Docker Engine answers `docker info`; install and start one if not; make it
# a single-node swarm (for the swarm runtime's tests) if it is not part of one.
#
# For CI and sandboxes without systemd: installs Debian's docker.io when dockerd is
# missing and starts dockerd in the background (it outlives this script). Idempotent.
#
# dockerd runs with its defaults (overlay2, iptables, userland proxy): on the kernels we
# have met (cgroup v1 and v2, ext4 root) they work, and the userland docker-proxy is what
# makes a port published on 127.0.0.1 answer from the host. DOCKERD_FLAGS adds flags,
# e.g. DOCKERD_FLAGS="--storage-driver=vfs" where overlayfs cannot be mounted.
set -euo pipefail

LOG=/var/log/dockerd.log
WAIT_S=${DOCKER_ENGINE_WAIT_S:-60}

engine_up() { docker info >/dev/null 2>&1; }

# A single-node swarm advertised on 127.0.0.1: tasks publish host-mode ports there (the
# ingress routing mesh is not used). Plain containers keep working on a swarm node.
swarm_up() {
    local state
    state=$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown)
    if [ "$state" = inactive ]; then
        docker swarm init --advertise-addr 127.0.0.1 >/dev/null
        echo "docker-engine: single-node swarm initialised (advertise 127.0.0.1)"
    fi
}

if engine_up; then
    swarm_up
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "docker-engine: no engine answers and starting one needs root" >&2
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
    # shellcheck disable=SC2086  # DOCKERD_FLAGS is a list of flags
    setsid nohup dockerd ${DOCKERD_FLAGS:-} >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq "$WAIT_S"); do
    if engine_up; then
        echo "docker-engine: up ($(docker version --format '{{.Server.Version}}'), $(docker info --format '{{.Driver}}'), log $LOG)"
        swarm_up
        exit 0
    fi
    sleep 1
done

echo "docker-engine: no answer from dockerd after ${WAIT_S}s; last lines of $LOG:" >&2
tail -n 30 "$LOG" >&2 || true
exit 1
