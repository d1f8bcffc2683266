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
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
out=$(mktemp -d "${TMPDIR:-/tmp}/ocipush-guest-digest.XXXXXX")
trap 'rm -rf "$out"' EXIT
build_component ocipush-standard-guest "$out"
echo "sha256:$(sha256sum "$out/wasm32-wasip2/release/ocipush_standard_guest.wasm" | cut -d' ' -f1)"
