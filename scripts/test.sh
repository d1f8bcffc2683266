#!/usr/bin/env bash
# The single test command: formatting, guest unit tests, host unit tests and the integration
# tests (tests/push.rs) against a private dockerd and registries started by scripts/services.sh.
# Works non-interactively (CI=true, no stdin). Extra arguments go to the integration test binary
# (e.g. `./scripts/test.sh pushes_loaded` or `./scripts/test.sh --nocapture`).
set -euo pipefail

cd "$(dirname "$0")/.."
exec </dev/null

phase() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

phase "installing what is missing"
./scripts/services.sh deps

phase "checking formatting (cargo fmt --all --check)"
cargo fmt --all --check

phase "linting (cargo clippy, warnings are errors)"
cargo clippy --release --workspace --all-targets -- -D warnings

phase "starting dockerd and registries"
SERVICES_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ocipush-test.XXXXXX")
cleanup() {
	local rc=$?
	phase "stopping services"
	./scripts/services.sh stop "$SERVICES_DIR" || true
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
./scripts/services.sh start "$SERVICES_DIR"
# shellcheck source=/dev/null
. "$SERVICES_DIR/env"
echo "DOCKER_HOST=$DOCKER_HOST"
echo "OCIPUSH_TEST_REGISTRY=$OCIPUSH_TEST_REGISTRY"
echo "OCIPUSH_TEST_READONLY_REGISTRY=$OCIPUSH_TEST_READONLY_REGISTRY"

phase "guest unit tests (cargo test --release -p ocipush-guest)"
cargo test --release -p ocipush-guest

phase "host unit tests and integration tests (cargo test --release -p ocipush)"
cargo test --release -p ocipush -- "$@"

phase "all tests passed"
