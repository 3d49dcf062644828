#!/usr/bin/env bash
# Real PostgreSQL and Redis servers for the tests that need them (replicas on one database and one
# Redis, the PostgreSQL migrations and billing tests).
#
#   eval "$(scripts/services.sh start)"   # installs what is missing, starts both, prints exports
#   scripts/services.sh stop "$TOLLGATE_SERVICES_DIR"
#
# `start` installs PostgreSQL and Redis with apt-get when they are missing (apt-get update first,
# non-interactive; needs root), then starts both on free 127.0.0.1 ports in a fresh temporary
# directory: PostgreSQL as the unprivileged `postgres` system user when run as root (it refuses to
# run as root), trust authentication on 127.0.0.1 only, no persistence for Redis. It prints, for
# `eval`:
#   TOLLGATE_SERVICES_DIR       the temporary directory (logs, data, pid files)
#   TOLLGATE_TEST_POSTGRES_URL  postgres://tollgate@127.0.0.1:PORT/tollgate
#   TOLLGATE_TEST_REDIS_URL     redis://127.0.0.1:PORT
#   TOLLGATE_TEST_PSQL          the psql client, for tests that read the database
# Everything else goes to stderr. `stop DIR` stops both and removes DIR.
set -euo pipefail

log() { echo "services.sh: $*" >&2; }

pg_bin_dir() {
    local initdb
    initdb="$(ls -1 /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$initdb" ]; then
        dirname "$initdb"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

install_missing() {
    local packages=()
    [ -n "$(pg_bin_dir)" ] || packages+=(postgresql)
    command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
    [ "${#packages[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing ${packages[*]} and not root: install them first"
        exit 1
    fi
    log "installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${packages[@]}" >&2
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Runs a command as the user PostgreSQL runs as.
as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    install_missing
    local dir pg_bin pg_port redis_port
    dir="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-services.XXXXXX")"
    chmod 755 "$dir"
    pg_bin="$(pg_bin_dir)"
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir "$dir" --shell /usr/sbin/nologin postgres
    fi

    # PostgreSQL: a throwaway cluster, owned by the postgres user.
    mkdir -p "$dir/pg"
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir/pg"
    as_pg_user "$pg_bin/initdb" -D "$dir/pg/data" -U tollgate -A trust --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    pg_port="$(free_port)"
    as_pg_user "$pg_bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/postgres.log" -w -t 60 \
        -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $dir/pg -c max_connections=200 -c fsync=on" \
        start >&2
    "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U tollgate tollgate >&2

    # Redis: no persistence, this directory only.
    redis_port="$(free_port)"
    redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
        --daemonize yes --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >&2
    local tries=0
    until redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -ge 100 ]; then
            log "redis did not answer on port $redis_port"
            cat "$dir/redis.log" >&2
            exit 1
        fi
        sleep 0.1
    done

    echo "$pg_bin" >"$dir/pg_bin"
    log "PostgreSQL on 127.0.0.1:$pg_port, Redis on 127.0.0.1:$redis_port ($dir)"
    echo "export TOLLGATE_SERVICES_DIR='$dir'"
    echo "export TOLLGATE_TEST_POSTGRES_URL='postgres://tollgate@127.0.0.1:$pg_port/tollgate'"
    echo "export TOLLGATE_TEST_REDIS_URL='redis://127.0.0.1:$redis_port'"
    echo "export TOLLGATE_TEST_PSQL='$pg_bin/psql'"
}

stop() {
    local dir="${1:?usage: services.sh stop DIR}"
    [ -d "$dir" ] || return 0
    if [ -f "$dir/redis.pid" ]; then
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    fi
    if [ -f "$dir/pg_bin" ] && [ -d "$dir/pg/data" ]; then
        as_pg_user "$(cat "$dir/pg_bin")/pg_ctl" -D "$dir/pg/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *)
        echo "usage: $0 start | stop DIR" >&2
        exit 2
        ;;
esac
