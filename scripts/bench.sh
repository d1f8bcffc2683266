#!/usr/bin/env bash
# Benchmark: ocipush against skopeo, pushing a ~1 GB, 5-layer image from a private dockerd
# (Docker 20.10) to fresh loopback registries: fresh (gzip, and ocipush with --compression zstd and
# with --compression none),
# repeat, then an app image on top of it (the registry holds the base) and the app rebuilt with a
# new 1 MiB top layer. `docker save > /dev/null` of the same image is the floor of each row. Then
# the image's `docker save` tarball (`docker-archive:`, random access) to fresh registries: skopeo,
# and ocipush with `--jobs 1` and with its default jobs, to show what layers side by side give.
#
# Usage: scripts/bench.sh            prints a markdown table
#        OCIPUSH_BENCH_BINARY=PATH scripts/bench.sh
#                                    measures that ocipush binary (e.g. another commit's build)
#                                    instead of building this tree's
#
# For every run: wall time, the tool's own CPU time (user+sys, /usr/bin/time), the CPU time the
# daemon (dockerd) and the receiving registry spent meanwhile (from /proc/PID/stat), the ratios
# to skopeo's run (and to `docker save` for the app rows), and the tool's peak RSS. The machine
# may be shared: CPU times move less with load than wall times do.
#
# The image is shaped like a service's: a JDK, gcc's libraries, docs (compressible), 200 MB of
# random bytes (incompressible) and a small layer. Where a source folder is missing, generated
# text of the same size stands in. ocipush's compiled guest is cached before the first run (as
# it is on any machine after the first push), except for one fresh run that compiles it first (a
# cold cache, for its peak RSS). Not a test: it asserts nothing, it measures.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench: %s\n' "$*" >&2; }

./scripts/services.sh deps
command -v /usr/bin/time >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q time </dev/null

work=$(mktemp -d /tmp/ocipush-bench.XXXXXX)
cleanup() {
	./scripts/services.sh stop "$work/svc" || true
	rm -rf "$work"
}
trap cleanup EXIT
./scripts/services.sh start "$work/svc"
# shellcheck disable=SC1091
. "$work/svc/env"

if [ -n "${OCIPUSH_BENCH_BINARY:-}" ]; then
	ocipush=$(realpath "$OCIPUSH_BENCH_BINARY")
else
	log "building ocipush (release)"
	cargo build --release -q -p ocipush
	ocipush=$PWD/target/release/ocipush
fi
log "measuring $("$ocipush" --version | head -n 1) at $ocipush"

image=ocipush-bench:1
log "building the image in the private daemon"
ctx=$work/ctx
mkdir -p "$ctx"
layer_from() { # NAME DIR MB: a copy of DIR, or MB of generated text where DIR is missing
	if [ -d "$2" ]; then
		cp -a "$2" "$ctx/$1"
	else
		mkdir -p "$ctx/$1"
		base64 -w 76 /dev/urandom | tr '+/' ' \n' | head -c "$(($3 << 20))" >"$ctx/$1/text"
	fi
}
layer_from jdk /usr/lib/jvm 560
layer_from gcc /usr/lib/gcc 120
layer_from doc /usr/share/doc 120
mkdir -p "$ctx/random" "$ctx/etc"
head -c $((200 << 20)) /dev/urandom >"$ctx/random/blob"
cp -a /etc/ssl "$ctx/etc/" 2>/dev/null || echo small >"$ctx/etc/small"
cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY jdk /opt/jdk
COPY gcc /usr/lib/gcc
COPY doc /usr/share/doc
COPY random /data
COPY etc /etc
LABEL org.opencontainers.image.title=ocipush-bench
EOF
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >/dev/null 2>&1
rm -rf "$ctx"
size=$(docker image inspect -f '{{.Size}}' "$image")
layers=$(docker image inspect -f '{{len .RootFS.Layers}}' "$image")
log "image: $layers layers, $((size / 1000000)) MB"

# new_registry NAME: starts an empty registry; sets reg_NAME (host:port) and pid_NAME.
new_registry() {
	local address
	address=$(./scripts/services.sh registry "$work/svc" "bench-$1")
	printf -v "reg_$1" '%s' "$address"
	printf -v "pid_$1" '%s' "$(cat "$work/svc/registry-bench-$1.pid")"
}
new_registry skopeo
new_registry ocipush
new_registry none
new_registry zstd
new_registry cold
new_registry archive_skopeo
new_registry archive_one
new_registry archive_jobs
dockerd_pid=$(cat "$work/svc/docker.pid")
tick=$(getconf CLK_TCK)

