#!/usr/bin/env bash
# Line coverage of the guest, the host and its parser together, measured with cargo-llvm-cov:
# the guest and parser unit tests, the host unit tests and the integration tests (tests/*.rs)
# against the services scripts/test.sh starts, with the `ocipush` binary instrumented as the
# tests run it (`cargo llvm-cov test` sets LLVM_PROFILE_FILE, which the binary inherits). The
# guest counts through its native unit tests: the wasm32 build the host embeds cannot be
# instrumented (host/build.rs builds it without cargo-llvm-cov's wrappers).
#
# Builds into target/llvm-cov-target, apart from the normal build (about 15 minutes on 2 cores
# from cold). Not run by test.sh or CI. Prints the per-file report, the five files with the
# lowest line coverage, and last `line coverage NN.N%` (files under tests/ and fuzz/ left out).
# Exits 1 after the report if any test failed.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

install_deps
phase "installing the jco test's JS dependencies (npm ci --prefix tests/jco)"
npm ci --prefix tests/jco --no-audit --no-fund --prefer-offline --loglevel=error

phase "installing cargo-llvm-cov and llvm-tools-preview where missing"
cargo llvm-cov --version >/dev/null 2>&1 || cargo install cargo-llvm-cov --locked
rustup component list --installed | grep -q '^llvm-tools' || rustup component add llvm-tools-preview

start_services coverage
build_test_guests

phase "removing earlier profiles and instrumented workspace builds (cargo llvm-cov clean --workspace)"
cargo llvm-cov clean --workspace

# A failing test still leaves its profiles, and --no-fail-fast runs every test binary after it:
# the report is made either way, and the exit status says the run was not clean.
failed=()
phase "guest and parser unit tests, instrumented"
cargo llvm-cov test --no-report --release --locked --no-fail-fast -p ocipush-guest -p ocipush-parse ||
	failed+=("guest and parser unit tests")
phase "host unit tests and integration tests, instrumented"
cargo llvm-cov test --no-report --release --locked --no-fail-fast -p ocipush || failed+=("host tests")

phase "coverage report (cargo llvm-cov report --release)"
report=$SERVICES_DIR/coverage.txt
cargo llvm-cov report --release --ignore-filename-regex '(^|/)(tests|fuzz)/' >"$report"
cat "$report"
echo
echo "lowest line coverage:"
awk '$1 ~ /\// { print "  " $10 "  " $1 }' "$report" | sort -n | head -n 5
if [ "${#failed[@]}" -gt 0 ]; then
	echo "coverage.sh: failed: ${failed[*]}; the figure below counts what ran" >&2
fi
# Columns of the TOTAL row: regions, missed, cover, functions, missed, executed, lines, missed.
awk '$1 == "TOTAL" { printf "line coverage %.1f%%\n", 100 * ($8 - $9) / $8 }' "$report"
[ "${#failed[@]}" -eq 0 ]
