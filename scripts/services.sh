#!/usr/bin/env bash
# Idempotently installs and starts what Keel's tests need, then waits until each
# service answers. Safe to run any number of times; fails loudly naming the service
# that did not come up.
#
#   scripts/services.sh                 # everything the test tiers need
#   scripts/services.sh postgres kafka  # just these
#
# Pre-started on the build machines: PostgreSQL (5432) and RabbitMQ (5672); they are
# started here only if down. Installed on first use and cached across runs:
#   - Tansu, a Kafka-protocol broker (crates.io `tansu`), into ~/.cargo/bin; listens
#     on 127.0.0.1:9092 with in-memory storage;
#   - Consul 1.8.7 from Debian bullseye's package (a static binary) into
#     /usr/local/bin; runs as a dev agent with its HTTP API on 127.0.0.1:8500;
#   - wrk, nginx-light, haproxy, caddy, docker-compose and prometheus from Debian's packages (the
#     gateway benchmark against its peers, the compose file check, promtool and the scrape test in
#     tests/metrics.rs; nothing of theirs is left running);
#   - chromium and chromium-driver from Debian's packages (the console's browser
#     test starts its own headless chromedriver).
set -euo pipefail

STATE_DIR="${KEEL_SERVICES_DIR:-/var/tmp/keel/services}"
SCHEMATHESIS_VERSION=4.32.5
mkdir -p "$STATE_DIR"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds or time runs out.
wait_for() {
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then die "$name did not come up within ${seconds}s (logs in $STATE_DIR)"; fi
    sleep 0.5
  done
  log "$name is up"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

start_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  wait_for PostgreSQL 60 pg_isready -q -h 127.0.0.1 -p 5432
}

start_rabbitmq() {
  if ! rabbitmqctl -q status >/dev/null 2>&1 || ! port_open 127.0.0.1 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  wait_for RabbitMQ 120 rabbitmqctl -q await_startup
  wait_for "RabbitMQ (AMQP port)" 60 port_open 127.0.0.1 5672
}

start_kafka() {
  if ! type -P tansu >/dev/null 2>&1; then
    log "installing Tansu 0.6.0 from crates.io (first run only; about 8 minutes on 2 cores)"
    cargo install tansu --locked --version 0.6.0 --features dynostore \
      > "$STATE_DIR/tansu-install.log" 2>&1 \
      || die "Kafka broker (Tansu) failed to build; see $STATE_DIR/tansu-install.log"
  fi
  if ! port_open 127.0.0.1 9092; then
    log "starting the Kafka broker (Tansu) on 127.0.0.1:9092"
    nohup tansu broker \
      --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine memory://tansu/ \
      > "$STATE_DIR/tansu.log" 2>&1 &
  fi
  wait_for "Kafka broker (Tansu)" 60 port_open 127.0.0.1 9092
}

start_python_clients() {
  # Independent clients for the interop tests (PyPI's confluent-kafka bundles its own
  # librdkafka; Debian's kcat is too old for Tansu).
  if ! python3 -c 'import confluent_kafka' >/dev/null 2>&1; then
    log "installing confluent-kafka from PyPI (interop tests)"
    python3 -m pip install --quiet confluent-kafka > "$STATE_DIR/pip.log" 2>&1 \
      || die "confluent-kafka failed to install; see $STATE_DIR/pip.log"
  fi
  # schemathesis fuzzes `keel up` from its OpenAPI document (tests/openapi.rs), from
  # its own venv (pinned; its dependencies stay out of the system's Python).
  local venv=/var/tmp/keel/schemathesis
  if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $venv (API tests)"
    { python3 -m venv "$venv" \
        && "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"; } \
      > "$STATE_DIR/schemathesis.log" 2>&1 \
      || die "schemathesis failed to install; see $STATE_DIR/schemathesis.log"
  fi
  log "python interop clients and schemathesis are installed"
}