# ticks PID: the CPU time (user+sys, in clock ticks) process PID has used so far.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# measure NAME REGISTRY_PID CMD...: runs CMD with output discarded; records its wall time, own
# CPU time and peak RSS, and the CPU time dockerd and the registry (pid, or - for none) spent.
declare -A wall cpu rss dcpu rcpu
measure() {
	local name=$1 registry=$2 d0 r0=0 user sys
	shift 2
	log "$name"
	d0=$(ticks "$dockerd_pid")
	[ "$registry" = - ] || r0=$(ticks "$registry")
	if ! /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >/dev/null 2>"$work/err"; then
		cat "$work/err" >&2
		log "$name failed"
		exit 1
	fi
	read -r wall[$name] user sys rss[$name] <"$work/time"
	cpu[$name]=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
	dcpu[$name]=$(awk -v a="$d0" -v b="$(ticks "$dockerd_pid")" -v t="$tick" 'BEGIN { printf "%.2f", (b - a) / t }')
	rcpu[$name]=-
	[ "$registry" = - ] ||
		rcpu[$name]=$(awk -v a="$r0" -v b="$(ticks "$registry")" -v t="$tick" 'BEGIN { printf "%.2f", (b - a) / t }')
}

skopeo=(skopeo copy -q --src-daemon-host "$DOCKER_HOST" --dest-tls-verify=false)
export OCIPUSH_CACHE_DIR=$work/cache
# The compiled guest, as any push after the first finds it; the `none` run's cache gets a copy.
"$ocipush" guest info >/dev/null
for copy in none zstd archive-one archive-jobs; do
	mkdir -p "$work/cache-$copy"
	cp -a "$work/cache/guest" "$work/cache-$copy/"
done

sync
measure floor - sh -c "docker save '$image' >/dev/null"
measure skopeo-fresh "$pid_skopeo" "${skopeo[@]}" "docker-daemon:$image" "docker://$reg_skopeo/bench/app:1"
measure ocipush-fresh "$pid_ocipush" "$ocipush" push --progress none "$image" "$reg_ocipush/bench/app:1"
mkdir -p "$work/cache-cold"
measure ocipush-cold "$pid_cold" env OCIPUSH_CACHE_DIR="$work/cache-cold" \
	"$ocipush" push --progress none "$image" "$reg_cold/bench/app:1"
measure ocipush-none "$pid_none" env OCIPUSH_CACHE_DIR="$work/cache-none" \
	"$ocipush" push --progress none --compression none "$image" "$reg_none/bench/app:1"
measure ocipush-zstd "$pid_zstd" env OCIPUSH_CACHE_DIR="$work/cache-zstd" \
	"$ocipush" push --progress none --compression zstd "$image" "$reg_zstd/bench/app:1"
measure skopeo-repeat "$pid_skopeo" "${skopeo[@]}" "docker-daemon:$image" "docker://$reg_skopeo/bench/app:1"
measure ocipush-repeat "$pid_ocipush" "$ocipush" push --progress none "$image" "$reg_ocipush/bench/app:1"

# app NAME: the bench image with a new 1 MiB layer of random bytes on top.
app() {
	mkdir -p "$work/app"
	head -c $((1 << 20)) /dev/urandom >"$work/app/app.bin"
	printf 'FROM %s\nCOPY app.bin /app.bin\n' "$image" >"$work/app/Dockerfile"
	DOCKER_BUILDKIT=0 docker build -q -t "$1" "$work/app" >/dev/null 2>&1
}
# Each tool pushes the app into the repository that holds the base (its own registry).
app ocipush-bench-app:1
measure floor-app - sh -c "docker save ocipush-bench-app:1 >/dev/null"
measure skopeo-app "$pid_skopeo" "${skopeo[@]}" "docker-daemon:ocipush-bench-app:1" "docker://$reg_skopeo/bench/app:2"
measure ocipush-app "$pid_ocipush" "$ocipush" push --progress none ocipush-bench-app:1 "$reg_ocipush/bench/app:2"
app ocipush-bench-app:2
measure floor-rebuilt - sh -c "docker save ocipush-bench-app:2 >/dev/null"
measure skopeo-rebuilt "$pid_skopeo" "${skopeo[@]}" "docker-daemon:ocipush-bench-app:2" "docker://$reg_skopeo/bench/app:3"
measure ocipush-rebuilt "$pid_ocipush" "$ocipush" push --progress none ocipush-bench-app:2 "$reg_ocipush/bench/app:3"

