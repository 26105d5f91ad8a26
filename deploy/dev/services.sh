#!/usr/bin/env bash
# Ensure the services the tests need are installed and running on this machine:
# PostgreSQL (127.0.0.1:5432, database "test", user postgres, trust on loopback), Redis (6379),
# Mosquitto (1883). Installs them with apt when missing and we are root; starts what is down.
# Idempotent: running it again changes nothing when everything is up.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  log "$2 did not open port $1"; return 1
}

missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v redis-server >/dev/null || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${missing[*]}; install them (sudo apt-get install ${missing[*]}) or run as root"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" postgresql-client >/dev/null
fi
export PATH="$PATH:/usr/sbin"

# --- PostgreSQL -----------------------------------------------------------------------------
if ! port_open 5432; then
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -z "$ver" ]; then log "no PostgreSQL cluster in /etc/postgresql"; exit 1; fi
  hba="/etc/postgresql/$ver/main/pg_hba.conf"
  if [ -w "$hba" ] && ! grep -q '^# platewatch-tests' "$hba"; then
    # Loopback trust for the test user, first so it wins; a test machine only.
    { echo '# platewatch-tests: loopback trust for the test suite'
      echo 'host all all 127.0.0.1/32 trust'
      echo 'host all all ::1/128 trust'
      cat "$hba"; } > "$hba.new" && mv "$hba.new" "$hba"
    chown postgres:postgres "$hba" 2>/dev/null || true
  fi
  log "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || pg_ctlcluster "$ver" main start
  wait_port 5432 PostgreSQL
fi
if command -v psql >/dev/null; then
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
    log "PostgreSQL refuses postgres@127.0.0.1 without a password; allow loopback trust"; exit 1
  fi
  if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='test'")" != 1 ]; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test' >/dev/null
  fi
fi

# --- Redis ----------------------------------------------------------------------------------
if ! port_open 6379; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log 2>/dev/null \
    || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 Redis
fi

# --- Mosquitto ------------------------------------------------------------------------------
if ! port_open 1883; then
  log "starting Mosquitto"
  if [ -f /etc/mosquitto/mosquitto.conf ]; then
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
  else
    mosquitto -d -p 1883
  fi
  wait_port 1883 Mosquitto
fi
log "PostgreSQL, Redis and Mosquitto are up"