install_tools() {
  # Debian packages for the gateway benchmark (wrk against nginx, HAProxy and Caddy as
  # the peer proxies) and
  # for checking docker-compose.yml (`docker-compose config`); nothing is started.
  local missing=()
  type -P wrk >/dev/null 2>&1 || missing+=(wrk)
  [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  type -P haproxy >/dev/null 2>&1 || missing+=(haproxy)
  type -P caddy >/dev/null 2>&1 || missing+=(caddy)
  type -P docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  # The console's browser test: headless Chromium driven over WebDriver.
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
  # promtool checks and unit-tests deploy/prometheus; the prometheus binary scrapes
  # `keel up` in tests/metrics.rs (each test runs its own on a free port).
  { type -P promtool && type -P prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
      > "$STATE_DIR/apt.log" 2>&1 \
      || { apt-get update > "$STATE_DIR/apt.log" 2>&1 \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
              >> "$STATE_DIR/apt.log" 2>&1; } \
      || die "${missing[*]} failed to install; see $STATE_DIR/apt.log"
    # The package starts nginx on port 80; Keel's benchmark runs its own instance.
    if [[ " ${missing[*]} " == *" nginx-light "* ]]; then nginx -s stop >/dev/null 2>&1 || true; fi
    # Likewise HAProxy's and Caddy's own services, where an init system started them.
    service haproxy stop >/dev/null 2>&1 || true
    service caddy stop >/dev/null 2>&1 || true
    # Where an init system ran it, the package's own Prometheus (port 9090) is stopped.
    if [[ " ${missing[*]} " == *" prometheus "* ]]; then
      service prometheus stop >/dev/null 2>&1 || true
      service prometheus-node-exporter stop >/dev/null 2>&1 || true
    fi
  fi
  log "tools are installed (wrk, nginx, haproxy, caddy, docker-compose, prometheus, chromium, chromedriver)"
}

consul_installed() { type -P consul >/dev/null 2>&1; }

install_consul() {
  log "installing Consul 1.8.7 from Debian bullseye's package (first run only)"
  local d; d=$(mktemp -d)
  mkdir -p "$d/lists/partial"
  echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main' > "$d/sources.list"
  local o=(-oDir::State::Lists="$d/lists" -oDir::Etc::SourceList="$d/sources.list" -oDir::Etc::SourceParts=/dev/null)
  apt-get "${o[@]}" update > "$STATE_DIR/consul-install.log" 2>&1 \
    && (cd "$d" && apt-get "${o[@]}" download consul >> "$STATE_DIR/consul-install.log" 2>&1) \
    && dpkg-deb -x "$d"/consul_*.deb "$d/root" \
    && install "$d/root/usr/bin/consul" /usr/local/bin/consul \
    || die "Consul failed to install; see $STATE_DIR/consul-install.log"
  rm -rf "$d"
}

start_consul() {
  consul_installed || install_consul
  if ! port_open 127.0.0.1 8500; then
    log "starting Consul (dev agent) on 127.0.0.1:8500"
    nohup "$(type -P consul)" agent -dev -client 127.0.0.1 -bind 127.0.0.1 \
      > "$STATE_DIR/consul.log" 2>&1 &
  fi
  wait_for "Consul" 60 consul_leader
}

consul_leader() {
  local leader
  leader=$(curl -fsS http://127.0.0.1:8500/v1/status/leader 2>/dev/null) || return 1
  [ -n "$leader" ] && [ "$leader" != '""' ]
}

main() {
  local wanted=("$@")
  if [ ${#wanted[@]} -eq 0 ]; then wanted=(postgres rabbitmq consul tools python kafka); fi
  for service in "${wanted[@]}"; do
    case "$service" in
      postgres) start_postgres ;;
      rabbitmq) start_rabbitmq ;;
      kafka) start_kafka ;;
      consul) start_consul ;;
      python) start_python_clients ;;
      tools) install_tools ;;
      *) die "unknown service '$service' (known: postgres rabbitmq kafka consul python tools)" ;;
    esac
  done
}

main "$@"