# The image as a tarball, each run to a registry of its own (ocipush with a cache of its own).
docker save -o "$work/image.tar" "$image"
sync
measure skopeo-archive "$pid_archive_skopeo" skopeo copy -q --dest-tls-verify=false \
	"docker-archive:$work/image.tar" "docker://$reg_archive_skopeo/bench/app:1"
measure ocipush-archive-one "$pid_archive_one" env OCIPUSH_CACHE_DIR="$work/cache-archive-one" \
	"$ocipush" push --progress none --jobs 1 "docker-archive:$work/image.tar" "$reg_archive_one/bench/app:1"
measure ocipush-archive-jobs "$pid_archive_jobs" env OCIPUSH_CACHE_DIR="$work/cache-archive-jobs" \
	"$ocipush" push --progress none "docker-archive:$work/image.tar" "$reg_archive_jobs/bench/app:1"

# pushed_mb REFERENCE: the sizes of the manifest's config and layers, in MB.
pushed_mb() {
	skopeo inspect --tls-verify=false --raw "docker://$1" | tr ',{}' '\n\n\n' |
		awk -F: '/"size"/ { s += $2 } END { printf "%.1f", s / 1e6 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else printf "-" }'; }
# row LABEL NAME [SKOPEO_NAME [FLOOR_NAME]]: one table row, with ratios where a reference is named.
row() {
	local label=$1 n=$2 s=${3:-} f=${4:-} vs_wall='' vs_cpu='' vs_floor=''
	if [ -n "$s" ]; then
		vs_wall=$(ratio "${wall[$n]}" "${wall[$s]}")
		vs_cpu=$(ratio "${cpu[$n]}" "${cpu[$s]}")
	fi
	[ -z "$f" ] || vs_floor=$(ratio "${wall[$n]}" "${wall[$f]}")
	printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s MiB |\n' "$label" "${wall[$n]}" "$vs_wall" \
		"$vs_floor" "${cpu[$n]}" "$vs_cpu" "${dcpu[$n]}" "${rcpu[$n]}" "$((rss[$n] / 1024))"
}
cat <<EOF

$(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ { printf "%d GiB", $2 / 1048576 }' /proc/meminfo), image of $layers layers / $((size / 1000000)) MB; defaults (gzip level 1) unless said

| run | wall (s) | vs skopeo | vs \`docker save\` | own CPU (s) | vs skopeo | dockerd CPU (s) | registry CPU (s) | peak RSS |
|---|---|---|---|---|---|---|---|---|
EOF
row '`docker save > /dev/null` (floor)' floor
row 'skopeo fresh' skopeo-fresh
row 'ocipush fresh' ocipush-fresh skopeo-fresh floor
row 'ocipush fresh, compiled guest not cached' ocipush-cold skopeo-fresh floor
row 'ocipush fresh, `--compression none`' ocipush-none skopeo-fresh floor
row 'ocipush fresh, `--compression zstd` (level 3)' ocipush-zstd skopeo-fresh floor
row 'skopeo repeat' skopeo-repeat
row 'ocipush repeat' ocipush-repeat skopeo-repeat
row '`docker save` of the app (floor)' floor-app
row 'skopeo, app on the base' skopeo-app
row 'ocipush, app on the base' ocipush-app skopeo-app floor-app
row '`docker save` of the app rebuilt (floor)' floor-rebuilt
row 'skopeo, app rebuilt (new 1 MiB top layer)' skopeo-rebuilt
row 'ocipush, app rebuilt (new 1 MiB top layer)' ocipush-rebuilt skopeo-rebuilt floor-rebuilt
row 'skopeo, `docker-archive:` tarball' skopeo-archive
row 'ocipush, `docker-archive:` tarball, `--jobs 1`' ocipush-archive-one skopeo-archive
row 'ocipush, `docker-archive:` tarball, default jobs' ocipush-archive-jobs skopeo-archive
cat <<EOF

Pushed (config and layers), fresh: skopeo $(pushed_mb "$reg_skopeo/bench/app:1") MB, ocipush gzip $(pushed_mb "$reg_ocipush/bench/app:1") MB, zstd $(pushed_mb "$reg_zstd/bench/app:1") MB, none $(pushed_mb "$reg_none/bench/app:1") MB.
EOF
