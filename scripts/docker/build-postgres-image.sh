#!/usr/bin/env bash
# Build a PostgreSQL 17 image from Debian packages and load it into the Docker
# engine named by DOCKER_HOST, for machines that cannot pull from a registry.
#
#   scripts/docker/build-postgres-image.sh [TAG]      (default tag: postgres:17)
#
# The image behaves like the official postgres image for what the tests use:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, /docker-entrypoint-initdb.d,
# password (scram-sha-256) authentication on TCP, `sh` and `psql` on PATH
# (testcontainers waits by running psql inside the container). It carries the
# official name so that the tests' default image works unchanged.
#
# The build is skipped when TAG already exists: an image built by this script
# from the same recipe, or any other image (an official postgres:17 is left
# alone). FORCE=1 rebuilds. DEBIAN_MIRROR overrides the mirror, which is
# otherwise the one this machine's apt sources use. Needs root and debootstrap.
set -euo pipefail

TAG=${1:-postgres:17}
SUITE=trixie
PG_MAJOR=17
HERE=$(cd "$(dirname "$0")" && pwd)
ENTRYPOINT_SRC=$HERE/postgres-entrypoint.sh
LABEL=org.pgqueue.image-recipe

log() { echo "build-postgres-image: $*" >&2; }

command -v docker >/dev/null || { log "docker CLI not found"; exit 1; }
docker version >/dev/null 2>&1 || {
    log "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); see start-dockerd.sh"
    exit 1
}

# The recipe is this script plus the entrypoint: a change to either makes
# earlier builds stale.
recipe=$(cat "$0" "$ENTRYPOINT_SRC" | sha256sum | cut -c1-16)

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    have=$(docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$TAG" 2>/dev/null || true)
    if [ "$have" = "$recipe" ]; then
        log "$TAG is up to date"
        exit 0
    elif [ -z "$have" ] || [ "$have" = "<no value>" ]; then
        log "$TAG exists and was not built here; keeping it (FORCE=1 replaces it)"
        exit 0
    fi
    log "$TAG was built from an older recipe; rebuilding"
fi

[ "$(id -u)" = 0 ] || { log "must run as root (debootstrap, chroot)"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap not found (apt-get install debootstrap)"; exit 1; }

# The mirror this machine's apt already reaches: the first Debian archive URI
# in its sources (one-line or deb822 format), not the security archive.
mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local m
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        sed -nE 's/^(deb[[:space:]]+(\[[^]]*\][[:space:]]+)?|URIs:[[:space:]]*)([a-z]+:\/\/[^[:space:]]*\/debian\/?)([[:space:]].*)?$/\3/p' |
        head -n1)
    echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=$(mirror)

work=$(mktemp -d /var/tmp/pgqueue-postgres-image.XXXXXX)
root=$work/root
cleanup() {
    # Never delete through a mount point into the host's /proc or /dev.
    for m in "$root/proc" "$root/dev/pts"; do
        if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
    done
    if ! grep -q " $work/" /proc/mounts; then rm -rf "$work"; fi
}
trap cleanup EXIT

start=$(date +%s)
log "debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}

# Package scripts must not start services inside the chroot, and
# postgresql-common must not create a default cluster: the entrypoint creates
# the cluster at first start, with the container's credentials.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
mkdir -p "$root/etc/postgresql-common"
echo "create_main_cluster = false" >"$root/etc/postgresql-common/createcluster.conf"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"

log "installing postgresql-$PG_MAJOR"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -euc "
        apt-get update -q
        apt-get install -y -q --no-install-recommends postgresql-$PG_MAJOR
        apt-get clean
    " >"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    exit 1
}
umount "$root/proc"

install -m 0755 "$ENTRYPOINT_SRC" "$root/usr/local/bin/docker-entrypoint.sh"
mkdir -p "$root/docker-entrypoint-initdb.d" "$root/var/lib/postgresql/data"
chroot "$root" chown postgres:postgres /var/lib/postgresql/data

# Size: drop what a throw-away database server never reads.
rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf" "$root/etc/hostname"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/usr/share/i18n "$root"/usr/share/postgresql/$PG_MAJOR/man
# LLVM (over half the image) serves only the JIT provider, which the server
# loads on demand: without it JIT is unavailable (pg_jit_available() is
# false) and queries run interpreted, which a test suite does not notice.
rm -rf "$root"/usr/lib/postgresql/$PG_MAJOR/lib/llvmjit* "$root"/usr/lib/postgresql/$PG_MAJOR/lib/bitcode \
    "$root"/usr/lib/*-linux-gnu/libLLVM* "$root"/usr/lib/*-linux-gnu/libz3.so*

previous=$(docker image inspect --format '{{ .Id }}' "$TAG" 2>/dev/null || true)
log "importing as $TAG"
tar -C "$root" --numeric-owner -c . | docker import \
    --change "ENTRYPOINT [\"docker-entrypoint.sh\"]" \
    --change "ENV PATH=/usr/lib/postgresql/$PG_MAJOR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV PGDATA=/var/lib/postgresql/data" \
    --change "ENV LANG=C.UTF-8" \
    --change "EXPOSE 5432" \
    --change "LABEL $LABEL=$recipe" \
    --message "PostgreSQL $PG_MAJOR on Debian $SUITE (scripts/docker/build-postgres-image.sh)" \
    - "$TAG" >/dev/null

if [ -n "$previous" ]; then
    # The replaced build, now untagged; kept if a container still uses it.
    docker image rm "$previous" >/dev/null 2>&1 || true
fi
size=$(docker image inspect --format '{{ .Size }}' "$TAG")
log "built $TAG ($((size / 1024 / 1024)) MiB) in $(($(date +%s) - start)) s"
