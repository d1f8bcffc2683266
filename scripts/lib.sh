# Shared by test.sh and demo.sh (sourced, not run).

# phase TEXT: a timestamped line saying what comes next.
phase() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

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
