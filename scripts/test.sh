#!/usr/bin/env bash
# The single test command: formatting, lints, guest unit tests, host unit tests, the integration
# tests (tests/*.rs) against a private dockerd and registries started by scripts/services.sh, the
# second host of the guest (tests/jco, Node.js), a check that the guest builds reproducibly, and
# a short run of every fuzz target (scripts/fuzz-smoke.sh).
# Works non-interactively (CI=true, no stdin). Extra arguments go to the integration test binary
# (e.g. `./scripts/test.sh pushes_loaded` or `./scripts/test.sh --nocapture`).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

install_deps

phase "installing the jco test's JS dependencies (npm ci --prefix tests/jco)"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' 2>/dev/null &&
	command -v npm >/dev/null 2>&1 ||
	{ echo "test.sh: tests/jco.rs needs node >= 20.19 and npm (Debian 12's nodejs is 18)" >&2; exit 1; }
npm ci --prefix tests/jco --no-audit --no-fund --prefer-offline --loglevel=error

phase "checking formatting (cargo fmt --all --check)"
cargo fmt --all --check

phase "linting (cargo clippy, warnings are errors)"
cargo clippy --release --workspace --all-targets -- -D warnings

start_services test
echo "DOCKER_HOST=$DOCKER_HOST"
echo "OCIPUSH_TEST_REGISTRY=$OCIPUSH_TEST_REGISTRY"
echo "OCIPUSH_TEST_READONLY_REGISTRY=$OCIPUSH_TEST_READONLY_REGISTRY"

phase "guest, example policy and parser unit tests (cargo test --release -p ocipush-guest -p ocipush-policy-example -p ocipush-parse)"
cargo test --release -p ocipush-guest -p ocipush-policy-example -p ocipush-parse

build_test_guests

phase "host unit tests and integration tests (cargo test --release -p ocipush)"
cargo test --release -p ocipush -- "$@"

phase "the guest builds reproducibly (scripts/guest-digest.sh vs ocipush guest info)"
rebuilt=$(./scripts/guest-digest.sh)
embedded=$(target/release/ocipush guest info | awk '/^digest:/ { print $2 }')
echo "rebuilt $rebuilt, embedded $embedded"
[ "$rebuilt" = "$embedded" ] || { echo "test.sh: the guest did not rebuild to the same bytes" >&2; exit 1; }

phase "fuzz smoke run: every cargo-fuzz target for 10 s with AddressSanitizer (scripts/fuzz-smoke.sh)"
./scripts/fuzz-smoke.sh 10

phase "all tests passed"
