#!/usr/bin/env bash
# Make sure a Docker engine answers at unix:///var/run/docker.sock, idempotently.
# The docker tests (tests/docker) need a real engine; CI runs this before `make test`.
#   - engine already up        -> exit 0
#   - else, as root            -> install Debian's docker.io if dockerd is missing,
#                                 start dockerd detached, wait up to 60 s for it
#   - else (not root)          -> say how to start one, exit 1
set -euo pipefail

SOCK=/var/run/docker.sock
LOG=/tmp/schedd-dockerd.log
WAIT_S=60
export DOCKER_HOST="unix://$SOCK"

if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi

engine_up() { "$DOCKER" info >/dev/null 2>&1; }

# The docker tests build their base image from Debian's busybox-static (no registry here).
if [ "$(id -u)" -eq 0 ] && ! dpkg -s busybox-static >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q busybox-static >/dev/null || { apt-get update -q && apt-get install -y -q busybox-static; }
fi

if engine_up; then
    echo "dockerd.sh: Docker engine already reachable at unix://$SOCK"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "dockerd.sh: no Docker engine reachable at unix://$SOCK, and starting one needs root;" >&2
    echo "dockerd.sh: run 'sudo bash ci/dockerd.sh' (or start Docker your usual way)." >&2
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
    echo "dockerd.sh: dockerd not found; installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q docker.io; then
        apt-get update -q
        apt-get install -y -q docker.io
    fi
    hash -r
    if [ ! -x /usr/bin/docker ] && ! command -v docker >/dev/null 2>&1; then
        echo "dockerd.sh: docker client still missing after installing docker.io" >&2
        exit 1
    fi
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; fi
fi

echo "dockerd.sh: starting dockerd (log: $LOG)"
setsid nohup dockerd --host "unix://$SOCK" >"$LOG" 2>&1 </dev/null &
pid=$!

for _ in $(seq 1 "$WAIT_S"); do
    if engine_up; then
        echo "dockerd.sh: Docker engine up (dockerd pid $pid)"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "dockerd.sh: dockerd exited; last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2 || true
        exit 1
    fi
    sleep 1
done

echo "dockerd.sh: Docker engine did not come up within ${WAIT_S}s; last lines of $LOG:" >&2
tail -n 40 "$LOG" >&2 || true
exit 1
