# Shared by test.sh, demo.sh and coverage.sh (sourced, not run). Sourcing it moves to the
# repository root and closes stdin, so they work from any directory and non-interactively.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null

# phase TEXT: a timestamped line saying what comes next.
phase() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# install_deps: the apt packages and Rust target/components the services and builds need.
install_deps() {
	phase "installing what is missing"
	./scripts/services.sh deps
}

# start_services NAME: a private dockerd and registries (scripts/services.sh) in a new temp dir,
# stopped however the script ends; sets SERVICES_DIR and sources the services' env.
start_services() {
	phase "starting dockerd and registries"
	SERVICES_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ocipush-$1.XXXXXX")
	trap stop_services EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	./scripts/services.sh start "$SERVICES_DIR"
	# shellcheck source=/dev/null
	. "$SERVICES_DIR/env"
}

stop_services() {
	local rc=$?
	phase "stopping services"
	./scripts/services.sh stop "$SERVICES_DIR" || true
	exit "$rc"
}

# build_test_guests: the misbehaving and foreign guests tests/guest.rs runs (tests/guests), in
# target/guest, and the example policy guest tests/policy.rs runs (scripts/example-guest.sh);
# exports OCIPUSH_TEST_GUESTS, where the tests find the former, and OCIPUSH_TEST_POLICY_GUEST.
build_test_guests() {
	phase "building the misbehaving test guests (tests/guests)"
	cargo build --release --locked --target wasm32-wasip2 --target-dir target/guest -p misbehaving-guest -p alien-guest
	export OCIPUSH_TEST_GUESTS=$PWD/target/guest/wasm32-wasip2/release
	phase "building the example policy guest (scripts/example-guest.sh)"
	OCIPUSH_TEST_POLICY_GUEST=$(./scripts/example-guest.sh | tail -n 1)
	export OCIPUSH_TEST_POLICY_GUEST
}

# build_component PACKAGE TARGET_DIR: builds the workspace's PACKAGE for wasm32-wasip2 exactly as
# host/build.rs builds the embedded guest: no outer flags, simd128, and the checkout's and cargo
# home's paths remapped out of the binary, so the same source, Cargo.lock and toolchain give the
# same bytes wherever they are built.
build_component() {
	local root cargo_home
	root=$(pwd -P)
	cargo_home=${CARGO_HOME:-$HOME/.cargo}
	env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET -u RUSTC_WORKSPACE_WRAPPER -u RUSTC_WRAPPER \
		CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="-C target-feature=+simd128 --remap-path-prefix=$root=/ocipush --remap-path-prefix=$cargo_home=/cargo" \
		cargo build --quiet --release --locked -p "$1" --target wasm32-wasip2 --target-dir "$2" </dev/null
}
