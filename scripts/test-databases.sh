#!/usr/bin/env bash
# Throwaway PostgreSQL servers for the test suite, on Debian 12 (bookworm).
#
#   tsdb       PostgreSQL 17 + TimescaleDB (preloaded) + pgvector   port 25432
#   nopreload  the same binaries, TimescaleDB installed but NOT preloaded
#              (pgvector usable, TimescaleDB unusable: the Railway case)   port 25433
#   pg15       Debian 12's own PostgreSQL 15, no extensions at all, with TLS
#              (a certificate for localhost/127.0.0.1 from a test CA)   port 25415
#   outage     like tsdb, for tests that stop and restart their server   port 25434
#
# and a PgBouncer 1.24 in transaction pooling mode in front of each, on the
# port plus 1000 (26432, 26433, 26415, 26434), pool size 20.
#
# PostgreSQL 17, TimescaleDB, pgvector and PgBouncer come from Debian 13 (trixie) .debs
# unpacked into a private prefix with their own libc (bookworm has no
# TimescaleDB or pgvector packages); nothing is installed system-wide except
# postgresql-15 when missing and one system user (PostgreSQL refuses root).
#
#   usage: test-databases.sh setup|start|stop|env
#   `start` (re)creates and starts all four and prints the environment the
#   tests read (TEST_DATABASE_URL_*), one KEY=value per line. `stop` stops
#   them and removes their data (clusters, certificates, logs: hundreds of
#   MB under /tmp) unless VP_PG_KEEP_DATA=1; the unpacked PostgreSQL 17
#   prefix stays, so the next start needs no download.
set -euo pipefail

ROOT=${VP_PG_ROOT:-/tmp/victron-poller-pg}
RUNAS=${VP_PG_USER:-pgtest}
SUITE=trixie
PFX=$ROOT/prefix
BIN17=$PFX/usr/lib/postgresql/17/bin
LIB=$PFX/usr/lib/x86_64-linux-gnu
BIN15=/usr/lib/postgresql/15/bin
PGBOUNCER=$PFX/usr/sbin/pgbouncer
APT=$ROOT/apt

# Below 32768: no client connection can be holding one of these as its
# ephemeral port when a server (re)starts.
declare -A PORT=([tsdb]=25432 [nopreload]=25433 [pg15]=25415 [outage]=25434)
SERVERS="tsdb nopreload pg15 outage"
# A PgBouncer in transaction pooling mode in front of each server: every
# database name is passed through to its server.
declare -A BOUNCER_PORT=([tsdb]=26432 [nopreload]=26433 [pg15]=26415 [outage]=26434)
BOUNCER_POOL_SIZE=20

aptx() {
  apt-get -q \
    -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" \
    -o Dir::State::status=/dev/null \
    -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null \
    -o APT::Sandbox::User=root \
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false \
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false \
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false \
    "$@"
}

PKGS="postgresql-17 postgresql-client-17 postgresql-17-timescaledb postgresql-17-pgvector libpq5
 libc6 libgcc-s1 libstdc++6 zlib1g libzstd1 liblz4-1 libxxhash0 liblzma5 libxml2 libicu76
 libssl3t64 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1
 libldap2 libsasl2-2 libpam0g libaudit1 libcap-ng0 libsystemd0 libcap2
 libreadline8t64 libtinfo6 libuuid1 patchelf"
PGBOUNCER_PKGS="pgbouncer libcares2 libevent-2.1-7t64"

