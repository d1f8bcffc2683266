#!/usr/bin/env bash
# Rebuilds the guest component from source, exactly as host/build.rs does, in a fresh target
# directory, and prints its digest. An auditor compares it with `ocipush guest info`:
#
#   scripts/guest-digest.sh            # sha256:...  (rustc 1.95 with the wasm32-wasip2 target)
#   target/release/ocipush guest info  # digest: sha256:...
#
# Same source, same toolchain (rustc 1.95) and same Cargo.lock give the same bytes, wherever the
# checkout and cargo's home are.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
out=$(mktemp -d "${TMPDIR:-/tmp}/ocipush-guest-digest.XXXXXX")
trap 'rm -rf "$out"' EXIT
cd "$root"
env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET -u RUSTC_WORKSPACE_WRAPPER -u RUSTC_WRAPPER \
	CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="-C target-feature=+simd128 --remap-path-prefix=$root=/ocipush --remap-path-prefix=$cargo_home=/cargo" \
	cargo build --quiet --release --locked -p ocipush-guest --target wasm32-wasip2 --target-dir "$out" </dev/null
echo "sha256:$(sha256sum "$out/wasm32-wasip2/release/ocipush_guest.wasm" | cut -d' ' -f1)"
