#!/usr/bin/env bash
# Start a private Docker engine for the test suite on a machine without
# systemd, or reuse the one already running; print the DOCKER_HOST to use:
#
#   eval "$(scripts/docker/start-dockerd.sh)"     # exports DOCKER_HOST
#   scripts/docker/start-dockerd.sh stop          # stops it
#
# Needs root. Installs docker.io and debootstrap (for build-postgres-image.sh)
# with apt-get when they are missing. Only the `export` line goes to stdout;
# progress goes to stderr, the engine's log to $PGQUEUE_DOCKERD_LOG.
#
# What the engine is set up for, and why:
# - It listens on its own unix socket only (no TCP), with its own data root,
#   exec root and pid file, so it neither needs nor disturbs a system engine's
#   /var/run/docker.sock.
# - --iptables=false --ip-forward=false: these machines have no usable
#   netfilter set-up to hand over, and nothing here needs NAT. Bridge
#   networking still works without it: each container gets an address on
#   docker0, the host reaches that subnet directly, and a published port is
#   served by docker-proxy (the userland proxy, on by default), which accepts
#   on the host and connects to the container across the bridge. Containers
#   get no route to the outside, which tests do not need.
# - --ip 127.0.0.1: the default address for published ports, so `-p 5432`
#   (and testcontainers' exposed ports) listen on loopback only, never on the
#   machine's public interfaces. PostgreSQL inside the container listens on
#   all of the container's own interfaces, which only this host can reach.
# - Storage: overlay2 works on the ext4 root of these machines; vfs (a full
#   copy per layer: slow, large, but works anywhere) is the fallback when
#   overlay2 cannot start, e.g. when /var/lib is itself on overlayfs.
#   PGQUEUE_DOCKERD_STORAGE forces one.
set -euo pipefail

SOCK=${PGQUEUE_DOCKERD_SOCK:-/run/pgqueue-docker.sock}
DATA_ROOT=${PGQUEUE_DOCKERD_DATA:-/var/lib/pgqueue-docker}
EXEC_ROOT=${PGQUEUE_DOCKERD_EXEC:-/run/pgqueue-docker}
PIDFILE=${PGQUEUE_DOCKERD_PIDFILE:-/run/pgqueue-docker.pid}
LOG=${PGQUEUE_DOCKERD_LOG:-/var/log/pgqueue-dockerd.log}
HOST=unix://$SOCK

log() { echo "start-dockerd: $*" >&2; }

answers() { DOCKER_HOST=$HOST docker version >/dev/null 2>&1; }

running_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

if [ "${1:-}" = stop ]; then
    if pid=$(running_pid); then
        log "stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || exit 0
            sleep 0.2
        done
        log "dockerd (pid $pid) did not stop within 30 s"
        exit 1
    fi
    log "no dockerd running from $PIDFILE"
    exit 0
fi

if answers; then
    log "reusing the engine on $HOST"
    echo "export DOCKER_HOST=$HOST"
    exit 0
fi

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

if pid=$(running_pid); then
    # Started but not answering yet (another caller is starting it): wait for it.
    log "waiting for dockerd (pid $pid) to answer"
else
    mkdir -p "$DATA_ROOT" "$EXEC_ROOT" "$(dirname "$LOG")"
    rm -f "$SOCK" "$PIDFILE"
fi

start() {
    log "starting dockerd ($1) on $HOST, log in $LOG"
    # setsid: the engine outlives this script and its terminal.
    setsid dockerd \
        -H "$HOST" \
        --pidfile "$PIDFILE" \
        --data-root "$DATA_ROOT" \
        --exec-root "$EXEC_ROOT" \
        --storage-driver "$1" \
        --iptables=false --ip-forward=false --ip-masq=false \
        --ip 127.0.0.1 \
        >>"$LOG" 2>&1 </dev/null &
    local launched=$! t0=$SECONDS
    while [ $((SECONDS - t0)) -lt 60 ]; do
        if answers; then
            log "dockerd answers after $((SECONDS - t0)) s"
            return 0
        fi
        kill -0 "$launched" 2>/dev/null || { log "dockerd ($1) exited; tail of $LOG:"; tail -n 5 "$LOG" >&2; return 1; }
        sleep 0.5
    done
    log "dockerd did not answer within 60 s"
    kill -TERM "$launched" 2>/dev/null || true
    return 1
}

if ! running_pid >/dev/null; then
    if [ -n "${PGQUEUE_DOCKERD_STORAGE:-}" ]; then
        start "$PGQUEUE_DOCKERD_STORAGE"
    elif ! start overlay2; then
        log "overlay2 failed; falling back to vfs"
        start vfs
    fi
else
    for _ in $(seq 1 120); do answers && break; sleep 0.5; done
    answers || { log "dockerd (pid $(running_pid)) does not answer on $HOST"; exit 1; }
fi

echo "export DOCKER_HOST=$HOST"
