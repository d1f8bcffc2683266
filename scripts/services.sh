#!/usr/bin/env bash
# Throw-away services for ocipush's integration tests and demo, all on loopback:
#   - a private dockerd (vfs storage, no networking) listening on a unix socket in DIR,
#   - two private Docker 26 dockerds (Debian 13's binaries, fetched by `deps`), one with the classic
#     image store (vfs), one with the containerd image store (native snapshotter),
#   - a docker-registry (CNCF distribution) on 127.0.0.1:<free port>,
#   - a second docker-registry configured read-only, to exercise registry refusals,
#   - podman's Docker-compatible API service (vfs storage in DIR) on a unix socket in DIR.
#
# Usage:
#   scripts/services.sh deps        install what is missing (apt packages, Docker 26, rust target/components)
#   scripts/services.sh docker26    only fetch Debian 13's dockerd 26 + containerd 1.7 (deps does it)
#   scripts/services.sh start DIR   start everything, write DIR/env (source it), pids in DIR/*.pid
#   scripts/services.sh registry DIR NAME   start one more empty registry there, print host:port
#   scripts/services.sh stop DIR    stop exactly the processes started by `start DIR`, remove DIR
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }
die() {
	printf 'services: error: %s\n' "$*" >&2
	exit 1
}

# ---------------------------------------------------------------------------------------------
# deps
# ---------------------------------------------------------------------------------------------

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -n "$@"
	else
		die "need root to run: $*"
	fi
}

cmd_deps() {
	local -a pkgs=()
	command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
	command -v docker >/dev/null 2>&1 || pkgs+=(docker.io)
	command -v docker-registry >/dev/null 2>&1 || pkgs+=(docker-registry)
	command -v skopeo >/dev/null 2>&1 || pkgs+=(skopeo)
	command -v podman >/dev/null 2>&1 || pkgs+=(podman)
	# containers-storage: read through buildah when podman is not there (tests/storage.rs).
	command -v buildah >/dev/null 2>&1 || pkgs+=(buildah)
	command -v curl >/dev/null 2>&1 || pkgs+=(curl)
	command -v htpasswd >/dev/null 2>&1 || pkgs+=(apache2-utils)
	command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
	command -v sha256sum >/dev/null 2>&1 || pkgs+=(coreutils)
	# The host's gzip level 1 is ISA-L's igzip, which the isal-sys crate builds from its source.
	command -v nasm >/dev/null 2>&1 || pkgs+=(nasm)
	command -v autoreconf >/dev/null 2>&1 || pkgs+=(autoconf)
	command -v automake >/dev/null 2>&1 || pkgs+=(automake)
	command -v libtoolize >/dev/null 2>&1 || pkgs+=(libtool)
	command -v make >/dev/null 2>&1 || pkgs+=(make)
	if [ "${#pkgs[@]}" -gt 0 ]; then
		# de-duplicate
		mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
		log "installing apt packages: ${pkgs[*]}"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			"${pkgs[@]}" </dev/null
	else
		log "apt packages: all present"
	fi

	cmd_docker26

	command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) first"
	if command -v rustup >/dev/null 2>&1; then
		if ! rustup target list --installed | grep -qx wasm32-wasip2; then
			log "adding rust target wasm32-wasip2"
			rustup target add wasm32-wasip2 </dev/null
		fi
		local comp
		for comp in rustfmt clippy; do
			if ! rustup component list --installed | grep -q "^${comp}"; then
				log "adding rust component ${comp}"
				rustup component add "${comp}" </dev/null
			fi
		done
	else
		log "rustup not found: assuming wasm32-wasip2, rustfmt and clippy are available"
	fi
}

# ---------------------------------------------------------------------------------------------
# Docker 26, beside Debian 12's Docker 20.10
# ---------------------------------------------------------------------------------------------

# Debian 13's docker.io (dockerd 26) and containerd (1.7) packages hold binaries that run on
# Debian 12 (they need glibc 2.34); runc and docker-init come from Debian 12's docker.io on PATH.
# They are fetched once into this cache and kept, like apt's own installs, so a warm run costs
# nothing and needs no network. The machine's apt setup is never touched: apt-get runs with a
# private sources list, lists, and cache.
DOCKER26_CACHE=${OCIPUSH_DOCKER26_CACHE:-/var/cache/ocipush/docker26}
DOCKER26_BIN=$DOCKER26_CACHE/bin

