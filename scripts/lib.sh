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
# target/guest; exports OCIPUSH_TEST_GUESTS, where the tests find them.
build_test_guests() {
	phase "building the misbehaving test guests (tests/guests)"
	cargo build --release --locked --target wasm32-wasip2 --target-dir target/guest -p misbehaving-guest -p alien-guest
	export OCIPUSH_TEST_GUESTS=$PWD/target/guest/wasm32-wasip2/release
}
