#!/usr/bin/env bash
# Demo: start a private dockerd and registry (loopback only), build a small image in that
# daemon, push it with ocipush, and show what the registry now holds.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

install_deps

start_services demo

phase "building ocipush (cargo build --release)"
cargo build --release

phase "building the demo image demo:1.0 in the test daemon"
CTX="$SERVICES_DIR/demo-context"
mkdir -p "$CTX/app" "$CTX/data"
cat >"$CTX/app/hello.txt" <<'TXT'
Hello from an image pushed by ocipush.
TXT
printf '#!/bin/sh\necho "demo app"\n' >"$CTX/app/run.sh"
chmod +x "$CTX/app/run.sh"
ln -s hello.txt "$CTX/app/README"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$CTX/data/random.bin"
seq 1 100000 >"$CTX/data/numbers.txt"
cat >"$CTX/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY app/ /app/
COPY data/random.bin /data/random.bin
COPY data/numbers.txt /data/numbers.txt
ENV APP_HOME=/app
LABEL org.opencontainers.image.title="ocipush demo" org.opencontainers.image.source="scripts/demo.sh"
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t demo:1.0 "$CTX"
docker image inspect -f 'image ID {{.Id}}, {{len .RootFS.Layers}} layers' demo:1.0

DEST="$OCIPUSH_TEST_REGISTRY/demo/app:1.0"
phase "ocipush push demo:1.0 $DEST"
target/release/ocipush push demo:1.0 "$DEST" --digest-file "$SERVICES_DIR/digest" --progress plain
echo "manifest digest: $(cat "$SERVICES_DIR/digest")"

phase "the same push again: the registry has every blob, so nothing is exported"
target/release/ocipush push demo:1.0 "$DEST" --progress plain

phase "skopeo inspect --tls-verify=false docker://$DEST"
skopeo inspect --tls-verify=false "docker://$DEST"

phase "skopeo inspect --raw (the pushed OCI manifest)"
skopeo inspect --raw --tls-verify=false "docker://$DEST"
echo

phase "demo done"