# The Debian mirror the machine's own sources name (first http(s) URI ending in /debian), so
# a machine behind its own mirror fetches from it; deb.debian.org otherwise.
debian_mirror() {
	local uri
	uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
		2>/dev/null | awk '!/^[[:space:]]*#/ {
			for (i = 1; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { sub(/\/$/, "", $i); print $i; exit }
		}')
	echo "${uri:-http://deb.debian.org/debian}"
}

docker26_ready() {
	[ -x "$DOCKER26_BIN/dockerd" ] && [ -x "$DOCKER26_BIN/containerd" ] && [ -s "$DOCKER26_BIN/VERSIONS" ]
}

cmd_docker26() {
	if docker26_ready; then
		log "Docker 26: cached in $DOCKER26_BIN ($(paste -sd' ' "$DOCKER26_BIN/VERSIONS"))"
		return 0
	fi
	if [ "$(id -u)" -ne 0 ]; then
		as_root env OCIPUSH_DOCKER26_CACHE="$DOCKER26_CACHE" "$0" docker26
		return
	fi
	command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 ||
		die "apt-get and dpkg-deb are needed to fetch Docker 26 (Debian 13's docker.io)"
	mkdir -p "$DOCKER26_CACHE"
	# One fetch at a time (two test runs may start together); the second finds it ready.
	exec 9>"$DOCKER26_CACHE/lock"
	flock 9
	if docker26_ready; then
		exec 9>&-
		return 0
	fi
	# Debian 13's archive keys came to Debian 12 in debian-archive-keyring 2023.3+deb12u2 (12.11).
	local keyring
	keyring=$(dpkg-query -W -f='${Version}' debian-archive-keyring 2>/dev/null || true)
	if ! dpkg --compare-versions "${keyring:-0}" ge 2023.3+deb12u2; then
		log "upgrading debian-archive-keyring (${keyring:-absent}) for Debian 13's archive keys"
		env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
		env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			debian-archive-keyring </dev/null
	fi
	local work mirror
	rm -rf "$DOCKER26_CACHE"/fetch.* # what a failed fetch left (none runs: we hold the lock)
	work=$(mktemp -d "$DOCKER26_CACHE/fetch.XXXXXX")
	mirror=$(debian_mirror)
	mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/apt-cache" "$work/root" "$work/bin"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
		>"$work/sources.list"
	# Private sources, lists and cache (Dir::Cache too, or apt would rebuild the machine's
	# pkgcache.bin from these lists). No DEP-11 metadata: only Packages is needed. The sandbox
	# user is root because _apt cannot write into this root-owned cache; the archive's
	# signatures are still checked.
	local -a apt=(apt-get -q
		-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/apt-cache"
		-o "Dir::Cache::Archives=$work/archives"
		-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
		-o APT::Sandbox::User=root)
	local began=$SECONDS
	log "fetching Debian 13's docker.io and containerd from $mirror (into $DOCKER26_CACHE)"
	"${apt[@]}" update </dev/null >"$work/apt.log" 2>&1 || {
		tail -n 20 "$work/apt.log" >&2
		die "apt-get update of Debian 13 (trixie) failed"
	}
	(cd "$work/archives" && "${apt[@]}" download docker.io containerd </dev/null >>"$work/apt.log" 2>&1) || {
		tail -n 20 "$work/apt.log" >&2
		die "apt-get download docker.io containerd (Debian 13) failed"
	}
	local deb
	for deb in "$work"/archives/*.deb; do
		dpkg-deb -x "$deb" "$work/root"
		dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$work/bin/VERSIONS"
	done
	# Only what a dockerd needs (its docker-init is a link into a package not fetched; Debian 12's serves).
	local f
	for f in usr/sbin/dockerd usr/bin/containerd usr/bin/containerd-shim-runc-v2; do
		[ -x "$work/root/$f" ] || die "Debian 13's packages lack $f"
		mv "$work/root/$f" "$work/bin/"
	done
	local version
	version=$("$work/bin/dockerd" --version) || die "Debian 13's dockerd does not run here"
	version=${version#Docker version }
	[ "${version%%.*}" -ge 25 ] 2>/dev/null ||
		die "Debian 13's dockerd is $version: the tests need Docker >= 25 (OCI-layout save, containerd store)"
	"$work/bin/containerd" --version >/dev/null || die "Debian 13's containerd does not run here"
	rm -rf "$DOCKER26_BIN"
	mv "$work/bin" "$DOCKER26_BIN"
	rm -rf "$work"
	exec 9>&-
	log "Docker 26: $(paste -sd' ' "$DOCKER26_BIN/VERSIONS") in $DOCKER26_BIN (fetched in $((SECONDS - began)) s)"
}

# ---------------------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------------------

# Is something listening on 127.0.0.1:$1 ?
port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
	local p i
	for i in $(seq 1 50); do
		p=$((20000 + (RANDOM * 32768 + RANDOM + i) % 40000))
		if ! port_in_use "$p"; then
			echo "$p"
			return 0
		fi
	done
	die "could not find a free loopback port"
}

# Is process $1 running? (A zombie, dead but not yet reaped by its parent, counts as gone.)
alive() {
	[ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
	local state
	state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null || true)
	[ "$state" != Z ]
}

# wait_for WHAT PID TIMEOUT_S LOG CMD... : run CMD until it succeeds; fail if PID dies or time runs out.
wait_for() {
	local what=$1 pid=$2 timeout=$3 logfile=$4
	shift 4
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if ! alive "$pid"; then
			log "$what exited during startup; last lines of $logfile:"
			tail -n 20 "$logfile" >&2 || true
			return 1
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			log "$what did not answer within ${timeout}s; last lines of $logfile:"
			tail -n 20 "$logfile" >&2 || true
			return 1
		fi
		sleep 0.2
	done
}

# start_registry NAME READONLY(0|1): writes DIR/NAME.yml, DIR/NAME.pid, DIR/NAME.port
start_registry() {
	local name=$1 readonly=$2 attempt port pid
	mkdir -p "$DIR/$name-data"
	for attempt in 1 2 3 4 5; do
		port=$(pick_port)
		{
			echo "version: 0.1"
			echo "log: {level: warn, formatter: text}"
			echo "storage:"
			echo "  filesystem: {rootdirectory: \"$DIR/$name-data\"}"
			echo "  delete: {enabled: true}"
			if [ "$readonly" = 1 ]; then
				echo "  maintenance:"
				echo "    uploadpurging: {enabled: false}"
				echo "    readonly: {enabled: true}"
			fi
			echo "http:"
			echo "  addr: 127.0.0.1:$port"
			echo "  secret: ocipush-test-not-a-secret"
		} >"$DIR/$name.yml"
		docker-registry serve "$DIR/$name.yml" </dev/null >"$DIR/$name.log" 2>&1 &
		pid=$!
		echo "$pid" >"$DIR/$name.pid"
		if wait_for "registry $name (127.0.0.1:$port)" "$pid" 30 "$DIR/$name.log" \
			curl -fsS --max-time 2 "http://127.0.0.1:$port/v2/"; then
			echo "$port" >"$DIR/$name.port"
			log "registry $name: 127.0.0.1:$port (pid $pid)"
			return 0
		fi
		# Most likely lost a race for the port: stop it and try another one.
		stop_pid "$pid" "$DIR/$name.yml"
		log "retrying registry $name on another port (attempt $attempt failed)"
	done
	die "registry $name could not be started (see $DIR/$name.log)"
}

# podman's Docker-compatible API service, everything it keeps inside DIR (vfs storage, no
# network or cgroup setup needed to load, inspect and export images). Starts in well under 1 s.
start_podman() {
	command -v podman >/dev/null 2>&1 || die "podman not found (run: $0 deps)"
	local sock="$DIR/podman.sock" pid
	mkdir -p "$DIR/podman-root" "$DIR/podman-run" "$DIR/podman-tmp"
	podman --root "$DIR/podman-root" --runroot "$DIR/podman-run" --tmpdir "$DIR/podman-tmp" \
		--storage-driver vfs --cgroup-manager cgroupfs --events-backend none \
		system service --time=0 "unix://$sock" </dev/null >"$DIR/podman.log" 2>&1 &
	pid=$!
	echo "$pid" >"$DIR/podman.pid"
	wait_for "podman service" "$pid" 30 "$DIR/podman.log" \
		curl -fsS --max-time 2 --unix-socket "$sock" http://podman/_ping
	log "podman service: unix://$sock (pid $pid)"
}

# launch_dockerd NAME CONFIG_JSON [DOCKERD ARGS...]: a dockerd in the background with everything
# of its own in DIR: socket NAME.sock, NAME-data, NAME-exec (so also its own managed containerd,
# whose socket and state live under the exec root), NAME.json, NAME.log, NAME.pid. Its own
# config file, so a /etc/docker/daemon.json on the machine changes nothing.
launch_dockerd() {
	local name=$1 config=$2
	shift 2
	mkdir -p "$DIR/$name-data" "$DIR/$name-exec"
	printf '%s\n' "$config" >"$DIR/$name.json"
	log "starting $name (socket $DIR/$name.sock)"
	"$@" --config-file "$DIR/$name.json" --iptables=false --ip6tables=false --bridge=none \
		--data-root "$DIR/$name-data" --exec-root "$DIR/$name-exec" \
		--pidfile "$DIR/$name.pidfile" -H "unix://$DIR/$name.sock" \
		</dev/null >"$DIR/$name.log" 2>&1 &
	echo "$!" >"$DIR/$name.pid"
	DOCKERD_STARTED_AT[$name]=$EPOCHREALTIME
}

# await_dockerd NAME: until it answers; records its managed containerd's pid (NAME.containerd.pid)
# so `stop` reaches that too if the dockerd has to be killed.
await_dockerd() {
	local name=$1 pid took
	pid=$(read_pid "$DIR/$name.pid")
	wait_for "$name" "$pid" 90 "$DIR/$name.log" docker -H "unix://$DIR/$name.sock" version
	took=$(awk -v a="${DOCKERD_STARTED_AT[$name]}" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
	log "$name: unix://$DIR/$name.sock (pid $pid, dockerd $(docker -H "unix://$DIR/$name.sock" version \
		-f '{{.Server.Version}}'), answering ${took} s after its start)"
	if [ -s "$DIR/$name-exec/containerd/containerd.pid" ]; then
		cp "$DIR/$name-exec/containerd/containerd.pid" "$DIR/$name.containerd.pid"
	fi
}

cmd_start() {
	[ -n "${DIR:-}" ] || die "usage: $0 start DIR"
	mkdir -p "$DIR"
	DIR=$(cd "$DIR" && pwd -P)
	[ ! -e "$DIR/env" ] || die "$DIR/env exists: services already started there? (stop it first)"
	[ "$(id -u)" -eq 0 ] || die "dockerd needs root: run this as root (CI does)"
	command -v dockerd >/dev/null 2>&1 || die "dockerd not found (run: $0 deps)"
	command -v docker-registry >/dev/null 2>&1 || die "docker-registry not found (run: $0 deps)"
	command -v curl >/dev/null 2>&1 || die "curl not found (run: $0 deps)"
	docker26_ready || die "Docker 26 not found in $DOCKER26_BIN (run: $0 deps)"

	# unix socket paths are limited to 107 bytes; this is the deepest one a dockerd here makes.
	local deepest="$DIR/docker26-containerd-exec/containerd/containerd.sock.ttrpc"
	[ "${#deepest}" -lt 108 ] || die "DIR path too long for unix sockets: $deepest"

	# If anything below fails, do not leave half the services running (DIR and its logs stay).
	START_OK=0
	trap 'if [ "$START_OK" != 1 ]; then log "start failed, stopping what was started (logs kept in $DIR)"; cmd_stop_keep || true; fi' EXIT

	declare -gA DOCKERD_STARTED_AT=()
	# Debian 12's Docker 20.10 (classic store), the daemon most tests use.
	launch_dockerd docker '{}' dockerd --storage-driver=vfs
	# Docker 26 with the classic store, and with the containerd image store: their `docker save`
	# dialects (OCI layouts) and image IDs differ. Debian 13's containerd first on PATH, so each
	# starts a containerd 1.7 of its own; the snapshotter is pinned off for the classic one in
	# case a later default changes it.
	PATH="$DOCKER26_BIN:$PATH" launch_dockerd docker26 \
		'{"features": {"containerd-snapshotter": false}, "storage-driver": "vfs"}' "$DOCKER26_BIN/dockerd"
	PATH="$DOCKER26_BIN:$PATH" launch_dockerd docker26-containerd \
		'{"features": {"containerd-snapshotter": true}, "storage-driver": "native"}' "$DOCKER26_BIN/dockerd"

	# Start the registries and podman's service while the dockerds boot.
	start_registry registry 0
	start_registry registry-ro 1
	start_podman

	await_dockerd docker
	await_dockerd docker26
	await_dockerd docker26-containerd

	# A read-only registry must actually refuse writes, or the refusal tests prove nothing.
	local ro_port code
	ro_port=$(cat "$DIR/registry-ro.port")
	code=$(curl -s -o /dev/null -w '%{http_code}' -X POST \
		"http://127.0.0.1:$ro_port/v2/probe/blobs/uploads/")
	if [ "$code" = 202 ]; then
		die "registry-ro on 127.0.0.1:$ro_port accepted an upload: read-only mode not in effect"
	fi

	cat >"$DIR/env.tmp" <<EOF
export DOCKER_HOST=unix://$DIR/docker.sock
export OCIPUSH_TEST_DOCKER26_HOST=unix://$DIR/docker26.sock
export OCIPUSH_TEST_DOCKER26_CONTAINERD_HOST=unix://$DIR/docker26-containerd.sock
export OCIPUSH_TEST_REGISTRY=127.0.0.1:$(cat "$DIR/registry.port")
export OCIPUSH_TEST_READONLY_REGISTRY=127.0.0.1:$ro_port
export OCIPUSH_TEST_PODMAN_HOST=unix://$DIR/podman.sock
export OCIPUSH_TEST_DIR=$DIR
# ocipush's cache (digests, compiled guest) lives and dies with these services.
export OCIPUSH_CACHE_DIR=$DIR/cache
EOF
	mv "$DIR/env.tmp" "$DIR/env"
	START_OK=1
	log "ready; environment in $DIR/env"
}

# ---------------------------------------------------------------------------------------------
# stop
# ---------------------------------------------------------------------------------------------

# stop_pid PID MARKER: TERM, wait up to 20s, then KILL -- but only if the process's command line
# still mentions MARKER (our DIR), so a recycled pid is never touched.
stop_pid() {
	local pid=$1 marker=$2 i
	[ -n "$pid" ] || return 0
	alive "$pid" || return 0
	if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"; then
		log "pid $pid is no longer ours (command line lacks $marker); not touching it"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || return 0
	for i in $(seq 1 100); do
		alive "$pid" || return 0
		sleep 0.2
	done
	log "pid $pid ignored SIGTERM for 20s; sending SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	for i in $(seq 1 25); do
		alive "$pid" || return 0
		sleep 0.2
	done
	log "pid $pid still alive after SIGKILL"
}

read_pid() {
	if [ -s "$1" ]; then tr -dc "0-9" <"$1"; fi
}

# Stop everything recorded in DIR but keep DIR (used on a failed start, so the logs survive).
cmd_stop_keep() {
	local name
	for name in docker docker26 docker26-containerd; do
		# dockerd first: it stops its own containerd on SIGTERM.
		stop_pid "$(read_pid "$DIR/$name.pid")" "$DIR"
		# If dockerd had to be killed, its containerd is orphaned: stop it too.
		stop_pid "$(read_pid "$DIR/$name.containerd.pid")" "$DIR"
		stop_pid "$(read_pid "$DIR/$name-exec/containerd/containerd.pid")" "$DIR"
	done
	stop_pid "$(read_pid "$DIR/podman.pid")" "$DIR"
	# The two standard registries and any added with `registry DIR NAME`.
	local pidfile
	for pidfile in "$DIR"/registry*.pid; do
		[ -e "$pidfile" ] || continue
		stop_pid "$(read_pid "$pidfile")" "$DIR"
	done
	# Unmount anything dockerd/containerd left mounted under DIR, deepest first.
	local mp
	awk -v d="$DIR" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts |
		sort -r | while read -r mp; do
		mp=$(printf '%b' "$mp") # /proc/mounts escapes spaces as \040
		log "unmounting $mp"
		umount "$mp" 2>/dev/null || umount -l "$mp" || log "could not unmount $mp"
	done
}

cmd_stop() {
	[ -n "${DIR:-}" ] || die "usage: $0 stop DIR"
	[ -d "$DIR" ] || {
		log "$DIR does not exist; nothing to stop"
		return 0
	}
	DIR=$(cd "$DIR" && pwd -P)
	[ "$DIR" != / ] || die "refusing to operate on /"
	cmd_stop_keep
	# vfs layers can contain read-only directories: make them writable before removal.
	chmod -R u+rwX "$DIR" 2>/dev/null || true
	rm -rf --one-file-system "$DIR" || log "could not remove everything under $DIR"
	log "stopped and removed $DIR"
}

# Start one more (empty) registry in a started DIR; print its address. `stop DIR` stops it too.
cmd_registry() {
	[ -n "${DIR:-}" ] && [ -n "${NAME:-}" ] || die "usage: $0 registry DIR NAME"
	[ -e "$DIR/env" ] || die "$DIR is not a started services dir (run: $0 start $DIR)"
	DIR=$(cd "$DIR" && pwd -P)
	start_registry "registry-$NAME" 0 || die "registry $NAME did not start"
	echo "127.0.0.1:$(cat "$DIR/registry-$NAME.port")"
}

case "${1:-}" in
deps) cmd_deps ;;
docker26) cmd_docker26 ;;
registry)
	DIR=${2:-}
	NAME=${3:-}
	cmd_registry
	;;
start)
	DIR=${2:-}
	cmd_start
	;;
stop)
	DIR=${2:-}
	cmd_stop
	;;
*)
	echo "usage: $0 deps | docker26 | start DIR | registry DIR NAME | stop DIR" >&2
	exit 2
	;;
esac
