#!/usr/bin/env bash
# CI: run `make test` with the session's PostgreSQL in a testcontainers
# container, on this machine's private Docker engine, with the image built
# from Debian packages when it is not there (no registry needed).
#
#   scripts/docker/ci-testcontainers.sh
#
# Needs root (dockerd, debootstrap). PGQUEUE_TEST_IMAGE names the image
# (default postgres:17, built here if missing; any other image must already be
# present or be pullable). It is always set, so a container that does not
# start fails the run instead of falling back to the embedded server.
# The engine is stopped at the end only if this script started it; then the
# run also fails if a test container was left behind.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=scripts/docker

log() { echo "ci-testcontainers: $*" >&2; }

export PGQUEUE_TEST_IMAGE=${PGQUEUE_TEST_IMAGE:-postgres:17}
unset PGQUEUE_TEST_DSN

sock=${PGQUEUE_DOCKERD_SOCK:-/run/pgqueue-docker.sock}
started=0
DOCKER_HOST=unix://$sock docker version >/dev/null 2>&1 || started=1

t0=$SECONDS
# Not `eval "$(...)"`: that would hide the script's failure from set -e.
docker_env=$("$HERE/start-dockerd.sh")
eval "$docker_env"
log "engine ready in $((SECONDS - t0)) s ($DOCKER_HOST)"

label=org.testcontainers=true
before=$(docker ps -aq --no-trunc --filter "label=$label" | sort)

finish() {
    local rc=$? leaked
    if [ "$started" = 1 ]; then
        # On an engine of its own, every test container is this run's.
        leaked=$(comm -13 <(echo "$before") <(docker ps -aq --no-trunc --filter "label=$label" | sort))
        if [ -n "$leaked" ]; then
            log "test containers left behind:"
            docker ps -a --filter "label=$label" >&2
            # shellcheck disable=SC2086  # one id a word
            docker rm -f $leaked >/dev/null || true
            rc=1
        fi
        "$HERE/start-dockerd.sh" stop || rc=1
    fi
    exit "$rc"
}
trap finish EXIT

if [ "$PGQUEUE_TEST_IMAGE" = postgres:17 ]; then
    t0=$SECONDS
    "$HERE/build-postgres-image.sh" postgres:17
    log "image ready in $((SECONDS - t0)) s"
fi

# The engine runs on this machine and the reaper's image cannot be pulled:
# said outright (tests/conftest.py would conclude the same for the first two).
export TESTCONTAINERS_CONNECTION_MODE=docker_host
export TC_HOST=127.0.0.1
export TESTCONTAINERS_RYUK_DISABLED=true

t0=$SECONDS
make test
log "make test passed in $((SECONDS - t0)) s"
