#!/usr/bin/env bash
# fuzz-smoke.sh [SECONDS]: every cargo-fuzz target (fuzz/) for SECONDS each (default 10), with
# AddressSanitizer, starting from its kept corpus. Installs cargo-fuzz if it is missing. New
# inputs go to a temp dir, never into fuzz/corpus; a crash fails the run and its input is copied
# to fuzz/artifacts/ with the command that reproduces it. Run by scripts/test.sh.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds=${1:-10}
# cargo-fuzz's flags are nightly-only; RUSTC_BOOTSTRAP unlocks them on the stable toolchain.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
	cargo install cargo-fuzz --version 0.13.2 --locked
fi
cargo fuzz build

scratch=$(mktemp -d "${TMPDIR:-/tmp}/ocipush-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $(cargo fuzz list); do
	mkdir -p "$scratch/$target"
	if cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
		-max_total_time="$seconds" -artifact_prefix="$scratch/$target-" \
		>"$scratch/$target.log" 2>&1; then
		# libFuzzer's last line: "Done N runs in S second(s)".
		echo "fuzz-smoke: $target: $(tail -n 1 "$scratch/$target.log")"
	else
		tail -n 40 "$scratch/$target.log"
		mkdir -p artifacts
		for crash in "$scratch/$target"-*; do
			[ -e "$crash" ] || continue
			cp "$crash" artifacts/
			echo "fuzz-smoke: $target failed on fuzz/artifacts/${crash##*/};" \
				"reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $target artifacts/${crash##*/}"
		done
		failed+=("$target")
	fi
done
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz-smoke: failed: ${failed[*]}" >&2
	exit 1
fi
