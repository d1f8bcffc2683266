#!/usr/bin/env bash
# Benchmark: ocipush against skopeo, pushing a ~1 GB, 5-layer image from a private dockerd to fresh
# loopback registries, fresh and repeat, with `docker save > /dev/null` as the floor; then an app
# image on top of it, rebuilt with a new 1 MiB top layer and pushed again (`rebuilt`).
#
# Usage: scripts/bench.sh            prints a markdown table (wall time, ratios, ocipush peak RSS)
#
# The image is shaped like a service's: a JDK, gcc's libraries, docs (compressible), 200 MB of
# random bytes (incompressible) and a small layer. Where a source folder is missing, generated
# text of the same size stands in. Not a test: it asserts nothing, it measures.
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

log "building ocipush (release)"
cargo build --release -q -p ocipush
ocipush=$PWD/target/release/ocipush

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

# measure NAME CMD...: runs CMD with output discarded; records wall seconds and peak RSS (KiB)
declare -A wall rss
measure() {
	local name=$1
	shift
	log "$name"
	if ! /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>"$work/err"; then
		cat "$work/err" >&2
		log "$name failed"
		exit 1
	fi
	read -r wall[$name] rss[$name] <"$work/time"
}

skopeo_reg=$(./scripts/services.sh registry "$work/svc" bench-skopeo)
ocipush_reg=$(./scripts/services.sh registry "$work/svc" bench-ocipush)
export OCIPUSH_CACHE_DIR=$work/cache

sync
measure floor sh -c "docker save '$image' >/dev/null"
measure skopeo-fresh skopeo copy -q --src-daemon-host "$DOCKER_HOST" --dest-tls-verify=false \
	"docker-daemon:$image" "docker://$skopeo_reg/bench/app:1"
measure ocipush-fresh "$ocipush" push --progress none "$image" "$ocipush_reg/bench/app:1"
measure skopeo-repeat skopeo copy -q --src-daemon-host "$DOCKER_HOST" --dest-tls-verify=false \
	"docker-daemon:$image" "docker://$skopeo_reg/bench/app:1"
measure ocipush-repeat "$ocipush" push --progress none "$image" "$ocipush_reg/bench/app:1"

# app NAME: the bench image with a new 1 MiB layer of random bytes on top.
app() {
	mkdir -p "$work/app"
	head -c $((1 << 20)) /dev/urandom >"$work/app/app.bin"
	printf 'FROM %s\nCOPY app.bin /app.bin\n' "$image" >"$work/app/Dockerfile"
	DOCKER_BUILDKIT=0 docker build -q -t "$1" "$work/app" >/dev/null 2>&1
}
app ocipush-bench-app:1
log "pushing the app's first build with both (not measured)"
skopeo copy -q --src-daemon-host "$DOCKER_HOST" --dest-tls-verify=false \
	"docker-daemon:ocipush-bench-app:1" "docker://$skopeo_reg/bench/app:2" >/dev/null
"$ocipush" push --progress none ocipush-bench-app:1 "$ocipush_reg/bench/app:2" >/dev/null
app ocipush-bench-app:2
measure skopeo-rebuilt skopeo copy -q --src-daemon-host "$DOCKER_HOST" --dest-tls-verify=false \
	"docker-daemon:ocipush-bench-app:2" "docker://$skopeo_reg/bench/app:3"
measure ocipush-rebuilt "$ocipush" push --progress none ocipush-bench-app:2 "$ocipush_reg/bench/app:3"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
cat <<EOF

$(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ { printf "%d GiB", $2 / 1048576 }' /proc/meminfo), image of $layers layers / $((size / 1000000)) MB

| run | wall (s) | vs skopeo | ocipush peak RSS |
|---|---|---|---|
| \`docker save > /dev/null\` (floor) | ${wall[floor]} | | |
| skopeo fresh | ${wall[skopeo-fresh]} | | |
| ocipush fresh | ${wall[ocipush-fresh]} | $(ratio "${wall[ocipush-fresh]}" "${wall[skopeo-fresh]}") | $((rss[ocipush-fresh] / 1024)) MiB |
| skopeo repeat | ${wall[skopeo-repeat]} | | |
| ocipush repeat | ${wall[ocipush-repeat]} | $(ratio "${wall[ocipush-repeat]}" "${wall[skopeo-repeat]}") | $((rss[ocipush-repeat] / 1024)) MiB |
| skopeo rebuilt (new 1 MiB top layer) | ${wall[skopeo-rebuilt]} | | |
| ocipush rebuilt (new 1 MiB top layer) | ${wall[ocipush-rebuilt]} | $(ratio "${wall[ocipush-rebuilt]}" "${wall[skopeo-rebuilt]}") | $((rss[ocipush-rebuilt] / 1024)) MiB |
EOF
