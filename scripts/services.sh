#!/usr/bin/env bash
# Idempotently installs and starts what Keel's tests need, then waits until each
# service answers. Safe to run any number of times; fails loudly naming the service
# that did not come up.
#
#   scripts/services.sh            # start everything the test tiers need
#   scripts/services.sh postgres   # just one
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds or time runs out.
wait_for() {
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then die "$name did not come up within ${seconds}s"; fi
    sleep 0.5
  done
  log "$name is up"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  wait_for PostgreSQL 60 pg_isready -q -h 127.0.0.1 -p 5432
}

rabbitmq() {
  if ! port_open 127.0.0.1 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached || true
  fi
  wait_for RabbitMQ 120 port_open 127.0.0.1 5672
}

main() {
  local wanted=("$@")
  if [ ${#wanted[@]} -eq 0 ]; then wanted=(postgres rabbitmq); fi
  for service in "${wanted[@]}"; do
    case "$service" in
      postgres) postgres ;;
      rabbitmq) rabbitmq ;;
      *) die "unknown service '$service' (known: postgres rabbitmq)" ;;
    esac
  done
}

main "$@"
