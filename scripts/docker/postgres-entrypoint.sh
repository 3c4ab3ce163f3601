#!/bin/sh
# Entrypoint of the locally built PostgreSQL image (see build-postgres-image.sh).
#
# It follows the official postgres image's interface, so the same containers
# (testcontainers' PostgresContainer among them) run on either image:
#   POSTGRES_PASSWORD  required; host connections authenticate with it
#                      (scram-sha-256), unless POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER      superuser created by initdb (default: postgres)
#   POSTGRES_DB        database created on first start (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD, PGDATA
#   /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh run once, on the
#   first start, against POSTGRES_DB (a non-executable *.sh is sourced).
# Arguments starting with "-" are passed to postgres ("-c fsync=off"); any
# other command runs instead of the server.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:=}"
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
: "${POSTGRES_INITDB_ARGS:=}"
export PGDATA POSTGRES_USER POSTGRES_DB

if [ "$#" -eq 0 ] || [ "$1" = postgres ]; then
    [ "$#" -eq 0 ] || shift
elif [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

log() { echo "entrypoint: $*" >&2; }

as_postgres() {
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
}

# SQL identifier quoting for names taken from the environment.
ident() { printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"; }

if [ "$(id -u)" != 0 ]; then
    log "must start as root (it drops to the postgres user itself)"
    exit 1
fi

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
chmod 2775 /var/run/postgresql

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        log "POSTGRES_PASSWORD is empty: set it (or POSTGRES_HOST_AUTH_METHOD=trust)"
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of options
    as_postgres initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" \
        $POSTGRES_INITDB_ARGS >/dev/null
    rm -f "$pwfile"
    # initdb allows host connections from loopback only; the published port
    # reaches the server from the bridge's gateway, so accept any address,
    # still with the password.
    echo "host all all all $POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"

    # The set-up runs on a server reachable through the socket only, so a
    # client polling the port (as testcontainers does) cannot mistake it for
    # the final server.
    as_postgres pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
    trap 'as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null; exit 143' TERM INT
    psql_init() {
        psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" "$@"
    }
    if [ "$POSTGRES_DB" != postgres ]; then
        # psql interpolates variables in scripts read from stdin, not in -c.
        exists=$(echo "SELECT 1 FROM pg_database WHERE datname = :'db'" |
            psql_init --dbname postgres -tA -v db="$POSTGRES_DB")
        if [ -z "$exists" ]; then
            psql_init --dbname postgres -qc "CREATE DATABASE $(ident "$POSTGRES_DB")"
        fi
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        case "$f" in
            *.sh)
                log "running $f"
                if [ -x "$f" ]; then "$f"; else . "$f"; fi
                ;;
            *.sql)
                log "running $f"
                psql_init --dbname "$POSTGRES_DB" -q -f "$f"
                ;;
            *.sql.gz)
                log "running $f"
                gzip -dc "$f" | psql_init --dbname "$POSTGRES_DB" -q
                ;;
            *) log "ignoring $f" ;;
        esac
    done
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    trap - TERM INT
    log "database initialised"
fi

# The shell stays PID 1 so that `docker stop`'s SIGTERM becomes a fast
# shutdown (SIGINT): on SIGTERM postgres would wait for every client to
# disconnect, and the engine would kill it after its grace period.
pid=
stop() {
    [ -z "$pid" ] || kill -INT "$pid" 2>/dev/null || true
}
trap stop TERM INT
# Not through as_postgres: a function run in the background is a subshell,
# and $! would name the subshell instead of the server.
setpriv --reuid=postgres --regid=postgres --init-groups -- postgres "$@" &
pid=$!
while :; do
    wait "$pid" && status=0 || status=$?
    # wait also returns when a trapped signal arrives; a server still there
    # (or not yet reaped) is waited for again, so its own status is the exit status.
    kill -0 "$pid" 2>/dev/null || break
done
exit "$status"