# Downloads the packages named in "$@" from Debian 13 and unpacks them into
# the prefix.
unpack_trixie() {
  rm -rf "$APT"
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs" "$PFX"
  cat >"$APT/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security $SUITE-security main
EOF
  aptx update >/dev/null
  (cd "$APT/debs" && aptx download "$@" >/dev/null)
  for d in "$APT"/debs/*.deb; do dpkg-deb -x "$d" "$PFX"; done
  rm -rf "$APT" # the downloaded packages, unpacked now
}

# Points each ELF executable given at the prefix's own libc and libraries.
patch_elf() {
  local f
  for f in "$@"; do
    if [ "$(head -c4 "$f" | tail -c3)" = ELF ]; then
      "$LIB/ld-linux-x86-64.so.2" --library-path "$LIB" "$PFX/usr/bin/patchelf" \
        --set-interpreter "$LIB/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$LIB" "$f"
    fi
  done
}

setup_pg17() {
  [ -x "$BIN17/postgres" ] && "$BIN17/postgres" -V >/dev/null 2>&1 && return 0
  rm -rf "$PFX"
  # shellcheck disable=SC2086
  unpack_trixie $PKGS
  patch_elf "$BIN17"/*
  rm -f "$PFX/usr/lib/postgresql/17/lib/llvmjit.so" # needs libLLVM; JIT is off anyway
  "$BIN17/postgres" -V >/dev/null
}

# PgBouncer 1.24 into the same prefix: Debian 12's 1.18 cannot carry
# prepared statements in transaction pooling mode.
setup_pgbouncer() {
  [ -x "$PGBOUNCER" ] && "$PGBOUNCER" -V >/dev/null 2>&1 && return 0
  # shellcheck disable=SC2086
  unpack_trixie $PGBOUNCER_PKGS
  patch_elf "$PGBOUNCER"
  "$PGBOUNCER" -V >/dev/null
}

setup_pg15() {
  [ -x "$BIN15/postgres" ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package from creating and starting a system cluster of its own.
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/victron-poller-tests.conf
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends postgresql-15 >/dev/null
}

setup() {
  setup_pg17
  setup_pgbouncer
  setup_pg15
  id -u "$RUNAS" >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$RUNAS"
  chmod 755 "$ROOT"
}

# A test CA, a server certificate it signed (for localhost and 127.0.0.1),
# and a second CA that signed nothing here (the "wrong CA").
make_tls() {
  local dir=$ROOT/tls
  [ -f "$dir/server.key" ] && return 0
  rm -rf "$dir"
  install -d -m 755 "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=victron-poller test CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=some other CA" \
      -keyout wrong-ca.key -out wrong-ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.crt 2>/dev/null
    rm -f ca.key wrong-ca.key server.csr server.ext ca.srl
    chown "$RUNAS" server.key server.crt
    chmod 600 server.key
  )
}

bin_of() { if [ "$1" = pg15 ]; then echo "$BIN15"; else echo "$BIN17"; fi; }

start_one() {
  local name=$1 bin data port preload
  bin=$(bin_of "$name")
  data=$ROOT/data-$name
  port=${PORT[$name]}
  preload=""
  case "$name" in tsdb | outage) preload="timescaledb" ;; esac
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"
    install -d -m 700 -o "$RUNAS" "$data"
    runuser -u "$RUNAS" -- "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 \
      --locale=C --no-sync >"$ROOT/initdb-$name.log"
    cat >>"$data/postgresql.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
shared_preload_libraries = '$preload'
timescaledb.telemetry_level = off
jit = off
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
    [ -z "$preload" ] && sed -i '/timescaledb.telemetry_level/d' "$data/postgresql.conf"
    if [ "$name" = pg15 ]; then
      make_tls
      # 127.0.0.2 is also served, but not in the certificate: a host name mismatch.
      printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\nlisten_addresses = '127.0.0.1,127.0.0.2'\n" \
        "$ROOT/tls/server.crt" "$ROOT/tls/server.key" >>"$data/postgresql.conf"
      sed -i '1i host all all 127.0.0.2/32 trust' "$data/pg_hba.conf"
    fi
    # Members of vp_password_auth must give a real password (trust for the
    # rest): the tests need a server that can refuse credentials.
    sed -i '1i host all +vp_password_auth 127.0.0.1/32 scram-sha-256' "$data/pg_hba.conf"
  fi
  if ! runuser -u "$RUNAS" -- "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    runuser -u "$RUNAS" -- "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
  fi
  "$bin/psql" -X -q "postgres://postgres@127.0.0.1:$port/postgres" -c \
    "DO \$\$ BEGIN CREATE ROLE vp_password_auth NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$"
}

start_bouncer() {
  local name=$1 dir=$ROOT/pgbouncer-$1
  rm -rf "$dir"
  install -d -m 755 -o "$RUNAS" "$dir"
  echo '"postgres" ""' >"$dir/userlist.txt"
  # What README.md tells an operator to set, plus test-only paths.
  cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=${PORT[$name]}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${BOUNCER_PORT[$name]}
unix_socket_dir = $dir
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
pool_mode = transaction
max_prepared_statements = 200
default_pool_size = $BOUNCER_POOL_SIZE
max_client_conn = 2000
server_login_retry = 1
EOF
  runuser -u "$RUNAS" -- "$PGBOUNCER" -d -q "$dir/pgbouncer.ini"
}

stop_bouncer() {
  local pidfile=$ROOT/pgbouncer-$1/pgbouncer.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
}

stop_one() {
  local name=$1 data=$ROOT/data-$1
  [ -f "$data/postmaster.pid" ] &&
    runuser -u "$RUNAS" -- "$(bin_of "$name")/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
}

env_lines() {
  echo "TEST_DATABASE_URL_TSDB=postgres://postgres@127.0.0.1:${PORT[tsdb]}/postgres"
  echo "TEST_DATABASE_URL_NOPRELOAD=postgres://postgres@127.0.0.1:${PORT[nopreload]}/postgres"
  echo "TEST_DATABASE_URL_PG15=postgres://postgres@127.0.0.1:${PORT[pg15]}/postgres"
  echo "TEST_DATABASE_URL_OUTAGE=postgres://postgres@127.0.0.1:${PORT[outage]}/postgres"
  echo "TEST_PGBOUNCER_URL_TSDB=postgres://postgres@127.0.0.1:${BOUNCER_PORT[tsdb]}/postgres"
  echo "TEST_PGBOUNCER_URL_NOPRELOAD=postgres://postgres@127.0.0.1:${BOUNCER_PORT[nopreload]}/postgres"
  echo "TEST_PGBOUNCER_URL_PG15=postgres://postgres@127.0.0.1:${BOUNCER_PORT[pg15]}/postgres"
  echo "TEST_PGBOUNCER_URL_OUTAGE=postgres://postgres@127.0.0.1:${BOUNCER_PORT[outage]}/postgres"
  echo "TEST_OUTAGE_SERVER=$RUNAS:$BIN17/pg_ctl:$ROOT/data-outage"
  echo "TEST_TLS_CA=$ROOT/tls/ca.pem"
  echo "TEST_TLS_WRONG_CA=$ROOT/tls/wrong-ca.pem"
}

start() {
  setup
  stop
  # A fresh cluster every time: tests start from a known server state.
  rm -rf "$ROOT"/data-* "$ROOT"/tls
  for n in $SERVERS; do start_one "$n"; done
  for n in $SERVERS; do start_bouncer "$n"; done
  env_lines
}

stop() {
  for n in $SERVERS; do stop_bouncer "$n"; done
  for n in $SERVERS; do stop_one "$n"; done
  if [ "${VP_PG_KEEP_DATA:-0}" != 1 ]; then
    rm -rf "$ROOT"/data-* "$ROOT"/pgbouncer-* "$ROOT"/tls "$ROOT"/initdb-*.log
  fi
}

case "${1:-start}" in
  setup) setup ;;
  start) start ;;
  stop) stop ;;
  env) env_lines ;;
  *) echo "usage: $0 setup|start|stop|env" >&2; exit 2 ;;
esac
