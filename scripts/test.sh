#!/usr/bin/env bash
# Keel's test command: starts what the tests need, then runs every tier.
#
#   scripts/test.sh
#
# 1. scripts/services.sh installs and starts the services (idempotent);
# 2. formatting and clippy (warnings are errors);
# 3. unit, conformance, integration and end-to-end tests with cargo-nextest
#    (`--all-features` turns on the `integration` feature that gates the tests
#    needing real services), then the doc tests;
# 4. the API docs (`cargo doc`, warnings are errors: broken links, missing docs);
# 5. packaging: every publishable crate is packaged and verified (built from its
#    .crate file, against the other packaged crates).
#
# Builds go to $CARGO_TARGET_DIR (default /var/tmp/keel/target, outside the clone, so a
# fresh clone on the same machine reuses earlier builds).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/keel/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n==> %s (%s)\n' "$*" "$(date +%T)"; }

step "services"
scripts/services.sh

step "dropping databases left by earlier test runs"
for db in $(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'keel\_t\_%'"); do
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

# Tests that restart or cut off a broker run alone afterwards, so they cannot
# disturb the others; they are named `broker_restarts*` or `disrupt_*`. The fault
# harness (tests/faults.rs: a dozen processes under load and faults) runs alone too,
# so it neither starves the others of the machine's cores nor is starved by them.
disruptive='test(/broker_restarts|disrupt_/) | binary_id(keel-cli::faults)'

step "tests (nextest, every tier)"
cargo nextest run --workspace --all-features --locked --profile ci -E "not ($disruptive)"

# The fault harness runs the services' own binaries; cargo builds a package's binaries
# for its own integration tests only, and keel-products has none.
step "service binaries for the fault harness"
cargo build --workspace --bins --all-features --locked

step "broker-disrupting tests and the fault harness, one at a time"
cargo nextest run --workspace --all-features --locked --profile ci -E "$disruptive" \
  --test-threads 1 --no-tests pass

step "doc tests"
cargo test --workspace --all-features --locked --doc

step "API docs (rustdoc warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --locked

# Verification builds each packaged crate again from its .crate file, against the
# other packaged crates served from a local registry. Cargo treats those as registry
# crates, which never change once published: it unpacks each one once into
# $CARGO_HOME/registry/src/<that registry>/ and never unpacks it again, and never
# fingerprints its builds by content. So keel-core 0.1.0 unpacked or built by an
# earlier run would be used although the source changed. Verification therefore builds
# in its own target directory, and Keel's crates are removed first from it and from
# Cargo's unpacked sources of every registry but crates.io; the crates.io dependencies
# stay cached. The test kit and examples/ are `publish = false` and are left out.
package_target="$CARGO_TARGET_DIR/package-verify"
rm -rf "$package_target"/debug/.fingerprint/keel* "$package_target"/debug/deps/libkeel* \
  "$package_target"/debug/deps/keel* "$package_target"/package
for unpacked in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
  case "$(basename "$unpacked")" in index.crates.io-*) continue ;; esac
  rm -rf "$unpacked"keel-*
done
step "cargo package (with verification)"
CARGO_TARGET_DIR="$package_target" cargo package --workspace --locked --exclude keel-testkit \
  --exclude keel-example-hello-events --exclude keel-example-guide-service \
  --exclude keel-example-notifications

step "done"
