#!/usr/bin/env bash
# Builds examples/policy, a guest of one's own, into a component (wasm32-wasip2) the way the
# standard guest is built (scripts/lib.sh build_component: the same source gives the same bytes
# anywhere), and prints its digest, then its path as the last line:
#
#   guest=$(scripts/example-guest.sh | tail -n 1)
#   ocipush --guest "$guest" push app:1 127.0.0.1:5000/approved/app:1
#
# It shares target/guest with the standard guest host/build.rs builds (same flags, same
# library), and stays there until the next build.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
build_component ocipush-policy-example target/guest
wasm=$PWD/target/guest/wasm32-wasip2/release/ocipush_policy_example.wasm
echo "sha256:$(sha256sum "$wasm" | cut -d' ' -f1)"
echo "$wasm"
